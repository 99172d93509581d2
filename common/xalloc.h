/* xalloc.h - allocation wrappers for small internal allocations.
 *
 * Policy (decided once): an internal allocation that fails logs and aborts;
 * a supervisor restarts the process. Anything sized by outside input goes
 * through struct buf (buf.h), which has a mandatory maximum instead. */
#ifndef CRIER_XALLOC_H
#define CRIER_XALLOC_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* printf into a fresh heap string; caller frees. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
