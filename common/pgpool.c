/* pgpool.c - non-blocking libpq connections driven by libevent. */
#include "pgpool.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "log.h"
#include "xalloc.h"

enum pgc_state { PGC_DOWN = 0, PGC_CONNECTING, PGC_IDLE, PGC_BUSY };

/* Statements prepared once per connection (pgpool_query_named). */
#define PGPOOL_MAX_NAMED 32

struct pgquery {
    char *sql; /* owned copy */
    int named; /* index into the pool's names + 1, or 0 */
    int nparams;
    char **params;
    pgpool_cb cb;
    void *arg;
    struct timeval queued_at;
    struct pgquery *next;
};

struct pgc {
    struct pgpool *pool;
    PGconn *conn;
    enum pgc_state state;
    struct event *io;
    struct event *deadline;
    struct pgquery *q;
    PGresult *res;     /* first result of the running query */
    int fail_count;    /* consecutive connect failures, for backoff */
    unsigned prepared; /* bit i: the pool's statement i is prepared here */
    bool preparing;    /* the running command is q's PREPARE */
    struct timeval next_try;
};

struct pgpool {
    struct event_base *base;
    char *url;
    char *app_name;
    char options[256];
    int size;
    int timeout_ms;
    struct pgc *conns;
    struct pgquery *head, *tail;
    int waiting;
    int running;
    struct event *kick;
    struct event *tick;
    char last_error[256];
    const char *names[PGPOOL_MAX_NAMED]; /* borrowed statement names */
    int nnames;
};

static void pgc_io_cb(evutil_socket_t fd, short what, void *arg);
static void pool_dispatch(struct pgpool *p);

static void query_free(struct pgquery *q)
{
    free(q->sql);
    for (int i = 0; i < q->nparams; i++)
        free(q->params[i]);
    free(q->params);
    free(q);
}

static void query_finish(struct pgquery *q, PGresult *res, const char *errmsg, const char *sqlstate)
{
    q->cb(q->arg, res, errmsg, sqlstate ? sqlstate : "");
    query_free(q);
}

static long ms_since(const struct timeval *t)
{
    struct timeval now, d;
    gettimeofday(&now, NULL);
    timersub(&now, t, &d);
    return d.tv_sec * 1000 + d.tv_usec / 1000;
}

static void pgc_set_state(struct pgc *c, enum pgc_state st)
{
    if (c->state == PGC_BUSY && st != PGC_BUSY)
        c->pool->running--;
    if (st == PGC_BUSY && c->state != PGC_BUSY)
        c->pool->running++;
    c->state = st;
}

/* Drops the connection; a running query fails with msg. */
static void pgc_drop(struct pgc *c, const char *msg)
{
    struct pgquery *q = c->q;
    c->q = NULL;
    if (c->res) {
        PQclear(c->res);
        c->res = NULL;
    }
    event_del(c->io);
    event_del(c->deadline);
    if (c->conn) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
    pgc_set_state(c, PGC_DOWN);
    c->prepared = 0;
    c->preparing = false;
    c->fail_count++;
    long backoff = c->fail_count > 5 ? 2000 : 100L * c->fail_count;
    gettimeofday(&c->next_try, NULL);
    struct timeval b = {backoff / 1000, (backoff % 1000) * 1000};
    timeradd(&c->next_try, &b, &c->next_try);
    snprintf(c->pool->last_error, sizeof(c->pool->last_error), "%s", msg);
    if (q)
        query_finish(q, NULL, msg, "");
}

static void pgc_watch(struct pgc *c, short what)
{
    event_del(c->io);
    event_assign(c->io, c->pool->base, PQsocket(c->conn), what, pgc_io_cb, c);
    event_add(c->io, NULL);
}

static void pgc_connect(struct pgc *c)
{
    struct pgpool *p = c->pool;
    const char *keys[] = {"dbname", "application_name", "options", "connect_timeout", NULL};
    const char *vals[] = {p->url, p->app_name, p->options, "5", NULL};
    c->conn = PQconnectStartParams(keys, vals, 1);
    if (!c->conn || PQstatus(c->conn) == CONNECTION_BAD) {
        pgc_drop(c, "cannot start a PostgreSQL connection");
        return;
    }
    pgc_set_state(c, PGC_CONNECTING);
    pgc_watch(c, EV_WRITE);
}

static void pgc_connect_step(struct pgc *c)
{
    switch (PQconnectPoll(c->conn)) {
    case PGRES_POLLING_READING:
        pgc_watch(c, EV_READ);
        return;
    case PGRES_POLLING_WRITING:
        pgc_watch(c, EV_WRITE);
        return;
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(c->conn, 1) != 0) {
            pgc_drop(c, "cannot make the PostgreSQL connection non-blocking");
            return;
        }
        event_del(c->io);
        c->fail_count = 0;
        pgc_set_state(c, PGC_IDLE);
        pool_dispatch(c->pool);
        return;
    default: {
        char msg[256];
        snprintf(msg, sizeof(msg), "PostgreSQL unreachable: %s", PQerrorMessage(c->conn));
        size_t n = strlen(msg);
        while (n && msg[n - 1] == '\n')
            msg[--n] = '\0';
        if (c->fail_count == 0)
            log_warn("%s", msg);
        pgc_drop(c, msg);
        return;
    }
    }
}

static bool pgc_send(struct pgc *c);

static void pgc_query_done(struct pgc *c)
{
    struct pgquery *q = c->q;
    PGresult *res = c->res;
    if (c->preparing) {
        /* The PREPARE finished: on success run the statement itself. */
        c->preparing = false;
        c->res = NULL;
        if (res && PQresultStatus(res) == PGRES_COMMAND_OK) {
            PQclear(res);
            c->prepared |= 1u << (q->named - 1);
            pgc_send(c);
            return;
        }
        c->res = res;
    }
    c->q = NULL;
    c->res = NULL;
    event_del(c->deadline);
    event_del(c->io);
    pgc_set_state(c, PGC_IDLE);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        query_finish(q, res, NULL, NULL);
    } else {
        const char *msg = res ? PQresultErrorMessage(res) : "no result";
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        query_finish(q, NULL, msg, state);
    }
    PQclear(res);
    pool_dispatch(c->pool);
}

static void pgc_read(struct pgc *c)
{
    if (!PQconsumeInput(c->conn)) {
        pgc_drop(c, "PostgreSQL connection lost");
        return;
    }
    while (!PQisBusy(c->conn)) {
        PGresult *r = PQgetResult(c->conn);
        if (!r) {
            pgc_query_done(c);
            return;
        }
        if (!c->res)
            c->res = r;
        else
            PQclear(r);
    }
    pgc_watch(c, EV_READ);
}

static void pgc_io_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pgc *c = arg;
    (void)fd;
    if (c->state == PGC_CONNECTING) {
        pgc_connect_step(c);
        return;
    }
    if (c->state != PGC_BUSY)
        return;
    if (what & EV_WRITE) {
        int f = PQflush(c->conn);
        if (f < 0) {
            pgc_drop(c, "PostgreSQL connection lost");
            return;
        }
        pgc_watch(c, f == 1 ? (EV_READ | EV_WRITE) : EV_READ);
        if (f == 1)
            return;
    }
    if (what & EV_READ)
        pgc_read(c);
}

static void pgc_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pgc *c = arg;
    (void)fd;
    (void)what;
    log_warn("PostgreSQL query exceeded its deadline; dropping the connection");
    pgc_drop(c, "PostgreSQL query timed out");
    c->fail_count = 0;
}

/* Sends the running query (its PREPARE first when the connection lacks
 * it) and watches for the answer. False when the connection was dropped. */
static bool pgc_send(struct pgc *c)
{
    struct pgquery *q = c->q;
    const char *const *params = (const char *const *)q->params;
    int ok;
    if (!q->named) {
        ok = PQsendQueryParams(c->conn, q->sql, q->nparams, NULL, params, NULL, NULL, 0);
    } else if (!(c->prepared & (1u << (q->named - 1)))) {
        c->preparing = true;
        ok = PQsendPrepare(c->conn, c->pool->names[q->named - 1], q->sql, q->nparams, NULL);
    } else {
        ok = PQsendQueryPrepared(c->conn, c->pool->names[q->named - 1], q->nparams, params, NULL,
                                 NULL, 0);
    }
    if (!ok) {
        pgc_drop(c, "PostgreSQL connection lost");
        return false;
    }
    int f = PQflush(c->conn);
    if (f < 0) {
        pgc_drop(c, "PostgreSQL connection lost");
        return false;
    }
    pgc_watch(c, f == 1 ? (EV_READ | EV_WRITE) : EV_READ);
    return true;
}

static void pgc_start(struct pgc *c, struct pgquery *q)
{
    c->q = q;
    pgc_set_state(c, PGC_BUSY);
    long ms = c->pool->timeout_ms + 1000;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(c->deadline, &tv);
    pgc_send(c);
}

static void pool_dispatch(struct pgpool *p)
{
    for (int i = 0; i < p->size && p->head; i++) {
        struct pgc *c = &p->conns[i];
        if (c->state != PGC_IDLE)
            continue;
        if (PQstatus(c->conn) != CONNECTION_OK) {
            pgc_drop(c, "PostgreSQL connection lost");
            continue;
        }
        struct pgquery *q = p->head;
        p->head = q->next;
        if (!p->head)
            p->tail = NULL;
        p->waiting--;
        pgc_start(c, q);
    }
}

static void pool_kick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pool_dispatch(arg);
}

/* Reconnects dropped connections and fails queries that waited too long
 * (e.g. while PostgreSQL is down), so callers answer 503 promptly. */
static void pool_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pgpool *p = arg;
    (void)fd;
    (void)what;
    struct timeval now;
    gettimeofday(&now, NULL);
    int up = 0;
    for (int i = 0; i < p->size; i++) {
        struct pgc *c = &p->conns[i];
        if (c->state == PGC_DOWN && timercmp(&now, &c->next_try, >=))
            pgc_connect(c);
        if (c->state == PGC_IDLE || c->state == PGC_BUSY)
            up++;
    }
    long limit = up ? p->timeout_ms : 1000;
    while (p->head && ms_since(&p->head->queued_at) > limit) {
        struct pgquery *q = p->head;
        p->head = q->next;
        if (!p->head)
            p->tail = NULL;
        p->waiting--;
        query_finish(q, NULL, up ? "PostgreSQL pool busy" : p->last_error, "");
    }
}

struct pgpool *pgpool_new(struct event_base *base, const char *url, const char *app_name, int size,
                          int timeout_ms)
{
    return pgpool_new_with(base, url, app_name, size, timeout_ms, NULL);
}

struct pgpool *pgpool_new_with(struct event_base *base, const char *url, const char *app_name,
                               int size, int timeout_ms, const char *settings)
{
    if (!base || !url || size <= 0 || timeout_ms <= 0)
        return NULL;
    struct pgpool *p = xcalloc(1, sizeof(*p));
    p->base = base;
    p->url = xstrdup(url);
    p->app_name = xstrdup(app_name);
    p->size = size;
    p->timeout_ms = timeout_ms;
    int n = snprintf(p->options, sizeof(p->options), "-c statement_timeout=%d%s%s", timeout_ms,
                     settings ? " " : "", settings ? settings : "");
    if (n < 0 || (size_t)n >= sizeof(p->options)) {
        free(p->url);
        free(p->app_name);
        free(p);
        return NULL;
    }
    snprintf(p->last_error, sizeof(p->last_error), "PostgreSQL not connected yet");
    p->conns = xcalloc((size_t)size, sizeof(*p->conns));
    p->kick = event_new(base, -1, 0, pool_kick_cb, p);
    p->tick = event_new(base, -1, EV_PERSIST, pool_tick_cb, p);
    struct timeval tv = {0, 100 * 1000};
    event_add(p->tick, &tv);
    for (int i = 0; i < size; i++) {
        struct pgc *c = &p->conns[i];
        c->pool = p;
        c->io = event_new(base, -1, 0, pgc_io_cb, c);
        c->deadline = evtimer_new(base, pgc_deadline_cb, c);
        pgc_connect(c);
    }
    return p;
}

static void enqueue(struct pgpool *p, int named, const char *sql, int nparams,
                    const char *const *params, pgpool_cb cb, void *arg)
{
    struct pgquery *q = xcalloc(1, sizeof(*q));
    q->sql = xstrdup(sql);
    q->named = named;
    q->nparams = nparams;
    q->params = xcalloc((size_t)(nparams ? nparams : 1), sizeof(char *));
    for (int i = 0; i < nparams; i++)
        q->params[i] = params[i] ? xstrdup(params[i]) : NULL;
    q->cb = cb;
    q->arg = arg;
    gettimeofday(&q->queued_at, NULL);
    if (p->tail)
        p->tail->next = q;
    else
        p->head = q;
    p->tail = q;
    p->waiting++;
    event_active(p->kick, 0, 0);
}

void pgpool_query(struct pgpool *p, const char *sql, int nparams, const char *const *params,
                  pgpool_cb cb, void *arg)
{
    enqueue(p, 0, sql, nparams, params, cb, arg);
}

void pgpool_query_named(struct pgpool *p, const char *name, const char *sql, int nparams,
                        const char *const *params, pgpool_cb cb, void *arg)
{
    int i = 0;
    while (i < p->nnames && strcmp(p->names[i], name) != 0)
        i++;
    if (i == p->nnames) {
        if (p->nnames == PGPOOL_MAX_NAMED) {
            enqueue(p, 0, sql, nparams, params, cb, arg); /* unprepared, still right */
            return;
        }
        p->names[p->nnames++] = name;
    }
    enqueue(p, i + 1, sql, nparams, params, cb, arg);
}

int pgpool_busy(const struct pgpool *p)
{
    return p->waiting + p->running;
}

void pgpool_free(struct pgpool *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->size; i++) {
        struct pgc *c = &p->conns[i];
        if (c->q)
            query_finish(c->q, NULL, "shutting down", "");
        c->q = NULL;
        if (c->res)
            PQclear(c->res);
        if (c->conn)
            PQfinish(c->conn);
        event_free(c->io);
        event_free(c->deadline);
    }
    while (p->head) {
        struct pgquery *q = p->head;
        p->head = q->next;
        query_finish(q, NULL, "shutting down", "");
    }
    event_free(p->kick);
    event_free(p->tick);
    free(p->conns);
    free(p->url);
    free(p->app_name);
    free(p);
}
