/* unsub.h - signed per-recipient unsubscribe tokens (List-Unsubscribe).
 *
 * A token names a tenant, a customer and a channel, and carries an
 * HMAC-SHA256 under a key derived from CRIER_SECRET_KEY, so the unsubscribe
 * endpoint (GET or RFC 8058 one-click POST /v1/unsubscribe?token=) needs no
 * session and no lookup table, and nobody can forge one for somebody else:
 *   "<tenant>.<customer>.<channel>.<hex of the first 16 bytes of the MAC>"
 * (URL-safe as it stands). */
#ifndef CRIER_UNSUB_H
#define CRIER_UNSUB_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "err.h"

#define UNSUB_TOKEN_MAX 96

enum cr_err unsub_token(const uint8_t key[CRYPTO_KEY_LEN], long long tenant, long long customer,
                        const char *channel, char *out, size_t outsz) CR_MUST_CHECK;

/* Checks a token (constant-time MAC comparison); on success fills the
 * tenant, customer and channel (a buffer of at least 8 bytes). */
enum cr_err unsub_verify(const uint8_t key[CRYPTO_KEY_LEN], const char *token, long long *tenant,
                         long long *customer, char channel[8]) CR_MUST_CHECK;

#endif
