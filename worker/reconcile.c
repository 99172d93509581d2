/* reconcile.c - asks Twilio about deliveries whose receipt never came.
 *
 * Status callbacks can be lost (Twilio does not retry them). Every
 * CRIER_RECONCILE_EVERY_S each worker claims up to CRIER_RECONCILE_BATCH
 * Twilio deliveries that have been 'sent' for at least
 * CRIER_RECONCILE_AFTER_S (FOR UPDATE SKIP LOCKED, stamped reconciled_at in
 * the same statement, so workers never ask about the same delivery at once;
 * the next question about one still 'sent' waits twice as long, and after 3
 * days it is left alone), fetches GET …/Messages/{Sid}.json or
 * …/Calls/{Sid}.json with the account's credentials (send_account: the same
 * cache and the same opening of the sealed credentials as the sends), and
 * hands the answers to inbound_apply_status: the status callbacks' own
 * monotonic path (crier_inbound_twilio_status).
 *
 * The fetches run on a curl multi handle of their own on the worker's loop
 * (common/curlev.c), apart from the sends'. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "curlev.h"
#include "log.h"
#include "worker.h"
#include "xalloc.h"

#define RECONCILE_MAX_RESPONSE (64 * 1024)

/* $1 the age (s) a 'sent' delivery must reach, $2 how many. */
static const char sql_claim[] =
    "WITH c AS (SELECT d.id FROM deliveries d"
    "   WHERE d.status = 'sent' AND d.provider = 'twilio'"
    "     AND d.sent_at < now() - make_interval(secs => $1::int)"
    "     AND d.sent_at > now() - interval '3 days'"
    "     AND (d.reconciled_at IS NULL OR d.reconciled_at < now()"
    "          - GREATEST(make_interval(secs => $1::int), d.reconciled_at - d.sent_at))"
    "   ORDER BY d.sent_at LIMIT $2::int FOR UPDATE SKIP LOCKED),"
    " u AS (UPDATE deliveries d SET reconciled_at = now() FROM c WHERE d.id = c.id"
    "   RETURNING d.id, d.tenant_id, d.campaign_id, d.provider_message_id)"
    " SELECT u.id, u.tenant_id, u.provider_message_id, p.id, p.kind, p.from_address,"
    "  p.credentials, p.rate_per_second, p.channel"
    " FROM u JOIN campaigns k ON k.tenant_id = u.tenant_id AND k.id = u.campaign_id"
    " LEFT JOIN provider_accounts p ON p.tenant_id = k.tenant_id AND p.id = k.provider_account_id";

enum claim_col {
    RC_ID = 0,
    RC_TENANT,
    RC_SID,
    RC_ACCOUNT,
    RC_KIND,
    RC_FROM,
    RC_CREDS,
    RC_RATE,
    RC_CHANNEL,
};

struct reconcile {
    struct worker *w;
    struct curlev *curl; /* the fetches' transfers */
    struct event *tick;
    bool claiming, applying;
    int inflight;
    struct fetch *fetches; /* in curl */
    /* the round's answers, applied together when its last fetch ends */
    int n, cap;
    long long *tenants;
    char **payloads;
    long long asked, answered;
};

/* One GET. */
struct fetch {
    struct reconcile *rc;
    struct fetch *prev, *next;
    CURL *easy;
    struct buf body;
    long long delivery, tenant;
    char sid[72];
};

/* ---------------------------------------------------------------------
 * A round: claim, fetch, apply
 * ------------------------------------------------------------------- */

static void applied(void *arg, bool ok)
{
    struct reconcile *rc = arg;
    if (ok)
        rc->answered += rc->n;
    for (int i = 0; i < rc->n; i++)
        free(rc->payloads[i]);
    rc->n = 0;
    rc->applying = false;
}

/* After the round's last fetch: its answers, in one statement. */
static void round_end(struct reconcile *rc)
{
    if (rc->inflight > 0 || rc->applying)
        return;
    if (rc->n == 0)
        return;
    rc->applying = true;
    log_debug("reconciliation: applying %d provider statuses", rc->n);
    inbound_apply_status(rc->w, rc->n, rc->tenants, rc->payloads, applied, rc);
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    struct fetch *f = arg;
    size_t n = size * nmemb;
    return buf_append(&f->body, data, n) == CR_OK ? n : 0;
}

static void fetch_free(struct fetch *f)
{
    if (f->prev)
        f->prev->next = f->next;
    else if (f->rc->fetches == f)
        f->rc->fetches = f->next;
    if (f->next)
        f->next->prev = f->prev;
    if (f->easy)
        curl_easy_cleanup(f->easy);
    buf_cleanup(&f->body);
    free(f);
}

/* The provider's answer as a status report, kept for the round's apply. */
static void take_answer(struct reconcile *rc, struct fetch *f, long http)
{
    cJSON *root = http == 200 ? cJSON_ParseWithLength(f->body.data, f->body.len) : NULL;
    const cJSON *status = cJSON_GetObjectItemCaseSensitive(root, "status");
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(root, "error_code");
    const cJSON *amd = cJSON_GetObjectItemCaseSensitive(root, "answered_by");
    if (!cJSON_IsString(status) || !status->valuestring[0]) {
        log_warn("reconciliation of delivery %lld: Twilio answered HTTP %ld without a status",
                 f->delivery, http);
        cJSON_Delete(root);
        return;
    }
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "sid", f->sid);
    cJSON_AddStringToObject(p, "status", status->valuestring);
    if (cJSON_IsNumber(code)) {
        char num[24];
        snprintf(num, sizeof(num), "%.0f", code->valuedouble);
        cJSON_AddStringToObject(p, "error_code", num);
    } else if (cJSON_IsString(code) && code->valuestring[0]) {
        cJSON_AddStringToObject(p, "error_code", code->valuestring);
    }
    if (cJSON_IsString(amd) && amd->valuestring[0])
        cJSON_AddStringToObject(p, "answered_by", amd->valuestring);
    if (rc->n == rc->cap) {
        rc->cap = rc->cap ? rc->cap * 2 : 64;
        rc->tenants = xrealloc(rc->tenants, (size_t)rc->cap * sizeof(*rc->tenants));
        rc->payloads = xrealloc(rc->payloads, (size_t)rc->cap * sizeof(*rc->payloads));
    }
    char *text = cJSON_PrintUnformatted(p);
    rc->tenants[rc->n] = f->tenant;
    rc->payloads[rc->n++] = xstrdup(text ? text : "{}");
    cJSON_free(text);
    cJSON_Delete(p);
    cJSON_Delete(root);
}

/* A fetch is over (curlev removed it from the multi handle). */
static void fetch_done(void *arg, CURL *easy, CURLcode res)
{
    struct reconcile *rc = arg;
    struct fetch *f = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&f);
    rc->inflight--;
    long http = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &http);
    if (res != CURLE_OK)
        log_warn("reconciliation of delivery %lld: %s", f->delivery, curl_easy_strerror(res));
    else
        take_answer(rc, f, http);
    fetch_free(f);
}

static void fetches_after(void *arg)
{
    round_end(arg);
}

/* GET {account's Messages|Calls}/{sid}.json */
static void fetch_start(struct reconcile *rc, const struct account *a, PGresult *res, int row)
{
    struct worker *w = rc->w;
    const char *sid = PQgetvalue(res, row, RC_SID);
    size_t base = strlen(a->url);
    if (base > 5 && !strcmp(a->url + base - 5, ".json"))
        base -= 5;
    if (!sid[0] || strlen(sid) >= sizeof(((struct fetch *)0)->sid) ||
        strspn(sid, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") !=
            strlen(sid))
        return; /* not a Twilio sid: nothing to ask */
    struct fetch *f = xcalloc(1, sizeof(*f));
    f->rc = rc;
    f->delivery = strtoll(PQgetvalue(res, row, RC_ID), NULL, 10);
    f->tenant = strtoll(PQgetvalue(res, row, RC_TENANT), NULL, 10);
    snprintf(f->sid, sizeof(f->sid), "%s", sid);
    buf_init(&f->body, RECONCILE_MAX_RESPONSE);
    char url[sizeof(a->url) + 96];
    snprintf(url, sizeof(url), "%.*s/%s.json", (int)base, a->url, sid);
    if (!(f->easy = curl_easy_init())) {
        fetch_free(f);
        return;
    }
    CURL *c = f->easy;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
    curl_easy_setopt(c, CURLOPT_USERPWD, a->auth);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "crier/0.1");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(c, CURLOPT_PRIVATE, f);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, w->cfg->send_timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, w->cfg->connect_timeout_ms);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    if (curl_multi_add_handle(curlev_multi(rc->curl), c) != CURLM_OK) {
        fetch_free(f);
        return;
    }
    f->next = rc->fetches;
    if (rc->fetches)
        rc->fetches->prev = f;
    rc->fetches = f;
    rc->inflight++;
    rc->asked++;
}

static void claimed(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct reconcile *rc = arg;
    (void)sqlstate;
    rc->claiming = false;
    if (!res) {
        if (!rc->w->stopping)
            log_warn("reconciliation claim failed: %s", errmsg);
        return;
    }
    int rows = PQntuples(res);
    if (rows > 0)
        log_info("reconciliation: asking Twilio about %d deliveries still 'sent'", rows);
    for (int r = 0; r < rows; r++) {
        if (PQgetisnull(res, r, RC_ACCOUNT))
            continue;
        char why[192];
        struct account *a =
            send_account(rc->w, strtoll(PQgetvalue(res, r, RC_ACCOUNT), NULL, 10),
                         PQgetvalue(res, r, RC_KIND), PQgetvalue(res, r, RC_FROM),
                         PQgetisnull(res, r, RC_CREDS) ? NULL : PQgetvalue(res, r, RC_CREDS),
                         strtol(PQgetvalue(res, r, RC_RATE), NULL, 10),
                         strcmp(PQgetvalue(res, r, RC_CHANNEL), "voice") == 0, why, sizeof(why));
        if (!a) {
            log_warn("reconciliation of delivery %s: %s", PQgetvalue(res, r, RC_ID), why);
            continue;
        }
        if (a->kind != ACCOUNT_TWILIO)
            continue;
        fetch_start(rc, a, res, r);
    }
    curlev_kick(rc->curl);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct reconcile *rc = arg;
    (void)fd;
    (void)what;
    if (rc->w->stopping || rc->claiming || rc->applying || rc->inflight > 0)
        return;
    char age[24], n[24];
    snprintf(age, sizeof(age), "%ld", rc->w->cfg->reconcile_after_s);
    snprintf(n, sizeof(n), "%ld", rc->w->cfg->reconcile_batch);
    const char *p[] = {age, n};
    rc->claiming = true;
    pgpool_query(rc->w->pool, sql_claim, 2, p, claimed, rc);
}

/* ---------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------- */

void reconcile_start(struct worker *w)
{
    struct reconcile *rc = xcalloc(1, sizeof(*rc));
    rc->w = w;
    rc->curl = curlev_new(w->base, fetch_done, fetches_after, rc);
    if (!rc->curl) {
        log_error("reconciliation disabled: no curl multi handle");
        free(rc);
        return;
    }
    curl_multi_setopt(curlev_multi(rc->curl), CURLMOPT_MAX_HOST_CONNECTIONS, 8L);
    rc->tick = event_new(w->base, -1, EV_PERSIST, tick_cb, rc);
    struct timeval tv = {w->cfg->reconcile_every_s, 0};
    event_add(rc->tick, &tv);
    w->reconcile = rc;
}

bool reconcile_idle(const struct worker *w)
{
    const struct reconcile *rc = w->reconcile;
    return !rc || (!rc->claiming && !rc->applying && rc->inflight == 0);
}

void reconcile_free(struct worker *w)
{
    struct reconcile *rc = w->reconcile;
    if (!rc)
        return;
    if (rc->asked > 0)
        log_info("reconciliation: asked about %lld deliveries, %lld answers applied", rc->asked,
                 rc->answered);
    /* transfers a grace period left running */
    while (rc->fetches) {
        curl_multi_remove_handle(curlev_multi(rc->curl), rc->fetches->easy);
        fetch_free(rc->fetches);
    }
    curlev_free(rc->curl);
    event_free(rc->tick);
    for (int i = 0; i < rc->n; i++)
        free(rc->payloads[i]);
    free(rc->payloads);
    free(rc->tenants);
    free(rc);
    w->reconcile = NULL;
}
