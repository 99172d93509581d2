/* customers.c - the customers resource: validation, POST /v1/customers,
 * POST /v1/customers/import (through the import engine, import.h),
 * GET/PATCH/DELETE /v1/customers/{id} and the list with keyset pagination.
 *
 * Every value is validated in C, so a bad field is a 422 naming it and
 * never a database error. Create and import upsert by external_id with one
 * INSERT ... ON CONFLICT statement that takes the rows as array
 * parameters; an upsert keeps the fields the input does not give, and a
 * row the input would not change is not rewritten. PATCH is a partial
 * update where null clears a nullable field. */
#include <ctype.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "buf.h"
#include "import.h"
#include "pgarr.h"
#include "phone.h"
#include "xalloc.h"

/* ---------------------------------------------------------------------
 * Columns and SQL
 * ------------------------------------------------------------------- */

/* Input columns, in the order of the upsert's arrays ($3..$16). */
enum cust_col {
    CC_EXTERNAL_ID,
    CC_FIRST_NAME,
    CC_LAST_NAME,
    CC_PHONE,
    CC_EMAIL,
    CC_TIMEZONE,
    CC_LOCALE,
    CC_TAGS,
    CC_ATTRIBUTES,
    CC_SMS_OPT_OUT,
    CC_EMAIL_OPT_OUT,
    CC_VOICE_OPT_OUT,
    CC_LAST_CONTACT_AT,
    CC_LAST_APPOINTMENT_AT,
    CC_N
};

static const struct import_field cust_fields[] = {
    {"external_id", IMPORT_T_TEXT},
    {"first_name", IMPORT_T_TEXT},
    {"last_name", IMPORT_T_TEXT},
    {"phone", IMPORT_T_TEXT},
    {"email", IMPORT_T_TEXT},
    {"timezone", IMPORT_T_TEXT},
    {"locale", IMPORT_T_TEXT},
    {"tags", IMPORT_T_LIST},
    {"attributes", IMPORT_T_OBJECT},
    {"sms_opt_out", IMPORT_T_BOOL},
    {"email_opt_out", IMPORT_T_BOOL},
    {"voice_opt_out", IMPORT_T_BOOL},
    {"last_contact_at", IMPORT_T_TEXT},
    {"last_appointment_at", IMPORT_T_TEXT},
    {NULL, IMPORT_T_TEXT},
};

/* Upsert shape ($2): which NOT NULL columns the rows give (a column the
 * input does not give keeps its value on update and takes its default on
 * insert), and FORCE to return the row even when nothing changed. */
#define CUST_SHAPE_TIMEZONE 1u
#define CUST_SHAPE_TAGS 2u
#define CUST_SHAPE_ATTRIBUTES 4u
#define CUST_SHAPE_SMS 8u
#define CUST_SHAPE_EMAIL 16u
#define CUST_SHAPE_VOICE 32u
#define CUST_SHAPE_FORCE 64u

/* The values an upsert writes: a nullable column keeps its value when the
 * input gives none (NULL); a NOT NULL one when the shape says so. */
#define CUST_NEW_VALUES                                                                            \
    "COALESCE(EXCLUDED.first_name, c.first_name),"                                                 \
    " COALESCE(EXCLUDED.last_name, c.last_name),"                                                  \
    " COALESCE(EXCLUDED.phone, c.phone),"                                                          \
    " COALESCE(EXCLUDED.email, c.email),"                                                          \
    " CASE WHEN ($2::int & 1) <> 0 THEN EXCLUDED.timezone ELSE c.timezone END,"                    \
    " COALESCE(EXCLUDED.locale, c.locale),"                                                        \
    " CASE WHEN ($2::int & 2) <> 0 THEN EXCLUDED.tags ELSE c.tags END,"                            \
    " CASE WHEN ($2::int & 4) <> 0 THEN c.attributes || EXCLUDED.attributes"                       \
    "  ELSE c.attributes END,"                                                                     \
    " CASE WHEN ($2::int & 8) <> 0 THEN EXCLUDED.sms_opt_out ELSE c.sms_opt_out END,"              \
    " CASE WHEN ($2::int & 16) <> 0 THEN EXCLUDED.email_opt_out ELSE c.email_opt_out END,"         \
    " CASE WHEN ($2::int & 32) <> 0 THEN EXCLUDED.voice_opt_out ELSE c.voice_opt_out END,"         \
    " COALESCE(EXCLUDED.last_contact_at, c.last_contact_at),"                                      \
    " COALESCE(EXCLUDED.last_appointment_at, c.last_appointment_at)"
#define CUST_UPDATED_COLUMNS                                                                       \
    "first_name, last_name, phone, email, timezone, locale, tags, attributes, sms_opt_out,"        \
    " email_opt_out, voice_opt_out, last_contact_at, last_appointment_at"

/* Inserts the rows of the arrays $3..$16 (a missing time zone is the
 * tenant's default). */
#define CUST_INSERT_ROWS                                                                           \
    "INSERT INTO customers AS c (tenant_id, external_id, " CUST_UPDATED_COLUMNS ")"                \
    " SELECT $1, r.external_id, r.first_name, r.last_name, r.phone, r.email,"                      \
    "  COALESCE(r.timezone, (SELECT t.default_timezone FROM tenants t WHERE t.id = $1)),"          \
    "  r.locale, COALESCE(r.tags::text[], '{}'), COALESCE(r.attributes::jsonb, '{}'),"             \
    "  COALESCE(r.sms_opt_out, false), COALESCE(r.email_opt_out, false),"                          \
    "  COALESCE(r.voice_opt_out, false), r.last_contact_at, r.last_appointment_at"                 \
    " FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],"         \
    "  $9::text[], $10::text[], $11::text[], $12::boolean[], $13::boolean[], $14::boolean[],"      \
    "  $15::timestamptz[], $16::timestamptz[])"                                                    \
    "  AS r(external_id, " CUST_UPDATED_COLUMNS ")"

/* $1 tenant, $2 shape, $3..$16 one array per column. Returns (external_id,
 * 'i'|'u', id) per row inserted or changed (the import contract). */
static const char sql_upsert[] = CUST_INSERT_ROWS
    " ON CONFLICT (tenant_id, external_id) DO UPDATE"
    " SET (" CUST_UPDATED_COLUMNS ", updated_at) = (" CUST_NEW_VALUES ", now())"
    " WHERE ($2::int & 64) <> 0"
    "  OR (c.first_name, c.last_name, c.phone, c.email, c.timezone, c.locale, c.tags,"
    "   c.attributes, c.sms_opt_out, c.email_opt_out, c.voice_opt_out, c.last_contact_at,"
    "   c.last_appointment_at) IS DISTINCT FROM (" CUST_NEW_VALUES ")"
    " RETURNING c.external_id, CASE WHEN c.xmax = 0 THEN 'i' ELSE 'u' END, c.id";

/* The same for rows believed new: a plain INSERT (no speculative
 * insertion), failing with a unique violation when one exists after all. */
static const char sql_insert[] = CUST_INSERT_ROWS " WHERE $2::int IS NOT NULL"
                                                  " RETURNING c.external_id, 'i', c.id";

#define CUSTOMER_JSON_COLUMNS                                                                      \
    "c.id, c.external_id, c.first_name, c.last_name, c.phone, c.email, c.timezone, c.locale,"      \
    " c.tags, c.attributes, c.sms_opt_out, c.email_opt_out, c.voice_opt_out, c.last_contact_at,"   \
    " c.last_appointment_at, c.created_at, c.updated_at"

static const char sql_get[] = "SELECT row_to_json(x) FROM (SELECT " CUSTOMER_JSON_COLUMNS
                              " FROM customers c WHERE c.tenant_id = $1 AND c.id = $2) x";

static const char sql_delete[] =
    "DELETE FROM customers WHERE tenant_id = $1 AND id = $2 RETURNING id";

/* $3 mask of the columns given (1 << enum cust_col), $4..$17 their values
 * in column order; attributes ($12) is a JSON merge patch at the top
 * level: $18 clears first, $19 lists the keys to remove. */
static const char sql_patch[] =
    "UPDATE customers c SET"
    " external_id = CASE WHEN ($3::int & 1) <> 0 THEN $4 ELSE c.external_id END,"
    " first_name = CASE WHEN ($3::int & 2) <> 0 THEN $5 ELSE c.first_name END,"
    " last_name = CASE WHEN ($3::int & 4) <> 0 THEN $6 ELSE c.last_name END,"
    " phone = CASE WHEN ($3::int & 8) <> 0 THEN $7 ELSE c.phone END,"
    " email = CASE WHEN ($3::int & 16) <> 0 THEN $8 ELSE c.email END,"
    " timezone = CASE WHEN ($3::int & 32) <> 0 THEN $9 ELSE c.timezone END,"
    " locale = CASE WHEN ($3::int & 64) <> 0 THEN $10 ELSE c.locale END,"
    " tags = CASE WHEN ($3::int & 128) <> 0 THEN $11::text[] ELSE c.tags END,"
    " attributes = CASE WHEN ($3::int & 256) <> 0"
    "  THEN (CASE WHEN $18::boolean THEN '{}'::jsonb ELSE c.attributes END || $12::jsonb)"
    "   - $19::text[]"
    "  ELSE c.attributes END,"
    " sms_opt_out = CASE WHEN ($3::int & 512) <> 0 THEN $13::boolean ELSE c.sms_opt_out END,"
    " email_opt_out = CASE WHEN ($3::int & 1024) <> 0 THEN $14::boolean"
    "  ELSE c.email_opt_out END,"
    " voice_opt_out = CASE WHEN ($3::int & 2048) <> 0 THEN $15::boolean"
    "  ELSE c.voice_opt_out END,"
    " last_contact_at = CASE WHEN ($3::int & 4096) <> 0 THEN $16::timestamptz"
    "  ELSE c.last_contact_at END,"
    " last_appointment_at = CASE WHEN ($3::int & 8192) <> 0 THEN $17::timestamptz"
    "  ELSE c.last_appointment_at END,"
    " updated_at = now()"
    " WHERE c.tenant_id = $1 AND c.id = $2"
    " RETURNING row_to_json((SELECT x FROM (SELECT " CUSTOMER_JSON_COLUMNS ") x))";

/* ---------------------------------------------------------------------
 * Validation
 * ------------------------------------------------------------------- */

/* A validated customer: the values to write, as text for PostgreSQL. */
struct cust_in {
    bool given[CC_N];      /* in the input (PATCH: even as null) */
    const char *val[CC_N]; /* NULL: SQL NULL (null, or not given) */
    char phone[PHONE_E164_SIZE];
    char email[256];
    char ts[2][48];
    char *tags;       /* array literal (heap) */
    char *attrs;      /* JSON object (heap) */
    char *attrs_del;  /* PATCH: array literal of keys to remove (heap) */
    bool attrs_clear; /* PATCH: "attributes": null */
};

static void cust_in_cleanup(struct cust_in *c)
{
    free(c->tags);
    free(c->attrs);
    free(c->attrs_del);
}

/* Unicode white space PostgreSQL's [[:space:]] matches (the email CHECK). */
static bool has_unicode_space(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (p[0] == 0xC2 && (p[1] == 0x85 || p[1] == 0xA0))
            return true;
        if (p[0] == 0xE1 && p[1] == 0x9A && p[2] == 0x80)
            return true;
        if (p[0] == 0xE2 && p[1] == 0x80 &&
            ((p[2] >= 0x80 && p[2] <= 0x8A) || p[2] == 0xA8 || p[2] == 0xA9 || p[2] == 0xAF))
            return true;
        if (p[0] == 0xE2 && p[1] == 0x81 && p[2] == 0x9F)
            return true;
        if (p[0] == 0xE3 && p[1] == 0x80 && p[2] == 0x80)
            return true;
    }
    return false;
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
    if (!dot || dot == at + 1 || s[n - 1] == '.')
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p == 0x7F || strchr("<>,;\"\\()[]", *p))
            return false;
    return !has_unicode_space(s);
}

/* BCP 47-like: a letter, then letters, digits, '-' or '_'; 2..35 bytes. */
static bool valid_locale(const char *s)
{
    size_t n = strlen(s);
    if (n < 2 || n > 35 || !isalpha((unsigned char)s[0]))
        return false;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
            return false;
    return true;
}

/* Control characters other than tab have no place in names and tags. */
static bool has_control(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7F)
            return true;
    return false;
}

/* Field names in enum cust_col order, with their lengths. */
#define CUST_NAMES                                                                                 \
    X("external_id")                                                                               \
    X("first_name")                                                                                \
    X("last_name")                                                                                 \
    X("phone")                                                                                     \
    X("email")                                                                                     \
    X("timezone")                                                                                  \
    X("locale")                                                                                    \
    X("tags")                                                                                      \
    X("attributes")                                                                                \
    X("sms_opt_out")                                                                               \
    X("email_opt_out")                                                                             \
    X("voice_opt_out")                                                                             \
    X("last_contact_at")                                                                           \
    X("last_appointment_at")
#define X(name) name,
static const char *const cust_names[CC_N] = {CUST_NAMES};
#undef X
#define X(name) sizeof(name) - 1,
static const size_t cust_name_len[CC_N] = {CUST_NAMES};
#undef X

static int cust_string(const cJSON *it, enum cust_col col, size_t maxlen, struct import_err *e)
{
    const char *name = cust_names[col];
    if (!cJSON_IsString(it))
        return import_fail(e, name, "%s must be a string", name);
    if (strlen(it->valuestring) > maxlen)
        return import_fail(e, name, "%s must be at most %zu bytes", name, maxlen);
    return 0;
}

static int cust_tags(const cJSON *it, struct cust_in *c, struct import_err *e)
{
    if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) > 100)
        return import_fail(e, "tags", "tags must be an array of at most 100 strings");
    struct pgarr a;
    pgarr_init(&a, 1 << 16);
    int rc = 0;
    for (const cJSON *t = it->child; t && rc == 0; t = t->next) {
        if (!cJSON_IsString(t) || !*t->valuestring || strlen(t->valuestring) > 64 ||
            has_control(t->valuestring)) {
            rc = import_fail(e, "tags", "each tag must be a string of 1..64 bytes");
            break;
        }
        bool dup = false;
        for (const cJSON *u = it->child; u != t; u = u->next)
            dup = dup || strcmp(u->valuestring, t->valuestring) == 0;
        if (!dup && pgarr_add_text(&a, t->valuestring) != CR_OK)
            rc = import_fail(e, "tags", "tags are too long");
    }
    if (rc == 0)
        c->tags = xstrdup(pgarr_str(&a));
    pgarr_cleanup(&a);
    return rc;
}

/* attributes: an object. For PATCH, members whose value is null are keys
 * to remove. */
static int cust_attributes(const cJSON *it, bool patch, struct cust_in *c, struct import_err *e)
{
    if (!cJSON_IsObject(it))
        return import_fail(e, "attributes", "attributes must be an object");
    bool has_null = false;
    for (const cJSON *m = it->child; m; m = m->next) {
        if (strlen(m->string) > 200)
            return import_fail(e, "attributes", "attribute names must be at most 200 bytes");
        has_null = has_null || cJSON_IsNull(m);
    }
    if (!patch || !has_null) {
        c->attrs = cJSON_PrintUnformatted(it);
    } else {
        /* merge patch: members set to null are keys to remove */
        cJSON *set = cJSON_CreateObject();
        struct pgarr del;
        pgarr_init(&del, 1 << 20);
        for (const cJSON *m = it->child; m; m = m->next) {
            if (!cJSON_IsNull(m))
                cJSON_AddItemToObject(set, m->string, cJSON_Duplicate(m, 1));
            else if (pgarr_add_text(&del, m->string) != CR_OK)
                break;
        }
        c->attrs = cJSON_PrintUnformatted(set);
        c->attrs_del = xstrdup(pgarr_str(&del));
        cJSON_Delete(set);
        pgarr_cleanup(&del);
    }
    if (strlen(c->attrs) > 65536)
        return import_fail(e, "attributes", "attributes must be at most 64 KiB of JSON");
    return 0;
}

static int cust_bool(const cJSON *it, enum cust_col col, struct cust_in *c, struct import_err *e)
{
    if (!cJSON_IsBool(it))
        return import_fail(e, cust_names[col], "%s must be true or false", cust_names[col]);
    c->val[col] = cJSON_IsTrue(it) ? "t" : "f";
    return 0;
}

/* One field of the input. null was handled by the caller. */
static int cust_field(const struct app *app, enum cust_col col, const cJSON *it, bool patch,
                      struct cust_in *c, struct import_err *e)
{
    const char *name = cust_names[col];
    switch (col) {
    case CC_EXTERNAL_ID:
        if (cust_string(it, col, 200, e) != 0)
            return -1;
        if (!*it->valuestring || has_control(it->valuestring))
            return import_fail(e, name,
                               "external_id must be 1..200 bytes without control "
                               "characters");
        c->val[col] = it->valuestring;
        return 0;
    case CC_FIRST_NAME:
    case CC_LAST_NAME:
        if (cust_string(it, col, 100, e) != 0)
            return -1;
        if (has_control(it->valuestring))
            return import_fail(e, name, "%s must not contain control characters", name);
        c->val[col] = it->valuestring;
        return 0;
    case CC_PHONE:
        if (cust_string(it, col, 40, e) != 0)
            return -1;
        if (phone_normalize(it->valuestring, NULL, c->phone, sizeof(c->phone)) != CR_OK)
            return import_fail(e, name, "phone must be an international number, e.g. +14155550100");
        c->val[col] = c->phone;
        return 0;
    case CC_EMAIL: {
        if (cust_string(it, col, 254, e) != 0)
            return -1;
        if (!valid_email(it->valuestring))
            return import_fail(e, name, "email is not a valid address");
        snprintf(c->email, sizeof(c->email), "%s", it->valuestring);
        for (char *p = strchr(c->email, '@'); *p; p++)
            *p = (char)tolower((unsigned char)*p);
        c->val[col] = c->email;
        return 0;
    }
    case CC_TIMEZONE:
        if (cust_string(it, col, 64, e) != 0)
            return -1;
        if (!tzdb_valid(app, it->valuestring))
            return import_fail(e, name,
                               "timezone must be a time zone name PostgreSQL knows, e.g. "
                               "America/New_York");
        c->val[col] = it->valuestring;
        return 0;
    case CC_LOCALE:
        if (cust_string(it, col, 35, e) != 0)
            return -1;
        if (!valid_locale(it->valuestring))
            return import_fail(e, name, "locale must be a language tag, e.g. en-US");
        c->val[col] = it->valuestring;
        return 0;
    case CC_TAGS:
        if (cust_tags(it, c, e) != 0)
            return -1;
        c->val[col] = c->tags;
        return 0;
    case CC_ATTRIBUTES:
        if (cust_attributes(it, patch, c, e) != 0)
            return -1;
        c->val[col] = c->attrs;
        return 0;
    case CC_SMS_OPT_OUT:
    case CC_EMAIL_OPT_OUT:
    case CC_VOICE_OPT_OUT:
        return cust_bool(it, col, c, e);
    case CC_LAST_CONTACT_AT:
    case CC_LAST_APPOINTMENT_AT: {
        char *ts = c->ts[col - CC_LAST_CONTACT_AT];
        if (cust_string(it, col, 40, e) != 0)
            return -1;
        if (!import_timestamp_normalize(it->valuestring, ts, sizeof(c->ts[0])))
            return import_fail(e, name,
                               "%s must be an ISO 8601 timestamp, e.g. 2024-05-01T14:30:00Z", name);
        c->val[col] = ts;
        return 0;
    }
    case CC_N:
        break;
    }
    return import_fail(e, name, "unknown field %s", name);
}

/* Validates one customer object into c (cleaned up by the caller in any
 * case). Upsert (patch false): external_id is required and null means
 * "not given". PATCH: every field is optional and null clears it where
 * the column allows. Returns 0, or -1 with e naming the field. */
static int cust_parse(const struct app *app, const cJSON *in, bool patch, struct cust_in *c,
                      struct import_err *e)
{
    memset(c, 0, sizeof(*c));
    if (!cJSON_IsObject(in))
        return import_fail(e, "", "a customer must be a JSON object");
    for (const cJSON *it = in->child; it; it = it->next) {
        int col = -1;
        size_t n = strlen(it->string);
        for (int i = 0; i < CC_N && col < 0; i++)
            if (cust_name_len[i] == n && memcmp(it->string, cust_names[i], n) == 0)
                col = i;
        if (col < 0) {
            char field[IMPORT_FIELD_MAX];
            import_clip(field, sizeof(field), it->string, strlen(it->string));
            return import_fail(e, field, "unknown field %s", field);
        }
        if (c->given[col])
            return import_fail(e, cust_names[col], "%s appears twice", cust_names[col]);
        if (cJSON_IsNull(it)) {
            if (!patch)
                continue; /* an upsert keeps what it is not given */
            switch (col) {
            case CC_EXTERNAL_ID:
            case CC_TIMEZONE:
            case CC_SMS_OPT_OUT:
            case CC_EMAIL_OPT_OUT:
            case CC_VOICE_OPT_OUT:
                return import_fail(e, cust_names[col], "%s cannot be null", cust_names[col]);
            case CC_TAGS:
                c->val[col] = "{}";
                break;
            case CC_ATTRIBUTES:
                c->val[col] = "{}";
                c->attrs_clear = true;
                break;
            default:
                break; /* SQL NULL */
            }
            c->given[col] = true;
            continue;
        }
        if (cust_field(app, (enum cust_col)col, it, patch, c, e) != 0)
            return -1;
        c->given[col] = true;
    }
    if (!patch && !c->given[CC_EXTERNAL_ID])
        return import_fail(e, "external_id", "external_id is required");
    return 0;
}

static unsigned cust_shape(const struct cust_in *c)
{
    return (c->given[CC_TIMEZONE] ? CUST_SHAPE_TIMEZONE : 0) |
           (c->given[CC_TAGS] ? CUST_SHAPE_TAGS : 0) |
           (c->given[CC_ATTRIBUTES] ? CUST_SHAPE_ATTRIBUTES : 0) |
           (c->given[CC_SMS_OPT_OUT] ? CUST_SHAPE_SMS : 0) |
           (c->given[CC_EMAIL_OPT_OUT] ? CUST_SHAPE_EMAIL : 0) |
           (c->given[CC_VOICE_OPT_OUT] ? CUST_SHAPE_VOICE : 0);
}

/* Errors PostgreSQL raises for data (classes 22 and 23): the client's. */
static bool is_data_error(const char *sqlstate)
{
    return sqlstate[0] == '2' && (sqlstate[1] == '2' || sqlstate[1] == '3');
}

static void reply_db_rejected(struct api_req *r, const char *errmsg)
{
    char msg[240], first[200];
    const char *m = strncmp(errmsg, "ERROR:  ", 8) == 0 ? errmsg + 8 : errmsg;
    import_clip(first, sizeof(first), m, strcspn(m, "\n"));
    snprintf(msg, sizeof(msg), "rejected by the database: %s", first);
    http_reply_error(r, 422, "invalid_field", msg, NULL);
}

/* ---------------------------------------------------------------------
 * POST /v1/customers
 * ------------------------------------------------------------------- */

static void create_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    if (!res) {
        if (is_data_error(sqlstate))
            reply_db_rejected(r, errmsg);
        else
            http_reply_dependency(r, "postgres", errmsg);
        return;
    }
    if (PQntuples(res) != 1) {
        http_reply_error(r, 409, "conflict", "customer was changed concurrently; retry",
                         "external_id");
        return;
    }
    bool inserted = PQgetvalue(res, 0, 1)[0] == 'i';
    cJSON *body = cJSON_CreateObject();
    cJSON_AddNumberToObject(body, "id", (double)strtoll(PQgetvalue(res, 0, 2), NULL, 10));
    cJSON_AddStringToObject(body, "external_id", PQgetvalue(res, 0, 0));
    cJSON_AddBoolToObject(body, "created", inserted);
    http_reply_json(r, inserted ? 201 : 200, body);
}

void customers_create(struct api_req *r)
{
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return;
    struct cust_in c;
    struct import_err e;
    if (cust_parse(r->app, in, false, &c, &e) != 0) {
        cust_in_cleanup(&c);
        cJSON_Delete(in);
        http_reply_error(r, 422, "invalid_field", e.msg, e.field);
        return;
    }
    char tenant[24], shape[16];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    snprintf(shape, sizeof(shape), "%u", cust_shape(&c) | CUST_SHAPE_FORCE);
    struct pgarr arr[CC_N];
    const char *params[2 + CC_N] = {tenant, shape};
    bool ok = true;
    for (int i = 0; i < CC_N; i++) {
        pgarr_init(&arr[i], API_MAX_JSON_BODY * 2);
        ok = ok && pgarr_add_text(&arr[i], c.val[i]) == CR_OK;
        params[2 + i] = pgarr_str(&arr[i]);
        ok = ok && params[2 + i];
    }
    if (ok)
        pgpool_query(r->app->pg, sql_upsert, 2 + CC_N, params, create_done, r);
    for (int i = 0; i < CC_N; i++)
        pgarr_cleanup(&arr[i]);
    cust_in_cleanup(&c);
    cJSON_Delete(in);
    if (!ok)
        http_reply_error(r, 413, "body_too_large", "customer is too large", NULL);
}

/* ---------------------------------------------------------------------
 * POST /v1/customers/import
 * ------------------------------------------------------------------- */

static int cust_import_row(struct import_run *run, const cJSON *rec, struct import_row *row,
                           struct import_err *e)
{
    struct cust_in c;
    int rc = cust_parse(import_app(run), rec, false, &c, e);
    for (int i = 0; i < CC_N && rc == 0; i++)
        if (c.val[i])
            rc = import_row_set(row, i, c.val[i], strlen(c.val[i]), e);
    import_row_set_shape(row, cust_shape(&c));
    cust_in_cleanup(&c);
    return rc;
}

static const struct import_kind cust_import_kind = {
    .noun = "customer",
    .columns = cust_fields,
    .ncols = CC_N,
    .batch_rows = 5000,
    .max_inflight = 2,
    .sql = sql_upsert,
    .sql_insert = sql_insert,
    .row = cust_import_row,
};

void customers_import(struct api_req *r)
{
    import_start(r, &cust_import_kind);
}

/* ---------------------------------------------------------------------
 * GET / PATCH / DELETE /v1/customers/{id}
 * ------------------------------------------------------------------- */

static void reply_not_found(struct api_req *r)
{
    http_reply_error(r, 404, "not_found", "no such customer", NULL);
}

static void row_json_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    if (!res) {
        if (strcmp(sqlstate, "23505") == 0)
            http_reply_error(r, 409, "conflict", "another customer has this external_id",
                             "external_id");
        else if (is_data_error(sqlstate))
            reply_db_rejected(r, errmsg);
        else
            http_reply_dependency(r, "postgres", errmsg);
        return;
    }
    if (PQntuples(res) != 1) {
        reply_not_found(r);
        return;
    }
    http_reply_raw_json(r, 200, PQgetvalue(res, 0, 0));
}

static void query_by_id(struct api_req *r, const char *sql, pgpool_cb cb)
{
    char tenant[24], id[24];
    http_id_params(r, tenant, id);
    const char *params[] = {tenant, id};
    pgpool_query(r->app->pg, sql, 2, params, cb, r);
}

void customers_get(struct api_req *r)
{
    query_by_id(r, sql_get, row_json_done);
}

static const char sql_exists[] = "SELECT 1 FROM customers WHERE tenant_id = $1 AND id = $2";

/* A PATCH that does not validate: 404 when there is no such customer (as
 * for a valid one), else the 422 kept in r->state. */
static void patch_invalid_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    const struct import_err *e = r->state;
    (void)sqlstate;
    if (!res)
        http_reply_dependency(r, "postgres", errmsg);
    else if (PQntuples(res) != 1)
        reply_not_found(r);
    else
        http_reply_error(r, 422, "invalid_field", e->msg, e->field);
}

void customers_patch(struct api_req *r)
{
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return;
    struct cust_in c;
    struct import_err e;
    if (cust_parse(r->app, in, true, &c, &e) != 0) {
        cust_in_cleanup(&c);
        cJSON_Delete(in);
        struct import_err *kept = xmalloc(sizeof(*kept));
        *kept = e;
        r->state = kept;
        r->state_free = free;
        query_by_id(r, sql_exists, patch_invalid_done);
        return;
    }
    char tenant[24], id[24], mask[16];
    http_id_params(r, tenant, id);
    unsigned m = 0;
    for (int i = 0; i < CC_N; i++)
        if (c.given[i])
            m |= 1u << i;
    snprintf(mask, sizeof(mask), "%u", m);
    const char *params[19] = {tenant, id, mask};
    for (int i = 0; i < CC_N; i++)
        params[3 + i] = c.val[i];
    params[17] = c.attrs_clear ? "t" : "f";
    params[18] = c.attrs_del ? c.attrs_del : "{}";
    pgpool_query(r->app->pg, sql_patch, 19, params, row_json_done, r);
    cust_in_cleanup(&c);
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
    if (PQntuples(res) != 1) {
        reply_not_found(r);
        return;
    }
    http_reply_no_content(r);
}

void customers_delete(struct api_req *r)
{
    query_by_id(r, sql_delete, delete_done);
}

/* ---------------------------------------------------------------------
 * GET /v1/customers: keyset pagination on id, filters
 * ------------------------------------------------------------------- */

#define LIST_DEFAULT_LIMIT 50
#define LIST_MAX_LIMIT 500

/* $1 tenant, $2 after id, $3 tags (all of), $4 search pattern (ILIKE),
 * $5 search as E.164, $6 external_id, $7 has_phone, $8 has_email,
 * $9 opted_out (1 sms, 2 email, 3 voice, 4 any, 5 none), $10 timezone,
 * $11 updated_since, $12 limit. */
static const char sql_list[] =
    "SELECT x.id, row_to_json(x) FROM (SELECT " CUSTOMER_JSON_COLUMNS " FROM customers c"
    " WHERE c.tenant_id = $1 AND c.id > $2::bigint"
    "  AND ($3::text[] IS NULL OR c.tags @> $3::text[])"
    "  AND ($4::text IS NULL OR c.external_id ILIKE $4 OR c.first_name ILIKE $4"
    "   OR c.last_name ILIKE $4 OR c.email ILIKE $4 OR c.phone ILIKE $4 OR c.phone = $5)"
    "  AND ($6::text IS NULL OR c.external_id = $6)"
    "  AND ($7::boolean IS NULL OR (c.phone IS NOT NULL) = $7::boolean)"
    "  AND ($8::boolean IS NULL OR (c.email IS NOT NULL) = $8::boolean)"
    "  AND ($9::int IS NULL OR CASE $9::int WHEN 1 THEN c.sms_opt_out"
    "   WHEN 2 THEN c.email_opt_out WHEN 3 THEN c.voice_opt_out"
    "   WHEN 4 THEN c.sms_opt_out OR c.email_opt_out OR c.voice_opt_out"
    "   ELSE NOT (c.sms_opt_out OR c.email_opt_out OR c.voice_opt_out) END)"
    "  AND ($10::text IS NULL OR c.timezone = $10)"
    "  AND ($11::timestamptz IS NULL OR c.updated_at >= $11::timestamptz)"
    " ORDER BY c.id LIMIT $12::int) x";

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Base64url without padding of s[0..n) into out. */
static void b64url_encode(const unsigned char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0) |
                     (i + 2 < n ? s[i + 2] : 0);
        out[o++] = b64url[(v >> 18) & 63];
        out[o++] = b64url[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = b64url[(v >> 6) & 63];
        if (i + 2 < n)
            out[o++] = b64url[v & 63];
    }
    out[o] = '\0';
}

/* The opaque cursor is base64url("v1:<last id>"). */
static void cursor_encode(long long id, char *out, size_t outsz)
{
    char raw[32];
    int n = snprintf(raw, sizeof(raw), "v1:%lld", id);
    if (outsz >= 48)
        b64url_encode((const unsigned char *)raw, (size_t)n, out);
}

/* Accepts only what cursor_encode produces. */
static bool cursor_decode(const char *s, long long *id)
{
    size_t n = strlen(s);
    if (n < 4 || n > 40)
        return false;
    unsigned char raw[32];
    size_t o = 0;
    unsigned v = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = strchr(b64url, s[i]);
        if (!p || !s[i])
            return false;
        v = (v << 6) | (unsigned)(p - b64url);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            raw[o++] = (unsigned char)(v >> bits);
            v &= (1u << bits) - 1;
        }
    }
    raw[o] = '\0';
    if (o < 4 || memcmp(raw, "v1:", 3) != 0 || raw[3] < '1' || raw[3] > '9')
        return false;
    char *end = NULL;
    long long x = strtoll((const char *)raw + 3, &end, 10);
    if (*end || x <= 0)
        return false;
    char again[48];
    cursor_encode(x, again, sizeof(again));
    if (strcmp(again, s) != 0)
        return false;
    *id = x;
    return true;
}

struct list_params {
    char after[24], limit[16], opted[4];
    struct pgarr tags;
    bool has_tags;
    char *pattern; /* heap */
    char phone[PHONE_E164_SIZE];
    char since[48];
    const char *external_id, *has_phone, *has_email, *timezone;
    int limit_n;
};

static int list_fail(struct api_req *r, const char *param, const char *msg)
{
    http_reply_error(r, 400, "invalid_parameter", msg, param);
    return -1;
}

static int list_bool(struct api_req *r, const char *name, const char *v, const char **out)
{
    if (strcmp(v, "true") == 0)
        *out = "t";
    else if (strcmp(v, "false") == 0)
        *out = "f";
    else {
        char msg[96];
        snprintf(msg, sizeof(msg), "%s must be true or false", name);
        return list_fail(r, name, msg);
    }
    return 0;
}

/* Parses and validates the query string; replies 400 naming the bad
 * parameter and returns -1. */
static int list_parse_or_reply(struct api_req *r, struct evkeyvalq *q, struct list_params *lp)
{
    static const char *const known[] = {"limit",       "cursor",        "tag",       "q",
                                        "external_id", "has_phone",     "has_email", "opted_out",
                                        "timezone",    "updated_since", NULL};
    snprintf(lp->after, sizeof(lp->after), "0");
    lp->limit_n = LIST_DEFAULT_LIMIT;
    for (struct evkeyval *kv = q->tqh_first; kv; kv = kv->next.tqe_next) {
        const char *k = kv->key, *v = kv->value;
        int idx = -1;
        for (int i = 0; known[i] && idx < 0; i++)
            if (strcmp(k, known[i]) == 0)
                idx = i;
        char msg[160];
        if (idx < 0) {
            char shown[IMPORT_FIELD_MAX];
            import_clip(shown, sizeof(shown), k, strlen(k));
            snprintf(msg, sizeof(msg), "unknown parameter %s", shown);
            return list_fail(r, shown, msg);
        }
        if (idx != 2) {
            for (struct evkeyval *o = q->tqh_first; o != kv; o = o->next.tqe_next)
                if (strcmp(o->key, k) == 0) {
                    snprintf(msg, sizeof(msg), "%s may be given once", k);
                    return list_fail(r, k, msg);
                }
        }
        if (!import_utf8_valid(v, strlen(v))) {
            snprintf(msg, sizeof(msg), "%s is not valid UTF-8", k);
            return list_fail(r, k, msg);
        }
        if (strcmp(k, "limit") == 0) {
            char *end = NULL;
            long n = strtol(v, &end, 10);
            if (end == v || *end || n < 1 || n > LIST_MAX_LIMIT) {
                snprintf(msg, sizeof(msg), "limit must be an integer 1..%d", LIST_MAX_LIMIT);
                return list_fail(r, k, msg);
            }
            lp->limit_n = (int)n;
        } else if (strcmp(k, "cursor") == 0) {
            long long id;
            if (!cursor_decode(v, &id))
                return list_fail(r, k, "cursor is not one this API returned");
            snprintf(lp->after, sizeof(lp->after), "%lld", id);
        } else if (strcmp(k, "tag") == 0) {
            if (!*v || strlen(v) > 64)
                return list_fail(r, k, "tag must be 1..64 bytes");
            if (pgarr_add_text(&lp->tags, v) != CR_OK || lp->tags.n > 20)
                return list_fail(r, k, "at most 20 tags");
            lp->has_tags = true;
        } else if (strcmp(k, "q") == 0) {
            size_t n = strlen(v);
            if (n < 1 || n > 100)
                return list_fail(r, k, "q must be 1..100 bytes");
            /* substring match: escape LIKE's wildcards */
            lp->pattern = xmalloc(2 * n + 3);
            char *o = lp->pattern;
            *o++ = '%';
            for (const char *p = v; *p; p++) {
                if (*p == '%' || *p == '_' || *p == '\\')
                    *o++ = '\\';
                *o++ = *p;
            }
            *o++ = '%';
            *o = '\0';
            if (phone_normalize(v, NULL, lp->phone, sizeof(lp->phone)) != CR_OK)
                lp->phone[0] = '\0';
        } else if (strcmp(k, "external_id") == 0) {
            if (!*v || strlen(v) > 200)
                return list_fail(r, k, "external_id must be 1..200 bytes");
            lp->external_id = v;
        } else if (strcmp(k, "has_phone") == 0) {
            if (list_bool(r, k, v, &lp->has_phone) != 0)
                return -1;
        } else if (strcmp(k, "has_email") == 0) {
            if (list_bool(r, k, v, &lp->has_email) != 0)
                return -1;
        } else if (strcmp(k, "opted_out") == 0) {
            static const char *const ch[] = {"sms", "email", "voice", "any", "none", NULL};
            int n = 0;
            for (int i = 0; ch[i] && !n; i++)
                if (strcmp(v, ch[i]) == 0)
                    n = i + 1;
            if (!n)
                return list_fail(r, k, "opted_out must be sms, email, voice, any or none");
            snprintf(lp->opted, sizeof(lp->opted), "%d", n);
        } else if (strcmp(k, "timezone") == 0) {
            if (!tzdb_valid(r->app, v))
                return list_fail(r, k, "timezone must be a time zone name PostgreSQL knows");
            lp->timezone = v;
        } else if (strcmp(k, "updated_since") == 0) {
            if (!import_timestamp_normalize(v, lp->since, sizeof(lp->since)))
                return list_fail(r, k, "updated_since must be an ISO 8601 timestamp");
        }
    }
    snprintf(lp->limit, sizeof(lp->limit), "%d", lp->limit_n + 1);
    return 0;
}

static void list_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    int limit = *(int *)r->state;
    if (!res) {
        if (is_data_error(sqlstate))
            http_reply_error(r, 400, "invalid_parameter", "a parameter was rejected", NULL);
        else
            http_reply_dependency(r, "postgres", errmsg);
        return;
    }
    int n = PQntuples(res);
    int shown = n > limit ? limit : n;
    struct buf b;
    buf_init(&b, (size_t)64 << 20);
    enum cr_err err = buf_puts(&b, "{\"customers\":[");
    for (int i = 0; i < shown && !err; i++) {
        if (i)
            err = buf_putc(&b, ',');
        if (!err)
            err = buf_append(&b, PQgetvalue(res, i, 1), (size_t)PQgetlength(res, i, 1));
    }
    if (!err && n > limit) {
        char cur[48];
        cursor_encode(strtoll(PQgetvalue(res, shown - 1, 0), NULL, 10), cur, sizeof(cur));
        err = buf_printf(&b, "],\"next_cursor\":\"%s\"}", cur);
    } else if (!err) {
        err = buf_puts(&b, "],\"next_cursor\":null}");
    }
    if (err)
        http_reply_dependency(r, "memory", "customer page too large");
    else
        http_reply_raw_json(r, 200, buf_str(&b));
    buf_cleanup(&b);
}

void customers_list(struct api_req *r)
{
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    if (r->query && evhttp_parse_query_str(r->query, &q) != 0) {
        evhttp_clear_headers(&q);
        http_reply_error(r, 400, "invalid_parameter", "malformed query string", NULL);
        return;
    }
    struct list_params lp;
    memset(&lp, 0, sizeof(lp));
    pgarr_init(&lp.tags, 1 << 16);
    if (list_parse_or_reply(r, &q, &lp) == 0) {
        char tenant[24];
        snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
        const char *params[12] = {tenant,
                                  lp.after,
                                  lp.has_tags ? pgarr_str(&lp.tags) : NULL,
                                  lp.pattern,
                                  lp.phone[0] ? lp.phone : NULL,
                                  lp.external_id,
                                  lp.has_phone,
                                  lp.has_email,
                                  lp.opted[0] ? lp.opted : NULL,
                                  lp.timezone,
                                  lp.since[0] ? lp.since : NULL,
                                  lp.limit};
        int *limit = xmalloc(sizeof(int));
        *limit = lp.limit_n;
        r->state = limit;
        r->state_free = free;
        pgpool_query(r->app->pg, sql_list, 12, params, list_done, r);
    }
    pgarr_cleanup(&lp.tags);
    free(lp.pattern);
    evhttp_clear_headers(&q);
}
