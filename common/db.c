/* db.c - blocking libpq helpers. */
#include "db.h"

#include <stdio.h>
#include <string.h>

#include "log.h"

PGconn *db_connect(const char *url, const char *app, char *err, size_t errsz)
{
    const char *keys[] = {"dbname", "application_name", "connect_timeout", NULL};
    const char *vals[] = {url, app, "5", NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (!conn) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        snprintf(err, errsz, "%s", PQerrorMessage(conn));
        size_t n = strlen(err);
        while (n && (err[n - 1] == '\n' || err[n - 1] == ' '))
            err[--n] = '\0';
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

enum cr_err db_exec_state(PGconn *conn, const char *label, const char *sql, int nparams,
                          const char *const *params, PGresult **out, char sqlstate[6], char *err,
                          size_t errsz)
{
    if (out)
        *out = NULL;
    if (sqlstate)
        sqlstate[0] = '\0';
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        if (out)
            *out = res;
        else
            PQclear(res);
        return CR_OK;
    }
    const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(conn);
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (sqlstate && state)
        snprintf(sqlstate, 6, "%s", state);
    if (err && errsz)
        snprintf(err, errsz, "%s", msg);
    if (!state || strncmp(state, "23", 2) != 0) /* constraint errors are the caller's call */
        log_error("%s: %s", label, msg);
    PQclear(res);
    return CR_EPG;
}

enum cr_err db_exec(PGconn *conn, const char *label, const char *sql, int nparams,
                    const char *const *params, PGresult **out)
{
    return db_exec_state(conn, label, sql, nparams, params, out, NULL, NULL, 0);
}

enum cr_err db_ensure(PGconn *conn)
{
    if (PQstatus(conn) == CONNECTION_OK)
        return CR_OK;
    PQreset(conn);
    return PQstatus(conn) == CONNECTION_OK ? CR_OK : CR_EPG;
}
