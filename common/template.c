/* template.c - renders and validates {{variable}} message templates.
 *
 * One scanner (tpl_next) splits a template into literal text and
 * placeholders; tpl_render and tpl_validate both walk its tokens, so the two
 * can never disagree about the syntax. Placeholder grammar:
 *
 *   "{{" ws* name ws* ( "|" fallback )? "}}"
 *   name     = [A-Za-z_][A-Za-z0-9_.]*
 *   ws       = ' ' | '\t'
 *   fallback = any text up to the first "}}", leading and trailing ws trimmed
 *
 * A "{" or "}" that does not start "{{" is literal text, and so is a "}}"
 * outside a placeholder. The template text is copied byte for byte (UTF-8
 * passes through untouched); only substituted values and fallbacks are
 * HTML-escaped, and only when asked. */
#include "template.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum tpl_tok_kind { TPL_TOK_END = 0, TPL_TOK_TEXT, TPL_TOK_VAR };

struct tpl_tok {
    enum tpl_tok_kind kind;
    const char *text; /* TEXT: the literal; VAR: the name */
    size_t len;
    const char *fallback; /* VAR: NULL when there is no "|" */
    size_t fallback_len;
};

static void tpl_errf(char *err, size_t errsz, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void tpl_errf(char *err, size_t errsz, const char *fmt, ...)
{
    if (!err || errsz == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errsz, fmt, ap);
    va_end(ap);
}

static int tpl_is_space(char c)
{
    return c == ' ' || c == '\t';
}

static int tpl_is_name_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static int tpl_is_name_char(char c)
{
    return tpl_is_name_start(c) || (c >= '0' && c <= '9') || c == '.';
}

/* Reads the token starting at tpl + *pos and advances *pos past it.
 * Returns CR_EINVAL with a message naming the byte offset on a syntax error. */
static enum cr_err tpl_next(const char *tpl, size_t *pos, struct tpl_tok *tok, char *err,
                            size_t errsz)
{
    const char *start = tpl + *pos;

    memset(tok, 0, sizeof(*tok));
    if (*start == '\0') {
        tok->kind = TPL_TOK_END;
        return CR_OK;
    }

    if (start[0] != '{' || start[1] != '{') {
        const char *open = strstr(start, "{{");
        size_t len = open ? (size_t)(open - start) : strlen(start);
        tok->kind = TPL_TOK_TEXT;
        tok->text = start;
        tok->len = len;
        *pos += len;
        return CR_OK;
    }

    size_t open_off = *pos;
    const char *close = strstr(start + 2, "}}");
    if (!close) {
        tpl_errf(err, errsz, "unclosed {{ at offset %zu", open_off);
        return CR_EINVAL;
    }

    const char *p = start + 2;
    while (p < close && tpl_is_space(*p))
        p++;
    const char *name = p;
    if (p < close && tpl_is_name_start(*p)) {
        p++;
        while (p < close && tpl_is_name_char(*p))
            p++;
    }
    size_t namelen = (size_t)(p - name);
    while (p < close && tpl_is_space(*p))
        p++;

    if (p < close && *p != '|') {
        /* Either the name starts badly or a stray character follows it. */
        tpl_errf(err, errsz, "invalid character '%c' in variable name at offset %zu",
                 (*p >= 0x20 && *p < 0x7f) ? *p : '?', (size_t)(p - tpl));
        return CR_EINVAL;
    }
    if (namelen == 0) {
        tpl_errf(err, errsz, "empty variable name in {{ at offset %zu", open_off);
        return CR_EINVAL;
    }

    tok->kind = TPL_TOK_VAR;
    tok->text = name;
    tok->len = namelen;
    if (p < close) { /* *p == '|' */
        const char *fb = p + 1;
        const char *fe = close;
        while (fb < fe && tpl_is_space(*fb))
            fb++;
        while (fe > fb && tpl_is_space(fe[-1]))
            fe--;
        tok->fallback = fb;
        tok->fallback_len = (size_t)(fe - fb);
    }
    *pos = (size_t)(close + 2 - tpl);
    return CR_OK;
}

static enum cr_err tpl_put_escaped(struct buf *out, const char *s, size_t len, enum tpl_escape esc)
{
    if (esc != TPL_ESCAPE_HTML)
        return buf_append(out, s, len);

    size_t run = 0; /* start of the pending unescaped run */
    for (size_t i = 0; i < len; i++) {
        const char *ent;
        switch (s[i]) {
        case '&':
            ent = "&amp;";
            break;
        case '<':
            ent = "&lt;";
            break;
        case '>':
            ent = "&gt;";
            break;
        case '"':
            ent = "&quot;";
            break;
        case '\'':
            ent = "&#39;";
            break;
        default:
            continue;
        }
        enum cr_err e = buf_append(out, s + run, i - run);
        if (e == CR_OK)
            e = buf_puts(out, ent);
        if (e != CR_OK)
            return e;
        run = i + 1;
    }
    return buf_append(out, s + run, len - run);
}

enum cr_err tpl_render(const char *tpl, tpl_lookup_fn lookup, void *ctx, enum tpl_escape esc,
                       struct buf *out, char *err, size_t errsz)
{
    enum cr_err e = CR_OK;
    size_t start_len = out->len;
    size_t pos = 0;
    struct tpl_tok tok;

    if (err && errsz)
        err[0] = '\0';
    for (;;) {
        e = tpl_next(tpl, &pos, &tok, err, errsz);
        if (e != CR_OK || tok.kind == TPL_TOK_END)
            break;
        if (tok.kind == TPL_TOK_TEXT) {
            e = buf_append(out, tok.text, tok.len);
        } else {
            const char *v = lookup ? lookup(ctx, tok.text, tok.len) : NULL;
            if (v && *v)
                e = tpl_put_escaped(out, v, strlen(v), esc);
            else if (tok.fallback)
                e = tpl_put_escaped(out, tok.fallback, tok.fallback_len, esc);
        }
        if (e != CR_OK)
            break;
    }

    if (e == CR_ETOOBIG)
        tpl_errf(err, errsz, "rendered message exceeds %zu bytes", out->max);
    if (e != CR_OK) {
        /* Leave out as the caller gave it: no half-rendered message. */
        out->len = start_len;
        if (out->data)
            out->data[start_len] = '\0';
    }
    return e;
}

enum cr_err tpl_validate(const char *tpl, tpl_allowed_fn allowed, char *err, size_t errsz)
{
    size_t pos = 0;
    struct tpl_tok tok;

    if (err && errsz)
        err[0] = '\0';
    for (;;) {
        enum cr_err e = tpl_next(tpl, &pos, &tok, err, errsz);
        if (e != CR_OK)
            return e;
        if (tok.kind == TPL_TOK_END)
            return CR_OK;
        if (tok.kind == TPL_TOK_VAR && allowed && !allowed(tok.text, tok.len)) {
            tpl_errf(err, errsz, "unknown variable {{%.*s}}", (int)tok.len, tok.text);
            return CR_EINVAL;
        }
    }
}

const char *tpl_customer_lookup(void *arg, const char *name, size_t n)
{
    struct tpl_customer *c = arg;
    const struct {
        const char *name, *value;
    } cols[] = {{"first_name", c->first_name},
                {"last_name", c->last_name},
                {"email", c->email},
                {"phone", c->phone},
                {"external_id", c->external_id}};
    for (size_t i = 0; i < sizeof(cols) / sizeof(cols[0]); i++)
        if (strlen(cols[i].name) == n && strncmp(cols[i].name, name, n) == 0)
            return cols[i].value;
    if (n <= 11 || strncmp(name, "attributes.", 11) != 0 || !c->attributes)
        return NULL;
    if (!c->parsed)
        c->parsed = cJSON_Parse(c->attributes);
    const cJSON *it = c->parsed;
    for (const char *p = name + 11, *end = name + n; it && p < end;) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        size_t len = (size_t)((dot ? dot : end) - p);
        char key[128];
        snprintf(key, sizeof(key), "%.*s", (int)len, p);
        it = cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, key) : NULL;
        p += len + (dot ? 1 : 0);
    }
    if (cJSON_IsString(it))
        return it->valuestring;
    if (cJSON_IsNumber(it)) {
        snprintf(c->num, sizeof(c->num), "%g", it->valuedouble);
        return c->num;
    }
    if (cJSON_IsBool(it))
        return cJSON_IsTrue(it) ? "true" : "false";
    return NULL;
}

void tpl_customer_cleanup(struct tpl_customer *c)
{
    cJSON_Delete(c->parsed);
    c->parsed = NULL;
}
