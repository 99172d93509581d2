/* rq.h - Redis connection helpers and crier's key names.
 *
 * Keys (prefix from CRIER_KEY_PREFIX, default "crier:"): actions, jobs:sms,
 * jobs:email, jobs:voice, inbound, dlq, delayed. Consumer groups:
 * "dispatchers" on actions, "workers" on jobs:*, "inbound" on inbound. */
#ifndef CRIER_RQ_H
#define CRIER_RQ_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stddef.h>

#include "err.h"

#define RQ_KEY_MAX 128
#define RQ_NCHANNELS 3 /* sms, email, voice: enum seg_channel */

struct rq_keys {
    char actions[RQ_KEY_MAX];
    char jobs[RQ_NCHANNELS][RQ_KEY_MAX]; /* indexed by enum seg_channel: sms, email, voice */
    char inbound[RQ_KEY_MAX];
    char dlq[RQ_KEY_MAX];
    char delayed[RQ_KEY_MAX];
};

void rq_keys_init(struct rq_keys *k, const char *prefix);

/* Blocking connection from a redis:// URL, with AUTH/SELECT done and a
 * command timeout. NULL with a message in err on failure. */
redisContext *rq_connect(const char *url, int timeout_ms, char *err, size_t errsz);

/* Async connection (not yet attached to a loop); AUTH/SELECT are queued as
 * the first commands. NULL with a message in err on failure. */
redisAsyncContext *rq_connect_async(const char *url, char *err, size_t errsz);

/* XGROUP CREATE key group $ MKSTREAM, ignoring BUSYGROUP. */
enum cr_err rq_ensure_group(redisContext *c, const char *key, const char *group) CR_MUST_CHECK;

/* The string value of field name in a stream entry's [field, value, ...]
 * array, or NULL when it is absent or not a string. */
const char *rq_entry_field(const redisReply *fields, const char *name);

#endif
