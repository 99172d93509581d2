/* test_xalloc.c - the aborting allocation wrappers return usable memory. */
#include <stdlib.h>

#include "check.h"
#include "xalloc.h"

static void test_strings(void)
{
    char *s = xstrndup("abcdef", 3);
    CHECK_STR(s, "abc");
    free(s);
    s = xstrndup("ab", 10);
    CHECK_STR(s, "ab");
    free(s);
    s = xstrdup("");
    CHECK_STR(s, "");
    free(s);
    s = xasprintf("%s-%d-%05.1f", "x", 42, 3.14159);
    CHECK_STR(s, "x-42-003.1");
    free(s);
}

static void test_sizes(void)
{
    unsigned char *p = xcalloc(16, 4);
    int zero = 1;
    for (int i = 0; i < 64; i++)
        zero &= p[i] == 0;
    CHECK(zero);
    p = xrealloc(p, 4096);
    p[4095] = 7;
    CHECK(p[4095] == 7);
    CHECK(p[0] == 0);
    free(p);
    void *q = xmalloc(0); /* a zero-size request still gives a pointer */
    CHECK(q != NULL);
    free(q);
}

int main(void)
{
    RUN(test_strings);
    RUN(test_sizes);
    return check_summary();
}
