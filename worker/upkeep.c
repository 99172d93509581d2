/* upkeep.c - the inbound stream's housekeeping, done by each worker.
 *
 * Trimming: every UPKEEP_TRIM_EVERY s the stream is trimmed (XTRIM MINID,
 * exact) below the oldest entry the group still needs - its oldest pending
 * entry, else its last delivered one - so an entry not yet applied is never
 * trimmed, however long PostgreSQL or the workers were away (a trim by age
 * at XADD could drop those). The bound is read first (XINFO GROUPS, then
 * XPENDING) and only ever lags: entries delivered or added meanwhile come
 * after it. Another consumer group on the stream lowers the bound to its
 * last delivered entry, and stops the trim while it has entries pending
 * (they are not looked up). Exact trimming, not "~": every entry below the
 * bound is applied, and the cost is the entries removed since the last
 * trim.
 *
 * Purging: UPKEEP_PURGE_FIRST s after start, then every
 * UPKEEP_PURGE_EVERY s, inbound_seen loses the dedupe keys older than
 * UPKEEP_SEEN_DAYS - far past any redelivery of their entry (a 'wait'
 * entry is given up after minutes) - UPKEEP_PURGE_BATCH rows a statement,
 * more statements while they come back full (UPKEEP_PURGE_ROUNDS at most,
 * one at a time). */
#include <hiredis/async.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "upkeep.h"
#include "worker.h"
#include "xalloc.h"

#define UPKEEP_TRIM_EVERY 15  /* ticks (seconds) */
#define UPKEEP_PURGE_FIRST 3  /* ticks after start */
#define UPKEEP_PURGE_EVERY 30 /* ticks */
#define UPKEEP_SEEN_DAYS 30   /* dedupe keys kept this long */
#define UPKEEP_PURGE_BATCH 5000
#define UPKEEP_PURGE_ROUNDS 20

/* $1 days, $2 rows. Every tenant's rows (housekeeping, like
 * reconciliation's claim); SKIP LOCKED: the workers purge side by side. */
static const char sql_purge_seen[] =
    "WITH o AS (SELECT tenant_id, key FROM inbound_seen"
    "   WHERE seen_at < now() - make_interval(days => $1::int)"
    "   ORDER BY seen_at LIMIT $2::int FOR UPDATE SKIP LOCKED)"
    " DELETE FROM inbound_seen s USING o WHERE s.tenant_id = o.tenant_id AND s.key = o.key";

struct upkeep {
    struct worker *w;
    const char *group;
    int ticks;
    bool trimming;       /* XINFO / XPENDING / XTRIM outstanding */
    char trim_bound[32]; /* while trimming: the oldest entry still needed */
    bool purging;        /* a purge statement is running */
    int purge_rounds;
};

/* ---------------------------------------------------------------------
 * Trimming
 * ------------------------------------------------------------------- */

/* Stream ids "ms-seq" compared as numbers; an unparsable one sorts first. */
static int id_cmp(const char *a, const char *b)
{
    uint64_t am = 0, as = 0, bm = 0, bs = 0;
    if (sscanf(a, "%" SCNu64 "-%" SCNu64, &am, &as) < 1)
        return -1;
    if (sscanf(b, "%" SCNu64 "-%" SCNu64, &bm, &bs) < 1)
        return 1;
    return am != bm ? (am < bm ? -1 : 1) : as != bs ? (as < bs ? -1 : 1) : 0;
}

static void trimmed(redisAsyncContext *ac, void *reply, void *priv)
{
    struct upkeep *u = priv;
    redisReply *r = reply;
    (void)ac;
    u->trimming = false;
    if (r && r->type == REDIS_REPLY_ERROR)
        log_warn("XTRIM %s: %s", u->w->keys.inbound, r->str);
    else if (r && r->type == REDIS_REPLY_INTEGER && r->integer > 0)
        log_debug("inbound stream: %lld applied entries trimmed (below %s)", r->integer,
                  u->trim_bound);
}

/* XPENDING's summary [count, smallest, greatest, consumers]: the bound
 * comes down to the oldest pending entry, then the stream is trimmed. */
static void trim_pending(redisAsyncContext *ac, void *reply, void *priv)
{
    struct upkeep *u = priv;
    struct worker *w = u->w;
    redisReply *r = reply;
    (void)ac;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER) {
        u->trimming = false;
        return;
    }
    if (r->element[0]->integer > 0) {
        if (r->element[1]->type != REDIS_REPLY_STRING) {
            u->trimming = false;
            return;
        }
        if (id_cmp(r->element[1]->str, u->trim_bound) < 0)
            snprintf(u->trim_bound, sizeof(u->trim_bound), "%s", r->element[1]->str);
    }
    if (!strcmp(u->trim_bound, "0-0") || w->stopping || !w->wr ||
        redisAsyncCommand(w->wr, trimmed, u, "XTRIM %s MINID %s", w->keys.inbound, u->trim_bound) !=
            REDIS_OK)
        u->trimming = false;
}

/* XINFO GROUPS: every group's last delivered id bounds the trim; a group
 * other than ours with entries pending stops it (its pending entries are
 * not looked up). */
static void trim_groups(redisAsyncContext *ac, void *reply, void *priv)
{
    struct upkeep *u = priv;
    struct worker *w = u->w;
    redisReply *r = reply;
    (void)ac;
    bool ours = false, ok = r && r->type == REDIS_REPLY_ARRAY;
    u->trim_bound[0] = '\0';
    for (size_t g = 0; ok && g < r->elements; g++) {
        const redisReply *grp = r->element[g];
        const char *name = NULL, *last = NULL;
        long long pending = -1;
        if (grp->type != REDIS_REPLY_ARRAY) {
            ok = false;
            break;
        }
        for (size_t k = 0; k + 1 < grp->elements; k += 2) {
            const redisReply *f = grp->element[k], *v = grp->element[k + 1];
            if (f->type != REDIS_REPLY_STRING)
                continue;
            if (!strcmp(f->str, "name") && v->type == REDIS_REPLY_STRING)
                name = v->str;
            else if (!strcmp(f->str, "last-delivered-id") && v->type == REDIS_REPLY_STRING)
                last = v->str;
            else if (!strcmp(f->str, "pending") && v->type == REDIS_REPLY_INTEGER)
                pending = v->integer;
        }
        if (!name || !last || pending < 0) {
            ok = false;
            break;
        }
        bool mine = !strcmp(name, u->group);
        ours = ours || mine;
        if (!mine && pending > 0)
            ok = false;
        else if (!u->trim_bound[0] || id_cmp(last, u->trim_bound) < 0)
            snprintf(u->trim_bound, sizeof(u->trim_bound), "%s", last);
    }
    if (!ok || !ours || w->stopping || !w->wr ||
        redisAsyncCommand(w->wr, trim_pending, u, "XPENDING %s %s", w->keys.inbound, u->group) !=
            REDIS_OK)
        u->trimming = false;
}

/* Trims the entries every group is done with (see the top). */
static void trim(struct upkeep *u)
{
    struct worker *w = u->w;
    if (u->trimming || w->stopping || !w->wr || !w->wr_ready)
        return;
    if (redisAsyncCommand(w->wr, trim_groups, u, "XINFO GROUPS %s", w->keys.inbound) == REDIS_OK)
        u->trimming = true;
}

/* ---------------------------------------------------------------------
 * Purging old dedupe keys
 * ------------------------------------------------------------------- */

static void purge_round(struct upkeep *u);

static void purged(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct upkeep *u = arg;
    (void)sqlstate;
    if (!res) {
        u->purging = false;
        if (!u->w->stopping)
            log_warn("purging old inbound dedupe keys failed: %s", errmsg);
        return;
    }
    long n = strtol(PQcmdTuples(res), NULL, 10);
    if (n > 0)
        log_info("inbound: %ld dedupe keys older than %d days purged", n, UPKEEP_SEEN_DAYS);
    if (n >= UPKEEP_PURGE_BATCH && ++u->purge_rounds < UPKEEP_PURGE_ROUNDS && !u->w->stopping)
        purge_round(u); /* more: go on, one statement at a time */
    else
        u->purging = false;
}

static void purge_round(struct upkeep *u)
{
    char days[16], rows[16];
    snprintf(days, sizeof(days), "%d", UPKEEP_SEEN_DAYS);
    snprintf(rows, sizeof(rows), "%d", UPKEEP_PURGE_BATCH);
    const char *params[] = {days, rows};
    pgpool_query(u->w->pool, sql_purge_seen, 2, params, purged, u);
}

static void purge(struct upkeep *u)
{
    if (u->purging || u->w->stopping)
        return;
    u->purging = true;
    u->purge_rounds = 0;
    purge_round(u);
}

/* ---------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------- */

struct upkeep *upkeep_new(struct worker *w, const char *group)
{
    struct upkeep *u = xcalloc(1, sizeof(*u));
    u->w = w;
    u->group = group;
    return u;
}

void upkeep_tick(struct upkeep *u)
{
    if (!u || u->w->stopping)
        return;
    u->ticks++;
    if (u->ticks % UPKEEP_TRIM_EVERY == UPKEEP_TRIM_EVERY / 2)
        trim(u);
    if (u->ticks % UPKEEP_PURGE_EVERY == UPKEEP_PURGE_FIRST)
        purge(u);
}

void upkeep_free(struct upkeep *u)
{
    free(u);
}
