/* dispatcher.h - crier-dispatcher's config, state and modules. */
#ifndef CRIER_DISPATCHER_H
#define CRIER_DISPATCHER_H

#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdbool.h>

#include "err.h"
#include "rq.h"

struct disp_config {
    char *database_url;
    char *redis_url;
    char *key_prefix;
    char *consumer;
    long page_size;
    long poll_ms;
    long repair_after_s;
    int log_level;
    int log_format;
};

struct disp {
    const struct disp_config *cfg;
    PGconn *pg;
    redisContext *redis;
    struct rq_keys keys;
    char consumer[128];
    volatile sig_atomic_t *stop;
};

/* Expands every running campaign whose expansion is unfinished. */
enum cr_err expand_pending_campaigns(struct disp *d) CR_MUST_CHECK;
/* Re-enqueues deliveries left in 'pending' by a crash between the
 * database write and the XADD (the outbox repair). min_age_s = 0 at start. */
enum cr_err repair_outbox(struct disp *d, long min_age_s) CR_MUST_CHECK;
/* Moves scheduled campaigns whose scheduled_at has passed to running. */
enum cr_err start_scheduled(struct disp *d) CR_MUST_CHECK;
/* Enqueues again the queued deliveries of campaigns resumed since their
 * jobs were dropped while paused. */
enum cr_err requeue_resumed(struct disp *d) CR_MUST_CHECK;
/* Re-enqueues deliveries whose retry is due. */
enum cr_err promote_retries(struct disp *d) CR_MUST_CHECK;
/* Moves running campaigns whose every delivery is terminal to completed. */
enum cr_err complete_campaigns(struct disp *d) CR_MUST_CHECK;
/* XADDs one job per delivery id (pipelined) then marks them queued. */
enum cr_err enqueue_jobs(struct disp *d, int channel, const char *tenant, const char *campaign,
                         char **ids, int n, bool mark_queued) CR_MUST_CHECK;
/* Enqueues born-queued deliveries above their campaign's enqueued_cursor
 * (a crash between the expansion commit and the XADD). Run at start-up,
 * before this dispatcher expands anything. */
enum cr_err repair_unenqueued(struct disp *d) CR_MUST_CHECK;

#endif
