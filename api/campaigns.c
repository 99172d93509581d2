/* campaigns.c - create, read, launch and stats of campaigns.
 *
 * PostgreSQL is the truth of a campaign's state; the XADD to the actions
 * stream that follows a launch only wakes the dispatcher, which also polls
 * PostgreSQL, so a launch survives a Redis outage. */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "log.h"
#include "segment.h"
#include "template.h"
#include "xalloc.h"

#define CAMPAIGN_JSON_COLUMNS                                                                      \
    "id, name, type, channel, status, segment_criteria AS segment, message,"                       \
    " provider_account_id, rate_per_minute, scheduled_at, launched_at, expanded_at,"               \
    " completed_at, cancelled_at, created_at, updated_at"

static const char sql_insert[] =
    "INSERT INTO campaigns (tenant_id, name, type, channel, segment_criteria, message,"
    "  provider_account_id, rate_per_minute)"
    " SELECT $1, $2, $3, $4, $5::jsonb, $6::jsonb, p.id, $8::int FROM provider_accounts p"
    " WHERE p.tenant_id = $1 AND p.channel = $4"
    "   AND CASE WHEN $7::bigint IS NULL THEN p.is_default ELSE p.id = $7::bigint END"
    " RETURNING row_to_json((SELECT x FROM (SELECT " CAMPAIGN_JSON_COLUMNS ") x))";

static const char sql_get[] = "SELECT row_to_json(x) FROM (SELECT " CAMPAIGN_JSON_COLUMNS
                              " FROM campaigns WHERE tenant_id = $1 AND id = $2) x";

/* Launch: draft -> running in one statement; reports the state before. */
static const char sql_launch[] =
    "WITH cur AS (SELECT id, status FROM campaigns WHERE tenant_id = $1 AND id = $2 FOR UPDATE),"
    " upd AS (UPDATE campaigns c SET status = 'running', launched_at = now(), updated_at = now()"
    "   FROM cur WHERE c.id = cur.id AND cur.status IN ('draft', 'scheduled')"
    "   RETURNING c.launched_at)"
    " SELECT cur.status, (SELECT launched_at FROM upd) IS NOT NULL,"
    "   COALESCE((SELECT launched_at FROM upd),"
    "            (SELECT launched_at FROM campaigns WHERE id = cur.id)) FROM cur";

static const char sql_stats[] = "SELECT k.status, k.launched_at, k.expanded_at, k.completed_at,"
                                " (SELECT COALESCE(json_object_agg(s.status, s.n), '{}') FROM"
                                "   (SELECT status, count(*) AS n FROM deliveries"
                                "    WHERE tenant_id = $1 AND campaign_id = $2 GROUP BY status) s)"
                                " FROM campaigns k WHERE k.tenant_id = $1 AND k.id = $2";

/* ---------------------------------------------------------------------
 * Validation
 * ------------------------------------------------------------------- */

static bool allowed_variable(const char *name, size_t n)
{
    static const char *const vars[] = {"first_name", "last_name",   "email",
                                       "phone",      "external_id", NULL};
    for (int i = 0; vars[i]; i++)
        if (strlen(vars[i]) == n && strncmp(vars[i], name, n) == 0)
            return true;
    return n > 11 && strncmp(name, "attributes.", 11) == 0;
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

struct cerr {
    int status;
    char field[160];
    char msg[256];
};

static int cfail(struct cerr *e, int status, const char *field, const char *msg)
{
    e->status = status;
    snprintf(e->field, sizeof(e->field), "%s", field);
    snprintf(e->msg, sizeof(e->msg), "%s", msg);
    return -1;
}

static int validate_create(const cJSON *in, struct cerr *e)
{
    static const char *const keys[] = {
        "name", "type", "channel", "message", "segment", "provider_account_id", "rate_per_minute",
        NULL};
    for (const cJSON *it = in->child; it; it = it->next) {
        bool known = false;
        for (int i = 0; keys[i]; i++)
            if (strcmp(it->string, keys[i]) == 0)
                known = true;
        if (!known) {
            char msg[160];
            snprintf(msg, sizeof(msg), "unknown field %.100s", it->string);
            return cfail(e, 422, it->string, msg);
        }
    }
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(in, "name");
    if (!cJSON_IsString(name) || !*name->valuestring || strlen(name->valuestring) > 200)
        return cfail(e, 422, "name", "name is required: a string of 1..200 characters");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(in, "type");
    if (type && (!cJSON_IsString(type) || (strcmp(type->valuestring, "research") != 0 &&
                                           strcmp(type->valuestring, "outbound_sales") != 0)))
        return cfail(e, 422, "type", "type must be research or outbound_sales");
    const cJSON *channel = cJSON_GetObjectItemCaseSensitive(in, "channel");
    enum seg_channel ch;
    if (!cJSON_IsString(channel) || seg_channel_parse(channel->valuestring, &ch) != CR_OK)
        return cfail(e, 422, "channel", "channel is required: sms, email or voice");
    if (ch != SEG_CHANNEL_SMS)
        return cfail(e, 422, "channel", "only the sms channel can be sent by this version");
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(in, "message");
    if (!cJSON_IsObject(msg))
        return cfail(e, 422, "message", "message is required: an object with a body");
    for (const cJSON *it = msg->child; it; it = it->next)
        if (strcmp(it->string, "body") != 0) {
            char m[160];
            snprintf(m, sizeof(m), "unknown field message.%.100s", it->string);
            char f[128];
            snprintf(f, sizeof(f), "message.%.100s", it->string);
            return cfail(e, 422, f, m);
        }
    const cJSON *body = cJSON_GetObjectItemCaseSensitive(msg, "body");
    if (!cJSON_IsString(body) || !*body->valuestring)
        return cfail(e, 422, "message.body", "message.body is required for sms");
    if (utf8_chars(body->valuestring) > 1600)
        return cfail(e, 422, "message.body", "message.body must be at most 1600 characters");
    char terr[160];
    if (tpl_validate(body->valuestring, allowed_variable, terr, sizeof(terr)) != CR_OK)
        return cfail(e, 422, "message.body", terr);

    const cJSON *seg = cJSON_GetObjectItemCaseSensitive(in, "segment");
    if (seg && !cJSON_IsObject(seg))
        return cfail(e, 422, "segment", "segment must be an object of criteria");
    if (seg) {
        struct seg_query q;
        char field[64] = "", m[192] = "";
        enum cr_err err = seg_compile(seg, ch, 2, &q, field, sizeof(field), m, sizeof(m));
        seg_query_cleanup(&q);
        if (err != CR_OK) {
            char f[96];
            snprintf(f, sizeof(f), "segment%s%.80s", field[0] ? "." : "", field);
            return cfail(e, 422, f, m[0] ? m : "invalid segment criteria");
        }
    }
    const cJSON *pa = cJSON_GetObjectItemCaseSensitive(in, "provider_account_id");
    if (pa && !cJSON_IsNull(pa) &&
        (!cJSON_IsNumber(pa) || pa->valuedouble < 1 ||
         pa->valuedouble != (double)(long long)pa->valuedouble))
        return cfail(e, 422, "provider_account_id",
                     "provider_account_id must be a positive integer");
    const cJSON *rate = cJSON_GetObjectItemCaseSensitive(in, "rate_per_minute");
    if (rate && !cJSON_IsNull(rate) &&
        (!cJSON_IsNumber(rate) || rate->valuedouble < 1 || rate->valuedouble > 1e7 ||
         rate->valuedouble != (double)(long long)rate->valuedouble))
        return cfail(e, 422, "rate_per_minute", "rate_per_minute must be an integer 1..10000000");
    return 0;
}

/* ---------------------------------------------------------------------
 * Handlers
 * ------------------------------------------------------------------- */

static void json_row_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate,
                          int status_ok)
{
    struct api_req *r = arg;
    (void)sqlstate;
    if (!res) {
        http_reply_dependency(r, "postgres", errmsg);
        return;
    }
    if (PQntuples(res) != 1) {
        http_reply_error(r, 404, "not_found", "no such campaign", NULL);
        return;
    }
    http_reply_raw_json(r, status_ok, PQgetvalue(res, 0, 0));
}

static void create_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    if (res && PQntuples(res) == 0) {
        http_reply_error(r, 422, "invalid_field",
                         "no provider account for this channel (create one with crierctl "
                         "provider create, or name an existing provider_account_id)",
                         "provider_account_id");
        return;
    }
    json_row_done(arg, res, errmsg, sqlstate, 201);
}

void campaigns_create(struct api_req *r)
{
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return;
    struct cerr e;
    if (validate_create(in, &e) != 0) {
        cJSON_Delete(in);
        http_reply_error(r, e.status, "invalid_field", e.msg, e.field);
        return;
    }
    char tenant[24], pa[24], rate[24];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    const cJSON *jpa = cJSON_GetObjectItemCaseSensitive(in, "provider_account_id");
    const cJSON *jrate = cJSON_GetObjectItemCaseSensitive(in, "rate_per_minute");
    const cJSON *jtype = cJSON_GetObjectItemCaseSensitive(in, "type");
    const cJSON *jseg = cJSON_GetObjectItemCaseSensitive(in, "segment");
    if (cJSON_IsNumber(jpa))
        snprintf(pa, sizeof(pa), "%lld", (long long)jpa->valuedouble);
    if (cJSON_IsNumber(jrate))
        snprintf(rate, sizeof(rate), "%lld", (long long)jrate->valuedouble);
    char *seg = jseg ? cJSON_PrintUnformatted(jseg) : xstrdup("{}");
    char *msg = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(in, "message"));
    const char *params[] = {tenant,
                            cJSON_GetObjectItemCaseSensitive(in, "name")->valuestring,
                            jtype ? jtype->valuestring : "outbound_sales",
                            cJSON_GetObjectItemCaseSensitive(in, "channel")->valuestring,
                            seg,
                            msg,
                            cJSON_IsNumber(jpa) ? pa : NULL,
                            cJSON_IsNumber(jrate) ? rate : NULL};
    pgpool_query(r->app->pg, sql_insert, 8, params, create_done, r);
    free(seg);
    free(msg);
    cJSON_Delete(in);
}

static void get_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    json_row_done(arg, res, errmsg, sqlstate, 200);
}

static void query_by_id(struct api_req *r, const char *sql, pgpool_cb cb)
{
    char tenant[24], id[24];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    snprintf(id, sizeof(id), "%lld", r->ids[0]);
    const char *params[] = {tenant, id};
    pgpool_query(r->app->pg, sql, 2, params, cb, r);
}

void campaigns_get(struct api_req *r)
{
    query_by_id(r, sql_get, get_done);
}

static void launch_xadd_done(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *rep = reply;
    (void)ac;
    (void)priv;
    if (!rep || rep->type == REDIS_REPLY_ERROR)
        log_warn("launch action not queued (%s); the dispatcher's poll will pick it up",
                 rep ? rep->str : "no reply");
}

static void launch_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)sqlstate;
    if (!res) {
        http_reply_dependency(r, "postgres", errmsg);
        return;
    }
    if (PQntuples(res) != 1) {
        http_reply_error(r, 404, "not_found", "no such campaign", NULL);
        return;
    }
    const char *before = PQgetvalue(res, 0, 0);
    bool launched = PQgetvalue(res, 0, 1)[0] == 't';
    if (!launched && (strcmp(before, "cancelled") == 0 || strcmp(before, "completed") == 0)) {
        cJSON *root = cJSON_CreateObject();
        cJSON *e = cJSON_AddObjectToObject(root, "error");
        cJSON_AddStringToObject(e, "code", "invalid_transition");
        char msg[96];
        snprintf(msg, sizeof(msg), "a %s campaign cannot be launched", before);
        cJSON_AddStringToObject(e, "message", msg);
        cJSON_AddStringToObject(e, "field", "status");
        cJSON_AddStringToObject(e, "status", before);
        cJSON_AddItemToObject(e, "allowed", cJSON_CreateArray());
        http_reply_json(r, 409, root);
        return;
    }
    if (launched && r->app->redis.connected && r->app->redis.ac) {
        char tenant[24], id[24];
        snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
        snprintf(id, sizeof(id), "%lld", r->ids[0]);
        redisAsyncCommand(r->app->redis.ac, launch_xadd_done, NULL,
                          "XADD %s * type launch tenant %s campaign %s", r->app->keys.actions,
                          tenant, id);
    } else if (launched) {
        log_warn("redis down: launch of campaign %lld left to the dispatcher's poll", r->ids[0]);
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddNumberToObject(body, "id", (double)r->ids[0]);
    cJSON_AddStringToObject(body, "status", launched ? "running" : before);
    cJSON_AddStringToObject(body, "launched_at", PQgetvalue(res, 0, 2));
    cJSON_AddBoolToObject(body, "already_launched", !launched);
    http_reply_json(r, launched ? 202 : 200, body);
}

void campaigns_launch(struct api_req *r)
{
    query_by_id(r, sql_launch, launch_done);
}

/* Statuses that mean the provider accepted the message (or more). */
static bool is_contacted(const char *s)
{
    return !strcmp(s, "sent") || !strcmp(s, "delivered") || !strcmp(s, "responded") ||
           !strcmp(s, "undelivered");
}

static void stats_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)sqlstate;
    if (!res) {
        http_reply_dependency(r, "postgres", errmsg);
        return;
    }
    if (PQntuples(res) != 1) {
        http_reply_error(r, 404, "not_found", "no such campaign", NULL);
        return;
    }
    cJSON *counts = cJSON_Parse(PQgetvalue(res, 0, 4));
    double targeted = 0, contacted = 0, terminal = 0;
    static const char *const open_states[] = {"pending", "queued", "sending", "retry", NULL};
    for (cJSON *it = counts ? counts->child : NULL; it; it = it->next) {
        targeted += it->valuedouble;
        if (is_contacted(it->string))
            contacted += it->valuedouble;
        bool open = false;
        for (int i = 0; open_states[i]; i++)
            if (!strcmp(it->string, open_states[i]))
                open = true;
        if (!open)
            terminal += it->valuedouble;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddNumberToObject(body, "campaign_id", (double)r->ids[0]);
    cJSON_AddStringToObject(body, "status", PQgetvalue(res, 0, 0));
    cJSON_AddBoolToObject(body, "expanded", !PQgetisnull(res, 0, 2));
    cJSON_AddNumberToObject(body, "targeted", targeted);
    cJSON_AddNumberToObject(body, "contacted", contacted);
    cJSON_AddNumberToObject(body, "terminal", terminal);
    cJSON_AddItemToObject(body, "counts", counts ? counts : cJSON_CreateObject());
    http_reply_json(r, 200, body);
}

void campaigns_stats(struct api_req *r)
{
    query_by_id(r, sql_stats, stats_done);
}
