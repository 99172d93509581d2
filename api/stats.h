/* stats.h - a campaign's statistics (stats.c), for GET /stats and the event
 * stream (events.c). Loop: the API's. */
#ifndef CRIER_API_STATS_H
#define CRIER_API_STATS_H

#include <cjson/cJSON.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "api.h"

/* Runs the statistics query of a campaign of a tenant; the callback's result
 * has one row when the tenant has the campaign, none otherwise. */
void stats_query(struct app *app, long long tenant_id, long long campaign_id, pgpool_cb cb,
                 void *arg);

/* The statistics JSON (GET /stats' body) of stats_query's row 0; the caller
 * owns it. *finished: the campaign is completed or cancelled. */
cJSON *stats_json(const PGresult *res, long long campaign_id, bool *finished);

#endif
