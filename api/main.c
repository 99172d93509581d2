/* crier-api - the HTTP API: one libevent loop, async PostgreSQL pool,
 * async Redis. See README "Architecture" for the concurrency model. */
#include <event2/http.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "config.h"
#include "crypto.h"
#include "events.h"
#include "log.h"

static const struct cfg_row api_rows[] = {
    {"CRIER_DATABASE_URL", CFG_STRING, offsetof(struct api_config, database_url),
     "postgresql://crier@127.0.0.1:5432/crier", 0, 0, NULL, 0, 1, "PostgreSQL connection URL"},
    {"CRIER_SECRET_KEY", CFG_STRING, offsetof(struct api_config, secret_key), NULL, 0, 0, NULL, 1,
     1, "32-byte key (64 hex or base64) sealing provider credentials"},
    {"CRIER_REDIS_URL", CFG_STRING, offsetof(struct api_config, redis_url),
     "redis://127.0.0.1:6379/0", 0, 0, NULL, 0, 0, "Redis URL redis://[:pass@]host:port/db"},
    {"CRIER_HTTP_ADDR", CFG_STRING, offsetof(struct api_config, http_addr), "127.0.0.1:8080", 0, 0,
     NULL, 0, 0, "listen address host:port"},
    {"CRIER_PUBLIC_URL", CFG_STRING, offsetof(struct api_config, public_url),
     "http://127.0.0.1:8080", 0, 0, NULL, 0, 0,
     "externally visible base URL (webhook URLs, signature checks)"},
    {"CRIER_KEY_PREFIX", CFG_STRING, offsetof(struct api_config, key_prefix), "crier:", 0, 0, NULL,
     0, 0, "prefix of every Redis key"},
    {"CRIER_PG_POOL_SIZE", CFG_INT, offsetof(struct api_config, pg_pool_size), "8", 1, 256, NULL, 0,
     0, "PostgreSQL connections in the API's pool"},
    {"CRIER_PG_TIMEOUT_MS", CFG_INT, offsetof(struct api_config, pg_timeout_ms), "5000", 100,
     600000, NULL, 0, 0, "statement timeout and pool wait limit (ms)"},
    {"CRIER_HTTP_TIMEOUT", CFG_INT, offsetof(struct api_config, http_timeout_s), "30", 1, 3600,
     NULL, 0, 0, "seconds a client may take to send a request or read a reply"},
    {"CRIER_HTTP_MAX_BODY", CFG_INT, offsetof(struct api_config, max_body), "67108864", 1024,
     1073741824, NULL, 0, 0, "hard cap on any request body (bytes); routes have smaller limits"},
    {"CRIER_SHUTDOWN_GRACE", CFG_INT, offsetof(struct api_config, shutdown_grace_s), "10", 0, 600,
     NULL, 0, 0, "seconds SIGTERM waits for in-flight requests"},
    {"CRIER_EVENTS_MAX_STREAMS", CFG_INT, offsetof(struct api_config, events_max_streams), "1000",
     1, 100000, NULL, 0, 0, "event streams (GET /v1/campaigns/{id}/events) open at once at most"},
    {"CRIER_EVENTS_POLL_MS", CFG_INT, offsetof(struct api_config, events_poll_ms), "500", 50, 60000,
     NULL, 0, 0, "how often a streamed campaign's counters are read (ms)"},
    {"CRIER_EVENTS_HEARTBEAT", CFG_INT, offsetof(struct api_config, events_heartbeat_s), "15", 1,
     3600, NULL, 0, 0, "seconds between keep-alive comments on a quiet event stream"},
    CFG_COMMON_ROWS(struct api_config),
};
#define NROWS (sizeof(api_rows) / sizeof(api_rows[0]))

/* "https://host/" and "https://host" name the same base: every URL built
 * from it appends "/v1/...". */
static void trim_trailing_slashes(char *url)
{
    size_t n = url ? strlen(url) : 0;
    while (n > 0 && url[n - 1] == '/')
        url[--n] = '\0';
}

static void finish_drain(struct app *app)
{
    event_base_loopexit(app->base, NULL);
}

static void drain_check(evutil_socket_t fd, short what, void *arg)
{
    struct app *app = arg;
    (void)fd;
    static int ticks;
    if (app->inflight == 0) {
        log_info("drained; exiting");
        finish_drain(app);
        return;
    }
    if (what & EV_TIMEOUT && ++ticks > app->cfg->shutdown_grace_s * 10) {
        log_warn("grace period over with %d requests in flight; exiting", app->inflight);
        finish_drain(app);
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct app *app = arg;
    (void)what;
    if (app->draining)
        return;
    log_info("signal %d: no new connections, draining %d in-flight requests", (int)sig,
             app->inflight);
    app->draining = true;
    /* Event streams never finish by themselves: end them now. */
    events_shutdown(app->events);
    if (app->listener) {
        evhttp_del_accept_socket(app->http, app->listener);
        app->listener = NULL;
    }
    app->drain_timer = event_new(app->base, -1, EV_PERSIST, drain_check, app);
    struct timeval tv = {0, 100 * 1000};
    event_add(app->drain_timer, &tv);
}

static int split_addr(const char *addr, char *host, size_t hostsz, int *port)
{
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || (size_t)(colon - addr) >= hostsz)
        return -1;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    char *end = NULL;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535)
        return -1;
    *port = (int)p;
    return 0;
}

int main(int argc, char **argv)
{
    static struct api_config cfg;
    char err[512];
    if (cfg_load(api_rows, NROWS, &cfg, argc, argv,
                 "usage: crier-api [--help]\n\ncrier's HTTP API (libevent).", err,
                 sizeof(err)) != CR_OK) {
        fprintf(stderr, "crier-api: %s\n", err);
        return 2;
    }
    trim_trailing_slashes(cfg.public_url);
    log_init("crier-api", (enum log_level)cfg.log_level, (enum log_format)cfg.log_format);
    signal(SIGPIPE, SIG_IGN);

    char host[256];
    int port;
    if (split_addr(cfg.http_addr, host, sizeof(host), &port) != 0) {
        fprintf(stderr, "crier-api: CRIER_HTTP_ADDR: expected host:port, got %s\n", cfg.http_addr);
        return 2;
    }

    static struct app app;
    app.cfg = &cfg;
    if (crypto_parse_key(cfg.secret_key, app.secret) != CR_OK) {
        fprintf(stderr, "crier-api: CRIER_SECRET_KEY must be 64 hex chars or base64 of 32 bytes\n");
        return 2;
    }
    app.base = event_base_new();
    rq_keys_init(&app.keys, cfg.key_prefix);
    app.auth = auth_cache_new();
    app.pg = pgpool_new(app.base, cfg.database_url, "crier-api", (int)cfg.pg_pool_size,
                        (int)cfg.pg_timeout_ms);
    redis_link_start(&app);
    tzdb_start(&app);
    app.events = events_new(&app);

    app.http = evhttp_new(app.base);
    evhttp_set_timeout(app.http, (int)cfg.http_timeout_s);
    evhttp_set_max_body_size(app.http, cfg.max_body);
    evhttp_set_max_headers_size(app.http, 64 * 1024);
    evhttp_set_allowed_methods(app.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                             EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE |
                                             EVHTTP_REQ_HEAD);
    evhttp_set_gencb(app.http, router_handle, &app);
    app.listener = evhttp_bind_socket_with_handle(app.http, host, (ev_uint16_t)port);
    if (!app.listener) {
        log_error("cannot listen on %s", cfg.http_addr);
        return 1;
    }
    app.sigterm = evsignal_new(app.base, SIGTERM, on_signal, &app);
    app.sigint = evsignal_new(app.base, SIGINT, on_signal, &app);
    event_add(app.sigterm, NULL);
    event_add(app.sigint, NULL);
    log_info("listening on %s", cfg.http_addr);

    event_base_dispatch(app.base);

    /* Whatever holds a request goes before the server frees them: the pool
     * (its pending callbacks answer their requests), the webhook secrets'
     * waiters (answered by their loads, in the pool), then Redis (freeing
     * the connection answers the pending XADDs' requests); then the server
     * frees its connections. */
    pgpool_free(app.pg);
    events_free(app.events); /* after the pool (a read's callback), before the server */
    webhooks_cache_free(app.webhooks);
    redis_link_stop(&app);
    evhttp_free(app.http);
    auth_cache_free(app.auth);
    tzdb_free(app.tzdb);
    if (app.drain_timer)
        event_free(app.drain_timer);
    event_free(app.sigterm);
    event_free(app.sigint);
    event_base_free(app.base);
    cfg_cleanup(api_rows, NROWS, &cfg);
    return 0;
}
