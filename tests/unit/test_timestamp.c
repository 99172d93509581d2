/* test_timestamp.c - ISO 8601 validation accepts what PostgreSQL reads and
 * rejects what it would refuse or misread. */
#include "check.h"
#include "timestamp.h"

static void test_valid(void)
{
    CHECK(ts_valid_iso8601("2026-11-21", false));
    CHECK(ts_valid_iso8601("2026-11-21T10:00", false));
    CHECK(ts_valid_iso8601("2026-11-21T10:00:59Z", true));
    CHECK(ts_valid_iso8601("2026-11-21 10:00:00.123456+01:00", true));
    CHECK(ts_valid_iso8601("2026-11-21T23:59:60-05", true)); /* leap second */
    CHECK(ts_valid_iso8601("2024-02-29T00:00:00Z", true));   /* leap day */
    CHECK(ts_valid_iso8601("2000-02-29T00:00:00Z", true));
}

static void test_invalid(void)
{
    CHECK(!ts_valid_iso8601(NULL, false));
    CHECK(!ts_valid_iso8601("", false));
    CHECK(!ts_valid_iso8601("2026-11-21", true)); /* no time, no zone */
    CHECK(!ts_valid_iso8601("2026-11-21T10:00", true));
    CHECK(!ts_valid_iso8601("2026-13-01", false));
    CHECK(!ts_valid_iso8601("2026-04-31", false));
    CHECK(!ts_valid_iso8601("2023-02-29", false));
    CHECK(!ts_valid_iso8601("1900-02-29", false));
    CHECK(!ts_valid_iso8601("2026-11-21T24:00Z", true));
    CHECK(!ts_valid_iso8601("2026-11-21T10:60Z", true));
    CHECK(!ts_valid_iso8601("2026-11-21T10:00:00.Z", true));
    CHECK(!ts_valid_iso8601("2026-11-21T10:00:00+1", true));
    CHECK(!ts_valid_iso8601("2026-11-21T10:00:00+15:00", true));
    CHECK(!ts_valid_iso8601("2026-11-21T10:00:00Zjunk", true));
    CHECK(!ts_valid_iso8601("tomorrow", false));
    CHECK(!ts_valid_iso8601("2026/11/21", false));
}

int main(void)
{
    RUN(test_valid);
    RUN(test_invalid);
    return check_summary();
}
