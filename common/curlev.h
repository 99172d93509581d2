/* curlev.h - a curl multi handle driven by a libevent loop (curl's
 * multi_socket API, as in curl's multi-event example): each socket curl
 * watches becomes an event, curl's timeout a timer. A finished transfer is
 * removed from the multi handle and handed to done(); after() runs once
 * after every batch of finished transfers.
 *
 * Loop: single-threaded. done() may add new transfers. */
#ifndef CRIER_CURLEV_H
#define CRIER_CURLEV_H

#include <curl/curl.h>
#include <event2/event.h>

struct curlev;

typedef void (*curlev_done_cb)(void *arg, CURL *easy, CURLcode result);
typedef void (*curlev_after_cb)(void *arg);

/* NULL when curl cannot make a multi handle. after may be NULL. */
struct curlev *curlev_new(struct event_base *base, curlev_done_cb done, curlev_after_cb after,
                          void *arg);

/* The multi handle: for options and curl_multi_add_handle. */
CURLM *curlev_multi(const struct curlev *cv);

/* Lets curl start what was just added (and reports what finished). */
void curlev_kick(struct curlev *cv);

/* Transfers still added must be removed by the caller first. */
void curlev_free(struct curlev *cv);

#endif
