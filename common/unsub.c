/* unsub.c - signed unsubscribe tokens (see unsub.h). */
#include "unsub.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UNSUB_MAC_BYTES 16

static void mac_hex(const uint8_t key[CRYPTO_KEY_LEN], const char *payload,
                    char hex[2 * UNSUB_MAC_BYTES + 1])
{
    /* A key of its own, so a token MAC can never stand for another use of
     * the secret. */
    uint8_t sub[32], mac[32];
    crypto_hmac_sha256(key, CRYPTO_KEY_LEN, "crier unsubscribe v1", 20, sub);
    crypto_hmac_sha256(sub, sizeof(sub), payload, strlen(payload), mac);
    crypto_hex_encode(mac, UNSUB_MAC_BYTES, hex);
}

static bool channel_ok(const char *c)
{
    return !strcmp(c, "sms") || !strcmp(c, "email") || !strcmp(c, "voice");
}

enum cr_err unsub_token(const uint8_t key[CRYPTO_KEY_LEN], long long tenant, long long customer,
                        const char *channel, char *out, size_t outsz)
{
    if (tenant <= 0 || customer <= 0 || !channel || !channel_ok(channel))
        return CR_EINVAL;
    char payload[64], hex[2 * UNSUB_MAC_BYTES + 1];
    snprintf(payload, sizeof(payload), "%lld.%lld.%s", tenant, customer, channel);
    mac_hex(key, payload, hex);
    int n = snprintf(out, outsz, "%s.%s", payload, hex);
    return n > 0 && (size_t)n < outsz ? CR_OK : CR_ETOOBIG;
}

enum cr_err unsub_verify(const uint8_t key[CRYPTO_KEY_LEN], const char *token, long long *tenant,
                         long long *customer, char channel[8])
{
    if (!token || strlen(token) >= UNSUB_TOKEN_MAX)
        return CR_EINVAL;
    const char *dot = strrchr(token, '.');
    if (!dot || strlen(dot + 1) != 2 * UNSUB_MAC_BYTES)
        return CR_EINVAL;
    char payload[UNSUB_TOKEN_MAX];
    snprintf(payload, sizeof(payload), "%.*s", (int)(dot - token), token);
    long long t = 0, c = 0;
    char ch[8] = "";
    int used = 0;
    if (sscanf(payload, "%lld.%lld.%7[a-z]%n", &t, &c, ch, &used) != 3 ||
        (size_t)used != strlen(payload) || t <= 0 || c <= 0 || !channel_ok(ch))
        return CR_EINVAL;
    char want[2 * UNSUB_MAC_BYTES + 1];
    mac_hex(key, payload, want);
    if (!crypto_ct_equal(want, dot + 1, 2 * UNSUB_MAC_BYTES))
        return CR_EINVAL;
    char canonical[UNSUB_TOKEN_MAX];
    snprintf(canonical, sizeof(canonical), "%lld.%lld.%s", t, c, ch);
    if (strcmp(canonical, payload) != 0) /* "+1" or "01" would be other spellings */
        return CR_EINVAL;
    *tenant = t;
    *customer = c;
    snprintf(channel, 8, "%s", ch);
    return CR_OK;
}
