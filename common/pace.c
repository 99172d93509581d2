/* pace.c - token buckets and the delayed-job set (see pace.h). */
#include "pace.h"

#include <stdio.h>
#include <string.h>

#include "log.h"

/* take(key, rate, want, now_ms) -> granted, wait_ms. Shared by both scripts. */
#define LUA_TAKE_FN                                                                                \
    "local function take(key, rate, want, now)\n"                                                  \
    "  local cap = math.max(1, rate / 60)\n"                                                       \
    "  local st = redis.call('HMGET', key, 'tokens', 'ts')\n"                                      \
    "  local tokens = tonumber(st[1]) or cap\n"                                                    \
    "  local ts = tonumber(st[2]) or now\n"                                                        \
    "  if now > ts then tokens = math.min(cap, tokens + (now - ts) * rate / 60000) end\n"          \
    "  local granted\n"                                                                            \
    "  if want < 0 then\n"                                                                         \
    "    tokens = math.min(cap, tokens - want)\n"                                                  \
    "    granted = 0\n"                                                                            \
    "  else\n"                                                                                     \
    "    granted = math.min(want, math.floor(tokens))\n"                                           \
    "    tokens = tokens - granted\n"                                                              \
    "  end\n"                                                                                      \
    "  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(math.max(now, ts)))\n"   \
    "  redis.call('PEXPIRE', key, 604800000)\n"                                                    \
    "  local wait = 0\n"                                                                           \
    "  if granted < want then wait = math.ceil((1 - (tokens - math.floor(tokens))) * 60000 / "     \
    "rate) "                                                                                       \
    "end\n"                                                                                        \
    "  return granted, wait\n"                                                                     \
    "end\n"                                                                                        \
    "local t = redis.call('TIME')\n"                                                               \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

/* KEYS[1] bucket; ARGV rate, want. */
const char pace_lua_take[] =
    LUA_TAKE_FN "local g, w = take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), now)\n"
                "return {g, w}\n";

/* KEYS[1] a provider account's bucket, KEYS[2] its pause key (set for a
 * 429's Retry-After); ARGV rate per minute, want. While paused: nothing,
 * and the pause's remaining milliseconds as the wait. */
const char pace_lua_take_account[] =
    LUA_TAKE_FN "local p = redis.call('PTTL', KEYS[2])\n"
                "if p > 0 then return {0, p} end\n"
                "local g, w = take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), now)\n"
                "return {g, w}\n";

/* KEYS[1] the delayed set, KEYS[2] the campaign's bucket; ARGV rate, then
 * (due ms, member) pairs. A paced campaign's members due at the same time
 * (a window opening) are spread from it at the campaign's pace, counted per
 * opening in the bucket's hash, so they become due one token apart. */
const char pace_lua_defer[] =
    "local rate = tonumber(ARGV[1])\n"
    "for i = 2, #ARGV - 1, 2 do\n"
    "  local k = redis.call('HINCRBY', KEYS[2], 'slot:' .. ARGV[i], 1)\n"
    "  redis.call('ZADD', KEYS[1], tonumber(ARGV[i]) + (k - 1) * 60000 / rate, ARGV[i + 1])\n"
    "end\n"
    "redis.call('PEXPIRE', KEYS[2], 604800000)\n"
    "return 0\n";

/* KEYS[1] the delayed set; ARGV prefix, limit. */
const char pace_lua_move[] =
    LUA_TAKE_FN "local prefix = ARGV[1]\n"
                "local due = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, "
                "tonumber(ARGV[2]))\n"
                "local moved = 0\n"
                "local blocked = {}\n"
                "for _, m in ipairs(due) do\n"
                "  local ch, d, tn, c, rate = string.match(m, '^(%a+)|(%d+)|(%d+)|(%d+)|(%d+)$')\n"
                "  if not ch then\n"
                "    redis.call('ZREM', KEYS[1], m)\n"
                "  else\n"
                "    rate = tonumber(rate)\n"
                "    local ok, wait = true, 0\n"
                "    if rate > 0 then\n"
                "      if blocked[c] then ok = false else\n"
                "        local g\n"
                "        g, wait = take(prefix .. 'pace:' .. c, rate, 1, now)\n"
                "        ok = g == 1\n"
                "        if not ok then blocked[c] = now + wait end\n"
                "      end\n"
                "    end\n"
                "    if ok then\n"
                "      redis.call('XADD', prefix .. 'jobs:' .. ch, '*', 'd', d, 't', tn, 'c', c)\n"
                "      redis.call('ZREM', KEYS[1], m)\n"
                "      moved = moved + 1\n"
                "    else\n"
                "      redis.call('ZADD', KEYS[1], 'XX', blocked[c], m)\n"
                "      blocked[c] = blocked[c] + 60000 / rate\n"
                "    end\n"
                "  end\n"
                "end\n"
                "local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')\n"
                "local nxt = -1\n"
                "if first[2] then nxt = math.max(0, tonumber(first[2]) - now) end\n"
                "return {moved, nxt}\n";

static enum cr_err two_ints(redisContext *c, redisReply *r, const char *what, long *a, long *b)
{
    enum cr_err err = CR_OK;
    if (!r) {
        log_warn("%s: %s", what, c->errstr);
        return CR_EREDIS;
    }
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_INTEGER && r->element[1]->type == REDIS_REPLY_INTEGER) {
        *a = (long)r->element[0]->integer;
        *b = (long)r->element[1]->integer;
    } else {
        log_warn("%s: %s", what, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        err = CR_EREDIS;
    }
    freeReplyObject(r);
    return err;
}

enum cr_err pace_take(redisContext *c, const char *prefix, const char *campaign, long rate,
                      long want, long *granted, long *wait_ms)
{
    char key[160];
    snprintf(key, sizeof(key), "%space:%s", prefix, campaign);
    redisReply *r = redisCommand(c, "EVAL %s 1 %s %ld %ld", pace_lua_take, key, rate, want);
    *granted = 0;
    *wait_ms = 0;
    return two_ints(c, r, "pace take", granted, wait_ms);
}

enum cr_err pace_move_due(redisContext *c, const char *prefix, long limit, long *moved,
                          long *next_ms)
{
    char key[160];
    snprintf(key, sizeof(key), "%sdelayed", prefix);
    redisReply *r = redisCommand(c, "EVAL %s 1 %s %s %ld", pace_lua_move, key, prefix, limit);
    *moved = 0;
    *next_ms = -1;
    return two_ints(c, r, "move due jobs", moved, next_ms);
}

int pace_member(char *out, size_t outsz, const char *channel, const char *delivery,
                const char *tenant, const char *campaign, long rate)
{
    return snprintf(out, outsz, "%s|%s|%s|%s|%ld", channel, delivery, tenant, campaign, rate);
}
