/* timestamp.h - validation of ISO 8601 timestamps sent by clients, so a bad
 * one is a 422 naming the field instead of a database error. */
#ifndef CRIER_TIMESTAMP_H
#define CRIER_TIMESTAMP_H

#include <stdbool.h>

/* YYYY-MM-DD, optionally followed by [T ]HH:MM[:SS[.fff]] and a zone (Z or
 * +HH[:MM]). With require_zone, the time and the zone are mandatory. Checks
 * ranges, including the day of the month (leap years). */
bool ts_valid_iso8601(const char *s, bool require_zone);

#endif
