/* campaigns.c - campaigns: CRUD (edits only in draft), validation per
 * channel, and the lifecycle state machine.
 *
 * PostgreSQL is the truth of a campaign's state. Every action is one
 * statement that checks the current state and moves it (a wrong transition
 * is a 409 listing the allowed actions); the XADD to the actions stream that
 * follows only wakes the dispatcher, which also polls PostgreSQL, so an
 * action survives a Redis outage. A campaign's statistics are stats.c's,
 * its live event stream events.c's. */
#include <sys/queue.h>

#include <ctype.h>
#include <stdarg.h>
#include <event2/keyvalq_struct.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "api.h"
#include "log.h"
#include "segment.h"
#include "template.h"
#include "timestamp.h"
#include "xalloc.h"

#define CAMPAIGN_JSON_COLUMNS                                                                      \
    "id, name, type, channel, status, segment_id, segment_criteria AS segment, message,"           \
    " variants, agent_config, provider_account_id, rate_per_minute, send_window,"                  \
    " (extract(epoch FROM expire_after) / 60)::int AS expire_after_minutes, scheduled_at,"         \
    " launched_at, expanded_at, paused_at, completed_at, cancelled_at, created_at, updated_at"

/* The editable fields, as parameters $3..$14 (shared by insert and update).
 * $3 name, $4 type, $5 channel, $6 segment_id, $7 segment criteria, $8 message,
 * $9 variants, $10 agent_config, $11 provider_account_id, $12 rate_per_minute,
 * $13 send_window, $14 expire_after_minutes, $15 scheduled_at. A segment_id's
 * criteria are copied (a snapshot); the provider account defaults to the
 * tenant's default for the channel. */
#define CAMPAIGN_VALUES                                                                            \
    "$3, $4, $5, $6::bigint,"                                                                      \
    " COALESCE((SELECT criteria FROM segments WHERE tenant_id = $1 AND id = $6::bigint),"          \
    "          $7::jsonb, '{}'),"                                                                  \
    " $8::jsonb, $9::jsonb, $10::jsonb, p.id, $12::int, $13::jsonb,"                               \
    " make_interval(mins => $14::int), $15::timestamptz"

#define PROVIDER_PICK                                                                              \
    " FROM provider_accounts p WHERE p.tenant_id = $1 AND p.channel = $5"                          \
    "   AND CASE WHEN $11::bigint IS NULL THEN p.is_default ELSE p.id = $11::bigint END"           \
    "   AND ($6::bigint IS NULL OR EXISTS (SELECT 1 FROM segments s"                               \
    "        WHERE s.tenant_id = $1 AND s.id = $6::bigint))"

static const char sql_insert[] =
    "INSERT INTO campaigns (tenant_id, name, type, channel, segment_id, segment_criteria,"
    "  message, variants, agent_config, provider_account_id, rate_per_minute, send_window,"
    "  expire_after, scheduled_at)"
    " SELECT $1, " CAMPAIGN_VALUES PROVIDER_PICK
    /* $2 (the campaign id of an update) is unused here; typing it lets
     * both statements share one parameter list. */
    "   AND $2::bigint IS NOT NULL"
    " RETURNING row_to_json((SELECT x FROM (SELECT " CAMPAIGN_JSON_COLUMNS ") x))";

/* $2 campaign id; updates only a draft. */
static const char sql_update[] =
    "UPDATE campaigns k SET (name, type, channel, segment_id, segment_criteria, message,"
    "  variants, agent_config, provider_account_id, rate_per_minute, send_window, expire_after,"
    "  scheduled_at) = (SELECT " CAMPAIGN_VALUES PROVIDER_PICK "), updated_at = now()"
    " WHERE k.tenant_id = $1 AND k.id = $2 AND k.status = 'draft'"
    "   AND EXISTS (SELECT 1" PROVIDER_PICK ")"
    " RETURNING row_to_json((SELECT x FROM (SELECT " CAMPAIGN_JSON_COLUMNS ") x))";

static const char sql_get[] = "SELECT row_to_json(x) FROM (SELECT " CAMPAIGN_JSON_COLUMNS
                              " FROM campaigns WHERE tenant_id = $1 AND id = $2) x";

static const char sql_list[] =
    "SELECT COALESCE(json_agg(x ORDER BY x.id), '[]') FROM"
    " (SELECT " CAMPAIGN_JSON_COLUMNS " FROM campaigns WHERE tenant_id = $1 AND id > $2::bigint"
    "  AND ($4::text IS NULL OR status = $4) ORDER BY id LIMIT $3::int) x";

static const char sql_delete[] =
    "WITH cur AS (SELECT id, status FROM campaigns WHERE tenant_id = $1 AND id = $2 FOR UPDATE),"
    " del AS (DELETE FROM campaigns k USING cur WHERE k.id = cur.id AND cur.status = 'draft'"
    "   RETURNING k.id)"
    " SELECT cur.status, (SELECT count(*) FROM del) FROM cur";

/* One statement per action: $3 the states it may leave, $4 the new state,
 * $5 the action, $6 launch's scheduled_at. Returns the state before, whether
 * it moved, and the campaign after. cancel and complete also close the
 * deliveries nobody has started sending. */
static const char sql_action[] =
    "WITH cur AS (SELECT id, status, scheduled_at, channel FROM campaigns"
    "   WHERE tenant_id = $1 AND id = $2 FOR UPDATE),"
    " upd AS (UPDATE campaigns c SET"
    "   status = CASE WHEN $5 = 'launch' AND COALESCE($6::timestamptz, cur.scheduled_at) > now()"
    "            THEN 'scheduled' ELSE $4 END,"
    "   scheduled_at = CASE WHEN $5 = 'launch' THEN COALESCE($6::timestamptz, cur.scheduled_at)"
    "                  ELSE c.scheduled_at END,"
    "   launched_at = CASE WHEN $5 = 'launch' AND COALESCE($6::timestamptz, cur.scheduled_at,"
    "                   now()) <= now() THEN now() ELSE c.launched_at END,"
    "   paused_at = CASE WHEN $5 = 'pause' THEN now() WHEN $5 = 'resume' THEN NULL"
    "               ELSE c.paused_at END,"
    "   completed_at = CASE WHEN $5 = 'complete' THEN now() ELSE c.completed_at END,"
    "   cancelled_at = CASE WHEN $5 = 'cancel' THEN now() ELSE c.cancelled_at END,"
    "   resume_gen = c.resume_gen + CASE WHEN $5 = 'resume' THEN 1 ELSE 0 END,"
    "   updated_at = now()"
    "   FROM cur WHERE c.id = cur.id AND cur.status = ANY($3::text[])"
    "     AND ($5 <> 'launch' OR cur.channel = ANY($7::text[]))"
    /* launching a scheduled campaign again for the same time is a no-op */
    "     AND NOT ($5 = 'launch' AND cur.status = 'scheduled'"
    "       AND COALESCE($6::timestamptz, cur.scheduled_at) = cur.scheduled_at)"
    "   RETURNING c.*),"
    " closed AS (UPDATE deliveries d SET status = 'cancelled', updated_at = now()"
    "   FROM upd WHERE $5 IN ('cancel', 'complete') AND d.tenant_id = $1"
    "     AND d.campaign_id = upd.id AND d.status IN ('pending', 'queued', 'retry')"
    "   RETURNING d.id)"
    " SELECT cur.status, EXISTS (SELECT 1 FROM upd),"
    "   COALESCE((SELECT row_to_json((SELECT x FROM (SELECT " CAMPAIGN_JSON_COLUMNS
    "     ) x)) FROM upd u),"
    "     (SELECT row_to_json(x) FROM (SELECT " CAMPAIGN_JSON_COLUMNS
    "      FROM campaigns WHERE id = cur.id) x)),"
    "   (SELECT count(*) FROM closed), cur.channel"
    " FROM cur";

/* Channels the workers of this version can send. */
#define SENDABLE_CHANNELS "{sms,email,voice}"

/* ---------------------------------------------------------------------
 * The state machine
 * ------------------------------------------------------------------- */

enum campaign_action { ACT_LAUNCH = 0, ACT_PAUSE, ACT_RESUME, ACT_COMPLETE, ACT_CANCEL };

static const struct {
    const char *name;
    const char *from; /* PostgreSQL array literal of the states it leaves */
    const char *to;
} actions[] = {
    [ACT_LAUNCH] = {"launch", "{draft,scheduled}", "running"},
    [ACT_PAUSE] = {"pause", "{running}", "paused"},
    [ACT_RESUME] = {"resume", "{paused}", "running"},
    [ACT_COMPLETE] = {"complete", "{running,paused}", "completed"},
    [ACT_CANCEL] = {"cancel", "{draft,scheduled,running,paused}", "cancelled"},
};

/* The actions a state allows (for 409 replies). */
static const char *const *allowed_actions(const char *status)
{
    static const char *const draft[] = {"launch", "cancel", NULL};
    static const char *const scheduled[] = {"launch", "cancel", NULL};
    static const char *const running[] = {"pause", "complete", "cancel", NULL};
    static const char *const paused[] = {"resume", "complete", "cancel", NULL};
    static const char *const none[] = {NULL};
    if (!strcmp(status, "draft"))
        return draft;
    if (!strcmp(status, "scheduled"))
        return scheduled;
    if (!strcmp(status, "running"))
        return running;
    if (!strcmp(status, "paused"))
        return paused;
    return none;
}

/* ---------------------------------------------------------------------
 * Validation
 * ------------------------------------------------------------------- */

/* The fields a client may send in a campaign document. All but
 * agent_template_id are stored (and so read back for a PATCH merge). */
static const char *const campaign_fields[] = {"name",
                                              "type",
                                              "channel",
                                              "message",
                                              "variants",
                                              "segment",
                                              "segment_id",
                                              "provider_account_id",
                                              "rate_per_minute",
                                              "send_window",
                                              "expire_after_minutes",
                                              "scheduled_at",
                                              "agent_config",
                                              "agent_template_id",
                                              NULL};

struct cerr {
    char field[160];
    char msg[256];
};

static int cfail(struct cerr *e, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int cfail(struct cerr *e, const char *field, const char *fmt, ...)
{
    snprintf(e->field, sizeof(e->field), "%s", field);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    return -1;
}

static bool allowed_variable(const char *name, size_t n)
{
    static const char *const vars[] = {"first_name", "last_name",   "email",
                                       "phone",      "external_id", NULL};
    for (int i = 0; vars[i]; i++)
        if (strlen(vars[i]) == n && strncmp(vars[i], name, n) == 0)
            return true;
    return n > 11 && strncmp(name, "attributes.", 11) == 0;
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

static bool is_int(const cJSON *v, double min, double max)
{
    return cJSON_IsNumber(v) && v->valuedouble >= min && v->valuedouble <= max &&
           v->valuedouble == (double)(long long)v->valuedouble;
}

/* A text field with template variables: present, a string, within max
 * characters, and every variable known. */
static int check_text(const cJSON *msg, const char *key, const char *path, size_t max,
                      bool required, struct cerr *e)
{
    char field[96];
    snprintf(field, sizeof(field), "%s.%s", path, key);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(msg, key);
    if (!v || cJSON_IsNull(v)) {
        if (required)
            return cfail(e, field, "%s is required", field);
        return 0;
    }
    if (!cJSON_IsString(v) || !*v->valuestring)
        return cfail(e, field, "%s must be a non-empty string", field);
    if (utf8_chars(v->valuestring) > max)
        return cfail(e, field, "%s must be at most %zu characters", field, max);
    char terr[160];
    if (tpl_validate(v->valuestring, allowed_variable, terr, sizeof(terr)) != CR_OK)
        return cfail(e, field, "%s", terr);
    return 0;
}

static int check_message(const cJSON *msg, enum seg_channel ch, const char *path, struct cerr *e)
{
    static const char *const sms_keys[] = {"body", NULL};
    static const char *const email_keys[] = {"subject",   "text",     "html",
                                             "from_name", "reply_to", NULL};
    static const char *const voice_keys[] = {NULL};
    if (!cJSON_IsObject(msg))
        return cfail(e, path, "%s must be an object", path);
    const char *const *keys = ch == SEG_CHANNEL_SMS     ? sms_keys
                              : ch == SEG_CHANNEL_EMAIL ? email_keys
                                                        : voice_keys;
    const char *bad = http_unknown_key(msg, keys);
    if (bad) {
        char f[160];
        snprintf(f, sizeof(f), "%s.%.100s", path, bad);
        return cfail(e, f, "unknown field %s for this channel", f);
    }
    if (ch == SEG_CHANNEL_SMS)
        return check_text(msg, "body", path, 1600, true, e);
    if (ch == SEG_CHANNEL_EMAIL) {
        if (check_text(msg, "subject", path, 998, true, e) ||
            check_text(msg, "text", path, 200000, false, e) ||
            check_text(msg, "html", path, 500000, false, e) ||
            check_text(msg, "from_name", path, 200, false, e))
            return -1;
        if (!cJSON_GetObjectItemCaseSensitive(msg, "text") &&
            !cJSON_GetObjectItemCaseSensitive(msg, "html")) {
            char f[96];
            snprintf(f, sizeof(f), "%s.text", path);
            return cfail(e, f, "an email needs text, html or both");
        }
        const cJSON *rt = cJSON_GetObjectItemCaseSensitive(msg, "reply_to");
        if (rt && (!cJSON_IsString(rt) || !strchr(rt->valuestring, '@'))) {
            char f[96];
            snprintf(f, sizeof(f), "%s.reply_to", path);
            return cfail(e, f, "%s must be an email address", f);
        }
    }
    return 0;
}

static int check_hhmm(const cJSON *v)
{
    if (!cJSON_IsString(v))
        return -1;
    const char *s = v->valuestring;
    if (strlen(s) != 5 || !isdigit((unsigned char)s[0]) || !isdigit((unsigned char)s[1]) ||
        s[2] != ':' || !isdigit((unsigned char)s[3]) || !isdigit((unsigned char)s[4]))
        return -1;
    int h = (s[0] - '0') * 10 + (s[1] - '0'), m = (s[3] - '0') * 10 + (s[4] - '0');
    return h <= 24 && m <= 59 && !(h == 24 && m) ? 0 : -1;
}

static int check_window(const cJSON *w, struct cerr *e)
{
    static const char *const keys[] = {"start", "end", "days", NULL};
    if (!cJSON_IsObject(w))
        return cfail(e, "send_window", "send_window must be an object");
    const char *bad = http_unknown_key(w, keys);
    if (bad) {
        char f[128];
        snprintf(f, sizeof(f), "send_window.%.100s", bad);
        return cfail(e, f, "unknown field %s", f);
    }
    const cJSON *start = cJSON_GetObjectItemCaseSensitive(w, "start");
    const cJSON *end = cJSON_GetObjectItemCaseSensitive(w, "end");
    if (check_hhmm(start) || !strcmp(start->valuestring, "24:00"))
        return cfail(e, "send_window.start", "send_window.start must be HH:MM (00:00..23:59)");
    if (check_hhmm(end))
        return cfail(e, "send_window.end", "send_window.end must be HH:MM (00:00..24:00)");
    if (!strcmp(start->valuestring, end->valuestring))
        return cfail(e, "send_window.end", "send_window.end must differ from start");
    const cJSON *days = cJSON_GetObjectItemCaseSensitive(w, "days");
    if (days) {
        int seen = 0;
        if (!cJSON_IsArray(days) || cJSON_GetArraySize(days) == 0)
            return cfail(e, "send_window.days",
                         "send_window.days must be a non-empty array of ISO weekdays 1..7");
        for (const cJSON *d = days->child; d; d = d->next) {
            if (!is_int(d, 1, 7) || (seen & (1 << (int)d->valuedouble)))
                return cfail(e, "send_window.days",
                             "send_window.days must hold distinct ISO weekdays 1 (Monday)..7");
            seen |= 1 << (int)d->valuedouble;
        }
    }
    return 0;
}

static int check_variants(const cJSON *vars, enum seg_channel ch, struct cerr *e)
{
    static const char *const keys[] = {"name", "weight", "message", NULL};
    int n = cJSON_GetArraySize(vars);
    if (!cJSON_IsArray(vars) || n < 2 || n > 10)
        return cfail(e, "variants", "variants must be an array of 2..10 variants");
    int i = 0;
    for (const cJSON *v = vars->child; v; v = v->next, i++) {
        char path[48];
        snprintf(path, sizeof(path), "variants[%d]", i);
        if (!cJSON_IsObject(v))
            return cfail(e, path, "%s must be an object", path);
        const char *bad = http_unknown_key(v, keys);
        if (bad) {
            char f[160];
            snprintf(f, sizeof(f), "%s.%.100s", path, bad);
            return cfail(e, f, "unknown field %s", f);
        }
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(v, "name");
        char f[96];
        snprintf(f, sizeof(f), "%s.name", path);
        if (!cJSON_IsString(name) || !*name->valuestring || strlen(name->valuestring) > 32 ||
            strspn(name->valuestring, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                      "0123456789_-") != strlen(name->valuestring))
            return cfail(e, f, "%s must be 1..32 letters, digits, _ or -", f);
        for (const cJSON *o = vars->child; o != v; o = o->next)
            if (!strcmp(cJSON_GetObjectItemCaseSensitive(o, "name")->valuestring,
                        name->valuestring))
                return cfail(e, f, "variant names must be unique (%s)", name->valuestring);
        snprintf(f, sizeof(f), "%s.weight", path);
        if (!is_int(cJSON_GetObjectItemCaseSensitive(v, "weight"), 1, 1000))
            return cfail(e, f, "%s must be an integer 1..1000", f);
        snprintf(f, sizeof(f), "%s.message", path);
        if (ch != SEG_CHANNEL_VOICE &&
            check_message(cJSON_GetObjectItemCaseSensitive(v, "message"), ch, f, e))
            return -1;
    }
    return 0;
}

/* Validates a whole campaign document (create, or a draft merged with a
 * patch). On success fills *agent with the agent config to store (a copy,
 * possibly from agent_template_id; NULL when none). */
static int validate_campaign(const cJSON *in, struct cerr *e, cJSON **agent)
{

    *agent = NULL;
    const char *bad = http_unknown_key(in, campaign_fields);
    if (bad)
        return cfail(e, bad, "unknown field %s", bad);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(in, "name");
    if (!cJSON_IsString(name) || !*name->valuestring || strlen(name->valuestring) > 200)
        return cfail(e, "name", "name is required: a string of 1..200 characters");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(in, "type");
    if (type && !cJSON_IsNull(type) &&
        (!cJSON_IsString(type) || (strcmp(type->valuestring, "research") != 0 &&
                                   strcmp(type->valuestring, "outbound_sales") != 0)))
        return cfail(e, "type", "type must be research or outbound_sales");
    const cJSON *channel = cJSON_GetObjectItemCaseSensitive(in, "channel");
    enum seg_channel ch;
    if (!cJSON_IsString(channel) || seg_channel_parse(channel->valuestring, &ch) != CR_OK)
        return cfail(e, "channel", "channel is required: sms, email or voice");

    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(in, "message");
    const cJSON *vars = cJSON_GetObjectItemCaseSensitive(in, "variants");
    bool has_msg = msg && !cJSON_IsNull(msg);
    bool has_vars = vars && !cJSON_IsNull(vars) && !(cJSON_IsArray(vars) && !vars->child);
    if (ch != SEG_CHANNEL_VOICE) {
        if (has_msg && has_vars)
            return cfail(e, "variants",
                         "give either message or variants (each variant has its "
                         "own message)");
        if (!has_msg && !has_vars)
            return cfail(e, "message", "message is required");
        if (has_msg && check_message(msg, ch, "message", e))
            return -1;
    } else if (has_msg && check_message(msg, ch, "message", e)) {
        return -1;
    }
    if (has_vars && check_variants(vars, ch, e))
        return -1;

    const cJSON *ac = cJSON_GetObjectItemCaseSensitive(in, "agent_config");
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(in, "agent_template_id");
    bool has_ac = ac && !cJSON_IsNull(ac), has_at = at && !cJSON_IsNull(at);
    if (has_ac && has_at)
        return cfail(e, "agent_template_id", "give either agent_config or agent_template_id");
    if (has_at) {
        const struct agent_template *t =
            cJSON_IsString(at) ? agent_template_find(at->valuestring) : NULL;
        if (!t)
            return cfail(e, "agent_template_id", "no such agent template");
        *agent = cJSON_Parse(t->json);
    } else if (has_ac) {
        cJSON *errs = NULL;
        if (agent_validate(ac, &errs) != CR_OK) {
            const cJSON *first = cJSON_GetArrayItem(errs, 0);
            const cJSON *f = cJSON_GetObjectItemCaseSensitive(first, "field");
            const cJSON *m = cJSON_GetObjectItemCaseSensitive(first, "message");
            char field[160];
            snprintf(field, sizeof(field), "agent_config%s%.120s",
                     cJSON_IsString(f) && *f->valuestring ? "." : "",
                     cJSON_IsString(f) ? f->valuestring : "");
            cfail(e, field, "%s", cJSON_IsString(m) ? m->valuestring : "invalid agent_config");
            cJSON_Delete(errs);
            return -1;
        }
        *agent = cJSON_Duplicate(ac, 1);
    }
    if (ch == SEG_CHANNEL_VOICE && !*agent)
        return cfail(e, "agent_config",
                     "a voice campaign needs agent_config or agent_template_id (the script, "
                     "questions or the AI agent's stream URL)");
    if (ch != SEG_CHANNEL_VOICE && *agent) {
        cJSON_Delete(*agent);
        *agent = NULL;
        return cfail(e, "agent_config", "agent_config is for voice campaigns");
    }

    const cJSON *seg = cJSON_GetObjectItemCaseSensitive(in, "segment");
    const cJSON *sid = cJSON_GetObjectItemCaseSensitive(in, "segment_id");
    bool has_seg = seg && !cJSON_IsNull(seg), has_sid = sid && !cJSON_IsNull(sid);
    int rc = 0;
    if (has_seg && has_sid)
        rc = cfail(e, "segment_id", "give either segment or segment_id");
    else if (has_sid && !is_int(sid, 1, 9e15))
        rc = cfail(e, "segment_id", "segment_id must be a positive integer");
    else if (has_seg && !cJSON_IsObject(seg))
        rc = cfail(e, "segment", "segment must be an object of criteria");
    else if (has_seg) {
        struct seg_query q;
        char field[64] = "", m[192] = "";
        if (seg_compile(seg, ch, 2, &q, field, sizeof(field), m, sizeof(m)) != CR_OK) {
            char f[96];
            snprintf(f, sizeof(f), "segment%s%.80s", field[0] ? "." : "", field);
            rc = cfail(e, f, "%s", m[0] ? m : "invalid segment criteria");
        }
        seg_query_cleanup(&q);
    }
    const cJSON *v;
    if (!rc && (v = cJSON_GetObjectItemCaseSensitive(in, "provider_account_id")) &&
        !cJSON_IsNull(v) && !is_int(v, 1, 9e15))
        rc = cfail(e, "provider_account_id", "provider_account_id must be a positive integer");
    if (!rc && (v = cJSON_GetObjectItemCaseSensitive(in, "rate_per_minute")) && !cJSON_IsNull(v) &&
        !is_int(v, 1, 1e7))
        rc = cfail(e, "rate_per_minute", "rate_per_minute must be an integer 1..10000000");
    if (!rc && (v = cJSON_GetObjectItemCaseSensitive(in, "expire_after_minutes")) &&
        !cJSON_IsNull(v) && !is_int(v, 1, 43200))
        rc = cfail(e, "expire_after_minutes",
                   "expire_after_minutes must be an integer 1..43200 (30 days)");
    if (!rc && (v = cJSON_GetObjectItemCaseSensitive(in, "send_window")) && !cJSON_IsNull(v))
        rc = check_window(v, e);
    if (!rc && (v = cJSON_GetObjectItemCaseSensitive(in, "scheduled_at")) && !cJSON_IsNull(v) &&
        (!cJSON_IsString(v) || !ts_valid_iso8601(v->valuestring, true)))
        rc = cfail(e, "scheduled_at", "scheduled_at must be an ISO 8601 timestamp with a zone");
    if (rc) {
        cJSON_Delete(*agent);
        *agent = NULL;
    }
    return rc;
}

/* The statement parameters of a validated document ($3..$15). */
struct cparams {
    char *strings[16];
    const char *p[16];
};

static void cparams_fill(struct cparams *cp, const struct api_req *r, const cJSON *in,
                         const cJSON *agent)
{
    memset(cp, 0, sizeof(*cp));
    char **s = cp->strings;
    s[0] = xasprintf("%lld", r->tenant_id);
    s[1] = xasprintf("%lld", r->ids[0]);
    const cJSON *v;
#define STR(i, key)                                                                                \
    if ((v = cJSON_GetObjectItemCaseSensitive(in, key)) && cJSON_IsString(v))                      \
    s[i] = xstrdup(v->valuestring)
#define NUM(i, key)                                                                                \
    if ((v = cJSON_GetObjectItemCaseSensitive(in, key)) && cJSON_IsNumber(v))                      \
    s[i] = xasprintf("%lld", (long long)v->valuedouble)
#define OBJ(i, key)                                                                                \
    if ((v = cJSON_GetObjectItemCaseSensitive(in, key)) && !cJSON_IsNull(v))                       \
    s[i] = cJSON_PrintUnformatted(v)
    STR(2, "name");
    STR(3, "type");
    STR(4, "channel");
    NUM(5, "segment_id");
    OBJ(6, "segment");
    OBJ(7, "message");
    OBJ(8, "variants");
    if (agent)
        s[9] = cJSON_PrintUnformatted(agent);
    NUM(10, "provider_account_id");
    NUM(11, "rate_per_minute");
    OBJ(12, "send_window");
    NUM(13, "expire_after_minutes");
    STR(14, "scheduled_at");
#undef STR
#undef NUM
#undef OBJ
    if (!s[3])
        s[3] = xstrdup("outbound_sales");
    if (!s[7])
        s[7] = xstrdup("{}");
    if (!s[8])
        s[8] = xstrdup("[]");
    for (int i = 0; i < 15; i++)
        cp->p[i] = s[i];
}

static void cparams_cleanup(struct cparams *cp)
{
    for (int i = 0; i < 16; i++)
        free(cp->strings[i]);
}

/* ---------------------------------------------------------------------
 * Handlers
 * ------------------------------------------------------------------- */

static void reply_no_provider(struct api_req *r)
{
    http_reply_error(r, 422, "invalid_field",
                     "no such provider account for this channel, or no such segment_id (create "
                     "an account with POST /v1/provider-accounts)",
                     "provider_account_id");
}

static void create_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)sqlstate;
    if (res && PQntuples(res) == 0) {
        reply_no_provider(r);
        return;
    }
    http_reply_pg_row(r, res, errmsg, 201, "campaign");
}

void campaigns_create(struct api_req *r)
{
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return;
    struct cerr e;
    cJSON *agent = NULL;
    if (validate_campaign(in, &e, &agent) != 0) {
        cJSON_Delete(in);
        http_reply_error(r, 422, "invalid_field", e.msg, e.field);
        return;
    }
    struct cparams cp;
    cparams_fill(&cp, r, in, agent);
    const char *p[15];
    p[0] = cp.p[0];
    for (int i = 1; i < 15; i++)
        p[i] = cp.p[i];
    /* $2 is unused by the insert: pass the tenant again to keep numbering. */
    pgpool_query(r->app->pg, sql_insert, 15, p, create_done, r);
    cparams_cleanup(&cp);
    cJSON_Delete(agent);
    cJSON_Delete(in);
}

static void get_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    (void)sqlstate;
    http_reply_pg_row(arg, res, errmsg, 200, "campaign");
}

static void query_by_id(struct api_req *r, const char *sql, pgpool_cb cb)
{
    char tenant[24], id[24];
    http_id_params(r, tenant, id);
    const char *params[] = {tenant, id};
    pgpool_query(r->app->pg, sql, 2, params, cb, r);
}

void campaigns_get(struct api_req *r)
{
    query_by_id(r, sql_get, get_done);
}

void campaigns_list(struct api_req *r)
{
    long limit;
    long long after;
    if (http_page_params_or_reply(r, &limit, &after) != 0)
        return;
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    evhttp_parse_query_str(r->query ? r->query : "", &q);
    const char *status = evhttp_find_header(&q, "status");
    static const char *const states[] = {"draft",     "scheduled", "running", "paused",
                                         "completed", "cancelled", NULL};
    bool ok = !status;
    for (int i = 0; status && states[i]; i++)
        ok |= !strcmp(status, states[i]);
    if (!ok) {
        evhttp_clear_headers(&q);
        http_reply_error(r, 400, "invalid_parameter",
                         "status must be draft, scheduled, running, paused, completed or "
                         "cancelled",
                         "status");
        return;
    }
    char tenant[24], a[24], l[24];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    snprintf(a, sizeof(a), "%lld", after);
    snprintf(l, sizeof(l), "%ld", limit);
    char *st = status ? xstrdup(status) : NULL;
    evhttp_clear_headers(&q);
    const char *params[] = {tenant, a, l, st};
    http_query_page(r, sql_list, 4, params, "campaigns", limit);
    free(st);
}

/* PATCH: load the draft, merge the patch (top-level keys replace; null
 * clears), validate the whole, update only if still a draft. */
static void patch_updated(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)sqlstate;
    if (res && PQntuples(res) == 0) {
        /* Either no longer a draft, or the provider/segment does not exist. */
        reply_no_provider(r);
        return;
    }
    http_reply_pg_row(r, res, errmsg, 200, "campaign");
}

static void patch_loaded(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)sqlstate;
    if (!http_one_row_or_reply(r, res, errmsg, "campaign"))
        return;
    cJSON *cur = cJSON_Parse(PQgetvalue(res, 0, 0));
    const cJSON *status = cJSON_GetObjectItemCaseSensitive(cur, "status");
    if (!cJSON_IsString(status) || strcmp(status->valuestring, "draft") != 0) {
        char msg[128];
        snprintf(msg, sizeof(msg), "only draft campaigns can be edited; this one is %s",
                 cJSON_IsString(status) ? status->valuestring : "?");
        cJSON_Delete(cur);
        http_reply_error(r, 409, "not_editable", msg, "status");
        return;
    }
    cJSON *patch = r->state;
    /* The editable document: the stored fields, then the patch over them. */

    cJSON *doc = cJSON_CreateObject();
    for (int i = 0; campaign_fields[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(cur, campaign_fields[i]);
        /* Stored empty defaults ({} message, [] variants) mean "absent". */
        if (v && !cJSON_IsNull(v) &&
            !((cJSON_IsObject(v) || cJSON_IsArray(v)) && !v->child &&
              strcmp(campaign_fields[i], "segment")))
            cJSON_AddItemToObject(doc, campaign_fields[i], cJSON_Duplicate(v, 1));
    }
    if (cJSON_GetObjectItemCaseSensitive(doc, "segment_id"))
        cJSON_DeleteItemFromObject(doc, "segment"); /* the copy follows the saved segment */
    for (const cJSON *p = patch->child; p; p = p->next) {
        cJSON_DeleteItemFromObject(doc, p->string);
        if (!strcmp(p->string, "segment"))
            cJSON_DeleteItemFromObject(doc, "segment_id");
        if (!strcmp(p->string, "segment_id"))
            cJSON_DeleteItemFromObject(doc, "segment");
        if (!strcmp(p->string, "variants"))
            cJSON_DeleteItemFromObject(doc, "message");
        if (!strcmp(p->string, "message"))
            cJSON_DeleteItemFromObject(doc, "variants");
        if (!strcmp(p->string, "agent_template_id"))
            cJSON_DeleteItemFromObject(doc, "agent_config");
        if (!cJSON_IsNull(p))
            cJSON_AddItemToObject(doc, p->string, cJSON_Duplicate(p, 1));
    }
    cJSON_Delete(cur);
    struct cerr e;
    cJSON *agent = NULL;
    if (validate_campaign(doc, &e, &agent) != 0) {
        cJSON_Delete(doc);
        http_reply_error(r, 422, "invalid_field", e.msg, e.field);
        return;
    }
    struct cparams cp;
    cparams_fill(&cp, r, doc, agent);
    pgpool_query(r->app->pg, sql_update, 15, cp.p, patch_updated, r);
    cparams_cleanup(&cp);
    cJSON_Delete(agent);
    cJSON_Delete(doc);
}

static void free_json(void *p)
{
    cJSON_Delete(p);
}

void campaigns_patch(struct api_req *r)
{
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return;
    r->state = in;
    r->state_free = free_json;
    query_by_id(r, sql_get, patch_loaded);
}

static void delete_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)sqlstate;
    if (!http_one_row_or_reply(r, res, errmsg, "campaign"))
        return;
    if (PQgetvalue(res, 0, 1)[0] == '1') {
        http_reply_no_content(r);
        return;
    }
    char msg[128];
    snprintf(msg, sizeof(msg), "only draft campaigns can be deleted; cancel a %s one",
             PQgetvalue(res, 0, 0));
    http_reply_error(r, 409, "not_deletable", msg, "status");
}

void campaigns_delete(struct api_req *r)
{
    query_by_id(r, sql_delete, delete_done);
}

/* ---------------------------------------------------------------------
 * Lifecycle actions
 * ------------------------------------------------------------------- */

struct action_state {
    enum campaign_action act;
    char *scheduled_at;
};

static void action_state_free(void *p)
{
    struct action_state *a = p;
    free(a->scheduled_at);
    free(a);
}

static void action_xadd_done(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *rep = reply;
    (void)ac;
    (void)priv;
    if (!rep || rep->type == REDIS_REPLY_ERROR)
        log_warn("campaign action not queued (%s); the dispatcher's poll will pick it up",
                 rep ? rep->str : "no reply");
}

static void action_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    struct action_state *a = r->state;
    (void)sqlstate;
    if (!http_one_row_or_reply(r, res, errmsg, "campaign"))
        return;
    const char *before = PQgetvalue(res, 0, 0);
    bool moved = PQgetvalue(res, 0, 1)[0] == 't';
    cJSON *campaign = cJSON_Parse(PQgetvalue(res, 0, 2));
    const char *name = actions[a->act].name;
    bool idempotent_launch =
        a->act == ACT_LAUNCH && !moved &&
        (!strcmp(before, "running") || !strcmp(before, "paused") || !strcmp(before, "scheduled"));
    bool sendable = strstr(SENDABLE_CHANNELS, PQgetvalue(res, 0, 4)) != NULL;
    if (!moved && a->act == ACT_LAUNCH && !sendable &&
        (!strcmp(before, "draft") || !strcmp(before, "scheduled"))) {
        cJSON_Delete(campaign);
        char msg[128];
        snprintf(msg, sizeof(msg),
                 "this version cannot send %s yet; only sms and voice campaigns launch",
                 PQgetvalue(res, 0, 4));
        http_reply_error(r, 422, "channel_unavailable", msg, "channel");
        return;
    }
    if (!moved && !idempotent_launch) {
        cJSON_Delete(campaign);
        http_reply_transition(r, name, before, allowed_actions(before));
        return;
    }
    if (moved) {
        char tenant[24], id[24];
        http_id_params(r, tenant, id);
        if (r->app->redis.connected && r->app->redis.ac)
            redisAsyncCommand(r->app->redis.ac, action_xadd_done, NULL,
                              "XADD %s * type %s tenant %s campaign %s", r->app->keys.actions, name,
                              tenant, id);
        else
            log_warn("redis down: %s of campaign %s left to the dispatcher's poll", name, id);
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "action", name);
    cJSON_AddStringToObject(body, "previous_status", before);
    if (a->act == ACT_LAUNCH)
        cJSON_AddBoolToObject(body, "already_launched", !moved);
    if (a->act == ACT_CANCEL || a->act == ACT_COMPLETE)
        cJSON_AddNumberToObject(body, "deliveries_cancelled", strtod(PQgetvalue(res, 0, 3), NULL));
    cJSON_AddItemToObject(body, "campaign", campaign ? campaign : cJSON_CreateObject());
    http_reply_json(r, a->act == ACT_LAUNCH && moved ? 202 : 200, body);
}

static void run_action(struct api_req *r, enum campaign_action act, const char *scheduled_at)
{
    struct action_state *a = xcalloc(1, sizeof(*a));
    a->act = act;
    a->scheduled_at = scheduled_at ? xstrdup(scheduled_at) : NULL;
    r->state = a;
    r->state_free = action_state_free;
    char tenant[24], id[24];
    http_id_params(r, tenant, id);
    const char *params[] = {tenant,
                            id,
                            actions[act].from,
                            actions[act].to,
                            actions[act].name,
                            a->scheduled_at,
                            SENDABLE_CHANNELS};
    pgpool_query(r->app->pg, sql_action, 7, params, action_done, r);
}

/* The body of an action is optional; launch accepts {"scheduled_at"}. */
static int action_body_or_reply(struct api_req *r, bool launch, char **scheduled_at)
{
    *scheduled_at = NULL;
    if (r->body_len == 0)
        return 0;
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return -1;
    static const char *const launch_keys[] = {"scheduled_at", NULL};
    static const char *const no_keys[] = {NULL};
    const char *bad = http_unknown_key(in, launch ? launch_keys : no_keys);
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(in, "scheduled_at");
    int rc = 0;
    if (bad) {
        char msg[160];
        snprintf(msg, sizeof(msg), "unknown field %.100s", bad);
        http_reply_error(r, 422, "invalid_field", msg, bad);
        rc = -1;
    } else if (at && !cJSON_IsNull(at)) {
        if (!cJSON_IsString(at) || !ts_valid_iso8601(at->valuestring, true)) {
            http_reply_error(r, 422, "invalid_field",
                             "scheduled_at must be an ISO 8601 timestamp with a zone",
                             "scheduled_at");
            rc = -1;
        } else {
            *scheduled_at = xstrdup(at->valuestring);
        }
    }
    cJSON_Delete(in);
    return rc;
}

static void action_handler(struct api_req *r, enum campaign_action act)
{
    char *at = NULL;
    if (action_body_or_reply(r, act == ACT_LAUNCH, &at) != 0)
        return;
    run_action(r, act, at);
    free(at);
}

void campaigns_launch(struct api_req *r)
{
    action_handler(r, ACT_LAUNCH);
}

void campaigns_pause(struct api_req *r)
{
    action_handler(r, ACT_PAUSE);
}

void campaigns_resume(struct api_req *r)
{
    action_handler(r, ACT_RESUME);
}

void campaigns_complete(struct api_req *r)
{
    action_handler(r, ACT_COMPLETE);
}

void campaigns_cancel(struct api_req *r)
{
    action_handler(r, ACT_CANCEL);
}
