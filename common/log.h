/* log.h - logging through one module.
 *
 * log_error/warn/info/debug test the level before evaluating their arguments.
 * Output goes to stderr as text or one JSON object per line
 * (CRIER_LOG_FORMAT). Never format secrets (keys, tokens, DSN passwords);
 * use log_redact_url() for connection strings. */
#ifndef CRIER_LOG_H
#define CRIER_LOG_H

#include <stddef.h>

enum log_level { LOG_LEVEL_ERROR = 0, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };
enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON };

extern enum log_level log_current_level;

/* Sets the process name, level and format; call once from main. */
void log_init(const char *process, enum log_level level, enum log_format format);
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_at(lvl, ...)                                                                           \
    do {                                                                                           \
        if ((lvl) <= log_current_level)                                                            \
            log_write((lvl), __VA_ARGS__);                                                         \
    } while (0)
#define log_error(...) log_at(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...) log_at(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...) log_at(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_at(LOG_LEVEL_DEBUG, __VA_ARGS__)

/* Copies url into out with any password (user:PASS@ or password=...) masked. */
void log_redact_url(const char *url, char *out, size_t outsz);

#endif
