/* import.c - crierctl import: upserts a file of customers, interactions or
 * appointments (NDJSON, or CSV with a header row) through the API.
 *
 * The file is mapped and cut into chunks of whole records (--chunk-lines,
 * default 50,000 lines, and at most 16 MiB; a CSV chunk repeats the header
 * row) sent as POST /v1/<type>/import, up to --parallel at once with
 * libcurl's multi interface. Two chunks are in flight together only when
 * no external_id is in both (and each line's external_id could be read
 * without decoding escapes), so for one key the last line of the file
 * wins, as within one request. A chunk that fails for a transient reason
 * (502/503/504/429, connection) is sent again after a pause: an import is
 * an upsert, so that is safe. Per-line errors are printed to stderr as
 * "FILE:LINE: field: message" with the file's line numbers (for CSV, the
 * line where the record starts); a progress bar goes to stderr when it is a
 * terminal; the totals go to stdout.
 *
 * Exit status: 0 every line imported, 1 some lines rejected, 2 usage,
 * 3 the import could not finish (API unreachable or refusing the file). */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ctl.h"
#include "xalloc.h"

#define IMP_DEFAULT_CHUNK_LINES 50000
#define IMP_CHUNK_MAX_BYTES ((size_t)16 << 20)
#define IMP_MAX_PARALLEL 8
#define IMP_RETRIES 5
#define IMP_REPLY_MAX ((size_t)8 << 20)
#define IMP_REQUEST_TIMEOUT_S 600L

enum imp_format { IMP_NDJSON, IMP_CSV };

/* ---------------------------------------------------------------------
 * Key sets: the external_ids of a chunk
 * ------------------------------------------------------------------- */

struct imp_key {
    const char *p; /* NULL: empty slot */
    uint32_t len, hash;
};

struct imp_keyset {
    struct imp_key *t;
    size_t mask, n;
    char **owned; /* unescaped copies */
    size_t nowned;
};

static uint32_t imp_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static bool keyset_has(const struct imp_keyset *ks, const char *p, size_t n, uint32_t h)
{
    if (!ks->t)
        return false;
    for (size_t i = h & ks->mask;; i = (i + 1) & ks->mask) {
        const struct imp_key *k = &ks->t[i];
        if (!k->p)
            return false;
        if (k->hash == h && k->len == n && memcmp(k->p, p, n) == 0)
            return true;
    }
}

static void keyset_add(struct imp_keyset *ks, const char *p, size_t n)
{
    if (2 * (ks->n + 1) > ks->mask + 1) {
        size_t cap = ks->t ? 2 * (ks->mask + 1) : 1024;
        struct imp_key *old = ks->t;
        size_t oldcap = ks->t ? ks->mask + 1 : 0;
        ks->t = xcalloc(cap, sizeof(*ks->t));
        ks->mask = cap - 1;
        for (size_t i = 0; i < oldcap; i++) {
            if (!old[i].p)
                continue;
            size_t j = old[i].hash & ks->mask;
            while (ks->t[j].p)
                j = (j + 1) & ks->mask;
            ks->t[j] = old[i];
        }
        free(old);
    }
    uint32_t h = imp_hash(p, n);
    if (keyset_has(ks, p, n, h))
        return;
    size_t j = h & ks->mask;
    while (ks->t[j].p)
        j = (j + 1) & ks->mask;
    ks->t[j] = (struct imp_key){p, (uint32_t)n, h};
    ks->n++;
}

static void keyset_cleanup(struct imp_keyset *ks)
{
    for (size_t i = 0; i < ks->nowned; i++)
        free(ks->owned[i]);
    free(ks->owned);
    free(ks->t);
    memset(ks, 0, sizeof(*ks));
}

/* True when a key of a is in b. */
static bool keysets_meet(const struct imp_keyset *a, const struct imp_keyset *b)
{
    if (!a->t || !b->t)
        return false;
    if (a->n > b->n) {
        const struct imp_keyset *t = a;
        a = b;
        b = t;
    }
    for (size_t i = 0; i <= a->mask; i++)
        if (a->t[i].p && keyset_has(b, a->t[i].p, a->t[i].len, a->t[i].hash))
            return true;
    return false;
}

/* ---------------------------------------------------------------------
 * Reading records
 * ------------------------------------------------------------------- */

/* The top-level "external_id" string of an NDJSON line, as its raw bytes.
 * 1: found; 0: none (the API rejects such a line, so it orders nothing);
 * -1: unsure (an escape in a top-level key or in the value, the member
 * twice, malformed JSON): the chunk must run alone. */
static int ndjson_key(const char *s, size_t n, const char **key, size_t *klen)
{
    int depth = 0, found = 0;
    bool want_key = false, after_key = false, is_ext = false, want_value = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '"') {
            size_t st = i + 1, j = st;
            bool esc = false;
            while (j < n && s[j] != '"') {
                if (s[j] == '\\') {
                    esc = true;
                    j++;
                }
                j++;
            }
            if (j >= n)
                return -1;
            if (depth == 1 && want_key) {
                if (esc)
                    return -1;
                is_ext = j - st == 11 && memcmp(s + st, "external_id", 11) == 0;
                want_key = false;
                after_key = true;
            } else if (depth == 1 && want_value) {
                if (esc || found)
                    return -1;
                *key = s + st;
                *klen = j - st;
                found = 1;
                want_value = false;
            }
            i = j;
            continue;
        }
        switch (c) {
        case '{':
        case '[':
            depth++;
            if (depth == 1)
                want_key = c == '{';
            if (depth == 2)
                want_value = false;
            break;
        case '}':
        case ']':
            depth--;
            break;
        case ',':
            if (depth == 1)
                want_key = true;
            break;
        case ':':
            if (depth == 1 && after_key) {
                want_value = is_ext;
                after_key = false;
            }
            break;
        case ' ':
        case '\t':
        case '\r':
        case '\n':
            break;
        default:
            if (depth == 1)
                want_value = false; /* a number, true, false or null */
        }
    }
    return depth == 0 ? found : -1;
}

/* Scans one CSV record starting at p (the API's rules: RFC 4180, a quote
 * inside an unquoted field or text after a closing quote ends the record
 * at that physical line). Returns the start of the next record; *lines
 * gets the physical lines it spans. When want >= 0, field number want is
 * returned in *f / *flen (raw, between the quotes) and *fquoted says
 * whether it holds doubled quotes. */
static const char *csv_record(const char *p, const char *end, int want, long *lines, const char **f,
                              size_t *flen, bool *fquoted)
{
    *lines = 1;
    if (f) {
        *f = NULL;
        *flen = 0;
        *fquoted = false;
    }
    for (int field = 0;; field++) {
        const char *fs = p;
        bool dq = false;
        if (p < end && *p == '"') {
            fs = ++p;
            for (;;) {
                while (p < end && *p != '"') {
                    if (*p == '\n')
                        (*lines)++;
                    p++;
                }
                if (p >= end)
                    return end;
                if (p + 1 < end && p[1] == '"') {
                    dq = true;
                    p += 2;
                    continue;
                }
                break;
            }
            if (field == want && f) {
                *f = fs;
                *flen = (size_t)(p - fs);
                *fquoted = dq;
            }
            p++; /* closing quote */
            if (p < end && *p == '\r' && p + 1 < end && p[1] == '\n')
                p++;
            if (p < end && *p != ',' && *p != '\n') {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                return nl ? nl + 1 : end;
            }
        } else {
            while (p < end && *p != ',' && *p != '\n' && *p != '"')
                p++;
            if (p < end && *p == '"') {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                return nl ? nl + 1 : end;
            }
            if (field == want && f) {
                size_t n = (size_t)(p - fs);
                if (n && fs[n - 1] == '\r' && (p == end || *p == '\n'))
                    n--;
                *f = fs;
                *flen = n;
            }
        }
        if (p >= end)
            return end;
        if (*p == '\n')
            return p + 1;
        p++; /* ',' */
    }
}

/* ---------------------------------------------------------------------
 * The import
 * ------------------------------------------------------------------- */

enum chunk_state { CHUNK_WAITING, CHUNK_SENDING, CHUNK_RETRY, CHUNK_DONE };

struct chunk {
    size_t off, len; /* the records' bytes in the file */
    long first_line; /* file line of the chunk's first byte */
    long lines;      /* physical lines in it */
    enum chunk_state state;
    struct imp_keyset keys;
    bool keys_read;
    bool alone; /* some key unreadable: nothing else in flight with it */
    int attempts;
    double retry_at;
};

struct xfer {
    CURL *h;
    struct chunk *c;
    char *body; /* CSV: header + records (owned); NDJSON: NULL */
    char *reply;
    size_t reply_len;
    bool too_big;
    char err[CURL_ERROR_SIZE];
};

struct imp {
    const char *path, *type;
    enum imp_format fmt;
    const char *map;
    size_t size;
    /* CSV */
    const char *header;
    size_t header_len;
    long header_lines;
    int key_field;
    /* chunks */
    struct chunk *chunks;
    int nchunks;
    long total_lines;
    int parallel;
    bool progress;
    char url[1024];
    struct curl_slist *headers;
    /* results */
    long lines_done, inserted, updated, unchanged, rejected;
    long truncated_chunks;
    bool failed;
    double t0, last_draw;
};

static double now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void progress_clear(struct imp *im)
{
    if (im->progress)
        fprintf(stderr, "\r\033[K");
}

static void progress_draw(struct imp *im, bool force)
{
    double t = now_s();
    if (!im->progress || (!force && t - im->last_draw < 0.2))
        return;
    im->last_draw = t;
    double el = t - im->t0;
    double frac = im->total_lines ? (double)im->lines_done / (double)im->total_lines : 1.0;
    double rate = el > 0 ? (double)im->lines_done / el : 0;
    char bar[31];
    int fill = (int)(frac * 30);
    for (int i = 0; i < 30; i++)
        bar[i] = i < fill ? '#' : '-';
    bar[30] = '\0';
    char eta[32] = "";
    if (rate > 0 && im->lines_done < im->total_lines) {
        long s = (long)((double)(im->total_lines - im->lines_done) / rate);
        snprintf(eta, sizeof(eta), "  ETA %ld:%02ld", s / 60, s % 60);
    }
    fprintf(stderr, "\r\033[K[%s] %3d%%  %ld/%ld lines  %.0f lines/s  %ld rejected%s", bar,
            (int)(frac * 100), im->lines_done, im->total_lines, rate, im->rejected, eta);
    fflush(stderr);
}

/* Cuts the file into chunks of whole records. */
static int imp_split(struct imp *im, long chunk_lines)
{
    const char *p = im->map, *end = im->map + im->size;
    long line = 1;
    if (im->fmt == IMP_CSV) {
        if (end - p >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
            p += 3;
        const char *f;
        size_t flen;
        bool q;
        const char *after = csv_record(p, end, -1, &im->header_lines, &f, &flen, &q);
        im->header = p;
        im->header_len = (size_t)(after - p);
        /* the key column, named as the API trims names */
        im->key_field = -1;
        for (int i = 0; i < 256 && im->key_field < 0; i++) {
            long l;
            csv_record(p, after, i, &l, &f, &flen, &q);
            if (!f)
                break;
            while (flen && (*f == ' ' || *f == '\t')) {
                f++;
                flen--;
            }
            while (flen && (f[flen - 1] == ' ' || f[flen - 1] == '\t'))
                flen--;
            if (flen == 11 && memcmp(f, "external_id", 11) == 0)
                im->key_field = i;
        }
        line += im->header_lines;
        p = after;
        if (im->header_len && im->header[im->header_len - 1] != '\n') {
            fprintf(stderr, "crierctl import: %s: the header row is the whole file\n", im->path);
            return -1;
        }
    }
    int cap = 0;
    while (p < end) {
        if (im->nchunks == cap) {
            cap = cap ? 2 * cap : 64;
            im->chunks = xrealloc(im->chunks, (size_t)cap * sizeof(*im->chunks));
        }
        struct chunk *c = &im->chunks[im->nchunks++];
        memset(c, 0, sizeof(*c));
        c->off = (size_t)(p - im->map);
        c->first_line = line;
        const char *s = p;
        while (p < end && c->lines < chunk_lines && (size_t)(p - s) < IMP_CHUNK_MAX_BYTES) {
            long l = 1;
            if (im->fmt == IMP_NDJSON) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                p = nl ? nl + 1 : end;
            } else {
                p = csv_record(p, end, -1, &l, NULL, NULL, NULL);
            }
            c->lines += l;
        }
        c->len = (size_t)(p - s);
        line += c->lines;
        im->total_lines += c->lines;
    }
    return 0;
}

/* Reads the chunk's keys (once); marks it alone when one is unreadable. */
static void chunk_keys(struct imp *im, struct chunk *c)
{
    if (c->keys_read)
        return;
    c->keys_read = true;
    const char *p = im->map + c->off, *end = p + c->len;
    while (p < end) {
        const char *k = NULL;
        size_t kn = 0;
        if (im->fmt == IMP_NDJSON) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *le = nl ? nl : end;
            int rc = ndjson_key(p, (size_t)(le - p), &k, &kn);
            p = nl ? nl + 1 : end;
            if (rc < 0) {
                c->alone = true;
                return;
            }
            if (rc == 0)
                continue;
        } else {
            long l;
            bool dq = false;
            p = csv_record(p, end, im->key_field, &l, &k, &kn, &dq);
            if (!k)
                continue;
            if (dq) {
                /* undouble the quotes: the API compares the cell's text */
                char *u = xmalloc(kn + 1);
                size_t o = 0;
                for (size_t i = 0; i < kn; i++) {
                    u[o++] = k[i];
                    if (k[i] == '"' && i + 1 < kn && k[i + 1] == '"')
                        i++;
                }
                c->keys.owned = xrealloc(c->keys.owned, (c->keys.nowned + 1) * sizeof(char *));
                c->keys.owned[c->keys.nowned++] = u;
                k = u;
                kn = o;
            }
        }
        keyset_add(&c->keys, k, kn);
    }
}

/* True when chunk i may be sent now: nothing in flight shares a key with
 * it, and neither it nor anything in flight must run alone. */
static bool chunk_may_go(struct imp *im, int i)
{
    struct chunk *c = &im->chunks[i];
    if (im->parallel == 1)
        return true;   /* one at a time: the chunks' order is the file's */
    chunk_keys(im, c); /* also needed by the chunks after it */
    bool busy = false;
    for (int j = 0; j < i; j++) {
        struct chunk *o = &im->chunks[j];
        if (o->state == CHUNK_DONE)
            continue;
        busy = true;
        if (o->alone)
            return false;
    }
    if (!busy)
        return true;
    if (c->alone)
        return false;
    for (int j = 0; j < i; j++) {
        struct chunk *o = &im->chunks[j];
        if (o->state != CHUNK_DONE && keysets_meet(&c->keys, &o->keys))
            return false;
    }
    return true;
}

static size_t on_reply(char *data, size_t size, size_t nmemb, void *arg)
{
    struct xfer *x = arg;
    size_t n = size * nmemb;
    if (x->reply_len + n > IMP_REPLY_MAX) {
        x->too_big = true;
        return n;
    }
    x->reply = xrealloc(x->reply, x->reply_len + n + 1);
    memcpy(x->reply + x->reply_len, data, n);
    x->reply_len += n;
    x->reply[x->reply_len] = '\0';
    return n;
}

static struct xfer *xfer_start(struct imp *im, CURLM *multi, struct chunk *c)
{
    struct xfer *x = xcalloc(1, sizeof(*x));
    x->c = c;
    x->h = curl_easy_init();
    if (!x->h) {
        free(x);
        return NULL;
    }
    const char *body = im->map + c->off;
    size_t len = c->len;
    if (im->fmt == IMP_CSV) {
        x->body = xmalloc(im->header_len + c->len);
        memcpy(x->body, im->header, im->header_len);
        memcpy(x->body + im->header_len, im->map + c->off, c->len);
        body = x->body;
        len = im->header_len + c->len;
    }
    curl_easy_setopt(x->h, CURLOPT_URL, im->url);
    curl_easy_setopt(x->h, CURLOPT_HTTPHEADER, im->headers);
    curl_easy_setopt(x->h, CURLOPT_POST, 1L);
    curl_easy_setopt(x->h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(x->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(x->h, CURLOPT_WRITEFUNCTION, on_reply);
    curl_easy_setopt(x->h, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(x->h, CURLOPT_PRIVATE, x);
    curl_easy_setopt(x->h, CURLOPT_ERRORBUFFER, x->err);
    curl_easy_setopt(x->h, CURLOPT_TIMEOUT, IMP_REQUEST_TIMEOUT_S);
    curl_easy_setopt(x->h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(x->h, CURLOPT_NOSIGNAL, 1L);
    c->state = CHUNK_SENDING;
    c->attempts++;
    curl_multi_add_handle(multi, x->h);
    return x;
}

static void xfer_free(CURLM *multi, struct xfer *x)
{
    curl_multi_remove_handle(multi, x->h);
    curl_easy_cleanup(x->h);
    free(x->body);
    free(x->reply);
    free(x);
}

static long json_long(const cJSON *o, const char *k)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(it) ? (long)it->valuedouble : 0;
}

/* The file line of a line number in the chunk's request body. */
static long file_line(const struct imp *im, const struct chunk *c, long body_line)
{
    if (im->fmt == IMP_CSV)
        return c->first_line + body_line - im->header_lines - 1;
    return c->first_line + body_line - 1;
}

static void chunk_finished(struct imp *im, struct chunk *c, const cJSON *reply)
{
    c->state = CHUNK_DONE;
    keyset_cleanup(&c->keys);
    im->lines_done += c->lines;
    im->inserted += json_long(reply, "inserted");
    im->updated += json_long(reply, "updated");
    im->unchanged += json_long(reply, "unchanged");
    im->rejected += json_long(reply, "rejected");
    const cJSON *errs = cJSON_GetObjectItemCaseSensitive(reply, "errors");
    const cJSON *e;
    progress_clear(im);
    cJSON_ArrayForEach(e, errs)
    {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(e, "field");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
        fprintf(stderr, "%s:%ld: %s%s%s\n", im->path, file_line(im, c, json_long(e, "line")),
                cJSON_IsString(f) ? f->valuestring : "", cJSON_IsString(f) ? ": " : "",
                cJSON_IsString(m) ? m->valuestring : "rejected");
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "errors_truncated"))) {
        im->truncated_chunks++;
        fprintf(stderr, "%s:%ld-%ld: more errors in these lines are not listed\n", im->path,
                c->first_line, c->first_line + c->lines - 1);
    }
}

/* Handles a finished transfer: counts, errors, a retry or the end. */
static void xfer_done(struct imp *im, struct xfer *x, CURLcode code)
{
    struct chunk *c = x->c;
    long status = 0;
    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &status);
    cJSON *reply = x->reply ? cJSON_Parse(x->reply) : NULL;
    bool transient = code != CURLE_OK || status == 429 || status == 502 || status == 503 ||
                     status == 504 || (status == 200 && !reply);
    if (code == CURLE_OK && status == 200 && reply) {
        chunk_finished(im, c, reply);
    } else if (transient && c->attempts <= IMP_RETRIES) {
        double pause = 0.5 * (double)(1 << (c->attempts - 1));
        progress_clear(im);
        fprintf(stderr, "crierctl import: lines %ld-%ld: %s; retrying in %.1f s\n", c->first_line,
                c->first_line + c->lines - 1,
                code != CURLE_OK ? (x->err[0] ? x->err : curl_easy_strerror(code))
                                 : "the API is unavailable",
                pause);
        c->state = CHUNK_RETRY;
        c->retry_at = now_s() + pause;
    } else {
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(reply, "error");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(err, "message");
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(err, "field");
        progress_clear(im);
        if (code != CURLE_OK)
            fprintf(stderr, "crierctl import: %s: %s\n", im->url,
                    x->err[0] ? x->err : curl_easy_strerror(code));
        else
            fprintf(stderr, "crierctl import: lines %ld-%ld: HTTP %ld: %s%s%s%s\n", c->first_line,
                    c->first_line + c->lines - 1, status,
                    cJSON_IsString(m) ? m->valuestring : "the API refused the request",
                    cJSON_IsString(f) ? " (field " : "", cJSON_IsString(f) ? f->valuestring : "",
                    cJSON_IsString(f) ? ")" : "");
        im->failed = true;
        c->state = CHUNK_DONE;
    }
    cJSON_Delete(reply);
}

static int imp_run(struct imp *im)
{
    CURLM *multi = curl_multi_init();
    struct xfer *xs[IMP_MAX_PARALLEL] = {NULL};
    int next = 0, done = 0;
    im->t0 = now_s();
    while (done < im->nchunks && !im->failed) {
        int inflight = 0;
        for (int i = 0; i < im->parallel; i++)
            inflight += xs[i] != NULL;
        for (int j = 0; j < next; j++)
            inflight += im->chunks[j].state == CHUNK_RETRY;
        /* retries first (in file order), then new chunks in order */
        for (int j = 0; j < next; j++) {
            struct chunk *c = &im->chunks[j];
            if (c->state != CHUNK_RETRY || c->retry_at > now_s())
                continue;
            for (int i = 0; i < im->parallel; i++)
                if (!xs[i]) {
                    xs[i] = xfer_start(im, multi, c);
                    break;
                }
        }
        while (next < im->nchunks && inflight < im->parallel && chunk_may_go(im, next)) {
            for (int i = 0; i < im->parallel; i++)
                if (!xs[i]) {
                    xs[i] = xfer_start(im, multi, &im->chunks[next]);
                    break;
                }
            next++;
            inflight++;
        }
        int running = 0;
        curl_multi_perform(multi, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(multi, &left))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            struct xfer *x = NULL;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            xfer_done(im, x, msg->data.result);
            if (x->c->state == CHUNK_DONE)
                done++;
            for (int i = 0; i < im->parallel; i++)
                if (xs[i] == x)
                    xs[i] = NULL;
            xfer_free(multi, x);
        }
        progress_draw(im, false);
        if (done < im->nchunks && !im->failed)
            curl_multi_poll(multi, NULL, 0, 100, NULL);
    }
    for (int i = 0; i < im->parallel; i++)
        if (xs[i])
            xfer_free(multi, xs[i]);
    curl_multi_cleanup(multi);
    progress_draw(im, true);
    progress_clear(im);
    return im->failed ? 3 : 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: crierctl import [--type customers|interactions|appointments]\n"
                    "                       [--format ndjson|csv] [--chunk-lines N]\n"
                    "                       [--parallel N] [--quiet] FILE\n");
    return 2;
}

int ctl_import(const struct ctl_config *cfg, int argc, char **argv)
{
    struct imp im;
    memset(&im, 0, sizeof(im));
    im.type = "customers";
    long chunk_lines = IMP_DEFAULT_CHUNK_LINES;
    int parallel = -1, fmt = -1;
    bool quiet = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--type") == 0 && v) {
            if (strcmp(v, "customers") && strcmp(v, "interactions") && strcmp(v, "appointments"))
                return usage();
            im.type = v;
            i++;
        } else if (strcmp(a, "--format") == 0 && v) {
            if (strcmp(v, "ndjson") == 0)
                fmt = IMP_NDJSON;
            else if (strcmp(v, "csv") == 0)
                fmt = IMP_CSV;
            else
                return usage();
            i++;
        } else if (strcmp(a, "--chunk-lines") == 0 && v) {
            char *end = NULL;
            chunk_lines = strtol(v, &end, 10);
            if (*end || chunk_lines < 1 || chunk_lines > 10000000)
                return usage();
            i++;
        } else if (strcmp(a, "--parallel") == 0 && v) {
            char *end = NULL;
            long n = strtol(v, &end, 10);
            if (*end || n < 1 || n > IMP_MAX_PARALLEL)
                return usage();
            parallel = (int)n;
            i++;
        } else if (strcmp(a, "--quiet") == 0) {
            quiet = true;
        } else if (a[0] == '-' && a[1]) {
            return usage();
        } else if (!im.path) {
            im.path = a;
        } else {
            return usage();
        }
    }
    if (!im.path)
        return usage();
    if (!cfg->api_key || !*cfg->api_key) {
        fprintf(stderr, "crierctl import: set CRIER_API_KEY (an API key of the tenant)\n");
        return 2;
    }
    size_t n = strlen(im.path);
    im.fmt = fmt >= 0                                            ? (enum imp_format)fmt
             : n > 4 && strcasecmp(im.path + n - 4, ".csv") == 0 ? IMP_CSV
                                                                 : IMP_NDJSON;
    /* customers tolerate two requests at once (ordered by key); the
     * activity imports also update customers, so they go one by one */
    im.parallel = parallel > 0 ? parallel : strcmp(im.type, "customers") == 0 ? 2 : 1;
    im.progress = !quiet && isatty(STDERR_FILENO);

    int fd = open(im.path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "crierctl import: %s: %s\n", im.path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return 2;
    }
    im.size = (size_t)st.st_size;
    if (im.size) {
        void *m = mmap(NULL, im.size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            fprintf(stderr, "crierctl import: %s: %s\n", im.path, strerror(errno));
            close(fd);
            return 2;
        }
        madvise(m, im.size, MADV_SEQUENTIAL);
        im.map = m;
    }
    close(fd);

    int rc = 0;
    if (im.size && imp_split(&im, chunk_lines) != 0)
        rc = 2;
    if (rc == 0 && im.nchunks > 0) {
        const char *base = cfg->api_url;
        size_t bl = strlen(base);
        while (bl && base[bl - 1] == '/')
            bl--;
        snprintf(im.url, sizeof(im.url), "%.*s/v1/%s/import", (int)bl, base, im.type);
        char *auth = xasprintf("Authorization: Bearer %s", cfg->api_key);
        im.headers = curl_slist_append(NULL, auth);
        free(auth);
        im.headers = curl_slist_append(im.headers, im.fmt == IMP_CSV
                                                       ? "Content-Type: text/csv; charset=utf-8"
                                                       : "Content-Type: application/x-ndjson");
        im.headers = curl_slist_append(im.headers, "Expect:");
        curl_global_init(CURL_GLOBAL_DEFAULT);
        rc = imp_run(&im);
        curl_slist_free_all(im.headers);
        curl_global_cleanup();
    }
    double el = im.t0 > 0 ? now_s() - im.t0 : 0;
    printf("%s: %ld of %ld lines in %.2f s (%.0f lines/s): %ld inserted, %ld updated, "
           "%ld unchanged, %ld rejected\n",
           im.path, im.lines_done, im.total_lines, el, el > 0 ? (double)im.lines_done / el : 0.0,
           im.inserted, im.updated, im.unchanged, im.rejected);
    if (rc == 0 && im.rejected > 0)
        rc = 1;
    if (rc == 3)
        fprintf(stderr, "crierctl import: stopped; lines before the failed chunk may be imported "
                        "(running the import again is safe: it is an upsert)\n");
    for (int i = 0; i < im.nchunks; i++)
        keyset_cleanup(&im.chunks[i].keys);
    free(im.chunks);
    if (im.map)
        munmap((void *)im.map, im.size);
    return rc;
}
