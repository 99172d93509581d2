/* crierctl - crier's admin command line: migrations, tenants, API keys and
 * provider accounts talk to PostgreSQL directly (the bootstrap path: no API
 * key exists when it first runs); import and watch go through the HTTP API
 * like any client (CRIER_API_URL, CRIER_API_KEY). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "ctl.h"
#include "log.h"

static struct ctl_config cfg;

static const struct cfg_row ctl_rows[] = {
    {"CRIER_DATABASE_URL", CFG_STRING, offsetof(struct ctl_config, database_url),
     "postgresql://crier@127.0.0.1:5432/crier", 0, 0, NULL, 0, 1, "PostgreSQL connection URL"},
    {"CRIER_SECRET_KEY", CFG_STRING, offsetof(struct ctl_config, secret_key), NULL, 0, 0, NULL, 0,
     1, "32-byte key (64 hex or base64) sealing provider credentials"},
    {"CRIER_API_URL", CFG_STRING, offsetof(struct ctl_config, api_url), "http://127.0.0.1:8080", 0,
     0, NULL, 0, 0, "base URL of crier-api (crierctl import, watch)"},
    {"CRIER_API_KEY", CFG_STRING, offsetof(struct ctl_config, api_key), NULL, 0, 0, NULL, 0, 1,
     "API key crierctl import and watch send (crier_<id>_<secret>)"},
    CFG_COMMON_ROWS(struct ctl_config),
};
#define NROWS (sizeof(ctl_rows) / sizeof(ctl_rows[0]))

static const char usage[] =
    "usage: crierctl COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  migrate                          apply pending migrations (safe to run concurrently)\n"
    "  migrate status                   list migrations and whether they are applied\n"
    "  tenant create NAME               create a tenant; prints its id\n"
    "  tenant list                      list tenants\n"
    "  apikey create TENANT_ID [NAME]   create an API key; prints it once\n"
    "  apikey revoke KEY_ID             revoke a key (KEY_ID: the 16 hex after crier_)\n"
    "  provider create TENANT_ID --channel sms|email|voice --kind twilio|sendgrid|smtp|sandbox\n"
    "           --from ADDRESS [--rate PER_SECOND] [--name NAME] [--account-sid SID]\n"
    "           (the Twilio auth token / API key is read from CRIER_PROVIDER_SECRET,\n"
    "            never from the command line)\n"
    "                                   create a provider account; prints its id\n"
    "  import [--type customers|interactions|appointments] [--format ndjson|csv]\n"
    "         [--chunk-lines N] [--parallel N] [--quiet] FILE\n"
    "                                   upsert FILE through the API (CRIER_API_URL,\n"
    "                                   CRIER_API_KEY) with a progress bar\n"
    "  watch [--plain] CAMPAIGN_ID      follow a campaign's progress through the API's event\n"
    "                                   stream until it is completed or cancelled (a live\n"
    "                                   display on a terminal, key=value lines otherwise)";

int main(int argc, char **argv)
{
    char err[512];
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        cfg_print_help(ctl_rows, NROWS, usage);
        return argc < 2 ? 2 : 0;
    }
    char *noargs[] = {argv[0], NULL};
    if (cfg_load(ctl_rows, NROWS, &cfg, 1, noargs, usage, err, sizeof(err)) != CR_OK) {
        fprintf(stderr, "crierctl: %s\n", err);
        return 2;
    }
    log_init("crierctl", (enum log_level)cfg.log_level, (enum log_format)cfg.log_format);

    int rc;
    const char *cmd = argv[1];
    if (strcmp(cmd, "migrate") == 0)
        rc = ctl_migrate(&cfg, argc - 2, argv + 2);
    else if (strcmp(cmd, "tenant") == 0)
        rc = ctl_tenant(&cfg, argc - 2, argv + 2);
    else if (strcmp(cmd, "apikey") == 0)
        rc = ctl_apikey(&cfg, argc - 2, argv + 2);
    else if (strcmp(cmd, "provider") == 0)
        rc = ctl_provider(&cfg, argc - 2, argv + 2);
    else if (strcmp(cmd, "import") == 0)
        rc = ctl_import(&cfg, argc - 2, argv + 2);
    else if (strcmp(cmd, "watch") == 0)
        rc = ctl_watch(&cfg, argc - 2, argv + 2);
    else {
        fprintf(stderr, "crierctl: unknown command %s\n\n", cmd);
        cfg_print_help(ctl_rows, NROWS, usage);
        rc = 2;
    }
    cfg_cleanup(ctl_rows, NROWS, &cfg);
    return rc;
}
