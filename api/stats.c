/* stats.c - a campaign's statistics: GET /v1/campaigns/{id}/stats, and the
 * body of every "stats" event of GET /v1/campaigns/{id}/events (events.c).
 *
 * The numbers come from campaign_counters, which migration 0011's
 * statement-level triggers on deliveries keep in the same transaction as
 * every insert, update and delete of a delivery. They therefore always equal
 * the ground truth in deliveries (tests/integration/stats.sh compares every
 * one with SQL on deliveries), and a read sums a few hundred counter rows
 * whatever the campaign's size. Each figure, as a predicate on a delivery:
 *
 *   targeted     every delivery of the campaign (skipped and cancelled too)
 *   contacted    status sent, delivered, responded, undelivered or unknown:
 *                a provider accepted the message, or may have (unknown: the
 *                outcome of the send was lost; it is counted as a contact, as
 *                the frequency cap counts it, since the customer may have
 *                received it)
 *   delivered    status delivered or responded (a response proves delivery)
 *   responded    status responded
 *   failed, unknown, skipped, cancelled: that status
 *   in_progress  status pending, queued, sending or retry; terminal: the rest
 *   opted_out    opted_out_at is set; opened, clicked: opened_at, clicked_at
 *   rates        delivered, responded, opted_out, opened and clicked over
 *                contacted; failed over contacted + failed; null while the
 *                denominator is 0; rounded to 4 decimals
 *   counts       deliveries per status (statuses with none are left out)
 *   skipped_reasons, outcomes, sentiments: deliveries per value
 *   satisfaction count of satisfactions given, and their average (4 decimals)
 *
 * The same summary is given per channel ("channels") and per A/B variant
 * ("variants"; a delivery belongs to a variant once the worker picked it, at
 * the send). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "log.h"
#include "stats.h"

/* $1 tenant, $2 campaign: the campaign's status, whether it is expanded,
 * and its counters summed over the shards ({"<scope>|<dimension>": n}). */
static const char sql_stats[] =
    "SELECT k.status, k.expanded_at IS NOT NULL,"
    " (SELECT COALESCE(json_object_agg(s.key, s.n ORDER BY s.key), '{}') FROM"
    "   (SELECT key, sum(n) AS n FROM campaign_counters WHERE campaign_id = k.id"
    "    GROUP BY key HAVING sum(n) <> 0) s)"
    " FROM campaigns k WHERE k.tenant_id = $1 AND k.id = $2";

/* The scopes of a campaign: the whole ("*"), 3 channels, 10 variants. */
#define STATS_MAX_SCOPES 16

struct stats_scope {
    char name[40]; /* "*", "c=<channel>", "v=<variant>" */
    cJSON *counts, *reasons, *outcomes, *sentiments;
    double opted_out, opened, clicked, sat_n, sat_sum;
};

static struct stats_scope *scope_get(struct stats_scope *sc, int *n, const char *name, size_t len)
{
    for (int i = 0; i < *n; i++)
        if (strlen(sc[i].name) == len && !strncmp(sc[i].name, name, len))
            return &sc[i];
    if (*n == STATS_MAX_SCOPES || len >= sizeof(sc[0].name))
        return NULL;
    struct stats_scope *s = &sc[(*n)++];
    memset(s, 0, sizeof(*s));
    memcpy(s->name, name, len);
    s->name[len] = '\0';
    s->counts = cJSON_CreateObject();
    s->reasons = cJSON_CreateObject();
    s->outcomes = cJSON_CreateObject();
    s->sentiments = cJSON_CreateObject();
    return s;
}

static void scope_cleanup(struct stats_scope *s)
{
    cJSON_Delete(s->counts);
    cJSON_Delete(s->reasons);
    cJSON_Delete(s->outcomes);
    cJSON_Delete(s->sentiments);
    memset(s, 0, sizeof(*s));
}

/* Adds one counter ("<scope>|<dimension>", n) to its scope. */
static void scope_add(struct stats_scope *sc, int *nsc, const char *key, double n)
{
    const char *bar = strchr(key, '|');
    if (!bar)
        return;
    struct stats_scope *s = scope_get(sc, nsc, key, (size_t)(bar - key));
    if (!s) {
        log_warn("stats: too many scopes; %s left out", key);
        return;
    }
    const char *dim = bar + 1;
    cJSON *into = NULL;
    if (dim[0] && dim[1] == ':') {
        into = dim[0] == 's'   ? s->counts
               : dim[0] == 'r' ? s->reasons
               : dim[0] == 'o' ? s->outcomes
               : dim[0] == 'e' ? s->sentiments
                               : NULL;
        if (into)
            cJSON_AddNumberToObject(into, dim + 2, n);
    } else if (!strcmp(dim, "oo")) {
        s->opted_out = n;
    } else if (!strcmp(dim, "op")) {
        s->opened = n;
    } else if (!strcmp(dim, "cl")) {
        s->clicked = n;
    } else if (!strcmp(dim, "sn")) {
        s->sat_n = n;
    } else if (!strcmp(dim, "ss")) {
        s->sat_sum = n;
    }
}

static double count_of(const cJSON *counts, const char *status)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(counts, status);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static void add_ratio(cJSON *o, const char *name, double num, double den)
{
    if (den > 0)
        cJSON_AddNumberToObject(o, name, round(num / den * 10000.0) / 10000.0);
    else
        cJSON_AddNullToObject(o, name);
}

/* Fills o with the summary of one scope; takes the scope's objects. */
static void scope_summary(struct stats_scope *s, cJSON *o)
{
    static const char *const contacted_states[] = {"sent",        "delivered", "responded",
                                                   "undelivered", "unknown",   NULL};
    static const char *const open_states[] = {"pending", "queued", "sending", "retry", NULL};
    double targeted = 0, contacted = 0, in_progress = 0;
    for (const cJSON *it = s->counts->child; it; it = it->next)
        targeted += it->valuedouble;
    for (int i = 0; contacted_states[i]; i++)
        contacted += count_of(s->counts, contacted_states[i]);
    for (int i = 0; open_states[i]; i++)
        in_progress += count_of(s->counts, open_states[i]);
    double delivered = count_of(s->counts, "delivered") + count_of(s->counts, "responded");
    double failed = count_of(s->counts, "failed");

    cJSON_AddNumberToObject(o, "targeted", targeted);
    cJSON_AddNumberToObject(o, "contacted", contacted);
    cJSON_AddNumberToObject(o, "delivered", delivered);
    cJSON_AddNumberToObject(o, "responded", count_of(s->counts, "responded"));
    cJSON_AddNumberToObject(o, "opted_out", s->opted_out);
    cJSON_AddNumberToObject(o, "failed", failed);
    cJSON_AddNumberToObject(o, "unknown", count_of(s->counts, "unknown"));
    cJSON_AddNumberToObject(o, "opened", s->opened);
    cJSON_AddNumberToObject(o, "clicked", s->clicked);
    cJSON_AddNumberToObject(o, "skipped", count_of(s->counts, "skipped"));
    cJSON_AddNumberToObject(o, "cancelled", count_of(s->counts, "cancelled"));
    cJSON_AddNumberToObject(o, "in_progress", in_progress);
    cJSON_AddNumberToObject(o, "terminal", targeted - in_progress);
    cJSON *rates = cJSON_AddObjectToObject(o, "rates");
    add_ratio(rates, "delivered", delivered, contacted);
    add_ratio(rates, "responded", count_of(s->counts, "responded"), contacted);
    add_ratio(rates, "opted_out", s->opted_out, contacted);
    add_ratio(rates, "opened", s->opened, contacted);
    add_ratio(rates, "clicked", s->clicked, contacted);
    add_ratio(rates, "failed", failed, contacted + failed);
    cJSON *sat = cJSON_AddObjectToObject(o, "satisfaction");
    cJSON_AddNumberToObject(sat, "count", s->sat_n);
    add_ratio(sat, "average", s->sat_sum, s->sat_n);
    cJSON_AddItemToObject(o, "counts", s->counts);
    cJSON_AddItemToObject(o, "skipped_reasons", s->reasons);
    cJSON_AddItemToObject(o, "outcomes", s->outcomes);
    cJSON_AddItemToObject(o, "sentiments", s->sentiments);
    s->counts = s->reasons = s->outcomes = s->sentiments = NULL;
}

cJSON *stats_json(const PGresult *res, long long campaign_id, bool *finished)
{
    const char *status = PQgetvalue(res, 0, 0);
    *finished = !strcmp(status, "completed") || !strcmp(status, "cancelled");
    struct stats_scope sc[STATS_MAX_SCOPES];
    int nsc = 0;
    (void)scope_get(sc, &nsc, "*", 1); /* always there, even with no delivery */
    cJSON *counters = cJSON_Parse(PQgetvalue(res, 0, 2));
    for (const cJSON *it = counters ? counters->child : NULL; it; it = it->next)
        if (it->string && cJSON_IsNumber(it))
            scope_add(sc, &nsc, it->string, it->valuedouble);
    cJSON_Delete(counters);

    cJSON *body = cJSON_CreateObject();
    cJSON_AddNumberToObject(body, "campaign_id", (double)campaign_id);
    cJSON_AddStringToObject(body, "status", status);
    cJSON_AddBoolToObject(body, "expanded", PQgetvalue(res, 0, 1)[0] == 't');
    cJSON_AddBoolToObject(body, "finished", *finished);
    scope_summary(&sc[0], body);
    cJSON *channels = cJSON_AddObjectToObject(body, "channels");
    cJSON *variants = cJSON_AddObjectToObject(body, "variants");
    for (int i = 1; i < nsc; i++) {
        cJSON *into = sc[i].name[0] == 'c' ? channels : variants;
        cJSON *o = cJSON_AddObjectToObject(into, sc[i].name + 2);
        scope_summary(&sc[i], o);
    }
    for (int i = 0; i < nsc; i++)
        scope_cleanup(&sc[i]);
    return body;
}

void stats_query(struct app *app, long long tenant_id, long long campaign_id, pgpool_cb cb,
                 void *arg)
{
    char tenant[24], id[24];
    snprintf(tenant, sizeof(tenant), "%lld", tenant_id);
    snprintf(id, sizeof(id), "%lld", campaign_id);
    const char *params[] = {tenant, id};
    pgpool_query(app->pg, sql_stats, 2, params, cb, arg);
}

static void stats_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)sqlstate;
    if (!http_one_row_or_reply(r, res, errmsg, "campaign"))
        return;
    bool finished;
    http_reply_json(r, 200, stats_json(res, r->ids[0], &finished));
}

void campaigns_stats(struct api_req *r)
{
    stats_query(r->app, r->tenant_id, r->ids[0], stats_done, r);
}
