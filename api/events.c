/* events.c - GET /v1/campaigns/{id}/events: a campaign's live progress as
 * server-sent events (text/event-stream).
 *
 * A stream opens with "retry:" and an "event: stats" whose data is GET
 * /stats' JSON (stats.c); then comes an "event: stats" whenever the numbers
 * change, a ": keep-alive" comment on a stream quiet for
 * CRIER_EVENTS_HEARTBEAT seconds, and "event: done" (data {"status": ...})
 * once the campaign is completed or cancelled, after which the server ends
 * the stream. A campaign that disappears (a deleted draft) ends its streams
 * with "event: error".
 *
 * Streams of one campaign share a watch: one read of the campaign's counters
 * every CRIER_EVENTS_POLL_MS whatever the number of streams (a read sums a
 * few hundred counter rows, migration 0011); each stream remembers the JSON
 * it last sent and is sent only what differs.
 *
 * Lifetimes. A stream ends when its campaign finishes, when the client goes
 * (the connection's close callback), when the client reads so slowly that
 * EVENTS_MAX_BUFFERED bytes wait for it, and at SIGTERM (events_shutdown).
 * A watch is freed when nothing holds it: no stream, no read in flight (its
 * callback holds it: pgpool has no cancel), no walk over its streams under
 * way. At most CRIER_EVENTS_MAX_STREAMS streams are open or opening at once;
 * one more is a 503. */
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "events.h"
#include "log.h"
#include "stats.h"
#include "xalloc.h"

/* A client this far behind is dropped (bytes waiting in its connection). */
#define EVENTS_MAX_BUFFERED (256 * 1024)
/* What EventSource clients wait before reconnecting (ms). */
#define EVENTS_RETRY_MS 2000

struct watch;

struct stream {
    struct events *ev;
    struct watch *w; /* NULL until it joins one */
    struct evhttp_request *req;
    struct evhttp_connection *evcon;
    char *last; /* the stats JSON last sent */
    struct timeval last_write;
    LIST_ENTRY(stream) link;
};

struct watch {
    struct events *ev;
    long long tenant_id, campaign_id;
    struct event *timer;
    bool polling; /* a read is in flight; its callback holds the watch */
    bool walking; /* a loop over the streams is under way */
    LIST_HEAD(, stream) streams;
    LIST_ENTRY(watch) link;
};

struct events {
    struct app *app;
    int open;  /* streams open or opening */
    bool shut; /* events_shutdown ran: no new stream */
    LIST_HEAD(, watch) watches;
};

static const char not_found_event[] =
    "event: error\ndata: {\"error\":{\"code\":\"not_found\",\"message\":\"no such campaign\"}}\n\n";

/* ---------------------------------------------------------------------
 * Streams
 * ------------------------------------------------------------------- */

static void watch_maybe_free(struct watch *w);

static void stream_write(struct stream *s, const char *text)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, text, strlen(text));
    evhttp_send_reply_chunk(s->req, b);
    evbuffer_free(b);
    gettimeofday(&s->last_write, NULL);
}

static size_t stream_backlog(const struct stream *s)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(s->evcon);
    return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

/* Forgets a stream whose request is finished or gone. */
static void stream_free(struct stream *s)
{
    struct watch *w = s->w;
    if (w)
        LIST_REMOVE(s, link);
    s->ev->open--;
    free(s->last);
    free(s);
    if (w)
        watch_maybe_free(w);
}

/* Ends a stream from our side: final (may be NULL), then the chunked
 * terminator; the connection closes once it is written. */
static void stream_end(struct stream *s, const char *final)
{
    if (final)
        stream_write(s, final);
    evhttp_connection_set_closecb(s->evcon, NULL, NULL);
    /* The stream ran without a read timeout; its last writes get the
     * server's usual ones. */
    evhttp_connection_set_timeout(s->evcon, (int)s->ev->app->cfg->http_timeout_s);
    evhttp_send_reply_end(s->req);
    stream_free(s);
}

/* The connection is going: the client left, a write timed out, or the
 * server is freeing it. */
static void stream_closed(struct evhttp_connection *evcon, void *arg)
{
    struct stream *s = arg;
    (void)evcon;
    log_debug("event stream of campaign %lld: client gone", s->w ? s->w->campaign_id : 0LL);
    /* On a client's EOF or a timeout, evhttp detaches the unfinished
     * request from the connection and leaves it to us; when the server
     * frees a connection, the request goes with it. */
    if (evhttp_request_get_connection(s->req) == NULL)
        evhttp_send_reply_end(s->req); /* without a connection: frees it */
    stream_free(s);
}

/* Sends the stats JSON when it differs from what the stream last got.
 * Returns false when the stream was ended (too far behind). */
static bool stream_send_stats(struct stream *s, const char *json)
{
    if (s->last && !strcmp(s->last, json))
        return true;
    if (stream_backlog(s) > EVENTS_MAX_BUFFERED) {
        log_warn("event stream of campaign %lld: client too slow, dropped",
                 s->w ? s->w->campaign_id : 0LL);
        stream_end(s, NULL);
        return false;
    }
    char *ev = xasprintf("event: stats\ndata: %s\n\n", json);
    stream_write(s, ev);
    free(ev);
    free(s->last);
    s->last = xstrdup(json);
    return true;
}

/* ---------------------------------------------------------------------
 * Watches: one read per campaign for all its streams
 * ------------------------------------------------------------------- */

static void watch_maybe_free(struct watch *w)
{
    if (!LIST_EMPTY(&w->streams) || w->polling || w->walking)
        return;
    LIST_REMOVE(w, link);
    event_free(w->timer);
    free(w);
}

static void watch_polled(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct watch *w = arg;
    (void)sqlstate;
    w->polling = false;
    if (LIST_EMPTY(&w->streams)) {
        watch_maybe_free(w);
        return;
    }
    if (!res) {
        /* The next tick tries again; the streams stay. */
        log_debug("event stream of campaign %lld: stats read failed: %s", w->campaign_id, errmsg);
        return;
    }
    w->walking = true;
    struct stream *s, *next;
    if (PQntuples(res) == 0) {
        while ((s = LIST_FIRST(&w->streams)))
            stream_end(s, not_found_event);
    } else {
        bool finished;
        cJSON *j = stats_json(res, w->campaign_id, &finished);
        char *json = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        char *done = finished ? xasprintf("event: done\ndata: {\"status\":\"%s\"}\n\n",
                                          PQgetvalue(res, 0, 0))
                              : NULL;
        for (s = LIST_FIRST(&w->streams); s; s = next) {
            next = LIST_NEXT(s, link);
            if (stream_send_stats(s, json) && done)
                stream_end(s, done);
        }
        free(done);
        free(json);
    }
    w->walking = false;
    watch_maybe_free(w);
}

static void watch_tick(evutil_socket_t fd, short what, void *arg)
{
    struct watch *w = arg;
    (void)fd;
    (void)what;
    if (LIST_EMPTY(&w->streams))
        return;
    struct timeval now;
    gettimeofday(&now, NULL);
    long beat = w->ev->app->cfg->events_heartbeat_s;
    struct stream *s;
    LIST_FOREACH(s, &w->streams, link)
    {
        if (now.tv_sec - s->last_write.tv_sec >= beat)
            stream_write(s, ": keep-alive\n\n");
    }
    if (!w->polling) {
        w->polling = true;
        stats_query(w->ev->app, w->tenant_id, w->campaign_id, watch_polled, w);
    }
}

static void watch_join(struct events *ev, long long tenant_id, long long campaign_id,
                       struct stream *s)
{
    struct watch *w;
    LIST_FOREACH(w, &ev->watches, link)
    {
        if (w->tenant_id == tenant_id && w->campaign_id == campaign_id)
            break;
    }
    if (!w) {
        w = xcalloc(1, sizeof(*w));
        w->ev = ev;
        w->tenant_id = tenant_id;
        w->campaign_id = campaign_id;
        LIST_INIT(&w->streams);
        w->timer = event_new(ev->app->base, -1, EV_PERSIST, watch_tick, w);
        long ms = ev->app->cfg->events_poll_ms;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        event_add(w->timer, &tv);
        LIST_INSERT_HEAD(&ev->watches, w, link);
    }
    s->w = w;
    LIST_INSERT_HEAD(&w->streams, s, link);
}

/* ---------------------------------------------------------------------
 * Opening a stream
 * ------------------------------------------------------------------- */

/* The one reply that leaves in pieces: starts the chunked 200 and frees r
 * (as the response door would); the chunks follow on the returned request.
 * The connection closes when the stream ends. */
static struct evhttp_request *reply_stream_start(struct api_req *r)
{
    struct evhttp_request *req = r->req;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "text/event-stream");
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_add_header(h, "X-Accel-Buffering", "no"); /* proxies: pass each event on at once */
    evhttp_add_header(h, "Connection", "close");
    evhttp_send_reply_start(req, 200, "OK");
    log_debug("GET %s -> 200 (event stream)", r->path);
    http_request_free(r);
    return req;
}

/* The request's state while its first read runs: holds a stream slot. */
struct opening {
    struct events *ev;
};

static void opening_free(void *p)
{
    struct opening *o = p;
    o->ev->open--;
    free(o);
}

static void first_read_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)sqlstate;
    if (!http_one_row_or_reply(r, res, errmsg, "campaign"))
        return;
    struct events *ev = r->app->events;
    if (ev->shut) {
        http_reply_error(r, 503, "shutting_down", "server is shutting down", NULL);
        return;
    }
    long long tenant_id = r->tenant_id, campaign_id = r->ids[0];
    bool finished;
    cJSON *j = stats_json(res, campaign_id, &finished);
    char *json = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    char *done =
        finished ? xasprintf("event: done\ndata: {\"status\":\"%s\"}\n\n", PQgetvalue(res, 0, 0))
                 : NULL;

    struct stream *s = xcalloc(1, sizeof(*s));
    s->ev = ev;
    ev->open++;
    s->req = reply_stream_start(r); /* frees r */
    s->evcon = evhttp_request_get_connection(s->req);
    if (!s->evcon) { /* the connection is gone already: the request is ours to free */
        evhttp_send_reply_end(s->req);
        stream_free(s);
        free(done);
        free(json);
        return;
    }
    evhttp_connection_set_closecb(s->evcon, stream_closed, s);
    /* A stream is long and the client sends nothing: no read timeout (a
     * close is still seen), the usual one for writes that do not drain. */
    struct timeval wt = {ev->app->cfg->http_timeout_s, 0};
    bufferevent_set_timeouts(evhttp_connection_get_bufferevent(s->evcon), NULL, &wt);
    char retry[32];
    snprintf(retry, sizeof(retry), "retry: %d\n\n", EVENTS_RETRY_MS);
    stream_write(s, retry);
    (void)stream_send_stats(s, json);
    if (done)
        stream_end(s, done);
    else
        watch_join(ev, tenant_id, campaign_id, s);
    free(done);
    free(json);
}

void campaigns_events(struct api_req *r)
{
    struct events *ev = r->app->events;
    if (r->method != EVHTTP_REQ_GET) {
        http_reply_error(r, 405, "method_not_allowed", "an event stream is read with GET", NULL);
        return;
    }
    if (ev->shut) {
        http_reply_error(r, 503, "shutting_down", "server is shutting down", NULL);
        return;
    }
    if (ev->open >= r->app->cfg->events_max_streams) {
        char msg[128];
        snprintf(msg, sizeof(msg),
                 "%d event streams are open, the most this server keeps; retry later", ev->open);
        evhttp_add_header(evhttp_request_get_output_headers(r->req), "Retry-After", "5");
        http_reply_error(r, 503, "too_many_streams", msg, NULL);
        return;
    }
    struct opening *o = xcalloc(1, sizeof(*o));
    o->ev = ev;
    ev->open++;
    r->state = o;
    r->state_free = opening_free;
    stats_query(r->app, r->tenant_id, r->ids[0], first_read_done, r);
}

/* ---------------------------------------------------------------------
 * Life of the module
 * ------------------------------------------------------------------- */

struct events *events_new(struct app *app)
{
    struct events *ev = xcalloc(1, sizeof(*ev));
    ev->app = app;
    LIST_INIT(&ev->watches);
    return ev;
}

void events_shutdown(struct events *ev)
{
    if (!ev)
        return;
    ev->shut = true;
    struct watch *w, *wnext;
    for (w = LIST_FIRST(&ev->watches); w; w = wnext) {
        wnext = LIST_NEXT(w, link);
        w->walking = true;
        struct stream *s;
        while ((s = LIST_FIRST(&w->streams)))
            stream_end(s, ": the server is shutting down\n\n");
        w->walking = false;
        event_del(w->timer);
        watch_maybe_free(w);
    }
}

void events_free(struct events *ev)
{
    if (!ev)
        return;
    events_shutdown(ev);
    /* Left only if a read never answered (the pool is freed before us and
     * answers every read, so none should be). */
    struct watch *w;
    while ((w = LIST_FIRST(&ev->watches))) {
        w->polling = false;
        watch_maybe_free(w);
    }
    free(ev);
}
