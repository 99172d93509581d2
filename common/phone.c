/* phone.c - normalisation of user-entered phone numbers to E.164.
 *
 * Purely syntactic: separators are dropped, the international prefix is
 * resolved, and the result is checked against the E.164 shape ("+", 7..15
 * digits, first digit 1-9). No per-country numbering plans beyond the NANP
 * rule for national numbers under default_cc "1". */
#include "phone.h"

#include <stdbool.h>
#include <string.h>

#define E164_MIN_DIGITS 7
#define E164_MAX_DIGITS 15
#define CC_MAX_DIGITS 3
#define NANP_NATIONAL_DIGITS 10
/* "00" + 15 digits is the longest input that can still be valid. */
#define PHONE_MAX_INPUT_DIGITS (E164_MAX_DIGITS + 2)

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_separator(char c)
{
    return c == ' ' || c == '-' || c == '.' || c == '(' || c == ')';
}

/* A country calling code: 1-3 digits, not starting with 0. */
static bool valid_cc(const char *cc)
{
    size_t n = strlen(cc);
    if (n == 0 || n > CC_MAX_DIGITS || cc[0] == '0')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_digit(cc[i]))
            return false;
    return true;
}

enum cr_err phone_normalize(const char *in, const char *default_cc, char *out, size_t outsz)
{
    char digits[PHONE_MAX_INPUT_DIGITS + 1];
    size_t nd = 0;
    bool plus = false;
    const char *cc = "";
    const char *national = digits;

    if (out && outsz > 0)
        out[0] = '\0';
    if (!in || !out)
        return CR_EINVAL;

    /* Collect the digits; '+' may appear once, before any digit. */
    for (const char *p = in; *p; p++) {
        if (is_digit(*p)) {
            if (nd == PHONE_MAX_INPUT_DIGITS)
                return CR_EINVAL;
            digits[nd++] = *p;
        } else if (*p == '+' && !plus && nd == 0) {
            plus = true;
        } else if (!is_separator(*p)) {
            return CR_EINVAL;
        }
    }
    digits[nd] = '\0';

    if (plus) {
        /* already international */
    } else if (nd >= 2 && digits[0] == '0' && digits[1] == '0') {
        national = digits + 2; /* "00" international prefix */
    } else {
        if (!default_cc || !valid_cc(default_cc))
            return CR_EINVAL;
        cc = default_cc;
        if (strcmp(default_cc, "1") == 0) {
            /* NANP: area code + 7 digits; an area code never starts 0 or 1. */
            if (nd != NANP_NATIONAL_DIGITS || digits[0] < '2')
                return CR_EINVAL;
        } else {
            /* Strip the single trunk "0" ("00" was handled above). */
            if (nd < 2 || digits[0] != '0')
                return CR_EINVAL;
            national = digits + 1;
        }
    }

    size_t cclen = strlen(cc);
    size_t natlen = strlen(national);
    size_t total = cclen + natlen;
    if (total < E164_MIN_DIGITS || total > E164_MAX_DIGITS)
        return CR_EINVAL;
    if ((cclen ? cc[0] : national[0]) == '0')
        return CR_EINVAL;
    if (outsz < total + 2)
        return CR_EINVAL;

    out[0] = '+';
    memcpy(out + 1, cc, cclen);
    memcpy(out + 1 + cclen, national, natlen);
    out[1 + total] = '\0';
    return CR_OK;
}
