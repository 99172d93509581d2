/* test_websig.c - webhook signature checks (common/websig.c) against the
 * fixed vectors in shared/vectors/webhook-signatures.json (produced and
 * re-checked with Twilio's and SendGrid's official libraries): every vector
 * must give its expected_valid. Plus the pieces around them: port
 * fallback, form decoding, key parsing, the replay window. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "check.h"
#include "crypto.h"
#include "websig.h"

#ifndef CRIER_SHARED_DIR
#define CRIER_SHARED_DIR "../shared"
#endif
#define VECTORS CRIER_SHARED_DIR "/vectors/webhook-signatures.json"

static cJSON *vectors;

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *s = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        s = malloc((size_t)n + 1);
        if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
            free(s);
            s = NULL;
        }
        if (s)
            s[n] = '\0';
    }
    fclose(f);
    return s;
}

static const char *str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool flag(const cJSON *o, const char *key)
{
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, key));
}

static const cJSON *section_vectors(const char *provider)
{
    return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(vectors, provider),
                                            "vectors");
}

/* ---------------------------------------------------------------- Twilio */

static void test_twilio_vectors(void)
{
    const cJSON *list = section_vectors("twilio");
    REQUIRE(cJSON_GetArraySize(list) > 0);
    int n = 0, valid = 0, fallback = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, list)
    {
        const char *name = str(v, "name"), *token = str(v, "auth_token"), *url = str(v, "url");
        const char *body = str(v, "raw_body"), *ct = str(v, "content_type");
        const char *sig = str(v, "signature_header"),
                   *sig_url = str(v, "expected_signature_for_url");
        const cJSON *expected = cJSON_GetObjectItemCaseSensitive(v, "expected_valid");
        REQUIRE(name && token && url && body && sig && cJSON_IsBool(expected));
        bool want = cJSON_IsTrue(expected);
        bool got = websig_twilio_verify(token, url, body, strlen(body), ct, sig);
        if (got != want)
            fprintf(stderr, "twilio vector %s: got %s, expected %s\n", name,
                    got ? "valid" : "invalid", want ? "valid" : "invalid");
        CHECK(got == want);

        /* The signature for exactly this URL (no fallback). */
        char mine[WEBSIG_TWILIO_SIG_SIZE];
        websig_twilio_sign(token, url, body, strlen(body), mine);
        if (sig_url && strcmp(mine, sig_url) != 0)
            fprintf(stderr, "twilio vector %s: signed %s, expected %s\n", name, mine, sig_url);
        CHECK(sig_url && strcmp(mine, sig_url) == 0);

        /* A vector that needs the port fallback must not verify without it. */
        if (flag(v, "requires_port_fallback")) {
            CHECK(strcmp(mine, sig) != 0);
            const char *over = str(v, "signature_computed_over");
            REQUIRE(over);
            websig_twilio_sign(token, over, body, strlen(body), mine);
            CHECK_STR(mine, sig);
            fallback++;
        }
        /* Only the exact header verifies: any one-character change fails. */
        if (want) {
            char changed[WEBSIG_TWILIO_SIG_SIZE + 1];
            snprintf(changed, sizeof(changed), "%s", sig);
            changed[3] = changed[3] == 'A' ? 'B' : 'A';
            CHECK(!websig_twilio_verify(token, url, body, strlen(body), ct, changed));
            snprintf(changed, sizeof(changed), "%s ", sig);
            CHECK(!websig_twilio_verify(token, url, body, strlen(body), ct, changed));
            valid++;
        }
        n++;
    }
    fprintf(stderr, "twilio: %d vectors (%d valid, %d through the port fallback)\n", n, valid,
            fallback);
    CHECK(valid > 0 && valid < n && fallback > 0);
}

/* The basic upstream example, spelled out: what a receiver gets wrong. */
static void test_twilio_rules(void)
{
    const char *url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const char *body = "CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&"
                       "From=%2B14158675309&To=%2B18005551212";
    const char *form = "application/x-www-form-urlencoded";
    const char *sig = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
    size_t len = strlen(body);
    CHECK(websig_twilio_verify("12345", url, body, len, form, sig));
    CHECK(websig_twilio_verify("12345", url, body, len,
                               "application/x-www-form-urlencoded; "
                               "charset=utf-8",
                               sig));
    CHECK(websig_twilio_verify("12345", url, body, len, NULL, sig));
    /* Missing or empty header, token or URL. */
    CHECK(!websig_twilio_verify("12345", url, body, len, form, NULL));
    CHECK(!websig_twilio_verify("12345", url, body, len, form, ""));
    CHECK(!websig_twilio_verify("", url, body, len, form, sig));
    CHECK(!websig_twilio_verify(NULL, url, body, len, form, sig));
    CHECK(!websig_twilio_verify("12345", "", body, len, form, sig));
    /* The same bytes under another media type are not Twilio's form. */
    CHECK(!websig_twilio_verify("12345", url, body, len, "text/plain", sig));
    /* Parameter order in the body does not matter; values do. */
    const char *reordered = "To=%2B18005551212&From=%2B14158675309&Digits=1234&"
                            "Caller=%2B14158675309&CallSid=CA1234567890ABCDE";
    CHECK(websig_twilio_verify("12345", url, reordered, strlen(reordered), form, sig));
    /* Twilio signs the URL it called: scheme, path and query count. */
    CHECK(!websig_twilio_verify("12345", "http://mycompany.com/myapp.php?foo=1&bar=2", body, len,
                                form, sig));
    CHECK(!websig_twilio_verify("12345", "https://mycompany.com/myapp.php?foo=1&bar=3", body, len,
                                form, sig));
    /* The body is not NUL-terminated: only body_len bytes count. */
    char padded[512];
    snprintf(padded, sizeof(padded), "%s&Extra=1", body);
    CHECK(websig_twilio_verify("12345", url, padded, len, form, sig));
    CHECK(!websig_twilio_verify("12345", url, padded, strlen(padded), form, sig));
    /* An empty body signs the URL alone. */
    char s[WEBSIG_TWILIO_SIG_SIZE];
    websig_twilio_sign("12345", url, "", 0, s);
    CHECK(websig_twilio_verify("12345", url, "", 0, form, s));
    CHECK(websig_twilio_verify("12345", url, NULL, 0, NULL, s));
    /* Port fallback on a URL with user info and an IPv6 host. */
    websig_twilio_sign("t", "https://u:p@[::1]/x?y=1", body, len, s);
    CHECK(websig_twilio_verify("t", "https://u:p@[::1]:8443/x?y=1", body, len, form, s));
    websig_twilio_sign("t", "https://u:p@[::1]:443/x?y=1", body, len, s);
    CHECK(websig_twilio_verify("t", "https://u:p@[::1]/x?y=1", body, len, form, s));
    /* A port other than the default is never added. */
    websig_twilio_sign("t", "https://h.example:8443/x", body, len, s);
    CHECK(!websig_twilio_verify("t", "https://h.example/x", body, len, form, s));
}

static void test_twilio_json_body(void)
{
    const char *json = "{\"a\":1}";
    char hex[65], url[256], s[WEBSIG_TWILIO_SIG_SIZE];
    crypto_sha256_hex(json, strlen(json), hex);
    snprintf(url, sizeof(url), "https://h.example/hook?bodySHA256=%s", hex);
    websig_twilio_sign("tok", url, json, strlen(json), s);
    CHECK(websig_twilio_verify("tok", url, json, strlen(json), "application/json", s));
    CHECK(!websig_twilio_verify("tok", url, "{\"a\":2}", 7, "application/json", s));
    /* An upper-case hash in the URL is not the lowercase hex digest. */
    for (char *p = strstr(url, "=") + 1; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    websig_twilio_sign("tok", url, json, strlen(json), s);
    CHECK(!websig_twilio_verify("tok", url, json, strlen(json), "application/json", s));
}

static void test_form_value(void)
{
    const char *b = "A=1&AccountSid=AC%30x+y&&Empty=&Bare&AccountSid=second&Pct=%zz%4";
    char out[64];
    CHECK(websig_form_value(b, strlen(b), "AccountSid", out, sizeof(out)));
    CHECK_STR(out, "AC0x y");
    CHECK(websig_form_value(b, strlen(b), "Empty", out, sizeof(out)));
    CHECK_STR(out, "");
    CHECK(websig_form_value(b, strlen(b), "Bare", out, sizeof(out)));
    CHECK_STR(out, "");
    CHECK(websig_form_value(b, strlen(b), "Pct", out, sizeof(out)));
    CHECK_STR(out, "%zz%4");
    CHECK(!websig_form_value(b, strlen(b), "Missing", out, sizeof(out)));
    CHECK(!websig_form_value(b, strlen(b), "accountsid", out, sizeof(out)));
    CHECK(websig_form_value(b, strlen(b), "AccountSid", out, 4));
    CHECK_STR(out, "AC0");
    CHECK(!websig_form_value(b, 3, "AccountSid", out, sizeof(out))); /* only len bytes */
    CHECK(!websig_form_value(NULL, 0, "A", out, sizeof(out)));
}

/* Keys sort in UTF-16 code-unit order (JavaScript's sort): a supplementary
 * character (surrogate pair) sorts before U+E000..U+FFFF, unlike in UTF-8
 * byte order. "\uFF21" (fullwidth A) vs "\U0001F600". */
static void test_twilio_utf16_order(void)
{
    /* K1 = U+FF21 (EF BC A1), K2 = U+1F600 (F0 9F 98 80). */
    const char *body = "%EF%BC%A1=1&%F0%9F%98%80=2";
    char s[WEBSIG_TWILIO_SIG_SIZE], expect[WEBSIG_TWILIO_SIG_SIZE];
    websig_twilio_sign("k", "https://h/x", body, strlen(body), s);
    const char msg[] = "https://h/x\xF0\x9F\x98\x80"
                       "2\xEF\xBC\xA1"
                       "1";
    uint8_t mac[20];
    crypto_hmac_sha1("k", 1, msg, sizeof(msg) - 1, mac);
    EVP_EncodeBlock((unsigned char *)expect, mac, 20);
    CHECK_STR(s, expect);
}

/* -------------------------------------------------------------- SendGrid */

static void test_sendgrid_vectors(void)
{
    const cJSON *list = section_vectors("sendgrid");
    REQUIRE(cJSON_GetArraySize(list) > 0);
    int n = 0, valid = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, list)
    {
        const char *name = str(v, "name"), *key = str(v, "public_key");
        const char *ts = str(v, "timestamp"), *sig = str(v, "signature");
        const char *payload_b64 = str(v, "payload_base64"),
                   *digest = str(v, "signed_message_sha256");
        const cJSON *expected = cJSON_GetObjectItemCaseSensitive(v, "expected_valid");
        REQUIRE(name && key && ts && sig && payload_b64 && cJSON_IsBool(expected));
        uint8_t *body = NULL;
        size_t len = 0;
        REQUIRE(crypto_base64_decode(payload_b64, &body, &len) == CR_OK);
        /* We read the signed message as the vectors mean it. */
        if (digest) {
            size_t tl = strlen(ts);
            char *msg = malloc(tl + len + 1);
            memcpy(msg, ts, tl);
            memcpy(msg + tl, body, len);
            char hex[65];
            crypto_sha256_hex(msg, tl + len, hex);
            CHECK_STR(hex, digest);
            free(msg);
        }
        bool want = cJSON_IsTrue(expected);
        bool got = websig_sendgrid_verify(key, ts, (const char *)body, len, sig);
        if (got != want)
            fprintf(stderr, "sendgrid vector %s: got %s, expected %s\n", name,
                    got ? "valid" : "invalid", want ? "valid" : "invalid");
        CHECK(got == want);
        if (want) {
            /* The signature covers the timestamp and every body byte. */
            CHECK(!websig_sendgrid_verify(key, "1", (const char *)body, len, sig));
            CHECK(!websig_sendgrid_verify(key, ts, (const char *)body, len - 1, sig));
            valid++;
        }
        free(body);
        n++;
    }
    fprintf(stderr, "sendgrid: %d vectors (%d valid)\n", n, valid);
    CHECK(valid > 0 && valid < n);
}

/* Signs with a vector key's private half and verifies through a parsed key. */
static void test_sendgrid_round_trip(void)
{
    const cJSON *keys = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(vectors, "sendgrid"), "keys");
    const char *pem = str(cJSON_GetObjectItemCaseSensitive(keys, "key_a"), "private_key_pem");
    const char *pub = str(cJSON_GetObjectItemCaseSensitive(keys, "key_a"), "public_key_base64_der");
    const char *pub_b =
        str(cJSON_GetObjectItemCaseSensitive(keys, "key_b"), "public_key_base64_der");
    REQUIRE(pem && pub && pub_b);
    BIO *bio = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *priv = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    REQUIRE(priv);
    const char *ts = "1795251344", *body = "[{\"event\":\"open\",\"sg_event_id\":\"x\"}]\r\n";
    unsigned char der[128];
    size_t dlen = sizeof(der);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    CHECK(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, priv) == 1);
    CHECK(EVP_DigestSignUpdate(ctx, ts, strlen(ts)) == 1);
    CHECK(EVP_DigestSignUpdate(ctx, body, strlen(body)) == 1);
    CHECK(EVP_DigestSignFinal(ctx, der, &dlen) == 1);
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(priv);
    char *sig = crypto_base64_encode(der, dlen);

    struct websig_key *k = NULL, *kb = NULL;
    REQUIRE(websig_key_parse(pub, &k) == CR_OK);
    REQUIRE(websig_key_parse(pub_b, &kb) == CR_OK);
    CHECK(websig_sendgrid_verify_key(k, ts, body, strlen(body), sig));
    CHECK(!websig_sendgrid_verify_key(kb, ts, body, strlen(body), sig));
    CHECK(!websig_sendgrid_verify_key(k, ts, body, strlen(body), NULL));
    CHECK(!websig_sendgrid_verify_key(k, ts, body, strlen(body), ""));
    CHECK(!websig_sendgrid_verify_key(k, NULL, body, strlen(body), sig));
    CHECK(!websig_sendgrid_verify_key(NULL, ts, body, strlen(body), sig));
    CHECK(!websig_sendgrid_verify_key(k, ts, body, strlen(body), "not base64!"));
    websig_key_free(k);
    websig_key_free(kb);
    websig_key_free(NULL);
    free(sig);
}

/* base64 DER SPKI of a freshly generated key of the given kind. */
static char *spki_b64(EVP_PKEY *pk)
{
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(pk, &der);
    char *s = n > 0 ? crypto_base64_encode(der, (size_t)n) : NULL;
    OPENSSL_free(der);
    return s;
}

static void test_key_parse(void)
{
    struct websig_key *k = (struct websig_key *)1;
    CHECK(websig_key_parse(NULL, &k) == CR_EINVAL && k == NULL);
    CHECK(websig_key_parse("", &k) == CR_EINVAL);
    CHECK(websig_key_parse("not base64", &k) == CR_EINVAL);
    CHECK(websig_key_parse("AAAA", &k) == CR_EINVAL); /* base64, not a key */
    const char *pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEy/RwSNUe8b3"
                      "FslouLOwuQswc4N1r\n-----END PUBLIC KEY-----\n";
    CHECK(websig_key_parse(pem, &k) == CR_EINVAL); /* PEM armour is not what SendGrid shows */

    EVP_PKEY *p256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    REQUIRE(p256 && p384 && ed);
    char *a = spki_b64(p256), *b = spki_b64(p384), *c = spki_b64(ed);
    CHECK(websig_key_parse(a, &k) == CR_OK && k != NULL);
    websig_key_free(k);
    CHECK(websig_key_parse(b, &k) == CR_EINVAL && k == NULL); /* not P-256 */
    CHECK(websig_key_parse(c, &k) == CR_EINVAL && k == NULL); /* not EC */
    /* Trailing bytes after the DER structure. */
    uint8_t *der = NULL;
    size_t dlen = 0;
    REQUIRE(crypto_base64_decode(a, &der, &dlen) == CR_OK);
    uint8_t *longer = malloc(dlen + 1);
    memcpy(longer, der, dlen);
    longer[dlen] = 0;
    char *d = crypto_base64_encode(longer, dlen + 1);
    CHECK(websig_key_parse(d, &k) == CR_EINVAL);
    free(der);
    free(longer);
    free(a);
    free(b);
    free(c);
    free(d);
    EVP_PKEY_free(p256);
    EVP_PKEY_free(p384);
    EVP_PKEY_free(ed);
}

static void test_timestamp_window(void)
{
    time_t now = 1795251344;
    CHECK(websig_timestamp_fresh("1795251344", now, WEBSIG_REPLAY_WINDOW_S));
    CHECK(websig_timestamp_fresh("1795251044", now, WEBSIG_REPLAY_WINDOW_S)); /* -300 s */
    CHECK(!websig_timestamp_fresh("1795251043", now, WEBSIG_REPLAY_WINDOW_S));
    CHECK(websig_timestamp_fresh("1795251644", now, WEBSIG_REPLAY_WINDOW_S)); /* +300 s */
    CHECK(!websig_timestamp_fresh("1795251645", now, WEBSIG_REPLAY_WINDOW_S));
    CHECK(!websig_timestamp_fresh("1600000000", now, WEBSIG_REPLAY_WINDOW_S));
    CHECK(!websig_timestamp_fresh("", now, WEBSIG_REPLAY_WINDOW_S));
    CHECK(!websig_timestamp_fresh(NULL, now, WEBSIG_REPLAY_WINDOW_S));
    CHECK(!websig_timestamp_fresh("timestamp", now, WEBSIG_REPLAY_WINDOW_S));
    CHECK(!websig_timestamp_fresh("-1795251344", now, WEBSIG_REPLAY_WINDOW_S));
    CHECK(!websig_timestamp_fresh(" 1795251344", now, WEBSIG_REPLAY_WINDOW_S));
    CHECK(!websig_timestamp_fresh("1795251344.5", now, WEBSIG_REPLAY_WINDOW_S));
    CHECK(!websig_timestamp_fresh("99999999999999999999", now, WEBSIG_REPLAY_WINDOW_S));
}

int main(void)
{
    char *text = read_file(VECTORS);
    if (!text) {
        fprintf(stderr, "cannot read %s (shared/ must sit next to the source tree)\n", VECTORS);
        return 1;
    }
    vectors = cJSON_Parse(text);
    free(text);
    if (!vectors) {
        fprintf(stderr, "%s is not JSON\n", VECTORS);
        return 1;
    }
    RUN(test_twilio_vectors);
    RUN(test_twilio_rules);
    RUN(test_twilio_json_body);
    RUN(test_form_value);
    RUN(test_twilio_utf16_order);
    RUN(test_sendgrid_vectors);
    RUN(test_sendgrid_round_trip);
    RUN(test_key_parse);
    RUN(test_timestamp_window);
    cJSON_Delete(vectors);
    return check_summary();
}
