/* websig.c - Twilio and SendGrid webhook signature checks (see websig.h).
 *
 * Twilio: the form body is decoded once into (name, value) pairs, sorted in
 * UTF-16 code-unit order (the order of the official libraries' sort()),
 * exact duplicates dropped, and concatenated after each candidate URL.
 * SendGrid: OpenSSL's EVP verify over timestamp + body with the SPKI key. */
#include "websig.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "crypto.h"
#include "xalloc.h"

/* ------------------------------------------------------------ form bodies */

struct form_pair {
    const char *name;
    size_t nlen;
    const char *value;
    size_t vlen;
};

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Form-decodes in[0..n) into out ('+' is a space, %XX a byte; a malformed
 * escape stays as it is); returns the decoded length (<= n). */
static size_t form_unescape(const char *in, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        int hi, lo;
        if (c == '+') {
            out[o++] = ' ';
        } else if (c == '%' && i + 2 < n && (hi = hexval((unsigned char)in[i + 1])) >= 0 &&
                   (lo = hexval((unsigned char)in[i + 2])) >= 0) {
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[o++] = (char)c;
        }
    }
    return o;
}

/* Splits and decodes a form body. *dec (body_len + 1 bytes) holds the
 * decoded text the pairs point into; both are the caller's to free. Empty
 * segments ("a=1&&b=2") are skipped; "name" alone has the value "". */
static size_t form_parse(const char *body, size_t len, char **dec, struct form_pair **pairs)
{
    size_t cap = 1;
    for (size_t i = 0; i < len; i++)
        cap += body[i] == '&';
    *pairs = xmalloc(cap * sizeof(**pairs));
    *dec = xmalloc(len + 1);
    char *o = *dec;
    size_t n = 0, i = 0;
    while (i < len) {
        const char *seg = body + i;
        const char *amp = memchr(seg, '&', len - i);
        size_t slen = amp ? (size_t)(amp - seg) : len - i;
        i += slen + 1;
        if (slen == 0)
            continue;
        const char *eq = memchr(seg, '=', slen);
        size_t klen = eq ? (size_t)(eq - seg) : slen;
        struct form_pair *p = &(*pairs)[n++];
        p->name = o;
        p->nlen = form_unescape(seg, klen, o);
        o += p->nlen;
        p->value = o;
        p->vlen = eq ? form_unescape(eq + 1, slen - klen - 1, o) : 0;
        o += p->vlen;
    }
    return n;
}

/* Compares two UTF-8 strings in UTF-16 code-unit order (JavaScript's
 * default sort). That differs from byte order only where a supplementary
 * character (4-byte sequence, a surrogate pair in UTF-16) meets one of
 * U+E000..U+FFFF (lead byte 0xEE or 0xEF): surrogates sort first. */
static int utf16_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x == y)
            continue;
        if (x >= 0xF0 && (y == 0xEE || y == 0xEF))
            return -1;
        if (y >= 0xF0 && (x == 0xEE || x == 0xEF))
            return 1;
        return x < y ? -1 : 1;
    }
    return alen < blen ? -1 : alen > blen ? 1 : 0;
}

static int pair_cmp(const void *pa, const void *pb)
{
    const struct form_pair *a = pa, *b = pb;
    int c = utf16_cmp(a->name, a->nlen, b->name, b->nlen);
    return c ? c : utf16_cmp(a->value, a->vlen, b->value, b->vlen);
}

/* The sorted "name1value1name2value2..." part of the string to sign, heap
 * (NUL-terminated), its length in *outlen. */
static char *form_sorted_concat(const char *body, size_t len, size_t *outlen)
{
    char *dec = NULL;
    struct form_pair *pairs = NULL;
    size_t n = form_parse(body, len, &dec, &pairs);
    qsort(pairs, n, sizeof(*pairs), pair_cmp);
    char *out = xmalloc(len + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && pair_cmp(&pairs[i - 1], &pairs[i]) == 0)
            continue; /* each distinct value of a name once */
        memcpy(out + o, pairs[i].name, pairs[i].nlen);
        o += pairs[i].nlen;
        memcpy(out + o, pairs[i].value, pairs[i].vlen);
        o += pairs[i].vlen;
    }
    out[o] = '\0';
    *outlen = o;
    OPENSSL_cleanse(dec, len + 1);
    free(dec);
    free(pairs);
    return out;
}

bool websig_form_value(const char *body, size_t body_len, const char *name, char *out, size_t outsz)
{
    if (outsz == 0)
        return false;
    out[0] = '\0';
    if (!body)
        return false;
    char *dec = NULL;
    struct form_pair *pairs = NULL;
    size_t n = form_parse(body, body_len, &dec, &pairs);
    size_t want = strlen(name);
    bool found = false;
    for (size_t i = 0; i < n && !found; i++) {
        if (pairs[i].nlen != want || memcmp(pairs[i].name, name, want) != 0)
            continue;
        size_t k = pairs[i].vlen < outsz - 1 ? pairs[i].vlen : outsz - 1;
        memcpy(out, pairs[i].value, k);
        out[k] = '\0';
        found = true;
    }
    free(dec);
    free(pairs);
    return found;
}

/* ------------------------------------------------------------------ URLs */

/* Where a URL's port is: [host_end, auth_end) is ":port" (or empty). */
struct url_ports {
    bool parsed;
    bool has_port;
    bool https;
    size_t host_end; /* end of the host name */
    size_t auth_end; /* end of the authority (start of path, query or fragment) */
};

static struct url_ports url_ports_of(const char *url)
{
    struct url_ports u = {0};
    size_t scheme =
        strspn(url, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-");
    if (scheme == 0 || strncmp(url + scheme, "://", 3) != 0)
        return u;
    const char *sep = url + scheme;
    size_t a = (size_t)(sep - url) + 3;
    size_t e = a + strcspn(url + a, "/?#");
    size_t h = a;
    for (size_t i = a; i < e; i++) /* userinfo ends at the last '@' */
        if (url[i] == '@')
            h = i + 1;
    size_t he;
    if (h < e && url[h] == '[') {
        const char *close = memchr(url + h, ']', e - h);
        if (!close)
            return u;
        he = (size_t)(close - url) + 1;
    } else {
        const char *colon = memchr(url + h, ':', e - h);
        he = colon ? (size_t)(colon - url) : e;
    }
    u.parsed = true;
    u.has_port = he < e && url[he] == ':';
    u.https = (size_t)(sep - url) == 5 && strncasecmp(url, "https", 5) == 0;
    u.host_end = he;
    u.auth_end = e;
    return u;
}

/* base64(HMAC-SHA1(token, url + params)) into out. */
static void twilio_mac(const char *token, const char *url, size_t ulen, const char *params,
                       size_t plen, char out[WEBSIG_TWILIO_SIG_SIZE])
{
    char *msg = xmalloc(ulen + plen + 1);
    memcpy(msg, url, ulen);
    memcpy(msg + ulen, params, plen);
    uint8_t mac[20];
    crypto_hmac_sha1(token, strlen(token), msg, ulen + plen, mac);
    EVP_EncodeBlock((unsigned char *)out, mac, sizeof(mac));
    OPENSSL_cleanse(mac, sizeof(mac));
    free(msg);
}

static bool sig_equal(const char *given, const char expected[WEBSIG_TWILIO_SIG_SIZE])
{
    /* The length is not secret; the content is compared in constant time. */
    return strlen(given) == WEBSIG_TWILIO_SIG_SIZE - 1 &&
           CRYPTO_memcmp(given, expected, WEBSIG_TWILIO_SIG_SIZE - 1) == 0;
}

/* The decoded bodySHA256 query parameter of url, if any. */
static bool url_body_hash(const char *url, char *out, size_t outsz)
{
    const char *q = strchr(url, '?');
    if (!q)
        return false;
    q++;
    size_t qlen = strcspn(q, "#");
    return websig_form_value(q, qlen, "bodySHA256", out, outsz);
}

static bool is_media_type(const char *content_type, const char *want)
{
    size_t n = strlen(want);
    if (strncasecmp(content_type, want, n) != 0)
        return false;
    char c = content_type[n];
    return c == '\0' || c == ';' || c == ' ' || c == '\t';
}

/* The part of the string to sign after the URL: the sorted parameters for a
 * form body, nothing for a bodySHA256 URL. */
static char *twilio_params(const char *url, const char *body, size_t body_len, size_t *plen)
{
    char hash[80];
    if (url_body_hash(url, hash, sizeof(hash))) {
        *plen = 0;
        return xstrdup("");
    }
    return form_sorted_concat(body ? body : "", body ? body_len : 0, plen);
}

void websig_twilio_sign(const char *auth_token, const char *url, const char *body, size_t body_len,
                        char out[WEBSIG_TWILIO_SIG_SIZE])
{
    size_t plen = 0;
    char *params = twilio_params(url, body, body_len, &plen);
    twilio_mac(auth_token ? auth_token : "", url, strlen(url), params, plen, out);
    free(params);
}

bool websig_twilio_verify(const char *auth_token, const char *url, const char *body,
                          size_t body_len, const char *content_type, const char *signature_b64)
{
    if (!auth_token || !*auth_token || !url || !*url || !signature_b64 || !*signature_b64)
        return false;
    char hash[80];
    bool body_hashed = url_body_hash(url, hash, sizeof(hash));
    if (body_hashed) {
        char actual[65];
        crypto_sha256_hex(body ? body : "", body ? body_len : 0, actual);
        if (strlen(hash) != 64 || CRYPTO_memcmp(hash, actual, 64) != 0)
            return false;
    } else if (content_type && *content_type && body_len > 0 &&
               !is_media_type(content_type, "application/x-www-form-urlencoded")) {
        return false; /* parameters Twilio signed are form-encoded */
    }

    size_t plen = 0;
    char *params = twilio_params(url, body, body_len, &plen);
    size_t ulen = strlen(url);
    char expected[WEBSIG_TWILIO_SIG_SIZE];
    twilio_mac(auth_token, url, ulen, params, plen, expected);
    bool ok = sig_equal(signature_b64, expected);

    struct url_ports u = url_ports_of(url);
    if (!ok && u.parsed) {
        /* The official validators' fallback: explicit port removed, or the
         * scheme's default port added. */
        const char *port = u.https ? ":443" : ":80";
        size_t cut = u.has_port ? u.auth_end - u.host_end : 0;
        size_t add = u.has_port ? 0 : strlen(port);
        char *alt = xmalloc(ulen - cut + add + 1);
        size_t o = u.has_port ? u.host_end : u.auth_end;
        memcpy(alt, url, o);
        if (!u.has_port) {
            memcpy(alt + o, port, add);
            o += add;
        }
        memcpy(alt + o, url + u.auth_end, ulen - u.auth_end);
        o += ulen - u.auth_end;
        alt[o] = '\0';
        twilio_mac(auth_token, alt, o, params, plen, expected);
        ok = sig_equal(signature_b64, expected);
        free(alt);
    }
    OPENSSL_cleanse(expected, sizeof(expected));
    OPENSSL_cleanse(params, plen);
    free(params);
    return ok;
}

/* -------------------------------------------------------------- SendGrid */

struct websig_key {
    EVP_PKEY *pkey;
};

enum cr_err websig_key_parse(const char *public_key_b64_der, struct websig_key **out)
{
    *out = NULL;
    uint8_t *der = NULL;
    size_t len = 0;
    EVP_PKEY *pkey = NULL;
    enum cr_err err = CR_EINVAL;
    if (!public_key_b64_der || crypto_base64_decode(public_key_b64_der, &der, &len) != CR_OK)
        goto out;
    const unsigned char *p = der;
    pkey = d2i_PUBKEY(NULL, &p, (long)len);
    if (!pkey || p != der + len || !EVP_PKEY_is_a(pkey, "EC"))
        goto out;
    char group[64] = "";
    if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                        NULL) ||
        strcmp(group, "prime256v1") != 0)
        goto out;
    *out = xcalloc(1, sizeof(**out));
    (*out)->pkey = pkey;
    pkey = NULL;
    err = CR_OK;
out:
    if (err != CR_OK)
        ERR_clear_error(); /* leave no stale entry for the next OpenSSL caller */
    EVP_PKEY_free(pkey);
    free(der);
    return err;
}

void websig_key_free(struct websig_key *k)
{
    if (!k)
        return;
    EVP_PKEY_free(k->pkey);
    free(k);
}

bool websig_sendgrid_verify_key(const struct websig_key *key, const char *timestamp,
                                const char *body, size_t body_len, const char *signature_b64)
{
    if (!key || !timestamp || !signature_b64 || !*signature_b64)
        return false;
    uint8_t *sig = NULL;
    size_t siglen = 0;
    if (crypto_base64_decode(signature_b64, &sig, &siglen) != CR_OK || siglen == 0) {
        free(sig);
        return false;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key->pkey) == 1 &&
              EVP_DigestVerifyUpdate(ctx, timestamp, strlen(timestamp)) == 1 &&
              (body_len == 0 || EVP_DigestVerifyUpdate(ctx, body, body_len) == 1) &&
              EVP_DigestVerifyFinal(ctx, sig, siglen) == 1;
    EVP_MD_CTX_free(ctx);
    free(sig);
    if (!ok)
        ERR_clear_error();
    return ok;
}

bool websig_sendgrid_verify(const char *public_key_b64_der, const char *timestamp, const char *body,
                            size_t body_len, const char *signature_b64)
{
    struct websig_key *k = NULL;
    if (websig_key_parse(public_key_b64_der, &k) != CR_OK)
        return false;
    bool ok = websig_sendgrid_verify_key(k, timestamp, body, body_len, signature_b64);
    websig_key_free(k);
    return ok;
}

bool websig_timestamp_fresh(const char *timestamp, time_t now, long window_s)
{
    if (!timestamp || !*timestamp || strlen(timestamp) > 15)
        return false;
    long long v = 0;
    for (const char *p = timestamp; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (*p - '0');
    }
    long long d = (long long)now - v;
    return d <= window_s && d >= -(long long)window_s;
}
