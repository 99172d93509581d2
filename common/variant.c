/* variant.c - deterministic weighted variant assignment. */
#include "variant.h"

/* splitmix64's finaliser: a well-mixed 64-bit hash of x. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

int variant_pick(long long campaign_id, long long customer_id, const int *weights, int n)
{
    uint64_t total = 0;
    for (int i = 0; i < n; i++)
        total += weights[i] > 0 ? (uint64_t)weights[i] : 0;
    if (n <= 1 || total == 0)
        return 0;
    uint64_t h = mix64(mix64((uint64_t)campaign_id) ^ (uint64_t)customer_id);
    uint64_t point = h % total;
    for (int i = 0; i < n; i++) {
        uint64_t w = weights[i] > 0 ? (uint64_t)weights[i] : 0;
        if (point < w)
            return i;
        point -= w;
    }
    return n - 1;
}
