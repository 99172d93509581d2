/* variant.h - deterministic A/B variant assignment.
 *
 * A customer's variant depends only on the campaign, the customer and the
 * weights: the same customer gets the same variant on every attempt, on
 * every worker, after every restart. */
#ifndef CRIER_VARIANT_H
#define CRIER_VARIANT_H

#include <stdint.h>

/* Returns the index (0..n-1) of the variant for this customer, choosing
 * variant i with probability weights[i] / sum(weights). Weights must be
 * positive; n >= 1. */
int variant_pick(long long campaign_id, long long customer_id, const int *weights, int n);

#endif
