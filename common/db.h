/* db.h - blocking PostgreSQL helpers for the dispatcher, worker and crierctl.
 *
 * Every PGresult returned through an out-parameter belongs to the caller,
 * who PQclear()s it in the same function. Values are always bound as
 * parameters; SQL text is constant. */
#ifndef CRIER_DB_H
#define CRIER_DB_H

#include <libpq-fe.h>
#include <stddef.h>

#include "err.h"

/* Connects (blocking). On failure returns NULL with a message (password-free)
 * in err. application_name is set to app. */
PGconn *db_connect(const char *url, const char *app, char *err, size_t errsz);

/* Runs one parameterised statement. On success *out (when not NULL) gets the
 * result (caller clears). On failure logs the error with label, returns
 * CR_EPG and copies the server's message into err when given. */
enum cr_err db_exec(PGconn *conn, const char *label, const char *sql, int nparams,
                    const char *const *params, PGresult **out) CR_MUST_CHECK;
/* Like db_exec but also returns the SQLSTATE (5 chars + NUL) on failure. */
enum cr_err db_exec_state(PGconn *conn, const char *label, const char *sql, int nparams,
                          const char *const *params, PGresult **out, char sqlstate[6], char *err,
                          size_t errsz) CR_MUST_CHECK;

/* Reconnects when the connection is bad; CR_EPG when that fails. */
enum cr_err db_ensure(PGconn *conn) CR_MUST_CHECK;

#endif
