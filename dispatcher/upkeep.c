/* upkeep.c - work any dispatcher may do at any time, safely in parallel:
 * starting scheduled campaigns, re-enqueueing due retries and deliveries
 * left 'pending', and completing campaigns whose deliveries are all
 * terminal. Each is one statement that claims its rows atomically. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "dispatcher.h"
#include "log.h"
#include "segment.h"
#include "xalloc.h"

/* Scheduled campaigns whose time has come start running. */
static const char sql_start_scheduled[] =
    "UPDATE campaigns SET status = 'running', launched_at = now(), updated_at = now()"
    " WHERE status = 'scheduled' AND scheduled_at <= now()"
    " RETURNING id, tenant_id, round(extract(epoch FROM now() - scheduled_at)::numeric, 3)";

static const char sql_mark_queued[] =
    "UPDATE deliveries SET status = 'queued', updated_at = now()"
    " WHERE id = ANY($1::bigint[]) AND tenant_id = $2 AND status = 'pending'";

static const char sql_stale_pending[] =
    "SELECT d.tenant_id, d.campaign_id, d.channel, string_agg(d.id::text, ',')"
    " FROM deliveries d JOIN campaigns k ON k.id = d.campaign_id AND k.tenant_id = d.tenant_id"
    " WHERE d.status = 'pending' AND k.status = 'running'"
    "   AND d.updated_at < now() - make_interval(secs => $1::int)"
    " GROUP BY d.tenant_id, d.campaign_id, d.channel";

/* A retry's job waits in crier:delayed (the worker puts it there with the
 * outcome). One still in 'retry' a minute after it was due lost that job
 * (a Redis failure): it goes back to 'pending' (not 'queued': the outbox
 * rule then guarantees its job even if we crash before the XADD). */
static const char sql_promote[] =
    "WITH due AS (SELECT d.id FROM deliveries d WHERE d.status = 'retry'"
    "  AND d.next_attempt_at <= now() - interval '60 seconds'"
    "  AND EXISTS (SELECT 1 FROM campaigns k"
    "    WHERE k.tenant_id = d.tenant_id AND k.id = d.campaign_id AND k.status = 'running')"
    "  ORDER BY d.next_attempt_at LIMIT 2000 FOR UPDATE OF d SKIP LOCKED)"
    " UPDATE deliveries d SET status = 'pending', updated_at = now() FROM due"
    " WHERE d.id = due.id"
    " RETURNING d.tenant_id, d.campaign_id, d.channel, d.id";

/* Running, expanded, every delivery terminal: completed. */
static const char sql_complete[] =
    "UPDATE campaigns k SET status = 'completed', completed_at = now(), updated_at = now(),"
    "   lease_owner = NULL, lease_until = NULL"
    " WHERE k.status = 'running' AND k.expanded_at IS NOT NULL"
    "   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.campaign_id = k.id"
    "     AND d.status IN ('pending', 'queued', 'sending', 'retry'))"
    " RETURNING k.id, k.tenant_id";

/* Cancel and complete close the deliveries not yet sent in the same
 * statement, but two kinds can appear after it: a page of the expansion
 * committed while the action waited for the campaign row (the action's
 * snapshot predates it), and a send in flight that comes back as a retry.
 * They are closed here, for campaigns that ended in the last hour. */
static const char sql_close_leftovers[] =
    "UPDATE deliveries d SET status = 'cancelled', next_attempt_at = NULL, updated_at = now()"
    " FROM campaigns k WHERE k.status IN ('cancelled', 'completed')"
    "   AND COALESCE(k.cancelled_at, k.completed_at) > now() - interval '1 hour'"
    "   AND d.tenant_id = k.tenant_id AND d.campaign_id = k.id"
    "   AND d.status IN ('pending', 'queued', 'retry')";

static int channel_index(const char *ch)
{
    enum seg_channel c;
    return seg_channel_parse(ch, &c) == CR_OK ? (int)c : -1;
}

/* XADDs then marks the pending deliveries queued. */
static enum cr_err enqueue_pending(struct disp *d, const char *channel, const char *tenant,
                                   const char *campaign, char **ids, int n)
{
    int ch = channel_index(channel);
    if (ch < 0 || n == 0)
        return CR_OK;
    enum cr_err e = xadd_jobs(d, ch, tenant, campaign, ids, n);
    if (e)
        return e;
    struct buf arr;
    buf_init(&arr, (size_t)n * 24 + 16);
    e = buf_putc(&arr, '{');
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

enum cr_err start_scheduled(struct disp *d)
{
    PGresult *res = NULL;
    enum cr_err err = db_exec(d->pg, "start scheduled", sql_start_scheduled, 0, NULL, &res);
    if (err)
        return err;
    for (int i = 0; i < PQntuples(res); i++)
        log_info("campaign %s (tenant %s): scheduled time reached %s s ago; running",
                 PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 2));
    PQclear(res);
    return CR_OK;
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
    for (int i = 0; i < PQntuples(res) && !err; i++) {
        char *list = xstrdup(PQgetvalue(res, i, 3));
        int max = 1;
        for (char *p = list; *p; p++)
            max += *p == ',';
        char **ids = xcalloc((size_t)max, sizeof(char *));
        int n = split_list(list, ids, max);
        log_info("campaign %s: enqueueing %d deliveries left pending", PQgetvalue(res, i, 1), n);
        for (int off = 0; off < n && !err; off += 1000)
            err =
                enqueue_pending(d, PQgetvalue(res, i, 2), PQgetvalue(res, i, 0),
                                PQgetvalue(res, i, 1), ids + off, n - off < 1000 ? n - off : 1000);
        free(ids);
        free(list);
    }
    PQclear(res);
    return err;
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
        err = enqueue_pending(d, PQgetvalue(res, i, 2), PQgetvalue(res, i, 0),
                              PQgetvalue(res, i, 1), &id, 1);
    }
    if (PQntuples(res) > 0)
        log_info("re-enqueued %d retries whose delayed job was lost", PQntuples(res));
    PQclear(res);
    return err;
}

enum cr_err complete_campaigns(struct disp *d)
{
    PGresult *res = NULL;
    enum cr_err err = db_exec(d->pg, "close leftovers", sql_close_leftovers, 0, NULL, NULL);
    if (!err)
        err = db_exec(d->pg, "complete campaigns", sql_complete, 0, NULL, &res);
    if (err)
        return err;
    for (int i = 0; i < PQntuples(res); i++)
        log_info("campaign %s (tenant %s): every delivery is terminal; completed",
                 PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
    PQclear(res);
    return CR_OK;
}
