/* activity.c - POST /v1/interactions/import and /v1/appointments/import.
 *
 * NDJSON (or CSV with a header row) through the import engine (import.h).
 * Each record names its customer by customer_external_id, looked up in the
 * tenant; an unknown customer is an error for that line. The record's own
 * external_id is the upsert key, so a re-import updates instead of
 * doubling; a record is the whole row (a field it omits becomes empty).
 *
 * Customers are kept in step in the same statement:
 * - interactions move customers.last_contact_at forward to the newest
 *   occurred_at that is not in the future, whatever the direction (a
 *   conversation either way is contact; it never moves back, as crier's
 *   own sends set it too);
 * - appointments set customers.last_appointment_at to the latest
 *   scheduled_at of the customer's appointments that are not cancelled
 *   (NULL when none), for every customer whose appointments the batch
 *   touched, including one an appointment moved away from. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "import.h"

/* ---------------------------------------------------------------------
 * Interactions
 * ------------------------------------------------------------------- */

enum ia_col {
    IA_EXTERNAL_ID,
    IA_CUSTOMER,
    IA_CHANNEL,
    IA_DIRECTION,
    IA_OCCURRED_AT,
    IA_OUTCOME,
    IA_SATISFACTION,
    IA_BOOKING_INTENT,
    IA_METADATA,
    IA_N
};

static const struct import_field ia_fields[] = {
    {"external_id", IMPORT_T_TEXT}, {"customer_external_id", IMPORT_T_TEXT},
    {"channel", IMPORT_T_TEXT},     {"direction", IMPORT_T_TEXT},
    {"occurred_at", IMPORT_T_TEXT}, {"outcome", IMPORT_T_TEXT},
    {"satisfaction", IMPORT_T_INT}, {"booking_intent", IMPORT_T_BOOL},
    {"metadata", IMPORT_T_OBJECT},  {NULL, IMPORT_T_TEXT},
};

/* The batch's rows with their customer (looked up per row: always an
 * index probe, whatever the table size). Shared by both statements. */
#define ACTIVITY_CUSTOMER_ID                                                                       \
    "(SELECT c.id FROM customers c WHERE c.tenant_id = $1"                                         \
    " AND c.external_id = r.customer_external_id) AS customer_id"

/* The import contract's result: 'i'/'u' per row written, 'm' per row whose
 * customer is unknown. */
#define ACTIVITY_RESULT                                                                            \
    " SELECT u.external_id, CASE WHEN u.inserted THEN 'i' ELSE 'u' END FROM up u"                  \
    " UNION ALL SELECT r.external_id, 'm' FROM r WHERE r.customer_id IS NULL"

/* $1 tenant, $2 shape (always 0), $3..$11 the columns. */
static const char sql_interactions[] =
    "WITH r AS (SELECT r.*, " ACTIVITY_CUSTOMER_ID
    "  FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],"
    "   $8::text[], $9::smallint[], $10::boolean[], $11::text[])"
    "  AS r(external_id, customer_external_id, channel, direction, occurred_at, outcome,"
    "   satisfaction, booking_intent, metadata) WHERE $2::int = 0),"
    " up AS (INSERT INTO interactions AS i (tenant_id, customer_id, external_id, channel,"
    "   direction, occurred_at, outcome, satisfaction, booking_intent, metadata)"
    "  SELECT $1, r.customer_id, r.external_id, r.channel, r.direction, r.occurred_at,"
    "   r.outcome, r.satisfaction, r.booking_intent, COALESCE(r.metadata::jsonb, '{}')"
    "  FROM r WHERE r.customer_id IS NOT NULL"
    "  ON CONFLICT (tenant_id, external_id) DO UPDATE SET (customer_id, channel, direction,"
    "   occurred_at, outcome, satisfaction, booking_intent, metadata) = (EXCLUDED.customer_id,"
    "   EXCLUDED.channel, EXCLUDED.direction, EXCLUDED.occurred_at, EXCLUDED.outcome,"
    "   EXCLUDED.satisfaction, EXCLUDED.booking_intent, EXCLUDED.metadata)"
    "  WHERE (i.customer_id, i.channel, i.direction, i.occurred_at, i.outcome, i.satisfaction,"
    "   i.booking_intent, i.metadata) IS DISTINCT FROM (EXCLUDED.customer_id, EXCLUDED.channel,"
    "   EXCLUDED.direction, EXCLUDED.occurred_at, EXCLUDED.outcome, EXCLUDED.satisfaction,"
    "   EXCLUDED.booking_intent, EXCLUDED.metadata)"
    "  RETURNING i.external_id, i.xmax = 0 AS inserted),"
    " g AS (SELECT r.customer_id, max(r.occurred_at) AS latest FROM r"
    "  WHERE r.customer_id IS NOT NULL AND r.occurred_at <= now() GROUP BY r.customer_id),"
    " contact AS (UPDATE customers c SET last_contact_at = g.latest FROM g"
    "  WHERE c.tenant_id = $1 AND c.id = ANY (ARRAY(SELECT customer_id FROM g))"
    "   AND c.id = g.customer_id"
    "   AND (c.last_contact_at IS NULL OR c.last_contact_at < g.latest))" ACTIVITY_RESULT;

/* A required or optional string of at most maxlen bytes. */
static int take_text(const cJSON *rec, const char *name, bool required, size_t maxlen,
                     const char **out, struct import_err *e)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(rec, name);
    *out = NULL;
    if (!it || cJSON_IsNull(it)) {
        if (required)
            return import_fail(e, name, "%s is required", name);
        return 0;
    }
    if (!cJSON_IsString(it) || (required && !*it->valuestring))
        return import_fail(e, name, "%s must be a%s string", name, required ? " non-empty" : "");
    if (strlen(it->valuestring) > maxlen)
        return import_fail(e, name, "%s must be at most %zu bytes", name, maxlen);
    for (const unsigned char *p = (const unsigned char *)it->valuestring; *p; p++)
        if (*p < 0x20 && *p != '\t' && *p != '\n')
            return import_fail(e, name, "%s must not contain control characters", name);
    *out = it->valuestring;
    return 0;
}

/* s must be one of the NULL-terminated choices. */
static int take_choice(const char *name, const char *s, const char *const *choices,
                       const char *list, struct import_err *e)
{
    for (int i = 0; choices[i]; i++)
        if (strcmp(s, choices[i]) == 0)
            return 0;
    return import_fail(e, name, "%s must be one of %s", name, list);
}

static int set_text(struct import_row *row, int col, const char *s, struct import_err *e)
{
    return s ? import_row_set(row, col, s, strlen(s), e) : 0;
}

static int check_keys(const cJSON *rec, const struct import_field *fields, struct import_err *e)
{
    for (const cJSON *it = rec->child; it; it = it->next) {
        bool known = false;
        for (const struct import_field *f = fields; f->name && !known; f++)
            known = strcmp(it->string, f->name) == 0;
        if (!known) {
            char field[IMPORT_FIELD_MAX];
            import_clip(field, sizeof(field), it->string, strlen(it->string));
            return import_fail(e, field, "unknown field %s", field);
        }
    }
    return 0;
}

/* external_id and customer_external_id, the two keys of every record. */
static int take_keys(const cJSON *rec, struct import_row *row, struct import_err *e)
{
    const char *ext, *cust;
    if (take_text(rec, "external_id", true, 200, &ext, e) != 0 ||
        take_text(rec, "customer_external_id", true, 200, &cust, e) != 0)
        return -1;
    if (set_text(row, 0, ext, e) != 0 || set_text(row, 1, cust, e) != 0)
        return -1;
    return 0;
}

static int take_time(const cJSON *rec, const char *name, struct import_row *row, int col,
                     struct import_err *e)
{
    const char *s;
    char ts[48];
    if (take_text(rec, name, true, 40, &s, e) != 0)
        return -1;
    if (!import_timestamp_normalize(s, ts, sizeof(ts)))
        return import_fail(e, name, "%s must be an ISO 8601 timestamp, e.g. 2024-05-01T14:30:00Z",
                           name);
    return set_text(row, col, ts, e);
}

static int ia_row(struct import_run *run, const cJSON *rec, struct import_row *row,
                  struct import_err *e)
{
    static const char *const channels[] = {"sms", "email", "voice", "web", "in_person", NULL};
    static const char *const directions[] = {"inbound", "outbound", NULL};
    const char *s;
    (void)run;
    if (check_keys(rec, ia_fields, e) != 0 || take_keys(rec, row, e) != 0)
        return -1;
    if (take_text(rec, "channel", true, 20, &s, e) != 0 ||
        take_choice("channel", s, channels, "sms, email, voice, web, in_person", e) != 0 ||
        set_text(row, IA_CHANNEL, s, e) != 0)
        return -1;
    if (take_text(rec, "direction", false, 20, &s, e) != 0 ||
        (s && take_choice("direction", s, directions, "inbound, outbound", e) != 0) ||
        set_text(row, IA_DIRECTION, s ? s : "inbound", e) != 0)
        return -1;
    if (take_time(rec, "occurred_at", row, IA_OCCURRED_AT, e) != 0)
        return -1;
    if (take_text(rec, "outcome", false, 500, &s, e) != 0 || set_text(row, IA_OUTCOME, s, e) != 0)
        return -1;
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(rec, "satisfaction");
    if (it && !cJSON_IsNull(it)) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 1 || it->valuedouble > 5 ||
            it->valuedouble != (double)(int)it->valuedouble)
            return import_fail(e, "satisfaction", "satisfaction must be an integer 1..5");
        char v[4];
        snprintf(v, sizeof(v), "%d", (int)it->valuedouble);
        if (set_text(row, IA_SATISFACTION, v, e) != 0)
            return -1;
    }
    it = cJSON_GetObjectItemCaseSensitive(rec, "booking_intent");
    if (it && !cJSON_IsNull(it)) {
        if (!cJSON_IsBool(it))
            return import_fail(e, "booking_intent", "booking_intent must be true or false");
        if (set_text(row, IA_BOOKING_INTENT, cJSON_IsTrue(it) ? "t" : "f", e) != 0)
            return -1;
    }
    it = cJSON_GetObjectItemCaseSensitive(rec, "metadata");
    if (it && !cJSON_IsNull(it)) {
        if (!cJSON_IsObject(it))
            return import_fail(e, "metadata", "metadata must be an object");
        char *json = cJSON_PrintUnformatted(it);
        int rc = strlen(json) > 65536
                     ? import_fail(e, "metadata", "metadata must be at most 64 KiB of JSON")
                     : set_text(row, IA_METADATA, json, e);
        free(json);
        if (rc != 0)
            return -1;
    }
    return 0;
}

static const struct import_kind ia_kind = {
    .noun = "interaction",
    .columns = ia_fields,
    .ncols = IA_N,
    .batch_rows = 1000,
    .max_inflight = 1,
    .sql = sql_interactions,
    .missing_field = "customer_external_id",
    .missing_message = "no customer with this customer_external_id",
    .row = ia_row,
};

void interactions_import(struct api_req *r)
{
    import_start(r, &ia_kind);
}

/* ---------------------------------------------------------------------
 * Appointments
 * ------------------------------------------------------------------- */

enum ap_col { AP_EXTERNAL_ID, AP_CUSTOMER, AP_STATUS, AP_SCHEDULED_AT, AP_N };

static const struct import_field ap_fields[] = {
    {"external_id", IMPORT_T_TEXT}, {"customer_external_id", IMPORT_T_TEXT},
    {"status", IMPORT_T_TEXT},      {"scheduled_at", IMPORT_T_TEXT},
    {NULL, IMPORT_T_TEXT},
};

/* $1 tenant, $2 shape (always 0), $3..$6 the columns. The statement sees the
 * appointments as they were before it, so a customer's latest appointment
 * is computed from those (minus the rows this batch rewrites) plus the
 * batch's rows. */
static const char sql_appointments[] =
    "WITH r AS (SELECT r.*, " ACTIVITY_CUSTOMER_ID
    "  FROM unnest($3::text[], $4::text[], $5::text[], $6::timestamptz[])"
    "  AS r(external_id, customer_external_id, status, scheduled_at) WHERE $2::int = 0),"
    " w AS (SELECT r.* FROM r WHERE r.customer_id IS NOT NULL),"
    " old AS (SELECT a.customer_id FROM appointments a"
    "  WHERE a.tenant_id = $1 AND a.external_id = ANY (ARRAY(SELECT external_id FROM w))),"
    " up AS (INSERT INTO appointments AS a (tenant_id, customer_id, external_id, status,"
    "   scheduled_at)"
    "  SELECT $1, w.customer_id, w.external_id, w.status, w.scheduled_at FROM w"
    "  ON CONFLICT (tenant_id, external_id) DO UPDATE SET (customer_id, status, scheduled_at,"
    "   updated_at) = (EXCLUDED.customer_id, EXCLUDED.status, EXCLUDED.scheduled_at, now())"
    "  WHERE (a.customer_id, a.status, a.scheduled_at)"
    "   IS DISTINCT FROM (EXCLUDED.customer_id, EXCLUDED.status, EXCLUDED.scheduled_at)"
    "  RETURNING a.external_id, a.xmax = 0 AS inserted),"
    " touched AS (SELECT customer_id FROM w UNION SELECT customer_id FROM old),"
    " latest AS (SELECT t.customer_id, max(x.s) AS s FROM touched t LEFT JOIN ("
    "   SELECT a.customer_id, a.scheduled_at AS s FROM appointments a"
    "   WHERE a.tenant_id = $1 AND a.customer_id = ANY (ARRAY(SELECT customer_id FROM touched))"
    "    AND a.status <> 'cancelled'"
    "    AND NOT EXISTS (SELECT 1 FROM w WHERE w.external_id = a.external_id)"
    "   UNION ALL SELECT w.customer_id, w.scheduled_at FROM w WHERE w.status <> 'cancelled'"
    "  ) x ON x.customer_id = t.customer_id GROUP BY t.customer_id),"
    " fix AS (UPDATE customers c SET last_appointment_at = l.s FROM latest l"
    "  WHERE c.tenant_id = $1 AND c.id = ANY (ARRAY(SELECT customer_id FROM touched))"
    "   AND c.id = l.customer_id AND c.last_appointment_at IS DISTINCT FROM l.s)" ACTIVITY_RESULT;

static int ap_row(struct import_run *run, const cJSON *rec, struct import_row *row,
                  struct import_err *e)
{
    static const char *const statuses[] = {"scheduled", "completed", "cancelled", "no_show", NULL};
    const char *s;
    (void)run;
    if (check_keys(rec, ap_fields, e) != 0 || take_keys(rec, row, e) != 0)
        return -1;
    if (take_text(rec, "status", true, 20, &s, e) != 0 ||
        take_choice("status", s, statuses, "scheduled, completed, cancelled, no_show", e) != 0 ||
        set_text(row, AP_STATUS, s, e) != 0)
        return -1;
    return take_time(rec, "scheduled_at", row, AP_SCHEDULED_AT, e);
}

static const struct import_kind ap_kind = {
    .noun = "appointment",
    .columns = ap_fields,
    .ncols = AP_N,
    .batch_rows = 1000,
    .max_inflight = 1,
    .sql = sql_appointments,
    .missing_field = "customer_external_id",
    .missing_message = "no customer with this customer_external_id",
    .row = ap_row,
};

void appointments_import(struct api_req *r)
{
    import_start(r, &ap_kind);
}
