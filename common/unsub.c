/* unsub.c - signed, expiring unsubscribe tokens (see unsub.h). */
#include "unsub.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UNSUB_MAC_BYTES 16

static void mac_hex(const uint8_t key[CRYPTO_KEY_LEN], const char *payload,
                    char hex[2 * UNSUB_MAC_BYTES + 1])
{
    /* A key of its own, so a token MAC can never stand for another use of
     * the secret; v2 added the delivery and the expiry. */
    static const char label[] = "crier unsubscribe v2";
    uint8_t sub[32], mac[32];
    crypto_hmac_sha256(key, CRYPTO_KEY_LEN, label, sizeof(label) - 1, sub);
    crypto_hmac_sha256(sub, sizeof(sub), payload, strlen(payload), mac);
    crypto_hex_encode(mac, UNSUB_MAC_BYTES, hex);
}

static bool channel_ok(const char *c)
{
    return !strcmp(c, "sms") || !strcmp(c, "email") || !strcmp(c, "voice");
}

/* The signed part; false when it does not fit. */
static bool payload_of(char *out, size_t outsz, long long tenant, long long customer,
                       const char *channel, long long delivery, long long expires)
{
    int n = snprintf(out, outsz, "%lld.%lld.%s.%lld.%lld", tenant, customer, channel, delivery,
                     expires);
    return n > 0 && (size_t)n < outsz;
}

enum cr_err unsub_token(const uint8_t key[CRYPTO_KEY_LEN], long long tenant, long long customer,
                        const char *channel, long long delivery, long long expires, char *out,
                        size_t outsz)
{
    if (tenant <= 0 || customer <= 0 || delivery < 0 || expires <= 0 || !channel ||
        !channel_ok(channel))
        return CR_EINVAL;
    char payload[UNSUB_TOKEN_MAX], hex[2 * UNSUB_MAC_BYTES + 1];
    if (!payload_of(payload, sizeof(payload), tenant, customer, channel, delivery, expires))
        return CR_ETOOBIG;
    mac_hex(key, payload, hex);
    int n = snprintf(out, outsz, "%s.%s", payload, hex);
    return n > 0 && (size_t)n < outsz ? CR_OK : CR_ETOOBIG;
}

enum cr_err unsub_verify(const uint8_t key[CRYPTO_KEY_LEN], const char *token, long long now,
                         struct unsub_claims *claims)
{
    memset(claims, 0, sizeof(*claims));
    if (!token || strlen(token) >= UNSUB_TOKEN_MAX)
        return CR_EINVAL;
    const char *dot = strrchr(token, '.');
    if (!dot || strlen(dot + 1) != 2 * UNSUB_MAC_BYTES)
        return CR_EINVAL;
    char payload[UNSUB_TOKEN_MAX];
    snprintf(payload, sizeof(payload), "%.*s", (int)(dot - token), token);
    struct unsub_claims c = {0};
    int used = 0;
    if (sscanf(payload, "%lld.%lld.%7[a-z].%lld.%lld%n", &c.tenant, &c.customer, c.channel,
               &c.delivery, &c.expires, &used) != 5 ||
        (size_t)used != strlen(payload) || c.tenant <= 0 || c.customer <= 0 || c.delivery < 0 ||
        c.expires <= 0 || !channel_ok(c.channel))
        return CR_EINVAL;
    char want[2 * UNSUB_MAC_BYTES + 1];
    mac_hex(key, payload, want);
    if (!crypto_ct_equal(want, dot + 1, 2 * UNSUB_MAC_BYTES))
        return CR_EINVAL;
    /* "+1" or "01" would be other spellings of the same numbers. */
    char canonical[UNSUB_TOKEN_MAX];
    if (!payload_of(canonical, sizeof(canonical), c.tenant, c.customer, c.channel, c.delivery,
                    c.expires) ||
        strcmp(canonical, payload) != 0)
        return CR_EINVAL;
    *claims = c;
    return now < c.expires ? CR_OK : CR_ETIMEOUT;
}
