/* pgpool.h - asynchronous PostgreSQL connection pool on a libevent loop.
 *
 * N non-blocking libpq connections; queries wait in a FIFO until a
 * connection is idle, so one slow query occupies one connection and never
 * the loop. Every query has a deadline (server side statement_timeout plus
 * a client timer); a broken connection is dropped and reconnected with
 * backoff. Callbacks are never called from inside pgpool_query.
 *
 * Ownership: the SQL text and params are copied. The PGresult passed to the callback is
 * borrowed for the duration of the callback. Loop: single-threaded. */
#ifndef CRIER_PGPOOL_H
#define CRIER_PGPOOL_H

#include <event2/event.h>
#include <libpq-fe.h>
#include <stdbool.h>

struct pgpool;

/* res is NULL on failure, then errmsg says why (never NULL then) and
 * sqlstate is the server's SQLSTATE or "" for client-side failures. */
typedef void (*pgpool_cb)(void *arg, PGresult *res, const char *errmsg, const char *sqlstate);

/* Starts connecting size connections. Returns NULL only on bad arguments. */
struct pgpool *pgpool_new(struct event_base *base, const char *url, const char *app_name, int size,
                          int timeout_ms);
/* Same, with settings for every session ("-c name=value ...", at most 200
 * characters; NULL: none). */
struct pgpool *pgpool_new_with(struct event_base *base, const char *url, const char *app_name,
                               int size, int timeout_ms, const char *settings);
void pgpool_free(struct pgpool *p);

/* Queues one parameterised statement (text params, NULL = SQL NULL). */
void pgpool_query(struct pgpool *p, const char *sql, int nparams, const char *const *params,
                  pgpool_cb cb, void *arg);

/* Same, for a statement run often: prepared once per connection under
 * name (a string that outlives the pool; one name, one SQL text), then
 * executed without being parsed and planned again. */
void pgpool_query_named(struct pgpool *p, const char *name, const char *sql, int nparams,
                        const char *const *params, pgpool_cb cb, void *arg);

/* Number of queries waiting or running. */
int pgpool_busy(const struct pgpool *p);

#endif
