/* expand.c - turns a launched campaign's segment into deliveries and jobs.
 *
 * One statement per page locks the campaign row (checking the lease and
 * that it is still running), selects the next customers of the segment
 * (keyset on customers.id), inserts their deliveries (the UNIQUE dedupe key
 * makes a repeat a no-op; customers who must not be contacted are born
 * 'skipped' with the reason) and advances the campaign's cursors, all
 * atomically. For an unpaced campaign the page's jobs are released at once:
 * XADDed when the recipient's send window is open, deferred to crier:delayed
 * otherwise. While they are written, the next page's statement is already
 * running in PostgreSQL (the two servers work in parallel); each statement
 * records as the release cursor only what was released before it was sent,
 * so a crash anywhere leaves unreleased rows above the cursor, which the
 * next lease holder releases first. A paced campaign's deliveries are
 * released by release.c at the campaign's pace.
 * Memory is bounded by one page, whatever the segment's size. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "dispatcher.h"
#include "gate.h"
#include "log.h"
#include "segment.h"
#include "xalloc.h"

/* %s: the compiled segment expression (its parameters from $13).
 * $1 tenant, $2 campaign, $3 customer cursor, $4 page size, $5 channel,
 * $6 this dispatcher, $7 send window, $8 deadline, $9 release cursor,
 * $10 has suppressions, $11 frequency cap, $12 lease seconds. */
/* clang-format off */
static const char sql_page_fmt[] =
    "WITH lk AS (SELECT k.id FROM campaigns k WHERE k.tenant_id = $1 AND k.id = $2"
    "   AND k.status = 'running' AND k.lease_owner = $6 FOR NO KEY UPDATE),"
    " page AS (SELECT c.id, c.timezone,"
    "   " GATE_SKIP_SQL("$5", "$10::boolean", "$11::int") " AS skip"
    "   FROM customers c"
    "   WHERE EXISTS (SELECT 1 FROM lk) AND c.tenant_id = $1 AND c.id > $3::bigint AND (%s)"
    "   ORDER BY c.id LIMIT $4::int),"
    /* The window once per time zone of the page. */
    " tz AS MATERIALIZED (SELECT z.timezone, crier_window_due(z.timezone, $7::jsonb, now()) AS due"
    "   FROM (SELECT DISTINCT timezone FROM page) z),"
    " r AS (SELECT p.id, COALESCE(p.skip, CASE WHEN tz.due > $8::timestamptz THEN 'expired' END)"
    "     AS skip, tz.due FROM page p JOIN tz USING (timezone)),"
    " ins AS (INSERT INTO deliveries (tenant_id, campaign_id, customer_id, channel, status,"
    "     skip_reason, next_attempt_at)"
    "   SELECT $1, $2, r.id, $5, CASE WHEN r.skip IS NULL THEN 'queued' ELSE 'skipped' END,"
    "     r.skip, CASE WHEN r.skip IS NULL AND r.due > now() THEN r.due END FROM r ORDER BY r.id"
    "   ON CONFLICT ON CONSTRAINT deliveries_dedupe_key DO NOTHING"
    "   RETURNING id, status, next_attempt_at),"
    " cur AS (UPDATE campaigns SET"
    "     dispatch_cursor = COALESCE((SELECT max(id) FROM page), dispatch_cursor),"
    "     enqueued_cursor = GREATEST(enqueued_cursor, $9::bigint),"
    "     last_delivery_id = GREATEST(last_delivery_id, COALESCE((SELECT max(id) FROM ins), 0)),"
    "     lease_until = now() + make_interval(secs => $12::int), updated_at = now()"
    "   WHERE tenant_id = $1 AND id = $2 AND EXISTS (SELECT 1 FROM lk)"
    "   RETURNING dispatch_cursor)"
    " SELECT (SELECT count(*) FROM page), (SELECT max(id) FROM page),"
    "  (SELECT string_agg(id::text, ',' ORDER BY id) FROM ins"
    "    WHERE status = 'queued' AND next_attempt_at IS NULL),"
    "  (SELECT string_agg(id::text || ':' || (extract(epoch FROM next_attempt_at) * 1000)::bigint,"
    "    ',' ORDER BY id) FROM ins WHERE status = 'queued' AND next_attempt_at IS NOT NULL),"
    "  (SELECT count(*) FROM cur), (SELECT max(id) FROM ins),"
    "  (SELECT count(*) FROM ins WHERE status = 'skipped')";
/* clang-format on */

/* The last page: the campaign is expanded; $3 the release cursor. */
static const char sql_expanded[] =
    "UPDATE campaigns SET expanded_at = now(), updated_at = now(),"
    "  enqueued_cursor = GREATEST(enqueued_cursor, $3::bigint)"
    " WHERE tenant_id = $1 AND id = $2 AND status = 'running' AND expanded_at IS NULL"
    "   AND lease_owner = $4";

/* Out of time mid-expansion: record what was released. */
static const char sql_set_enqueued[] =
    "UPDATE campaigns SET enqueued_cursor = GREATEST(enqueued_cursor, $3::bigint)"
    " WHERE tenant_id = $1 AND id = $2 AND lease_owner = $4";

/* One page's result, parsed; owns its lists. */
struct page {
    long n;        /* customers in the page */
    bool advanced; /* the statement held the lease and the campaign ran */
    char max_customer[24];
    char max_delivery[24];
    char *open;     /* deliveries to XADD */
    char *deferred; /* "id:due_ms" to ZADD */
    long skipped;
};

static void page_cleanup(struct page *p)
{
    free(p->open);
    free(p->deferred);
    memset(p, 0, sizeof(*p));
}

static enum cr_err page_read(struct disp *d, struct page *p)
{
    enum cr_err err = CR_OK;
    PGresult *res, *got = NULL;
    while ((res = PQgetResult(d->pg))) {
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            log_error("expand page: %s", PQresultErrorMessage(res));
            err = CR_EPG;
        }
        if (!got && !err)
            got = res;
        else
            PQclear(res);
    }
    if (err || !got) {
        PQclear(got);
        return err ? err : CR_EPG;
    }
    memset(p, 0, sizeof(*p));
    p->n = strtol(PQgetvalue(got, 0, 0), NULL, 10);
    snprintf(p->max_customer, sizeof(p->max_customer), "%s", PQgetvalue(got, 0, 1));
    p->open = PQgetisnull(got, 0, 2) ? NULL : xstrdup(PQgetvalue(got, 0, 2));
    p->deferred = PQgetisnull(got, 0, 3) ? NULL : xstrdup(PQgetvalue(got, 0, 3));
    p->advanced = strtol(PQgetvalue(got, 0, 4), NULL, 10) == 1;
    snprintf(p->max_delivery, sizeof(p->max_delivery), "%s", PQgetvalue(got, 0, 5));
    p->skipped = strtol(PQgetvalue(got, 0, 6), NULL, 10);
    PQclear(got);
    if (PQstatus(d->pg) != CONNECTION_OK)
        return CR_EPG;
    return CR_OK;
}

/* Releases an unpaced page's jobs. */
static enum cr_err page_release(struct disp *d, struct campaign *c, struct page *p, char **items,
                                int max)
{
    enum cr_err err = CR_OK;
    if (p->open) {
        int k = split_list(p->open, items, max);
        err = xadd_jobs(d, c->ch, c->tenant, c->id, items, k);
    }
    if (!err && p->deferred) {
        int k = split_list(p->deferred, items, max);
        err = defer_jobs(d, c, items, k);
    }
    return err;
}

enum cr_err expand_campaign(struct disp *d, struct campaign *c, long long deadline_ms)
{
    enum cr_err err = CR_OK;
    cJSON *criteria = cJSON_Parse(c->criteria);
    struct seg_query q;
    memset(&q, 0, sizeof(q));
    char field[64], msg[192];
    char *sql = NULL;
    char **items = NULL;
    const char **params = NULL;
    bool paced = c->rate > 0;

    if (!criteria) {
        log_error("campaign %s: unusable criteria; skipping", c->id);
        err = CR_EINVAL;
        goto out;
    }
    if (seg_compile_matching(criteria, (enum seg_channel)c->ch, 13, &q, field, sizeof(field), msg,
                             sizeof(msg)) != CR_OK) {
        log_error("campaign %s: segment does not compile (%s: %s)", c->id, field, msg);
        err = CR_EINVAL;
        goto out;
    }
    sql = xasprintf(sql_page_fmt, buf_str(&q.sql));
    int nparams = 12 + q.nparams;
    params = xcalloc((size_t)nparams, sizeof(char *));
    char size[24], ttl[16];
    char cur[24], done[24];
    snprintf(size, sizeof(size), "%ld", d->cfg->page_size);
    snprintf(ttl, sizeof(ttl), "%ld", d->cfg->lease_s);
    snprintf(cur, sizeof(cur), "%s", c->cursor);
    snprintf(done, sizeof(done), "%s", c->enqueued);
    params[0] = c->tenant;
    params[1] = c->id;
    params[2] = cur;
    params[3] = size;
    params[4] = c->channel;
    params[5] = d->consumer;
    params[6] = c->window;
    params[7] = c->deadline;
    params[8] = done;
    params[9] = c->has_supp ? "true" : "false";
    params[10] = c->cap[0] ? c->cap : NULL;
    params[11] = ttl;
    for (int i = 0; i < q.nparams; i++)
        params[12 + i] = q.params[i];
    items = xcalloc((size_t)d->cfg->page_size, sizeof(char *));

    long created = 0, skipped = 0;
    bool in_flight = false, finished = false;
    log_debug("campaign %s: expanding from customer %s", c->id, cur);
    for (;;) {
        if (!in_flight) {
            if (!PQsendQueryParams(d->pg, sql, nparams, NULL, params, NULL, NULL, 0)) {
                log_error("expand page: %s", PQerrorMessage(d->pg));
                err = CR_EPG;
                break;
            }
        }
        struct page p;
        if ((err = page_read(d, &p)) != CR_OK)
            break;
        in_flight = false;
        if (!p.advanced) {
            log_info("campaign %s: no longer running here (paused, cancelled or lease lost); "
                     "expansion stops",
                     c->id);
            page_cleanup(&p);
            break;
        }
        bool last_page = p.n < d->cfg->page_size;
        if ((err = start_due(d, false)) != CR_OK) { /* the connection is free here */
            page_cleanup(&p);
            break;
        }
        if (p.n > 0)
            snprintf(cur, sizeof(cur), "%s", p.max_customer);
        if (p.max_delivery[0])
            snprintf(c->last, sizeof(c->last), "%s", p.max_delivery);
        snprintf(c->cursor, sizeof(c->cursor), "%s", cur);
        /* The next page runs while this one's jobs are written; it records
         * as released only what was released before it was sent. */
        bool more = !last_page && !*d->stop && now_ms() < deadline_ms;
        if (more && !paced) {
            if (!PQsendQueryParams(d->pg, sql, nparams, NULL, params, NULL, NULL, 0)) {
                log_error("expand page: %s", PQerrorMessage(d->pg));
                page_cleanup(&p);
                err = CR_EPG;
                break;
            }
            in_flight = true;
        }
        if (!paced) {
            err = page_release(d, c, &p, items, (int)d->cfg->page_size);
            if (!err && p.max_delivery[0]) {
                snprintf(done, sizeof(done), "%s", p.max_delivery);
                snprintf(c->enqueued, sizeof(c->enqueued), "%s", done);
            }
        }
        created += p.n;
        skipped += p.skipped;
        page_cleanup(&p);
        if (!err)
            err = move_due(d, false);
        if (!err && paced) /* no page in flight: the release may use the connection */
            err = release_campaign(d, c, 0);
        if (err)
            break;
        if (last_page) {
            finished = true;
            break;
        }
        if (!more)
            break; /* out of time or stopping */
    }
    if (in_flight) { /* drain a page sent before an error */
        struct page p;
        if (page_read(d, &p) == CR_OK)
            page_cleanup(&p);
    }
    if (!err) {
        const char *p2[] = {c->tenant, c->id, done, d->consumer};
        if (finished) {
            err = db_exec(d->pg, "mark expanded", sql_expanded, 4, p2, NULL);
            if (!err) {
                c->expanded = true;
                log_info("campaign %s: expanded (%ld customers this run, %ld skipped)", c->id,
                         created, skipped);
            }
        } else {
            err = db_exec(d->pg, "set enqueued", sql_set_enqueued, 4, p2, NULL);
        }
    }
out:
    free(params);
    free(items);
    free(sql);
    seg_query_cleanup(&q);
    cJSON_Delete(criteria);
    return err;
}
