/* import.h - the streaming import engine behind POST /v1/customers/import,
 * /v1/interactions/import and /v1/appointments/import.
 *
 * The request body (NDJSON, or CSV with a header row when the resource
 * allows it) is read record by record. Each record becomes a JSON object
 * (CSV cells are converted by the resource's column table) and is given to
 * the resource's row callback, which validates it and stores its column
 * values. Rows gather in batches; a batch is sorted by (shape, key) and
 * sent as one statement per shape, each column a PostgreSQL array
 * parameter. Up to kind->max_inflight batches run at once (the pool has
 * several connections) while the next one is parsed; a record whose key is
 * in a batch that has not finished waits for it, so for one key the last
 * line always wins. Sorting gives concurrent imports one lock order. A
 * statement PostgreSQL refuses for its data is split in halves until the
 * bad rows are found, so a bad row never costs its neighbours; deadlocks
 * are retried. A bad record never stops the import: it becomes an error
 * entry with its line number (for CSV, the physical line where the record
 * starts). The reply, sent only when nothing is in flight:
 *   {"lines", "inserted", "updated", "unchanged", "rejected", "errors":
 *    [{"line", "field", "message"}], "errors_truncated"?}
 *
 * Statement contract: $1 tenant id, $2 the shape (int), $3.. one array per
 * column in kind order (text elements; the SQL casts). It returns one row
 * (key, outcome) per row it inserted ('i'), updated ('u') or could not
 * resolve ('m': e.g. an unknown customer, reported with kind->missing_*);
 * rows it does not return were unchanged.
 *
 * Loop: everything runs on the API's event loop. Ownership: the run
 * belongs to the request (r->state) and is freed with it. */
#ifndef CRIER_IMPORT_H
#define CRIER_IMPORT_H

#include <stdbool.h>
#include <stddef.h>

#include "api.h"

#define IMPORT_MAX_COLS 16
#define IMPORT_FIELD_MAX 64    /* bytes of a field name in errors */
#define IMPORT_MESSAGE_MAX 240 /* bytes of an error message */

/* How a CSV cell becomes a JSON value (an empty cell is "not given"). */
enum import_type {
    IMPORT_T_TEXT,  /* string as is */
    IMPORT_T_BOOL,  /* true/false, 1/0, yes/no (any case) */
    IMPORT_T_INT,   /* a decimal integer */
    IMPORT_T_LIST,  /* "a|b|c": array of strings, blanks around items trimmed */
    IMPORT_T_OBJECT /* only as "name.<key>" columns; each a string member */
};

struct import_field {
    const char *name;
    enum import_type type;
};

/* A validation failure: the field it names and a message. */
struct import_err {
    char field[IMPORT_FIELD_MAX];
    char msg[IMPORT_MESSAGE_MAX];
};

/* Fills e; returns -1 so validators can `return import_fail(...)`. */
int import_fail(struct import_err *e, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

struct import_row; /* the row a callback is filling (engine-owned) */
struct import_run;

struct import_kind {
    const char *noun;                   /* "customer": used in messages */
    const struct import_field *columns; /* CSV columns, {NULL} ends; NULL: NDJSON only */
    int ncols;                          /* SQL columns per row; column 0 is the key */
    int batch_rows;                     /* rows per batch */
    int max_inflight;                   /* batches in flight at once */
    const char *sql;                    /* see the statement contract above */
    /* Optional: the same for rows believed new (a plain INSERT, cheaper
     * than an upsert). Used while the batches before were all new; on a
     * unique violation the range goes again through sql. */
    const char *sql_insert;
    const char *missing_field; /* for outcome 'm' */
    const char *missing_message;
    /* Validates rec (a JSON object) and sets the row's columns and shape.
     * Returns 0, or -1 with e filled. */
    int (*row)(struct import_run *run, const cJSON *rec, struct import_row *row,
               struct import_err *e);
};

/* Starts importing r's body for kind; replies itself (415/422 for a body
 * it cannot read at all, else 200 when done, 503 when PostgreSQL fails). */
void import_start(struct api_req *r, const struct import_kind *kind);

/* The request's app (for tzdb_valid and the like inside row callbacks). */
const struct app *import_app(const struct import_run *run);

/* Row building, inside kind->row. A column not set is SQL NULL. The value
 * is copied. Returns -1 with e filled when the batch has no room left. */
int import_row_set(struct import_row *row, int col, const char *s, size_t len,
                   struct import_err *e);
void import_row_set_shape(struct import_row *row, unsigned shape);

/* ---- shared validators ---- */

/* Copies s[0..n) into out (outsz bytes, NUL-terminated), cut at a UTF-8
 * character boundary when it does not fit: echoing input in a reply never
 * splits a character. */
void import_clip(char *out, size_t outsz, const char *s, size_t n);

/* True when s[0..n) is valid UTF-8 without NUL bytes. */
bool import_utf8_valid(const char *s, size_t n);

/* Validates an ISO 8601 date or timestamp (YYYY-MM-DD[(T| )HH:MM[:SS[.f]]]
 * [Z|+HH[:MM]|-HH[:MM]]) with real calendar dates and writes it for
 * PostgreSQL into out: without an offset the time is UTC. False when
 * invalid or outsz (>= 48 suffices) is too small. */
bool import_timestamp_normalize(const char *s, char *out, size_t outsz);

#endif
