/* unsub.h - signed, expiring per-recipient unsubscribe tokens
 * (List-Unsubscribe).
 *
 * A token names a tenant, a customer, a channel and (0 when none) the
 * delivery that carried it, says until when it works, and carries an
 * HMAC-SHA256 under a key derived from CRIER_SECRET_KEY, so the unsubscribe
 * endpoint (GET or RFC 8058 one-click POST /v1/unsubscribe?token=) needs no
 * session and no lookup table, and nobody can forge or prolong one:
 *   "<tenant>.<customer>.<channel>.<delivery>.<expires>.<hex of 16 MAC bytes>"
 * with expires in Unix seconds (URL-safe as it stands). The first format
 * (without delivery and expiry, MAC label v1) is no longer accepted. */
#ifndef CRIER_UNSUB_H
#define CRIER_UNSUB_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "err.h"

#define UNSUB_TOKEN_MAX 128
/* How long a link in a message works. Opt-outs must be honoured for at
 * least 30 days after a commercial email is sent (CAN-SPAM); people
 * unsubscribe from old mail too. */
#define UNSUB_TOKEN_TTL_S (180LL * 24 * 3600)

/* What a valid token says. */
struct unsub_claims {
    long long tenant, customer;
    long long delivery; /* 0: the token names no delivery */
    long long expires;  /* Unix seconds: valid before this */
    char channel[8];    /* sms, email or voice */
};

/* Writes the token for these claims into out. CR_EINVAL for a non-positive
 * tenant, customer or expires, a negative delivery or an unknown channel;
 * CR_ETOOBIG when out is too small (UNSUB_TOKEN_MAX always fits). */
enum cr_err unsub_token(const uint8_t key[CRYPTO_KEY_LEN], long long tenant, long long customer,
                        const char *channel, long long delivery, long long expires, char *out,
                        size_t outsz) CR_MUST_CHECK;

/* Checks a token at time now (Unix seconds; constant-time MAC comparison).
 * CR_OK fills *claims; CR_EINVAL for a malformed, tampered or foreign
 * token; CR_ETIMEOUT for a genuine token whose time ran out (claims are
 * filled then too, so the caller can say what it was for). */
enum cr_err unsub_verify(const uint8_t key[CRYPTO_KEY_LEN], const char *token, long long now,
                         struct unsub_claims *claims) CR_MUST_CHECK;

#endif
