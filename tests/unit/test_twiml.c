/* test_twiml.c - tests for the voice call TwiML builder (common/twiml.c). */
#include <stdio.h>
#include <string.h>

#include "agent.h"
#include "check.h"
#include "twiml.h"

#define HEAD "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>"
#define GATHER_URL "https://crier.example/v1/webhooks/7/twilio/gather?delivery=42"
#define SAY "<Say voice=\"Polly.Joanna-Neural\" language=\"en-US\">"

/* A scripted config: every text has a character XML must escape. */
static const char scripted[] =
    "{\"name\": \"Survey\", \"campaign_type\": \"research\","
    " \"system_prompt\": \"Ask the questions.\","
    " \"greeting\": \"Hi {{first_name|there}} & welcome\","
    " \"questions\": ["
    "  {\"id\": \"q1\", \"type\": \"yes_no\", \"text\": \"Is <now> a \\\"good\\\" time?\"},"
    "  {\"id\": \"q2\", \"type\": \"choice\", \"text\": \"Pick one\","
    "   \"choices\": [\"Tom & Jerry\", \"Other\"]},"
    "  {\"id\": \"q3\", \"type\": \"scale\", \"text\": \"Rate us, {{attributes.city}}\","
    "   \"scale\": {\"min\": 1, \"max\": 5}}],"
    " \"closing\": \"That's all, bye\","
    " \"expected_outcomes\": [{\"id\": \"done\", \"description\": \"Answered\"}],"
    " \"voice\": {\"language\": \"en-US\", \"voice\": \"Polly.Joanna-Neural\"}}";

static const char *lookup(void *ctx, const char *name, size_t n)
{
    (void)ctx;
    if (n == 10 && !strncmp(name, "first_name", n))
        return "O'Brien <Jr>";
    if (n == 15 && !strncmp(name, "attributes.city", n))
        return "Bath\x01"; /* a control character from customer data */
    return NULL;
}

static cJSON *config(const char *json, const char *agent_json)
{
    cJSON *c = cJSON_Parse(json);
    if (c && agent_json)
        cJSON_AddItemToObject(c, "agent", cJSON_Parse(agent_json));
    /* The builder reads what the validator admits, nothing else. */
    CHECK(agent_validate(c, NULL) == CR_OK);
    return c;
}

static void test_escape(void)
{
    struct buf b;
    buf_init(&b, 1024);
    REQUIRE(twiml_escape(&b, "a&b<c>\"d'e\x01\tf\xc3\xa9") == CR_OK);
    CHECK_STR(buf_str(&b), "a&amp;b&lt;c&gt;&quot;d&apos;e \tf\xc3\xa9");
    buf_cleanup(&b);
}

static void test_question_flow(void)
{
    cJSON *agent = config(scripted, NULL);
    struct twiml_call c = {agent, GATHER_URL, lookup, NULL, 7, 42};
    struct buf b;
    buf_init(&b, 1 << 16);
    CHECK(twiml_questions(agent) == 3);

    REQUIRE(twiml_answer(&c, &b) == CR_OK);
    CHECK_STR(buf_str(&b),
              HEAD SAY "Hi O&apos;Brien &lt;Jr&gt; &amp; welcome</Say>"
                       "<Gather input=\"speech dtmf\" action=\"" GATHER_URL "&amp;q=0\""
                       " method=\"POST\" language=\"en-US\" speechTimeout=\"auto\""
                       " actionOnEmptyResult=\"true\" numDigits=\"1\">" SAY
                       "Is &lt;now&gt; a &quot;good&quot; time?</Say></Gather>"
                       "<Redirect method=\"POST\">" GATHER_URL "&amp;q=0</Redirect></Response>");

    buf_reset(&b);
    REQUIRE(twiml_next(&c, 0, &b) == CR_OK);
    CHECK_STR(buf_str(&b),
              HEAD "<Gather input=\"speech dtmf\" action=\"" GATHER_URL "&amp;q=1\""
                   " method=\"POST\" language=\"en-US\" speechTimeout=\"auto\""
                   " actionOnEmptyResult=\"true\" numDigits=\"1\" hints=\"Tom &amp; Jerry, "
                   "Other\">" SAY "Pick one</Say></Gather>"
                   "<Redirect method=\"POST\">" GATHER_URL "&amp;q=1</Redirect></Response>");

    buf_reset(&b);
    REQUIRE(twiml_next(&c, 1, &b) == CR_OK);
    CHECK(strstr(buf_str(&b), "&amp;q=2\"") != NULL);
    CHECK(strstr(buf_str(&b), "numDigits") == NULL); /* a scale takes 1..10, then # */
    CHECK(strstr(buf_str(&b), "Rate us, Bath </Say>") != NULL);

    /* After the last question, and for anything out of range: the closing. */
    static const char closing[] = HEAD SAY "That&apos;s all, bye</Say><Hangup/></Response>";
    for (int q = 2; q <= 3; q++) {
        buf_reset(&b);
        REQUIRE(twiml_next(&c, q, &b) == CR_OK);
        CHECK_STR(buf_str(&b), closing);
    }
    buf_reset(&b);
    REQUIRE(twiml_next(&c, -1, &b) == CR_OK);
    CHECK_STR(buf_str(&b), closing);

    /* Without a closing, just the hang-up. */
    cJSON_DeleteItemFromObject(agent, "closing");
    buf_reset(&b);
    REQUIRE(twiml_next(&c, 2, &b) == CR_OK);
    CHECK_STR(buf_str(&b), HEAD "<Hangup/></Response>");

    buf_cleanup(&b);
    cJSON_Delete(agent);
}

static void test_connect_modes(void)
{
    struct buf b;
    buf_init(&b, 1 << 16);
    cJSON *agent = config(scripted, "{\"mode\": \"conversation_relay\","
                                    " \"url\": \"wss://ai.example/relay?a=1&b='2'\"}");
    struct twiml_call c = {agent, GATHER_URL, lookup, NULL, 7, 42};
    REQUIRE(twiml_answer(&c, &b) == CR_OK);
    CHECK_STR(buf_str(&b),
              HEAD "<Connect action=\"" GATHER_URL "\" method=\"POST\">"
                   "<ConversationRelay url=\"wss://ai.example/relay?a=1&amp;b=&apos;2&apos;\""
                   " welcomeGreeting=\"Hi O&apos;Brien &lt;Jr&gt; &amp; welcome\""
                   " language=\"en-US\"><Parameter name=\"tenant\" value=\"7\"/>"
                   "<Parameter name=\"delivery\" value=\"42\"/></ConversationRelay></Connect>"
                   "</Response>");
    /* The Connect action comes back when the agent is done: hang up. */
    buf_reset(&b);
    REQUIRE(twiml_next(&c, -1, &b) == CR_OK);
    CHECK_STR(buf_str(&b), HEAD "<Hangup/></Response>");
    cJSON_Delete(agent);

    agent = config(scripted, "{\"mode\": \"stream\", \"url\": \"wss://ai.example:8443/s\"}");
    c.agent = agent;
    buf_reset(&b);
    REQUIRE(twiml_answer(&c, &b) == CR_OK);
    CHECK_STR(buf_str(&b), HEAD "<Connect action=\"" GATHER_URL "\" method=\"POST\">"
                                "<Stream url=\"wss://ai.example:8443/s\">"
                                "<Parameter name=\"tenant\" value=\"7\"/>"
                                "<Parameter name=\"delivery\" value=\"42\"/></Stream></Connect>"
                                "</Response>");
    cJSON_Delete(agent);
    buf_cleanup(&b);
}

static void test_failures_leave_buffer(void)
{
    struct buf b;
    buf_init(&b, 1 << 16);
    REQUIRE(buf_puts(&b, "keep") == CR_OK);

    /* A config without what the document needs. */
    cJSON *agent = cJSON_Parse("{\"questions\": [{\"text\": \"x\", \"type\": \"open\"}]}");
    struct twiml_call c = {agent, GATHER_URL, NULL, NULL, 1, 1};
    CHECK(twiml_answer(&c, &b) == CR_EINVAL); /* no greeting */
    CHECK_STR(buf_str(&b), "keep");
    cJSON_AddStringToObject(agent, "greeting", "Hi {{first_name");
    CHECK(twiml_answer(&c, &b) == CR_EINVAL); /* a text that does not render */
    CHECK_STR(buf_str(&b), "keep");
    cJSON_AddItemToObject(agent, "agent", cJSON_Parse("{\"mode\": \"telepathy\"}"));
    CHECK(twiml_answer(&c, &b) == CR_EINVAL);
    CHECK_STR(buf_str(&b), "keep");
    cJSON_Delete(agent);

    /* Past the buffer's maximum. */
    agent = config(scripted, NULL);
    c.agent = agent;
    struct buf small;
    buf_init(&small, 100);
    CHECK(twiml_answer(&c, &small) == CR_ETOOBIG);
    CHECK(small.len == 0);
    buf_cleanup(&small);
    cJSON_Delete(agent);
    buf_cleanup(&b);
}

static void test_hangup(void)
{
    struct buf b;
    buf_init(&b, 1024);
    REQUIRE(twiml_hangup("Sorry & goodbye", "en-US", NULL, &b) == CR_OK);
    CHECK_STR(buf_str(&b),
              HEAD "<Say language=\"en-US\">Sorry &amp; goodbye</Say><Hangup/></Response>");
    buf_reset(&b);
    REQUIRE(twiml_hangup(NULL, NULL, NULL, &b) == CR_OK);
    CHECK_STR(buf_str(&b), HEAD "<Hangup/></Response>");
    buf_cleanup(&b);
}

/* Every '&' starts one of the five entities, and every question is asked. */
static bool well_escaped(const char *doc)
{
    static const char *const ents[] = {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"};
    for (const char *p = strchr(doc, '&'); p; p = strchr(p + 1, '&')) {
        bool ok = false;
        for (size_t i = 0; i < sizeof(ents) / sizeof(ents[0]); i++)
            ok |= strncmp(p, ents[i], strlen(ents[i])) == 0;
        if (!ok)
            return false;
    }
    return true;
}

static void test_builtin_templates(void)
{
    size_t n = 0;
    const struct agent_template *t = agent_templates(&n);
    REQUIRE(n > 0);
    struct buf b;
    buf_init(&b, 1 << 20);
    for (size_t i = 0; i < n; i++) {
        cJSON *agent = cJSON_Parse(t[i].json);
        struct twiml_call c = {agent, GATHER_URL, lookup, NULL, 7, 42};
        buf_reset(&b);
        REQUIRE(twiml_answer(&c, &b) == CR_OK);
        CHECK(well_escaped(buf_str(&b)));
        int asked = strstr(buf_str(&b), "&amp;q=0\"") ? 1 : 0;
        for (int q = 0; q < twiml_questions(agent); q++) {
            buf_reset(&b);
            REQUIRE(twiml_next(&c, q, &b) == CR_OK);
            CHECK(well_escaped(buf_str(&b)));
            char want[32];
            snprintf(want, sizeof(want), "&amp;q=%d\"", q + 1);
            asked += strstr(buf_str(&b), want) != NULL;
        }
        CHECK(asked == twiml_questions(agent));
        CHECK(strstr(buf_str(&b), "<Hangup/></Response>") != NULL);
        cJSON_Delete(agent);
    }
    buf_cleanup(&b);
}

int main(void)
{
    RUN(test_escape);
    RUN(test_question_flow);
    RUN(test_connect_modes);
    RUN(test_failures_leave_buffer);
    RUN(test_hangup);
    RUN(test_builtin_templates);
    return check_summary();
}
