/* phone.h - phone number normalisation to E.164. */
#ifndef CRIER_PHONE_H
#define CRIER_PHONE_H

#include <stddef.h>

#include "err.h"

/* Buffer size for any E.164 number: "+", up to 15 digits, NUL. */
#define PHONE_E164_SIZE 17

/* Normalises a phone number to E.164 ("+" then 7..15 digits, first digit
 * 1-9). Accepts "+CC..." with spaces, dashes, dots and parentheses; a
 * leading "00" international prefix; and national numbers when
 * default_cc (digits, e.g. "1") is given: a US/NANP 10-digit number, or a
 * number with a single leading trunk "0" removed. Writes into out, which
 * should be PHONE_E164_SIZE bytes (a smaller outsz that cannot hold the
 * result is CR_EINVAL). CR_EINVAL when the input cannot be a valid E.164
 * number. */
enum cr_err phone_normalize(const char *in, const char *default_cc, char *out,
                            size_t outsz) CR_MUST_CHECK;

#endif
