/* test_crypto.c - known-answer and round-trip tests for common/crypto.c. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "crypto.h"

static void hex_of(const uint8_t *in, size_t n, char *out)
{
    crypto_hex_encode(in, n, out);
}

/* ---------------------------------------------------------------- digests */

static void test_sha256(void)
{
    char hex[65];

    crypto_sha256_hex("abc", 3, hex);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    crypto_sha256_hex("", 0, hex);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    crypto_sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, hex);
    CHECK_STR(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");

    uint8_t md[32];
    crypto_sha256("abc", 3, md);
    CHECK(md[0] == 0xba && md[31] == 0xad);
}

/* RFC 2202 test cases 1, 2, 3 and 6. */
static void test_hmac_sha1_rfc2202(void)
{
    uint8_t key[80], data[50], mac[20];
    char hex[41];

    memset(key, 0x0b, 20);
    crypto_hmac_sha1(key, 20, "Hi There", 8, mac);
    hex_of(mac, 20, hex);
    CHECK_STR(hex, "b617318655057264e28bc0b6fb378c8ef146be00");

    crypto_hmac_sha1("Jefe", 4, "what do ya want for nothing?", 28, mac);
    hex_of(mac, 20, hex);
    CHECK_STR(hex, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");

    memset(key, 0xaa, 20);
    memset(data, 0xdd, 50);
    crypto_hmac_sha1(key, 20, data, 50, mac);
    hex_of(mac, 20, hex);
    CHECK_STR(hex, "125d7342b9ac11cd91a39af48aa17b4f63f175d3");

    memset(key, 0xaa, 80);
    const char *msg = "Test Using Larger Than Block-Size Key - Hash Key First";
    crypto_hmac_sha1(key, 80, msg, strlen(msg), mac);
    hex_of(mac, 20, hex);
    CHECK_STR(hex, "aa4ae5e15272d00e95705637ce8a3b55ed402112");

    /* An empty key and empty message are legal HMAC inputs. */
    crypto_hmac_sha1("", 0, "", 0, mac);
    hex_of(mac, 20, hex);
    CHECK_STR(hex, "fbdb1d1b18aa6c08324b7d64b71fb76370690e1d");
}

/* RFC 4231 test cases 1, 2 and 6. */
static void test_hmac_sha256_rfc4231(void)
{
    uint8_t key[131], mac[32];
    char hex[65];

    memset(key, 0x0b, 20);
    crypto_hmac_sha256(key, 20, "Hi There", 8, mac);
    hex_of(mac, 32, hex);
    CHECK_STR(hex, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");

    crypto_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, mac);
    hex_of(mac, 32, hex);
    CHECK_STR(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");

    memset(key, 0xaa, 131);
    const char *msg = "Test Using Larger Than Block-Size Key - Hash Key First";
    crypto_hmac_sha256(key, 131, msg, strlen(msg), mac);
    hex_of(mac, 32, hex);
    CHECK_STR(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

/* Twilio's documented X-Twilio-Signature example: base64(HMAC-SHA1(auth
 * token, URL + sorted POST params concatenated)). */
static void test_twilio_signature_example(void)
{
    const char *token = "12345";
    const char *msg = "https://mycompany.com/myapp.php?foo=1&bar=2"
                      "CallSidCA1234567890ABCDE"
                      "Caller+14158675309"
                      "Digits1234"
                      "From+14158675309"
                      "To+18005551212";
    uint8_t mac[20];

    crypto_hmac_sha1(token, strlen(token), msg, strlen(msg), mac);
    char *sig = crypto_base64_encode(mac, sizeof mac);
    CHECK_STR(sig, "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
    free(sig);
}

static void test_ct_equal(void)
{
    uint8_t a[32], b[32];

    memset(a, 0x5a, sizeof a);
    memcpy(b, a, sizeof b);
    CHECK(crypto_ct_equal(a, b, sizeof a));
    b[31] ^= 1;
    CHECK(!crypto_ct_equal(a, b, sizeof a));
    b[31] ^= 1;
    b[0] ^= 0x80;
    CHECK(!crypto_ct_equal(a, b, sizeof a));
    CHECK(crypto_ct_equal(a, b, 0));
}

static void test_random(void)
{
    uint8_t a[32] = {0}, b[32] = {0}, zero[32] = {0};

    REQUIRE(crypto_random(a, sizeof a) == CR_OK);
    REQUIRE(crypto_random(b, sizeof b) == CR_OK);
    CHECK(memcmp(a, b, sizeof a) != 0);
    CHECK(memcmp(a, zero, sizeof a) != 0);
    CHECK(crypto_random(a, 0) == CR_OK);
}

/* -------------------------------------------------------------------- hex */

static void test_hex(void)
{
    const uint8_t bytes[] = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xff};
    char hex[2 * sizeof bytes + 1];
    uint8_t back[sizeof bytes];

    crypto_hex_encode(bytes, sizeof bytes, hex);
    CHECK_STR(hex, "00017f80abff");
    CHECK(crypto_hex_decode(hex, back, sizeof back) == CR_OK);
    CHECK(memcmp(back, bytes, sizeof bytes) == 0);
    CHECK(crypto_hex_decode("00017F80ABff", back, sizeof back) == CR_OK);
    CHECK(memcmp(back, bytes, sizeof bytes) == 0);

    crypto_hex_encode(bytes, 0, hex);
    CHECK_STR(hex, "");
    CHECK(crypto_hex_decode("", back, 0) == CR_OK);
}

static void test_hex_rejects(void)
{
    uint8_t out[3];

    CHECK(crypto_hex_decode("abcd", out, 3) == CR_EINVAL);     /* too short */
    CHECK(crypto_hex_decode("abcdef01", out, 3) == CR_EINVAL); /* too long */
    CHECK(crypto_hex_decode("abcde", out, 3) == CR_EINVAL);    /* odd length */
    CHECK(crypto_hex_decode("abcdeg", out, 3) == CR_EINVAL);   /* non-hex char */
    CHECK(crypto_hex_decode("g0cdef", out, 3) == CR_EINVAL);
    CHECK(crypto_hex_decode("ab cde", out, 3) == CR_EINVAL);
    CHECK(crypto_hex_decode("0xabcd", out, 3) == CR_EINVAL);
    CHECK(crypto_hex_decode("", out, 3) == CR_EINVAL);
    CHECK(crypto_hex_decode("00", out, 0) == CR_EINVAL);
    CHECK(crypto_hex_decode(NULL, out, 3) == CR_EINVAL);
}

/* ----------------------------------------------------------------- base64 */

/* RFC 4648 section 10 vectors, both directions. */
static void test_base64_vectors(void)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const enc[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};

    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        char *e = crypto_base64_encode((const uint8_t *)plain[i], strlen(plain[i]));
        CHECK_STR(e, enc[i]);
        free(e);

        uint8_t *d = NULL;
        size_t dlen = 99;
        CHECK(crypto_base64_decode(enc[i], &d, &dlen) == CR_OK);
        CHECK(d != NULL);
        CHECK(dlen == strlen(plain[i]));
        CHECK(d && memcmp(d, plain[i], dlen) == 0);
        free(d);
    }
}

static void test_base64_roundtrip(void)
{
    uint8_t all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;

    /* Every length 0..256 of a buffer holding every byte value. */
    for (size_t n = 0; n <= sizeof all; n++) {
        char *e = crypto_base64_encode(all, n);
        REQUIRE(e != NULL);
        CHECK(strlen(e) == (n + 2) / 3 * 4);
        uint8_t *d = NULL;
        size_t dlen = 0;
        CHECK(crypto_base64_decode(e, &d, &dlen) == CR_OK);
        CHECK(dlen == n);
        CHECK(d && memcmp(d, all, n) == 0);
        free(d);
        free(e);
    }

    uint8_t rnd[1000];
    REQUIRE(crypto_random(rnd, sizeof rnd) == CR_OK);
    char *e = crypto_base64_encode(rnd, sizeof rnd);
    uint8_t *d = NULL;
    size_t dlen = 0;
    CHECK(crypto_base64_decode(e, &d, &dlen) == CR_OK);
    CHECK(dlen == sizeof rnd && d && memcmp(d, rnd, dlen) == 0);
    free(d);
    free(e);

    /* The '+' and '/' characters of the standard alphabet. */
    const uint8_t hi[] = {0xfb, 0xff, 0xbf};
    e = crypto_base64_encode(hi, sizeof hi);
    CHECK_STR(e, "+/+/");
    free(e);
}

static void test_base64_rejects(void)
{
    static const char *const bad[] = {
        "Zg",         /* missing padding */
        "Zg=",        /* length not a multiple of 4 */
        "Zm9vY",      /* length not a multiple of 4 */
        "Z===",       /* three padding chars */
        "====",       /* padding only */
        "=Zm9",       /* padding at the start */
        "Zm=v",       /* padding in the middle of a quantum */
        "Zg==Zm9v",   /* padding before the end */
        "Zm9v!A==",   /* character outside the alphabet */
        "Zm9v YmFy",  /* whitespace */
        "Zm9v\nYmFy", /* newline */
        "Zm9v-_==",   /* base64url alphabet */
        "Zh==",       /* non-zero bits under the padding */
        "Zm9=",       /* non-zero bits under the padding */
        "Zm9vYmF\x80",
    };

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t *d = (uint8_t *)"sentinel";
        size_t dlen = 42;
        enum cr_err err = crypto_base64_decode(bad[i], &d, &dlen);
        CHECK(err == CR_EINVAL);
        CHECK(d == NULL);
        CHECK(dlen == 0);
        if (err != CR_EINVAL)
            fprintf(stderr, "  accepted: \"%s\"\n", bad[i]);
    }

    uint8_t *d = NULL;
    size_t dlen = 0;
    CHECK(crypto_base64_decode(NULL, &d, &dlen) == CR_EINVAL);
}

/* -------------------------------------------------------------------- key */

static void test_parse_key(void)
{
    uint8_t expect[CRYPTO_KEY_LEN], key[CRYPTO_KEY_LEN];
    for (int i = 0; i < CRYPTO_KEY_LEN; i++)
        expect[i] = (uint8_t)(i * 7 + 3);

    char hex[2 * CRYPTO_KEY_LEN + 1];
    crypto_hex_encode(expect, sizeof expect, hex);
    memset(key, 0, sizeof key);
    CHECK(crypto_parse_key(hex, key) == CR_OK);
    CHECK(memcmp(key, expect, sizeof key) == 0);

    /* Uppercase hex is accepted too. */
    char upper[sizeof hex];
    for (size_t i = 0; i < sizeof hex; i++)
        upper[i] = (hex[i] >= 'a' && hex[i] <= 'f') ? (char)(hex[i] - 32) : hex[i];
    memset(key, 0, sizeof key);
    CHECK(crypto_parse_key(upper, key) == CR_OK);
    CHECK(memcmp(key, expect, sizeof key) == 0);

    char *b64 = crypto_base64_encode(expect, sizeof expect);
    memset(key, 0, sizeof key);
    CHECK(crypto_parse_key(b64, key) == CR_OK);
    CHECK(memcmp(key, expect, sizeof key) == 0);
    free(b64);
}

static void test_parse_key_rejects(void)
{
    uint8_t key[CRYPTO_KEY_LEN];
    uint8_t raw[48];
    memset(raw, 0x11, sizeof raw);

    CHECK(crypto_parse_key("", key) == CR_EINVAL);
    CHECK(crypto_parse_key(NULL, key) == CR_EINVAL);
    CHECK(crypto_parse_key("short", key) == CR_EINVAL);

    /* 63 and 65 hex chars. */
    char hex[2 * 48 + 1];
    crypto_hex_encode(raw, 32, hex);
    hex[63] = '\0';
    CHECK(crypto_parse_key(hex, key) == CR_EINVAL);
    crypto_hex_encode(raw, 33, hex);
    hex[65] = '\0';
    CHECK(crypto_parse_key(hex, key) == CR_EINVAL);
    /* 64 chars with one non-hex char. */
    crypto_hex_encode(raw, 32, hex);
    hex[10] = 'z';
    CHECK(crypto_parse_key(hex, key) == CR_EINVAL);
    /* 64 hex chars plus trailing whitespace. */
    crypto_hex_encode(raw, 32, hex);
    hex[64] = '\n';
    hex[65] = '\0';
    CHECK(crypto_parse_key(hex, key) == CR_EINVAL);

    /* base64 of 31, 33 and 48 bytes. */
    const size_t lens[] = {31, 33, 48, 16};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        char *b64 = crypto_base64_encode(raw, lens[i]);
        CHECK(crypto_parse_key(b64, key) == CR_EINVAL);
        free(b64);
    }
    /* base64 of 32 bytes with the padding stripped. */
    char *b64 = crypto_base64_encode(raw, 32);
    b64[strlen(b64) - 1] = '\0';
    CHECK(crypto_parse_key(b64, key) == CR_EINVAL);
    free(b64);
}

/* ---------------------------------------------------------- sealed secrets */

static void make_key(uint8_t key[CRYPTO_KEY_LEN], uint8_t seed)
{
    for (int i = 0; i < CRYPTO_KEY_LEN; i++)
        key[i] = (uint8_t)(seed + i);
}

static void test_seal_roundtrip(void)
{
    uint8_t key[CRYPTO_KEY_LEN];
    make_key(key, 1);
    const char *secret = "twilio-auth-token-0123456789abcdef";

    char *sealed = NULL;
    REQUIRE(crypto_seal(key, secret, strlen(secret), &sealed) == CR_OK);
    REQUIRE(sealed != NULL);
    CHECK(strncmp(sealed, "v1:", 3) == 0);
    CHECK(strstr(sealed, secret) == NULL);

    /* nonce(12) + ciphertext + tag(16), base64 with padding. */
    uint8_t *blob = NULL;
    size_t bloblen = 0;
    CHECK(crypto_base64_decode(sealed + 3, &blob, &bloblen) == CR_OK);
    CHECK(bloblen == 12 + strlen(secret) + 16);
    free(blob);

    char *plain = NULL;
    size_t plainlen = 0;
    CHECK(crypto_open(key, sealed, &plain, &plainlen) == CR_OK);
    CHECK(plainlen == strlen(secret));
    CHECK_STR(plain, secret);
    free(plain);

    /* A fresh nonce each time: sealing twice gives different texts. */
    char *sealed2 = NULL;
    REQUIRE(crypto_seal(key, secret, strlen(secret), &sealed2) == CR_OK);
    CHECK(strcmp(sealed, sealed2) != 0);
    CHECK(strncmp(sealed + 3, sealed2 + 3, 16) != 0);
    free(sealed2);
    free(sealed);
}

static void test_seal_empty_and_binary(void)
{
    uint8_t key[CRYPTO_KEY_LEN];
    make_key(key, 9);

    char *sealed = NULL, *plain = NULL;
    size_t plainlen = 99;
    REQUIRE(crypto_seal(key, "", 0, &sealed) == CR_OK);
    CHECK(crypto_open(key, sealed, &plain, &plainlen) == CR_OK);
    CHECK(plainlen == 0);
    CHECK_STR(plain, "");
    free(plain);
    free(sealed);

    /* Binary payload with embedded NULs and every byte value. */
    uint8_t bin[300];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (uint8_t)(i * 31);
    REQUIRE(crypto_seal(key, bin, sizeof bin, &sealed) == CR_OK);
    plain = NULL;
    CHECK(crypto_open(key, sealed, &plain, &plainlen) == CR_OK);
    CHECK(plainlen == sizeof bin);
    CHECK(plain && memcmp(plain, bin, sizeof bin) == 0);
    CHECK(plain && plain[plainlen] == '\0');
    free(plain);
    free(sealed);
}

static void test_seal_tamper(void)
{
    uint8_t key[CRYPTO_KEY_LEN];
    make_key(key, 2);
    const char *secret = "hello, world";

    char *sealed = NULL;
    REQUIRE(crypto_seal(key, secret, strlen(secret), &sealed) == CR_OK);
    uint8_t *blob = NULL;
    size_t bloblen = 0;
    REQUIRE(crypto_base64_decode(sealed + 3, &blob, &bloblen) == CR_OK);

    /* Flip one bit in each byte in turn: nonce, ciphertext and tag. */
    for (size_t i = 0; i < bloblen; i++) {
        blob[i] ^= 0x01;
        char *b64 = crypto_base64_encode(blob, bloblen);
        blob[i] ^= 0x01;
        size_t n = strlen(b64) + 4;
        char *forged = malloc(n);
        REQUIRE(forged != NULL);
        snprintf(forged, n, "v1:%s", b64);
        free(b64);

        char *plain = (char *)"sentinel";
        size_t plainlen = 42;
        enum cr_err err = crypto_open(key, forged, &plain, &plainlen);
        CHECK(err == CR_ECRYPTO);
        CHECK(plain == NULL);
        CHECK(plainlen == 0);
        if (err != CR_ECRYPTO)
            fprintf(stderr, "  byte %zu flip not detected\n", i);
        free(forged);
    }

    /* Truncating the tag by one byte (still well-formed base64). */
    char *b64 = crypto_base64_encode(blob, bloblen - 1);
    char forged[256];
    snprintf(forged, sizeof forged, "v1:%s", b64);
    free(b64);
    char *plain = NULL;
    size_t plainlen = 0;
    CHECK(crypto_open(key, forged, &plain, &plainlen) == CR_ECRYPTO);

    /* Changing one character of the text itself. */
    size_t pos = 3 + 20;
    sealed[pos] = sealed[pos] == 'A' ? 'B' : 'A';
    CHECK(crypto_open(key, sealed, &plain, &plainlen) == CR_ECRYPTO);
    CHECK(plain == NULL);

    free(blob);
    free(sealed);
}

static void test_seal_wrong_key(void)
{
    uint8_t key[CRYPTO_KEY_LEN], other[CRYPTO_KEY_LEN];
    make_key(key, 3);
    memcpy(other, key, sizeof other);
    other[31] ^= 0x01;

    char *sealed = NULL;
    REQUIRE(crypto_seal(key, "secret", 6, &sealed) == CR_OK);
    char *plain = NULL;
    size_t plainlen = 0;
    CHECK(crypto_open(other, sealed, &plain, &plainlen) == CR_ECRYPTO);
    CHECK(plain == NULL);
    CHECK(crypto_open(key, sealed, &plain, &plainlen) == CR_OK);
    CHECK_STR(plain, "secret");
    free(plain);
    free(sealed);
}

static void test_open_malformed(void)
{
    uint8_t key[CRYPTO_KEY_LEN];
    make_key(key, 4);
    char *sealed = NULL;
    REQUIRE(crypto_seal(key, "secret", 6, &sealed) == CR_OK);

    char buf[256];
    const char *bad[] = {
        "",
        "v1:",
        "v1",
        "v2:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "V1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "v1:not base64!",
        "v1:AAAA",                                 /* 3 bytes: shorter than nonce + tag */
        "v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", /* 27 bytes */
        sealed + 3,                                /* prefix missing */
        buf,
    };
    snprintf(buf, sizeof buf, "%s\n", sealed); /* trailing newline */

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *plain = (char *)"sentinel";
        size_t plainlen = 42;
        enum cr_err err = crypto_open(key, bad[i], &plain, &plainlen);
        CHECK(err == CR_EINVAL);
        CHECK(plain == NULL);
        CHECK(plainlen == 0);
        if (err != CR_EINVAL)
            fprintf(stderr, "  case %zu: got %d\n", i, (int)err);
    }

    char *plain = NULL;
    size_t plainlen = 0;
    CHECK(crypto_open(key, NULL, &plain, &plainlen) == CR_EINVAL);

    /* 28 bytes (nonce + tag, empty ciphertext) is well-formed but forged. */
    CHECK(crypto_open(key, "v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", &plain, &plainlen) ==
          CR_ECRYPTO);
    free(sealed);
}

int main(void)
{
    RUN(test_sha256);
    RUN(test_hmac_sha1_rfc2202);
    RUN(test_hmac_sha256_rfc4231);
    RUN(test_twilio_signature_example);
    RUN(test_ct_equal);
    RUN(test_random);
    RUN(test_hex);
    RUN(test_hex_rejects);
    RUN(test_base64_vectors);
    RUN(test_base64_roundtrip);
    RUN(test_base64_rejects);
    RUN(test_parse_key);
    RUN(test_parse_key_rejects);
    RUN(test_seal_roundtrip);
    RUN(test_seal_empty_and_binary);
    RUN(test_seal_tamper);
    RUN(test_seal_wrong_key);
    RUN(test_open_malformed);
    return check_summary();
}
