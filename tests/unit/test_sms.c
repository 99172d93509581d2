/* test_sms.c - tests for sms_segments (common/sms.c). */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "sms.h"

static unsigned segs(const char *s, bool *gsm)
{
    return sms_segments(s, strlen(s), gsm);
}

/* n copies of a UTF-8 character. */
static const char *rep(const char *c, int n)
{
    static char buf[2048];
    size_t k = strlen(c);
    buf[0] = '\0';
    for (int i = 0; i < n && (size_t)(i + 1) * k < sizeof(buf); i++)
        memcpy(buf + (size_t)i * k, c, k + 1);
    return buf;
}

static void test_gsm7(void)
{
    bool gsm = false;
    CHECK(segs("", &gsm) == 0);
    CHECK(segs("Hi Ann, your table is ready.", &gsm) == 1);
    CHECK(gsm);
    CHECK(segs(rep("a", 160), NULL) == 1);
    CHECK(segs(rep("a", 161), NULL) == 2);
    CHECK(segs(rep("a", 306), NULL) == 2);
    CHECK(segs(rep("a", 307), NULL) == 3);
    /* é, ß, Ω are in the basic alphabet: still GSM-7. */
    CHECK(segs(rep("é", 160), &gsm) == 1);
    CHECK(gsm);
    CHECK(segs("Ωß£¥", &gsm) == 1 && gsm);
}

static void test_extension_characters(void)
{
    bool gsm = false;
    /* "{" and "€" take two septets: 80 fit in one segment, 81 do not. */
    CHECK(segs(rep("{", 80), &gsm) == 1);
    CHECK(gsm);
    CHECK(segs(rep("€", 81), NULL) == 2);
    /* 152 "a" then "€": the escape pair does not straddle parts (153 + 2 > 153). */
    char buf[400];
    snprintf(buf, sizeof buf, "%s€%s", rep("a", 152), "aaaaaaaaaa");
    CHECK(segs(buf, NULL) == 2);
    snprintf(buf, sizeof buf, "%s{", rep("a", 306));
    CHECK(segs(buf, NULL) == 3);
}

static void test_ucs2(void)
{
    bool gsm = true;
    /* One non-GSM character makes the whole body UCS-2. */
    CHECK(segs("Hello ç", &gsm) == 1);
    CHECK(!gsm);
    CHECK(segs("`", &gsm) == 1 && !gsm);
    CHECK(segs(rep("ж", 70), NULL) == 1);
    CHECK(segs(rep("ж", 71), NULL) == 2);
    CHECK(segs(rep("ж", 134), NULL) == 2);
    CHECK(segs(rep("ж", 135), NULL) == 3);
    /* An emoji takes two UTF-16 units: 35 fit in one segment, 36 do not. */
    CHECK(segs(rep("😀", 35), NULL) == 1);
    CHECK(segs(rep("😀", 36), NULL) == 2);
    /* 66 units, a surrogate pair, 66 units: 134 units would fill exactly two
     * parts of 67 if the pair could straddle them; it cannot, so three. */
    char buf[700], half[300];
    snprintf(half, sizeof half, "%s", rep("ж", 66));
    snprintf(buf, sizeof buf, "%s😀%s", half, half);
    CHECK(segs(buf, NULL) == 3);
}

static void test_invalid_utf8(void)
{
    bool gsm = true;
    const char bad[] = {'a', (char)0xff, 'b', 0};
    CHECK(segs(bad, &gsm) == 1);
    CHECK(!gsm);
    const char cut[] = {'a', (char)0xe2, (char)0x82, 0}; /* a truncated euro sign */
    CHECK(segs(cut, &gsm) == 1);
}

int main(void)
{
    RUN(test_gsm7);
    RUN(test_extension_characters);
    RUN(test_ucs2);
    RUN(test_invalid_utf8);
    return check_summary();
}
