/* events.h - the API's open event streams (events.c). Loop: the API's.
 *
 * main creates them with events_new; events_shutdown (SIGTERM's drain) ends
 * every open stream and refuses new ones; events_free comes after
 * pgpool_free (a read's callback may still be pending until then) and before
 * evhttp_free. */
#ifndef CRIER_API_EVENTS_H
#define CRIER_API_EVENTS_H

#include "api.h"

struct events *events_new(struct app *app);
void events_shutdown(struct events *ev);
void events_free(struct events *ev);

#endif
