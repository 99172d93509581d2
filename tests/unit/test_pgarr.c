/* test_pgarr.c - unit tests for common/pgarr.c. */
#include <limits.h>
#include <string.h>

#include "check.h"
#include "pgarr.h"

static void test_empty(void)
{
    struct pgarr a;
    pgarr_init(&a, 100);
    CHECK_STR(pgarr_str(&a), "{}");
    CHECK_STR(pgarr_str(&a), "{}"); /* asking twice changes nothing */
    pgarr_cleanup(&a);

    /* "{}" needs no room at all. */
    pgarr_init(&a, 0);
    CHECK_STR(pgarr_str(&a), "{}");
    pgarr_cleanup(&a);
}

static void test_ints(void)
{
    struct pgarr a;
    pgarr_init(&a, 200);
    CHECK(pgarr_add_int(&a, 1) == CR_OK);
    CHECK_STR(pgarr_str(&a), "{1}");
    pgarr_reset(&a);
    CHECK(pgarr_add_int(&a, 0) == CR_OK);
    CHECK(pgarr_add_int(&a, -42) == CR_OK);
    CHECK(pgarr_add_int(&a, LLONG_MAX) == CR_OK);
    CHECK(pgarr_add_int(&a, LLONG_MIN) == CR_OK);
    CHECK_STR(pgarr_str(&a), "{0,-42,9223372036854775807,-9223372036854775808}");
    CHECK(a.n == 4);
    pgarr_cleanup(&a);
}

static void test_texts(void)
{
    struct pgarr a;
    pgarr_init(&a, 1000);
    CHECK(pgarr_add_text(&a, "plain") == CR_OK);
    CHECK(pgarr_add_text(&a, "") == CR_OK);
    CHECK(pgarr_add_text(&a, "with space") == CR_OK);
    CHECK(pgarr_add_text(&a, "say \"hi\"") == CR_OK);
    CHECK(pgarr_add_text(&a, "back\\slash") == CR_OK);
    CHECK(pgarr_add_text(&a, "a,b") == CR_OK);
    CHECK(pgarr_add_text(&a, "{x}") == CR_OK);
    CHECK(pgarr_add_text(&a, "NULL") == CR_OK);
    CHECK(pgarr_add_text(&a, "null") == CR_OK);
    CHECK(pgarr_add_text(&a, "\\\"") == CR_OK);
    CHECK(pgarr_add_text(&a, "Zürich\n'q'") == CR_OK);
    CHECK_STR(pgarr_str(&a), "{\"plain\",\"\",\"with space\",\"say \\\"hi\\\"\","
                             "\"back\\\\slash\",\"a,b\",\"{x}\",\"NULL\",\"null\","
                             "\"\\\\\\\"\",\"Zürich\n'q'\"}");
    pgarr_cleanup(&a);
}

static void test_nulls(void)
{
    struct pgarr a;
    pgarr_init(&a, 100);
    CHECK(pgarr_add_text(&a, NULL) == CR_OK);
    CHECK_STR(pgarr_str(&a), "{NULL}");
    pgarr_reset(&a);
    CHECK(pgarr_add_text(&a, "x") == CR_OK);
    CHECK(pgarr_add_text(&a, NULL) == CR_OK);
    CHECK(pgarr_add_text(&a, "NULL") == CR_OK); /* the word is quoted, SQL NULL is not */
    CHECK(pgarr_add_text(&a, NULL) == CR_OK);
    CHECK_STR(pgarr_str(&a), "{\"x\",NULL,\"NULL\",NULL}");
    pgarr_cleanup(&a);
}

/* pgarr_str closes the literal; adding afterwards must move the brace. */
static void test_add_after_str(void)
{
    struct pgarr a;
    pgarr_init(&a, 100);
    CHECK(pgarr_add_int(&a, 1) == CR_OK);
    CHECK_STR(pgarr_str(&a), "{1}");
    CHECK(pgarr_add_int(&a, 2) == CR_OK);
    CHECK_STR(pgarr_str(&a), "{1,2}");
    CHECK(pgarr_add_text(&a, "t") == CR_OK);
    CHECK(pgarr_add_text(&a, NULL) == CR_OK);
    CHECK_STR(pgarr_str(&a), "{1,2,\"t\",NULL}");
    CHECK_STR(pgarr_str(&a), "{1,2,\"t\",NULL}");
    CHECK(a.b.len == strlen("{1,2,\"t\",NULL}"));
    pgarr_cleanup(&a);
}

static void test_reset(void)
{
    struct pgarr a;
    pgarr_init(&a, 100);
    CHECK(pgarr_add_int(&a, 7) == CR_OK);
    CHECK_STR(pgarr_str(&a), "{7}");
    pgarr_reset(&a);
    CHECK_STR(pgarr_str(&a), "{}");
    CHECK(pgarr_add_int(&a, 8) == CR_OK);
    CHECK_STR(pgarr_str(&a), "{8}");
    pgarr_reset(&a); /* reset while open (no closing brace yet) */
    CHECK(pgarr_add_int(&a, 9) == CR_OK);
    pgarr_reset(&a);
    CHECK(pgarr_add_text(&a, "a") == CR_OK);
    CHECK_STR(pgarr_str(&a), "{\"a\"}");
    pgarr_cleanup(&a);
}

/* After cleanup the array is empty and can be used again. */
static void test_cleanup_reuse(void)
{
    struct pgarr a;
    pgarr_init(&a, 100);
    CHECK(pgarr_add_int(&a, 1) == CR_OK);
    CHECK_STR(pgarr_str(&a), "{1}");
    pgarr_cleanup(&a);
    CHECK_STR(pgarr_str(&a), "{}");
    CHECK(pgarr_add_int(&a, 2) == CR_OK);
    CHECK_STR(pgarr_str(&a), "{2}");
    pgarr_cleanup(&a);
}

/* An add that does not fit fails with CR_ETOOBIG and leaves the previous
 * literal intact, whether or not it had been closed. */
static void test_limit(void)
{
    struct pgarr a;
    pgarr_init(&a, 10);
    CHECK(pgarr_add_int(&a, 123) == CR_OK); /* "{123" */
    CHECK(pgarr_add_text(&a, "abcdefgh") == CR_ETOOBIG);
    CHECK(a.n == 1);
    CHECK_STR(pgarr_str(&a), "{123}");
    CHECK(pgarr_add_text(&a, "abcdefgh") == CR_ETOOBIG); /* now after the brace */
    CHECK_STR(pgarr_str(&a), "{123}");
    CHECK(pgarr_add_int(&a, 12345678) == CR_ETOOBIG);
    CHECK_STR(pgarr_str(&a), "{123}");
    CHECK(pgarr_add_text(&a, NULL) == CR_OK); /* "{123,NULL" = 9 */
    CHECK_STR(pgarr_str(&a), "{123,NULL}");   /* exactly 10 */
    CHECK(pgarr_add_int(&a, 1) == CR_ETOOBIG);
    CHECK(pgarr_add_text(&a, "") == CR_ETOOBIG);
    CHECK(pgarr_add_text(&a, NULL) == CR_ETOOBIG);
    CHECK_STR(pgarr_str(&a), "{123,NULL}");
    CHECK(a.n == 2);
    pgarr_cleanup(&a);

    /* A failure in the middle of an escaped element leaves no half element. */
    pgarr_init(&a, 12);
    CHECK(pgarr_add_text(&a, "a") == CR_OK);           /* {"a" */
    CHECK(pgarr_add_text(&a, "\"\"\"") == CR_ETOOBIG); /* ,"\"\"\"" needs 9 */
    CHECK_STR(pgarr_str(&a), "{\"a\"}");
    CHECK(pgarr_add_text(&a, "\"") == CR_OK); /* ,"\"" -> {"a","\""} = 10 */
    CHECK_STR(pgarr_str(&a), "{\"a\",\"\\\"\"}");
    pgarr_cleanup(&a);

    /* The first element itself does not fit. */
    pgarr_init(&a, 3);
    CHECK(pgarr_add_text(&a, "abc") == CR_ETOOBIG);
    CHECK(a.n == 0);
    CHECK_STR(pgarr_str(&a), "{}");
    CHECK(pgarr_add_int(&a, 5) == CR_OK);
    CHECK_STR(pgarr_str(&a), "{5}");
    pgarr_cleanup(&a);
}

/* No room for the closing brace: pgarr_str says so instead of returning an
 * unterminated literal. */
static void test_no_room_for_brace(void)
{
    struct pgarr a;
    pgarr_init(&a, 3);
    CHECK(pgarr_add_int(&a, 12) == CR_OK); /* "{12" fills max */
    CHECK(pgarr_str(&a) == NULL);
    CHECK(pgarr_str(&a) == NULL);
    pgarr_reset(&a);
    CHECK(pgarr_add_int(&a, 1) == CR_OK);
    CHECK_STR(pgarr_str(&a), "{1}");
    pgarr_cleanup(&a);
}

int main(void)
{
    RUN(test_empty);
    RUN(test_ints);
    RUN(test_texts);
    RUN(test_nulls);
    RUN(test_add_after_str);
    RUN(test_reset);
    RUN(test_cleanup_reuse);
    RUN(test_limit);
    RUN(test_no_room_for_brace);
    return check_summary();
}
