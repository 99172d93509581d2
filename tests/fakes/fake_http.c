/* fake_http.c - a small HTTP/1.1 server on plain libevent events (see fake_http.h).
 *
 * One struct conn per accepted socket: a read event (persistent, deleted only while a
 * request is held or a reply is blocked), a write event added only while the socket would
 * block, an input buffer that requests are parsed from in place (the request keeps offsets
 * into it, so compacting or growing the buffer never invalidates it), and an output buffer
 * that a reply is composed in and sent from with one send(). Replies reproduce libevent
 * 2.1.12's evhttp byte for byte (evhttp_make_header_response, evhttp_send_error). */
#include "fake_http.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/listener.h>

#include "xalloc.h"

#define FHTTP_MAX_HEAD (64 * 1024) /* request line and headers; more: 400 */
#define FHTTP_MAX_HEADERS 100      /* more: 400 */
#define FHTTP_IN_INITIAL 8192
#define FHTTP_OUT_INITIAL 4096
#define FHTTP_CHUNK_SLACK (64 * 1024) /* chunked framing allowed beyond max_body */

enum fhttp_kind {
    KIND_ALLOWED = 0,    /* one of enum fhttp_method */
    KIND_NOT_IMPLEMENTED /* TRACE, CONNECT or unknown: 501 */
};

struct fhttp_hdr {
    uint32_t name, value; /* offsets from the request's start, NUL-terminated */
};

struct fhttp_request {
    struct fhttp_conn *conn;
    bool head_done; /* request line and headers parsed; waiting for or holding the body */
    enum fhttp_kind kind;
    enum fhttp_method method;
    int major, minor;
    bool proxy;        /* absolute http(s) URI: evhttp treats it as a proxy request */
    bool close;        /* "Connection: close" */
    bool keepalive;    /* "Connection: keep-alive..." */
    bool chunked;      /* Transfer-Encoding: chunked */
    bool body_checked; /* the body's headers (length, Expect) were looked at */
    uint32_t path;     /* offset; UINT32_MAX: "" */
    uint32_t query;    /* offset; UINT32_MAX: none */
    struct fhttp_hdr hdr[FHTTP_MAX_HEADERS];
    unsigned nhdr;
    size_t head_len;   /* through the blank line */
    long long body_cl; /* Content-Length, or 0 */
    size_t body_len;   /* decoded (chunked) or Content-Length */
    size_t consumed;   /* input bytes the whole request took */
    char *rh;          /* reply headers added so far, "Name: value\r\n"... */
    size_t rh_len, rh_cap;
};

struct fhttp_conn {
    struct fhttp_server *srv;
    struct fhttp_conn *prev, *next;
    evutil_socket_t fd;
    struct event *rev, *wev, *closed_ev;
    fhttp_closed_cb closed_cb;
    void *closed_arg;
    char *in;
    size_t in_start, in_len, in_cap; /* unconsumed input: in[in_start .. in_len) */
    char *out;
    size_t out_off, out_len, out_cap; /* unsent output: out[out_off .. out_len) */
    bool reading;                     /* rev added */
    bool writing;                     /* wev added */
    bool busy;                        /* a request is with the handler (answered or not) */
    bool dispatching;                 /* inside conn_process: frees are deferred */
    bool closing;                     /* close once the output is sent */
    bool dead;                        /* free at the end of conn_process */
    struct fhttp_request req;
};

struct fhttp_server {
    struct event_base *base;
    struct evconnlistener *listener;
    int port;
    size_t max_body;
    fhttp_request_cb cb;
    void *arg;
    bool early_close;
    struct fhttp_conn *conns;
};

enum parse_result {
    PARSE_MORE = 0,
    PARSE_OK,
    PARSE_ERROR, /* an error page was queued and the connection will close */
};

static bool conn_process(struct fhttp_conn *c);

/* ------------------------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------------------------ */

/* libevent 2.1's phrases for the statuses this server sends; its class names otherwise. */
static const char *status_phrase(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Request Entity Too Large";
    case 417:
        return "Expectation Failed";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    }
    static const char *const classes[] = {"Informational", "Success", "Redirection", "Client Error",
                                          "Server Error"};
    int k = status / 100 - 1;
    return k >= 0 && k < 5 ? classes[k] : "Unknown Status Class";
}

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define PUT_LIT(p, s) put((p), (s), sizeof(s) - 1)

static char *put_uint(char *p, unsigned long long v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

/* "Date: <RFC 1123>\r\n" for the loop's cached time, formatted once a second. */
static const char *date_header(struct event_base *base, size_t *len)
{
    static time_t made = (time_t)-1;
    static char text[64];
    static size_t n;
    struct timeval tv;
    if (event_base_gettimeofday_cached(base, &tv) != 0)
        tv.tv_sec = time(NULL);
    if (tv.tv_sec != made) {
        struct tm tm;
        time_t t = tv.tv_sec;
        gmtime_r(&t, &tm);
        n = strftime(text, sizeof(text), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        made = tv.tv_sec;
    }
    *len = n;
    return text;
}

static void grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return;
    size_t c = *cap ? *cap : 1024;
    while (c < need)
        c *= 2;
    *buf = xrealloc(*buf, c);
    *cap = c;
}

/* ------------------------------------------------------------------------------------------
 * Connections: events, output, freeing
 * ------------------------------------------------------------------------------------------ */

static void conn_set_reading(struct fhttp_conn *c, bool on)
{
    if (on == c->reading)
        return;
    if (on ? event_add(c->rev, NULL) : event_del(c->rev)) {
        fprintf(stderr, "fatal: fake_http: cannot %s a read event\n", on ? "add" : "delete");
        abort();
    }
    c->reading = on;
}

static void conn_free(struct fhttp_conn *c)
{
    struct fhttp_server *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    /* A fired one-shot event may be freed inside its own callback. */
    if (c->closed_ev)
        event_free(c->closed_ev);
    if (c->rev)
        event_free(c->rev);
    if (c->wev)
        event_free(c->wev);
    shutdown(c->fd, SHUT_WR); /* as evhttp: the FIN goes out before any reset */
    evutil_closesocket(c->fd);
    free(c->in);
    free(c->out);
    free(c->req.rh);
    free(c);
}

/* Frees c now, or at the end of conn_process when inside it. */
static void conn_kill(struct fhttp_conn *c)
{
    if (c->dispatching) {
        c->dead = true;
        return;
    }
    conn_free(c);
}

/* Sends what is pending: 1 all sent, 0 would block (write event armed), -1 failed. */
static int conn_flush(struct fhttp_conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->writing) {
                if (event_add(c->wev, NULL) != 0)
                    return -1;
                c->writing = true;
            }
            return 0;
        }
        return -1;
    }
    c->out_off = c->out_len = 0;
    if (c->writing) {
        event_del(c->wev);
        c->writing = false;
    }
    return 1;
}

static char *out_reserve(struct fhttp_conn *c, size_t n)
{
    grow(&c->out, &c->out_cap, c->out_len + n);
    return c->out + c->out_len;
}

/* ------------------------------------------------------------------------------------------
 * Replies
 * ------------------------------------------------------------------------------------------ */

static bool method_needs_body_reply(const struct fhttp_request *r)
{
    return !(r->kind == KIND_ALLOWED && r->method == FHTTP_HEAD);
}

/* Composes status line, headers and body into the output buffer, as evhttp would, and
 * returns whether the connection closes after it. */
static bool compose_reply(struct fhttp_conn *c, int status, const char *reason, const char *body,
                          size_t len)
{
    struct fhttp_request *r = &c->req;
    if (!reason)
        reason = status_phrase(status);
    size_t rl = strlen(reason), dl;
    const char *date = date_header(c->srv->base, &dl);
    char *start = out_reserve(c, 160 + rl + r->rh_len + dl + len); /* 82 fixed at most */
    char *p = PUT_LIT(start, "HTTP/");
    p = put_uint(p, (unsigned)r->major);
    *p++ = '.';
    p = put_uint(p, (unsigned)r->minor);
    *p++ = ' ';
    p = put_uint(p, (unsigned)status);
    *p++ = ' ';
    p = put(p, reason, rl);
    p = PUT_LIT(p, "\r\n");
    p = put(p, r->rh, r->rh_len);
    bool needs_body = method_needs_body_reply(r);
    bool keepalive = r->keepalive && !r->proxy;
    if (r->major == 1) {
        if (r->minor >= 1)
            p = put(p, date, dl);
        if (r->minor == 0 && keepalive)
            p = PUT_LIT(p, "Connection: keep-alive\r\n");
        if ((r->minor >= 1 || r->keepalive) && needs_body) {
            p = PUT_LIT(p, "Content-Length: ");
            p = put_uint(p, len);
            p = PUT_LIT(p, "\r\n");
        }
    }
    if (r->close && !r->proxy)
        p = PUT_LIT(p, "Connection: close\r\n");
    p = PUT_LIT(p, "\r\n");
    if (needs_body)
        p = put(p, body, len);
    c->out_len += (size_t)(p - start);
    bool before_11 = r->major < 1 || (r->major == 1 && r->minor < 1);
    return (before_11 && !r->keepalive) || r->close || r->proxy;
}

static void rh_add(struct fhttp_request *r, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value);
    grow(&r->rh, &r->rh_cap, r->rh_len + nl + vl + 4);
    char *p = put(r->rh + r->rh_len, name, nl);
    p = PUT_LIT(p, ": ");
    p = put(p, value, vl);
    p = PUT_LIT(p, "\r\n");
    r->rh_len = (size_t)(p - r->rh);
}

/* Resets the request for the next one on the connection. */
static void req_reset(struct fhttp_request *r)
{
    r->head_done = false;
    r->kind = KIND_ALLOWED;
    r->method = FHTTP_GET;
    r->nhdr = 0;
    r->rh_len = 0;
    r->body_len = 0;
    r->close = r->keepalive = r->proxy = r->chunked = false;
}

/* Sends the composed output and settles the connection: closed, waiting for the write, or
 * reading again. */
static void conn_after_reply(struct fhttp_conn *c, bool close)
{
    if (close) {
        c->closing = true;
        conn_set_reading(c, false);
    }
    int fr = conn_flush(c);
    if (fr < 0 || (fr == 1 && c->closing)) {
        conn_kill(c);
        return;
    }
    if (fr == 0) {
        conn_set_reading(c, false); /* until the client takes the reply */
        return;
    }
    if (!c->dispatching) { /* a held request answered later: go on with the input */
        conn_set_reading(c, true);
        (void)conn_process(c);
    }
}

/* evhttp_send_error: its HTML page, "Connection: close", then the connection closes. */
static void send_error_page(struct fhttp_conn *c, int status)
{
    struct fhttp_request *r = &c->req;
    char body[512];
    const char *phrase = status_phrase(status);
    int n = snprintf(body, sizeof(body),
                     "<HTML><HEAD>\n<TITLE>%d %s</TITLE>\n</HEAD><BODY>\n<H1>%s</H1>\n"
                     "</BODY></HTML>\n",
                     status, phrase, phrase);
    if (!r->major || !r->minor) {
        r->major = 1;
        r->minor = 1;
    }
    r->rh_len = 0;
    rh_add(r, "Content-Type", "text/html");
    if (!r->close) /* otherwise evhttp moves "Connection: close" to the end */
        rh_add(r, "Connection", "close");
    r->keepalive = false;
    r->proxy = false;
    (void)compose_reply(c, status, phrase, body, (size_t)n);
    c->busy = false;
    conn_after_reply(c, true);
}

/* ------------------------------------------------------------------------------------------
 * Parsing
 * ------------------------------------------------------------------------------------------ */

/* The next line at [*pos, end): its content [*ls, *le) without "\r\n" or "\n"; advances
 * *pos past it. False when no "\n" yet. */
static bool next_line(char *base, size_t end, size_t *pos, size_t *ls, size_t *le)
{
    char *nl = memchr(base + *pos, '\n', end - *pos);
    if (!nl)
        return false;
    size_t e = (size_t)(nl - base);
    *ls = *pos;
    *le = e > *pos && base[e - 1] == '\r' ? e - 1 : e;
    *pos = e + 1;
    return true;
}

static bool parse_method(struct fhttp_request *r, const char *m)
{
    static const struct {
        const char *name;
        enum fhttp_method method;
    } allowed[] = {{"GET", FHTTP_GET},    {"POST", FHTTP_POST},     {"HEAD", FHTTP_HEAD},
                   {"PUT", FHTTP_PUT},    {"DELETE", FHTTP_DELETE}, {"OPTIONS", FHTTP_OPTIONS},
                   {"PATCH", FHTTP_PATCH}};
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
        if (strcmp(m, allowed[i].name) == 0) {
            r->kind = KIND_ALLOWED;
            r->method = allowed[i].method;
            return true;
        }
    r->kind = KIND_NOT_IMPLEMENTED; /* TRACE, CONNECT, anything else: 501 */
    return true;
}

/* "HTTP/<major>.<minor>" with major <= 1. */
static bool parse_version(struct fhttp_request *r, const char *v)
{
    if (strncmp(v, "HTTP/", 5) != 0)
        return false;
    char *end;
    v += 5;
    if (*v < '0' || *v > '9')
        return false;
    long major = strtol(v, &end, 10);
    if (*end != '.' || end[1] < '0' || end[1] > '9')
        return false;
    long minor = strtol(end + 1, &end, 10);
    if (*end != '\0' || major > 1 || minor > 1000)
        return false;
    r->major = (int)major;
    r->minor = (int)minor;
    return true;
}

/* Splits the request target at [u, in place): path and query offsets (from base). */
static void parse_target(struct fhttp_request *r, char *base, char *u)
{
    char *p = u;
    bool http_scheme = false;
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')) {
        char *s = p;
        while ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
               *s == '+' || *s == '-' || *s == '.')
            s++;
        if (*s == ':') {
            http_scheme = (s - p == 4 && strncasecmp(p, "http", 4) == 0) ||
                          (s - p == 5 && strncasecmp(p, "https", 5) == 0);
            p = s + 1;
        }
    }
    if (p[0] == '/' && p[1] == '/') {
        p += 2 + strcspn(p + 2, "/?#");
        r->proxy = http_scheme;
    }
    size_t pl = strcspn(p, "?#");
    r->path = (uint32_t)(p - base);
    r->query = UINT32_MAX;
    if (p[pl] == '?') {
        char *q = p + pl + 1;
        q[strcspn(q, "#")] = '\0';
        r->query = (uint32_t)(q - base);
    }
    p[pl] = '\0';
}

/* evutil_rtrim_lws_ */
static void rtrim_lws(char *s, size_t *len)
{
    while (*len && (s[*len - 1] == ' ' || s[*len - 1] == '\t' || s[*len - 1] == '\r' ||
                    s[*len - 1] == '\n'))
        (*len)--;
    s[*len] = '\0';
}

/* evhttp_header_is_valid_value: a CR or LF only as part of a folded line. */
static bool header_value_valid(const char *v)
{
    while ((v = strpbrk(v, "\r\n")) != NULL) {
        v += strspn(v, "\r\n");
        if (*v != ' ' && *v != '\t')
            return false;
    }
    return true;
}

const char *fhttp_request_header(const struct fhttp_request *r, const char *name)
{
    const char *base = r->conn->in + r->conn->in_start;
    for (unsigned i = 0; i < r->nhdr; i++)
        if (strcasecmp(base + r->hdr[i].name, name) == 0)
            return base + r->hdr[i].value;
    return NULL;
}

/* Request line and headers, once the blank line is in: 400 on anything malformed. */
static enum parse_result parse_head(struct fhttp_conn *c)
{
    struct fhttp_request *r = &c->req;
    char *base = c->in + c->in_start;
    size_t avail = c->in_len - c->in_start, pos = 0, ls, le;
    /* Find the end first: nothing is changed until the whole head is in. */
    bool first = true, complete = false;
    while (next_line(base, avail, &pos, &ls, &le)) {
        if (!first && le == ls) {
            complete = true;
            break;
        }
        first = false;
    }
    if (!complete) {
        if (avail > FHTTP_MAX_HEAD) {
            r->major = r->minor = 0;
            send_error_page(c, 400);
            return PARSE_ERROR;
        }
        return PARSE_MORE;
    }
    r->head_len = pos;
    r->major = r->minor = 0;
    if (pos > FHTTP_MAX_HEAD)
        goto bad;

    /* Request line: METHOD SP target SP version (trailing spaces ignored). */
    pos = 0;
    (void)next_line(base, avail, &pos, &ls, &le);
    while (le > ls && base[le - 1] == ' ')
        le--;
    base[le] = '\0';
    if (le - ls < strlen("GET / HTTP/1.0"))
        goto bad;
    char *line = base + ls, *sp = strchr(line, ' ');
    if (!sp)
        goto bad;
    *sp = '\0';
    char *target = sp + 1, *vsp = strrchr(target, ' ');
    if (!vsp || vsp == target)
        goto bad;
    *vsp = '\0';
    if (!parse_method(r, line) || !parse_version(r, vsp + 1))
        goto bad;
    parse_target(r, base, target);

    /* Headers: "Name: value", folded lines joined with a space. */
    r->nhdr = 0;
    char *last_end = NULL; /* the NUL ending the last header's value */
    for (;;) {
        (void)next_line(base, avail, &pos, &ls, &le);
        if (le == ls)
            break;
        char *l = base + ls;
        size_t n = le - ls;
        if (*l == ' ' || *l == '\t') {
            if (!last_end)
                goto bad;
            size_t skip = strspn(l, " \t");
            if (skip > n)
                skip = n;
            l += skip;
            n -= skip;
            rtrim_lws(l, &n); /* writes at most base[le] */
            memmove(last_end + 1, l, n + 1);
            *last_end = ' ';
            last_end += 1 + n;
            continue;
        }
        base[le] = '\0';
        char *colon = memchr(l, ':', n);
        if (!colon || memchr(l, '\0', n) || memchr(l, '\r', (size_t)(colon - l)) ||
            r->nhdr == FHTTP_MAX_HEADERS)
            goto bad;
        *colon = '\0';
        char *v = colon + 1;
        v += strspn(v, " ");
        size_t vl = (size_t)(base + le - v);
        rtrim_lws(v, &vl);
        r->hdr[r->nhdr].name = (uint32_t)(l - base);
        r->hdr[r->nhdr].value = (uint32_t)(v - base);
        r->nhdr++;
        last_end = v + vl;
    }
    for (unsigned i = 0; i < r->nhdr; i++)
        if (!header_value_valid(base + r->hdr[i].value))
            goto bad;

    const char *conn = fhttp_request_header(r, "Connection");
    r->close = conn && strcasecmp(conn, "close") == 0;
    r->keepalive = conn && strncasecmp(conn, "keep-alive", 10) == 0;
    if (r->proxy) {
        const char *pc = fhttp_request_header(r, "Proxy-Connection");
        r->close = !pc || strcasecmp(pc, "keep-alive") != 0;
    }
    r->head_done = true;
    return PARSE_OK;
bad:
    send_error_page(c, 400);
    return PARSE_ERROR;
}

static bool may_have_body(const struct fhttp_request *r)
{
    return r->kind == KIND_ALLOWED && r->method != FHTTP_HEAD;
}

/* Chunked body from offset at: validates (copy false) or decodes it in place (copy true).
 * PARSE_OK with *raw (input taken) and *len (decoded); PARSE_ERROR for 413. */
static enum parse_result chunked_scan(struct fhttp_conn *c, bool copy, size_t *raw, size_t *len)
{
    struct fhttp_request *r = &c->req;
    char *base = c->in + c->in_start;
    size_t avail = c->in_len - c->in_start, pos = r->head_len, w = r->head_len, ls, le;
    size_t total = 0, limit = c->srv->max_body;
    for (;;) {
        if (pos - r->head_len > limit + FHTTP_CHUNK_SLACK)
            return PARSE_ERROR;
        if (!next_line(base, avail, &pos, &ls, &le))
            return pos - r->head_len > limit + FHTTP_CHUNK_SLACK ? PARSE_ERROR : PARSE_MORE;
        if (le == ls)
            continue; /* the CRLF after a chunk's data */
        unsigned long long size = 0;
        size_t i = ls;
        for (; i < le; i++) {
            char ch = base[i];
            int d = ch >= '0' && ch <= '9'   ? ch - '0'
                    : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                    : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                             : -1;
            if (d < 0)
                break;
            if (size > (limit + 1) * 16ULL)
                return PARSE_ERROR;
            size = size * 16 + (unsigned)d;
        }
        if (i == ls || (i < le && base[i] != ' '))
            return PARSE_ERROR;
        if (size == 0)
            break;
        if (total + size > limit)
            return PARSE_ERROR;
        if (avail - pos < size)
            return PARSE_MORE;
        if (copy)
            memmove(base + w, base + pos, size);
        w += size;
        total += size;
        pos += size;
    }
    /* Trailer: header lines up to a blank line. */
    for (;;) {
        if (!next_line(base, avail, &pos, &ls, &le))
            return PARSE_MORE;
        if (le == ls)
            break;
        if (base[ls] != ' ' && base[ls] != '\t' && !memchr(base + ls, ':', le - ls))
            return PARSE_ERROR;
    }
    *raw = pos;
    *len = total;
    return PARSE_OK;
}

/* The body after a parsed head: PARSE_OK when all of it is in. */
static enum parse_result parse_body(struct fhttp_conn *c)
{
    struct fhttp_request *r = &c->req;
    size_t avail = c->in_len - c->in_start;
    if (!r->body_checked) {
        /* First look at the head's body headers (once per request). */
        r->body_checked = true;
        r->body_cl = 0;
        r->body_len = 0;
        if (!may_have_body(r))
            goto done_empty;
        const char *te = fhttp_request_header(r, "Transfer-Encoding");
        r->chunked = te && strcasecmp(te, "chunked") == 0;
        if (!r->chunked) {
            const char *cl = fhttp_request_header(r, "Content-Length");
            if (!cl)
                goto done_empty;
            char *end;
            errno = 0;
            long long v = strtoll(cl, &end, 10);
            if (*cl == '\0' || *end != '\0' || v < 0) {
                send_error_page(c, 400);
                return PARSE_ERROR;
            }
            if (v == 0)
                goto done_empty;
            r->body_cl = v;
        }
        if (r->major > 1 || (r->major == 1 && r->minor >= 1)) {
            const char *expect = fhttp_request_header(r, "Expect");
            if (expect && strcasecmp(expect, "100-continue") != 0) {
                send_error_page(c, 417);
                return PARSE_ERROR;
            }
            if (expect && (unsigned long long)r->body_cl <= c->srv->max_body &&
                avail == r->head_len) {
                char *p = out_reserve(c, 64);
                int n = snprintf(p, 64, "HTTP/%d.%d 100 Continue\r\n\r\n", r->major, r->minor);
                c->out_len += (size_t)n;
                if (conn_flush(c) < 0) {
                    conn_kill(c);
                    return PARSE_ERROR;
                }
            }
        }
        if ((unsigned long long)r->body_cl > c->srv->max_body) {
            send_error_page(c, 413);
            return PARSE_ERROR;
        }
    }
    if (r->chunked) {
        size_t raw, len;
        enum parse_result pr = chunked_scan(c, false, &raw, &len);
        if (pr == PARSE_ERROR) {
            send_error_page(c, 413);
            return PARSE_ERROR;
        }
        if (pr == PARSE_MORE)
            return PARSE_MORE;
        (void)chunked_scan(c, true, &raw, &len);
        r->consumed = raw;
        r->body_len = len;
        return PARSE_OK;
    }
    if (avail - r->head_len < (size_t)r->body_cl)
        return PARSE_MORE;
    r->body_len = (size_t)r->body_cl;
    r->consumed = r->head_len + r->body_len;
    return PARSE_OK;
done_empty:
    r->consumed = r->head_len;
    return PARSE_OK;
}

/* The next whole request in the input, if any. */
static enum parse_result conn_parse(struct fhttp_conn *c)
{
    struct fhttp_request *r = &c->req;
    if (!r->head_done) {
        enum parse_result pr = parse_head(c);
        if (pr != PARSE_OK)
            return pr;
        r->body_checked = false;
    }
    return parse_body(c);
}

/* ------------------------------------------------------------------------------------------
 * The connection loop
 * ------------------------------------------------------------------------------------------ */

/* Answers every whole request in the input, one at a time, until one is held, the output
 * blocks or the connection closes. Frees c when it is done with (then returns false). */
static bool conn_process(struct fhttp_conn *c)
{
    c->dispatching = true;
    while (!c->dead && !c->busy && !c->closing && c->out_off == c->out_len &&
           c->in_start < c->in_len) {
        enum parse_result pr = conn_parse(c);
        if (pr != PARSE_OK)
            break;
        struct fhttp_request *r = &c->req;
        if (r->kind == KIND_NOT_IMPLEMENTED) {
            send_error_page(c, 501);
            break;
        }
        c->busy = true;
        c->srv->cb(r, c->srv->arg);
        if (c->busy && !c->dead) { /* held: read nothing until it is answered */
            conn_set_reading(c, false);
            break;
        }
    }
    c->dispatching = false;
    if (c->dead || (c->closing && c->out_off == c->out_len)) {
        conn_free(c);
        return false;
    }
    if (!c->busy && c->in_start == c->in_len)
        c->in_start = c->in_len = 0;
    return true;
}

static void conn_on_read(evutil_socket_t fd, short what, void *arg)
{
    struct fhttp_conn *c = arg;
    (void)what;
    if (c->in_len == c->in_cap) {
        if (c->in_start > 0) {
            memmove(c->in, c->in + c->in_start, c->in_len - c->in_start);
            c->in_len -= c->in_start;
            c->in_start = 0;
        } else {
            grow(&c->in, &c->in_cap, c->in_cap * 2);
        }
    }
    ssize_t n = recv(fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) { /* closed or reset; a partial request is dropped, as evhttp does */
        conn_free(c);
        return;
    }
    c->in_len += (size_t)n;
    (void)conn_process(c);
}

static void conn_on_write(evutil_socket_t fd, short what, void *arg)
{
    struct fhttp_conn *c = arg;
    (void)fd;
    (void)what;
    int fr = conn_flush(c);
    if (fr == 0)
        return;
    if (fr < 0 || c->closing) {
        conn_free(c);
        return;
    }
    if (!c->busy)
        conn_set_reading(c, true);
    (void)conn_process(c);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int sl,
                      void *arg)
{
    struct fhttp_server *srv = arg;
    (void)l;
    (void)sa;
    (void)sl;
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct fhttp_conn *c = xcalloc(1, sizeof(*c));
    c->srv = srv;
    c->fd = fd;
    c->req.conn = c;
    c->in_cap = FHTTP_IN_INITIAL;
    c->in = xmalloc(c->in_cap);
    c->out_cap = FHTTP_OUT_INITIAL;
    c->out = xmalloc(c->out_cap);
    c->rev = event_new(srv->base, fd, EV_READ | EV_PERSIST, conn_on_read, c);
    c->wev = event_new(srv->base, fd, EV_WRITE | EV_PERSIST, conn_on_write, c);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    if (!c->rev || !c->wev || event_add(c->rev, NULL) != 0) {
        fprintf(stderr, "fake_http: cannot watch an accepted connection\n");
        conn_free(c);
        return;
    }
    c->reading = true;
}

/* ------------------------------------------------------------------------------------------
 * Public API
 * ------------------------------------------------------------------------------------------ */

struct fhttp_server *fhttp_server_new(struct event_base *base, const char *host, int port,
                                      size_t max_body, fhttp_request_cb cb, void *arg)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV},
                    *ai = NULL;
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    int gai = getaddrinfo(host, service, &hints, &ai);
    if (gai != 0) {
        errno = EINVAL;
        return NULL;
    }
    struct fhttp_server *srv = xcalloc(1, sizeof(*srv));
    srv->base = base;
    srv->max_body = max_body;
    srv->cb = cb;
    srv->arg = arg;
    srv->port = -1;
    srv->early_close = (event_base_get_features(base) & EV_FEATURE_EARLY_CLOSE) != 0;
    srv->listener = evconnlistener_new_bind(
        base, on_accept, srv, LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1,
        ai->ai_addr, (int)ai->ai_addrlen);
    freeaddrinfo(ai);
    if (!srv->listener) {
        int e = errno;
        free(srv);
        errno = e;
        return NULL;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(evconnlistener_get_fd(srv->listener), (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            srv->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            srv->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    return srv;
}

int fhttp_server_port(const struct fhttp_server *srv)
{
    return srv->port;
}

void fhttp_server_free(struct fhttp_server *srv)
{
    if (!srv)
        return;
    evconnlistener_free(srv->listener);
    while (srv->conns)
        conn_free(srv->conns);
    free(srv);
}

enum fhttp_method fhttp_request_method(const struct fhttp_request *r)
{
    return r->method;
}

const char *fhttp_request_path(const struct fhttp_request *r)
{
    return r->path == UINT32_MAX ? "" : r->conn->in + r->conn->in_start + r->path;
}

const char *fhttp_request_query(const struct fhttp_request *r)
{
    return r->query == UINT32_MAX ? NULL : r->conn->in + r->conn->in_start + r->query;
}

const char *fhttp_request_body(const struct fhttp_request *r, size_t *len)
{
    *len = r->body_len;
    return r->body_len ? r->conn->in + r->conn->in_start + r->head_len : "";
}

void fhttp_add_header(struct fhttp_request *r, const char *name, const char *value)
{
    rh_add(r, name, value);
}

void fhttp_send_reply(struct fhttp_request *r, int status, const char *reason, const char *body,
                      size_t len)
{
    struct fhttp_conn *c = r->conn;
    if (c->closed_ev) {
        event_free(c->closed_ev);
        c->closed_ev = NULL;
    }
    bool close = compose_reply(c, status, reason, body, len);
    c->in_start += r->consumed;
    req_reset(r);
    c->busy = false;
    conn_after_reply(c, close);
}

void fhttp_drop(struct fhttp_request *r)
{
    struct fhttp_conn *c = r->conn;
    c->busy = false;
    conn_kill(c);
}

static void on_client_closed(evutil_socket_t fd, short what, void *arg)
{
    struct fhttp_conn *c = arg;
    (void)fd;
    (void)what;
    c->closed_cb(&c->req, c->closed_arg);
}

bool fhttp_notify_close(struct fhttp_request *r, fhttp_closed_cb cb, void *arg)
{
    struct fhttp_conn *c = r->conn;
    if (!c->srv->early_close || c->closed_ev)
        return false;
    c->closed_ev = event_new(c->srv->base, c->fd, EV_CLOSED, on_client_closed, c);
    if (!c->closed_ev)
        return false;
    if (event_add(c->closed_ev, NULL) != 0) {
        event_free(c->closed_ev);
        c->closed_ev = NULL;
        return false;
    }
    c->closed_cb = cb;
    c->closed_arg = arg;
    return true;
}
