/* webhooks.c - the providers' signed callbacks: Twilio inbound SMS and
 * status callbacks, SendGrid's Event Webhook, under /v1/webhooks/{tenant}/.
 * No API key: the provider's signature authenticates the request (websig.h).
 *
 * The hot path touches Redis only. The secrets that verify a tenant's
 * callbacks (Twilio auth tokens by account SID, SendGrid verification keys)
 * live in an in-memory cache per tenant, loaded from PostgreSQL on a miss -
 * concurrent misses share one query, the requests wait for it and run again
 * - and reloaded in the background once WH_TTL_S old. A signature that does
 * not verify reloads the tenant's secrets first when they are WH_RECHECK_S
 * old (a rotated token or a key just configured works within seconds), so
 * unknown tenants and forged requests cost at most one query per tenant per
 * WH_RECHECK_S. An unknown tenant looks exactly like a bad signature: 403.
 *
 * The cache holds WH_MAX_TENANTS entries in two LRU lists: positive (a
 * tenant with secrets) and negative (none: an unknown tenant, one without
 * webhook accounts, a failed load). Anyone can make negative entries - the
 * URLs carry no secret - so a full cache evicts the least recently used
 * negative entry first, whatever its age, and a positive one only when no
 * negative entry can go; loads are WH_MAX_LOADS at once (a cold miss past
 * that is a 503, a recheck past that a plain 403).
 *
 * The Twilio URL is rebuilt from CRIER_PUBLIC_URL + the request's path and
 * query, never from the socket (TLS proxies). A verified callback is
 * appended to the inbound stream, answered once Redis has it:
 *   XADD <prefix>inbound * kind K tenant T at MS body RAW [name value]...
 * (K twilio_sms | twilio_status | twilio_gather | sendgrid_events, MS the
 * receive time in epoch ms, RAW the verified body as received); 503 when
 * Redis is down, so the provider retries. */
#include <event2/keyvalq_struct.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>

#include "api.h"
#include "crypto.h"
#include "log.h"
#include "websig.h"
#include "xalloc.h"

#define WH_TTL_S 30.0    /* secrets older than this are reloaded in the background */
#define WH_RECHECK_S 5.0 /* a failed check reloads secrets at most this often */
#define WH_SLOTS 1024    /* hash buckets of the tenant cache */
#define WH_MAX_TENANTS 4096
#define WH_MAX_LOADS 16   /* secret loads in flight at once (cold misses beyond: 503) */
#define WH_MAX_TWILIO 16  /* Twilio accounts kept per tenant */
#define WH_MAX_SENDGRID 8 /* SendGrid keys kept per tenant */

static const char sql_secrets[] =
    "SELECT kind, credentials, settings ->> 'webhook_public_key' FROM provider_accounts"
    " WHERE tenant_id = $1 AND kind IN ('twilio', 'sendgrid') ORDER BY id";

static const char twiml_empty[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>";

/* ---------------------------------------------------------------------
 * Secrets cache
 * ------------------------------------------------------------------- */

struct wh_twilio {
    char sid[40];
    char *token;
};

struct wh_tenant {
    struct webhooks_cache *cache;
    struct wh_tenant *next; /* hash chain */
    long long id;
    bool loaded;    /* a load succeeded once: the lists below are real */
    bool loading;   /* a load is in flight */
    double checked; /* monotonic time the last load finished (0: never) */
    struct wh_twilio tw[WH_MAX_TWILIO];
    int ntw;
    struct websig_key *sg[WH_MAX_SENDGRID];
    int nsg;
    struct api_req **waiting; /* requests to run again when the load finishes */
    size_t nwait, capwait;
    bool positive;                   /* on the positive list (else the negative) */
    struct wh_tenant *newer, *older; /* that list, most recently used first */
};

struct wh_lru {
    struct wh_tenant *head, *tail; /* most / least recently used */
};

struct webhooks_cache {
    struct app *app;
    struct wh_tenant *slot[WH_SLOTS];
    int ntenants;
    int loads;
    struct wh_lru pos, neg;
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void secrets_clear(struct wh_tenant *e)
{
    for (int i = 0; i < e->ntw; i++) {
        OPENSSL_cleanse(e->tw[i].token, strlen(e->tw[i].token));
        free(e->tw[i].token);
    }
    e->ntw = 0;
    for (int i = 0; i < e->nsg; i++)
        websig_key_free(e->sg[i]);
    e->nsg = 0;
}

static void tenant_free(struct wh_tenant *e)
{
    secrets_clear(e);
    free(e->waiting);
    free(e);
}

void webhooks_cache_free(struct webhooks_cache *c)
{
    if (!c)
        return;
    for (int i = 0; i < WH_SLOTS; i++) {
        while (c->slot[i]) {
            struct wh_tenant *e = c->slot[i];
            c->slot[i] = e->next;
            tenant_free(e);
        }
    }
    free(c);
}

static unsigned slot_of(long long id)
{
    unsigned long long h = (unsigned long long)id * 0x9E3779B97F4A7C15ull;
    return (unsigned)(h >> 32) % WH_SLOTS;
}

static void lru_unlink(struct webhooks_cache *c, struct wh_tenant *e)
{
    struct wh_lru *l = e->positive ? &c->pos : &c->neg;
    if (e->newer)
        e->newer->older = e->older;
    else
        l->head = e->older;
    if (e->older)
        e->older->newer = e->newer;
    else
        l->tail = e->newer;
    e->newer = e->older = NULL;
}

static void lru_push(struct webhooks_cache *c, struct wh_tenant *e)
{
    struct wh_lru *l = e->positive ? &c->pos : &c->neg;
    e->newer = NULL;
    e->older = l->head;
    if (l->head)
        l->head->newer = e;
    else
        l->tail = e;
    l->head = e;
}

/* e was used: the most recent of its list, which its secrets decide. */
static void lru_touch(struct webhooks_cache *c, struct wh_tenant *e)
{
    lru_unlink(c, e);
    e->positive = e->loaded && (e->ntw > 0 || e->nsg > 0);
    lru_push(c, e);
}

/* Makes room for one entry: the least recently used negative entry nobody
 * waits for, else such a positive one. False when every entry is busy. */
static bool cache_evict(struct webhooks_cache *c)
{
    struct wh_tenant *e = NULL;
    for (int pass = 0; pass < 2 && !e; pass++) {
        e = pass == 0 ? c->neg.tail : c->pos.tail;
        while (e && (e->loading || e->nwait > 0))
            e = e->newer; /* a load in flight holds it; at most WH_MAX_LOADS */
    }
    if (!e)
        return false;
    lru_unlink(c, e);
    struct wh_tenant **pp = &c->slot[slot_of(e->id)];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    tenant_free(e);
    c->ntenants--;
    return true;
}

/* Keeps one account's verification secret from a loaded row. */
static void secrets_add_row(struct wh_tenant *e, PGresult *res, int row)
{
    const char *kind = PQgetvalue(res, row, 0);
    if (!strcmp(kind, "sendgrid")) {
        struct websig_key *k = NULL;
        if (PQgetisnull(res, row, 2) || e->nsg >= WH_MAX_SENDGRID)
            return;
        if (websig_key_parse(PQgetvalue(res, row, 2), &k) != CR_OK) {
            log_warn("tenant %lld: a SendGrid webhook_public_key does not parse", e->id);
            return;
        }
        e->sg[e->nsg++] = k;
        return;
    }
    if (PQgetisnull(res, row, 1) || e->ntw >= WH_MAX_TWILIO)
        return;
    char *plain = NULL;
    size_t plen = 0;
    cJSON *creds = NULL;
    if (crypto_open(e->cache->app->secret, PQgetvalue(res, row, 1), &plain, &plen) == CR_OK)
        creds = cJSON_Parse(plain);
    if (plain) {
        OPENSSL_cleanse(plain, plen);
        free(plain);
    }
    const cJSON *sid = cJSON_GetObjectItemCaseSensitive(creds, "account_sid");
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(creds, "secret");
    if (cJSON_IsString(sid) && cJSON_IsString(tok) && *tok->valuestring &&
        strlen(sid->valuestring) < sizeof(e->tw[0].sid)) {
        bool dup = false; /* an SMS and a voice account often share one */
        for (int i = 0; i < e->ntw && !dup; i++)
            dup = !strcmp(e->tw[i].sid, sid->valuestring) &&
                  !strcmp(e->tw[i].token, tok->valuestring);
        if (!dup) {
            snprintf(e->tw[e->ntw].sid, sizeof(e->tw[0].sid), "%s", sid->valuestring);
            e->tw[e->ntw++].token = xstrdup(tok->valuestring);
        }
    } else {
        log_warn("tenant %lld: Twilio credentials cannot be opened (check CRIER_SECRET_KEY)",
                 e->id);
    }
    if (tok && cJSON_IsString(tok))
        OPENSSL_cleanse(tok->valuestring, strlen(tok->valuestring));
    cJSON_Delete(creds);
}

static void secrets_loaded(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct wh_tenant *e = arg;
    struct webhooks_cache *c = e->cache;
    (void)sqlstate;
    e->loading = false;
    c->loads--;
    e->checked = mono_now();
    if (res) {
        secrets_clear(e);
        for (int i = 0; i < PQntuples(res); i++)
            secrets_add_row(e, res, i);
        e->loaded = true;
    } else {
        log_warn("webhook secrets of tenant %lld not loaded: %s", e->id, errmsg);
    }
    lru_touch(c, e);
    /* Detach the waiters first: a request that runs again never queues on
     * this list (its entry was just checked), but keep it obviously safe. */
    struct api_req **waiting = e->waiting;
    size_t n = e->nwait;
    e->waiting = NULL;
    e->nwait = e->capwait = 0;
    for (size_t i = 0; i < n; i++) {
        if (res)
            waiting[i]->handler(waiting[i]);
        else
            http_reply_dependency(waiting[i], "postgres", errmsg);
    }
    free(waiting);
}

/* Starts a load of e's secrets unless one runs; false when WH_MAX_LOADS
 * run already (nothing started). */
static bool secrets_load(struct wh_tenant *e)
{
    if (e->loading)
        return true;
    if (e->cache->loads >= WH_MAX_LOADS)
        return false;
    e->loading = true;
    e->cache->loads++;
    char id[24];
    snprintf(id, sizeof(id), "%lld", e->id);
    const char *params[] = {id};
    pgpool_query(e->cache->app->pg, sql_secrets, 1, params, secrets_loaded, e);
    return true;
}

/* Queues r on a load of e's secrets; false when no load can start. */
static bool wait_for_load(struct wh_tenant *e, struct api_req *r)
{
    if (!secrets_load(e))
        return false;
    if (e->nwait == e->capwait) {
        e->capwait = e->capwait ? e->capwait * 2 : 8;
        e->waiting = xrealloc(e->waiting, e->capwait * sizeof(*e->waiting));
    }
    e->waiting[e->nwait++] = r;
    return true;
}

static void reply_busy(struct api_req *r)
{
    http_reply_error(r, 503, "busy", "too many webhook tenants being checked; retry later", NULL);
}

/* The tenant's secrets, or NULL when the request was taken over: queued on
 * a load (it runs again when the load is done) or answered (503). */
static struct wh_tenant *tenant_or_take(struct api_req *r)
{
    struct app *app = r->app;
    if (!app->webhooks) {
        app->webhooks = xcalloc(1, sizeof(*app->webhooks));
        app->webhooks->app = app;
    }
    struct webhooks_cache *c = app->webhooks;
    double now = mono_now();
    unsigned s = slot_of(r->tenant_id);
    struct wh_tenant *e = c->slot[s];
    while (e && e->id != r->tenant_id)
        e = e->next;
    if (!e) {
        /* A cold miss: a load, and room for its entry. */
        if (c->loads >= WH_MAX_LOADS || (c->ntenants >= WH_MAX_TENANTS && !cache_evict(c))) {
            reply_busy(r);
            return NULL;
        }
        e = xcalloc(1, sizeof(*e));
        e->cache = c;
        e->id = r->tenant_id;
        e->next = c->slot[s];
        c->slot[s] = e;
        c->ntenants++;
        lru_push(c, e); /* negative until its secrets are loaded */
    } else {
        lru_touch(c, e);
    }
    if (!e->loaded) {
        if (e->loading || now - e->checked >= WH_RECHECK_S || e->checked == 0) {
            if (!wait_for_load(e, r))
                reply_busy(r);
        } else {
            http_reply_dependency(r, "postgres", "webhook secrets not loaded yet");
        }
        return NULL;
    }
    if (now - e->checked >= WH_TTL_S)
        (void)secrets_load(e); /* answer from what we have meanwhile; retried when busy */
    return e;
}

/* A check failed against e's secrets: when they are old enough, reload them
 * and run the request again; otherwise 403. Returns false either way. */
static bool reject_or_recheck(struct api_req *r, struct wh_tenant *e, const char *why)
{
    if ((e->loading || mono_now() - e->checked >= WH_RECHECK_S) && wait_for_load(e, r))
        return false;
    log_info("webhook %s rejected: %s", r->path, why);
    http_reply_error(r, 403, "invalid_signature", "the request's signature does not verify", NULL);
    return false;
}

/* ---------------------------------------------------------------------
 * Request checks
 * ------------------------------------------------------------------- */

static const char *in_header(struct api_req *r, const char *name)
{
    return evhttp_find_header(evhttp_request_get_input_headers(r->req), name);
}

/* True when the request's Content-Type is want (parameters allowed);
 * otherwise replies 415. */
static bool media_type_or_reply(struct api_req *r, const char *want)
{
    const char *ct = in_header(r, "Content-Type");
    size_t n = strlen(want);
    if (ct && strncasecmp(ct, want, n) == 0 &&
        (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ' || ct[n] == '\t'))
        return true;
    char msg[128];
    snprintf(msg, sizeof(msg), "Content-Type must be %s", want);
    http_reply_error(r, 415, "unsupported_media_type", msg, NULL);
    return false;
}

static void reject(struct api_req *r, const char *why)
{
    log_info("webhook %s rejected: %s", r->path, why);
    http_reply_error(r, 403, "invalid_signature", "the request's signature does not verify", NULL);
}

bool webhooks_twilio_ok(struct api_req *r)
{
    r->tenant_id = r->ids[0];
    const char *sig = in_header(r, WEBSIG_TWILIO_HEADER);
    if (!sig || !*sig) {
        reject(r, "no " WEBSIG_TWILIO_HEADER);
        return false;
    }
    struct wh_tenant *e = tenant_or_take(r);
    if (!e)
        return false;
    /* The URL Twilio called, from configuration: CRIER_PUBLIC_URL + path + query. */
    char *url = xasprintf("%s%s%s%s", r->app->cfg->public_url, r->path, r->query ? "?" : "",
                          r->query ? r->query : "");
    const char *ct = in_header(r, "Content-Type");
    char sid[40] = "";
    bool have_sid = websig_form_value(r->body, r->body_len, "AccountSid", sid, sizeof(sid));
    bool ok = false;
    for (int i = 0; i < e->ntw && !ok; i++)
        if (!have_sid || !strcmp(e->tw[i].sid, sid))
            ok = websig_twilio_verify(e->tw[i].token, url, r->body, r->body_len, ct, sig);
    if (ok) {
        free(url);
        return true;
    }
    char why[600];
    snprintf(why, sizeof(why),
             "Twilio signature does not verify for %.512s (check CRIER_PUBLIC_URL)", url);
    free(url);
    return reject_or_recheck(r, e, why);
}

static bool sendgrid_ok(struct api_req *r)
{
    r->tenant_id = r->ids[0];
    const char *sig = in_header(r, WEBSIG_SENDGRID_SIG_HEADER);
    const char *ts = in_header(r, WEBSIG_SENDGRID_TS_HEADER);
    if (!sig || !*sig || !ts || !*ts) {
        reject(r, "no SendGrid signature or timestamp");
        return false;
    }
    /* Checked before the tenant is looked up: the answer tells nothing
     * about the tenant. */
    if (!websig_timestamp_fresh(ts, time(NULL), WEBSIG_REPLAY_WINDOW_S)) {
        log_info("webhook %s rejected: timestamp %.20s outside the replay window", r->path, ts);
        http_reply_error(r, 403, "stale_timestamp",
                         "the request's timestamp is outside the replay window", NULL);
        return false;
    }
    struct wh_tenant *e = tenant_or_take(r);
    if (!e)
        return false;
    for (int i = 0; i < e->nsg; i++)
        if (websig_sendgrid_verify_key(e->sg[i], ts, r->body, r->body_len, sig))
            return true;
    return reject_or_recheck(r, e, "SendGrid signature does not verify");
}

/* ---------------------------------------------------------------------
 * Inbound stream
 * ------------------------------------------------------------------- */

struct enqueue {
    struct api_req *r;
    void (*done)(struct api_req *r);
};

static void enqueued(redisAsyncContext *ac, void *reply, void *priv)
{
    struct enqueue *q = priv;
    redisReply *rep = reply;
    (void)ac;
    if (!rep || rep->type == REDIS_REPLY_ERROR)
        http_reply_dependency(q->r, "redis", rep ? rep->str : "connection lost");
    else
        q->done(q->r);
    free(q);
}

void webhooks_enqueue(struct api_req *r, const char *kind, const char *const *extra, int nextra,
                      void (*done)(struct api_req *r))
{
    struct app *app = r->app;
    if (!redis_link_ready(app)) {
        http_reply_dependency(r, "redis", "not connected");
        return;
    }
    char tenant[24], at[24];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    snprintf(at, sizeof(at), "%lld",
             (long long)r->started.tv_sec * 1000 + (long long)r->started.tv_usec / 1000);
    const char *argv[11 + 16];
    size_t argvlen[11 + 16];
    int n = 0;
    const char *fixed[] = {"XADD", app->keys.inbound, "*", "kind", kind, "tenant", tenant, "at", at,
                           "body"};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        argv[n++] = fixed[i];
    argv[n++] = r->body ? r->body : "";
    for (int i = 0; i < nextra && i < 16; i++)
        argv[n++] = extra[i];
    for (int i = 0; i < n; i++)
        argvlen[i] = i == 10 ? r->body_len : strlen(argv[i]);
    struct enqueue *q = xmalloc(sizeof(*q));
    q->r = r;
    q->done = done;
    if (redisAsyncCommandArgv(app->redis.ac, enqueued, q, n, argv, argvlen) != REDIS_OK) {
        free(q);
        http_reply_dependency(r, "redis", "command not sent");
    }
}

/* ---------------------------------------------------------------------
 * Handlers
 * ------------------------------------------------------------------- */

static void sms_done(struct api_req *r)
{
    http_reply_text(r, 200, "text/xml", twiml_empty, sizeof(twiml_empty) - 1);
}

static void empty_done(struct api_req *r)
{
    http_reply_text(r, 200, "text/plain", "", 0);
}

void webhooks_twilio_sms(struct api_req *r)
{
    if (!media_type_or_reply(r, "application/x-www-form-urlencoded") || !webhooks_twilio_ok(r))
        return;
    webhooks_enqueue(r, "twilio_sms", NULL, 0, sms_done);
}

void webhooks_twilio_status(struct api_req *r)
{
    if (!media_type_or_reply(r, "application/x-www-form-urlencoded") || !webhooks_twilio_ok(r))
        return;
    webhooks_enqueue(r, "twilio_status", NULL, 0, http_reply_no_content);
}

void webhooks_sendgrid_events(struct api_req *r)
{
    if (!media_type_or_reply(r, "application/json") || !sendgrid_ok(r))
        return;
    /* Verified: now the body must be what SendGrid sends, a JSON array. */
    cJSON *j = r->body_len ? cJSON_ParseWithLength(r->body, r->body_len) : NULL;
    bool array = cJSON_IsArray(j);
    cJSON_Delete(j);
    if (!array) {
        http_reply_error(r, 400, "invalid_json", "the event webhook body must be a JSON array",
                         NULL);
        return;
    }
    webhooks_enqueue(r, "sendgrid_events", NULL, 0, empty_done);
}
