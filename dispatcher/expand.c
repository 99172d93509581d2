/* expand.c - turns a launched campaign's segment into deliveries and jobs.
 *
 * One statement per page both selects the next customers of the segment
 * (keyset on customers.id), inserts their deliveries (the UNIQUE dedupe key
 * makes a repeat a no-op) and advances the campaign's cursor, atomically.
 * Deliveries are born 'queued'; their jobs are then XADDed (pipelined), and
 * the next statement records the page's highest delivery id as the
 * campaign's enqueued_cursor. A crash after the commit but before the XADD
 * leaves 'queued' rows above that cursor, which repair_outbox() enqueues
 * again on restart: every delivery gets at least one job, and the worker's
 * claim makes extra jobs harmless. (Retries come back as 'pending' rows and
 * are marked 'queued' after their XADD; 'pending' rows that stay so are
 * likewise enqueued again.)
 * Memory is bounded by one page, whatever the segment's size. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "dispatcher.h"
#include "log.h"
#include "segment.h"
#include "xalloc.h"

static const char sql_running[] =
    "SELECT id, tenant_id, channel, segment_criteria::text, dispatch_cursor, enqueued_cursor"
    " FROM campaigns"
    " WHERE status = 'running' AND expanded_at IS NULL ORDER BY launched_at, id LIMIT 20";

/* %s is the compiled segment expression; its parameters start at $7.
 * $6 is the highest delivery id whose job was XADDed by the previous page. */
static const char sql_page_fmt[] =
    "WITH page AS ("
    "  SELECT c.id FROM customers c"
    "  WHERE c.tenant_id = $1 AND c.id > $3::bigint AND (%s)"
    "  ORDER BY c.id LIMIT $4::int"
    "), ins AS ("
    "  INSERT INTO deliveries (tenant_id, campaign_id, customer_id, channel, status)"
    "  SELECT $1, $2, id, $5, 'queued' FROM page"
    "  ON CONFLICT ON CONSTRAINT deliveries_dedupe_key DO NOTHING"
    "  RETURNING id"
    "), cur AS ("
    "  UPDATE campaigns SET dispatch_cursor = (SELECT max(id) FROM page),"
    "    enqueued_cursor = GREATEST(enqueued_cursor, $6::bigint), updated_at = now()"
    "  WHERE tenant_id = $1 AND id = $2 AND status = 'running'"
    "    AND EXISTS (SELECT 1 FROM page)"
    "  RETURNING dispatch_cursor"
    ")"
    " SELECT (SELECT count(*) FROM page), (SELECT max(id) FROM page),"
    "  (SELECT string_agg(id::text, ',') FROM ins), (SELECT count(*) FROM cur)";

static const char sql_expanded[] =
    "UPDATE campaigns SET expanded_at = now(), updated_at = now(),"
    "  enqueued_cursor = GREATEST(enqueued_cursor, $3::bigint)"
    " WHERE tenant_id = $1 AND id = $2 AND status = 'running' AND expanded_at IS NULL";

/* Born-queued deliveries above the outbox marker: their XADD may not have
 * happened (crash between commit and XADD). */
static const char sql_unenqueued[] =
    "SELECT k.tenant_id, k.id, k.channel, string_agg(d.id::text, ',' ORDER BY d.id), max(d.id)"
    " FROM campaigns k JOIN deliveries d ON d.campaign_id = k.id AND d.tenant_id = k.tenant_id"
    " WHERE k.status IN ('running', 'paused') AND d.status = 'queued' AND d.id > k.enqueued_cursor"
    " GROUP BY k.tenant_id, k.id, k.channel";

static const char sql_set_enqueued[] =
    "UPDATE campaigns SET enqueued_cursor = GREATEST(enqueued_cursor, $3::bigint)"
    " WHERE tenant_id = $1 AND id = $2";

static const char sql_mark_queued[] =
    "UPDATE deliveries SET status = 'queued', updated_at = now()"
    " WHERE id = ANY($1::bigint[]) AND tenant_id = $2 AND status = 'pending'";

static const char sql_stale_pending[] =
    "SELECT d.tenant_id, d.campaign_id, d.channel, string_agg(d.id::text, ',')"
    " FROM deliveries d JOIN campaigns k ON k.id = d.campaign_id AND k.tenant_id = d.tenant_id"
    " WHERE d.status = 'pending' AND k.status = 'running'"
    "   AND d.updated_at < now() - make_interval(secs => $1::int)"
    " GROUP BY d.tenant_id, d.campaign_id, d.channel";

/* Due retries go back to 'pending' (not 'queued'): the outbox rule then
 * guarantees their job even if we crash before the XADD. */
static const char sql_promote[] =
    "WITH due AS (SELECT d.id FROM deliveries d WHERE d.status = 'retry'"
    "  AND d.next_attempt_at <= now() AND EXISTS (SELECT 1 FROM campaigns k"
    "    WHERE k.tenant_id = d.tenant_id AND k.id = d.campaign_id AND k.status = 'running')"
    "  ORDER BY d.next_attempt_at LIMIT 2000 FOR UPDATE OF d SKIP LOCKED)"
    " UPDATE deliveries d SET status = 'pending', updated_at = now() FROM due"
    " WHERE d.id = due.id"
    " RETURNING d.tenant_id, d.campaign_id, d.channel, d.id";

/* Scheduled campaigns whose time has come start running. */
static const char sql_start_scheduled[] =
    "UPDATE campaigns SET status = 'running', launched_at = now(), updated_at = now()"
    " WHERE status = 'scheduled' AND scheduled_at <= now() RETURNING id, tenant_id";

/* Resumed campaigns whose queued deliveries must be enqueued again. */
static const char sql_resumed[] = "SELECT id, tenant_id, channel, resume_gen FROM campaigns"
                                  " WHERE status = 'running' AND resume_gen > requeued_gen";

/* One keyset page of a campaign's queued deliveries. */
static const char sql_queued_page[] =
    "SELECT string_agg(id::text, ',' ORDER BY id), max(id) FROM"
    " (SELECT id FROM deliveries WHERE tenant_id = $1 AND campaign_id = $2 AND status = 'queued'"
    "   AND id > $3::bigint ORDER BY id LIMIT 2000) p";

static const char sql_requeued[] =
    "UPDATE campaigns SET requeued_gen = GREATEST(requeued_gen, $3::int)"
    " WHERE tenant_id = $1 AND id = $2";

static const char sql_complete[] =
    "UPDATE campaigns k SET status = 'completed', completed_at = now(), updated_at = now()"
    " WHERE k.status = 'running' AND k.expanded_at IS NOT NULL"
    "   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.campaign_id = k.id"
    "     AND d.status IN ('pending', 'queued', 'sending', 'retry'))"
    " RETURNING k.id, k.tenant_id";

static int channel_index(const char *ch)
{
    enum seg_channel c;
    if (seg_channel_parse(ch, &c) != CR_OK)
        return -1;
    return (int)c;
}

/* Splits a comma list in place into ids (at most max). */
static int split_ids(char *list, char **ids, int max)
{
    int n = 0;
    for (char *p = list; p && *p && n < max;) {
        ids[n++] = p;
        char *comma = strchr(p, ',');
        if (!comma)
            break;
        *comma = '\0';
        p = comma + 1;
    }
    return n;
}

enum cr_err enqueue_jobs(struct disp *d, int channel, const char *tenant, const char *campaign,
                         char **ids, int n, bool mark_queued)
{
    if (n == 0)
        return CR_OK;
    const char *key = d->keys.jobs[channel];
    for (int i = 0; i < n; i++)
        redisAppendCommand(d->redis, "XADD %s * d %s t %s c %s", key, ids[i], tenant, campaign);
    enum cr_err err = CR_OK;
    for (int i = 0; i < n; i++) {
        redisReply *rep = NULL;
        if (redisGetReply(d->redis, (void **)&rep) != REDIS_OK || !rep) {
            log_error("XADD %s: %s", key, d->redis->errstr);
            return CR_EREDIS; /* connection is unusable now; the caller reconnects */
        }
        if (rep->type == REDIS_REPLY_ERROR) {
            log_error("XADD %s: %s", key, rep->str);
            err = CR_EREDIS;
        }
        freeReplyObject(rep);
    }
    if (err || !mark_queued)
        return err;

    struct buf arr;
    buf_init(&arr, (size_t)n * 24 + 16);
    enum cr_err e = buf_putc(&arr, '{');
    for (int i = 0; i < n && !e; i++)
        e = buf_printf(&arr, "%s%s", i ? "," : "", ids[i]);
    if (!e)
        e = buf_putc(&arr, '}');
    if (!e) {
        const char *params[] = {buf_str(&arr), tenant};
        e = db_exec(d->pg, "mark queued", sql_mark_queued, 2, params, NULL);
    }
    buf_cleanup(&arr);
    return e;
}

static enum cr_err expand_one(struct disp *d, const char *id, const char *tenant,
                              const char *channel, const char *criteria_text, const char *cursor,
                              const char *enqueued)
{
    enum cr_err err = CR_OK;
    int ch = channel_index(channel);
    cJSON *criteria = cJSON_Parse(criteria_text);
    struct seg_query q;
    memset(&q, 0, sizeof(q));
    char field[64], msg[192];
    char *sql = NULL;
    char **ids = NULL;
    char cur[24], enq[24];
    snprintf(cur, sizeof(cur), "%s", cursor);
    snprintf(enq, sizeof(enq), "%s", enqueued);

    if (ch < 0 || !criteria) {
        log_error("campaign %s: unusable channel or criteria; skipping", id);
        err = CR_EINVAL;
        goto out;
    }
    if (seg_compile(criteria, (enum seg_channel)ch, 7, &q, field, sizeof(field), msg,
                    sizeof(msg)) != CR_OK) {
        log_error("campaign %s: segment does not compile (%s: %s)", id, field, msg);
        err = CR_EINVAL;
        goto out;
    }
    sql = xasprintf(sql_page_fmt, buf_str(&q.sql));
    int nparams = 6 + q.nparams;
    const char **params = xcalloc((size_t)nparams, sizeof(char *));
    char page[24];
    snprintf(page, sizeof(page), "%ld", d->cfg->page_size);
    params[0] = tenant;
    params[1] = id;
    params[2] = cur;
    params[3] = page;
    params[4] = channel;
    params[5] = enq;
    for (int i = 0; i < q.nparams; i++)
        params[6 + i] = q.params[i];
    ids = xcalloc((size_t)d->cfg->page_size, sizeof(char *));

    long total = 0;
    log_info("campaign %s: expanding from customer %s", id, cur);
    while (!*d->stop) {
        PGresult *res = NULL;
        if ((err = db_exec(d->pg, "expand page", sql, nparams, params, &res)) != CR_OK)
            break;
        long n = strtol(PQgetvalue(res, 0, 0), NULL, 10);
        bool advanced = strtol(PQgetvalue(res, 0, 3), NULL, 10) == 1;
        if (n > 0 && !advanced) {
            /* The campaign left 'running' (paused/cancelled) meanwhile. */
            PQclear(res);
            log_info("campaign %s: no longer running; expansion stops", id);
            break;
        }
        if (n > 0)
            snprintf(cur, sizeof(cur), "%s", PQgetvalue(res, 0, 1));
        char *list = PQgetisnull(res, 0, 2) ? NULL : xstrdup(PQgetvalue(res, 0, 2));
        PQclear(res);
        int k = list ? split_ids(list, ids, (int)d->cfg->page_size) : 0;
        err = enqueue_jobs(d, ch, tenant, id, ids, k, false);
        for (int i = 0; !err && i < k; i++)
            if (strtoll(ids[i], NULL, 10) > strtoll(enq, NULL, 10))
                snprintf(enq, sizeof(enq), "%s", ids[i]);
        free(list);
        if (err)
            break;
        total += k;
        if (n < d->cfg->page_size) {
            const char *p2[] = {tenant, id, enq};
            err = db_exec(d->pg, "mark expanded", sql_expanded, 3, p2, NULL);
            if (!err)
                log_info("campaign %s: expanded, %ld deliveries created this run", id, total);
            break;
        }
    }
    free(params);
out:
    free(ids);
    free(sql);
    seg_query_cleanup(&q);
    cJSON_Delete(criteria);
    return err;
}

enum cr_err expand_pending_campaigns(struct disp *d)
{
    PGresult *res = NULL;
    enum cr_err err = db_exec(d->pg, "running campaigns", sql_running, 0, NULL, &res);
    if (err)
        return err;
    for (int i = 0; i < PQntuples(res) && !*d->stop; i++) {
        err = expand_one(d, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 2),
                         PQgetvalue(res, i, 3), PQgetvalue(res, i, 4), PQgetvalue(res, i, 5));
        if (err == CR_EREDIS || err == CR_EPG)
            break;
        err = CR_OK; /* a broken campaign must not stop the others */
    }
    PQclear(res);
    return err;
}

/* Enqueues every delivery id of a comma-separated list, 1000 per pipeline. */
static enum cr_err enqueue_list(struct disp *d, const char *channel, const char *tenant,
                                const char *campaign, const char *list_text, bool mark_queued,
                                const char *why)
{
    char *list = xstrdup(list_text);
    int max = 1;
    for (char *p = list; *p; p++)
        max += *p == ',';
    char **ids = xcalloc((size_t)max, sizeof(char *));
    int n = split_ids(list, ids, max);
    log_info("campaign %s: enqueueing %d deliveries %s", campaign, n, why);
    enum cr_err err = CR_OK;
    for (int off = 0; off < n && !err; off += 1000) {
        int k = n - off < 1000 ? n - off : 1000;
        err = enqueue_jobs(d, channel_index(channel), tenant, campaign, ids + off, k, mark_queued);
    }
    free(ids);
    free(list);
    return err;
}

enum cr_err repair_outbox(struct disp *d, long min_age_s)
{
    char age[24];
    snprintf(age, sizeof(age), "%ld", min_age_s);
    const char *params[] = {age};
    PGresult *res = NULL;
    enum cr_err err = db_exec(d->pg, "stale pending", sql_stale_pending, 1, params, &res);
    if (err)
        return err;
    for (int i = 0; i < PQntuples(res) && !err; i++)
        err = enqueue_list(d, PQgetvalue(res, i, 2), PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                           PQgetvalue(res, i, 3), true, "left pending");
    PQclear(res);
    return err;
}

enum cr_err repair_unenqueued(struct disp *d)
{
    PGresult *res = NULL;
    enum cr_err err = db_exec(d->pg, "unenqueued", sql_unenqueued, 0, NULL, &res);
    if (err)
        return err;
    for (int i = 0; i < PQntuples(res) && !err; i++) {
        const char *tenant = PQgetvalue(res, i, 0), *campaign = PQgetvalue(res, i, 1);
        err = enqueue_list(d, PQgetvalue(res, i, 2), tenant, campaign, PQgetvalue(res, i, 3), false,
                           "whose job may be missing");
        if (!err) {
            const char *p[] = {tenant, campaign, PQgetvalue(res, i, 4)};
            err = db_exec(d->pg, "set enqueued", sql_set_enqueued, 3, p, NULL);
        }
    }
    PQclear(res);
    return err;
}

enum cr_err start_scheduled(struct disp *d)
{
    PGresult *res = NULL;
    enum cr_err err = db_exec(d->pg, "start scheduled", sql_start_scheduled, 0, NULL, &res);
    if (err)
        return err;
    for (int i = 0; i < PQntuples(res); i++)
        log_info("campaign %s (tenant %s): scheduled time reached; running", PQgetvalue(res, i, 0),
                 PQgetvalue(res, i, 1));
    PQclear(res);
    return CR_OK;
}

enum cr_err requeue_resumed(struct disp *d)
{
    PGresult *res = NULL;
    enum cr_err err = db_exec(d->pg, "resumed campaigns", sql_resumed, 0, NULL, &res);
    if (err)
        return err;
    for (int i = 0; i < PQntuples(res) && !err; i++) {
        const char *id = PQgetvalue(res, i, 0), *tenant = PQgetvalue(res, i, 1);
        char after[24] = "0";
        for (;;) {
            const char *p[] = {tenant, id, after};
            PGresult *page = NULL;
            if ((err = db_exec(d->pg, "queued page", sql_queued_page, 3, p, &page)) != CR_OK)
                break;
            bool empty = PQgetisnull(page, 0, 0);
            if (!empty) {
                err = enqueue_list(d, PQgetvalue(res, i, 2), tenant, id, PQgetvalue(page, 0, 0),
                                   false, "after a resume");
                snprintf(after, sizeof(after), "%s", PQgetvalue(page, 0, 1));
            }
            PQclear(page);
            if (empty || err)
                break;
        }
        if (!err) {
            const char *p[] = {tenant, id, PQgetvalue(res, i, 3)};
            err = db_exec(d->pg, "requeued", sql_requeued, 3, p, NULL);
        }
    }
    PQclear(res);
    return err;
}

enum cr_err complete_campaigns(struct disp *d)
{
    PGresult *res = NULL;
    enum cr_err err = db_exec(d->pg, "complete campaigns", sql_complete, 0, NULL, &res);
    if (err)
        return err;
    for (int i = 0; i < PQntuples(res); i++)
        log_info("campaign %s (tenant %s): every delivery is terminal; completed",
                 PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
    PQclear(res);
    return CR_OK;
}

enum cr_err promote_retries(struct disp *d)
{
    PGresult *res = NULL;
    enum cr_err err = db_exec(d->pg, "promote retries", sql_promote, 0, NULL, &res);
    if (err)
        return err;
    /* Rows come back in any order: enqueue each on its own (retries are
     * few compared with first attempts). */
    for (int i = 0; i < PQntuples(res) && !err; i++) {
        char *id = PQgetvalue(res, i, 3);
        err = enqueue_jobs(d, channel_index(PQgetvalue(res, i, 2)), PQgetvalue(res, i, 0),
                           PQgetvalue(res, i, 1), &id, 1, true);
    }
    if (PQntuples(res) > 0)
        log_info("re-enqueued %d due retries", PQntuples(res));
    PQclear(res);
    return err;
}
