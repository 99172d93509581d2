/* crier-dispatcher - expands launched campaigns into deliveries and jobs,
 * releases them at each campaign's pace and in each recipient's send
 * window, moves due delayed jobs to the streams, and completes finished
 * campaigns.
 *
 * Blocking by design: one loop, one PostgreSQL and one Redis connection.
 * Several dispatchers may run: campaigns are shared out by leases
 * (lease.c); everything else is safe in parallel. The actions stream
 * (group "dispatchers") only wakes the loop early; PostgreSQL's campaign
 * state is what the loop acts on, so a lost action, a Redis outage or a
 * crash delays work but never loses it. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "db.h"
#include "dispatcher.h"
#include "log.h"

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static const struct cfg_row disp_rows[] = {
    {"CRIER_DATABASE_URL", CFG_STRING, offsetof(struct disp_config, database_url),
     "postgresql://crier@127.0.0.1:5432/crier", 0, 0, NULL, 0, 1, "PostgreSQL connection URL"},
    {"CRIER_REDIS_URL", CFG_STRING, offsetof(struct disp_config, redis_url),
     "redis://127.0.0.1:6379/0", 0, 0, NULL, 0, 0, "Redis URL redis://[:pass@]host:port/db"},
    {"CRIER_KEY_PREFIX", CFG_STRING, offsetof(struct disp_config, key_prefix), "crier:", 0, 0, NULL,
     0, 0, "prefix of every Redis key"},
    {"CRIER_DISPATCHER_ID", CFG_STRING, offsetof(struct disp_config, consumer), "", 0, 0, NULL, 0,
     0, "consumer name in the dispatchers group (default: host-pid)"},
    {"CRIER_DISPATCH_PAGE", CFG_INT, offsetof(struct disp_config, page_size), "5000", 10, 50000,
     NULL, 0, 0, "customers per expansion page (one statement per page)"},
    {"CRIER_DISPATCH_POLL_MS", CFG_INT, offsetof(struct disp_config, poll_ms), "500", 50, 10000,
     NULL, 0, 0, "longest wait for an action before polling PostgreSQL"},
    {"CRIER_LEASE_SECONDS", CFG_INT, offsetof(struct disp_config, lease_s), "10", 2, 600, NULL, 0,
     0, "a campaign's lease; a dead dispatcher's campaigns are taken over after it"},
    {"CRIER_DISPATCH_SLICE_MS", CFG_INT, offsetof(struct disp_config, slice_ms), "1000", 20, 10000,
     NULL, 0, 0, "longest run on one campaign before the loop turns to the others"},
    {"CRIER_OUTBOX_REPAIR_AFTER", CFG_INT, offsetof(struct disp_config, repair_after_s), "30", 1,
     3600, NULL, 0, 0, "seconds a delivery may stay 'pending' before it is enqueued again"},
    CFG_COMMON_ROWS(struct disp_config),
};
#define NROWS (sizeof(disp_rows) / sizeof(disp_rows[0]))

#define MAX_HELD 16

/* Work left that needs no waiting: the loop comes straight back. */
static bool campaign_busy(const struct campaign *c)
{
    if (c->broken)
        return false;
    return !c->expanded || (campaign_unreleased(c) && c->wait_ms == 0);
}

/* One slice of a held campaign's work: serve a resume, release what is
 * owed, then expand further. */
static enum cr_err work_campaign(struct disp *d, struct campaign *c, long slice_ms)
{
    long long deadline = now_ms() + slice_ms;
    enum cr_err e = CR_OK;
    if (c->rewind)
        e = rewind_campaign(d, c);
    if (!e && campaign_unreleased(c))
        e = release_campaign(d, c, deadline);
    /* An unpaced campaign's expansion releases each page itself, so it
     * starts only once everything before it is released. */
    if (!e && !c->expanded && (c->rate > 0 || !campaign_unreleased(c)) && now_ms() < deadline)
        e = expand_campaign(d, c, deadline);
    if (e == CR_EINVAL) {
        c->broken = true; /* logged; it must not stop the others */
        e = CR_OK;
    }
    return e;
}

static void disconnect(struct disp *d)
{
    if (d->pg)
        PQfinish(d->pg);
    d->pg_tuned = false;
    if (d->redis)
        redisFree(d->redis);
    d->pg = NULL;
    d->redis = NULL;
}

static enum cr_err connect_all(struct disp *d)
{
    char err[512];
    if (!d->pg &&
        !(d->pg = db_connect(d->cfg->database_url, "crier-dispatcher", err, sizeof(err)))) {
        log_warn("PostgreSQL: %s", err);
        return CR_EPG;
    }
    if (d->pg && !d->pg_tuned) {
        /* Every write of the dispatcher is redone when lost: an expansion
         * page lost with its cursor is expanded again (its jobs, if XADDed,
         * find no row or a live one, and the claim takes a delivery once);
         * a lost release cursor releases again; leases, scheduled starts
         * and completions are re-evaluated. So its commits need not wait
         * for the WAL flush - up to a few hundred milliseconds of them may
         * be redone after a PostgreSQL crash, never half-applied. */
        if (db_exec(d->pg, "session settings", "SET synchronous_commit = off", 0, NULL, NULL)) {
            PQfinish(d->pg);
            d->pg = NULL;
            return CR_EPG;
        }
        d->pg_tuned = true;
    }
    if (!d->redis) {
        long to = d->cfg->poll_ms + 5000;
        if (!(d->redis = rq_connect(d->cfg->redis_url, (int)to, err, sizeof(err)))) {
            log_warn("%s", err);
            return CR_EREDIS;
        }
        if (rq_ensure_group(d->redis, d->keys.actions, "dispatchers") != CR_OK) {
            redisFree(d->redis);
            d->redis = NULL;
            return CR_EREDIS;
        }
    }
    return CR_OK;
}

/* Waits for actions; acks them (the state they announce is in PostgreSQL). */
static enum cr_err wait_actions(struct disp *d, long block_ms)
{
    redisReply *r = redisCommand(d->redis,
                                 "XREADGROUP GROUP dispatchers %s COUNT 64 BLOCK %ld "
                                 "STREAMS %s >",
                                 d->consumer, block_ms, d->keys.actions);
    if (!r) {
        log_warn("redis: %s", d->redis->errstr);
        return CR_EREDIS;
    }
    enum cr_err err = CR_OK;
    if (r->type == REDIS_REPLY_ERROR) {
        log_warn("XREADGROUP: %s", r->str);
        err = CR_EREDIS;
        if (strncmp(r->str, "NOGROUP", 7) == 0 &&
            rq_ensure_group(d->redis, d->keys.actions, "dispatchers") != CR_OK)
            log_warn("cannot recreate the dispatchers group");
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
        redisReply *entries = r->element[0]->element[1];
        for (size_t i = 0; i < entries->elements; i++) {
            redisReply *e = entries->element[i];
            const char *id = e->element[0]->str;
            redisReply *f = e->element[1];
            char desc[160] = "";
            size_t off = 0;
            for (size_t k = 0; k + 1 < f->elements && off < sizeof(desc) - 1; k += 2)
                off += (size_t)snprintf(desc + off, sizeof(desc) - off, "%s=%s ",
                                        f->element[k]->str, f->element[k + 1]->str);
            log_info("action %s: %s", id, desc);
            redisReply *ack = redisCommand(d->redis, "XACK %s dispatchers %s", d->keys.actions, id);
            if (ack)
                freeReplyObject(ack);
        }
    }
    freeReplyObject(r);
    return err;
}

int main(int argc, char **argv)
{
    static struct disp_config cfg;
    char err[512];
    if (cfg_load(disp_rows, NROWS, &cfg, argc, argv,
                 "usage: crier-dispatcher [--help]\n\nExpands launched campaigns into "
                 "deliveries and jobs.",
                 err, sizeof(err)) != CR_OK) {
        fprintf(stderr, "crier-dispatcher: %s\n", err);
        return 2;
    }
    log_init("crier-dispatcher", (enum log_level)cfg.log_level, (enum log_format)cfg.log_format);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    static struct disp d;
    d.cfg = &cfg;
    d.stop = &stop_flag;
    rq_keys_init(&d.keys, cfg.key_prefix);
    if (cfg.consumer && *cfg.consumer) {
        snprintf(d.consumer, sizeof(d.consumer), "%s", cfg.consumer);
    } else {
        char host[64] = "host";
        gethostname(host, sizeof(host) - 1);
        snprintf(d.consumer, sizeof(d.consumer), "%s-%d", host, (int)getpid());
    }
    log_info("dispatcher %s starting", d.consumer);

    static struct campaign held[MAX_HELD];
    bool repaired = false;
    time_t last_repair = time(NULL);
    int backoff_ms = 100;
    while (!stop_flag) {
        if (connect_all(&d) != CR_OK) {
            disconnect(&d);
            usleep((useconds_t)backoff_ms * 1000);
            backoff_ms = backoff_ms < 2000 ? backoff_ms * 2 : 2000;
            continue;
        }
        enum cr_err e = CR_OK;
        if (!repaired) {
            /* After a restart, anything left pending by the previous run
             * gets its job now. */
            e = repair_outbox(&d, 0);
            repaired = e == CR_OK;
        }
        if (!e)
            e = start_due(&d, true);
        if (!e)
            e = move_due(&d, true);
        int n = 0;
        if (!e)
            e = lease_campaigns(&d, held, MAX_HELD, &n);
        long block_ms = cfg.poll_ms;
        /* One round over the held campaigns stays within half a lease, so
         * none of them lapses while the others are worked on. */
        long slice = n > 0 ? cfg.lease_s * 500 / n : cfg.slice_ms;
        if (slice > cfg.slice_ms)
            slice = cfg.slice_ms;
        for (int i = 0; i < n && !e && !stop_flag; i++) {
            e = work_campaign(&d, &held[i], slice);
            if (campaign_busy(&held[i]))
                block_ms = 0;
            else if (held[i].wait_ms > 0 && held[i].wait_ms < block_ms)
                block_ms = (long)held[i].wait_ms;
        }
        for (int i = 0; i < n; i++)
            campaign_cleanup(&held[i]);
        if (!e && time(NULL) - last_repair >= 10) {
            e = repair_outbox(&d, cfg.repair_after_s);
            last_repair = time(NULL);
        }
        if (!e)
            e = promote_retries(&d);
        if (!e)
            e = complete_campaigns(&d);
        if (!e && d.next_move_ms >= 0 && d.next_move_ms < block_ms)
            block_ms = d.next_move_ms;
        if (!e && !stop_flag) {
            if (block_ms > 0)
                e = wait_actions(&d, block_ms);
            else
                e = move_due(&d, false);
        }
        if (e == CR_EPG || e == CR_EREDIS) {
            log_warn("dependency error (%s); reconnecting", cr_strerror(e));
            disconnect(&d);
            usleep((useconds_t)backoff_ms * 1000);
            backoff_ms = backoff_ms < 2000 ? backoff_ms * 2 : 2000;
            continue;
        }
        backoff_ms = 100;
    }
    lease_release_all(&d);
    log_info("dispatcher stopping");
    disconnect(&d);
    cfg_cleanup(disp_rows, NROWS, &cfg);
    return 0;
}
