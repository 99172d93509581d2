/* migrations.h - the SQL migrations embedded at build time (the .sql files in migrations/). */
#ifndef CRIER_MIGRATIONS_H
#define CRIER_MIGRATIONS_H

#include <stddef.h>

struct migration {
    const char *name; /* file name, e.g. "0001_init.sql"; ordered */
    const char *sql;
    size_t len;
};

extern const struct migration migrations_all[]; /* terminated by a {0} row */
extern const int migrations_count;

#endif
