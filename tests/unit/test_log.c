/* test_log.c - unit tests for log_redact_url in common/log.c. */
#include <string.h>

#include "check.h"
#include "log.h"

#define CHECK_REDACT(url, expected)                                                                \
    do {                                                                                           \
        char out_[512];                                                                            \
        log_redact_url((url), out_, sizeof(out_));                                                 \
        CHECK_STR(out_, (expected));                                                               \
    } while (0)

static void test_url_password(void)
{
    CHECK_REDACT("postgresql://user:secret@host/db", "postgresql://user:***@host/db");
    CHECK_REDACT("postgresql://user:secret@db.internal:5432/crier?sslmode=require",
                 "postgresql://user:***@db.internal:5432/crier?sslmode=require");
    CHECK_REDACT("postgres://u:s3cr:et@h/d", "postgres://u:***@h/d"); /* ':' inside */
    CHECK_REDACT("redis://:pw@host:6379", "redis://:***@host:6379");
    CHECK_REDACT("redis://default:pw@host:6379/2", "redis://default:***@host:6379/2");
    CHECK_REDACT("redis://:@host", "redis://:***@host");
}

static void test_keyword_password(void)
{
    CHECK_REDACT("host=x password=secret dbname=y", "host=x password=*** dbname=y");
    CHECK_REDACT("host=x dbname=y password=secret", "host=x dbname=y password=***");
    CHECK_REDACT("password=secret", "password=***");
    CHECK_REDACT("password= host=x", "password=*** host=x");
}

static void test_no_password(void)
{
    CHECK_REDACT("postgresql://user@host/db", "postgresql://user@host/db");
    CHECK_REDACT("postgresql://user@host:5432/db", "postgresql://user@host:5432/db");
    CHECK_REDACT("postgresql:///crier", "postgresql:///crier");
    CHECK_REDACT("redis://localhost:6379/0", "redis://localhost:6379/0");
    CHECK_REDACT("redis://localhost", "redis://localhost");
    CHECK_REDACT("host=x port=5432 dbname=y user=z", "host=x port=5432 dbname=y user=z");
    CHECK_REDACT("", "");
    CHECK_REDACT(NULL, "");
}

/* The secret, or any sizeable piece of it, never reaches the output. */
static void check_hidden(const char *url, const char *secret, size_t outsz)
{
    char out[512];
    char piece[4];
    size_t n = strlen(secret);
    REQUIRE(outsz <= sizeof(out));
    memset(out, 'Z', sizeof(out));
    log_redact_url(url, out, outsz);
    CHECK(memchr(out, '\0', outsz) != NULL);          /* terminated within outsz */
    CHECK(outsz == sizeof(out) || out[outsz] == 'Z'); /* nothing written past it */
    for (size_t i = 0; i + 3 <= n; i++) {
        memcpy(piece, secret + i, 3);
        piece[3] = '\0';
        if (strstr(out, piece)) {
            fprintf(stderr, "  secret piece \"%s\" leaked from %s (outsz %zu): %s\n", piece, url,
                    outsz, out);
            CHECK(!"secret leaked");
            return;
        }
    }
}

static void test_secret_never_leaks(void)
{
    static const struct {
        const char *url;
        const char *secret;
    } cases[] = {
        {"postgresql://crier:Kq7vW2pXe9@db.internal:5432/crier", "Kq7vW2pXe9"},
        {"redis://:Rz4TmYh8Lq@cache:6379/1", "Rz4TmYh8Lq"},
        {"host=db.internal password=Pw9xQe3Lz dbname=crier", "Pw9xQe3Lz"},
        {"dbname=crier password=Pw9xQe3Lz", "Pw9xQe3Lz"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        /* Every output size, including ones that cut the URL inside the
         * password or before the '@' that marks its end. */
        for (size_t outsz = 1; outsz <= strlen(cases[i].url) + 4; outsz++)
            check_hidden(cases[i].url, cases[i].secret, outsz);
        check_hidden(cases[i].url, cases[i].secret, 512);
    }
}

static void test_small_output(void)
{
    char out[8];
    memset(out, 'Z', sizeof(out));
    log_redact_url("redis://:pw@h", out, 0); /* nothing written */
    CHECK(out[0] == 'Z');
    log_redact_url("redis://:pw@h", out, 1);
    CHECK_STR(out, "");
    CHECK(out[1] == 'Z');
    log_redact_url("redis://:pw@h", out, sizeof(out));
    CHECK_STR(out, "redis:/");
}

/* A long URL is redacted in full when the output has room for it. */
static void test_long_url(void)
{
    char url[3000], expected[3000], out[4096];
    char path[2500];
    memset(path, 'p', sizeof(path) - 1);
    path[sizeof(path) - 1] = '\0';
    snprintf(url, sizeof(url), "postgresql://user:hunter2@host/%s", path);
    snprintf(expected, sizeof(expected), "postgresql://user:***@host/%s", path);
    log_redact_url(url, out, sizeof(out));
    CHECK_STR(out, expected);

    snprintf(url, sizeof(url), "password=hunter2 options=%s", path);
    snprintf(expected, sizeof(expected), "password=*** options=%s", path);
    log_redact_url(url, out, sizeof(out));
    CHECK_STR(out, expected);
}

int main(void)
{
    RUN(test_url_password);
    RUN(test_keyword_password);
    RUN(test_no_password);
    RUN(test_secret_never_leaks);
    RUN(test_small_output);
    RUN(test_long_url);
    return check_summary();
}
