/* test_provider.c - unit tests for common/provider.c (Twilio SMS wire format,
 * outcome classification, Retry-After). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "provider.h"

/* ---------------------------------------------------------------- forms */

#define CHECK_FORM(name, value, expected)                                                          \
    do {                                                                                           \
        struct buf b_;                                                                             \
        buf_init(&b_, 1024);                                                                       \
        CHECK(form_add(&b_, (name), (value)) == CR_OK);                                            \
        CHECK_STR(buf_str(&b_), (expected));                                                       \
        buf_cleanup(&b_);                                                                          \
    } while (0)

static void test_form_escape(void)
{
    CHECK_FORM("a", "b", "a=b");
    CHECK_FORM("k", "", "k=");
    CHECK_FORM("Body", "hello world", "Body=hello+world");
    CHECK_FORM("u", "AZaz09-_.~", "u=AZaz09-_.~");
    CHECK_FORM("r", "a&b=c+d%e", "r=a%26b%3Dc%2Bd%25e");
    CHECK_FORM("r", "/?#[]@!$'()*,;:", "r=%2F%3F%23%5B%5D%40%21%24%27%28%29%2A%2C%3B%3A");
    CHECK_FORM("r", "\"<>\\^`{|}", "r=%22%3C%3E%5C%5E%60%7B%7C%7D");
    CHECK_FORM("c", "\n\r\t\x7f", "c=%0A%0D%09%7F");
    CHECK_FORM("Body", "Zürich", "Body=Z%C3%BCrich");
    CHECK_FORM("Body", "\xF0\x9F\x98\x80", "Body=%F0%9F%98%80"); /* U+1F600, 4 bytes */
    CHECK_FORM("Body", "+", "Body=%2B");                         /* a real plus is not a space */
    /* The name is escaped too. */
    CHECK_FORM("a b&c", "v", "a+b%26c=v");
}

static void test_form_join(void)
{
    struct buf b;
    buf_init(&b, 1024);
    CHECK(form_add(&b, "a", "1") == CR_OK);
    CHECK(form_add(&b, "b", "2 3") == CR_OK);
    CHECK(form_add(&b, "c", "") == CR_OK);
    CHECK_STR(buf_str(&b), "a=1&b=2+3&c=");
    buf_cleanup(&b);

    /* The buffer limit is reported. */
    buf_init(&b, 8);
    CHECK(form_add(&b, "k", "12345") == CR_OK); /* "k=12345" */
    CHECK(form_add(&b, "x", "y") == CR_ETOOBIG);
    buf_cleanup(&b);
    buf_init(&b, 8);
    CHECK(form_add(&b, "k", "1234\xC3\xBC") == CR_ETOOBIG); /* escaping makes it 12 */
    buf_cleanup(&b);
}

static void test_call_form(void)
{
    struct buf b;
    buf_init(&b, 4096);
    CHECK(twilio_call_form(&b, "+15551234567", "+15557654321",
                           "https://crier.example/v1/webhooks/3/twilio/voice?delivery=42", NULL,
                           NULL) == CR_OK);
    CHECK_STR(buf_str(&b), "To=%2B15551234567&From=%2B15557654321&Url=https%3A%2F%2Fcrier.example"
                           "%2Fv1%2Fwebhooks%2F3%2Ftwilio%2Fvoice%3Fdelivery%3D42");
    buf_reset(&b);
    CHECK(twilio_call_form(&b, "+1", "+2", "u", "s", "DetectMessageEnd") == CR_OK);
    CHECK_STR(buf_str(&b), "To=%2B1&From=%2B2&Url=u&StatusCallback=s"
                           "&StatusCallbackEvent=initiated&StatusCallbackEvent=ringing"
                           "&StatusCallbackEvent=answered&StatusCallbackEvent=completed"
                           "&MachineDetection=DetectMessageEnd&AsyncAmd=true");
    buf_cleanup(&b);
}

static void test_sendgrid_json(void)
{
    char *j =
        sendgrid_mail_json("ann@example.com", "news@shop.example", "Shop", NULL, "Hi Ann", "Hello",
                           "<p>Hello</p>", "https://crier.example/v1/unsubscribe?token=t", 42, 7);
    REQUIRE(j);
    CHECK_STR(j, "{\"personalizations\":[{\"to\":[{\"email\":\"ann@example.com\"}],"
                 "\"custom_args\":{\"delivery_id\":\"42\",\"tenant_id\":\"7\"}}],"
                 "\"from\":{\"email\":\"news@shop.example\",\"name\":\"Shop\"},"
                 "\"subject\":\"Hi Ann\",\"content\":[{\"type\":\"text/plain\",\"value\":"
                 "\"Hello\"},{\"type\":\"text/html\",\"value\":\"<p>Hello</p>\"}],"
                 "\"headers\":{\"List-Unsubscribe\":"
                 "\"<https://crier.example/v1/unsubscribe?token=t>\",\"List-Unsubscribe-Post\":"
                 "\"List-Unsubscribe=One-Click\"}}");
    free(j);
    /* HTML only, a reply-to, no unsubscribe URL. */
    j = sendgrid_mail_json("a@b.c", "f@b.c", NULL, "r@b.c", "S", NULL, "<b>x</b>", NULL, 1, 2);
    REQUIRE(j);
    CHECK(strstr(j, "\"reply_to\":{\"email\":\"r@b.c\"}") != NULL);
    CHECK(strstr(j, "text/plain") == NULL && strstr(j, "text/html") != NULL);
    CHECK(strstr(j, "headers") == NULL);
    free(j);
}

static void test_sendgrid_classify(void)
{
    struct send_result r;
    sendgrid_classify(202, "", 0, "14c5d75ce93.dfd.64b469.filter0001", 0, &r);
    CHECK(r.outcome == SEND_OK);
    CHECK_STR(r.provider_id, "14c5d75ce93.dfd.64b469.filter0001");
    sendgrid_classify(202, "", 0, NULL, 0, &r);
    CHECK(r.outcome == SEND_UNKNOWN);
    const char *e400 = "{\"errors\":[{\"message\":\"Invalid email\",\"field\":"
                       "\"personalizations.0.to.0.email\",\"help\":null}]}";
    sendgrid_classify(400, e400, strlen(e400), NULL, 0, &r);
    CHECK(r.outcome == SEND_FAILED);
    CHECK_STR(r.code, "http_400");
    CHECK_STR(r.message, "personalizations.0.to.0.email: Invalid email");
    sendgrid_classify(403, "{}", 2, NULL, 0, &r);
    CHECK(r.outcome == SEND_FAILED && !r.throttled);
    sendgrid_classify(429, "", 0, NULL, 5, &r);
    CHECK(r.outcome == SEND_RETRY && r.throttled && r.retry_after_s == 5);
    sendgrid_classify(503, "oops", 4, NULL, 0, &r);
    CHECK(r.outcome == SEND_RETRY && !r.throttled);
    CHECK_STR(r.message, "HTTP 503 from provider");
}

static void test_sms_form(void)
{
    struct buf b;
    buf_init(&b, 4096);
    CHECK(twilio_sms_form(&b, "+15551234567", "+15557654321", "Hi there!", NULL) == CR_OK);
    CHECK_STR(buf_str(&b), "To=%2B15551234567&From=%2B15557654321&Body=Hi+there%21");
    buf_reset(&b);

    CHECK(twilio_sms_form(&b, "+4915112345678", "MG0123456789abcdef0123456789abcdef", "x", NULL) ==
          CR_OK);
    CHECK_STR(buf_str(&b),
              "To=%2B4915112345678&MessagingServiceSid=MG0123456789abcdef0123456789abcdef&Body=x");
    buf_reset(&b);

    /* Only an "MG" prefix selects a Messaging Service. */
    CHECK(twilio_sms_form(&b, "+1", "Mg1", "x", NULL) == CR_OK);
    CHECK_STR(buf_str(&b), "To=%2B1&From=Mg1&Body=x");
    buf_reset(&b);
    CHECK(twilio_sms_form(&b, "+1", "M", "x", NULL) == CR_OK);
    CHECK_STR(buf_str(&b), "To=%2B1&From=M&Body=x");
    buf_reset(&b);
    CHECK(twilio_sms_form(&b, "+1", "CrierAlert", "x", NULL) == CR_OK); /* alphanumeric sender */
    CHECK_STR(buf_str(&b), "To=%2B1&From=CrierAlert&Body=x");
    buf_reset(&b);

    CHECK(twilio_sms_form(&b, "+15551234567", "+15557654321", "Grüße & more",
                          "https://crier.example/webhooks/twilio/status?d=42") == CR_OK);
    CHECK_STR(buf_str(&b), "To=%2B15551234567&From=%2B15557654321&Body=Gr%C3%BC%C3%9Fe+%26+more"
                           "&StatusCallback=https%3A%2F%2Fcrier.example%2Fwebhooks%2Ftwilio%2F"
                           "status%3Fd%3D42");
    buf_reset(&b);

    CHECK(twilio_sms_form(&b, "+1", "+2", "", NULL) == CR_OK);
    CHECK_STR(buf_str(&b), "To=%2B1&From=%2B2&Body=");
    buf_cleanup(&b);

    buf_init(&b, 20);
    CHECK(twilio_sms_form(&b, "+15551234567", "+15557654321", "Hi", NULL) == CR_ETOOBIG);
    buf_cleanup(&b);
}

/* ---------------------------------------------------------- classification */

static void classify(long status, const char *body, long retry_after, struct send_result *r)
{
    memset(r, 0x5a, sizeof(*r)); /* every field must be written */
    twilio_classify(status, body, body ? strlen(body) : 0, retry_after, r);
}

static void test_classify_ok(void)
{
    struct send_result r;
    classify(201,
             "{\"sid\":\"SM0123456789abcdef0123456789abcdef\",\"status\":\"queued\","
             "\"to\":\"+15551234567\",\"error_code\":null,\"num_segments\":\"1\"}",
             0, &r);
    CHECK(r.outcome == SEND_OK);
    CHECK_STR(r.provider_id, "SM0123456789abcdef0123456789abcdef");
    CHECK_STR(r.provider_status, "queued");
    CHECK_STR(r.code, "");
    CHECK_STR(r.message, "");
    CHECK(r.retry_after_s == 0);
    CHECK(!r.opt_out);

    classify(200, "{\"sid\":\"SMabc\",\"status\":\"accepted\"}", 0, &r);
    CHECK(r.outcome == SEND_OK);
    CHECK_STR(r.provider_id, "SMabc");
    CHECK_STR(r.provider_status, "accepted");

    classify(201, "{\"sid\":\"SMabc\"}", 0, &r); /* no status */
    CHECK(r.outcome == SEND_OK);
    CHECK_STR(r.provider_status, "");
}

/* 2xx without a usable sid: accepted but untraceable, never resent. */
static void test_classify_unknown(void)
{
    struct send_result r;
    static const char *const bodies[] = {
        "{\"status\":\"queued\"}",
        "{\"sid\":\"\"}",
        "{\"sid\":42}",
        "{\"sid\":null}",
        "[]",
        "<html>ok</html>",
        "",
        NULL,
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        classify(201, bodies[i], 0, &r);
        CHECK(r.outcome == SEND_UNKNOWN);
        CHECK_STR(r.provider_id, "");
        CHECK(r.message[0] != '\0');
        CHECK_STR(r.code, "http_201");
    }
}

/* Only len bytes of the body are read (it need not be NUL-terminated). */
static void test_classify_len(void)
{
    struct send_result r;
    const char body[] = "{\"sid\":\"SMabc\"}";
    twilio_classify(201, body, 10, 0, &r); /* "{\"sid\":\"SM" */
    CHECK(r.outcome == SEND_UNKNOWN);
    twilio_classify(201, body, strlen(body), 0, &r);
    CHECK(r.outcome == SEND_OK);
    CHECK_STR(r.provider_id, "SMabc");
    twilio_classify(201, body, 0, 0, &r);
    CHECK(r.outcome == SEND_UNKNOWN);
}

static void test_classify_retry(void)
{
    struct send_result r;

    classify(429, "{\"code\":20429,\"message\":\"Too Many Requests\",\"status\":429}", 30, &r);
    CHECK(r.outcome == SEND_RETRY);
    CHECK(r.retry_after_s == 30);
    CHECK_STR(r.code, "20429");
    CHECK_STR(r.message, "Too Many Requests");
    CHECK(!r.opt_out);

    classify(429, "", 7, &r);
    CHECK(r.outcome == SEND_RETRY);
    CHECK(r.retry_after_s == 7);
    CHECK_STR(r.code, "http_429");

    classify(400, "{\"code\":20429,\"message\":\"Too many concurrent requests\"}", 0, &r);
    CHECK(r.outcome == SEND_RETRY);
    CHECK_STR(r.code, "20429");

    classify(400, "{\"code\":21611,\"message\":\"queue would exceed\"}", 0, &r);
    CHECK(r.outcome == SEND_RETRY);
    CHECK_STR(r.code, "21611");
    CHECK_STR(r.message, "queue would exceed");

    classify(400, "{\"code\":30001,\"message\":\"Queue overflow\"}", 0, &r);
    CHECK(r.outcome == SEND_RETRY);
    CHECK_STR(r.code, "30001");

    classify(500, "{\"code\":20500,\"message\":\"Internal Server Error\",\"status\":500}", 0, &r);
    CHECK(r.outcome == SEND_RETRY);
    CHECK_STR(r.code, "20500");
    CHECK_STR(r.message, "Internal Server Error");

    classify(503, "", 0, &r);
    CHECK(r.outcome == SEND_RETRY);
    CHECK_STR(r.code, "http_503");
    CHECK(strstr(r.message, "503") != NULL);

    classify(502, "<html><body>Bad Gateway</body></html>", 0, &r);
    CHECK(r.outcome == SEND_RETRY);
    CHECK_STR(r.code, "http_502");
    CHECK(strstr(r.message, "502") != NULL);
    CHECK_STR(r.provider_id, "");
}

static void test_classify_failed(void)
{
    struct send_result r;

    classify(400,
             "{\"code\":21610,\"message\":\"Attempt to send to unsubscribed recipient\","
             "\"more_info\":\"https://www.twilio.com/docs/errors/21610\",\"status\":400}",
             0, &r);
    CHECK(r.outcome == SEND_FAILED);
    CHECK(r.opt_out);
    CHECK_STR(r.code, "21610");

    classify(400,
             "{\"code\":21211,\"message\":\"The 'To' number +1555 is not a valid phone number.\","
             "\"more_info\":\"https://www.twilio.com/docs/errors/21211\",\"status\":400}",
             0, &r);
    CHECK(r.outcome == SEND_FAILED);
    CHECK(!r.opt_out);
    CHECK_STR(r.code, "21211");
    CHECK_STR(r.message, "The 'To' number +1555 is not a valid phone number.");
    CHECK_STR(r.provider_id, "");

    classify(400, "{\"code\":21614,\"message\":\"not SMS-capable\"}", 0, &r);
    CHECK(r.outcome == SEND_FAILED && !r.opt_out);
    classify(400, "{\"code\":21608,\"message\":\"unverified\"}", 0, &r);
    CHECK(r.outcome == SEND_FAILED && !r.opt_out);

    classify(401, "{\"code\":20003,\"message\":\"Authenticate\",\"status\":401}", 0, &r);
    CHECK(r.outcome == SEND_FAILED);
    CHECK(!r.opt_out);
    CHECK_STR(r.code, "20003");
    CHECK_STR(r.message, "Authenticate");

    classify(404, "not json", 0, &r);
    CHECK(r.outcome == SEND_FAILED);
    CHECK_STR(r.code, "http_404");
    CHECK(strstr(r.message, "404") != NULL);

    /* A sid in an error answer is not a success. */
    classify(400, "{\"sid\":\"SMabc\",\"code\":21211,\"message\":\"bad\"}", 0, &r);
    CHECK(r.outcome == SEND_FAILED);
    CHECK_STR(r.provider_id, "");
}

/* Odd values in the provider's answer are handled safely. */
static void test_classify_odd(void)
{
    struct send_result r;
    char long_msg[600];
    char body[700];
    memset(long_msg, 'm', sizeof(long_msg) - 1);
    long_msg[sizeof(long_msg) - 1] = '\0';
    snprintf(body, sizeof(body), "{\"code\":21211,\"message\":\"%s\"}", long_msg);
    classify(400, body, 0, &r);
    CHECK(r.outcome == SEND_FAILED);
    CHECK(strlen(r.message) == sizeof(r.message) - 1); /* truncated, terminated */

    char long_sid[200];
    memset(long_sid, 'S', sizeof(long_sid) - 1);
    long_sid[sizeof(long_sid) - 1] = '\0';
    snprintf(body, sizeof(body), "{\"sid\":\"%s\",\"status\":\"%s\"}", long_sid, long_sid);
    classify(201, body, 0, &r);
    CHECK(r.outcome == SEND_OK);
    CHECK(strlen(r.provider_id) == sizeof(r.provider_id) - 1);
    CHECK(strlen(r.provider_status) == sizeof(r.provider_status) - 1);

    /* A code that is a string, or not a sane integer, is no code. */
    classify(400, "{\"code\":\"21610\",\"message\":\"x\"}", 0, &r);
    CHECK(r.outcome == SEND_FAILED);
    CHECK(!r.opt_out);
    CHECK_STR(r.code, "http_400");
    classify(400, "{\"code\":1e300,\"message\":\"x\"}", 0, &r);
    CHECK(r.outcome == SEND_FAILED);
    CHECK_STR(r.code, "http_400");
    classify(400, "{\"code\":-1e300,\"message\":\"x\"}", 0, &r);
    CHECK(r.outcome == SEND_FAILED);
    CHECK_STR(r.code, "http_400");
    classify(400, "{\"code\":null,\"message\":null}", 0, &r);
    CHECK(r.outcome == SEND_FAILED);
    CHECK_STR(r.code, "http_400");
    CHECK(strstr(r.message, "400") != NULL);
}

static void test_transport(void)
{
    struct send_result r;
    memset(&r, 0x5a, sizeof(r));
    transport_classify(false, "Could not connect to server", &r);
    CHECK(r.outcome == SEND_RETRY);
    CHECK_STR(r.code, "connect");
    CHECK_STR(r.message, "Could not connect to server");
    CHECK_STR(r.provider_id, "");
    CHECK(r.retry_after_s == 0);
    CHECK(!r.opt_out);

    memset(&r, 0x5a, sizeof(r));
    transport_classify(true, "Operation timed out", &r);
    CHECK(r.outcome == SEND_UNKNOWN); /* may have been sent: never resend */
    CHECK_STR(r.code, "transport");
    CHECK_STR(r.message, "Operation timed out");
    CHECK_STR(r.provider_id, "");

    transport_classify(true, NULL, &r);
    CHECK(r.outcome == SEND_UNKNOWN);
    CHECK(r.message[0] != '\0');
}

static void test_retry_after(void)
{
    CHECK(retry_after_parse(NULL) == 0);
    CHECK(retry_after_parse("") == 0);
    CHECK(retry_after_parse("0") == 0);
    CHECK(retry_after_parse("5") == 5);
    CHECK(retry_after_parse(" 120") == 120);
    CHECK(retry_after_parse("abc") == 0);
    CHECK(retry_after_parse("-3") == 0);
    CHECK(retry_after_parse(" -3") == 0);
    CHECK(retry_after_parse("86400") == 86400);
    CHECK(retry_after_parse("86401") == 86400);
    CHECK(retry_after_parse("99999999999999999999999999") == 86400);
    CHECK(retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT") == 0); /* HTTP-date: not supported */
}

static void test_outcome_status(void)
{
    CHECK_STR(send_outcome_status(SEND_OK), "sent");
    CHECK_STR(send_outcome_status(SEND_RETRY), "retry");
    CHECK_STR(send_outcome_status(SEND_FAILED), "failed");
    CHECK_STR(send_outcome_status(SEND_UNKNOWN), "unknown");
    CHECK_STR(send_outcome_status(SEND_SKIPPED), "skipped");
}

int main(void)
{
    RUN(test_form_escape);
    RUN(test_form_join);
    RUN(test_sms_form);
    RUN(test_call_form);
    RUN(test_sendgrid_json);
    RUN(test_sendgrid_classify);
    RUN(test_classify_ok);
    RUN(test_classify_unknown);
    RUN(test_classify_len);
    RUN(test_classify_retry);
    RUN(test_classify_failed);
    RUN(test_classify_odd);
    RUN(test_transport);
    RUN(test_retry_after);
    RUN(test_outcome_status);
    return check_summary();
}
