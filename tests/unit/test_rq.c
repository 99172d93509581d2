/* test_rq.c - unit tests for the key names in common/rq.c (no Redis needed). */
#include <string.h>

#include "check.h"
#include "rq.h"

static void test_keys_default_prefix(void)
{
    struct rq_keys k;
    memset(&k, 'Z', sizeof(k));
    rq_keys_init(&k, "crier:");
    CHECK_STR(k.actions, "crier:actions");
    CHECK_STR(k.jobs[0], "crier:jobs:sms");
    CHECK_STR(k.jobs[1], "crier:jobs:email");
    CHECK_STR(k.jobs[2], "crier:jobs:voice");
    CHECK_STR(k.inbound, "crier:inbound");
    CHECK_STR(k.dlq, "crier:dlq");
    CHECK_STR(k.delayed, "crier:delayed");
}

static void test_keys_other_prefix(void)
{
    struct rq_keys k;
    memset(&k, 'Z', sizeof(k));
    rq_keys_init(&k, "x:");
    CHECK_STR(k.actions, "x:actions");
    CHECK_STR(k.jobs[0], "x:jobs:sms");
    CHECK_STR(k.jobs[1], "x:jobs:email");
    CHECK_STR(k.jobs[2], "x:jobs:voice");
    CHECK_STR(k.inbound, "x:inbound");
    CHECK_STR(k.dlq, "x:dlq");
    CHECK_STR(k.delayed, "x:delayed");

    rq_keys_init(&k, "");
    CHECK_STR(k.actions, "actions");
    CHECK_STR(k.jobs[0], "jobs:sms");
    CHECK_STR(k.delayed, "delayed");
}

/* All seven names are distinct, so no two roles share a key. */
static void test_keys_distinct(void)
{
    struct rq_keys k;
    rq_keys_init(&k, "crier:");
    const char *names[] = {k.actions, k.jobs[0], k.jobs[1], k.jobs[2], k.inbound, k.dlq, k.delayed};
    size_t n = sizeof(names) / sizeof(names[0]);
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            CHECK(strcmp(names[i], names[j]) != 0);
}

/* An over-long prefix is cut to the field size, never written past it. */
static void test_keys_long_prefix(void)
{
    struct {
        struct rq_keys k;
        char guard[16];
    } s;
    char prefix[300];
    memset(prefix, 'p', sizeof(prefix) - 1);
    prefix[sizeof(prefix) - 1] = '\0';
    memset(&s, 'Z', sizeof(s));
    rq_keys_init(&s.k, prefix);
    CHECK(strlen(s.k.actions) == RQ_KEY_MAX - 1);
    CHECK(strlen(s.k.jobs[2]) == RQ_KEY_MAX - 1);
    CHECK(strlen(s.k.delayed) == RQ_KEY_MAX - 1);
    CHECK(s.guard[0] == 'Z' && s.guard[15] == 'Z');
}

int main(void)
{
    RUN(test_keys_default_prefix);
    RUN(test_keys_other_prefix);
    RUN(test_keys_distinct);
    RUN(test_keys_long_prefix);
    return check_summary();
}
