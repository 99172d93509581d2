/* crypto.h - hashing, MACs, encodings, random tokens and sealed secrets.
 *
 * Thin, checked wrappers over OpenSSL. Secrets passed in are never logged.
 * Unless stated, output strings are heap-allocated and owned by the caller. */
#ifndef CRIER_CRYPTO_H
#define CRIER_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define CRYPTO_KEY_LEN 32

void crypto_sha256(const void *data, size_t len, uint8_t out[32]);
/* Writes 64 lowercase hex chars + NUL into out. */
void crypto_sha256_hex(const void *data, size_t len, char out[65]);
void crypto_hmac_sha1(const void *key, size_t keylen, const void *data, size_t len,
                      uint8_t out[20]);
void crypto_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len,
                        uint8_t out[32]);
/* Constant-time equality of two n-byte buffers. */
bool crypto_ct_equal(const void *a, const void *b, size_t n);
/* Fills buf with n cryptographically secure random bytes. */
enum cr_err crypto_random(void *buf, size_t n) CR_MUST_CHECK;

/* Lowercase hex of n bytes into out (2n + 1 bytes). */
void crypto_hex_encode(const uint8_t *in, size_t n, char *out);
/* Decodes exactly outlen bytes from 2*outlen hex chars (either case);
 * CR_EINVAL on wrong length or a non-hex char. */
enum cr_err crypto_hex_decode(const char *hex, uint8_t *out, size_t outlen) CR_MUST_CHECK;
/* Standard base64 with padding; caller frees. */
char *crypto_base64_encode(const uint8_t *in, size_t n);
/* Decodes standard base64 (padding required, no whitespace); *out is heap,
 * caller frees. CR_EINVAL on malformed input. */
enum cr_err crypto_base64_decode(const char *in, uint8_t **out, size_t *outlen) CR_MUST_CHECK;

/* Parses CRIER_SECRET_KEY: 64 hex chars or base64 of exactly 32 bytes. */
enum cr_err crypto_parse_key(const char *text, uint8_t key[CRYPTO_KEY_LEN]) CR_MUST_CHECK;

/* AES-256-GCM. seal: *out = "v1:" + base64(nonce[12] | ciphertext | tag[16]),
 * with a fresh random nonce. open: reverses it; CR_ECRYPTO if the text was
 * tampered with or sealed under another key, CR_EINVAL if malformed.
 * *out of open is NUL-terminated (outlen excludes the NUL). */
enum cr_err crypto_seal(const uint8_t key[CRYPTO_KEY_LEN], const void *plain, size_t len,
                        char **out) CR_MUST_CHECK;
enum cr_err crypto_open(const uint8_t key[CRYPTO_KEY_LEN], const char *sealed, char **out,
                        size_t *outlen) CR_MUST_CHECK;

#endif
