/* test_unsub.c - tests for the signed unsubscribe tokens (common/unsub.c). */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "unsub.h"

static const uint8_t key[CRYPTO_KEY_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
static const uint8_t other[CRYPTO_KEY_LEN] = {9, 8, 7};

static void test_round_trip(void)
{
    char tok[UNSUB_TOKEN_MAX];
    REQUIRE(unsub_token(key, 12, 345, "email", tok, sizeof tok) == CR_OK);
    CHECK(strncmp(tok, "12.345.email.", 13) == 0);
    CHECK(strlen(tok) == 13 + 32);
    CHECK(strspn(tok, "0123456789abcdefghijklmnopqrstuvwxyz.") == strlen(tok)); /* URL-safe */
    long long t = 0, c = 0;
    char ch[8];
    CHECK(unsub_verify(key, tok, &t, &c, ch) == CR_OK);
    CHECK(t == 12 && c == 345);
    CHECK_STR(ch, "email");
}

static void test_rejects(void)
{
    char tok[UNSUB_TOKEN_MAX], bad[UNSUB_TOKEN_MAX];
    long long t, c;
    char ch[8];
    REQUIRE(unsub_token(key, 12, 345, "sms", tok, sizeof tok) == CR_OK);
    CHECK(unsub_verify(other, tok, &t, &c, ch) == CR_EINVAL); /* another key */
    snprintf(bad, sizeof bad, "%s", tok);
    bad[0] = '3'; /* another tenant */
    CHECK(unsub_verify(key, bad, &t, &c, ch) == CR_EINVAL);
    snprintf(bad, sizeof bad, "%s", tok);
    bad[strlen(bad) - 1] ^= 1; /* a MAC bit */
    CHECK(unsub_verify(key, bad, &t, &c, ch) == CR_EINVAL);
    /* The same MAC under another spelling of the numbers. */
    snprintf(bad, sizeof bad, "012.345.sms%s", strrchr(tok, '.'));
    CHECK(unsub_verify(key, bad, &t, &c, ch) == CR_EINVAL);
    CHECK(unsub_verify(key, "", &t, &c, ch) == CR_EINVAL);
    CHECK(unsub_verify(key, "12.345.sms", &t, &c, ch) == CR_EINVAL);
    CHECK(unsub_verify(key, NULL, &t, &c, ch) == CR_EINVAL);
    CHECK(unsub_token(key, 0, 1, "sms", tok, sizeof tok) == CR_EINVAL);
    CHECK(unsub_token(key, 1, 1, "fax", tok, sizeof tok) == CR_EINVAL);
    CHECK(unsub_token(key, 1, 1, "sms", tok, 10) == CR_ETOOBIG);
}

int main(void)
{
    RUN(test_round_trip);
    RUN(test_rejects);
    return check_summary();
}
