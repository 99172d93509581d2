/* send.c - renders and places sends: the sandbox provider (no network;
 * appends the message to a local file) and Twilio's Messages API through
 * curl's multi interface driven by the libevent loop (many requests in
 * flight, connections reused). Columns of a claimed row: see sql_claim. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "curlev.h"
#include "log.h"
#include "pace.h"
#include "sms.h"
#include "unsub.h"
#include "template.h"
#include "variant.h"
#include "worker.h"
#include "xalloc.h"

#define SEND_MAX_RESPONSE (256 * 1024)
#define SEND_MAX_BODY 8192

enum claim_col {
    COL_ID = 0,
    COL_TENANT,
    COL_ATTEMPTS,
    COL_PHONE,
    COL_FIRST,
    COL_LAST,
    COL_EMAIL,
    COL_EXTERNAL,
    COL_ATTRS,
    COL_BODY,
    COL_ACCOUNT,
    COL_KIND,
    COL_FROM,
    COL_CREDS,
    COL_OPT_OUT,
    COL_CAMPAIGN,
    COL_CUSTOMER,
    COL_VARIANTS,
    COL_ACCOUNT_RATE = 21, /* after jobs.c's kind, due and member */
    COL_CHANNEL,           /* the campaign's channel */
    COL_AMD,               /* agent_config.machine_detection */
    COL_MESSAGE,           /* the campaign's message object (email) */
};

struct send {
    struct worker *w;
    CURL *easy;
    struct curl_slist *headers;
    struct buf response;
    long retry_after;
    char message_id[160]; /* SendGrid's X-Message-Id; SMTP: our Message-ID */
    curl_mime *mime;      /* SMTP */
    struct curl_slist *rcpt;
    struct account *account;
    unsigned cost;      /* tokens: SMS segments */
    struct send *qnext; /* in its account's queue, waiting for tokens */
    struct outcome o;
};

/* ---------------------------------------------------------------------
 * curl handles (the multi handle on the loop: common/curlev.c)
 * ------------------------------------------------------------------- */

static void send_done(void *arg, CURL *easy, CURLcode rc);
static void sends_after(void *arg);
static void send_free(struct send *s);

/* Finished transfers' easy handles, reset and kept for the next sends: a
 * new handle costs its buffers' allocations on every send. The worker is
 * single-threaded; the pool holds at most the sends that can be in flight. */
#define EASY_POOL_MAX 4096
static CURL *easy_pool[EASY_POOL_MAX];
static int easy_pooled;

static CURL *easy_get(void)
{
    return easy_pooled ? easy_pool[--easy_pooled] : curl_easy_init();
}

/* Takes back a handle that is in no multi handle. */
static void easy_put(CURL *c)
{
    if (easy_pooled == EASY_POOL_MAX) {
        curl_easy_cleanup(c);
        return;
    }
    curl_easy_reset(c);
    easy_pool[easy_pooled++] = c;
}

static void rate_pause(struct worker *w, struct account *a, long retry_after_s);

bool send_init(struct worker *w)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return false;
    w->curl = curlev_new(w->base, send_done, sends_after, w);
    if (!w->curl)
        return false;
    CURLM *multi = curlev_multi(w->curl);
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, w->cfg->max_connections);
    curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, w->cfg->max_connections);
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, w->cfg->max_connections);
    if (w->cfg->sandbox_log && *w->cfg->sandbox_log) {
        w->sandbox = fopen(w->cfg->sandbox_log, "a");
        if (!w->sandbox) {
            log_error("cannot open CRIER_SANDBOX_LOG %s", w->cfg->sandbox_log);
            return false;
        }
        /* One line per message, written when the message is "sent": the
         * log is the sandbox's record, so it must not lag or be lost. */
        setvbuf(w->sandbox, NULL, _IOLBF, 0);
    }
    return true;
}

void send_cleanup(struct worker *w)
{
    curlev_free(w->curl);
    if (w->sandbox)
        fclose(w->sandbox);
    cJSON_Delete(w->variants);
    while (w->accounts) {
        struct account *a = w->accounts;
        w->accounts = a->next;
        while (a->qhead) { /* left by a grace period that ran out */
            struct send *s = a->qhead;
            a->qhead = s->qnext;
            free(s->o.body);
            send_free(s);
        }
        if (a->timer)
            event_free(a->timer);
        curl_url_cleanup(a->uh);
        memset(a->auth, 0, sizeof(a->auth));
        memset(a->smtp_pass, 0, sizeof(a->smtp_pass));
        free(a);
    }
    while (easy_pooled > 0)
        curl_easy_cleanup(easy_pool[--easy_pooled]);
    curl_global_cleanup();
}

/* ---------------------------------------------------------------------
 * Provider accounts
 * ------------------------------------------------------------------- */

/* The account's sealed credentials as JSON; the decrypted text is wiped
 * once parsed. NULL with the reason in why. */
static cJSON *open_credentials(struct worker *w, const char *sealed, long long id, char *why,
                               size_t whysz)
{
    char *plain = NULL;
    size_t plen = 0;
    cJSON *creds = NULL;
    if (w->have_secret && sealed && crypto_open(w->secret, sealed, &plain, &plen) == CR_OK)
        creds = cJSON_Parse(plain);
    if (plain) {
        memset(plain, 0, plen);
        free(plain);
    }
    if (!creds)
        snprintf(why, whysz,
                 "provider account %lld: credentials cannot be opened (check CRIER_SECRET_KEY)",
                 id);
    return creds;
}

/* Fills a's wire details from its credentials; false when they lack a
 * field the kind needs. */
static bool account_fill(struct worker *w, struct account *a, const cJSON *creds, bool voice)
{
    const cJSON *secret = cJSON_GetObjectItemCaseSensitive(creds, "secret");
    if (a->kind == ACCOUNT_TWILIO) {
        const cJSON *sid = cJSON_GetObjectItemCaseSensitive(creds, "account_sid");
        if (!cJSON_IsString(sid) || !cJSON_IsString(secret))
            return false;
        /* An account serves one channel: SMS (Messages) or voice (Calls). */
        snprintf(a->url, sizeof(a->url), "%s/2010-04-01/Accounts/%s/%s.json",
                 w->cfg->twilio_base_url, sid->valuestring, voice ? "Calls" : "Messages");
        snprintf(a->auth, sizeof(a->auth), "%s:%s", sid->valuestring, secret->valuestring);
        return true;
    }
    if (a->kind == ACCOUNT_SENDGRID) {
        if (!cJSON_IsString(secret))
            return false;
        snprintf(a->url, sizeof(a->url), "%s/v3/mail/send", w->cfg->sendgrid_base_url);
        snprintf(a->auth, sizeof(a->auth), "Authorization: Bearer %s", secret->valuestring);
        return true;
    }
    const cJSON *host = cJSON_GetObjectItemCaseSensitive(creds, "host");
    const cJSON *port = cJSON_GetObjectItemCaseSensitive(creds, "port");
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(creds, "security");
    const cJSON *user = cJSON_GetObjectItemCaseSensitive(creds, "username");
    if (!cJSON_IsString(host) || !cJSON_IsNumber(port))
        return false;
    bool tls = cJSON_IsString(sec) && !strcmp(sec->valuestring, "tls");
    a->smtp_starttls = !cJSON_IsString(sec) || !strcmp(sec->valuestring, "starttls");
    snprintf(a->url, sizeof(a->url), "%s://%s:%d", tls ? "smtps" : "smtp", host->valuestring,
             (int)port->valuedouble);
    if (cJSON_IsString(user))
        snprintf(a->smtp_user, sizeof(a->smtp_user), "%s", user->valuestring);
    if (cJSON_IsString(secret))
        snprintf(a->smtp_pass, sizeof(a->smtp_pass), "%s", secret->valuestring);
    return true;
}

struct account *send_account(struct worker *w, long long id, const char *kind, const char *from,
                             const char *sealed, long rate_ps, bool voice, char *why, size_t whysz)
{
    for (struct account *a = w->accounts; a; a = a->next)
        if (a->id == id)
            return a;
    static const struct {
        const char *name;
        enum account_kind kind;
    } kinds[] = {{"sandbox", ACCOUNT_SANDBOX},
                 {"twilio", ACCOUNT_TWILIO},
                 {"sendgrid", ACCOUNT_SENDGRID},
                 {"smtp", ACCOUNT_SMTP}};
    size_t k = 0;
    while (k < sizeof(kinds) / sizeof(kinds[0]) && strcmp(kinds[k].name, kind) != 0)
        k++;
    if (k == sizeof(kinds) / sizeof(kinds[0])) {
        snprintf(why, whysz, "provider kind %s cannot send", kind);
        return NULL;
    }
    struct account *a = xcalloc(1, sizeof(*a));
    a->id = id;
    a->kind = kinds[k].kind;
    a->rate_ps = rate_ps;
    snprintf(a->from, sizeof(a->from), "%s", from);
    if (a->kind != ACCOUNT_SANDBOX) {
        cJSON *creds = open_credentials(w, sealed, id, why, whysz);
        bool ok = creds && account_fill(w, a, creds, voice);
        if (creds && !ok)
            snprintf(why, whysz, "provider account %lld: credentials lack a field its kind needs",
                     id);
        cJSON_Delete(creds);
        if (!ok) {
            memset(a, 0, sizeof(*a));
            free(a);
            return NULL;
        }
    }
    if (a->kind == ACCOUNT_TWILIO || a->kind == ACCOUNT_SENDGRID) {
        /* Without it (out of memory, a URL curl rejects) the sends parse
         * the text URL and fail the way that URL fails. */
        a->uh = curl_url();
        if (a->uh && curl_url_set(a->uh, CURLUPART_URL, a->url, 0) != CURLUE_OK) {
            curl_url_cleanup(a->uh);
            a->uh = NULL;
        }
    }
    a->next = w->accounts;
    w->accounts = a;
    return a;
}

/* The account of a claimed row (its COL_ACCOUNT.. columns). */
static struct account *account_get(struct worker *w, PGresult *res, int row, char *why,
                                   size_t whysz)
{
    if (PQgetisnull(res, row, COL_ACCOUNT)) {
        snprintf(why, whysz, "campaign has no provider account");
        return NULL;
    }
    return send_account(w, strtoll(PQgetvalue(res, row, COL_ACCOUNT), NULL, 10),
                        PQgetvalue(res, row, COL_KIND), PQgetvalue(res, row, COL_FROM),
                        PQgetisnull(res, row, COL_CREDS) ? NULL : PQgetvalue(res, row, COL_CREDS),
                        PQgetisnull(res, row, COL_ACCOUNT_RATE)
                            ? 0
                            : strtol(PQgetvalue(res, row, COL_ACCOUNT_RATE), NULL, 10),
                        strcmp(PQgetvalue(res, row, COL_CHANNEL), "voice") == 0, why, whysz);
}

/* ---------------------------------------------------------------------
 * Rendering
 * ------------------------------------------------------------------- */

/* The customer's template variables, from the claim row's columns. */
static struct tpl_customer render_vars(PGresult *res, int row)
{
    const int cols[] = {COL_FIRST, COL_LAST, COL_EMAIL, COL_PHONE, COL_EXTERNAL, COL_ATTRS};
    const char *v[6];
    for (int i = 0; i < 6; i++)
        v[i] = PQgetisnull(res, row, cols[i]) ? NULL : PQgetvalue(res, row, cols[i]);
    return (struct tpl_customer){v[0], v[1], v[2], v[3], v[4], v[5], NULL, ""};
}

/* ---------------------------------------------------------------------
 * Sends
 * ------------------------------------------------------------------- */

static void finish(struct worker *w, struct outcome *o)
{
    jobs_add_outcome(w, o);
}

static void skip_or_fail(struct worker *w, struct outcome *o, enum send_outcome out,
                         const char *code, const char *msg)
{
    o->res.outcome = out;
    snprintf(o->res.code, sizeof(o->res.code), "%s", code);
    snprintf(o->res.message, sizeof(o->res.message), "%s", msg);
    finish(w, o);
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    struct send *s = arg;
    size_t n = size * nmemb;
    if (buf_append(&s->response, data, n) != CR_OK)
        return 0; /* too large: abort the transfer */
    return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    struct send *s = arg;
    size_t n = size * nmemb;
    if (n > 13 && strncasecmp(data, "X-Message-Id:", 13) == 0) {
        size_t k = n - 13;
        const char *v = data + 13;
        while (k && (*v == ' ' || *v == '\t'))
            v++, k--;
        while (k && (v[k - 1] == '\r' || v[k - 1] == '\n' || v[k - 1] == ' '))
            k--;
        snprintf(s->message_id, sizeof(s->message_id), "%.*s", (int)k, v);
    }
    if (n > 12 && strncasecmp(data, "Retry-After:", 12) == 0) {
        char v[32];
        snprintf(v, sizeof(v), "%.*s", (int)(n - 12 < 31 ? n - 12 : 31), data + 12);
        s->retry_after = retry_after_parse(v);
    }
    return n;
}

static void send_free(struct send *s)
{
    if (s->easy)
        easy_put(s->easy);
    curl_mime_free(s->mime);
    curl_slist_free_all(s->rcpt);
    curl_slist_free_all(s->headers);
    buf_cleanup(&s->response);
    free(s);
}

/* An SMTP transfer's outcome: done is sent (under our Message-ID); a 4xx
 * reply is "try again later", a 5xx permanent; no reply after the
 * connection may have carried the message: unknown. */
static void smtp_classify(struct send *s, CURLcode rc)
{
    struct send_result *r = &s->o.res;
    memset(r, 0, sizeof(*r));
    if (rc == CURLE_OK) {
        r->outcome = SEND_OK;
        snprintf(r->provider_id, sizeof(r->provider_id), "%.71s", s->message_id);
        snprintf(r->provider_status, sizeof(r->provider_status), "accepted");
        return;
    }
    long code = 0;
    curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 400 && code < 600) {
        r->outcome = code < 500 ? SEND_RETRY : SEND_FAILED;
        snprintf(r->code, sizeof(r->code), "smtp_%ld", code);
        snprintf(r->message, sizeof(r->message), "SMTP %ld: %s", code, curl_easy_strerror(rc));
        return;
    }
    bool reached = rc != CURLE_COULDNT_CONNECT && rc != CURLE_COULDNT_RESOLVE_HOST &&
                   rc != CURLE_COULDNT_RESOLVE_PROXY;
    transport_classify(reached, curl_easy_strerror(rc), r);
}

/* A send's transfer is over (curlev removed it from the multi handle). */
static void send_done(void *arg, CURL *easy, CURLcode rc)
{
    struct worker *w = arg;
    struct send *s = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&s);
    w->inflight--;
    if (s->account && s->account->kind == ACCOUNT_SMTP) {
        smtp_classify(s, rc);
    } else if (rc == CURLE_OK) {
        long status = 0;
        curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
        if (s->account && s->account->kind == ACCOUNT_SENDGRID)
            sendgrid_classify(status, s->response.data, s->response.len, s->message_id,
                              s->retry_after, &s->o.res);
        else
            twilio_classify(status, s->response.data, s->response.len, s->retry_after, &s->o.res);
    } else {
        long sent_bytes = 0;
        curl_easy_getinfo(s->easy, CURLINFO_REQUEST_SIZE, &sent_bytes);
        bool reached = sent_bytes > 0 && rc != CURLE_COULDNT_CONNECT &&
                       rc != CURLE_COULDNT_RESOLVE_HOST && rc != CURLE_COULDNT_RESOLVE_PROXY;
        transport_classify(reached, curl_easy_strerror(rc), &s->o.res);
    }
    if (s->o.res.throttled)
        rate_pause(w, s->account, s->o.res.retry_after_s);
    if (s->o.res.outcome == SEND_FAILED || s->o.res.outcome == SEND_UNKNOWN)
        log_warn("delivery %lld: %s (%s %s)", s->o.delivery_id,
                 send_outcome_status(s->o.res.outcome), s->o.res.code, s->o.res.message);
    finish(w, &s->o);
    s->o.body = NULL; /* moved */
    send_free(s);
}

/* After a batch of finished sends: room for more jobs. */
static void sends_after(void *arg)
{
    struct worker *w = arg;
    if (w->inflight < w->cfg->concurrency)
        jobs_maybe_read(w);
}

static void sandbox_send(struct worker *w, struct outcome *o, const char *to, const char *from)
{
    unsigned char rnd[8];
    if (crypto_random(rnd, sizeof(rnd)) != CR_OK)
        memset(rnd, 0, sizeof(rnd));
    char hex[17];
    crypto_hex_encode(rnd, sizeof(rnd), hex);
    snprintf(o->res.provider_id, sizeof(o->res.provider_id), "SB%016llx%s", ++w->sandbox_seq, hex);
    if (w->sandbox) {
        cJSON *line = cJSON_CreateObject();
        cJSON_AddStringToObject(line, "sid", o->res.provider_id);
        cJSON_AddNumberToObject(line, "delivery_id", (double)o->delivery_id);
        cJSON_AddStringToObject(line, "to", to);
        cJSON_AddStringToObject(line, "from", from);
        cJSON_AddStringToObject(line, "body", o->body);
        char *s = cJSON_PrintUnformatted(line);
        fprintf(w->sandbox, "%s\n", s);
        free(s);
        cJSON_Delete(line);
    }
    o->res.outcome = SEND_OK;
    snprintf(o->res.provider_status, sizeof(o->res.provider_status), "sent");
    finish(w, o);
}

/* The customer's A/B variant of the campaign (deterministic per customer),
 * NULL when the campaign has none. Borrowed from the worker's cache. */
static const cJSON *pick_variant(struct worker *w, PGresult *res, int row, char variant[33])
{
    variant[0] = '\0';
    const char *text = PQgetvalue(res, row, COL_VARIANTS);
    if (!text[0] || !strcmp(text, "[]"))
        return NULL;
    long long campaign = strtoll(PQgetvalue(res, row, COL_CAMPAIGN), NULL, 10);
    if (w->variants_campaign != campaign || !w->variants) {
        cJSON_Delete(w->variants);
        w->variants = cJSON_Parse(text);
        w->variants_campaign = campaign;
    }
    int n = cJSON_GetArraySize(w->variants);
    if (n <= 0 || n > 16)
        return NULL;
    int weights[16];
    int i = 0;
    for (const cJSON *v = w->variants->child; v && i < n; v = v->next, i++) {
        const cJSON *wt = cJSON_GetObjectItemCaseSensitive(v, "weight");
        weights[i] = cJSON_IsNumber(wt) ? (int)wt->valuedouble : 1;
    }
    int k =
        variant_pick(campaign, strtoll(PQgetvalue(res, row, COL_CUSTOMER), NULL, 10), weights, n);
    const cJSON *v = cJSON_GetArrayItem(w->variants, k);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(v, "name");
    if (cJSON_IsString(name))
        snprintf(variant, 33, "%s", name->valuestring);
    return v;
}

/* The SMS template of this delivery: the campaign's body, or the body of
 * the customer's variant. Borrowed. */
static const char *pick_body(struct worker *w, PGresult *res, int row, char variant[33])
{
    const cJSON *v = pick_variant(w, res, row, variant);
    const cJSON *body =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(v, "message"), "body");
    return cJSON_IsString(body) ? body->valuestring : PQgetvalue(res, row, COL_BODY);
}

/* An email rendered for one customer. */
struct email {
    char *subject, *text, *html; /* owned; text or html may be NULL */
    char from_name[128], reply_to[328];
};

static void email_cleanup(struct email *m)
{
    free(m->subject);
    free(m->text);
    free(m->html);
}

/* Renders the campaign's (or the variant's) subject, text and html; HTML
 * values are escaped. 0, or -1 with a message in err. */
static int render_email(struct worker *w, PGresult *res, int row, char variant[33], struct email *m,
                        char *err, size_t errsz)
{
    memset(m, 0, sizeof(*m));
    const cJSON *v = pick_variant(w, res, row, variant);
    cJSON *own = v ? NULL : cJSON_Parse(PQgetvalue(res, row, COL_MESSAGE));
    const cJSON *msg = v ? cJSON_GetObjectItemCaseSensitive(v, "message") : own;
    static const char *const keys[] = {"subject", "text", "html"};
    char **outs[] = {&m->subject, &m->text, &m->html};
    struct tpl_customer vars = render_vars(res, row);
    int rcode = 0;
    for (int i = 0; i < 3 && !rcode; i++) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(msg, keys[i]);
        if (!cJSON_IsString(t) || !*t->valuestring)
            continue;
        struct buf b;
        buf_init(&b, SEND_MAX_BODY);
        if (tpl_render(t->valuestring, tpl_customer_lookup, &vars,
                       i == 2 ? TPL_ESCAPE_HTML : TPL_ESCAPE_NONE, &b, err, errsz) != CR_OK) {
            buf_cleanup(&b);
            rcode = -1;
        } else {
            *outs[i] = buf_take(&b);
        }
    }
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(msg, "from_name");
    const cJSON *rt = cJSON_GetObjectItemCaseSensitive(msg, "reply_to");
    if (cJSON_IsString(fn))
        snprintf(m->from_name, sizeof(m->from_name), "%s", fn->valuestring);
    if (cJSON_IsString(rt))
        snprintf(m->reply_to, sizeof(m->reply_to), "%s", rt->valuestring);
    tpl_customer_cleanup(&vars);
    cJSON_Delete(own);
    if (!rcode && (!m->subject || (!m->text && !m->html))) {
        snprintf(err, errsz, "the email has no subject or no content");
        rcode = -1;
    }
    if (rcode)
        email_cleanup(m);
    return rcode;
}

/* ---------------------------------------------------------------------
 * Provider rate: each account's messages (segments) per second, across
 * all workers. Sends wait in their account's queue; one EVAL takes the
 * tokens the whole queue needs from the account's Redis bucket
 * (crier:rate:<account>, refilled at rate_per_second, one second of
 * burst), and the queue drains as far as they go. A 429 pauses the
 * account (crier:pause:<account>, for its Retry-After): every worker's
 * next take waits for it. A send that would wait longer than
 * RATE_MAX_WAIT_MS goes back as a throttled retry (no attempt used) through
 * crier:delayed, so no delivery stays claimed for long.
 * ------------------------------------------------------------------- */

#define RATE_MAX_WAIT_MS 10000

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void rate_take(struct account *a);

static void start_transfer(struct worker *w, struct send *s)
{
    if (curl_multi_add_handle(curlev_multi(w->curl), s->easy) != CURLM_OK) {
        struct outcome o2 = s->o;
        s->o.body = NULL;
        send_free(s);
        w->inflight--;
        skip_or_fail(w, &o2, SEND_RETRY, "internal", "curl refused the transfer");
    }
}

/* Every queued send back as a throttled retry after wait_ms. */
static void rate_give_back(struct account *a, long wait_ms)
{
    struct worker *w = a->w;
    int n = 0;
    while (a->qhead) {
        struct send *s = a->qhead;
        a->qhead = s->qnext;
        struct outcome o = s->o;
        s->o.body = NULL;
        send_free(s);
        w->inflight--;
        o.res.throttled = true;
        o.res.retry_after_s = (wait_ms + 999) / 1000;
        skip_or_fail(w, &o, SEND_RETRY, "rate_limited", "provider account rate limit");
        n++;
    }
    a->qtail = NULL;
    a->qcost = 0;
    a->qsince_ms = 0;
    log_info("provider account %lld: %d sends back to crier:delayed for %ld ms (rate limit)", a->id,
             n, wait_ms);
}

static void rate_drain(struct account *a)
{
    while (a->qhead && a->qhead->cost <= a->credit) {
        struct send *s = a->qhead;
        a->qhead = s->qnext;
        if (!a->qhead)
            a->qtail = NULL;
        a->credit -= s->cost;
        a->qcost -= s->cost;
        start_transfer(a->w, s);
    }
    a->qsince_ms = a->qhead ? (a->qsince_ms ? a->qsince_ms : mono_ms()) : 0;
}

static void rate_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rate_take(arg);
}

static void rate_wait(struct account *a, long wait_ms)
{
    if (a->qsince_ms && mono_ms() - a->qsince_ms + wait_ms > RATE_MAX_WAIT_MS) {
        rate_give_back(a, wait_ms);
        return;
    }
    if (!a->timer)
        a->timer = evtimer_new(a->w->base, rate_timer_cb, a);
    struct timeval tv = {wait_ms / 1000, (wait_ms % 1000) * 1000};
    evtimer_add(a->timer, &tv);
}

static void rate_taken(redisAsyncContext *ac, void *reply, void *priv)
{
    struct account *a = priv;
    redisReply *r = reply;
    (void)ac;
    a->taking = false;
    long granted = 0, wait = 200;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_INTEGER && r->element[1]->type == REDIS_REPLY_INTEGER) {
        granted = (long)r->element[0]->integer;
        wait = (long)r->element[1]->integer;
    } else {
        log_warn("provider account %lld: rate bucket unavailable (%s)", a->id,
                 r && r->type == REDIS_REPLY_ERROR ? r->str : "disconnected");
    }
    a->credit += (double)granted;
    rate_drain(a);
    if (a->qhead)
        rate_wait(a, wait > 0 ? wait : 1);
}

static void rate_take(struct account *a)
{
    struct worker *w = a->w;
    if (a->taking || !a->qhead)
        return;
    long want = a->qcost - (long)a->credit;
    if (want <= 0) {
        rate_drain(a);
        return;
    }
    char bucket[RQ_KEY_MAX + 32], pause[RQ_KEY_MAX + 32];
    snprintf(bucket, sizeof(bucket), "%srate:%lld", w->cfg->key_prefix, a->id);
    snprintf(pause, sizeof(pause), "%spause:%lld", w->cfg->key_prefix, a->id);
    if (!w->wr ||
        redisAsyncCommand(w->wr, rate_taken, a, "EVAL %s 2 %s %s %ld %ld", pace_lua_take_account,
                          bucket, pause, a->rate_ps * 60, want) != REDIS_OK) {
        rate_wait(a, 200);
        return;
    }
    a->taking = true;
}

static void rate_submit(struct worker *w, struct send *s)
{
    struct account *a = s->account;
    if (a->rate_ps <= 0) {
        start_transfer(w, s);
        return;
    }
    a->w = w;
    s->qnext = NULL;
    if (a->qtail)
        a->qtail->qnext = s;
    else
        a->qhead = s;
    a->qtail = s;
    a->qcost += s->cost;
    if (!a->qsince_ms)
        a->qsince_ms = mono_ms();
    if (!a->taking && !(a->timer && evtimer_pending(a->timer, NULL)))
        rate_take(a);
}

/* A 429: the account pauses for its Retry-After (1 s at least). */
static void rate_pause(struct worker *w, struct account *a, long retry_after_s)
{
    if (!w->wr || !a)
        return;
    char pause[RQ_KEY_MAX + 32];
    snprintf(pause, sizeof(pause), "%spause:%lld", w->cfg->key_prefix, a->id);
    long ms = retry_after_s > 0 ? retry_after_s * 1000 : 1000;
    redisAsyncCommand(w->wr, NULL, NULL, "SET %s 1 PX %ld", pause, ms);
}

/* RFC 2047 encoded-word for a header value that is not plain ASCII. */
static void header_word(const char *in, char *out, size_t outsz)
{
    bool ascii = true;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++)
        ascii &= *p >= 0x20 && *p < 0x7f;
    if (ascii) {
        snprintf(out, outsz, "%s", in);
        return;
    }
    uint8_t *raw = (uint8_t *)in;
    size_t n = strlen(in), o = 0;
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    o += (size_t)snprintf(out, outsz, "=?UTF-8?B?");
    for (size_t i = 0; i < n && o + 5 < outsz; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (i + 1 < n ? (uint32_t)raw[i + 1] << 8 : 0) |
                     (i + 2 < n ? raw[i + 2] : 0);
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = i + 1 < n ? b64[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? b64[v & 63] : '=';
    }
    snprintf(out + o, outsz - o, "?=");
}

/* An SMTP send: envelope, credentials, and a MIME message (multipart/
 * alternative text + html) with crier's headers: Message-ID (kept as the
 * delivery's provider id), List-Unsubscribe(-Post), X-Crier-Delivery. */
static enum cr_err smtp_setup(struct worker *w, struct send *s, const struct account *a,
                              const struct email *m, const char *to, const char *unsub)
{
    CURL *c = s->easy;
    unsigned char rnd[8];
    char hex[17];
    if (crypto_random(rnd, sizeof(rnd)) != CR_OK)
        return CR_ECRYPTO;
    crypto_hex_encode(rnd, sizeof(rnd), hex);
    const char *domain = strchr(a->from, '@');
    snprintf(s->message_id, sizeof(s->message_id), "<crier.%lld.%s@%s>", s->o.delivery_id, hex,
             domain ? domain + 1 : "crier.invalid");
    char from[512], fromname[200], subject[1024], line[1400];
    curl_easy_setopt(c, CURLOPT_MAIL_FROM, a->from);
    s->rcpt = curl_slist_append(NULL, to);
    curl_easy_setopt(c, CURLOPT_MAIL_RCPT, s->rcpt);
    if (a->smtp_user[0]) {
        curl_easy_setopt(c, CURLOPT_USERNAME, a->smtp_user);
        curl_easy_setopt(c, CURLOPT_PASSWORD, a->smtp_pass);
    }
    if (a->smtp_starttls)
        curl_easy_setopt(c, CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
    header_word(m->from_name, fromname, sizeof(fromname));
    if (m->from_name[0])
        snprintf(from, sizeof(from), "From: %s <%s>", fromname, a->from);
    else
        snprintf(from, sizeof(from), "From: %s", a->from);
    s->headers = curl_slist_append(s->headers, from);
    snprintf(line, sizeof(line), "To: %s", to);
    s->headers = curl_slist_append(s->headers, line);
    header_word(m->subject, subject, sizeof(subject));
    snprintf(line, sizeof(line), "Subject: %s", subject);
    s->headers = curl_slist_append(s->headers, line);
    snprintf(line, sizeof(line), "Message-ID: %s", s->message_id);
    s->headers = curl_slist_append(s->headers, line);
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(line, sizeof(line), "Date: %a, %d %b %Y %H:%M:%S +0000", &tm);
    s->headers = curl_slist_append(s->headers, line);
    if (m->reply_to[0]) {
        snprintf(line, sizeof(line), "Reply-To: %s", m->reply_to);
        s->headers = curl_slist_append(s->headers, line);
    }
    snprintf(line, sizeof(line), "List-Unsubscribe: <%s>", unsub);
    s->headers = curl_slist_append(s->headers, line);
    s->headers = curl_slist_append(s->headers, "List-Unsubscribe-Post: List-Unsubscribe=One-Click");
    snprintf(line, sizeof(line), "X-Crier-Delivery: %lld", s->o.delivery_id);
    s->headers = curl_slist_append(s->headers, line);
    s->headers = curl_slist_append(s->headers, "MIME-Version: 1.0");

    s->mime = curl_mime_init(c);
    curl_mime *alt = curl_mime_init(c);
    const char *values[] = {m->text, m->html};
    static const char *const types[] = {"text/plain; charset=utf-8", "text/html; charset=utf-8"};
    for (int i = 0; i < 2; i++) {
        if (!values[i])
            continue;
        curl_mimepart *p = curl_mime_addpart(alt);
        curl_mime_data(p, values[i], CURL_ZERO_TERMINATED);
        curl_mime_type(p, types[i]);
        curl_mime_encoder(p, "quoted-printable");
    }
    curl_mimepart *part = curl_mime_addpart(s->mime);
    curl_mime_subparts(part, alt);
    curl_mime_type(part, "multipart/alternative");
    struct curl_slist *ph = curl_slist_append(NULL, "Content-Disposition: inline");
    curl_mime_headers(part, ph, 1);
    curl_easy_setopt(c, CURLOPT_MIMEPOST, s->mime);
    (void)w;
    return CR_OK;
}

void send_start(struct worker *w, PGresult *res, int row, int ch, const char *stream_id)
{
    struct outcome o;
    memset(&o, 0, sizeof(o));
    o.ch = ch;
    o.delivery_id = strtoll(PQgetvalue(res, row, COL_ID), NULL, 10);
    o.tenant_id = strtoll(PQgetvalue(res, row, COL_TENANT), NULL, 10);
    o.attempts = (int)strtol(PQgetvalue(res, row, COL_ATTEMPTS), NULL, 10);
    snprintf(o.stream_id, sizeof(o.stream_id), "%s", stream_id);
    const char *kind = PQgetisnull(res, row, COL_KIND) ? "none" : PQgetvalue(res, row, COL_KIND);
    static const char *const kinds[] = {"twilio", "sandbox", "sendgrid", "smtp"};
    o.provider = "none";
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        if (!strcmp(kind, kinds[i]))
            o.provider = kinds[i];

    if (PQgetvalue(res, row, COL_OPT_OUT)[0] == 't') {
        skip_or_fail(w, &o, SEND_SKIPPED, "opted_out", "opted_out");
        return;
    }
    const char *channel = PQgetvalue(res, row, COL_CHANNEL);
    bool voice = strcmp(channel, "voice") == 0, email = strcmp(channel, "email") == 0;
    int address_col = email ? COL_EMAIL : COL_PHONE;
    if (PQgetisnull(res, row, address_col)) {
        skip_or_fail(w, &o, SEND_SKIPPED, "no_address", "no_address");
        return;
    }
    char why[192];
    struct account *a = account_get(w, res, row, why, sizeof(why));
    if (!a) {
        skip_or_fail(w, &o, SEND_FAILED, "config", why);
        return;
    }
    /* A call has no body here: its script is served as TwiML when Twilio
     * fetches the call's Url (the voice webhook). */
    struct email m;
    memset(&m, 0, sizeof(m));
    if (voice) {
        o.body = xstrdup("");
    } else if (email) {
        char err[160];
        if (render_email(w, res, row, o.variant, &m, err, sizeof(err)) != 0) {
            skip_or_fail(w, &o, SEND_FAILED, "template", err);
            return;
        }
        /* The messages table keeps the subject and the text (else the html). */
        o.body = xasprintf("%s\n\n%s", m.subject, m.text ? m.text : m.html);
    } else {
        struct tpl_customer vars = render_vars(res, row);
        struct buf body;
        buf_init(&body, SEND_MAX_BODY);
        char err[160];
        enum cr_err e = tpl_render(pick_body(w, res, row, o.variant), tpl_customer_lookup, &vars,
                                   TPL_ESCAPE_NONE, &body, err, sizeof(err));
        tpl_customer_cleanup(&vars);
        if (e != CR_OK) {
            buf_cleanup(&body);
            skip_or_fail(w, &o, SEND_FAILED, "template", err);
            return;
        }
        o.body = buf_take(&body);
    }
    const char *to = PQgetvalue(res, row, address_col);

    if (a->kind == ACCOUNT_SANDBOX) {
        email_cleanup(&m);
        sandbox_send(w, &o, to, a->from);
        return;
    }

    struct send *s = xcalloc(1, sizeof(*s));
    s->w = w;
    s->o = o;
    buf_init(&s->response, SEND_MAX_RESPONSE);
    struct buf form;
    buf_init(&form, 16384);
    char callback[512];
    snprintf(callback, sizeof(callback), "%s/v1/webhooks/%lld/twilio/status", w->cfg->public_url,
             o.tenant_id);
    enum cr_err fe = CR_OK;
    char *json = NULL;
    char unsub[640] = "";
    bool smtp = a->kind == ACCOUNT_SMTP;
    if (email) {
        char token[UNSUB_TOKEN_MAX];
        long long customer = strtoll(PQgetvalue(res, row, COL_CUSTOMER), NULL, 10);
        fe = unsub_token(w->secret, o.tenant_id, customer, "email", o.delivery_id,
                         (long long)time(NULL) + UNSUB_TOKEN_TTL_S, token, sizeof(token));
        snprintf(unsub, sizeof(unsub), "%s/v1/unsubscribe?token=%s", w->cfg->public_url, token);
        if (!fe && a->kind == ACCOUNT_SENDGRID &&
            !(json = sendgrid_mail_json(to, a->from, m.from_name, m.reply_to, m.subject, m.text,
                                        m.html, unsub, o.delivery_id, o.tenant_id)))
            fe = CR_EINVAL;
    } else if (voice) {
        char url[512];
        snprintf(url, sizeof(url), "%s/v1/webhooks/%lld/twilio/voice?delivery=%lld",
                 w->cfg->public_url, o.tenant_id, o.delivery_id);
        const char *amd = PQgetisnull(res, row, COL_AMD) ? "" : PQgetvalue(res, row, COL_AMD);
        fe = twilio_call_form(&form, to, a->from, url, callback,
                              !strcmp(amd, "enable")               ? "Enable"
                              : !strcmp(amd, "detect_message_end") ? "DetectMessageEnd"
                                                                   : NULL);
    } else {
        fe = twilio_sms_form(&form, to, a->from, o.body, callback);
    }
    if (fe != CR_OK || !(s->easy = easy_get()) ||
        (smtp && smtp_setup(w, s, a, &m, to, unsub) != CR_OK)) {
        email_cleanup(&m);
        free(json);
        buf_cleanup(&form);
        s->o.body = NULL;
        skip_or_fail(w, &o, SEND_FAILED, "internal", "cannot build the request");
        send_free(s);
        return;
    }
    email_cleanup(&m);
    CURL *c = s->easy;
    if (a->uh)
        curl_easy_setopt(c, CURLOPT_CURLU, a->uh);
    else
        curl_easy_setopt(c, CURLOPT_URL, a->url);
    if (smtp) {
        /* smtp_setup set the envelope, the MIME message and its headers. */
    } else if (json) {
        s->headers = curl_slist_append(NULL, "Accept: application/json");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(json));
        curl_easy_setopt(c, CURLOPT_COPYPOSTFIELDS, json);
        s->headers = curl_slist_append(s->headers, "Content-Type: application/json");
        s->headers = curl_slist_append(s->headers, a->auth);
        free(json);
    } else {
        s->headers = curl_slist_append(NULL, "Accept: application/json");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)form.len);
        curl_easy_setopt(c, CURLOPT_COPYPOSTFIELDS, buf_str(&form));
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
        curl_easy_setopt(c, CURLOPT_USERPWD, a->auth);
    }
    buf_cleanup(&form);
    if (!smtp)
        s->headers = curl_slist_append(s->headers, "Expect:");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, s->headers);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "crier/0.1");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, s);
    curl_easy_setopt(c, CURLOPT_PRIVATE, s);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, w->cfg->send_timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, w->cfg->connect_timeout_ms);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, smtp ? "smtp,smtps" : "http,https");
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    s->account = a;
    s->cost = voice || email ? 1 : sms_segments(o.body, strlen(o.body), NULL);
    if (s->cost == 0)
        s->cost = 1;
    w->inflight++; /* from here until its outcome, queued or in curl */
    rate_submit(w, s);
}
