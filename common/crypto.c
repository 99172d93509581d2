/* crypto.c - hashing, MACs, hex/base64, random bytes and AES-256-GCM sealed
 * secrets, as checked wrappers over OpenSSL 3.
 *
 * Functions returning void only fail when OpenSSL itself is broken or out of
 * memory; like xmalloc, they log and abort (a supervisor restarts us).
 * Intermediate buffers that held key material or plaintext are cleansed
 * before they are freed. */
#include "crypto.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "log.h"
#include "xalloc.h"

#define SEAL_PREFIX "v1:"
#define SEAL_PREFIX_LEN (sizeof(SEAL_PREFIX) - 1)
#define SEAL_NONCE_LEN 12
#define SEAL_TAG_LEN 16
/* OpenSSL length arguments are int; feed large inputs in pieces this big. */
#define CRYPTO_CHUNK ((size_t)1 << 30)

static void crypto_fatal(const char *what)
{
    log_error("fatal: OpenSSL %s failed", what);
    abort();
}

/* ---------------------------------------------------------------- digests */

void crypto_sha256(const void *data, size_t len, uint8_t out[32])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    const uint8_t *p = data;

    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
        crypto_fatal("SHA-256 init");
    while (len > 0) {
        size_t n = len < CRYPTO_CHUNK ? len : CRYPTO_CHUNK;
        if (EVP_DigestUpdate(ctx, p, n) != 1)
            crypto_fatal("SHA-256 update");
        p += n;
        len -= n;
    }
    if (EVP_DigestFinal_ex(ctx, out, NULL) != 1)
        crypto_fatal("SHA-256 final");
    EVP_MD_CTX_free(ctx);
}

void crypto_sha256_hex(const void *data, size_t len, char out[65])
{
    uint8_t md[32];
    crypto_sha256(data, len, md);
    crypto_hex_encode(md, sizeof md, out);
}

static void hmac(const EVP_MD *md, const char *name, const void *key, size_t keylen,
                 const void *data, size_t len, uint8_t *out, unsigned int want)
{
    /* HMAC() treats a NULL key as "no key set"; an empty key must still work. */
    static const uint8_t empty;
    unsigned int outlen = 0;

    if (keylen > INT_MAX)
        crypto_fatal(name);
    if (!key || keylen == 0)
        key = &empty;
    if (!data)
        data = &empty;
    if (!HMAC(md, key, (int)keylen, data, len, out, &outlen) || outlen != want)
        crypto_fatal(name);
}

void crypto_hmac_sha1(const void *key, size_t keylen, const void *data, size_t len, uint8_t out[20])
{
    hmac(EVP_sha1(), "HMAC-SHA1", key, keylen, data, len, out, 20);
}

void crypto_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len,
                        uint8_t out[32])
{
    hmac(EVP_sha256(), "HMAC-SHA256", key, keylen, data, len, out, 32);
}

bool crypto_ct_equal(const void *a, const void *b, size_t n)
{
    if (n == 0)
        return true;
    return CRYPTO_memcmp(a, b, n) == 0;
}

enum cr_err crypto_random(void *buf, size_t n)
{
    uint8_t *p = buf;

    while (n > 0) {
        size_t chunk = n < CRYPTO_CHUNK ? n : CRYPTO_CHUNK;
        if (RAND_bytes(p, (int)chunk) != 1)
            return CR_ECRYPTO;
        p += chunk;
        n -= chunk;
    }
    return CR_OK;
}

/* -------------------------------------------------------------------- hex */

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

void crypto_hex_encode(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0x0f];
    }
    out[2 * n] = '\0';
}

enum cr_err crypto_hex_decode(const char *hex, uint8_t *out, size_t outlen)
{
    if (!hex)
        return CR_EINVAL;
    /* A NUL before 2*outlen is not a hex digit, so this never reads past it. */
    for (size_t i = 0; i < outlen; i++) {
        int hi = hex_value(hex[2 * i]);
        int lo = hi < 0 ? -1 : hex_value(hex[2 * i + 1]);
        if (lo < 0)
            goto bad;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    if (hex[2 * outlen] != '\0')
        goto bad;
    return CR_OK;

bad:
    OPENSSL_cleanse(out, outlen);
    return CR_EINVAL;
}

/* ----------------------------------------------------------------- base64 */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

char *crypto_base64_encode(const uint8_t *in, size_t n)
{
    if (n > (SIZE_MAX - 1) / 4 * 3 - 2)
        crypto_fatal("base64 length");
    size_t outlen = (n + 2) / 3 * 4;
    char *out = xmalloc(outlen + 1);
    char *o = out;
    size_t i = 0;

    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = b64_alphabet[(v >> 6) & 63];
        *o++ = b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = b64_alphabet[(v >> 6) & 63];
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

/* Strict RFC 4648 decoding: length a multiple of 4, alphabet characters only,
 * at most two '=' and only at the very end, and the unused bits before the
 * padding zero (so every byte string has exactly one accepted encoding). */
enum cr_err crypto_base64_decode(const char *in, uint8_t **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    if (!in)
        return CR_EINVAL;

    size_t len = strlen(in);
    if (len % 4 != 0)
        return CR_EINVAL;
    size_t pad = 0;
    if (len > 0 && in[len - 1] == '=')
        pad = in[len - 2] == '=' ? 2 : 1;

    size_t n = len / 4 * 3 - pad;
    uint8_t *buf = xmalloc(n + 1);
    size_t o = 0;

    for (size_t i = 0; i < len; i += 4) {
        bool last = i + 4 == len;
        int v[4];
        for (int k = 0; k < 4; k++) {
            if (last && k >= 4 - (int)pad) {
                v[k] = 0;
                continue;
            }
            v[k] = b64_value(in[i + k]);
            if (v[k] < 0)
                goto bad;
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        buf[o++] = (uint8_t)(w >> 16);
        if (last && pad == 2) {
            if (v[1] & 0x0f)
                goto bad;
            break;
        }
        buf[o++] = (uint8_t)(w >> 8);
        if (last && pad == 1) {
            if (v[2] & 0x03)
                goto bad;
            break;
        }
        buf[o++] = (uint8_t)w;
    }
    buf[n] = '\0'; /* convenience for textual payloads; not counted in outlen */
    *out = buf;
    *outlen = n;
    return CR_OK;

bad:
    OPENSSL_clear_free(buf, n + 1);
    return CR_EINVAL;
}

/* -------------------------------------------------------------------- key */

enum cr_err crypto_parse_key(const char *text, uint8_t key[CRYPTO_KEY_LEN])
{
    uint8_t *raw = NULL;
    size_t rawlen = 0;
    enum cr_err err = CR_EINVAL;

    if (!text)
        return CR_EINVAL;
    if (strlen(text) == 2 * CRYPTO_KEY_LEN)
        return crypto_hex_decode(text, key, CRYPTO_KEY_LEN);

    if (crypto_base64_decode(text, &raw, &rawlen) != CR_OK)
        goto out;
    if (rawlen != CRYPTO_KEY_LEN)
        goto out;
    memcpy(key, raw, CRYPTO_KEY_LEN);
    err = CR_OK;
out:
    if (raw)
        OPENSSL_clear_free(raw, rawlen + 1);
    return err;
}

/* ---------------------------------------------------------- sealed secrets */

enum cr_err crypto_seal(const uint8_t key[CRYPTO_KEY_LEN], const void *plain, size_t len,
                        char **out)
{
    EVP_CIPHER_CTX *ctx = NULL;
    uint8_t *blob = NULL;
    char *b64 = NULL;
    size_t bloblen = 0;
    enum cr_err err = CR_ECRYPTO;
    int n = 0;

    *out = NULL;
    if (!key || (!plain && len > 0))
        return CR_EINVAL;
    if (len > SIZE_MAX / 2 - SEAL_NONCE_LEN - SEAL_TAG_LEN)
        return CR_ETOOBIG;

    bloblen = SEAL_NONCE_LEN + len + SEAL_TAG_LEN;
    blob = xmalloc(bloblen);
    uint8_t *nonce = blob;
    uint8_t *ct = blob + SEAL_NONCE_LEN;
    uint8_t *tag = ct + len;

    if (crypto_random(nonce, SEAL_NONCE_LEN) != CR_OK)
        goto out;
    ctx = EVP_CIPHER_CTX_new();
    if (!ctx)
        goto out;
    if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SEAL_NONCE_LEN, NULL) != 1 ||
        EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) != 1)
        goto out;

    const uint8_t *p = plain;
    uint8_t *c = ct;
    for (size_t left = len; left > 0;) {
        size_t chunk = left < CRYPTO_CHUNK ? left : CRYPTO_CHUNK;
        if (EVP_EncryptUpdate(ctx, c, &n, p, (int)chunk) != 1 || (size_t)n != chunk)
            goto out;
        p += chunk;
        c += chunk;
        left -= chunk;
    }
    if (EVP_EncryptFinal_ex(ctx, c, &n) != 1 || n != 0)
        goto out;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SEAL_TAG_LEN, tag) != 1)
        goto out;

    b64 = crypto_base64_encode(blob, bloblen);
    size_t b64len = strlen(b64);
    *out = xmalloc(SEAL_PREFIX_LEN + b64len + 1);
    memcpy(*out, SEAL_PREFIX, SEAL_PREFIX_LEN);
    memcpy(*out + SEAL_PREFIX_LEN, b64, b64len + 1);
    err = CR_OK;
out:
    EVP_CIPHER_CTX_free(ctx);
    free(b64);
    free(blob);
    return err;
}

enum cr_err crypto_open(const uint8_t key[CRYPTO_KEY_LEN], const char *sealed, char **out,
                        size_t *outlen)
{
    EVP_CIPHER_CTX *ctx = NULL;
    uint8_t *blob = NULL;
    size_t bloblen = 0;
    char *plain = NULL;
    size_t ctlen = 0;
    enum cr_err err = CR_EINVAL;
    int n = 0;

    *out = NULL;
    if (outlen)
        *outlen = 0;
    if (!key || !sealed || strncmp(sealed, SEAL_PREFIX, SEAL_PREFIX_LEN) != 0)
        return CR_EINVAL;
    if (crypto_base64_decode(sealed + SEAL_PREFIX_LEN, &blob, &bloblen) != CR_OK)
        return CR_EINVAL;
    if (bloblen < SEAL_NONCE_LEN + SEAL_TAG_LEN)
        goto out;

    err = CR_ECRYPTO;
    ctlen = bloblen - SEAL_NONCE_LEN - SEAL_TAG_LEN;
    const uint8_t *nonce = blob;
    const uint8_t *ct = blob + SEAL_NONCE_LEN;
    uint8_t *tag = blob + SEAL_NONCE_LEN + ctlen;
    plain = xmalloc(ctlen + 1);

    ctx = EVP_CIPHER_CTX_new();
    if (!ctx)
        goto out;
    if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SEAL_NONCE_LEN, NULL) != 1 ||
        EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) != 1)
        goto out;

    const uint8_t *c = ct;
    uint8_t *p = (uint8_t *)plain;
    for (size_t left = ctlen; left > 0;) {
        size_t chunk = left < CRYPTO_CHUNK ? left : CRYPTO_CHUNK;
        if (EVP_DecryptUpdate(ctx, p, &n, c, (int)chunk) != 1 || (size_t)n != chunk)
            goto out;
        p += chunk;
        c += chunk;
        left -= chunk;
    }
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SEAL_TAG_LEN, tag) != 1)
        goto out;
    /* Fails when the tag does not verify: tampered or another key. */
    if (EVP_DecryptFinal_ex(ctx, p, &n) != 1 || n != 0)
        goto out;

    plain[ctlen] = '\0';
    *out = plain;
    plain = NULL;
    if (outlen)
        *outlen = ctlen;
    err = CR_OK;
out:
    EVP_CIPHER_CTX_free(ctx);
    if (plain)
        OPENSSL_clear_free(plain, ctlen + 1);
    free(blob);
    return err;
}
