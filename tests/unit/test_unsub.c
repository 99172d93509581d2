/* test_unsub.c - tests for the signed, expiring unsubscribe tokens
 * (common/unsub.c). */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "unsub.h"

static const uint8_t key[CRYPTO_KEY_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
static const uint8_t other[CRYPTO_KEY_LEN] = {9, 8, 7};

#define NOW 1800000000LL
#define EXPIRES (NOW + UNSUB_TOKEN_TTL_S)

static void test_round_trip(void)
{
    char tok[UNSUB_TOKEN_MAX];
    REQUIRE(unsub_token(key, 12, 345, "email", 678, EXPIRES, tok, sizeof tok) == CR_OK);
    CHECK(strncmp(tok, "12.345.email.678.1815552000.", 28) == 0);
    CHECK(strlen(tok) == 28 + 32);
    CHECK(strspn(tok, "0123456789abcdefghijklmnopqrstuvwxyz.") == strlen(tok)); /* URL-safe */
    struct unsub_claims c;
    CHECK(unsub_verify(key, tok, NOW, &c) == CR_OK);
    CHECK(c.tenant == 12 && c.customer == 345 && c.delivery == 678 && c.expires == EXPIRES);
    CHECK_STR(c.channel, "email");

    /* Without a delivery; the largest numbers still fit. */
    REQUIRE(unsub_token(key, 9223372036854775807LL, 9223372036854775807LL, "voice", 0,
                        9223372036854775807LL, tok, sizeof tok) == CR_OK);
    CHECK(unsub_verify(key, tok, NOW, &c) == CR_OK);
    CHECK(c.delivery == 0);
    CHECK_STR(c.channel, "voice");
}

static void test_expiry(void)
{
    char tok[UNSUB_TOKEN_MAX];
    struct unsub_claims c;
    REQUIRE(unsub_token(key, 12, 345, "sms", 0, NOW + 60, tok, sizeof tok) == CR_OK);
    CHECK(unsub_verify(key, tok, NOW + 59, &c) == CR_OK);
    CHECK(unsub_verify(key, tok, NOW + 60, &c) == CR_ETIMEOUT);
    CHECK(c.customer == 345); /* an expired token still says what it was for */
    CHECK(unsub_verify(key, tok, NOW + UNSUB_TOKEN_TTL_S, &c) == CR_ETIMEOUT);
    /* Prolonging it breaks the MAC. */
    char bad[UNSUB_TOKEN_MAX];
    snprintf(bad, sizeof bad, "12.345.sms.0.%lld%s", NOW + 100000, strrchr(tok, '.'));
    CHECK(unsub_verify(key, bad, NOW + 60, &c) == CR_EINVAL);
    CHECK(c.tenant == 0 && c.customer == 0);
}

static void test_rejects(void)
{
    char tok[UNSUB_TOKEN_MAX], bad[UNSUB_TOKEN_MAX];
    struct unsub_claims c;
    REQUIRE(unsub_token(key, 12, 345, "sms", 7, EXPIRES, tok, sizeof tok) == CR_OK);
    CHECK(unsub_verify(other, tok, NOW, &c) == CR_EINVAL); /* another key */
    snprintf(bad, sizeof bad, "%s", tok);
    bad[0] = '3'; /* another tenant */
    CHECK(unsub_verify(key, bad, NOW, &c) == CR_EINVAL);
    snprintf(bad, sizeof bad, "%s", tok);
    bad[strlen(bad) - 1] ^= 1; /* a MAC bit */
    CHECK(unsub_verify(key, bad, NOW, &c) == CR_EINVAL);
    /* Another delivery under the same MAC. */
    snprintf(bad, sizeof bad, "12.345.sms.8.%lld%s", EXPIRES, strrchr(tok, '.'));
    CHECK(unsub_verify(key, bad, NOW, &c) == CR_EINVAL);
    /* The same MAC under another spelling of the numbers. */
    snprintf(bad, sizeof bad, "012.345.sms.7.%lld%s", EXPIRES, strrchr(tok, '.'));
    CHECK(unsub_verify(key, bad, NOW, &c) == CR_EINVAL);
    snprintf(bad, sizeof bad, "12.345.sms.+7.%lld%s", EXPIRES, strrchr(tok, '.'));
    CHECK(unsub_verify(key, bad, NOW, &c) == CR_EINVAL);
    /* The first format (no delivery, no expiry) is gone. */
    snprintf(bad, sizeof bad, "12.345.sms%s", strrchr(tok, '.'));
    CHECK(unsub_verify(key, bad, NOW, &c) == CR_EINVAL);
    CHECK(unsub_verify(key, "", NOW, &c) == CR_EINVAL);
    CHECK(unsub_verify(key, "12.345.sms.7.99", NOW, &c) == CR_EINVAL);
    CHECK(unsub_verify(key, NULL, NOW, &c) == CR_EINVAL);
    CHECK(unsub_token(key, 0, 1, "sms", 0, EXPIRES, tok, sizeof tok) == CR_EINVAL);
    CHECK(unsub_token(key, 1, 1, "fax", 0, EXPIRES, tok, sizeof tok) == CR_EINVAL);
    CHECK(unsub_token(key, 1, 1, "sms", -1, EXPIRES, tok, sizeof tok) == CR_EINVAL);
    CHECK(unsub_token(key, 1, 1, "sms", 0, 0, tok, sizeof tok) == CR_EINVAL);
    CHECK(unsub_token(key, 1, 1, "sms", 0, EXPIRES, tok, 10) == CR_ETOOBIG);
}

int main(void)
{
    RUN(test_round_trip);
    RUN(test_expiry);
    RUN(test_rejects);
    return check_summary();
}
