/* worker.h - crier-worker's config, state and modules.
 *
 * Flow (one libevent loop, nothing blocks it): XREADGROUP a batch of jobs
 * (async hiredis) → claim the batch in PostgreSQL (one UPDATE … RETURNING
 * through the async pool; a delivery is claimed by one worker only) →
 * render and send concurrently (curl multi on the loop) → buffer outcomes →
 * write them in one statement → XACK. Claims, sends and writes of different
 * batches overlap. */
#ifndef CRIER_WORKER_H
#define CRIER_WORKER_H

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <event2/event.h>
#include <hiredis/async.h>
#include <libpq-fe.h>

#include "pgpool.h"
#include <stdbool.h>
#include <stdio.h>

#include "crypto.h"
#include "pgarr.h"
#include "provider.h"
#include "rq.h"

struct worker_config {
    char *database_url;
    char *redis_url;
    char *key_prefix;
    char *consumer;
    char *public_url;
    char *secret_key;
    char *twilio_base_url;
    char *sendgrid_base_url;
    char *sandbox_log;
    long pg_pool_size;
    long concurrency;
    long batch;
    long max_connections;
    long send_timeout_ms;
    long connect_timeout_ms;
    long max_attempts;
    long retry_base_ms;
    long orphan_age_s; /* a job idle this long is reclaimed; its send, if any, is over */
    long flush_ms;
    long shutdown_grace_s;
    long attribution_window_s; /* a reply counts for the SMS sent this recently */
    long reconcile_after_s;    /* a delivery 'sent' this long is asked about */
    long reconcile_every_s;
    long reconcile_batch;
    int log_level;
    int log_format;
};

struct send;

/* A provider account's usable form, decrypted once and cached, with its
 * queue of sends waiting for tokens of its rate (rate.c). */
struct account {
    long long id;
    int kind; /* enum account_kind */
    char from[64];
    char url[512];  /* full Messages.json URL */
    CURLU *uh;      /* url parsed once (HTTP kinds): curl parses CURLOPT_URL on every send */
    char auth[256]; /* "sid:secret" for Basic auth; SendGrid: the Authorization header */
    char smtp_user[260], smtp_pass[520];
    bool smtp_starttls; /* require STARTTLS (smtp://); "tls" is smtps:// in url */
    long rate_ps;       /* messages (segments) per second across all workers; 0: none */
    double credit;      /* tokens taken and not yet spent */
    struct send *qhead, *qtail;
    long qcost;          /* tokens the queue needs */
    long long qsince_ms; /* when the queue's head started waiting */
    bool taking;         /* an EVAL is outstanding */
    struct event *timer; /* next take */
    struct worker *w;
    struct account *next;
};

enum account_kind { ACCOUNT_SANDBOX = 0, ACCOUNT_TWILIO, ACCOUNT_SENDGRID, ACCOUNT_SMTP };

/* One outcome waiting to be written. */
struct outcome {
    int ch; /* the job's stream (enum seg_channel) */
    long long delivery_id;
    long long tenant_id;
    int attempts;
    char stream_id[32];
    const char *provider; /* static string */
    char variant[33];     /* A/B variant name, "" when the campaign has none */
    char *body;           /* rendered message, owned */
    struct send_result res;
};

struct worker {
    const struct worker_config *cfg;
    struct event_base *base;
    struct pgpool *pool;
    redisAsyncContext *rd; /* blocking reads only */
    redisAsyncContext *wr; /* XACK, XADD */
    bool rd_ready, wr_ready;
    struct rq_keys keys;
    char consumer[128];
    uint8_t secret[CRYPTO_KEY_LEN];
    bool have_secret;
    struct account *accounts;
    FILE *sandbox;
    unsigned long long sandbox_seq;

    struct curlev *curl;                /* the sends' transfers (common/curlev.h) */
    int inflight;                       /* sends in curl */
    int claiming;                       /* jobs whose claim statement is running */
    int writing;                        /* outcomes whose write statement is running */
    int claims_running, writes_running; /* statements, at most one each */
    bool reading;                       /* an XREADGROUP is outstanding */
    bool stopping;
    struct event *flush_timer, *tick, *sigterm, *sigint, *grace;

    /* The variants of the campaign last rendered (most batches hold one
     * campaign): parsed once, not per message. */
    long long variants_campaign;
    cJSON *variants;

    struct reclaim {
        struct worker *w;
        int ch;
    } reclaims[RQ_NCHANNELS];

    struct inbound *inbound;     /* inbound.c */
    struct reconcile *reconcile; /* reconcile.c */

    struct outcome *outcomes; /* pending writes */
    int noutcomes, outcomes_cap;
    long long sent_total;
};

/* jobs.c */
void jobs_maybe_read(struct worker *w);
void jobs_add_outcome(struct worker *w, struct outcome *o); /* takes o's body */
void jobs_flush(struct worker *w);
void jobs_connect_redis(struct worker *w);
void jobs_reclaim(struct worker *w);
/* Work not yet finished: reads, claims, sends, unwritten outcomes. */
bool jobs_idle(const struct worker *w);

/* inbound.c: the consumer of the inbound stream (group "inbound"). */
void inbound_start(struct worker *w);
/* Reconnects, reclaims idle entries now and then, reads; call once a second. */
void inbound_tick(struct worker *w);
void inbound_maybe_read(struct worker *w);
/* No read or statement outstanding. */
bool inbound_idle(const struct worker *w);
void inbound_free(struct worker *w);
/* Applies n Twilio status reports (reconcile.c) through the status
 * callbacks' own path: tenants[i] and payloads[i] (JSON: sid, status,
 * error_code, answered_by; copied). done(arg, ok) once committed (ok) or
 * failed. */
void inbound_apply_status(struct worker *w, int n, const long long *tenants, char *const *payloads,
                          void (*done)(void *arg, bool ok), void *arg);

/* reconcile.c: asks the provider about deliveries stuck in 'sent'. */
void reconcile_start(struct worker *w);
bool reconcile_idle(const struct worker *w);
void reconcile_free(struct worker *w);

/* send.c */
/* The provider account id (cached after the first call; sealed: its
 * encrypted credentials, opened with CRIER_SECRET_KEY; voice: a Twilio
 * account places calls). NULL with the reason in why. Borrowed. */
struct account *send_account(struct worker *w, long long id, const char *kind, const char *from,
                             const char *sealed, long rate_ps, bool voice, char *why, size_t whysz);
bool send_init(struct worker *w);
void send_cleanup(struct worker *w);
/* Starts the send for one claimed row (columns of the claim query). */
void send_start(struct worker *w, PGresult *res, int row, int ch, const char *stream_id);

#endif
