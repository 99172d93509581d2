/* inbound.c - the worker's consumer of the inbound stream: the verified
 * webhook events crier-api wrote (status callbacks, inbound SMS, <Gather>
 * answers, SendGrid events), applied to PostgreSQL in batches.
 *
 * An entry of crier:inbound has the fields
 *   kind      twilio_status | twilio_sms | twilio_gather | sendgrid_events
 *   tenant    the tenant of the webhook URL (whose signature was verified)
 *   at        the receive time in epoch ms (not read: the entry id says as much)
 *   body      the request body as received: application/x-www-form-urlencoded
 *             (twilio_*) or the JSON array of events (sendgrid_events)
 *   delivery  twilio_gather only: the delivery id of the action URL
 *   q         twilio_gather only: the question index of the action URL
 * and nothing else is read. An entry is parsed here into one or more events
 * (one per SendGrid event), each a small JSON payload; a batch of entries is
 * applied by one statement - crier_inbound_batch (migration 0010), one
 * transaction - and then acknowledged. The rules (monotonic status,
 * attribution of replies, keywords, suppressions, dedupe in inbound_seen)
 * live in that migration.
 *
 * Failures: an entry that cannot be parsed is logged (never its body) and
 * acknowledged. A batch whose statement fails is applied again entry by
 * entry; an entry that fails alone for a reason other than the connection,
 * a deadlock or a timeout is logged and acknowledged (it would fail again).
 * An entry whose delivery is not written yet ('wait': a receipt faster than
 * the send's outcome) stays pending and is reclaimed after INBOUND_IDLE_MS;
 * it is acknowledged as unmatched once older than INBOUND_WAIT_MS.
 *
 * A worker reads its next batch once the last one is committed, so the
 * events of one delivery are applied in stream order (a reclaim, between
 * batches, may overlap one; the SQL is monotonic anyway, so the order
 * between workers does not matter either). The blocking XREADGROUP has a
 * connection of its own; acknowledgements and reclaims go through the
 * worker's write connection. */
#include <hiredis/adapters/libevent.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"
#include "phone.h"
#include "websig.h"
#include "worker.h"
#include "xalloc.h"

#define INBOUND_GROUP "inbound"
#define INBOUND_IDLE_MS 60000    /* a pending entry this idle is reclaimed */
#define INBOUND_WAIT_MS 300000   /* 'wait' entries older than this are given up */
#define INBOUND_RECLAIM_EVERY 15 /* ticks (seconds) */
#define INBOUND_MAX_PAYLOADS (64u << 20)
#define INBOUND_FIELD_MAX 256                   /* sids, statuses, phone numbers, codes */
#define INBOUND_BODY_MAX 16384                  /* an SMS body (1600 characters of up to 4 bytes) */
#define INBOUND_SPEECH_MAX 4096                 /* a SpeechResult */
#define INBOUND_SENDGRID_EVENT "sendgrid_event" /* one event of a sendgrid_events entry */

enum inbound_kind {
    INBOUND_TWILIO_STATUS = 0,
    INBOUND_TWILIO_SMS,
    INBOUND_TWILIO_GATHER,
    INBOUND_SENDGRID_EVENTS,
    INBOUND_NKINDS
};

static const char *const inbound_kind_names[INBOUND_NKINDS] = {
    [INBOUND_TWILIO_STATUS] = "twilio_status",
    [INBOUND_TWILIO_SMS] = "twilio_sms",
    [INBOUND_TWILIO_GATHER] = "twilio_gather",
    [INBOUND_SENDGRID_EVENTS] = "sendgrid_events",
};

/* $1 kinds, $2 tenants, $3 payloads (jsonb), $4 the attribution window (s):
 * one result word per event, in order (see migration 0010). */
static const char sql_apply[] =
    "SELECT r FROM crier_inbound_batch($1::text[], $2::bigint[], $3::jsonb[], $4::int) r";

struct inbound {
    struct worker *w;
    redisAsyncContext *rd; /* blocking reads only */
    bool rd_ready;
    bool reading;    /* an XREADGROUP is outstanding */
    bool reclaiming; /* an XAUTOCLAIM is outstanding */
    int applying;    /* batches whose statements are running */
    int ticks;
    long long applied, dropped;
};

/* One stream entry and what became of it. */
struct entry {
    char id[32];
    int first, nevents; /* its events in the batch */
    bool transient;     /* its statement failed for now: stays pending */
    bool wait;          /* some event waits for its delivery */
};

/* One event: a row of crier_inbound_batch's arrays. */
struct event {
    const char *kind; /* static */
    long long tenant;
    char *payload; /* JSON, owned */
};

/* A batch of entries on its way through the database. */
struct batch {
    struct inbound *in;
    int n;
    struct entry *e;
    struct event *ev;
    int nevents, evcap;
    size_t bytes; /* of the payloads */
    int next;     /* entry by entry (after the batch failed): the one running */
};

/* ---------------------------------------------------------------------
 * Redis
 * ------------------------------------------------------------------- */

static void group_created(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;
    (void)ac;
    (void)priv;
    if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0)
        log_error("XGROUP CREATE %s: %s", INBOUND_GROUP, r->str);
}

/* The group starts at the stream's beginning: events the API wrote before
 * any worker ran are applied too. */
static void create_group(struct inbound *in, redisAsyncContext *ac)
{
    redisAsyncCommand(ac, group_created, in, "XGROUP CREATE %s %s 0 MKSTREAM", in->w->keys.inbound,
                      INBOUND_GROUP);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct inbound *in = ac->data;
    if (status != REDIS_OK) {
        log_warn("redis connect (inbound) failed: %s", ac->errstr);
        in->rd = NULL;
        return;
    }
    in->rd_ready = true;
    create_group(in, (redisAsyncContext *)ac);
    inbound_maybe_read(in->w);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct inbound *in = ac->data;
    if (status != REDIS_OK)
        log_warn("redis disconnected (inbound): %s", ac->errstr);
    in->rd = NULL;
    in->rd_ready = false;
    in->reading = false;
}

static void connect_reader(struct inbound *in)
{
    char err[256];
    if (in->rd)
        return;
    redisAsyncContext *ac = rq_connect_async(in->w->cfg->redis_url, err, sizeof(err));
    if (!ac) {
        log_warn("%s", err);
        return;
    }
    ac->data = in;
    redisLibeventAttach(ac, in->w->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    in->rd = ac;
}

static void ack(struct inbound *in, char **ids, int n)
{
    struct worker *w = in->w;
    if (n == 0 || !w->wr)
        return; /* left pending: reclaimed and applied again (dedupe) */
    const char **argv = xcalloc((size_t)n + 3, sizeof(char *));
    argv[0] = "XACK";
    argv[1] = w->keys.inbound;
    argv[2] = INBOUND_GROUP;
    for (int i = 0; i < n; i++)
        argv[3 + i] = ids[i];
    redisAsyncCommandArgv(w->wr, NULL, NULL, n + 3, argv, NULL);
    free(argv);
}

/* ---------------------------------------------------------------------
 * Parsing entries into events
 * ------------------------------------------------------------------- */

static const char *entry_field(const redisReply *fields, const char *name)
{
    for (size_t k = 0; k + 1 < fields->elements; k += 2)
        if (fields->element[k]->type == REDIS_REPLY_STRING &&
            strcmp(fields->element[k]->str, name) == 0 &&
            fields->element[k + 1]->type == REDIS_REPLY_STRING)
            return fields->element[k + 1]->str;
    return NULL;
}

/* A positive decimal id (at most 18 digits). */
static bool parse_id(const char *s, long long *out)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 18 || strspn(s, "0123456789") != n)
        return false;
    *out = strtoll(s, NULL, 10);
    return *out > 0;
}

/* Letters, digits and "-_.:" only: sids, statuses, error codes, AMD verdicts. */
static bool is_token(const char *s)
{
    size_t n = strlen(s);
    return n > 0 &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:") == n;
}

/* The form field name (or, when absent or empty, alt) into out; "" if none. */
static const char *form_get(const char *body, size_t len, const char *name, const char *alt,
                            char *out, size_t outsz)
{
    if (!websig_form_value(body, len, name, out, outsz) || !out[0]) {
        out[0] = '\0';
        if (alt)
            websig_form_value(body, len, alt, out, outsz);
    }
    return out;
}

static void add_opt(cJSON *o, const char *name, const char *value)
{
    if (value && *value)
        cJSON_AddStringToObject(o, name, value);
}

/* The opt-out / opt-in / help keyword of an SMS body: one word, case and the
 * white space or closing punctuation around it aside. NULL for any other
 * text. */
static const char *sms_keyword(const char *body)
{
    static const struct {
        const char *word, *kind;
    } words[] = {
        {"STOP", "stop"},    {"UNSUBSCRIBE", "stop"}, {"END", "stop"},     {"QUIT", "stop"},
        {"STOPALL", "stop"}, {"REVOKE", "stop"},      {"OPTOUT", "stop"},  {"CANCEL", "stop"},
        {"START", "start"},  {"YES", "start"},        {"UNSTOP", "start"}, {"HELP", "help"},
        {"INFO", "help"},
    };
    const char *p = body + strspn(body, " \t\r\n");
    size_t n = strlen(p);
    while (n > 0 && strchr(" \t\r\n.!", p[n - 1]))
        n--;
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strlen(words[i].word) == n && strncasecmp(p, words[i].word, n) == 0)
            return words[i].kind;
    return NULL;
}

/* One event into the batch (payload deleted here). CR_ETOOBIG when the
 * batch's payloads would pass INBOUND_MAX_PAYLOADS. */
static enum cr_err add_event(struct batch *b, const char *kind, long long tenant, cJSON *payload)
{
    char *text = cJSON_PrintUnformatted(payload);
    cJSON_Delete(payload);
    if (!text)
        return CR_ENOMEM;
    size_t len = strlen(text);
    if (b->bytes + len > INBOUND_MAX_PAYLOADS / 4) { /* escaping may double it, twice over */
        cJSON_free(text);
        return CR_ETOOBIG;
    }
    if (b->nevents == b->evcap) {
        b->evcap = b->evcap ? b->evcap * 2 : 64;
        b->ev = xrealloc(b->ev, (size_t)b->evcap * sizeof(*b->ev));
    }
    b->ev[b->nevents++] = (struct event){kind, tenant, xstrdup(text)};
    b->bytes += len;
    cJSON_free(text);
    return CR_OK;
}

/* Each parser adds the entry's events, or returns a reason it cannot
 * (logged, never with the body). */
static const char *parse_twilio_status(struct batch *b, long long tenant, const char *body,
                                       size_t len)
{
    char sid[INBOUND_FIELD_MAX], status[INBOUND_FIELD_MAX], code[INBOUND_FIELD_MAX],
        amd[INBOUND_FIELD_MAX];
    bool call = websig_form_value(body, len, "CallSid", sid, sizeof(sid)) && sid[0];
    if (!call)
        form_get(body, len, "MessageSid", "SmsSid", sid, sizeof(sid));
    if (call)
        form_get(body, len, "CallStatus", NULL, status, sizeof(status));
    else
        form_get(body, len, "MessageStatus", "SmsStatus", status, sizeof(status));
    form_get(body, len, "ErrorCode", NULL, code, sizeof(code));
    form_get(body, len, "AnsweredBy", NULL, amd, sizeof(amd));
    if (!is_token(sid) || !is_token(status))
        return "no valid MessageSid/CallSid and status";
    for (char *p = status; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "sid", sid);
    cJSON_AddStringToObject(p, "status", status);
    if (is_token(code))
        cJSON_AddStringToObject(p, "error_code", code);
    if (is_token(amd))
        cJSON_AddStringToObject(p, "answered_by", amd);
    return add_event(b, inbound_kind_names[INBOUND_TWILIO_STATUS], tenant, p) ? "too large" : NULL;
}

static const char *parse_twilio_sms(struct batch *b, long long tenant, const char *body, size_t len)
{
    char sid[INBOUND_FIELD_MAX], from[INBOUND_FIELD_MAX], to[INBOUND_FIELD_MAX];
    char phone[PHONE_E164_SIZE];
    char *text = xmalloc(INBOUND_BODY_MAX);
    form_get(body, len, "MessageSid", "SmsSid", sid, sizeof(sid));
    form_get(body, len, "From", NULL, from, sizeof(from));
    form_get(body, len, "To", NULL, to, sizeof(to));
    form_get(body, len, "Body", NULL, text, INBOUND_BODY_MAX);
    const char *why = NULL;
    if (!is_token(sid) || !from[0]) {
        why = "no valid MessageSid or From";
        goto out;
    }
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "sid", sid);
    cJSON_AddStringToObject(p, "from", from);
    add_opt(p, "to", to);
    cJSON_AddStringToObject(p, "body", text);
    /* Customers' phones are E.164; a sender that is not a phone number
     * (a short code, an alphanumeric id) belongs to no customer. */
    if (phone_normalize(from, NULL, phone, sizeof(phone)) == CR_OK)
        cJSON_AddStringToObject(p, "phone", phone);
    add_opt(p, "keyword", sms_keyword(text));
    if (add_event(b, inbound_kind_names[INBOUND_TWILIO_SMS], tenant, p))
        why = "too large";
out:
    free(text);
    return why;
}

static const char *parse_twilio_gather(struct batch *b, long long tenant, const redisReply *fields,
                                       const char *body, size_t len)
{
    long long delivery = 0;
    const char *q = entry_field(fields, "q");
    if (!parse_id(entry_field(fields, "delivery"), &delivery))
        return "no valid delivery";
    if (q && (!*q || strlen(q) > 4 || strspn(q, "0123456789") != strlen(q)))
        return "q is not a question index";
    char sid[INBOUND_FIELD_MAX], digits[INBOUND_FIELD_MAX], conf[INBOUND_FIELD_MAX];
    char *speech = xmalloc(INBOUND_SPEECH_MAX);
    form_get(body, len, "CallSid", NULL, sid, sizeof(sid));
    form_get(body, len, "Digits", NULL, digits, sizeof(digits));
    form_get(body, len, "Confidence", NULL, conf, sizeof(conf));
    form_get(body, len, "SpeechResult", NULL, speech, INBOUND_SPEECH_MAX);
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "delivery", entry_field(fields, "delivery")); /* exact */
    if (q)
        cJSON_AddNumberToObject(p, "q", (double)strtol(q, NULL, 10));
    if (is_token(sid))
        cJSON_AddStringToObject(p, "call_sid", sid);
    add_opt(p, "speech", speech);
    if (digits[0] && strspn(digits, "0123456789*#w") == strlen(digits))
        cJSON_AddStringToObject(p, "digits", digits);
    char *end = NULL;
    double c = conf[0] ? strtod(conf, &end) : -1;
    if (conf[0] && end && !*end && c >= 0 && c <= 1)
        cJSON_AddNumberToObject(p, "confidence", c);
    free(speech);
    return add_event(b, inbound_kind_names[INBOUND_TWILIO_GATHER], tenant, p) ? "too large" : NULL;
}

/* Every well-formed event of the array (an object with a string "event"
 * and a non-empty "sg_event_id"); the others are counted and skipped. */
static const char *parse_sendgrid(struct batch *b, long long tenant, const char *body, size_t len,
                                  const char *id)
{
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!cJSON_IsArray(root)) {
        cJSON_Delete(root);
        return "not a JSON array";
    }
    int bad = 0;
    const char *why = NULL;
    cJSON *ev = root->child;
    while (ev && !why) {
        cJSON *next = ev->next;
        const cJSON *kind = cJSON_GetObjectItemCaseSensitive(ev, "event");
        const cJSON *eid = cJSON_GetObjectItemCaseSensitive(ev, "sg_event_id");
        if (!cJSON_IsObject(ev) || !cJSON_IsString(kind) || !cJSON_IsString(eid) ||
            !eid->valuestring[0] || strlen(eid->valuestring) > 150) {
            bad++;
        } else {
            /* custom_args arrive as strings; a number is taken too. */
            const cJSON *did = cJSON_GetObjectItemCaseSensitive(ev, "delivery_id");
            if (cJSON_IsNumber(did)) {
                char num[24];
                snprintf(num, sizeof(num), "%.0f", did->valuedouble);
                cJSON_ReplaceItemInObjectCaseSensitive(ev, "delivery_id", cJSON_CreateString(num));
            }
            const cJSON *tid = cJSON_GetObjectItemCaseSensitive(ev, "tenant_id");
            if (cJSON_IsNumber(tid)) {
                char num[24];
                snprintf(num, sizeof(num), "%.0f", tid->valuedouble);
                cJSON_ReplaceItemInObjectCaseSensitive(ev, "tenant_id", cJSON_CreateString(num));
            }
            if (add_event(b, INBOUND_SENDGRID_EVENT, tenant, cJSON_DetachItemViaPointer(root, ev)))
                why = "too large";
        }
        ev = next;
    }
    cJSON_Delete(root);
    if (bad > 0)
        log_warn("inbound %s: %d malformed SendGrid events skipped", id, bad);
    return why;
}

/* Parses one stream entry into b; false (logged) when it is malformed. */
static bool parse_entry(struct batch *b, const redisReply *en, struct entry *e)
{
    const redisReply *fields = en->element[1];
    e->first = b->nevents;
    if (fields->type != REDIS_REPLY_ARRAY) {
        log_warn("inbound %s: no fields; acknowledged", e->id);
        return false;
    }
    const char *kind = entry_field(fields, "kind");
    const char *body = entry_field(fields, "body");
    long long tenant = 0;
    int k = 0;
    while (kind && k < INBOUND_NKINDS && strcmp(kind, inbound_kind_names[k]) != 0)
        k++;
    const char *why = NULL;
    if (!kind || k == INBOUND_NKINDS)
        why = "unknown kind";
    else if (!parse_id(entry_field(fields, "tenant"), &tenant))
        why = "no valid tenant";
    else if (!body)
        why = "no body";
    if (!why) {
        size_t len = 0;
        for (size_t i = 0; i + 1 < fields->elements; i += 2)
            if (fields->element[i + 1]->str == body)
                len = fields->element[i + 1]->len;
        switch ((enum inbound_kind)k) {
        case INBOUND_TWILIO_STATUS:
            why = parse_twilio_status(b, tenant, body, len);
            break;
        case INBOUND_TWILIO_SMS:
            why = parse_twilio_sms(b, tenant, body, len);
            break;
        case INBOUND_TWILIO_GATHER:
            why = parse_twilio_gather(b, tenant, fields, body, len);
            break;
        case INBOUND_SENDGRID_EVENTS:
            why = parse_sendgrid(b, tenant, body, len, e->id);
            break;
        case INBOUND_NKINDS:
            break;
        }
    }
    e->nevents = b->nevents - e->first;
    if (why) {
        log_warn("inbound %s (%s, tenant %lld): %s; acknowledged", e->id, kind ? kind : "?", tenant,
                 why);
        return false;
    }
    return true;
}

/* ---------------------------------------------------------------------
 * Applying
 * ------------------------------------------------------------------- */

static struct batch *batch_new(struct inbound *in, int n)
{
    struct batch *b = xcalloc(1, sizeof(*b));
    b->in = in;
    b->n = n;
    b->e = xcalloc((size_t)(n > 0 ? n : 1), sizeof(*b->e));
    return b;
}

static void batch_free(struct batch *b)
{
    for (int i = 0; i < b->nevents; i++)
        free(b->ev[i].payload);
    free(b->ev);
    free(b->e);
    free(b);
}

/* Connection, deadlock, serialisation, resources, cancel/timeout, shutdown:
 * the same statement may well succeed later. */
static bool transient(const char *sqlstate)
{
    return !sqlstate || !*sqlstate || !strncmp(sqlstate, "08", 2) || !strncmp(sqlstate, "40", 2) ||
           !strncmp(sqlstate, "53", 2) || !strncmp(sqlstate, "57", 2);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs crier_inbound_batch over events [from, to) of ev. */
static void run_events(struct worker *w, const struct event *ev, int from, int to, pgpool_cb cb,
                       void *arg)
{
    struct pgarr k, t, p;
    pgarr_init(&k, INBOUND_MAX_PAYLOADS);
    pgarr_init(&t, INBOUND_MAX_PAYLOADS);
    pgarr_init(&p, INBOUND_MAX_PAYLOADS);
    enum cr_err e = CR_OK;
    for (int i = from; i < to && !e; i++) {
        e = pgarr_add_text(&k, ev[i].kind);
        if (!e)
            e = pgarr_add_int(&t, ev[i].tenant);
        if (!e)
            e = pgarr_add_text(&p, ev[i].payload);
    }
    char win[24];
    snprintf(win, sizeof(win), "%ld", w->cfg->attribution_window_s);
    const char *params[] = {pgarr_str(&k), pgarr_str(&t), pgarr_str(&p), win};
    /* add_event keeps the payloads far below the arrays' maximum */
    pgpool_query(w->pool, sql_apply, 4, params, cb, arg);
    pgarr_cleanup(&k);
    pgarr_cleanup(&t);
    pgarr_cleanup(&p);
}

/* Acknowledges what is done and ends the batch. */
static void batch_finish(struct batch *b)
{
    struct inbound *in = b->in;
    char **ids = xcalloc((size_t)(b->n > 0 ? b->n : 1), sizeof(char *));
    int nack = 0, waiting = 0, gave_up = 0;
    long long now = now_ms();
    for (int i = 0; i < b->n; i++) {
        struct entry *e = &b->e[i];
        if (e->transient || !e->id[0])
            continue;
        if (e->wait) {
            if (now - strtoll(e->id, NULL, 10) < INBOUND_WAIT_MS) {
                waiting++;
                continue;
            }
            gave_up++;
        }
        ids[nack++] = e->id;
    }
    ack(in, ids, nack);
    free(ids);
    if (waiting > 0)
        log_debug("%d inbound entries wait for their delivery's send to be written", waiting);
    if (gave_up > 0)
        log_info("%d inbound entries matched no written delivery in %d s; acknowledged", gave_up,
                 INBOUND_WAIT_MS / 1000);
    in->applying--;
    batch_free(b);
    inbound_maybe_read(in->w);
}

/* Reads the result words of entries [from, to), whose events start at row
 * offset of res. */
static void take_results(struct batch *b, PGresult *res, int from, int to, int offset)
{
    int rows = PQntuples(res);
    for (int i = from; i < to; i++) {
        struct entry *e = &b->e[i];
        for (int k = 0; k < e->nevents; k++) {
            int r = e->first - offset + k;
            const char *word = r >= 0 && r < rows ? PQgetvalue(res, r, 0) : "";
            if (!strcmp(word, "wait"))
                e->wait = true;
            else if (!strcmp(word, "applied"))
                b->in->applied++;
        }
    }
}

static void apply_next(struct batch *b);

static void one_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct batch *b = arg;
    struct entry *e = &b->e[b->next];
    if (res) {
        take_results(b, res, b->next, b->next + 1, e->first);
    } else if (transient(sqlstate)) {
        e->transient = true;
        log_warn("inbound %s: %s; it stays pending", e->id, errmsg);
    } else {
        b->in->dropped++;
        log_warn("inbound %s cannot be applied (SQLSTATE %s: %s); acknowledged", e->id, sqlstate,
                 errmsg);
    }
    b->next++;
    apply_next(b);
}

/* Entry by entry, each in its own transaction (after the batch failed). */
static void apply_next(struct batch *b)
{
    while (b->next < b->n && b->e[b->next].nevents == 0)
        b->next++;
    if (b->next >= b->n) {
        batch_finish(b);
        return;
    }
    const struct entry *e = &b->e[b->next];
    run_events(b->in->w, b->ev, e->first, e->first + e->nevents, one_done, b);
}

static void batch_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct batch *b = arg;
    if (res) {
        take_results(b, res, 0, b->n, 0);
        batch_finish(b);
        return;
    }
    log_warn("inbound batch of %d entries failed (SQLSTATE %s: %s); applying them one by one", b->n,
             sqlstate && *sqlstate ? sqlstate : "-", errmsg);
    b->next = 0;
    apply_next(b);
}

/* Parses the entries ([id, fields] pairs), acknowledges the malformed ones
 * and applies the others. */
static void process_entries(struct inbound *in, const redisReply *entries)
{
    int n = (int)entries->elements;
    if (n == 0)
        return;
    struct batch *b = batch_new(in, n);
    char **bad = xcalloc((size_t)n, sizeof(char *));
    int nbad = 0;
    for (int i = 0; i < n; i++) {
        const redisReply *en = entries->element[i];
        struct entry *e = &b->e[i];
        e->first = b->nevents;
        /* XAUTOCLAIM answers a deleted entry as [id, nil] */
        if (en->type != REDIS_REPLY_ARRAY || en->elements != 2 ||
            en->element[0]->type != REDIS_REPLY_STRING)
            continue;
        snprintf(e->id, sizeof(e->id), "%s", en->element[0]->str);
        if (!parse_entry(b, en, e)) {
            /* events it added before failing are dropped with it */
            for (int k = e->first; k < b->nevents; k++)
                free(b->ev[k].payload);
            b->nevents = e->first;
            e->nevents = 0;
            bad[nbad++] = e->id;
            in->dropped++;
        }
    }
    ack(in, bad, nbad);
    free(bad);
    in->applying++;
    if (b->nevents == 0) {
        batch_finish(b); /* entries without events (all malformed) are acked */
        return;
    }
    run_events(in->w, b->ev, 0, b->nevents, batch_done, b);
}

/* ---------------------------------------------------------------------
 * Reading and reclaiming
 * ------------------------------------------------------------------- */

static void on_read(redisAsyncContext *ac, void *reply, void *priv)
{
    struct inbound *in = priv;
    redisReply *r = reply;
    (void)ac;
    in->reading = false;
    if (!r)
        return; /* disconnected; the tick reconnects */
    if (r->type == REDIS_REPLY_ERROR) {
        log_warn("XREADGROUP %s: %s", INBOUND_GROUP, r->str);
        if (strncmp(r->str, "NOGROUP", 7) == 0 && in->rd)
            create_group(in, in->rd);
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
               r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements == 2 &&
               r->element[0]->element[1]->type == REDIS_REPLY_ARRAY) {
        process_entries(in, r->element[0]->element[1]);
    }
    inbound_maybe_read(in->w);
}

static void on_reclaim(redisAsyncContext *ac, void *reply, void *priv)
{
    struct inbound *in = priv;
    redisReply *r = reply;
    (void)ac;
    in->reclaiming = false;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 2 &&
        r->element[1]->type == REDIS_REPLY_ARRAY && r->element[1]->elements > 0) {
        log_info("reclaimed %zu idle inbound entries", r->element[1]->elements);
        process_entries(in, r->element[1]);
    }
    inbound_maybe_read(in->w);
}

/* Takes over entries idle for INBOUND_IDLE_MS (their worker died, or they
 * wait for their delivery), between batches. */
static void reclaim(struct inbound *in)
{
    struct worker *w = in->w;
    if (in->reclaiming || in->applying > 0 || w->stopping || !w->wr || !w->wr_ready)
        return;
    if (redisAsyncCommand(w->wr, on_reclaim, in, "XAUTOCLAIM %s %s %s %d 0-0 COUNT %ld",
                          w->keys.inbound, INBOUND_GROUP, w->consumer, INBOUND_IDLE_MS,
                          w->cfg->batch) == REDIS_OK)
        in->reclaiming = true;
}

void inbound_maybe_read(struct worker *w)
{
    struct inbound *in = w->inbound;
    if (!in || in->reading || in->applying > 0 || w->stopping || !in->rd || !in->rd_ready)
        return;
    if (redisAsyncCommand(in->rd, on_read, in,
                          "XREADGROUP GROUP %s %s COUNT %ld BLOCK 1000 STREAMS %s >", INBOUND_GROUP,
                          w->consumer, w->cfg->batch, w->keys.inbound) == REDIS_OK)
        in->reading = true;
}

/* ---------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------- */

void inbound_start(struct worker *w)
{
    struct inbound *in = xcalloc(1, sizeof(*in));
    in->w = w;
    w->inbound = in;
    connect_reader(in);
}

void inbound_tick(struct worker *w)
{
    struct inbound *in = w->inbound;
    if (!in || w->stopping)
        return;
    connect_reader(in);
    if (++in->ticks % INBOUND_RECLAIM_EVERY == 0)
        reclaim(in);
    inbound_maybe_read(w);
}

bool inbound_idle(const struct worker *w)
{
    const struct inbound *in = w->inbound;
    return !in || (!in->reading && !in->reclaiming && in->applying == 0);
}

void inbound_free(struct worker *w)
{
    struct inbound *in = w->inbound;
    if (!in)
        return;
    log_info("inbound: %lld events applied, %lld entries dropped as malformed", in->applied,
             in->dropped);
    if (in->rd)
        redisAsyncFree(in->rd);
    free(in);
    w->inbound = NULL;
}

/* ---------------------------------------------------------------------
 * Status reports from reconciliation
 * ------------------------------------------------------------------- */

struct reports {
    void (*done)(void *arg, bool ok);
    void *arg;
    int n;
    struct event *ev;
};

static void reports_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct reports *rp = arg;
    if (!res)
        log_warn("applying %d reconciled statuses failed (SQLSTATE %s: %s)", rp->n,
                 sqlstate && *sqlstate ? sqlstate : "-", errmsg);
    rp->done(rp->arg, res != NULL);
    for (int i = 0; i < rp->n; i++)
        free(rp->ev[i].payload);
    free(rp->ev);
    free(rp);
}

void inbound_apply_status(struct worker *w, int n, const long long *tenants, char *const *payloads,
                          void (*done)(void *arg, bool ok), void *arg)
{
    struct reports *rp = xcalloc(1, sizeof(*rp));
    rp->done = done;
    rp->arg = arg;
    rp->n = n;
    rp->ev = xcalloc((size_t)(n > 0 ? n : 1), sizeof(*rp->ev));
    for (int i = 0; i < n; i++)
        rp->ev[i] = (struct event){inbound_kind_names[INBOUND_TWILIO_STATUS], tenants[i],
                                   xstrdup(payloads[i])};
    run_events(w, rp->ev, 0, n, reports_done, rp);
}
