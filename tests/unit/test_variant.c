/* test_variant.c - variant assignment is deterministic and follows the
 * weights. */
#include "check.h"
#include "variant.h"

static void test_deterministic(void)
{
    int w[] = {50, 30, 20};
    for (long long c = 1; c <= 2000; c++) {
        int a = variant_pick(7, c, w, 3);
        CHECK(a >= 0 && a < 3);
        CHECK(variant_pick(7, c, w, 3) == a);
    }
    int one[] = {5};
    CHECK(variant_pick(1, 1, one, 1) == 0);
}

static void test_weights(void)
{
    int w[] = {70, 20, 10};
    int counts[3] = {0, 0, 0};
    const int n = 100000;
    for (long long c = 1; c <= n; c++)
        counts[variant_pick(42, c, w, 3)]++;
    /* Within 1 percentage point of the weights. */
    CHECK(counts[0] > n * 69 / 100 && counts[0] < n * 71 / 100);
    CHECK(counts[1] > n * 19 / 100 && counts[1] < n * 21 / 100);
    CHECK(counts[2] > n * 9 / 100 && counts[2] < n * 11 / 100);
}

static void test_campaigns_differ(void)
{
    /* The same customers split differently in another campaign. */
    int w[] = {1, 1};
    int same = 0;
    for (long long c = 1; c <= 1000; c++)
        same += variant_pick(1, c, w, 2) == variant_pick(2, c, w, 2);
    CHECK(same > 400 && same < 600);
}

int main(void)
{
    RUN(test_deterministic);
    RUN(test_weights);
    RUN(test_campaigns_differ);
    return check_summary();
}
