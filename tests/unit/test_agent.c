/* test_agent.c - unit tests for common/agent.c. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "agent.h"
#include "check.h"

/* A small config that is valid; tests break one thing at a time. */
static const char minimal[] =
    "{\"name\": \"Test\", \"campaign_type\": \"research\", "
    "\"system_prompt\": \"You are a test agent.\", \"greeting\": \"Hi {{first_name|there}}.\", "
    "\"questions\": ["
    "{\"id\": \"q1\", \"text\": \"How are you?\", \"type\": \"open\"}, "
    "{\"id\": \"q2\", \"text\": \"Pick one.\", \"type\": \"choice\", \"choices\": [\"A\", \"B\"]}, "
    "{\"id\": \"q3\", \"text\": \"Rate us.\", \"type\": \"scale\", "
    "\"scale\": {\"min\": 1, \"max\": 5}}], "
    "\"expected_outcomes\": [{\"id\": \"done\", \"description\": \"Done.\"}], "
    "\"voice\": {\"language\": \"en-US\", \"voice\": \"alice\"}}";

/* The errors of the last validation, one "field: message" per line. */
static char got[16384];

/* Validates cfg; returns the code and fills got. */
static enum cr_err run(const cJSON *cfg)
{
    cJSON *errors = (cJSON *)1; /* must be overwritten */
    enum cr_err e = agent_validate(cfg, &errors);
    size_t len = 0;

    got[0] = '\0';
    if (e == CR_OK && errors != NULL)
        snprintf(got, sizeof(got), "(CR_OK with errors set)");
    if (e != CR_OK && cJSON_IsArray(errors)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, errors)
        {
            const cJSON *f = cJSON_GetObjectItemCaseSensitive(it, "field");
            const cJSON *m = cJSON_GetObjectItemCaseSensitive(it, "message");
            int n = snprintf(got + len, sizeof(got) - len, "%s: %s\n",
                             cJSON_IsString(f) ? f->valuestring : "(no field)",
                             cJSON_IsString(m) ? m->valuestring : "(no message)");
            if (n < 0 || (size_t)n >= sizeof(got) - len)
                break;
            len += (size_t)n;
        }
    }
    if (e != CR_OK && e != CR_EINVAL)
        snprintf(got, sizeof(got), "(unexpected code %d)", (int)e);
    if (e == CR_OK || errors != (cJSON *)1)
        cJSON_Delete(errors);
    return e;
}

/* Validates JSON text. */
static enum cr_err run_text(const char *json)
{
    cJSON *cfg = cJSON_Parse(json);
    enum cr_err e = run(cfg);
    cJSON_Delete(cfg);
    return e;
}

static cJSON *base(void)
{
    return cJSON_Parse(minimal);
}

/* Sets obj[key] to the parsed JSON value (replacing any existing member). */
static void put(cJSON *obj, const char *key, const char *json)
{
    cJSON *v = cJSON_Parse(json);
    if (!v) {
        fprintf(stderr, "test bug: bad JSON %s\n", json);
        abort();
    }
    if (cJSON_GetObjectItemCaseSensitive(obj, key))
        cJSON_ReplaceItemInObjectCaseSensitive(obj, key, v);
    else
        cJSON_AddItemToObject(obj, key, v);
}

static cJSON *question(cJSON *cfg, int i)
{
    return cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(cfg, "questions"), i);
}

static cJSON *member(cJSON *obj, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* Expects cfg to fail with exactly the listed errors; deletes cfg. */
#define CHECK_ERRORS(cfg, expected)                                                                \
    do {                                                                                           \
        cJSON *cfg_ = (cfg);                                                                       \
        CHECK(run(cfg_) == CR_EINVAL);                                                             \
        CHECK_STR(got, (expected));                                                                \
        cJSON_Delete(cfg_);                                                                        \
    } while (0)

/* ------------------------------------------------------------------------ */

static void test_minimal_valid(void)
{
    cJSON *cfg = base();
    REQUIRE(cfg != NULL);
    CHECK(run(cfg) == CR_OK);
    CHECK_STR(got, "");

    /* Every optional member, set to something valid. */
    put(cfg, "closing", "\"Bye {{ first_name }}!\"");
    put(cfg, "max_duration_seconds", "30");
    put(cfg, "machine_detection", "\"detect_message_end\"");
    put(cfg, "agent",
        "{\"mode\": \"stream\", \"url\": \"wss://agent.example.com:8443/v1/"
        "stream?campaign=42&x=%20y\"}");
    put(member(cfg, "voice"), "speaking_rate", "2.0");
    put(question(cfg, 2), "scale",
        "{\"min\": 0, \"max\": 10, \"min_label\": \"never\", \"max_label\": \"always\"}");
    put(cJSON_GetArrayItem(member(cfg, "expected_outcomes"), 0), "success", "true");
    put(question(cfg, 0), "text",
        "\"{{last_name}} {{email}} {{phone}} {{external_id}} {{attributes.city}} "
        "{{attributes.address.zip|none}}\"");
    CHECK(run(cfg) == CR_OK);
    CHECK_STR(got, "");

    /* The verdict alone, without the list. */
    CHECK(agent_validate(cfg, NULL) == CR_OK);
    put(cfg, "name", "1");
    CHECK(agent_validate(cfg, NULL) == CR_EINVAL);
    cJSON_Delete(cfg);
}

static void test_templates_valid(void)
{
    size_t n = 0;
    const struct agent_template *t = agent_templates(&n);
    REQUIRE(t != NULL);
    REQUIRE(n == 6);
    for (size_t i = 0; i < n; i++) {
        cJSON *cfg = cJSON_Parse(t[i].json);
        if (!cfg)
            fprintf(stderr, "template %s does not parse near: %.40s\n", t[i].id,
                    cJSON_GetErrorPtr());
        REQUIRE(cfg != NULL);
        CHECK(run(cfg) == CR_OK);
        if (got[0])
            fprintf(stderr, "template %s:\n%s", t[i].id, got);
        CHECK_STR(got, "");
        CHECK_STR(cJSON_GetStringValue(member(cfg, "name")), t[i].name);
        CHECK_STR(cJSON_GetStringValue(member(cfg, "campaign_type")), t[i].campaign_type);

        /* The shared conduct rules name these outcomes; every template
         * must offer them, and at least one outcome must be a success. */
        const char *needed[] = {"wrong_person", "do_not_call", "callback_requested"};
        for (size_t k = 0; k < sizeof(needed) / sizeof(needed[0]); k++) {
            bool found = false;
            const cJSON *o;
            cJSON_ArrayForEach(o, member(cfg, "expected_outcomes"))
            {
                const char *id = cJSON_GetStringValue(member((cJSON *)o, "id"));
                found = found || (id && strcmp(id, needed[k]) == 0);
            }
            if (!found)
                fprintf(stderr, "template %s lacks outcome %s\n", t[i].id, needed[k]);
            CHECK(found);
        }
        bool success = false;
        const cJSON *o;
        cJSON_ArrayForEach(o, member(cfg, "expected_outcomes"))
        {
            success = success || cJSON_IsTrue(member((cJSON *)o, "success"));
        }
        CHECK(success);
        /* Real content, not a stub. */
        CHECK(strlen(cJSON_GetStringValue(member(cfg, "system_prompt"))) > 500);
        CHECK(cJSON_GetArraySize(member(cfg, "questions")) >= 3);
        cJSON_Delete(cfg);
    }
}

static void test_list_and_find(void)
{
    static const char *const ids[] = {
        "booking_abandonment_research",
        "special_offer_outbound",
        "feedback_request",
        "reactivation",
        "appointment_reminder_upsell",
        "referral_request",
    };
    static const char *const types[] = {
        "research",       "outbound_sales", "research",
        "outbound_sales", "outbound_sales", "outbound_sales",
    };
    size_t n = 0;
    const struct agent_template *t = agent_templates(&n);
    REQUIRE(n == 6);
    CHECK(agent_templates(NULL) == t);
    for (size_t i = 0; i < n; i++) {
        CHECK_STR(t[i].id, ids[i]);
        CHECK_STR(t[i].campaign_type, types[i]);
        CHECK(t[i].name && t[i].name[0]);
        for (const char *p = t[i].id; *p; p++)
            CHECK((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_');
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(t[i].id, t[j].id) != 0);
        CHECK(agent_template_find(ids[i]) == &t[i]);
    }
    CHECK(agent_template_find("no_such_template") == NULL);
    CHECK(agent_template_find("") == NULL);
    CHECK(agent_template_find(NULL) == NULL);
    CHECK(agent_template_find("Feedback_Request") == NULL);
    CHECK(agent_template_find("feedback_request ") == NULL);
}

static void test_not_object(void)
{
    CHECK(run(NULL) == CR_EINVAL);
    CHECK_STR(got, ": must be a JSON object\n");
    CHECK(run_text("[]") == CR_EINVAL);
    CHECK_STR(got, ": must be a JSON object\n");
    CHECK(run_text("\"config\"") == CR_EINVAL);
    CHECK_STR(got, ": must be a JSON object\n");
    CHECK(run_text("null") == CR_EINVAL);
    CHECK_STR(got, ": must be a JSON object\n");
}

static void test_missing_required(void)
{
    CHECK(run_text("{}") == CR_EINVAL);
    CHECK_STR(got, "name: is required\n"
                   "campaign_type: is required\n"
                   "system_prompt: is required\n"
                   "greeting: is required\n"
                   "questions: is required\n"
                   "expected_outcomes: is required\n"
                   "voice: is required\n");

    cJSON *cfg = base();
    put(cfg, "voice", "{}");
    put(question(cfg, 0), "extra", "1");
    cJSON_DeleteItemFromObjectCaseSensitive(question(cfg, 0), "text");
    cJSON_DeleteItemFromObjectCaseSensitive(cJSON_GetArrayItem(member(cfg, "expected_outcomes"), 0),
                                            "description");
    CHECK_ERRORS(cfg, "questions[0].extra: unknown field\n"
                      "questions[0].text: is required\n"
                      "expected_outcomes[0].description: is required\n"
                      "voice.language: is required\n"
                      "voice.voice: is required\n");
}

static void test_unknown_and_duplicate_keys(void)
{
    cJSON *cfg = base();
    put(cfg, "colour", "\"blue\"");
    put(member(cfg, "voice"), "pitch", "3");
    put(member(question(cfg, 2), "scale"), "step", "1");
    CHECK_ERRORS(cfg, "questions[2].scale.step: unknown field\n"
                      "voice.pitch: unknown field\n"
                      "colour: unknown field\n");

    /* Keys differ in case: still unknown. */
    cfg = base();
    put(cfg, "Name", "\"x\"");
    CHECK_ERRORS(cfg, "Name: unknown field\n");

    /* A long or odd key is shown cut and sanitised. */
    cfg = base();
    char key[200];
    memset(key, 'k', sizeof(key) - 1);
    key[sizeof(key) - 1] = '\0';
    key[3] = '\n';
    put(cfg, key, "1");
    put(cfg, "", "1");
    CHECK_ERRORS(cfg,
                 "kkk?kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...: unknown "
                 "field\n"
                 "\"\": unknown field\n");

    /* Duplicate members survive cJSON's parser; each extra one is an error. */
    CHECK(run_text("{\"name\": \"a\", \"name\": \"b\"}") == CR_EINVAL);
    CHECK_STR(got, "name: duplicate field\n"
                   "campaign_type: is required\n"
                   "system_prompt: is required\n"
                   "greeting: is required\n"
                   "questions: is required\n"
                   "expected_outcomes: is required\n"
                   "voice: is required\n");
}

static void test_wrong_types(void)
{
    cJSON *cfg = base();
    put(cfg, "name", "5");
    put(cfg, "campaign_type", "1");
    put(cfg, "system_prompt", "null");
    put(cfg, "greeting", "[\"hi\"]");
    put(cfg, "questions", "\"q\"");
    put(cfg, "expected_outcomes", "{}");
    put(cfg, "voice", "[]");
    put(cfg, "closing", "false");
    put(cfg, "max_duration_seconds", "\"60\"");
    put(cfg, "machine_detection", "true");
    put(cfg, "agent", "\"wss://a.example.com\"");
    CHECK_ERRORS(cfg, "name: must be a string\n"
                      "campaign_type: must be one of \"research\", \"outbound_sales\"\n"
                      "system_prompt: must be a string\n"
                      "greeting: must be a string\n"
                      "questions: must be an array\n"
                      "expected_outcomes: must be an array\n"
                      "voice: must be an object\n"
                      "closing: must be a string\n"
                      "max_duration_seconds: must be an integer\n"
                      "machine_detection: must be one of \"none\", \"enable\", "
                      "\"detect_message_end\"\n"
                      "agent: must be an object\n");

    cfg = base();
    cJSON *outcomes = member(cfg, "expected_outcomes");
    cJSON_AddItemToArray(outcomes, cJSON_CreateString("x"));
    put(question(cfg, 0), "id", "7");
    put(question(cfg, 1), "choices", "[\"A\", 2]");
    put(question(cfg, 2), "scale", "[1, 5]");
    put(member(cfg, "voice"), "speaking_rate", "\"fast\"");
    put(cJSON_GetArrayItem(outcomes, 0), "success", "1");
    CHECK_ERRORS(cfg, "questions[0].id: must be a string\n"
                      "questions[1].choices[1]: must be a string\n"
                      "questions[2].scale: must be an object\n"
                      "expected_outcomes[0].success: must be true or false\n"
                      "expected_outcomes[1]: must be an object\n"
                      "voice.speaking_rate: must be a number\n");
}

static void test_text_lengths(void)
{
    char big[8100];
    cJSON *cfg = base();

    /* name: 200 characters pass even as 400 bytes of UTF-8. */
    for (int i = 0; i < 200; i++)
        memcpy(big + 2 * i, "\xc3\xa9", 2);
    big[400] = '\0';
    cJSON_ReplaceItemInObjectCaseSensitive(cfg, "name", cJSON_CreateString(big));
    CHECK(run(cfg) == CR_OK);
    big[400] = 'e';
    big[401] = '\0';
    cJSON_ReplaceItemInObjectCaseSensitive(cfg, "name", cJSON_CreateString(big));
    memset(big, 'p', 8001);
    big[8001] = '\0';
    cJSON_ReplaceItemInObjectCaseSensitive(cfg, "system_prompt", cJSON_CreateString(big));
    put(cfg, "greeting", "\"\"");
    put(cfg, "closing", "\"   \\n\\t \"");
    put(question(cfg, 0), "text", "\"\"");
    CHECK_ERRORS(cfg, "name: must be at most 200 characters (got 201)\n"
                      "system_prompt: must be at most 8000 characters (got 8001)\n"
                      "greeting: must not be empty\n"
                      "questions[0].text: must not be empty\n"
                      "closing: must not be blank\n");

    /* Exactly at the limits. */
    cfg = base();
    big[8000] = '\0';
    cJSON_ReplaceItemInObjectCaseSensitive(cfg, "system_prompt", cJSON_CreateString(big));
    big[1000] = '\0';
    cJSON_ReplaceItemInObjectCaseSensitive(cfg, "greeting", cJSON_CreateString(big));
    cJSON_AddItemToObject(cfg, "closing", cJSON_CreateString(big));
    big[500] = '\0';
    cJSON_ReplaceItemInObjectCaseSensitive(question(cfg, 0), "text", cJSON_CreateString(big));
    cJSON_ReplaceItemInObjectCaseSensitive(cJSON_GetArrayItem(member(cfg, "expected_outcomes"), 0),
                                           "description", cJSON_CreateString(big));
    CHECK(run(cfg) == CR_OK);
    CHECK_STR(got, "");
    big[500] = 'p';
    big[501] = '\0';
    cJSON_ReplaceItemInObjectCaseSensitive(question(cfg, 0), "text", cJSON_CreateString(big));
    CHECK_ERRORS(cfg, "questions[0].text: must be at most 500 characters (got 501)\n");
}

static void test_text_encoding(void)
{
    cJSON *cfg = base();
    cJSON_ReplaceItemInObjectCaseSensitive(cfg, "name", cJSON_CreateString("bad \xff byte"));
    cJSON_ReplaceItemInObjectCaseSensitive(cfg, "greeting",
                                           cJSON_CreateString("overlong \xc0\xaf slash"));
    cJSON_ReplaceItemInObjectCaseSensitive(cfg, "system_prompt",
                                           cJSON_CreateString("surrogate \xed\xa0\x80"));
    cJSON_ReplaceItemInObjectCaseSensitive(question(cfg, 0), "text",
                                           cJSON_CreateString("bell \a here"));
    CHECK_ERRORS(cfg, "name: must be valid UTF-8\n"
                      "system_prompt: must be valid UTF-8\n"
                      "greeting: must be valid UTF-8\n"
                      "questions[0].text: must not contain control characters\n");

    /* Line breaks: fine in prompts, not in single-line fields. */
    cfg = base();
    put(cfg, "system_prompt", "\"Line one.\\nLine two.\\r\\n\\tIndented.\"");
    put(cfg, "name", "\"Two\\nlines\"");
    put(member(cfg, "voice"), "voice", "\"alice\\t\"");
    CHECK_ERRORS(cfg, "name: must not contain control characters or line breaks\n"
                      "voice.voice: must not contain control characters or line breaks\n");

    /* Non-ASCII text is fine. */
    cfg = base();
    put(cfg, "greeting", "\"Grüezi {{first_name}}, ça va? 你好 😀\"");
    CHECK(run(cfg) == CR_OK);
    CHECK_STR(got, "");
    cJSON_Delete(cfg);
}

static void test_variables(void)
{
    cJSON *cfg = base();
    put(cfg, "greeting", "\"Hi {{frist_name}}!\"");
    put(cfg, "system_prompt", "\"You call {{first_name\"");
    put(question(cfg, 1), "text", "\"{{ attributes. }}\"");
    put(question(cfg, 2), "text", "\"{{attributes..x}} {{attributes.x.}}\"");
    put(cfg, "closing", "\"Bye {{first-name}}\"");
    CHECK_ERRORS(cfg, "system_prompt: unclosed {{ at offset 9\n"
                      "greeting: unknown variable {{frist_name}} (allowed: first_name, last_name, "
                      "email, phone, external_id, attributes.*)\n"
                      "questions[1].text: unknown variable {{attributes.}} (allowed: first_name, "
                      "last_name, email, phone, external_id, attributes.*)\n"
                      "questions[2].text: unknown variable {{attributes..x}} (allowed: "
                      "first_name, last_name, email, phone, external_id, attributes.*)\n"
                      "closing: invalid character '-' in variable name at offset 11\n");

    /* Variables are only read in spoken and prompt texts: elsewhere
     * braces are plain characters. */
    cfg = base();
    put(cfg, "name", "\"{{nope}}\"");
    put(cJSON_GetArrayItem(member(cfg, "expected_outcomes"), 0), "description", "\"{{nope}}\"");
    CHECK(run(cfg) == CR_OK);
    cJSON_Delete(cfg);
}

static void test_enums(void)
{
    cJSON *cfg = base();
    put(cfg, "campaign_type", "\"Research\"");
    put(question(cfg, 0), "type", "\"free_text\"");
    put(cfg, "machine_detection", "\"Enable\"");
    put(cfg, "agent", "{\"mode\": \"relay\", \"url\": \"wss://a.example.com/\"}");
    CHECK_ERRORS(cfg, "campaign_type: must be one of \"research\", \"outbound_sales\"\n"
                      "questions[0].type: must be one of \"open\", \"yes_no\", \"scale\", "
                      "\"choice\"\n"
                      "machine_detection: must be one of \"none\", \"enable\", "
                      "\"detect_message_end\"\n"
                      "agent.mode: must be one of \"conversation_relay\", \"stream\"\n");

    cfg = base();
    put(cfg, "campaign_type", "\"outbound_sales\"");
    put(cfg, "machine_detection", "\"none\"");
    put(cfg, "agent", "{\"mode\": \"conversation_relay\", \"url\": \"wss://a.example.com/\"}");
    CHECK(run(cfg) == CR_OK);
    cJSON_Delete(cfg);
}

static void test_questions(void)
{
    /* choices: required iff type is choice; scale likewise. */
    cJSON *cfg = base();
    cJSON_DeleteItemFromObjectCaseSensitive(question(cfg, 1), "choices");
    cJSON_DeleteItemFromObjectCaseSensitive(question(cfg, 2), "scale");
    put(question(cfg, 0), "choices", "[\"A\", \"B\"]");
    put(question(cfg, 0), "scale", "{\"min\": 1, \"max\": 5}");
    CHECK_ERRORS(cfg, "questions[0].choices: is only allowed when type is \"choice\"\n"
                      "questions[0].scale: is only allowed when type is \"scale\"\n"
                      "questions[1].choices: is required when type is \"choice\"\n"
                      "questions[2].scale: is required when type is \"scale\"\n");

    /* With an invalid type the conditional rules stay quiet, the content is
     * still checked. */
    cfg = base();
    put(question(cfg, 1), "type", "\"multi\"");
    put(question(cfg, 1), "choices", "[\"A\"]");
    cJSON_DeleteItemFromObjectCaseSensitive(question(cfg, 2), "type");
    CHECK_ERRORS(cfg, "questions[1].type: must be one of \"open\", \"yes_no\", \"scale\", "
                      "\"choice\"\n"
                      "questions[1].choices: must have 2 to 9 items (got 1)\n"
                      "questions[2].type: is required\n");

    /* choices: count, item length, uniqueness ignoring case. */
    cfg = base();
    put(question(cfg, 1), "choices",
        "[\"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\", \"9\", \"10\"]");
    CHECK_ERRORS(cfg, "questions[1].choices: must have 2 to 9 items (got 10)\n");
    cfg = base();
    put(question(cfg, 1), "choices", "[\"Yes\", \"No\", \"yes\", \"\", \"no\"]");
    CHECK_ERRORS(cfg, "questions[1].choices[2]: duplicates questions[1].choices[0]\n"
                      "questions[1].choices[3]: must not be empty\n"
                      "questions[1].choices[4]: duplicates questions[1].choices[1]\n");

    /* scale: range, integers, min < max. */
    cfg = base();
    put(question(cfg, 2), "scale", "{\"min\": 5, \"max\": 5}");
    CHECK_ERRORS(cfg, "questions[2].scale.max: must be greater than min (5)\n");
    cfg = base();
    put(question(cfg, 2), "scale", "{\"min\": -1, \"max\": 11}");
    CHECK_ERRORS(cfg, "questions[2].scale.min: must be between 0 and 10\n"
                      "questions[2].scale.max: must be between 0 and 10\n");
    cfg = base();
    put(question(cfg, 2), "scale", "{\"min\": 0.5, \"max_label\": \"\"}");
    CHECK_ERRORS(cfg, "questions[2].scale.min: must be an integer\n"
                      "questions[2].scale.max_label: must not be empty\n"
                      "questions[2].scale.max: is required\n");

    /* ids: slug syntax, uniqueness. */
    cfg = base();
    put(question(cfg, 0), "id", "\"Q-1\"");
    put(question(cfg, 2), "id", "\"q2\"");
    put(question(cfg, 1), "text", "\"x\"");
    CHECK_ERRORS(cfg, "questions[0].id: must contain only a-z, 0-9 and _\n"
                      "questions[2].id: duplicates questions[1].id\n");
    cfg = base();
    char id[80];
    memset(id, 'a', 65);
    id[65] = '\0';
    cJSON_ReplaceItemInObjectCaseSensitive(question(cfg, 0), "id", cJSON_CreateString(id));
    CHECK_ERRORS(cfg, "questions[0].id: must be at most 64 characters (got 65)\n");

    /* Count: 1..20. */
    cfg = base();
    put(cfg, "questions", "[]");
    CHECK_ERRORS(cfg, "questions: must have 1 to 20 items (got 0)\n");
    cfg = base();
    cJSON *qs = cJSON_CreateArray();
    for (int i = 0; i < 21; i++) {
        char q[96];
        snprintf(q, sizeof(q),
                 "{\"id\": \"q%d\", \"text\": \"Question %d?\", \"type\": \"yes_no\"}", i, i);
        cJSON_AddItemToArray(qs, cJSON_Parse(q));
    }
    cJSON_ReplaceItemInObjectCaseSensitive(cfg, "questions", qs);
    CHECK_ERRORS(cfg, "questions: must have 1 to 20 items (got 21)\n");
    cfg = base();
    cJSON_DeleteItemFromArray(member(cfg, "questions"), 0);
    qs = member(cfg, "questions");
    while (cJSON_GetArraySize(qs) > 1)
        cJSON_DeleteItemFromArray(qs, 1);
    CHECK(run(cfg) == CR_OK); /* one question is enough */
    cJSON_Delete(cfg);
}

static void test_outcomes(void)
{
    cJSON *cfg = base();
    put(cfg, "expected_outcomes",
        "[{\"id\": \"booked\", \"description\": \"Booked.\", \"success\": true},"
        " {\"id\": \"booked\", \"description\": \"Again.\"},"
        " {\"id\": \"x\", \"description\": \"  \"},"
        " {\"description\": \"No id.\"}]");
    CHECK_ERRORS(cfg, "expected_outcomes[1].id: duplicates expected_outcomes[0].id\n"
                      "expected_outcomes[2].description: must not be blank\n"
                      "expected_outcomes[3].id: is required\n");

    cfg = base();
    put(cfg, "expected_outcomes", "[]");
    CHECK_ERRORS(cfg, "expected_outcomes: must have 1 to 20 items (got 0)\n");
}

static void test_voice(void)
{
    static const char *const good_langs[] = {"en-US", "es-419", "zh-Hant-TW", "fr", "yue-HK"};
    static const char *const good_voices[] = {"alice", "Polly.Joanna-Neural",
                                              "Google.en-US-Chirp3-HD-Aoede", "man"};
    for (size_t i = 0; i < sizeof(good_langs) / sizeof(good_langs[0]); i++) {
        cJSON *cfg = base();
        cJSON_ReplaceItemInObjectCaseSensitive(member(cfg, "voice"), "language",
                                               cJSON_CreateString(good_langs[i]));
        cJSON_ReplaceItemInObjectCaseSensitive(
            member(cfg, "voice"), "voice",
            cJSON_CreateString(good_voices[i % (sizeof(good_voices) / sizeof(good_voices[0]))]));
        CHECK(run(cfg) == CR_OK);
        CHECK_STR(got, "");
        cJSON_Delete(cfg);
    }

    cJSON *cfg = base();
    put(cfg, "voice",
        "{\"language\": \"english\", \"voice\": \"Polly Joanna\", "
        "\"speaking_rate\": 2.5}");
    CHECK_ERRORS(cfg, "voice.language: must be a BCP-47 language tag such as \"en-US\"\n"
                      "voice.voice: must be a voice name such as \"Polly.Joanna-Neural\" or "
                      "\"alice\" (letters, digits, '.', '-', '_')\n"
                      "voice.speaking_rate: must be between 0.5 and 2.0\n");

    cfg = base();
    put(cfg, "voice", "{\"language\": \"en-\", \"voice\": \".hidden\", \"speaking_rate\": 0.4}");
    CHECK_ERRORS(cfg, "voice.language: must be a BCP-47 language tag such as \"en-US\"\n"
                      "voice.voice: must be a voice name such as \"Polly.Joanna-Neural\" or "
                      "\"alice\" (letters, digits, '.', '-', '_')\n"
                      "voice.speaking_rate: must be between 0.5 and 2.0\n");

    cfg = base();
    put(cfg, "voice", "{\"language\": \"en-US\", \"voice\": \"alice\", \"speaking_rate\": 0.5}");
    CHECK(run(cfg) == CR_OK);
    cJSON_Delete(cfg);
}

static void test_numbers(void)
{
    cJSON *cfg = base();
    put(cfg, "max_duration_seconds", "29");
    CHECK_ERRORS(cfg, "max_duration_seconds: must be between 30 and 3600\n");
    cfg = base();
    put(cfg, "max_duration_seconds", "3601");
    CHECK_ERRORS(cfg, "max_duration_seconds: must be between 30 and 3600\n");
    cfg = base();
    put(cfg, "max_duration_seconds", "60.5");
    CHECK_ERRORS(cfg, "max_duration_seconds: must be an integer\n");
    cfg = base();
    put(cfg, "max_duration_seconds", "1e300");
    CHECK_ERRORS(cfg, "max_duration_seconds: must be between 30 and 3600\n");
    cfg = base();
    put(cfg, "max_duration_seconds", "3600");
    put(cfg, "max_duration_seconds", "3600.0"); /* an integral number */
    CHECK(run(cfg) == CR_OK);
    cJSON_Delete(cfg);
}

/* Expects agent.url = url to give message ("" when valid). */
static void check_url(const char *url, const char *message)
{
    cJSON *cfg = base();
    cJSON *agent = cJSON_CreateObject();
    cJSON_AddStringToObject(agent, "mode", "conversation_relay");
    cJSON_AddStringToObject(agent, "url", url);
    cJSON_AddItemToObject(cfg, "agent", agent);
    char expected[256] = "";
    if (*message)
        snprintf(expected, sizeof(expected), "agent.url: %s\n", message);
    CHECK(run(cfg) == (*message ? CR_EINVAL : CR_OK));
    if (strcmp(got, expected) != 0)
        fprintf(stderr, "  url: %s\n", url);
    CHECK_STR(got, expected);
    cJSON_Delete(cfg);
}

static void test_agent_url(void)
{
    check_url("wss://agent.example.com", "");
    check_url("wss://agent.example.com/", "");
    check_url("wss://agent.example.com:443/relay?tenant=7&lang=en-US", "");
    check_url("WSS://Agent.Example.COM/path", "");
    check_url("wss://203.0.113.7:8080/ws", "");
    check_url("wss://[2001:db8::1]:8443/ws", "");
    check_url("wss://voice-agent.eu-1.example.co.uk/a%2Fb", "");

    check_url("https://agent.example.com/", "must be a wss:// URL");
    check_url("agent.example.com", "must be a wss:// URL");
    check_url("ws://agent.example.com/", "must use wss:// (TLS), not ws://");
    check_url("wss://", "must have a valid host name or IP address");
    check_url("wss:///path", "must have a valid host name or IP address");
    check_url("wss://localhost/ws", "must have a valid host name or IP address");
    check_url("wss://agent/ws", "must have a valid host name or IP address");
    check_url("wss://-bad.example.com/", "must have a valid host name or IP address");
    check_url("wss://a..example.com/", "must have a valid host name or IP address");
    check_url("wss://example.com./", "must have a valid host name or IP address");
    check_url("wss://under_score.example.com/", "must have a valid host name or IP address");
    check_url("wss://999.1.1.1/", "must have a valid host name or IP address");
    check_url("wss://10.0.0/", "must have a valid host name or IP address");
    check_url("wss://[nothex]/", "must have a valid host name or IP address");
    check_url("wss://[2001:db8::1/", "must have a valid host name or IP address");
    check_url("wss://[2001:db8::1]x/", "must have a valid host name or IP address");
    check_url("wss://user:pass@agent.example.com/", "must not contain credentials (user@host)");
    check_url("wss://agent.example.com/ws#frag", "must not contain a #fragment");
    check_url("wss://agent.example.com:0/", "must have a valid port (1-65535)");
    check_url("wss://agent.example.com:65536/", "must have a valid port (1-65535)");
    check_url("wss://agent.example.com:/", "must have a valid port (1-65535)");
    check_url("wss://agent.example.com:80a/", "must have a valid port (1-65535)");
    check_url("wss://agent.example.com:0000443/", "must have a valid port (1-65535)");
    check_url("wss://agent.example.com/a b", "contains a character that must be percent-encoded");
    check_url("wss://agent.example.com/<x>", "contains a character that must be percent-encoded");
    check_url("wss://agent.example.com/ü", "contains a character that must be percent-encoded");
    check_url("wss://agent.example.com/%zz", "has a % not followed by two hex digits");
    check_url("wss://agent.example.com/%2", "has a % not followed by two hex digits");

    /* Length is counted before syntax. */
    char url[2100] = "wss://agent.example.com/";
    size_t len = strlen(url);
    memset(url + len, 'a', 2049 - len);
    url[2049] = '\0';
    check_url(url, "must be at most 2048 characters (got 2049)");
    url[2048] = '\0';
    check_url(url, "");

    /* mode and url are both required. */
    cJSON *cfg = base();
    put(cfg, "agent", "{}");
    CHECK_ERRORS(cfg, "agent.mode: is required\n"
                      "agent.url: is required\n");
}

static void test_multiple_errors_in_order(void)
{
    CHECK(run_text("{\"name\": \"\", \"campaign_type\": \"research\", \"oops\": 1, "
                   "\"system_prompt\": \"Hi {{bad}}\", \"greeting\": \"Hello\", "
                   "\"questions\": [{\"id\": \"a\", \"text\": \"Q?\", \"type\": \"choice\"}, "
                   "{\"id\": \"a\", \"text\": \"Q2?\", \"type\": \"scale\", "
                   "\"scale\": {\"min\": 3, \"max\": 2}}, "
                   "{\"id\": \"c\", \"text\": \"Q3?\", \"type\": \"open\", \"choices\": 1}], "
                   "\"voice\": {\"language\": \"en-US\", \"voice\": \"alice\", "
                   "\"speaking_rate\": 9}, "
                   "\"agent\": {\"mode\": \"stream\", \"url\": \"http://x.example.com\"}}") ==
          CR_EINVAL);
    CHECK_STR(got, "name: must not be empty\n"
                   "oops: unknown field\n"
                   "system_prompt: unknown variable {{bad}} (allowed: first_name, last_name, "
                   "email, phone, external_id, attributes.*)\n"
                   "questions[0].choices: is required when type is \"choice\"\n"
                   "questions[1].scale.max: must be greater than min (3)\n"
                   "questions[1].id: duplicates questions[0].id\n"
                   "questions[2].choices: is only allowed when type is \"choice\"\n"
                   "voice.speaking_rate: must be between 0.5 and 2.0\n"
                   "agent.url: must be a wss:// URL\n"
                   "expected_outcomes: is required\n");
}

static void test_error_cap(void)
{
    /* 150 bad choices would be 150 errors: the list stops at the cap and
     * says so. */
    cJSON *cfg = base();
    cJSON *qs = member(cfg, "questions");
    for (int i = 0; i < 150; i++)
        cJSON_AddItemToArray(qs, cJSON_CreateNumber(i));
    cJSON *errors = NULL;
    CHECK(agent_validate(cfg, &errors) == CR_EINVAL);
    REQUIRE(cJSON_IsArray(errors));
    CHECK(cJSON_GetArraySize(errors) == AGENT_MAX_ERRORS + 1);
    cJSON *first = cJSON_GetArrayItem(errors, 0);
    cJSON *last = cJSON_GetArrayItem(errors, AGENT_MAX_ERRORS);
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(first, "field")), "questions");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(first, "message")),
              "must have 1 to 20 items (got 153)");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(last, "field")), "");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(last, "message")),
              "too many errors; only the first 100 are listed");
    cJSON *before = cJSON_GetArrayItem(errors, AGENT_MAX_ERRORS - 1);
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(before, "field")),
              "questions[101]");
    cJSON_Delete(errors);
    cJSON_Delete(cfg);
}

int main(void)
{
    RUN(test_minimal_valid);
    RUN(test_templates_valid);
    RUN(test_list_and_find);
    RUN(test_not_object);
    RUN(test_missing_required);
    RUN(test_unknown_and_duplicate_keys);
    RUN(test_wrong_types);
    RUN(test_text_lengths);
    RUN(test_text_encoding);
    RUN(test_variables);
    RUN(test_enums);
    RUN(test_questions);
    RUN(test_outcomes);
    RUN(test_voice);
    RUN(test_numbers);
    RUN(test_agent_url);
    RUN(test_multiple_errors_in_order);
    RUN(test_error_cap);
    return check_summary();
}
