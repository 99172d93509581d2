/* fake_twilio.c - a loopback stand-in for Twilio's Messages API, for tests and benchmarks.
 *
 * Emulates: POST /2010-04-01/Accounts/{AccountSid}/Messages.json with HTTP Basic auth
 * (AccountSid:AuthToken), form-urlencoded input, Twilio's error JSON for 20003 (auth),
 * 21604 (To missing), 21211 (To not E.164), 21603 (no From / MessagingServiceSid), 21602
 * (Body missing), 21617 (Body over 1600 characters) and 20404 (unknown resource), and a 201
 * Message resource with a fresh SM sid, status "queued" ("accepted" with a Messaging Service,
 * which, like Twilio, reports num_segments "0" because no sender is assigned yet) and
 * num_segments computed the way carriers split: GSM-7 160/153 septets (extension characters
 * such as "{" or "€" take two, never split across parts), otherwise UCS-2 70/67 UTF-16 units
 * (surrogate pairs never split). Body length is counted in Unicode code points.
 *
 * Does not emulate: TLS, API-key (SK...) credentials, subaccounts, GET/list/update of
 * messages, status callbacks (StatusCallback is accepted and ignored), MediaUrl, scheduling,
 * ValidityPeriod checks, sender ownership (21606), opt-outs (21610), trial restrictions
 * (21608), Smart Encoding, rate limits and queueing (20429, 21611, 30001). Fault injection
 * (500 / 429 / slow or dropped replies) is planned: see fault_plan_decide().
 *
 * Test-only control endpoints (not counted in "requests"):
 *   GET  /_fake/stats  {"accepted","duplicates","requests","rejected","unique_recipients"}
 *                      and flushes the --record file.
 *   POST /_fake/reset  zeroes every counter, forgets seen recipients and (To, Body) pairs
 *                      and truncates the --record file.
 * "requests" counts every other request; each is answered either 201 ("accepted") or with a
 * Twilio error ("rejected"). "duplicates" counts accepted sends whose (To, Body) pair had
 * already been accepted since start or the last reset; they are still answered 201.
 *
 * Single-threaded libevent evhttp server bound to loopback only; no per-request logging so
 * it sustains tens of thousands of keep-alive requests per second. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
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

#include "xalloc.h"

/* ------------------------------------------------------------------------------------------
 * Limits and fixed protocol strings
 * ------------------------------------------------------------------------------------------ */

#define FAKE_MAX_REQUEST_BODY (1024 * 1024) /* larger bodies get libevent's 413 */
#define FAKE_MAX_AUTH_HEADER 1024
#define FAKE_MAX_FORM_KEY 64
#define FAKE_RECORD_BUFFER (1024 * 1024)
#define FAKE_SET_INITIAL_CAP 1024 /* power of two */

#define TW_BODY_MAX_CHARS 1600
#define TW_GSM_SINGLE 160
#define TW_GSM_PART 153
#define TW_UCS2_SINGLE 70
#define TW_UCS2_PART 67

#define TW_API_PREFIX "/2010-04-01/"
#define TW_ACCOUNTS_PREFIX "/2010-04-01/Accounts/"
#define TW_MESSAGES_LEAF "Messages.json"
#define TW_MORE_INFO "https://www.twilio.com/docs/errors/"

#define DEFAULT_ACCOUNT_SID "AC00000000000000000000000000000000"
#define DEFAULT_AUTH_TOKEN "fake-auth-token"

/* libevent 2.1 names only some statuses (no 201, no 401). */
enum fake_http_status {
    FAKE_HTTP_OK = 200,
    FAKE_HTTP_CREATED = 201,
    FAKE_HTTP_BAD_REQUEST = 400,
    FAKE_HTTP_UNAUTHORIZED = 401,
    FAKE_HTTP_NOT_FOUND = 404,
};

enum tw_code {
    TW_AUTHENTICATE = 20003,
    TW_NOT_FOUND = 20404,
    TW_INVALID_TO = 21211,
    TW_BODY_REQUIRED = 21602,
    TW_FROM_REQUIRED = 21603,
    TW_TO_REQUIRED = 21604,
    TW_BODY_TOO_LONG = 21617,
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
    uint64_t accepted;
    uint64_t duplicates;
    uint64_t requests;
    uint64_t rejected;
};

struct app {
    const struct fake_config *cfg;
    struct event_base *base;
    struct evhttp *http;
    struct evbuffer *out; /* reused reply body; evhttp_send_reply drains it */
    char *credentials;    /* "sid:token", compared with the decoded Basic auth */
    size_t credentials_len;
    char *messages_path; /* TW_ACCOUNTS_PREFIX sid "/" TW_MESSAGES_LEAF */
    struct fake_stats stats;
    struct strset pairs;      /* To '\0' Body of accepted sends */
    struct strset recipients; /* To of accepted sends */
    FILE *record;
    bool record_failed;
    uint64_t id_key[3]; /* random per process: sid prefix and mixing keys */
    uint64_t sid_counter;
    uint64_t request_counter;
};

enum route {
    ROUTE_MESSAGES_CREATE = 0,
    ROUTE_API_OTHER, /* under /2010-04-01/ but not emulated: 404 after auth */
    ROUTE_FAKE_STATS,
    ROUTE_FAKE_RESET,
    ROUTE_NOT_FOUND,
};

/* One request in flight: what the reply door needs to count and label the answer. */
struct exchange {
    struct app *app;
    struct evhttp_request *req;
    enum route route;
    const char *path;
    bool counted; /* an emulated-API request: counts in requests / rejected */
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
    uint32_t cp;
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
        if (strchr("[\\]^{|}~", (int)c))
            return 2;
        return c == '`' ? 0 : 1;
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
    uint32_t cp;
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
    uint32_t cp;
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

/* ------------------------------------------------------------------------------------------
 * Replies: the only place that sets headers and calls evhttp_send_reply
 * ------------------------------------------------------------------------------------------ */

static void make_id(struct app *app, const char *prefix, uint64_t counter, char out[35])
{
    /* Bijective in counter, so ids never repeat; the prefix keeps SM and RQ streams apart. */
    uint64_t domain = ((uint64_t)(unsigned char)prefix[0] << 8 | (unsigned char)prefix[1]) *
                      0x9e3779b97f4a7c15ULL;
    uint64_t hi = mix64(counter ^ app->id_key[1] ^ domain);
    uint64_t lo = mix64(hi ^ app->id_key[2]) ^ app->id_key[0];
    snprintf(out, 35, "%.2s%016" PRIx64 "%016" PRIx64, prefix, hi, lo);
}

static void reply_send(struct exchange *ex, int status, const char *json, size_t len)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(ex->req);
    evhttp_add_header(h, "Content-Type", "application/json");
    if (ex->counted) {
        char rq[35];
        make_id(ex->app, "RQ", ++ex->app->request_counter, rq);
        evhttp_add_header(h, "Twilio-Request-Id", rq);
        if (status >= 300)
            ex->app->stats.rejected++;
    }
    if (status == FAKE_HTTP_UNAUTHORIZED)
        evhttp_add_header(h, "WWW-Authenticate", "Basic realm=\"Twilio API\"");
    evbuffer_add(ex->app->out, json, len);
    evhttp_send_reply(ex->req, status, NULL, ex->app->out);
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

static void reply_not_found(struct exchange *ex)
{
    char *msg = xasprintf("The requested resource %s was not found", ex->path);
    reply_twilio_error(ex, FAKE_HTTP_NOT_FOUND, TW_NOT_FOUND, msg);
    free(msg);
}

/* ------------------------------------------------------------------------------------------
 * Fault plan hook
 *
 * Future fault injection (HTTP 500, 429 + Retry-After, slow replies, dropped connections)
 * decides here, once the request is authenticated and its form parsed, so a plan can match
 * on To / Body or on the request number. Each action gets an enum member and a case in
 * messages_create(); a delayed reply keeps the evhttp_request and answers from a timer.
 * ------------------------------------------------------------------------------------------ */

enum fault_action {
    FAULT_NONE = 0,
};

struct msg_form;

static enum fault_action fault_plan_decide(struct app *app, const struct msg_form *form)
{
    (void)app;
    (void)form;
    return FAULT_NONE;
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

struct msg_form {
    char *value[MSG_NFIELDS]; /* decoded, UTF-8 sanitised; NULL when absent or empty */
    size_t len[MSG_NFIELDS];
};

static void msg_form_cleanup(struct msg_form *f)
{
    for (int i = 0; i < MSG_NFIELDS; i++)
        free(f->value[i]);
}

/* Parses the fields we know; others are ignored. The first occurrence of a field wins. */
static void msg_form_parse(struct msg_form *f, const char *p, size_t n)
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
            for (int i = 0; i < MSG_NFIELDS; i++) {
                if (f->value[i] || strlen(msg_field_names[i]) != kdec ||
                    memcmp(msg_field_names[i], key, kdec) != 0)
                    continue;
                size_t vraw = eq ? pair - klen - 1 : 0;
                char *v = xmalloc(vraw + 1);
                size_t vlen = form_decode(eq ? eq + 1 : "", vraw, v);
                if (vlen == 0) {
                    free(v);
                    break;
                }
                utf8_sanitize(&v, &vlen);
                f->value[i] = v;
                f->len[i] = vlen;
                break;
            }
        }
        if (!amp)
            break;
        p = amp + 1;
        n -= pair + 1;
    }
}

/* Sends the Twilio validation error and returns false if the form cannot be sent. */
static bool msg_validate_or_reply(struct exchange *ex, const struct msg_form *f, unsigned *segments)
{
    const char *to = f->value[MSG_TO];
    if (!to) {
        reply_twilio_error(ex, FAKE_HTTP_BAD_REQUEST, TW_TO_REQUIRED,
                           "A 'To' phone number is required.");
        return false;
    }
    if (!is_e164(to, f->len[MSG_TO])) {
        char *msg = xasprintf("The 'To' number %s is not a valid phone number.", to);
        reply_twilio_error(ex, FAKE_HTTP_BAD_REQUEST, TW_INVALID_TO, msg);
        free(msg);
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

static void record_append(struct app *app, const char *sid, const struct msg_form *f)
{
    if (!app->record || app->record_failed)
        return;
    cJSON *line = cJSON_CreateObject();
    cJSON_AddStringToObject(line, "sid", sid);
    cJSON_AddStringToObject(line, "to", f->value[MSG_TO]);
    if (f->value[MSG_FROM])
        cJSON_AddStringToObject(line, "from", f->value[MSG_FROM]);
    else
        cJSON_AddNullToObject(line, "from");
    cJSON_AddStringToObject(line, "body", f->value[MSG_BODY]);
    char *text = cJSON_PrintUnformatted(line);
    cJSON_Delete(line);
    if (!text || fputs(text, app->record) == EOF || fputc('\n', app->record) == EOF) {
        fprintf(stderr, "fake-twilio: writing %s failed: %s; recording stopped\n",
                app->cfg->record_path, strerror(errno));
        app->record_failed = true;
    }
    cJSON_free(text);
}

/* Counts the accepted send: total, duplicate (To, Body) pair, distinct recipient. */
static void msg_count_accepted(struct app *app, const struct msg_form *f)
{
    size_t tl = f->len[MSG_TO], bl = f->len[MSG_BODY];
    char *pair = xmalloc(tl + 1 + bl); /* To has no NUL, so the separator is unambiguous */
    memcpy(pair, f->value[MSG_TO], tl);
    pair[tl] = '\0';
    memcpy(pair + tl + 1, f->value[MSG_BODY], bl);
    app->stats.accepted++;
    if (!strset_add_take(&app->pairs, pair, tl + 1 + bl))
        app->stats.duplicates++;
    (void)strset_add_take(&app->recipients, xstrndup(f->value[MSG_TO], tl), tl);
}

static void add_string_or_null(cJSON *o, const char *name, const char *value)
{
    if (value)
        cJSON_AddStringToObject(o, name, value);
    else
        cJSON_AddNullToObject(o, name);
}

static cJSON *msg_resource(struct app *app, const char *sid, const struct msg_form *f,
                           unsigned segments)
{
    const char *acct = app->cfg->account_sid;
    bool service = f->value[MSG_SERVICE] != NULL;
    char date[64], num[16], uri[256], media[256];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
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

static void messages_create(struct exchange *ex)
{
    struct app *app = ex->app;
    struct evbuffer *in = evhttp_request_get_input_buffer(ex->req);
    size_t n = evbuffer_get_length(in);
    const char *body = n ? (const char *)evbuffer_pullup(in, -1) : "";
    struct msg_form form;
    msg_form_parse(&form, body, n);

    switch (fault_plan_decide(app, &form)) {
    case FAULT_NONE:
        break;
    }

    unsigned segments = 0;
    if (!msg_validate_or_reply(ex, &form, &segments))
        goto out;

    char sid[35];
    make_id(app, "SM", ++app->sid_counter, sid);
    msg_count_accepted(app, &form);
    record_append(app, sid, &form);
    reply_cjson(ex, FAKE_HTTP_CREATED, msg_resource(app, sid, &form, segments));
out:
    msg_form_cleanup(&form);
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
    const struct fake_stats *s = &ex->app->stats;
    char text[256];
    record_flush(ex->app);
    int n =
        snprintf(text, sizeof(text),
                 "{\"accepted\":%" PRIu64 ",\"duplicates\":%" PRIu64 ",\"requests\":%" PRIu64
                 ",\"rejected\":%" PRIu64 ",\"unique_recipients\":%zu}",
                 s->accepted, s->duplicates, s->requests, s->rejected, ex->app->recipients.count);
    reply_send(ex, FAKE_HTTP_OK, text, (size_t)n);
}

static void fake_reset(struct exchange *ex)
{
    struct app *app = ex->app;
    memset(&app->stats, 0, sizeof(app->stats));
    strset_cleanup(&app->pairs);
    strset_cleanup(&app->recipients);
    strset_init(&app->pairs);
    strset_init(&app->recipients);
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

/* ------------------------------------------------------------------------------------------
 * Routing and authentication
 * ------------------------------------------------------------------------------------------ */

static enum route route_of(const struct app *app, enum evhttp_cmd_type method, const char *path)
{
    if (strcmp(path, "/_fake/stats") == 0)
        return method == EVHTTP_REQ_GET ? ROUTE_FAKE_STATS : ROUTE_NOT_FOUND;
    if (strcmp(path, "/_fake/reset") == 0)
        return method == EVHTTP_REQ_POST ? ROUTE_FAKE_RESET : ROUTE_NOT_FOUND;
    if (strncmp(path, TW_API_PREFIX, strlen(TW_API_PREFIX)) != 0)
        return ROUTE_NOT_FOUND;
    if (method == EVHTTP_REQ_POST && strcmp(path, app->messages_path) == 0)
        return ROUTE_MESSAGES_CREATE;
    return ROUTE_API_OTHER;
}

/* True when Basic credentials match and any /Accounts/{sid}/ in the path is ours. */
static bool auth_ok(const struct app *app, struct evhttp_request *req, const char *path)
{
    size_t pl = strlen(TW_ACCOUNTS_PREFIX);
    if (strncmp(path, TW_ACCOUNTS_PREFIX, pl) == 0) {
        const char *sid = path + pl;
        size_t sl = strcspn(sid, "/.");
        if (sl != strlen(app->cfg->account_sid) || memcmp(sid, app->cfg->account_sid, sl) != 0)
            return false;
    }
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
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

static void on_request(struct evhttp_request *req, void *arg)
{
    struct app *app = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    struct exchange ex = {.app = app, .req = req, .path = path ? path : ""};
    ex.route = route_of(app, evhttp_request_get_command(req), ex.path);
    ex.counted = ex.route != ROUTE_FAKE_STATS && ex.route != ROUTE_FAKE_RESET;
    if (ex.counted)
        app->stats.requests++;

    switch (ex.route) {
    case ROUTE_MESSAGES_CREATE:
    case ROUTE_API_OTHER:
        if (!auth_ok(app, req, ex.path)) {
            reply_twilio_error(&ex, FAKE_HTTP_UNAUTHORIZED, TW_AUTHENTICATE, "Authenticate");
            return;
        }
        if (ex.route == ROUTE_MESSAGES_CREATE)
            messages_create(&ex);
        else
            reply_not_found(&ex);
        return;
    case ROUTE_FAKE_STATS:
        fake_stats(&ex);
        return;
    case ROUTE_FAKE_RESET:
        fake_reset(&ex);
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
               "                   [--record FILE] [--port-file FILE]\n"
               "  --port 0 picks a free port; it is written to --port-file and printed as\n"
               "  'listening HOST:PORT' on stdout.\n");
}

/* Returns 0 on success, 2 (usage error) otherwise; messages go to stderr. */
static int parse_args(int argc, char **argv, struct fake_config *cfg)
{
    static const struct option opts[] = {
        {"port", required_argument, NULL, 'p'},
        {"host", required_argument, NULL, 'H'},
        {"account-sid", required_argument, NULL, 'a'},
        {"auth-token", required_argument, NULL, 't'},
        {"record", required_argument, NULL, 'r'},
        {"port-file", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *cfg = (struct fake_config){.host = "127.0.0.1",
                                .port = -1,
                                .account_sid = DEFAULT_ACCOUNT_SID,
                                .auth_token = DEFAULT_AUTH_TOKEN};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end;
        long v;
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

static void seed_ids(struct app *app)
{
    if (getrandom(app->id_key, sizeof(app->id_key), 0) != (ssize_t)sizeof(app->id_key)) {
        uint64_t t = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        for (int i = 0; i < 3; i++)
            app->id_key[i] = mix64(t + (uint64_t)i * 0x9e3779b97f4a7c15ULL);
    }
}

int main(int argc, char **argv)
{
    struct fake_config cfg;
    int rc = parse_args(argc, argv, &cfg);
    if (rc != 0)
        return rc;
    rc = 1;

    struct app app = {.cfg = &cfg};
    struct event *sigterm = NULL, *sigint = NULL;
    struct evhttp_bound_socket *bound;
    int port;
    signal(SIGPIPE, SIG_IGN);
    seed_ids(&app);
    strset_init(&app.pairs);
    strset_init(&app.recipients);
    app.credentials = xasprintf("%s:%s", cfg.account_sid, cfg.auth_token);
    app.credentials_len = strlen(app.credentials);
    app.messages_path = xasprintf(TW_ACCOUNTS_PREFIX "%s/" TW_MESSAGES_LEAF, cfg.account_sid);

    if (cfg.record_path) {
        app.record = fopen(cfg.record_path, "a");
        if (!app.record) {
            fprintf(stderr, "fake-twilio: opening %s: %s\n", cfg.record_path, strerror(errno));
            goto out;
        }
        setvbuf(app.record, NULL, _IOFBF, FAKE_RECORD_BUFFER);
    }

    app.base = event_base_new();
    app.http = app.base ? evhttp_new(app.base) : NULL;
    app.out = evbuffer_new();
    if (!app.http || !app.out) {
        fprintf(stderr, "fake-twilio: libevent initialisation failed\n");
        goto out;
    }
    evhttp_set_allowed_methods(app.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                             EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                             EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_max_body_size(app.http, FAKE_MAX_REQUEST_BODY);
    evhttp_set_gencb(app.http, on_request, &app);

    bound = evhttp_bind_socket_with_handle(app.http, cfg.host, (ev_uint16_t)cfg.port);
    port = bound ? bound_port(bound) : -1;
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
    if (app.http)
        evhttp_free(app.http);
    if (app.out)
        evbuffer_free(app.out);
    if (app.base)
        event_base_free(app.base);
    strset_cleanup(&app.pairs);
    strset_cleanup(&app.recipients);
    free(app.credentials);
    free(app.messages_path);
    return rc;
}
