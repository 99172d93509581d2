/* websig.h - webhook signature checks for the providers that call us back.
 *
 * Twilio (X-Twilio-Signature):
 *   base64(HMAC-SHA1(key = auth token,
 *                    msg = URL + for each form parameter sorted by name: name + value))
 * over the form-DECODED values; a repeated name contributes each distinct
 * value once, values sorted. The URL is the one configured at Twilio, byte
 * for byte (scheme, host case, port, path, query): callers rebuild it from
 * CRIER_PUBLIC_URL, never from the socket. A URL whose query carries
 * bodySHA256=<hex> is a JSON-bodied webhook: the signature covers the URL
 * only and the raw body must hash (SHA-256, lowercase hex) to that value.
 * Like Twilio's official validators, a signature made over the URL with the
 * default port added (no port in the URL: ":443" for https, ":80" otherwise)
 * or with its explicit port removed is accepted too.
 *
 * SendGrid (signed Event Webhook):
 *   base64(DER(ECDSA-P256-SHA256(msg = timestamp header bytes + raw body)))
 * verified with the account's public key, shown by SendGrid as base64 of a
 * DER SubjectPublicKeyInfo. The signature check says nothing about age:
 * receivers also apply websig_timestamp_fresh (SendGrid has no replay
 * window of its own). ECDSA signatures are malleable, so a signature string
 * is never a dedupe key (sg_event_id is).
 *
 * All comparisons of secrets-derived values are constant-time
 * (CRYPTO_memcmp). A missing or empty signature never verifies. Bodies are
 * (pointer, length) and need not be NUL-terminated. Pure functions: no I/O,
 * no logging, safe from any thread. */
#ifndef CRIER_WEBSIG_H
#define CRIER_WEBSIG_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "err.h"

/* SendGrid's headers and the freshness window crier applies to them. */
#define WEBSIG_TWILIO_HEADER "X-Twilio-Signature"
#define WEBSIG_SENDGRID_SIG_HEADER "X-Twilio-Email-Event-Webhook-Signature"
#define WEBSIG_SENDGRID_TS_HEADER "X-Twilio-Email-Event-Webhook-Timestamp"
#define WEBSIG_REPLAY_WINDOW_S 300

/* Length of a Twilio signature (base64 of 20 bytes) plus its NUL. */
#define WEBSIG_TWILIO_SIG_SIZE 29

/* True when signature_b64 is a valid X-Twilio-Signature of the request for
 * auth_token (with the port fallback above). content_type is the request's
 * Content-Type (NULL or "" counts as form); a form body under another media
 * type never verifies unless the URL carries bodySHA256. */
bool websig_twilio_verify(const char *auth_token, const char *url, const char *body,
                          size_t body_len, const char *content_type, const char *signature_b64);

/* The signature Twilio would send for exactly url (no port fallback) and
 * this body: out gets 28 base64 characters and a NUL. For a URL carrying
 * bodySHA256 the body is not part of it (and not checked). */
void websig_twilio_sign(const char *auth_token, const char *url, const char *body, size_t body_len,
                        char out[WEBSIG_TWILIO_SIG_SIZE]);

/* Finds the first parameter called name in an application/x-www-form-urlencoded
 * body and writes its decoded value to out (truncated to outsz - 1 bytes,
 * always NUL-terminated). False when absent. */
bool websig_form_value(const char *body, size_t body_len, const char *name, char *out,
                       size_t outsz);

/* A parsed SendGrid verification key (an EC P-256 public key). */
struct websig_key;

/* Parses a base64 DER SubjectPublicKeyInfo (as SendGrid shows it, without
 * PEM armour); *out is the caller's (websig_key_free). CR_EINVAL when it is
 * not base64, not a public key, or not on P-256. */
enum cr_err websig_key_parse(const char *public_key_b64_der, struct websig_key **out) CR_MUST_CHECK;
void websig_key_free(struct websig_key *k);

/* True when signature_b64 (base64 DER ECDSA) signs timestamp + body under key. */
bool websig_sendgrid_verify_key(const struct websig_key *key, const char *timestamp,
                                const char *body, size_t body_len, const char *signature_b64);

/* The same with the key given as base64 DER (parsed on each call). */
bool websig_sendgrid_verify(const char *public_key_b64_der, const char *timestamp, const char *body,
                            size_t body_len, const char *signature_b64);

/* True when timestamp is a decimal count of Unix seconds within window_s of
 * now, either way (the replay window receivers apply to SendGrid events). */
bool websig_timestamp_fresh(const char *timestamp, time_t now, long window_s);

#endif
