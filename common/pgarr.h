/* pgarr.h - builds PostgreSQL array literals ("{1,2}", "{\"a\",NULL}") to
 * pass whole batches as one text parameter (… = ANY($1::bigint[]),
 * unnest($1::text[], …)). Elements are quoted and escaped, so any text is
 * safe; the result is a parameter value, never SQL text. */
#ifndef CRIER_PGARR_H
#define CRIER_PGARR_H

#include "buf.h"

struct pgarr {
    struct buf b;
    int n;
    int closed; /* the buffer ends with the closing brace */
};

void pgarr_init(struct pgarr *a, size_t max);
void pgarr_cleanup(struct pgarr *a);
void pgarr_reset(struct pgarr *a);
/* s == NULL adds SQL NULL. */
enum cr_err pgarr_add_text(struct pgarr *a, const char *s) CR_MUST_CHECK;
enum cr_err pgarr_add_int(struct pgarr *a, long long v) CR_MUST_CHECK;
/* Returns the literal (borrowed; valid until the next change), or NULL when
 * the maximum size leaves no room for the closing brace. */
const char *pgarr_str(struct pgarr *a);

#endif
