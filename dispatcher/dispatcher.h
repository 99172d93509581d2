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
    long lease_s;
    long slice_ms;
    int log_level;
    int log_format;
};

struct disp {
    const struct disp_config *cfg;
    PGconn *pg;
    bool pg_tuned; /* session settings applied */
    redisContext *redis;
    struct rq_keys keys;
    char consumer[128];
    volatile sig_atomic_t *stop;
    long long last_move_ms;  /* when the delayed set was last looked at */
    long long last_sched_ms; /* when scheduled campaigns were last started */
    long next_move_ms;       /* ms until its earliest member is due (-1: empty) */
};

/* A running campaign this dispatcher holds the lease of (see lease.c). */
struct campaign {
    char id[24], tenant[24], channel[8];
    int ch;            /* enum seg_channel */
    long rate;         /* rate_per_minute, 0 when unpaced */
    char *criteria;    /* segment_criteria as JSON text */
    char *window;      /* send_window as JSON text, NULL for the default */
    char *deadline;    /* sends after it expire; NULL: no expiry */
    char cap[16];      /* the tenant's frequency cap, "" when none */
    bool has_supp;     /* the tenant has suppressions on this channel */
    bool expanded;     /* expanded_at is set */
    bool broken;       /* its segment does not compile (logged) */
    bool rewind;       /* resumed: release again from the first queued delivery */
    char cursor[24];   /* dispatch_cursor: last customer id expanded */
    char enqueued[24]; /* enqueued_cursor: everything at or below is released */
    char last[24];     /* last_delivery_id */
    long long wait_ms; /* paced: ms until the bucket has a token again */
};

/* lease.c: takes (or renews) the leases of running campaigns with work
 * left, at most max of them. */
enum cr_err lease_campaigns(struct disp *d, struct campaign *out, int max, int *n) CR_MUST_CHECK;
void campaign_cleanup(struct campaign *c);
/* Gives up every lease this dispatcher holds (at shutdown). */
void lease_release_all(struct disp *d);
/* Whether something is left to release (enqueued < last). */
bool campaign_unreleased(const struct campaign *c);

/* expand.c: creates the campaign's deliveries page by page (keyset on
 * customers.id) until it is expanded or slice_ms has passed; an unpaced
 * campaign's jobs are released with each page. */
enum cr_err expand_campaign(struct disp *d, struct campaign *c,
                            long long deadline_ms) CR_MUST_CHECK;

/* release.c: releases the campaign's queued deliveries above its cursor in
 * id order: to the job stream when the recipient's window is open (a paced
 * campaign spends a token each), to crier:delayed otherwise, skipped when
 * past the campaign's expiry. Stops when caught up, out of tokens or at
 * deadline_ms. */
enum cr_err release_campaign(struct disp *d, struct campaign *c,
                             long long deadline_ms) CR_MUST_CHECK;
/* Resumed campaigns: moves the release cursor back before the first queued
 * delivery, so everything unsent is released again (extra jobs are harmless:
 * the worker's claim takes a delivery once). */
enum cr_err rewind_campaign(struct disp *d, struct campaign *c) CR_MUST_CHECK;
/* XADDs one job per delivery id (pipelined) to the channel's stream. */
enum cr_err xadd_jobs(struct disp *d, int channel, const char *tenant, const char *campaign,
                      char **ids, int n) CR_MUST_CHECK;
/* ZADDs "id:due_ms" items to crier:delayed. */
enum cr_err defer_jobs(struct disp *d, const struct campaign *c, char **items, int n) CR_MUST_CHECK;
/* Moves due members of crier:delayed to their streams, at most every
 * 100 ms unless force. Redis only: safe while a page statement runs. */
enum cr_err move_due(struct disp *d, bool force) CR_MUST_CHECK;
/* Starts scheduled campaigns whose time has come, at most every 500 ms
 * unless force. Called between pages too, so that a long expansion does
 * not delay a scheduled launch. */
enum cr_err start_due(struct disp *d, bool force) CR_MUST_CHECK;

/* upkeep.c: the work any dispatcher may do at any time. */
enum cr_err start_scheduled(struct disp *d) CR_MUST_CHECK;
enum cr_err promote_retries(struct disp *d) CR_MUST_CHECK;
enum cr_err repair_outbox(struct disp *d, long min_age_s) CR_MUST_CHECK;
enum cr_err complete_campaigns(struct disp *d) CR_MUST_CHECK;

/* Splits a comma list in place into at most max items. */
int split_list(char *list, char **items, int max);
long long now_ms(void);

#endif
