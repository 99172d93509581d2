/* test_segment_templates.c - unit tests for common/segment_templates.c: every
 * shipped template compiles for its channel, so no template can reference a
 * criterion that does not exist (tests/integration/segment_templates.sh runs
 * them against PostgreSQL). */
#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "buf.h"
#include "check.h"
#include "segment.h"
#include "segment_templates.h"

static bool is_snake_case(const char *s)
{
    if (!islower((unsigned char)s[0]))
        return false;
    for (; *s; s++) {
        if (!islower((unsigned char)*s) && !isdigit((unsigned char)*s) && *s != '_')
            return false;
        if (s[0] == '_' && (s[1] == '_' || s[1] == '\0'))
            return false;
    }
    return true;
}

/* True when every $N in sql is a parameter (first..first+n-1) and every
 * parameter is used: PostgreSQL cannot type a parameter it never sees. */
static bool placeholders_ok(const char *sql, int first, int n)
{
    bool used[SEG_MAX_PARAMS] = {false};
    for (const char *p = strchr(sql, '$'); p; p = strchr(p + 1, '$')) {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || v < first || v >= first + n)
            return false;
        used[v - first] = true;
    }
    for (int i = 0; i < n; i++) {
        if (!used[i])
            return false;
    }
    return true;
}

/* Every template: well-formed metadata, criteria that parse as a JSON
 * object and compile for its channel with the parameters numbered from 2
 * (the API's preview and the dispatcher bind $1 = tenant id). */
static void test_every_template_compiles(void)
{
    size_t n = 0;
    const struct seg_template *t = seg_templates(&n);
    REQUIRE(t != NULL);
    CHECK(n == 6);

    for (size_t i = 0; i < n; i++) {
        const struct seg_template *tp = &t[i];
        REQUIRE(tp->id && tp->name && tp->description && tp->channel && tp->criteria_json);
        CHECK(is_snake_case(tp->id));
        CHECK(tp->name[0] != '\0' && strlen(tp->name) <= 200);
        CHECK(strlen(tp->description) > 20);
        for (size_t k = 0; k < i; k++) {
            CHECK(strcmp(t[k].id, tp->id) != 0);
            CHECK(strcmp(t[k].name, tp->name) != 0);
        }

        enum seg_channel ch;
        CHECK(seg_channel_parse(tp->channel, &ch) == CR_OK);
        cJSON *crit = cJSON_Parse(tp->criteria_json);
        CHECK(cJSON_IsObject(crit));
        if (!crit) {
            fprintf(stderr, "  template %s: criteria are not JSON\n", tp->id);
            continue;
        }
        for (int first = 2; first <= 7; first += 5) { /* the preview's and the dispatcher's */
            struct seg_query q;
            char field[64], msg[256];
            enum cr_err e =
                seg_compile(crit, ch, first, &q, field, sizeof(field), msg, sizeof(msg));
            CHECK(e == CR_OK);
            if (e != CR_OK)
                fprintf(stderr, "  template %s: %s: %s\n", tp->id, field, msg);
            else
                CHECK(placeholders_ok(buf_str(&q.sql), first, q.nparams));
            seg_query_cleanup(&q);
        }
        cJSON_Delete(crit);
    }
}

/* The six of the seed product, by id, on the channels they are meant for. */
static void test_seed_templates(void)
{
    static const struct {
        const char *id, *channel;
    } want[] = {
        {"sms_booking_abandoners", "sms"},
        {"booking_flow_abandoners", "email"},
        {"high_satisfaction_no_repeat", "email"},
        {"recent_callers_without_booking", "sms"},
        {"inactive_90_days", "email"},
        {"cancelled_appointments", "sms"},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        const struct seg_template *t = seg_template_find(want[i].id);
        CHECK(t != NULL);
        if (!t)
            continue;
        CHECK_STR(t->id, want[i].id);
        CHECK_STR(t->channel, want[i].channel);
    }
    CHECK(seg_template_find("nope") == NULL);
    CHECK(seg_template_find("") == NULL);
    CHECK(seg_template_find(NULL) == NULL);
    CHECK(seg_template_find("SMS_BOOKING_ABANDONERS") == NULL);
}

/* What each template is made of: the criteria its description promises. */
static void test_template_criteria(void)
{
    static const struct {
        const char *id;
        const char *needles[4];
    } want[] = {
        {"sms_booking_abandoners",
         {"\"booking_intent\"", "\"value\": \"sms\"", "\"days_since_last_interaction\"", NULL}},
        {"booking_flow_abandoners",
         {"\"visited_booking_page\"", "\"days_since_visit\"", "\"days_since_last_appointment\"",
          NULL}},
        {"high_satisfaction_no_repeat",
         {"\"min_satisfaction\"", "\"appointment_count\"", "\"last_appointment_status\"", NULL}},
        {"recent_callers_without_booking",
         {"\"value\": \"voice\"", "\"value\": \"inbound\"", "\"days_since_last_interaction\"",
          NULL}},
        {"inactive_90_days", {"\"days_since_last_contact\"", "\"value\": 90", NULL}},
        {"cancelled_appointments", {"\"value\": \"cancelled\"", NULL}},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        const struct seg_template *t = seg_template_find(want[i].id);
        REQUIRE(t != NULL);
        for (size_t k = 0; k < 4 && want[i].needles[k]; k++) {
            CHECK(strstr(t->criteria_json, want[i].needles[k]) != NULL);
            if (!strstr(t->criteria_json, want[i].needles[k]))
                fprintf(stderr, "  %s lacks %s\n", t->id, want[i].needles[k]);
        }
    }
}

int main(void)
{
    RUN(test_every_template_compiles);
    RUN(test_seed_templates);
    RUN(test_template_criteria);
    return check_summary();
}
