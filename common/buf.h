/* buf.h - a growable byte buffer with a mandatory maximum size.
 *
 * Used for anything sized by outside input (HTTP bodies, provider replies,
 * SQL arrays). Appending past the maximum fails with CR_ETOOBIG and leaves
 * the buffer as it was. The content is always NUL-terminated. */
#ifndef CRIER_BUF_H
#define CRIER_BUF_H

#include <stdarg.h>
#include <stddef.h>

#include "err.h"

struct buf {
    char *data; /* NUL-terminated; NULL until the first append */
    size_t len;
    size_t cap;
    size_t max;
};

void buf_init(struct buf *b, size_t max);
void buf_cleanup(struct buf *b);
void buf_reset(struct buf *b); /* len = 0, keeps memory */
enum cr_err buf_append(struct buf *b, const void *data, size_t len) CR_MUST_CHECK;
enum cr_err buf_puts(struct buf *b, const char *s) CR_MUST_CHECK;
enum cr_err buf_putc(struct buf *b, char c) CR_MUST_CHECK;
enum cr_err buf_printf(struct buf *b, const char *fmt, ...) CR_MUST_CHECK
    __attribute__((format(printf, 2, 3)));
/* Gives the caller the heap string (possibly "" newly allocated) and resets b. */
char *buf_take(struct buf *b);
/* Returns the content as a C string ("" when empty); borrowed. */
const char *buf_str(const struct buf *b);

#endif
