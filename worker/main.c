/* crier-worker - claims jobs, sends them, records outcomes. See worker.h. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "worker.h"

static const struct cfg_row worker_rows[] = {
    {"CRIER_DATABASE_URL", CFG_STRING, offsetof(struct worker_config, database_url),
     "postgresql://crier@127.0.0.1:5432/crier", 0, 0, NULL, 0, 1, "PostgreSQL connection URL"},
    {"CRIER_REDIS_URL", CFG_STRING, offsetof(struct worker_config, redis_url),
     "redis://127.0.0.1:6379/0", 0, 0, NULL, 0, 0, "Redis URL redis://[:pass@]host:port/db"},
    {"CRIER_KEY_PREFIX", CFG_STRING, offsetof(struct worker_config, key_prefix), "crier:", 0, 0,
     NULL, 0, 0, "prefix of every Redis key"},
    {"CRIER_WORKER_ID", CFG_STRING, offsetof(struct worker_config, consumer), "", 0, 0, NULL, 0, 0,
     "consumer name in the workers group (default: host-pid)"},
    {"CRIER_PUBLIC_URL", CFG_STRING, offsetof(struct worker_config, public_url),
     "http://127.0.0.1:8080", 0, 0, NULL, 0, 0,
     "externally visible base URL of crier-api (StatusCallback URLs)"},
    {"CRIER_SECRET_KEY", CFG_STRING, offsetof(struct worker_config, secret_key), "", 0, 0, NULL, 0,
     1, "32-byte key (64 hex or base64) opening provider credentials"},
    {"CRIER_TWILIO_BASE_URL", CFG_STRING, offsetof(struct worker_config, twilio_base_url),
     "https://api.twilio.com", 0, 0, NULL, 0, 0, "Twilio REST base URL (tests: a local fake)"},
    {"CRIER_SENDGRID_BASE_URL", CFG_STRING, offsetof(struct worker_config, sendgrid_base_url),
     "https://api.sendgrid.com", 0, 0, NULL, 0, 0, "SendGrid API base URL (tests: a local fake)"},
    {"CRIER_SANDBOX_LOG", CFG_STRING, offsetof(struct worker_config, sandbox_log), "", 0, 0, NULL,
     0, 0, "file the sandbox provider appends each message to (empty: none)"},
    {"CRIER_WORKER_PG_POOL", CFG_INT, offsetof(struct worker_config, pg_pool_size), "4", 1, 64,
     NULL, 0, 0, "PostgreSQL connections (claims and outcome writes run on them concurrently)"},
    {"CRIER_WORKER_CONCURRENCY", CFG_INT, offsetof(struct worker_config, concurrency), "512", 1,
     10000, NULL, 0, 0, "sends in flight at most"},
    {"CRIER_WORKER_BATCH", CFG_INT, offsetof(struct worker_config, batch), "256", 1, 5000, NULL, 0,
     0, "jobs claimed / outcomes written per statement"},
    {"CRIER_WORKER_CONNECTIONS", CFG_INT, offsetof(struct worker_config, max_connections), "64", 1,
     4096, NULL, 0, 0, "HTTP connections per provider host"},
    {"CRIER_SEND_TIMEOUT_MS", CFG_INT, offsetof(struct worker_config, send_timeout_ms), "15000",
     100, 600000, NULL, 0, 0, "whole-request timeout of a send"},
    {"CRIER_CONNECT_TIMEOUT_MS", CFG_INT, offsetof(struct worker_config, connect_timeout_ms),
     "5000", 100, 60000, NULL, 0, 0, "connect timeout of a send"},
    {"CRIER_MAX_ATTEMPTS", CFG_INT, offsetof(struct worker_config, max_attempts), "5", 1, 100, NULL,
     0, 0, "attempts before a retryable failure becomes failed (and goes to the DLQ)"},
    {"CRIER_RETRY_BASE_MS", CFG_INT, offsetof(struct worker_config, retry_base_ms), "5000", 10,
     600000, NULL, 0, 0, "first retry's delay; doubled per attempt (to 1 h), jitter +-25 %"},
    {"CRIER_ORPHAN_AGE_S", CFG_INT, offsetof(struct worker_config, orphan_age_s), "60", 2, 3600,
     NULL, 0, 0,
     "a job pending this long is reclaimed by a live worker; keep it above "
     "CRIER_SEND_TIMEOUT_MS"},
    {"CRIER_WORKER_FLUSH_MS", CFG_INT, offsetof(struct worker_config, flush_ms), "20", 1, 5000,
     NULL, 0, 0, "longest an outcome waits before its batch is written"},
    {"CRIER_SHUTDOWN_GRACE", CFG_INT, offsetof(struct worker_config, shutdown_grace_s), "30", 0,
     600, NULL, 0, 0, "seconds SIGTERM waits for in-flight sends"},
    {"CRIER_ATTRIBUTION_WINDOW_S", CFG_INT, offsetof(struct worker_config, attribution_window_s),
     "604800", 60, 31536000, NULL, 0, 0,
     "an inbound SMS counts as the reply to the customer's latest SMS sent this recently"},
    {"CRIER_RECONCILE_AFTER_S", CFG_INT, offsetof(struct worker_config, reconcile_after_s), "900",
     1, 604800, NULL, 0, 0, "a Twilio delivery 'sent' this long without a receipt is looked up"},
    {"CRIER_RECONCILE_EVERY_S", CFG_INT, offsetof(struct worker_config, reconcile_every_s), "10", 1,
     3600, NULL, 0, 0, "how often a worker looks for deliveries to reconcile"},
    {"CRIER_RECONCILE_BATCH", CFG_INT, offsetof(struct worker_config, reconcile_batch), "100", 1,
     10000, NULL, 0, 0, "deliveries a worker looks up per round"},
    CFG_COMMON_ROWS(struct worker_config),
};
#define NROWS (sizeof(worker_rows) / sizeof(worker_rows[0]))

/* "https://host/" and "https://host" name the same base: every URL built
 * from it appends "/v1/...". */
static void trim_trailing_slashes(char *url)
{
    size_t n = url ? strlen(url) : 0;
    while (n > 0 && url[n - 1] == '/')
        url[--n] = '\0';
}

static void maybe_exit(struct worker *w)
{
    if (w->stopping && jobs_idle(w) && inbound_idle(w) && reconcile_idle(w))
        event_base_loopexit(w->base, NULL);
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    (void)fd;
    (void)what;
    jobs_flush(w);
    jobs_maybe_read(w);
    maybe_exit(w);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    (void)fd;
    (void)what;
    static int ticks;
    if (!w->stopping)
        jobs_connect_redis(w);
    if (++ticks % 15 == 0)
        jobs_reclaim(w);
    jobs_maybe_read(w);
    inbound_tick(w);
}

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    (void)fd;
    (void)what;
    log_warn("grace period over with %d sends in flight; exiting (their deliveries stay "
             "'sending' and become unknown)",
             w->inflight);
    jobs_flush(w);
    event_base_loopexit(w->base, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct worker *w = arg;
    (void)what;
    if (w->stopping)
        return;
    log_info("signal %d: draining %d in-flight sends", (int)sig, w->inflight);
    w->stopping = true;
    struct timeval tv = {w->cfg->shutdown_grace_s, 0};
    evtimer_add(w->grace, &tv);
    maybe_exit(w);
}

int main(int argc, char **argv)
{
    static struct worker_config cfg;
    char err[512];
    if (cfg_load(worker_rows, NROWS, &cfg, argc, argv,
                 "usage: crier-worker [--help]\n\nClaims jobs and places the sends.", err,
                 sizeof(err)) != CR_OK) {
        fprintf(stderr, "crier-worker: %s\n", err);
        return 2;
    }
    /* A job idle in the stream longer than the orphan age is taken by
     * another worker: a live send - up to 10 s in its account's queue, then
     * the request - must be over well before. */
    if (cfg.orphan_age_s * 1000 < cfg.send_timeout_ms + 15000) {
        fprintf(stderr,
                "crier-worker: CRIER_ORPHAN_AGE_S (%ld s) must exceed CRIER_SEND_TIMEOUT_MS "
                "(%ld ms) by 15 s at least\n",
                cfg.orphan_age_s, cfg.send_timeout_ms);
        return 2;
    }
    trim_trailing_slashes(cfg.public_url);
    log_init("crier-worker", (enum log_level)cfg.log_level, (enum log_format)cfg.log_format);
    signal(SIGPIPE, SIG_IGN);
    srandom((unsigned)time(NULL) ^ (unsigned)getpid());

    static struct worker w;
    w.cfg = &cfg;
    if (crypto_parse_key(cfg.secret_key, w.secret) == CR_OK)
        w.have_secret = true;
    else if (*cfg.secret_key) {
        fprintf(stderr, "crier-worker: CRIER_SECRET_KEY must be 64 hex chars or base64 of 32 "
                        "bytes\n");
        return 2;
    }
    rq_keys_init(&w.keys, cfg.key_prefix);
    if (cfg.consumer && *cfg.consumer) {
        snprintf(w.consumer, sizeof(w.consumer), "%s", cfg.consumer);
    } else {
        char host[64] = "host";
        gethostname(host, sizeof(host) - 1);
        snprintf(w.consumer, sizeof(w.consumer), "%s-%d", host, (int)getpid());
    }
    w.base = event_base_new();
    if (!send_init(&w)) {
        log_error("cannot initialise the HTTP client");
        return 1;
    }
    /* Every statement of the worker finds its rows by key (ids, a message
     * sid, a phone number) or from a partial index. A sequential scan is
     * never right for them, but the planner picks one for the claims and
     * outcomes while the statistics still describe a young, small
     * deliveries table, and until the next ANALYZE each statement reads
     * the whole table. Off, the planner takes a scan only where no index
     * serves. */
    w.pool = pgpool_new_with(w.base, cfg.database_url, "crier-worker", (int)cfg.pg_pool_size, 30000,
                             "-c enable_seqscan=off");
    jobs_connect_redis(&w);
    inbound_start(&w);
    reconcile_start(&w);

    struct timeval flush_tv = {cfg.flush_ms / 1000, (cfg.flush_ms % 1000) * 1000};
    w.flush_timer = event_new(w.base, -1, EV_PERSIST, flush_cb, &w);
    event_add(w.flush_timer, &flush_tv);
    struct timeval tick_tv = {1, 0};
    w.tick = event_new(w.base, -1, EV_PERSIST, tick_cb, &w);
    event_add(w.tick, &tick_tv);
    w.grace = evtimer_new(w.base, grace_cb, &w);
    w.sigterm = evsignal_new(w.base, SIGTERM, on_signal, &w);
    w.sigint = evsignal_new(w.base, SIGINT, on_signal, &w);
    event_add(w.sigterm, NULL);
    event_add(w.sigint, NULL);
    log_info("worker %s started (concurrency %ld)", w.consumer, cfg.concurrency);

    event_base_dispatch(w.base);

    log_info("worker %s stopping; %lld messages sent", w.consumer, w.sent_total);
    /* The pool first, while everything its pending callbacks touch is
     * alive (the write connection, the inbound consumer, reconciliation):
     * they see w.stopping and end their work without a retry or an ack.
     * Then the Redis connections, whose pending callbacks (reclaims,
     * deferrals) are still the inbound consumer's and the jobs'. */
    w.stopping = true;
    pgpool_free(w.pool);
    w.pool = NULL;
    if (w.wr)
        redisAsyncFree(w.wr);
    if (w.rd)
        redisAsyncFree(w.rd);
    inbound_free(&w);
    reconcile_free(&w);
    send_cleanup(&w);
    event_free(w.flush_timer);
    event_free(w.tick);
    event_free(w.grace);
    event_free(w.sigterm);
    event_free(w.sigint);
    event_base_free(w.base);
    for (int i = 0; i < w.noutcomes; i++) /* unwritten when the grace period ran out */
        free(w.outcomes[i].body);
    free(w.outcomes);
    cfg_cleanup(worker_rows, NROWS, &cfg);
    return 0;
}
