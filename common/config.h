/* config.h - table-driven configuration from the environment.
 *
 * Each binary declares a table of rows (environment variable, type, offset
 * into its config struct, default, bounds, help). cfg_load() fills the
 * struct, validates every value, and answers --help from the same table, so
 * the documentation cannot drift from what is read. After loading, treat the
 * struct as const. Strings in the struct are heap copies owned by it; free
 * them with cfg_cleanup(). */
#ifndef CRIER_CONFIG_H
#define CRIER_CONFIG_H

#include <stddef.h>

#include "err.h"

enum cfg_type {
    CFG_STRING, /* char * */
    CFG_INT,    /* long, within [min, max] */
    CFG_ENUM,   /* int: index into choices ("a|b|c") */
};

struct cfg_row {
    const char *env; /* environment variable name */
    enum cfg_type type;
    size_t offset;       /* offsetof(struct X_config, field) */
    const char *deflt;   /* default as text; NULL = none */
    long min, max;       /* CFG_INT bounds */
    const char *choices; /* CFG_ENUM: "text|json" */
    int required;        /* 1: must be set (no default) */
    int secret;          /* 1: never printed */
    const char *help;
};

/* The rows every binary shares (log level/format). */
#define CFG_COMMON_ROWS(type)                                                                      \
    {"CRIER_LOG_LEVEL",                                                                            \
     CFG_ENUM,                                                                                     \
     offsetof(type, log_level),                                                                    \
     "info",                                                                                       \
     0,                                                                                            \
     0,                                                                                            \
     "error|warn|info|debug",                                                                      \
     0,                                                                                            \
     0,                                                                                            \
     "log verbosity"},                                                                             \
    {                                                                                              \
        "CRIER_LOG_FORMAT", CFG_ENUM, offsetof(type, log_format), "text", 0, 0, "text|json", 0, 0, \
            "log line format"                                                                      \
    }

/* Parses argv (--help / -h prints usage and exits 0; an unknown argument
 * prints usage and exits 2) and the environment into cfg. On a bad value
 * prints "NAME: reason" into err (errsz) and returns CR_EINVAL. */
enum cr_err cfg_load(const struct cfg_row *rows, size_t nrows, void *cfg, int argc, char **argv,
                     const char *usage, char *err, size_t errsz) CR_MUST_CHECK;
/* Prints the usage text and the table to stdout. */
void cfg_print_help(const struct cfg_row *rows, size_t nrows, const char *usage);
void cfg_cleanup(const struct cfg_row *rows, size_t nrows, void *cfg);

/* Parses a Redis URL redis://[:password@]host[:port][/db]. host is written
 * into hostbuf. Returns CR_EINVAL on a malformed URL. */
enum cr_err cfg_parse_redis_url(const char *url, char *host, size_t hostsz, int *port,
                                char *password, size_t passsz, int *db) CR_MUST_CHECK;

#endif
