/* admin.c - crierctl tenant, apikey and provider commands. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "apikey.h"
#include "crypto.h"
#include "ctl.h"
#include "db.h"
#include "xalloc.h"

PGconn *ctl_connect(const struct ctl_config *cfg)
{
    char err[512];
    PGconn *conn = db_connect(cfg->database_url, "crierctl", err, sizeof(err));
    if (!conn)
        fprintf(stderr, "crierctl: cannot connect to PostgreSQL: %s\n", err);
    return conn;
}

static int parse_id(const char *s, const char *what, long long *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v <= 0) {
        fprintf(stderr, "crierctl: %s must be a positive integer, not %s\n", what, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int run_one(PGconn *conn, const char *label, const char *sql, int n, const char **params,
                   int print_first)
{
    char state[6], err[512];
    PGresult *res = NULL;
    if (db_exec_state(conn, label, sql, n, params, &res, state, err, sizeof(err)) != CR_OK) {
        fprintf(stderr, "crierctl: %s failed: %s", label, err);
        return 1;
    }
    int rc = 0;
    if (print_first) {
        if (PQntuples(res) == 0) {
            fprintf(stderr, "crierctl: %s: not found\n", label);
            rc = 1;
        } else {
            printf("%s\n", PQgetvalue(res, 0, 0));
        }
    }
    PQclear(res);
    return rc;
}

int ctl_tenant(const struct ctl_config *cfg, int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[0], "create") == 0) {
        if (!*argv[1] || strlen(argv[1]) > 200) {
            fprintf(stderr, "crierctl: tenant name must be 1..200 characters\n");
            return 2;
        }
        PGconn *conn = ctl_connect(cfg);
        if (!conn)
            return 1;
        const char *params[] = {argv[1]};
        int rc = run_one(conn, "tenant create",
                         "INSERT INTO tenants (name) VALUES ($1) RETURNING id", 1, params, 1);
        PQfinish(conn);
        return rc;
    }
    if (argc == 1 && strcmp(argv[0], "list") == 0) {
        PGconn *conn = ctl_connect(cfg);
        if (!conn)
            return 1;
        PGresult *res = NULL;
        int rc = 1;
        if (db_exec(conn, "tenant list", "SELECT id, name, created_at FROM tenants ORDER BY id", 0,
                    NULL, &res) == CR_OK) {
            for (int i = 0; i < PQntuples(res); i++)
                printf("%s\t%s\t%s\n", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                       PQgetvalue(res, i, 2));
            rc = 0;
        }
        PQclear(res);
        PQfinish(conn);
        return rc;
    }
    fprintf(stderr, "usage: crierctl tenant create NAME | crierctl tenant list\n");
    return 2;
}

int ctl_apikey(const struct ctl_config *cfg, int argc, char **argv)
{
    if (argc >= 2 && argc <= 3 && strcmp(argv[0], "create") == 0) {
        long long tenant;
        if (parse_id(argv[1], "TENANT_ID", &tenant) != 0)
            return 2;
        char key[APIKEY_LEN + 1], key_id[APIKEY_ID_LEN + 1], hashhex[65];
        uint8_t hash[32];
        if (apikey_generate(key, key_id, hash) != CR_OK) {
            fprintf(stderr, "crierctl: cannot generate a key\n");
            return 1;
        }
        crypto_hex_encode(hash, 32, hashhex);
        char *hashlit = xasprintf("\\x%s", hashhex);
        PGconn *conn = ctl_connect(cfg);
        if (!conn) {
            free(hashlit);
            return 1;
        }
        const char *params[] = {argv[1], key_id, hashlit, argc == 3 ? argv[2] : NULL};
        char state[6], err[512];
        PGresult *res = NULL;
        int rc = 1;
        if (db_exec_state(conn, "apikey create",
                          "INSERT INTO api_keys (tenant_id, key_id, key_hash, name) "
                          "SELECT id, $2, $3::bytea, $4 FROM tenants WHERE id = $1 RETURNING id",
                          4, params, &res, state, err, sizeof(err)) != CR_OK) {
            fprintf(stderr, "crierctl: apikey create failed: %s", err);
        } else if (PQntuples(res) == 0) {
            fprintf(stderr, "crierctl: no tenant %s\n", argv[1]);
        } else {
            printf("%s\n", key);
            rc = 0;
        }
        PQclear(res);
        PQfinish(conn);
        free(hashlit);
        return rc;
    }
    if (argc == 2 && strcmp(argv[0], "revoke") == 0) {
        PGconn *conn = ctl_connect(cfg);
        if (!conn)
            return 1;
        const char *params[] = {argv[1]};
        int rc = run_one(conn, "apikey revoke",
                         "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 "
                         "AND revoked_at IS NULL RETURNING key_id",
                         1, params, 1);
        PQfinish(conn);
        return rc;
    }
    fprintf(stderr, "usage: crierctl apikey create TENANT_ID [NAME] | apikey revoke KEY_ID\n");
    return 2;
}

int ctl_provider(const struct ctl_config *cfg, int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[0], "create") != 0) {
        fprintf(stderr,
                "usage: crierctl provider create TENANT_ID --channel C --kind K --from A\n");
        return 2;
    }
    long long tenant;
    if (parse_id(argv[1], "TENANT_ID", &tenant) != 0)
        return 2;
    const char *channel = NULL, *kind = NULL, *from = NULL, *rate = "10", *name = "";
    const char *account_sid = NULL;
    for (int i = 2; i < argc; i++) {
        const char **dst = NULL;
        if (strcmp(argv[i], "--channel") == 0)
            dst = &channel;
        else if (strcmp(argv[i], "--kind") == 0)
            dst = &kind;
        else if (strcmp(argv[i], "--from") == 0)
            dst = &from;
        else if (strcmp(argv[i], "--rate") == 0)
            dst = &rate;
        else if (strcmp(argv[i], "--name") == 0)
            dst = &name;
        else if (strcmp(argv[i], "--account-sid") == 0)
            dst = &account_sid;
        if (!dst || i + 1 >= argc) {
            fprintf(stderr, "crierctl: bad or incomplete option %s\n", argv[i]);
            return 2;
        }
        *dst = argv[++i];
    }
    if (!channel || !kind || !from) {
        fprintf(stderr, "crierctl: --channel, --kind and --from are required\n");
        return 2;
    }
    long long rate_v;
    if (parse_id(rate, "--rate", &rate_v) != 0)
        return 2;

    char *sealed = NULL;
    if (strcmp(kind, "sandbox") != 0) {
        const char *secret = getenv("CRIER_PROVIDER_SECRET");
        if (!secret || !*secret) {
            fprintf(stderr, "crierctl: set CRIER_PROVIDER_SECRET to the provider's auth token "
                            "or API key\n");
            return 2;
        }
        if (strcmp(kind, "twilio") == 0 && !account_sid) {
            fprintf(stderr, "crierctl: --account-sid is required for twilio\n");
            return 2;
        }
        uint8_t key[CRYPTO_KEY_LEN];
        if (crypto_parse_key(cfg->secret_key, key) != CR_OK) {
            fprintf(stderr, "crierctl: CRIER_SECRET_KEY must be 64 hex chars or base64 of 32 "
                            "bytes\n");
            return 2;
        }
        cJSON *creds = cJSON_CreateObject();
        if (account_sid)
            cJSON_AddStringToObject(creds, "account_sid", account_sid);
        cJSON_AddStringToObject(creds, "secret", secret);
        char *plain = cJSON_PrintUnformatted(creds);
        cJSON_Delete(creds);
        enum cr_err e = crypto_seal(key, plain, strlen(plain), &sealed);
        memset(plain, 0, strlen(plain));
        free(plain);
        if (e != CR_OK) {
            fprintf(stderr, "crierctl: cannot seal credentials\n");
            return 1;
        }
    }
    PGconn *conn = ctl_connect(cfg);
    if (!conn) {
        free(sealed);
        return 1;
    }
    /* The new account becomes the channel's default for the tenant. */
    const char *params[] = {argv[1], channel, kind, from, rate, name, sealed};
    int rc = 1;
    if (run_one(conn, "begin", "BEGIN", 0, NULL, 0) != 0)
        goto out;
    if (run_one(conn, "provider create",
                "UPDATE provider_accounts SET is_default = false "
                "WHERE tenant_id = $1 AND channel = $2 AND is_default",
                2, params, 0) != 0)
        goto out;
    if (run_one(conn, "provider create",
                "INSERT INTO provider_accounts (tenant_id, channel, kind, from_address, "
                "  rate_per_second, name, credentials, is_default) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, true) RETURNING id",
                7, params, 1) != 0)
        goto out;
    rc = run_one(conn, "commit", "COMMIT", 0, NULL, 0);
out:
    PQfinish(conn);
    free(sealed);
    return rc;
}
