/* tzdb.c - the time zone names PostgreSQL knows, for validating input.
 *
 * At start the API loads `SELECT name FROM pg_timezone_names` through the
 * pool (retrying every TZDB_RETRY_MS until it works) into one sorted array
 * searched with bsearch. Names are matched exactly (case-sensitive), so
 * what is stored is the spelling PostgreSQL lists. Until the list arrives
 * any well-formed name is accepted (contract in api.h). */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "log.h"
#include "xalloc.h"

#define TZDB_RETRY_MS 1000
#define TZDB_NAME_MAX 64

static const char sql_zones[] = "SELECT name FROM pg_timezone_names ORDER BY name";

struct tzdb {
    struct app *app;
    struct event *retry;
    char **names; /* sorted (strcmp), NULL until loaded */
    size_t n;
    int failures;
};

static int tzdb_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void tzdb_load(struct tzdb *z);

static void tzdb_loaded(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct tzdb *z = arg;
    (void)sqlstate;
    if (!res) {
        if (z->failures++ == 0)
            log_warn("time zone list not loaded yet (%s); retrying", errmsg);
        struct timeval tv = {TZDB_RETRY_MS / 1000, (TZDB_RETRY_MS % 1000) * 1000};
        evtimer_add(z->retry, &tv);
        return;
    }
    size_t n = (size_t)PQntuples(res);
    char **names = xcalloc(n ? n : 1, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        names[i] = xstrdup(PQgetvalue(res, (int)i, 0));
    /* PostgreSQL's ORDER BY follows the database collation; bsearch needs
     * strcmp order. */
    qsort(names, n, sizeof(char *), tzdb_cmp);
    z->names = names;
    z->n = n;
    log_info("loaded %zu time zone names", n);
}

static void tzdb_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tzdb_load(arg);
}

static void tzdb_load(struct tzdb *z)
{
    pgpool_query(z->app->pg, sql_zones, 0, NULL, tzdb_loaded, z);
}

void tzdb_start(struct app *app)
{
    struct tzdb *z = xcalloc(1, sizeof(*z));
    z->app = app;
    z->retry = evtimer_new(app->base, tzdb_retry_cb, z);
    app->tzdb = z;
    tzdb_load(z);
}

void tzdb_free(struct tzdb *z)
{
    if (!z)
        return;
    if (z->retry)
        event_free(z->retry);
    for (size_t i = 0; i < z->n; i++)
        free(z->names[i]);
    free(z->names);
    free(z);
}

/* Letters, digits and "/_+-", 1..64 bytes: the shape of every IANA name. */
static bool tzdb_well_formed(const char *s)
{
    size_t n = 0;
    for (const char *p = s; *p; p++, n++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '/' || c == '_' || c == '+' || c == '-';
        if (!ok)
            return false;
    }
    return n > 0 && n <= TZDB_NAME_MAX;
}

bool tzdb_valid(const struct app *app, const char *name)
{
    if (!name || !tzdb_well_formed(name))
        return false;
    const struct tzdb *z = app ? app->tzdb : NULL;
    if (!z || !z->names)
        return true;
    return bsearch(&name, z->names, z->n, sizeof(char *), tzdb_cmp) != NULL;
}
