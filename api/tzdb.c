/* tzdb.c - STUB: replaced by its implementation. */
#include "api.h"

void tzdb_start(struct app *app)
{
    (void)app;
}

void tzdb_free(struct tzdb *z)
{
    (void)z;
}

bool tzdb_valid(const struct app *app, const char *name)
{
    (void)app;
    return name && *name;
}
