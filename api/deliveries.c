/* deliveries.c - one delivery as the API shows it, and its outcome: what an
 * AI agent or a human scorer concluded about the contact (outcome,
 * sentiment, satisfaction). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

#define DELIVERY_JSON_COLUMNS                                                                      \
    "id, campaign_id, customer_id, channel, status, attempts, variant, provider,"                  \
    " provider_message_id, provider_status, answered_by, skip_reason, error_code, last_error,"     \
    " outcome, sentiment, satisfaction, created_at, updated_at, sent_at, delivered_at,"            \
    " responded_at, opted_out_at, opened_at, clicked_at"

static const char sql_get[] = "SELECT row_to_json(x) FROM (SELECT " DELIVERY_JSON_COLUMNS
                              " FROM deliveries WHERE tenant_id = $1 AND id = $2) x";

/* $3 outcome, $4 sentiment, $5 satisfaction: NULL keeps the stored value. */
static const char sql_outcome[] =
    "UPDATE deliveries SET outcome = COALESCE($3, outcome),"
    "  sentiment = COALESCE($4, sentiment),"
    "  satisfaction = COALESCE($5::smallint, satisfaction), updated_at = now()"
    " WHERE tenant_id = $1 AND id = $2"
    " RETURNING row_to_json((SELECT x FROM (SELECT " DELIVERY_JSON_COLUMNS ") x))";

static void row_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    (void)sqlstate;
    http_reply_pg_row(arg, res, errmsg, 200, "delivery");
}

void deliveries_get(struct api_req *r)
{
    char tenant[24], id[24];
    http_id_params(r, tenant, id);
    const char *params[] = {tenant, id};
    pgpool_query(r->app->pg, sql_get, 2, params, row_done, r);
}

static bool outcome_ok(const char *s)
{
    size_t n = strlen(s);
    return n >= 1 && n <= 64 && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

/* Checks the body; NULL when it is fine, else the field at fault (borrowed
 * from in) and its message in msg. */
static const char *outcome_problem(const cJSON *in, char *msg, size_t msgsz)
{
    static const char *const keys[] = {"outcome", "sentiment", "satisfaction", NULL};
    const char *bad = http_unknown_key(in, keys);
    const char *m = NULL, *field = NULL;
    if (bad) {
        snprintf(msg, msgsz, "unknown field %.100s (give outcome, sentiment or satisfaction)", bad);
        return bad;
    }
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(in, "outcome");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(in, "sentiment");
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(in, "satisfaction");
    if (!o && !s && !n) {
        field = "outcome";
        m = "give at least one of outcome, sentiment and satisfaction";
    } else if (o && !(cJSON_IsString(o) && outcome_ok(o->valuestring))) {
        field = "outcome";
        m = "outcome must be 1..64 characters of a-z, 0-9, _ and -";
    } else if (s && !(cJSON_IsString(s) &&
                      (!strcmp(s->valuestring, "positive") || !strcmp(s->valuestring, "neutral") ||
                       !strcmp(s->valuestring, "negative")))) {
        field = "sentiment";
        m = "sentiment must be positive, neutral or negative";
    } else if (n && !(cJSON_IsNumber(n) && n->valuedouble >= 1 && n->valuedouble <= 5 &&
                      n->valuedouble == (double)(int)n->valuedouble)) {
        field = "satisfaction";
        m = "satisfaction must be an integer 1..5";
    }
    if (m)
        snprintf(msg, msgsz, "%s", m);
    return field;
}

void deliveries_outcome(struct api_req *r)
{
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return;
    char msg[192];
    const char *field = outcome_problem(in, msg, sizeof(msg));
    if (field) {
        http_reply_error(r, 422, "invalid_field", msg, field);
        cJSON_Delete(in);
        return;
    }
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(in, "outcome");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(in, "sentiment");
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(in, "satisfaction");
    char tenant[24], id[24], sat[8];
    http_id_params(r, tenant, id);
    if (n)
        snprintf(sat, sizeof(sat), "%d", (int)n->valuedouble);
    const char *params[] = {tenant, id, o ? o->valuestring : NULL, s ? s->valuestring : NULL,
                            n ? sat : NULL};
    pgpool_query(r->app->pg, sql_outcome, 5, params, row_done, r);
    cJSON_Delete(in);
}
