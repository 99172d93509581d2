/* segment_templates.h - the segment templates crier ships: the six of the
 * seed product, as criteria JSON for seg_compile (segment.h) and the
 * campaign channel each is meant for.
 *
 * Every template compiles for its channel and uses only implemented
 * criteria: tests/unit/test_segment_templates.c compiles each one, and
 * tests/integration/segment_templates.sh runs each against PostgreSQL. The
 * API serves them at GET /v1/segment-templates and previews them by id. */
#ifndef CRIER_SEGMENT_TEMPLATES_H
#define CRIER_SEGMENT_TEMPLATES_H

#include <stddef.h>

struct seg_template {
    const char *id;            /* snake_case, stable: clients refer to it */
    const char *name;          /* short, for a list */
    const char *description;   /* exactly what the criteria select */
    const char *channel;       /* "sms" | "email" | "voice" (seg_channel_parse) */
    const char *criteria_json; /* a JSON object for seg_compile */
};

/* Returns the static table of templates and stores its length in *count. */
const struct seg_template *seg_templates(size_t *count);
/* Returns the template with this id, or NULL (also for id NULL). */
const struct seg_template *seg_template_find(const char *id);

#endif
