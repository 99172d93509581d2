/* agent.c - validates agent configs against the schema in agent.h and holds
 * the built-in agent templates.
 *
 * The schema is data: each object is a table of fields (key, kind, flags,
 * bounds, nested object or array item), and one walker checks any object
 * against its table, so a rule lives in exactly one row. The few rules that
 * relate two fields (choices/scale depend on the question's type, a scale's
 * min < max) are a field's "when" sibling or an object's check hook. Every
 * problem is appended to one cJSON array with its field path; nothing stops
 * at the first error except the AGENT_MAX_ERRORS cap. */
#include "agent.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "template.h"
#include "xalloc.h"

/* ------------------------------------------------------------------------ */
/* Schema tables                                                            */

enum agent_kind {
    AGENT_K_TEXT = 0,
    AGENT_K_ENUM,
    AGENT_K_INT,
    AGENT_K_NUMBER,
    AGENT_K_BOOL,
    AGENT_K_OBJECT,
    AGENT_K_ARRAY,
};

/* Extra syntax a text must have beyond length and UTF-8. */
enum agent_check {
    AGENT_C_NONE = 0,
    AGENT_C_SLUG,
    AGENT_C_LANGUAGE,
    AGENT_C_VOICE,
    AGENT_C_WSS_URL,
};

#define AGENT_F_REQUIRED 0x1u  /* the member must be present */
#define AGENT_F_TEMPLATE 0x2u  /* text may hold {{variables}} */
#define AGENT_F_MULTILINE 0x4u /* text may hold line breaks and tabs */
#define AGENT_F_UNIQUE 0x8u    /* array: strings unique ignoring case, objects by "id" */

struct agent_vctx;
struct agent_object;

struct agent_field {
    const char *key;
    enum agent_kind kind;
    unsigned flags;
    long min, max;                     /* TEXT: characters; INT: value; ARRAY: items */
    double fmin, fmax;                 /* NUMBER */
    const char *const *values;         /* ENUM: NULL-terminated */
    enum agent_check check;            /* TEXT */
    const struct agent_object *object; /* OBJECT */
    const struct agent_field *item;    /* ARRAY: how each item is checked (key unused) */
    /* Allowed, and then required, only when the sibling member when_key is
     * the string when_value; no conditional rule applies while that sibling
     * is missing or invalid. */
    const char *when_key;
    const char *when_value;
};

struct agent_object {
    const struct agent_field *fields;
    size_t nfields;
    /* Cross-field rules, run after the members; path is the object's path. */
    void (*check)(struct agent_vctx *cx, const cJSON *obj, const char *path);
};

#define AGENT_COUNT(a) (sizeof(a) / sizeof((a)[0]))

static const char *const agent_campaign_types[] = {"research", "outbound_sales", NULL};
static const char *const agent_question_types[] = {"open", "yes_no", "scale", "choice", NULL};
static const char *const agent_agent_modes[] = {"conversation_relay", "stream", NULL};
static const char *const agent_amd_modes[] = {"none", "enable", "detect_message_end", NULL};

static void agent_check_scale(struct agent_vctx *cx, const cJSON *obj, const char *path);

/* Row constructors, so each table below reads one field per line. */
#define AGENT_TEXT(k, fl, lo, hi, chk)                                                             \
    {                                                                                              \
        .key = k, .kind = AGENT_K_TEXT, .flags = fl, .min = lo, .max = hi, .check = chk            \
    }
#define AGENT_ENUM(k, fl, vals)                                                                    \
    {                                                                                              \
        .key = k, .kind = AGENT_K_ENUM, .flags = fl, .values = vals                                \
    }
#define AGENT_INT(k, fl, lo, hi)                                                                   \
    {                                                                                              \
        .key = k, .kind = AGENT_K_INT, .flags = fl, .min = lo, .max = hi                           \
    }
#define AGENT_NUMBER(k, fl, lo, hi)                                                                \
    {                                                                                              \
        .key = k, .kind = AGENT_K_NUMBER, .flags = fl, .fmin = lo, .fmax = hi                      \
    }
#define AGENT_BOOL(k, fl)                                                                          \
    {                                                                                              \
        .key = k, .kind = AGENT_K_BOOL, .flags = fl                                                \
    }
#define AGENT_OBJECT(k, fl, obj, wk, wv)                                                           \
    {                                                                                              \
        .key = k, .kind = AGENT_K_OBJECT, .flags = fl, .object = obj, .when_key = wk,              \
        .when_value = wv                                                                           \
    }
#define AGENT_ARRAY(k, fl, lo, hi, it, wk, wv)                                                     \
    {                                                                                              \
        .key = k, .kind = AGENT_K_ARRAY, .flags = fl, .min = lo, .max = hi, .item = it,            \
        .when_key = wk, .when_value = wv                                                           \
    }

#define REQ AGENT_F_REQUIRED
#define TPL AGENT_F_TEMPLATE
#define MULTI AGENT_F_MULTILINE
#define UNIQ AGENT_F_UNIQUE

static const struct agent_field agent_scale_fields[] = {
    AGENT_INT("min", REQ, 0, 10),
    AGENT_INT("max", REQ, 0, 10),
    AGENT_TEXT("min_label", 0, 1, 100, AGENT_C_NONE),
    AGENT_TEXT("max_label", 0, 1, 100, AGENT_C_NONE),
};
static const struct agent_object agent_scale = {agent_scale_fields, AGENT_COUNT(agent_scale_fields),
                                                agent_check_scale};

static const struct agent_field agent_choice_item = AGENT_TEXT(NULL, 0, 1, 100, AGENT_C_NONE);

static const struct agent_field agent_question_fields[] = {
    AGENT_TEXT("id", REQ, 1, 64, AGENT_C_SLUG),
    AGENT_TEXT("text", REQ | TPL | MULTI, 1, 500, AGENT_C_NONE),
    AGENT_ENUM("type", REQ, agent_question_types),
    AGENT_ARRAY("choices", UNIQ, 2, 9, &agent_choice_item, "type", "choice"),
    AGENT_OBJECT("scale", 0, &agent_scale, "type", "scale"),
};
static const struct agent_object agent_question = {agent_question_fields,
                                                   AGENT_COUNT(agent_question_fields), NULL};
static const struct agent_field agent_question_item =
    AGENT_OBJECT(NULL, 0, &agent_question, NULL, NULL);

static const struct agent_field agent_outcome_fields[] = {
    AGENT_TEXT("id", REQ, 1, 64, AGENT_C_SLUG),
    AGENT_TEXT("description", REQ | MULTI, 1, 500, AGENT_C_NONE),
    AGENT_BOOL("success", 0),
};
static const struct agent_object agent_outcome = {agent_outcome_fields,
                                                  AGENT_COUNT(agent_outcome_fields), NULL};
static const struct agent_field agent_outcome_item =
    AGENT_OBJECT(NULL, 0, &agent_outcome, NULL, NULL);

static const struct agent_field agent_voice_fields[] = {
    AGENT_TEXT("language", REQ, 2, 35, AGENT_C_LANGUAGE),
    AGENT_TEXT("voice", REQ, 1, 64, AGENT_C_VOICE),
    AGENT_NUMBER("speaking_rate", 0, 0.5, 2.0),
};
static const struct agent_object agent_voice = {agent_voice_fields, AGENT_COUNT(agent_voice_fields),
                                                NULL};

static const struct agent_field agent_bridge_fields[] = {
    AGENT_ENUM("mode", REQ, agent_agent_modes),
    AGENT_TEXT("url", REQ, 1, 2048, AGENT_C_WSS_URL),
};
static const struct agent_object agent_bridge = {agent_bridge_fields,
                                                 AGENT_COUNT(agent_bridge_fields), NULL};

static const struct agent_field agent_config_fields[] = {
    AGENT_TEXT("name", REQ, 1, 200, AGENT_C_NONE),
    AGENT_ENUM("campaign_type", REQ, agent_campaign_types),
    AGENT_TEXT("system_prompt", REQ | TPL | MULTI, 1, 8000, AGENT_C_NONE),
    AGENT_TEXT("greeting", REQ | TPL | MULTI, 1, 1000, AGENT_C_NONE),
    AGENT_ARRAY("questions", REQ | UNIQ, 1, 20, &agent_question_item, NULL, NULL),
    AGENT_TEXT("closing", TPL | MULTI, 1, 1000, AGENT_C_NONE),
    AGENT_ARRAY("expected_outcomes", REQ | UNIQ, 1, 20, &agent_outcome_item, NULL, NULL),
    AGENT_OBJECT("voice", REQ, &agent_voice, NULL, NULL),
    AGENT_INT("max_duration_seconds", 0, 30, 3600),
    AGENT_ENUM("machine_detection", 0, agent_amd_modes),
    AGENT_OBJECT("agent", 0, &agent_bridge, NULL, NULL),
};
static const struct agent_object agent_config = {agent_config_fields,
                                                 AGENT_COUNT(agent_config_fields), NULL};

#undef REQ
#undef TPL
#undef MULTI
#undef UNIQ

/* ------------------------------------------------------------------------ */
/* Error list                                                               */

struct agent_vctx {
    cJSON *errors; /* the array handed to the caller */
    int nerrors;
    bool full;  /* AGENT_MAX_ERRORS reached: stop walking */
    bool nomem; /* cJSON could not allocate: stop walking */
};

static void agent_push(struct agent_vctx *cx, const char *field, const char *msg)
{
    cJSON *e = cJSON_CreateObject();
    if (!e || !cJSON_AddStringToObject(e, "field", field) ||
        !cJSON_AddStringToObject(e, "message", msg) || !cJSON_AddItemToArray(cx->errors, e)) {
        cJSON_Delete(e);
        cx->nomem = true;
    }
}

static void agent_err(struct agent_vctx *cx, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void agent_err(struct agent_vctx *cx, const char *field, const char *fmt, ...)
{
    char msg[256];
    va_list ap;

    if (cx->full || cx->nomem)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    agent_push(cx, field, msg);
    if (++cx->nerrors == AGENT_MAX_ERRORS) {
        char note[80];
        snprintf(note, sizeof(note), "too many errors; only the first %d are listed",
                 AGENT_MAX_ERRORS);
        agent_push(cx, "", note);
        cx->full = true;
    }
}

static bool agent_stopped(const struct agent_vctx *cx)
{
    return cx->full || cx->nomem;
}

/* ------------------------------------------------------------------------ */
/* Paths                                                                    */

/* Returns the path of member key under parent (root: parent ""); caller
 * frees. */
static char *agent_path_key(const char *parent, const char *key)
{
    return xasprintf("%s%s%s", parent, *parent ? "." : "", key);
}

static char *agent_path_index(const char *parent, size_t i)
{
    return xasprintf("%s[%zu]", parent, i);
}

/* Decodes one UTF-8 sequence at s (strict: no overlongs, surrogates or code
 * points past U+10FFFF). Returns its length and the code point in *cp, or 0
 * when the bytes are not valid UTF-8. */
static size_t agent_utf8_next(const unsigned char *s, unsigned long *cp)
{
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    size_t n;
    unsigned long c, min;
    if ((s[0] & 0xe0) == 0xc0) {
        n = 2, c = s[0] & 0x1f, min = 0x80;
    } else if ((s[0] & 0xf0) == 0xe0) {
        n = 3, c = s[0] & 0x0f, min = 0x800;
    } else if ((s[0] & 0xf8) == 0xf0) {
        n = 4, c = s[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) /* also stops at the NUL */
            return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return n;
}

/* Returns a printable copy of an unknown member's key for use in a path:
 * at most 64 characters ("..." appended when cut), invalid bytes and
 * control characters replaced by '?'. Caller frees. */
static char *agent_key_display(const char *key)
{
    const unsigned char *s = (const unsigned char *)(key ? key : "");
    if (*s == '\0')
        return xstrdup("\"\"");
    size_t cap = 64 * 4 + 4, len = 0, chars = 0;
    char *out = xmalloc(cap);

    while (*s && chars < 64) {
        unsigned long cp;
        size_t n = agent_utf8_next(s, &cp);
        if (n == 0 || cp < 0x20 || (cp >= 0x7f && cp < 0xa0)) {
            out[len++] = '?';
            s += n ? n : 1;
        } else {
            memcpy(out + len, s, n);
            len += n;
            s += n;
        }
        chars++;
    }
    if (*s) {
        memcpy(out + len, "...", 3);
        len += 3;
    }
    out[len] = '\0';
    return out;
}

/* ------------------------------------------------------------------------ */
/* Text rules                                                               */

static bool agent_is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool agent_is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool agent_is_alnum(char c)
{
    return agent_is_alpha(c) || agent_is_digit(c);
}

static bool agent_is_hex(char c)
{
    return agent_is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool agent_slug_ok(const char *s)
{
    for (; *s; s++) {
        if (!((*s >= 'a' && *s <= 'z') || agent_is_digit(*s) || *s == '_'))
            return false;
    }
    return true;
}

/* A BCP-47 tag in its common shape: a 2-3 letter language, then subtags of
 * 1-8 letters or digits ("en-US", "es-419", "zh-Hant-TW"). */
static bool agent_language_ok(const char *s)
{
    size_t n = 0;
    while (agent_is_alpha(s[n]))
        n++;
    if (n < 2 || n > 3)
        return false;
    s += n;
    while (*s == '-') {
        s++;
        n = 0;
        while (agent_is_alnum(s[n]))
            n++;
        if (n < 1 || n > 8)
            return false;
        s += n;
    }
    return *s == '\0';
}

static bool agent_voice_ok(const char *s)
{
    if (!agent_is_alnum(*s))
        return false;
    for (; *s; s++) {
        if (!agent_is_alnum(*s) && *s != '.' && *s != '-' && *s != '_')
            return false;
    }
    return true;
}

/* Host name of dot-separated labels (letters, digits, inner '-'), at least
 * two labels, or a dotted-quad IPv4 address. */
static bool agent_hostname_ok(const char *h, size_t len)
{
    size_t labels = 0, numeric = 0, octets = 0;
    const char *end = h + len;

    if (len == 0 || len > 253)
        return false;
    for (;;) {
        const char *dot = memchr(h, '.', (size_t)(end - h));
        const char *le = dot ? dot : end;
        size_t n = (size_t)(le - h);
        bool digits = true;
        unsigned value = 0;
        if (n == 0 || n > 63 || h[0] == '-' || le[-1] == '-')
            return false;
        for (const char *p = h; p < le; p++) {
            if (!agent_is_alnum(*p) && *p != '-')
                return false;
            if (!agent_is_digit(*p))
                digits = false;
            else if (value <= 255)
                value = value * 10 + (unsigned)(*p - '0');
        }
        labels++;
        if (digits) {
            numeric++;
            if (n <= 3 && value <= 255)
                octets++;
        }
        if (!dot)
            break;
        h = dot + 1;
        if (h == end) /* trailing dot */
            return false;
    }
    if (numeric == 0)
        return labels >= 2;
    /* Numeric labels: only a full IPv4 address is plausible. */
    return labels == 4 && octets == 4;
}

/* An IPv6 literal's content between the brackets, loosely: hex digits,
 * colons (at least two) and dots (an embedded IPv4 tail). */
static bool agent_ipv6_ok(const char *h, size_t len)
{
    size_t colons = 0;
    if (len < 2 || len > 45)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (h[i] == ':')
            colons++;
        else if (!agent_is_hex(h[i]) && h[i] != '.')
            return false;
    }
    return colons >= 2;
}

/* Characters allowed unencoded in a URL's path and query (RFC 3986). */
static bool agent_url_char_ok(char c)
{
    return agent_is_alnum(c) || (c != '\0' && strchr("-._~!$&'()*+,;=:@/?", c) != NULL);
}

/* Returns NULL when u is a plausible wss:// URL, else what is wrong. */
static const char *agent_wss_url_problem(const char *u)
{
    if (strncasecmp(u, "ws://", 5) == 0)
        return "must use wss:// (TLS), not ws://";
    if (strncasecmp(u, "wss://", 6) != 0)
        return "must be a wss:// URL";
    if (strchr(u, '#'))
        return "must not contain a #fragment";

    const char *auth = u + 6;
    size_t alen = strcspn(auth, "/?");
    const char *aend = auth + alen;
    if (memchr(auth, '@', alen))
        return "must not contain credentials (user@host)";

    const char *hend;
    bool host_ok;
    if (*auth == '[') {
        const char *close = memchr(auth, ']', alen);
        host_ok = close && agent_ipv6_ok(auth + 1, (size_t)(close - auth - 1));
        hend = close ? close + 1 : aend;
    } else {
        const char *colon = memchr(auth, ':', alen);
        hend = colon ? colon : aend;
        host_ok = agent_hostname_ok(auth, (size_t)(hend - auth));
    }
    if (!host_ok)
        return "must have a valid host name or IP address";

    if (hend < aend) {
        long port = 0;
        size_t digits = 0;
        if (*hend != ':')
            return "must have a valid host name or IP address";
        for (const char *p = hend + 1; p < aend; p++, digits++) {
            if (!agent_is_digit(*p) || digits >= 5)
                return "must have a valid port (1-65535)";
            port = port * 10 + (*p - '0');
        }
        if (digits == 0 || port < 1 || port > 65535)
            return "must have a valid port (1-65535)";
    }

    for (const char *p = aend; *p; p++) {
        if (*p == '%') {
            if (!agent_is_hex(p[1]) || !agent_is_hex(p[2]))
                return "has a % not followed by two hex digits";
            p += 2;
        } else if (!agent_url_char_ok(*p)) {
            return "contains a character that must be percent-encoded";
        }
    }
    return NULL;
}

static bool agent_variable_ok(const char *name, size_t len)
{
    static const char *const plain[] = {"first_name", "last_name", "email", "phone", "external_id"};
    static const char attr[] = "attributes.";
    const size_t attr_len = sizeof(attr) - 1;

    for (size_t i = 0; i < AGENT_COUNT(plain); i++) {
        if (strlen(plain[i]) == len && memcmp(plain[i], name, len) == 0)
            return true;
    }
    if (len <= attr_len || memcmp(name, attr, attr_len) != 0)
        return false;
    /* attributes.<key>[.<key>...]: no empty keys. */
    bool empty = true;
    for (size_t i = attr_len; i < len; i++) {
        if (name[i] == '.') {
            if (empty)
                return false;
            empty = true;
        } else {
            empty = false;
        }
    }
    return !empty;
}

static void agent_check_text(struct agent_vctx *cx, const struct agent_field *f, const cJSON *v,
                             const char *path)
{
    if (!cJSON_IsString(v) || !v->valuestring) {
        agent_err(cx, path, "must be a string");
        return;
    }

    const unsigned char *s = (const unsigned char *)v->valuestring;
    size_t chars = 0;
    bool blank = true;
    while (*s) {
        unsigned long cp;
        size_t n = agent_utf8_next(s, &cp);
        if (n == 0) {
            agent_err(cx, path, "must be valid UTF-8");
            return;
        }
        bool space = cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r';
        bool allowed_ctl = (f->flags & AGENT_F_MULTILINE) && space;
        if ((cp < 0x20 || (cp >= 0x7f && cp < 0xa0)) && !allowed_ctl) {
            agent_err(cx, path, "must not contain control characters%s",
                      (f->flags & AGENT_F_MULTILINE) ? "" : " or line breaks");
            return;
        }
        if (!space && cp != 0xa0)
            blank = false;
        chars++;
        s += n;
    }

    if (chars == 0) {
        agent_err(cx, path, "must not be empty");
        return;
    }
    if (blank) {
        agent_err(cx, path, "must not be blank");
        return;
    }
    if ((long)chars < f->min) {
        agent_err(cx, path, "must be at least %ld characters (got %zu)", f->min, chars);
        return;
    }
    if ((long)chars > f->max) {
        agent_err(cx, path, "must be at most %ld characters (got %zu)", f->max, chars);
        return;
    }

    const char *str = v->valuestring;
    switch (f->check) {
    case AGENT_C_NONE:
        break;
    case AGENT_C_SLUG:
        if (!agent_slug_ok(str)) {
            agent_err(cx, path, "must contain only a-z, 0-9 and _");
            return;
        }
        break;
    case AGENT_C_LANGUAGE:
        if (!agent_language_ok(str)) {
            agent_err(cx, path, "must be a BCP-47 language tag such as \"en-US\"");
            return;
        }
        break;
    case AGENT_C_VOICE:
        if (!agent_voice_ok(str)) {
            agent_err(cx, path,
                      "must be a voice name such as \"Polly.Joanna-Neural\" or \"alice\" "
                      "(letters, digits, '.', '-', '_')");
            return;
        }
        break;
    case AGENT_C_WSS_URL: {
        const char *problem = agent_wss_url_problem(str);
        if (problem) {
            agent_err(cx, path, "%s", problem);
            return;
        }
        break;
    }
    }

    if (f->flags & AGENT_F_TEMPLATE) {
        char msg[160];
        if (tpl_validate(str, agent_variable_ok, msg, sizeof(msg)) != CR_OK) {
            bool unknown = strncmp(msg, "unknown variable", 16) == 0;
            agent_err(cx, path, "%s%s", msg,
                      unknown ? " (allowed: first_name, last_name, email, phone, external_id, "
                                "attributes.*)"
                              : "");
        }
    }
}

/* ------------------------------------------------------------------------ */
/* The walk                                                                 */

static void agent_check_value(struct agent_vctx *cx, const struct agent_field *f, const cJSON *v,
                              const char *path);

static void agent_check_enum(struct agent_vctx *cx, const struct agent_field *f, const cJSON *v,
                             const char *path)
{
    if (cJSON_IsString(v) && v->valuestring) {
        for (const char *const *p = f->values; *p; p++) {
            if (strcmp(*p, v->valuestring) == 0)
                return;
        }
    }
    char list[160];
    size_t len = 0;
    list[0] = '\0';
    for (const char *const *p = f->values; *p && len < sizeof(list); p++) {
        int n = snprintf(list + len, sizeof(list) - len, "%s\"%s\"", len ? ", " : "", *p);
        if (n < 0)
            break;
        len += (size_t)n;
    }
    agent_err(cx, path, "must be one of %s", list);
}

static void agent_check_int(struct agent_vctx *cx, const struct agent_field *f, const cJSON *v,
                            const char *path)
{
    if (!cJSON_IsNumber(v)) {
        agent_err(cx, path, "must be an integer");
        return;
    }
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d)) {
        agent_err(cx, path, "must be an integer");
        return;
    }
    if (d < (double)f->min || d > (double)f->max)
        agent_err(cx, path, "must be between %ld and %ld", f->min, f->max);
}

static void agent_check_number(struct agent_vctx *cx, const struct agent_field *f, const cJSON *v,
                               const char *path)
{
    if (!cJSON_IsNumber(v)) {
        agent_err(cx, path, "must be a number");
        return;
    }
    double d = v->valuedouble;
    if (!isfinite(d) || d < f->fmin || d > f->fmax)
        agent_err(cx, path, "must be between %.1f and %.1f", f->fmin, f->fmax);
}

/* For an array with AGENT_F_UNIQUE: the string that must be unique in item
 * it (a string item itself, or an object item's "id"), or NULL when it has
 * none to compare. */
static const char *agent_unique_key(const struct agent_field *item, const cJSON *it)
{
    const cJSON *s = it;
    if (item->kind == AGENT_K_OBJECT)
        s = cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, "id") : NULL;
    return cJSON_IsString(s) && s->valuestring && s->valuestring[0] ? s->valuestring : NULL;
}

static void agent_check_array(struct agent_vctx *cx, const struct agent_field *f, const cJSON *v,
                              const char *path)
{
    if (!cJSON_IsArray(v)) {
        agent_err(cx, path, "must be an array");
        return;
    }
    size_t n = 0;
    for (const cJSON *it = v->child; it; it = it->next)
        n++;
    if ((long)n < f->min || (long)n > f->max)
        agent_err(cx, path, "must have %ld to %ld items (got %zu)", f->min, f->max, n);

    /* Duplicates are only looked for within the allowed size, which keeps
     * the pairwise comparison small. */
    bool unique = (f->flags & AGENT_F_UNIQUE) && (long)n <= f->max;
    size_t i = 0;
    for (const cJSON *it = v->child; it && !agent_stopped(cx); it = it->next, i++) {
        char *ipath = agent_path_index(path, i);
        agent_check_value(cx, f->item, it, ipath);
        const char *key = unique ? agent_unique_key(f->item, it) : NULL;
        if (key) {
            size_t j = 0;
            for (const cJSON *prev = v->child; prev != it; prev = prev->next, j++) {
                const char *pkey = agent_unique_key(f->item, prev);
                if (!pkey)
                    continue;
                bool object = f->item->kind == AGENT_K_OBJECT;
                if ((object ? strcmp(key, pkey) : strcasecmp(key, pkey)) != 0)
                    continue;
                if (object) {
                    char *idpath = agent_path_key(ipath, "id");
                    agent_err(cx, idpath, "duplicates %s[%zu].id", path, j);
                    free(idpath);
                } else {
                    agent_err(cx, ipath, "duplicates %s[%zu]", path, j);
                }
                break;
            }
        }
        free(ipath);
    }
}

/* Whether a conditional field is switched on by its sibling: 1 on, 0 off,
 * -1 unknown (sibling missing or invalid). */
static int agent_when(const struct agent_object *o, const struct agent_field *f, const cJSON *obj)
{
    const cJSON *sib = cJSON_GetObjectItemCaseSensitive(obj, f->when_key);
    if (!cJSON_IsString(sib) || !sib->valuestring)
        return -1;
    if (strcmp(sib->valuestring, f->when_value) == 0)
        return 1;
    for (size_t i = 0; i < o->nfields; i++) {
        const struct agent_field *sf = &o->fields[i];
        if (strcmp(sf->key, f->when_key) != 0 || !sf->values)
            continue;
        for (const char *const *p = sf->values; *p; p++) {
            if (strcmp(*p, sib->valuestring) == 0)
                return 0;
        }
    }
    return -1;
}

static void agent_check_object(struct agent_vctx *cx, const struct agent_object *o,
                               const cJSON *obj, const char *path)
{
    if (!cJSON_IsObject(obj)) {
        agent_err(cx, path, "must be an object");
        return;
    }

    for (const cJSON *m = obj->child; m && !agent_stopped(cx); m = m->next) {
        const struct agent_field *f = NULL;
        for (size_t i = 0; m->string && i < o->nfields; i++) {
            if (strcmp(o->fields[i].key, m->string) == 0) {
                f = &o->fields[i];
                break;
            }
        }
        if (!f) {
            char *shown = agent_key_display(m->string);
            char *mpath = agent_path_key(path, shown);
            agent_err(cx, mpath, "unknown field");
            free(mpath);
            free(shown);
            continue;
        }

        char *mpath = agent_path_key(path, f->key);
        if (cJSON_GetObjectItemCaseSensitive(obj, f->key) != m)
            agent_err(cx, mpath, "duplicate field");
        else if (f->when_key && agent_when(o, f, obj) == 0)
            agent_err(cx, mpath, "is only allowed when %s is \"%s\"", f->when_key, f->when_value);
        else
            agent_check_value(cx, f, m, mpath);
        free(mpath);
    }

    for (size_t i = 0; i < o->nfields && !agent_stopped(cx); i++) {
        const struct agent_field *f = &o->fields[i];
        if (cJSON_GetObjectItemCaseSensitive(obj, f->key))
            continue;
        char *mpath = NULL;
        if (f->flags & AGENT_F_REQUIRED) {
            mpath = agent_path_key(path, f->key);
            agent_err(cx, mpath, "is required");
        } else if (f->when_key && agent_when(o, f, obj) == 1) {
            mpath = agent_path_key(path, f->key);
            agent_err(cx, mpath, "is required when %s is \"%s\"", f->when_key, f->when_value);
        }
        free(mpath);
    }

    if (o->check && !agent_stopped(cx))
        o->check(cx, obj, path);
}

static void agent_check_value(struct agent_vctx *cx, const struct agent_field *f, const cJSON *v,
                              const char *path)
{
    switch (f->kind) {
    case AGENT_K_TEXT:
        agent_check_text(cx, f, v, path);
        break;
    case AGENT_K_ENUM:
        agent_check_enum(cx, f, v, path);
        break;
    case AGENT_K_INT:
        agent_check_int(cx, f, v, path);
        break;
    case AGENT_K_NUMBER:
        agent_check_number(cx, f, v, path);
        break;
    case AGENT_K_BOOL:
        if (!cJSON_IsBool(v))
            agent_err(cx, path, "must be true or false");
        break;
    case AGENT_K_OBJECT:
        agent_check_object(cx, f->object, v, path);
        break;
    case AGENT_K_ARRAY:
        agent_check_array(cx, f, v, path);
        break;
    }
}

/* A scale's max must exceed its min; judged only when both are valid. */
static void agent_check_scale(struct agent_vctx *cx, const cJSON *obj, const char *path)
{
    const cJSON *lo = cJSON_GetObjectItemCaseSensitive(obj, "min");
    const cJSON *hi = cJSON_GetObjectItemCaseSensitive(obj, "max");
    if (!cJSON_IsNumber(lo) || !cJSON_IsNumber(hi))
        return;
    double a = lo->valuedouble, b = hi->valuedouble;
    if (a != floor(a) || b != floor(b) || a < 0 || a > 10 || b < 0 || b > 10)
        return;
    if (b <= a) {
        char *mpath = agent_path_key(path, "max");
        agent_err(cx, mpath, "must be greater than min (%d)", (int)a);
        free(mpath);
    }
}

enum cr_err agent_validate(const cJSON *config, cJSON **errors)
{
    struct agent_vctx cx = {0};
    enum cr_err e;

    if (errors)
        *errors = NULL;
    cx.errors = cJSON_CreateArray();
    if (!cx.errors)
        return CR_ENOMEM;

    if (!cJSON_IsObject(config))
        agent_err(&cx, "", "must be a JSON object");
    else
        agent_check_object(&cx, &agent_config, config, "");

    if (cx.nomem) {
        e = CR_ENOMEM;
        goto out;
    }
    if (cx.nerrors == 0) {
        e = CR_OK;
        goto out;
    }
    e = CR_EINVAL;
    if (errors) {
        *errors = cx.errors;
        cx.errors = NULL;
    }
out:
    cJSON_Delete(cx.errors);
    return e;
}
