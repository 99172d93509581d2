/* voice.c - the TwiML of a voice call: what Twilio fetches when the call
 * connects (/v1/webhooks/{tenant}/twilio/voice?delivery=D) and after each
 * answer (/twilio/gather?delivery=D&q=N, also an AI agent's Connect action
 * without q).
 *
 * Both are signed by Twilio (webhooks_twilio_ok). The script is needed
 * synchronously, so each request reads PostgreSQL once: the delivery's
 * campaign agent config and the customer's template variables, by delivery
 * id and tenant id. The documents come from common/twiml.c.
 *
 * A gather's answer goes to the inbound stream first (kind twilio_gather
 * with delivery and, for a scripted question, q - both from the signed
 * URL), before PostgreSQL is asked anything: an answer is recorded whether
 * or not the script can be built, and never acknowledged unrecorded (Redis
 * down: 503, Twilio tries the fallback URL). The worker applies it, or
 * drops it when the delivery is not this tenant's call. Once the answer is
 * recorded, a script that cannot be built (PostgreSQL down, the delivery
 * unknown) ends the call with a short apology instead of an error.
 *
 * A delivery we cannot find (unknown, another tenant's, not a call) gets a
 * polite goodbye, not an error: Twilio would read an error to the caller. */
#include <sys/queue.h>

#include <errno.h>
#include <event2/keyvalq_struct.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "log.h"
#include "template.h"
#include "twiml.h"
#include "xalloc.h"

#define VOICE_MAX_TWIML (512 * 1024)
#define VOICE_TEXT_XML "text/xml"
#define VOICE_SORRY "Sorry, we cannot continue this call. Goodbye."

/* $1 tenant, $2 delivery. */
static const char sql_call[] =
    "SELECT k.agent_config::text, c.first_name, c.last_name, c.email, c.phone, c.external_id,"
    "  c.attributes::text"
    " FROM deliveries d"
    " JOIN campaigns k ON k.tenant_id = d.tenant_id AND k.id = d.campaign_id"
    " JOIN customers c ON c.tenant_id = d.tenant_id AND c.id = d.customer_id"
    " WHERE d.tenant_id = $1 AND d.id = $2 AND d.channel = 'voice'"
    "   AND k.agent_config IS NOT NULL";

enum voice_col {
    COL_AGENT = 0,
    COL_FIRST,
    COL_LAST,
    COL_EMAIL,
    COL_PHONE,
    COL_EXTERNAL,
    COL_ATTRS
};

/* The request's query: which delivery, which question was answered. */
struct voice_state {
    long long delivery;
    int q;       /* -1: no q (the call connects, or an AI agent is done) */
    bool gather; /* the gather endpoint (else the voice endpoint) */
    char delivery_s[24], q_s[16];
};

/* ---------------------------------------------------------------------
 * Replies
 * ------------------------------------------------------------------- */

static void reply_twiml(struct api_req *r, const char *twiml)
{
    http_reply_text(r, 200, VOICE_TEXT_XML, twiml, strlen(twiml));
}

/* Ends the call politely (Twilio reads errors out to the caller). */
static void reply_goodbye(struct api_req *r, const char *why)
{
    log_warn("%s: tenant %lld: %s; the call is ended politely", r->path, r->tenant_id, why);
    struct buf b;
    buf_init(&b, 4096);
    if (twiml_hangup(VOICE_SORRY, "en-US", NULL, &b) != CR_OK)
        buf_reset(&b); /* a fixed text in 4 KiB: cannot fail */
    reply_twiml(r, buf_str(&b));
    buf_cleanup(&b);
}

/* ---------------------------------------------------------------------
 * Handlers
 * ------------------------------------------------------------------- */

/* Parses delivery (a positive integer) and, for the gather, q (0..999,
 * optional); false with a reason when they are malformed. */
static bool parse_query(struct api_req *r, struct voice_state *s, const char **why)
{
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    bool ok = r->query && evhttp_parse_query_str(r->query, &q) == 0;
    const char *d = ok ? evhttp_find_header(&q, "delivery") : NULL;
    const char *n = ok ? evhttp_find_header(&q, "q") : NULL;
    char *end = NULL;
    errno = 0;
    s->delivery = d ? strtoll(d, &end, 10) : 0;
    if (!d || !*d || *end || errno || s->delivery <= 0) {
        *why = "no valid delivery in the URL";
        ok = false;
    }
    s->q = -1;
    if (ok && n && s->gather) {
        long v = strtol(n, &end, 10);
        if (!*n || *end || v < 0 || v > 999) {
            *why = "no valid q in the URL";
            ok = false;
        }
        s->q = (int)v;
    }
    evhttp_clear_headers(&q);
    if (ok) {
        snprintf(s->delivery_s, sizeof(s->delivery_s), "%lld", s->delivery);
        snprintf(s->q_s, sizeof(s->q_s), "%d", s->q);
    }
    return ok;
}

static void call_loaded(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    struct voice_state *s = r->state;
    (void)sqlstate;
    if (!res && s->gather) {
        /* The answer is recorded: a 503 would have Twilio try the fallback
         * URL, or read an error to the caller, for nothing. */
        char why[320];
        snprintf(why, sizeof(why), "answer for delivery %lld recorded, no script (%.256s)",
                 s->delivery, errmsg);
        reply_goodbye(r, why);
        return;
    }
    if (!res) {
        /* 503: Twilio tries the number's fallback URL, when one is set. */
        http_reply_dependency(r, "postgres", errmsg);
        return;
    }
    if (PQntuples(res) != 1) {
        char why[96];
        snprintf(why, sizeof(why), "no voice delivery %lld here", s->delivery);
        reply_goodbye(r, why);
        return;
    }
    cJSON *agent = cJSON_Parse(PQgetvalue(res, 0, COL_AGENT));
    char *gather_url = xasprintf("%s/v1/webhooks/%lld/twilio/gather?delivery=%lld",
                                 r->app->cfg->public_url, r->tenant_id, s->delivery);
    const int cols[] = {COL_FIRST, COL_LAST, COL_EMAIL, COL_PHONE, COL_EXTERNAL, COL_ATTRS};
    const char *v[6];
    for (int i = 0; i < 6; i++)
        v[i] = PQgetisnull(res, 0, cols[i]) ? NULL : PQgetvalue(res, 0, cols[i]);
    struct tpl_customer vars = {v[0], v[1], v[2], v[3], v[4], v[5], NULL, ""};
    struct twiml_call call = {agent, gather_url,   tpl_customer_lookup,
                              &vars, r->tenant_id, s->delivery};
    struct buf b;
    buf_init(&b, VOICE_MAX_TWIML);
    enum cr_err e = s->gather ? twiml_next(&call, s->q, &b) : twiml_answer(&call, &b);
    tpl_customer_cleanup(&vars);
    cJSON_Delete(agent);
    free(gather_url);
    if (e != CR_OK) {
        buf_cleanup(&b);
        char why[128];
        snprintf(why, sizeof(why), "the agent config of delivery %lld gives no TwiML (%s)",
                 s->delivery, cr_strerror(e));
        reply_goodbye(r, why);
        return;
    }
    reply_twiml(r, buf_str(&b));
    buf_cleanup(&b);
}

static void load_call(struct api_req *r)
{
    struct voice_state *s = r->state;
    char tenant[24];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    const char *params[] = {tenant, s->delivery_s};
    pgpool_query(r->app->pg, sql_call, 2, params, call_loaded, r);
}

static void serve(struct api_req *r, bool gather)
{
    /* First, before anything: it may run this handler again later. */
    if (!webhooks_twilio_ok(r))
        return;
    struct voice_state *s = xcalloc(1, sizeof(*s));
    s->gather = gather;
    r->state = s;
    r->state_free = free;
    const char *why = NULL;
    if (!parse_query(r, s, &why)) {
        reply_goodbye(r, why);
        return;
    }
    if (!gather) {
        load_call(r);
        return;
    }
    /* The answer (or the AI agent's result) is recorded first; the next
     * question is served once Redis has it. */
    const char *extra[] = {"delivery", s->delivery_s, "q", s->q_s};
    webhooks_enqueue(r, "twilio_gather", extra, s->q >= 0 ? 4 : 2, load_call);
}

void voice_twiml(struct api_req *r)
{
    serve(r, false);
}

void voice_gather(struct api_req *r)
{
    serve(r, true);
}
