/* import.c - the streaming import engine (contract in import.h): record
 * readers for NDJSON and CSV, batches with a key set that orders duplicate
 * keys, the statement pipeline, and the reply. */
#include "import.h"

#include <event2/keyvalq_struct.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "log.h"
#include "xalloc.h"

/* A batch whose values reach this many bytes is sent even if not full. */
#define IMPORT_SEAL_BYTES (4u << 20)
/* Hard limits of the buffers (a record is at most one request body). */
#define IMPORT_ARENA_MAX ((size_t)API_MAX_IMPORT_BODY + IMPORT_SEAL_BYTES)
#define IMPORT_PARAM_MAX (3 * IMPORT_ARENA_MAX)
/* Deadlocks and serialization failures are retried this often. */
#define IMPORT_RETRIES 3
/* A CSV header or record has at most this many fields. */
#define IMPORT_CSV_MAX_FIELDS 256
#define IMPORT_NULL UINT32_MAX

/* =====================================================================
 * Shared validators
 * =================================================================== */

int import_fail(struct import_err *e, const char *field, const char *fmt, ...)
{
    snprintf(e->field, sizeof(e->field), "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    return -1;
}

bool import_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        /* eight ASCII bytes without NUL at a time */
        while (n - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if ((w & 0x8080808080808080ull) ||
                ((w - 0x0101010101010101ull) & ~w & 0x8080808080808080ull))
                break;
            i += 8;
        }
        if (i >= n)
            break;
        unsigned char c = s[i];
        if (c < 0x80) {
            if (c == 0)
                return false;
            i++;
            continue;
        }
        size_t need;
        unsigned cp;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i <= need)
            return false;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        /* overlong forms, surrogates, beyond U+10FFFF */
        if ((need == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return false;
        i += need + 1;
    }
    return true;
}

void import_clip(char *out, size_t outsz, const char *s, size_t n)
{
    if (outsz == 0)
        return;
    if (n >= outsz) {
        n = outsz - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--; /* s[n] continues a character: cut before that character */
    }
    memcpy(out, s, n);
    out[n] = '\0';
}

static int two(const char *s)
{
    if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9')
        return -1;
    return (s[0] - '0') * 10 + (s[1] - '0');
}

static int days_in_month(int y, int m)
{
    static const int d[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return d[m - 1];
}

bool import_timestamp_normalize(const char *s, char *out, size_t outsz)
{
    if (outsz < 48)
        return false;
    /* each step reads only past characters already checked to be there */
    int yh = two(s), yl = yh < 0 ? -1 : two(s + 2);
    if (yh < 0 || yl < 0 || s[4] != '-')
        return false;
    int year = yh * 100 + yl, mon = two(s + 5);
    if (mon < 0 || s[7] != '-')
        return false;
    int day = two(s + 8);
    if (year < 1 || mon < 1 || mon > 12 || day < 1 || day > days_in_month(year, mon))
        return false;
    const char *p = s + 10;
    int hh = 0, mm = 0, ss = 0;
    const char *frac = "";
    size_t fraclen = 0;
    if (*p == 'T' || *p == 't' || *p == ' ') {
        hh = two(p + 1);
        if (hh < 0 || hh > 23 || p[3] != ':')
            return false;
        mm = two(p + 4);
        if (mm < 0 || mm > 59)
            return false;
        p += 6;
        if (*p == ':') {
            ss = two(p + 1);
            if (ss < 0 || ss > 60)
                return false;
            p += 3;
            if (*p == '.' || *p == ',') {
                frac = ++p;
                while (*p >= '0' && *p <= '9')
                    p++;
                fraclen = (size_t)(p - frac);
                if (fraclen == 0 || fraclen > 9)
                    return false;
            }
        }
    }
    char zone[8] = "+00:00";
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh = two(p + 1), om = 0;
        const char *q = p + 3;
        if (oh < 0 || oh > 15)
            return false;
        if (*q == ':')
            q++;
        if (*q >= '0' && *q <= '9') {
            om = two(q);
            if (om < 0 || om > 59)
                return false;
            q += 2;
        }
        snprintf(zone, sizeof(zone), "%c%02d:%02d", *p, oh, om);
        p = q;
    }
    if (*p != '\0')
        return false;
    snprintf(out, outsz, "%04d-%02d-%02d %02d:%02d:%02d%s%.*s%s", year, mon, day, hh, mm, ss,
             fraclen ? "." : "", (int)fraclen, frac, zone);
    return true;
}

/* =====================================================================
 * Batches and the key set
 * =================================================================== */

struct import_slot {
    long line;
    unsigned shape;
    uint32_t off[IMPORT_MAX_COLS];
    uint32_t len[IMPORT_MAX_COLS]; /* IMPORT_NULL: SQL NULL */
};

struct import_range {
    int lo, hi; /* rows [lo, hi), one shape */
};

struct import_batch {
    struct import_run *run;
    struct buf arena; /* the rows' values */
    struct import_slot *rows;
    int nrows, cap;
    bool sealed;
    /* while in flight: ranges still to send (top is next) and the one sent */
    struct import_range *todo;
    int ntodo, todocap;
    struct import_range cur;
    int attempts;
    bool plain;                /* cur was sent through kind->sql_insert */
    struct import_batch *next; /* free list */
};

struct import_row {
    struct import_batch *b;
    struct import_slot *slot;
};

/* Open addressing (linear probing, backward-shift deletion) over the keys
 * of every batch being built or in flight. */
struct import_key {
    struct import_batch *b; /* NULL: empty */
    uint32_t off, len, hash;
};

struct import_keyset {
    struct import_key *t;
    size_t mask;
};

static uint32_t key_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static const char *slot_val(const struct import_batch *b, const struct import_slot *s, int col)
{
    return b->arena.data + s->off[col];
}

static struct import_key *keyset_find(struct import_keyset *ks, const char *k, uint32_t n,
                                      uint32_t h)
{
    for (size_t i = h & ks->mask;; i = (i + 1) & ks->mask) {
        struct import_key *e = &ks->t[i];
        if (!e->b)
            return NULL;
        if (e->hash == h && e->len == n && memcmp(e->b->arena.data + e->off, k, n) == 0)
            return e;
    }
}

static void keyset_add(struct import_keyset *ks, struct import_batch *b, uint32_t off, uint32_t n,
                       uint32_t h)
{
    size_t i = h & ks->mask;
    while (ks->t[i].b)
        i = (i + 1) & ks->mask;
    ks->t[i] = (struct import_key){b, off, n, h};
}

static void keyset_del(struct import_keyset *ks, struct import_key *e)
{
    size_t i = (size_t)(e - ks->t);
    ks->t[i].b = NULL;
    for (size_t j = (i + 1) & ks->mask; ks->t[j].b; j = (j + 1) & ks->mask) {
        size_t home = ks->t[j].hash & ks->mask;
        /* move j back into the hole when its home is not in (i, j] */
        if (((j - home) & ks->mask) >= ((j - i) & ks->mask)) {
            ks->t[i] = ks->t[j];
            ks->t[j].b = NULL;
            i = j;
        }
    }
}

/* =====================================================================
 * The run
 * =================================================================== */

struct csv_col {
    const struct import_field *field;
    char *member; /* for "name.<key>" object columns */
};

struct csv_cell {
    uint32_t off, len;
};

struct import_error_entry {
    long line;
    char field[IMPORT_FIELD_MAX];
    char msg[IMPORT_MESSAGE_MAX];
};

struct import_run {
    struct api_req *r;
    const struct import_kind *kind;
    char tenant[24];
    bool csv;
    const char *p, *end; /* unread input */
    long line;           /* physical lines consumed */
    const char *rec_start;
    long rec_line0;
    /* CSV */
    struct csv_col *cols;
    int ncols;
    long rec_first;   /* physical line where the record csv_next read starts */
    struct buf cells; /* unquoted cell text of the current record */
    struct csv_cell *cell;
    int ncell;
    /* batches */
    struct import_batch *building, *spare;
    int ninflight;
    struct import_batch *wait; /* the in-flight batch the current record waits for */
    struct import_keyset keys;
    struct buf params[IMPORT_MAX_COLS];
    bool eof, fatal; /* fatal: PostgreSQL failed, or the server is draining */
    bool draining;
    bool optimistic; /* send kind->sql_insert: the rows so far were new */
    char fatal_detail[256];
    /* counts and errors */
    long inserted, updated, unchanged, rejected;
    struct import_error_entry *errors;
    int nerrors;
};

const struct app *import_app(const struct import_run *run)
{
    return run->r->app;
}

static void batch_free(struct import_batch *b)
{
    if (!b)
        return;
    buf_cleanup(&b->arena);
    free(b->rows);
    free(b->todo);
    free(b);
}

static void run_free(void *arg)
{
    struct import_run *run = arg;
    batch_free(run->building);
    while (run->spare) {
        struct import_batch *b = run->spare;
        run->spare = b->next;
        batch_free(b);
    }
    for (int i = 0; i < run->ncols; i++)
        free(run->cols[i].member);
    free(run->cols);
    free(run->cell);
    buf_cleanup(&run->cells);
    for (int i = 0; i < IMPORT_MAX_COLS; i++)
        buf_cleanup(&run->params[i]);
    free(run->keys.t);
    free(run->errors);
    free(run);
}

/* Records an error for line, keeping the API_IMPORT_MAX_ERRORS lowest lines. */
static void run_error(struct import_run *run, long line, const char *field, const char *msg)
{
    run->rejected++;
    int at = run->nerrors;
    if (at == API_IMPORT_MAX_ERRORS) {
        at = 0;
        for (int i = 1; i < run->nerrors; i++)
            if (run->errors[i].line > run->errors[at].line)
                at = i;
        if (run->errors[at].line <= line)
            return;
    } else {
        run->nerrors++;
    }
    struct import_error_entry *e = &run->errors[at];
    e->line = line;
    snprintf(e->field, sizeof(e->field), "%s", field ? field : "");
    snprintf(e->msg, sizeof(e->msg), "%s", msg);
}

static struct import_batch *batch_get(struct import_run *run)
{
    struct import_batch *b = run->spare;
    if (b) {
        run->spare = b->next;
    } else {
        b = xcalloc(1, sizeof(*b));
        b->run = run;
        buf_init(&b->arena, IMPORT_ARENA_MAX);
    }
    b->next = NULL;
    b->nrows = 0;
    b->sealed = false;
    b->ntodo = 0;
    b->attempts = 0;
    buf_reset(&b->arena);
    return b;
}

static void batch_put(struct import_run *run, struct import_batch *b)
{
    b->next = run->spare;
    run->spare = b;
}

int import_row_set(struct import_row *row, int col, const char *s, size_t len, struct import_err *e)
{
    struct buf *a = &row->b->arena;
    size_t off = a->len;
    if (col < 0 || col >= IMPORT_MAX_COLS || len >= IMPORT_NULL || buf_append(a, s, len) != CR_OK ||
        a->len >= IMPORT_NULL)
        return import_fail(e, "", "record too large");
    row->slot->off[col] = (uint32_t)off;
    row->slot->len[col] = (uint32_t)len;
    return 0;
}

void import_row_set_shape(struct import_row *row, unsigned shape)
{
    row->slot->shape = shape;
}

/* =====================================================================
 * Statements
 * =================================================================== */

static void run_pump(struct import_run *run);
static void batch_next(struct import_batch *b);

static enum cr_err put_elem(struct buf *p, const char *s, size_t n)
{
    enum cr_err err = buf_putc(p, '"');
    size_t from = 0;
    for (size_t i = 0; i < n && !err; i++) {
        if (s[i] == '"' || s[i] == '\\') {
            err = buf_append(p, s + from, i - from);
            if (!err)
                err = buf_putc(p, '\\');
            from = i;
        }
    }
    if (!err)
        err = buf_append(p, s + from, n - from);
    if (!err)
        err = buf_putc(p, '"');
    return err;
}

static void range_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate);

static void range_send(struct import_batch *b)
{
    struct import_run *run = b->run;
    const struct import_kind *k = run->kind;
    const char *params[2 + IMPORT_MAX_COLS];
    char shape[16];
    snprintf(shape, sizeof(shape), "%u", b->rows[b->cur.lo].shape);
    params[0] = run->tenant;
    params[1] = shape;
    enum cr_err err = CR_OK;
    for (int c = 0; c < k->ncols && !err; c++) {
        struct buf *p = &run->params[c];
        buf_reset(p);
        err = buf_putc(p, '{');
        for (int i = b->cur.lo; i < b->cur.hi && !err; i++) {
            const struct import_slot *s = &b->rows[i];
            if (i > b->cur.lo)
                err = buf_putc(p, ',');
            if (err)
                break;
            if (s->len[c] == IMPORT_NULL)
                err = buf_append(p, "NULL", 4);
            else
                err = put_elem(p, slot_val(b, s, c), s->len[c]);
        }
        if (!err)
            err = buf_putc(p, '}');
        params[2 + c] = buf_str(p);
    }
    if (err) {
        /* cannot happen within the arena limit; reject rather than crash */
        for (int i = b->cur.lo; i < b->cur.hi; i++)
            run_error(run, b->rows[i].line, "", "record too large");
        batch_next(b);
        return;
    }
    b->plain = run->optimistic && k->sql_insert;
    pgpool_query(run->r->app->pg, b->plain ? k->sql_insert : k->sql, 2 + k->ncols, params,
                 range_done, b);
}

static int slot_cmp(const void *x, const void *y, void *arg)
{
    const struct import_batch *b = arg;
    const struct import_slot *a = x, *c = y;
    if (a->shape != c->shape)
        return a->shape < c->shape ? -1 : 1;
    size_t n = a->len[0] < c->len[0] ? a->len[0] : c->len[0];
    int d = memcmp(slot_val(b, a, 0), slot_val(b, c, 0), n);
    if (d)
        return d;
    return a->len[0] < c->len[0] ? -1 : a->len[0] > c->len[0];
}

static void todo_push(struct import_batch *b, int lo, int hi)
{
    if (b->ntodo == b->todocap) {
        b->todocap = b->todocap ? 2 * b->todocap : 8;
        b->todo = xrealloc(b->todo, (size_t)b->todocap * sizeof(*b->todo));
    }
    b->todo[b->ntodo++] = (struct import_range){lo, hi};
}

/* Sorts the sealed building batch by (shape, key) and sends its first
 * range: one per shape, in order. */
static void batch_send(struct import_run *run, struct import_batch *b)
{
    qsort_r(b->rows, (size_t)b->nrows, sizeof(*b->rows), slot_cmp, b);
    b->ntodo = 0;
    int hi = b->nrows;
    for (int i = b->nrows - 1; i >= 0; i--) {
        if (i == 0 || b->rows[i - 1].shape != b->rows[i].shape) {
            todo_push(b, i, hi);
            hi = i;
        }
    }
    run->ninflight++;
    batch_next(b);
}

/* The key set no longer holds b's keys; the batch goes to the spares. */
static void batch_complete(struct import_batch *b)
{
    struct import_run *run = b->run;
    for (int i = 0; i < b->nrows; i++) {
        const struct import_slot *s = &b->rows[i];
        const char *k = slot_val(b, s, 0);
        struct import_key *e = keyset_find(&run->keys, k, s->len[0], key_hash(k, s->len[0]));
        if (e && e->b == b)
            keyset_del(&run->keys, e);
    }
    run->ninflight--;
    if (run->wait == b)
        run->wait = NULL;
    batch_put(run, b);
    run_pump(run); /* may reply and free run */
}

static void batch_next(struct import_batch *b)
{
    if (b->ntodo == 0 || b->run->fatal) {
        batch_complete(b);
        return;
    }
    b->cur = b->todo[--b->ntodo];
    b->attempts = 0;
    range_send(b);
}

/* First line of a libpq error message, without "ERROR:  ". */
static void pg_first_line(const char *errmsg, char *out, size_t outsz)
{
    const char *m = errmsg ? errmsg : "";
    if (strncmp(m, "ERROR:  ", 8) == 0)
        m += 8;
    import_clip(out, outsz, m, strcspn(m, "\n"));
}

/* The row of the current range whose key is k (the range is sorted). */
static const struct import_slot *range_find(const struct import_batch *b, const char *k, size_t n)
{
    int lo = b->cur.lo, hi = b->cur.hi;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        const struct import_slot *s = &b->rows[mid];
        size_t m = s->len[0] < n ? s->len[0] : n;
        int d = memcmp(slot_val(b, s, 0), k, m);
        if (d == 0)
            d = s->len[0] < n ? -1 : s->len[0] > n;
        if (d == 0)
            return s;
        if (d < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static void range_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct import_batch *b = arg;
    struct import_run *run = b->run;
    const struct import_kind *k = run->kind;
    int n = b->cur.hi - b->cur.lo;
    if (!res && b->plain && strcmp(sqlstate, "23505") == 0 && !run->fatal) {
        /* not all new after all: upsert from now on */
        run->optimistic = false;
        range_send(b);
        return;
    }
    if (!res) {
        bool data = sqlstate[0] == '2' && (sqlstate[1] == '2' || sqlstate[1] == '3');
        data = data || strncmp(sqlstate, "54", 2) == 0;
        bool retry = strcmp(sqlstate, "40P01") == 0 || strcmp(sqlstate, "40001") == 0;
        if (data && !run->fatal) {
            if (n > 1) {
                /* find the bad rows: halves, first half first */
                int mid = b->cur.lo + n / 2;
                todo_push(b, mid, b->cur.hi);
                todo_push(b, b->cur.lo, mid);
            } else {
                char m[IMPORT_MESSAGE_MAX], first[200];
                pg_first_line(errmsg, first, sizeof(first));
                snprintf(m, sizeof(m), "rejected by the database: %s", first);
                run_error(run, b->rows[b->cur.lo].line, "", m);
            }
        } else if (retry && !run->fatal && b->attempts < IMPORT_RETRIES) {
            b->attempts++;
            log_info("%s import: %s, retrying rows of line %ld", k->noun, sqlstate,
                     b->rows[b->cur.lo].line);
            range_send(b);
            return;
        } else if (!run->fatal) {
            run->fatal = true;
            char first[200];
            pg_first_line(errmsg, first, sizeof(first));
            snprintf(run->fatal_detail, sizeof(run->fatal_detail),
                     "%s import stopped near line %ld: %s", k->noun, b->rows[b->cur.lo].line,
                     first);
        }
        batch_next(b);
        return;
    }
    int changed = 0, inserted = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        const char *outcome = PQgetvalue(res, i, 1);
        if (outcome[0] == 'i') {
            run->inserted++;
            inserted++;
            changed++;
        } else if (outcome[0] == 'u') {
            run->updated++;
            changed++;
        } else if (outcome[0] == 'm') {
            const char *key = PQgetvalue(res, i, 0);
            const struct import_slot *s = range_find(b, key, (size_t)PQgetlength(res, i, 0));
            run_error(run, s ? s->line : 0, k->missing_field, k->missing_message);
            changed++;
        }
    }
    run->unchanged += n - changed;
    if (inserted == n)
        run->optimistic = true; /* all new: the next rows probably are too */
    batch_next(b);
}

/* =====================================================================
 * Records
 * =================================================================== */

/* The next non-blank NDJSON line, trimmed; false at the end. */
static bool ndjson_next(struct import_run *run, const char **rec, size_t *len)
{
    while (run->p < run->end) {
        const char *nl = memchr(run->p, '\n', (size_t)(run->end - run->p));
        const char *s = run->p, *e = nl ? nl : run->end;
        run->p = nl ? nl + 1 : run->end;
        run->line++;
        while (e > s && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
            e--;
        while (s < e && (*s == ' ' || *s == '\t'))
            s++;
        if (s < e) {
            *rec = s;
            *len = (size_t)(e - s);
            return true;
        }
    }
    return false;
}

/* True when a JSON text holds the escape \u0000 (PostgreSQL text cannot
 * hold NUL, and cJSON would silently cut the string there). */
static bool json_has_nul_escape(const char *s, size_t n)
{
    const char *p = memchr(s, '\\', n);
    if (!p)
        return false;
    for (size_t i = (size_t)(p - s); i + 1 < n; i++) {
        if (s[i] != '\\')
            continue;
        if (s[i + 1] == 'u' && i + 5 < n && memcmp(s + i + 2, "0000", 4) == 0)
            return true;
        i++; /* skip the escaped character */
    }
    return false;
}

static int csv_cell_add(struct import_run *run, uint32_t off)
{
    if (run->ncell == IMPORT_CSV_MAX_FIELDS)
        return -1;
    run->cell[run->ncell].off = off;
    run->cell[run->ncell].len = (uint32_t)(run->cells.len - off);
    run->ncell++;
    return 0;
}

/* Reads one CSV record (RFC 4180) into run->cell / run->cells.
 * Returns 1 (a record), 0 (end of input) or -1 (malformed: e filled, the
 * input skipped to the end of that physical line). Blank lines are
 * skipped. */
static int csv_next(struct import_run *run, struct import_err *e)
{
    for (;;) {
        if (run->p >= run->end)
            return 0;
        run->line++;
        run->ncell = 0;
        buf_reset(&run->cells);
        const char *p = run->p, *end = run->end;
        if (*p == '\n' || (*p == '\r' && p + 1 < end && p[1] == '\n')) {
            run->p = p + (*p == '\r' ? 2 : 1);
            continue; /* blank line */
        }
        run->rec_first = run->line;
        for (;;) {
            uint32_t off = (uint32_t)run->cells.len;
            enum cr_err err = CR_OK;
            if (p < end && *p == '"') {
                p++;
                for (;;) {
                    const char *q = p;
                    while (q < end && *q != '"' && *q != '\n')
                        q++;
                    if (!err)
                        err = buf_append(&run->cells, p, (size_t)(q - p));
                    if (q >= end) {
                        run->p = end;
                        return import_fail(e, "", "unterminated quoted field");
                    }
                    if (*q == '\n') {
                        run->line++;
                        if (!err)
                            err = buf_putc(&run->cells, '\n');
                        p = q + 1;
                        continue;
                    }
                    if (q + 1 < end && q[1] == '"') {
                        if (!err)
                            err = buf_putc(&run->cells, '"');
                        p = q + 2;
                        continue;
                    }
                    p = q + 1;
                    break;
                }
                if (p < end && *p == '\r' && p + 1 < end && p[1] == '\n')
                    p++;
                if (p < end && *p != ',' && *p != '\n') {
                    const char *nl = memchr(p, '\n', (size_t)(end - p));
                    run->p = nl ? nl + 1 : end;
                    return import_fail(e, "", "unexpected text after a closing quote");
                }
            } else {
                const char *q = p;
                while (q < end && *q != ',' && *q != '\n' && *q != '"')
                    q++;
                if (q < end && *q == '"') {
                    const char *nl = memchr(q, '\n', (size_t)(end - q));
                    run->p = nl ? nl + 1 : end;
                    return import_fail(e, "",
                                       "a quote inside an unquoted field (quote the field and "
                                       "double the quote)");
                }
                const char *v = q;
                if (v > p && v[-1] == '\r' && (q == end || *q == '\n'))
                    v--;
                err = buf_append(&run->cells, p, (size_t)(v - p));
                p = q;
            }
            if (err || csv_cell_add(run, off) != 0) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                run->p = nl ? nl + 1 : end;
                return import_fail(e, "", "record too large (at most %d fields)",
                                   IMPORT_CSV_MAX_FIELDS);
            }
            if (p >= end) {
                run->p = end;
                return 1;
            }
            if (*p == '\n') {
                run->p = p + 1;
                return 1;
            }
            p++; /* ',' */
        }
    }
}

static const char *csv_cell_str(const struct import_run *run, int i)
{
    /* cells are separated in the buffer; copy-free access needs NUL ends,
     * so callers use the length. */
    return run->cells.data ? run->cells.data + run->cell[i].off : "";
}

static const struct import_field *kind_field(const struct import_kind *k, const char *name,
                                             size_t n)
{
    for (const struct import_field *f = k->columns; f->name; f++)
        if (strlen(f->name) == n && memcmp(f->name, name, n) == 0)
            return f;
    return NULL;
}

/* Reads the header row; replies 422 and returns -1 when it is unusable. */
static int csv_header_or_reply(struct import_run *run)
{
    const struct import_kind *k = run->kind;
    struct import_err e;
    if (run->end - run->p >= 3 && memcmp(run->p, "\xEF\xBB\xBF", 3) == 0)
        run->p += 3; /* UTF-8 byte order mark */
    int rc = csv_next(run, &e);
    if (rc <= 0) {
        http_reply_error(
            run->r, 422, "invalid_csv",
            rc == 0 ? "CSV body must start with a header row naming the columns" : e.msg, "header");
        return -1;
    }
    run->cols = xcalloc((size_t)run->ncell, sizeof(*run->cols));
    run->ncols = run->ncell;
    char msg[IMPORT_MESSAGE_MAX];
    for (int i = 0; i < run->ncell; i++) {
        const char *name = csv_cell_str(run, i);
        size_t n = run->cell[i].len;
        while (n && (*name == ' ' || *name == '\t')) {
            name++;
            n--;
        }
        while (n && (name[n - 1] == ' ' || name[n - 1] == '\t'))
            n--;
        char shown[IMPORT_FIELD_MAX];
        import_clip(shown, sizeof(shown), name, n);
        if (!import_utf8_valid(name, n)) {
            http_reply_error(run->r, 422, "invalid_csv", "header is not valid UTF-8", "header");
            return -1;
        }
        const struct import_field *f = kind_field(k, name, n);
        const char *dot = memchr(name, '.', n);
        if (!f && dot) {
            const struct import_field *obj = kind_field(k, name, (size_t)(dot - name));
            size_t mlen = n - (size_t)(dot - name) - 1;
            if (obj && obj->type == IMPORT_T_OBJECT && mlen > 0 && mlen <= 100) {
                f = obj;
                run->cols[i].member = xstrndup(dot + 1, mlen);
            }
        }
        if (!f || (f->type == IMPORT_T_OBJECT && !run->cols[i].member)) {
            snprintf(msg, sizeof(msg), "unknown CSV column \"%s\"", shown);
            http_reply_error(run->r, 422, "invalid_csv", msg, shown);
            return -1;
        }
        for (int j = 0; j < i; j++) {
            bool same =
                run->cols[j].field == f && (f->type != IMPORT_T_OBJECT ||
                                            strcmp(run->cols[j].member, run->cols[i].member) == 0);
            if (same) {
                snprintf(msg, sizeof(msg), "CSV column \"%s\" appears twice", shown);
                http_reply_error(run->r, 422, "invalid_csv", msg, shown);
                return -1;
            }
        }
        run->cols[i].field = f;
    }
    bool has_key = false;
    for (int i = 0; i < run->ncols; i++)
        has_key = has_key || run->cols[i].field == &k->columns[0];
    if (!has_key) {
        snprintf(msg, sizeof(msg), "the CSV header must include the %s column", k->columns[0].name);
        http_reply_error(run->r, 422, "invalid_csv", msg, k->columns[0].name);
        return -1;
    }
    return 0;
}

static bool parse_bool(const char *s, size_t n, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes", "t", "y"};
    static const char *const no[] = {"false", "0", "no", "f", "n"};
    for (size_t i = 0; i < 5; i++) {
        if (strlen(yes[i]) == n && strncasecmp(s, yes[i], n) == 0) {
            *out = true;
            return true;
        }
        if (strlen(no[i]) == n && strncasecmp(s, no[i], n) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

/* Builds the JSON object of the current CSV record (empty cells are not
 * given). NULL with e filled on a bad cell. */
static cJSON *csv_record_json(struct import_run *run, struct import_err *e)
{
    if (run->ncell != run->ncols) {
        import_fail(e, "", "record has %d fields; the header has %d", run->ncell, run->ncols);
        return NULL;
    }
    cJSON *obj = cJSON_CreateObject();
    for (int i = 0; i < run->ncell; i++) {
        const struct import_field *f = run->cols[i].field;
        uint32_t n = run->cell[i].len;
        if (n == 0)
            continue;
        char *v = xstrndup(csv_cell_str(run, i), n);
        cJSON *item = NULL;
        switch (f->type) {
        case IMPORT_T_TEXT:
            item = cJSON_CreateString(v);
            break;
        case IMPORT_T_BOOL: {
            bool b;
            if (parse_bool(v, n, &b))
                item = cJSON_CreateBool(b);
            else
                import_fail(e, f->name, "%s must be true or false", f->name);
            break;
        }
        case IMPORT_T_INT: {
            char *end = NULL;
            long long x = strtoll(v, &end, 10);
            if (end != v && *end == '\0' && x > -1000000000LL && x < 1000000000LL)
                item = cJSON_CreateNumber((double)x);
            else
                import_fail(e, f->name, "%s must be an integer", f->name);
            break;
        }
        case IMPORT_T_LIST: {
            item = cJSON_CreateArray();
            for (char *s = v;;) {
                char *bar = strchr(s, '|');
                char *t = bar ? bar : s + strlen(s);
                while (s < t && (*s == ' ' || *s == '\t'))
                    s++;
                char *u = t;
                while (u > s && (u[-1] == ' ' || u[-1] == '\t'))
                    u--;
                if (u > s) {
                    char save = *u;
                    *u = '\0';
                    cJSON_AddItemToArray(item, cJSON_CreateString(s));
                    *u = save;
                }
                if (!bar)
                    break;
                s = bar + 1;
            }
            break;
        }
        case IMPORT_T_OBJECT: {
            cJSON *o = cJSON_GetObjectItemCaseSensitive(obj, f->name);
            if (!o)
                o = cJSON_AddObjectToObject(obj, f->name);
            cJSON_AddStringToObject(o, run->cols[i].member, v);
            break;
        }
        }
        free(v);
        if (f->type != IMPORT_T_OBJECT) {
            if (!item) {
                cJSON_Delete(obj);
                return NULL;
            }
            cJSON_AddItemToObject(obj, f->name, item);
        }
    }
    return obj;
}

/* =====================================================================
 * The pump: read, validate, batch, send
 * =================================================================== */

static void run_reply(struct import_run *run);

/* Reads the next record into *rec (a JSON object the caller deletes) and
 * its line into *line. Returns 1, 0 at the end, or -1 when the record was
 * rejected (error recorded). Remembers where it started, so that
 * rewind_record can read it again. */
static int next_record(struct import_run *run, cJSON **rec, long *line)
{
    struct import_err e;
    *rec = NULL;
    run->rec_start = run->p;
    run->rec_line0 = run->line;
    if (!run->csv) {
        const char *s;
        size_t n;
        if (!ndjson_next(run, &s, &n))
            return 0;
        *line = run->line;
        if (!import_utf8_valid(s, n)) {
            run_error(run, *line, "", "line is not valid UTF-8 (or holds a NUL byte)");
            return -1;
        }
        if (json_has_nul_escape(s, n)) {
            run_error(run, *line, "", "strings must not contain \\u0000");
            return -1;
        }
        const char *parsed = NULL;
        cJSON *j = cJSON_ParseWithLengthOpts(s, n, &parsed, 0);
        if (j && parsed != s + n) {
            cJSON_Delete(j); /* text after the object */
            j = NULL;
        }
        if (!j || !cJSON_IsObject(j)) {
            run_error(run, *line, "", j ? "each line must be a JSON object" : "malformed JSON");
            cJSON_Delete(j);
            return -1;
        }
        *rec = j;
        return 1;
    }
    int rc = csv_next(run, &e);
    if (rc == 0)
        return 0;
    *line = run->rec_first;
    if (rc < 0) {
        run_error(run, *line, e.field, e.msg);
        return -1;
    }
    if (!import_utf8_valid(run->cells.data ? run->cells.data : "", run->cells.len)) {
        run_error(run, *line, "", "record is not valid UTF-8 (or holds a NUL byte)");
        return -1;
    }
    *rec = csv_record_json(run, &e);
    if (!*rec) {
        run_error(run, *line, e.field, e.msg);
        return -1;
    }
    return 1;
}

static void rewind_record(struct import_run *run)
{
    run->p = run->rec_start;
    run->line = run->rec_line0;
}

static void run_pump(struct import_run *run)
{
    const struct import_kind *k = run->kind;
    for (;;) {
        if (!run->fatal && run->r->app->draining) {
            /* SIGTERM: stop at a batch boundary so the drain can finish */
            struct import_batch *unsent = run->building;
            long stop = unsent && unsent->nrows ? unsent->rows[0].line : run->line + 1;
            run->fatal = run->draining = true;
            snprintf(run->fatal_detail, sizeof(run->fatal_detail),
                     "the server is shutting down: the import stopped at line %ld, the lines "
                     "before it are imported (sending the whole body again is safe)",
                     stop);
        }
        if (run->fatal) {
            if (run->ninflight == 0)
                run_reply(run);
            return;
        }
        struct import_batch *b = run->building;
        if (b && b->sealed) {
            if (run->ninflight >= k->max_inflight)
                return; /* resumed by batch_complete */
            run->building = NULL;
            batch_send(run, b);
            continue;
        }
        if (run->wait)
            return; /* resumed when that batch completes */
        if (run->eof) {
            if (b && b->nrows > 0) {
                b->sealed = true;
                continue;
            }
            if (run->ninflight == 0)
                run_reply(run);
            return;
        }
        cJSON *rec;
        long line = 0;
        int rc = next_record(run, &rec, &line);
        if (rc == 0) {
            run->eof = true;
            continue;
        }
        if (rc < 0)
            continue;
        if (!b)
            b = run->building = batch_get(run);
        if (b->nrows == b->cap) {
            b->cap = b->cap ? 2 * b->cap : 256;
            b->rows = xrealloc(b->rows, (size_t)b->cap * sizeof(*b->rows));
        }
        struct import_slot *slot = &b->rows[b->nrows];
        memset(slot, 0, sizeof(*slot));
        for (int c = 0; c < IMPORT_MAX_COLS; c++)
            slot->len[c] = IMPORT_NULL;
        slot->line = line;
        size_t mark = b->arena.len;
        struct import_row row = {b, slot};
        struct import_err e = {"", ""};
        int vrc = k->row(run, rec, &row, &e);
        cJSON_Delete(rec);
        if (vrc == 0 && slot->len[0] == IMPORT_NULL)
            vrc = import_fail(&e, "", "record has no key");
        if (vrc != 0) {
            b->arena.len = mark;
            if (b->arena.data)
                b->arena.data[mark] = '\0';
            run_error(run, line, e.field, e.msg);
            continue;
        }
        const char *key = slot_val(b, slot, 0);
        uint32_t klen = slot->len[0], h = key_hash(key, klen);
        struct import_key *seen = keyset_find(&run->keys, key, klen, h);
        if (seen) {
            /* the same key earlier: that row must be written first */
            b->arena.len = mark;
            if (b->arena.data)
                b->arena.data[mark] = '\0';
            rewind_record(run);
            if (seen->b != b)
                run->wait = seen->b;
            if (b->nrows > 0)
                b->sealed = true;
            continue;
        }
        keyset_add(&run->keys, b, slot->off[0], klen, h);
        b->nrows++;
        if (b->nrows >= k->batch_rows || b->arena.len >= IMPORT_SEAL_BYTES)
            b->sealed = true;
    }
}

static int error_cmp(const void *a, const void *b)
{
    const struct import_error_entry *x = a, *y = b;
    return (x->line > y->line) - (x->line < y->line);
}

static void run_reply(struct import_run *run)
{
    struct api_req *r = run->r;
    if (run->draining) {
        http_reply_error(r, 503, "shutting_down", run->fatal_detail, NULL);
        return;
    }
    if (run->fatal) {
        http_reply_dependency(r, "postgres", run->fatal_detail);
        return;
    }
    qsort(run->errors, (size_t)run->nerrors, sizeof(*run->errors), error_cmp);
    cJSON *body = cJSON_CreateObject();
    cJSON_AddNumberToObject(body, "lines", (double)run->line);
    cJSON_AddNumberToObject(body, "inserted", (double)run->inserted);
    cJSON_AddNumberToObject(body, "updated", (double)run->updated);
    cJSON_AddNumberToObject(body, "unchanged", (double)run->unchanged);
    cJSON_AddNumberToObject(body, "rejected", (double)run->rejected);
    cJSON *errs = cJSON_AddArrayToObject(body, "errors");
    for (int i = 0; i < run->nerrors; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "line", (double)run->errors[i].line);
        if (run->errors[i].field[0])
            cJSON_AddStringToObject(e, "field", run->errors[i].field);
        cJSON_AddStringToObject(e, "message", run->errors[i].msg);
        cJSON_AddItemToArray(errs, e);
    }
    if (run->nerrors < run->rejected)
        cJSON_AddBoolToObject(body, "errors_truncated", true);
    http_reply_json(r, 200, body);
}

/* =====================================================================
 * Start
 * =================================================================== */

/* Media type of the body: 0 NDJSON, 1 CSV, -1 unsupported. */
static int body_format(const char *ct)
{
    if (!ct || !*ct)
        return 0;
    size_t n = strcspn(ct, ";");
    while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    static const char *const ndjson[] = {"application/x-ndjson", "application/ndjson",
                                         "application/jsonl",    "application/json",
                                         "text/plain",           NULL};
    int fmt = -1;
    for (int i = 0; ndjson[i]; i++)
        if (strlen(ndjson[i]) == n && strncasecmp(ct, ndjson[i], n) == 0)
            fmt = 0;
    if (n == 8 && strncasecmp(ct, "text/csv", 8) == 0)
        fmt = 1;
    const char *cs = strcasestr(ct + n, "charset=");
    if (fmt >= 0 && cs) {
        cs += 8;
        if (*cs == '"')
            cs++;
        if (strncasecmp(cs, "utf-8", 5) != 0 && strncasecmp(cs, "utf8", 4) != 0 &&
            strncasecmp(cs, "us-ascii", 8) != 0)
            fmt = -1;
    }
    return fmt;
}

void import_start(struct api_req *r, const struct import_kind *kind)
{
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(r->req), "Content-Type");
    int fmt = body_format(ct);
    if (fmt < 0 || (fmt == 1 && !kind->columns)) {
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "send UTF-8 NDJSON (Content-Type: application/x-ndjson), one %s per line%s",
                 kind->noun, kind->columns ? ", or CSV with a header row (text/csv)" : "");
        http_reply_error(r, 415, "unsupported_media_type", msg, "Content-Type");
        return;
    }
    struct import_run *run = xcalloc(1, sizeof(*run));
    run->r = r;
    run->kind = kind;
    snprintf(run->tenant, sizeof(run->tenant), "%lld", r->tenant_id);
    run->csv = fmt == 1;
    run->optimistic = kind->sql_insert != NULL;
    run->p = r->body ? r->body : "";
    run->end = run->p + r->body_len;
    size_t slots = 1;
    while (slots < (size_t)4 * (size_t)(kind->max_inflight + 1) * (size_t)kind->batch_rows)
        slots <<= 1;
    run->keys.t = xcalloc(slots, sizeof(*run->keys.t));
    run->keys.mask = slots - 1;
    for (int i = 0; i < IMPORT_MAX_COLS; i++)
        buf_init(&run->params[i], IMPORT_PARAM_MAX);
    buf_init(&run->cells, IMPORT_ARENA_MAX);
    run->cell = xcalloc(IMPORT_CSV_MAX_FIELDS, sizeof(*run->cell));
    run->errors = xcalloc(API_IMPORT_MAX_ERRORS, sizeof(*run->errors));
    r->state = run;
    r->state_free = run_free;
    if (run->csv && csv_header_or_reply(run) != 0)
        return;
    run_pump(run);
}
