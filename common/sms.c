/* sms.c - SMS segment counting (see sms.h). */
#include "sms.h"

#include <stdint.h>
#include <string.h>

/* Decodes one UTF-8 sequence; an invalid byte decodes as U+FFFD, length 1. */
static size_t utf8_next(const unsigned char *p, size_t n, uint32_t *cp)
{
    unsigned char c = p[0];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || len > n) {
        *cp = 0xfffd;
        return 1;
    }
    uint32_t v = len == 1 ? c : (uint32_t)(c & (0x7f >> len));
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            *cp = 0xfffd;
            return 1;
        }
        v = (v << 6) | (p[i] & 0x3f);
    }
    *cp = v;
    return len;
}

/* Septets a code point takes in GSM 03.38 (basic alphabet + extension
 * table), 0 when it has no GSM-7 encoding. */
static unsigned gsm7_septets(uint32_t c)
{
    if (c == '\n' || c == '\r')
        return 1;
    if (c >= 0x20 && c < 0x7f) {
        if (c == '`')
            return 0;
        return strchr("[\\]^{|}~", (int)c) ? 2 : 1;
    }
    if (c == '\f' || c == 0x20ac) /* form feed, euro sign: extension table */
        return 2;
    static const uint16_t basic[] = {
        0x00a1, 0x00a3, 0x00a4, 0x00a5, 0x00a7, 0x00bf, 0x00c4, 0x00c5, 0x00c6, 0x00c7,
        0x00c9, 0x00d1, 0x00d6, 0x00d8, 0x00dc, 0x00df, 0x00e0, 0x00e4, 0x00e5, 0x00e6,
        0x00e8, 0x00e9, 0x00ec, 0x00f1, 0x00f2, 0x00f6, 0x00f8, 0x00f9, 0x00fc, 0x0393,
        0x0394, 0x0398, 0x039b, 0x039e, 0x03a0, 0x03a3, 0x03a6, 0x03a8, 0x03a9,
    };
    for (size_t i = 0; i < sizeof(basic) / sizeof(basic[0]); i++)
        if (basic[i] == c)
            return 1;
    return 0;
}

unsigned sms_segments(const char *body, size_t len, bool *gsm7)
{
    const unsigned char *p = (const unsigned char *)body;
    bool gsm = true;
    uint32_t cp;
    for (size_t i = 0; i < len && gsm;) {
        i += utf8_next(p + i, len - i, &cp);
        gsm = gsm7_septets(cp) != 0;
    }
    if (gsm7)
        *gsm7 = gsm;
    unsigned single = gsm ? 160 : 70, part = gsm ? 153 : 67;
    unsigned total = 0, parts = 1, used = 0;
    for (size_t i = 0; i < len;) {
        i += utf8_next(p + i, len - i, &cp);
        unsigned w = gsm ? gsm7_septets(cp) : (cp >= 0x10000 ? 2u : 1u);
        total += w;
        if (used + w > part) {
            parts++;
            used = 0;
        }
        used += w;
    }
    if (total == 0)
        return 0;
    return total <= single ? 1 : parts;
}
