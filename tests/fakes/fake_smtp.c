/* fake_smtp.c - a loopback SMTP server (RFC 5321 subset) that records messages, for tests.
 *
 * Speaks: greeting 220; EHLO (advertises AUTH PLAIN LOGIN, 8BITMIME, SIZE, ENHANCEDSTATUSCODES)
 * and HELO; AUTH PLAIN and AUTH LOGIN (RFC 4954, with or without an initial response, "*"
 * cancels) checked against --user / --pass (535 on failure); MAIL FROM:<path> with SIZE= and
 * BODY= parameters; RCPT TO:<path> (up to 1000); DATA (dot-unstuffing, ends at CRLF.CRLF, bare
 * LF accepted, --max-size enforced with 552); RSET, NOOP, HELP, VRFY (252), QUIT. A command out
 * of sequence gets 503, an unknown one 500, bad syntax 501/555, MAIL before AUTH 530 (unless
 * --auth-optional). STARTTLS is neither advertised nor accepted (502); there is no TLS at all.
 * A session idle for --idle-seconds gets 421 and is closed; so is one with 20 errors.
 *
 * Every accepted message is one JSON line per envelope recipient in --record: queue_id,
 * mail_from, to (the RCPT TO address), header_to, from, subject (RFC 2047 decoded), message_id,
 * list_unsubscribe, list_unsubscribe_post, delivery_id (the X-Crier-Delivery header),
 * content_type, multipart_alternative (a multipart/alternative entity anywhere in the tree),
 * text_plain / text_html (that entity has those parts), plain_before_html, parts (leaf media
 * types in order), size, duplicate, reply_lost (true when accepted by a paccept_timeout fault),
 * and with --record-bodies the decoded text and html (first of each, quoted-printable / base64
 * undone, at most 64 KiB).
 *
 * Fault injection at the end of DATA (one draw per message from a generator seeded by "seed"),
 * set by the command-line options of the same names (--paccept-timeout, --latency-ms, ...) and
 * at run time by POST /_fake/config on the control port; the knobs mirror fake-twilio's and
 * fake-sendgrid's:
 *   p4xx             fraction answered "451 4.3.0" (temporary); nothing recorded.
 *   p5xx             fraction answered "554 5.6.0" (permanent); nothing recorded.
 *   ptimeout         fraction never answered: the connection is closed without a reply after
 *                    timeout_ms, or when the client closes it; nothing recorded.
 *   paccept_timeout  fraction accepted, recorded ("reply_lost":true) and counted, duplicates
 *                    included, then the connection is closed without the 250.
 *   latency_ms       the outcome of every DATA end (faults included) comes this much later.
 *
 * Control port (HTTP on --http-port, loopback; never faulted or delayed):
 *   GET  /_fake/stats   {"requests","accepted","accepted_transactions","rejected","duplicates",
 *                       "unique_recipients","connections","sessions","auth_failures",
 *                       "command_errors","held","faults_4xx","faults_5xx","faults_timeout",
 *                       "faults_accept_timeout","faults_latency"}; flushes the record file.
 *                       "sessions" and "held" (sessions waiting on a delayed or withheld DATA
 *                       outcome) are gauges.
 *   POST /_fake/reset   zeroes the counters, forgets recipients and duplicate keys, truncates
 *                       the record file; the fault configuration stays.
 *   GET  /_fake/config  the fault configuration (the knobs above, timeout_ms, seed); POST
 *                       applies a JSON object of some of them as a whole (fractions in 0..1
 *                       summing to at most 1, integers in range, no unknown key) and answers the
 *                       whole configuration, or 400 {"error"}.
 * "requests" counts DATA ends (messages submitted), so that always
 *   requests = accepted_transactions + rejected + faults_4xx + faults_5xx + faults_timeout
 * "accepted" counts recorded messages (one per recipient), "accepted_transactions" the DATA
 * ends that accepted them (250, or no reply for paccept_timeout). "rejected" counts DATA ends
 * refused for the message itself (too big), never an injected fault. "duplicates" counts
 * accepted messages whose key was accepted before since start or the last reset: the
 * lower-cased recipient with X-Crier-Delivery, or without that header the recipient with the
 * subject. AUTH failures (535) count in "auth_failures", other refused commands in
 * "command_errors".
 *
 * Single-threaded: libevent bufferevents for SMTP and evhttp for control, one event_base. */
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
#include <event2/listener.h>

#include "xalloc.h"

/* ------------------------------------------------------------------------------------------
 * Limits and reply texts (each reply exists once, here)
 * ------------------------------------------------------------------------------------------ */

#define SMTP_MAX_COMMAND_LINE 4096         /* RFC 5321 asks for 512; be generous */
#define SMTP_MAX_DATA_LINE (1024 * 1024)   /* a longer line without LF marks the data too big */
#define SMTP_DEFAULT_MAX_SIZE (10485760UL) /* advertised in SIZE */
#define SMTP_MAX_RCPT 1000
#define SMTP_MAX_ERRORS 20
#define SMTP_DEFAULT_IDLE_SECONDS 300
#define SMTP_MAX_CREDENTIAL 1024
#define MIME_MAX_DEPTH 8
#define MIME_MAX_TYPE 128
#define MIME_MAX_BOUNDARY 200
#define FAKE_RECORD_BODY_MAX (64 * 1024)
#define FAKE_RECORD_BUFFER (1024 * 1024)
#define FAKE_MAX_CONFIG_BODY (64 * 1024)
#define FAKE_SET_INITIAL_CAP 1024       /* power of two */
#define FAKE_SEED_MAX ((1LL << 53) - 1) /* exact in a JSON number */

#define DEFAULT_USER "fake-user"
#define DEFAULT_PASS "fake-pass"
#define DEFAULT_HOSTNAME "fake-smtp.test"

#define REPLY_GREETING "220 %s ESMTP fake-smtp ready\r\n"
#define REPLY_HELO "250 %s\r\n"
#define REPLY_EHLO                                                                                 \
    "250-%s greets %s\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250-SIZE %lu\r\n"                 \
    "250 ENHANCEDSTATUSCODES\r\n"
#define REPLY_OK "250 2.0.0 Ok\r\n"
#define REPLY_MAIL_OK "250 2.1.0 Ok\r\n"
#define REPLY_RCPT_OK "250 2.1.5 Ok\r\n"
#define REPLY_QUEUED "250 2.0.0 Ok: queued as %s\r\n"
#define REPLY_DATA_GO "354 End data with <CR><LF>.<CR><LF>\r\n"
#define REPLY_BYE "221 2.0.0 Bye\r\n"
#define REPLY_HELP "214 2.0.0 fake-smtp: EHLO HELO AUTH MAIL RCPT DATA RSET NOOP VRFY QUIT\r\n"
#define REPLY_VRFY "252 2.5.0 Cannot VRFY user, but will accept message\r\n"
#define REPLY_AUTH_OK "235 2.7.0 Authentication successful\r\n"
#define REPLY_AUTH_PROMPT "334 \r\n"
#define REPLY_AUTH_USERNAME "334 VXNlcm5hbWU6\r\n" /* "Username:" */
#define REPLY_AUTH_PASSWORD "334 UGFzc3dvcmQ6\r\n" /* "Password:" */
#define REPLY_AUTH_FAILED "535 5.7.8 Authentication credentials invalid\r\n"
#define REPLY_AUTH_CANCELLED "501 5.7.0 Authentication cancelled\r\n"
#define REPLY_AUTH_BAD64 "501 5.5.2 Cannot decode response\r\n"
#define REPLY_AUTH_MECH "504 5.5.4 Unrecognized authentication type\r\n"
#define REPLY_AUTH_REQUIRED "530 5.7.0 Authentication required\r\n"
#define REPLY_SEQ_HELO "503 5.5.1 Error: send HELO/EHLO first\r\n"
#define REPLY_SEQ_AUTH "503 5.5.1 Error: already authenticated or in a mail transaction\r\n"
#define REPLY_SEQ_NOESMTP "503 5.5.1 Error: AUTH needs EHLO\r\n"
#define REPLY_SEQ_NESTED "503 5.5.1 Error: nested MAIL command\r\n"
#define REPLY_SEQ_NEED_MAIL "503 5.5.1 Error: need MAIL command\r\n"
#define REPLY_SEQ_NEED_RCPT "503 5.5.1 Error: need RCPT command\r\n"
#define REPLY_SYNTAX_HELO "501 5.5.4 Syntax: EHLO/HELO hostname\r\n"
#define REPLY_SYNTAX_MAIL "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
#define REPLY_SYNTAX_RCPT "501 5.5.4 Syntax: RCPT TO:<address>\r\n"
#define REPLY_SYNTAX_ARGS "501 5.5.4 Syntax: no arguments allowed\r\n"
#define REPLY_BAD_RCPT "501 5.1.3 Bad recipient address syntax\r\n"
#define REPLY_PARAM "555 5.5.4 Unsupported MAIL parameter\r\n"
#define REPLY_TOO_BIG "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
#define REPLY_TOO_MANY_RCPT "452 4.5.3 Too many recipients\r\n"
#define REPLY_UNKNOWN "500 5.5.2 Error: command not recognized\r\n"
#define REPLY_LINE_TOO_LONG "500 5.5.6 Error: line too long\r\n"
#define REPLY_NOT_SUPPORTED "502 5.5.1 Error: command not implemented\r\n"
#define REPLY_TOO_MANY_ERRORS "421 4.7.0 %s Error: too many errors\r\n"
#define REPLY_IDLE "421 4.4.2 %s Error: timeout exceeded\r\n"
#define REPLY_FAULT_4XX "451 4.3.0 Temporary failure (injected by fake-smtp)\r\n"
#define REPLY_FAULT_5XX "554 5.6.0 Message rejected (injected by fake-smtp)\r\n"

/* libevent 2.1 names only some statuses. */
enum fake_http_status {
    FAKE_HTTP_OK = 200,
    FAKE_HTTP_BAD_REQUEST = 400,
    FAKE_HTTP_NOT_FOUND = 404,
};

/* ------------------------------------------------------------------------------------------
 * State
 * ------------------------------------------------------------------------------------------ */

/* The fault plan: the one piece of configuration that changes at run time (POST
 * /_fake/config). Described, parsed and printed through fault_knobs[]. */
struct fault_config {
    double p4xx, p5xx, ptimeout, paccept_timeout; /* fractions of DATA ends, sum <= 1 */
    long long latency_ms;
    long long timeout_ms; /* how long a withheld DATA end keeps its connection */
    long long seed;
};

struct fake_config {
    const char *host; /* normalised: "127.0.0.1" or "::1" */
    int port;
    int http_port;
    const char *port_file;      /* NULL: none */
    const char *http_port_file; /* NULL: none */
    const char *hostname;       /* in the greeting and EHLO reply */
    const char *user;
    const char *pass;
    bool auth_optional;
    const char *record_path; /* NULL: no record */
    bool record_bodies;
    unsigned long max_size;
    unsigned idle_seconds;
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
    uint64_t accepted_transactions;
    uint64_t rejected;
    uint64_t duplicates;
    uint64_t connections;
    uint64_t auth_failures;
    uint64_t command_errors;
    uint64_t faults_4xx;
    uint64_t faults_5xx;
    uint64_t faults_timeout;
    uint64_t faults_accept_timeout;
    uint64_t faults_latency;
};

struct app {
    const struct fake_config *cfg;
    struct event_base *base;
    struct evconnlistener *listener;
    struct evhttp *http;
    struct event *sweep; /* frees closed sessions after the loop turn that closed them */
    struct fault_config faults;
    bool faults_active; /* some fraction > 0 */
    uint64_t rng;       /* fault draws (splitmix64 state, from faults.seed) */
    uint64_t id_state;  /* queue ids */
    struct fake_stats stats;
    struct strset keys;       /* duplicate keys of accepted messages */
    struct strset recipients; /* lower-cased recipients of accepted messages */
    struct session *sessions; /* open sessions */
    struct session *closed;   /* to free at the next sweep */
    uint64_t sessions_open;   /* gauge */
    uint64_t sessions_held;   /* gauge: in SMTP_DATA_WAIT or SMTP_HELD */
    FILE *record;
    bool record_failed;
};

enum smtp_state {
    SMTP_GREETED = 0,     /* no EHLO/HELO yet */
    SMTP_READY,           /* EHLO/HELO done, no transaction */
    SMTP_AUTH_PLAIN,      /* waiting for the PLAIN response */
    SMTP_AUTH_LOGIN_USER, /* waiting for the LOGIN user name */
    SMTP_AUTH_LOGIN_PASS, /* waiting for the LOGIN password */
    SMTP_MAIL,            /* MAIL accepted, no RCPT yet */
    SMTP_RCPT,            /* at least one RCPT */
    SMTP_DATA,            /* reading the message */
    SMTP_DATA_WAIT,       /* DATA ended, outcome delayed by latency_ms */
    SMTP_HELD,            /* DATA ended, never answered (timeout fault), closed later */
    SMTP_CLOSING,         /* flushing the last reply, then closed */
    SMTP_CLOSED,          /* on the free list */
};

/* What happens when a delayed DATA end comes due. */
enum pending_action {
    PENDING_REPLY = 0, /* send pending_reply, back to SMTP_READY */
    PENDING_CLOSE,     /* close without a reply (accept-then-no-reply fault) */
};

struct session {
    struct app *app;
    struct bufferevent *bev;
    enum smtp_state state;
    bool esmtp;  /* EHLO (not HELO) */
    bool authed; /* AUTH succeeded */
    unsigned errors;
    char *login_user; /* AUTH LOGIN: the decoded user name until the password comes */
    char *mail_from;
    char **rcpt;
    size_t n_rcpt, cap_rcpt;
    struct evbuffer *data; /* message being received, CRLF line ends, unstuffed */
    bool data_too_big;
    struct event *delay; /* latency (SMTP_DATA_WAIT) or timeout_ms (SMTP_HELD) timer */
    enum pending_action pending;
    char pending_reply[128];
    struct session *prev, *next; /* app->sessions, or app->closed (next only) */
};

enum fault_action {
    FAULT_NONE = 0,
    FAULT_4XX,
    FAULT_5XX,
    FAULT_TIMEOUT,
    FAULT_ACCEPT_TIMEOUT,
};

enum smtp_cmd {
    CMD_UNKNOWN = 0,
    CMD_EHLO,
    CMD_HELO,
    CMD_AUTH,
    CMD_MAIL,
    CMD_RCPT,
    CMD_DATA,
    CMD_RSET,
    CMD_NOOP,
    CMD_QUIT,
    CMD_HELP,
    CMD_VRFY,
    CMD_EXPN,
    CMD_STARTTLS,
};

static const struct {
    const char *verb;
    enum smtp_cmd cmd;
} smtp_commands[] = {
    {"EHLO", CMD_EHLO},         {"HELO", CMD_HELO}, {"AUTH", CMD_AUTH}, {"MAIL", CMD_MAIL},
    {"RCPT", CMD_RCPT},         {"DATA", CMD_DATA}, {"RSET", CMD_RSET}, {"NOOP", CMD_NOOP},
    {"QUIT", CMD_QUIT},         {"HELP", CMD_HELP}, {"VRFY", CMD_VRFY}, {"EXPN", CMD_EXPN},
    {"STARTTLS", CMD_STARTTLS},
};

static void session_process(struct session *s);
static void on_delay(evutil_socket_t fd, short what, void *arg);

/* ------------------------------------------------------------------------------------------
 * Hash set, random numbers, text helpers
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

static char *lower_dup(const char *s)
{
    char *d = xstrdup(s);
    for (char *p = d; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return d;
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

/* Base64 into out (at most outsz bytes). strict: only the alphabet and trailing '=' allowed;
 * otherwise whitespace and other bytes are skipped (MIME bodies). Returns false if malformed or
 * too long (strict), or when out filled up (lenient: the rest is dropped). */
static bool b64_decode(const char *in, size_t n, bool strict, char *out, size_t outsz,
                       size_t *outlen)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;
    if (strict)
        while (n > 0 && in[n - 1] == '=')
            n--;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value(in[i]);
        if (v < 0) {
            if (strict)
                return false;
            if (in[i] == '=')
                break;
            continue;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == outsz) {
                *outlen = o;
                return false;
            }
            out[o++] = (char)(acc >> bits & 0xff);
        }
    }
    *outlen = o;
    return !strict || bits < 6;
}

/* Quoted-printable (RFC 2045) into out; soft line breaks removed. Returns the length. */
static size_t qp_decode(const char *in, size_t n, char *out, size_t outsz)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o < outsz; i++) {
        int hi, lo;
        if (in[i] != '=') {
            out[o++] = in[i];
        } else if (i + 1 < n && in[i + 1] == '\n') {
            i += 1;
        } else if (i + 2 < n && in[i + 1] == '\r' && in[i + 2] == '\n') {
            i += 2;
        } else if (i + 2 < n && (hi = hex_value(in[i + 1])) >= 0 &&
                   (lo = hex_value(in[i + 2])) >= 0) {
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[o++] = '=';
        }
    }
    return o;
}

/* Adds s[0..n) under name, replacing invalid UTF-8 with U+FFFD so the record stays valid JSON. */
static void add_text_n(cJSON *o, const char *name, const char *s, size_t n)
{
    if (!s) {
        cJSON_AddNullToObject(o, name);
        return;
    }
    const unsigned char *p = (const unsigned char *)s;
    size_t o_len = 0;
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
        bool ok = len > 0 && i + len <= n && (len > 1 || p[i] != 0);
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

static void add_text(cJSON *o, const char *name, const char *s)
{
    add_text_n(o, name, s, s ? strlen(s) : 0);
}

/* ------------------------------------------------------------------------------------------
 * Message parsing: headers, RFC 2047 words, MIME structure
 * ------------------------------------------------------------------------------------------ */

struct header {
    char *name;  /* heap */
    char *value; /* heap, unfolded, trimmed */
};

struct headers {
    struct header *v;
    size_t n, cap;
};

static void headers_cleanup(struct headers *h)
{
    for (size_t i = 0; i < h->n; i++) {
        free(h->v[i].name);
        free(h->v[i].value);
    }
    free(h->v);
    *h = (struct headers){0};
}

static char *trim_dup(const char *p, size_t n)
{
    while (n > 0 && (*p == ' ' || *p == '\t'))
        p++, n--;
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r'))
        n--;
    return xstrndup(p, n);
}

/* Parses the header block at p (CRLF or LF line ends) into h. Returns the offset where the body
 * starts: after the empty line, or at the first line that is not a header. */
static size_t headers_parse(const char *p, size_t n, struct headers *h)
{
    size_t i = 0;
    *h = (struct headers){0};
    while (i < n) {
        const char *nl = memchr(p + i, '\n', n - i);
        size_t end = nl ? (size_t)(nl - p) : n; /* index of '\n' (or n) */
        size_t len = end - i;
        if (len > 0 && p[end - 1] == '\r')
            len--;
        size_t next = nl ? end + 1 : n;
        if (len == 0)
            return next;
        if ((p[i] == ' ' || p[i] == '\t') && h->n > 0) {
            struct header *last = &h->v[h->n - 1];
            char *more = trim_dup(p + i, len);
            char *joined = xasprintf("%s %s", last->value, more);
            free(more);
            free(last->value);
            last->value = joined;
            i = next;
            continue;
        }
        const char *colon = memchr(p + i, ':', len);
        if (!colon || colon == p + i)
            return i;
        if (h->n == h->cap) {
            h->cap = h->cap ? h->cap * 2 : 16;
            h->v = xrealloc(h->v, h->cap * sizeof(*h->v));
        }
        size_t nlen = (size_t)(colon - (p + i));
        h->v[h->n].name = trim_dup(p + i, nlen);
        h->v[h->n].value = trim_dup(colon + 1, len - nlen - 1);
        h->n++;
        i = next;
    }
    return n;
}

static const char *headers_get(const struct headers *h, const char *name)
{
    for (size_t i = 0; i < h->n; i++)
        if (strcasecmp(h->v[i].name, name) == 0)
            return h->v[i].value;
    return NULL;
}

/* Media type (lower case, "text/plain" when absent) and boundary parameter of a Content-Type. */
static void content_type_parse(const char *v, char type[MIME_MAX_TYPE],
                               char boundary[MIME_MAX_BOUNDARY])
{
    boundary[0] = '\0';
    if (!v) {
        snprintf(type, MIME_MAX_TYPE, "text/plain");
        return;
    }
    size_t tl = strcspn(v, "; \t");
    snprintf(type, MIME_MAX_TYPE, "%.*s", (int)(tl < MIME_MAX_TYPE ? tl : MIME_MAX_TYPE - 1), v);
    for (char *c = type; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');
    const char *p = v + tl;
    while (*p) {
        p += strspn(p, "; \t");
        size_t nl = strcspn(p, "=; \t");
        const char *name = p;
        p += nl;
        p += strspn(p, " \t");
        if (*p != '=')
            continue;
        p++;
        p += strspn(p, " \t");
        const char *val;
        size_t vl;
        if (*p == '"') {
            val = ++p;
            vl = strcspn(p, "\"");
            p += vl;
            if (*p == '"')
                p++;
        } else {
            val = p;
            vl = strcspn(p, "; \t");
            p += vl;
        }
        if (nl == 8 && strncasecmp(name, "boundary", 8) == 0 && vl > 0 && vl < MIME_MAX_BOUNDARY) {
            memcpy(boundary, val, vl);
            boundary[vl] = '\0';
        }
    }
}

/* Decodes RFC 2047 encoded words (B and Q) in a header value; the bytes are taken as they are
 * (UTF-8 expected). Whitespace between two adjacent encoded words is dropped. Caller frees. */
static char *rfc2047_decode(const char *s)
{
    size_t n = strlen(s), o = 0;
    char *out = xmalloc(n + 1);
    size_t pending_ws = 0; /* whitespace after an encoded word, written only if text follows */
    const char *ws_at = NULL;
    bool after_word = false;
    for (size_t i = 0; i < n;) {
        if (s[i] == '=' && s[i + 1] == '?') {
            const char *cs = s + i + 2;
            const char *q1 = strchr(cs, '?');
            const char *q2 = q1 && q1[1] && q1[2] == '?' ? q1 + 2 : NULL;
            const char *end = q2 ? strstr(q2 + 1, "?=") : NULL;
            char enc = q1 ? (char)(q1[1] | 0x20) : 0;
            if (end && (enc == 'b' || enc == 'q')) {
                const char *t = q2 + 1;
                size_t tl = (size_t)(end - t), dl = 0;
                if (enc == 'b') {
                    (void)b64_decode(t, tl, false, out + o, n - o, &dl);
                } else {
                    for (size_t k = 0; k < tl && o + dl < n; k++) {
                        int hi, lo;
                        if (t[k] == '_') {
                            out[o + dl++] = ' ';
                        } else if (t[k] == '=' && k + 2 < tl && (hi = hex_value(t[k + 1])) >= 0 &&
                                   (lo = hex_value(t[k + 2])) >= 0) {
                            out[o + dl++] = (char)(hi << 4 | lo);
                            k += 2;
                        } else {
                            out[o + dl++] = t[k];
                        }
                    }
                }
                o += dl;
                i = (size_t)(end + 2 - s);
                after_word = true;
                pending_ws = 0;
                continue;
            }
        }
        if (after_word && (s[i] == ' ' || s[i] == '\t')) {
            if (pending_ws == 0)
                ws_at = s + i;
            pending_ws++;
            i++;
            continue;
        }
        if (pending_ws) {
            memcpy(out + o, ws_at, pending_ws);
            o += pending_ws;
            pending_ws = 0;
        }
        after_word = false;
        out[o++] = s[i++];
    }
    out[o] = '\0';
    return out;
}

/* What the MIME walk found. */
struct mime_info {
    bool alternative;       /* a multipart/alternative entity somewhere */
    bool alt_plain;         /* ... with a text/plain child */
    bool alt_html;          /* ... with a text/html child */
    bool plain_before_html; /* ... in that order */
    cJSON *parts;           /* leaf media types, in order */
    char *text, *html;      /* first decoded bodies (--record-bodies), heap */
    size_t text_len, html_len;
};

/* The decoded body of a leaf part (Content-Transfer-Encoding undone), capped. Caller frees. */
static char *mime_decode_body(const struct headers *h, const char *body, size_t n, size_t *len)
{
    const char *cte = headers_get(h, "Content-Transfer-Encoding");
    char *out = xmalloc(FAKE_RECORD_BODY_MAX + 1);
    if (cte && strcasecmp(cte, "base64") == 0)
        (void)b64_decode(body, n, false, out, FAKE_RECORD_BODY_MAX, len);
    else if (cte && strcasecmp(cte, "quoted-printable") == 0)
        *len = qp_decode(body, n, out, FAKE_RECORD_BODY_MAX);
    else {
        *len = n < FAKE_RECORD_BODY_MAX ? n : FAKE_RECORD_BODY_MAX;
        memcpy(out, body, *len);
    }
    out[*len] = '\0';
    return out;
}

/* Finds the next delimiter line "--boundary" at or after *pos (at a line start). Returns its
 * start, sets *after to the first byte after the line and *close when it is "--boundary--";
 * NULL when there is none. */
static const char *mime_next_delimiter(const char *p, size_t n, size_t pos, const char *boundary,
                                       size_t *after, bool *close)
{
    size_t bl = strlen(boundary);
    while (pos < n) {
        if (n - pos >= bl + 2 && p[pos] == '-' && p[pos + 1] == '-' &&
            memcmp(p + pos + 2, boundary, bl) == 0) {
            size_t k = pos + 2 + bl;
            *close = n - k >= 2 && p[k] == '-' && p[k + 1] == '-';
            const char *nl = memchr(p + k, '\n', n - k);
            *after = nl ? (size_t)(nl - p) + 1 : n;
            return p + pos;
        }
        const char *nl = memchr(p + pos, '\n', n - pos);
        if (!nl)
            break;
        pos = (size_t)(nl - p) + 1;
    }
    return NULL;
}

/* Walks one entity; writes its media type to type. */
static void mime_walk(const char *p, size_t n, int depth, bool bodies, struct mime_info *mi,
                      char type[MIME_MAX_TYPE])
{
    struct headers h;
    char boundary[MIME_MAX_BOUNDARY];
    size_t body = headers_parse(p, n, &h);
    content_type_parse(headers_get(&h, "Content-Type"), type, boundary);
    if (strncmp(type, "multipart/", 10) == 0 && boundary[0] && depth < MIME_MAX_DEPTH) {
        bool alternative = strcmp(type, "multipart/alternative") == 0, close = false;
        int index = 0, plain_at = -1, html_at = -1;
        size_t pos = body, after;
        const char *d = mime_next_delimiter(p, n, pos, boundary, &after, &close);
        while (d && !close) {
            size_t start = after;
            const char *e = mime_next_delimiter(p, n, start, boundary, &after, &close);
            size_t end = e ? (size_t)(e - p) : n;
            /* The CRLF before a delimiter belongs to the delimiter. */
            if (end > start && p[end - 1] == '\n')
                end--;
            if (end > start && p[end - 1] == '\r')
                end--;
            char child[MIME_MAX_TYPE];
            mime_walk(p + start, end - start, depth + 1, bodies, mi, child);
            if (strcmp(child, "text/plain") == 0 && plain_at < 0)
                plain_at = index;
            if (strcmp(child, "text/html") == 0 && html_at < 0)
                html_at = index;
            index++;
            d = e;
        }
        if (alternative && !mi->alternative) {
            mi->alternative = true;
            mi->alt_plain = plain_at >= 0;
            mi->alt_html = html_at >= 0;
            mi->plain_before_html = plain_at >= 0 && html_at > plain_at;
        }
    } else {
        cJSON_AddItemToArray(mi->parts, cJSON_CreateString(type));
        if (bodies && strcmp(type, "text/plain") == 0 && !mi->text)
            mi->text = mime_decode_body(&h, p + body, n - body, &mi->text_len);
        else if (bodies && strcmp(type, "text/html") == 0 && !mi->html)
            mi->html = mime_decode_body(&h, p + body, n - body, &mi->html_len);
    }
    headers_cleanup(&h);
}

/* ------------------------------------------------------------------------------------------
 * Accepting, counting, recording
 * ------------------------------------------------------------------------------------------ */

static void make_queue_id(struct app *app, char out[17])
{
    snprintf(out, 17, "%016" PRIX64, splitmix64(&app->id_state));
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
        fprintf(stderr, "fake-smtp: writing %s failed: %s; recording stopped\n",
                app->cfg->record_path, strerror(errno));
        app->record_failed = true;
    }
    cJSON_free(text);
}

/* Counts and records the received message once per recipient; writes the queue id. */
static void message_accept(struct session *s, bool reply_lost, char queue_id[17])
{
    struct app *app = s->app;
    size_t n = evbuffer_get_length(s->data);
    const char *msg = n ? (const char *)evbuffer_pullup(s->data, -1) : "";
    bool bodies = app->cfg->record_bodies;
    struct headers h;
    struct mime_info mi = {.parts = cJSON_CreateArray()};
    char type[MIME_MAX_TYPE];
    (void)headers_parse(msg, n, &h);
    mime_walk(msg, n, 0, bodies, &mi, type);
    const char *raw_subject = headers_get(&h, "Subject");
    char *subject = raw_subject ? rfc2047_decode(raw_subject) : NULL;
    const char *delivery = headers_get(&h, "X-Crier-Delivery");

    make_queue_id(app, queue_id);
    app->stats.accepted_transactions++;
    for (size_t i = 0; i < s->n_rcpt; i++) {
        bool dup = count_message(app, s->rcpt[i], delivery, subject);
        if (!app->record || app->record_failed)
            continue;
        cJSON *line = cJSON_CreateObject();
        cJSON_AddStringToObject(line, "queue_id", queue_id);
        add_text(line, "mail_from", s->mail_from);
        add_text(line, "to", s->rcpt[i]);
        add_text(line, "header_to", headers_get(&h, "To"));
        add_text(line, "from", headers_get(&h, "From"));
        add_text(line, "subject", subject);
        add_text(line, "message_id", headers_get(&h, "Message-ID"));
        add_text(line, "list_unsubscribe", headers_get(&h, "List-Unsubscribe"));
        add_text(line, "list_unsubscribe_post", headers_get(&h, "List-Unsubscribe-Post"));
        add_text(line, "delivery_id", delivery);
        cJSON_AddStringToObject(line, "content_type", type);
        cJSON_AddBoolToObject(line, "multipart_alternative", mi.alternative);
        cJSON_AddBoolToObject(line, "text_plain", mi.alt_plain);
        cJSON_AddBoolToObject(line, "text_html", mi.alt_html);
        cJSON_AddBoolToObject(line, "plain_before_html", mi.plain_before_html);
        cJSON_AddItemToObject(line, "parts", cJSON_Duplicate(mi.parts, true));
        cJSON_AddNumberToObject(line, "size", (double)n);
        cJSON_AddBoolToObject(line, "duplicate", dup);
        cJSON_AddBoolToObject(line, "reply_lost", reply_lost);
        if (bodies) {
            add_text_n(line, "text", mi.text, mi.text_len);
            add_text_n(line, "html", mi.html, mi.html_len);
        }
        record_line(app, line);
        cJSON_Delete(line);
    }
    free(subject);
    free(mi.text);
    free(mi.html);
    cJSON_Delete(mi.parts);
    headers_cleanup(&h);
}

/* ------------------------------------------------------------------------------------------
 * Sessions: state, replies, closing
 * ------------------------------------------------------------------------------------------ */

static bool state_held(enum smtp_state st)
{
    return st == SMTP_DATA_WAIT || st == SMTP_HELD;
}

/* The one place the state changes; keeps the held gauge. */
static void session_set_state(struct session *s, enum smtp_state to)
{
    if (state_held(s->state) && !state_held(to))
        s->app->sessions_held--;
    else if (!state_held(s->state) && state_held(to))
        s->app->sessions_held++;
    s->state = to;
}

static void session_reply(struct session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void session_reply(struct session *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(bufferevent_get_output(s->bev), fmt, ap);
    va_end(ap);
}

/* Replies with an error; the session is closed after too many. Returns false if closing. */
static bool session_error(struct session *s, const char *reply);

static void transaction_reset(struct session *s)
{
    free(s->mail_from);
    s->mail_from = NULL;
    for (size_t i = 0; i < s->n_rcpt; i++)
        free(s->rcpt[i]);
    s->n_rcpt = 0;
    evbuffer_drain(s->data, evbuffer_get_length(s->data));
    s->data_too_big = false;
}

/* Stops all I/O and queues the session for freeing after this loop turn. */
static void session_close(struct session *s)
{
    struct app *app = s->app;
    if (s->state == SMTP_CLOSED)
        return;
    session_set_state(s, SMTP_CLOSED);
    bufferevent_disable(s->bev, EV_READ | EV_WRITE);
    if (s->delay)
        event_del(s->delay);
    if (s->prev)
        s->prev->next = s->next;
    else
        app->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = NULL;
    s->next = app->closed;
    app->closed = s;
    app->sessions_open--;
    event_active(app->sweep, 0, 0);
}

/* Closes once the output is written. */
static void session_close_after_flush(struct session *s)
{
    session_set_state(s, SMTP_CLOSING);
    bufferevent_disable(s->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
        session_close(s);
}

static bool session_error(struct session *s, const char *reply)
{
    s->app->stats.command_errors++;
    session_reply(s, "%s", reply);
    if (++s->errors < SMTP_MAX_ERRORS)
        return true;
    session_reply(s, REPLY_TOO_MANY_ERRORS, s->app->cfg->hostname);
    session_close_after_flush(s);
    return false;
}

static void session_free(struct session *s)
{
    transaction_reset(s);
    free(s->rcpt);
    free(s->login_user);
    if (s->delay)
        event_free(s->delay);
    if (s->data)
        evbuffer_free(s->data);
    if (s->bev)
        bufferevent_free(s->bev);
    free(s);
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    struct app *app = arg;
    (void)fd;
    (void)what;
    while (app->closed) {
        struct session *s = app->closed;
        app->closed = s->next;
        session_free(s);
    }
}

/* ------------------------------------------------------------------------------------------
 * Fault plan: the knobs, their checks, and one decision per DATA end
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
    KNOB_FRAC(p4xx, "p4xx", "fraction of DATA ends answered 451 4.3.0 (temporary)"),
    KNOB_FRAC(p5xx, "p5xx", "fraction of DATA ends answered 554 5.6.0 (permanent)"),
    KNOB_FRAC(ptimeout, "ptimeout", "fraction of DATA ends never answered, not recorded"),
    KNOB_FRAC(paccept_timeout, "paccept-timeout", "fraction recorded, then closed without 250"),
    KNOB_INT(latency_ms, "latency-ms", 0, 600000, "delay before every DATA outcome (0)"),
    KNOB_INT(timeout_ms, "timeout-ms", 1, 3600000,
             "how long a withheld DATA end keeps its connection before it is closed (20000)"),
    KNOB_INT(seed, "seed", 0, FAKE_SEED_MAX, "seed of the fault draws (default: the clock)"),
};
#define FAULT_NKNOBS (sizeof(fault_knobs) / sizeof(fault_knobs[0]))

static void fault_config_defaults(struct fault_config *fc)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    *fc = (struct fault_config){
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
    if (fc->p4xx + fc->p5xx + fc->ptimeout + fc->paccept_timeout > 1.0 + 1e-9)
        return xstrdup("p4xx + p5xx + ptimeout + paccept_timeout must not exceed 1");
    return NULL;
}

static void fault_config_commit(struct app *app, const struct fault_config *fc, bool reseed)
{
    app->faults = *fc;
    app->faults_active =
        fc->p4xx > 0 || fc->p5xx > 0 || fc->ptimeout > 0 || fc->paccept_timeout > 0;
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

/* ------------------------------------------------------------------------------------------
 * Sessions: the end of DATA, faults, latency
 * ------------------------------------------------------------------------------------------ */

/* One draw per DATA end when some fraction is set; none otherwise. */
static enum fault_action fault_roll(struct app *app)
{
    if (!app->faults_active)
        return FAULT_NONE;
    const struct fault_config *fc = &app->faults;
    double u = rng_unit(&app->rng);
    if (u < fc->p4xx)
        return FAULT_4XX;
    u -= fc->p4xx;
    if (u < fc->p5xx)
        return FAULT_5XX;
    u -= fc->p5xx;
    if (u < fc->ptimeout)
        return FAULT_TIMEOUT;
    u -= fc->ptimeout;
    if (u < fc->paccept_timeout)
        return FAULT_ACCEPT_TIMEOUT;
    return FAULT_NONE;
}

/* Arms the session's timer (latency or withheld-reply timeout). */
static void session_timer_arm(struct session *s, long long ms)
{
    if (!s->delay) {
        s->delay = evtimer_new(s->app->base, on_delay, s);
        if (!s->delay) {
            fprintf(stderr, "fatal: out of memory creating a timer\n");
            abort();
        }
    }
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(s->delay, &tv);
}

/* Carries out a DATA end's outcome: reply and back to READY, or close. resume: called from a
 * timer, so input that waited meanwhile is handled here (otherwise the caller's loop does). */
static void pending_run(struct session *s, bool resume)
{
    if (s->pending == PENDING_CLOSE) {
        session_close(s);
        return;
    }
    session_reply(s, "%s", s->pending_reply);
    session_set_state(s, SMTP_READY);
    if (resume)
        session_process(s);
}

static void on_delay(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    (void)fd;
    (void)what;
    if (s->state == SMTP_DATA_WAIT)
        pending_run(s, true);
    else if (s->state == SMTP_HELD)
        session_close(s); /* timeout_ms passed: drop the connection without a reply */
}

/* Schedules (latency_ms) or runs the outcome of a DATA end. */
static void pending_set(struct session *s, enum pending_action action, const char *reply)
{
    struct app *app = s->app;
    s->pending = action;
    snprintf(s->pending_reply, sizeof(s->pending_reply), "%s", reply ? reply : "");
    if (app->faults.latency_ms == 0) {
        pending_run(s, false);
        return;
    }
    app->stats.faults_latency++;
    session_set_state(s, SMTP_DATA_WAIT);
    session_timer_arm(s, app->faults.latency_ms);
}

static void data_end(struct session *s)
{
    struct app *app = s->app;
    char queue_id[17], reply[64];
    app->stats.requests++;
    session_set_state(s, SMTP_DATA_WAIT); /* no input is read until the outcome */
    if (s->data_too_big) {
        app->stats.rejected++;
        transaction_reset(s);
        pending_set(s, PENDING_REPLY, REPLY_TOO_BIG);
        return;
    }
    switch (fault_roll(app)) {
    case FAULT_4XX:
        app->stats.faults_4xx++;
        transaction_reset(s);
        pending_set(s, PENDING_REPLY, REPLY_FAULT_4XX);
        return;
    case FAULT_5XX:
        app->stats.faults_5xx++;
        transaction_reset(s);
        pending_set(s, PENDING_REPLY, REPLY_FAULT_5XX);
        return;
    case FAULT_TIMEOUT:
        app->stats.faults_timeout++;
        transaction_reset(s);
        session_set_state(s, SMTP_HELD);
        session_timer_arm(s, app->faults.timeout_ms);
        return;
    case FAULT_ACCEPT_TIMEOUT:
        app->stats.faults_accept_timeout++;
        message_accept(s, true, queue_id);
        transaction_reset(s);
        pending_set(s, PENDING_CLOSE, NULL);
        return;
    case FAULT_NONE:
        break;
    }
    message_accept(s, false, queue_id);
    transaction_reset(s);
    snprintf(reply, sizeof(reply), REPLY_QUEUED, queue_id);
    pending_set(s, PENDING_REPLY, reply);
}

/* One line of the message (without its line end). */
static void data_line(struct session *s, const char *line, size_t len)
{
    if (len == 1 && line[0] == '.') {
        data_end(s);
        return;
    }
    if (len > 0 && line[0] == '.') { /* dot-stuffing (RFC 5321 4.5.2) */
        line++;
        len--;
    }
    if (s->data_too_big)
        return;
    if (evbuffer_get_length(s->data) + len + 2 > s->app->cfg->max_size) {
        s->data_too_big = true;
        evbuffer_drain(s->data, evbuffer_get_length(s->data));
        return;
    }
    evbuffer_add(s->data, line, len);
    evbuffer_add(s->data, "\r\n", 2);
}

/* ------------------------------------------------------------------------------------------
 * Sessions: commands
 * ------------------------------------------------------------------------------------------ */

static enum smtp_cmd command_of(const char *line, size_t *verb_len)
{
    size_t n = strcspn(line, " ");
    *verb_len = n;
    for (size_t i = 0; i < sizeof(smtp_commands) / sizeof(smtp_commands[0]); i++)
        if (strlen(smtp_commands[i].verb) == n && strncasecmp(line, smtp_commands[i].verb, n) == 0)
            return smtp_commands[i].cmd;
    return CMD_UNKNOWN;
}

/* Parses "<path> params" after "FROM:" / "TO:"; returns the address (heap, may be "") and
 * points *params at what follows, or returns NULL on bad syntax. */
static char *parse_path(const char *arg, const char *keyword, const char **params)
{
    size_t kl = strlen(keyword);
    if (strncasecmp(arg, keyword, kl) != 0)
        return NULL;
    arg += kl;
    arg += strspn(arg, " ");
    if (*arg != '<')
        return NULL;
    const char *end = strchr(arg, '>');
    if (!end)
        return NULL;
    const char *addr = arg + 1;
    size_t al = (size_t)(end - addr);
    const char *colon = memchr(addr, ':', al); /* drop a source route: <@a,@b:user@d> */
    if (al > 0 && addr[0] == '@' && colon) {
        al -= (size_t)(colon + 1 - addr);
        addr = colon + 1;
    }
    for (size_t i = 0; i < al; i++)
        if (addr[i] == ' ' || addr[i] == '<')
            return NULL;
    *params = end + 1;
    return xstrndup(addr, al);
}

/* MAIL parameters: SIZE=n and BODY=7BIT|8BITMIME (ESMTP only); AUTH= ignored. Sends the
 * error reply and returns false when one is refused. */
static bool mail_params_ok_or_reply(struct session *s, const char *p)
{
    const char *err = NULL;
    while (!err && *(p += strspn(p, " "))) {
        size_t len = strcspn(p, " ");
        const char *eq = memchr(p, '=', len);
        size_t nl = eq ? (size_t)(eq - p) : len;
        const char *v = eq ? eq + 1 : "";
        size_t vl = eq ? len - nl - 1 : 0;
        if (!s->esmtp) {
            err = REPLY_PARAM;
        } else if (nl == 4 && strncasecmp(p, "SIZE", 4) == 0) {
            char num[32];
            char *end;
            snprintf(num, sizeof(num), "%.*s", (int)(vl < 31 ? vl : 31), v);
            errno = 0;
            unsigned long long size = strtoull(num, &end, 10);
            if (vl == 0 || vl > 20 || *end || errno || num[0] == '-')
                err = REPLY_SYNTAX_MAIL;
            else if (size > s->app->cfg->max_size)
                err = REPLY_TOO_BIG;
        } else if (nl == 4 && strncasecmp(p, "BODY", 4) == 0) {
            if (!((vl == 4 && strncasecmp(v, "7BIT", 4) == 0) ||
                  (vl == 8 && strncasecmp(v, "8BITMIME", 8) == 0)))
                err = REPLY_SYNTAX_MAIL;
        } else if (!(nl == 4 && strncasecmp(p, "AUTH", 4) == 0)) {
            err = REPLY_PARAM;
        }
        p += len;
    }
    if (err)
        (void)session_error(s, err);
    return err == NULL;
}

/* AUTH PLAIN response: authzid NUL authcid NUL passwd. */
static bool auth_plain_ok(const struct app *app, const char *b64, bool *decoded)
{
    char buf[SMTP_MAX_CREDENTIAL];
    size_t n;
    *decoded = b64_decode(b64, strlen(b64), true, buf, sizeof(buf), &n);
    if (!*decoded)
        return false;
    const char *z1 = memchr(buf, '\0', n);
    const char *z2 = z1 ? memchr(z1 + 1, '\0', n - (size_t)(z1 + 1 - buf)) : NULL;
    if (!z2)
        return false;
    const char *authz = buf, *user = z1 + 1, *pass = z2 + 1;
    size_t azl = (size_t)(z1 - authz), ul = (size_t)(z2 - user), pl = n - (size_t)(pass - buf);
    const char *cu = app->cfg->user, *cp = app->cfg->pass;
    bool user_ok = secret_equal(user, ul, cu, strlen(cu));
    bool pass_ok = secret_equal(pass, pl, cp, strlen(cp)); /* compared even if user_ok fails */
    return user_ok && pass_ok && (azl == 0 || (azl == ul && memcmp(authz, user, ul) == 0));
}

/* Ends an AUTH exchange. */
static void auth_finish(struct session *s, bool ok)
{
    free(s->login_user);
    s->login_user = NULL;
    session_set_state(s, SMTP_READY);
    if (ok) {
        s->authed = true;
        session_reply(s, REPLY_AUTH_OK);
        return;
    }
    s->app->stats.auth_failures++;
    (void)session_error(s, REPLY_AUTH_FAILED);
}

/* A line while an AUTH exchange waits for the client. */
static void auth_response(struct session *s, const char *line)
{
    char buf[SMTP_MAX_CREDENTIAL];
    size_t n;
    bool decoded;
    if (strcmp(line, "*") == 0) {
        free(s->login_user);
        s->login_user = NULL;
        session_set_state(s, SMTP_READY);
        (void)session_error(s, REPLY_AUTH_CANCELLED);
        return;
    }
    switch (s->state) {
    case SMTP_AUTH_PLAIN: {
        bool ok = auth_plain_ok(s->app, line, &decoded);
        if (!decoded) {
            session_set_state(s, SMTP_READY);
            (void)session_error(s, REPLY_AUTH_BAD64);
            return;
        }
        auth_finish(s, ok);
        return;
    }
    case SMTP_AUTH_LOGIN_USER:
        if (!b64_decode(line, strlen(line), true, buf, sizeof(buf) - 1, &n)) {
            session_set_state(s, SMTP_READY);
            (void)session_error(s, REPLY_AUTH_BAD64);
            return;
        }
        free(s->login_user);
        s->login_user = xstrndup(buf, n);
        session_set_state(s, SMTP_AUTH_LOGIN_PASS);
        session_reply(s, REPLY_AUTH_PASSWORD);
        return;
    case SMTP_AUTH_LOGIN_PASS: {
        if (!b64_decode(line, strlen(line), true, buf, sizeof(buf), &n)) {
            free(s->login_user);
            s->login_user = NULL;
            session_set_state(s, SMTP_READY);
            (void)session_error(s, REPLY_AUTH_BAD64);
            return;
        }
        const char *cu = s->app->cfg->user, *cp = s->app->cfg->pass;
        bool user_ok = secret_equal(s->login_user, strlen(s->login_user), cu, strlen(cu));
        bool pass_ok = secret_equal(buf, n, cp, strlen(cp));
        bool ok = user_ok && pass_ok;
        auth_finish(s, ok);
        return;
    }
    default:
        return;
    }
}

/* AUTH mechanism [initial-response] */
static void cmd_auth(struct session *s, const char *arg)
{
    if (!s->esmtp) {
        (void)session_error(s, s->state == SMTP_GREETED ? REPLY_SEQ_HELO : REPLY_SEQ_NOESMTP);
        return;
    }
    if (s->authed || s->state != SMTP_READY) {
        (void)session_error(s, REPLY_SEQ_AUTH);
        return;
    }
    size_t ml = strcspn(arg, " ");
    const char *ir = arg + ml;
    ir += strspn(ir, " ");
    bool has_ir = *ir != '\0';
    if (has_ir && strcmp(ir, "=") == 0)
        ir = ""; /* RFC 4954: "=" is an empty initial response */
    if (ml == 5 && strncasecmp(arg, "PLAIN", 5) == 0) {
        session_set_state(s, SMTP_AUTH_PLAIN);
        if (has_ir)
            auth_response(s, ir);
        else
            session_reply(s, REPLY_AUTH_PROMPT);
    } else if (ml == 5 && strncasecmp(arg, "LOGIN", 5) == 0) {
        session_set_state(s, SMTP_AUTH_LOGIN_USER);
        if (has_ir)
            auth_response(s, ir);
        else
            session_reply(s, REPLY_AUTH_USERNAME);
    } else {
        (void)session_error(s, REPLY_AUTH_MECH);
    }
}

static void cmd_mail(struct session *s, const char *arg)
{
    const char *params;
    if (s->state == SMTP_GREETED) {
        (void)session_error(s, REPLY_SEQ_HELO);
        return;
    }
    if (s->state != SMTP_READY) {
        (void)session_error(s, REPLY_SEQ_NESTED);
        return;
    }
    if (!s->authed && !s->app->cfg->auth_optional) {
        (void)session_error(s, REPLY_AUTH_REQUIRED);
        return;
    }
    char *from = parse_path(arg, "FROM:", &params);
    if (!from) {
        (void)session_error(s, REPLY_SYNTAX_MAIL);
        return;
    }
    if (!mail_params_ok_or_reply(s, params)) {
        free(from);
        return;
    }
    s->mail_from = from;
    session_set_state(s, SMTP_MAIL);
    session_reply(s, REPLY_MAIL_OK);
}

static void cmd_rcpt(struct session *s, const char *arg)
{
    const char *params;
    if (s->state != SMTP_MAIL && s->state != SMTP_RCPT) {
        (void)session_error(s, s->state == SMTP_GREETED ? REPLY_SEQ_HELO : REPLY_SEQ_NEED_MAIL);
        return;
    }
    char *to = parse_path(arg, "TO:", &params); /* DSN parameters are ignored */
    if (!to) {
        (void)session_error(s, REPLY_SYNTAX_RCPT);
        return;
    }
    const char *at = strchr(to, '@');
    if (!(at && at != to && at[1]) && strcasecmp(to, "postmaster") != 0) {
        free(to);
        (void)session_error(s, REPLY_BAD_RCPT);
        return;
    }
    if (s->n_rcpt == SMTP_MAX_RCPT) {
        free(to);
        session_reply(s, REPLY_TOO_MANY_RCPT);
        return;
    }
    if (s->n_rcpt == s->cap_rcpt) {
        s->cap_rcpt = s->cap_rcpt ? s->cap_rcpt * 2 : 4;
        s->rcpt = xrealloc(s->rcpt, s->cap_rcpt * sizeof(*s->rcpt));
    }
    s->rcpt[s->n_rcpt++] = to;
    session_set_state(s, SMTP_RCPT);
    session_reply(s, REPLY_RCPT_OK);
}

static void cmd_hello(struct session *s, const char *arg, bool esmtp)
{
    if (!arg[0]) {
        (void)session_error(s, REPLY_SYNTAX_HELO);
        return;
    }
    transaction_reset(s);
    s->esmtp = esmtp;
    session_set_state(s, SMTP_READY);
    if (esmtp)
        session_reply(s, REPLY_EHLO, s->app->cfg->hostname, arg, s->app->cfg->max_size);
    else
        session_reply(s, REPLY_HELO, s->app->cfg->hostname);
}

/* One command line (without its line end). */
static void command_line(struct session *s, const char *line)
{
    size_t vl;
    enum smtp_cmd cmd = command_of(line, &vl);
    const char *arg = line + vl;
    arg += strspn(arg, " ");
    switch (cmd) {
    case CMD_EHLO:
    case CMD_HELO:
        cmd_hello(s, arg, cmd == CMD_EHLO);
        return;
    case CMD_AUTH:
        cmd_auth(s, arg);
        return;
    case CMD_MAIL:
        cmd_mail(s, arg);
        return;
    case CMD_RCPT:
        cmd_rcpt(s, arg);
        return;
    case CMD_DATA:
        if (s->state != SMTP_RCPT)
            (void)session_error(s, s->state == SMTP_GREETED ? REPLY_SEQ_HELO
                                   : s->state == SMTP_MAIL  ? REPLY_SEQ_NEED_RCPT
                                                            : REPLY_SEQ_NEED_MAIL);
        else if (arg[0])
            (void)session_error(s, REPLY_SYNTAX_ARGS);
        else {
            session_set_state(s, SMTP_DATA);
            session_reply(s, REPLY_DATA_GO);
        }
        return;
    case CMD_RSET:
        transaction_reset(s);
        if (s->state != SMTP_GREETED)
            session_set_state(s, SMTP_READY);
        session_reply(s, REPLY_OK);
        return;
    case CMD_NOOP:
        session_reply(s, REPLY_OK);
        return;
    case CMD_QUIT:
        session_reply(s, REPLY_BYE);
        session_close_after_flush(s);
        return;
    case CMD_HELP:
        session_reply(s, REPLY_HELP);
        return;
    case CMD_VRFY:
        session_reply(s, REPLY_VRFY);
        return;
    case CMD_EXPN:
    case CMD_STARTTLS:
        (void)session_error(s, REPLY_NOT_SUPPORTED);
        return;
    case CMD_UNKNOWN:
        (void)session_error(s, REPLY_UNKNOWN);
        return;
    }
}

/* Handles every complete line the state allows; the rest waits in the input buffer. */
static void session_process(struct session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    for (;;) {
        switch (s->state) {
        case SMTP_DATA_WAIT:
        case SMTP_HELD:
        case SMTP_CLOSING:
        case SMTP_CLOSED:
            return;
        default:
            break;
        }
        size_t len;
        char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
        if (!line) {
            size_t pending = evbuffer_get_length(in);
            if (s->state == SMTP_DATA && pending > SMTP_MAX_DATA_LINE) {
                s->data_too_big = true; /* a line that long is refused with the message */
                evbuffer_drain(s->data, evbuffer_get_length(s->data));
                evbuffer_drain(in, pending);
            } else if (s->state != SMTP_DATA && pending > SMTP_MAX_COMMAND_LINE) {
                s->app->stats.command_errors++;
                session_reply(s, REPLY_LINE_TOO_LONG);
                session_close_after_flush(s);
            }
            return;
        }
        if (s->state == SMTP_DATA)
            data_line(s, line, len);
        else if (len > SMTP_MAX_COMMAND_LINE)
            (void)session_error(s, REPLY_LINE_TOO_LONG);
        else if (s->state == SMTP_AUTH_PLAIN || s->state == SMTP_AUTH_LOGIN_USER ||
                 s->state == SMTP_AUTH_LOGIN_PASS)
            auth_response(s, line);
        else
            command_line(s, line);
        free(line);
    }
}

/* ------------------------------------------------------------------------------------------
 * Sessions: libevent callbacks
 * ------------------------------------------------------------------------------------------ */

static void on_read(struct bufferevent *bev, void *arg)
{
    struct session *s = arg;
    (void)bev;
    session_process(s);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct session *s = arg;
    (void)bev;
    if (s->state == SMTP_CLOSING)
        session_close(s);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct session *s = arg;
    if ((what & BEV_EVENT_TIMEOUT) && s->state != SMTP_HELD && s->state != SMTP_DATA_WAIT &&
        s->state != SMTP_CLOSING) {
        session_reply(s, REPLY_IDLE, s->app->cfg->hostname);
        bufferevent_enable(bev, EV_WRITE);
        session_close_after_flush(s);
        return;
    }
    session_close(s); /* EOF, error, or a timeout while nothing more will be said */
}

static void on_accept(struct evconnlistener *listener, evutil_socket_t fd, struct sockaddr *sa,
                      int socklen, void *arg)
{
    struct app *app = arg;
    (void)listener;
    (void)sa;
    (void)socklen;
    struct bufferevent *bev = bufferevent_socket_new(app->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        evutil_closesocket(fd);
        return;
    }
    struct session *s = xcalloc(1, sizeof(*s));
    s->app = app;
    s->bev = bev;
    s->state = SMTP_GREETED;
    s->data = evbuffer_new();
    if (!s->data) {
        fprintf(stderr, "fatal: out of memory creating a buffer\n");
        abort();
    }
    s->next = app->sessions;
    if (app->sessions)
        app->sessions->prev = s;
    app->sessions = s;
    app->sessions_open++;
    app->stats.connections++;
    struct timeval idle = {.tv_sec = app->cfg->idle_seconds};
    bufferevent_set_timeouts(bev, &idle, NULL);
    bufferevent_setcb(bev, on_read, on_write, on_event, s);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    session_reply(s, REPLY_GREETING, app->cfg->hostname);
}

/* ------------------------------------------------------------------------------------------
 * Control port: /_fake/stats, /_fake/reset, /_fake/config
 * ------------------------------------------------------------------------------------------ */

static void http_reply_cjson(struct evhttp_request *req, int status, cJSON *root)
{
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text) {
        fprintf(stderr, "fatal: out of memory serialising JSON\n");
        abort();
    }
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        fprintf(stderr, "fatal: out of memory creating a buffer\n");
        abort();
    }
    evbuffer_add(b, text, strlen(text));
    cJSON_free(text);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, status, NULL, b);
    evbuffer_free(b);
}

static void http_reply_error(struct evhttp_request *req, int status, const char *message)
{
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "error", message);
    http_reply_cjson(req, status, e);
}

static void record_flush(struct app *app)
{
    if (app->record && !app->record_failed && fflush(app->record) != 0) {
        fprintf(stderr, "fake-smtp: flushing %s failed: %s; recording stopped\n",
                app->cfg->record_path, strerror(errno));
        app->record_failed = true;
    }
}

static void fake_stats(struct app *app, struct evhttp_request *req)
{
    const struct fake_stats *s = &app->stats;
    record_flush(app);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "requests", (double)s->requests);
    cJSON_AddNumberToObject(o, "accepted", (double)s->accepted);
    cJSON_AddNumberToObject(o, "accepted_transactions", (double)s->accepted_transactions);
    cJSON_AddNumberToObject(o, "rejected", (double)s->rejected);
    cJSON_AddNumberToObject(o, "duplicates", (double)s->duplicates);
    cJSON_AddNumberToObject(o, "unique_recipients", (double)app->recipients.count);
    cJSON_AddNumberToObject(o, "connections", (double)s->connections);
    cJSON_AddNumberToObject(o, "sessions", (double)app->sessions_open);
    cJSON_AddNumberToObject(o, "auth_failures", (double)s->auth_failures);
    cJSON_AddNumberToObject(o, "command_errors", (double)s->command_errors);
    cJSON_AddNumberToObject(o, "held", (double)app->sessions_held);
    cJSON_AddNumberToObject(o, "faults_4xx", (double)s->faults_4xx);
    cJSON_AddNumberToObject(o, "faults_5xx", (double)s->faults_5xx);
    cJSON_AddNumberToObject(o, "faults_timeout", (double)s->faults_timeout);
    cJSON_AddNumberToObject(o, "faults_accept_timeout", (double)s->faults_accept_timeout);
    cJSON_AddNumberToObject(o, "faults_latency", (double)s->faults_latency);
    http_reply_cjson(req, FAKE_HTTP_OK, o);
}

static void fake_reset(struct app *app, struct evhttp_request *req)
{
    memset(&app->stats, 0, sizeof(app->stats));
    strset_cleanup(&app->keys);
    strset_cleanup(&app->recipients);
    strset_init(&app->keys);
    strset_init(&app->recipients);
    if (app->record) {
        /* Appending stream: after the truncate, writes land at the new end (offset 0). */
        if (fflush(app->record) != 0 || ftruncate(fileno(app->record), 0) != 0)
            fprintf(stderr, "fake-smtp: truncating %s failed: %s\n", app->cfg->record_path,
                    strerror(errno));
        app->record_failed = false;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "reset", true);
    http_reply_cjson(req, FAKE_HTTP_OK, o);
}

/* POST /_fake/config: a JSON object of knobs, applied as a whole. */
static void fake_config_set(struct app *app, struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    const char *body = n ? (const char *)evbuffer_pullup(in, -1) : "";
    char *err = fault_config_apply_json(app, body, n);
    if (err) {
        http_reply_error(req, FAKE_HTTP_BAD_REQUEST, err);
        free(err);
        return;
    }
    http_reply_cjson(req, FAKE_HTTP_OK, fault_config_json(&app->faults));
}

static void on_http(struct evhttp_request *req, void *arg)
{
    struct app *app = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    if (!path)
        path = "";
    if (strcmp(path, "/_fake/stats") == 0 && method == EVHTTP_REQ_GET)
        fake_stats(app, req);
    else if (strcmp(path, "/_fake/reset") == 0 && method == EVHTTP_REQ_POST)
        fake_reset(app, req);
    else if (strcmp(path, "/_fake/config") == 0 && method == EVHTTP_REQ_GET)
        http_reply_cjson(req, FAKE_HTTP_OK, fault_config_json(&app->faults));
    else if (strcmp(path, "/_fake/config") == 0 && method == EVHTTP_REQ_POST)
        fake_config_set(app, req);
    else
        http_reply_error(req, FAKE_HTTP_NOT_FOUND, "not found");
}

/* ------------------------------------------------------------------------------------------
 * Process: options, listening sockets, port files, signals
 * ------------------------------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: fake-smtp --port N --http-port N [--host 127.0.0.1|::1|localhost]\n"
            "                 [--port-file FILE] [--http-port-file FILE] [--hostname NAME]\n"
            "                 [--user U] [--pass P] [--auth-optional] [--record FILE]\n"
            "                 [--record-bodies] [--max-size BYTES] [--idle-seconds N]\n"
            "                 [FAULT OPTIONS]\n"
            "  --port / --http-port 0 pick free ports, written to the port files and printed as\n"
            "  'listening HOST:PORT' (SMTP) and 'control HOST:PORT' (HTTP) on stdout, then\n"
            "  'fault seed N'. Credentials: --user/--pass, else $FAKE_SMTP_USER /\n"
            "  $FAKE_SMTP_PASS, else " DEFAULT_USER " / " DEFAULT_PASS ".\n"
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
        fprintf(stderr, "fake-smtp: --%s: %s\n", k->opt, err);
        free(err);
        return 2;
    }
    return 0;
}

static bool parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
    char *end;
    if (*s == '-')
        return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v > max)
        return false;
    *out = v;
    return true;
}

static const char *env_or(const char *name, const char *fallback)
{
    const char *v = getenv(name);
    return v && v[0] ? v : fallback;
}

/* Returns 0 on success, 2 (usage error) otherwise; messages go to stderr. */
static int parse_args(int argc, char **argv, struct fake_config *cfg, struct fault_config *fc)
{
    enum {
        OPT_HTTP_PORT = 256,
        OPT_HTTP_PORT_FILE,
        OPT_HOSTNAME,
        OPT_AUTH_OPTIONAL,
        OPT_BODIES,
        OPT_MAX_SIZE,
        OPT_IDLE,
        OPT_KNOB,
    };
    static const struct option base_opts[] = {
        {"port", required_argument, NULL, 'p'},
        {"http-port", required_argument, NULL, OPT_HTTP_PORT},
        {"host", required_argument, NULL, 'H'},
        {"port-file", required_argument, NULL, 'f'},
        {"http-port-file", required_argument, NULL, OPT_HTTP_PORT_FILE},
        {"hostname", required_argument, NULL, OPT_HOSTNAME},
        {"user", required_argument, NULL, 'u'},
        {"pass", required_argument, NULL, 'w'},
        {"auth-optional", no_argument, NULL, OPT_AUTH_OPTIONAL},
        {"record", required_argument, NULL, 'r'},
        {"record-bodies", no_argument, NULL, OPT_BODIES},
        {"max-size", required_argument, NULL, OPT_MAX_SIZE},
        {"idle-seconds", required_argument, NULL, OPT_IDLE},
        {"help", no_argument, NULL, 'h'},
    };
    size_t nbase = sizeof(base_opts) / sizeof(base_opts[0]);
    struct option opts[sizeof(base_opts) / sizeof(base_opts[0]) + FAULT_NKNOBS + 1];
    memcpy(opts, base_opts, sizeof(base_opts));
    for (size_t i = 0; i < FAULT_NKNOBS; i++)
        opts[nbase + i] =
            (struct option){fault_knobs[i].opt, required_argument, NULL, OPT_KNOB + (int)i};
    opts[nbase + FAULT_NKNOBS] = (struct option){NULL, 0, NULL, 0};

    *cfg = (struct fake_config){.host = "127.0.0.1",
                                .port = -1,
                                .http_port = -1,
                                .hostname = DEFAULT_HOSTNAME,
                                .user = env_or("FAKE_SMTP_USER", DEFAULT_USER),
                                .pass = env_or("FAKE_SMTP_PASS", DEFAULT_PASS),
                                .max_size = SMTP_DEFAULT_MAX_SIZE,
                                .idle_seconds = SMTP_DEFAULT_IDLE_SECONDS};
    fault_config_defaults(fc);
    int c;
    unsigned long long u = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        const char *bad = NULL;
        if (c >= OPT_KNOB && c < OPT_KNOB + (int)FAULT_NKNOBS) {
            if (parse_knob_arg(fc, &fault_knobs[c - OPT_KNOB], optarg) != 0)
                return 2;
            continue;
        }
        switch (c) {
        case 'p':
        case OPT_HTTP_PORT:
            if (!parse_uint(optarg, 65535, &u))
                bad = "--port and --http-port must be 0..65535";
            else if (c == 'p')
                cfg->port = (int)u;
            else
                cfg->http_port = (int)u;
            break;
        case 'H':
            if (strcmp(optarg, "127.0.0.1") == 0 || strcmp(optarg, "localhost") == 0)
                cfg->host = "127.0.0.1";
            else if (strcmp(optarg, "::1") == 0)
                cfg->host = "::1";
            else
                bad = "--host: loopback only (127.0.0.1, ::1, localhost)";
            break;
        case 'f':
            cfg->port_file = optarg;
            break;
        case OPT_HTTP_PORT_FILE:
            cfg->http_port_file = optarg;
            break;
        case OPT_HOSTNAME:
            if (!optarg[0] || strpbrk(optarg, " \r\n"))
                bad = "--hostname must be one word";
            cfg->hostname = optarg;
            break;
        case 'u':
            cfg->user = optarg;
            break;
        case 'w':
            cfg->pass = optarg;
            break;
        case OPT_AUTH_OPTIONAL:
            cfg->auth_optional = true;
            break;
        case 'r':
            cfg->record_path = optarg;
            break;
        case OPT_BODIES:
            cfg->record_bodies = true;
            break;
        case OPT_MAX_SIZE:
            if (!parse_uint(optarg, 1UL << 30, &u) || u < 1024)
                bad = "--max-size must be 1024..1073741824";
            else
                cfg->max_size = (unsigned long)u;
            break;
        case OPT_IDLE:
            if (!parse_uint(optarg, 86400, &u) || u == 0)
                bad = "--idle-seconds must be 1..86400";
            else
                cfg->idle_seconds = (unsigned)u;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "fake-smtp: %s\n", bad);
            return 2;
        }
    }
    if (optind != argc || cfg->port < 0 || cfg->http_port < 0) {
        if (cfg->port < 0 || cfg->http_port < 0)
            fprintf(stderr, "fake-smtp: --port and --http-port are required\n");
        usage(stderr);
        return 2;
    }
    char *err = fault_config_check(fc);
    if (err) {
        fprintf(stderr, "fake-smtp: %s\n", err);
        free(err);
        return 2;
    }
    if (!cfg->user[0] || strlen(cfg->user) >= SMTP_MAX_CREDENTIAL ||
        strlen(cfg->pass) >= SMTP_MAX_CREDENTIAL) {
        fprintf(stderr, "fake-smtp: the user must be 1..1023 bytes, the password < 1024\n");
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
        fprintf(stderr, "fake-smtp: writing port file %s: %s\n", path, strerror(errno));
        (void)unlink(tmp);
    }
    free(tmp);
    return rc;
}

static int socket_port(evutil_socket_t fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

/* The SMTP listener on host:port (loopback). */
static struct evconnlistener *smtp_listen(struct app *app)
{
    struct sockaddr_storage ss = {0};
    socklen_t sl;
    const struct fake_config *cfg = app->cfg;
    if (strchr(cfg->host, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)cfg->port);
        a->sin6_addr = in6addr_loopback;
        sl = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)cfg->port);
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sl = sizeof(*a);
    }
    return evconnlistener_new_bind(app->base, on_accept, app,
                                   LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, -1,
                                   (struct sockaddr *)&ss, (int)sl);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct app *app = arg;
    (void)sig;
    (void)what;
    event_base_loopbreak(app->base);
}

static void print_endpoint(const char *label, const char *host, int port)
{
    if (strchr(host, ':'))
        printf("%s [%s]:%d\n", label, host, port);
    else
        printf("%s %s:%d\n", label, host, port);
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
    int port, http_port;
    signal(SIGPIPE, SIG_IGN);
    fault_config_commit(&app, &faults, true);
    app.id_state = random_seed();
    strset_init(&app.keys);
    strset_init(&app.recipients);

    if (cfg.record_path) {
        app.record = fopen(cfg.record_path, "a");
        if (!app.record) {
            fprintf(stderr, "fake-smtp: opening %s: %s\n", cfg.record_path, strerror(errno));
            goto out;
        }
        setvbuf(app.record, NULL, _IOFBF, FAKE_RECORD_BUFFER);
    }

    app.base = event_base_new();
    app.http = app.base ? evhttp_new(app.base) : NULL;
    app.sweep = app.base ? event_new(app.base, -1, 0, on_sweep, &app) : NULL;
    if (!app.http || !app.sweep) {
        fprintf(stderr, "fake-smtp: libevent initialisation failed\n");
        goto out;
    }
    evhttp_set_gencb(app.http, on_http, &app);
    evhttp_set_max_body_size(app.http, FAKE_MAX_CONFIG_BODY);

    app.listener = smtp_listen(&app);
    port = app.listener ? socket_port(evconnlistener_get_fd(app.listener)) : -1;
    if (port < 0) {
        fprintf(stderr, "fake-smtp: cannot listen on %s port %d: %s\n", cfg.host, cfg.port,
                strerror(errno));
        goto out;
    }
    bound = evhttp_bind_socket_with_handle(app.http, cfg.host, (ev_uint16_t)cfg.http_port);
    http_port = bound ? socket_port(evhttp_bound_socket_get_fd(bound)) : -1;
    if (http_port < 0) {
        fprintf(stderr, "fake-smtp: cannot listen on %s port %d (control): %s\n", cfg.host,
                cfg.http_port, strerror(errno));
        goto out;
    }
    if (cfg.port_file && write_port_file(cfg.port_file, port) != 0)
        goto out;
    if (cfg.http_port_file && write_port_file(cfg.http_port_file, http_port) != 0)
        goto out;

    sigterm = evsignal_new(app.base, SIGTERM, on_signal, &app);
    sigint = evsignal_new(app.base, SIGINT, on_signal, &app);
    if (!sigterm || !sigint || evsignal_add(sigterm, NULL) != 0 ||
        evsignal_add(sigint, NULL) != 0) {
        fprintf(stderr, "fake-smtp: cannot install signal handlers\n");
        goto out;
    }

    print_endpoint("listening", cfg.host, port);
    print_endpoint("control", cfg.host, http_port);
    printf("fault seed %lld\n", app.faults.seed);
    fflush(stdout);

    if (event_base_dispatch(app.base) < 0) {
        fprintf(stderr, "fake-smtp: event loop failed\n");
        goto out;
    }
    rc = 0;
out:
    if (app.record) {
        record_flush(&app);
        if (fclose(app.record) != 0 || app.record_failed) {
            fprintf(stderr, "fake-smtp: record file %s is incomplete\n", cfg.record_path);
            rc = 1;
        }
    }
    while (app.sessions)
        session_close(app.sessions);
    if (app.sweep)
        on_sweep(-1, 0, &app);
    if (app.listener)
        evconnlistener_free(app.listener);
    if (sigterm)
        event_free(sigterm);
    if (sigint)
        event_free(sigint);
    if (app.sweep)
        event_free(app.sweep);
    if (app.http)
        evhttp_free(app.http);
    if (app.base)
        event_base_free(app.base);
    strset_cleanup(&app.keys);
    strset_cleanup(&app.recipients);
    return rc;
}
