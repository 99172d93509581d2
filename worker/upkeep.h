/* upkeep.h - the inbound stream's housekeeping (upkeep.c): trimming the
 * entries the consumer group is done with, purging old dedupe keys.
 * Loop: the worker's. */
#ifndef CRIER_UPKEEP_H
#define CRIER_UPKEEP_H

struct worker;
struct upkeep;

/* For the inbound stream's consumer group (a string that outlives it). */
struct upkeep *upkeep_new(struct worker *w, const char *group);
/* Call once a second; starts what is due (nothing while the worker stops). */
void upkeep_tick(struct upkeep *u);
/* After the worker's pool and Redis connections are freed (their pending
 * callbacks use u). Accepts NULL. */
void upkeep_free(struct upkeep *u);

#endif
