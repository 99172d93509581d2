/* test_segment.c - unit tests for common/segment.c (the SQL it generates is
 * also run against PostgreSQL by the integration tests). */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "buf.h"
#include "check.h"
#include "segment.h"
#include "xalloc.h"

#define NOT_SUPPRESSED(ch, addr)                                                                   \
    "NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.tenant_id = c.tenant_id AND s.channel = "    \
    "'" ch "' AND s.address = " addr ")"
#define REACH_SMS "c.phone IS NOT NULL AND NOT c.sms_opt_out AND " NOT_SUPPRESSED("sms", "c.phone")
#define REACH_EMAIL                                                                                \
    "c.email IS NOT NULL AND NOT c.email_opt_out AND " NOT_SUPPRESSED("email", "lower(c.email)")
#define REACH_VOICE                                                                                \
    "c.phone IS NOT NULL AND NOT c.voice_opt_out AND " NOT_SUPPRESSED("voice", "c.phone")
/* The customer's rows of interactions (scoped criteria). */
#define IX "SELECT 1 FROM interactions i WHERE i.tenant_id = c.tenant_id AND i.customer_id = c.id"
/* now() - $n days and now() - ($n + 1) days. */
#define CUT(n) "now() - make_interval(days => $" n "::int)"
#define CUT1(n) "now() - make_interval(days => $" n "::int + 1)"
/* "Days since" on the customers row's columns (a customers column, or NULL
 * for none): nothing newer than N days on col; something newer than N+1
 * days on col or col2. */
#define NONE_NEWER(col, n) "(c." col " IS NULL OR c." col " <= " CUT(n) ")"
#define SOME_NEWER2(col, col2, n) "(c." col " > " CUT1(n) " OR c." col2 " > " CUT1(n) ") IS TRUE"
/* The last contact: c.last_contact_at or the latest interaction
 * (c.last_interaction_at); the last appointment: c.last_appointment_at or
 * the latest appointment row (c.last_scheduled_at). */
#define CONTACT_GTE(n)                                                                             \
    "(" NONE_NEWER("last_contact_at", n) " AND " NONE_NEWER("last_interaction_at", n) ")"
#define CONTACT_LTE(n) SOME_NEWER2("last_contact_at", "last_interaction_at", n)
#define APPT_GTE(n)                                                                                \
    "(" NONE_NEWER("last_appointment_at", n) " AND " NONE_NEWER("last_scheduled_at", n) ")"
#define APPT_LTE(n) SOME_NEWER2("last_appointment_at", "last_scheduled_at", n)
/* Unscoped interaction criteria: the customers row's summary columns. */
#define IX_GTE(n) NONE_NEWER("last_interaction_at", n)
#define IX_LTE(n) "(c.last_interaction_at > " CUT1(n) ") IS TRUE"
#define RATING(cmp) "(c.last_rating " cmp ") IS TRUE"
#define HAS_APPT "c.appointment_count > 0"
/* Interaction scope restrictions. */
#define CH(a, n) " AND " a ".channel = ANY($" n "::text[])"
#define DIR(a, n) " AND " a ".direction = ANY($" n "::text[])"
#define KEY(a, n) " AND " a ".metadata ?| $" n "::text[]"
/* The latest in-scope interaction with a non-NULL col satisfies pred. */
#define LATEST(scope_i, pred, scope_j, col)                                                        \
    "EXISTS (" IX scope_i " AND " pred " AND NOT EXISTS (SELECT 1 FROM interactions j WHERE "      \
    "j.tenant_id = i.tenant_id AND j.customer_id = i.customer_id" scope_j " AND j." col " IS NOT " \
    "NULL AND (j.occurred_at, j.id) > (i.occurred_at, i.id)))"
/* The latest appointment's status matches cmp. */
#define LAST_STATUS(cmp) "(c.last_appointment_status = " cmp ") IS TRUE"
/* The appointment count compares so with $n. */
#define COUNT(cmp, n) "c.appointment_count " cmp " $" n "::int"

struct result {
    enum cr_err err;
    struct seg_query q;
    char field[64];
    char msg[256];
};

/* Parses json (which must be valid JSON) and compiles it. */
static void compile(const char *json, enum seg_channel ch, int first_param, struct result *r)
{
    cJSON *c = cJSON_Parse(json);
    if (!c) {
        fprintf(stderr, "bad test JSON: %.200s\n", json);
        abort();
    }
    r->err =
        seg_compile(c, ch, first_param, &r->q, r->field, sizeof(r->field), r->msg, sizeof(r->msg));
    cJSON_Delete(c);
}

/* Compiles json and checks the SQL and the params (a NULL-terminated list). */
#define CHECK_SQL(json, ch, first, expected_sql, ...)                                              \
    do {                                                                                           \
        struct result r_;                                                                          \
        const char *exp_params_[] = {__VA_ARGS__};                                                 \
        int nexp_ = (int)(sizeof(exp_params_) / sizeof(exp_params_[0])) - 1;                       \
        compile((json), (ch), (first), &r_);                                                       \
        CHECK(r_.err == CR_OK);                                                                    \
        if (r_.err != CR_OK)                                                                       \
            fprintf(stderr, "  error: %s: %s\n", r_.field, r_.msg);                                \
        CHECK_STR(buf_str(&r_.q.sql), (expected_sql));                                             \
        CHECK(r_.q.nparams == nexp_);                                                              \
        for (int i_ = 0; i_ < nexp_ && i_ < r_.q.nparams; i_++)                                    \
            CHECK_STR(r_.q.params[i_], exp_params_[i_]);                                           \
        seg_query_cleanup(&r_.q);                                                                  \
    } while (0)

#define CHECK_FAILS(json, exp_field, exp_msg)                                                      \
    do {                                                                                           \
        struct result r_;                                                                          \
        const char *exp_msg_ = (exp_msg);                                                          \
        compile((json), SEG_CHANNEL_SMS, 2, &r_);                                                  \
        CHECK(r_.err == CR_EINVAL);                                                                \
        CHECK_STR(r_.field, (exp_field));                                                          \
        if (exp_msg_)                                                                              \
            CHECK_STR(r_.msg, exp_msg_);                                                           \
        else                                                                                       \
            CHECK(r_.msg[0] != '\0');                                                              \
        seg_query_cleanup(&r_.q);                                                                  \
    } while (0)

static void test_empty(void)
{
    CHECK_SQL("{}", SEG_CHANNEL_SMS, 2, REACH_SMS, NULL);
    CHECK_SQL("{}", SEG_CHANNEL_EMAIL, 2, REACH_EMAIL, NULL);
    CHECK_SQL("{}", SEG_CHANNEL_VOICE, 2, REACH_VOICE, NULL);

    struct seg_query q;
    char field[32], msg[128];
    CHECK(seg_compile(NULL, SEG_CHANNEL_SMS, 1, &q, field, sizeof(field), msg, sizeof(msg)) ==
          CR_OK);
    CHECK_STR(buf_str(&q.sql), REACH_SMS);
    CHECK(q.nparams == 0);
    seg_query_cleanup(&q);
    seg_query_cleanup(&q); /* idempotent */

    CHECK_SQL("{\"all\": []}", SEG_CHANNEL_SMS, 2, "TRUE AND " REACH_SMS, NULL);
    CHECK_SQL("{\"any\": []}", SEG_CHANNEL_SMS, 2, "FALSE AND " REACH_SMS, NULL);
    CHECK_SQL("{\"not\": {}}", SEG_CHANNEL_SMS, 2, "NOT TRUE AND " REACH_SMS, NULL);
}

static void test_flat(void)
{
    CHECK_SQL(
        "{\"has_phone\": true, \"days_since_last_contact\": 30, \"tags\": [\"vip\", "
        "\"gold\"]}",
        SEG_CHANNEL_SMS, 2,
        "(c.phone IS NOT NULL AND " CONTACT_GTE("2") " AND c.tags @> $3::text[]) AND " REACH_SMS,
        "30", "{\"vip\",\"gold\"}", NULL);

    CHECK_SQL("{\"has_email\": false, \"has_phone\": false}", SEG_CHANNEL_VOICE, 1,
              "(c.email IS NULL AND c.phone IS NULL) AND " REACH_VOICE, NULL);
    CHECK_SQL("{\"has_appointment\": true}", SEG_CHANNEL_EMAIL, 1, HAS_APPT " AND " REACH_EMAIL,
              NULL);
    CHECK_SQL("{\"has_appointment\": false}", SEG_CHANNEL_EMAIL, 1,
              "c.appointment_count = 0 AND " REACH_EMAIL, NULL);
    CHECK_SQL("{\"tags_any\": [\"a\", \"b\"], \"timezone\": \"Europe/Paris\"}", SEG_CHANNEL_SMS, 4,
              "(c.tags && $4::text[] AND c.timezone = $5::text) AND " REACH_SMS, "{\"a\",\"b\"}",
              "Europe/Paris", NULL);
    CHECK_SQL("{\"days_since_last_appointment\": 0}", SEG_CHANNEL_SMS, 2,
              APPT_GTE("2") " AND " REACH_SMS, "0", NULL);
    /* A lone string is a one-element array; an empty array is allowed. */
    CHECK_SQL("{\"tags\": \"vip\", \"tags_any\": []}", SEG_CHANNEL_SMS, 2,
              "(c.tags @> $2::text[] AND c.tags && $3::text[]) AND " REACH_SMS, "{\"vip\"}", "{}",
              NULL);
}

/* "Days since" in whole days: gte N = nothing newer than N days (or
 * nothing at all); lte N = something newer than N+1 days; eq N = both. The
 * last contact is c.last_contact_at or any interaction; the last
 * appointment c.last_appointment_at or any appointment row. */
static void test_days_ops(void)
{
    CHECK_SQL("{\"field\": \"days_since_last_contact\", \"op\": \"gte\", \"value\": 14}",
              SEG_CHANNEL_SMS, 2, CONTACT_GTE("2") " AND " REACH_SMS, "14", NULL);
    CHECK_SQL("{\"field\": \"days_since_last_contact\", \"op\": \"lte\", \"value\": 14}",
              SEG_CHANNEL_SMS, 2, CONTACT_LTE("2") " AND " REACH_SMS, "14", NULL);
    CHECK_SQL("{\"field\": \"days_since_last_contact\", \"op\": \"eq\", \"value\": 14}",
              SEG_CHANNEL_SMS, 2, "(" CONTACT_GTE("2") " AND " CONTACT_LTE("2") ") AND " REACH_SMS,
              "14", NULL);
    /* op omitted: the criterion's default (gte). 1e2 is an integer. */
    CHECK_SQL("{\"field\": \"days_since_last_appointment\", \"value\": 1e2}", SEG_CHANNEL_SMS, 2,
              APPT_GTE("2") " AND " REACH_SMS, "100", NULL);
    CHECK_SQL("{\"field\": \"days_since_last_appointment\", \"op\": \"lte\", \"value\": 0}",
              SEG_CHANNEL_VOICE, 3, APPT_LTE("3") " AND " REACH_VOICE, "0", NULL);
    CHECK_SQL("{\"field\": \"days_since_last_appointment\", \"op\": \"eq\", \"value\": 30}",
              SEG_CHANNEL_SMS, 2, "(" APPT_GTE("2") " AND " APPT_LTE("2") ") AND " REACH_SMS, "30",
              NULL);
    CHECK_SQL("{\"days_since_last_contact\": 100000}", SEG_CHANNEL_SMS, 2,
              CONTACT_GTE("2") " AND " REACH_SMS, "100000", NULL);

    /* Interactions in scope (here: all of them, so c.last_interaction_at). */
    CHECK_SQL("{\"days_since_last_interaction\": 7}", SEG_CHANNEL_SMS, 2,
              IX_GTE("2") " AND " REACH_SMS, "7", NULL);
    CHECK_SQL("{\"field\": \"days_since_last_interaction\", \"op\": \"lte\", \"value\": 7}",
              SEG_CHANNEL_SMS, 2, IX_LTE("2") " AND " REACH_SMS, "7", NULL);
    CHECK_SQL("{\"field\": \"days_since_last_interaction\", \"op\": \"eq\", \"value\": 7}",
              SEG_CHANNEL_SMS, 2, "(" IX_GTE("2") " AND " IX_LTE("2") ") AND " REACH_SMS, "7",
              NULL);
    /* Scoped: the in-scope interactions themselves. */
    CHECK_SQL("{\"direction\": \"inbound\", \"days_since_last_interaction\": 7}", SEG_CHANNEL_SMS,
              2,
              "(EXISTS (" IX DIR("i", "2") ") AND NOT EXISTS (" IX DIR(
                  "i", "2") " AND i.occurred_at > " CUT("3") ")) AND " REACH_SMS,
              "{\"inbound\"}", "7", NULL);
    CHECK_SQL("{\"all\": [{\"channel\": \"sms\"}, {\"field\": \"days_since_last_interaction\", "
              "\"op\": \"lte\", \"value\": 7}]}",
              SEG_CHANNEL_SMS, 2,
              "(EXISTS (" IX CH("i", "2") ") AND EXISTS (" IX CH(
                  "i", "2") " AND i.occurred_at > " CUT1("3") ")) AND " REACH_SMS,
              "{\"sms\"}", "7", NULL);
    /* A visit is a web interaction unless a channel or metadata key scopes it. */
    CHECK_SQL("{\"days_since_visit\": 3}", SEG_CHANNEL_SMS, 2,
              "NOT EXISTS (" IX
              " AND i.channel = 'web' AND i.occurred_at > " CUT("2") ") AND " REACH_SMS,
              "3", NULL);
    CHECK_SQL(
        "{\"field\": \"days_since_visit\", \"op\": \"lte\", \"value\": 3}", SEG_CHANNEL_SMS, 2,
        "EXISTS (" IX " AND i.channel = 'web' AND i.occurred_at > " CUT1("2") ") AND " REACH_SMS,
        "3", NULL);
}

static void test_tree(void)
{
    CHECK_SQL("{\"any\": [{\"field\": \"days_since_last_appointment\", \"op\": \"lte\", \"value\": "
              "7}, {\"all\": [{\"field\": \"tags\", \"op\": \"in\", \"value\": [\"a\", \"b\"]}, "
              "{\"not\": {\"has_appointment\": true}}]}]}",
              SEG_CHANNEL_EMAIL, 5,
              "(" APPT_LTE("5") " OR (c.tags && $6::text[] AND NOT " HAS_APPT ")) AND " REACH_EMAIL,
              "7", "{\"a\",\"b\"}", NULL);

    /* Flat members and combinators mix in one object (ANDed); a
     * one-element list needs no parentheses. */
    CHECK_SQL("{\"has_phone\": true, \"not\": {\"tags\": [\"x\"], \"timezone\": \"UTC\"}, \"any\": "
              "[{\"field\": \"has_email\", \"op\": \"eq\", \"value\": true}]}",
              SEG_CHANNEL_SMS, 2,
              "(c.phone IS NOT NULL AND NOT (c.tags @> $2::text[] AND c.timezone = $3::text) AND "
              "c.email IS NOT NULL) AND " REACH_SMS,
              "{\"x\"}", "UTC", NULL);

    CHECK_SQL("{\"field\": \"tags\", \"op\": \"contains\", \"value\": [\"a\"]}", SEG_CHANNEL_SMS, 2,
              "c.tags @> $2::text[] AND " REACH_SMS, "{\"a\"}", NULL);
    CHECK_SQL("{\"field\": \"tags_any\", \"op\": \"in\", \"value\": [\"a\"]}", SEG_CHANNEL_SMS, 2,
              "c.tags && $2::text[] AND " REACH_SMS, "{\"a\"}", NULL);
    CHECK_SQL("{\"field\": \"timezone\", \"op\": \"in\", \"value\": [\"UTC\", \"Asia/Tokyo\"]}",
              SEG_CHANNEL_SMS, 2, "c.timezone = ANY($2::text[]) AND " REACH_SMS,
              "{\"UTC\",\"Asia/Tokyo\"}", NULL);
    CHECK_SQL("{\"not\": {\"not\": {\"has_phone\": true}}}", SEG_CHANNEL_SMS, 2,
              "NOT NOT c.phone IS NOT NULL AND " REACH_SMS, NULL);
}

static void test_array_escaping(void)
{
    /* JSON: ["a\"b", "c\\d", "e,f", "{g}", "NULL", " sp ", "", "é"] */
    CHECK_SQL("{\"tags\": [\"a\\\"b\", \"c\\\\d\", \"e,f\", \"{g}\", \"NULL\", \" sp \", \"\", "
              "\"\\u00e9\"]}",
              SEG_CHANNEL_SMS, 2, "c.tags @> $2::text[] AND " REACH_SMS,
              "{\"a\\\"b\",\"c\\\\d\",\"e,f\",\"{g}\",\"NULL\",\" sp \",\"\",\"\xc3\xa9\"}", NULL);
    CHECK_SQL("{\"tags_any\": [\"\\\\\\\"\"]}", SEG_CHANNEL_SMS, 2,
              "c.tags && $2::text[] AND " REACH_SMS, "{\"\\\\\\\"\"}", NULL);
}

static void test_attribute(void)
{
    CHECK_SQL("{\"attribute\": {\"key\": \"city\", \"value\": \"Paris\"}}", SEG_CHANNEL_SMS, 2,
              "c.attributes @> $2::jsonb AND " REACH_SMS, "{\"city\":\"Paris\"}", NULL);
    CHECK_SQL("{\"attribute\": {\"key\": \"visits\", \"value\": 3}}", SEG_CHANNEL_SMS, 2,
              "c.attributes @> $2::jsonb AND " REACH_SMS, "{\"visits\":3}", NULL);
    CHECK_SQL("{\"attribute\": {\"key\": \"score\", \"value\": 4.5}}", SEG_CHANNEL_SMS, 2,
              "c.attributes @> $2::jsonb AND " REACH_SMS, "{\"score\":4.5}", NULL);
    CHECK_SQL("{\"attribute\": {\"value\": false, \"key\": \"vip\"}}", SEG_CHANNEL_SMS, 2,
              "c.attributes @> $2::jsonb AND " REACH_SMS, "{\"vip\":false}", NULL);
    CHECK_SQL("{\"attribute\": {\"key\": \"interests\", \"value\": [\"golf\", 1, true]}}",
              SEG_CHANNEL_SMS, 2, "c.attributes @> $2::jsonb AND " REACH_SMS,
              "{\"interests\":[\"golf\",1,true]}", NULL);
    CHECK_SQL("{\"attribute\": {\"key\": \"a\\\"b\", \"value\": \"q'\\\"\"}}", SEG_CHANNEL_SMS, 2,
              "c.attributes @> $2::jsonb AND " REACH_SMS, "{\"a\\\"b\":\"q'\\\"\"}", NULL);
    CHECK_SQL("{\"attribute\": {\"key\": \"pet\", \"exists\": true}}", SEG_CHANNEL_SMS, 2,
              "c.attributes ? $2::text AND " REACH_SMS, "pet", NULL);
    CHECK_SQL("{\"attribute\": {\"key\": \"pet\", \"exists\": false}}", SEG_CHANNEL_SMS, 2,
              "NOT c.attributes ? $2::text AND " REACH_SMS, "pet", NULL);
    CHECK_SQL("{\"all\": [{\"attribute\": {\"key\": \"a\", \"value\": \"1\"}}, {\"field\": "
              "\"attribute\", \"op\": \"eq\", \"value\": {\"key\": \"b\", \"exists\": true}}]}",
              SEG_CHANNEL_SMS, 2,
              "(c.attributes @> $2::jsonb AND c.attributes ? $3::text) AND " REACH_SMS,
              "{\"a\":\"1\"}", "b", NULL);
}

/* An array given to a criterion whose default takes one string selects its
 * "in" form, in the flat form and in a leaf without "op". */
static void test_flat_arrays(void)
{
    CHECK_SQL("{\"timezone\": [\"UTC\", \"Asia/Tokyo\"]}", SEG_CHANNEL_SMS, 2,
              "c.timezone = ANY($2::text[]) AND " REACH_SMS, "{\"UTC\",\"Asia/Tokyo\"}", NULL);
    CHECK_SQL("{\"field\": \"timezone\", \"value\": [\"UTC\"]}", SEG_CHANNEL_SMS, 2,
              "c.timezone = ANY($2::text[]) AND " REACH_SMS, "{\"UTC\"}", NULL);
    /* An explicit op wins: eq with an array is a type error. */
    CHECK_FAILS("{\"field\": \"timezone\", \"op\": \"eq\", \"value\": [\"UTC\"]}", "timezone",
                "timezone must be a non-empty string");
}

/* channel / direction / metadata_key: some interaction (in scope) has it. */
static void test_interaction_exists(void)
{
    CHECK_SQL("{\"channel\": \"sms\"}", SEG_CHANNEL_EMAIL, 2,
              "EXISTS (" IX CH("i", "2") ") AND " REACH_EMAIL, "{\"sms\"}", NULL);
    CHECK_SQL("{\"channel\": [\"voice\", \"web\", \"in_person\"]}", SEG_CHANNEL_SMS, 2,
              "EXISTS (" IX CH("i", "2") ") AND " REACH_SMS, "{\"voice\",\"web\",\"in_person\"}",
              NULL);
    CHECK_SQL("{\"field\": \"channel\", \"op\": \"in\", \"value\": [\"email\"]}", SEG_CHANNEL_SMS,
              2, "EXISTS (" IX CH("i", "2") ") AND " REACH_SMS, "{\"email\"}", NULL);
    CHECK_SQL("{\"field\": \"channel\", \"op\": \"in\", \"value\": []}", SEG_CHANNEL_SMS, 2,
              "EXISTS (" IX CH("i", "2") ") AND " REACH_SMS, "{}", NULL);
    CHECK_SQL("{\"direction\": \"inbound\"}", SEG_CHANNEL_SMS, 2,
              "EXISTS (" IX DIR("i", "2") ") AND " REACH_SMS, "{\"inbound\"}", NULL);
    CHECK_SQL("{\"metadata_key\": \"visited_booking_page\"}", SEG_CHANNEL_SMS, 2,
              "EXISTS (" IX KEY("i", "2") ") AND " REACH_SMS, "{\"visited_booking_page\"}", NULL);
    CHECK_SQL("{\"field\": \"metadata_key\", \"op\": \"in\", \"value\": [\"a b\", \"c,\\\"d\"]}",
              SEG_CHANNEL_SMS, 2, "EXISTS (" IX KEY("i", "2") ") AND " REACH_SMS,
              "{\"a b\",\"c,\\\"d\"}", NULL);
}

/* booking_intent / satisfaction: the latest in-scope interaction that has a
 * value. Unscoped: the customers row's summary column, never NULL-valued. */
static void test_latest(void)
{
    CHECK_SQL("{\"booking_intent\": true}", SEG_CHANNEL_SMS, 2,
              "c.last_booking_intent IS TRUE AND " REACH_SMS, NULL);
    CHECK_SQL("{\"booking_intent\": false}", SEG_CHANNEL_SMS, 2,
              "c.last_booking_intent IS FALSE AND " REACH_SMS, NULL);
    CHECK_SQL("{\"min_satisfaction\": 4}", SEG_CHANNEL_SMS, 2,
              RATING(">= $2::int") " AND " REACH_SMS, "4", NULL);
    CHECK_SQL("{\"max_satisfaction\": 2}", SEG_CHANNEL_SMS, 2,
              RATING("<= $2::int") " AND " REACH_SMS, "2", NULL);
    CHECK_SQL("{\"satisfaction\": 5}", SEG_CHANNEL_SMS, 2, RATING(">= $2::int") " AND " REACH_SMS,
              "5", NULL);
    CHECK_SQL("{\"field\": \"satisfaction\", \"op\": \"eq\", \"value\": 3}", SEG_CHANNEL_SMS, 2,
              RATING("= $2::int") " AND " REACH_SMS, "3", NULL);
    CHECK_SQL("{\"field\": \"satisfaction\", \"op\": \"lte\", \"value\": 1}", SEG_CHANNEL_SMS, 2,
              RATING("<= $2::int") " AND " REACH_SMS, "1", NULL);
    CHECK_SQL("{\"field\": \"min_satisfaction\", \"op\": \"gte\", \"value\": 1}", SEG_CHANNEL_SMS,
              2, RATING(">= $2::int") " AND " REACH_SMS, "1", NULL);
    /* "not" of a latest-value condition is exact: IS TRUE is two-valued. */
    CHECK_SQL("{\"not\": {\"booking_intent\": true}}", SEG_CHANNEL_SMS, 2,
              "NOT c.last_booking_intent IS TRUE AND " REACH_SMS, NULL);
    CHECK_SQL("{\"not\": {\"max_satisfaction\": 3}}", SEG_CHANNEL_SMS, 2,
              "NOT " RATING("<= $2::int") " AND " REACH_SMS, "3", NULL);

    /* Scoped: the latest in-scope row (no later in-scope one with a value). */
    CHECK_SQL("{\"direction\": \"outbound\", \"booking_intent\": false}", SEG_CHANNEL_SMS, 2,
              "(EXISTS (" IX DIR("i", "2") ") AND " LATEST(DIR("i", "2"), "NOT i.booking_intent",
                                                           DIR("j", "2"),
                                                           "booking_intent") ") AND " REACH_SMS,
              "{\"outbound\"}", NULL);
    CHECK_SQL("{\"metadata_key\": \"k\", \"max_satisfaction\": 2}", SEG_CHANNEL_SMS, 2,
              "(EXISTS (" IX KEY("i", "2") ") AND " LATEST(
                  KEY("i", "2"), "i.satisfaction <= $3::int", KEY("j", "2"),
                  "satisfaction") ") AND " REACH_SMS,
              "{\"k\"}", "2", NULL);
}

/* The interaction scope: a channel / direction / metadata_key condition
 * narrows the interaction criteria ANDed beside it, and shares its
 * parameter with them. */
static void test_scope(void)
{
    /* Flat members, in any order: the scope's parameter comes first. */
    CHECK_SQL("{\"booking_intent\": true, \"channel\": \"sms\", \"days_since_last_interaction\": "
              "7}",
              SEG_CHANNEL_SMS, 2,
              "(" LATEST(CH("i", "2"), "i.booking_intent", CH("j", "2"),
                         "booking_intent") " AND EXISTS (" IX CH("i", "2") ") AND NOT EXISTS (" IX
                  CH("i", "2") " AND i.occurred_at > " CUT("3") ")) AND " REACH_SMS,
              "{\"sms\"}", "7", NULL);
    /* In an "all" list, as a leaf or as a one-member object. */
    CHECK_SQL("{\"all\": [{\"field\": \"days_since_visit\", \"op\": \"lte\", \"value\": 3}, "
              "{\"field\": \"metadata_key\", \"value\": \"k\"}]}",
              SEG_CHANNEL_SMS, 2,
              "(EXISTS (" IX KEY("i", "2") " AND i.occurred_at > " CUT1(
                  "3") ") AND EXISTS (" IX KEY("i", "2") ")) AND " REACH_SMS,
              "{\"k\"}", "3", NULL);
    CHECK_SQL("{\"all\": [{\"channel\": \"voice\"}, {\"min_satisfaction\": 4}]}", SEG_CHANNEL_SMS,
              2,
              "(EXISTS (" IX CH("i", "2") ") AND " LATEST(CH("i", "2"), "i.satisfaction >= $3::int",
                                                          CH("j", "2"),
                                                          "satisfaction") ") AND " REACH_SMS,
              "{\"voice\"}", "4", NULL);
    /* ...but a member of a bigger object scopes only that object. */
    CHECK_SQL("{\"all\": [{\"channel\": \"voice\", \"tags\": [\"a\"]}, {\"min_satisfaction\": 4}]}",
              SEG_CHANNEL_SMS, 2,
              "((EXISTS (" IX CH("i", "2") ") AND c.tags @> $3::text[]) AND " RATING(
                  ">= $4::int") ") AND " REACH_SMS,
              "{\"voice\"}", "{\"a\"}", "4", NULL);
    /* Visits with a channel scope are that channel's interactions. */
    CHECK_SQL("{\"channel\": \"in_person\", \"days_since_visit\": 10}", SEG_CHANNEL_SMS, 2,
              "(EXISTS (" IX CH("i", "2") ") AND NOT EXISTS (" IX CH(
                  "i", "2") " AND i.occurred_at > " CUT("3") ")) AND " REACH_SMS,
              "{\"in_person\"}", "10", NULL);
    /* Inherited by nested levels; an inner channel replaces the outer one. */
    CHECK_SQL("{\"channel\": \"sms\", \"any\": [{\"booking_intent\": true}, {\"channel\": "
              "\"voice\", \"max_satisfaction\": 2}]}",
              SEG_CHANNEL_SMS, 2,
              "(EXISTS (" IX CH("i", "2") ") AND (" LATEST(
                  CH("i", "2"), "i.booking_intent", CH("j", "2"),
                  "booking_intent") " OR "
                                    "(EXISTS (" IX CH("i", "3") ") AND " LATEST(
                                        CH("i", "3"), "i.satisfaction <= $4::int", CH("j", "3"),
                                        "satisfaction") "))) AND " REACH_SMS,
              "{\"sms\"}", "{\"voice\"}", "2", NULL);
    /* "any" elements do not scope each other... */
    CHECK_SQL("{\"any\": [{\"channel\": \"sms\"}, {\"booking_intent\": true}]}", SEG_CHANNEL_SMS, 2,
              "(EXISTS (" IX CH("i", "2") ") OR c.last_booking_intent IS TRUE) AND " REACH_SMS,
              "{\"sms\"}", NULL);
    /* ...nor does a condition under "not" scope its siblings. */
    CHECK_SQL("{\"not\": {\"channel\": \"sms\"}, \"booking_intent\": true}", SEG_CHANNEL_SMS, 2,
              "(NOT EXISTS (" IX CH("i", "2") ") AND c.last_booking_intent IS TRUE) AND " REACH_SMS,
              "{\"sms\"}", NULL);
    /* The three kinds together; each source is scoped by the other two. */
    CHECK_SQL("{\"metadata_key\": \"k\", \"direction\": \"inbound\", \"channel\": \"web\", "
              "\"booking_intent\": false}",
              SEG_CHANNEL_SMS, 2,
              "(EXISTS (" IX CH("i", "4") DIR("i", "3")
                  KEY("i", "2") ") AND EXISTS (" IX CH("i", "4") DIR("i", "3")
                      KEY("i", "2") ") AND EXISTS (" IX CH("i", "4") DIR("i", "3")
                          KEY("i", "2") ") AND " LATEST(CH("i", "4") DIR("i", "3") KEY("i", "2"),
                                                        "NOT i.booking_intent",
                                                        CH("j", "4") DIR("j", "3") KEY("j", "2"),
                                                        "booking_intent") ") AND " REACH_SMS,
              "{\"k\"}", "{\"inbound\"}", "{\"web\"}", NULL);
    /* days_since_last_contact is never scoped. */
    CHECK_SQL("{\"channel\": \"voice\", \"days_since_last_contact\": 5}", SEG_CHANNEL_SMS, 2,
              "(EXISTS (" IX CH("i", "2") ") AND " CONTACT_GTE("3") ") AND " REACH_SMS,
              "{\"voice\"}", "5", NULL);
    /* A channel in a nested "all" scopes only that list. */
    CHECK_SQL("{\"all\": [{\"all\": [{\"channel\": \"sms\"}]}, {\"booking_intent\": true}]}",
              SEG_CHANNEL_SMS, 2,
              "(EXISTS (" IX CH("i", "2") ") AND c.last_booking_intent IS TRUE) AND " REACH_SMS,
              "{\"sms\"}", NULL);
    /* Two of a kind at one level: an error naming it. */
    CHECK_FAILS("{\"all\": [{\"channel\": \"sms\"}, {\"field\": \"channel\", \"value\": "
                "\"voice\"}]}",
                "channel",
                "channel is given twice at one level (use op \"in\" for several values)");
    CHECK_FAILS("{\"all\": [{\"field\": \"direction\", \"value\": \"inbound\"}, {\"direction\": "
                "\"outbound\"}, {\"booking_intent\": true}]}",
                "direction", NULL);
    /* Scope conditions are checked before their siblings compile. */
    CHECK_FAILS("{\"all\": [{\"field\": \"channel\", \"value\": 5}]}", "channel",
                "channel must be a non-empty string");
}

/* last_appointment_status and appointment counts. */
static void test_appointments(void)
{
    CHECK_SQL("{\"last_appointment_status\": \"cancelled\"}", SEG_CHANNEL_SMS, 2,
              LAST_STATUS("$2::text") " AND " REACH_SMS, "cancelled", NULL);
    CHECK_SQL("{\"last_appointment_status\": [\"no_show\", \"cancelled\"]}", SEG_CHANNEL_SMS, 2,
              LAST_STATUS("ANY($2::text[])") " AND " REACH_SMS, "{\"no_show\",\"cancelled\"}",
              NULL);
    CHECK_SQL("{\"field\": \"last_appointment_status\", \"op\": \"in\", \"value\": "
              "[\"scheduled\", \"completed\"]}",
              SEG_CHANNEL_EMAIL, 3, LAST_STATUS("ANY($3::text[])") " AND " REACH_EMAIL,
              "{\"scheduled\",\"completed\"}", NULL);

    CHECK_SQL("{\"not\": {\"last_appointment_status\": \"completed\"}}", SEG_CHANNEL_SMS, 2,
              "NOT " LAST_STATUS("$2::text") " AND " REACH_SMS, "completed", NULL);
    /* Appointments are never narrowed by an interaction scope. */
    CHECK_SQL("{\"channel\": \"sms\", \"last_appointment_status\": \"cancelled\", "
              "\"appointment_count_max\": 1, \"has_appointment\": true, "
              "\"days_since_last_appointment\": 7}",
              SEG_CHANNEL_SMS, 2,
              "(EXISTS (" IX CH("i", "2") ") AND " LAST_STATUS("$3::text") " AND " COUNT(
                  "<=", "4") " AND " HAS_APPT " AND " APPT_GTE("5") ") AND " REACH_SMS,
              "{\"sms\"}", "cancelled", "1", "7", NULL);

    CHECK_SQL("{\"appointment_count_min\": 2}", SEG_CHANNEL_SMS, 2,
              COUNT(">=", "2") " AND " REACH_SMS, "2", NULL);
    CHECK_SQL("{\"appointment_count_max\": 1}", SEG_CHANNEL_SMS, 2,
              COUNT("<=", "2") " AND " REACH_SMS, "1", NULL);
    CHECK_SQL("{\"appointment_count_max\": 0}", SEG_CHANNEL_SMS, 2,
              COUNT("<=", "2") " AND " REACH_SMS, "0", NULL);
    CHECK_SQL("{\"appointment_count\": 3}", SEG_CHANNEL_SMS, 2, COUNT(">=", "2") " AND " REACH_SMS,
              "3", NULL);
    CHECK_SQL("{\"field\": \"appointment_count\", \"op\": \"eq\", \"value\": 1}", SEG_CHANNEL_SMS,
              2, COUNT("=", "2") " AND " REACH_SMS, "1", NULL);
    CHECK_SQL("{\"field\": \"appointment_count\", \"op\": \"eq\", \"value\": 0}", SEG_CHANNEL_SMS,
              2, COUNT("=", "2") " AND " REACH_SMS, "0", NULL);
    CHECK_SQL("{\"field\": \"appointment_count\", \"op\": \"lte\", \"value\": 1000000}",
              SEG_CHANNEL_SMS, 2, COUNT("<=", "2") " AND " REACH_SMS, "1000000", NULL);
    CHECK_SQL("{\"not\": {\"appointment_count_min\": 2}}", SEG_CHANNEL_SMS, 2,
              "NOT " COUNT(">=", "2") " AND " REACH_SMS, "2", NULL);
    /* "at least 0" is everyone, and uses no parameter (PostgreSQL cannot
     * type an unused one). */
    CHECK_SQL("{\"appointment_count_min\": 0, \"tags\": [\"a\"]}", SEG_CHANNEL_SMS, 2,
              "(TRUE AND c.tags @> $2::text[]) AND " REACH_SMS, "{\"a\"}", NULL);
    CHECK_SQL("{\"field\": \"appointment_count\", \"op\": \"gte\", \"value\": 0}", SEG_CHANNEL_SMS,
              2, "TRUE AND " REACH_SMS, NULL);
}

/* Type and value errors of the newer criteria name the field, and never
 * echo the value. */
static void test_errors_more(void)
{
    static const char chans[] = "channel must be one of sms, email, voice, web, in_person";
    CHECK_FAILS("{\"channel\": \"fax\"}", "channel", chans);
    CHECK_FAILS("{\"channel\": \"SMS\"}", "channel", chans);
    CHECK_FAILS("{\"channel\": [\"sms\", \"fax\"]}", "channel", chans);
    CHECK_FAILS("{\"field\": \"channel\", \"op\": \"in\", \"value\": \"fax\"}", "channel", chans);
    CHECK_FAILS("{\"channel\": \"\"}", "channel", "channel must be a non-empty string");
    CHECK_FAILS("{\"channel\": 1}", "channel", "channel must be a non-empty string");
    CHECK_FAILS("{\"channel\": [1]}", "channel", "channel must be an array of strings");
    CHECK_FAILS("{\"channel\": \"x'); DROP TABLE customers; --\"}", "channel", chans);
    CHECK_FAILS("{\"field\": \"channel\", \"op\": \"gte\", \"value\": \"sms\"}", "op",
                "op \"gte\" is not supported for channel (supported: eq, in)");
    CHECK_FAILS("{\"direction\": \"both\"}", "direction",
                "direction must be one of inbound, outbound");
    CHECK_FAILS("{\"metadata_key\": \"\"}", "metadata_key",
                "metadata_key must be a non-empty string");
    CHECK_FAILS("{\"metadata_key\": [true]}", "metadata_key",
                "metadata_key must be an array of strings");
    CHECK_FAILS("{\"metadata_key\": \"\xc3\x28\"}", "metadata_key", NULL);
    CHECK_FAILS("{\"booking_intent\": \"yes\"}", "booking_intent",
                "booking_intent must be true or false");
    CHECK_FAILS("{\"booking_intent\": null}", "booking_intent", NULL);
    CHECK_FAILS("{\"field\": \"booking_intent\", \"op\": \"in\", \"value\": [true]}", "op",
                "op \"in\" is not supported for booking_intent (supported: eq)");

    static const char *const scores[] = {"min_satisfaction", "max_satisfaction", "satisfaction"};
    for (size_t i = 0; i < sizeof(scores) / sizeof(scores[0]); i++) {
        static const char *const bad[] = {"0", "6", "4.5", "-1", "\"4\"", "null", "1e9", "[4]"};
        for (size_t j = 0; j < sizeof(bad) / sizeof(bad[0]); j++) {
            char json[96], msg[96];
            snprintf(json, sizeof(json), "{\"%s\": %s}", scores[i], bad[j]);
            snprintf(msg, sizeof(msg), "%s must be an integer from 1 to 5", scores[i]);
            CHECK_FAILS(json, scores[i], msg);
        }
    }
    CHECK_FAILS("{\"field\": \"satisfaction\", \"op\": \"in\", \"value\": [4]}", "op",
                "op \"in\" is not supported for satisfaction (supported: gte, lte, eq)");
    CHECK_FAILS("{\"field\": \"max_satisfaction\", \"op\": \"gte\", \"value\": 4}", "op",
                "op \"gte\" is not supported for max_satisfaction (supported: lte)");

    static const char statuses[] =
        "last_appointment_status must be one of scheduled, completed, cancelled, no_show";
    CHECK_FAILS("{\"last_appointment_status\": \"canceled\"}", "last_appointment_status", statuses);
    CHECK_FAILS("{\"last_appointment_status\": [\"cancelled\", \"Completed\"]}",
                "last_appointment_status", statuses);
    CHECK_FAILS("{\"last_appointment_status\": true}", "last_appointment_status", NULL);

    CHECK_FAILS("{\"appointment_count_min\": -1}", "appointment_count_min",
                "appointment_count_min must be a non-negative integer");
    CHECK_FAILS("{\"appointment_count_max\": 1.5}", "appointment_count_max",
                "appointment_count_max must be a non-negative integer");
    CHECK_FAILS("{\"appointment_count_max\": 1000001}", "appointment_count_max",
                "appointment_count_max must be at most 1000000");
    CHECK_FAILS("{\"appointment_count\": \"2\"}", "appointment_count", NULL);
    CHECK_FAILS("{\"field\": \"appointment_count_min\", \"op\": \"lte\", \"value\": 1}", "op",
                "op \"lte\" is not supported for appointment_count_min (supported: gte)");
    CHECK_FAILS("{\"days_since_visit\": -2}", "days_since_visit",
                "days_since_visit must be a non-negative integer");
    CHECK_FAILS("{\"days_since_last_interaction\": \"7\"}", "days_since_last_interaction", NULL);
    /* Deep in a tree, in a scope condition: the field is still named. */
    CHECK_FAILS("{\"any\": [{\"has_phone\": true}, {\"all\": [{\"field\": \"channel\", \"value\": "
                "\"fax\"}, {\"booking_intent\": true}]}]}",
                "channel", chans);
    CHECK_FAILS("{\"not\": {\"channel\": \"sms\", \"satisfaction\": 9}}", "satisfaction", NULL);
}

static void test_errors(void)
{
    CHECK_FAILS("[]", "criteria", "criteria must be a JSON object");
    CHECK_FAILS("\"x\"", "criteria", NULL);
    CHECK_FAILS("{\"bogus\": 1}", "bogus", "unknown criterion \"bogus\"");
    CHECK_FAILS("{\"has_phone\": true, \"Has_Email\": true}", "Has_Email", NULL);
    CHECK_FAILS("{\"has_phone\": \"yes\"}", "has_phone", "has_phone must be true or false");
    CHECK_FAILS("{\"has_email\": 1}", "has_email", NULL);
    CHECK_FAILS("{\"has_appointment\": null}", "has_appointment", NULL);
    CHECK_FAILS("{\"days_since_last_contact\": -1}", "days_since_last_contact",
                "days_since_last_contact must be a non-negative integer");
    CHECK_FAILS("{\"days_since_last_contact\": 1.5}", "days_since_last_contact",
                "days_since_last_contact must be a non-negative integer");
    CHECK_FAILS("{\"days_since_last_contact\": \"30\"}", "days_since_last_contact",
                "days_since_last_contact must be a non-negative integer");
    CHECK_FAILS("{\"days_since_last_appointment\": 100001}", "days_since_last_appointment",
                "days_since_last_appointment must be at most 100000");
    CHECK_FAILS("{\"days_since_last_appointment\": 1e300}", "days_since_last_appointment",
                "days_since_last_appointment must be at most 100000");
    CHECK_FAILS("{\"tags\": [1]}", "tags", "tags must be an array of strings");
    CHECK_FAILS("{\"tags\": {}}", "tags", "tags must be an array of strings");
    CHECK_FAILS("{\"tags_any\": [\"a\", null]}", "tags_any",
                "tags_any must be an array of strings");
    CHECK_FAILS("{\"tags\": [\"ok\", \"\xff\"]}", "tags", "tags must be an array of strings");
    CHECK_FAILS("{\"tags\": [\"\xed\xa0\x80\"]}", "tags", NULL); /* UTF-8 encoded surrogate */
    CHECK_FAILS("{\"tags\": [\"\xc0\xaf\"]}", "tags", NULL);     /* overlong "/" */
    CHECK_FAILS("{\"timezone\": \"\"}", "timezone", "timezone must be a non-empty string");
    /* An array picks the "in" form of a one-string criterion. */
    CHECK_FAILS("{\"timezone\": [\"UTC\", 3]}", "timezone", "timezone must be an array of strings");

    /* Tree leaves. */
    CHECK_FAILS("{\"field\": \"tags\", \"op\": \"gte\", \"value\": [\"a\"]}", "op",
                "op \"gte\" is not supported for tags (supported: contains, in)");
    CHECK_FAILS("{\"field\": \"has_phone\", \"op\": \"in\", \"value\": true}", "op",
                "op \"in\" is not supported for has_phone (supported: eq)");
    CHECK_FAILS("{\"field\": \"days_since_last_contact\", \"op\": \"contains\", \"value\": 1}",
                "op",
                "op \"contains\" is not supported for days_since_last_contact (supported: "
                "gte, lte, eq)");
    CHECK_FAILS("{\"field\": \"tags\", \"op\": \"like\", \"value\": [\"a\"]}", "op",
                "op must be one of eq, gte, lte, contains, in");
    CHECK_FAILS("{\"field\": \"tags\", \"op\": 1, \"value\": [\"a\"]}", "op", NULL);
    CHECK_FAILS("{\"field\": \"nope\", \"op\": \"eq\", \"value\": 1}", "nope",
                "unknown criterion \"nope\"");
    CHECK_FAILS("{\"field\": 3, \"value\": 1}", "field", "field must be the name of a criterion");
    CHECK_FAILS("{\"field\": \"\", \"value\": 1}", "field", NULL);
    CHECK_FAILS("{\"field\": \"has_phone\"}", "has_phone", "has_phone needs a \"value\"");
    CHECK_FAILS("{\"field\": \"has_phone\", \"value\": true, \"extra\": 1}", "extra", NULL);
    CHECK_FAILS("{\"field\": \"timezone\", \"op\": \"in\", \"value\": \"UTC\", \"x\": 1}", "x",
                NULL);
    CHECK_FAILS("{\"field\": \"days_since_last_contact\", \"op\": \"lte\", \"value\": -3}",
                "days_since_last_contact",
                "days_since_last_contact must be a non-negative integer");
    CHECK_FAILS("{\"field\": \"timezone\", \"op\": \"in\", \"value\": [2]}", "timezone",
                "timezone must be an array of strings");
    CHECK_FAILS("{\"op\": \"eq\"}", "op", "\"op\" is only allowed together with \"field\"");
    CHECK_FAILS("{\"value\": 1}", "value", NULL);

    /* Combinators. */
    CHECK_FAILS("{\"all\": {}}", "all", "all must be an array of conditions");
    CHECK_FAILS("{\"all\": [1]}", "all", "all must be an array of conditions");
    CHECK_FAILS("{\"any\": 3}", "any", "any must be an array of conditions");
    CHECK_FAILS("{\"any\": [{\"has_phone\": true}, []]}", "any", NULL);
    CHECK_FAILS("{\"not\": []}", "not", "not must be a condition object");
    CHECK_FAILS("{\"not\": true}", "not", NULL);
    /* Errors deep in a tree name the leaf. */
    CHECK_FAILS("{\"all\": [{\"any\": [{\"has_phone\": true}, {\"not\": "
                "{\"days_since_last_contact\": \"x\"}}]}]}",
                "days_since_last_contact",
                "days_since_last_contact must be a non-negative integer");
    CHECK_FAILS("{\"any\": [{\"has_phone\": true}, {\"frobnicate\": 1}]}", "frobnicate", NULL);

    /* attribute */
    CHECK_FAILS("{\"attribute\": \"city\"}", "attribute", NULL);
    CHECK_FAILS("{\"attribute\": {\"key\": \"\", \"value\": 1}}", "attribute",
                "attribute.key must be a non-empty string");
    CHECK_FAILS("{\"attribute\": {\"key\": 5, \"value\": 1}}", "attribute", NULL);
    CHECK_FAILS("{\"attribute\": {\"value\": 1}}", "attribute", NULL);
    CHECK_FAILS("{\"attribute\": {\"key\": \"k\"}}", "attribute",
                "attribute needs exactly one of \"value\" or \"exists\"");
    CHECK_FAILS("{\"attribute\": {\"key\": \"k\", \"value\": 1, \"exists\": true}}", "attribute",
                "attribute needs exactly one of \"value\" or \"exists\"");
    CHECK_FAILS("{\"attribute\": {\"key\": \"k\", \"value\": null}}", "attribute",
                "attribute.value must be a string, number, boolean or an array of those");
    CHECK_FAILS("{\"attribute\": {\"key\": \"k\", \"value\": {\"a\": 1}}}", "attribute", NULL);
    CHECK_FAILS("{\"attribute\": {\"key\": \"k\", \"value\": [[1]]}}", "attribute", NULL);
    CHECK_FAILS("{\"attribute\": {\"key\": \"k\", \"value\": 1e999}}", "attribute", NULL);
    CHECK_FAILS("{\"attribute\": {\"key\": \"k\", \"exists\": \"yes\"}}", "attribute",
                "attribute.exists must be true or false");
    CHECK_FAILS("{\"attribute\": {\"key\": \"k\", \"value\": 1, \"op\": \"eq\"}}", "attribute",
                NULL);
    CHECK_FAILS("{\"attribute\": {\"key\": \"\xff\", \"exists\": true}}", "attribute", NULL);

    /* Caller mistakes. */
    struct seg_query q;
    char field[32], msg[128];
    cJSON *c = cJSON_CreateObject();
    CHECK(seg_compile(c, SEG_CHANNEL_SMS, 0, &q, field, sizeof(field), msg, sizeof(msg)) ==
          CR_EINVAL);
    CHECK_STR(field, "first_param");
    seg_query_cleanup(&q);
    CHECK(seg_compile(c, (enum seg_channel)7, 1, &q, field, sizeof(field), msg, sizeof(msg)) ==
          CR_EINVAL);
    CHECK_STR(field, "channel");
    seg_query_cleanup(&q);
    /* NULL / tiny out buffers are tolerated. */
    cJSON_AddNumberToObject(c, "nope", 1);
    CHECK(seg_compile(c, SEG_CHANNEL_SMS, 1, &q, NULL, 0, NULL, 0) == CR_EINVAL);
    seg_query_cleanup(&q);
    char tiny[3];
    CHECK(seg_compile(c, SEG_CHANNEL_SMS, 1, &q, tiny, sizeof(tiny), msg, sizeof(msg)) ==
          CR_EINVAL);
    CHECK_STR(tiny, "no");
    seg_query_cleanup(&q);
    cJSON_Delete(c);
}

/* No value, however hostile, ever reaches the SQL text. */
static void test_no_values_in_sql(void)
{
    static const char *const evil[] = {
        "x'); DROP TABLE customers;--", "' OR 1=1 --", "$1", "\"}, {\"a",
        "\\'; SELECT pg_sleep(10); --",
    };
    for (size_t i = 0; i < sizeof(evil) / sizeof(evil[0]); i++) {
        const char *v = evil[i];
        cJSON *root = cJSON_CreateObject();
        cJSON *all = cJSON_AddArrayToObject(root, "all");
        cJSON *o;

        o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "tags", cJSON_CreateStringArray(&v, 1));
        cJSON_AddItemToArray(all, o);
        o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "tags_any", cJSON_CreateStringArray(&v, 1));
        cJSON_AddItemToArray(all, o);
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "timezone", v);
        cJSON_AddItemToArray(all, o);
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "field", "timezone");
        cJSON_AddStringToObject(o, "op", "in");
        cJSON_AddItemToObject(o, "value", cJSON_CreateStringArray(&v, 1));
        cJSON_AddItemToArray(all, o);
        o = cJSON_CreateObject();
        cJSON *attr = cJSON_AddObjectToObject(o, "attribute");
        cJSON_AddStringToObject(attr, "key", v);
        cJSON_AddStringToObject(attr, "value", v);
        cJSON_AddItemToArray(all, o);
        o = cJSON_CreateObject();
        attr = cJSON_AddObjectToObject(o, "attribute");
        cJSON_AddStringToObject(attr, "key", v);
        cJSON_AddTrueToObject(attr, "exists");
        cJSON_AddItemToArray(all, o);
        /* metadata_key, flat and as an "in" leaf (under "any": two
         * metadata_key conditions at one level would be an error). */
        cJSON *any = cJSON_CreateArray();
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "metadata_key", v);
        cJSON_AddItemToArray(any, o);
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "field", "metadata_key");
        cJSON_AddStringToObject(o, "op", "in");
        cJSON_AddItemToObject(o, "value", cJSON_CreateStringArray(&v, 1));
        cJSON_AddItemToArray(any, o);
        o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "any", any);
        cJSON_AddItemToArray(all, o);

        for (int ch = SEG_CHANNEL_SMS; ch <= SEG_CHANNEL_VOICE; ch++) {
            struct seg_query q;
            char field[64], msg[256];
            CHECK(seg_compile(root, (enum seg_channel)ch, 2, &q, field, sizeof(field), msg,
                              sizeof(msg)) == CR_OK);
            const char *sql = buf_str(&q.sql);
            CHECK(strstr(sql, v) == NULL);
            CHECK(strstr(sql, "DROP") == NULL);
            CHECK(strstr(sql, "1=1") == NULL);
            CHECK(strstr(sql, "pg_sleep") == NULL);
            CHECK(strstr(sql, "$1") == NULL); /* $1 is the caller's tenant id */
            CHECK(strstr(sql, "\"") == NULL);
            CHECK(q.nparams == 8);
            /* ...but each value did travel, as a parameter. */
            int carried = 0;
            for (int p = 0; p < q.nparams; p++)
                carried += strstr(q.params[p], v) != NULL || strcmp(q.params[p], v) == 0;
            CHECK(carried == 8 || (strpbrk(v, "\"\\") && carried >= 2));
            seg_query_cleanup(&q);
        }
        cJSON_Delete(root);
    }
}

/* Builds n nested {"not": ...} (or {"all": [...]}) around {"has_phone": true}. */
static char *nested(int n, int use_all)
{
    struct buf b;
    enum cr_err e = CR_OK;
    buf_init(&b, 1 << 20);
    for (int i = 0; i < n && e == CR_OK; i++)
        e = buf_puts(&b, use_all ? "{\"all\": [" : "{\"not\": ");
    if (e == CR_OK)
        e = buf_puts(&b, "{\"has_phone\": true}");
    for (int i = 0; i < n && e == CR_OK; i++)
        e = buf_puts(&b, use_all ? "]}" : "}");
    CHECK(e == CR_OK);
    return buf_take(&b);
}

static void test_depth(void)
{
    for (int use_all = 0; use_all <= 1; use_all++) {
        struct result r;
        char *j = nested(16, use_all);
        compile(j, SEG_CHANNEL_SMS, 2, &r);
        CHECK(r.err == CR_OK);
        seg_query_cleanup(&r.q);
        free(j);

        j = nested(17, use_all);
        compile(j, SEG_CHANNEL_SMS, 2, &r);
        CHECK(r.err == CR_EINVAL);
        CHECK_STR(r.field, use_all ? "all" : "not");
        CHECK_STR(r.msg, "criteria are nested too deeply (at most 16 levels)");
        seg_query_cleanup(&r.q);
        free(j);

        j = nested(400, use_all); /* deep, but within cJSON's own nesting limit */
        compile(j, SEG_CHANNEL_SMS, 2, &r);
        CHECK(r.err == CR_EINVAL);
        seg_query_cleanup(&r.q);
        free(j);
    }
}

/* {"all": [item, item, ...]} with n copies. */
static char *repeated(const char *item, int n)
{
    struct buf b;
    enum cr_err e;
    buf_init(&b, 1 << 20);
    e = buf_puts(&b, "{\"all\": [");
    for (int i = 0; i < n && e == CR_OK; i++)
        e = buf_printf(&b, "%s%s", i ? ", " : "", item);
    if (e == CR_OK)
        e = buf_puts(&b, "]}");
    CHECK(e == CR_OK);
    return buf_take(&b);
}

static void test_limits(void)
{
    struct result r;
    char *j = repeated("{\"tags\": [\"t\"]}", SEG_MAX_PARAMS);
    compile(j, SEG_CHANNEL_SMS, 2, &r);
    CHECK(r.err == CR_OK);
    CHECK(r.q.nparams == SEG_MAX_PARAMS);
    CHECK(strstr(buf_str(&r.q.sql), "$65::text[]") != NULL);
    CHECK(strstr(buf_str(&r.q.sql), "$66") == NULL);
    seg_query_cleanup(&r.q);
    free(j);

    j = repeated("{\"tags\": [\"t\"]}", SEG_MAX_PARAMS + 1);
    compile(j, SEG_CHANNEL_SMS, 2, &r);
    CHECK(r.err == CR_EINVAL);
    CHECK_STR(r.field, "tags");
    CHECK_STR(r.msg, "criteria use too many values (at most 64)");
    seg_query_cleanup(&r.q);
    free(j);

    j = repeated("{\"has_appointment\": false}", 256);
    compile(j, SEG_CHANNEL_SMS, 2, &r);
    CHECK(r.err == CR_OK);
    CHECK(r.q.nparams == 0);
    seg_query_cleanup(&r.q);
    free(j);

    j = repeated("{\"has_phone\": true}", 257);
    compile(j, SEG_CHANNEL_SMS, 2, &r);
    CHECK(r.err == CR_EINVAL);
    CHECK_STR(r.field, "has_phone");
    CHECK_STR(r.msg, "criteria have too many conditions (at most 256)");
    seg_query_cleanup(&r.q);
    free(j);

    /* The generated SQL has a size limit: 250 scoped latest-value
     * conditions (about 350 bytes each) exceed 64 KiB. */
    j = repeated("{\"booking_intent\": true}", 250);
    char *scoped = xasprintf("{\"channel\": \"sms\", %s", j + 1);
    free(j);
    j = scoped;
    compile(j, SEG_CHANNEL_SMS, 2, &r);
    CHECK(r.err == CR_EINVAL);
    CHECK_STR(r.field, "criteria");
    CHECK_STR(r.msg, "criteria are too large (at most 65536 bytes of SQL)");
    seg_query_cleanup(&r.q);
    free(j);

    /* One oversized array parameter. */
    static char big[70000 + 32];
    memcpy(big, "{\"tags\": [\"", 11);
    memset(big + 11, 'x', 70000);
    memcpy(big + 11 + 70000, "\"]}", 4);
    compile(big, SEG_CHANNEL_SMS, 2, &r);
    CHECK(r.err == CR_EINVAL);
    CHECK_STR(r.field, "tags");
    CHECK_STR(r.msg, "tags is too long (at most 65536 bytes)");
    seg_query_cleanup(&r.q);

    /* The highest first_param that still leaves room for every parameter. */
    compile("{\"timezone\": \"UTC\"}", SEG_CHANNEL_SMS, 65535 - SEG_MAX_PARAMS, &r);
    CHECK(r.err == CR_OK);
    seg_query_cleanup(&r.q);
    compile("{\"timezone\": \"UTC\"}", SEG_CHANNEL_SMS, 65535 - SEG_MAX_PARAMS + 1, &r);
    CHECK(r.err == CR_EINVAL);
    CHECK_STR(r.field, "first_param");
    seg_query_cleanup(&r.q);
}

static void test_channel_parse(void)
{
    enum seg_channel ch = SEG_CHANNEL_VOICE;
    CHECK(seg_channel_parse("sms", &ch) == CR_OK && ch == SEG_CHANNEL_SMS);
    CHECK(seg_channel_parse("email", &ch) == CR_OK && ch == SEG_CHANNEL_EMAIL);
    CHECK(seg_channel_parse("voice", &ch) == CR_OK && ch == SEG_CHANNEL_VOICE);
    CHECK(seg_channel_parse("SMS", &ch) == CR_EINVAL);
    CHECK(seg_channel_parse("", &ch) == CR_EINVAL);
    CHECK(seg_channel_parse("fax", &ch) == CR_EINVAL);
    CHECK(seg_channel_parse(NULL, &ch) == CR_EINVAL);
}

int main(void)
{
    RUN(test_empty);
    RUN(test_flat);
    RUN(test_days_ops);
    RUN(test_tree);
    RUN(test_array_escaping);
    RUN(test_attribute);
    RUN(test_flat_arrays);
    RUN(test_interaction_exists);
    RUN(test_latest);
    RUN(test_scope);
    RUN(test_appointments);
    RUN(test_errors);
    RUN(test_errors_more);
    RUN(test_no_values_in_sql);
    RUN(test_depth);
    RUN(test_limits);
    RUN(test_channel_parse);
    return check_summary();
}
