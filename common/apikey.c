/* apikey.c - API key generation and parsing. */
#include "apikey.h"

#include <string.h>

#include "crypto.h"

static int is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

enum cr_err apikey_generate(char key[APIKEY_LEN + 1], char key_id[APIKEY_ID_LEN + 1],
                            uint8_t hash[32])
{
    uint8_t raw[APIKEY_ID_LEN / 2 + 20];
    if (crypto_random(raw, sizeof(raw)) != CR_OK)
        return CR_ECRYPTO;
    memcpy(key, "crier_", 6);
    crypto_hex_encode(raw, APIKEY_ID_LEN / 2, key + 6);
    key[6 + APIKEY_ID_LEN] = '_';
    crypto_hex_encode(raw + APIKEY_ID_LEN / 2, 20, key + 6 + APIKEY_ID_LEN + 1);
    key[APIKEY_LEN] = '\0';
    return apikey_parse(key, key_id, hash);
}

enum cr_err apikey_parse(const char *key, char key_id[APIKEY_ID_LEN + 1], uint8_t hash[32])
{
    if (strlen(key) != APIKEY_LEN || strncmp(key, "crier_", 6) != 0 ||
        key[6 + APIKEY_ID_LEN] != '_' || !is_lower_hex(key + 6, APIKEY_ID_LEN) ||
        !is_lower_hex(key + 6 + APIKEY_ID_LEN + 1, 40))
        return CR_EINVAL;
    memcpy(key_id, key + 6, APIKEY_ID_LEN);
    key_id[APIKEY_ID_LEN] = '\0';
    crypto_sha256(key, APIKEY_LEN, hash);
    return CR_OK;
}
