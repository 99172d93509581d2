/* test_apikey.c - unit tests for common/apikey.c. */
#include <stdint.h>
#include <string.h>

#include "apikey.h"
#include "check.h"
#include "crypto.h"

static const char known_key[] = "crier_0123456789abcdef_0123456789abcdef0123456789abcdef01234567";

static int is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strchr("0123456789abcdef", s[i]) || s[i] == '\0')
            return 0;
    return 1;
}

static void test_generate_format(void)
{
    char key[APIKEY_LEN + 1], id[APIKEY_ID_LEN + 1];
    uint8_t hash[32], expect[32];
    memset(key, 'Z', sizeof(key));
    memset(id, 'Z', sizeof(id));
    REQUIRE(apikey_generate(key, id, hash) == CR_OK);
    CHECK(APIKEY_LEN == 63);
    CHECK(strlen(key) == APIKEY_LEN);
    CHECK(strncmp(key, "crier_", 6) == 0);
    CHECK(is_lower_hex(key + 6, APIKEY_ID_LEN));
    CHECK(key[6 + APIKEY_ID_LEN] == '_');
    CHECK(is_lower_hex(key + 6 + APIKEY_ID_LEN + 1, 40));
    CHECK(strlen(id) == APIKEY_ID_LEN);
    CHECK(strncmp(id, key + 6, APIKEY_ID_LEN) == 0);
    crypto_sha256(key, strlen(key), expect);
    CHECK(memcmp(hash, expect, 32) == 0);

    /* Parsing the generated key gives the same id and hash. */
    char id2[APIKEY_ID_LEN + 1];
    uint8_t hash2[32];
    REQUIRE(apikey_parse(key, id2, hash2) == CR_OK);
    CHECK_STR(id2, id);
    CHECK(memcmp(hash2, hash, 32) == 0);
}

static void test_generate_unique(void)
{
    char k1[APIKEY_LEN + 1], k2[APIKEY_LEN + 1];
    char i1[APIKEY_ID_LEN + 1], i2[APIKEY_ID_LEN + 1];
    uint8_t h1[32], h2[32];
    REQUIRE(apikey_generate(k1, i1, h1) == CR_OK);
    REQUIRE(apikey_generate(k2, i2, h2) == CR_OK);
    CHECK(strcmp(k1, k2) != 0);
    CHECK(strcmp(i1, i2) != 0);
    CHECK(strcmp(k1 + 23, k2 + 23) != 0); /* the secret parts differ too */
    CHECK(memcmp(h1, h2, 32) != 0);
}

static void test_parse_known(void)
{
    char id[APIKEY_ID_LEN + 1];
    uint8_t hash[32];
    char hex[65];
    REQUIRE(apikey_parse(known_key, id, hash) == CR_OK);
    CHECK_STR(id, "0123456789abcdef");
    crypto_hex_encode(hash, 32, hex);
    /* printf '%s' <key> | sha256sum */
    CHECK_STR(hex, "0a8bf6dd8169446d9fbdee6ff6ba5c69f330cd3cc31b9c2e5aa4c47a74d6d37d");
}

/* Parses a copy of known_key with s[pos] replaced by c. */
static enum cr_err parse_with(size_t pos, char c)
{
    char key[sizeof(known_key)];
    char id[APIKEY_ID_LEN + 1];
    uint8_t hash[32];
    memcpy(key, known_key, sizeof(key));
    key[pos] = c;
    return apikey_parse(key, id, hash);
}

static enum cr_err parse_str(const char *key)
{
    char id[APIKEY_ID_LEN + 1];
    uint8_t hash[32];
    return apikey_parse(key, id, hash);
}

static void test_parse_rejects(void)
{
    char key[sizeof(known_key) + 1];

    CHECK(parse_str("") == CR_EINVAL);
    CHECK(parse_str("crier_") == CR_EINVAL);
    /* Wrong prefix. */
    CHECK(parse_with(0, 'C') == CR_EINVAL);
    CHECK(parse_with(0, 'x') == CR_EINVAL);
    CHECK(parse_with(4, 'R') == CR_EINVAL);
    CHECK(parse_with(5, '-') == CR_EINVAL);
    CHECK(parse_str("criex_0123456789abcdef_0123456789abcdef0123456789abcdef01234567") ==
          CR_EINVAL);
    /* Missing or misplaced underscore. */
    CHECK(parse_with(22, 'a') == CR_EINVAL);
    CHECK(parse_with(22, '-') == CR_EINVAL);
    CHECK(parse_str("crier_0123456789abcde_f0123456789abcdef0123456789abcdef01234567") ==
          CR_EINVAL);
    CHECK(parse_str("crier_0123456789abcdef0123456789abcdef0123456789abcdef012345678") ==
          CR_EINVAL);
    /* Uppercase or non-hex characters in the id or the secret. */
    CHECK(parse_with(16, 'A') == CR_EINVAL);
    CHECK(parse_with(21, 'F') == CR_EINVAL);
    CHECK(parse_with(6, 'g') == CR_EINVAL);
    CHECK(parse_with(33, 'A') == CR_EINVAL);
    CHECK(parse_with(62, 'F') == CR_EINVAL);
    CHECK(parse_with(40, 'z') == CR_EINVAL);
    CHECK(parse_with(50, ' ') == CR_EINVAL);
    CHECK(parse_with(23, '_') == CR_EINVAL);
    /* Wrong length. */
    memcpy(key, known_key, sizeof(known_key));
    key[APIKEY_LEN - 1] = '\0';
    CHECK(parse_str(key) == CR_EINVAL);
    memcpy(key, known_key, sizeof(known_key) - 1);
    key[APIKEY_LEN] = '0';
    key[APIKEY_LEN + 1] = '\0';
    CHECK(parse_str(key) == CR_EINVAL);
    memcpy(key, known_key, sizeof(known_key) - 1); /* a trailing newline */
    key[APIKEY_LEN] = '\n';
    key[APIKEY_LEN + 1] = '\0';
    CHECK(parse_str(key) == CR_EINVAL);
    /* A key cut short by a NUL is too short, whatever follows. */
    CHECK(parse_with(40, '\0') == CR_EINVAL);
    /* The unmodified key still parses (the helpers are not always failing). */
    CHECK(parse_with(40, known_key[40]) == CR_OK);
    CHECK(parse_str(known_key) == CR_OK);
}

int main(void)
{
    RUN(test_generate_format);
    RUN(test_generate_unique);
    RUN(test_parse_known);
    RUN(test_parse_rejects);
    return check_summary();
}
