/* test_phone.c - tests for phone_normalize (common/phone.c). */
#include <string.h>

#include "check.h"
#include "phone.h"

static void accepts(const char *in, const char *cc, const char *want, int line)
{
    char out[PHONE_E164_SIZE];
    memset(out, 'x', sizeof out);
    enum cr_err err = phone_normalize(in, cc, out, sizeof out);
    check_count++;
    if (err != CR_OK || strcmp(out, want) != 0) {
        check_failures++;
        fprintf(stderr, "%s:%d: phone_normalize(\"%s\", %s%s%s) = %d \"%.16s\", want \"%s\"\n",
                __FILE__, line, in, cc ? "\"" : "", cc ? cc : "NULL", cc ? "\"" : "", (int)err,
                err == CR_OK ? out : "", want);
    }
}

static void rejects(const char *in, const char *cc, int line)
{
    char out[PHONE_E164_SIZE];
    memset(out, 'x', sizeof out);
    enum cr_err err = phone_normalize(in, cc, out, sizeof out);
    check_count++;
    if (err != CR_EINVAL || out[0] != '\0') {
        check_failures++;
        fprintf(stderr, "%s:%d: phone_normalize(\"%s\", %s) = %d, want CR_EINVAL\n", __FILE__, line,
                in ? in : "NULL", cc ? cc : "NULL", (int)err);
    }
}

#define ACCEPTS(in, cc, want) accepts((in), (cc), (want), __LINE__)
#define REJECTS(in, cc) rejects((in), (cc), __LINE__)

static void test_international(void)
{
    ACCEPTS("+1 (415) 555-2671", NULL, "+14155552671");
    ACCEPTS("+14155552671", NULL, "+14155552671");
    ACCEPTS("+14155552671", "44", "+14155552671"); /* default_cc ignored */
    ACCEPTS("+44 7911 123456", NULL, "+447911123456");
    ACCEPTS("+49.151.2345.6789", NULL, "+4915123456789");
    ACCEPTS("  +33 6 12 34 56 78  ", NULL, "+33612345678");
    ACCEPTS("+1234567", NULL, "+1234567");                 /* 7 digits: minimum */
    ACCEPTS("+123456789012345", NULL, "+123456789012345"); /* 15 digits: maximum */
}

static void test_international_prefix(void)
{
    ACCEPTS("004915123456789", NULL, "+4915123456789");
    ACCEPTS("0049 151 2345 6789", "1", "+4915123456789");
    ACCEPTS("00 44 7911 123456", "44", "+447911123456");
}

static void test_national(void)
{
    ACCEPTS("4155552671", "1", "+14155552671");
    ACCEPTS("(415) 555-2671", "1", "+14155552671");
    ACCEPTS("415.555.2671", "1", "+14155552671");
    ACCEPTS("07911 123456", "44", "+447911123456");
    ACCEPTS("0151 23456789", "49", "+4915123456789");
    ACCEPTS("06 12 34 56 78", "33", "+33612345678");
    ACCEPTS("012345", "44", "+4412345"); /* 2 + 5 = 7 digits: minimum */
}

static void test_rejects(void)
{
    REJECTS("", NULL);
    REJECTS("", "1");
    REJECTS("abc", NULL);
    REJECTS("abc", "1");
    REJECTS("+", NULL);
    REJECTS("   ", "1");
    REJECTS("+0123456", NULL);          /* country code cannot start with 0 */
    REJECTS("+123456", NULL);           /* 6 digits: too short */
    REJECTS("+1234567890123456", NULL); /* 16 digits: too long */
    REJECTS("+12345678901234567890123", NULL);
    REJECTS("00123456", NULL);           /* 6 digits after 00 */
    REJECTS("001234567890123456", NULL); /* 16 digits after 00 */
    REJECTS("000441234567", NULL);       /* 0 after the 00 prefix */
    REJECTS("+1 415 555 CALL", NULL);    /* letters mixed in */
    REJECTS("+1415555267a", NULL);
    REJECTS("415x5552671", "1");
    REJECTS("+1 415 555 2671 ext 12", NULL);
    REJECTS("4155552671", NULL); /* national without default_cc */
    REJECTS("4155552671", "");   /* empty default_cc */
    REJECTS("07911123456", NULL);
    REJECTS("++14155552671", NULL); /* '+' twice */
    REJECTS("1+4155552671", NULL);  /* '+' after a digit */
    REJECTS("+1 415+555 2671", NULL);
    REJECTS("+1/415/555/2671", NULL); /* '/' is not a separator */
    REJECTS("+1\t4155552671", NULL);
}

static void test_national_rejects(void)
{
    REJECTS("415555267", "1");   /* 9 digits */
    REJECTS("41555526710", "1"); /* 11 digits */
    REJECTS("14155552671", "1"); /* leading 1 is not a NANP area code */
    REJECTS("0415555267", "1");  /* NANP has no trunk 0 */
    REJECTS("7911123456", "44"); /* national number without trunk 0 */
    REJECTS("0", "44");
    REJECTS("01234", "44");            /* 2 + 4 = 6 digits: too short */
    REJECTS("0123456789012345", "44"); /* too long */
    REJECTS("07911123456", "0");       /* invalid default_cc */
    REJECTS("07911123456", "4a");
    REJECTS("07911123456", "1234");
    REJECTS("07911123456", "+44");
}

static void test_output_buffer(void)
{
    char small[12];
    CHECK(phone_normalize("+14155552671", NULL, small, sizeof small) == CR_EINVAL);
    char exact[13];
    CHECK(phone_normalize("+14155552671", NULL, exact, sizeof exact) == CR_OK);
    CHECK_STR(exact, "+14155552671");
    /* 15 digits need all PHONE_E164_SIZE bytes. */
    char out[PHONE_E164_SIZE];
    CHECK(phone_normalize("+123456789012345", NULL, out, sizeof out) == CR_OK);
    CHECK_STR(out, "+123456789012345");
    CHECK(phone_normalize("+123456789012345", NULL, out, sizeof out - 1) == CR_EINVAL);
    CHECK(out[0] == '\0');
    CHECK(phone_normalize(NULL, "1", out, sizeof out) == CR_EINVAL);
    CHECK(phone_normalize("+14155552671", NULL, NULL, PHONE_E164_SIZE) == CR_EINVAL);
}

int main(void)
{
    RUN(test_international);
    RUN(test_international_prefix);
    RUN(test_national);
    RUN(test_rejects);
    RUN(test_national_rejects);
    RUN(test_output_buffer);
    return check_summary();
}
