/* timestamp.c - ISO 8601 timestamp validation. */
#include "timestamp.h"

#include <ctype.h>
#include <string.h>

static bool digits(const char *s, int n)
{
    for (int i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

static int num2(const char *s)
{
    return (s[0] - '0') * 10 + (s[1] - '0');
}

static int days_in_month(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return month == 2 && leap ? 29 : days[month - 1];
}

bool ts_valid_iso8601(const char *s, bool require_zone)
{
    if (!s || strlen(s) < 10 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' ||
        !digits(s + 8, 2))
        return false;
    int year = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + num2(s + 2);
    int mon = num2(s + 5), day = num2(s + 8);
    if (year < 1 || mon < 1 || mon > 12 || day < 1 || day > days_in_month(year, mon))
        return false;
    const char *p = s + 10;
    if (!*p)
        return !require_zone;
    if ((*p != 'T' && *p != 't' && *p != ' ') || !digits(p + 1, 2) || p[3] != ':' ||
        !digits(p + 4, 2) || num2(p + 1) > 23 || num2(p + 4) > 59)
        return false;
    p += 6;
    if (*p == ':') {
        if (!digits(p + 1, 2) || num2(p + 1) > 60)
            return false;
        p += 3;
        if (*p == '.') {
            p++;
            if (!isdigit((unsigned char)*p))
                return false;
            while (isdigit((unsigned char)*p))
                p++;
        }
    }
    if (*p == 'Z' || *p == 'z')
        return p[1] == '\0';
    if (*p == '+' || *p == '-') {
        if (!digits(p + 1, 2) || num2(p + 1) > 14)
            return false;
        p += 3;
        if (*p == ':')
            p++;
        if (!*p)
            return true;
        return digits(p, 2) && num2(p) <= 59 && p[2] == '\0';
    }
    return *p == '\0' && !require_zone;
}
