/* customers.c - POST /v1/customers and POST /v1/customers/import (NDJSON).
 *
 * Both validate in C (a bad line never reaches PostgreSQL), then upsert by
 * external_id in batches through one statement that takes the rows as a
 * JSON array parameter. Upsert keeps fields the input does not mention. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "phone.h"
#include "xalloc.h"

/* $1 tenant id, $2 JSON array of validated customer objects. Returns one
 * row per input row: id, external_id, inserted. */
static const char sql_upsert[] =
    "WITH r AS ("
    "  SELECT * FROM jsonb_to_recordset($2::jsonb) AS r(external_id text, first_name text,"
    "    last_name text, phone text, email text, timezone text, locale text, tags jsonb,"
    "    attributes jsonb, sms_opt_out boolean, email_opt_out boolean, voice_opt_out boolean,"
    "    last_contact_at timestamptz, last_appointment_at timestamptz)"
    "), upd AS ("
    "  UPDATE customers c SET"
    "    first_name = COALESCE(r.first_name, c.first_name),"
    "    last_name = COALESCE(r.last_name, c.last_name),"
    "    phone = COALESCE(r.phone, c.phone), email = COALESCE(r.email, c.email),"
    "    timezone = COALESCE(r.timezone, c.timezone), locale = COALESCE(r.locale, c.locale),"
    "    tags = CASE WHEN r.tags IS NULL THEN c.tags"
    "           ELSE ARRAY(SELECT jsonb_array_elements_text(r.tags)) END,"
    "    attributes = CASE WHEN r.attributes IS NULL THEN c.attributes"
    "                 ELSE c.attributes || r.attributes END,"
    "    sms_opt_out = COALESCE(r.sms_opt_out, c.sms_opt_out),"
    "    email_opt_out = COALESCE(r.email_opt_out, c.email_opt_out),"
    "    voice_opt_out = COALESCE(r.voice_opt_out, c.voice_opt_out),"
    "    last_contact_at = COALESCE(r.last_contact_at, c.last_contact_at),"
    "    last_appointment_at = COALESCE(r.last_appointment_at, c.last_appointment_at),"
    "    updated_at = now()"
    "  FROM r WHERE c.tenant_id = $1 AND c.external_id = r.external_id"
    "  RETURNING c.id, c.external_id"
    "), ins AS ("
    "  INSERT INTO customers (tenant_id, external_id, first_name, last_name, phone, email,"
    "    timezone, locale, tags, attributes, sms_opt_out, email_opt_out, voice_opt_out,"
    "    last_contact_at, last_appointment_at)"
    "  SELECT $1, r.external_id, r.first_name, r.last_name, r.phone, r.email,"
    "    COALESCE(r.timezone, (SELECT default_timezone FROM tenants WHERE id = $1)), r.locale,"
    "    COALESCE(ARRAY(SELECT jsonb_array_elements_text(r.tags)), '{}'),"
    "    COALESCE(r.attributes, '{}'), COALESCE(r.sms_opt_out, false),"
    "    COALESCE(r.email_opt_out, false), COALESCE(r.voice_opt_out, false),"
    "    r.last_contact_at, r.last_appointment_at"
    "  FROM r WHERE NOT EXISTS (SELECT 1 FROM upd WHERE upd.external_id = r.external_id)"
    "  ON CONFLICT (tenant_id, external_id) DO NOTHING"
    "  RETURNING id, external_id"
    ") "
    "SELECT id, external_id, true FROM ins UNION ALL SELECT id, external_id, false FROM upd";

/* ---------------------------------------------------------------------
 * Validation
 * ------------------------------------------------------------------- */

struct verr {
    char field[64];
    char msg[192];
};

static int fail(struct verr *e, const char *field, const char *msg)
{
    snprintf(e->field, sizeof(e->field), "%s", field);
    snprintf(e->msg, sizeof(e->msg), "%s", msg);
    return -1;
}

static bool valid_email(const char *s)
{
    size_t n = strlen(s);
    if (n < 3 || n > 254)
        return false;
    const char *at = strchr(s, '@');
    if (!at || at == s || strchr(at + 1, '@'))
        return false;
    const char *dot = strchr(at + 1, '.');
    if (!dot || dot == at + 1 || dot[1] == '\0' || s[n - 1] == '.')
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '<' || *p == '>' || *p == ',' || *p == ';' ||
            *p == '"' || *p == '\\')
            return false;
    return true;
}

static bool digits(const char *s, int n)
{
    for (int i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

/* ISO 8601: YYYY-MM-DD, optionally [T ]HH:MM[:SS[.fff]] and Z or +HH[:MM]. */
static bool valid_timestamp(const char *s)
{
    size_t n = strlen(s);
    if (n < 10 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' ||
        !digits(s + 8, 2))
        return false;
    int mon = (s[5] - '0') * 10 + (s[6] - '0'), day = (s[8] - '0') * 10 + (s[9] - '0');
    if (mon < 1 || mon > 12 || day < 1 || day > 31)
        return false;
    const char *p = s + 10;
    if (!*p)
        return true;
    if ((*p != 'T' && *p != ' ') || !digits(p + 1, 2) || p[3] != ':' || !digits(p + 4, 2))
        return false;
    int hh = (p[1] - '0') * 10 + (p[2] - '0'), mm = (p[4] - '0') * 10 + (p[5] - '0');
    if (hh > 23 || mm > 59)
        return false;
    p += 6;
    if (*p == ':') {
        if (!digits(p + 1, 2) || (p[1] - '0') * 10 + (p[2] - '0') > 60)
            return false;
        p += 3;
        if (*p == '.') {
            p++;
            if (!isdigit((unsigned char)*p))
                return false;
            while (isdigit((unsigned char)*p))
                p++;
        }
    }
    if (*p == 'Z')
        return p[1] == '\0';
    if (*p == '+' || *p == '-') {
        if (!digits(p + 1, 2))
            return false;
        p += 3;
        if (*p == ':')
            p++;
        if (*p && (!digits(p, 2) || p[2]))
            return false;
        return true;
    }
    return *p == '\0';
}

static bool valid_timezone_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("/_+-", *p))
            return false;
    return true;
}

static int take_string(const cJSON *item, const char *name, size_t maxlen, struct verr *e,
                       const char **out)
{
    *out = NULL;
    if (!item || cJSON_IsNull(item))
        return 0;
    if (!cJSON_IsString(item)) {
        char msg[96];
        snprintf(msg, sizeof(msg), "%s must be a string", name);
        return fail(e, name, msg);
    }
    if (strlen(item->valuestring) > maxlen) {
        char msg[96];
        snprintf(msg, sizeof(msg), "%s must be at most %zu characters", name, maxlen);
        return fail(e, name, msg);
    }
    *out = item->valuestring;
    return 0;
}

static const char *const customer_keys[] = {"external_id",
                                            "first_name",
                                            "last_name",
                                            "phone",
                                            "email",
                                            "timezone",
                                            "locale",
                                            "tags",
                                            "attributes",
                                            "sms_opt_out",
                                            "email_opt_out",
                                            "voice_opt_out",
                                            "last_contact_at",
                                            "last_appointment_at",
                                            NULL};

/* Validates one customer object and returns a normalised copy (caller
 * deletes), or NULL with e filled. */
static cJSON *customer_normalize(const cJSON *in, struct verr *e)
{
    if (!cJSON_IsObject(in)) {
        fail(e, "", "each customer must be a JSON object");
        return NULL;
    }
    for (const cJSON *it = in->child; it; it = it->next) {
        bool known = false;
        for (int i = 0; customer_keys[i]; i++)
            if (it->string && strcmp(it->string, customer_keys[i]) == 0)
                known = true;
        if (!known) {
            char msg[160];
            snprintf(msg, sizeof(msg), "unknown field %.100s", it->string ? it->string : "");
            fail(e, it->string ? it->string : "", msg);
            return NULL;
        }
    }
    cJSON *out = cJSON_CreateObject();
    const char *s;
    if (take_string(cJSON_GetObjectItemCaseSensitive(in, "external_id"), "external_id", 200, e,
                    &s) != 0)
        goto bad;
    if (!s || !*s) {
        fail(e, "external_id", "external_id is required");
        goto bad;
    }
    cJSON_AddStringToObject(out, "external_id", s);

    static const char *const plain[] = {"first_name", "last_name", "locale"};
    for (size_t i = 0; i < 3; i++) {
        if (take_string(cJSON_GetObjectItemCaseSensitive(in, plain[i]), plain[i], 100, e, &s) != 0)
            goto bad;
        if (s)
            cJSON_AddStringToObject(out, plain[i], s);
    }
    if (take_string(cJSON_GetObjectItemCaseSensitive(in, "phone"), "phone", 40, e, &s) != 0)
        goto bad;
    if (s) {
        char e164[20];
        if (phone_normalize(s, NULL, e164, sizeof(e164)) != CR_OK) {
            fail(e, "phone", "phone must be an international number, e.g. +14155550100");
            goto bad;
        }
        cJSON_AddStringToObject(out, "phone", e164);
    }
    if (take_string(cJSON_GetObjectItemCaseSensitive(in, "email"), "email", 254, e, &s) != 0)
        goto bad;
    if (s) {
        if (!valid_email(s)) {
            fail(e, "email", "email is not a valid address");
            goto bad;
        }
        char *lower = xstrdup(s);
        for (char *p = strchr(lower, '@'); p && *p; p++)
            *p = (char)tolower((unsigned char)*p);
        cJSON_AddStringToObject(out, "email", lower);
        free(lower);
    }
    if (take_string(cJSON_GetObjectItemCaseSensitive(in, "timezone"), "timezone", 64, e, &s) != 0)
        goto bad;
    if (s) {
        if (!valid_timezone_name(s)) {
            fail(e, "timezone", "timezone must be an IANA zone name, e.g. America/New_York");
            goto bad;
        }
        cJSON_AddStringToObject(out, "timezone", s);
    }
    const cJSON *tags = cJSON_GetObjectItemCaseSensitive(in, "tags");
    if (tags && !cJSON_IsNull(tags)) {
        if (!cJSON_IsArray(tags) || cJSON_GetArraySize(tags) > 100) {
            fail(e, "tags", "tags must be an array of at most 100 strings");
            goto bad;
        }
        for (const cJSON *t = tags->child; t; t = t->next)
            if (!cJSON_IsString(t) || !*t->valuestring || strlen(t->valuestring) > 64) {
                fail(e, "tags", "each tag must be a string of 1..64 characters");
                goto bad;
            }
        cJSON_AddItemToObject(out, "tags", cJSON_Duplicate(tags, 1));
    }
    const cJSON *attrs = cJSON_GetObjectItemCaseSensitive(in, "attributes");
    if (attrs && !cJSON_IsNull(attrs)) {
        if (!cJSON_IsObject(attrs)) {
            fail(e, "attributes", "attributes must be an object");
            goto bad;
        }
        cJSON_AddItemToObject(out, "attributes", cJSON_Duplicate(attrs, 1));
    }
    static const char *const flags[] = {"sms_opt_out", "email_opt_out", "voice_opt_out"};
    for (size_t i = 0; i < 3; i++) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(in, flags[i]);
        if (!f || cJSON_IsNull(f))
            continue;
        if (!cJSON_IsBool(f)) {
            char msg[64];
            snprintf(msg, sizeof(msg), "%s must be true or false", flags[i]);
            fail(e, flags[i], msg);
            goto bad;
        }
        cJSON_AddBoolToObject(out, flags[i], cJSON_IsTrue(f));
    }
    static const char *const times[] = {"last_contact_at", "last_appointment_at"};
    for (size_t i = 0; i < 2; i++) {
        if (take_string(cJSON_GetObjectItemCaseSensitive(in, times[i]), times[i], 40, e, &s) != 0)
            goto bad;
        if (s) {
            if (!valid_timestamp(s)) {
                char msg[96];
                snprintf(msg, sizeof(msg), "%s must be an ISO 8601 timestamp", times[i]);
                fail(e, times[i], msg);
                goto bad;
            }
            cJSON_AddStringToObject(out, times[i], s);
        }
    }
    return out;
bad:
    cJSON_Delete(out);
    return NULL;
}

/* ---------------------------------------------------------------------
 * POST /v1/customers
 * ------------------------------------------------------------------- */

static void create_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)sqlstate;
    if (!res) {
        http_reply_dependency(r, "postgres", errmsg);
        return;
    }
    if (PQntuples(res) != 1) {
        http_reply_error(r, 409, "conflict", "customer was created concurrently; retry",
                         "external_id");
        return;
    }
    bool inserted = PQgetvalue(res, 0, 2)[0] == 't';
    cJSON *body = cJSON_CreateObject();
    cJSON_AddNumberToObject(body, "id", (double)strtoll(PQgetvalue(res, 0, 0), NULL, 10));
    cJSON_AddStringToObject(body, "external_id", PQgetvalue(res, 0, 1));
    cJSON_AddBoolToObject(body, "created", inserted);
    http_reply_json(r, inserted ? 201 : 200, body);
}

void customers_create(struct api_req *r)
{
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return;
    struct verr e;
    cJSON *norm = customer_normalize(in, &e);
    cJSON_Delete(in);
    if (!norm) {
        http_reply_error(r, 422, "invalid_field", e.msg, e.field);
        return;
    }
    cJSON *arr = cJSON_CreateArray();
    cJSON_AddItemToArray(arr, norm);
    char *json = cJSON_PrintUnformatted(arr);
    cJSON_Delete(arr);
    char tenant[24];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    const char *params[] = {tenant, json};
    pgpool_query(r->app->pg, sql_upsert, 2, params, create_done, r);
    free(json);
}

/* ---------------------------------------------------------------------
 * POST /v1/customers/import (NDJSON)
 * ------------------------------------------------------------------- */

struct import_state {
    const char *p, *end;
    long line;
    cJSON *batch;
    int batch_n;
    long batch_first_line;
    char **ids; /* external ids in the current batch (to split duplicates) */
    long inserted, updated, rejected;
    cJSON *errors;
    int nerrors;
};

static void import_state_free(void *arg)
{
    struct import_state *st = arg;
    cJSON_Delete(st->batch);
    cJSON_Delete(st->errors);
    free(st->ids);
    free(st);
}

static void import_error(struct import_state *st, long line, const char *field, const char *msg)
{
    st->rejected++;
    if (st->nerrors >= API_IMPORT_MAX_ERRORS)
        return;
    st->nerrors++;
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "line", (double)line);
    if (field && *field)
        cJSON_AddStringToObject(e, "field", field);
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddItemToArray(st->errors, e);
}

static void import_continue(struct api_req *r);

static void import_reply(struct api_req *r)
{
    struct import_state *st = r->state;
    cJSON *body = cJSON_CreateObject();
    cJSON_AddNumberToObject(body, "lines", (double)st->line);
    cJSON_AddNumberToObject(body, "inserted", (double)st->inserted);
    cJSON_AddNumberToObject(body, "updated", (double)st->updated);
    cJSON_AddNumberToObject(body, "rejected", (double)st->rejected);
    cJSON_AddItemToObject(body, "errors", st->errors);
    st->errors = NULL;
    if (st->nerrors < st->rejected)
        cJSON_AddBoolToObject(body, "errors_truncated", true);
    http_reply_json(r, 200, body);
}

static void batch_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    struct import_state *st = r->state;
    if (!res) {
        if (sqlstate[0] == '2' && (sqlstate[1] == '2' || sqlstate[1] == '3')) {
            /* Data the validator let through but PostgreSQL refused: reject
             * the batch's lines, keep going. */
            char msg[192];
            snprintf(msg, sizeof(msg), "rejected by the database: %.150s", errmsg);
            for (int i = 0; i < st->batch_n; i++)
                import_error(st, st->batch_first_line, "", msg);
        } else {
            char detail[256];
            snprintf(detail, sizeof(detail), "%s (import stopped after line %ld)", errmsg,
                     st->line);
            http_reply_dependency(r, "postgres", detail);
            return;
        }
    } else {
        for (int i = 0; i < PQntuples(res); i++) {
            if (PQgetvalue(res, i, 2)[0] == 't')
                st->inserted++;
            else
                st->updated++;
        }
    }
    cJSON_Delete(st->batch);
    st->batch = cJSON_CreateArray();
    st->batch_n = 0;
    import_continue(r);
}

static void import_flush(struct api_req *r)
{
    struct import_state *st = r->state;
    char *json = cJSON_PrintUnformatted(st->batch);
    char tenant[24];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    const char *params[] = {tenant, json};
    pgpool_query(r->app->pg, sql_upsert, 2, params, batch_done, r);
    free(json);
}

static bool batch_has(struct import_state *st, const char *id)
{
    for (int i = 0; i < st->batch_n; i++)
        if (strcmp(st->ids[i], id) == 0)
            return true;
    return false;
}

static void import_continue(struct api_req *r)
{
    struct import_state *st = r->state;
    while (st->p < st->end) {
        const char *nl = memchr(st->p, '\n', (size_t)(st->end - st->p));
        const char *lend = nl ? nl : st->end;
        const char *line = st->p;
        size_t len = (size_t)(lend - line);
        st->p = nl ? nl + 1 : st->end;
        st->line++;
        while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
            len--;
        while (len && (*line == ' ' || *line == '\t')) {
            line++;
            len--;
        }
        if (len == 0)
            continue;
        cJSON *obj = cJSON_ParseWithLength(line, len);
        if (!obj) {
            import_error(st, st->line, "", "malformed JSON");
            continue;
        }
        struct verr e;
        cJSON *norm = customer_normalize(obj, &e);
        cJSON_Delete(obj);
        if (!norm) {
            import_error(st, st->line, e.field, e.msg);
            continue;
        }
        const char *ext = cJSON_GetObjectItemCaseSensitive(norm, "external_id")->valuestring;
        if (st->batch_n > 0 && batch_has(st, ext)) {
            /* The same external_id twice in one statement is not allowed:
             * flush first, so the later line wins. */
            st->p = line;
            st->line--;
            cJSON_Delete(norm);
            import_flush(r);
            return;
        }
        if (st->batch_n == 0)
            st->batch_first_line = st->line;
        cJSON_AddItemToArray(st->batch, norm);
        st->ids[st->batch_n++] = cJSON_GetObjectItemCaseSensitive(norm, "external_id")->valuestring;
        if (st->batch_n == API_IMPORT_BATCH) {
            import_flush(r);
            return;
        }
    }
    if (st->batch_n > 0) {
        import_flush(r);
        return;
    }
    import_reply(r);
}

void customers_import(struct api_req *r)
{
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(r->req), "Content-Type");
    if (ct && strncmp(ct, "application/x-ndjson", 20) != 0 &&
        strncmp(ct, "application/json", 16) != 0 && strncmp(ct, "text/plain", 10) != 0) {
        http_reply_error(r, 415, "unsupported_media_type",
                         "send NDJSON (Content-Type: application/x-ndjson), one customer per line",
                         "Content-Type");
        return;
    }
    struct import_state *st = xcalloc(1, sizeof(*st));
    st->p = r->body ? r->body : "";
    st->end = st->p + r->body_len;
    st->batch = cJSON_CreateArray();
    st->errors = cJSON_CreateArray();
    st->ids = xcalloc(API_IMPORT_BATCH, sizeof(char *));
    r->state = st;
    r->state_free = import_state_free;
    import_continue(r);
}
