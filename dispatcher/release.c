/* release.c - releases a campaign's deliveries as jobs, at its pace and in
 * each recipient's send window, and moves due delayed jobs to the streams.
 *
 * The release cursor (campaigns.enqueued_cursor) walks the campaign's
 * deliveries in id order: every queued delivery at or below it has been
 * released - XADDed to its stream when the recipient's window is open,
 * ZADDed to crier:delayed for the window's next opening otherwise, or
 * skipped as 'expired' when that opening is past the campaign's expiry.
 * The cursor is written after the XADDs, so a crash releases a step again
 * (extra jobs are harmless: the worker's claim takes a delivery once) and
 * never skips one. A paced campaign spends one token per XADD (pace.c);
 * deferrals and expiries are free, and deferred jobs spend theirs when they
 * are moved to the stream, so a window opening does not burst past the
 * pace. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db.h"
#include "dispatcher.h"
#include "log.h"
#include "pace.h"
#include "xalloc.h"

#define RELEASE_STEP 2000
#define PACED_MIN_READ 200
#define MOVE_LIMIT 1000

/* $1 tenant, $2 campaign, $3 this dispatcher, $4 release cursor, $5 limit,
 * $6 send window, $7 deadline. Rows: id, o(pen)|d(eferred)|x (expired), due ms. */
static const char sql_release[] =
    "WITH lk AS (SELECT 1 FROM campaigns k WHERE k.tenant_id = $1 AND k.id = $2"
    "   AND k.status = 'running' AND k.lease_owner = $3),"
    " r AS (SELECT d.id, COALESCE(c.timezone, 'UTC') AS tz FROM deliveries d"
    "   LEFT JOIN customers c ON c.tenant_id = d.tenant_id AND c.id = d.customer_id"
    "   WHERE EXISTS (SELECT 1 FROM lk) AND d.campaign_id = $2 AND d.status = 'queued'"
    "     AND d.id > $4::bigint AND d.tenant_id = $1 ORDER BY d.id LIMIT $5::int),"
    " tz AS MATERIALIZED (SELECT z.tz, crier_window_due(z.tz, $6::jsonb, now()) AS due"
    "   FROM (SELECT DISTINCT tz FROM r) z),"
    " x AS (SELECT r.id, tz.due, tz.due > $7::timestamptz AS expired FROM r JOIN tz USING (tz)),"
    " sk AS (UPDATE deliveries d SET status = 'skipped', skip_reason = 'expired',"
    "     updated_at = now() FROM x WHERE x.expired AND d.id = x.id AND d.tenant_id = $1"
    "     AND d.status = 'queued'"
    "   RETURNING d.id),"
    " df AS (UPDATE deliveries d SET next_attempt_at = x.due FROM x"
    "   WHERE x.expired IS NOT TRUE AND x.due > now() AND d.id = x.id AND d.tenant_id = $1"
    "     AND d.status = 'queued'"
    "   RETURNING d.id)"
    " SELECT x.id, CASE WHEN x.expired THEN 'x' WHEN x.due > now() THEN 'd' ELSE 'o' END,"
    "   (extract(epoch FROM x.due) * 1000)::bigint,"
    "   (SELECT count(*) FROM sk) + 0 * (SELECT count(*) FROM df)"
    " FROM x ORDER BY x.id";

static const char sql_advance[] =
    "UPDATE campaigns SET enqueued_cursor = GREATEST(enqueued_cursor, $3::bigint),"
    "  lease_until = now() + make_interval(secs => $5::int)"
    " WHERE tenant_id = $1 AND id = $2 AND lease_owner = $4 AND status = 'running'";

static const char sql_rewind[] =
    "UPDATE campaigns k SET requeued_gen = k.resume_gen,"
    "  enqueued_cursor = LEAST(k.enqueued_cursor, COALESCE((SELECT min(d.id) - 1 FROM deliveries d"
    "    WHERE d.campaign_id = k.id AND d.status = 'queued' AND d.tenant_id = k.tenant_id),"
    "    k.enqueued_cursor))"
    " WHERE k.tenant_id = $1 AND k.id = $2 AND k.lease_owner = $3 AND k.status = 'running'"
    " RETURNING k.enqueued_cursor";

long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int split_list(char *list, char **items, int max)
{
    int n = 0;
    for (char *p = list; p && *p && n < max;) {
        items[n++] = p;
        char *comma = strchr(p, ',');
        if (!comma)
            break;
        *comma = '\0';
        p = comma + 1;
    }
    return n;
}

/* Reads n pipelined replies; any error reply fails the batch. */
static enum cr_err read_replies(struct disp *d, int n, const char *what)
{
    enum cr_err err = CR_OK;
    for (int i = 0; i < n; i++) {
        redisReply *rep = NULL;
        if (redisGetReply(d->redis, (void **)&rep) != REDIS_OK || !rep) {
            log_error("%s: %s", what, d->redis->errstr);
            return CR_EREDIS; /* the connection is unusable; the caller reconnects */
        }
        if (rep->type == REDIS_REPLY_ERROR) {
            log_error("%s: %s", what, rep->str);
            err = CR_EREDIS;
        }
        freeReplyObject(rep);
    }
    return err;
}

enum cr_err xadd_jobs(struct disp *d, int channel, const char *tenant, const char *campaign,
                      char **ids, int n)
{
    const char *key = d->keys.jobs[channel];
    for (int i = 0; i < n; i++)
        redisAppendCommand(d->redis, "XADD %s * d %s t %s c %s", key, ids[i], tenant, campaign);
    return read_replies(d, n, "XADD");
}

enum cr_err defer_jobs(struct disp *d, const struct campaign *c, char **items, int n)
{
    /* Many members per ZADD: a deferred page is one round of a few commands.
     * A paced campaign's go through pace_lua_defer, which spreads those due
     * at the same opening at the campaign's pace. */
    enum { PER_CMD = 256, HEAD = 6 };
    const char *argv[HEAD + 2 * PER_CMD];
    size_t lens[HEAD + 2 * PER_CMD];
    char(*members)[PACE_MEMBER_MAX] = xcalloc(PER_CMD, PACE_MEMBER_MAX);
    char bucket[RQ_KEY_MAX + 32], rate[24];
    snprintf(bucket, sizeof(bucket), "%space:%s", d->cfg->key_prefix, c->id);
    snprintf(rate, sizeof(rate), "%ld", c->rate);
    int cmds = 0;
    for (int off = 0; off < n; off += PER_CMD) {
        int argc = 0;
        if (c->rate > 0) {
            argv[argc++] = "EVAL";
            argv[argc++] = pace_lua_defer;
            argv[argc++] = "2";
            argv[argc++] = d->keys.delayed;
            argv[argc++] = bucket;
            argv[argc++] = rate;
        } else {
            argv[argc++] = "ZADD";
            argv[argc++] = d->keys.delayed;
        }
        int head = argc;
        for (int i = off; i < n && i < off + PER_CMD; i++) {
            char *colon = strchr(items[i], ':');
            if (!colon)
                continue;
            *colon = '\0';
            char *m = members[i - off];
            pace_member(m, PACE_MEMBER_MAX, c->channel, items[i], c->tenant, c->id, c->rate);
            argv[argc++] = colon + 1;
            argv[argc++] = m;
        }
        for (int a = 0; a < argc; a++)
            lens[a] = strlen(argv[a]);
        if (argc > head) {
            redisAppendCommandArgv(d->redis, argc, argv, lens);
            cmds++;
        }
        /* members[] is reused by the next command: send this one now. */
        enum cr_err err = read_replies(d, cmds, "ZADD delayed");
        cmds = 0;
        if (err) {
            free(members);
            return err;
        }
    }
    free(members);
    return CR_OK;
}

enum cr_err move_due(struct disp *d, bool force)
{
    long long now = now_ms();
    if (!force && now - d->last_move_ms < 100)
        return CR_OK;
    d->last_move_ms = now;
    long moved = 0, next = -1, total = 0;
    enum cr_err err;
    int rounds = 0;
    do {
        err = pace_move_due(d->redis, d->cfg->key_prefix, MOVE_LIMIT, &moved, &next);
        total += moved;
    } while (!err && moved == MOVE_LIMIT && ++rounds < 50);
    d->next_move_ms = next;
    if (total > 0)
        log_debug("moved %ld due delayed jobs to their streams", total);
    return err;
}

enum cr_err start_due(struct disp *d, bool force)
{
    long long now = now_ms();
    if (!force && now - d->last_sched_ms < 500)
        return CR_OK;
    d->last_sched_ms = now;
    return start_scheduled(d);
}

enum cr_err rewind_campaign(struct disp *d, struct campaign *c)
{
    const char *p[] = {c->tenant, c->id, d->consumer};
    PGresult *res = NULL;
    enum cr_err err = db_exec(d->pg, "rewind", sql_rewind, 3, p, &res);
    if (err)
        return err;
    if (PQntuples(res) == 1) {
        snprintf(c->enqueued, sizeof(c->enqueued), "%s", PQgetvalue(res, 0, 0));
        log_info("campaign %s: resumed; releasing again from delivery %s", c->id, c->enqueued);
    }
    c->rewind = false;
    PQclear(res);
    return CR_OK;
}

/* One step: at most RELEASE_STEP deliveries. Sets *more when the step was
 * full and not stopped by the pace. */
static enum cr_err release_step(struct disp *d, struct campaign *c, bool *more)
{
    long limit = RELEASE_STEP, granted = -1, wait = 0;
    *more = false;
    if (c->rate > 0) {
        /* Tokens first, so a slow pace does not read a full step each
         * time; the step still reads PACED_MIN_READ rows, so deferrals and
         * expiries (free) are not walked at the pace. Unused tokens go
         * back. */
        enum cr_err err =
            pace_take(d->redis, d->cfg->key_prefix, c->id, c->rate, RELEASE_STEP, &granted, &wait);
        if (err)
            return err;
        limit = granted > PACED_MIN_READ ? granted : PACED_MIN_READ;
    }
    char lim[24];
    snprintf(lim, sizeof(lim), "%ld", limit);
    const char *p[] = {c->tenant, c->id, d->consumer, c->enqueued, lim, c->window, c->deadline};
    PGresult *res = NULL;
    enum cr_err err = db_exec(d->pg, "release", sql_release, 7, p, &res);
    if (err)
        return err;
    int n = PQntuples(res);
    if (granted < 0)
        granted = n;
    char **xs = xcalloc((size_t)n + 1, sizeof(char *));
    char **ds = xcalloc((size_t)n + 1, sizeof(char *));
    char(*dbuf)[48] = xcalloc((size_t)n + 1, sizeof(*dbuf));
    int nx = 0, nd = 0, done = 0;
    for (; done < n; done++) {
        char kind = PQgetvalue(res, done, 1)[0];
        if (kind == 'o') {
            if (nx == granted)
                break; /* out of tokens: the cursor stops before this one */
            xs[nx++] = PQgetvalue(res, done, 0);
        } else if (kind == 'd') {
            snprintf(dbuf[nd], sizeof(dbuf[nd]), "%s:%s", PQgetvalue(res, done, 0),
                     PQgetvalue(res, done, 2));
            ds[nd] = dbuf[nd];
            nd++;
        }
    }
    err = xadd_jobs(d, c->ch, c->tenant, c->id, xs, nx);
    if (!err)
        err = defer_jobs(d, c, ds, nd);
    char upto[24];
    if (done == n && n < limit)
        snprintf(upto, sizeof(upto), "%s", c->last); /* caught up */
    else if (done > 0)
        snprintf(upto, sizeof(upto), "%s", PQgetvalue(res, done - 1, 0));
    else
        upto[0] = '\0';
    if (!err && upto[0] && strtoll(upto, NULL, 10) > strtoll(c->enqueued, NULL, 10)) {
        char ttl[16];
        snprintf(ttl, sizeof(ttl), "%ld", d->cfg->lease_s);
        const char *p2[] = {c->tenant, c->id, upto, d->consumer, ttl};
        err = db_exec(d->pg, "advance release", sql_advance, 5, p2, NULL);
        if (!err)
            snprintf(c->enqueued, sizeof(c->enqueued), "%s", upto);
    }
    if (n > 0)
        log_debug("campaign %s: released %d, deferred %d, expired %s; cursor %s", c->id, nx, nd,
                  PQgetvalue(res, 0, 3), c->enqueued);
    if (!err && c->rate > 0 && granted > nx) {
        long back = 0, ignored = 0;
        err = pace_take(d->redis, d->cfg->key_prefix, c->id, c->rate, -(granted - nx), &back,
                        &ignored);
    }
    /* Stopped by the pace: come back when the bucket has a token again. */
    bool paced_out = c->rate > 0 && (done < n || (granted < RELEASE_STEP && wait > 0));
    c->wait_ms = paced_out ? (wait > 0 ? wait : 1) : 0;
    *more = !err && done == n && n == limit && !paced_out;
    free(dbuf);
    free(ds);
    free(xs);
    PQclear(res);
    return err;
}

enum cr_err release_campaign(struct disp *d, struct campaign *c, long long deadline_ms)
{
    enum cr_err err = CR_OK;
    bool more = true;
    while (more && !err && !*d->stop && campaign_unreleased(c)) {
        err = release_step(d, c, &more);
        if (!err)
            err = move_due(d, false);
        if (!err)
            err = start_due(d, false);
        if (now_ms() >= deadline_ms)
            break;
    }
    return err;
}
