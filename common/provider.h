/* provider.h - what a send attempt's outcome means, and Twilio's wire
 * format for SMS (request form and response classification).
 *
 * Classification follows PROVIDERS.md: 429/20429, 21611, 30001 and 5xx are
 * retried; 21610 (recipient replied STOP) fails and opts the customer out;
 * other 4xx fail permanently. A transport failure is retried only when the
 * request certainly never reached the provider (no connection); otherwise
 * its outcome is unknown and it is never sent again. */
#ifndef CRIER_PROVIDER_H
#define CRIER_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "err.h"

enum send_outcome {
    SEND_OK = 0,  /* accepted; provider_id set */
    SEND_RETRY,   /* not processed; try again later */
    SEND_FAILED,  /* permanent failure */
    SEND_UNKNOWN, /* may or may not have been accepted: never resend */
    SEND_SKIPPED, /* not attempted (opted out, no address); message = reason */
};

struct send_result {
    enum send_outcome outcome;
    char provider_id[72];
    char provider_status[24];
    char code[16];      /* provider error code, "" if none */
    char message[256];  /* provider or transport error text, "" if none */
    long retry_after_s; /* from Retry-After, 0 if none */
    bool opt_out;       /* the provider says the recipient opted out */
    bool throttled;     /* 429: not processed, the account must slow down */
};

/* Returns the outcome's name as stored in deliveries.status. */
const char *send_outcome_status(enum send_outcome o);

/* Appends an application/x-www-form-urlencoded "name=value" pair (with '&'
 * before it when out is not empty). */
enum cr_err form_add(struct buf *out, const char *name, const char *value) CR_MUST_CHECK;

/* Builds the form body of POST /2010-04-01/Accounts/{sid}/Messages.json.
 * status_callback may be NULL. */
enum cr_err twilio_sms_form(struct buf *out, const char *to, const char *from, const char *body,
                            const char *status_callback) CR_MUST_CHECK;

/* Builds the form body of POST /2010-04-01/Accounts/{sid}/Calls.json: the
 * call fetches its TwiML from url; status_callback gets every progress event
 * (initiated, ringing, answered, completed). machine_detection is NULL,
 * "Enable" or "DetectMessageEnd" (answering-machine detection, run
 * asynchronously so the call is not held up). */
enum cr_err twilio_call_form(struct buf *out, const char *to, const char *from, const char *url,
                             const char *status_callback,
                             const char *machine_detection) CR_MUST_CHECK;

/* SendGrid's POST /v3/mail/send body for one recipient (JSON, malloc'd):
 * text/plain before text/html (either may be NULL, not both), crier's
 * delivery and tenant ids in custom_args (events echo them), and the RFC
 * 8058 List-Unsubscribe / List-Unsubscribe-Post headers when unsub_url is
 * given. from_name and reply_to may be NULL. */
char *sendgrid_mail_json(const char *to, const char *from, const char *from_name,
                         const char *reply_to, const char *subject, const char *text,
                         const char *html, const char *unsub_url, long long delivery_id,
                         long long tenant_id);

/* Classifies SendGrid's answer: 202 with X-Message-Id (message_id) is sent;
 * 429 and 5xx retry (429 throttles the account); 400, 401, 403, 413 and
 * other 4xx fail with the first error's message. */
void sendgrid_classify(long http_status, const char *body, size_t len, const char *message_id,
                       long retry_after_s, struct send_result *out);

/* Classifies Twilio's HTTP answer. retry_after_s is the parsed Retry-After
 * header (0 if absent). */
void twilio_classify(long http_status, const char *body, size_t len, long retry_after_s,
                     struct send_result *out);

/* Transport failure (no HTTP answer). connected: a connection to the
 * provider was established (the request may have been sent). */
void transport_classify(bool connected, const char *what, struct send_result *out);

/* Parses a Retry-After header value (delta-seconds); 0 if absent/invalid. */
long retry_after_parse(const char *value);

#endif
