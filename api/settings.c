/* settings.c - a tenant's contact policy: its settings (frequency cap,
 * default time zone, whether an email left ambiguous by a dead worker may
 * be sent again) and its suppression list.
 *
 * The frequency cap limits contacts per customer over any rolling 7 days,
 * across campaigns; a suppressed address is never contacted on its channel.
 * Both are applied when a campaign's deliveries are created and again when
 * a worker claims a job, and show as skip reasons in the campaign stats. */
#include <sys/queue.h>

#include <event2/keyvalq_struct.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "phone.h"

#define SETTINGS_JSON                                                                              \
    "json_build_object('tenant_id', id, 'name', name, 'default_timezone', default_timezone,"       \
    " 'frequency_cap_7d', frequency_cap_7d, 'email_resend_unknown', email_resend_unknown)"

static const char sql_settings_get[] = "SELECT " SETTINGS_JSON " FROM tenants WHERE id = $1";

/* $2 set the cap?, $3 the cap (NULL removes it), $4 time zone or NULL,
 * $5 email_resend_unknown or NULL. */
static const char sql_settings_patch[] =
    "UPDATE tenants SET"
    "  frequency_cap_7d = CASE WHEN $2::boolean THEN $3::int ELSE frequency_cap_7d END,"
    "  default_timezone = COALESCE($4, default_timezone),"
    "  email_resend_unknown = COALESCE($5::boolean, email_resend_unknown)"
    " WHERE id = $1"
    " RETURNING " SETTINGS_JSON;

#define SUPPRESSION_JSON_COLUMNS "id, channel, address, reason, created_at"

/* A repeat of an existing (channel, address) answers the existing row.
 * Emails are lower-cased by PostgreSQL's lower(), the function the gate
 * compares with (non-ASCII letters included). */
static const char sql_supp_insert[] =
    "WITH a AS (SELECT CASE WHEN $2 = 'email' THEN lower($3) ELSE $3 END AS address),"
    " ins AS (INSERT INTO suppressions (tenant_id, channel, address, reason)"
    "   SELECT $1, $2, a.address, $4 FROM a"
    "   ON CONFLICT (tenant_id, channel, address) DO NOTHING"
    "   RETURNING " SUPPRESSION_JSON_COLUMNS ")"
    " SELECT row_to_json(x), true FROM ins x"
    " UNION ALL"
    " SELECT row_to_json(x), false FROM (SELECT " SUPPRESSION_JSON_COLUMNS " FROM suppressions"
    "   WHERE tenant_id = $1 AND channel = $2 AND address = (SELECT address FROM a)) x"
    " WHERE NOT EXISTS (SELECT 1 FROM ins)";

static const char sql_supp_list[] =
    "SELECT COALESCE(json_agg(x ORDER BY x.id), '[]') FROM"
    " (SELECT " SUPPRESSION_JSON_COLUMNS " FROM suppressions WHERE tenant_id = $1"
    "  AND id > $2::bigint AND ($4::text IS NULL OR channel = $4)"
    "  AND ($5::text IS NULL OR address = CASE WHEN $4 = 'email' THEN lower($5) ELSE $5 END)"
    "  ORDER BY id LIMIT $3::int) x";

static const char sql_supp_delete[] =
    "DELETE FROM suppressions WHERE tenant_id = $1 AND id = $2 RETURNING id";

/* ---------------------------------------------------------------------
 * Settings
 * ------------------------------------------------------------------- */

static void settings_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    (void)sqlstate;
    http_reply_pg_row(arg, res, errmsg, 200, "tenant");
}

void settings_get(struct api_req *r)
{
    char tenant[24];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    const char *params[] = {tenant};
    pgpool_query(r->app->pg, sql_settings_get, 1, params, settings_done, r);
}

void settings_patch(struct api_req *r)
{
    static const char *const keys[] = {"frequency_cap_7d", "default_timezone",
                                       "email_resend_unknown", NULL};
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return;
    const char *bad = http_unknown_key(in, keys);
    if (bad) {
        char msg[160];
        snprintf(msg, sizeof(msg), "unknown field %.100s", bad);
        http_reply_error(r, 400, "unknown_field", msg, bad); /* bad points into in */
        cJSON_Delete(in);
        return;
    }
    const cJSON *cap = cJSON_GetObjectItemCaseSensitive(in, "frequency_cap_7d");
    const cJSON *tz = cJSON_GetObjectItemCaseSensitive(in, "default_timezone");
    char capv[16] = "";
    if (cap && !cJSON_IsNull(cap)) {
        double v = cJSON_IsNumber(cap) ? cap->valuedouble : 0;
        if (!cJSON_IsNumber(cap) || v < 1 || v > 1000 || v != (double)(long)v) {
            cJSON_Delete(in);
            http_reply_error(r, 400, "invalid_field",
                             "frequency_cap_7d must be an integer 1..1000, or null for no cap",
                             "frequency_cap_7d");
            return;
        }
        snprintf(capv, sizeof(capv), "%ld", (long)v);
    }
    if (tz && (!cJSON_IsString(tz) || !tzdb_valid(r->app, tz->valuestring))) {
        cJSON_Delete(in);
        http_reply_error(r, 400, "invalid_field",
                         "default_timezone must be an IANA time zone name (e.g. Europe/Paris)",
                         "default_timezone");
        return;
    }
    const cJSON *resend = cJSON_GetObjectItemCaseSensitive(in, "email_resend_unknown");
    if (resend && !cJSON_IsBool(resend)) {
        cJSON_Delete(in);
        http_reply_error(r, 400, "invalid_field", "email_resend_unknown must be true or false",
                         "email_resend_unknown");
        return;
    }
    char tenant[24];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    const char *params[] = {tenant, cap ? "true" : "false", capv[0] ? capv : NULL,
                            tz ? tz->valuestring : NULL,
                            resend ? (cJSON_IsTrue(resend) ? "true" : "false") : NULL};
    pgpool_query(r->app->pg, sql_settings_patch, 5, params, settings_done, r);
    cJSON_Delete(in);
}

/* ---------------------------------------------------------------------
 * Suppressions
 * ------------------------------------------------------------------- */

static bool valid_channel(const char *s)
{
    return s && (!strcmp(s, "sms") || !strcmp(s, "email") || !strcmp(s, "voice"));
}

/* The stored form of an address: E.164 for sms and voice, lower-cased
 * email (as the gate compares them). 0 or -1 with a message. */
static int normalize_address(const char *channel, const char *in, char *out, size_t outsz,
                             const char **msg)
{
    if (!strcmp(channel, "email")) {
        const char *at = strchr(in, '@');
        size_t n = strlen(in);
        if (!at || at == in || !at[1] || strchr(at + 1, '@') || n >= outsz || n > 320 ||
            strpbrk(in, " \t\r\n")) {
            *msg = "address must be an email address";
            return -1;
        }
        for (size_t i = 0; i <= n; i++)
            out[i] = (char)((in[i] >= 'A' && in[i] <= 'Z') ? in[i] + 32 : in[i]);
        return 0;
    }
    if (phone_normalize(in, NULL, out, outsz) != CR_OK) {
        *msg = "address must be a phone number in E.164 form (+ and 7 to 15 digits)";
        return -1;
    }
    return 0;
}

static void supp_created(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)sqlstate;
    if (!http_one_row_or_reply(r, res, errmsg, "suppression"))
        return;
    http_reply_raw_json(r, PQgetvalue(res, 0, 1)[0] == 't' ? 201 : 200, PQgetvalue(res, 0, 0));
}

void suppressions_create(struct api_req *r)
{
    static const char *const keys[] = {"channel", "address", "reason", NULL};
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return;
    const char *bad = http_unknown_key(in, keys);
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(in, "channel");
    const cJSON *addr = cJSON_GetObjectItemCaseSensitive(in, "address");
    const cJSON *reason = cJSON_GetObjectItemCaseSensitive(in, "reason");
    char norm[352];
    const char *msg = NULL, *field = NULL;
    char unknown[160];
    if (bad) {
        snprintf(unknown, sizeof(unknown), "unknown field %.100s", bad);
        msg = unknown;
        field = bad;
    } else if (!cJSON_IsString(ch) || !valid_channel(ch->valuestring)) {
        msg = "channel must be sms, email or voice";
        field = "channel";
    } else if (!cJSON_IsString(addr) ||
               normalize_address(ch->valuestring, addr->valuestring, norm, sizeof(norm), &msg)) {
        msg = msg ? msg : "address is required";
        field = "address";
    } else if (reason && (!cJSON_IsString(reason) || strlen(reason->valuestring) > 200)) {
        msg = "reason must be a string of at most 200 characters";
        field = "reason";
    }
    if (msg) {
        http_reply_error(r, 400, bad ? "unknown_field" : "invalid_field", msg, field);
        cJSON_Delete(in);
        return;
    }
    char tenant[24];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    const char *params[] = {tenant, ch->valuestring, norm,
                            reason && reason->valuestring[0] ? reason->valuestring : "manual"};
    pgpool_query(r->app->pg, sql_supp_insert, 4, params, supp_created, r);
    cJSON_Delete(in);
}

void suppressions_list(struct api_req *r)
{
    long limit;
    long long after;
    if (http_page_params_or_reply(r, &limit, &after) != 0)
        return;
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    evhttp_parse_query_str(r->query ? r->query : "", &q);
    const char *ch = evhttp_find_header(&q, "channel");
    const char *addr = evhttp_find_header(&q, "address");
    char norm[352];
    const char *msg = NULL;
    if (ch && !valid_channel(ch)) {
        evhttp_clear_headers(&q);
        http_reply_error(r, 400, "invalid_parameter", "channel must be sms, email or voice",
                         "channel");
        return;
    }
    if (addr && (!ch || normalize_address(ch, addr, norm, sizeof(norm), &msg))) {
        evhttp_clear_headers(&q);
        http_reply_error(r, 400, "invalid_parameter",
                         ch ? msg : "address needs channel (sms, email or voice)", "address");
        return;
    }
    char tenant[24], a[24], l[24], chv[8] = "";
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    snprintf(a, sizeof(a), "%lld", after);
    snprintf(l, sizeof(l), "%ld", limit);
    if (ch)
        snprintf(chv, sizeof(chv), "%s", ch);
    bool has_addr = addr != NULL;
    evhttp_clear_headers(&q);
    const char *params[] = {tenant, a, l, chv[0] ? chv : NULL, has_addr ? norm : NULL};
    http_query_page(r, sql_supp_list, 5, params, "suppressions", limit);
}

static void supp_deleted(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)sqlstate;
    if (!http_one_row_or_reply(r, res, errmsg, "suppression"))
        return;
    http_reply_no_content(r);
}

void suppressions_delete(struct api_req *r)
{
    char tenant[24], id[24];
    http_id_params(r, tenant, id);
    const char *params[] = {tenant, id};
    pgpool_query(r->app->pg, sql_supp_delete, 2, params, supp_deleted, r);
}
