/* ctl.h - crierctl's commands. Each returns a process exit code. */
#ifndef CRIER_CTL_H
#define CRIER_CTL_H

#include <libpq-fe.h>

struct ctl_config {
    char *database_url;
    char *secret_key;
    char *api_url; /* crierctl import and watch talk to the API */
    char *api_key;
    int log_level;
    int log_format;
};

/* Connects or prints the reason and returns NULL. */
PGconn *ctl_connect(const struct ctl_config *cfg);

int ctl_migrate(const struct ctl_config *cfg, int argc, char **argv);
int ctl_tenant(const struct ctl_config *cfg, int argc, char **argv);
int ctl_apikey(const struct ctl_config *cfg, int argc, char **argv);
int ctl_provider(const struct ctl_config *cfg, int argc, char **argv);
int ctl_import(const struct ctl_config *cfg, int argc, char **argv);
/* watch.c: follows a campaign's event stream until the campaign finishes. */
int ctl_watch(const struct ctl_config *cfg, int argc, char **argv);

#endif
