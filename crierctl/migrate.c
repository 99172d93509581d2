/* migrate.c - applies the embedded migrations in order, each in its own
 * transaction, under an advisory lock so concurrent runs are safe. Each
 * applied file's SHA-256 is recorded; a run refuses to continue when an
 * applied file's text has changed since. */
#include <stdio.h>
#include <string.h>

#include "crypto.h"
#include "ctl.h"
#include "db.h"
#include "migrations.h"

/* An arbitrary constant naming crier's migration lock. */
#define MIGRATE_LOCK_SQL "SELECT pg_advisory_lock(7283641001)"
#define MIGRATE_UNLOCK_SQL "SELECT pg_advisory_unlock(7283641001)"

static const char sql_create_table[] = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                       " name text PRIMARY KEY, checksum text NOT NULL,"
                                       " applied_at timestamptz NOT NULL DEFAULT now())";
static const char sql_applied[] = "SELECT name, checksum FROM schema_migrations ORDER BY name";
static const char sql_record[] = "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)";

static int exec_simple(PGconn *conn, const char *sql, const char *what)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "crierctl migrate: %s: %s", what, PQresultErrorMessage(res));
    PQclear(res);
    return ok ? 0 : -1;
}

static const char *applied_checksum(PGresult *applied, const char *name)
{
    for (int i = 0; i < PQntuples(applied); i++)
        if (strcmp(PQgetvalue(applied, i, 0), name) == 0)
            return PQgetvalue(applied, i, 1);
    return NULL;
}

int ctl_migrate(const struct ctl_config *cfg, int argc, char **argv)
{
    int status_only = argc >= 1 && strcmp(argv[0], "status") == 0;
    if (argc >= 1 && !status_only) {
        fprintf(stderr, "crierctl migrate: unknown argument %s\n", argv[0]);
        return 2;
    }
    PGconn *conn = ctl_connect(cfg);
    if (!conn)
        return 1;
    int rc = 1;
    int locked = 0;
    PGresult *applied = NULL;

    if (exec_simple(conn, "SET client_min_messages = warning", "setup") != 0)
        goto out;
    if (exec_simple(conn, MIGRATE_LOCK_SQL, "lock") != 0)
        goto out;
    locked = 1;
    if (exec_simple(conn, sql_create_table, "schema_migrations") != 0)
        goto out;
    if (db_exec(conn, "migrate applied", sql_applied, 0, NULL, &applied) != CR_OK)
        goto out;

    /* Check every applied file first: an edited one stops the run before
     * anything new is applied. */
    for (int i = 0; i < migrations_count; i++) {
        const struct migration *m = &migrations_all[i];
        char sum[65];
        crypto_sha256_hex(m->sql, m->len, sum);
        const char *have = applied_checksum(applied, m->name);
        if (have && strcmp(have, sum) != 0) {
            fprintf(stderr,
                    "crierctl migrate: %s was edited after it was applied "
                    "(recorded sha256 %s, file %s); add a new migration instead\n",
                    m->name, have, sum);
            goto out;
        }
        if (status_only)
            printf("%-40s %s\n", m->name, have ? "applied" : "pending");
    }
    if (status_only) {
        rc = 0;
        goto out;
    }

    int applied_now = 0;
    for (int i = 0; i < migrations_count; i++) {
        const struct migration *m = &migrations_all[i];
        if (applied_checksum(applied, m->name))
            continue;
        char sum[65];
        crypto_sha256_hex(m->sql, m->len, sum);
        if (exec_simple(conn, "BEGIN", "begin") != 0)
            goto out;
        if (exec_simple(conn, m->sql, m->name) != 0) {
            (void)exec_simple(conn, "ROLLBACK", "rollback");
            goto out;
        }
        const char *params[] = {m->name, sum};
        if (db_exec(conn, "migrate record", sql_record, 2, params, NULL) != CR_OK) {
            (void)exec_simple(conn, "ROLLBACK", "rollback");
            goto out;
        }
        if (exec_simple(conn, "COMMIT", "commit") != 0)
            goto out;
        printf("applied %s\n", m->name);
        applied_now++;
    }
    if (applied_now == 0)
        printf("schema is up to date (%d migrations)\n", migrations_count);
    rc = 0;
out:
    PQclear(applied);
    if (locked)
        (void)exec_simple(conn, MIGRATE_UNLOCK_SQL, "unlock");
    PQfinish(conn);
    return rc;
}
