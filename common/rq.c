/* rq.c - Redis connection helpers and key names. */
#include "rq.h"

#include <stdio.h>
#include <string.h>

#include "config.h"
#include "log.h"

void rq_keys_init(struct rq_keys *k, const char *prefix)
{
    snprintf(k->actions, sizeof(k->actions), "%sactions", prefix);
    snprintf(k->jobs[0], sizeof(k->jobs[0]), "%sjobs:sms", prefix);
    snprintf(k->jobs[1], sizeof(k->jobs[1]), "%sjobs:email", prefix);
    snprintf(k->jobs[2], sizeof(k->jobs[2]), "%sjobs:voice", prefix);
    snprintf(k->inbound, sizeof(k->inbound), "%sinbound", prefix);
    snprintf(k->dlq, sizeof(k->dlq), "%sdlq", prefix);
    snprintf(k->delayed, sizeof(k->delayed), "%sdelayed", prefix);
}

redisContext *rq_connect(const char *url, int timeout_ms, char *err, size_t errsz)
{
    char host[256], pass[256];
    int port, db;
    if (cfg_parse_redis_url(url, host, sizeof(host), &port, pass, sizeof(pass), &db) != CR_OK) {
        snprintf(err, errsz, "malformed Redis URL");
        return NULL;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    if (!c || c->err) {
        snprintf(err, errsz, "redis %s:%d: %s", host, port, c ? c->errstr : "out of memory");
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisReply *r = NULL;
    if (pass[0]) {
        r = redisCommand(c, "AUTH %s", pass);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errsz, "redis AUTH failed");
            goto fail;
        }
        freeReplyObject(r);
    }
    if (db) {
        r = redisCommand(c, "SELECT %d", db);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errsz, "redis SELECT %d failed", db);
            goto fail;
        }
        freeReplyObject(r);
    }
    return c;
fail:
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return NULL;
}

redisAsyncContext *rq_connect_async(const char *url, char *err, size_t errsz)
{
    char host[256], pass[256];
    int port, db;
    if (cfg_parse_redis_url(url, host, sizeof(host), &port, pass, sizeof(pass), &db) != CR_OK) {
        snprintf(err, errsz, "malformed Redis URL");
        return NULL;
    }
    redisAsyncContext *ac = redisAsyncConnect(host, port);
    if (!ac || ac->err) {
        snprintf(err, errsz, "redis %s:%d: %s", host, port, ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        return NULL;
    }
    if (pass[0])
        redisAsyncCommand(ac, NULL, NULL, "AUTH %s", pass);
    if (db)
        redisAsyncCommand(ac, NULL, NULL, "SELECT %d", db);
    return ac;
}

enum cr_err rq_ensure_group(redisContext *c, const char *key, const char *group)
{
    redisReply *r = redisCommand(c, "XGROUP CREATE %s %s $ MKSTREAM", key, group);
    if (!r)
        return CR_EREDIS;
    enum cr_err err = CR_OK;
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0) {
        log_error("XGROUP CREATE %s %s: %s", key, group, r->str);
        err = CR_EREDIS;
    }
    freeReplyObject(r);
    return err;
}

const char *rq_entry_field(const redisReply *fields, const char *name)
{
    for (size_t k = 0; k + 1 < fields->elements; k += 2)
        if (fields->element[k]->type == REDIS_REPLY_STRING &&
            strcmp(fields->element[k]->str, name) == 0 &&
            fields->element[k + 1]->type == REDIS_REPLY_STRING)
            return fields->element[k + 1]->str;
    return NULL;
}
