/* log.c - leveled text/JSON logging to stderr. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "xalloc.h"

enum log_level log_current_level = LOG_LEVEL_INFO;
static enum log_format log_fmt = LOG_FORMAT_TEXT;
static char log_process[32] = "crier";

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_init(const char *process, enum log_level level, enum log_format format)
{
    snprintf(log_process, sizeof(log_process), "%s", process);
    log_current_level = level;
    log_fmt = format;
}

static void json_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
}

void log_write(enum log_level level, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[32];
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);

    flockfile(stderr);
    if (log_fmt == LOG_FORMAT_JSON) {
        fprintf(stderr,
                "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"process\":\"%s\",\"pid\":%d,\"msg\":\"",
                ts, (long)(tv.tv_usec / 1000), level_names[level], log_process, (int)getpid());
        json_escape(stderr, msg);
        fputs("\"}\n", stderr);
    } else {
        fprintf(stderr, "%s.%03ldZ %s[%d] %s: %s\n", ts, (long)(tv.tv_usec / 1000), log_process,
                (int)getpid(), level_names[level], msg);
    }
    funlockfile(stderr);
}

/* Replaces s[from, to) with "***"; s has room for the growth. */
static void mask(char *s, size_t from, size_t to)
{
    memmove(s + from + 3, s + to, strlen(s + to) + 1);
    memcpy(s + from, "***", 3);
}

void log_redact_url(const char *url, char *out, size_t outsz)
{
    if (outsz == 0)
        return;
    /* Redact a full copy, then truncate into out: truncating first can cut
     * off the '@' (or the rest of the password) and leave part of it shown. */
    size_t n = url ? strlen(url) : 0;
    char *s = xmalloc(n + 7); /* each of the two masks grows it by at most 3 */
    memcpy(s, url ? url : "", n + 1);
    /* scheme://user:pass@host -> scheme://user:***@host */
    char *scheme = strstr(s, "://");
    if (scheme) {
        char *at = strchr(scheme + 3, '@');
        char *colon = strchr(scheme + 3, ':');
        if (at && colon && colon < at)
            mask(s, (size_t)(colon + 1 - s), (size_t)(at - s));
    }
    /* key=value form: password=... -> password=*** */
    char *pw = strstr(s, "password=");
    if (pw) {
        char *end = pw + strlen("password=");
        char *sp = strchr(end, ' ');
        mask(s, (size_t)(end - s), sp ? (size_t)(sp - s) : strlen(s));
    }
    snprintf(out, outsz, "%s", s);
    free(s);
}
