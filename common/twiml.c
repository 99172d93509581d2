/* twiml.c - builds the TwiML documents of a voice call from its agent
 * config (see twiml.h). Each document is appended whole or not at all. */
#include "twiml.h"

#include <stdio.h>
#include <string.h>

#define TWIML_HEAD "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>"
#define TWIML_TAIL "</Response>"
/* A rendered text: the longest config text (8000 characters) with its
 * variables filled in fits many times over. */
#define TWIML_MAX_TEXT (256 * 1024)

enum cr_err twiml_escape(struct buf *out, const char *s)
{
    enum cr_err e = CR_OK;
    for (const unsigned char *p = (const unsigned char *)s; *p && e == CR_OK; p++) {
        switch (*p) {
        case '&':
            e = buf_puts(out, "&amp;");
            break;
        case '<':
            e = buf_puts(out, "&lt;");
            break;
        case '>':
            e = buf_puts(out, "&gt;");
            break;
        case '"':
            e = buf_puts(out, "&quot;");
            break;
        case '\'':
            e = buf_puts(out, "&apos;");
            break;
        default:
            /* XML 1.0 has no way to carry other C0 controls, even escaped. */
            e = buf_putc(out, *p < 0x20 && *p != '\t' && *p != '\n' && *p != '\r' ? ' ' : (char)*p);
        }
    }
    return e;
}

static const char *str_item(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) && v->valuestring[0] ? v->valuestring : NULL;
}

/* ` name="value"`, nothing when value is NULL. */
static enum cr_err twiml_attr(struct buf *out, const char *name, const char *value)
{
    if (!value)
        return CR_OK;
    enum cr_err e = buf_printf(out, " %s=\"", name);
    if (e == CR_OK)
        e = twiml_escape(out, value);
    return e == CR_OK ? buf_putc(out, '"') : e;
}

/* A config text with the customer's variables, escaped. */
static enum cr_err twiml_text(const struct twiml_call *c, const char *tpl, struct buf *out)
{
    struct buf t;
    buf_init(&t, TWIML_MAX_TEXT);
    char err[160];
    enum cr_err e =
        tpl_render(tpl, c->lookup, c->lookup_ctx, TPL_ESCAPE_NONE, &t, err, sizeof(err));
    if (e == CR_OK)
        e = twiml_escape(out, buf_str(&t));
    buf_cleanup(&t);
    return e;
}

static const char *twiml_language(const struct twiml_call *c)
{
    return str_item(cJSON_GetObjectItemCaseSensitive(c->agent, "voice"), "language");
}

static enum cr_err twiml_say(const struct twiml_call *c, const char *tpl, struct buf *out)
{
    const cJSON *voice = cJSON_GetObjectItemCaseSensitive(c->agent, "voice");
    enum cr_err e = buf_puts(out, "<Say");
    if (e == CR_OK)
        e = twiml_attr(out, "voice", str_item(voice, "voice"));
    if (e == CR_OK)
        e = twiml_attr(out, "language", str_item(voice, "language"));
    if (e == CR_OK)
        e = buf_putc(out, '>');
    if (e == CR_OK)
        e = twiml_text(c, tpl, out);
    return e == CR_OK ? buf_puts(out, "</Say>") : e;
}

int twiml_questions(const cJSON *agent)
{
    const cJSON *qs = cJSON_GetObjectItemCaseSensitive(agent, "questions");
    return cJSON_IsArray(qs) ? cJSON_GetArraySize(qs) : 0;
}

/* The gather URL of question i: gather_url + "&q=i" (unescaped). */
static enum cr_err twiml_gather_url(const struct twiml_call *c, int i, struct buf *url)
{
    if (!c->gather_url)
        return CR_EINVAL;
    return buf_printf(url, "%s%cq=%d", c->gather_url, strchr(c->gather_url, '?') ? '&' : '?', i);
}

/* Choices as speech hints: "a, b, c". */
static enum cr_err twiml_hints(const cJSON *choices, struct buf *hints)
{
    enum cr_err e = CR_OK;
    for (const cJSON *it = cJSON_IsArray(choices) ? choices->child : NULL; it && e == CR_OK;
         it = it->next)
        if (cJSON_IsString(it))
            e = buf_printf(hints, "%s%s", hints->len ? ", " : "", it->valuestring);
    return e;
}

static enum cr_err twiml_question(const struct twiml_call *c, int i, struct buf *out)
{
    const cJSON *q = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(c->agent, "questions"), i);
    const char *text = str_item(q, "text"), *type = str_item(q, "type");
    if (!text || !type)
        return CR_EINVAL;
    bool one_key = !strcmp(type, "yes_no") || !strcmp(type, "choice");
    struct buf url, hints;
    buf_init(&url, 8192);
    buf_init(&hints, 4096);
    enum cr_err e = twiml_gather_url(c, i, &url);
    if (e == CR_OK && !strcmp(type, "choice"))
        e = twiml_hints(cJSON_GetObjectItemCaseSensitive(q, "choices"), &hints);
    if (e == CR_OK)
        e = buf_puts(out, "<Gather input=\"speech dtmf\"");
    if (e == CR_OK)
        e = twiml_attr(out, "action", buf_str(&url));
    if (e == CR_OK)
        e = buf_puts(out, " method=\"POST\"");
    if (e == CR_OK)
        e = twiml_attr(out, "language", twiml_language(c));
    if (e == CR_OK)
        e = buf_puts(out, " speechTimeout=\"auto\" actionOnEmptyResult=\"true\"");
    if (e == CR_OK && one_key)
        e = buf_puts(out, " numDigits=\"1\"");
    if (e == CR_OK)
        e = twiml_attr(out, "hints", hints.len ? buf_str(&hints) : NULL);
    if (e == CR_OK)
        e = buf_putc(out, '>');
    if (e == CR_OK)
        e = twiml_say(c, text, out);
    if (e == CR_OK)
        e = buf_puts(out, "</Gather><Redirect method=\"POST\">");
    if (e == CR_OK)
        e = twiml_escape(out, buf_str(&url));
    if (e == CR_OK)
        e = buf_puts(out, "</Redirect>");
    buf_cleanup(&url);
    buf_cleanup(&hints);
    return e;
}

static enum cr_err twiml_param(struct buf *out, const char *name, long long value)
{
    return buf_printf(out, "<Parameter name=\"%s\" value=\"%lld\"/>", name, value);
}

/* <Connect action=gather_url><ConversationRelay|Stream ...>. */
static enum cr_err twiml_connect(const struct twiml_call *c, const cJSON *bridge, struct buf *out)
{
    const char *mode = str_item(bridge, "mode"), *url = str_item(bridge, "url");
    if (!mode || !url || !c->gather_url)
        return CR_EINVAL;
    bool relay = !strcmp(mode, "conversation_relay");
    if (!relay && strcmp(mode, "stream") != 0)
        return CR_EINVAL;
    const char *noun = relay ? "ConversationRelay" : "Stream";
    enum cr_err e = buf_puts(out, "<Connect");
    if (e == CR_OK)
        e = twiml_attr(out, "action", c->gather_url);
    if (e == CR_OK)
        e = buf_printf(out, " method=\"POST\"><%s", noun);
    if (e == CR_OK)
        e = twiml_attr(out, "url", url);
    const char *greeting = str_item(c->agent, "greeting");
    if (e == CR_OK && relay && greeting) {
        /* ConversationRelay speaks it while the agent's socket opens. */
        e = buf_puts(out, " welcomeGreeting=\"");
        if (e == CR_OK)
            e = twiml_text(c, greeting, out);
        if (e == CR_OK)
            e = buf_putc(out, '"');
    }
    if (e == CR_OK && relay)
        e = twiml_attr(out, "language", twiml_language(c));
    if (e == CR_OK)
        e = buf_putc(out, '>');
    if (e == CR_OK)
        e = twiml_param(out, "tenant", c->tenant);
    if (e == CR_OK)
        e = twiml_param(out, "delivery", c->delivery);
    if (e == CR_OK)
        e = buf_printf(out, "</%s></Connect>", noun);
    return e;
}

/* Ends a document built from start: closes it, or drops it on failure. */
static enum cr_err twiml_finish(struct buf *out, size_t start, enum cr_err e)
{
    if (e == CR_OK)
        e = buf_puts(out, TWIML_TAIL);
    if (e != CR_OK && out->data) {
        out->len = start;
        out->data[start] = '\0';
    }
    return e;
}

enum cr_err twiml_answer(const struct twiml_call *c, struct buf *out)
{
    size_t start = out->len;
    const cJSON *bridge = cJSON_GetObjectItemCaseSensitive(c->agent, "agent");
    const char *greeting = str_item(c->agent, "greeting");
    enum cr_err e = buf_puts(out, TWIML_HEAD);
    if (e == CR_OK && cJSON_IsObject(bridge)) {
        e = twiml_connect(c, bridge, out);
    } else if (e == CR_OK) {
        if (!greeting || twiml_questions(c->agent) == 0)
            e = CR_EINVAL;
        if (e == CR_OK)
            e = twiml_say(c, greeting, out);
        if (e == CR_OK)
            e = twiml_question(c, 0, out);
    }
    return twiml_finish(out, start, e);
}

enum cr_err twiml_next(const struct twiml_call *c, int answered, struct buf *out)
{
    size_t start = out->len;
    bool ai = cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(c->agent, "agent"));
    enum cr_err e = buf_puts(out, TWIML_HEAD);
    if (e == CR_OK && !ai && answered >= 0 && answered + 1 < twiml_questions(c->agent)) {
        e = twiml_question(c, answered + 1, out);
    } else if (e == CR_OK) {
        const char *closing = ai ? NULL : str_item(c->agent, "closing");
        if (closing)
            e = twiml_say(c, closing, out);
        if (e == CR_OK)
            e = buf_puts(out, "<Hangup/>");
    }
    return twiml_finish(out, start, e);
}

enum cr_err twiml_hangup(const char *text, const char *language, const char *voice, struct buf *out)
{
    size_t start = out->len;
    enum cr_err e = buf_puts(out, TWIML_HEAD);
    if (e == CR_OK && text) {
        e = buf_puts(out, "<Say");
        if (e == CR_OK)
            e = twiml_attr(out, "voice", voice);
        if (e == CR_OK)
            e = twiml_attr(out, "language", language);
        if (e == CR_OK)
            e = buf_putc(out, '>');
        if (e == CR_OK)
            e = twiml_escape(out, text);
        if (e == CR_OK)
            e = buf_puts(out, "</Say>");
    }
    if (e == CR_OK)
        e = buf_puts(out, "<Hangup/>");
    return twiml_finish(out, start, e);
}
