/* segment.c - compiles segment criteria (JSON) into a parameterised SQL
 * boolean expression over "customers c".
 *
 * Every criterion is a row of seg_fields: (name, op, JSON type, generator,
 * two SQL fragments). The first row of a name gives its default op, used by
 * the flat form {"name": value}; the tree form {"field", "op", "value"} picks
 * the row for (field, op). Adding a criterion is adding a row (and, when no
 * existing generator fits, a generator). The JSON type is checked centrally
 * before a generator runs, so generators only ever see well-typed values.
 *
 * Safety rules the generators keep:
 * - No input value is ever written into the SQL text: values become text
 *   parameters ($N, cast in SQL); input only chooses among constant fragments.
 * - Every generated condition is two-valued (never NULL), so "not" is exact:
 *   NOT of a condition selects precisely the customers it did not select.
 * - Every condition is a "primary": a single predicate whose operators bind
 *   tighter than NOT, or a parenthesised expression. So "NOT x", "x AND y"
 *   and "x OR y" can be written without re-parenthesising.
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
#define SEG_MAX_FIRST_PARAM (65535 - SEG_MAX_PARAMS) /* PostgreSQL allows 65535 params */

/* ------------------------------------------------------------------------ */
/* Operators, types, the field table                                        */

enum seg_op { SEG_OP_EQ = 0, SEG_OP_GTE, SEG_OP_LTE, SEG_OP_CONTAINS, SEG_OP_IN, SEG_OP_COUNT };

static const char *const seg_op_names[SEG_OP_COUNT] = {"eq", "gte", "lte", "contains", "in"};

enum seg_type {
    SEG_T_BOOL,      /* true | false */
    SEG_T_DAYS,      /* integer 0..SEG_MAX_DAYS */
    SEG_T_STRING,    /* non-empty UTF-8 string */
    SEG_T_STRINGS,   /* array of UTF-8 strings (a lone string is a 1-element array) */
    SEG_T_ATTRIBUTE, /* {"key": K, "value": V} | {"key": K, "exists": bool} */
};

struct seg_ctx {
    struct seg_query *q;
    int first_param;
    int nconds;
    bool too_big; /* sticky: the SQL outgrew SEG_MAX_SQL */
    char *field;
    size_t fieldsz;
    char *msg;
    size_t msgsz;
};

struct seg_field;
typedef enum cr_err (*seg_gen_fn)(struct seg_ctx *cx, const struct seg_field *r,
                                  const cJSON *value);

struct seg_field {
    const char *name;
    enum seg_op op;
    enum seg_type type;
    seg_gen_fn gen;
    const char *a; /* generator-specific SQL fragments, see each generator */
    const char *b;
};

static enum cr_err seg_gen_bool(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v);
static enum cr_err seg_gen_param(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v);
static enum cr_err seg_gen_days(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v);
static enum cr_err seg_gen_attribute(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v);

#define SEG_HAS_APPOINTMENT                                                                        \
    "EXISTS (SELECT 1 FROM appointments a WHERE a.tenant_id = c.tenant_id AND a.customer_id = "    \
    "c.id)"

/* The criteria. First row of a name = its default op (flat form).
 * seg_gen_bool:  a = SQL when true, b = SQL when false.
 * seg_gen_param: SQL is a, then the placeholder, then b.
 * seg_gen_days:  a = the timestamp column; "days since" semantics there. */
static const struct seg_field seg_fields[] = {
    {"has_phone", SEG_OP_EQ, SEG_T_BOOL, seg_gen_bool, "c.phone IS NOT NULL", "c.phone IS NULL"},
    {"has_email", SEG_OP_EQ, SEG_T_BOOL, seg_gen_bool, "c.email IS NOT NULL", "c.email IS NULL"},
    {"has_appointment", SEG_OP_EQ, SEG_T_BOOL, seg_gen_bool, SEG_HAS_APPOINTMENT,
     "NOT " SEG_HAS_APPOINTMENT},
    /* tags: customer has all of them; op in: at least one of them. */
    {"tags", SEG_OP_CONTAINS, SEG_T_STRINGS, seg_gen_param, "c.tags @> ", "::text[]"},
    {"tags", SEG_OP_IN, SEG_T_STRINGS, seg_gen_param, "c.tags && ", "::text[]"},
    {"tags_any", SEG_OP_IN, SEG_T_STRINGS, seg_gen_param, "c.tags && ", "::text[]"},
    {"days_since_last_contact", SEG_OP_GTE, SEG_T_DAYS, seg_gen_days, "c.last_contact_at", NULL},
    {"days_since_last_contact", SEG_OP_LTE, SEG_T_DAYS, seg_gen_days, "c.last_contact_at", NULL},
    {"days_since_last_contact", SEG_OP_EQ, SEG_T_DAYS, seg_gen_days, "c.last_contact_at", NULL},
    {"days_since_last_appointment", SEG_OP_GTE, SEG_T_DAYS, seg_gen_days, "c.last_appointment_at",
     NULL},
    {"days_since_last_appointment", SEG_OP_LTE, SEG_T_DAYS, seg_gen_days, "c.last_appointment_at",
     NULL},
    {"days_since_last_appointment", SEG_OP_EQ, SEG_T_DAYS, seg_gen_days, "c.last_appointment_at",
     NULL},
    {"timezone", SEG_OP_EQ, SEG_T_STRING, seg_gen_param, "c.timezone = ", "::text"},
    {"timezone", SEG_OP_IN, SEG_T_STRINGS, seg_gen_param, "c.timezone = ANY(", "::text[])"},
    {"attribute", SEG_OP_EQ, SEG_T_ATTRIBUTE, seg_gen_attribute, NULL, NULL},
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
/* Type checks and generators                                               */

static bool seg_is_string_ok(const cJSON *v)
{
    return cJSON_IsString(v) && v->valuestring && seg_utf8_ok(v->valuestring);
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
    case SEG_T_DAYS: {
        double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
        if (!(d >= 0) || (d <= SEG_MAX_DAYS && (double)(int)d != d))
            return seg_fail(cx, n, "%s must be a non-negative integer", n);
        if (d > SEG_MAX_DAYS)
            return seg_fail(cx, n, "%s must be at most %d", n, SEG_MAX_DAYS);
        return CR_OK;
    }
    case SEG_T_STRING:
        if (!seg_is_string_ok(v) || v->valuestring[0] == '\0')
            return seg_fail(cx, n, "%s must be a non-empty string", n);
        return CR_OK;
    case SEG_T_STRINGS:
        if (cJSON_IsString(v)) {
            if (!seg_is_string_ok(v))
                return seg_fail(cx, n, "%s must be an array of strings", n);
            return CR_OK;
        }
        if (!cJSON_IsArray(v))
            return seg_fail(cx, n, "%s must be an array of strings", n);
        cJSON_ArrayForEach(el, v)
        {
            if (!seg_is_string_ok(el))
                return seg_fail(cx, n, "%s must be an array of strings", n);
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

/* "Days since the last X" on the timestamp column r->a, in whole days of
 * elapsed time (N days = make_interval(days => N) before now()):
 *   gte N: the most recent X is at least N days old. A customer never
 *          contacted (column NULL) MATCHES: "never" is treated as infinitely
 *          long ago, which is what "not contacted for N days" means.
 *   lte N: the most recent X is at most N days old (NULL never matches).
 *   eq N:  the most recent X is between N and N+1 days old (NULL never
 *          matches).
 * Each form spells out its NULL case so the result is never NULL. */
static enum cr_err seg_gen_days(struct seg_ctx *cx, const struct seg_field *r, const cJSON *v)
{
    const char *col = r->a;
    int num = 0;
    enum cr_err e = seg_param_take(cx, r->name, xasprintf("%d", (int)v->valuedouble), &num);
    if (e != CR_OK)
        return e;

    struct buf *sql = &cx->q->sql;
    if (cx->too_big)
        return CR_OK;
    switch (r->op) {
    case SEG_OP_GTE:
        e = buf_printf(sql, "(%s IS NULL OR %s <= now() - make_interval(days => $%d::int))", col,
                       col, num);
        break;
    case SEG_OP_LTE:
        e = buf_printf(sql, "(%s IS NOT NULL AND %s >= now() - make_interval(days => $%d::int))",
                       col, col, num);
        break;
    default: /* SEG_OP_EQ */
        e = buf_printf(sql,
                       "(%s IS NOT NULL AND %s <= now() - make_interval(days => $%d::int) AND %s > "
                       "now() - make_interval(days => $%d::int + 1))",
                       col, col, num, col, num);
        break;
    }
    if (e != CR_OK)
        cx->too_big = true;
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

/* {"field": F, "op": OP, "value": V}; op defaults to F's default op. */
static enum cr_err seg_leaf(struct seg_ctx *cx, const cJSON *node)
{
    const cJSON *f = NULL, *op = NULL, *value = NULL, *it;
    const struct seg_field *r;

    cJSON_ArrayForEach(it, node)
    {
        if (strcmp(it->string, "field") == 0)
            f = it;
        else if (strcmp(it->string, "op") == 0)
            op = it;
        else if (strcmp(it->string, "value") == 0)
            value = it;
        else
            return seg_fail(cx, it->string,
                            "unexpected \"%s\" in a {\"field\", \"op\", \"value\"} condition",
                            it->string);
    }
    if (!cJSON_IsString(f) || !f->valuestring || f->valuestring[0] == '\0')
        return seg_fail(cx, "field", "field must be the name of a criterion");
    const char *name = f->valuestring;
    r = seg_field_find(name);
    if (!r)
        return seg_fail(cx, name, "unknown criterion \"%s\"", name);

    if (op) {
        int o = SEG_OP_COUNT;
        if (cJSON_IsString(op)) {
            for (o = 0; o < SEG_OP_COUNT; o++) {
                if (strcmp(seg_op_names[o], op->valuestring) == 0)
                    break;
            }
        }
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
    if (!value)
        return seg_fail(cx, name, "%s needs a \"value\"", name);
    return seg_apply(cx, r, value);
}

/* "all" / "any": a list of nodes joined by AND / OR; empty = TRUE / FALSE. */
static enum cr_err seg_list(struct seg_ctx *cx, const cJSON *list, int depth, bool is_all)
{
    const char *key = is_all ? "all" : "any";
    const cJSON *el;
    int n = 0;

    if (!cJSON_IsArray(list))
        return seg_fail(cx, key, "%s must be an array of conditions", key);
    if (depth + 1 > SEG_MAX_DEPTH)
        return seg_too_deep(cx, key);
    int count = cJSON_GetArraySize(list);
    if (count == 0) {
        seg_puts(cx, is_all ? "TRUE" : "FALSE");
        return CR_OK;
    }
    if (count > 1)
        seg_puts(cx, "(");
    cJSON_ArrayForEach(el, list)
    {
        if (!cJSON_IsObject(el))
            return seg_fail(cx, key, "%s must be an array of conditions", key);
        if (n++)
            seg_puts(cx, is_all ? " AND " : " OR ");
        enum cr_err e = seg_node(cx, el, depth + 1);
        if (e != CR_OK)
            return e;
    }
    if (count > 1)
        seg_puts(cx, ")");
    return CR_OK;
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
    const struct seg_field *r = seg_field_find(k);
    if (!r)
        return seg_fail(cx, k, "unknown criterion \"%s\"", k);
    return seg_apply(cx, r, item);
}

/* An object: a {"field", ...} leaf, or the AND of its members (empty = TRUE). */
static enum cr_err seg_node(struct seg_ctx *cx, const cJSON *node, int depth)
{
    const cJSON *item;
    int n = 0;

    if (cJSON_GetObjectItemCaseSensitive(node, "field"))
        return seg_leaf(cx, node);
    int count = cJSON_GetArraySize(node);
    if (count == 0) {
        seg_puts(cx, "TRUE");
        return CR_OK;
    }
    if (count > 1)
        seg_puts(cx, "(");
    cJSON_ArrayForEach(item, node)
    {
        if (n++)
            seg_puts(cx, " AND ");
        enum cr_err e = seg_member(cx, item, depth);
        if (e != CR_OK)
            return e;
    }
    if (count > 1)
        seg_puts(cx, ")");
    return CR_OK;
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

enum cr_err seg_compile(const cJSON *criteria, enum seg_channel channel, int first_param,
                        struct seg_query *out, char *field, size_t fieldsz, char *msg, size_t msgsz)
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

    /* {} (or no criteria) selects everyone reachable. */
    if (criteria && cJSON_GetArraySize(criteria) > 0) {
        e = seg_node(&cx, criteria, 0);
        if (e != CR_OK)
            return e;
        seg_puts(&cx, " AND ");
    }
    seg_puts(&cx, seg_channels[channel].reachable);
    if (cx.too_big)
        return seg_fail(&cx, "criteria", "criteria are too large (at most %d bytes of SQL)",
                        SEG_MAX_SQL);
    return CR_OK;
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
