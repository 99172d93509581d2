/* provider.c - send outcomes and Twilio's SMS wire format. */
#include "provider.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

const char *send_outcome_status(enum send_outcome o)
{
    switch (o) {
    case SEND_OK:
        return "sent";
    case SEND_RETRY:
        return "retry";
    case SEND_FAILED:
        return "failed";
    case SEND_UNKNOWN:
        return "unknown";
    case SEND_SKIPPED:
        return "skipped";
    }
    return "unknown";
}

static enum cr_err form_escape(struct buf *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    enum cr_err e = CR_OK;
    for (const unsigned char *p = (const unsigned char *)s; *p && !e; p++) {
        if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            e = buf_putc(out, (char)*p);
        } else if (*p == ' ') {
            e = buf_putc(out, '+');
        } else {
            char enc[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            e = buf_append(out, enc, 3);
        }
    }
    return e;
}

enum cr_err form_add(struct buf *out, const char *name, const char *value)
{
    enum cr_err e = out->len ? buf_putc(out, '&') : CR_OK;
    if (!e)
        e = form_escape(out, name);
    if (!e)
        e = buf_putc(out, '=');
    if (!e)
        e = form_escape(out, value);
    return e;
}

enum cr_err twilio_sms_form(struct buf *out, const char *to, const char *from, const char *body,
                            const char *status_callback)
{
    enum cr_err e = form_add(out, "To", to);
    if (!e)
        e = form_add(out, strncmp(from, "MG", 2) == 0 ? "MessagingServiceSid" : "From", from);
    if (!e)
        e = form_add(out, "Body", body);
    if (!e && status_callback)
        e = form_add(out, "StatusCallback", status_callback);
    return e;
}

enum cr_err twilio_call_form(struct buf *out, const char *to, const char *from, const char *url,
                             const char *status_callback, const char *machine_detection)
{
    enum cr_err e = form_add(out, "To", to);
    if (!e)
        e = form_add(out, "From", from);
    if (!e)
        e = form_add(out, "Url", url);
    if (!e && status_callback) {
        e = form_add(out, "StatusCallback", status_callback);
        static const char *const events[] = {"initiated", "ringing", "answered", "completed"};
        for (size_t i = 0; i < sizeof(events) / sizeof(events[0]) && !e; i++)
            e = form_add(out, "StatusCallbackEvent", events[i]);
    }
    if (!e && machine_detection) {
        e = form_add(out, "MachineDetection", machine_detection);
        if (!e)
            e = form_add(out, "AsyncAmd", "true");
    }
    return e;
}

static void set_text(char *dst, size_t n, const char *s)
{
    snprintf(dst, n, "%s", s ? s : "");
}

void twilio_classify(long http_status, const char *body, size_t len, long retry_after_s,
                     struct send_result *out)
{
    memset(out, 0, sizeof(*out));
    out->retry_after_s = retry_after_s;
    cJSON *j = body && len ? cJSON_ParseWithLength(body, len) : NULL;
    const cJSON *sid = cJSON_GetObjectItemCaseSensitive(j, "sid");
    const cJSON *status = cJSON_GetObjectItemCaseSensitive(j, "status");
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(j, "code");
    const cJSON *message = cJSON_GetObjectItemCaseSensitive(j, "message");
    /* Range-checked before the cast: converting an out-of-range double is UB. */
    long c = cJSON_IsNumber(code) && code->valuedouble > 0 && code->valuedouble < 1e9
                 ? (long)code->valuedouble
                 : 0;
    if (c)
        snprintf(out->code, sizeof(out->code), "%ld", c);
    if (cJSON_IsString(message))
        set_text(out->message, sizeof(out->message), message->valuestring);

    if (http_status >= 200 && http_status < 300) {
        if (cJSON_IsString(sid) && *sid->valuestring) {
            out->outcome = SEND_OK;
            set_text(out->provider_id, sizeof(out->provider_id), sid->valuestring);
            if (cJSON_IsString(status))
                set_text(out->provider_status, sizeof(out->provider_status), status->valuestring);
        } else {
            /* Accepted, but we cannot tell which message: never resend. */
            out->outcome = SEND_UNKNOWN;
            set_text(out->message, sizeof(out->message), "2xx answer without a message sid");
        }
    } else if (http_status == 429 || c == 20429 || c == 21611 || c == 30001) {
        out->outcome = SEND_RETRY;
        out->throttled = http_status == 429 || c == 20429;
    } else if (http_status >= 500) {
        out->outcome = SEND_RETRY;
        if (!out->message[0])
            snprintf(out->message, sizeof(out->message), "HTTP %ld from provider", http_status);
    } else {
        out->outcome = SEND_FAILED;
        out->opt_out = c == 21610;
        if (!out->message[0])
            snprintf(out->message, sizeof(out->message), "HTTP %ld from provider", http_status);
    }
    if (!out->code[0] && out->outcome != SEND_OK)
        snprintf(out->code, sizeof(out->code), "http_%ld", http_status);
    cJSON_Delete(j);
}

char *sendgrid_mail_json(const char *to, const char *from, const char *from_name,
                         const char *reply_to, const char *subject, const char *text,
                         const char *html, const char *unsub_url, long long delivery_id,
                         long long tenant_id)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *pers = cJSON_AddArrayToObject(root, "personalizations");
    cJSON *p = cJSON_CreateObject();
    cJSON_AddItemToArray(pers, p);
    cJSON *tos = cJSON_AddArrayToObject(p, "to");
    cJSON *t = cJSON_CreateObject();
    cJSON_AddStringToObject(t, "email", to);
    cJSON_AddItemToArray(tos, t);
    char num[24];
    cJSON *args = cJSON_AddObjectToObject(p, "custom_args");
    snprintf(num, sizeof(num), "%lld", delivery_id);
    cJSON_AddStringToObject(args, "delivery_id", num);
    snprintf(num, sizeof(num), "%lld", tenant_id);
    cJSON_AddStringToObject(args, "tenant_id", num);
    cJSON *f = cJSON_AddObjectToObject(root, "from");
    cJSON_AddStringToObject(f, "email", from);
    if (from_name && *from_name)
        cJSON_AddStringToObject(f, "name", from_name);
    if (reply_to && *reply_to)
        cJSON_AddStringToObject(cJSON_AddObjectToObject(root, "reply_to"), "email", reply_to);
    cJSON_AddStringToObject(root, "subject", subject);
    cJSON *content = cJSON_AddArrayToObject(root, "content");
    static const char *const types[] = {"text/plain", "text/html"};
    const char *values[] = {text, html};
    for (int i = 0; i < 2; i++) {
        if (!values[i] || !*values[i])
            continue;
        cJSON *c = cJSON_CreateObject();
        cJSON_AddStringToObject(c, "type", types[i]);
        cJSON_AddStringToObject(c, "value", values[i]);
        cJSON_AddItemToArray(content, c);
    }
    if (unsub_url) {
        cJSON *h = cJSON_AddObjectToObject(root, "headers");
        char *v = xasprintf("<%s>", unsub_url);
        cJSON_AddStringToObject(h, "List-Unsubscribe", v);
        free(v);
        cJSON_AddStringToObject(h, "List-Unsubscribe-Post", "List-Unsubscribe=One-Click");
    }
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

void sendgrid_classify(long http_status, const char *body, size_t len, const char *message_id,
                       long retry_after_s, struct send_result *out)
{
    memset(out, 0, sizeof(*out));
    out->retry_after_s = retry_after_s;
    if (http_status >= 200 && http_status < 300) {
        if (message_id && *message_id) {
            out->outcome = SEND_OK;
            set_text(out->provider_id, sizeof(out->provider_id), message_id);
            set_text(out->provider_status, sizeof(out->provider_status), "processed");
        } else {
            out->outcome = SEND_UNKNOWN;
            set_text(out->message, sizeof(out->message), "2xx answer without X-Message-Id");
        }
        return;
    }
    cJSON *j = body && len ? cJSON_ParseWithLength(body, len) : NULL;
    const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "errors"), 0);
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(first, "message");
    const cJSON *field = cJSON_GetObjectItemCaseSensitive(first, "field");
    if (cJSON_IsString(msg)) {
        if (cJSON_IsString(field))
            snprintf(out->message, sizeof(out->message), "%s: %s", field->valuestring,
                     msg->valuestring);
        else
            set_text(out->message, sizeof(out->message), msg->valuestring);
    } else {
        snprintf(out->message, sizeof(out->message), "HTTP %ld from provider", http_status);
    }
    cJSON_Delete(j);
    snprintf(out->code, sizeof(out->code), "http_%ld", http_status);
    if (http_status == 429) {
        out->outcome = SEND_RETRY;
        out->throttled = true;
    } else if (http_status >= 500) {
        out->outcome = SEND_RETRY;
    } else {
        out->outcome = SEND_FAILED;
    }
}

void transport_classify(bool connected, const char *what, struct send_result *out)
{
    memset(out, 0, sizeof(*out));
    out->outcome = connected ? SEND_UNKNOWN : SEND_RETRY;
    snprintf(out->code, sizeof(out->code), "%s", connected ? "transport" : "connect");
    snprintf(out->message, sizeof(out->message), "%s", what ? what : "transport error");
}

long retry_after_parse(const char *value)
{
    if (!value)
        return 0;
    while (*value == ' ')
        value++;
    char *end = NULL;
    long v = strtol(value, &end, 10);
    if (end == value || v < 0)
        return 0;
    return v > 86400 ? 86400 : v;
}
