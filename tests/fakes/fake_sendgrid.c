/* fake_sendgrid.c - a loopback stand-in for SendGrid's v3 Mail Send API, for tests and benchmarks.
 *
 * Emulates: POST /v3/mail/send with `Authorization: Bearer <key>` (401 with SendGrid's error
 * JSON when missing or wrong), JSON validation with SendGrid's 400 shape
 * {"errors":[{"message","field","help"}]} naming the field (personalizations[] with to[].email,
 * cc/bcc, from.email, reply_to.email, subject top-level or in every personalization, content[]
 * with text/plain first and text/html next, each type once, headers and custom_args as objects
 * of strings, reserved headers refused, one address once per request, 1000 personalizations and
 * 1000 recipients at most, template_id lifting the subject / content requirement), optional
 * verified senders (403), mail_settings.sandbox_mode (200, nothing sent), and success: 202 with
 * an empty body and `X-Message-Id: <22 random characters>`.
 *
 * Does not emulate: TLS, other /v3 resources (404 after auth), attachments, templates' content,
 * scheduling (send_at), ASM groups, event webhooks, real rate limits (a 429 comes only from the
 * p429 fault), the JSON shape of 413 (a body over 30 MiB gets libevent's own 413).
 *
 * Every accepted message - one per personalization and `to` recipient - is one JSON line in the
 * --record file: message_id, personalization, to, from, subject, delivery_id
 * (custom_args.delivery_id), custom_args and headers (top level merged with the
 * personalization's, which win), list_unsubscribe, list_unsubscribe_post, reply_to,
 * content_types, duplicate, reply_lost (true when accepted by a paccept_timeout fault), and
 * with --record-bodies the text and html content.
 *
 * Fault injection (mail/send only, after authentication), set by the command-line options of
 * the same names (--paccept-timeout, --latency-ms, ...) and at run time by POST /_fake/config;
 * each request draws once from a generator seeded by "seed" (the same knobs and semantics as
 * fake-twilio's):
 *   p500             fraction answered 500 with SendGrid's error JSON; not processed.
 *   p429             fraction answered 429 with "Retry-After: <retry_after>" (0 omits it) and
 *                    X-RateLimit-* headers; not processed.
 *   ptimeout         fraction never answered and not processed: the connection is closed
 *                    without a reply after timeout_ms, or as soon as the client closes it.
 *   paccept_timeout  fraction processed - validated, accepted, recorded ("reply_lost":true)
 *                    and counted, duplicates included - whose reply is lost the same way. A
 *                    request that fails validation is answered with its error instead.
 *   latency_ms       every reply of the emulated API (errors and faults included) is sent
 *                    this much later; the control endpoints answer at once.
 *
 * Test-only control endpoints (never faulted, delayed or counted in "requests"):
 *   GET  /_fake/stats   {"requests","accepted","accepted_requests","rejected","duplicates",
 *                       "unique_recipients","sandboxed","held","faults_500","faults_429",
 *                       "faults_timeout","faults_accept_timeout","faults_latency"} and flushes
 *                       the record file. "held": requests now waiting for a delayed reply or
 *                       for their connection to close.
 *   POST /_fake/reset   zeroes the counters, forgets recipients and duplicate keys, truncates
 *                       the record file; the fault configuration stays.
 *   GET  /_fake/config  the fault configuration (the knobs above, retry_after, timeout_ms,
 *                       seed); POST /_fake/config applies a JSON object of some of them as a
 *                       whole (fractions in 0..1 summing to at most 1, integers in range, no
 *                       unknown key) and answers the whole configuration, or 400 {"error"}.
 * "requests" counts every other request, when it is decided, so that always
 *   requests = accepted_requests + rejected + sandboxed + faults_500 + faults_429 +
 *              faults_timeout
 * "accepted" counts messages (personalization x `to` recipient), "accepted_requests" the
 * requests whose messages were accepted (202, or no reply for paccept_timeout). "rejected"
 * counts requests answered 400/401/403/404 (never an injected fault). "duplicates" counts
 * accepted messages whose key was already accepted since start or the last reset: the
 * lower-cased recipient with custom_args.delivery_id, or, without a delivery_id, the recipient
 * with the subject. "faults_latency" counts delayed replies.
 *
 * Single-threaded libevent evhttp server bound to loopback only; no per-request logging. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "xalloc.h"

/* ------------------------------------------------------------------------------------------
 * Limits and fixed protocol strings
 * ------------------------------------------------------------------------------------------ */

#define FAKE_MAX_REQUEST_BODY (30 * 1024 * 1024) /* SendGrid's total message limit */
#define FAKE_MAX_CONFIG_BODY (64 * 1024)
#define FAKE_RECORD_BUFFER (1024 * 1024)
#define FAKE_SET_INITIAL_CAP 1024 /* power of two */
#define FAKE_MESSAGE_ID_LEN 22
#define FAKE_SEED_MAX ((1LL << 53) - 1) /* exact in a JSON number */
#define FAKE_MAX_VERIFIED 64

#define SG_MAX_PERSONALIZATIONS 1000
#define SG_MAX_RECIPIENTS 1000
#define SG_MAX_EMAIL_LEN 320
#define SG_MAX_CUSTOM_ARGS_BYTES 10000
#define SG_MAX_CATEGORIES 10

#define SG_MAIL_SEND_PATH "/v3/mail/send"
#define SG_API_PREFIX "/v3/"
#define SG_HELP "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message."

#define DEFAULT_API_KEY "SG.fake-sendgrid-key"

/* libevent 2.1 names only some statuses. */
enum fake_http_status {
    FAKE_HTTP_OK = 200,
    FAKE_HTTP_ACCEPTED = 202,
    FAKE_HTTP_BAD_REQUEST = 400,
    FAKE_HTTP_UNAUTHORIZED = 401,
    FAKE_HTTP_FORBIDDEN = 403,
    FAKE_HTTP_NOT_FOUND = 404,
    FAKE_HTTP_TOO_MANY = 429,
    FAKE_HTTP_INTERNAL = 500,
};

/* Headers SendGrid sets itself and refuses in `headers`. */
static const char *const sg_reserved_headers[] = {
    "x-sg-id",      "x-sg-eid",
    "received",     "dkim-signature",
    "content-type", "content-transfer-encoding",
    "to",           "from",
    "subject",      "reply-to",
    "cc",           "bcc",
};

/* ------------------------------------------------------------------------------------------
 * State
 * ------------------------------------------------------------------------------------------ */

/* The fault plan: the one piece of configuration that changes at run time (POST
 * /_fake/config). Described, parsed and printed through fault_knobs[]. */
struct fault_config {
    double p500, p429, ptimeout, paccept_timeout; /* fractions of mail/send requests, sum <= 1 */
    long long latency_ms;
    long long retry_after; /* seconds; 0: no Retry-After header */
    long long timeout_ms;  /* how long an unanswered request is held */
    long long seed;
};

struct fake_config {
    const char *host; /* normalised: "127.0.0.1" or "::1" */
    int port;
    const char *api_key;
    const char *record_path; /* NULL: no record */
    const char *port_file;   /* NULL: none */
    bool record_bodies;
    const char *verified[FAKE_MAX_VERIFIED]; /* "a@b.c" or "@domain"; none: all verified */
    size_t n_verified;
};

/* Open-addressing set of byte strings (linear probing, load <= 1/2). Owns its keys. */
struct strset_entry {
    uint64_t hash;
    char *key; /* NULL: empty slot */
    size_t len;
};

struct strset {
    struct strset_entry *slots;
    size_t cap; /* power of two */
    size_t count;
};

struct fake_stats {
    uint64_t requests;
    uint64_t accepted;
    uint64_t accepted_requests;
    uint64_t rejected;
    uint64_t duplicates;
    uint64_t sandboxed;
    uint64_t faults_500;
    uint64_t faults_429;
    uint64_t faults_timeout;
    uint64_t faults_accept_timeout;
    uint64_t faults_latency;
};

/* A reply as the door sends it; body is owned (heap) or NULL. */
struct reply {
    int status;
    char *body;
    size_t len;
    char message_id[FAKE_MESSAGE_ID_LEN + 1]; /* "" when none */
    long long retry_after;                    /* 429: > 0 sends Retry-After */
};

struct hold;

struct app {
    const struct fake_config *cfg;
    struct event_base *base;
    struct evhttp *http;
    struct evbuffer *out; /* reused reply body; evhttp_send_reply drains it */
    struct fault_config faults;
    bool faults_active; /* some fraction > 0 */
    bool early_close;   /* the backend reports a peer's close (EV_CLOSED) */
    uint64_t rng;       /* fault draws (splitmix64 state, from faults.seed) */
    uint64_t id_state;  /* message ids (splitmix64 state, always random) */
    struct fake_stats stats;
    struct strset keys;       /* duplicate keys of accepted messages */
    struct strset recipients; /* lower-cased `to` of accepted messages */
    struct hold *holds;       /* requests waiting for a delayed reply or a close */
    size_t held;
    FILE *record;
    bool record_failed;
};

enum route {
    ROUTE_MAIL_SEND = 0,
    ROUTE_API_OTHER, /* under /v3/ but not emulated: 404 after auth */
    ROUTE_FAKE_STATS,
    ROUTE_FAKE_RESET,
    ROUTE_FAKE_CONFIG_GET,
    ROUTE_FAKE_CONFIG_SET,
    ROUTE_NOT_FOUND,
};

/* One request in flight: what the reply door needs. */
struct exchange {
    struct app *app;
    struct evhttp_request *req;
    enum route route;
    const char *path;
    bool counted; /* an emulated-API request: delayed by latency_ms */
};

enum fault_action {
    FAULT_NONE = 0,
    FAULT_500,
    FAULT_429,
    FAULT_TIMEOUT,
    FAULT_ACCEPT_TIMEOUT,
};

/* ------------------------------------------------------------------------------------------
 * Hash set and random numbers
 * ------------------------------------------------------------------------------------------ */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double rng_unit(uint64_t *state)
{
    return (double)(splitmix64(state) >> 11) * 0x1.0p-53;
}

static uint64_t random_seed(void)
{
    uint64_t s;
    if (getrandom(&s, sizeof(s), 0) != (ssize_t)sizeof(s))
        s = mix64((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32));
    return s;
}

static uint64_t hash_bytes(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a, then a finaliser for the low bits */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ULL;
    }
    return mix64(h ^ n);
}

static void strset_init(struct strset *s)
{
    s->cap = FAKE_SET_INITIAL_CAP;
    s->count = 0;
    s->slots = xcalloc(s->cap, sizeof(*s->slots));
}

static void strset_cleanup(struct strset *s)
{
    if (!s->slots)
        return;
    for (size_t i = 0; i < s->cap; i++)
        free(s->slots[i].key);
    free(s->slots);
    s->slots = NULL;
    s->cap = s->count = 0;
}

static void strset_place(struct strset_entry *slots, size_t cap, struct strset_entry e)
{
    size_t i = (size_t)e.hash & (cap - 1);
    while (slots[i].key)
        i = (i + 1) & (cap - 1);
    slots[i] = e;
}

static void strset_grow(struct strset *s)
{
    size_t cap = s->cap * 2;
    struct strset_entry *slots = xcalloc(cap, sizeof(*slots));
    for (size_t i = 0; i < s->cap; i++)
        if (s->slots[i].key)
            strset_place(slots, cap, s->slots[i]);
    free(s->slots);
    s->slots = slots;
    s->cap = cap;
}

/* Takes ownership of key (heap). Returns true if it was new (now stored), false if it was
 * already present (key freed). */
static bool strset_add_take(struct strset *s, char *key, size_t len)
{
    uint64_t h = hash_bytes(key, len);
    size_t i = (size_t)h & (s->cap - 1);
    for (; s->slots[i].key; i = (i + 1) & (s->cap - 1)) {
        const struct strset_entry *e = &s->slots[i];
        if (e->hash == h && e->len == len && memcmp(e->key, key, len) == 0) {
            free(key);
            return false;
        }
    }
    s->slots[i] = (struct strset_entry){.hash = h, .key = key, .len = len};
    if (++s->count * 2 > s->cap)
        strset_grow(s);
    return true;
}

/* ------------------------------------------------------------------------------------------
 * Text helpers
 * ------------------------------------------------------------------------------------------ */

/* Heap copy of s in ASCII lower case. */
static char *lower_dup(const char *s)
{
    char *d = xstrdup(s);
    for (char *p = d; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return d;
}

/* A plausible address: local@domain.tld, printable ASCII or UTF-8, no spaces or brackets. */
static bool valid_email(const char *s)
{
    size_t n = strlen(s);
    if (n < 3 || n > SG_MAX_EMAIL_LEN)
        return false;
    const char *at = strrchr(s, '@');
    if (!at || at == s || strchr(s, '@') != at)
        return false;
    const char *domain = at + 1;
    if (!*domain || !strchr(domain, '.') || domain[0] == '.' || s[n - 1] == '.')
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= ' ' || *p == 0x7f || strchr("<>()[]\\,;:\"", *p))
            return false;
    return true;
}

/* Constant-time comparison of two byte strings (length leaks, content does not). */
static bool secret_equal(const char *a, size_t an, const char *b, size_t bn)
{
    unsigned char diff = an != bn;
    size_t n = an < bn ? an : bn;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

/* Adds s under name, replacing invalid UTF-8 with U+FFFD so the record stays valid JSON. */
static void add_text(cJSON *o, const char *name, const char *s)
{
    if (!s) {
        cJSON_AddNullToObject(o, name);
        return;
    }
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), o_len = 0;
    char *out = xmalloc(n * 3 + 1);
    for (size_t i = 0; i < n;) {
        size_t len = 0;
        uint32_t c = 0, min = 0;
        if (p[i] < 0x80)
            len = 1, c = p[i];
        else if ((p[i] & 0xe0) == 0xc0)
            len = 2, c = p[i] & 0x1f, min = 0x80;
        else if ((p[i] & 0xf0) == 0xe0)
            len = 3, c = p[i] & 0x0f, min = 0x800;
        else if ((p[i] & 0xf8) == 0xf0)
            len = 4, c = p[i] & 0x07, min = 0x10000;
        bool ok = len > 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                ok = false;
            c = c << 6 | (p[i + k] & 0x3f);
        }
        if (ok && len > 1 && (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)))
            ok = false;
        if (ok) {
            memcpy(out + o_len, p + i, len);
            o_len += len;
            i += len;
        } else {
            memcpy(out + o_len, "\xef\xbf\xbd", 3);
            o_len += 3;
            i++;
        }
    }
    out[o_len] = '\0';
    cJSON_AddStringToObject(o, name, out);
    free(out);
}

/* The string value of obj[name] (case-sensitive), or NULL. */
static const char *json_str(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* ------------------------------------------------------------------------------------------
 * Replies: the only place that sets headers and calls evhttp_send_reply
 * ------------------------------------------------------------------------------------------ */

static void reply_cleanup(struct reply *r)
{
    free(r->body);
    r->body = NULL;
}

static void make_message_id(struct app *app, char out[FAKE_MESSAGE_ID_LEN + 1])
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint64_t bits = 0;
    for (int i = 0; i < FAKE_MESSAGE_ID_LEN; i++) {
        if (i % 10 == 0)
            bits = splitmix64(&app->id_state);
        out[i] = alphabet[bits & 63];
        bits >>= 6;
    }
    out[FAKE_MESSAGE_ID_LEN] = '\0';
}

/* Reason phrases libevent 2.1 lacks ("Client Error" otherwise); NULL: libevent's own. */
static const char *reply_reason(int status)
{
    return status == FAKE_HTTP_TOO_MANY ? "Too Many Requests" : NULL;
}

/* Held requests: a reply sent later, or no reply at all.
 *
 * A held request keeps its evhttp_request, which stays valid until we answer it or free its
 * connection: reading on the connection is paused first (so libevent cannot notice the peer's
 * close, detach the request and free the connection under us). A drop ends when timeout_ms has
 * passed or, with a backend that reports it (EV_CLOSED), when the client closes, whichever is
 * first; then the connection is freed without a reply. (The same scheme as fake-twilio.) */

enum hold_kind {
    HOLD_REPLY = 0, /* the reply is composed in the request's output buffer */
    HOLD_DROP,
};

struct hold {
    struct hold *prev, *next;
    struct app *app;
    struct evhttp_request *req;
    struct event *timer;
    struct event *closed; /* HOLD_DROP with early close: EV_CLOSED on the socket; or NULL */
    enum hold_kind kind;
    int status;
};

static void hold_unlink_free_events(struct hold *h)
{
    struct app *app = h->app;
    if (h->prev)
        h->prev->next = h->next;
    else
        app->holds = h->next;
    if (h->next)
        h->next->prev = h->prev;
    app->held--;
    /* Freeing a fired one-shot event inside its own callback is allowed by libevent; the loop
     * does not touch it afterwards. The socket is still open here. */
    if (h->closed)
        event_free(h->closed);
    event_free(h->timer);
}

/* Ends the hold: sends the composed reply or frees the connection. Frees h. */
static void hold_finish(struct hold *h)
{
    struct evhttp_request *req = h->req;
    enum hold_kind kind = h->kind;
    int status = h->status;
    hold_unlink_free_events(h);
    free(h);
    if (kind == HOLD_REPLY) {
        evhttp_send_reply(req, status, reply_reason(status), NULL); /* frees a detached req */
        return;
    }
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    if (conn)
        evhttp_connection_free(conn); /* frees req with it */
    else
        evhttp_request_free(req);
}

static void hold_on_event(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    hold_finish(arg);
}

static void hold_start(struct app *app, struct evhttp_request *req, enum hold_kind kind, int status,
                       long long ms)
{
    struct hold *h = xcalloc(1, sizeof(*h));
    h->app = app;
    h->req = req;
    h->kind = kind;
    h->status = status;
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    struct bufferevent *bev = conn ? evhttp_connection_get_bufferevent(conn) : NULL;
    if (bev)
        bufferevent_disable(bev, EV_READ);
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    h->timer = evtimer_new(app->base, hold_on_event, h);
    if (!h->timer || evtimer_add(h->timer, &tv) != 0) {
        fprintf(stderr, "fatal: cannot arm a reply timer\n");
        abort();
    }
    if (kind == HOLD_DROP && bev && app->early_close) {
        h->closed = event_new(app->base, bufferevent_getfd(bev), EV_CLOSED, hold_on_event, h);
        if (h->closed && event_add(h->closed, NULL) != 0) {
            event_free(h->closed);
            h->closed = NULL; /* the timer alone ends it */
        }
    }
    h->next = app->holds;
    if (app->holds)
        app->holds->prev = h;
    app->holds = h;
    app->held++;
}

/* At exit, before evhttp_free (which frees the connections and their requests). */
static void holds_cleanup(struct app *app)
{
    while (app->holds) {
        struct hold *h = app->holds;
        struct evhttp_request *req = h->req;
        hold_unlink_free_events(h);
        free(h);
        if (!evhttp_request_get_connection(req))
            evhttp_request_free(req);
    }
}

/* The door: composes r (taking its body) and sends it, latency_ms later for the emulated API. */
static void reply_send(struct exchange *ex, struct reply *r)
{
    struct app *app = ex->app;
    struct evkeyvalq *h = evhttp_request_get_output_headers(ex->req);
    /* Without one, libevent would label even an empty body text/html. */
    evhttp_add_header(h, "Content-Type",
                      r->len > 0 ? "application/json" : "text/plain; charset=utf-8");
    if (r->message_id[0])
        evhttp_add_header(h, "X-Message-Id", r->message_id);
    if (r->status == FAKE_HTTP_TOO_MANY) {
        char num[32];
        if (r->retry_after > 0) {
            snprintf(num, sizeof(num), "%lld", r->retry_after);
            evhttp_add_header(h, "Retry-After", num);
        }
        evhttp_add_header(h, "X-RateLimit-Limit", "600");
        evhttp_add_header(h, "X-RateLimit-Remaining", "0");
        snprintf(num, sizeof(num), "%lld", (long long)time(NULL) + r->retry_after);
        evhttp_add_header(h, "X-RateLimit-Reset", num);
    }
    if (r->len > 0)
        evbuffer_add(evhttp_request_get_output_buffer(ex->req), r->body, r->len);
    reply_cleanup(r);
    if (ex->counted && app->faults.latency_ms > 0) {
        app->stats.faults_latency++;
        hold_start(app, ex->req, HOLD_REPLY, r->status, app->faults.latency_ms);
        return;
    }
    evhttp_send_reply(ex->req, r->status, reply_reason(r->status), NULL);
}

/* No reply: the connection is closed after timeout_ms, or when the client closes it. */
static void reply_withhold(struct exchange *ex)
{
    hold_start(ex->app, ex->req, HOLD_DROP, 0, ex->app->faults.timeout_ms);
}

/* Serialises root (deleted here) and sends it. */
static void reply_cjson(struct exchange *ex, int status, cJSON *root)
{
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text) {
        fprintf(stderr, "fatal: out of memory serialising JSON\n");
        abort();
    }
    struct reply r = {.status = status, .body = xstrdup(text), .len = strlen(text)};
    cJSON_free(text);
    reply_send(ex, &r);
}

static void sg_error_push(cJSON *errors, const char *field, const char *help_anchor,
                          const char *message)
{
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "message", message);
    if (field)
        cJSON_AddStringToObject(e, "field", field);
    else
        cJSON_AddNullToObject(e, "field");
    if (help_anchor) {
        char *help = xasprintf(SG_HELP "%s", help_anchor);
        cJSON_AddStringToObject(e, "help", help);
        free(help);
    } else {
        cJSON_AddNullToObject(e, "help");
    }
    cJSON_AddItemToArray(errors, e);
}

/* SendGrid's error shape with one error: {"errors":[{"message","field","help"}]}. */
static void reply_sg_error(struct exchange *ex, int status, const char *field,
                           const char *help_anchor, const char *message)
{
    cJSON *root = cJSON_CreateObject();
    sg_error_push(cJSON_AddArrayToObject(root, "errors"), field, help_anchor, message);
    reply_cjson(ex, status, root);
}

/* ------------------------------------------------------------------------------------------
 * Fault plan: the knobs, their checks, and one decision per request
 * ------------------------------------------------------------------------------------------ */

enum knob_type {
    KNOB_FRACTION = 0, /* double in [0, 1] */
    KNOB_INT,          /* long long in [min, max] */
};

struct knob {
    const char *key; /* JSON key in /_fake/config */
    const char *opt; /* command-line option, without "--" */
    enum knob_type type;
    size_t offset; /* in struct fault_config */
    long long min, max;
    const char *help;
};

#define KNOB_FRAC(name, opt, help)                                                                 \
    {                                                                                              \
#name, opt, KNOB_FRACTION, offsetof(struct fault_config, name), 0, 0, help                 \
    }
#define KNOB_INT(name, opt, lo, hi, help)                                                          \
    {                                                                                              \
#name, opt, KNOB_INT, offsetof(struct fault_config, name), lo, hi, help                    \
    }

static const struct knob fault_knobs[] = {
    KNOB_FRAC(p500, "p500", "fraction answered 500, not processed"),
    KNOB_FRAC(p429, "p429", "fraction answered 429 + Retry-After, not processed"),
    KNOB_FRAC(ptimeout, "ptimeout", "fraction never answered, not processed"),
    KNOB_FRAC(paccept_timeout, "paccept-timeout", "fraction accepted but never answered"),
    KNOB_INT(latency_ms, "latency-ms", 0, 600000, "delay before every API reply (0)"),
    KNOB_INT(retry_after, "retry-after", 0, 86400, "Retry-After seconds of a 429 (1; 0: none)"),
    KNOB_INT(timeout_ms, "timeout-ms", 1, 3600000,
             "how long an unanswered request is held before its connection is closed (20000)"),
    KNOB_INT(seed, "seed", 0, FAKE_SEED_MAX, "seed of the fault draws (default: the clock)"),
};
#define FAULT_NKNOBS (sizeof(fault_knobs) / sizeof(fault_knobs[0]))

static void fault_config_defaults(struct fault_config *fc)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    *fc = (struct fault_config){
        .retry_after = 1,
        .timeout_ms = 20000,
        .seed = (long long)(((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) &
                            (uint64_t)FAKE_SEED_MAX),
    };
}

/* Sets one knob; returns NULL or an error message (heap). */
static char *knob_set(struct fault_config *fc, const struct knob *k, double v)
{
    char *field = (char *)fc + k->offset;
    if (k->type == KNOB_FRACTION) {
        if (!(v >= 0.0 && v <= 1.0))
            return xasprintf("%s must be a number from 0 to 1", k->key);
        memcpy(field, &v, sizeof(v));
        return NULL;
    }
    if (!(v >= (double)k->min && v <= (double)k->max) || (double)(long long)v != v)
        return xasprintf("%s must be an integer from %lld to %lld", k->key, k->min, k->max);
    long long i = (long long)v;
    memcpy(field, &i, sizeof(i));
    return NULL;
}

/* Checks what no single knob can; returns NULL or an error message (heap). */
static char *fault_config_check(const struct fault_config *fc)
{
    if (fc->p500 + fc->p429 + fc->ptimeout + fc->paccept_timeout > 1.0 + 1e-9)
        return xstrdup("p500 + p429 + ptimeout + paccept_timeout must not exceed 1");
    return NULL;
}

static void fault_config_commit(struct app *app, const struct fault_config *fc, bool reseed)
{
    app->faults = *fc;
    app->faults_active =
        fc->p500 > 0 || fc->p429 > 0 || fc->ptimeout > 0 || fc->paccept_timeout > 0;
    if (reseed)
        app->rng = (uint64_t)fc->seed;
}

/* Applies a JSON object of knobs as a whole; returns NULL or an error message (heap). */
static char *fault_config_apply_json(struct app *app, const char *text, size_t n)
{
    struct fault_config next = app->faults;
    bool reseed = false;
    char *err = NULL;
    cJSON *root = n <= FAKE_MAX_CONFIG_BODY ? cJSON_ParseWithLength(text, n) : NULL;
    if (!cJSON_IsObject(root)) {
        err = xstrdup("the body must be a JSON object");
        goto out;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, root)
    {
        const struct knob *k = NULL;
        for (size_t i = 0; i < FAULT_NKNOBS; i++)
            if (strcmp(fault_knobs[i].key, item->string) == 0)
                k = &fault_knobs[i];
        if (!k) {
            err = xasprintf("unknown key %s", item->string);
            goto out;
        }
        if (!cJSON_IsNumber(item)) {
            err = xasprintf("%s must be a number", k->key);
            goto out;
        }
        if ((err = knob_set(&next, k, item->valuedouble)) != NULL)
            goto out;
        if (strcmp(k->key, "seed") == 0)
            reseed = true;
    }
    if ((err = fault_config_check(&next)) != NULL)
        goto out;
    fault_config_commit(app, &next, reseed);
out:
    cJSON_Delete(root);
    return err;
}

static cJSON *fault_config_json(const struct fault_config *fc)
{
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; i < FAULT_NKNOBS; i++) {
        const struct knob *k = &fault_knobs[i];
        const char *field = (const char *)fc + k->offset;
        if (k->type == KNOB_FRACTION) {
            double v;
            memcpy(&v, field, sizeof(v));
            cJSON_AddNumberToObject(o, k->key, v);
        } else {
            long long v;
            memcpy(&v, field, sizeof(v));
            cJSON_AddNumberToObject(o, k->key, (double)v);
        }
    }
    return o;
}

/* One draw per authenticated mail/send request when some fraction is set; none otherwise. */
static enum fault_action fault_roll(struct app *app)
{
    if (!app->faults_active)
        return FAULT_NONE;
    const struct fault_config *fc = &app->faults;
    double u = rng_unit(&app->rng);
    if (u < fc->p500)
        return FAULT_500;
    u -= fc->p500;
    if (u < fc->p429)
        return FAULT_429;
    u -= fc->p429;
    if (u < fc->ptimeout)
        return FAULT_TIMEOUT;
    u -= fc->ptimeout;
    if (u < fc->paccept_timeout)
        return FAULT_ACCEPT_TIMEOUT;
    return FAULT_NONE;
}

/* ------------------------------------------------------------------------------------------
 * POST /v3/mail/send: validation
 * ------------------------------------------------------------------------------------------ */

/* Collects SendGrid's validation errors; field strings are formatted here. */
struct sg_check {
    cJSON *errors;            /* array, owned */
    struct strset seen;       /* lower-cased addresses of the request */
    size_t recipients;        /* to + cc + bcc */
    bool subject_everywhere;  /* every personalization has its own subject */
    bool recipients_reported; /* limit error given once */
};

static void check_error(struct sg_check *c, const char *help_anchor, const char *message,
                        const char *field_fmt, ...) __attribute__((format(printf, 4, 5)));

static void check_error(struct sg_check *c, const char *help_anchor, const char *message,
                        const char *field_fmt, ...)
{
    char field[160];
    va_list ap;
    va_start(ap, field_fmt);
    vsnprintf(field, sizeof(field), field_fmt, ap);
    va_end(ap);
    sg_error_push(c->errors, field, help_anchor, message);
}

static bool header_reserved(const char *name)
{
    for (size_t i = 0; i < sizeof(sg_reserved_headers) / sizeof(sg_reserved_headers[0]); i++)
        if (strcasecmp(name, sg_reserved_headers[i]) == 0)
            return true;
    return false;
}

/* headers: an object of string values, names are tokens, none reserved. */
static void check_headers(struct sg_check *c, const cJSON *h, const char *field)
{
    if (!h)
        return;
    if (!cJSON_IsObject(h)) {
        check_error(c, "headers", "The headers parameter must be a valid JSON object.", "%s",
                    field);
        return;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, h)
    {
        const char *name = it->string;
        if (!cJSON_IsString(it)) {
            check_error(c, "headers", "Header values must be strings.", "%s.%s", field, name);
            continue;
        }
        bool token = name[0] != '\0';
        for (const char *p = name; *p; p++)
            if (*p <= ' ' || *p == ':' || *p == 0x7f)
                token = false;
        if (!token) {
            check_error(c, "headers", "Header names must be valid header field names.", "%s",
                        field);
        } else if (header_reserved(name)) {
            char *msg = xasprintf("The header %s is reserved and cannot be set in headers.", name);
            check_error(c, "headers", msg, "%s.%s", field, name);
            free(msg);
        } else if (strpbrk(it->valuestring, "\r\n")) {
            check_error(c, "headers", "Header values cannot contain CR or LF characters.", "%s.%s",
                        field, name);
        }
    }
}

/* custom_args: an object of string values, at most 10,000 bytes in all. */
static void check_custom_args(struct sg_check *c, const cJSON *a, const char *field)
{
    if (!a)
        return;
    if (!cJSON_IsObject(a)) {
        check_error(c, "custom_args", "The custom_args parameter must be a valid JSON object.",
                    "%s", field);
        return;
    }
    size_t bytes = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, a)
    {
        if (!cJSON_IsString(it)) {
            check_error(c, "custom_args", "Custom arguments values must be strings.", "%s.%s",
                        field, it->string);
            continue;
        }
        bytes += strlen(it->string) + strlen(it->valuestring);
    }
    if (bytes > SG_MAX_CUSTOM_ARGS_BYTES)
        check_error(c, "custom_args", "The custom_args may not exceed 10,000 bytes.", "%s", field);
}

/* One address list (to, cc or bcc) of personalization i. */
static void check_address_list(struct sg_check *c, const cJSON *list, size_t i, const char *kind,
                               bool required)
{
    if (!list) {
        if (required)
            check_error(c, "personalizations.to",
                        "The to array is required for all personalization objects, and must "
                        "have at least one email object with a valid email address.",
                        "personalizations.%zu.to", i);
        return;
    }
    if (!cJSON_IsArray(list) || (required && cJSON_GetArraySize(list) == 0)) {
        check_error(c, "personalizations.to",
                    "The to array is required for all personalization objects, and must have "
                    "at least one email object with a valid email address.",
                    "personalizations.%zu.%s", i, kind);
        return;
    }
    size_t j = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, list)
    {
        const char *email = json_str(it, "email");
        if (!cJSON_IsObject(it) || !email) {
            check_error(c, "personalizations.to",
                        "Each email object must at least have an email address and may also "
                        "contain a name. e.g. {\"email\": \"example@example.com\"}",
                        "personalizations.%zu.%s.%zu", i, kind, j);
        } else if (!valid_email(email)) {
            check_error(c, "personalizations.to", "Does not contain a valid address.",
                        "personalizations.%zu.%s.%zu.email", i, kind, j);
        } else {
            char *key = lower_dup(email);
            if (!strset_add_take(&c->seen, key, strlen(key))) {
                char *msg = xasprintf("Each unique email address in the personalizations array "
                                      "should only be included once. You have included [%s] "
                                      "more than once.",
                                      email);
                check_error(c, "personalizations", msg, "personalizations.%zu.%s.%zu.email", i,
                            kind, j);
                free(msg);
            }
        }
        if (++c->recipients > SG_MAX_RECIPIENTS && !c->recipients_reported) {
            c->recipients_reported = true;
            check_error(c, "personalizations",
                        "There is a limit of 1000 total recipients (to + cc + bcc) per request.",
                        "personalizations.%zu.%s", i, kind);
        }
        j++;
    }
}

static void check_personalizations(struct sg_check *c, const cJSON *ps)
{
    c->subject_everywhere = true;
    if (!cJSON_IsArray(ps) || cJSON_GetArraySize(ps) == 0) {
        check_error(c, "personalizations",
                    "The personalizations field is required and must have at least one "
                    "personalization.",
                    "personalizations");
        c->subject_everywhere = false;
        return;
    }
    int n = cJSON_GetArraySize(ps);
    if (n > SG_MAX_PERSONALIZATIONS) {
        char *msg = xasprintf("The personalization block is limited to 1000 personalizations "
                              "per API request. You have provided %d personalizations.",
                              n);
        check_error(c, "personalizations", msg, "personalizations");
        free(msg);
        return;
    }
    size_t i = 0;
    const cJSON *p;
    char field[64];
    cJSON_ArrayForEach(p, ps)
    {
        if (!cJSON_IsObject(p)) {
            check_error(c, "personalizations", "Each personalization must be an object.",
                        "personalizations.%zu", i);
            c->subject_everywhere = false;
            i++;
            continue;
        }
        check_address_list(c, cJSON_GetObjectItemCaseSensitive(p, "to"), i, "to", true);
        check_address_list(c, cJSON_GetObjectItemCaseSensitive(p, "cc"), i, "cc", false);
        check_address_list(c, cJSON_GetObjectItemCaseSensitive(p, "bcc"), i, "bcc", false);
        const cJSON *subject = cJSON_GetObjectItemCaseSensitive(p, "subject");
        if (subject && !cJSON_IsString(subject))
            check_error(c, "personalizations.subject", "The subject must be a string.",
                        "personalizations.%zu.subject", i);
        if (!cJSON_IsString(subject) || !subject->valuestring[0])
            c->subject_everywhere = false;
        snprintf(field, sizeof(field), "personalizations.%zu.headers", i);
        check_headers(c, cJSON_GetObjectItemCaseSensitive(p, "headers"), field);
        snprintf(field, sizeof(field), "personalizations.%zu.custom_args", i);
        check_custom_args(c, cJSON_GetObjectItemCaseSensitive(p, "custom_args"), field);
        i++;
    }
}

/* content: objects {type, value}; text/plain first, text/html next, each once. */
static void check_content(struct sg_check *c, const cJSON *content, bool template)
{
    if (!content) {
        if (!template)
            check_error(c, "content",
                        "Unless a valid template_id is provided, the content parameter is "
                        "required. There must be at least one defined content block. We "
                        "typically suggest both text/plain and text/html blocks are included, "
                        "but only one block is required.",
                        "content");
        return;
    }
    if (!cJSON_IsArray(content) || (!template && cJSON_GetArraySize(content) == 0)) {
        check_error(c, "content", "The content parameter must be an array of content objects.",
                    "content");
        return;
    }
    size_t i = 0;
    int plain_at = -1, html_at = -1;
    bool repeated = false;
    const cJSON *it;
    cJSON_ArrayForEach(it, content)
    {
        const char *type = json_str(it, "type");
        const char *value = json_str(it, "value");
        if (!type || !type[0] || strpbrk(type, ";\r\n")) {
            check_error(c, "content.type",
                        "The content type cannot contain ';', or CRLF characters. The content "
                        "type must be at least one character in length.",
                        "content.%zu.type", i);
        } else if (strcasecmp(type, "text/plain") == 0) {
            repeated |= plain_at >= 0;
            plain_at = (int)i;
        } else if (strcasecmp(type, "text/html") == 0) {
            repeated |= html_at >= 0;
            html_at = (int)i;
        }
        if (!value || !value[0])
            check_error(c, "content.value",
                        "The content value must be a string at least one character in length.",
                        "content.%zu.value", i);
        i++;
    }
    if (repeated)
        check_error(c, "content", "If present, text/plain and text/html may only be provided once.",
                    "content");
    else if (plain_at > 0 || (html_at >= 0 && html_at != (plain_at >= 0 ? 1 : 0)))
        check_error(c, "content",
                    "If present, text/plain content must be first, followed by text/html, "
                    "followed by any other content.",
                    "content");
}

static void check_from(struct sg_check *c, const cJSON *from)
{
    const char *email = json_str(from, "email");
    if (!cJSON_IsObject(from) || !email)
        check_error(c, "from",
                    "The from object must be provided for every email send. It is an object "
                    "that requires the email parameter, but may also contain a name parameter.  "
                    "e.g. {\"email\" : \"example@example.com\"}  or {\"email\" : "
                    "\"example@example.com\", \"name\" : \"Example Recipient\"}.",
                    "from.email");
    else if (!valid_email(email))
        check_error(c, "from", "The from email does not contain a valid address.", "from.email");
}

static void check_reply_to(struct sg_check *c, const cJSON *reply_to)
{
    if (!reply_to)
        return;
    const char *email = json_str(reply_to, "email");
    if (!cJSON_IsObject(reply_to) || !email)
        check_error(c, "reply_to",
                    "The reply_to parameter is an object that requires the email parameter.",
                    "reply_to.email");
    else if (!valid_email(email))
        check_error(c, "reply_to", "The reply_to email does not contain a valid address.",
                    "reply_to.email");
}

static void check_categories(struct sg_check *c, const cJSON *cats)
{
    if (!cats)
        return;
    if (!cJSON_IsArray(cats) || cJSON_GetArraySize(cats) > SG_MAX_CATEGORIES) {
        check_error(c, "categories",
                    "The categories parameter must be an array of at most 10 "
                    "strings.",
                    "categories");
        return;
    }
    size_t i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, cats)
    {
        if (!cJSON_IsString(it) || strlen(it->valuestring) > 255)
            check_error(c, "categories", "A category must be a string of at most 255 characters.",
                        "categories.%zu", i);
        i++;
    }
}

/* Returns the errors array (caller deletes) or NULL when the message can be sent. */
static cJSON *mail_validate(const cJSON *root)
{
    struct sg_check c = {.errors = cJSON_CreateArray()};
    strset_init(&c.seen);
    const cJSON *template_id = cJSON_GetObjectItemCaseSensitive(root, "template_id");
    bool template = cJSON_IsString(template_id) && template_id->valuestring[0];
    if (template_id && !template)
        check_error(&c, "template_id", "The template_id must be a non-empty string.",
                    "template_id");

    check_personalizations(&c, cJSON_GetObjectItemCaseSensitive(root, "personalizations"));
    check_from(&c, cJSON_GetObjectItemCaseSensitive(root, "from"));
    check_reply_to(&c, cJSON_GetObjectItemCaseSensitive(root, "reply_to"));

    const cJSON *subject = cJSON_GetObjectItemCaseSensitive(root, "subject");
    if (subject && !cJSON_IsString(subject))
        check_error(&c, "subject", "The subject must be a string.", "subject");
    else if (!template && !c.subject_everywhere && (!subject || !subject->valuestring[0]))
        check_error(&c, "subject",
                    "The subject is required. You can get around this requirement if you use a "
                    "template with a subject defined or if every personalization has a subject "
                    "defined.",
                    "subject");

    check_content(&c, cJSON_GetObjectItemCaseSensitive(root, "content"), template);
    check_headers(&c, cJSON_GetObjectItemCaseSensitive(root, "headers"), "headers");
    check_custom_args(&c, cJSON_GetObjectItemCaseSensitive(root, "custom_args"), "custom_args");
    check_categories(&c, cJSON_GetObjectItemCaseSensitive(root, "categories"));

    strset_cleanup(&c.seen);
    if (cJSON_GetArraySize(c.errors) == 0) {
        cJSON_Delete(c.errors);
        return NULL;
    }
    return c.errors;
}

/* True when --verified-sender is unused or from.email matches an address or "@domain". */
static bool sender_verified(const struct fake_config *cfg, const char *from)
{
    if (cfg->n_verified == 0)
        return true;
    const char *at = strrchr(from, '@');
    for (size_t i = 0; i < cfg->n_verified; i++) {
        const char *v = cfg->verified[i];
        if (v[0] == '@' ? at && strcasecmp(at, v) == 0 : strcasecmp(from, v) == 0)
            return true;
    }
    return false;
}

static bool sandbox_mode(const cJSON *root)
{
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(root, "mail_settings");
    const cJSON *sb = cJSON_GetObjectItemCaseSensitive(ms, "sandbox_mode");
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sb, "enable"));
}

/* ------------------------------------------------------------------------------------------
 * POST /v3/mail/send: accepting, counting, recording
 * ------------------------------------------------------------------------------------------ */

/* A new object: a copy of base's members, then over's (which replace base's of the same name;
 * names compared without case when ci). Either may be NULL or not an object. */
static cJSON *merge_objects(const cJSON *base, const cJSON *over, bool ci)
{
    cJSON *m = cJSON_CreateObject();
    const cJSON *it;
    if (cJSON_IsObject(base)) {
        cJSON_ArrayForEach(it, base)
        {
            const cJSON *o = cJSON_IsObject(over)
                                 ? (ci ? cJSON_GetObjectItem(over, it->string)
                                       : cJSON_GetObjectItemCaseSensitive(over, it->string))
                                 : NULL;
            if (!o)
                cJSON_AddItemToObject(m, it->string, cJSON_Duplicate(it, true));
        }
    }
    if (cJSON_IsObject(over)) {
        cJSON_ArrayForEach(it, over)
        {
            cJSON_AddItemToObject(m, it->string, cJSON_Duplicate(it, true));
        }
    }
    return m;
}

/* Counts one accepted message; returns true when its key was seen before. */
static bool count_message(struct app *app, const char *to, const char *delivery_id,
                          const char *subject)
{
    char *lto = lower_dup(to);
    size_t tl = strlen(lto);
    const char *second = delivery_id ? delivery_id : (subject ? subject : "");
    size_t sl = strlen(second);
    char *key = xmalloc(tl + 1 + sl);
    memcpy(key, lto, tl);
    key[tl] = delivery_id ? '\0' : '\1'; /* an address has neither byte */
    memcpy(key + tl + 1, second, sl);
    app->stats.accepted++;
    bool dup = !strset_add_take(&app->keys, key, tl + 1 + sl);
    if (dup)
        app->stats.duplicates++;
    (void)strset_add_take(&app->recipients, lto, tl);
    return dup;
}

static void record_line(struct app *app, cJSON *line)
{
    char *text = cJSON_PrintUnformatted(line);
    if (!text || fputs(text, app->record) == EOF || fputc('\n', app->record) == EOF) {
        fprintf(stderr, "fake-sendgrid: writing %s failed: %s; recording stopped\n",
                app->cfg->record_path, strerror(errno));
        app->record_failed = true;
    }
    cJSON_free(text);
}

static void add_content(cJSON *line, const cJSON *content, bool bodies)
{
    cJSON *types = cJSON_AddArrayToObject(line, "content_types");
    const cJSON *it;
    cJSON_ArrayForEach(it, content)
    {
        const char *type = json_str(it, "type");
        cJSON_AddItemToArray(types, cJSON_CreateString(type ? type : ""));
        if (!bodies || !type)
            continue;
        if (strcasecmp(type, "text/plain") == 0)
            add_text(line, "text", json_str(it, "value"));
        else if (strcasecmp(type, "text/html") == 0)
            add_text(line, "html", json_str(it, "value"));
    }
}

/* Counts and records every (personalization, to) message of a validated request. */
static void mail_accept(struct app *app, const cJSON *root, const char *message_id, bool reply_lost)
{
    const cJSON *ps = cJSON_GetObjectItemCaseSensitive(root, "personalizations");
    const char *top_subject = json_str(root, "subject");
    const char *from = json_str(cJSON_GetObjectItemCaseSensitive(root, "from"), "email");
    const char *reply_to = json_str(cJSON_GetObjectItemCaseSensitive(root, "reply_to"), "email");
    const cJSON *top_args = cJSON_GetObjectItemCaseSensitive(root, "custom_args");
    const cJSON *top_headers = cJSON_GetObjectItemCaseSensitive(root, "headers");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(root, "content");
    bool recording = app->record && !app->record_failed;
    int index = 0;
    const cJSON *p;
    app->stats.accepted_requests++;
    cJSON_ArrayForEach(p, ps)
    {
        const char *subject = json_str(p, "subject");
        if (!subject || !subject[0])
            subject = top_subject;
        cJSON *args =
            merge_objects(top_args, cJSON_GetObjectItemCaseSensitive(p, "custom_args"), false);
        cJSON *headers =
            merge_objects(top_headers, cJSON_GetObjectItemCaseSensitive(p, "headers"), true);
        const char *delivery_id = json_str(args, "delivery_id");
        const cJSON *to;
        cJSON_ArrayForEach(to, cJSON_GetObjectItemCaseSensitive(p, "to"))
        {
            const char *email = json_str(to, "email");
            bool dup = count_message(app, email, delivery_id, subject);
            if (!recording || app->record_failed)
                continue;
            cJSON *line = cJSON_CreateObject();
            cJSON_AddStringToObject(line, "message_id", message_id);
            cJSON_AddNumberToObject(line, "personalization", index);
            add_text(line, "to", email);
            add_text(line, "from", from);
            add_text(line, "subject", subject);
            add_text(line, "delivery_id", delivery_id);
            cJSON_AddItemToObject(line, "custom_args", cJSON_Duplicate(args, true));
            cJSON_AddItemToObject(line, "headers", cJSON_Duplicate(headers, true));
            const cJSON *lu = cJSON_GetObjectItem(headers, "List-Unsubscribe");
            const cJSON *lup = cJSON_GetObjectItem(headers, "List-Unsubscribe-Post");
            add_text(line, "list_unsubscribe", cJSON_IsString(lu) ? lu->valuestring : NULL);
            add_text(line, "list_unsubscribe_post", cJSON_IsString(lup) ? lup->valuestring : NULL);
            add_text(line, "reply_to", reply_to);
            add_content(line, content, app->cfg->record_bodies);
            cJSON_AddBoolToObject(line, "duplicate", dup);
            cJSON_AddBoolToObject(line, "reply_lost", reply_lost);
            record_line(app, line);
            cJSON_Delete(line);
        }
        cJSON_Delete(args);
        cJSON_Delete(headers);
        index++;
    }
}

static void mail_send(struct exchange *ex)
{
    struct app *app = ex->app;
    cJSON *root = NULL, *errors = NULL;
    struct reply r = {0};

    enum fault_action fault = fault_roll(app);
    switch (fault) {
    case FAULT_500:
        app->stats.faults_500++;
        reply_sg_error(ex, FAKE_HTTP_INTERNAL, NULL, NULL, "internal error (injected by fake)");
        return;
    case FAULT_429:
        app->stats.faults_429++;
        r.status = FAKE_HTTP_TOO_MANY;
        r.retry_after = app->faults.retry_after;
        r.body = xstrdup("{\"errors\":[{\"field\":null,\"message\":\"too many requests\"}]}");
        r.len = strlen(r.body);
        reply_send(ex, &r);
        return;
    case FAULT_TIMEOUT:
        app->stats.faults_timeout++;
        reply_withhold(ex);
        return;
    case FAULT_ACCEPT_TIMEOUT: /* decided below, once the message is known to be valid */
    case FAULT_NONE:
        break;
    }

    struct evbuffer *in = evhttp_request_get_input_buffer(ex->req);
    size_t n = evbuffer_get_length(in);
    const char *body = n ? (const char *)evbuffer_pullup(in, -1) : "";
    root = cJSON_ParseWithLength(body, n);
    if (!cJSON_IsObject(root)) {
        app->stats.rejected++;
        reply_sg_error(ex, FAKE_HTTP_BAD_REQUEST, NULL, NULL,
                       "Bad Request: the request body is not a valid JSON object");
        goto out;
    }
    errors = mail_validate(root);
    if (errors) {
        cJSON *reply = cJSON_CreateObject();
        cJSON_AddItemToObject(reply, "errors", errors);
        errors = NULL;
        app->stats.rejected++;
        reply_cjson(ex, FAKE_HTTP_BAD_REQUEST, reply);
        goto out;
    }
    const char *from = json_str(cJSON_GetObjectItemCaseSensitive(root, "from"), "email");
    if (!sender_verified(app->cfg, from)) {
        app->stats.rejected++;
        reply_sg_error(ex, FAKE_HTTP_FORBIDDEN, "from", NULL,
                       "The from address does not match a verified Sender Identity. Mail cannot "
                       "be sent until this error is resolved.");
        goto out;
    }
    if (sandbox_mode(root)) {
        app->stats.sandboxed++;
        r.status = FAKE_HTTP_OK;
        reply_send(ex, &r);
        goto out;
    }

    make_message_id(app, r.message_id);
    mail_accept(app, root, r.message_id, fault == FAULT_ACCEPT_TIMEOUT);
    if (fault == FAULT_ACCEPT_TIMEOUT) {
        app->stats.faults_accept_timeout++;
        reply_withhold(ex);
        goto out;
    }
    r.status = FAKE_HTTP_ACCEPTED;
    reply_send(ex, &r);
out:
    cJSON_Delete(errors);
    cJSON_Delete(root);
}

/* ------------------------------------------------------------------------------------------
 * Control endpoints
 * ------------------------------------------------------------------------------------------ */

static void record_flush(struct app *app)
{
    if (app->record && !app->record_failed && fflush(app->record) != 0) {
        fprintf(stderr, "fake-sendgrid: flushing %s failed: %s; recording stopped\n",
                app->cfg->record_path, strerror(errno));
        app->record_failed = true;
    }
}

static void fake_stats(struct exchange *ex)
{
    struct app *app = ex->app;
    const struct fake_stats *s = &app->stats;
    record_flush(app);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "requests", (double)s->requests);
    cJSON_AddNumberToObject(o, "accepted", (double)s->accepted);
    cJSON_AddNumberToObject(o, "accepted_requests", (double)s->accepted_requests);
    cJSON_AddNumberToObject(o, "rejected", (double)s->rejected);
    cJSON_AddNumberToObject(o, "duplicates", (double)s->duplicates);
    cJSON_AddNumberToObject(o, "unique_recipients", (double)app->recipients.count);
    cJSON_AddNumberToObject(o, "sandboxed", (double)s->sandboxed);
    cJSON_AddNumberToObject(o, "held", (double)app->held);
    cJSON_AddNumberToObject(o, "faults_500", (double)s->faults_500);
    cJSON_AddNumberToObject(o, "faults_429", (double)s->faults_429);
    cJSON_AddNumberToObject(o, "faults_timeout", (double)s->faults_timeout);
    cJSON_AddNumberToObject(o, "faults_accept_timeout", (double)s->faults_accept_timeout);
    cJSON_AddNumberToObject(o, "faults_latency", (double)s->faults_latency);
    reply_cjson(ex, FAKE_HTTP_OK, o);
}

static void fake_reset(struct exchange *ex)
{
    struct app *app = ex->app;
    memset(&app->stats, 0, sizeof(app->stats));
    strset_cleanup(&app->keys);
    strset_cleanup(&app->recipients);
    strset_init(&app->keys);
    strset_init(&app->recipients);
    if (app->record) {
        /* Appending stream: after the truncate, writes land at the new end (offset 0). */
        if (fflush(app->record) != 0 || ftruncate(fileno(app->record), 0) != 0)
            fprintf(stderr, "fake-sendgrid: truncating %s failed: %s\n", app->cfg->record_path,
                    strerror(errno));
        app->record_failed = false;
    }
    struct reply r = {.status = FAKE_HTTP_OK, .body = xstrdup("{\"reset\":true}")};
    r.len = strlen(r.body);
    reply_send(ex, &r);
}

/* POST /_fake/config: a JSON object of knobs, applied as a whole. */
static void fake_config_set(struct exchange *ex)
{
    struct app *app = ex->app;
    struct evbuffer *in = evhttp_request_get_input_buffer(ex->req);
    size_t n = evbuffer_get_length(in);
    const char *body = n ? (const char *)evbuffer_pullup(in, -1) : "";
    char *err = fault_config_apply_json(app, body, n);
    if (err) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "error", err);
        free(err);
        reply_cjson(ex, FAKE_HTTP_BAD_REQUEST, e);
        return;
    }
    reply_cjson(ex, FAKE_HTTP_OK, fault_config_json(&app->faults));
}

/* ------------------------------------------------------------------------------------------
 * Routing and authentication
 * ------------------------------------------------------------------------------------------ */

static enum route route_of(enum evhttp_cmd_type method, const char *path)
{
    if (strcmp(path, "/_fake/stats") == 0)
        return method == EVHTTP_REQ_GET ? ROUTE_FAKE_STATS : ROUTE_NOT_FOUND;
    if (strcmp(path, "/_fake/reset") == 0)
        return method == EVHTTP_REQ_POST ? ROUTE_FAKE_RESET : ROUTE_NOT_FOUND;
    if (strcmp(path, "/_fake/config") == 0)
        return method == EVHTTP_REQ_GET    ? ROUTE_FAKE_CONFIG_GET
               : method == EVHTTP_REQ_POST ? ROUTE_FAKE_CONFIG_SET
                                           : ROUTE_NOT_FOUND;
    if (strncmp(path, SG_API_PREFIX, strlen(SG_API_PREFIX)) != 0)
        return ROUTE_NOT_FOUND;
    if (method == EVHTTP_REQ_POST && strcmp(path, SG_MAIL_SEND_PATH) == 0)
        return ROUTE_MAIL_SEND;
    return ROUTE_API_OTHER;
}

enum auth_result {
    AUTH_OK = 0,
    AUTH_MISSING,
    AUTH_INVALID,
};

static enum auth_result auth_check(const struct app *app, struct evhttp_request *req)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!h)
        return AUTH_MISSING;
    h += strspn(h, " \t");
    if (strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t'))
        return AUTH_INVALID;
    h += 6;
    h += strspn(h, " \t");
    size_t n = strcspn(h, " \t\r\n");
    const char *key = app->cfg->api_key;
    return secret_equal(h, n, key, strlen(key)) ? AUTH_OK : AUTH_INVALID;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct app *app = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    struct exchange ex = {.app = app, .req = req, .path = path ? path : ""};
    ex.route = route_of(evhttp_request_get_command(req), ex.path);
    ex.counted =
        ex.route == ROUTE_MAIL_SEND || ex.route == ROUTE_API_OTHER || ex.route == ROUTE_NOT_FOUND;
    if (ex.counted)
        app->stats.requests++;

    switch (ex.route) {
    case ROUTE_MAIL_SEND:
    case ROUTE_API_OTHER:
        switch (auth_check(app, req)) {
        case AUTH_OK:
            break;
        case AUTH_MISSING:
            app->stats.rejected++;
            reply_sg_error(&ex, FAKE_HTTP_UNAUTHORIZED, NULL, NULL, "authorization required");
            return;
        case AUTH_INVALID:
            app->stats.rejected++;
            reply_sg_error(&ex, FAKE_HTTP_UNAUTHORIZED, NULL, NULL,
                           "The provided authorization grant is invalid, expired, or revoked");
            return;
        }
        if (ex.route == ROUTE_MAIL_SEND) {
            mail_send(&ex);
            return;
        }
        app->stats.rejected++;
        reply_sg_error(&ex, FAKE_HTTP_NOT_FOUND, NULL, NULL, "resource not found");
        return;
    case ROUTE_FAKE_STATS:
        fake_stats(&ex);
        return;
    case ROUTE_FAKE_RESET:
        fake_reset(&ex);
        return;
    case ROUTE_FAKE_CONFIG_GET:
        reply_cjson(&ex, FAKE_HTTP_OK, fault_config_json(&app->faults));
        return;
    case ROUTE_FAKE_CONFIG_SET:
        fake_config_set(&ex);
        return;
    case ROUTE_NOT_FOUND:
        app->stats.rejected++;
        reply_sg_error(&ex, FAKE_HTTP_NOT_FOUND, NULL, NULL, "resource not found");
        return;
    }
}

/* ------------------------------------------------------------------------------------------
 * Process: options, listening socket, port file, signals
 * ------------------------------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f, "usage: fake-sendgrid --port N [--host 127.0.0.1|::1|localhost] [--api-key KEY]\n"
               "                     [--record FILE] [--record-bodies] [--port-file FILE]\n"
               "                     [--verified-sender ADDR|@DOMAIN]... [FAULT OPTIONS]\n"
               "  --port 0 picks a free port; it is written to --port-file and printed as\n"
               "  'listening HOST:PORT' on stdout, followed by 'fault seed N'. The expected\n"
               "  key is --api-key, else $FAKE_SENDGRID_KEY, else " DEFAULT_API_KEY ".\n"
               "Fault options (also POST /_fake/config {\"key\": value, ...}):\n");
    for (size_t i = 0; i < FAULT_NKNOBS; i++) {
        const struct knob *k = &fault_knobs[i];
        fprintf(f, "  --%-16s %s %s\n", k->opt, k->type == KNOB_FRACTION ? "F" : "N", k->help);
    }
}

/* Parses and sets the knob of a fault option. Returns 0 or 2 (message on stderr). */
static int parse_knob_arg(struct fault_config *fc, const struct knob *k, const char *arg)
{
    char *end;
    double v;
    errno = 0;
    if (k->type == KNOB_FRACTION) {
        v = strtod(arg, &end);
    } else {
        long long i = strtoll(arg, &end, 10);
        v = (double)i;
    }
    char *err = NULL;
    if (errno || end == arg || *end)
        err = xasprintf("%s: not a number: %s", k->key, arg);
    else
        err = knob_set(fc, k, v);
    if (err) {
        fprintf(stderr, "fake-sendgrid: --%s: %s\n", k->opt, err);
        free(err);
        return 2;
    }
    return 0;
}

/* Returns 0 on success, 2 (usage error) otherwise; messages go to stderr. */
static int parse_args(int argc, char **argv, struct fake_config *cfg, struct fault_config *fc)
{
    enum { OPT_BODIES = 256, OPT_VERIFIED, OPT_KNOB };
    static const struct option base_opts[] = {
        {"port", required_argument, NULL, 'p'},
        {"host", required_argument, NULL, 'H'},
        {"api-key", required_argument, NULL, 'k'},
        {"record", required_argument, NULL, 'r'},
        {"record-bodies", no_argument, NULL, OPT_BODIES},
        {"port-file", required_argument, NULL, 'f'},
        {"verified-sender", required_argument, NULL, OPT_VERIFIED},
        {"help", no_argument, NULL, 'h'},
    };
    size_t nbase = sizeof(base_opts) / sizeof(base_opts[0]);
    struct option opts[sizeof(base_opts) / sizeof(base_opts[0]) + FAULT_NKNOBS + 1];
    memcpy(opts, base_opts, sizeof(base_opts));
    for (size_t i = 0; i < FAULT_NKNOBS; i++)
        opts[nbase + i] =
            (struct option){fault_knobs[i].opt, required_argument, NULL, OPT_KNOB + (int)i};
    opts[nbase + FAULT_NKNOBS] = (struct option){NULL, 0, NULL, 0};

    const char *env_key = getenv("FAKE_SENDGRID_KEY");
    *cfg = (struct fake_config){.host = "127.0.0.1",
                                .port = -1,
                                .api_key = env_key && env_key[0] ? env_key : DEFAULT_API_KEY};
    fault_config_defaults(fc);
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end;
        long v;
        if (c >= OPT_KNOB && c < OPT_KNOB + (int)FAULT_NKNOBS) {
            if (parse_knob_arg(fc, &fault_knobs[c - OPT_KNOB], optarg) != 0)
                return 2;
            continue;
        }
        switch (c) {
        case 'p':
            errno = 0;
            v = strtol(optarg, &end, 10);
            if (errno || end == optarg || *end || v < 0 || v > 65535) {
                fprintf(stderr, "fake-sendgrid: --port must be 0..65535\n");
                return 2;
            }
            cfg->port = (int)v;
            break;
        case 'H':
            if (strcmp(optarg, "127.0.0.1") == 0 || strcmp(optarg, "localhost") == 0)
                cfg->host = "127.0.0.1";
            else if (strcmp(optarg, "::1") == 0)
                cfg->host = "::1";
            else {
                fprintf(stderr, "fake-sendgrid: refusing to bind %s (loopback only)\n", optarg);
                return 2;
            }
            break;
        case 'k':
            cfg->api_key = optarg;
            break;
        case 'r':
            cfg->record_path = optarg;
            break;
        case OPT_BODIES:
            cfg->record_bodies = true;
            break;
        case 'f':
            cfg->port_file = optarg;
            break;
        case OPT_VERIFIED:
            if (cfg->n_verified == FAKE_MAX_VERIFIED) {
                fprintf(stderr, "fake-sendgrid: at most %d --verified-sender\n", FAKE_MAX_VERIFIED);
                return 2;
            }
            cfg->verified[cfg->n_verified++] = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || cfg->port < 0) {
        if (cfg->port < 0)
            fprintf(stderr, "fake-sendgrid: --port is required\n");
        usage(stderr);
        return 2;
    }
    if (!cfg->api_key[0]) {
        fprintf(stderr, "fake-sendgrid: the API key must not be empty\n");
        return 2;
    }
    char *err = fault_config_check(fc);
    if (err) {
        fprintf(stderr, "fake-sendgrid: %s\n", err);
        free(err);
        return 2;
    }
    return 0;
}

/* Writes "PORT\n" to a temporary name beside path, then renames it into place. */
static int write_port_file(const char *path, int port)
{
    char *tmp = xasprintf("%s.tmp.%ld", path, (long)getpid());
    int rc = -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        goto out;
    bool ok = fprintf(f, "%d\n", port) > 0;
    if (fclose(f) != 0 || !ok)
        goto out;
    if (rename(tmp, path) != 0)
        goto out;
    rc = 0;
out:
    if (rc != 0) {
        fprintf(stderr, "fake-sendgrid: writing port file %s: %s\n", path, strerror(errno));
        (void)unlink(tmp);
    }
    free(tmp);
    return rc;
}

static int bound_port(struct evhttp_bound_socket *bound)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&ss, &sl) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct app *app = arg;
    (void)sig;
    (void)what;
    event_base_loopbreak(app->base);
}

int main(int argc, char **argv)
{
    struct fake_config cfg;
    struct fault_config faults;
    int rc = parse_args(argc, argv, &cfg, &faults);
    if (rc != 0)
        return rc;
    rc = 1;

    struct app app = {.cfg = &cfg};
    struct event *sigterm = NULL, *sigint = NULL;
    struct evhttp_bound_socket *bound;
    int port;
    signal(SIGPIPE, SIG_IGN);
    fault_config_commit(&app, &faults, true);
    app.id_state = random_seed();
    strset_init(&app.keys);
    strset_init(&app.recipients);

    if (cfg.record_path) {
        app.record = fopen(cfg.record_path, "a");
        if (!app.record) {
            fprintf(stderr, "fake-sendgrid: opening %s: %s\n", cfg.record_path, strerror(errno));
            goto out;
        }
        setvbuf(app.record, NULL, _IOFBF, FAKE_RECORD_BUFFER);
    }

    app.base = event_base_new();
    app.http = app.base ? evhttp_new(app.base) : NULL;
    if (!app.http) {
        fprintf(stderr, "fake-sendgrid: libevent initialisation failed\n");
        goto out;
    }
    app.early_close = (event_base_get_features(app.base) & EV_FEATURE_EARLY_CLOSE) != 0;
    evhttp_set_allowed_methods(app.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                             EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                             EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_max_body_size(app.http, FAKE_MAX_REQUEST_BODY);
    evhttp_set_gencb(app.http, on_request, &app);

    bound = evhttp_bind_socket_with_handle(app.http, cfg.host, (ev_uint16_t)cfg.port);
    port = bound ? bound_port(bound) : -1;
    if (port < 0) {
        fprintf(stderr, "fake-sendgrid: cannot listen on %s port %d: %s\n", cfg.host, cfg.port,
                strerror(errno));
        goto out;
    }
    if (cfg.port_file && write_port_file(cfg.port_file, port) != 0)
        goto out;

    sigterm = evsignal_new(app.base, SIGTERM, on_signal, &app);
    sigint = evsignal_new(app.base, SIGINT, on_signal, &app);
    if (!sigterm || !sigint || evsignal_add(sigterm, NULL) != 0 ||
        evsignal_add(sigint, NULL) != 0) {
        fprintf(stderr, "fake-sendgrid: cannot install signal handlers\n");
        goto out;
    }

    if (strchr(cfg.host, ':'))
        printf("listening [%s]:%d\n", cfg.host, port);
    else
        printf("listening %s:%d\n", cfg.host, port);
    printf("fault seed %lld\n", app.faults.seed);
    fflush(stdout);

    if (event_base_dispatch(app.base) < 0) {
        fprintf(stderr, "fake-sendgrid: event loop failed\n");
        goto out;
    }
    rc = 0;
out:
    if (app.record) {
        record_flush(&app);
        if (fclose(app.record) != 0 || app.record_failed) {
            fprintf(stderr, "fake-sendgrid: record file %s is incomplete\n", cfg.record_path);
            rc = 1;
        }
    }
    holds_cleanup(&app);
    if (sigterm)
        event_free(sigterm);
    if (sigint)
        event_free(sigint);
    if (app.http)
        evhttp_free(app.http);
    if (app.base)
        event_base_free(app.base);
    strset_cleanup(&app.keys);
    strset_cleanup(&app.recipients);
    return rc;
}
