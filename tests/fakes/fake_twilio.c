/* fake_twilio.c - a loopback stand-in for Twilio's Messages and Calls APIs, with fault
 * injection, for tests and benchmarks.
 *
 * Emulates, with HTTP Basic auth (AccountSid:AuthToken), form-urlencoded input and Twilio's
 * error JSON {"code","message","more_info","status"} (20003 on bad credentials, 20404 on an
 * unknown resource):
 *
 * POST /2010-04-01/Accounts/{AccountSid}/Messages.json: 21604 (To missing), 21211 (To not
 *   E.164), 21603 (no From / MessagingServiceSid), 21602 (Body missing), 21617 (Body over
 *   1600 characters); a 201 Message resource with a fresh SM sid, status "queued"
 *   ("accepted" with a Messaging Service, which, like Twilio, reports num_segments "0"
 *   because no sender is assigned yet) and num_segments computed the way carriers split:
 *   GSM-7 160/153 septets (extension characters such as "{" or "€" take two, never split
 *   across parts), otherwise UCS-2 70/67 UTF-16 units (surrogate pairs never split). Body
 *   length is counted in Unicode code points.
 * POST /2010-04-01/Accounts/{AccountSid}/Calls.json: 21201 (To missing), 21211 (To not
 *   E.164), 21213 (From missing), 21212 (From not E.164), 21205 (none of Url, Twiml,
 *   ApplicationSid, or Url not an absolute http(s) URL), 32018 (Twiml over 4000
 *   characters), 21609 (StatusCallback not an absolute http(s) URL), 21626
 *   (StatusCallbackEvent other than initiated, ringing, answered, completed; repeated
 *   and space-separated values both accepted), 21208 (Timeout not a positive integer),
 *   21234 (MachineDetection other than Enable / DetectMessageEnd, AsyncAmd other than
 *   true / false; both case-insensitive); a 201 Call resource with a fresh CA sid,
 *   status "queued", direction "outbound-api". With both Url and Twiml, Twilio uses the
 *   Url (warning 32019), and so does the fake.
 *
 * GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json and .../Calls/{Sid}.json: the
 *   resource's sid, status (as accepted: "queued" or "accepted", until a status callback
 *   or POST /_fake/status changes it), error_code, answered_by (calls) and uri; 20404 for
 *   a sid it never accepted. Never faulted or delayed; counted in "fetches", not in
 *   "requests".
 *
 * Status callbacks (off by default; --status-callbacks, or "status_callbacks": true in POST
 * /_fake/config): for every message or call accepted with a StatusCallback URL while they
 * are on, the fake later POSTs Twilio's callbacks to that URL, form-encoded, signed like
 * Twilio with X-Twilio-Signature = base64(HMAC-SHA1(auth token, URL + each parameter
 * sorted by name: name + value)), one after the other, "callback_delay_ms" (default 1000)
 * apart, the first that long after the acceptance:
 *   messages: MessageStatus "sent", then "delivered", with MessageSid, SmsSid, SmsStatus,
 *     AccountSid, From (or MessagingServiceSid), To, ApiVersion "2010-04-01";
 *   calls: CallStatus "initiated", "ringing", "in-progress" (answered), "completed" - those
 *     StatusCallbackEvent asked for ("completed" alone without it) - with CallSid,
 *     AccountSid, From, To, Direction, ApiVersion, CallbackSource, SequenceNumber and
 *     Timestamp; CallDuration (1..60 s, from the sid) on "completed"; AnsweredBy ("human"
 *     unless POST /_fake/status set a verdict) on "in-progress" and "completed" when
 *     MachineDetection was requested.
 * A resource's stored status (GET) becomes each callback's status as that callback is
 * sent. When POST /_fake/status has already given it a final status (messages: delivered,
 * undelivered, failed, canceled, read...; calls: completed, busy, no-answer, failed,
 * canceled), the next callback is the last one (the "delivered" / "completed" step) and
 * reports that status, with ErrorCode when the resource has one. Only http:// URLs are
 * called (any other counts as failed); at most FAKE_CB_CONNS keep-alive connections per
 * host:port; a request times out after FAKE_CB_TIMEOUT_S and is never retried (Twilio
 * does not retry by default). At most FAKE_CB_MAX_PENDING messages and calls have
 * callbacks still to come: beyond, an accepted one gets none ("callbacks_dropped").
 * Turning callbacks off stops new plans; those already made are carried out.
 *
 * Does not emulate: TLS, API-key (SK...) credentials, subaccounts, list/update of
 * messages or calls, TwiML execution (no Url fetch, no AsyncAmdStatusCallback), SIP /
 * client endpoints, MediaUrl, scheduling, ValidityPeriod checks, sender ownership (21606,
 * 21210), opt-outs (21610), trial restrictions (21608), Smart Encoding, real rate limits
 * and queueing (21611, 30001), undelivered or unanswered outcomes of its own (set them with
 * POST /_fake/status).
 *
 * Fault injection (Messages.json and Calls.json only, after authentication), set by the
 * command-line options of the same names (--paccept-timeout, --latency-ms, ...) and at run
 * time by POST /_fake/config; each request draws once from a generator seeded by "seed":
 *   p500             fraction answered 500, code 20500; not processed.
 *   p429             fraction answered 429, code 20429, with "Retry-After: <retry_after>"
 *                    (retry_after 0 omits the header); not processed.
 *   ptimeout         fraction never answered and not processed: the connection is closed
 *                    without a reply after timeout_ms, or as soon as the client closes it.
 *   paccept_timeout  fraction processed - validated, accepted, recorded (with
 *                    "reply_lost":true) and counted, duplicates included - whose reply is
 *                    lost the same way: "the provider got it, the client never heard".
 *                    A request that fails validation is answered with its error instead.
 *   latency_ms       every Messages / Calls reply (errors and faults included) is sent
 *                    this much later; the control endpoints answer at once.
 * With every fraction 0 and latency_ms 0 no draw is made and nothing is delayed.
 *
 * Test-only control endpoints (never faulted, delayed or counted in "requests"):
 *   GET  /_fake/stats   counters since start or the last reset, and flushes the --record
 *                       file: "accepted", "duplicates", "unique_recipients" (messages),
 *                       "calls_accepted", "call_duplicates", "call_unique_recipients",
 *                       "requests", "rejected", "faults_500", "faults_429",
 *                       "faults_timeout", "faults_accept_timeout", "held" (requests
 *                       now waiting for a delayed reply or for their connection to close),
 *                       "fetches" (GETs of a message or call, answered or 404),
 *                       "callbacks_sent" (status callbacks answered 2xx),
 *                       "callbacks_failed" (answered otherwise, or not at all: refused,
 *                       reset, timed out, not http://), "callbacks_dropped" (messages and
 *                       calls accepted with a full callback queue) and "callbacks_pending"
 *                       (messages and calls with callbacks still to come).
 *   POST /_fake/reset   zeroes every counter, forgets seen recipients and pairs, and
 *                       truncates the --record file; the configuration, the accepted
 *                       resources (for GET) and the callbacks still to come stay.
 *   POST /_fake/status  {"sid", "status", optional "error_code" (integer or null) and
 *                       "answered_by" (calls)}: what GET answers for that message or call
 *                       from now on, until a status callback moves it ("the provider's
 *                       record changed, its callback was lost"; a final status also
 *                       decides the last callback). The status must be one Twilio uses
 *                       for that kind of resource. Answers the resource, 404 {"error"}
 *                       for an unknown sid, 400 {"error"} for a bad body.
 *   GET  /_fake/config  the configuration as JSON (the keys above, timeout_ms,
 *                       retry_after, seed, status_callbacks, callback_delay_ms).
 *   POST /_fake/config  a JSON object of some of those keys: checked as a whole (fractions
 *                       in 0..1 summing to at most 1, integers in range, booleans for
 *                       status_callbacks, no unknown key), then applied; answers the
 *                       whole configuration, or 400 {"error"}.
 *                       A "seed" restarts the generator.
 * "requests" counts every other request, at the moment it is decided, so that always
 *   requests = accepted + calls_accepted + rejected + faults_500 + faults_429 +
 *              faults_timeout
 * ("rejected": answered with a Twilio error that is not an injected fault; the
 * faults_accept_timeout requests are inside accepted / calls_accepted). "duplicates"
 * counts accepted messages whose (To, Body) pair had already been accepted since start or
 * the last reset, "call_duplicates" accepted calls whose (To, Url) pair had (Twiml or
 * ApplicationSid standing in for a missing Url); they are still answered 201.
 *
 * --record FILE appends one JSON line per accepted request, in acceptance order:
 *   {"kind":"message","sid","to","from","body"} or
 *   {"kind":"call","sid","to","from","url","twiml", and any of "application_sid",
 *    "status_callback","status_callback_event","timeout","machine_detection","async_amd"},
 * plus "reply_lost":true when the reply was withheld (paccept_timeout).
 *
 * fake-twilio --self-test-json (ctest unit.fake_twilio_json) checks that the Messages.json
 * 201 and record line, written by hand on this hot path, are byte for byte what cJSON
 * prints, and exits 0 or 1.
 *
 * Single-threaded libevent server bound to loopback only: the HTTP/1.1 server side is
 * fake_http.c (requests parsed in place, one send() per reply, replies byte for byte what
 * libevent's evhttp sent), the status callbacks' client side evhttp. No per-request logging,
 * so it sustains tens of thousands of keep-alive requests per second. A held request keeps
 * its fhttp_request; nothing more is read on its connection until the reply. */
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
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "fake_http.h"
#include "xalloc.h"

/* ------------------------------------------------------------------------------------------
 * Limits and fixed protocol strings
 * ------------------------------------------------------------------------------------------ */

#define FAKE_MAX_REQUEST_BODY (1024 * 1024) /* larger bodies get fake_http's 413 */
#define FAKE_MAX_AUTH_HEADER 1024
#define FAKE_MAX_FORM_KEY 64
#define FAKE_MAX_FORM_FIELDS 12
#define FAKE_RECORD_BUFFER (1024 * 1024)
#define FAKE_SET_INITIAL_CAP 1024       /* power of two */
#define FAKE_SEED_MAX ((1LL << 53) - 1) /* exact in a JSON number */
#define FAKE_CB_MAX_PENDING 65536       /* messages and calls with callbacks to come */
#define FAKE_CB_CONNS 4                 /* keep-alive connections per callback host:port */
#define FAKE_CB_MAX_TARGETS 32          /* host:port pairs with open connections */
#define FAKE_CB_TIMEOUT_S 10            /* per callback request */
#define FAKE_CB_MAX_URL 2048            /* longer StatusCallback URLs are not called */
#define FAKE_CB_MAX_PARAMS 16

#define TW_BODY_MAX_CHARS 1600
#define TW_TWIML_MAX_CHARS 4000
#define TW_GSM_SINGLE 160
#define TW_GSM_PART 153
#define TW_UCS2_SINGLE 70
#define TW_UCS2_PART 67

#define TW_API_PREFIX "/2010-04-01/"
#define TW_ACCOUNTS_PREFIX "/2010-04-01/Accounts/"
#define TW_MESSAGES_LEAF "Messages.json"
#define TW_CALLS_LEAF "Calls.json"
#define TW_MORE_INFO "https://www.twilio.com/docs/errors/"

#define DEFAULT_ACCOUNT_SID "AC00000000000000000000000000000000"
#define DEFAULT_AUTH_TOKEN "fake-auth-token"

/* libevent 2.1 names only some statuses (no 201, no 401, no 429). */
enum fake_http_status {
    FAKE_HTTP_OK = 200,
    FAKE_HTTP_CREATED = 201,
    FAKE_HTTP_BAD_REQUEST = 400,
    FAKE_HTTP_UNAUTHORIZED = 401,
    FAKE_HTTP_NOT_FOUND = 404,
    FAKE_HTTP_TOO_MANY_REQUESTS = 429,
    FAKE_HTTP_INTERNAL_ERROR = 500,
};

enum tw_code {
    TW_AUTHENTICATE = 20003,
    TW_NOT_FOUND = 20404,
    TW_TOO_MANY_REQUESTS = 20429,
    TW_INTERNAL_ERROR = 20500,
    TW_CALL_TO_REQUIRED = 21201,
    TW_CALL_URL_INVALID = 21205,
    TW_CALL_TIMEOUT_INVALID = 21208,
    TW_INVALID_TO = 21211,
    TW_CALL_FROM_INVALID = 21212,
    TW_CALL_FROM_REQUIRED = 21213,
    TW_CALL_AMD_INVALID = 21234,
    TW_BODY_REQUIRED = 21602,
    TW_FROM_REQUIRED = 21603,
    TW_TO_REQUIRED = 21604,
    TW_STATUS_CALLBACK_INVALID = 21609,
    TW_BODY_TOO_LONG = 21617,
    TW_STATUS_CALLBACK_EVENT_INVALID = 21626,
    TW_TWIML_TOO_LONG = 32018,
};

/* ------------------------------------------------------------------------------------------
 * State
 * ------------------------------------------------------------------------------------------ */

struct fake_config {
    const char *host; /* normalised: "127.0.0.1" or "::1" */
    int port;
    const char *account_sid;
    const char *auth_token;
    const char *record_path; /* NULL: no record */
    const char *port_file;   /* NULL: none */
};

/* The fault plan: the one piece of configuration that changes at run time (POST
 * /_fake/config). Described, parsed and printed through fault_knobs[]. */
struct fault_config {
    double p500, p429, ptimeout, paccept_timeout; /* fractions of API requests, sum <= 1 */
    long long latency_ms;
    long long retry_after; /* seconds; 0: no Retry-After header */
    long long timeout_ms;  /* how long an unanswered request is held */
    long long seed;
    bool status_callbacks; /* not a fault: whether accepted sends get status callbacks */
    long long callback_delay_ms;
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

/* What GET answers for an accepted message or call; in an open-addressing map by sid
 * (linear probing, load <= 1/2). */
struct resource {
    uint64_t hash;
    char sid[35]; /* "" : empty slot */
    bool call;
    uint8_t status;     /* index into res_statuses */
    uint8_t amd;        /* index into res_amd */
    int32_t error_code; /* 0: none */
};

struct resmap {
    struct resource *slots;
    size_t cap; /* power of two */
    size_t count;
};

struct fake_stats {
    uint64_t accepted; /* messages */
    uint64_t duplicates;
    uint64_t calls_accepted;
    uint64_t call_duplicates;
    uint64_t requests;
    uint64_t rejected;
    uint64_t faults_500;
    uint64_t faults_429;
    uint64_t faults_timeout;
    uint64_t faults_accept_timeout;
    uint64_t fetches;
    uint64_t callbacks_sent;
    uint64_t callbacks_failed;
    uint64_t callbacks_dropped;
};

/* Memory that the hand-written JSON of the Messages.json hot path is built in (see "JSON
 * written by hand"); reused from one request to the next, grown on demand. */
struct scratch {
    char *data;
    size_t cap;
};

struct hold;
struct cb_job;

/* Keep-alive connections to one callback host:port. */
struct cb_target {
    char *host; /* NULL: free slot */
    int port;
    struct evhttp_connection *conns[FAKE_CB_CONNS]; /* created on first use */
    unsigned inflight[FAKE_CB_CONNS];
    unsigned total_inflight;
};

/* Status callbacks still to come: one job per message or call, in a list for clean-up. */
struct callbacks {
    struct cb_job *jobs;
    size_t pending;
    struct cb_target targets[FAKE_CB_MAX_TARGETS];
};

struct app {
    const struct fake_config *cfg;
    struct event_base *base;
    struct fhttp_server *http;
    struct scratch json; /* Messages.json reply and record line */
    char *credentials;   /* "sid:token", compared with the decoded Basic auth */
    size_t credentials_len;
    char *messages_path; /* TW_ACCOUNTS_PREFIX sid "/" TW_MESSAGES_LEAF */
    char *calls_path;    /* TW_ACCOUNTS_PREFIX sid "/" TW_CALLS_LEAF */
    char *messages_dir;  /* TW_ACCOUNTS_PREFIX sid "/Messages/" */
    char *calls_dir;     /* TW_ACCOUNTS_PREFIX sid "/Calls/" */
    struct fake_stats stats;
    struct resmap resources;       /* every accepted message and call, for GET */
    struct strset pairs;           /* To '\0' Body of accepted messages */
    struct strset recipients;      /* To of accepted messages */
    struct strset call_pairs;      /* To '\0' kind instruction, of accepted calls */
    struct strset call_recipients; /* To of accepted calls */
    FILE *record;
    bool record_failed;
    uint64_t id_key[3]; /* random per process: sid prefix and mixing keys */
    uint64_t sid_counter;
    uint64_t request_counter;
    struct fault_config faults;
    bool faults_active; /* some fraction > 0 */
    uint64_t rng;       /* splitmix64 state, from faults.seed */
    struct hold *holds; /* requests waiting for a delayed reply or a close */
    size_t held;
    struct callbacks cb;
};

enum route {
    ROUTE_MESSAGES_CREATE = 0,
    ROUTE_CALLS_CREATE,
    ROUTE_MESSAGE_FETCH,
    ROUTE_CALL_FETCH,
    ROUTE_API_OTHER, /* under /2010-04-01/ but not emulated: 404 after auth */
    ROUTE_FAKE_STATS,
    ROUTE_FAKE_RESET,
    ROUTE_FAKE_CONFIG_GET,
    ROUTE_FAKE_CONFIG_SET,
    ROUTE_FAKE_STATUS,
    ROUTE_NOT_FOUND,
};

/* One request in flight: what the reply door needs to count and label the answer. */
struct exchange {
    struct app *app;
    struct fhttp_request *req;
    enum route route;
    const char *path;
    bool counted;          /* an emulated-API request: counts in requests / rejected */
    bool faulted;          /* an injected fault: counted by its own counter, not rejected */
    long long retry_after; /* > 0: send a Retry-After header */
};

/* ------------------------------------------------------------------------------------------
 * Hash set
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
 * Resources: what GET answers for each accepted message and call
 * ------------------------------------------------------------------------------------------ */

/* Status names GET can answer; a resource holds an index. Messages use the first
 * RES_NMSG_STATUSES, calls the rest ("queued", "failed" and "canceled" appear in both). */
static const char *const res_statuses[] = {
    "queued", "sending", "sent", "failed", "delivered", "undelivered", "receiving", "received",
    "accepted", "scheduled", "read", "partially_delivered", "canceled",
    /* calls */
    "queued", "ringing", "in-progress", "completed", "busy", "failed", "no-answer", "canceled"};
#define RES_NMSG_STATUSES 13
#define RES_NSTATUSES (sizeof(res_statuses) / sizeof(res_statuses[0]))
#define RES_CALL_QUEUED RES_NMSG_STATUSES

static const char *const res_amd[] = {"",
                                      "human",
                                      "machine_start",
                                      "machine_end_beep",
                                      "machine_end_silence",
                                      "machine_end_other",
                                      "fax",
                                      "unknown"};

/* Index of name among the statuses of a message (call false) or a call; -1 if none. */
static int res_status_index(const char *name, bool call)
{
    size_t from = call ? RES_NMSG_STATUSES : 0, to = call ? RES_NSTATUSES : RES_NMSG_STATUSES;
    for (size_t i = from; i < to; i++)
        if (strcmp(res_statuses[i], name) == 0)
            return (int)i;
    return -1;
}

static void resmap_init(struct resmap *m)
{
    m->cap = FAKE_SET_INITIAL_CAP;
    m->count = 0;
    m->slots = xcalloc(m->cap, sizeof(*m->slots));
}

static void resmap_cleanup(struct resmap *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = m->count = 0;
}

static struct resource *resmap_slot(struct resource *slots, size_t cap, const char *sid, uint64_t h)
{
    size_t i = (size_t)h & (cap - 1);
    while (slots[i].sid[0] && (slots[i].hash != h || strcmp(slots[i].sid, sid) != 0))
        i = (i + 1) & (cap - 1);
    return &slots[i];
}

/* The resource of sid, or NULL. */
static struct resource *resmap_find(struct resmap *m, const char *sid)
{
    if (strlen(sid) >= sizeof(m->slots[0].sid))
        return NULL;
    struct resource *r = resmap_slot(m->slots, m->cap, sid, hash_bytes(sid, strlen(sid)));
    return r->sid[0] ? r : NULL;
}

/* Adds a new resource (sids never repeat), as accepted: status queued (accepted for a
 * message through a Messaging Service). */
static void resmap_add(struct resmap *m, const char *sid, bool call, bool service)
{
    if (++m->count * 2 > m->cap) {
        size_t cap = m->cap * 2;
        struct resource *slots = xcalloc(cap, sizeof(*slots));
        for (size_t i = 0; i < m->cap; i++)
            if (m->slots[i].sid[0])
                *resmap_slot(slots, cap, m->slots[i].sid, m->slots[i].hash) = m->slots[i];
        free(m->slots);
        m->slots = slots;
        m->cap = cap;
    }
    uint64_t h = hash_bytes(sid, strlen(sid));
    struct resource *r = resmap_slot(m->slots, m->cap, sid, h);
    *r = (struct resource){.hash = h, .call = call};
    snprintf(r->sid, sizeof(r->sid), "%s", sid);
    r->status = (uint8_t)(call ? RES_CALL_QUEUED
                               : res_status_index(service ? "accepted" : "queued", false));
}

/* ------------------------------------------------------------------------------------------
 * Text: form decoding, UTF-8, E.164, segments, base64
 * ------------------------------------------------------------------------------------------ */

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes application/x-www-form-urlencoded text ('+' is a space, %XX a byte; a malformed
 * escape stays literal) into out, which holds at least n + 1 bytes. Returns the length. */
static size_t form_decode(const char *in, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (in[i] == '+') {
            out[o++] = ' ';
        } else if (in[i] == '%' && i + 2 < n && (hi = hex_value(in[i + 1])) >= 0 &&
                   (lo = hex_value(in[i + 2])) >= 0) {
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[o++] = in[i];
        }
    }
    out[o] = '\0';
    return o;
}

/* Decodes one UTF-8 sequence at p (n bytes available). Returns its length and the code point
 * in *cp, or 0 if the bytes there are not valid UTF-8 (overlong, surrogate, > U+10FFFF). */
static size_t utf8_next(const unsigned char *p, size_t n, uint32_t *cp)
{
    if (p[0] < 0x80) {
        *cp = p[0];
        return 1;
    }
    size_t len;
    uint32_t c, min;
    if ((p[0] & 0xe0) == 0xc0) {
        len = 2, c = p[0] & 0x1f, min = 0x80;
    } else if ((p[0] & 0xf0) == 0xe0) {
        len = 3, c = p[0] & 0x0f, min = 0x800;
    } else if ((p[0] & 0xf8) == 0xf0) {
        len = 4, c = p[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        c = c << 6 | (p[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return len;
}

/* Replaces each invalid UTF-8 byte of the heap string *s with U+FFFD so replies stay valid
 * JSON. May replace *s (the old one is freed); updates *len. */
static void utf8_sanitize(char **s, size_t *len)
{
    const unsigned char *p = (const unsigned char *)*s;
    size_t n = *len, i = 0, bad = 0;
    uint32_t cp = 0;
    while (i < n) {
        size_t k = utf8_next(p + i, n - i, &cp);
        if (k == 0) {
            bad++;
            k = 1;
        }
        i += k;
    }
    if (bad == 0)
        return;
    char *out = xmalloc(n + bad * 2 + 1);
    size_t o = 0;
    for (i = 0; i < n;) {
        size_t k = utf8_next(p + i, n - i, &cp);
        if (k == 0) {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        } else {
            memcpy(out + o, p + i, k);
            o += k;
            i += k;
        }
    }
    out[o] = '\0';
    free(*s);
    *s = out;
    *len = o;
}

/* ^\+[1-9]\d{6,14}$ */
static bool is_e164(const char *s, size_t n)
{
    if (n < 8 || n > 16 || s[0] != '+' || s[1] < '1' || s[1] > '9')
        return false;
    for (size_t i = 2; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* Septets a code point takes in GSM 03.38 (default alphabet + extension table), or 0 if it
 * has no GSM-7 encoding and forces UCS-2. */
static int gsm7_septets(uint32_t c)
{
    if (c == '\n' || c == '\r')
        return 1;
    if (c >= 0x20 && c < 0x7f) {
        switch (c) {
        case '[':
        case '\\':
        case ']':
        case '^':
        case '{':
        case '|':
        case '}':
        case '~':
            return 2;
        case '`':
            return 0;
        default:
            return 1;
        }
    }
    if (c == '\f' || c == 0x20ac) /* form feed, euro sign: extension table */
        return 2;
    static const uint16_t basic[] = {
        0x00a1, 0x00a3, 0x00a4, 0x00a5, 0x00a7, 0x00bf, 0x00c4, 0x00c5, 0x00c6, 0x00c7,
        0x00c9, 0x00d1, 0x00d6, 0x00d8, 0x00dc, 0x00df, 0x00e0, 0x00e4, 0x00e5, 0x00e6,
        0x00e8, 0x00e9, 0x00ec, 0x00f1, 0x00f2, 0x00f6, 0x00f8, 0x00f9, 0x00fc, 0x0393,
        0x0394, 0x0398, 0x039b, 0x039e, 0x03a0, 0x03a3, 0x03a6, 0x03a8, 0x03a9,
    };
    for (size_t i = 0; i < sizeof(basic) / sizeof(basic[0]); i++)
        if (basic[i] == c)
            return 1;
    return 0;
}

/* Segments for a sanitised UTF-8 body: one if everything fits in `single` units, else parts of
 * `part` units each, never splitting a character (GSM escape pair, UTF-16 surrogate pair). */
static unsigned pack_parts(const unsigned char *p, size_t n, bool gsm, unsigned single,
                           unsigned part)
{
    unsigned total = 0, parts = 1, used = 0;
    uint32_t cp = 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_next(p + i, n - i, &cp); /* input is sanitised: k >= 1 */
        unsigned w = gsm ? (unsigned)gsm7_septets(cp) : (cp >= 0x10000 ? 2u : 1u);
        i += k;
        total += w;
        if (used + w > part) {
            parts++;
            used = 0;
        }
        used += w;
    }
    return total <= single ? 1 : parts;
}

/* Counts code points and SMS segments of a sanitised UTF-8 body. */
static void body_measure(const char *body, size_t n, size_t *chars, unsigned *segments)
{
    const unsigned char *p = (const unsigned char *)body;
    bool gsm = true;
    size_t count = 0;
    uint32_t cp = 0;
    for (size_t i = 0; i < n; count++) {
        i += utf8_next(p + i, n - i, &cp);
        if (gsm && gsm7_septets(cp) == 0)
            gsm = false;
    }
    *chars = count;
    *segments = gsm ? pack_parts(p, n, true, TW_GSM_SINGLE, TW_GSM_PART)
                    : pack_parts(p, n, false, TW_UCS2_SINGLE, TW_UCS2_PART);
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Standard base64, padding optional. Returns false if malformed or longer than outsz. */
static bool b64_decode(const char *in, size_t n, unsigned char *out, size_t outsz, size_t *outlen)
{
    while (n > 0 && in[n - 1] == '=')
        n--;
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value(in[i]);
        if (v < 0)
            return false;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == outsz)
                return false;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    *outlen = o;
    return bits < 6;
}

/* Code points in sanitised UTF-8. */
static size_t utf8_count(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t count = 0;
    uint32_t cp = 0;
    for (size_t i = 0; i < n; count++)
        i += utf8_next(p + i, n - i, &cp);
    return count;
}

/* An absolute http:// or https:// URL with a host and no white space. */
static bool is_http_url(const char *s)
{
    size_t skip;
    if (strncasecmp(s, "https://", 8) == 0)
        skip = 8;
    else if (strncasecmp(s, "http://", 7) == 0)
        skip = 7;
    else
        return false;
    if (s[skip] == '\0' || strchr("/?#:", s[skip]))
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ')
            return false;
    return true;
}

/* ^[1-9][0-9]*$, at most 9 digits. */
static bool is_positive_int(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 9 || s[0] == '0')
        return false;
    return strspn(s, "0123456789") == n;
}

/* ------------------------------------------------------------------------------------------
 * JSON written by hand, for the Messages.json hot path only
 *
 * A 201 to a Messages.json create and its record line are written straight into struct
 * scratch: the bytes cJSON_PrintUnformatted gives for the trees the cJSON builders
 * (msg_resource_cjson, msg_record_cjson) make, without a node, a key copy and a value copy
 * allocated and freed per field, nor the printer's buffer. --self-test-json compares the two.
 * Everything else still goes through cJSON.
 * ------------------------------------------------------------------------------------------ */

/* Room jw_str needs for a string of n bytes: every byte a \u00xx escape, and the quotes. */
#define JW_STR_MAX(n) (6 * (n) + 2)

/* Returns s's memory, at least need bytes; its content is not kept. */
static char *scratch_reserve(struct scratch *s, size_t need)
{
    if (need > s->cap) {
        size_t cap = s->cap ? s->cap : 1024;
        while (cap < need)
            cap *= 2;
        free(s->data);
        s->data = xmalloc(cap);
        s->cap = cap;
    }
    return s->data;
}

static void scratch_cleanup(struct scratch *s)
{
    free(s->data);
    s->data = NULL;
    s->cap = 0;
}

/* Writes n bytes at p; returns the end. */
static char *jw_raw(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define JW_LIT(p, lit) jw_raw((p), (lit), sizeof(lit) - 1)

/* Writes the C string s (up to its NUL, as cJSON takes it) as a JSON string the way cJSON
 * 1.7 prints one: '"' and '\\' escaped, \b \f \n \r \t by name, every other byte below 0x20
 * as \u00xx (lowercase hex), everything else - '/', DEL, bytes >= 0x80 - as it is. p has
 * room for JW_STR_MAX(strlen(s)) bytes; returns the end. */
static char *jw_str(char *p, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *c = (const unsigned char *)s;
    *p++ = '"';
    for (;; c++) {
        const unsigned char *run = c;
        while (*c >= 0x20 && *c != '"' && *c != '\\')
            c++;
        p = jw_raw(p, (const char *)run, (size_t)(c - run));
        if (!*c)
            break;
        *p++ = '\\';
        switch (*c) {
        case '"':
        case '\\':
            *p++ = (char)*c;
            break;
        case '\b':
            *p++ = 'b';
            break;
        case '\f':
            *p++ = 'f';
            break;
        case '\n':
            *p++ = 'n';
            break;
        case '\r':
            *p++ = 'r';
            break;
        case '\t':
            *p++ = 't';
            break;
        default:
            p = JW_LIT(p, "u00");
            *p++ = hex[*c >> 4];
            *p++ = hex[*c & 0xf];
            break;
        }
    }
    *p++ = '"';
    return p;
}

/* jw_str, or null for NULL (room: JW_STR_MAX(strlen(s)), at least 4). */
static char *jw_str_or_null(char *p, const char *s)
{
    return s ? jw_str(p, s) : JW_LIT(p, "null");
}

/* ------------------------------------------------------------------------------------------
 * Random numbers: splitmix64, one stream per process, restarted by a seed
 * ------------------------------------------------------------------------------------------ */

static uint64_t rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double rng_unit(uint64_t *state)
{
    return (double)(rng_next(state) >> 11) * 0x1.0p-53;
}

/* ------------------------------------------------------------------------------------------
 * Held requests: a reply sent later, or no reply at all
 *
 * A held request keeps its fhttp_request, which stays valid until we answer or drop it;
 * fake_http reads nothing more on its connection meanwhile. A drop ends when timeout_ms has
 * passed or, with a backend that reports it (EV_CLOSED), when the client closes, whichever
 * is first; then the connection is closed without a reply.
 * ------------------------------------------------------------------------------------------ */

/* Reason phrases libevent 2.1 (and so fake_http) lacks ("Client Error" otherwise); NULL:
 * the standard one. */
static const char *reply_reason(int status)
{
    return status == FAKE_HTTP_TOO_MANY_REQUESTS ? "Too Many Requests" : NULL;
}

enum hold_kind {
    HOLD_REPLY = 0, /* headers added to the request; the body kept here */
    HOLD_DROP,
};

struct hold {
    struct hold *prev, *next;
    struct app *app;
    struct fhttp_request *req;
    struct event *timer;
    enum hold_kind kind;
    int status;
    char *body; /* HOLD_REPLY */
    size_t body_len;
};

static void hold_unlink_free(struct hold *h)
{
    struct app *app = h->app;
    if (h->prev)
        h->prev->next = h->next;
    else
        app->holds = h->next;
    if (h->next)
        h->next->prev = h->prev;
    app->held--;
    /* Freeing a fired one-shot event inside its own callback is allowed by libevent; the
     * loop does not touch it afterwards. */
    event_free(h->timer);
    free(h->body);
    free(h);
}

/* Ends the hold: sends the composed reply or closes the connection. Frees h. */
static void hold_finish(struct hold *h)
{
    struct fhttp_request *req = h->req;
    enum hold_kind kind = h->kind;
    int status = h->status;
    char *body = h->body;
    size_t body_len = h->body_len;
    h->body = NULL;
    hold_unlink_free(h);
    if (kind == HOLD_REPLY)
        fhttp_send_reply(req, status, reply_reason(status), body, body_len);
    else
        fhttp_drop(req);
    free(body);
}

static void hold_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    hold_finish(arg);
}

static void hold_on_closed(struct fhttp_request *req, void *arg)
{
    (void)req;
    hold_finish(arg);
}

/* Holds req for ms: then sends status with body (HOLD_REPLY; copied) or drops it. */
static void hold_start(struct app *app, struct fhttp_request *req, enum hold_kind kind, int status,
                       const char *body, size_t body_len, long long ms)
{
    struct hold *h = xcalloc(1, sizeof(*h));
    h->app = app;
    h->req = req;
    h->kind = kind;
    h->status = status;
    if (kind == HOLD_REPLY) {
        h->body = xmalloc(body_len + 1);
        memcpy(h->body, body, body_len);
        h->body_len = body_len;
    }
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    h->timer = evtimer_new(app->base, hold_on_timer, h);
    if (!h->timer || evtimer_add(h->timer, &tv) != 0) {
        fprintf(stderr, "fatal: cannot arm a reply timer\n");
        abort();
    }
    if (kind == HOLD_DROP)
        (void)fhttp_notify_close(req, hold_on_closed, h); /* else the timer alone ends it */
    h->next = app->holds;
    if (app->holds)
        app->holds->prev = h;
    app->holds = h;
    app->held++;
}

/* At exit, before fhttp_server_free (which frees the connections and their requests). */
static void holds_cleanup(struct app *app)
{
    while (app->holds)
        hold_unlink_free(app->holds);
}

/* ------------------------------------------------------------------------------------------
 * Replies: the only place that sets headers and calls fhttp_send_reply
 * ------------------------------------------------------------------------------------------ */

/* What snprintf(out, 35, "%.2s%016" PRIx64 "%016" PRIx64, prefix, hi, lo) writes, for a
 * two-letter prefix, at a fraction of its cost (two ids per message). */
static void id_format(char out[35], const char *prefix, uint64_t hi, uint64_t lo)
{
    static const char hex[] = "0123456789abcdef";
    out[0] = prefix[0];
    out[1] = prefix[1];
    for (int i = 0; i < 16; i++) {
        out[2 + i] = hex[(hi >> (60 - 4 * i)) & 0xf];
        out[18 + i] = hex[(lo >> (60 - 4 * i)) & 0xf];
    }
    out[34] = '\0';
}

static void make_id(struct app *app, const char *prefix, uint64_t counter, char out[35])
{
    /* Bijective in counter, so ids never repeat; the prefix keeps SM, CA and RQ streams
     * apart. */
    uint64_t domain = ((uint64_t)(unsigned char)prefix[0] << 8 | (unsigned char)prefix[1]) *
                      0x9e3779b97f4a7c15ULL;
    uint64_t hi = mix64(counter ^ app->id_key[1] ^ domain);
    uint64_t lo = mix64(hi ^ app->id_key[2]) ^ app->id_key[0];
    id_format(out, prefix, hi, lo);
}

static void reply_send(struct exchange *ex, int status, const char *json, size_t len)
{
    struct app *app = ex->app;
    fhttp_add_header(ex->req, "Content-Type", "application/json");
    if (ex->counted) {
        char rq[35];
        make_id(app, "RQ", ++app->request_counter, rq);
        fhttp_add_header(ex->req, "Twilio-Request-Id", rq);
        if (status >= 300 && !ex->faulted)
            app->stats.rejected++;
    }
    if (status == FAKE_HTTP_UNAUTHORIZED)
        fhttp_add_header(ex->req, "WWW-Authenticate", "Basic realm=\"Twilio API\"");
    if (ex->retry_after > 0) {
        char v[24];
        snprintf(v, sizeof(v), "%lld", ex->retry_after);
        fhttp_add_header(ex->req, "Retry-After", v);
    }
    if (ex->counted && app->faults.latency_ms > 0) {
        hold_start(app, ex->req, HOLD_REPLY, status, json, len, app->faults.latency_ms);
        return;
    }
    fhttp_send_reply(ex->req, status, reply_reason(status), json, len);
}

/* No reply: the connection is closed after timeout_ms, or when the client closes it. */
static void reply_withhold(struct exchange *ex)
{
    hold_start(ex->app, ex->req, HOLD_DROP, 0, NULL, 0, ex->app->faults.timeout_ms);
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
    reply_send(ex, status, text, strlen(text));
    cJSON_free(text);
}

/* Twilio's error shape: {"code","message","more_info","status"}. */
static void reply_twilio_error(struct exchange *ex, int status, enum tw_code code,
                               const char *message)
{
    char more_info[64];
    snprintf(more_info, sizeof(more_info), TW_MORE_INFO "%d", (int)code);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "code", code);
    cJSON_AddStringToObject(root, "message", message);
    cJSON_AddStringToObject(root, "more_info", more_info);
    cJSON_AddNumberToObject(root, "status", status);
    reply_cjson(ex, status, root);
}

/* Sends the Twilio error with a formatted message (for messages that quote input). */
static void reply_twilio_errorf(struct exchange *ex, int status, enum tw_code code, const char *fmt,
                                ...) __attribute__((format(printf, 4, 5)));

static void reply_twilio_errorf(struct exchange *ex, int status, enum tw_code code, const char *fmt,
                                ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *msg = xmalloc(n > 0 ? (size_t)n + 1 : 1);
    msg[0] = '\0';
    if (n > 0) {
        va_start(ap, fmt);
        vsnprintf(msg, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    reply_twilio_error(ex, status, code, msg);
    free(msg);
}

static void reply_not_found(struct exchange *ex)
{
    reply_twilio_errorf(ex, FAKE_HTTP_NOT_FOUND, TW_NOT_FOUND,
                        "The requested resource %s was not found", ex->path);
}

/* Control endpoints' error shape: {"error": message}. */
static void reply_control_error(struct exchange *ex, const char *message)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "error", message);
    reply_cjson(ex, FAKE_HTTP_BAD_REQUEST, root);
}

/* ------------------------------------------------------------------------------------------
 * Fault plan: the knobs, their checks, and one decision per request
 * ------------------------------------------------------------------------------------------ */

enum knob_type {
    KNOB_FRACTION = 0, /* double in [0, 1] */
    KNOB_INT,          /* long long in [min, max] */
    KNOB_BOOL,         /* bool; a JSON boolean, an option without argument */
};

struct knob {
    const char *key; /* JSON key in /_fake/config */
    const char *opt; /* command-line option, without "--" */
    enum knob_type type;
    size_t offset; /* in struct fault_config */
    long long min, max;
    const char *help;
};

#define KNOB_AT(field) offsetof(struct fault_config, field)

static const struct knob fault_knobs[] = {
    {"p500", "p500", KNOB_FRACTION, KNOB_AT(p500), 0, 0,
     "fraction answered 500 (20500), not processed"},
    {"p429", "p429", KNOB_FRACTION, KNOB_AT(p429), 0, 0,
     "fraction answered 429 (20429) + Retry-After, not processed"},
    {"ptimeout", "ptimeout", KNOB_FRACTION, KNOB_AT(ptimeout), 0, 0,
     "fraction never answered, not processed"},
    {"paccept_timeout", "paccept-timeout", KNOB_FRACTION, KNOB_AT(paccept_timeout), 0, 0,
     "fraction accepted but never answered"},
    {"latency_ms", "latency-ms", KNOB_INT, KNOB_AT(latency_ms), 0, 600000,
     "delay before every API reply (0)"},
    {"retry_after", "retry-after", KNOB_INT, KNOB_AT(retry_after), 0, 86400,
     "Retry-After seconds of a 429 (1; 0: none)"},
    {"timeout_ms", "timeout-ms", KNOB_INT, KNOB_AT(timeout_ms), 1, 3600000,
     "how long an unanswered request is held (20000)"},
    {"seed", "seed", KNOB_INT, KNOB_AT(seed), 0, FAKE_SEED_MAX,
     "seed of the fault draws (default: the clock)"},
    {"status_callbacks", "status-callbacks", KNOB_BOOL, KNOB_AT(status_callbacks), 0, 1,
     "POST signed status callbacks to StatusCallback URLs (off)"},
    {"callback_delay_ms", "callback-delay-ms", KNOB_INT, KNOB_AT(callback_delay_ms), 0, 600000,
     "delay before each status callback (1000)"},
};
#define FAULT_NKNOBS (sizeof(fault_knobs) / sizeof(fault_knobs[0]))

enum fault_action {
    FAULT_NONE = 0,
    FAULT_500,
    FAULT_429,
    FAULT_TIMEOUT,
    FAULT_ACCEPT_TIMEOUT,
};

static void fault_config_defaults(struct fault_config *fc)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    *fc = (struct fault_config){
        .retry_after = 1,
        .timeout_ms = 20000,
        .callback_delay_ms = 1000,
        .seed = (long long)(((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) &
                            (uint64_t)FAKE_SEED_MAX),
    };
}

/* Sets one knob; returns NULL or an error message (heap). */
static char *knob_set(struct fault_config *fc, const struct knob *k, double v)
{
    char *field = (char *)fc + k->offset;
    if (k->type == KNOB_BOOL) {
        bool b = v != 0.0;
        memcpy(field, &b, sizeof(b));
        return NULL;
    }
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
    cJSON *root = cJSON_ParseWithLength(text, n);
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
        if (k->type == KNOB_BOOL ? !cJSON_IsBool(item) : !cJSON_IsNumber(item)) {
            err = xasprintf("%s must be %s", k->key,
                            k->type == KNOB_BOOL ? "true or false" : "a number");
            goto out;
        }
        if ((err = knob_set(&next, k,
                            k->type == KNOB_BOOL ? (cJSON_IsTrue(item) ? 1.0 : 0.0)
                                                 : item->valuedouble)) != NULL)
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
        if (k->type == KNOB_BOOL) {
            bool b;
            memcpy(&b, field, sizeof(b));
            cJSON_AddBoolToObject(o, k->key, b);
        } else if (k->type == KNOB_FRACTION) {
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

/* One draw per request when some fraction is set; none otherwise. */
static enum fault_action fault_plan_decide(struct app *app)
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

/* Answers a fault that takes the request before it is processed (500, 429, timeout) and
 * returns false; returns true when the request goes on to be processed. */
static bool fault_pass_or_reply(struct exchange *ex, enum fault_action fault)
{
    struct app *app = ex->app;
    switch (fault) {
    case FAULT_NONE:
    case FAULT_ACCEPT_TIMEOUT:
        return true;
    case FAULT_500:
        app->stats.faults_500++;
        ex->faulted = true;
        reply_twilio_error(ex, FAKE_HTTP_INTERNAL_ERROR, TW_INTERNAL_ERROR,
                           "Internal Server Error");
        return false;
    case FAULT_429:
        app->stats.faults_429++;
        ex->faulted = true;
        ex->retry_after = app->faults.retry_after;
        reply_twilio_error(ex, FAKE_HTTP_TOO_MANY_REQUESTS, TW_TOO_MANY_REQUESTS,
                           "Too Many Requests");
        return false;
    case FAULT_TIMEOUT:
        app->stats.faults_timeout++;
        reply_withhold(ex);
        return false;
    }
    return true;
}

/* After an accepted request: for paccept_timeout, withholds the reply and returns true;
 * otherwise returns false and the caller sends its 201. */
static bool fault_withhold_accepted(struct exchange *ex, enum fault_action fault)
{
    if (fault != FAULT_ACCEPT_TIMEOUT)
        return false;
    ex->app->stats.faults_accept_timeout++;
    reply_withhold(ex);
    return true;
}

/* After an accepted request: its 201, or nothing for paccept_timeout. Takes root. */
static void fault_reply_accepted(struct exchange *ex, enum fault_action fault, cJSON *root)
{
    if (fault_withhold_accepted(ex, fault)) {
        cJSON_Delete(root);
        return;
    }
    reply_cjson(ex, FAKE_HTTP_CREATED, root);
}

/* ------------------------------------------------------------------------------------------
 * Forms and the record file
 * ------------------------------------------------------------------------------------------ */

struct form_spec {
    const char *const *names;
    int nfields;    /* <= FAKE_MAX_FORM_FIELDS */
    unsigned multi; /* bit i: repeats of field i are joined with spaces, not first-wins */
};

struct form {
    char *value[FAKE_MAX_FORM_FIELDS]; /* decoded, UTF-8 sanitised; NULL when absent/empty */
    size_t len[FAKE_MAX_FORM_FIELDS];
};

static void form_cleanup(struct form *f)
{
    for (int i = 0; i < FAKE_MAX_FORM_FIELDS; i++)
        free(f->value[i]);
}

/* Stores a decoded value of field i (takes v). */
static void form_store(struct form *f, const struct form_spec *spec, int i, char *v, size_t vlen)
{
    if (!f->value[i]) {
        f->value[i] = v;
        f->len[i] = vlen;
        return;
    }
    if (!(spec->multi & (1u << i))) {
        free(v);
        return;
    }
    char *joined = xmalloc(f->len[i] + 1 + vlen + 1);
    memcpy(joined, f->value[i], f->len[i]);
    joined[f->len[i]] = ' ';
    memcpy(joined + f->len[i] + 1, v, vlen + 1);
    free(f->value[i]);
    free(v);
    f->value[i] = joined;
    f->len[i] += 1 + vlen;
}

/* Parses the fields of spec; others are ignored. */
static void form_parse(struct form *f, const struct form_spec *spec, const char *p, size_t n)
{
    memset(f, 0, sizeof(*f));
    while (n > 0) {
        const char *amp = memchr(p, '&', n);
        size_t pair = amp ? (size_t)(amp - p) : n;
        const char *eq = memchr(p, '=', pair);
        size_t klen = eq ? (size_t)(eq - p) : pair;
        char key[FAKE_MAX_FORM_KEY + 1];
        if (klen <= FAKE_MAX_FORM_KEY) {
            size_t kdec = form_decode(p, klen, key);
            for (int i = 0; i < spec->nfields; i++) {
                if ((f->value[i] && !(spec->multi & (1u << i))) || strlen(spec->names[i]) != kdec ||
                    memcmp(spec->names[i], key, kdec) != 0)
                    continue;
                size_t vraw = eq ? pair - klen - 1 : 0;
                char *v = xmalloc(vraw + 1);
                size_t vlen = form_decode(eq ? eq + 1 : "", vraw, v);
                if (vlen == 0) {
                    free(v);
                    break;
                }
                utf8_sanitize(&v, &vlen);
                form_store(f, spec, i, v, vlen);
                break;
            }
        }
        if (!amp)
            break;
        p = amp + 1;
        n -= pair + 1;
    }
}

/* The request body, parsed with spec. */
static void form_parse_request(struct form *f, const struct form_spec *spec,
                               const struct fhttp_request *req)
{
    size_t n;
    const char *body = fhttp_request_body(req, &n);
    form_parse(f, spec, body, n);
}

static void add_string_or_null(cJSON *o, const char *name, const char *value)
{
    if (value)
        cJSON_AddStringToObject(o, name, value);
    else
        cJSON_AddNullToObject(o, name);
}

/* After a failed write to the --record file. */
static void record_stop(struct app *app)
{
    fprintf(stderr, "fake-twilio: writing %s failed: %s; recording stopped\n",
            app->cfg->record_path, strerror(errno));
    app->record_failed = true;
}

/* The text of a record line (line is deleted here), without its newline: line plus
 * "reply_lost":true when the reply was withheld. NULL when out of memory; cJSON_free it. */
static char *record_text(cJSON *line, bool reply_lost)
{
    if (reply_lost)
        cJSON_AddTrueToObject(line, "reply_lost");
    char *text = cJSON_PrintUnformatted(line);
    cJSON_Delete(line);
    return text;
}

/* Appends line (deleted here) to the --record file. */
static void record_write(struct app *app, cJSON *line, bool reply_lost)
{
    if (!app->record || app->record_failed) {
        cJSON_Delete(line);
        return;
    }
    char *text = record_text(line, reply_lost);
    if (!text || fputs(text, app->record) == EOF || fputc('\n', app->record) == EOF)
        record_stop(app);
    cJSON_free(text);
}

/* Counts an accepted send in *accepted, in *duplicates when its pair (To '\0' rest) was
 * seen before, and its recipient in recipients. */
static void count_accepted(struct strset *pairs, struct strset *recipients, uint64_t *accepted,
                           uint64_t *duplicates, const char *to, size_t tl, const char *rest,
                           size_t rl)
{
    char *pair = xmalloc(tl + 1 + rl); /* To has no NUL, so the separator is unambiguous */
    memcpy(pair, to, tl);
    pair[tl] = '\0';
    memcpy(pair + tl + 1, rest, rl);
    (*accepted)++;
    if (!strset_add_take(pairs, pair, tl + 1 + rl))
        (*duplicates)++;
    (void)strset_add_take(recipients, xstrndup(to, tl), tl);
}

/* The current time as Twilio writes dates; made once a second (single-threaded). */
static void format_date(char *out, size_t n)
{
    static time_t made = (time_t)-1;
    static char date[64];
    static size_t len;
    time_t now = time(NULL);
    if (now != made) {
        struct tm tm;
        gmtime_r(&now, &tm);
        len = strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
        made = now;
    }
    size_t k = len < n ? len : n - 1;
    memcpy(out, date, k);
    out[k] = '\0';
}

/* ------------------------------------------------------------------------------------------
 * Status callbacks: Twilio's signed POSTs to a StatusCallback URL
 *
 * One job per message or call with callbacks to come. Its timer fires the next step; the
 * step after is armed only once that request has been answered (or has failed), so the
 * callbacks of one resource never overtake each other. Requests go out on a few keep-alive
 * evhttp connections per host:port (libevent queues requests on a busy connection, and
 * reconnects when the server closed an idle one). A job has at most one request out and
 * jobs are bounded (FAKE_CB_MAX_PENDING), so is everything queued.
 * ------------------------------------------------------------------------------------------ */

/* The steps of a plan, in the order they are sent; a job holds the set still to send. */
enum cb_step {
    CB_SENT = 0,  /* message: "sent" */
    CB_DELIVERED, /* message: "delivered", or the final status POST /_fake/status set */
    CB_INITIATED, /* call progress events */
    CB_RINGING,
    CB_ANSWERED,  /* "in-progress" */
    CB_COMPLETED, /* "completed", or the final status POST /_fake/status set */
};

struct cb_job {
    struct cb_job *prev, *next; /* app->cb.jobs */
    struct app *app;
    struct event *timer;
    struct cb_target *target; /* while a request is out */
    int conn;
    unsigned steps; /* bit (1u << enum cb_step) per step still to send */
    unsigned seq;   /* calls: SequenceNumber of the next callback */
    bool call;
    bool amd; /* MachineDetection was requested */
    char sid[35];
    char *url, *from, *to, *service; /* from or service may be NULL */
};

struct cb_param {
    const char *name, *value;
};

static bool res_is_final(const struct resource *r)
{
    static const char *const finals[] = {
        "delivered",           "undelivered", "failed", "canceled",  "read",
        "partially_delivered", "completed",   "busy",   "no-answer",
    };
    for (size_t i = 0; i < sizeof(finals) / sizeof(finals[0]); i++)
        if (strcmp(res_statuses[r->status], finals[i]) == 0)
            return true;
    return false;
}

static void cb_job_free(struct cb_job *job)
{
    struct app *app = job->app;
    if (job->prev)
        job->prev->next = job->next;
    else
        app->cb.jobs = job->next;
    if (job->next)
        job->next->prev = job->prev;
    app->cb.pending--;
    event_free(job->timer);
    free(job->url);
    free(job->from);
    free(job->to);
    free(job->service);
    free(job);
}

static void cb_target_close(struct cb_target *t)
{
    for (int i = 0; i < FAKE_CB_CONNS; i++)
        if (t->conns[i])
            evhttp_connection_free(t->conns[i]); /* frees queued requests, no callback */
    free(t->host);
    memset(t, 0, sizeof(*t));
}

/* At exit: connections first (their requests point at jobs), then the jobs. */
static void cb_cleanup(struct app *app)
{
    for (int i = 0; i < FAKE_CB_MAX_TARGETS; i++)
        if (app->cb.targets[i].host)
            cb_target_close(&app->cb.targets[i]);
    while (app->cb.jobs)
        cb_job_free(app->cb.jobs);
}

/* The connections of host:port, opening a slot (a free one, else an idle one) when new;
 * NULL when every slot has requests out. */
static struct cb_target *cb_target_get(struct app *app, const char *host, int port)
{
    struct cb_target *spare = NULL, *idle = NULL;
    for (int i = 0; i < FAKE_CB_MAX_TARGETS; i++) {
        struct cb_target *t = &app->cb.targets[i];
        if (t->host && t->port == port && strcmp(t->host, host) == 0)
            return t;
        if (!t->host && !spare)
            spare = t;
        else if (t->host && t->total_inflight == 0 && !idle)
            idle = t;
    }
    struct cb_target *t = spare ? spare : idle;
    if (!t)
        return NULL;
    if (t->host)
        cb_target_close(t);
    t->host = xstrdup(host);
    t->port = port;
    return t;
}

/* Splits an http:// URL into the host to connect to (an IPv6 literal without brackets), its
 * port, the Host header (the URL's authority) and the request target. Heap strings; false
 * (nothing allocated) for any other URL, one with user info, or one too long. */
static bool cb_url_split(const char *url, char **host, int *port, char **authority, char **target)
{
    if (strlen(url) > FAKE_CB_MAX_URL || strncasecmp(url, "http://", 7) != 0)
        return false;
    struct evhttp_uri *u = evhttp_uri_parse(url);
    const char *h = u ? evhttp_uri_get_host(u) : NULL;
    if (!h || !*h || evhttp_uri_get_userinfo(u)) {
        if (u)
            evhttp_uri_free(u);
        return false;
    }
    size_t hl = strlen(h);
    if (h[0] == '[' && hl > 2 && h[hl - 1] == ']')
        *host = xstrndup(h + 1, hl - 2);
    else
        *host = xstrdup(h);
    *port = evhttp_uri_get_port(u) < 0 ? 80 : evhttp_uri_get_port(u);
    const char *a = url + 7;
    *authority = xstrndup(a, strcspn(a, "/?#"));
    const char *path = evhttp_uri_get_path(u), *query = evhttp_uri_get_query(u);
    *target = xasprintf("%s%s%s", path && *path ? path : "/", query ? "?" : "", query ? query : "");
    evhttp_uri_free(u);
    return true;
}

static int cb_param_cmp(const void *a, const void *b)
{
    return strcmp(((const struct cb_param *)a)->name, ((const struct cb_param *)b)->name);
}

/* application/x-www-form-urlencoded: unreserved characters as they are, space as '+'. */
static void cb_form_encode(struct evbuffer *out, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~')
            evbuffer_add(out, s, 1);
        else if (c == ' ')
            evbuffer_add(out, "+", 1);
        else
            evbuffer_add_printf(out, "%%%02X", c);
    }
}

/* Twilio's signature: base64(HMAC-SHA1(token, url + name + value for each parameter, sorted
 * by name)); params must be sorted. out gets 28 characters and a NUL. */
static void cb_sign(const char *token, const char *url, const struct cb_param *p, int n,
                    char out[29])
{
    struct evbuffer *msg = evbuffer_new();
    if (!msg) {
        fprintf(stderr, "fatal: out of memory signing a callback\n");
        abort();
    }
    evbuffer_add(msg, url, strlen(url));
    for (int i = 0; i < n; i++) {
        evbuffer_add(msg, p[i].name, strlen(p[i].name));
        evbuffer_add(msg, p[i].value, strlen(p[i].value));
    }
    size_t len = evbuffer_get_length(msg);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (!HMAC(EVP_sha1(), token, (int)strlen(token), evbuffer_pullup(msg, -1), len, mac, &maclen) ||
        maclen != 20) {
        fprintf(stderr, "fatal: HMAC-SHA1 failed\n");
        abort();
    }
    EVP_EncodeBlock((unsigned char *)out, mac, (int)maclen);
    evbuffer_free(msg);
}

static void cb_arm(struct cb_job *job)
{
    long long ms = job->app->faults.callback_delay_ms;
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    if (evtimer_add(job->timer, &tv) != 0) {
        fprintf(stderr, "fatal: cannot arm a callback timer\n");
        abort();
    }
}

/* After a step: the next one later, or the job is done. */
static void cb_next(struct cb_job *job)
{
    if (job->steps)
        cb_arm(job);
    else
        cb_job_free(job);
}

static void cb_on_done(struct evhttp_request *req, void *arg)
{
    struct cb_job *job = arg;
    struct app *app = job->app;
    int code = req ? evhttp_request_get_response_code(req) : 0; /* 0: no answer */
    job->target->inflight[job->conn]--;
    job->target->total_inflight--;
    job->target = NULL;
    if (code >= 200 && code < 300)
        app->stats.callbacks_sent++;
    else
        app->stats.callbacks_failed++;
    cb_next(job);
}

/* POSTs the signed form to the job's URL; true when the request is out (cb_on_done will
 * run), false when it could not be made (counted as failed here). */
static bool cb_post(struct cb_job *job, struct cb_param *params, int n)
{
    struct app *app = job->app;
    char *host = NULL, *authority = NULL, *target = NULL;
    int port = 0;
    bool out = false;
    struct cb_target *t = NULL;
    if (!cb_url_split(job->url, &host, &port, &authority, &target) ||
        !(t = cb_target_get(app, host, port)))
        goto done;
    int c = 0;
    for (int i = 1; i < FAKE_CB_CONNS; i++)
        if (t->inflight[i] < t->inflight[c])
            c = i;
    if (!t->conns[c]) {
        t->conns[c] = evhttp_connection_base_new(app->base, NULL, t->host, (ev_uint16_t)port);
        if (!t->conns[c])
            goto done;
        evhttp_connection_set_timeout(t->conns[c], FAKE_CB_TIMEOUT_S);
    }
    qsort(params, (size_t)n, sizeof(*params), cb_param_cmp);
    char sig[29];
    cb_sign(app->cfg->auth_token, job->url, params, n, sig);
    struct evhttp_request *req = evhttp_request_new(cb_on_done, job);
    if (!req)
        goto done;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", authority);
    evhttp_add_header(h, "Content-Type", "application/x-www-form-urlencoded");
    evhttp_add_header(h, "User-Agent", "TwilioProxy/1.1");
    evhttp_add_header(h, "X-Twilio-Signature", sig);
    struct evbuffer *body = evhttp_request_get_output_buffer(req);
    for (int i = 0; i < n; i++) {
        if (i)
            evbuffer_add(body, "&", 1);
        evbuffer_add(body, params[i].name, strlen(params[i].name));
        evbuffer_add(body, "=", 1);
        cb_form_encode(body, params[i].value);
    }
    job->target = t;
    job->conn = c;
    t->inflight[c]++;
    t->total_inflight++;
    if (evhttp_make_request(t->conns[c], req, EVHTTP_REQ_POST, target) != 0) {
        /* libevent keeps or frees req depending on where it failed: leave it (only when a
         * socket cannot be created). */
        t->inflight[c]--;
        t->total_inflight--;
        job->target = NULL;
        goto done;
    }
    out = true;
done:
    if (!out)
        app->stats.callbacks_failed++;
    free(host);
    free(authority);
    free(target);
    return out;
}

/* Sends the job's next step (see the file comment for what each carries). */
static void cb_fire(struct cb_job *job)
{
    struct app *app = job->app;
    struct resource *r = resmap_find(&app->resources, job->sid);
    enum cb_step last = job->call ? CB_COMPLETED : CB_DELIVERED;
    enum cb_step step = CB_SENT;
    while (!(job->steps & (1u << step)))
        step++;
    bool final = r && res_is_final(r);
    if (final && step != last) {
        if (!(job->steps & (1u << last))) {
            cb_job_free(job);
            return;
        }
        step = last;
    }
    job->steps &= ~((2u << step) - 1); /* this step and any skipped */

    static const char *const step_status[] = {
        [CB_SENT] = "sent",       [CB_DELIVERED] = "delivered",  [CB_INITIATED] = "initiated",
        [CB_RINGING] = "ringing", [CB_ANSWERED] = "in-progress", [CB_COMPLETED] = "completed",
    };
    const char *status = final ? res_statuses[r->status] : step_status[step];
    if (r && !final) {
        int idx = res_status_index(status, job->call);
        if (idx >= 0) /* "initiated" is a callback, not a resource status */
            r->status = (uint8_t)idx;
    }
    bool answered = job->call && (step == CB_ANSWERED || strcmp(status, "completed") == 0);
    if (r && job->amd && answered && !r->amd)
        r->amd = 1; /* "human" */

    struct cb_param p[FAKE_CB_MAX_PARAMS];
    int n = 0;
    char code[16], seq[16], duration[16], date[64];
    p[n++] = (struct cb_param){"AccountSid", app->cfg->account_sid};
    p[n++] = (struct cb_param){"ApiVersion", "2010-04-01"};
    p[n++] = (struct cb_param){"To", job->to};
    if (job->from)
        p[n++] = (struct cb_param){"From", job->from};
    if (job->service)
        p[n++] = (struct cb_param){"MessagingServiceSid", job->service};
    if (final && r->error_code) {
        snprintf(code, sizeof(code), "%d", (int)r->error_code);
        p[n++] = (struct cb_param){"ErrorCode", code};
    }
    if (!job->call) {
        p[n++] = (struct cb_param){"MessageSid", job->sid};
        p[n++] = (struct cb_param){"MessageStatus", status};
        p[n++] = (struct cb_param){"SmsSid", job->sid};
        p[n++] = (struct cb_param){"SmsStatus", status};
    } else {
        snprintf(seq, sizeof(seq), "%u", job->seq++);
        format_date(date, sizeof(date));
        p[n++] = (struct cb_param){"CallSid", job->sid};
        p[n++] = (struct cb_param){"CallStatus", status};
        p[n++] = (struct cb_param){"Called", job->to};
        p[n++] = (struct cb_param){"Caller", job->from};
        p[n++] = (struct cb_param){"Direction", "outbound-api"};
        p[n++] = (struct cb_param){"CallbackSource", "call-progress-events"};
        p[n++] = (struct cb_param){"SequenceNumber", seq};
        p[n++] = (struct cb_param){"Timestamp", date};
        if (step == CB_COMPLETED) {
            bool talked = strcmp(status, "completed") == 0;
            snprintf(duration, sizeof(duration), "%u",
                     talked ? 1u + (unsigned)(hash_bytes(job->sid, strlen(job->sid)) % 60) : 0u);
            p[n++] = (struct cb_param){"CallDuration", duration};
        }
        if (job->amd && answered && r)
            p[n++] = (struct cb_param){"AnsweredBy", res_amd[r->amd]};
    }
    if (!cb_post(job, p, n))
        cb_next(job);
}

static void cb_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    cb_fire(arg);
}

/* Plans the callbacks of a message (events NULL) or a call just accepted, when callbacks
 * are on and it has a StatusCallback URL. events: StatusCallbackEvent (space-separated,
 * validated) or NULL; amd: MachineDetection was requested. */
static void cb_plan(struct app *app, const char *sid, bool call, const char *url, const char *from,
                    const char *to, const char *service, const char *events, bool amd)
{
    if (!app->faults.status_callbacks || !url)
        return;
    if (app->cb.pending >= FAKE_CB_MAX_PENDING) {
        app->stats.callbacks_dropped++;
        return;
    }
    unsigned steps = 0;
    if (!call) {
        steps = 1u << CB_SENT | 1u << CB_DELIVERED;
    } else {
        static const struct {
            const char *word;
            enum cb_step step;
        } words[] = {{"initiated", CB_INITIATED},
                     {"ringing", CB_RINGING},
                     {"answered", CB_ANSWERED},
                     {"completed", CB_COMPLETED}};
        for (const char *p = events ? events : ""; *p;) {
            size_t k = strcspn(p, " ");
            for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
                if (strlen(words[i].word) == k && strncasecmp(words[i].word, p, k) == 0)
                    steps |= 1u << words[i].step;
            p += k;
            p += strspn(p, " ");
        }
        if (!steps)
            steps = 1u << CB_COMPLETED; /* Twilio's default */
    }
    struct cb_job *job = xcalloc(1, sizeof(*job));
    job->app = app;
    job->steps = steps;
    job->seq = 0;
    job->call = call;
    job->amd = amd;
    snprintf(job->sid, sizeof(job->sid), "%s", sid);
    job->url = xstrdup(url);
    job->to = xstrdup(to);
    job->from = from ? xstrdup(from) : NULL;
    job->service = service ? xstrdup(service) : NULL;
    job->timer = evtimer_new(app->base, cb_on_timer, job);
    if (!job->timer) {
        fprintf(stderr, "fatal: cannot create a callback timer\n");
        abort();
    }
    job->next = app->cb.jobs;
    if (app->cb.jobs)
        app->cb.jobs->prev = job;
    app->cb.jobs = job;
    app->cb.pending++;
    cb_arm(job);
}

/* ------------------------------------------------------------------------------------------
 * POST /2010-04-01/Accounts/{sid}/Messages.json
 * ------------------------------------------------------------------------------------------ */

enum msg_field {
    MSG_TO = 0,
    MSG_FROM,
    MSG_SERVICE,
    MSG_BODY,
    MSG_STATUS_CALLBACK,
    MSG_NFIELDS,
};

static const char *const msg_field_names[MSG_NFIELDS] = {
    [MSG_TO] = "To",
    [MSG_FROM] = "From",
    [MSG_SERVICE] = "MessagingServiceSid",
    [MSG_BODY] = "Body",
    [MSG_STATUS_CALLBACK] = "StatusCallback",
};

static const struct form_spec msg_form_spec = {msg_field_names, MSG_NFIELDS, 0};

/* Sends the Twilio validation error and returns false if the form cannot be sent. */
static bool msg_validate_or_reply(struct exchange *ex, const struct form *f, unsigned *segments)
{
    const char *to = f->value[MSG_TO];
    if (!to) {
        reply_twilio_error(ex, FAKE_HTTP_BAD_REQUEST, TW_TO_REQUIRED,
                           "A 'To' phone number is required.");
        return false;
    }
    if (!is_e164(to, f->len[MSG_TO])) {
        reply_twilio_errorf(ex, FAKE_HTTP_BAD_REQUEST, TW_INVALID_TO,
                            "The 'To' number %s is not a valid phone number.", to);
        return false;
    }
    if (!f->value[MSG_FROM] && !f->value[MSG_SERVICE]) {
        reply_twilio_error(ex, FAKE_HTTP_BAD_REQUEST, TW_FROM_REQUIRED,
                           "A 'From' phone number is required.");
        return false;
    }
    if (!f->value[MSG_BODY]) {
        reply_twilio_error(ex, FAKE_HTTP_BAD_REQUEST, TW_BODY_REQUIRED,
                           "Message body is required.");
        return false;
    }
    size_t chars;
    body_measure(f->value[MSG_BODY], f->len[MSG_BODY], &chars, segments);
    if (chars > TW_BODY_MAX_CHARS) {
        reply_twilio_error(ex, FAKE_HTTP_BAD_REQUEST, TW_BODY_TOO_LONG,
                           "The concatenated message body exceeds the 1600 character limit.");
        return false;
    }
    return true;
}

/* The record line of an accepted message, built with cJSON: the reference msg_record_write
 * is checked against (--self-test-json). */
static cJSON *msg_record_cjson(const char *sid, const struct form *f)
{
    cJSON *line = cJSON_CreateObject();
    cJSON_AddStringToObject(line, "kind", "message");
    cJSON_AddStringToObject(line, "sid", sid);
    cJSON_AddStringToObject(line, "to", f->value[MSG_TO]);
    add_string_or_null(line, "from", f->value[MSG_FROM]);
    cJSON_AddStringToObject(line, "body", f->value[MSG_BODY]);
    return line;
}

/* Writes into s the record line of an accepted message, newline included, byte for byte what
 * record_text(msg_record_cjson(sid, f), reply_lost) and a '\n' make. Returns its length. */
static size_t msg_record_write(struct scratch *s, const char *sid, const struct form *f,
                               bool reply_lost)
{
    /* f->len bounds the strings: a value ends at its first NUL, as cJSON reads it. */
    size_t need =
        128 + JW_STR_MAX(strlen(sid) + f->len[MSG_TO] + f->len[MSG_FROM] + f->len[MSG_BODY]);
    char *start = scratch_reserve(s, need), *p = start;
    p = JW_LIT(p, "{\"kind\":\"message\",\"sid\":");
    p = jw_str(p, sid);
    p = JW_LIT(p, ",\"to\":");
    p = jw_str(p, f->value[MSG_TO]);
    p = JW_LIT(p, ",\"from\":");
    p = jw_str_or_null(p, f->value[MSG_FROM]);
    p = JW_LIT(p, ",\"body\":");
    p = jw_str(p, f->value[MSG_BODY]);
    if (reply_lost)
        p = JW_LIT(p, ",\"reply_lost\":true");
    p = JW_LIT(p, "}\n");
    return (size_t)(p - start);
}

static void msg_record(struct app *app, const char *sid, const struct form *f, bool reply_lost)
{
    if (!app->record || app->record_failed)
        return;
    size_t n = msg_record_write(&app->json, sid, f, reply_lost);
    if (fwrite(app->json.data, 1, n, app->record) != n)
        record_stop(app);
}

/* The Message resource answering a create, built with cJSON: the reference
 * msg_resource_write is checked against (--self-test-json). */
static cJSON *msg_resource_cjson(const char *acct, const char *sid, const struct form *f,
                                 unsigned segments, const char *date)
{
    bool service = f->value[MSG_SERVICE] != NULL;
    char num[16], uri[256], media[256];
    /* A Messaging Service picks the sender later: Twilio answers num_segments "0". */
    snprintf(num, sizeof(num), "%u", service ? 0u : segments);
    snprintf(uri, sizeof(uri), TW_ACCOUNTS_PREFIX "%s/Messages/%s.json", acct, sid);
    snprintf(media, sizeof(media), TW_ACCOUNTS_PREFIX "%s/Messages/%s/Media.json", acct, sid);

    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "account_sid", acct);
    cJSON_AddStringToObject(o, "api_version", "2010-04-01");
    cJSON_AddStringToObject(o, "body", f->value[MSG_BODY]);
    cJSON_AddStringToObject(o, "date_created", date);
    cJSON_AddNullToObject(o, "date_sent");
    cJSON_AddStringToObject(o, "date_updated", date);
    cJSON_AddStringToObject(o, "direction", "outbound-api");
    cJSON_AddNullToObject(o, "error_code");
    cJSON_AddNullToObject(o, "error_message");
    add_string_or_null(o, "from", f->value[MSG_FROM]);
    add_string_or_null(o, "messaging_service_sid", f->value[MSG_SERVICE]);
    cJSON_AddStringToObject(o, "num_media", "0");
    cJSON_AddStringToObject(o, "num_segments", num);
    cJSON_AddNullToObject(o, "price");
    cJSON_AddStringToObject(o, "price_unit", "USD");
    cJSON_AddStringToObject(o, "sid", sid);
    cJSON_AddStringToObject(o, "status", service ? "accepted" : "queued");
    cJSON *sub = cJSON_AddObjectToObject(o, "subresource_uris");
    cJSON_AddStringToObject(sub, "media", media);
    cJSON_AddStringToObject(o, "to", f->value[MSG_TO]);
    cJSON_AddStringToObject(o, "uri", uri);
    return o;
}

/* Appends the C string s to the string of len bytes in out (n bytes), cut to n - 1 bytes
 * as snprintf cuts. */
static void cut_append(char *out, size_t n, size_t *len, const char *s)
{
    size_t k = strlen(s);
    if (k > n - 1 - *len)
        k = n - 1 - *len;
    memcpy(out + *len, s, k);
    *len += k;
    out[*len] = '\0';
}

/* Writes into s the Message resource answering a create, byte for byte what
 * cJSON_PrintUnformatted(msg_resource_cjson(...)) prints. Returns its length. */
static size_t msg_resource_write(struct scratch *s, const char *acct, const char *sid,
                                 const struct form *f, unsigned segments, const char *date)
{
    bool service = f->value[MSG_SERVICE] != NULL;
    /* What msg_resource_cjson's snprintf calls make (uri and media cut for an absurd account
     * sid), without their cost. */
    char num[16], uri[256], media[256], *d = num + sizeof(num) - 1;
    unsigned v = service ? 0u : segments;
    *d = '\0';
    do {
        *--d = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    memmove(num, d, (size_t)(num + sizeof(num) - d));
    size_t ul = 0, ml = 0;
    const char *const uri_parts[] = {TW_ACCOUNTS_PREFIX, acct, "/Messages/", sid, ".json"};
    const char *const media_parts[] = {TW_ACCOUNTS_PREFIX, acct, "/Messages/", sid, "/Media.json"};
    uri[0] = media[0] = '\0';
    for (size_t i = 0; i < sizeof(uri_parts) / sizeof(uri_parts[0]); i++) {
        cut_append(uri, sizeof(uri), &ul, uri_parts[i]);
        cut_append(media, sizeof(media), &ml, media_parts[i]);
    }
    /* The keys, fixed values and quotes take under 512 bytes; f->len bounds the form's
     * strings. */
    size_t need = 512 + JW_STR_MAX(strlen(acct) + 2 * strlen(date) + strlen(sid) + strlen(num) +
                                   ul + ml + f->len[MSG_TO] + f->len[MSG_FROM] +
                                   f->len[MSG_SERVICE] + f->len[MSG_BODY]);
    char *start = scratch_reserve(s, need), *p = start;
    p = JW_LIT(p, "{\"account_sid\":");
    p = jw_str(p, acct);
    p = JW_LIT(p, ",\"api_version\":\"2010-04-01\",\"body\":");
    p = jw_str(p, f->value[MSG_BODY]);
    p = JW_LIT(p, ",\"date_created\":");
    p = jw_str(p, date);
    p = JW_LIT(p, ",\"date_sent\":null,\"date_updated\":");
    p = jw_str(p, date);
    p = JW_LIT(p, ",\"direction\":\"outbound-api\",\"error_code\":null,"
                  "\"error_message\":null,\"from\":");
    p = jw_str_or_null(p, f->value[MSG_FROM]);
    p = JW_LIT(p, ",\"messaging_service_sid\":");
    p = jw_str_or_null(p, f->value[MSG_SERVICE]);
    p = JW_LIT(p, ",\"num_media\":\"0\",\"num_segments\":");
    p = jw_str(p, num);
    p = JW_LIT(p, ",\"price\":null,\"price_unit\":\"USD\",\"sid\":");
    p = jw_str(p, sid);
    p = service ? JW_LIT(p, ",\"status\":\"accepted\"") : JW_LIT(p, ",\"status\":\"queued\"");
    p = JW_LIT(p, ",\"subresource_uris\":{\"media\":");
    p = jw_str(p, media);
    p = JW_LIT(p, "},\"to\":");
    p = jw_str(p, f->value[MSG_TO]);
    p = JW_LIT(p, ",\"uri\":");
    p = jw_str(p, uri);
    p = JW_LIT(p, "}");
    return (size_t)(p - start);
}

static void messages_create(struct exchange *ex)
{
    struct app *app = ex->app;
    enum fault_action fault = fault_plan_decide(app);
    if (!fault_pass_or_reply(ex, fault))
        return;

    struct form form;
    form_parse_request(&form, &msg_form_spec, ex->req);
    unsigned segments = 0;
    if (!msg_validate_or_reply(ex, &form, &segments))
        goto out;

    char sid[35];
    make_id(app, "SM", ++app->sid_counter, sid);
    count_accepted(&app->pairs, &app->recipients, &app->stats.accepted, &app->stats.duplicates,
                   form.value[MSG_TO], form.len[MSG_TO], form.value[MSG_BODY], form.len[MSG_BODY]);
    msg_record(app, sid, &form, fault == FAULT_ACCEPT_TIMEOUT);
    resmap_add(&app->resources, sid, false, form.value[MSG_SERVICE] != NULL);
    cb_plan(app, sid, false, form.value[MSG_STATUS_CALLBACK], form.value[MSG_FROM],
            form.value[MSG_TO], form.value[MSG_SERVICE], NULL, false);
    if (!fault_withhold_accepted(ex, fault)) {
        char date[64];
        format_date(date, sizeof(date));
        size_t n =
            msg_resource_write(&app->json, app->cfg->account_sid, sid, &form, segments, date);
        reply_send(ex, FAKE_HTTP_CREATED, app->json.data, n);
    }
out:
    form_cleanup(&form);
}

/* ------------------------------------------------------------------------------------------
 * POST /2010-04-01/Accounts/{sid}/Calls.json
 * ------------------------------------------------------------------------------------------ */

enum call_field {
    CALL_TO = 0,
    CALL_FROM,
    CALL_URL,
    CALL_TWIML,
    CALL_APPLICATION,
    CALL_STATUS_CALLBACK,
    CALL_STATUS_CALLBACK_EVENT,
    CALL_TIMEOUT,
    CALL_MACHINE_DETECTION,
    CALL_ASYNC_AMD,
    CALL_NFIELDS,
};

static const char *const call_field_names[CALL_NFIELDS] = {
    [CALL_TO] = "To",
    [CALL_FROM] = "From",
    [CALL_URL] = "Url",
    [CALL_TWIML] = "Twiml",
    [CALL_APPLICATION] = "ApplicationSid",
    [CALL_STATUS_CALLBACK] = "StatusCallback",
    [CALL_STATUS_CALLBACK_EVENT] = "StatusCallbackEvent",
    [CALL_TIMEOUT] = "Timeout",
    [CALL_MACHINE_DETECTION] = "MachineDetection",
    [CALL_ASYNC_AMD] = "AsyncAmd",
};

static const struct form_spec call_form_spec = {call_field_names, CALL_NFIELDS,
                                                1u << CALL_STATUS_CALLBACK_EVENT};

/* Each space-separated word of events is a call progress event. */
static bool call_events_valid(const char *events)
{
    static const char *const known[] = {"initiated", "ringing", "answered", "completed"};
    const char *p = events;
    while (*p) {
        size_t n = strcspn(p, " ");
        bool ok = n == 0;
        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]) && !ok; i++)
            ok = strlen(known[i]) == n && strncasecmp(known[i], p, n) == 0;
        if (!ok)
            return false;
        p += n;
        p += strspn(p, " ");
    }
    return true;
}

static bool is_one_of_nocase(const char *s, const char *a, const char *b)
{
    return strcasecmp(s, a) == 0 || strcasecmp(s, b) == 0;
}

/* Sends the Twilio validation error and returns false if the call cannot be placed. */
static bool call_validate_or_reply(struct exchange *ex, const struct form *f)
{
    const char *const *v = (const char *const *)f->value;
    if (!v[CALL_TO]) {
        reply_twilio_error(ex, FAKE_HTTP_BAD_REQUEST, TW_CALL_TO_REQUIRED,
                           "No 'To' number is specified");
        return false;
    }
    if (!is_e164(v[CALL_TO], f->len[CALL_TO])) {
        reply_twilio_errorf(ex, FAKE_HTTP_BAD_REQUEST, TW_INVALID_TO,
                            "The phone number you are attempting to call, %s, is not valid.",
                            v[CALL_TO]);
        return false;
    }
    if (!v[CALL_FROM]) {
        reply_twilio_error(ex, FAKE_HTTP_BAD_REQUEST, TW_CALL_FROM_REQUIRED,
                           "No 'From' number is specified");
        return false;
    }
    if (!is_e164(v[CALL_FROM], f->len[CALL_FROM])) {
        reply_twilio_errorf(ex, FAKE_HTTP_BAD_REQUEST, TW_CALL_FROM_INVALID,
                            "The phone number you are attempting to call from, %s, is not valid.",
                            v[CALL_FROM]);
        return false;
    }
    if (!v[CALL_URL] && !v[CALL_TWIML] && !v[CALL_APPLICATION]) {
        reply_twilio_error(ex, FAKE_HTTP_BAD_REQUEST, TW_CALL_URL_INVALID,
                           "Url parameter is required. Please provide a Url, Twiml or "
                           "ApplicationSid.");
        return false;
    }
    if (v[CALL_URL] && !is_http_url(v[CALL_URL])) {
        reply_twilio_errorf(ex, FAKE_HTTP_BAD_REQUEST, TW_CALL_URL_INVALID,
                            "Url is not a valid URL: %s", v[CALL_URL]);
        return false;
    }
    if (v[CALL_TWIML] && utf8_count(v[CALL_TWIML], f->len[CALL_TWIML]) > TW_TWIML_MAX_CHARS) {
        reply_twilio_error(ex, FAKE_HTTP_BAD_REQUEST, TW_TWIML_TOO_LONG,
                           "Twiml size exceeded maximum allowed value of 4000 characters");
        return false;
    }
    if (v[CALL_STATUS_CALLBACK] && !is_http_url(v[CALL_STATUS_CALLBACK])) {
        reply_twilio_errorf(ex, FAKE_HTTP_BAD_REQUEST, TW_STATUS_CALLBACK_INVALID,
                            "The StatusCallback URL %s is not a valid URL.",
                            v[CALL_STATUS_CALLBACK]);
        return false;
    }
    if (v[CALL_STATUS_CALLBACK_EVENT] && !call_events_valid(v[CALL_STATUS_CALLBACK_EVENT])) {
        reply_twilio_errorf(ex, FAKE_HTTP_BAD_REQUEST, TW_STATUS_CALLBACK_EVENT_INVALID,
                            "One or more of the StatusCallbackEvents provided were invalid: %s",
                            v[CALL_STATUS_CALLBACK_EVENT]);
        return false;
    }
    if (v[CALL_TIMEOUT] && !is_positive_int(v[CALL_TIMEOUT])) {
        reply_twilio_errorf(ex, FAKE_HTTP_BAD_REQUEST, TW_CALL_TIMEOUT_INVALID,
                            "Timeout must be a positive integer: %s", v[CALL_TIMEOUT]);
        return false;
    }
    if (v[CALL_MACHINE_DETECTION] &&
        !is_one_of_nocase(v[CALL_MACHINE_DETECTION], "Enable", "DetectMessageEnd")) {
        reply_twilio_errorf(ex, FAKE_HTTP_BAD_REQUEST, TW_CALL_AMD_INVALID,
                            "MachineDetection must be Enable or DetectMessageEnd: %s",
                            v[CALL_MACHINE_DETECTION]);
        return false;
    }
    if (v[CALL_ASYNC_AMD] && !is_one_of_nocase(v[CALL_ASYNC_AMD], "true", "false")) {
        reply_twilio_errorf(ex, FAKE_HTTP_BAD_REQUEST, TW_CALL_AMD_INVALID,
                            "AsyncAmd must be true or false: %s", v[CALL_ASYNC_AMD]);
        return false;
    }
    return true;
}

/* Counts the accepted call; its pair is (To, Url), or (To, Twiml) or (To, ApplicationSid)
 * without a Url, tagged so that the three never collide. */
static void call_count_accepted(struct app *app, const struct form *f)
{
    int field = f->value[CALL_URL]     ? CALL_URL
                : f->value[CALL_TWIML] ? CALL_TWIML
                                       : CALL_APPLICATION;
    size_t il = f->len[field];
    char *rest = xmalloc(il + 1);
    rest[0] = field == CALL_URL ? 'U' : field == CALL_TWIML ? 'T' : 'A';
    memcpy(rest + 1, f->value[field], il);
    count_accepted(&app->call_pairs, &app->call_recipients, &app->stats.calls_accepted,
                   &app->stats.call_duplicates, f->value[CALL_TO], f->len[CALL_TO], rest, il + 1);
    free(rest);
}

static void call_record(struct app *app, const char *sid, const struct form *f, bool reply_lost)
{
    static const struct {
        enum call_field field;
        const char *key;
    } optional[] = {
        {CALL_APPLICATION, "application_sid"},
        {CALL_STATUS_CALLBACK, "status_callback"},
        {CALL_STATUS_CALLBACK_EVENT, "status_callback_event"},
        {CALL_TIMEOUT, "timeout"},
        {CALL_MACHINE_DETECTION, "machine_detection"},
        {CALL_ASYNC_AMD, "async_amd"},
    };
    if (!app->record || app->record_failed)
        return;
    cJSON *line = cJSON_CreateObject();
    cJSON_AddStringToObject(line, "kind", "call");
    cJSON_AddStringToObject(line, "sid", sid);
    cJSON_AddStringToObject(line, "to", f->value[CALL_TO]);
    cJSON_AddStringToObject(line, "from", f->value[CALL_FROM]);
    add_string_or_null(line, "url", f->value[CALL_URL]);
    add_string_or_null(line, "twiml", f->value[CALL_TWIML]);
    for (size_t i = 0; i < sizeof(optional) / sizeof(optional[0]); i++)
        if (f->value[optional[i].field])
            cJSON_AddStringToObject(line, optional[i].key, f->value[optional[i].field]);
    record_write(app, line, reply_lost);
}

static cJSON *call_resource(struct app *app, const char *sid, const struct form *f)
{
    static const char *const subresources[] = {"events", "notifications", "recordings", "streams"};
    const char *acct = app->cfg->account_sid;
    char date[64], uri[256];
    format_date(date, sizeof(date));
    snprintf(uri, sizeof(uri), TW_ACCOUNTS_PREFIX "%s/Calls/%s.json", acct, sid);

    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "account_sid", acct);
    cJSON_AddNullToObject(o, "annotation");
    cJSON_AddNullToObject(o, "answered_by");
    cJSON_AddStringToObject(o, "api_version", "2010-04-01");
    cJSON_AddNullToObject(o, "caller_name");
    cJSON_AddStringToObject(o, "date_created", date);
    cJSON_AddStringToObject(o, "date_updated", date);
    cJSON_AddStringToObject(o, "direction", "outbound-api");
    cJSON_AddNullToObject(o, "duration");
    cJSON_AddNullToObject(o, "end_time");
    cJSON_AddNullToObject(o, "forwarded_from");
    cJSON_AddStringToObject(o, "from", f->value[CALL_FROM]);
    cJSON_AddStringToObject(o, "from_formatted", f->value[CALL_FROM]);
    cJSON_AddNullToObject(o, "group_sid");
    cJSON_AddNullToObject(o, "parent_call_sid");
    cJSON_AddNullToObject(o, "phone_number_sid");
    cJSON_AddNullToObject(o, "price");
    cJSON_AddStringToObject(o, "price_unit", "USD");
    cJSON_AddStringToObject(o, "queue_time", "0");
    cJSON_AddStringToObject(o, "sid", sid);
    cJSON_AddNullToObject(o, "start_time");
    cJSON_AddStringToObject(o, "status", "queued");
    cJSON *sub = cJSON_AddObjectToObject(o, "subresource_uris");
    for (size_t i = 0; i < sizeof(subresources) / sizeof(subresources[0]); i++) {
        char path[320];
        snprintf(path, sizeof(path), TW_ACCOUNTS_PREFIX "%s/Calls/%s/%c%s.json", acct, sid,
                 subresources[i][0] - 'a' + 'A', subresources[i] + 1);
        cJSON_AddStringToObject(sub, subresources[i], path);
    }
    cJSON_AddStringToObject(o, "to", f->value[CALL_TO]);
    cJSON_AddStringToObject(o, "to_formatted", f->value[CALL_TO]);
    cJSON_AddNullToObject(o, "trunk_sid");
    cJSON_AddStringToObject(o, "uri", uri);
    return o;
}

static void calls_create(struct exchange *ex)
{
    struct app *app = ex->app;
    enum fault_action fault = fault_plan_decide(app);
    if (!fault_pass_or_reply(ex, fault))
        return;

    struct form form;
    form_parse_request(&form, &call_form_spec, ex->req);
    if (!call_validate_or_reply(ex, &form))
        goto out;

    char sid[35];
    make_id(app, "CA", ++app->sid_counter, sid);
    call_count_accepted(app, &form);
    resmap_add(&app->resources, sid, true, false);
    cb_plan(app, sid, true, form.value[CALL_STATUS_CALLBACK], form.value[CALL_FROM],
            form.value[CALL_TO], NULL, form.value[CALL_STATUS_CALLBACK_EVENT],
            form.value[CALL_MACHINE_DETECTION] != NULL);
    call_record(app, sid, &form, fault == FAULT_ACCEPT_TIMEOUT);
    fault_reply_accepted(ex, fault, call_resource(app, sid, &form));
out:
    form_cleanup(&form);
}

/* ------------------------------------------------------------------------------------------
 * Control endpoints
 * ------------------------------------------------------------------------------------------ */

static void record_flush(struct app *app)
{
    if (app->record && !app->record_failed && fflush(app->record) != 0) {
        fprintf(stderr, "fake-twilio: flushing %s failed: %s; recording stopped\n",
                app->cfg->record_path, strerror(errno));
        app->record_failed = true;
    }
}

static void fake_stats(struct exchange *ex)
{
    const struct app *app = ex->app;
    const struct fake_stats *s = &app->stats;
    char text[1536];
    record_flush(ex->app);
    int n = snprintf(
        text, sizeof(text),
        "{\"accepted\":%" PRIu64 ",\"duplicates\":%" PRIu64 ",\"requests\":%" PRIu64
        ",\"rejected\":%" PRIu64 ",\"unique_recipients\":%zu,\"calls_accepted\":%" PRIu64
        ",\"call_duplicates\":%" PRIu64 ",\"call_unique_recipients\":%zu,\"faults_500\":%" PRIu64
        ",\"faults_429\":%" PRIu64 ",\"faults_timeout\":%" PRIu64
        ",\"faults_accept_timeout\":%" PRIu64 ",\"held\":%zu,\"fetches\":%" PRIu64
        ",\"callbacks_sent\":%" PRIu64 ",\"callbacks_failed\":%" PRIu64
        ",\"callbacks_dropped\":%" PRIu64 ",\"callbacks_pending\":%zu}",
        s->accepted, s->duplicates, s->requests, s->rejected, app->recipients.count,
        s->calls_accepted, s->call_duplicates, app->call_recipients.count, s->faults_500,
        s->faults_429, s->faults_timeout, s->faults_accept_timeout, app->held, s->fetches,
        s->callbacks_sent, s->callbacks_failed, s->callbacks_dropped, app->cb.pending);
    reply_send(ex, FAKE_HTTP_OK, text, (size_t)n);
}

static void fake_reset(struct exchange *ex)
{
    struct app *app = ex->app;
    memset(&app->stats, 0, sizeof(app->stats));
    struct strset *sets[] = {&app->pairs, &app->recipients, &app->call_pairs,
                             &app->call_recipients};
    for (size_t i = 0; i < sizeof(sets) / sizeof(sets[0]); i++) {
        strset_cleanup(sets[i]);
        strset_init(sets[i]);
    }
    if (app->record) {
        /* Appending stream: after the truncate, writes land at the new end (offset 0). */
        if (fflush(app->record) != 0 || ftruncate(fileno(app->record), 0) != 0)
            fprintf(stderr, "fake-twilio: truncating %s failed: %s\n", app->cfg->record_path,
                    strerror(errno));
        app->record_failed = false;
    }
    static const char ok[] = "{\"reset\":true}";
    reply_send(ex, FAKE_HTTP_OK, ok, sizeof(ok) - 1);
}

static void fake_config_get(struct exchange *ex)
{
    reply_cjson(ex, FAKE_HTTP_OK, fault_config_json(&ex->app->faults));
}

static void fake_config_set(struct exchange *ex)
{
    size_t n;
    const char *body = fhttp_request_body(ex->req, &n);
    char *err = fault_config_apply_json(ex->app, body, n);
    if (err) {
        reply_control_error(ex, err);
        free(err);
        return;
    }
    fake_config_get(ex);
}

/* The resource as GET answers it. */
static cJSON *resource_json(const struct app *app, const struct resource *r)
{
    char uri[256];
    snprintf(uri, sizeof(uri), "%s%s.json", r->call ? app->calls_dir : app->messages_dir, r->sid);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "account_sid", app->cfg->account_sid);
    cJSON_AddStringToObject(o, "sid", r->sid);
    cJSON_AddStringToObject(o, "status", res_statuses[r->status]);
    cJSON_AddStringToObject(o, "direction", "outbound-api");
    if (r->error_code)
        cJSON_AddNumberToObject(o, "error_code", r->error_code);
    else
        cJSON_AddNullToObject(o, "error_code");
    cJSON_AddNullToObject(o, "error_message");
    if (r->call)
        add_string_or_null(o, "answered_by", r->amd ? res_amd[r->amd] : NULL);
    cJSON_AddStringToObject(o, "uri", uri);
    return o;
}

/* GET .../Messages/{Sid}.json or .../Calls/{Sid}.json */
static void resource_fetch(struct exchange *ex, bool call)
{
    struct app *app = ex->app;
    app->stats.fetches++;
    const char *dir = call ? app->calls_dir : app->messages_dir;
    char sid[64];
    size_t n = strlen(ex->path) - strlen(dir) - 5; /* route_of checked the ".json" */
    snprintf(sid, sizeof(sid), "%.*s", (int)(n < sizeof(sid) ? n : 0), ex->path + strlen(dir));
    const struct resource *r = resmap_find(&app->resources, sid);
    if (!r || r->call != call) {
        reply_not_found(ex);
        return;
    }
    reply_cjson(ex, FAKE_HTTP_OK, resource_json(app, r));
}

/* POST /_fake/status {"sid", "status", "error_code"?, "answered_by"?} */
static void fake_status_set(struct exchange *ex)
{
    struct app *app = ex->app;
    size_t n;
    const char *body = fhttp_request_body(ex->req, &n);
    cJSON *root = cJSON_ParseWithLength(body, n);
    const cJSON *sid = cJSON_GetObjectItemCaseSensitive(root, "sid");
    const cJSON *status = cJSON_GetObjectItemCaseSensitive(root, "status");
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(root, "error_code");
    const cJSON *amd = cJSON_GetObjectItemCaseSensitive(root, "answered_by");
    struct resource *r =
        cJSON_IsString(sid) ? resmap_find(&app->resources, sid->valuestring) : NULL;
    int st = -1, am = 0;
    const char *err = NULL;
    if (!cJSON_IsObject(root) || !cJSON_IsString(sid) || !cJSON_IsString(status))
        err = "the body must be {\"sid\": ..., \"status\": ...}";
    else if (r && (st = res_status_index(status->valuestring, r->call)) < 0)
        err = "not a status of that kind of resource";
    else if (code && !cJSON_IsNull(code) &&
             (!cJSON_IsNumber(code) || code->valuedouble < 0 || code->valuedouble > 99999))
        err = "error_code must be an integer or null";
    if (!err && r && amd && !cJSON_IsNull(amd)) {
        am = -1;
        for (size_t i = 1; cJSON_IsString(amd) && i < sizeof(res_amd) / sizeof(res_amd[0]); i++)
            if (strcmp(res_amd[i], amd->valuestring) == 0)
                am = (int)i;
        if (am < 0 || !r->call)
            err = "answered_by must be an AMD verdict, for a call";
    }
    if (err) {
        reply_control_error(ex, err);
    } else if (!r) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "error", "unknown sid");
        reply_cjson(ex, FAKE_HTTP_NOT_FOUND, o);
    } else {
        r->status = (uint8_t)st;
        if (code)
            r->error_code = cJSON_IsNumber(code) ? (int32_t)code->valuedouble : 0;
        if (amd)
            r->amd = (uint8_t)am;
        reply_cjson(ex, FAKE_HTTP_OK, resource_json(app, r));
    }
    cJSON_Delete(root);
}

/* True when path is dir + a sid + ".json". */
static bool is_resource_path(const char *path, const char *dir)
{
    size_t dl = strlen(dir), pl = strlen(path);
    return pl > dl + 5 && strncmp(path, dir, dl) == 0 && strcmp(path + pl - 5, ".json") == 0 &&
           !strchr(path + dl, '/');
}

/* ------------------------------------------------------------------------------------------
 * Routing and authentication
 * ------------------------------------------------------------------------------------------ */

static enum route route_of(const struct app *app, enum fhttp_method method, const char *path)
{
    if (strcmp(path, "/_fake/stats") == 0)
        return method == FHTTP_GET ? ROUTE_FAKE_STATS : ROUTE_NOT_FOUND;
    if (strcmp(path, "/_fake/reset") == 0)
        return method == FHTTP_POST ? ROUTE_FAKE_RESET : ROUTE_NOT_FOUND;
    if (strcmp(path, "/_fake/status") == 0)
        return method == FHTTP_POST ? ROUTE_FAKE_STATUS : ROUTE_NOT_FOUND;
    if (strcmp(path, "/_fake/config") == 0)
        return method == FHTTP_GET    ? ROUTE_FAKE_CONFIG_GET
               : method == FHTTP_POST ? ROUTE_FAKE_CONFIG_SET
                                      : ROUTE_NOT_FOUND;
    if (strncmp(path, TW_API_PREFIX, strlen(TW_API_PREFIX)) != 0)
        return ROUTE_NOT_FOUND;
    if (method == FHTTP_POST && strcmp(path, app->messages_path) == 0)
        return ROUTE_MESSAGES_CREATE;
    if (method == FHTTP_POST && strcmp(path, app->calls_path) == 0)
        return ROUTE_CALLS_CREATE;
    if (method == FHTTP_GET && is_resource_path(path, app->messages_dir))
        return ROUTE_MESSAGE_FETCH;
    if (method == FHTTP_GET && is_resource_path(path, app->calls_dir))
        return ROUTE_CALL_FETCH;
    return ROUTE_API_OTHER;
}

/* True when Basic credentials match and any /Accounts/{sid}/ in the path is ours. */
static bool auth_ok(const struct app *app, const struct fhttp_request *req, const char *path)
{
    size_t pl = strlen(TW_ACCOUNTS_PREFIX);
    if (strncmp(path, TW_ACCOUNTS_PREFIX, pl) == 0) {
        const char *sid = path + pl;
        size_t sl = strcspn(sid, "/.");
        if (sl != strlen(app->cfg->account_sid) || memcmp(sid, app->cfg->account_sid, sl) != 0)
            return false;
    }
    const char *h = fhttp_request_header(req, "Authorization");
    if (!h)
        return false;
    h += strspn(h, " \t");
    if (strncasecmp(h, "Basic", 5) != 0 || (h[5] != ' ' && h[5] != '\t'))
        return false;
    h += 5;
    h += strspn(h, " \t");
    size_t n = strcspn(h, " \t\r\n");
    unsigned char dec[FAKE_MAX_AUTH_HEADER];
    size_t declen;
    if (n > FAKE_MAX_AUTH_HEADER || !b64_decode(h, n, dec, sizeof(dec), &declen))
        return false;
    return declen == app->credentials_len && memcmp(dec, app->credentials, declen) == 0;
}

static void on_request(struct fhttp_request *req, void *arg)
{
    struct app *app = arg;
    struct exchange ex = {.app = app, .req = req, .path = fhttp_request_path(req)};
    ex.route = route_of(app, fhttp_request_method(req), ex.path);
    ex.counted = ex.route != ROUTE_FAKE_STATS && ex.route != ROUTE_FAKE_RESET &&
                 ex.route != ROUTE_FAKE_CONFIG_GET && ex.route != ROUTE_FAKE_CONFIG_SET &&
                 ex.route != ROUTE_FAKE_STATUS && ex.route != ROUTE_MESSAGE_FETCH &&
                 ex.route != ROUTE_CALL_FETCH;
    if (ex.counted)
        app->stats.requests++;

    switch (ex.route) {
    case ROUTE_MESSAGES_CREATE:
    case ROUTE_CALLS_CREATE:
    case ROUTE_MESSAGE_FETCH:
    case ROUTE_CALL_FETCH:
    case ROUTE_API_OTHER:
        if (!auth_ok(app, req, ex.path)) {
            reply_twilio_error(&ex, FAKE_HTTP_UNAUTHORIZED, TW_AUTHENTICATE, "Authenticate");
            return;
        }
        if (ex.route == ROUTE_MESSAGES_CREATE)
            messages_create(&ex);
        else if (ex.route == ROUTE_CALLS_CREATE)
            calls_create(&ex);
        else if (ex.route == ROUTE_MESSAGE_FETCH || ex.route == ROUTE_CALL_FETCH)
            resource_fetch(&ex, ex.route == ROUTE_CALL_FETCH);
        else
            reply_not_found(&ex);
        return;
    case ROUTE_FAKE_STATS:
        fake_stats(&ex);
        return;
    case ROUTE_FAKE_RESET:
        fake_reset(&ex);
        return;
    case ROUTE_FAKE_CONFIG_GET:
        fake_config_get(&ex);
        return;
    case ROUTE_FAKE_CONFIG_SET:
        fake_config_set(&ex);
        return;
    case ROUTE_FAKE_STATUS:
        fake_status_set(&ex);
        return;
    case ROUTE_NOT_FOUND:
        reply_not_found(&ex);
        return;
    }
}

/* ------------------------------------------------------------------------------------------
 * Process: options, listening socket, port file, signals
 * ------------------------------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f, "usage: fake-twilio --port N [--host 127.0.0.1|::1|localhost]\n"
               "                   [--account-sid AC...] [--auth-token TOKEN]\n"
               "                   [--record FILE] [--port-file FILE] [FAULT OPTIONS]\n"
               "  --port 0 picks a free port; it is written to --port-file and printed as\n"
               "  'listening HOST:PORT' on stdout, followed by 'fault seed N'.\n"
               "Fault and callback options (also POST /_fake/config {\"key\": value, ...}):\n");
    for (size_t i = 0; i < FAULT_NKNOBS; i++) {
        const struct knob *k = &fault_knobs[i];
        fprintf(f, "  --%-17s %-4s %s\n", k->opt,
                k->type == KNOB_FRACTION ? "0..1"
                : k->type == KNOB_INT    ? "N"
                                         : "",
                k->help);
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
        fprintf(stderr, "fake-twilio: --%s: %s\n", k->opt, err);
        free(err);
        return 2;
    }
    return 0;
}

/* Returns 0 on success, 2 (usage error) otherwise; messages go to stderr. */
static int parse_args(int argc, char **argv, struct fake_config *cfg, struct fault_config *fc)
{
    enum { OPT_KNOB = 256 };
    static const struct option base_opts[] = {
        {"port", required_argument, NULL, 'p'},
        {"host", required_argument, NULL, 'H'},
        {"account-sid", required_argument, NULL, 'a'},
        {"auth-token", required_argument, NULL, 't'},
        {"record", required_argument, NULL, 'r'},
        {"port-file", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
    };
    size_t nbase = sizeof(base_opts) / sizeof(base_opts[0]);
    struct option opts[sizeof(base_opts) / sizeof(base_opts[0]) + FAULT_NKNOBS + 1];
    memcpy(opts, base_opts, sizeof(base_opts));
    for (size_t i = 0; i < FAULT_NKNOBS; i++)
        opts[nbase + i] = (struct option){
            fault_knobs[i].opt, fault_knobs[i].type == KNOB_BOOL ? no_argument : required_argument,
            NULL, OPT_KNOB + (int)i};
    opts[nbase + FAULT_NKNOBS] = (struct option){NULL, 0, NULL, 0};

    *cfg = (struct fake_config){.host = "127.0.0.1",
                                .port = -1,
                                .account_sid = DEFAULT_ACCOUNT_SID,
                                .auth_token = DEFAULT_AUTH_TOKEN};
    fault_config_defaults(fc);
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end;
        long v;
        if (c >= OPT_KNOB && c < OPT_KNOB + (int)FAULT_NKNOBS) {
            const struct knob *k = &fault_knobs[c - OPT_KNOB];
            if (k->type == KNOB_BOOL) {
                free(knob_set(fc, k, 1.0)); /* cannot fail */
                continue;
            }
            if (parse_knob_arg(fc, k, optarg) != 0)
                return 2;
            continue;
        }
        switch (c) {
        case 'p':
            errno = 0;
            v = strtol(optarg, &end, 10);
            if (errno || end == optarg || *end || v < 0 || v > 65535) {
                fprintf(stderr, "fake-twilio: --port must be 0..65535\n");
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
                fprintf(stderr, "fake-twilio: refusing to bind %s (loopback only)\n", optarg);
                return 2;
            }
            break;
        case 'a':
            cfg->account_sid = optarg;
            break;
        case 't':
            cfg->auth_token = optarg;
            break;
        case 'r':
            cfg->record_path = optarg;
            break;
        case 'f':
            cfg->port_file = optarg;
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
            fprintf(stderr, "fake-twilio: --port is required\n");
        usage(stderr);
        return 2;
    }
    if (!cfg->account_sid[0] || strpbrk(cfg->account_sid, "/.?#%: ")) {
        fprintf(stderr, "fake-twilio: invalid --account-sid\n");
        return 2;
    }
    char *err = fault_config_check(fc);
    if (err) {
        fprintf(stderr, "fake-twilio: %s\n", err);
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
        fprintf(stderr, "fake-twilio: writing port file %s: %s\n", path, strerror(errno));
        (void)unlink(tmp);
    }
    free(tmp);
    return rc;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct app *app = arg;
    (void)sig;
    (void)what;
    event_base_loopbreak(app->base);
}

static void seed_ids(struct app *app)
{
    if (getrandom(app->id_key, sizeof(app->id_key), 0) != (ssize_t)sizeof(app->id_key)) {
        uint64_t t = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        for (int i = 0; i < 3; i++)
            app->id_key[i] = mix64(t + (uint64_t)i * 0x9e3779b97f4a7c15ULL);
    }
}

/* ------------------------------------------------------------------------------------------
 * --self-test-json: the hand-written Messages.json JSON against cJSON, byte for byte
 *
 * Runs msg_resource_write and msg_record_write and the cJSON builders they replace over
 * tricky inputs - every byte value, quotes, backslashes, slashes, control characters, DEL,
 * UTF-8 and invalid UTF-8, embedded NULs, a Messaging Service, absent fields, odd and long
 * account sids, reply_lost - and over pseudo-random ones, raw and through form_parse.
 * ------------------------------------------------------------------------------------------ */

struct jt {
    struct scratch s;
    unsigned cases;    /* messages (a resource and a record line each) and ids */
    unsigned failures; /* texts that differ */
};

/* Sets field i of f to a copy of the n bytes at v (NULs included), or to absent (v NULL). */
static void jt_field(struct form *f, int i, const char *v, size_t n)
{
    free(f->value[i]);
    f->value[i] = NULL;
    f->len[i] = 0;
    if (!v)
        return;
    f->value[i] = xmalloc(n + 1);
    memcpy(f->value[i], v, n);
    f->value[i][n] = '\0';
    f->len[i] = n;
}

static void jt_report(struct jt *t, const char *what, const char *want, size_t wn, const char *got,
                      size_t gn)
{
    if (t->failures++ >= 5)
        return;
    fprintf(stderr, "fake-twilio: --self-test-json: case %u: %s differs\n  cJSON: ", t->cases,
            what);
    fwrite(want, 1, wn, stderr);
    fputs("\n  wrote: ", stderr);
    fwrite(got, 1, gn, stderr);
    fputc('\n', stderr);
}

/* Compares both ways of writing the resource and the record line of one message. */
static void jt_check(struct jt *t, const char *acct, const char *sid, const struct form *f,
                     unsigned segments, const char *date, bool reply_lost)
{
    t->cases++;
    cJSON *tree = msg_resource_cjson(acct, sid, f, segments, date);
    char *want = cJSON_PrintUnformatted(tree);
    cJSON_Delete(tree);
    size_t n = msg_resource_write(&t->s, acct, sid, f, segments, date);
    if (!want || strlen(want) != n || memcmp(want, t->s.data, n) != 0)
        jt_report(t, "resource", want ? want : "(null)", want ? strlen(want) : 6, t->s.data, n);
    cJSON_free(want);

    want = record_text(msg_record_cjson(sid, f), reply_lost);
    n = msg_record_write(&t->s, sid, f, reply_lost);
    size_t wn = want ? strlen(want) : 0;
    if (!want || wn + 1 != n || memcmp(want, t->s.data, wn) != 0 || t->s.data[wn] != '\n')
        jt_report(t, "record line", want ? want : "(null)", want ? wn : 6, t->s.data, n);
    cJSON_free(want);
}

/* Every combination of From / MessagingServiceSid presence, reply_lost and a few segment
 * counts, for one form's To and Body. */
static void jt_variants(struct jt *t, const char *acct, const char *sid, struct form *f,
                        const char *from, const char *service, const char *date)
{
    static const unsigned segments[] = {1, 0, 11, 4294967295u};
    for (int k = 0; k < 4; k++) {
        jt_field(f, MSG_FROM, k & 1 ? NULL : from, from ? strlen(from) : 0);
        jt_field(f, MSG_SERVICE, k & 2 ? service : NULL, service ? strlen(service) : 0);
        jt_check(t, acct, sid, f, segments[k], date, k == 1 || k == 2);
    }
}

static uint64_t jt_rand(uint64_t *state)
{
    return rng_next(state);
}

/* n random bytes at out, mostly the ones that need care. */
static void jt_random_bytes(uint64_t *state, char *out, size_t n)
{
    static const char special[] = "\"\\/\b\f\n\r\t\x01\x1f\x7f\x80\xbf\xc3\xa9\xe2\x82\xac\xf0"
                                  "\x9f\x98\x80\xff{}:,u0 aZ";
    for (size_t i = 0; i < n; i++) {
        uint64_t r = jt_rand(state);
        out[i] = r % 4 == 0 ? (char)(r >> 8) : special[(r >> 8) % (sizeof(special) - 1)];
    }
}

static int self_test_json(void)
{
    struct jt t = {0};
    struct form f;
    memset(&f, 0, sizeof(f));
    char date[64];
    format_date(date, sizeof(date));
    static const char *const accts[] = {
        DEFAULT_ACCOUNT_SID,
        "AC\"quoted\\back\\slash\"",
        "AC\x01\x1f\x7f\xc3\xa9\xff\t\n",
        "AC\\u0000</script>",
    };
    static const char *const strings[] = {
        "",
        "plain",
        "\"",
        "\\",
        "/",
        "a/b\\c\"d",
        "\b\f\n\r\t",
        "\x01\x02\x1e\x1f\x7f",
        "caf\xc3\xa9 \xe2\x82\xac"
        "5 \xf0\x9f\x98\x80 \xef\xbf\xbd",
        "\xff\xfe\x80\xc0\xaf",
        "\\u0000 \\n \\\" </script>",
        "+15551234567",
        "MG00000000000000000000000000000000",
        "{\"json\":[1,2,null]}",
    };
    size_t nstrings = sizeof(strings) / sizeof(strings[0]);

    /* Fixed strings in every position, with every account sid. */
    for (size_t a = 0; a < sizeof(accts) / sizeof(accts[0]); a++)
        for (size_t i = 0; i < nstrings; i++) {
            const char *o = strings[(i + 1) % nstrings];
            jt_field(&f, MSG_TO, strings[i], strlen(strings[i]));
            jt_field(&f, MSG_BODY, o, strlen(o));
            jt_variants(&t, accts[a], "SM0123456789abcdef0123456789abcdef", &f, strings[i], o,
                        date);
            jt_field(&f, MSG_BODY, strings[i], strlen(strings[i]));
            jt_variants(&t, accts[a], strings[i], &f, o, strings[i], strings[i]);
        }

    /* Every byte value alone and between others; a NUL ends the value as cJSON reads it. */
    for (int c = 0; c < 256; c++) {
        char one[4] = {'x', (char)c, 'y', '\0'};
        jt_field(&f, MSG_TO, one + 1, 1);
        jt_field(&f, MSG_BODY, one, 3);
        jt_variants(&t, DEFAULT_ACCOUNT_SID, "SM0123456789abcdef0123456789abcdef", &f, one, one + 1,
                    date);
    }
    jt_field(&f, MSG_BODY, "before\0after \" \\", 16);
    jt_variants(&t, DEFAULT_ACCOUNT_SID, "SMx", &f, "a\0b", "\0", date);

    /* A long account sid (uri and media are truncated) and long escaped bodies. */
    char long_acct[301], long_body[4001];
    memset(long_acct, 'A', sizeof(long_acct) - 1);
    long_acct[sizeof(long_acct) - 1] = '\0';
    for (size_t i = 0; i < sizeof(long_body) - 1; i++)
        long_body[i] = "\"\\\x01\xc3\xa9/"[i % 6];
    long_body[sizeof(long_body) - 1] = '\0';
    jt_field(&f, MSG_TO, "+15551234567", 12);
    jt_field(&f, MSG_BODY, long_body, sizeof(long_body) - 1);
    jt_variants(&t, long_acct, "SM0123456789abcdef0123456789abcdef", &f, long_body, long_body,
                date);

    /* Pseudo-random raw fields. */
    uint64_t state = 20240521;
    char from[64], service[64], to[64], body[400];
    for (int i = 0; i < 2000; i++) {
        size_t fl = jt_rand(&state) % sizeof(from), sl = jt_rand(&state) % sizeof(service);
        size_t tl = jt_rand(&state) % sizeof(to), bl = jt_rand(&state) % sizeof(body);
        jt_random_bytes(&state, from, fl);
        jt_random_bytes(&state, service, sl);
        jt_random_bytes(&state, to, tl);
        jt_random_bytes(&state, body, bl);
        from[fl] = service[sl] = '\0';
        jt_field(&f, MSG_TO, to, tl);
        jt_field(&f, MSG_BODY, body, bl);
        jt_variants(&t, DEFAULT_ACCOUNT_SID, "SM0123456789abcdef0123456789abcdef", &f, from,
                    service, date);
    }
    form_cleanup(&f);

    /* Forms as requests carry them: decoded and UTF-8 sanitised by form_parse. */
    static const char *const bodies[] = {
        "To=%2B15551234567&From=%2B15005550006&Body=Hello+%22world%22+%5C+%2F+%0A%09%01+%7F",
        "To=%2B15551234567&MessagingServiceSid=MG%22x%5C&Body=caf%C3%A9+%E2%82%AC+%F0%9F%98%80",
        "To=%2B15551234567&From=%2B1&Body=bad+%FF%FE%C0%AF+utf8+%ED%A0%80",
        "To=%2B15551234567&From=a%00b&Body=nul%00inside",
        "To=%2B15551234567&From=x&MessagingServiceSid=y&Body=%3C%2Fscript%3E%5Cu0000",
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        form_parse(&f, &msg_form_spec, bodies[i], strlen(bodies[i]));
        jt_check(&t, DEFAULT_ACCOUNT_SID, "SM0123456789abcdef0123456789abcdef", &f, 2, date,
                 i % 2 == 1);
        form_cleanup(&f);
    }
    for (int i = 0; i < 500; i++) {
        char raw[256], enc[3 * sizeof(raw) + 64];
        size_t rl = jt_rand(&state) % sizeof(raw);
        jt_random_bytes(&state, raw, rl);
        int n = snprintf(enc, sizeof(enc), "To=%%2B1555%07d&From=%%2B1500555%04d&Body=", i, i);
        for (size_t k = 0; k < rl; k++)
            n += snprintf(enc + n, sizeof(enc) - (size_t)n, "%%%02X", (unsigned char)raw[k]);
        form_parse(&f, &msg_form_spec, enc, (size_t)n);
        if (f.value[MSG_BODY])
            jt_check(&t, DEFAULT_ACCOUNT_SID, "SM0123456789abcdef0123456789abcdef", &f, 1, date,
                     i % 3 == 0);
        form_cleanup(&f);
    }

    /* Sids and request ids: id_format against the snprintf it replaces. */
    static const char *const prefixes[] = {"SM", "CA", "RQ"};
    for (int i = 0; i < 3000; i++) {
        uint64_t hi = i < 3 ? 0 : jt_rand(&state), lo = i < 3 ? ~0ULL : jt_rand(&state);
        if (i % 7 == 0)
            hi >>= jt_rand(&state) % 64; /* leading zeros */
        char want[35], got[35];
        snprintf(want, sizeof(want), "%.2s%016" PRIx64 "%016" PRIx64, prefixes[i % 3], hi, lo);
        id_format(got, prefixes[i % 3], hi, lo);
        t.cases++;
        if (memcmp(want, got, sizeof(want)) != 0)
            jt_report(&t, "id", want, strlen(want), got, strnlen(got, sizeof(got)));
    }

    scratch_cleanup(&t.s);
    fprintf(t.failures ? stderr : stdout,
            "fake-twilio: --self-test-json: %u cases, %u texts differ\n", t.cases, t.failures);
    return t.failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--self-test-json") == 0)
        return self_test_json();
    struct fake_config cfg;
    struct fault_config faults;
    int rc = parse_args(argc, argv, &cfg, &faults);
    if (rc != 0)
        return rc;
    rc = 1;

    struct app app = {.cfg = &cfg};
    struct event *sigterm = NULL, *sigint = NULL;
    int port;
    signal(SIGPIPE, SIG_IGN);
    seed_ids(&app);
    fault_config_commit(&app, &faults, true);
    strset_init(&app.pairs);
    strset_init(&app.recipients);
    strset_init(&app.call_pairs);
    strset_init(&app.call_recipients);
    app.credentials = xasprintf("%s:%s", cfg.account_sid, cfg.auth_token);
    app.credentials_len = strlen(app.credentials);
    app.messages_path = xasprintf(TW_ACCOUNTS_PREFIX "%s/" TW_MESSAGES_LEAF, cfg.account_sid);
    app.calls_path = xasprintf(TW_ACCOUNTS_PREFIX "%s/" TW_CALLS_LEAF, cfg.account_sid);
    app.messages_dir = xasprintf(TW_ACCOUNTS_PREFIX "%s/Messages/", cfg.account_sid);
    app.calls_dir = xasprintf(TW_ACCOUNTS_PREFIX "%s/Calls/", cfg.account_sid);
    resmap_init(&app.resources);

    if (cfg.record_path) {
        app.record = fopen(cfg.record_path, "a");
        if (!app.record) {
            fprintf(stderr, "fake-twilio: opening %s: %s\n", cfg.record_path, strerror(errno));
            goto out;
        }
        setvbuf(app.record, NULL, _IOFBF, FAKE_RECORD_BUFFER);
    }

    app.base = event_base_new();
    if (!app.base) {
        fprintf(stderr, "fake-twilio: libevent initialisation failed\n");
        goto out;
    }
    app.http =
        fhttp_server_new(app.base, cfg.host, cfg.port, FAKE_MAX_REQUEST_BODY, on_request, &app);
    port = app.http ? fhttp_server_port(app.http) : -1;
    if (port < 0) {
        fprintf(stderr, "fake-twilio: cannot listen on %s port %d: %s\n", cfg.host, cfg.port,
                strerror(errno));
        goto out;
    }
    if (cfg.port_file && write_port_file(cfg.port_file, port) != 0)
        goto out;

    sigterm = evsignal_new(app.base, SIGTERM, on_signal, &app);
    sigint = evsignal_new(app.base, SIGINT, on_signal, &app);
    if (!sigterm || !sigint || evsignal_add(sigterm, NULL) != 0 ||
        evsignal_add(sigint, NULL) != 0) {
        fprintf(stderr, "fake-twilio: cannot install signal handlers\n");
        goto out;
    }

    if (strchr(cfg.host, ':'))
        printf("listening [%s]:%d\n", cfg.host, port);
    else
        printf("listening %s:%d\n", cfg.host, port);
    printf("fault seed %lld\n", faults.seed);
    fflush(stdout);

    if (event_base_dispatch(app.base) < 0) {
        fprintf(stderr, "fake-twilio: event loop failed\n");
        goto out;
    }
    rc = 0;
out:
    if (app.record) {
        record_flush(&app);
        if (fclose(app.record) != 0 || app.record_failed) {
            fprintf(stderr, "fake-twilio: record file %s is incomplete\n", cfg.record_path);
            rc = 1;
        }
    }
    if (sigterm)
        event_free(sigterm);
    if (sigint)
        event_free(sigint);
    holds_cleanup(&app);
    cb_cleanup(&app);
    fhttp_server_free(app.http);
    scratch_cleanup(&app.json);
    if (app.base)
        event_base_free(app.base);
    strset_cleanup(&app.pairs);
    strset_cleanup(&app.recipients);
    strset_cleanup(&app.call_pairs);
    strset_cleanup(&app.call_recipients);
    free(app.credentials);
    free(app.messages_path);
    free(app.calls_path);
    free(app.messages_dir);
    free(app.calls_dir);
    resmap_cleanup(&app.resources);
    return rc;
}
