/* unsubscribe.c - the List-Unsubscribe endpoint: GET shows a confirmation
 * page with a button, POST (RFC 8058 one-click, or that button) opts the
 * customer out of the token's channel.
 *
 * No API key and no CSRF token: the signed, expiring token (common/unsub.c)
 * is the whole authority, and it names the tenant, the customer, the channel
 * and the delivery that carried it. A GET never changes anything (mail
 * scanners follow links); a POST, however often repeated, sets the
 * customer's opt-out flag, adds the address to the suppression list (reason
 * "unsubscribe") and stamps the delivery's opted_out_at, in one statement.
 * Pages show the address masked and nothing else about the customer.
 * Replies are HTML, or JSON for a client that accepts only that. */
#include <sys/queue.h>

#include <event2/keyvalq_struct.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "log.h"
#include "template.h"
#include "unsub.h"
#include "xalloc.h"

#define UNSUB_MAX_PAGE 16384

/* $1 tenant, $2 customer, $3 channel. */
static const char sql_show[] =
    "SELECT t.name, CASE $3 WHEN 'email' THEN c.email ELSE c.phone END,"
    "  CASE $3 WHEN 'sms' THEN c.sms_opt_out WHEN 'email' THEN c.email_opt_out"
    "  ELSE c.voice_opt_out END"
    " FROM tenants t LEFT JOIN customers c ON c.tenant_id = t.id AND c.id = $2"
    " WHERE t.id = $1";

/* $1 tenant, $2 customer, $3 channel, $4 delivery (0: none). Addresses are
 * suppressed in the form the gate compares (E.164, lower-cased email).
 * Always one row: the tenant's name, the address shown (NULL when the
 * customer is gone) and how many rows changed. */
static const char sql_unsubscribe[] =
    "WITH c AS (SELECT k.id, CASE $3 WHEN 'email' THEN k.email ELSE k.phone END AS shown"
    "   FROM customers k WHERE k.tenant_id = $1 AND k.id = $2),"
    " opt AS (UPDATE customers k SET sms_opt_out = k.sms_opt_out OR $3 = 'sms',"
    "     email_opt_out = k.email_opt_out OR $3 = 'email',"
    "     voice_opt_out = k.voice_opt_out OR $3 = 'voice', updated_at = now()"
    "   FROM c WHERE k.tenant_id = $1 AND k.id = c.id AND NOT CASE $3"
    "     WHEN 'sms' THEN k.sms_opt_out WHEN 'email' THEN k.email_opt_out"
    "     ELSE k.voice_opt_out END"
    "   RETURNING k.id),"
    " sup AS (INSERT INTO suppressions (tenant_id, channel, address, reason)"
    "   SELECT $1, $3, CASE $3 WHEN 'email' THEN lower(c.shown) ELSE c.shown END, 'unsubscribe'"
    "   FROM c WHERE c.shown IS NOT NULL"
    "   ON CONFLICT (tenant_id, channel, address) DO NOTHING RETURNING id),"
    " dlv AS (UPDATE deliveries d SET opted_out_at = now(), updated_at = now()"
    "   FROM c WHERE d.tenant_id = $1 AND d.id = $4::bigint AND d.customer_id = c.id"
    "     AND d.channel = $3 AND d.opted_out_at IS NULL RETURNING d.id)"
    " SELECT (SELECT name FROM tenants WHERE id = $1), c.shown,"
    "   (SELECT count(*) FROM opt) + (SELECT count(*) FROM sup) + (SELECT count(*) FROM dlv)"
    " FROM (SELECT 1) one LEFT JOIN c ON true";

/* ---------------------------------------------------------------------
 * Pages
 * ------------------------------------------------------------------- */

/* Page bodies are templates: every {{value}} is HTML-escaped. */
static const char page_head[] =
    "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    "<meta name=\"robots\" content=\"noindex\"><title>{{title}}</title>"
    "<style>body{font-family:system-ui,sans-serif;max-width:34em;margin:3em auto;"
    "padding:0 1em;line-height:1.5;color:#222}button{font-size:1em;padding:.6em 1.4em;"
    "cursor:pointer}</style></head><body><h1>{{title}}</h1>";
static const char page_confirm[] =
    "<p>Stop {{what}} from {{sender}} to {{address}}?</p>"
    "<form method=\"post\" action=\"{{action}}\">"
    "<input type=\"hidden\" name=\"token\" value=\"{{token}}\">"
    "<input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">"
    "<button type=\"submit\">Unsubscribe</button></form>";
static const char page_message[] = "<p>{{message}}</p>";
static const char page_tail[] = "</body></html>\n";

struct page_vars {
    const char *names[8], *values[8];
    int n;
};

static void page_set(struct page_vars *v, const char *name, const char *value)
{
    if (v->n < 8) {
        v->names[v->n] = name;
        v->values[v->n++] = value;
    }
}

static const char *page_lookup(void *ctx, const char *name, size_t len)
{
    const struct page_vars *v = ctx;
    for (int i = 0; i < v->n; i++)
        if (strlen(v->names[i]) == len && !strncmp(v->names[i], name, len))
            return v->values[i];
    return NULL;
}

static bool wants_json(const struct api_req *r)
{
    const char *a = evhttp_find_header(evhttp_request_get_input_headers(r->req), "Accept");
    return a && strstr(a, "application/json") && !strstr(a, "text/html");
}

static void reply_page(struct api_req *r, int status, const char *body_tpl, struct page_vars *v)
{
    struct buf page;
    buf_init(&page, UNSUB_MAX_PAGE);
    char err[128];
    if (tpl_render(page_head, page_lookup, v, TPL_ESCAPE_HTML, &page, err, sizeof(err)) ||
        tpl_render(body_tpl, page_lookup, v, TPL_ESCAPE_HTML, &page, err, sizeof(err)) ||
        buf_puts(&page, page_tail)) {
        /* Our own fixed templates: cannot fail short of a bug. */
        log_error("unsubscribe page: %s", err);
        http_reply_error(r, 500, "internal", "the page could not be built", NULL);
    } else {
        http_reply_text(r, status, "text/html; charset=utf-8", buf_str(&page), page.len);
    }
    buf_cleanup(&page);
}

/* A page (or JSON error) saying why nothing was done. */
static void reply_problem(struct api_req *r, int status, const char *code, const char *title,
                          const char *message)
{
    if (wants_json(r)) {
        http_reply_error(r, status, code, message, "token");
        return;
    }
    struct page_vars v = {0};
    page_set(&v, "title", title);
    page_set(&v, "message", message);
    reply_page(r, status, page_message, &v);
}

/* ---------------------------------------------------------------------
 * Tokens and addresses
 * ------------------------------------------------------------------- */

/* The request's token, from the query string or a form body (first wins);
 * NULL when neither has one. Caller frees. */
static char *find_token(const struct api_req *r)
{
    char *tok = NULL;
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    if (r->query && evhttp_parse_query_str(r->query, &q) == 0 && evhttp_find_header(&q, "token"))
        tok = xstrdup(evhttp_find_header(&q, "token"));
    evhttp_clear_headers(&q);
    if (!tok && r->method == EVHTTP_REQ_POST && r->body_len) {
        char *form = xstrndup(r->body, r->body_len);
        TAILQ_INIT(&q);
        if (evhttp_parse_query_str(form, &q) == 0 && evhttp_find_header(&q, "token"))
            tok = xstrdup(evhttp_find_header(&q, "token"));
        evhttp_clear_headers(&q);
        free(form);
    }
    return tok;
}

/* A request with a valid token. */
struct unsub_req {
    struct unsub_claims c;
    char token[UNSUB_TOKEN_MAX];
};

/* Checks the token and fills *u, or replies (400 missing or invalid, 403
 * expired) and returns false. */
static bool claims_or_reply(struct api_req *r, struct unsub_req *u)
{
    struct unsub_claims *c = &u->c;
    char *tok = find_token(r);
    enum cr_err e = tok ? unsub_verify(r->app->secret, tok, (long long)time(NULL), c) : CR_EINVAL;
    if (e == CR_OK)
        snprintf(u->token, sizeof(u->token), "%s", tok); /* it fits: it verified */
    free(tok);
    if (e == CR_OK)
        return true;
    if (e == CR_ETIMEOUT) {
        log_info("unsubscribe: expired link (tenant %lld, %s)", c->tenant, c->channel);
        reply_problem(r, 403, "token_expired", "This link has expired",
                      "This unsubscribe link is too old to use. Use the link in a more recent "
                      "message, or reply to the sender and ask to be removed.");
        return false;
    }
    reply_problem(r, 400, "invalid_token", "This link is not valid",
                  "This unsubscribe link is incomplete or has been changed. Open the link from "
                  "the message again, or copy all of it into the address bar.");
    return false;
}

/* The address as a page may show it: "j***@example.com", "+*******4567". */
static void mask_address(const char *channel, const char *addr, char *out, size_t outsz)
{
    const char *at = strcmp(channel, "email") == 0 ? strrchr(addr, '@') : NULL;
    if (at) {
        size_t local = (size_t)(at - addr), first = 1;
        while (first < local && ((unsigned char)addr[first] & 0xC0) == 0x80)
            first++; /* the whole first UTF-8 character */
        if (local < 3)
            snprintf(out, outsz, "***%s", at);
        else
            snprintf(out, outsz, "%.*s***%s", (int)first, addr, at);
        return;
    }
    size_t n = strlen(addr), keep = n > 6 ? 4 : 0, j = 0;
    for (size_t i = 0; i < n && j + 1 < outsz; i++)
        out[j++] = i == 0 && addr[i] == '+' ? '+' : i + keep >= n ? addr[i] : '*';
    out[j] = '\0';
}

static const char *channel_words(const char *channel)
{
    return !strcmp(channel, "email") ? "emails"
           : !strcmp(channel, "sms") ? "text messages"
                                     : "calls";
}

/* ---------------------------------------------------------------------
 * Handlers
 * ------------------------------------------------------------------- */

static void show_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    const struct unsub_req *u = r->state;
    const struct unsub_claims *c = &u->c;
    (void)sqlstate;
    if (!res) {
        http_reply_dependency(r, "postgres", errmsg);
        return;
    }
    bool known = PQntuples(res) == 1 && !PQgetisnull(res, 0, 1);
    char masked[400] = "", action[600];
    if (known)
        mask_address(c->channel, PQgetvalue(res, 0, 1), masked, sizeof(masked));
    bool already = known && PQgetvalue(res, 0, 2)[0] == 't';
    if (wants_json(r)) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "channel", c->channel);
        cJSON_AddStringToObject(o, "address", masked);
        cJSON_AddBoolToObject(o, "unsubscribed", already || !known);
        http_reply_json(r, 200, o);
        return;
    }
    struct page_vars v = {0};
    if (!known || already) {
        page_set(&v, "title", "You are unsubscribed");
        page_set(&v, "message",
                 known ? "This address is already off the list: nothing more to do."
                       : "This address is not on the list any more.");
        reply_page(r, 200, page_message, &v);
        return;
    }
    snprintf(action, sizeof(action), "%s/v1/unsubscribe", r->app->cfg->public_url);
    page_set(&v, "title", "Unsubscribe");
    page_set(&v, "what", channel_words(c->channel));
    page_set(&v, "sender", PQgetvalue(res, 0, 0));
    page_set(&v, "address", masked);
    page_set(&v, "action", action);
    page_set(&v, "token", u->token);
    reply_page(r, 200, page_confirm, &v);
}

static void unsubscribe_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    const struct unsub_claims *c = &((const struct unsub_req *)r->state)->c;
    (void)sqlstate;
    if (!res || PQntuples(res) != 1) {
        http_reply_dependency(r, "postgres", errmsg ? errmsg : "no row");
        return;
    }
    bool known = !PQgetisnull(res, 0, 1);
    char masked[400] = "";
    if (known)
        mask_address(c->channel, PQgetvalue(res, 0, 1), masked, sizeof(masked));
    long changed = strtol(PQgetvalue(res, 0, 2), NULL, 10);
    if (changed)
        log_info("unsubscribe: tenant %lld customer %lld opted out of %s (delivery %lld)",
                 c->tenant, c->customer, c->channel, c->delivery);
    if (wants_json(r)) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "unsubscribed", true);
        cJSON_AddStringToObject(o, "channel", c->channel);
        cJSON_AddStringToObject(o, "address", masked);
        cJSON_AddBoolToObject(o, "changed", changed > 0);
        http_reply_json(r, 200, o);
        return;
    }
    char msg[600];
    const char *sender = PQgetisnull(res, 0, 0) ? "us" : PQgetvalue(res, 0, 0);
    if (known)
        snprintf(msg, sizeof(msg), "%s will get no more %s from %s.", masked,
                 channel_words(c->channel), sender);
    else
        snprintf(msg, sizeof(msg), "This address is not on the list any more.");
    struct page_vars v = {0};
    page_set(&v, "title", "You are unsubscribed");
    page_set(&v, "message", msg);
    reply_page(r, 200, page_message, &v);
}

/* Runs sql with $1 tenant, $2 customer, $3 channel and (nparams 4) $4
 * delivery of a valid token. */
static void run(struct api_req *r, const char *sql, int nparams, pgpool_cb cb)
{
    struct unsub_req *u = xcalloc(1, sizeof(*u));
    if (!claims_or_reply(r, u)) {
        free(u);
        return;
    }
    r->state = u;
    r->state_free = free;
    const struct unsub_claims *c = &u->c;
    char tenant[24], customer[24], delivery[24];
    snprintf(tenant, sizeof(tenant), "%lld", c->tenant);
    snprintf(customer, sizeof(customer), "%lld", c->customer);
    snprintf(delivery, sizeof(delivery), "%lld", c->delivery);
    const char *params[] = {tenant, customer, c->channel, delivery};
    pgpool_query(r->app->pg, sql, nparams, params, cb, r);
}

void unsubscribe_show(struct api_req *r)
{
    run(r, sql_show, 3, show_done);
}

void unsubscribe_post(struct api_req *r)
{
    run(r, sql_unsubscribe, 4, unsubscribe_done);
}
