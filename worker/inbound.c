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
 * live in that migration. A batch ends before the entry whose events would
 * take its payloads past INBOUND_MAX_PAYLOADS / 4: that entry and the ones
 * after it stay pending and are read again at once (this consumer's own
 * pending entries, below), never dropped.
 *
 * Failures: an entry that cannot be parsed is logged (never its body) and
 * acknowledged; so is one deleted from the stream while pending. A batch
 * whose statement fails for a reason of its own is applied again entry by
 * entry; an entry that fails alone for a reason other than the connection,
 * a deadlock or a timeout is logged and acknowledged (it would fail again).
 * When PostgreSQL is unreachable (or fails the statement for a transient
 * reason) the entries stay pending and the consumer backs off - 1 s, doubled
 * up to 30 s - instead of reading new entries, which wait in the stream;
 * then it reads its own pending entries again (XREADGROUP from id 0, page by
 * page) before anything new. An entry that keeps failing transiently on its
 * own (while PostgreSQL answers) is given up after INBOUND_MAX_TRIES tries,
 * logged and acknowledged; failures of the connection count against an
 * entry only when the entry after it goes through (a batch that keeps
 * losing its connection is tried entry by entry once the back-off reaches
 * INBOUND_ALONE_AFTER_MS), so an outage, however long, drops nothing. Not
 * Redis's delivery count nor the entry's age: both grow during an outage. An entry whose delivery
 * is not written yet ('wait': a receipt faster than the send's outcome) stays pending and is
 * reclaimed after INBOUND_IDLE_MS; it is acknowledged as unmatched once older than INBOUND_WAIT_MS
 * (a status callback's sid is logged then, as it is when it matches none of the tenant's
 * deliveries: an operator can look for a delivery left 'unknown').
 *
 * A worker reads its next batch once the last one is committed, so the
 * events of one delivery are applied in stream order (a reclaim, between
 * batches, may overlap one; the SQL is monotonic anyway, so the order
 * between workers does not matter either). The blocking XREADGROUP has a
 * connection of its own; acknowledgements and reclaims go through the
 * worker's write connection. Reclaims (XAUTOCLAIM, every
 * INBOUND_RECLAIM_EVERY s) follow the cursor at once while pages come back
 * full. Deleted entries: Redis 7 drops them from the group itself; 6.2
 * claims them and answers nil without an id, so this consumer then reads
 * its own pending entries, where they appear as [id, nil], and acknowledges
 * them.
 *
 * Housekeeping (trimming the stream, purging old dedupe keys) is
 * upkeep.c's. */
#include <hiredis/adapters/libevent.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"
#include "phone.h"
#include "upkeep.h"
#include "websig.h"
#include "worker.h"
#include "xalloc.h"

#define INBOUND_GROUP "inbound"
#define INBOUND_IDLE_MS 60000    /* a pending entry this idle is reclaimed */
#define INBOUND_WAIT_MS 300000   /* 'wait' entries older than this are given up */
#define INBOUND_RECLAIM_EVERY 15 /* ticks (seconds) */
#define INBOUND_BACKOFF_MIN_MS 1000
#define INBOUND_BACKOFF_MAX_MS 30000
#define INBOUND_ALONE_AFTER_MS                                                                     \
    4000                    /* back-off from which a failing batch is tried entry by entry */
#define INBOUND_MAX_TRIES 5 /* transient failures of an entry alone before it is given up */
#define INBOUND_TRIES_SLOTS 64
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

/* Where a batch's entries came from. */
enum batch_source { SRC_NEW = 0, SRC_HISTORY, SRC_RECLAIM };

/* Transient failures of one entry on its own (in-process: another worker
 * that reclaims it counts afresh). */
struct tries {
    char id[32];
    int n;
};

struct inbound {
    struct worker *w;
    redisAsyncContext *rd; /* blocking reads only */
    bool rd_ready;
    bool reading;         /* an XREADGROUP is outstanding */
    bool reading_history; /* ... of this consumer's pending entries */
    bool reclaiming;      /* an XAUTOCLAIM is outstanding */
    int applying;         /* batches whose statements are running */
    int ticks;
    /* After a transient failure: nothing is read before backoff_until
     * (CLOCK_MONOTONIC ms); then this consumer's pending entries after
     * history_from, page by page, before new ones. */
    long backoff_ms;
    long long backoff_until;
    bool history;
    char history_from[32];
    char reclaim_from[32]; /* XAUTOCLAIM's cursor while pages come back full */
    bool reclaim_more;
    struct upkeep *upkeep;
    struct tries tries[INBOUND_TRIES_SLOTS];
    int ntries;
    long long applied, dropped, gave_up;
};

/* One stream entry and what became of it. */
struct entry {
    char id[32];
    int first, nevents; /* its events in the batch */
    long long tenant;
    bool transient;   /* its statement failed for now: stays pending */
    bool wait;        /* some event waits for its delivery */
    bool unmatched;   /* a status callback whose sid none of the tenant's deliveries has */
    bool left;        /* not in this batch (too large for it): read again */
    char sqlstate[6]; /* of its transient failure */
    char sid[40];     /* twilio_status: the MessageSid / CallSid, for the log */
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
    enum batch_source src;
    int n;
    struct entry *e;
    struct event *ev;
    int nevents, evcap;
    size_t bytes;         /* of the payloads */
    int next;             /* entry by entry (after the batch failed): the one running */
    int applied_alone;    /* entries that succeeded on their own */
    bool down_once;       /* entry by entry: the last one failed as if PostgreSQL were down */
    int left;             /* entries left for the next batch */
    char resume_from[32]; /* the last entry before the first left one */
    char last_id[32];     /* the page's last entry */
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
 * (logged, never with the body); too_large when they do not fit the batch. */
static const char too_large[] = "too large for one statement";

static const char *parse_twilio_status(struct batch *b, struct entry *e, long long tenant,
                                       const char *body, size_t len)
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
    snprintf(e->sid, sizeof(e->sid), "%.*s", (int)sizeof(e->sid) - 1, sid); /* for the log */
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "sid", sid);
    cJSON_AddStringToObject(p, "status", status);
    if (is_token(code))
        cJSON_AddStringToObject(p, "error_code", code);
    if (is_token(amd))
        cJSON_AddStringToObject(p, "answered_by", amd);
    return add_event(b, inbound_kind_names[INBOUND_TWILIO_STATUS], tenant, p) ? too_large : NULL;
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
        why = too_large;
out:
    free(text);
    return why;
}

static const char *parse_twilio_gather(struct batch *b, long long tenant, const redisReply *fields,
                                       const char *body, size_t len)
{
    long long delivery = 0;
    const char *q = rq_entry_field(fields, "q");
    if (!parse_id(rq_entry_field(fields, "delivery"), &delivery))
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
    cJSON_AddStringToObject(p, "delivery", rq_entry_field(fields, "delivery")); /* exact */
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
    return add_event(b, inbound_kind_names[INBOUND_TWILIO_GATHER], tenant, p) ? too_large : NULL;
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
                why = too_large;
        }
        ev = next;
    }
    cJSON_Delete(root);
    if (bad > 0)
        log_warn("inbound %s: %d malformed SendGrid events skipped", id, bad);
    return why;
}

enum parse_result { PARSE_OK = 0, PARSE_BAD, PARSE_DELETED, PARSE_FULL };

/* Parses one stream entry into b: PARSE_BAD (logged) when it is malformed,
 * PARSE_DELETED when it was deleted from the stream ([id, nil]: a pending
 * entry read again), PARSE_FULL when its events do not fit the batch. */
static enum parse_result parse_entry(struct batch *b, const redisReply *en, struct entry *e)
{
    const redisReply *fields = en->element[1];
    e->first = b->nevents;
    if (fields->type != REDIS_REPLY_ARRAY)
        return PARSE_DELETED;
    const char *kind = rq_entry_field(fields, "kind");
    const char *body = rq_entry_field(fields, "body");
    long long tenant = 0;
    int k = 0;
    while (kind && k < INBOUND_NKINDS && strcmp(kind, inbound_kind_names[k]) != 0)
        k++;
    const char *why = NULL;
    if (!kind || k == INBOUND_NKINDS)
        why = "unknown kind";
    else if (!parse_id(rq_entry_field(fields, "tenant"), &tenant))
        why = "no valid tenant";
    else if (!body)
        why = "no body";
    e->tenant = tenant;
    if (!why) {
        size_t len = 0;
        for (size_t i = 0; i + 1 < fields->elements; i += 2)
            if (fields->element[i + 1]->str == body)
                len = fields->element[i + 1]->len;
        switch ((enum inbound_kind)k) {
        case INBOUND_TWILIO_STATUS:
            why = parse_twilio_status(b, e, tenant, body, len);
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
    if (why == too_large && e->first > 0)
        return PARSE_FULL; /* the next batch takes it */
    if (why) {
        log_warn("inbound %s (%s, tenant %lld): %s; acknowledged", e->id, kind ? kind : "?", tenant,
                 why);
        return PARSE_BAD;
    }
    return PARSE_OK;
}

/* ---------------------------------------------------------------------
 * Applying
 * ------------------------------------------------------------------- */

static struct batch *batch_new(struct inbound *in, int n, enum batch_source src)
{
    struct batch *b = xcalloc(1, sizeof(*b));
    b->in = in;
    b->src = src;
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

/* PostgreSQL unreachable, shutting down or out of resources: says nothing
 * about the statement, which will run later. */
static bool server_down(const char *sqlstate)
{
    return !sqlstate || !*sqlstate || !strncmp(sqlstate, "08", 2) || !strncmp(sqlstate, "57P", 3) ||
           !strncmp(sqlstate, "53", 2);
}

/* The above, a deadlock or serialisation failure, a cancel or timeout: the
 * same statement may well succeed later. */
static bool transient(const char *sqlstate)
{
    return server_down(sqlstate) || !strncmp(sqlstate, "40", 2) || !strncmp(sqlstate, "57", 2);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
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

/* The transient failures of entry id on its own, one more; the count. */
static int tries_bump(struct inbound *in, const char *id)
{
    int i = 0, low = 0;
    while (i < in->ntries && strcmp(in->tries[i].id, id) != 0) {
        if (in->tries[i].n < in->tries[low].n)
            low = i;
        i++;
    }
    if (i == in->ntries) {
        if (in->ntries < INBOUND_TRIES_SLOTS)
            in->ntries++;
        else
            i = low; /* full: forget the entry tried least */
        snprintf(in->tries[i].id, sizeof(in->tries[i].id), "%s", id);
        in->tries[i].n = 0;
    }
    return ++in->tries[i].n;
}

static void tries_forget(struct inbound *in, const char *id)
{
    for (int i = 0; i < in->ntries; i++)
        if (!strcmp(in->tries[i].id, id)) {
            in->tries[i] = in->tries[--in->ntries];
            return;
        }
}

/* After a batch with entries left pending for a transient reason: no
 * reading for a while, then those entries first. */
static void back_off(struct inbound *in, int n, const char *why)
{
    bool first = in->backoff_ms == 0;
    in->backoff_ms = first ? INBOUND_BACKOFF_MIN_MS
                           : (in->backoff_ms * 2 > INBOUND_BACKOFF_MAX_MS ? INBOUND_BACKOFF_MAX_MS
                                                                          : in->backoff_ms * 2);
    in->backoff_until = mono_ms() + in->backoff_ms;
    in->history = true;
    snprintf(in->history_from, sizeof(in->history_from), "0");
    if (first)
        log_warn("inbound: %d entries stay pending (%s); retrying in %ld s, up to every %d s, "
                 "while new entries wait in the stream",
                 n, why, in->backoff_ms / 1000, INBOUND_BACKOFF_MAX_MS / 1000);
}

/* Acknowledges what is done, decides what to read next and ends the batch. */
static void batch_finish(struct batch *b)
{
    struct inbound *in = b->in;
    char **ids = xcalloc((size_t)(b->n > 0 ? b->n : 1), sizeof(char *));
    int nack = 0, waiting = 0, gave_up = 0, pending = 0;
    const char *why = NULL;
    long long now = now_ms();
    for (int i = 0; i < b->n; i++) {
        struct entry *e = &b->e[i];
        if (e->left || !e->id[0])
            continue;
        if (e->transient) {
            /* Counted against the entry only when PostgreSQL answered:
             * it named the failure, or took other entries meanwhile. */
            bool counts = b->applied_alone > 0 || !server_down(e->sqlstate);
            if (!counts || tries_bump(in, e->id) < INBOUND_MAX_TRIES) {
                pending++;
                if (!why || !server_down(e->sqlstate))
                    why = server_down(e->sqlstate) ? "PostgreSQL unavailable" : "transient failure";
                continue;
            }
            log_warn("inbound %s (tenant %lld) failed %d times on its own (SQLSTATE %s); given up "
                     "and acknowledged",
                     e->id, e->tenant, INBOUND_MAX_TRIES, e->sqlstate[0] ? e->sqlstate : "-");
            in->gave_up++;
        }
        if (in->ntries > 0)
            tries_forget(in, e->id);
        if (e->wait) {
            if (now - strtoll(e->id, NULL, 10) < INBOUND_WAIT_MS) {
                waiting++;
                continue;
            }
            gave_up++;
            if (e->sid[0])
                log_info("inbound %s: status callback for %s (tenant %lld) matched no written "
                         "delivery in %d s; acknowledged (a delivery left 'unknown' may be its "
                         "send)",
                         e->id, e->sid, e->tenant, INBOUND_WAIT_MS / 1000);
        } else if (e->unmatched && e->sid[0]) {
            log_info(
                "inbound %s: status callback for %s (tenant %lld) matches none of the "
                "tenant's deliveries; acknowledged (a delivery left 'unknown' may be its send)",
                e->id, e->sid, e->tenant);
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
    /* What to read next. */
    if (pending > 0) {
        back_off(in, pending, why);
    } else {
        if (in->backoff_ms > 0)
            log_info("inbound: entries apply again; reading the pending ones first");
        in->backoff_ms = 0;
        if (b->left > 0) {
            in->history = true; /* from the entry before the first left one */
            if (b->resume_from[0])
                snprintf(in->history_from, sizeof(in->history_from), "%s", b->resume_from);
            else if (b->src != SRC_HISTORY)
                snprintf(in->history_from, sizeof(in->history_from), "0");
        } else if (b->src == SRC_HISTORY && b->last_id[0]) {
            snprintf(in->history_from, sizeof(in->history_from), "%s", b->last_id);
        }
    }
    in->applying--;
    batch_free(b);
    inbound_maybe_read(in->w);
}

/* Shutting down: the entries stay pending, for another worker. */
static void batch_abandon(struct batch *b)
{
    b->in->applying--;
    batch_free(b);
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
            else if (!strcmp(word, "unmatched"))
                e->unmatched = true;
        }
    }
}

/* Entries [from, n) with events stay pending for a transient reason. */
static void mark_transient(struct batch *b, int from, const char *sqlstate)
{
    for (int i = from; i < b->n; i++)
        if (b->e[i].nevents > 0) {
            b->e[i].transient = true;
            snprintf(b->e[i].sqlstate, sizeof(b->e[i].sqlstate), "%s", sqlstate ? sqlstate : "");
        }
}

static void apply_next(struct batch *b);

static void one_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct batch *b = arg;
    struct entry *e = &b->e[b->next];
    if (!res && b->in->w->stopping) {
        batch_abandon(b);
        return;
    }
    if (res) {
        take_results(b, res, b->next, b->next + 1, e->first);
        b->applied_alone++;
    } else if (server_down(sqlstate) && b->down_once) {
        /* Twice in a row: PostgreSQL is down, the rest would fail alike
         * (they stay pending, untried). */
        log_warn("inbound %s: %s; it and the %d after it stay pending", e->id, errmsg,
                 b->n - b->next - 1);
        mark_transient(b, b->next, sqlstate);
        batch_finish(b);
        return;
    } else if (transient(sqlstate)) {
        /* Pending; counted against the entry (batch_finish) when
         * PostgreSQL named the failure or took another entry meanwhile -
         * after a "connection lost", the next entry tells. */
        e->transient = true;
        snprintf(e->sqlstate, sizeof(e->sqlstate), "%s", sqlstate ? sqlstate : "");
        log_warn("inbound %s: %s; it stays pending", e->id, errmsg);
    } else {
        b->in->dropped++;
        log_warn("inbound %s cannot be applied (SQLSTATE %s: %s); acknowledged", e->id, sqlstate,
                 errmsg);
    }
    b->down_once = !res && server_down(sqlstate);
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
    if (b->in->w->stopping) {
        batch_abandon(b);
        return;
    }
    if (server_down(sqlstate) && b->in->backoff_ms < INBOUND_ALONE_AFTER_MS) {
        mark_transient(b, 0, sqlstate);
        log_warn("inbound batch of %d entries not applied: %s", b->n, errmsg);
        batch_finish(b);
        return;
    }
    /* Failed for a reason of its own - or, failing after back-offs, maybe
     * because of one entry that breaks the connection: entry by entry. */
    log_warn("inbound batch of %d entries failed (SQLSTATE %s: %s); applying them one by one", b->n,
             sqlstate, errmsg);
    b->next = 0;
    apply_next(b);
}

/* Parses the entries ([id, fields] pairs), acknowledges the malformed and
 * deleted ones and applies the others. */
static void process_entries(struct inbound *in, const redisReply *entries, enum batch_source src)
{
    int n = (int)entries->elements;
    if (n == 0)
        return;
    struct batch *b = batch_new(in, n, src);
    char **bad = xcalloc((size_t)n, sizeof(char *));
    int nbad = 0, nnil = 0, ndeleted = 0;
    for (int i = 0; i < n; i++) {
        const redisReply *en = entries->element[i];
        struct entry *e = &b->e[i];
        e->first = b->nevents;
        if (en->type == REDIS_REPLY_NIL) {
            nnil++; /* Redis 6.2's XAUTOCLAIM on a deleted entry: no id */
            continue;
        }
        if (en->type != REDIS_REPLY_ARRAY || en->elements != 2 ||
            en->element[0]->type != REDIS_REPLY_STRING)
            continue;
        snprintf(e->id, sizeof(e->id), "%s", en->element[0]->str);
        snprintf(b->last_id, sizeof(b->last_id), "%s", e->id);
        if (b->left > 0) {
            e->left = true;
            b->left++;
            continue;
        }
        size_t bytes = b->bytes;
        enum parse_result pr = parse_entry(b, en, e);
        if (pr == PARSE_OK)
            continue;
        /* events it added before failing are dropped with it */
        for (int k = e->first; k < b->nevents; k++)
            free(b->ev[k].payload);
        b->nevents = e->first;
        b->bytes = bytes;
        e->nevents = 0;
        if (pr == PARSE_FULL) {
            e->left = true;
            b->left++;
            for (int k = i - 1; k >= 0 && !b->resume_from[0]; k--)
                if (b->e[k].id[0])
                    snprintf(b->resume_from, sizeof(b->resume_from), "%s", b->e[k].id);
            continue;
        }
        bad[nbad++] = e->id;
        if (pr == PARSE_DELETED)
            ndeleted++;
        else
            in->dropped++;
    }
    ack(in, bad, nbad);
    free(bad);
    if (ndeleted > 0)
        log_info("%d pending inbound entries were deleted from the stream; acknowledged", ndeleted);
    if (b->left > 0)
        log_info("inbound batch full (%zu bytes of events): %d entries left for the next one",
                 b->bytes, b->left);
    if (nnil > 0) {
        /* They are this consumer's now: its pending entries show their ids. */
        log_info("%d reclaimed inbound entries were deleted from the stream; acknowledging them",
                 nnil);
        in->history = true;
        snprintf(in->history_from, sizeof(in->history_from), "0");
    }
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
    bool history = in->reading_history;
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
        const redisReply *entries = r->element[0]->element[1];
        if (history && entries->elements == 0)
            in->history = false; /* none left: new entries next */
        else
            process_entries(in, entries, history ? SRC_HISTORY : SRC_NEW);
    }
    inbound_maybe_read(in->w);
}

static void on_reclaim(redisAsyncContext *ac, void *reply, void *priv)
{
    struct inbound *in = priv;
    redisReply *r = reply;
    (void)ac;
    in->reclaiming = false;
    in->reclaim_more = false;
    snprintf(in->reclaim_from, sizeof(in->reclaim_from), "0-0");
    if (r && r->type == REDIS_REPLY_ERROR)
        log_warn("XAUTOCLAIM %s: %s", INBOUND_GROUP, r->str);
    /* [cursor, entries] (6.2), [cursor, entries, deleted ids] (7.0: Redis
     * dropped those from the group itself) */
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 2 &&
        r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_ARRAY) {
        size_t got = r->element[1]->elements;
        if (r->elements >= 3 && r->element[2]->type == REDIS_REPLY_ARRAY &&
            r->element[2]->elements > 0)
            log_info("%zu idle inbound entries had been deleted from the stream",
                     r->element[2]->elements);
        if (got >= (size_t)in->w->cfg->batch && strcmp(r->element[0]->str, "0-0") != 0) {
            in->reclaim_more = true; /* a full page: the next one right after this batch */
            snprintf(in->reclaim_from, sizeof(in->reclaim_from), "%s", r->element[0]->str);
        }
        if (got > 0) {
            log_info("reclaimed %zu idle inbound entries", got);
            process_entries(in, r->element[1], SRC_RECLAIM);
        }
    }
    inbound_maybe_read(in->w);
}

/* Takes over entries idle for INBOUND_IDLE_MS (their worker died, or they
 * wait for their delivery), between batches, from reclaim_from on. False
 * when it cannot now. */
static bool reclaim(struct inbound *in)
{
    struct worker *w = in->w;
    if (in->reclaiming || in->applying > 0 || w->stopping || !w->wr || !w->wr_ready ||
        in->backoff_until > mono_ms())
        return false;
    if (redisAsyncCommand(w->wr, on_reclaim, in, "XAUTOCLAIM %s %s %s %d %s COUNT %ld",
                          w->keys.inbound, INBOUND_GROUP, w->consumer, INBOUND_IDLE_MS,
                          in->reclaim_from, w->cfg->batch) != REDIS_OK)
        return false;
    in->reclaiming = true;
    return true;
}

void inbound_maybe_read(struct worker *w)
{
    struct inbound *in = w->inbound;
    if (!in || in->reading || in->reclaiming || in->applying > 0 || w->stopping)
        return;
    if (in->backoff_until > mono_ms())
        return; /* inbound_tick comes back every second */
    if (in->reclaim_more && reclaim(in))
        return;
    if (!in->rd || !in->rd_ready)
        return;
    int ok;
    if (in->history) /* this consumer's pending entries: answered at once */
        ok = redisAsyncCommand(in->rd, on_read, in,
                               "XREADGROUP GROUP %s %s COUNT %ld STREAMS %s %s", INBOUND_GROUP,
                               w->consumer, w->cfg->batch, w->keys.inbound, in->history_from);
    else
        ok = redisAsyncCommand(in->rd, on_read, in,
                               "XREADGROUP GROUP %s %s COUNT %ld BLOCK 1000 STREAMS %s >",
                               INBOUND_GROUP, w->consumer, w->cfg->batch, w->keys.inbound);
    if (ok == REDIS_OK) {
        in->reading = true;
        in->reading_history = in->history;
    }
}

/* ---------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------- */

void inbound_start(struct worker *w)
{
    struct inbound *in = xcalloc(1, sizeof(*in));
    in->w = w;
    snprintf(in->reclaim_from, sizeof(in->reclaim_from), "0-0");
    in->upkeep = upkeep_new(w, INBOUND_GROUP);
    w->inbound = in;
    connect_reader(in);
}

void inbound_tick(struct worker *w)
{
    struct inbound *in = w->inbound;
    if (!in || w->stopping)
        return;
    connect_reader(in);
    in->ticks++;
    if (in->ticks % INBOUND_RECLAIM_EVERY == 0)
        (void)reclaim(in);
    upkeep_tick(in->upkeep);
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
    log_info("inbound: %lld events applied, %lld entries dropped as malformed, %lld given up",
             in->applied, in->dropped, in->gave_up);
    if (in->rd)
        redisAsyncFree(in->rd);
    upkeep_free(in->upkeep);
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
