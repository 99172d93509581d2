/* pgarr.c - PostgreSQL array literal builder. */
#include "pgarr.h"

#include <stdio.h>

void pgarr_init(struct pgarr *a, size_t max)
{
    buf_init(&a->b, max);
    a->n = 0;
    a->closed = 0;
}

void pgarr_cleanup(struct pgarr *a)
{
    buf_cleanup(&a->b);
    a->n = 0;
    a->closed = 0; /* else a later add would strip a brace from the freed buffer */
}

void pgarr_reset(struct pgarr *a)
{
    buf_reset(&a->b);
    a->n = 0;
    a->closed = 0;
}

static void reopen(struct pgarr *a)
{
    if (a->closed) {
        a->b.data[--a->b.len] = '\0';
        a->closed = 0;
    }
}

static enum cr_err sep(struct pgarr *a)
{
    return buf_putc(&a->b, a->n++ ? ',' : '{');
}

enum cr_err pgarr_add_text(struct pgarr *a, const char *s)
{
    reopen(a);
    size_t mark = a->b.len;
    int n0 = a->n;
    enum cr_err e = sep(a);
    if (!e && !s)
        e = buf_puts(&a->b, "NULL");
    else if (!e) {
        e = buf_putc(&a->b, '"');
        for (const char *p = s; *p && !e; p++) {
            if (*p == '"' || *p == '\\')
                e = buf_putc(&a->b, '\\');
            if (!e)
                e = buf_putc(&a->b, *p);
        }
        if (!e)
            e = buf_putc(&a->b, '"');
    }
    if (e) {
        a->b.len = mark;
        if (a->b.data)
            a->b.data[mark] = '\0';
        a->n = n0;
    }
    return e;
}

enum cr_err pgarr_add_int(struct pgarr *a, long long v)
{
    char num[24];
    snprintf(num, sizeof(num), "%lld", v);
    reopen(a);
    size_t mark = a->b.len;
    int n0 = a->n;
    enum cr_err e = sep(a);
    if (!e)
        e = buf_puts(&a->b, num);
    if (e) {
        a->b.len = mark;
        if (a->b.data)
            a->b.data[mark] = '\0';
        a->n = n0;
    }
    return e;
}

const char *pgarr_str(struct pgarr *a)
{
    if (a->n == 0)
        return "{}";
    if (!a->closed) {
        if (buf_putc(&a->b, '}') != CR_OK)
            return NULL;
        a->closed = 1;
    }
    return a->b.data;
}
