/* segment.c - compiles segment criteria (JSON) into a parameterised SQL
 * boolean expression over "customers c".
 *
 * THE CRITERIA. The first op listed is the default, used by the flat form
 * {"name": value} and by a {"field", "value"} leaf without "op"; there, an
 * array value given to a criterion whose default takes one string selects
 * its "in" form ({"channel": ["sms", "voice"]}).
 *
 *  criterion                    ops          value            matches the customers who...
 *  has_phone / has_email        eq           bool             have (true) / lack (false) it
 *  tags                         contains,in  string(s)        have all / at least one of them
 *  tags_any                     in           string(s)        have at least one of them
 *  timezone                     eq, in       IANA name(s)     have that zone / one of them
 *  attribute                    eq           {key,value}      attributes contain {key: value}
 *                                            {key,exists}     attributes have (not) the key
 *  days_since_last_contact      gte,lte,eq   days 0..100000   see DAYS; last contact = the most
 *                                            recent of c.last_contact_at (crier's own sends) and
 *                                            any interaction (any channel, either direction).
 *                                            Never narrowed by a SCOPE.
 *  days_since_last_appointment  gte,lte,eq   days             see DAYS; last appointment = the
 *                                            latest of c.last_appointment_at and the scheduled_at
 *                                            of every appointment row, ANY status, FUTURE ONES
 *                                            INCLUDED (an upcoming appointment is "less than 0
 *                                            days ago": it never satisfies gte).
 *  has_appointment              eq           bool             have (no) appointment row at all
 *  appointment_count            gte,lte,eq   count 0..1e6     number of appointment rows, any
 *  appointment_count_min        gte          count            status, past or future (min 1 <=>
 *  appointment_count_max        lte          count            has_appointment true)
 *  last_appointment_status      eq, in       scheduled | completed | cancelled | no_show: the
 *                                            status of the latest appointment by scheduled_at
 *                                            (future ones included; ties: highest id). No
 *                                            appointment: no match.
 *  channel                      eq, in       sms|email|voice|web|in_person  have at least one
 *                                            interaction on it (in SCOPE). Not the campaign's
 *                                            channel: reachability on that is always required.
 *  direction                    eq, in       inbound|outbound have an interaction so (in SCOPE)
 *  metadata_key                 eq, in       key(s)           have an interaction (in SCOPE)
 *                                            whose metadata has the top-level key / one of them
 *                                            (whatever its value, false and null included)
 *  booking_intent               eq           bool             the LATEST in-scope interaction
 *                                            that records booking intent (non-NULL) says so.
 *                                            None recorded: matches neither true nor false.
 *  satisfaction                 gte,lte,eq   score 1..5       the LATEST in-scope interaction
 *  min_satisfaction             gte          score            that has a satisfaction score
 *  max_satisfaction             lte          score            scores >= / <= / = N. Never
 *                                            rated: no match (either way).
 *  days_since_last_interaction  gte,lte,eq   days             see DAYS, over the in-scope
 *                                            interactions (default: all of them).
 *  days_since_visit             gte,lte,eq   days             see DAYS, over the in-scope
 *                                            interactions, whose default is channel 'web'
 *                                            instead of all: "visit" = web interaction, or,
 *                                            with a metadata_key scope, an interaction carrying
 *                                            the key (on any channel unless a channel scope).
 *
 * DAYS. "Days since the most recent X" counts whole days of elapsed time:
 * floor((now() - t) / 24 h) for the most recent X at t. gte N: t <= now() -
 * N days, or there is no X at all ("never" is infinitely long ago, which is
 * what "not contacted for N days" means); lte N: there is an X with t >
 * now() - (N+1) days; eq N: both. So for every N, gte N and lte N-1 split
 * the customers who have an X exactly in two. Only the most recent X counts:
 * gte N is "no X newer than N days", never "some X older than N days".
 *
 * SCOPE. The interaction criteria (channel, direction, metadata_key,
 * booking_intent, satisfaction and its min/max forms,
 * days_since_last_interaction, days_since_visit) look at the customer's
 * interactions "in scope". A channel, direction or metadata_key condition
 * narrows the scope of the conditions ANDed beside it: the other members of
 * its object, or the other elements of its "all" list when it is written
 * there as a leaf ({"field": "channel", ...} or {"channel": ...} alone),
 * and everything nested inside those. So {"channel": "voice",
 * "days_since_last_interaction": 30} means "has voice interactions and the
 * latest one is 30+ days old", and the conditions of one object describe
 * the same interactions. An inner condition of the same kind replaces the
 * outer one; a condition under "any" or "not" scopes nothing outside its own
 * object; two of one kind at one level are an error. Each condition of the
 * three kinds is itself scoped by the other two kinds.
 *
 * NULLs. Every generated condition is two-valued (never NULL), so "not" is
 * exact: NOT of a condition selects precisely the customers it did not
 * select. The NULL cases are the ones spelled out above.
 *
 * HOW. Every criterion is a row of seg_fields: (name, op, JSON type,
 * generator, SQL fragments, kind, allowed values). The JSON type (and the
 * allowed values) are checked centrally before a generator runs, so
 * generators only ever see well-typed values. Safety rules they keep:
 * - No input value is ever written into the SQL text: values become text
 *   parameters ($N, cast in SQL); input only chooses among constant fragments.
 * - Every subquery on a tenant table is tied to the customer by
 *   tenant_id = c.tenant_id AND customer_id = c.id; the later rows a
 *   "latest" criterion looks for are tied to the row they follow.
 * - Every condition is a "primary": a single predicate whose operators bind
 *   tighter than NOT, or a parenthesised expression. So "NOT x", "x AND y"
 *   and "x OR y" can be written without re-parenthesising.
 * - What does not depend on the interaction scope (contact, appointments)
 *   and the unscoped forms of the interaction criteria (latest booking
 *   intent and satisfaction, days since the last interaction) read summary
 *   columns of the customers row, kept by triggers (migrations/0005): the
 *   latest interaction time, rating and booking intent, the appointment
 *   count, latest scheduled_at and latest status, NULL (count 0) for none.
 *   A NULL column is no match, never a NULL result.
 * - The scoped conditions on interactions are EXISTS / NOT EXISTS, which
 *   PostgreSQL turns into (anti-)joins when they are ANDed at the top, and
 *   into one index probe per customer under OR / NOT. migrations/0003 holds
 *   the indexes they use.
 * The channel's reachability rule is always ANDed at the top level, outside
 * anything the criteria say. */
#include "segment.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

#define SEG_MAX_DEPTH 16                             /* nested all/any/not levels */
#define SEG_MAX_CONDITIONS 256                       /* leaf conditions per criteria */
#define SEG_MAX_SQL (64 * 1024)                      /* bytes of generated SQL */
#define SEG_MAX_PARAM_BYTES (64 * 1024)              /* bytes of one parameter (array literal) */
#define SEG_MAX_DAYS 100000                          /* ~270 years: keeps now() - N days in range */
#define SEG_MAX_COUNT 1000000                        /* appointment counts */
#define SEG_MAX_FIRST_PARAM (65535 - SEG_MAX_PARAMS) /* PostgreSQL allows 65535 params */

/* ------------------------------------------------------------------------ */
/* Operators, types, scope, the field table                                 */

enum seg_op { SEG_OP_EQ = 0, SEG_OP_GTE, SEG_OP_LTE, SEG_OP_CONTAINS, SEG_OP_IN, SEG_OP_COUNT };

static const char *const seg_op_names[SEG_OP_COUNT] = {"eq", "gte", "lte", "contains", "in"};

enum seg_type {
    SEG_T_BOOL,      /* true | false */
    SEG_T_DAYS,      /* integer 0..SEG_MAX_DAYS */
    SEG_T_COUNT,     /* integer 0..SEG_MAX_COUNT */
    SEG_T_SCORE,     /* integer 1..5 (interactions.satisfaction) */
    SEG_T_STRING,    /* non-empty UTF-8 string */
    SEG_T_STRINGS,   /* array of UTF-8 strings (a lone string is a 1-element array) */
    SEG_T_ATTRIBUTE, /* {"key": K, "value": V} | {"key": K, "exists": bool} */
};

/* The kinds of scope condition; a scope holds, per kind, the parameter
 * (a text[] literal) the scoped subqueries compare with. */
enum seg_scope_kind { SEG_SCOPE_CHANNEL = 0, SEG_SCOPE_DIRECTION, SEG_SCOPE_KEY, SEG_SCOPE_KINDS };

struct seg_scope {
    int param[SEG_SCOPE_KINDS];        /* $N, 0 = not narrowed */
    const cJSON *src[SEG_SCOPE_KINDS]; /* the value of the condition that set it */
};

struct seg_ctx {
    struct seg_query *q;
    int first_param;
    int nconds;
    bool too_big; /* sticky: the SQL outgrew SEG_MAX_SQL */
    struct seg_scope scope;
    char *field;
    size_t fieldsz;
    char *msg;
    size_t msgsz;
};

struct seg_field;
typedef enum cr_err (*seg_gen_fn)(struct seg_ctx *cx, const struct seg_field *r,
                                  const cJSON *value);

/* What the days generator measures (seg_field.kind). */
enum seg_days_kind {
    SEG_DAYS_CONTACT = 0,
    SEG_DAYS_APPOINTMENT,
    SEG_DAYS_INTERACTION,
    SEG_DAYS_VISIT
};

struct seg_field {
    const char *name;
    enum seg_op op;
    enum seg_type type;
    seg_gen_fn gen;
    const char *a; /* generator-specific SQL fragments, see each generator */
    const char *b;
    int kind;                   /* generator-specific: enum seg_days_kind / seg_scope_kind */
    const char *const *allowed; /* for string types: the only values accepted, or NULL */
};

static enum cr_err seg_gen_bool(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v);
static enum cr_err seg_gen_param(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v);
static enum cr_err seg_gen_days(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v);
static enum cr_err seg_gen_attribute(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v);
static enum cr_err seg_gen_scope(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v);
static enum cr_err seg_gen_latest(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v);
static enum cr_err seg_gen_count(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v);

/* The values the schema's CHECK constraints allow. */
static const char *const seg_ix_channels[] = {"sms", "email", "voice", "web", "in_person", NULL};
static const char *const seg_directions[] = {"inbound", "outbound", NULL};
static const char *const seg_appt_statuses[] = {"scheduled", "completed", "cancelled", "no_show",
                                                NULL};

/* The customer's rows of interactions (for the scoped criteria). */
#define SEG_IX_ROWS                                                                                \
    "SELECT 1 FROM interactions i WHERE i.tenant_id = c.tenant_id AND i.customer_id = c.id"

/* The criteria. First row of a name = its default op (flat form).
 * seg_gen_bool:   a = SQL when true, b = SQL when false.
 * seg_gen_param:  SQL is a, then the placeholder, then b.
 * seg_gen_days:   kind = what is measured (enum seg_days_kind).
 * seg_gen_scope:  kind = the scope it sets (enum seg_scope_kind).
 * seg_gen_latest: a = the interactions column whose latest value is compared,
 *                 b = the customers column holding it (used when unscoped).
 * seg_gen_count:  compares c.appointment_count. */
/* clang-format off */
#define SEG_F(name, op, type, gen, a, b) {name, op, type, gen, a, b, 0, NULL}
#define SEG_DAYS(name, op, kind) {name, op, SEG_T_DAYS, seg_gen_days, NULL, NULL, kind, NULL}
#define SEG_SCOPE(name, op, type, kind, allowed)                                                   \
    {name, op, type, seg_gen_scope, NULL, NULL, kind, allowed}
/* clang-format on */
static const struct seg_field seg_fields[] = {
    SEG_F("has_phone", SEG_OP_EQ, SEG_T_BOOL, seg_gen_bool, "c.phone IS NOT NULL",
          "c.phone IS NULL"),
    SEG_F("has_email", SEG_OP_EQ, SEG_T_BOOL, seg_gen_bool, "c.email IS NOT NULL",
          "c.email IS NULL"),
    SEG_F("has_appointment", SEG_OP_EQ, SEG_T_BOOL, seg_gen_bool, "c.appointment_count > 0",
          "c.appointment_count = 0"),
    /* tags: customer has all of them; op in: at least one of them. */
    SEG_F("tags", SEG_OP_CONTAINS, SEG_T_STRINGS, seg_gen_param, "c.tags @> ", "::text[]"),
    SEG_F("tags", SEG_OP_IN, SEG_T_STRINGS, seg_gen_param, "c.tags && ", "::text[]"),
    SEG_F("tags_any", SEG_OP_IN, SEG_T_STRINGS, seg_gen_param, "c.tags && ", "::text[]"),
    SEG_F("timezone", SEG_OP_EQ, SEG_T_STRING, seg_gen_param, "c.timezone = ", "::text"),
    SEG_F("timezone", SEG_OP_IN, SEG_T_STRINGS, seg_gen_param, "c.timezone = ANY(", "::text[])"),
    SEG_F("attribute", SEG_OP_EQ, SEG_T_ATTRIBUTE, seg_gen_attribute, NULL, NULL),
    SEG_DAYS("days_since_last_contact", SEG_OP_GTE, SEG_DAYS_CONTACT),
    SEG_DAYS("days_since_last_contact", SEG_OP_LTE, SEG_DAYS_CONTACT),
    SEG_DAYS("days_since_last_contact", SEG_OP_EQ, SEG_DAYS_CONTACT),
    SEG_DAYS("days_since_last_appointment", SEG_OP_GTE, SEG_DAYS_APPOINTMENT),
    SEG_DAYS("days_since_last_appointment", SEG_OP_LTE, SEG_DAYS_APPOINTMENT),
    SEG_DAYS("days_since_last_appointment", SEG_OP_EQ, SEG_DAYS_APPOINTMENT),
    SEG_F("appointment_count", SEG_OP_GTE, SEG_T_COUNT, seg_gen_count, NULL, NULL),
    SEG_F("appointment_count", SEG_OP_LTE, SEG_T_COUNT, seg_gen_count, NULL, NULL),
    SEG_F("appointment_count", SEG_OP_EQ, SEG_T_COUNT, seg_gen_count, NULL, NULL),
    SEG_F("appointment_count_min", SEG_OP_GTE, SEG_T_COUNT, seg_gen_count, NULL, NULL),
    SEG_F("appointment_count_max", SEG_OP_LTE, SEG_T_COUNT, seg_gen_count, NULL, NULL),
    {"last_appointment_status", SEG_OP_EQ, SEG_T_STRING, seg_gen_param,
     "(c.last_appointment_status = ", "::text) IS TRUE", 0, seg_appt_statuses},
    {"last_appointment_status", SEG_OP_IN, SEG_T_STRINGS, seg_gen_param,
     "(c.last_appointment_status = ANY(", "::text[])) IS TRUE", 0, seg_appt_statuses},
    SEG_SCOPE("channel", SEG_OP_EQ, SEG_T_STRING, SEG_SCOPE_CHANNEL, seg_ix_channels),
    SEG_SCOPE("channel", SEG_OP_IN, SEG_T_STRINGS, SEG_SCOPE_CHANNEL, seg_ix_channels),
    SEG_SCOPE("direction", SEG_OP_EQ, SEG_T_STRING, SEG_SCOPE_DIRECTION, seg_directions),
    SEG_SCOPE("direction", SEG_OP_IN, SEG_T_STRINGS, SEG_SCOPE_DIRECTION, seg_directions),
    SEG_SCOPE("metadata_key", SEG_OP_EQ, SEG_T_STRING, SEG_SCOPE_KEY, NULL),
    SEG_SCOPE("metadata_key", SEG_OP_IN, SEG_T_STRINGS, SEG_SCOPE_KEY, NULL),
    SEG_F("booking_intent", SEG_OP_EQ, SEG_T_BOOL, seg_gen_latest, "booking_intent",
          "last_booking_intent"),
    SEG_F("satisfaction", SEG_OP_GTE, SEG_T_SCORE, seg_gen_latest, "satisfaction", "last_rating"),
    SEG_F("satisfaction", SEG_OP_LTE, SEG_T_SCORE, seg_gen_latest, "satisfaction", "last_rating"),
    SEG_F("satisfaction", SEG_OP_EQ, SEG_T_SCORE, seg_gen_latest, "satisfaction", "last_rating"),
    SEG_F("min_satisfaction", SEG_OP_GTE, SEG_T_SCORE, seg_gen_latest, "satisfaction",
          "last_rating"),
    SEG_F("max_satisfaction", SEG_OP_LTE, SEG_T_SCORE, seg_gen_latest, "satisfaction",
          "last_rating"),
    SEG_DAYS("days_since_last_interaction", SEG_OP_GTE, SEG_DAYS_INTERACTION),
    SEG_DAYS("days_since_last_interaction", SEG_OP_LTE, SEG_DAYS_INTERACTION),
    SEG_DAYS("days_since_last_interaction", SEG_OP_EQ, SEG_DAYS_INTERACTION),
    SEG_DAYS("days_since_visit", SEG_OP_GTE, SEG_DAYS_VISIT),
    SEG_DAYS("days_since_visit", SEG_OP_LTE, SEG_DAYS_VISIT),
    SEG_DAYS("days_since_visit", SEG_OP_EQ, SEG_DAYS_VISIT),
};

#define SEG_NFIELDS (sizeof(seg_fields) / sizeof(seg_fields[0]))

/* The first (default) row for name, or NULL. */
static const struct seg_field *seg_field_find(const char *name)
{
    for (size_t i = 0; i < SEG_NFIELDS; i++) {
        if (strcmp(seg_fields[i].name, name) == 0)
            return &seg_fields[i];
    }
    return NULL;
}

static const struct seg_field *seg_field_find_op(const char *name, enum seg_op op)
{
    for (size_t i = 0; i < SEG_NFIELDS; i++) {
        if (seg_fields[i].op == op && strcmp(seg_fields[i].name, name) == 0)
            return &seg_fields[i];
    }
    return NULL;
}

/* The row for value given without an op: the default, except that an array
 * given to a criterion whose default takes one string picks its "in" row. */
static const struct seg_field *seg_field_for_value(const char *name, const cJSON *value)
{
    const struct seg_field *r = seg_field_find(name);
    if (r && r->type == SEG_T_STRING && cJSON_IsArray(value)) {
        const struct seg_field *in = seg_field_find_op(name, SEG_OP_IN);
        if (in)
            r = in;
    }
    return r;
}

/* ------------------------------------------------------------------------ */
/* Errors, output, parameters                                               */

static enum cr_err seg_fail(struct seg_ctx *cx, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static enum cr_err seg_fail(struct seg_ctx *cx, const char *field, const char *fmt, ...)
{
    if (cx->field && cx->fieldsz)
        snprintf(cx->field, cx->fieldsz, "%s", field);
    if (cx->msg && cx->msgsz) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(cx->msg, cx->msgsz, fmt, ap);
        va_end(ap);
    }
    return CR_EINVAL;
}

/* SQL output errors are sticky and checked once at the end: the only one
 * possible is exceeding SEG_MAX_SQL. */
static void seg_puts(struct seg_ctx *cx, const char *s)
{
    if (!cx->too_big && buf_puts(&cx->q->sql, s) != CR_OK)
        cx->too_big = true;
}

static void seg_placeholder(struct seg_ctx *cx, int num)
{
    if (!cx->too_big && buf_printf(&cx->q->sql, "$%d", num) != CR_OK)
        cx->too_big = true;
}

/* Appends value (taken) as the next parameter; its number goes to *num. */
static enum cr_err seg_param_take(struct seg_ctx *cx, const char *field, char *value, int *num)
{
    struct seg_query *q = cx->q;
    *num = 0;
    if (q->nparams >= SEG_MAX_PARAMS) {
        free(value);
        return seg_fail(cx, field, "criteria use too many values (at most %d)", SEG_MAX_PARAMS);
    }
    q->params[q->nparams] = value;
    *num = cx->first_param + q->nparams;
    q->nparams++;
    return CR_OK;
}

/* True when s is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF);
 * PostgreSQL rejects anything else, and bad input must be a 422, not a
 * database error. */
static bool seg_utf8_ok(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        int n;
        unsigned min;
        if (c < 0x80) {
            p++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1, min = 0x80, c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2, min = 0x800, c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3, min = 0x10000, c &= 0x07;
        } else {
            return false;
        }
        for (int i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return false;
            c = (c << 6) | (p[i] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return false;
        p += n + 1;
    }
    return true;
}

/* Appends one array element, double-quoted with '"' and '\' escaped. */
static enum cr_err seg_array_element(struct buf *b, const char *s, bool first)
{
    enum cr_err e = first ? CR_OK : buf_putc(b, ',');
    if (e == CR_OK)
        e = buf_putc(b, '"');
    for (; e == CR_OK && *s; s++) {
        if (*s == '"' || *s == '\\')
            e = buf_putc(b, '\\');
        if (e == CR_OK)
            e = buf_putc(b, *s);
    }
    if (e == CR_OK)
        e = buf_putc(b, '"');
    return e;
}

/* Builds the PostgreSQL array literal of v (an array of strings, or one
 * string): every element double-quoted, with '"' and '\' backslash-escaped,
 * so commas, braces, spaces and the word NULL are plain data. */
static enum cr_err seg_array_literal(struct seg_ctx *cx, const char *field, const cJSON *v,
                                     char **out)
{
    struct buf b;
    enum cr_err e;
    const cJSON *el;
    bool first = true;

    *out = NULL;
    buf_init(&b, SEG_MAX_PARAM_BYTES);
    e = buf_putc(&b, '{');
    if (cJSON_IsString(v)) {
        if (e == CR_OK)
            e = seg_array_element(&b, v->valuestring, true);
    } else {
        cJSON_ArrayForEach(el, v)
        {
            if (e == CR_OK)
                e = seg_array_element(&b, el->valuestring, first);
            first = false;
        }
    }
    if (e == CR_OK)
        e = buf_putc(&b, '}');
    if (e != CR_OK) {
        e = seg_fail(cx, field, "%s is too long (at most %d bytes)", field, SEG_MAX_PARAM_BYTES);
        goto out;
    }
    *out = buf_take(&b);
out:
    buf_cleanup(&b);
    return e;
}

/* ------------------------------------------------------------------------ */
/* Type checks                                                              */

static bool seg_is_string_ok(const cJSON *v)
{
    return cJSON_IsString(v) && v->valuestring && seg_utf8_ok(v->valuestring);
}

/* An integer lo..hi (lo is 0 or 1); the message says which rule failed. */
static enum cr_err seg_check_int(struct seg_ctx *cx, const char *n, const cJSON *v, int lo, int hi)
{
    double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
    bool integral = d >= 0 && (d > hi || (double)(int)d == d);
    if (lo > 0 && !(integral && d >= lo && d <= hi))
        return seg_fail(cx, n, "%s must be an integer from %d to %d", n, lo, hi);
    if (!integral)
        return seg_fail(cx, n, "%s must be a non-negative integer", n);
    if (d > hi)
        return seg_fail(cx, n, "%s must be at most %d", n, hi);
    return CR_OK;
}

/* When r restricts its values, s must be one of them. */
static enum cr_err seg_check_allowed(struct seg_ctx *cx, const struct seg_field *r, const char *s)
{
    char list[96] = "";
    size_t len = 0;

    if (!r->allowed)
        return CR_OK;
    for (const char *const *a = r->allowed; *a; a++) {
        if (strcmp(*a, s) == 0)
            return CR_OK;
        int w = snprintf(list + len, sizeof(list) - len, "%s%s", len ? ", " : "", *a);
        if (w > 0 && (size_t)w < sizeof(list) - len)
            len += (size_t)w;
    }
    return seg_fail(cx, r->name, "%s must be one of %s", r->name, list);
}

static enum cr_err seg_check_type(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v)
{
    const char *n = r->name;
    const cJSON *el;

    switch (r->type) {
    case SEG_T_BOOL:
        if (!cJSON_IsBool(v))
            return seg_fail(cx, n, "%s must be true or false", n);
        return CR_OK;
    case SEG_T_DAYS:
        return seg_check_int(cx, n, v, 0, SEG_MAX_DAYS);
    case SEG_T_COUNT:
        return seg_check_int(cx, n, v, 0, SEG_MAX_COUNT);
    case SEG_T_SCORE:
        return seg_check_int(cx, n, v, 1, 5);
    case SEG_T_STRING:
        if (!seg_is_string_ok(v) || v->valuestring[0] == '\0')
            return seg_fail(cx, n, "%s must be a non-empty string", n);
        return seg_check_allowed(cx, r, v->valuestring);
    case SEG_T_STRINGS:
        if (cJSON_IsString(v)) {
            if (!seg_is_string_ok(v))
                return seg_fail(cx, n, "%s must be an array of strings", n);
            return seg_check_allowed(cx, r, v->valuestring);
        }
        if (!cJSON_IsArray(v))
            return seg_fail(cx, n, "%s must be an array of strings", n);
        cJSON_ArrayForEach(el, v)
        {
            if (!seg_is_string_ok(el))
                return seg_fail(cx, n, "%s must be an array of strings", n);
            enum cr_err e = seg_check_allowed(cx, r, el->valuestring);
            if (e != CR_OK)
                return e;
        }
        return CR_OK;
    case SEG_T_ATTRIBUTE:
        if (!cJSON_IsObject(v))
            return seg_fail(cx, n,
                            "%s must be an object {\"key\": ..., \"value\": ...} or "
                            "{\"key\": ..., \"exists\": true|false}",
                            n);
        return CR_OK; /* the members are checked by seg_gen_attribute */
    }
    return seg_fail(cx, n, "%s has an unsupported type", n);
}

/* ------------------------------------------------------------------------ */
/* Generators on the customers row                                          */

static enum cr_err seg_gen_bool(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v)
{
    seg_puts(cx, cJSON_IsTrue(v) ? r->a : r->b);
    return CR_OK;
}

/* One value (string or array literal) as a text parameter: a $N b. */
static enum cr_err seg_gen_param(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v)
{
    char *val = NULL;
    int num = 0;
    enum cr_err e;

    if (r->type == SEG_T_STRINGS) {
        e = seg_array_literal(cx, r->name, v, &val);
        if (e != CR_OK)
            return e;
    } else {
        val = xstrdup(v->valuestring);
    }
    e = seg_param_take(cx, r->name, val, &num);
    if (e != CR_OK)
        return e;
    seg_puts(cx, r->a);
    seg_placeholder(cx, num);
    seg_puts(cx, r->b);
    return CR_OK;
}

/* An integer criterion value as the next parameter. */
static enum cr_err seg_int_param(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v,
                                 int *num)
{
    return seg_param_take(cx, r->name, xasprintf("%d", (int)v->valuedouble), num);
}

/* ------------------------------------------------------------------------ */
/* Interaction scope                                                        */

/* True when a channel, direction or metadata_key condition narrows s. */
static bool seg_scoped(const struct seg_scope *s)
{
    for (int k = 0; k < SEG_SCOPE_KINDS; k++) {
        if (s->param[k])
            return true;
    }
    return false;
}

/* Appends the scope's restrictions on interactions aliased alias ("i" or
 * "j"). A visit (days_since_visit) defaults to the web channel when neither a
 * channel nor a metadata key narrows the scope. */
static void seg_scope_sql(struct seg_ctx *cx, const struct seg_scope *s, const char *alias,
                          bool visit)
{
    static const char *const frag[SEG_SCOPE_KINDS][2] = {
        [SEG_SCOPE_CHANNEL] = {".channel = ANY(", "::text[])"},
        [SEG_SCOPE_DIRECTION] = {".direction = ANY(", "::text[])"},
        [SEG_SCOPE_KEY] = {".metadata ?| ", "::text[]"},
    };
    for (int k = 0; k < SEG_SCOPE_KINDS; k++) {
        if (s->param[k]) {
            seg_puts(cx, " AND ");
            seg_puts(cx, alias);
            seg_puts(cx, frag[k][0]);
            seg_placeholder(cx, s->param[k]);
            seg_puts(cx, frag[k][1]);
        }
    }
    if (visit && !s->param[SEG_SCOPE_CHANNEL] && !s->param[SEG_SCOPE_KEY]) {
        seg_puts(cx, " AND ");
        seg_puts(cx, alias);
        seg_puts(cx, ".channel = 'web'");
    }
}

/* The value of a scope condition (one string or an array) as a text[]
 * parameter. */
static enum cr_err seg_scope_param(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v,
                                   int *num)
{
    char *lit = NULL;
    enum cr_err e = seg_array_literal(cx, r->name, v, &lit);
    if (e != CR_OK)
        return e;
    return seg_param_take(cx, r->name, lit, num);
}

/* channel / direction / metadata_key: the customer has an interaction in
 * scope, where this condition's own kind is narrowed by its own value (its
 * parameter is shared with the siblings it scopes, see seg_scope_level). */
static enum cr_err seg_gen_scope(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v)
{
    struct seg_scope eff = cx->scope;
    int k = r->kind;

    if (eff.src[k] != v) {
        enum cr_err e = seg_scope_param(cx, r, v, &eff.param[k]);
        if (e != CR_OK)
            return e;
        eff.src[k] = v;
    }
    seg_puts(cx, "EXISTS (" SEG_IX_ROWS);
    seg_scope_sql(cx, &eff, "i", false);
    seg_puts(cx, ")");
    return CR_OK;
}

/* booking_intent / satisfaction: the latest in-scope interaction among
 * those where column r->a is not NULL (by occurred_at, ties: highest id) has
 * the wanted value. None: no match.
 * Unscoped, that value is the customers column r->b (migrations/0005), and
 * the test is "IS TRUE" / "IS FALSE" of it (a NULL column: no match).
 * Scoped, it is written as "some in-scope row i has the value, and no later
 * in-scope row j has a non-NULL one", which PostgreSQL plans as an anti-join
 * with the base tables' statistics (for satisfaction, a partial index of
 * migrations/0003 makes both sides index-only). */
static enum cr_err seg_gen_latest(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v)
{
    int num = 0;
    bool scoped = seg_scoped(&cx->scope);
    if (r->type == SEG_T_SCORE) {
        enum cr_err e = seg_int_param(cx, r, v, &num);
        if (e != CR_OK)
            return e;
    }
    const char *cmp = r->op == SEG_OP_GTE ? " >= " : r->op == SEG_OP_LTE ? " <= " : " = ";
    if (!scoped) {
        if (r->type == SEG_T_BOOL) {
            seg_puts(cx, "c.");
            seg_puts(cx, r->b);
            seg_puts(cx, cJSON_IsTrue(v) ? " IS TRUE" : " IS FALSE");
        } else {
            seg_puts(cx, "(c.");
            seg_puts(cx, r->b);
            seg_puts(cx, cmp);
            seg_placeholder(cx, num);
            seg_puts(cx, "::int) IS TRUE");
        }
        return CR_OK;
    }
    seg_puts(cx, "EXISTS (" SEG_IX_ROWS);
    seg_scope_sql(cx, &cx->scope, "i", false);
    if (r->type == SEG_T_BOOL) {
        seg_puts(cx, cJSON_IsTrue(v) ? " AND i." : " AND NOT i.");
        seg_puts(cx, r->a);
    } else {
        seg_puts(cx, " AND i.");
        seg_puts(cx, r->a);
        seg_puts(cx, cmp);
        seg_placeholder(cx, num);
        seg_puts(cx, "::int");
    }
    seg_puts(cx,
             " AND NOT EXISTS (SELECT 1 FROM interactions j WHERE j.tenant_id = i.tenant_id AND "
             "j.customer_id = i.customer_id");
    seg_scope_sql(cx, &cx->scope, "j", false);
    seg_puts(cx, " AND j.");
    seg_puts(cx, r->a);
    seg_puts(cx, " IS NOT NULL AND (j.occurred_at, j.id) > (i.occurred_at, i.id)))");
    return CR_OK;
}

/* ------------------------------------------------------------------------ */
/* Days since, counts                                                       */

/* now() - N days, or now() - (N+1) days. */
static void seg_cutoff(struct seg_ctx *cx, int num, bool plus_one)
{
    seg_puts(cx, "now() - make_interval(days => ");
    seg_placeholder(cx, num);
    seg_puts(cx, plus_one ? "::int + 1)" : "::int)");
}

/* "Some X is newer than the cut-off" (some) or "no X is" (!some), for what
 * r measures. Two-valued.
 * - Contact and appointment, and unscoped interactions: on customers
 *   columns, each the time of its most recent X or NULL for none (contact:
 *   last_contact_at and last_interaction_at; appointment:
 *   last_appointment_at and last_scheduled_at; interaction:
 *   last_interaction_at). "Some": (c.x > cut OR c.y > cut) IS TRUE; "none":
 *   every column NULL or <= cut. Written so, the planner estimates them from
 *   the columns' statistics.
 * - Scoped interactions and visits: [NOT] EXISTS of an in-scope interaction
 *   newer than the cut-off (a range scan of migrations/0003's
 *   interactions_tenant_time when ANDed at the top). */
static void seg_newer(struct seg_ctx *cx, const struct seg_field *r, bool some, int num,
                      bool plus_one)
{
    const char *cols[2] = {NULL, NULL};

    if (r->kind == SEG_DAYS_CONTACT) {
        cols[0] = "last_contact_at";
        cols[1] = "last_interaction_at";
    } else if (r->kind == SEG_DAYS_APPOINTMENT) {
        cols[0] = "last_appointment_at";
        cols[1] = "last_scheduled_at";
    } else if (r->kind == SEG_DAYS_INTERACTION && !seg_scoped(&cx->scope)) {
        cols[0] = "last_interaction_at";
    }

    if (cols[0]) {
        if (some || cols[1])
            seg_puts(cx, "(");
        for (int k = 0; k < 2 && cols[k]; k++) {
            if (k)
                seg_puts(cx, some ? " OR " : " AND ");
            if (some) { /* c.x > cut */
                seg_puts(cx, "c.");
                seg_puts(cx, cols[k]);
                seg_puts(cx, " > ");
                seg_cutoff(cx, num, plus_one);
            } else { /* (c.x IS NULL OR c.x <= cut) */
                seg_puts(cx, "(c.");
                seg_puts(cx, cols[k]);
                seg_puts(cx, " IS NULL OR c.");
                seg_puts(cx, cols[k]);
                seg_puts(cx, " <= ");
                seg_cutoff(cx, num, plus_one);
                seg_puts(cx, ")");
            }
        }
        if (some)
            seg_puts(cx, ") IS TRUE");
        else if (cols[1])
            seg_puts(cx, ")");
        return;
    }
    seg_puts(cx, some ? "EXISTS (" SEG_IX_ROWS : "NOT EXISTS (" SEG_IX_ROWS);
    seg_scope_sql(cx, &cx->scope, "i", r->kind == SEG_DAYS_VISIT);
    seg_puts(cx, " AND i.occurred_at > ");
    seg_cutoff(cx, num, plus_one);
    seg_puts(cx, ")");
}

/* Days since the most recent X, in whole days (see DAYS at the top):
 *   gte N: no X newer than now() - N days (no X at all matches);
 *   lte N: some X newer than now() - (N+1) days;
 *   eq N:  both. */
static enum cr_err seg_gen_days(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v)
{
    int num = 0;
    enum cr_err e = seg_int_param(cx, r, v, &num);
    if (e != CR_OK)
        return e;
    switch (r->op) {
    case SEG_OP_GTE:
        seg_newer(cx, r, false, num, false);
        break;
    case SEG_OP_LTE:
        seg_newer(cx, r, true, num, true);
        break;
    default: /* SEG_OP_EQ */
        seg_puts(cx, "(");
        seg_newer(cx, r, false, num, false);
        seg_puts(cx, " AND ");
        seg_newer(cx, r, true, num, true);
        seg_puts(cx, ")");
        break;
    }
    return CR_OK;
}

/* appointment_count: c.appointment_count (migrations/0005, the number of
 * appointment rows) compared with N; gte 0 is TRUE, with no parameter, as
 * PostgreSQL cannot type an unused one. */
static enum cr_err seg_gen_count(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v)
{
    int num = 0;

    if (r->op == SEG_OP_GTE && (int)v->valuedouble == 0) {
        seg_puts(cx, "TRUE");
        return CR_OK;
    }
    enum cr_err e = seg_int_param(cx, r, v, &num);
    if (e != CR_OK)
        return e;
    seg_puts(cx, r->op == SEG_OP_GTE   ? "c.appointment_count >= "
                 : r->op == SEG_OP_LTE ? "c.appointment_count <= "
                                       : "c.appointment_count = ");
    seg_placeholder(cx, num);
    seg_puts(cx, "::int");
    return CR_OK;
}

/* A value allowed inside {"key": K, "value": V}: a string, a finite number,
 * a boolean, or a flat array of those (containment: the stored array has
 * all of them). */
static bool seg_attr_value_ok(const cJSON *v, bool allow_array)
{
    if (cJSON_IsString(v))
        return seg_is_string_ok(v);
    if (cJSON_IsNumber(v)) /* rejects inf/nan, which cJSON would print as null */
        return v->valuedouble - v->valuedouble == 0;
    if (cJSON_IsBool(v))
        return true;
    if (allow_array && cJSON_IsArray(v)) {
        const cJSON *el;
        cJSON_ArrayForEach(el, v)
        {
            if (!seg_attr_value_ok(el, false))
                return false;
        }
        return true;
    }
    return false;
}

/* attribute {"key": K, "value": V} -> c.attributes @> $N::jsonb with the
 * parameter {K: V} serialised by cJSON (JSON containment: K's value equals V,
 * or for an array V, K's stored array holds every element of V);
 * {"key": K, "exists": true|false} -> [NOT] c.attributes ? $N::text. */
static enum cr_err seg_gen_attribute(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v)
{
    const char *n = r->name;
    const cJSON *key = NULL, *value = NULL, *exists = NULL, *it;
    cJSON *obj = NULL;
    char *printed = NULL;
    int num = 0;
    enum cr_err e = CR_OK;

    cJSON_ArrayForEach(it, v)
    {
        if (strcmp(it->string, "key") == 0)
            key = it;
        else if (strcmp(it->string, "value") == 0)
            value = it;
        else if (strcmp(it->string, "exists") == 0)
            exists = it;
        else
            return seg_fail(cx, n, "%s: unexpected member \"%s\" (expected key, value or exists)",
                            n, it->string);
    }
    if (!seg_is_string_ok(key) || key->valuestring[0] == '\0')
        return seg_fail(cx, n, "%s.key must be a non-empty string", n);
    if ((value != NULL) == (exists != NULL))
        return seg_fail(cx, n, "%s needs exactly one of \"value\" or \"exists\"", n);

    if (exists) {
        if (!cJSON_IsBool(exists))
            return seg_fail(cx, n, "%s.exists must be true or false", n);
        e = seg_param_take(cx, n, xstrdup(key->valuestring), &num);
        if (e != CR_OK)
            return e;
        seg_puts(cx, cJSON_IsTrue(exists) ? "c.attributes ? " : "NOT c.attributes ? ");
        seg_placeholder(cx, num);
        seg_puts(cx, "::text");
        return CR_OK;
    }

    if (!seg_attr_value_ok(value, true))
        return seg_fail(cx, n, "%s.value must be a string, number, boolean or an array of those",
                        n);
    obj = cJSON_CreateObject();
    cJSON *dup = cJSON_Duplicate(value, true);
    if (!obj || !dup || !cJSON_AddItemToObject(obj, key->valuestring, dup)) {
        cJSON_Delete(dup);
        e = CR_ENOMEM;
        goto out;
    }
    printed = cJSON_PrintUnformatted(obj);
    if (!printed) {
        e = CR_ENOMEM;
        goto out;
    }
    e = seg_param_take(cx, n, xstrdup(printed), &num);
    if (e != CR_OK)
        goto out;
    seg_puts(cx, "c.attributes @> ");
    seg_placeholder(cx, num);
    seg_puts(cx, "::jsonb");
out:
    cJSON_free(printed);
    cJSON_Delete(obj);
    return e;
}

/* ------------------------------------------------------------------------ */
/* The tree walk                                                            */

static enum cr_err seg_node(struct seg_ctx *cx, const cJSON *node, int depth);

/* Members that are not criteria names. */
static bool seg_is_keyword(const char *k)
{
    static const char *const kw[] = {"all", "any", "not", "field", "op", "value"};
    for (size_t i = 0; i < sizeof(kw) / sizeof(kw[0]); i++) {
        if (strcmp(kw[i], k) == 0)
            return true;
    }
    return false;
}

static enum cr_err seg_apply(struct seg_ctx *cx, const struct seg_field *r, const cJSON *value)
{
    if (++cx->nconds > SEG_MAX_CONDITIONS)
        return seg_fail(cx, r->name, "criteria have too many conditions (at most %d)",
                        SEG_MAX_CONDITIONS);
    enum cr_err e = seg_check_type(cx, r, value);
    if (e != CR_OK)
        return e;
    return r->gen(cx, r, value);
}

static enum cr_err seg_too_deep(struct seg_ctx *cx, const char *key)
{
    return seg_fail(cx, key, "criteria are nested too deeply (at most %d levels)", SEG_MAX_DEPTH);
}

/* The members of a {"field", "op", "value"} leaf (the last of duplicates),
 * and the first unexpected member. */
struct seg_leafp {
    const cJSON *f, *op, *value, *extra;
};

static void seg_leaf_parse(const cJSON *node, struct seg_leafp *p)
{
    const cJSON *it;
    memset(p, 0, sizeof(*p));
    cJSON_ArrayForEach(it, node)
    {
        if (strcmp(it->string, "field") == 0)
            p->f = it;
        else if (strcmp(it->string, "op") == 0)
            p->op = it;
        else if (strcmp(it->string, "value") == 0)
            p->value = it;
        else if (!p->extra)
            p->extra = it;
    }
}

/* The op index of a leaf's "op" member, or SEG_OP_COUNT when invalid. */
static int seg_op_parse(const cJSON *op)
{
    int o = SEG_OP_COUNT;
    if (cJSON_IsString(op)) {
        for (o = 0; o < SEG_OP_COUNT; o++) {
            if (strcmp(seg_op_names[o], op->valuestring) == 0)
                break;
        }
    }
    return o;
}

/* The row a well-formed leaf names, or NULL (no error reported: the leaf is
 * compiled later, which reports it). */
static const struct seg_field *seg_leaf_row_quiet(const struct seg_leafp *p)
{
    if (p->extra || !p->value || !cJSON_IsString(p->f) || !p->f->valuestring)
        return NULL;
    if (!p->op)
        return seg_field_for_value(p->f->valuestring, p->value);
    int o = seg_op_parse(p->op);
    return o == SEG_OP_COUNT ? NULL : seg_field_find_op(p->f->valuestring, (enum seg_op)o);
}

/* {"field": F, "op": OP, "value": V}; op defaults to F's default op. */
static enum cr_err seg_leaf(struct seg_ctx *cx, const cJSON *node)
{
    struct seg_leafp p;
    const struct seg_field *r;

    seg_leaf_parse(node, &p);
    if (p.extra)
        return seg_fail(cx, p.extra->string,
                        "unexpected \"%s\" in a {\"field\", \"op\", \"value\"} condition",
                        p.extra->string);
    if (!cJSON_IsString(p.f) || !p.f->valuestring || p.f->valuestring[0] == '\0')
        return seg_fail(cx, "field", "field must be the name of a criterion");
    const char *name = p.f->valuestring;
    r = seg_field_find(name);
    if (!r)
        return seg_fail(cx, name, "unknown criterion \"%s\"", name);

    if (p.op) {
        int o = seg_op_parse(p.op);
        if (o == SEG_OP_COUNT)
            return seg_fail(cx, "op", "op must be one of eq, gte, lte, contains, in");
        r = seg_field_find_op(name, (enum seg_op)o);
        if (!r) {
            char supported[64] = "";
            size_t len = 0;
            for (size_t i = 0; i < SEG_NFIELDS; i++) {
                if (strcmp(seg_fields[i].name, name) != 0)
                    continue;
                int w = snprintf(supported + len, sizeof(supported) - len, "%s%s", len ? ", " : "",
                                 seg_op_names[seg_fields[i].op]);
                if (w > 0 && (size_t)w < sizeof(supported) - len)
                    len += (size_t)w;
            }
            return seg_fail(cx, "op", "op \"%s\" is not supported for %s (supported: %s)",
                            seg_op_names[o], name, supported);
        }
    }
    if (!p.value)
        return seg_fail(cx, name, "%s needs a \"value\"", name);
    if (!p.op)
        r = seg_field_for_value(name, p.value);
    return seg_apply(cx, r, p.value);
}

/* Sets the scope of one level: the scope conditions among an object's
 * members (is_list false) or among an "all" list's elements, written there
 * as a leaf or as an object with that one member. Each gets its parameter
 * now, so that the siblings compiled before it can already use it. */
static enum cr_err seg_scope_level(struct seg_ctx *cx, const cJSON *node, bool is_list)
{
    unsigned seen = 0;
    const cJSON *it;

    cJSON_ArrayForEach(it, node)
    {
        const struct seg_field *r = NULL;
        const cJSON *v = NULL;
        if (!is_list) {
            if (!seg_is_keyword(it->string)) {
                r = seg_field_for_value(it->string, it);
                v = it;
            }
        } else if (cJSON_IsObject(it) && cJSON_GetObjectItemCaseSensitive(it, "field")) {
            struct seg_leafp p;
            seg_leaf_parse(it, &p);
            r = seg_leaf_row_quiet(&p);
            v = p.value;
        } else if (cJSON_IsObject(it) && cJSON_GetArraySize(it) == 1 &&
                   !seg_is_keyword(it->child->string)) {
            r = seg_field_for_value(it->child->string, it->child);
            v = it->child;
        }
        if (!r || r->gen != seg_gen_scope)
            continue;

        int k = r->kind;
        if (cx->scope.src[k] == v) { /* {"channel": X} alone in the list that set it */
            seen |= 1u << k;
            continue;
        }
        if (seen & (1u << k))
            return seg_fail(cx, r->name,
                            "%s is given twice at one level (use op \"in\" for several values)",
                            r->name);
        seen |= 1u << k;
        enum cr_err e = seg_check_type(cx, r, v);
        if (e == CR_OK)
            e = seg_scope_param(cx, r, v, &cx->scope.param[k]);
        if (e != CR_OK)
            return e;
        cx->scope.src[k] = v;
    }
    return CR_OK;
}

/* "all" / "any": a list of nodes joined by AND / OR; empty = TRUE / FALSE. */
static enum cr_err seg_list(struct seg_ctx *cx, const cJSON *list, int depth, bool is_all)
{
    const char *key = is_all ? "all" : "any";
    const cJSON *el;
    int n = 0;
    struct seg_scope saved = cx->scope;
    enum cr_err e = CR_OK;

    if (!cJSON_IsArray(list))
        return seg_fail(cx, key, "%s must be an array of conditions", key);
    if (depth + 1 > SEG_MAX_DEPTH)
        return seg_too_deep(cx, key);
    cJSON_ArrayForEach(el, list)
    {
        if (!cJSON_IsObject(el))
            return seg_fail(cx, key, "%s must be an array of conditions", key);
    }
    int count = cJSON_GetArraySize(list);
    if (count == 0) {
        seg_puts(cx, is_all ? "TRUE" : "FALSE");
        return CR_OK;
    }
    if (is_all)
        e = seg_scope_level(cx, list, true);
    if (count > 1)
        seg_puts(cx, "(");
    cJSON_ArrayForEach(el, list)
    {
        if (e != CR_OK)
            break;
        if (n++)
            seg_puts(cx, is_all ? " AND " : " OR ");
        e = seg_node(cx, el, depth + 1);
    }
    if (count > 1)
        seg_puts(cx, ")");
    cx->scope = saved;
    return e;
}

/* One member of a flat object: a combinator or a criterion. */
static enum cr_err seg_member(struct seg_ctx *cx, const cJSON *item, int depth)
{
    const char *k = item->string;

    if (strcmp(k, "all") == 0 || strcmp(k, "any") == 0)
        return seg_list(cx, item, depth, k[1] == 'l');
    if (strcmp(k, "not") == 0) {
        if (!cJSON_IsObject(item))
            return seg_fail(cx, k, "not must be a condition object");
        if (depth + 1 > SEG_MAX_DEPTH)
            return seg_too_deep(cx, k);
        seg_puts(cx, "NOT ");
        return seg_node(cx, item, depth + 1);
    }
    if (strcmp(k, "op") == 0 || strcmp(k, "value") == 0)
        return seg_fail(cx, k, "\"%s\" is only allowed together with \"field\"", k);
    const struct seg_field *r = seg_field_for_value(k, item);
    if (!r)
        return seg_fail(cx, k, "unknown criterion \"%s\"", k);
    return seg_apply(cx, r, item);
}

/* An object: a {"field", ...} leaf, or the AND of its members (empty = TRUE). */
static enum cr_err seg_node(struct seg_ctx *cx, const cJSON *node, int depth)
{
    const cJSON *item;
    int n = 0;
    struct seg_scope saved = cx->scope;
    enum cr_err e;

    if (cJSON_GetObjectItemCaseSensitive(node, "field"))
        return seg_leaf(cx, node);
    int count = cJSON_GetArraySize(node);
    if (count == 0) {
        seg_puts(cx, "TRUE");
        return CR_OK;
    }
    e = seg_scope_level(cx, node, false);
    if (count > 1)
        seg_puts(cx, "(");
    cJSON_ArrayForEach(item, node)
    {
        if (e != CR_OK)
            break;
        if (n++)
            seg_puts(cx, " AND ");
        e = seg_member(cx, item, depth);
    }
    if (count > 1)
        seg_puts(cx, ")");
    cx->scope = saved;
    return e;
}

/* ------------------------------------------------------------------------ */
/* Channels and the public entry points                                     */

/* Reachable on a channel: has the address, not opted out, address not
 * suppressed for the tenant and channel. */
#define SEG_REACHABLE(address_col, opt_out_col, channel, suppressed_address)                       \
    address_col " IS NOT NULL AND NOT " opt_out_col " AND "                                        \
                "NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.tenant_id = c.tenant_id AND "    \
                "s.channel = '" channel "' AND s.address = " suppressed_address ")"

static const struct {
    const char *name;
    const char *reachable;
} seg_channels[] = {
    [SEG_CHANNEL_SMS] = {"sms", SEG_REACHABLE("c.phone", "c.sms_opt_out", "sms", "c.phone")},
    /* Email suppressions are stored lower-cased. */
    [SEG_CHANNEL_EMAIL] = {"email",
                           SEG_REACHABLE("c.email", "c.email_opt_out", "email", "lower(c.email)")},
    [SEG_CHANNEL_VOICE] = {"voice",
                           SEG_REACHABLE("c.phone", "c.voice_opt_out", "voice", "c.phone")},
};

#define SEG_NCHANNELS (sizeof(seg_channels) / sizeof(seg_channels[0]))

enum cr_err seg_channel_parse(const char *s, enum seg_channel *out)
{
    for (size_t i = 0; s && i < SEG_NCHANNELS; i++) {
        if (strcmp(seg_channels[i].name, s) == 0) {
            *out = (enum seg_channel)i;
            return CR_OK;
        }
    }
    return CR_EINVAL;
}

static enum cr_err compile(const cJSON *criteria, enum seg_channel channel, bool reachable,
                           int first_param, struct seg_query *out, char *field, size_t fieldsz,
                           char *msg, size_t msgsz)
{
    struct seg_ctx cx = {.q = out,
                         .first_param = first_param,
                         .field = field,
                         .fieldsz = fieldsz,
                         .msg = msg,
                         .msgsz = msgsz};
    enum cr_err e = CR_OK;

    buf_init(&out->sql, SEG_MAX_SQL);
    out->nparams = 0;
    memset(out->params, 0, sizeof(out->params));
    if (field && fieldsz)
        field[0] = '\0';
    if (msg && msgsz)
        msg[0] = '\0';

    if (first_param < 1 || first_param > SEG_MAX_FIRST_PARAM)
        return seg_fail(&cx, "first_param", "first_param must be between 1 and %d",
                        SEG_MAX_FIRST_PARAM);
    if ((unsigned)channel >= SEG_NCHANNELS)
        return seg_fail(&cx, "channel", "channel must be sms, email or voice");
    if (criteria && !cJSON_IsObject(criteria))
        return seg_fail(&cx, "criteria", "criteria must be a JSON object");

    /* {} (or no criteria) selects everyone (reachable). */
    if (!reachable)
        seg_puts(&cx, "TRUE");
    if (criteria && cJSON_GetArraySize(criteria) > 0) {
        if (!reachable)
            seg_puts(&cx, " AND ");
        e = seg_node(&cx, criteria, 0);
        if (e != CR_OK)
            return e;
        if (reachable)
            seg_puts(&cx, " AND ");
    }
    if (reachable)
        seg_puts(&cx, seg_channels[channel].reachable);
    if (cx.too_big)
        return seg_fail(&cx, "criteria", "criteria are too large (at most %d bytes of SQL)",
                        SEG_MAX_SQL);
    return CR_OK;
}

enum cr_err seg_compile(const cJSON *criteria, enum seg_channel channel, int first_param,
                        struct seg_query *out, char *field, size_t fieldsz, char *msg, size_t msgsz)
{
    return compile(criteria, channel, true, first_param, out, field, fieldsz, msg, msgsz);
}

enum cr_err seg_compile_matching(const cJSON *criteria, enum seg_channel channel, int first_param,
                                 struct seg_query *out, char *field, size_t fieldsz, char *msg,
                                 size_t msgsz)
{
    return compile(criteria, channel, false, first_param, out, field, fieldsz, msg, msgsz);
}

void seg_query_cleanup(struct seg_query *q)
{
    if (!q)
        return;
    buf_cleanup(&q->sql);
    for (int i = 0; i < SEG_MAX_PARAMS; i++) {
        free(q->params[i]);
        q->params[i] = NULL;
    }
    q->nparams = 0;
}
