/* jobs.c - the worker's side of the streams and the database: reads job
 * batches, claims them, writes outcomes in batches and acknowledges.
 *
 * A stream entry is XACKed only after its outcome is committed (or when the
 * claim shows another worker owns the delivery), so a crash leaves it
 * pending and the reclaim below hands it to a live worker. */
#include <hiredis/adapters/libevent.h>
#include <stdlib.h>
#include <string.h>

#include "gate.h"
#include "log.h"
#include "worker.h"
#include "xalloc.h"

/* $1 delivery ids, $2 their tenants, $3 this worker.
 * The gate: a delivery is claimed only while its campaign runs; one that
 * must not be contacted now (opted out, suppressed, no address, frequency
 * cap, past the campaign's expiry, customer deleted) becomes 'skipped' with
 * the reason; one whose recipient is outside the send window stays 'queued'
 * and comes back as a deferral (kind 'd': due time and crier:delayed
 * member), which the worker ZADDs before acknowledging the entry. A paused
 * campaign's jobs are acknowledged unsent (resume releases them again).
 * Claimed rows (kind 's') carry what the send needs; see send.c's COL_*. */
/* A delivery a job may claim: not yet attempted, or a retry that is due
 * (its job comes from crier:delayed; a second early job finds it not due).
 *
 * The status tests of the hot statements are written so that no index can
 * serve them (a CASE, IS NOT DISTINCT FROM): the rows are found by their ids
 * through the primary key, whatever the statistics say. As plain
 * comparisons they let the planner drive the statement from a status index
 * instead, and a transient status ('sending', 'queued' of a moment) always
 * looks rare to the statistics: the plan then read the whole index on every
 * statement, 70-100 ms on average instead of 5 (benchmark runs fell from
 * 9,000 sends/s to 3,700-5,900 whenever an ANALYZE had run at the wrong
 * moment). */
#define CLAIMABLE_SQL                                                                              \
    "(CASE d.status WHEN 'pending' THEN true WHEN 'queued' THEN true"                              \
    " WHEN 'retry' THEN d.next_attempt_at <= now() + interval '1 second' ELSE false END)"

/* clang-format off */
static const char sql_claim[] =
    "WITH j AS (SELECT * FROM unnest($1::bigint[], $2::bigint[]) AS j(id, tenant_id)),"
    " g0 AS MATERIALIZED (SELECT d.id, d.tenant_id, d.channel, d.campaign_id,"
    "   COALESCE(k.rate_per_minute, 0) AS rate, COALESCE(c.timezone, 'UTC') AS tz,"
    "   COALESCE(CASE WHEN now() > " GATE_DEADLINE_SQL " THEN 'expired' END,"
    "     " GATE_SKIP_SQL("d.channel", "TRUE", "t.frequency_cap_7d") ") AS skip,"
    "   " GATE_DEADLINE_SQL " AS deadline,"
    /* What the send needs of the customer, read here once. */
    "   c.phone, c.first_name, c.last_name, c.email, c.external_id, c.attributes,"
    "   " GATE_OPTED_OUT("d.channel") " AS opted_out"
    "  FROM j JOIN deliveries d ON d.id = j.id AND d.tenant_id = j.tenant_id"
    "   AND " CLAIMABLE_SQL
    "  JOIN campaigns k ON k.tenant_id = d.tenant_id AND k.id = d.campaign_id"
    "   AND k.status = 'running'"
    "  JOIN tenants t ON t.id = d.tenant_id"
    "  LEFT JOIN customers c ON c.tenant_id = d.tenant_id AND c.id = d.customer_id),"
    /* The window once per campaign and time zone of the batch. */
    " w AS MATERIALIZED (SELECT z.campaign_id, z.tz,"
    "   crier_window_due(z.tz, k.send_window, now()) AS due"
    "  FROM (SELECT DISTINCT campaign_id, tenant_id, tz FROM g0) z"
    "  JOIN campaigns k ON k.tenant_id = z.tenant_id AND k.id = z.campaign_id),"
    " g AS (SELECT g0.*, w.due FROM g0 JOIN w USING (campaign_id, tz)),"
    " g2 AS (SELECT g.*, COALESCE(g.skip, CASE WHEN g.due > g.deadline THEN 'expired' END)"
    "   AS reason FROM g),"
    " claimed AS ("
    "  UPDATE deliveries d SET"
    "    status = CASE WHEN g2.reason IS NULL THEN 'sending' ELSE 'skipped' END,"
    "    skip_reason = g2.reason,"
    "    attempts = d.attempts + CASE WHEN g2.reason IS NULL THEN 1 ELSE 0 END,"
    "    claimed_by = $3, claimed_at = now(), next_attempt_at = NULL, updated_at = now()"
    "  FROM g2 WHERE d.id = g2.id AND d.tenant_id = g2.tenant_id AND " CLAIMABLE_SQL
    "    AND (g2.reason IS NOT NULL OR g2.due <= now())"
    "  RETURNING d.id, d.tenant_id, d.campaign_id, d.customer_id, d.attempts, d.status,"
    "    g2.phone, g2.first_name, g2.last_name, g2.email, g2.external_id, g2.attributes,"
    "    g2.opted_out),"
    " deferred AS ("
    "  UPDATE deliveries d SET status = 'queued', next_attempt_at = g2.due, updated_at = now()"
    "  FROM g2 WHERE d.id = g2.id AND d.tenant_id = g2.tenant_id AND " CLAIMABLE_SQL
    "    AND g2.reason IS NULL AND g2.due > now()"
    "  RETURNING d.id, d.tenant_id, g2.due,"
    "    g2.channel || '|' || g2.id || '|' || g2.tenant_id || '|' || g2.campaign_id || '|'"
    "    || g2.rate AS member)"
    " SELECT cl.id, cl.tenant_id, cl.attempts, cl.phone, cl.first_name, cl.last_name, cl.email,"
    "  cl.external_id, cl.attributes::text, k.message->>'body', p.id, p.kind, p.from_address,"
    "  p.credentials, cl.opted_out, cl.campaign_id, cl.customer_id,"
    "  k.variants::text, 's', NULL::bigint, NULL::text, p.rate_per_second, k.channel,"
    /* The whole message only where it is rendered here, an email's. */
    "  k.agent_config->>'machine_detection',"
    "  CASE WHEN k.channel = 'email' THEN k.message::text END"
    " FROM claimed cl"
    " JOIN campaigns k ON k.tenant_id = cl.tenant_id AND k.id = cl.campaign_id"
    " LEFT JOIN provider_accounts p ON p.tenant_id = k.tenant_id AND p.id = k.provider_account_id"
    " WHERE cl.status = 'sending'"
    " UNION ALL"
    " SELECT df.id, df.tenant_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    "  NULL, NULL, NULL, NULL, NULL, NULL, 'd', (extract(epoch FROM df.due) * 1000)::bigint,"
    "  df.member, NULL::int, NULL, NULL, NULL"
    " FROM deferred df";
/* clang-format on */

/* Columns of a claim row after send.c's: the row's kind, a deferral's due
 * time (ms since the epoch) and its crier:delayed member. */
#define CLAIM_COL_KIND 18
#define CLAIM_COL_DUE 19
#define CLAIM_COL_MEMBER 20

/* Reclaimed entries whose delivery is still 'sending' long after the claim:
 * the worker died mid-send, the provider may have accepted: unknown. */
/* Rows: the orphans marked unknown (kind 'u'), and the reclaimed
 * deliveries still 'sending' under a claim too recent to call (kind 'h'):
 * their entries are held - left pending, reclaimed again later - never
 * acknowledged while a send may be under way (an entry is reclaimed after
 * 60 s idle, but its claim may be a moment younger than its read). */
/* An email whose tenant opted in (tenants.email_resend_unknown) goes back
 * to 'retry', due now: the claim that follows sends it again. */
static const char sql_orphans[] =
    "WITH o AS (UPDATE deliveries d SET"
    "   status = CASE WHEN d.channel = 'email' AND t.email_resend_unknown"
    "     THEN 'retry' ELSE 'unknown' END,"
    "   next_attempt_at = CASE WHEN d.channel = 'email' AND t.email_resend_unknown"
    "     THEN now() END,"
    "   last_error = 'worker died during the send', updated_at = now()"
    "   FROM tenants t"
    "   WHERE d.id = ANY($1::bigint[]) AND d.tenant_id = ANY($2::bigint[])"
    "     AND d.status IS NOT DISTINCT FROM 'sending' AND t.id = d.tenant_id"
    "     AND d.claimed_at < now() - make_interval(secs => $3::int)"
    "   RETURNING d.id, d.status)"
    " SELECT id, CASE WHEN status = 'retry' THEN 'r' ELSE 'u' END FROM o"
    " UNION ALL"
    " SELECT d.id, 'h' FROM deliveries d WHERE d.id = ANY($1::bigint[])"
    "   AND d.tenant_id = ANY($2::bigint[]) AND d.status IS NOT DISTINCT FROM 'sending'"
    "   AND d.id NOT IN (SELECT id FROM o)";

static const char sql_outcomes[] =
    "WITH u AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[],"
    "   $5::text[], $6::text[], $7::int[], $8::text[], $9::text[], $11::text[])"
    "   AS u(id, tenant_id, status, pmid, code, err, retry_in, body, provider, variant)),"
    " upd AS ("
    "  UPDATE deliveries d SET status = u.status, provider = u.provider,"
    /* A throttled send (429, or the account's own rate) was never
     * processed: it does not use up an attempt. */
    "    attempts = d.attempts - CASE WHEN u.status = 'retry'"
    "      AND u.code IN ('20429', 'http_429', 'rate_limited') THEN 1 ELSE 0 END,"
    "    variant = COALESCE(u.variant, d.variant),"
    "    provider_message_id = COALESCE(u.pmid, d.provider_message_id),"
    "    error_code = NULLIF(u.code, ''), last_error = NULLIF(u.err, ''),"
    "    skip_reason = CASE WHEN u.status = 'skipped' THEN u.err ELSE d.skip_reason END,"
    "    next_attempt_at = CASE WHEN u.status = 'retry'"
    "      THEN now() + make_interval(secs => u.retry_in / 1000.0) END,"
    "    sent_at = CASE WHEN u.status = 'sent' THEN now() ELSE d.sent_at END,"
    "    updated_at = now()"
    "  FROM u WHERE d.id = u.id AND d.tenant_id = u.tenant_id"
    "    AND d.status IS NOT DISTINCT FROM 'sending'" /* no index: see CLAIMABLE_SQL */
    "    AND d.claimed_by = $10"
    "  RETURNING d.id, d.tenant_id, d.customer_id, d.campaign_id, d.channel, d.next_attempt_at,"
    "    u.status, u.body, u.pmid, u.code),"
    " msg AS ("
    "  INSERT INTO messages (tenant_id, delivery_id, customer_id, direction, channel, body,"
    "    provider_message_id)"
    "  SELECT tenant_id, id, customer_id, 'outbound', channel, body, pmid FROM upd"
    "  WHERE status IN ('sent', 'unknown') AND body IS NOT NULL),"
    " cust AS ("
    "  UPDATE customers c SET last_contact_at = CASE WHEN upd.status = 'sent' THEN now()"
    "      ELSE c.last_contact_at END,"
    "    sms_opt_out = c.sms_opt_out OR upd.code = '21610', updated_at = now()"
    "  FROM upd WHERE c.tenant_id = upd.tenant_id AND c.id = upd.customer_id"
    "    AND (upd.status = 'sent' OR upd.code = '21610'))"
    /* Retries: ZADDed to crier:delayed by the worker (then XACKed). */
    " SELECT (extract(epoch FROM upd.next_attempt_at) * 1000)::bigint,"
    "  upd.channel || '|' || upd.id || '|' || upd.tenant_id || '|' || upd.campaign_id || '|'"
    "  || COALESCE(k.rate_per_minute, 0)"
    " FROM upd JOIN campaigns k ON k.tenant_id = upd.tenant_id AND k.id = upd.campaign_id"
    " WHERE upd.status = 'retry'";

/* ---------------------------------------------------------------------
 * Redis connections
 * ------------------------------------------------------------------- */

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct worker *w = ac->data;
    bool ok = status == REDIS_OK;
    if (ac == w->rd) {
        w->rd_ready = ok;
        if (!ok)
            w->rd = NULL;
    } else if (ac == w->wr) {
        w->wr_ready = ok;
        if (!ok)
            w->wr = NULL;
    }
    if (!ok)
        log_warn("redis connect failed: %s", ac->errstr);
    else
        jobs_maybe_read(w);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct worker *w = ac->data;
    if (status != REDIS_OK)
        log_warn("redis disconnected: %s", ac->errstr);
    if (ac == w->rd) {
        w->rd = NULL;
        w->rd_ready = false;
        w->reading = false;
    } else if (ac == w->wr) {
        w->wr = NULL;
        w->wr_ready = false;
    }
}

static redisAsyncContext *connect_one(struct worker *w)
{
    char err[256];
    redisAsyncContext *ac = rq_connect_async(w->cfg->redis_url, err, sizeof(err));
    if (!ac) {
        log_warn("%s", err);
        return NULL;
    }
    ac->data = w;
    redisLibeventAttach(ac, w->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return ac;
}

static void group_created(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;
    (void)ac;
    (void)priv;
    if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0)
        log_error("XGROUP CREATE: %s", r->str);
}

static void create_groups(struct worker *w)
{
    for (int ch = 0; ch < RQ_NCHANNELS; ch++)
        redisAsyncCommand(w->wr, group_created, NULL, "XGROUP CREATE %s workers $ MKSTREAM",
                          w->keys.jobs[ch]);
}

void jobs_connect_redis(struct worker *w)
{
    if (!w->wr && (w->wr = connect_one(w)))
        create_groups(w);
    if (!w->rd)
        w->rd = connect_one(w);
}

/* ---------------------------------------------------------------------
 * Reading and claiming
 * ------------------------------------------------------------------- */

struct entry {
    char stream_id[32];
    long long delivery_id;
    long long tenant_id;
    bool claimed;
};

static void ack_ids(struct worker *w, int ch, char **ids, int n)
{
    if (n == 0 || !w->wr)
        return;
    const char **argv = xcalloc((size_t)n + 3, sizeof(char *));
    argv[0] = "XACK";
    argv[1] = w->keys.jobs[ch];
    argv[2] = "workers";
    for (int i = 0; i < n; i++)
        argv[3 + i] = ids[i];
    redisAsyncCommandArgv(w->wr, NULL, NULL, n + 3, argv, NULL);
    free(argv);
}

/* A batch of stream entries on its way through the claim. */
struct claim {
    struct worker *w;
    int ch; /* the stream the entries came from */
    int n;
    struct entry *e;
    struct pgarr ids, tenants;
};

static void claim_free(struct claim *c)
{
    c->w->claiming -= c->n;
    c->w->claims_running--;
    pgarr_cleanup(&c->ids);
    pgarr_cleanup(&c->tenants);
    free(c->e);
    free(c);
}

/* A job outside its recipient's send window goes back to crier:delayed; its
 * stream entry is acknowledged once the ZADD has succeeded (else it stays
 * pending and a reclaim defers it again). */
struct deferral {
    struct worker *w;
    int ch;
    char stream_id[32];
};

static void deferred_done(redisAsyncContext *ac, void *reply, void *priv)
{
    struct deferral *df = priv;
    redisReply *r = reply;
    (void)ac;
    if (r && r->type == REDIS_REPLY_INTEGER) {
        char *id = df->stream_id;
        ack_ids(df->w, df->ch, &id, 1);
    } else {
        log_warn("ZADD of a deferred job failed (%s); it stays pending",
                 r && r->type == REDIS_REPLY_ERROR ? r->str : "disconnected");
    }
    free(df);
}

static void defer_entry(struct worker *w, int ch, PGresult *res, int row, const char *stream_id)
{
    if (!w->wr)
        return; /* stays pending: reclaimed and deferred again */
    struct deferral *df = xcalloc(1, sizeof(*df));
    df->w = w;
    df->ch = ch;
    snprintf(df->stream_id, sizeof(df->stream_id), "%s", stream_id);
    if (redisAsyncCommand(w->wr, deferred_done, df, "ZADD %s %s %s", w->keys.delayed,
                          PQgetvalue(res, row, CLAIM_COL_DUE),
                          PQgetvalue(res, row, CLAIM_COL_MEMBER)) != REDIS_OK)
        free(df);
}

static void claim_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct claim *c = arg;
    struct worker *w = c->w;
    (void)sqlstate;
    if (!res) {
        /* Leave the entries pending: the reclaim hands them out again. */
        log_warn("claim of %d jobs failed (%s); they stay pending for a later reclaim", c->n,
                 errmsg);
        claim_free(c);
        return;
    }
    int deferred = 0;
    for (int r = 0; r < PQntuples(res); r++) {
        long long id = strtoll(PQgetvalue(res, r, 0), NULL, 10);
        bool defer = PQgetvalue(res, r, CLAIM_COL_KIND)[0] == 'd';
        for (int i = 0; i < c->n; i++) {
            if (c->e[i].delivery_id == id && !c->e[i].claimed) {
                c->e[i].claimed = true;
                if (defer)
                    defer_entry(w, c->ch, res, r, c->e[i].stream_id);
                else
                    send_start(w, res, r, c->ch, c->e[i].stream_id);
                break;
            }
        }
        deferred += defer;
    }
    if (deferred)
        log_debug("%d jobs outside their send window deferred", deferred);
    /* Not claimed: deferred above, skipped by the gate, already handled by
     * another worker, a duplicate job, or its campaign is paused (resume
     * releases it again). */
    char **unclaimed = xcalloc((size_t)c->n, sizeof(char *));
    int nu = 0;
    for (int i = 0; i < c->n; i++)
        if (!c->e[i].claimed && c->e[i].stream_id[0])
            unclaimed[nu++] = c->e[i].stream_id;
    ack_ids(w, c->ch, unclaimed, nu);
    free(unclaimed);
    claim_free(c);
    jobs_maybe_read(w);
}

static void start_claim(struct claim *c)
{
    const char *p[] = {pgarr_str(&c->ids), pgarr_str(&c->tenants), c->w->consumer};
    pgpool_query_named(c->w->pool, "claim", sql_claim, 3, p, claim_done, c);
}

static void orphans_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct claim *c = arg;
    (void)sqlstate;
    if (!res) {
        log_warn("orphan check failed (%s); the jobs stay pending", errmsg);
        claim_free(c);
        return;
    }
    int orphans = 0, held = 0, resent = 0;
    for (int r = 0; r < PQntuples(res); r++) {
        char kind = PQgetvalue(res, r, 1)[0];
        if (kind == 'u' || kind == 'r') { /* unknown (acked below), or claimed again below */
            orphans += kind == 'u';
            resent += kind == 'r';
            continue;
        }
        long long id = strtoll(PQgetvalue(res, r, 0), NULL, 10);
        for (int i = 0; i < c->n; i++)
            if (c->e[i].delivery_id == id && !c->e[i].claimed) {
                c->e[i].claimed = true; /* held: neither claimed nor acknowledged */
                held++;
            }
    }
    if (orphans > 0)
        log_warn("%d deliveries orphaned by a dead worker marked unknown", orphans);
    if (resent > 0)
        log_warn("%d emails orphaned by a dead worker sent again (the tenant's "
                 "email_resend_unknown)",
                 resent);
    if (held > 0)
        log_info("%d reclaimed jobs held: their claim is too recent to call", held);
    start_claim(c);
}

/* Claims the entries and starts their sends; acks what is not ours. */
static void process_entries(struct worker *w, int ch, redisReply *entries, bool reclaimed)
{
    int n = (int)entries->elements;
    if (n == 0)
        return;
    struct claim *c = xcalloc(1, sizeof(*c));
    c->w = w;
    c->ch = ch;
    c->n = n;
    c->e = xcalloc((size_t)n, sizeof(*c->e));
    pgarr_init(&c->ids, (size_t)n * 24 + 8);
    pgarr_init(&c->tenants, (size_t)n * 24 + 8);
    w->claiming += n;
    w->claims_running++;
    int valid = 0;
    char **bad = xcalloc((size_t)n, sizeof(char *));
    int nbad = 0;
    for (int i = 0; i < n; i++) {
        redisReply *en = entries->element[i];
        struct entry *e = &c->e[i];
        if (en->type != REDIS_REPLY_ARRAY || en->elements != 2 ||
            en->element[0]->type != REDIS_REPLY_STRING)
            continue;
        snprintf(e->stream_id, sizeof(e->stream_id), "%s", en->element[0]->str);
        const char *d =
            en->element[1]->type == REDIS_REPLY_ARRAY ? rq_entry_field(en->element[1], "d") : NULL;
        const char *t = d ? rq_entry_field(en->element[1], "t") : NULL;
        if (!d || !t) {
            log_warn("job %s has no delivery/tenant; dropping it", e->stream_id);
            bad[nbad++] = e->stream_id;
            e->stream_id[0] = '\0';
            continue;
        }
        e->delivery_id = strtoll(d, NULL, 10);
        e->tenant_id = strtoll(t, NULL, 10);
        if (pgarr_add_int(&c->ids, e->delivery_id) == CR_OK &&
            pgarr_add_int(&c->tenants, e->tenant_id) == CR_OK)
            valid++;
    }
    ack_ids(w, ch, bad, nbad);
    free(bad);
    if (valid == 0) {
        claim_free(c);
        return;
    }
    if (reclaimed) {
        char age[16];
        snprintf(age, sizeof(age), "%ld", w->cfg->orphan_age_s);
        const char *p[] = {pgarr_str(&c->ids), pgarr_str(&c->tenants), age};
        pgpool_query(w->pool, sql_orphans, 3, p, orphans_done, c);
    } else {
        start_claim(c);
    }
}

static void on_read(redisAsyncContext *ac, void *reply, void *priv)
{
    struct worker *w = priv;
    redisReply *r = reply;
    (void)ac;
    w->reading = false;
    if (!r) {
        return; /* disconnected; the tick reconnects */
    }
    if (r->type == REDIS_REPLY_ERROR) {
        log_warn("XREADGROUP: %s", r->str);
        if (strncmp(r->str, "NOGROUP", 7) == 0 && w->wr)
            create_groups(w);
    } else if (r->type == REDIS_REPLY_ARRAY) {
        /* One [stream, entries] pair per stream that had some. */
        for (size_t k = 0; k < r->elements; k++) {
            redisReply *s = r->element[k];
            if (s->type != REDIS_REPLY_ARRAY || s->elements != 2 ||
                s->element[0]->type != REDIS_REPLY_STRING)
                continue;
            for (int ch = 0; ch < RQ_NCHANNELS; ch++)
                if (strcmp(s->element[0]->str, w->keys.jobs[ch]) == 0)
                    process_entries(w, ch, s->element[1], false);
        }
    }
    jobs_flush(w);
    jobs_maybe_read(w);
}

/* Redis 6.2's XAUTOCLAIM claims an entry deleted from the stream and
 * answers nil for it, without its id (7.0 drops it from the group itself):
 * it would be reclaimed as nil forever. This acknowledges the consumer's
 * pending entries in [ARGV[3], ARGV[4]] (at most ARGV[5]) that no longer
 * exist; live ones - sends under way - are left alone. */
static const char lua_ack_deleted[] =
    "redis.replicate_commands()"
    " local n = 0"
    " for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[4], ARGV[5],"
    "   ARGV[2])) do"
    "  if #redis.call('XRANGE', KEYS[1], p[1], p[1]) == 0 then"
    "   n = n + redis.call('XACK', KEYS[1], ARGV[1], p[1]) end end"
    " return n";

static void on_reclaim(redisAsyncContext *ac, void *reply, void *priv)
{
    struct reclaim *rc = priv;
    redisReply *r = reply;
    (void)ac;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
        r->element[1]->type != REDIS_REPLY_ARRAY)
        return;
    size_t nil = 0;
    for (size_t i = 0; i < r->element[1]->elements; i++)
        nil += r->element[1]->element[i]->type == REDIS_REPLY_NIL;
    if (nil > 0 && rc->w->wr && r->element[0]->type == REDIS_REPLY_STRING) {
        char end[40];
        snprintf(end, sizeof(end), "%s%s", strcmp(r->element[0]->str, "0-0") ? "(" : "",
                 strcmp(r->element[0]->str, "0-0") ? r->element[0]->str : "+");
        log_info("%zu reclaimed jobs of %s were deleted from the stream; acknowledging them", nil,
                 rc->w->keys.jobs[rc->ch]);
        redisAsyncCommand(rc->w->wr, NULL, NULL, "EVAL %s 1 %s workers %s 0-0 %s 100000",
                          lua_ack_deleted, rc->w->keys.jobs[rc->ch], rc->w->consumer, end);
    }
    if (r->element[1]->elements > 0) {
        log_info("reclaimed %zu idle jobs from %s", r->element[1]->elements,
                 rc->w->keys.jobs[rc->ch]);
        process_entries(rc->w, rc->ch, r->element[1], true);
    }
}

void jobs_reclaim(struct worker *w)
{
    if (w->claiming > w->cfg->concurrency)
        return;
    if (!w->wr || !w->wr_ready || w->stopping)
        return;
    for (int ch = 0; ch < RQ_NCHANNELS; ch++) {
        w->reclaims[ch].w = w;
        w->reclaims[ch].ch = ch;
        redisAsyncCommand(w->wr, on_reclaim, &w->reclaims[ch],
                          "XAUTOCLAIM %s workers %s %d 0-0 COUNT %ld", w->keys.jobs[ch],
                          w->consumer, w->cfg->orphan_age_s * 1000, w->cfg->batch);
    }
}

void jobs_maybe_read(struct worker *w)
{
    if (w->reading || w->stopping || !w->rd || !w->rd_ready)
        return;
    /* Sends in flight are bounded by the concurrency; outcomes not yet
     * written by a separate backlog bound, so a slow database slows the
     * reading instead of growing memory. */
    /* One claim statement at a time: while it runs, jobs wait in the
     * stream and the next claim takes them all in one statement (the
     * statement's cost is mostly per statement, not per row). */
    if (w->claims_running > 0)
        return;
    long room = w->cfg->concurrency - w->inflight - w->claiming;
    long step = w->cfg->batch < w->cfg->concurrency ? w->cfg->batch : w->cfg->concurrency;
    if (room < step / 4 + 1 || w->noutcomes + w->writing >= 4 * w->cfg->batch)
        return;
    long count = room < w->cfg->batch ? room : w->cfg->batch;
    w->reading = true;
    redisAsyncCommand(w->rd, on_read, w,
                      "XREADGROUP GROUP workers %s COUNT %ld BLOCK 1000 "
                      "STREAMS %s %s %s > > >",
                      w->consumer, count, w->keys.jobs[0], w->keys.jobs[1], w->keys.jobs[2]);
}

/* ---------------------------------------------------------------------
 * Outcomes
 * ------------------------------------------------------------------- */

void jobs_add_outcome(struct worker *w, struct outcome *o)
{
    if (o->res.outcome == SEND_RETRY && !o->res.throttled && o->attempts >= w->cfg->max_attempts) {
        o->res.outcome = SEND_FAILED;
        char msg[sizeof(o->res.message)];
        snprintf(msg, sizeof(msg), "attempts exhausted (%d): %.200s", o->attempts, o->res.message);
        snprintf(o->res.message, sizeof(o->res.message), "%s", msg);
        if (w->wr) {
            char id[24], tenant[24];
            snprintf(id, sizeof(id), "%lld", o->delivery_id);
            snprintf(tenant, sizeof(tenant), "%lld", o->tenant_id);
            redisAsyncCommand(w->wr, NULL, NULL, "XADD %s * d %s t %s code %s error %s",
                              w->keys.dlq, id, tenant, o->res.code, o->res.message);
        }
    }
    if (w->noutcomes == w->outcomes_cap) {
        w->outcomes_cap = w->outcomes_cap ? w->outcomes_cap * 2 : 256;
        w->outcomes = xrealloc(w->outcomes, (size_t)w->outcomes_cap * sizeof(*w->outcomes));
    }
    w->outcomes[w->noutcomes++] = *o;
    if (w->noutcomes >= w->cfg->batch)
        jobs_flush(w);
}

/* Backoff in ms for attempt n: CRIER_RETRY_BASE_MS * 2^(n-1), capped at
 * 1 h, jitter ±25 %, at least Retry-After. A throttled send (429, rate
 * limit) waits its Retry-After only: it used no attempt. */
static long backoff_ms(const struct worker *w, const struct outcome *o)
{
    long retry_after = o->res.retry_after_s * 1000;
    if (o->res.throttled)
        return retry_after > 0 ? retry_after : 1000;
    int n = o->attempts > 0 ? o->attempts - 1 : 0;
    long base = w->cfg->retry_base_ms;
    for (int i = 0; i < n && base < 3600000; i++)
        base *= 2;
    if (base > 3600000)
        base = 3600000;
    long jitter = base / 4;
    long b = base - jitter + (jitter ? random() % (2 * jitter + 1) : 0);
    return b > retry_after ? b : retry_after;
}

/* A batch of outcomes being written. */
struct write {
    struct worker *w;
    int n;
    struct outcome *o;
};

static void write_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct write *wr = arg;
    struct worker *w = wr->w;
    (void)sqlstate;
    w->writing -= wr->n;
    w->writes_running--;
    if (!res) {
        /* Keep them: the next flush tries again. Their jobs stay unacked. */
        log_warn("writing %d outcomes failed (%s); will retry", wr->n, errmsg);
        for (int i = 0; i < wr->n; i++) {
            if (w->noutcomes == w->outcomes_cap) {
                w->outcomes_cap = w->outcomes_cap ? w->outcomes_cap * 2 : 256;
                w->outcomes = xrealloc(w->outcomes, (size_t)w->outcomes_cap * sizeof(*w->outcomes));
            }
            w->outcomes[w->noutcomes++] = wr->o[i];
        }
        free(wr->o);
        free(wr);
        return;
    }
    /* Retries wait in crier:delayed; the ZADDs go before the XACK on the
     * same connection. A ZADD lost with the connection leaves the delivery
     * in 'retry': the dispatcher enqueues overdue retries again. */
    for (int r = 0; r < PQntuples(res) && w->wr; r++)
        redisAsyncCommand(w->wr, NULL, NULL, "ZADD %s %s %s", w->keys.delayed,
                          PQgetvalue(res, r, 0), PQgetvalue(res, r, 1));
    char **ids = xcalloc((size_t)wr->n, sizeof(char *));
    for (int ch = 0; ch < RQ_NCHANNELS; ch++) {
        int k = 0;
        for (int i = 0; i < wr->n; i++)
            if (wr->o[i].ch == ch)
                ids[k++] = wr->o[i].stream_id;
        ack_ids(w, ch, ids, k);
    }
    for (int i = 0; i < wr->n; i++)
        if (wr->o[i].res.outcome == SEND_OK)
            w->sent_total++;
    free(ids);
    for (int i = 0; i < wr->n; i++)
        free(wr->o[i].body);
    free(wr->o);
    free(wr);
    jobs_flush(w);
    jobs_maybe_read(w);
}

void jobs_flush(struct worker *w)
{
    /* One write statement at a time (group commit): outcomes arriving
     * while it runs go together in the next one. */
    if (w->noutcomes == 0 || w->writes_running > 0)
        return;
    int n = w->noutcomes;
    struct pgarr a[10];
    for (int i = 0; i < 10; i++)
        pgarr_init(&a[i], 64u << 20);
    enum cr_err e = CR_OK;
    for (int i = 0; i < n && !e; i++) {
        struct outcome *o = &w->outcomes[i];
        bool sent = o->res.outcome == SEND_OK;
        e = pgarr_add_int(&a[0], o->delivery_id);
        if (!e)
            e = pgarr_add_int(&a[1], o->tenant_id);
        if (!e)
            e = pgarr_add_text(&a[2], send_outcome_status(o->res.outcome));
        if (!e)
            e = pgarr_add_text(&a[3], sent ? o->res.provider_id : NULL);
        if (!e)
            e = pgarr_add_text(&a[4], o->res.code);
        if (!e)
            e = pgarr_add_text(&a[5], o->res.message);
        if (!e)
            e = pgarr_add_int(&a[6], o->res.outcome == SEND_RETRY ? backoff_ms(w, o) : 0);
        if (!e)
            e = pgarr_add_text(&a[7], o->body);
        if (!e)
            e = pgarr_add_text(&a[8], o->provider);
        if (!e)
            e = pgarr_add_text(&a[9], o->variant[0] ? o->variant : NULL);
    }
    if (e) {
        log_error("outcome batch of %d exceeds its size limit; will retry", n);
    } else {
        struct write *wr = xcalloc(1, sizeof(*wr));
        wr->w = w;
        wr->n = n;
        wr->o = xmalloc((size_t)n * sizeof(*wr->o));
        memcpy(wr->o, w->outcomes, (size_t)n * sizeof(*wr->o));
        w->noutcomes = 0;
        w->writing += n;
        w->writes_running++;
        const char *p[11];
        for (int i = 0; i < 9; i++)
            p[i] = pgarr_str(&a[i]);
        p[9] = w->consumer;
        p[10] = pgarr_str(&a[9]);
        pgpool_query_named(w->pool, "outcomes", sql_outcomes, 11, p, write_done, wr);
    }
    for (int i = 0; i < 10; i++)
        pgarr_cleanup(&a[i]);
}

bool jobs_idle(const struct worker *w)
{
    return w->inflight == 0 && !w->reading && w->claiming == 0 && w->noutcomes == 0 &&
           w->writing == 0;
}
