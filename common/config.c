/* config.c - environment configuration driven by a table of rows. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

static int enum_index(const char *choices, const char *value)
{
    int idx = 0;
    const char *p = choices;
    size_t vlen = strlen(value);
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == vlen && strncmp(p, value, len) == 0)
            return idx;
        idx++;
        if (!bar)
            break;
        p = bar + 1;
    }
    return -1;
}

void cfg_print_help(const struct cfg_row *rows, size_t nrows, const char *usage)
{
    printf("%s\n\nConfiguration (environment variables):\n", usage);
    for (size_t i = 0; i < nrows; i++) {
        const struct cfg_row *r = &rows[i];
        printf("  %-28s %s", r->env, r->help);
        if (r->type == CFG_ENUM)
            printf(" (%s)", r->choices);
        if (r->type == CFG_INT)
            printf(" [%ld..%ld]", r->min, r->max);
        if (r->required)
            printf(" (required)");
        else if (r->deflt && !r->secret)
            printf(" (default: %s)", r->deflt[0] ? r->deflt : "\"\"");
        printf("\n");
    }
}

enum cr_err cfg_load(const struct cfg_row *rows, size_t nrows, void *cfg, int argc, char **argv,
                     const char *usage, char *err, size_t errsz)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            cfg_print_help(rows, nrows, usage);
            exit(0);
        }
        fprintf(stderr, "unknown argument: %s\n", argv[i]);
        cfg_print_help(rows, nrows, usage);
        exit(2);
    }
    char *base = cfg;
    for (size_t i = 0; i < nrows; i++) {
        const struct cfg_row *r = &rows[i];
        const char *v = getenv(r->env);
        if (v && !*v && r->type != CFG_STRING)
            v = NULL;
        if (!v)
            v = r->deflt;
        if (!v) {
            if (r->required) {
                snprintf(err, errsz, "%s: required but not set", r->env);
                return CR_EINVAL;
            }
            if (r->type == CFG_STRING)
                *(char **)(base + r->offset) = NULL;
            continue;
        }
        switch (r->type) {
        case CFG_STRING:
            if (r->required && !*v) {
                snprintf(err, errsz, "%s: required but empty", r->env);
                return CR_EINVAL;
            }
            *(char **)(base + r->offset) = xstrdup(v);
            break;
        case CFG_INT: {
            char *end = NULL;
            errno = 0;
            long n = strtol(v, &end, 10);
            if (errno || end == v || *end) {
                snprintf(err, errsz, "%s: not an integer: %s", r->env, v);
                return CR_EINVAL;
            }
            if (n < r->min || n > r->max) {
                snprintf(err, errsz, "%s: %ld is outside %ld..%ld", r->env, n, r->min, r->max);
                return CR_EINVAL;
            }
            *(long *)(base + r->offset) = n;
            break;
        }
        case CFG_ENUM: {
            int idx = enum_index(r->choices, v);
            if (idx < 0) {
                snprintf(err, errsz, "%s: must be one of %s, not %s", r->env, r->choices, v);
                return CR_EINVAL;
            }
            *(int *)(base + r->offset) = idx;
            break;
        }
        }
    }
    return CR_OK;
}

void cfg_cleanup(const struct cfg_row *rows, size_t nrows, void *cfg)
{
    char *base = cfg;
    for (size_t i = 0; i < nrows; i++) {
        if (rows[i].type == CFG_STRING) {
            char **p = (char **)(base + rows[i].offset);
            free(*p);
            *p = NULL;
        }
    }
}

enum cr_err cfg_parse_redis_url(const char *url, char *host, size_t hostsz, int *port,
                                char *password, size_t passsz, int *db)
{
    const char *p = url;
    *port = 6379;
    *db = 0;
    if (password && passsz)
        password[0] = '\0';
    if (strncmp(p, "redis://", 8) != 0)
        return CR_EINVAL;
    p += 8;
    const char *at = strchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        size_t len = (size_t)(at - pw);
        if (password) {
            if (len >= passsz)
                return CR_EINVAL;
            memcpy(password, pw, len);
            password[len] = '\0';
        }
        p = at + 1;
    }
    /* Host names and IPv4 addresses only; anything else ('?', '#', '@', space)
     * is malformed, not part of the host. */
    size_t hlen = strspn(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_");
    if (hlen == 0 || hlen >= hostsz)
        return CR_EINVAL;
    memcpy(host, p, hlen);
    host[hlen] = '\0';
    p += hlen;
    if (*p == ':') {
        char *end = NULL;
        long n = strtol(p + 1, &end, 10);
        if (end == p + 1 || n <= 0 || n > 65535)
            return CR_EINVAL;
        *port = (int)n;
        p = end;
    }
    if (*p == '/') {
        if (p[1]) {
            char *end = NULL;
            long n = strtol(p + 1, &end, 10);
            if (end == p + 1 || *end || n < 0 || n > 15)
                return CR_EINVAL;
            *db = (int)n;
        }
    } else if (*p) {
        return CR_EINVAL;
    }
    return CR_OK;
}
