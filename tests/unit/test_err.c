/* test_err.c - every error code has its own name; unknown codes are named. */
#include "check.h"
#include "err.h"

static void test_names_distinct(void)
{
    for (int a = CR_OK; a <= CR_EUNAVAIL; a++) {
        const char *na = cr_strerror((enum cr_err)a);
        REQUIRE(na != NULL);
        CHECK(strcmp(na, "unknown error") != 0);
        for (int b = a + 1; b <= CR_EUNAVAIL; b++)
            CHECK(strcmp(na, cr_strerror((enum cr_err)b)) != 0);
    }
    CHECK_STR(cr_strerror(CR_OK), "ok");
    CHECK_STR(cr_strerror((enum cr_err)999), "unknown error");
}

int main(void)
{
    RUN(test_names_distinct);
    return check_summary();
}
