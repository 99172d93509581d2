/* segments.c - segment templates, previews and saved segments.
 *
 * Criteria are compiled by common/segment.c into one parameterised SQL
 * expression; a preview counts the tenant's matching customers (reachable on
 * the channel) and returns a 5-customer sample. Saved segments store
 * criteria that compile; campaigns copy them when they name a segment_id. */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "segment.h"
#include "segment_templates.h"
#include "xalloc.h"

#define SEGMENT_JSON_COLUMNS "id, name, description, criteria, created_at, updated_at"

/* %s twice: the compiled expression (parameters from $2). */
static const char sql_preview_fmt[] =
    "SELECT (SELECT count(*) FROM customers c WHERE c.tenant_id = $1 AND (%s)),"
    " (SELECT COALESCE(json_agg(s ORDER BY s.id), '[]') FROM"
    "   (SELECT c.id, c.external_id, c.first_name, c.last_name, c.phone, c.email, c.timezone,"
    "      c.tags FROM customers c WHERE c.tenant_id = $1 AND (%s) ORDER BY c.id LIMIT 5) s)";

static const char sql_saved_criteria[] =
    "SELECT criteria::text FROM segments WHERE tenant_id = $1 AND id = $2";

static const char sql_insert[] =
    "INSERT INTO segments (tenant_id, name, description, criteria)"
    " VALUES ($1, $2, COALESCE($3, ''), $4::jsonb)"
    " RETURNING row_to_json((SELECT x FROM (SELECT " SEGMENT_JSON_COLUMNS ") x))";

static const char sql_list[] =
    "SELECT COALESCE(json_agg(x ORDER BY x.id), '[]') FROM"
    " (SELECT " SEGMENT_JSON_COLUMNS " FROM segments WHERE tenant_id = $1 AND id > $2::bigint"
    "  ORDER BY id LIMIT $3::int) x";

static const char sql_get[] = "SELECT row_to_json(x) FROM (SELECT " SEGMENT_JSON_COLUMNS
                              " FROM segments WHERE tenant_id = $1 AND id = $2) x";

static const char sql_patch[] =
    "UPDATE segments SET name = COALESCE($3, name), description = COALESCE($4, description),"
    " criteria = COALESCE($5::jsonb, criteria), updated_at = now()"
    " WHERE tenant_id = $1 AND id = $2"
    " RETURNING row_to_json((SELECT x FROM (SELECT " SEGMENT_JSON_COLUMNS ") x))";

static const char sql_delete[] =
    "WITH used AS (SELECT count(*) AS n FROM campaigns WHERE tenant_id = $1 AND segment_id = $2"
    "   AND status NOT IN ('completed', 'cancelled')),"
    " del AS (DELETE FROM segments s WHERE s.tenant_id = $1 AND s.id = $2"
    "   AND (SELECT n FROM used) = 0 AND NOT EXISTS (SELECT 1 FROM campaigns k"
    "     WHERE k.tenant_id = $1 AND k.segment_id = $2) RETURNING s.id)"
    " SELECT (SELECT count(*) FROM del), EXISTS (SELECT 1 FROM segments"
    "   WHERE tenant_id = $1 AND id = $2)";

/* ---------------------------------------------------------------------
 * Templates
 * ------------------------------------------------------------------- */

static cJSON *template_json(const struct seg_template *t)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", t->id);
    cJSON_AddStringToObject(o, "name", t->name);
    cJSON_AddStringToObject(o, "description", t->description);
    cJSON_AddStringToObject(o, "channel", t->channel);
    cJSON *crit = cJSON_Parse(t->criteria_json);
    cJSON_AddItemToObject(o, "criteria", crit ? crit : cJSON_CreateObject());
    return o;
}

void segments_templates(struct api_req *r)
{
    size_t n = 0;
    const struct seg_template *all = seg_templates(&n);
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(root, "templates");
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(arr, template_json(&all[i]));
    http_reply_json(r, 200, root);
}

/* ---------------------------------------------------------------------
 * Preview
 * ------------------------------------------------------------------- */

struct preview {
    enum seg_channel channel;
    char *criteria; /* JSON text, when it came from a saved segment */
};

static void preview_free(void *arg)
{
    struct preview *p = arg;
    free(p->criteria);
    free(p);
}

/* Compiles criteria and replies 422 naming the field on failure. */
static int compile_or_reply(struct api_req *r, const cJSON *criteria, enum seg_channel ch,
                            const char *prefix, struct seg_query *q)
{
    char field[64] = "", msg[192] = "";
    if (seg_compile(criteria, ch, 2, q, field, sizeof(field), msg, sizeof(msg)) == CR_OK)
        return 0;
    char f[96];
    snprintf(f, sizeof(f), "%s%s%.60s", prefix, field[0] ? "." : "", field);
    http_reply_error(r, 422, "invalid_field", msg[0] ? msg : "invalid criteria", f);
    return -1;
}

static void preview_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)sqlstate;
    if (!res) {
        http_reply_dependency(r, "postgres", errmsg);
        return;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "count", strtod(PQgetvalue(res, 0, 0), NULL));
    cJSON *sample = cJSON_Parse(PQgetvalue(res, 0, 1));
    cJSON_AddItemToObject(root, "sample", sample ? sample : cJSON_CreateArray());
    http_reply_json(r, 200, root);
}

static void preview_run(struct api_req *r, const cJSON *criteria, const char *prefix)
{
    struct preview *p = r->state;
    struct seg_query q;
    if (compile_or_reply(r, criteria, p->channel, prefix, &q) != 0) {
        seg_query_cleanup(&q);
        return;
    }
    char *sql = xasprintf(sql_preview_fmt, buf_str(&q.sql), buf_str(&q.sql));
    const char **params = xcalloc((size_t)q.nparams + 1, sizeof(char *));
    char tenant[24];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    params[0] = tenant;
    for (int i = 0; i < q.nparams; i++)
        params[1 + i] = q.params[i];
    pgpool_query(r->app->pg, sql, 1 + q.nparams, params, preview_done, r);
    free(params);
    free(sql);
    seg_query_cleanup(&q);
}

static void saved_loaded(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)sqlstate;
    if (!res) {
        http_reply_dependency(r, "postgres", errmsg);
        return;
    }
    if (PQntuples(res) != 1) {
        http_reply_error(r, 422, "invalid_field", "no such segment", "segment_id");
        return;
    }
    cJSON *criteria = cJSON_Parse(PQgetvalue(res, 0, 0));
    preview_run(r, criteria, "segment");
    cJSON_Delete(criteria);
}

void segments_preview(struct api_req *r)
{
    static const char *const keys[] = {"criteria", "template_id", "segment_id", "channel", NULL};
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return;
    const char *bad = http_unknown_key(in, keys);
    const cJSON *crit = cJSON_GetObjectItemCaseSensitive(in, "criteria");
    const cJSON *tid = cJSON_GetObjectItemCaseSensitive(in, "template_id");
    const cJSON *sid = cJSON_GetObjectItemCaseSensitive(in, "segment_id");
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(in, "channel");
    struct preview *p = xcalloc(1, sizeof(*p));
    r->state = p;
    r->state_free = preview_free;
    const struct seg_template *t = NULL;
    int given = (crit != NULL) + (tid != NULL) + (sid != NULL);
    if (bad) {
        char msg[160];
        snprintf(msg, sizeof(msg), "unknown field %.100s", bad);
        http_reply_error(r, 422, "invalid_field", msg, bad);
    } else if (given != 1) {
        http_reply_error(r, 422, "invalid_field",
                         "give exactly one of criteria, template_id or segment_id", "criteria");
    } else if (ch && (!cJSON_IsString(ch) || seg_channel_parse(ch->valuestring, &p->channel))) {
        http_reply_error(r, 422, "invalid_field", "channel must be sms, email or voice", "channel");
    } else if (crit && !cJSON_IsObject(crit)) {
        http_reply_error(r, 422, "invalid_field", "criteria must be an object", "criteria");
    } else if (tid && (!cJSON_IsString(tid) || !(t = seg_template_find(tid->valuestring)))) {
        http_reply_error(r, 422, "invalid_field", "no such segment template", "template_id");
    } else if (sid && (!cJSON_IsNumber(sid) || sid->valuedouble < 1 ||
                       sid->valuedouble != (double)(long long)sid->valuedouble)) {
        http_reply_error(r, 422, "invalid_field", "segment_id must be a positive integer",
                         "segment_id");
    } else if (crit) {
        preview_run(r, crit, "criteria");
    } else if (t) {
        if (!ch && seg_channel_parse(t->channel, &p->channel) != CR_OK)
            p->channel = SEG_CHANNEL_SMS;
        cJSON *tc = cJSON_Parse(t->criteria_json);
        preview_run(r, tc, "template");
        cJSON_Delete(tc);
    } else {
        char tenant[24], id[24];
        snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
        snprintf(id, sizeof(id), "%lld", (long long)sid->valuedouble);
        const char *params[] = {tenant, id};
        pgpool_query(r->app->pg, sql_saved_criteria, 2, params, saved_loaded, r);
    }
    cJSON_Delete(in);
}

/* ---------------------------------------------------------------------
 * Saved segments
 * ------------------------------------------------------------------- */

/* Validates name/description/criteria of a create (all required but
 * description) or patch (all optional); replies and returns -1 on error. */
static int validate_segment(struct api_req *r, const cJSON *in, bool create)
{
    static const char *const keys[] = {"name", "description", "criteria", NULL};
    const char *bad = http_unknown_key(in, keys);
    if (bad) {
        char msg[160];
        snprintf(msg, sizeof(msg), "unknown field %.100s", bad);
        http_reply_error(r, 422, "invalid_field", msg, bad);
        return -1;
    }
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(in, "name");
    const cJSON *desc = cJSON_GetObjectItemCaseSensitive(in, "description");
    const cJSON *crit = cJSON_GetObjectItemCaseSensitive(in, "criteria");
    if ((create || name) &&
        (!cJSON_IsString(name) || !*name->valuestring || strlen(name->valuestring) > 200)) {
        http_reply_error(r, 422, "invalid_field", "name must be a string of 1..200 characters",
                         "name");
        return -1;
    }
    if (desc && (!cJSON_IsString(desc) || strlen(desc->valuestring) > 2000)) {
        http_reply_error(r, 422, "invalid_field",
                         "description must be a string of at most 2000 characters", "description");
        return -1;
    }
    if ((create || crit) && !cJSON_IsObject(crit)) {
        http_reply_error(r, 422, "invalid_field", "criteria must be an object", "criteria");
        return -1;
    }
    if (crit) {
        struct seg_query q;
        int rc = compile_or_reply(r, crit, SEG_CHANNEL_SMS, "criteria", &q);
        seg_query_cleanup(&q);
        if (rc != 0)
            return -1;
    }
    return 0;
}

static void row_created(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    if (!res && strcmp(sqlstate, "23505") == 0) {
        http_reply_error(r, 409, "conflict", "a segment with this name exists", "name");
        return;
    }
    http_reply_pg_row(r, res, errmsg, 201, "segment");
}

static void row_ok(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    if (!res && strcmp(sqlstate, "23505") == 0) {
        http_reply_error(r, 409, "conflict", "a segment with this name exists", "name");
        return;
    }
    http_reply_pg_row(r, res, errmsg, 200, "segment");
}

void segments_create(struct api_req *r)
{
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return;
    if (validate_segment(r, in, true) != 0) {
        cJSON_Delete(in);
        return;
    }
    const cJSON *desc = cJSON_GetObjectItemCaseSensitive(in, "description");
    char *crit = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(in, "criteria"));
    char tenant[24];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    const char *params[] = {tenant, cJSON_GetObjectItemCaseSensitive(in, "name")->valuestring,
                            desc ? desc->valuestring : NULL, crit};
    pgpool_query(r->app->pg, sql_insert, 4, params, row_created, r);
    free(crit);
    cJSON_Delete(in);
}

void segments_list(struct api_req *r)
{
    long limit;
    long long after;
    if (http_page_params_or_reply(r, &limit, &after) != 0)
        return;
    char tenant[24], a[24], l[24];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    snprintf(a, sizeof(a), "%lld", after);
    snprintf(l, sizeof(l), "%ld", limit);
    const char *params[] = {tenant, a, l};
    http_query_page(r, sql_list, 3, params, "segments", limit);
}

void segments_get(struct api_req *r)
{
    char tenant[24], id[24];
    http_id_params(r, tenant, id);
    const char *params[] = {tenant, id};
    pgpool_query(r->app->pg, sql_get, 2, params, row_ok, r);
}

void segments_patch(struct api_req *r)
{
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return;
    if (validate_segment(r, in, false) != 0) {
        cJSON_Delete(in);
        return;
    }
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(in, "name");
    const cJSON *desc = cJSON_GetObjectItemCaseSensitive(in, "description");
    const cJSON *jc = cJSON_GetObjectItemCaseSensitive(in, "criteria");
    char *crit = jc ? cJSON_PrintUnformatted(jc) : NULL;
    char tenant[24], id[24];
    http_id_params(r, tenant, id);
    const char *params[] = {tenant, id, name ? name->valuestring : NULL,
                            desc ? desc->valuestring : NULL, crit};
    pgpool_query(r->app->pg, sql_patch, 5, params, row_ok, r);
    free(crit);
    cJSON_Delete(in);
}

static void delete_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)sqlstate;
    if (!res) {
        http_reply_dependency(r, "postgres", errmsg);
        return;
    }
    if (PQgetvalue(res, 0, 0)[0] == '1') {
        http_reply_no_content(r);
    } else if (PQgetvalue(res, 0, 1)[0] == 't') {
        http_reply_error(r, 409, "conflict", "campaigns refer to this segment", "id");
    } else {
        http_reply_error(r, 404, "not_found", "no such segment", NULL);
    }
}

void segments_delete(struct api_req *r)
{
    char tenant[24], id[24];
    http_id_params(r, tenant, id);
    const char *params[] = {tenant, id};
    pgpool_query(r->app->pg, sql_delete, 2, params, delete_done, r);
}
