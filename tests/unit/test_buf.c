/* test_buf.c - unit tests for common/buf.c. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include "buf.h"
#include "check.h"

/* True when b holds exactly the n bytes of s followed by a NUL. */
static int holds(const struct buf *b, const char *s, size_t n)
{
    return b->len == n && b->data && memcmp(b->data, s, n) == 0 && b->data[n] == '\0';
}

static void test_fresh(void)
{
    struct buf b;
    buf_init(&b, 100);
    CHECK(b.data == NULL);
    CHECK(b.len == 0);
    CHECK(b.max == 100);
    CHECK_STR(buf_str(&b), "");
    buf_reset(&b); /* must not touch the NULL data */
    CHECK(b.data == NULL);
    buf_cleanup(&b);
    CHECK(b.data == NULL);
}

static void test_appends(void)
{
    struct buf b;
    buf_init(&b, 1000);
    CHECK(buf_append(&b, "abc", 3) == CR_OK);
    CHECK(holds(&b, "abc", 3));
    CHECK(buf_puts(&b, "def") == CR_OK);
    CHECK(buf_putc(&b, 'g') == CR_OK);
    CHECK(holds(&b, "abcdefg", 7));
    CHECK_STR(buf_str(&b), "abcdefg");
    /* Only len bytes are copied, whatever follows them. */
    CHECK(buf_append(&b, "hiXXX", 2) == CR_OK);
    CHECK_STR(buf_str(&b), "abcdefghi");
    /* Embedded NUL bytes are content like any other. */
    CHECK(buf_append(&b, "x\0y", 3) == CR_OK);
    CHECK(holds(&b, "abcdefghix\0y", 12));
    buf_cleanup(&b);
    CHECK(b.data == NULL && b.len == 0);
}

/* Growth across several reallocations keeps every byte and the NUL. */
static void test_growth(void)
{
    struct buf b;
    char expect[5000];
    buf_init(&b, sizeof(expect));
    for (size_t i = 0; i < sizeof(expect); i++) {
        expect[i] = (char)('a' + i % 26);
        if (buf_putc(&b, expect[i]) != CR_OK) {
            CHECK(!"putc failed below the maximum");
            break;
        }
        if (b.data[b.len] != '\0') {
            CHECK(!"not NUL-terminated after putc");
            break;
        }
    }
    CHECK(holds(&b, expect, sizeof(expect)));
    CHECK(b.cap <= b.max + 1);
    buf_cleanup(&b);
}

static void test_zero_length(void)
{
    struct buf b;
    buf_init(&b, 10);
    CHECK(buf_append(&b, "zzz", 0) == CR_OK);
    CHECK(b.len == 0);
    CHECK_STR(buf_str(&b), "");
    CHECK(buf_append(&b, NULL, 0) == CR_OK);
    CHECK(buf_puts(&b, "") == CR_OK);
    CHECK(b.len == 0);
    CHECK_STR(buf_str(&b), "");
    CHECK(buf_puts(&b, "0123456789") == CR_OK);
    /* A full buffer still takes zero bytes. */
    CHECK(buf_append(&b, "x", 0) == CR_OK);
    CHECK(buf_puts(&b, "") == CR_OK);
    CHECK(holds(&b, "0123456789", 10));
    buf_cleanup(&b);

    /* max 0: only the empty string fits. */
    buf_init(&b, 0);
    CHECK(buf_append(&b, "", 0) == CR_OK);
    CHECK_STR(buf_str(&b), "");
    CHECK(buf_putc(&b, 'a') == CR_ETOOBIG);
    CHECK_STR(buf_str(&b), "");
    CHECK(b.len == 0);
    buf_cleanup(&b);
}

static void test_max(void)
{
    struct buf b;
    buf_init(&b, 8);
    CHECK(buf_puts(&b, "12345") == CR_OK);
    CHECK(buf_puts(&b, "6789") == CR_ETOOBIG); /* one byte over */
    CHECK(holds(&b, "12345", 5));
    CHECK(buf_append(&b, "xyzxyzxyzxyz", 12) == CR_ETOOBIG);
    CHECK(holds(&b, "12345", 5));
    CHECK(buf_append(&b, "x", SIZE_MAX) == CR_ETOOBIG); /* no overflow in the check */
    CHECK(buf_append(&b, "x", SIZE_MAX - 2) == CR_ETOOBIG);
    CHECK(holds(&b, "12345", 5));
    CHECK(buf_puts(&b, "678") == CR_OK); /* exactly max */
    CHECK(holds(&b, "12345678", 8));
    CHECK(buf_putc(&b, '9') == CR_ETOOBIG);
    CHECK(buf_printf(&b, "%d", 9) == CR_ETOOBIG);
    CHECK(holds(&b, "12345678", 8));
    CHECK(b.cap <= b.max + 1);
    buf_cleanup(&b);

    /* A single append larger than max on an empty buffer. */
    buf_init(&b, 4);
    CHECK(buf_puts(&b, "hello") == CR_ETOOBIG);
    CHECK(b.len == 0);
    CHECK_STR(buf_str(&b), "");
    CHECK(buf_puts(&b, "hell") == CR_OK);
    CHECK_STR(buf_str(&b), "hell");
    buf_cleanup(&b);
}

/* SIZE_MAX is a legal maximum ("no practical limit"); max + 1 must not wrap. */
static void test_max_size_max(void)
{
    struct buf b;
    buf_init(&b, SIZE_MAX);
    CHECK(buf_puts(&b, "hello, world") == CR_OK);
    CHECK(buf_printf(&b, " %d", 42) == CR_OK);
    CHECK_STR(buf_str(&b), "hello, world 42");
    CHECK(b.cap >= b.len + 1);
    buf_cleanup(&b);
}

static void test_printf(void)
{
    struct buf b;
    buf_init(&b, 64);
    CHECK(buf_printf(&b, "%d-%s-%c", -12, "ab", 'z') == CR_OK);
    CHECK_STR(buf_str(&b), "-12-ab-z");
    CHECK(buf_printf(&b, "[%05.1f]", 3.14159) == CR_OK);
    CHECK_STR(buf_str(&b), "-12-ab-z[003.1]");
    CHECK(buf_printf(&b, "%s", "") == CR_OK);
    CHECK(b.len == 15);
    CHECK(buf_printf(&b, "%zu", (size_t)7) == CR_OK);
    CHECK(holds(&b, "-12-ab-z[003.1]7", 16));
    buf_cleanup(&b);

    /* Output that exactly fills max, then one that does not fit. */
    buf_init(&b, 6);
    CHECK(buf_printf(&b, "%s", "ab") == CR_OK);
    CHECK(buf_printf(&b, "%04d", 7) == CR_OK);
    CHECK(holds(&b, "ab0007", 6));
    buf_reset(&b);
    CHECK(buf_printf(&b, "%s", "1234567") == CR_ETOOBIG);
    CHECK(b.len == 0);
    CHECK_STR(buf_str(&b), "");
    buf_cleanup(&b);

    /* Long output that needs a reallocation in the middle of printf. */
    buf_init(&b, 4096);
    char big[1000];
    memset(big, 'q', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CHECK(buf_putc(&b, '<') == CR_OK);
    CHECK(buf_printf(&b, "%s>", big) == CR_OK);
    CHECK(b.len == 1001);
    CHECK(b.data[0] == '<' && b.data[1] == 'q' && b.data[999] == 'q' && b.data[1000] == '>');
    CHECK(b.data[1001] == '\0');
    buf_cleanup(&b);
}

/* A conversion error (a wide char the C locale cannot encode) is reported
 * and leaves the content alone. */
static void test_printf_encoding_error(void)
{
    struct buf b;
    static const wchar_t bad[] = {0x263A, 0};
    char probe[8];
    if (snprintf(probe, sizeof(probe), "%ls", bad) >= 0)
        return; /* this libc encodes it; nothing to test */
    buf_init(&b, 64);
    CHECK(buf_puts(&b, "keep") == CR_OK);
    CHECK(buf_printf(&b, "%ls", bad) == CR_EINVAL);
    CHECK(holds(&b, "keep", 4));
    buf_cleanup(&b);
}

static void test_reset(void)
{
    struct buf b;
    buf_init(&b, 100);
    CHECK(buf_puts(&b, "some content") == CR_OK);
    char *before = b.data;
    size_t cap = b.cap;
    buf_reset(&b);
    CHECK(b.len == 0);
    CHECK(b.data == before); /* keeps memory */
    CHECK(b.cap == cap);
    CHECK_STR(buf_str(&b), "");
    CHECK(buf_puts(&b, "new") == CR_OK);
    CHECK(holds(&b, "new", 3));
    buf_cleanup(&b);
}

static void test_take(void)
{
    struct buf b;
    buf_init(&b, 50);
    CHECK(buf_puts(&b, "owned") == CR_OK);
    char *s = buf_take(&b);
    CHECK_STR(s, "owned");
    CHECK(b.data == NULL);
    CHECK(b.len == 0);
    CHECK(b.max == 50); /* still usable with the same limit */
    CHECK_STR(buf_str(&b), "");
    CHECK(buf_puts(&b, "again") == CR_OK);
    CHECK_STR(buf_str(&b), "again");
    CHECK_STR(s, "owned"); /* the taken string is independent of b */
    free(s);
    CHECK(buf_append(&b, "0123456789012345678901234567890123456789012345", 46) == CR_ETOOBIG);
    char *t = buf_take(&b);
    CHECK_STR(t, "again");
    free(t);

    /* Taking from a never-used buffer gives a fresh "" the caller frees. */
    char *e = buf_take(&b);
    REQUIRE(e != NULL);
    CHECK_STR(e, "");
    free(e);
    buf_cleanup(&b);
}

int main(void)
{
    RUN(test_fresh);
    RUN(test_appends);
    RUN(test_growth);
    RUN(test_zero_length);
    RUN(test_max);
    RUN(test_max_size_max);
    RUN(test_printf);
    RUN(test_printf_encoding_error);
    RUN(test_reset);
    RUN(test_take);
    return check_summary();
}
