/* redis_link.c - the API's Redis connection: async hiredis on the loop,
 * reconnected every second while down, pinged every second so /readyz
 * knows whether Redis answers (hiredis 0.14 has no timeouts). */
#include <hiredis/adapters/libevent.h>
#include <string.h>

#include "api.h"
#include "log.h"

#define REDIS_STALE_MS 3000

static void link_connect(struct api_redis *l);

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct api_redis *l = ac->data;
    if (status != REDIS_OK) {
        log_warn("redis connect failed: %s", ac->errstr);
        l->ac = NULL; /* hiredis frees the context */
        return;
    }
    l->connected = true;
    gettimeofday(&l->last_pong, NULL);
    log_info("redis connected");
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct api_redis *l = ac->data;
    if (l->connected)
        log_warn("redis disconnected%s%s", status == REDIS_OK ? "" : ": ",
                 status == REDIS_OK ? "" : ac->errstr);
    l->connected = false;
    l->ac = NULL;
}

static void on_pong(redisAsyncContext *ac, void *reply, void *priv)
{
    struct api_redis *l = priv;
    redisReply *rep = reply;
    (void)ac;
    if (rep && rep->type != REDIS_REPLY_ERROR)
        gettimeofday(&l->last_pong, NULL);
}

static void link_connect(struct api_redis *l)
{
    char err[256];
    redisAsyncContext *ac = rq_connect_async(l->app->cfg->redis_url, err, sizeof(err));
    if (!ac) {
        log_warn("redis: %s", err);
        return;
    }
    ac->data = l;
    redisLibeventAttach(ac, l->app->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    l->ac = ac;
}

static long ms_since(const struct timeval *t)
{
    struct timeval now, d;
    gettimeofday(&now, NULL);
    timersub(&now, t, &d);
    return d.tv_sec * 1000 + d.tv_usec / 1000;
}

static void link_tick(evutil_socket_t fd, short what, void *arg)
{
    struct api_redis *l = arg;
    (void)fd;
    (void)what;
    if (!l->ac) {
        link_connect(l);
        return;
    }
    if (!l->connected)
        return;
    if (ms_since(&l->last_pong) > REDIS_STALE_MS) {
        log_warn("redis stopped answering; reconnecting");
        redisAsyncDisconnect(l->ac);
        return;
    }
    redisAsyncCommand(l->ac, on_pong, l, "PING");
}

void redis_link_start(struct app *app)
{
    struct api_redis *l = &app->redis;
    l->app = app;
    l->timer = event_new(app->base, -1, EV_PERSIST, link_tick, l);
    struct timeval tv = {1, 0};
    event_add(l->timer, &tv);
    link_connect(l);
}

void redis_link_stop(struct app *app)
{
    struct api_redis *l = &app->redis;
    if (l->timer)
        event_free(l->timer);
    l->timer = NULL;
    if (l->ac)
        redisAsyncFree(l->ac); /* runs on_disconnect, which clears l->ac */
}

bool redis_link_ready(struct app *app)
{
    struct api_redis *l = &app->redis;
    return l->ac && l->connected && ms_since(&l->last_pong) <= REDIS_STALE_MS;
}
