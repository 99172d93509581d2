/* api.h - crier-api's shared types: the app, a request in flight, and the
 * functions each resource file exports to the router. */
#ifndef CRIER_API_H
#define CRIER_API_H

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <event2/http.h>
#include <hiredis/async.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>

#include "pgpool.h"
#include "rq.h"

/* Limits on what clients send (bytes). */
#define API_MAX_JSON_BODY (1L << 20)    /* ordinary JSON requests */
#define API_MAX_IMPORT_BODY (64L << 20) /* NDJSON/CSV imports */
#define API_IMPORT_MAX_ERRORS 100       /* per-line errors reported */
#define API_MAX_FORM_BODY (8L << 10)    /* small form posts (unsubscribe) */

struct api_config {
    char *database_url;
    char *secret_key;
    char *redis_url;
    char *http_addr;
    char *public_url;
    char *key_prefix;
    long pg_pool_size;
    long pg_timeout_ms;
    long http_timeout_s;
    long max_body;
    long shutdown_grace_s;
    long events_max_streams; /* open event streams at most (events.c) */
    long events_poll_ms;     /* how often a streamed campaign's counters are read */
    long events_heartbeat_s; /* a comment on an otherwise quiet stream this often */
    int log_level;
    int log_format;
};

/* Redis link with reconnect and a liveness ping (hiredis 0.14 has no
 * timeouts of its own). */
struct api_redis {
    struct app *app;
    redisAsyncContext *ac;
    bool connected;
    struct timeval last_pong;
    struct event *timer;
};

struct app {
    struct event_base *base;
    const struct api_config *cfg;
    struct evhttp *http;
    struct evhttp_bound_socket *listener;
    struct pgpool *pg;
    struct api_redis redis;
    struct rq_keys keys;
    struct event *sigterm, *sigint, *drain_timer;
    bool draining;
    int inflight;
    struct events *events; /* open event streams (events.c) */
    struct auth_cache *auth;
    struct tzdb *tzdb;  /* time zone names PostgreSQL knows (tzdb.c) */
    uint8_t secret[32]; /* CRIER_SECRET_KEY: seals provider credentials */
    /* webhook verification secrets per tenant (webhooks.c) */
    struct webhooks_cache *webhooks;
};

/* One HTTP request being handled. Created by the router, freed by the
 * response door (http_reply*), never elsewhere: after replying a handler
 * must not touch it. */
struct api_req {
    struct app *app;
    struct evhttp_request *req;
    enum evhttp_cmd_type method;
    char path[512];
    const char *query; /* borrowed from the decoded URI, may be NULL */
    struct evhttp_uri *uri;
    long long tenant_id;
    long long ids[2]; /* numeric path parameters, in order */
    char slug[64];    /* a {slug} path parameter ([a-z0-9_-]) */
    const char *body; /* contiguous request body, borrowed from evhttp */
    size_t body_len;
    size_t max_body;
    void (*handler)(struct api_req *r);
    const char *page_key; /* http_query_page: the list's key (a literal) */
    long page_limit;      /* and its page size (-1: not paged) */
    void *state;          /* handler-owned; freed with state_free */
    void (*state_free)(void *state);
    struct timeval started;
};

/* ---- response door (http.c) ---- */
void http_reply_json(struct api_req *r, int status, cJSON *body); /* takes body */
void http_reply_raw_json(struct api_req *r, int status, const char *json);
/* A body of another media type (TwiML, HTML), e.g. "text/xml". */
void http_reply_text(struct api_req *r, int status, const char *content_type, const char *body,
                     size_t len);
/* field may be NULL. */
void http_reply_error(struct api_req *r, int status, const char *code, const char *message,
                      const char *field);
/* 503 for a failed dependency call (logs the detail, never the client's fault). */
void http_reply_dependency(struct api_req *r, const char *dependency, const char *detail);
/* Parses the body as a JSON object; on failure replies 400 and returns NULL. */
cJSON *http_body_json_or_reply(struct api_req *r);
void http_request_free(struct api_req *r);
/* 204 No Content. */
void http_reply_no_content(struct api_req *r);
/* Parses ?limit=&cursor= (keyset: cursor is the last id of the previous
 * page). Defaults limit 50, max 500. Replies 400 naming the parameter and
 * returns -1 on error. */
int http_page_params_or_reply(struct api_req *r, long *limit, long long *after);
/* Answers a keyset page: res has one row whose first column is a JSON
 * array of objects with an "id"; replies {"<key>": [...], "next_cursor":
 * the last id when the page is full, else null}. 503 when the query failed. */
void http_reply_page(struct api_req *r, PGresult *res, const char *errmsg, const char *key,
                     long limit);
/* Runs a list query whose result http_reply_page answers under key. */
void http_query_page(struct api_req *r, const char *sql, int nparams, const char *const *params,
                     const char *key, long limit);
/* Writes the tenant id and the first path id as text (query parameters). */
void http_id_params(const struct api_req *r, char tenant[24], char id[24]);
/* For a callback expecting exactly one row: true when res has it; otherwise
 * replies (503 when the query failed, 404 "no such <what>") and is false. */
bool http_one_row_or_reply(struct api_req *r, PGresult *res, const char *errmsg, const char *what);
/* Answers a single-row query whose first column is a JSON object: status on
 * a row, 404 "no such <what>" without one, 503 when the query failed. */
void http_reply_pg_row(struct api_req *r, PGresult *res, const char *errmsg, int status,
                       const char *what);
/* Returns the first key of obj not in allowed (NULL-terminated), or NULL. */
const char *http_unknown_key(const cJSON *obj, const char *const *allowed);
/* 409 {"error": {"code": "invalid_transition", "status", "allowed": [...]}}. */
void http_reply_transition(struct api_req *r, const char *action, const char *status,
                           const char *const *allowed);

/* ---- router / server (router.c) ---- */
void router_handle(struct evhttp_request *req, void *arg);

/* ---- auth (auth.c) ---- */
struct auth_cache *auth_cache_new(void);
void auth_cache_free(struct auth_cache *c);
/* Resolves the bearer key, sets r->tenant_id and calls r->handler, or
 * replies 401/503. */
void auth_then_handle(struct api_req *r);

/* ---- redis link (redis_link.c) ---- */
void redis_link_start(struct app *app);
void redis_link_stop(struct app *app);
bool redis_link_ready(struct app *app);

/* ---- time zones (tzdb.c) ---- */
/* Loads pg_timezone_names through the pool (async; retried until it works). */
void tzdb_start(struct app *app);
void tzdb_free(struct tzdb *z);
/* True when name is a zone PostgreSQL knows. Before the list is loaded,
 * accepts any well-formed name (the database CHECK still applies). */
bool tzdb_valid(const struct app *app, const char *name);

/* ---- handlers ---- */
void health_healthz(struct api_req *r);
void health_readyz(struct api_req *r);
/* customers.c */
void settings_get(struct api_req *r);
void settings_patch(struct api_req *r);
void suppressions_create(struct api_req *r);
void suppressions_list(struct api_req *r);
void suppressions_delete(struct api_req *r);

void customers_create(struct api_req *r);
void customers_import(struct api_req *r);
void customers_list(struct api_req *r);
void customers_get(struct api_req *r);
void customers_patch(struct api_req *r);
void customers_delete(struct api_req *r);
/* activity.c: interactions and appointments */
void interactions_import(struct api_req *r);
void appointments_import(struct api_req *r);
/* segments.c */
void segments_templates(struct api_req *r);
void segments_preview(struct api_req *r);
void segments_create(struct api_req *r);
void segments_list(struct api_req *r);
void segments_get(struct api_req *r);
void segments_patch(struct api_req *r);
void segments_delete(struct api_req *r);
/* agents.c */
void agents_list(struct api_req *r);
void agents_get(struct api_req *r);
void agents_validate(struct api_req *r);
/* campaigns.c */
void campaigns_create(struct api_req *r);
void campaigns_list(struct api_req *r);
void campaigns_get(struct api_req *r);
void campaigns_patch(struct api_req *r);
void campaigns_delete(struct api_req *r);
void campaigns_launch(struct api_req *r);
void campaigns_pause(struct api_req *r);
void campaigns_resume(struct api_req *r);
void campaigns_complete(struct api_req *r);
void campaigns_cancel(struct api_req *r);
void campaigns_stats(struct api_req *r);
void campaigns_events(struct api_req *r);
/* providers.c */
void providers_create(struct api_req *r);
void providers_list(struct api_req *r);
void providers_get(struct api_req *r);
void providers_patch(struct api_req *r);
void providers_delete(struct api_req *r);
/* deliveries.c */
void deliveries_get(struct api_req *r);
void deliveries_outcome(struct api_req *r);
/* unsubscribe.c: signed-token opt-out pages (no API key) */
void unsubscribe_show(struct api_req *r);
void unsubscribe_post(struct api_req *r);
/* voice.c: a call's TwiML (Twilio-signed) */
void voice_twiml(struct api_req *r);
void voice_gather(struct api_req *r);
/* webhooks.c: provider callbacks, authenticated by the provider's signature */
void webhooks_twilio_sms(struct api_req *r);
void webhooks_twilio_status(struct api_req *r);
void webhooks_sendgrid_events(struct api_req *r);
/* For a Twilio callback route ({id} = tenant): true when X-Twilio-Signature
 * verifies for CRIER_PUBLIC_URL + path + query with one of the tenant's
 * Twilio auth tokens (the AccountSid parameter picks the account); sets
 * r->tenant_id. False when it took the request over: it answered (403, 503)
 * or it waits for the tenant's secrets and then calls r->handler(r) again -
 * so a handler calls it first, before any side effect, and returns on false. */
bool webhooks_twilio_ok(struct api_req *r);
/* Appends the verified request to the inbound stream (kind K tenant T at MS
 * body RAW, then the nextra strings of extra as name value pairs, at most
 * 16) and calls done(r) once Redis has it; replies 503 when Redis is down. */
void webhooks_enqueue(struct api_req *r, const char *kind, const char *const *extra, int nextra,
                      void (*done)(struct api_req *r));
void webhooks_cache_free(struct webhooks_cache *c);

#endif
