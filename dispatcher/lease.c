/* lease.c - which dispatcher works on which campaign.
 *
 * A running campaign with something left to do (segment not fully
 * expanded, deliveries above its release cursor, or a resume to serve) is
 * worked on by the dispatcher holding its lease. The lease is taken here
 * when it is free or has lapsed, and renewed by every statement the holder
 * writes for the campaign (expansion page, release step); each of those
 * statements checks it first, holding the campaign row, so once another
 * dispatcher has taken over, the old holder's next statement changes
 * nothing. A dispatcher that dies is taken over when lease_until passes
 * (CRIER_LEASE_SECONDS, 10 by default). Campaigns are taken least
 * recently renewed first, so with more campaigns than a dispatcher takes at
 * once, each gets its turn. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db.h"
#include "dispatcher.h"
#include "gate.h"
#include "log.h"
#include "segment.h"
#include "xalloc.h"

/* $1 this dispatcher, $2 lease seconds, $3 how many. */
static const char sql_lease[] =
    "WITH cand AS (SELECT k.id, k.lease_owner AS before FROM campaigns k"
    "   WHERE k.status = 'running'"
    "   AND (k.lease_owner = $1 OR k.lease_until IS NULL OR k.lease_until < now())"
    "   AND (k.expanded_at IS NULL OR k.enqueued_cursor < k.last_delivery_id"
    "        OR k.resume_gen > k.requeued_gen)"
    "   ORDER BY k.lease_until NULLS FIRST, k.id LIMIT $3::int FOR UPDATE SKIP LOCKED)"
    " UPDATE campaigns k SET lease_owner = $1,"
    "   lease_until = now() + make_interval(secs => $2::int)"
    " FROM cand, tenants t WHERE k.id = cand.id AND t.id = k.tenant_id"
    " RETURNING k.id, k.tenant_id, k.channel, COALESCE(k.rate_per_minute, 0),"
    "   k.segment_criteria::text, k.send_window::text, " GATE_DEADLINE_SQL "::text,"
    "   t.frequency_cap_7d, EXISTS (SELECT 1 FROM suppressions s"
    "     WHERE s.tenant_id = k.tenant_id AND s.channel = k.channel),"
    "   k.expanded_at IS NOT NULL, k.resume_gen > k.requeued_gen,"
    "   k.dispatch_cursor, k.enqueued_cursor, k.last_delivery_id, cand.before";

static const char sql_release_all[] =
    "UPDATE campaigns SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1";

static char *dup_or_null(PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : xstrdup(PQgetvalue(res, row, col));
}

void campaign_cleanup(struct campaign *c)
{
    free(c->criteria);
    free(c->window);
    free(c->deadline);
    memset(c, 0, sizeof(*c));
}

bool campaign_unreleased(const struct campaign *c)
{
    return strtoll(c->enqueued, NULL, 10) < strtoll(c->last, NULL, 10);
}

enum cr_err lease_campaigns(struct disp *d, struct campaign *out, int max, int *n)
{
    char ttl[16], lim[16];
    snprintf(ttl, sizeof(ttl), "%ld", d->cfg->lease_s);
    snprintf(lim, sizeof(lim), "%d", max);
    const char *p[] = {d->consumer, ttl, lim};
    PGresult *res = NULL;
    *n = 0;
    enum cr_err err = db_exec(d->pg, "lease campaigns", sql_lease, 3, p, &res);
    if (err)
        return err;
    for (int i = 0; i < PQntuples(res) && *n < max; i++) {
        struct campaign *c = &out[*n];
        memset(c, 0, sizeof(*c));
        enum seg_channel ch;
        if (seg_channel_parse(PQgetvalue(res, i, 2), &ch) != CR_OK)
            continue;
        snprintf(c->id, sizeof(c->id), "%s", PQgetvalue(res, i, 0));
        snprintf(c->tenant, sizeof(c->tenant), "%s", PQgetvalue(res, i, 1));
        snprintf(c->channel, sizeof(c->channel), "%s", PQgetvalue(res, i, 2));
        c->ch = (int)ch;
        c->rate = strtol(PQgetvalue(res, i, 3), NULL, 10);
        c->criteria = xstrdup(PQgetvalue(res, i, 4));
        c->window = dup_or_null(res, i, 5);
        c->deadline = dup_or_null(res, i, 6);
        snprintf(c->cap, sizeof(c->cap), "%s", PQgetvalue(res, i, 7));
        c->has_supp = PQgetvalue(res, i, 8)[0] == 't';
        c->expanded = PQgetvalue(res, i, 9)[0] == 't';
        c->rewind = PQgetvalue(res, i, 10)[0] == 't';
        snprintf(c->cursor, sizeof(c->cursor), "%s", PQgetvalue(res, i, 11));
        snprintf(c->enqueued, sizeof(c->enqueued), "%s", PQgetvalue(res, i, 12));
        snprintf(c->last, sizeof(c->last), "%s", PQgetvalue(res, i, 13));
        if (strcmp(PQgetvalue(res, i, 14), d->consumer) != 0)
            log_info("campaign %s: lease taken%s%s", c->id,
                     PQgetisnull(res, i, 14) ? "" : " over from ", PQgetvalue(res, i, 14));
        (*n)++;
    }
    PQclear(res);
    return CR_OK;
}

void lease_release_all(struct disp *d)
{
    const char *p[] = {d->consumer};
    if (d->pg && db_exec(d->pg, "release leases", sql_release_all, 1, p, NULL) != CR_OK)
        log_warn("could not give up the leases; they lapse in %ld s", d->cfg->lease_s);
}
