/* sms.h - how many SMS segments a message body takes.
 *
 * Carriers (and Twilio's messages-per-second limits) count segments: a body
 * whose every character is in the GSM 03.38 alphabet is sent in GSM-7, 160
 * septets in one segment or 153 per part once split (extension characters
 * such as "{" or "€" take two septets and never straddle parts); any other
 * character makes the whole body UCS-2: 70 UTF-16 units in one segment or
 * 67 per part (a surrogate pair never straddles parts). */
#ifndef CRIER_SMS_H
#define CRIER_SMS_H

#include <stdbool.h>
#include <stddef.h>

/* Segments of a UTF-8 body (0 for an empty one). Invalid UTF-8 bytes count
 * as one UCS-2 unit each. Sets *gsm7 when given. */
unsigned sms_segments(const char *body, size_t len, bool *gsm7);

#endif
