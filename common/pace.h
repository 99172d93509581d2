/* pace.h - Redis-side scheduling: token buckets and the delayed-job set.
 *
 * A token bucket (hash <prefix>pace:<campaign>: tokens, ts) refills at
 * rate/60000 tokens per millisecond up to one second's worth (at least one)
 * and is taken in batches by a Lua script, so every dispatcher shares it and
 * Redis' clock. The delayed set (<prefix>delayed) holds jobs by due time in
 * milliseconds; each member is "channel|delivery|tenant|campaign|rate"
 * (rate per minute, 0 when unpaced). A second script moves the due members
 * to their job streams atomically: several dispatchers may run it at once
 * and each member still becomes exactly one stream entry. A paced member
 * takes a token from its campaign's bucket on the way; without one it waits:
 * the campaign's waiting members are spread from the bucket's next token on
 * at the campaign's pace, so a window opening never bursts past the pace,
 * and never holds up other campaigns' due members. */
#ifndef CRIER_PACE_H
#define CRIER_PACE_H

#include <hiredis/hiredis.h>
#include <stddef.h>

#include "err.h"

#define PACE_MEMBER_MAX 96

/* Takes up to want tokens (rate per minute) from campaign's bucket. Sets
 * *granted and, when fewer than want were granted, *wait_ms until the next
 * token. want < 0 gives -want unused tokens back. */
enum cr_err pace_take(redisContext *c, const char *prefix, const char *campaign, long rate,
                      long want, long *granted, long *wait_ms) CR_MUST_CHECK;

/* Moves up to limit due members of the delayed set to their streams. Sets
 * *moved and *next_ms (milliseconds until the earliest remaining member is
 * due, -1 when the set is empty). */
enum cr_err pace_move_due(redisContext *c, const char *prefix, long limit, long *moved,
                          long *next_ms) CR_MUST_CHECK;

/* Writes a delayed-set member. */
int pace_member(char *out, size_t outsz, const char *channel, const char *delivery,
                const char *tenant, const char *campaign, long rate);

/* The scripts' text (the worker runs them through its async connection). */
extern const char pace_lua_take[];
extern const char pace_lua_move[];
extern const char pace_lua_defer[];
extern const char pace_lua_take_account[];

#endif
