/* test_config.c - unit tests for common/config.c (cfg_load, cfg_parse_redis_url). */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "config.h"
#include "log.h"

/* ---------------------------------------------------------------- cfg_load */

struct tcfg {
    char *name;
    long port;
    int mode;
    char *token;
    long delta;
    char *opt;
};

static const struct cfg_row rows[] = {
    {"CRTEST_NAME", CFG_STRING, offsetof(struct tcfg, name), "crier", 0, 0, NULL, 0, 0, "name"},
    {"CRTEST_PORT", CFG_INT, offsetof(struct tcfg, port), "8080", 1, 65535, NULL, 0, 0, "port"},
    {"CRTEST_MODE", CFG_ENUM, offsetof(struct tcfg, mode), "beta", 0, 0, "alpha|beta|gamma", 0, 0,
     "mode"},
    {"CRTEST_TOKEN", CFG_STRING, offsetof(struct tcfg, token), NULL, 0, 0, NULL, 1, 1, "token"},
    {"CRTEST_DELTA", CFG_INT, offsetof(struct tcfg, delta), "-3", -10, 10, NULL, 0, 0, "delta"},
    {"CRTEST_OPT", CFG_STRING, offsetof(struct tcfg, opt), NULL, 0, 0, NULL, 0, 0, "optional"},
};
#define NROWS (sizeof(rows) / sizeof(rows[0]))

static char arg0[] = "test_config";
static char *argv1[] = {arg0, NULL};

static void clear_env(void)
{
    for (size_t i = 0; i < NROWS; i++)
        unsetenv(rows[i].env);
}

/* Loads rows into a zeroed *c with only the required token set, plus one
 * extra variable (name may be NULL). */
static enum cr_err load_with(struct tcfg *c, const char *name, const char *value, char *err,
                             size_t errsz)
{
    clear_env();
    setenv("CRTEST_TOKEN", "tok", 1);
    if (name)
        setenv(name, value, 1);
    memset(c, 0, sizeof(*c));
    err[0] = '\0';
    return cfg_load(rows, NROWS, c, 1, argv1, "usage: test", err, errsz);
}

static void test_defaults(void)
{
    struct tcfg c;
    char err[200];
    REQUIRE(load_with(&c, NULL, NULL, err, sizeof(err)) == CR_OK);
    CHECK_STR(c.name, "crier");
    CHECK(c.port == 8080);
    CHECK(c.mode == 1);
    CHECK_STR(c.token, "tok");
    CHECK(c.delta == -3);
    CHECK(c.opt == NULL); /* no default, not required */
    CHECK_STR(err, "");
    cfg_cleanup(rows, NROWS, &c);
    CHECK(c.name == NULL && c.token == NULL && c.opt == NULL);
}

static void test_overrides(void)
{
    struct tcfg c;
    char err[200];
    clear_env();
    setenv("CRTEST_NAME", "other name", 1);
    setenv("CRTEST_PORT", "65535", 1);
    setenv("CRTEST_MODE", "gamma", 1);
    setenv("CRTEST_TOKEN", "s3cret", 1);
    setenv("CRTEST_DELTA", "-10", 1);
    setenv("CRTEST_OPT", "", 1); /* set but empty: an empty string, not NULL */
    memset(&c, 0, sizeof(c));
    REQUIRE(cfg_load(rows, NROWS, &c, 1, argv1, "usage", err, sizeof(err)) == CR_OK);
    CHECK_STR(c.name, "other name");
    CHECK(c.port == 65535);
    CHECK(c.mode == 2);
    CHECK_STR(c.token, "s3cret");
    CHECK(c.delta == -10);
    CHECK_STR(c.opt, "");
    /* The struct owns copies, not pointers into the environment. */
    setenv("CRTEST_NAME", "changed", 1);
    CHECK_STR(c.name, "other name");
    cfg_cleanup(rows, NROWS, &c);
    clear_env();
}

static void test_int_values(void)
{
    struct tcfg c;
    char err[200];

    CHECK(load_with(&c, "CRTEST_PORT", "1", err, sizeof(err)) == CR_OK);
    CHECK(c.port == 1);
    cfg_cleanup(rows, NROWS, &c);
    CHECK(load_with(&c, "CRTEST_DELTA", "10", err, sizeof(err)) == CR_OK);
    CHECK(c.delta == 10);
    cfg_cleanup(rows, NROWS, &c);
    CHECK(load_with(&c, "CRTEST_DELTA", "0", err, sizeof(err)) == CR_OK);
    CHECK(c.delta == 0);
    cfg_cleanup(rows, NROWS, &c);
    /* An empty non-string value counts as unset: the default applies. */
    CHECK(load_with(&c, "CRTEST_PORT", "", err, sizeof(err)) == CR_OK);
    CHECK(c.port == 8080);
    cfg_cleanup(rows, NROWS, &c);
}

#define CHECK_REJECT(var, value, expected_err)                                                     \
    do {                                                                                           \
        struct tcfg c_;                                                                            \
        char err_[200];                                                                            \
        CHECK(load_with(&c_, (var), (value), err_, sizeof(err_)) == CR_EINVAL);                    \
        CHECK_STR(err_, (expected_err));                                                           \
        cfg_cleanup(rows, NROWS, &c_);                                                             \
    } while (0)

static void test_int_rejects(void)
{
    CHECK_REJECT("CRTEST_PORT", "12x", "CRTEST_PORT: not an integer: 12x");
    CHECK_REJECT("CRTEST_PORT", "x12", "CRTEST_PORT: not an integer: x12");
    CHECK_REJECT("CRTEST_PORT", "1.5", "CRTEST_PORT: not an integer: 1.5");
    CHECK_REJECT("CRTEST_PORT", "0x10", "CRTEST_PORT: not an integer: 0x10");
    CHECK_REJECT("CRTEST_PORT", "80 ", "CRTEST_PORT: not an integer: 80 ");
    CHECK_REJECT("CRTEST_PORT", " ", "CRTEST_PORT: not an integer:  ");
    CHECK_REJECT("CRTEST_PORT", "99999999999999999999999",
                 "CRTEST_PORT: not an integer: 99999999999999999999999");
    CHECK_REJECT("CRTEST_PORT", "0", "CRTEST_PORT: 0 is outside 1..65535");
    CHECK_REJECT("CRTEST_PORT", "65536", "CRTEST_PORT: 65536 is outside 1..65535");
    CHECK_REJECT("CRTEST_PORT", "-1", "CRTEST_PORT: -1 is outside 1..65535");
    CHECK_REJECT("CRTEST_DELTA", "-11", "CRTEST_DELTA: -11 is outside -10..10");
    CHECK_REJECT("CRTEST_DELTA", "11", "CRTEST_DELTA: 11 is outside -10..10");
}

static void test_enum(void)
{
    struct tcfg c;
    char err[200];
    CHECK(load_with(&c, "CRTEST_MODE", "alpha", err, sizeof(err)) == CR_OK);
    CHECK(c.mode == 0);
    cfg_cleanup(rows, NROWS, &c);
    CHECK(load_with(&c, "CRTEST_MODE", "gamma", err, sizeof(err)) == CR_OK);
    CHECK(c.mode == 2);
    cfg_cleanup(rows, NROWS, &c);
    CHECK(load_with(&c, "CRTEST_MODE", "", err, sizeof(err)) == CR_OK);
    CHECK(c.mode == 1); /* empty: default */
    cfg_cleanup(rows, NROWS, &c);

    CHECK_REJECT("CRTEST_MODE", "delta", "CRTEST_MODE: must be one of alpha|beta|gamma, not delta");
    /* Only whole choices match: no prefixes, no case folding, no separators. */
    CHECK_REJECT("CRTEST_MODE", "alp", "CRTEST_MODE: must be one of alpha|beta|gamma, not alp");
    CHECK_REJECT("CRTEST_MODE", "alphab",
                 "CRTEST_MODE: must be one of alpha|beta|gamma, not alphab");
    CHECK_REJECT("CRTEST_MODE", "Beta", "CRTEST_MODE: must be one of alpha|beta|gamma, not Beta");
    CHECK_REJECT("CRTEST_MODE", "beta|gamma",
                 "CRTEST_MODE: must be one of alpha|beta|gamma, not beta|gamma");
    CHECK_REJECT("CRTEST_MODE", "|", "CRTEST_MODE: must be one of alpha|beta|gamma, not |");
    CHECK_REJECT("CRTEST_MODE", " beta", "CRTEST_MODE: must be one of alpha|beta|gamma, not  beta");
}

static void test_required(void)
{
    struct tcfg c;
    char err[200];
    clear_env();
    memset(&c, 0, sizeof(c));
    CHECK(cfg_load(rows, NROWS, &c, 1, argv1, "usage", err, sizeof(err)) == CR_EINVAL);
    CHECK_STR(err, "CRTEST_TOKEN: required but not set");
    cfg_cleanup(rows, NROWS, &c);

    setenv("CRTEST_TOKEN", "", 1);
    memset(&c, 0, sizeof(c));
    CHECK(cfg_load(rows, NROWS, &c, 1, argv1, "usage", err, sizeof(err)) == CR_EINVAL);
    CHECK_STR(err, "CRTEST_TOKEN: required but empty");
    cfg_cleanup(rows, NROWS, &c);
    clear_env();
}

/* A short err buffer is truncated, not overrun. */
static void test_small_err_buffer(void)
{
    struct tcfg c;
    char err[12];
    memset(err, 'Z', sizeof(err));
    CHECK(load_with(&c, "CRTEST_PORT", "nope", err, 8) == CR_EINVAL);
    CHECK_STR(err, "CRTEST_");
    CHECK(err[8] == 'Z');
    cfg_cleanup(rows, NROWS, &c);
}

/* The shared rows decode into the log.h enums in order. */
struct common_cfg {
    int log_level;
    int log_format;
};

static const struct cfg_row common_rows[] = {CFG_COMMON_ROWS(struct common_cfg)};

static void test_common_rows(void)
{
    struct common_cfg c;
    char err[200];
    unsetenv("CRIER_LOG_LEVEL");
    unsetenv("CRIER_LOG_FORMAT");
    memset(&c, 0xff, sizeof(c));
    CHECK(cfg_load(common_rows, 2, &c, 1, argv1, "usage", err, sizeof(err)) == CR_OK);
    CHECK(c.log_level == LOG_LEVEL_INFO);
    CHECK(c.log_format == LOG_FORMAT_TEXT);

    static const struct {
        const char *name;
        int level;
    } levels[] = {{"error", LOG_LEVEL_ERROR},
                  {"warn", LOG_LEVEL_WARN},
                  {"info", LOG_LEVEL_INFO},
                  {"debug", LOG_LEVEL_DEBUG}};
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
        setenv("CRIER_LOG_LEVEL", levels[i].name, 1);
        CHECK(cfg_load(common_rows, 2, &c, 1, argv1, "usage", err, sizeof(err)) == CR_OK);
        CHECK(c.log_level == levels[i].level);
    }
    setenv("CRIER_LOG_FORMAT", "json", 1);
    CHECK(cfg_load(common_rows, 2, &c, 1, argv1, "usage", err, sizeof(err)) == CR_OK);
    CHECK(c.log_format == LOG_FORMAT_JSON);
    setenv("CRIER_LOG_LEVEL", "trace", 1);
    CHECK(cfg_load(common_rows, 2, &c, 1, argv1, "usage", err, sizeof(err)) == CR_EINVAL);
    CHECK(strstr(err, "CRIER_LOG_LEVEL") == err);
    unsetenv("CRIER_LOG_LEVEL");
    unsetenv("CRIER_LOG_FORMAT");
}

/* ------------------------------------------------------ cfg_parse_redis_url */

struct redis_url {
    char host[64];
    int port;
    char pass[32];
    int db;
};

static enum cr_err parse(const char *url, struct redis_url *r)
{
    memset(r, 0, sizeof(*r));
    r->port = r->db = -1;
    return cfg_parse_redis_url(url, r->host, sizeof(r->host), &r->port, r->pass, sizeof(r->pass),
                               &r->db);
}

#define CHECK_URL(url, ehost, eport, epass, edb)                                                   \
    do {                                                                                           \
        struct redis_url r_;                                                                       \
        CHECK(parse((url), &r_) == CR_OK);                                                         \
        CHECK_STR(r_.host, (ehost));                                                               \
        CHECK(r_.port == (eport));                                                                 \
        CHECK_STR(r_.pass, (epass));                                                               \
        CHECK(r_.db == (edb));                                                                     \
    } while (0)

#define CHECK_BAD_URL(url)                                                                         \
    do {                                                                                           \
        struct redis_url r_;                                                                       \
        CHECK(parse((url), &r_) == CR_EINVAL);                                                     \
    } while (0)

static void test_redis_url(void)
{
    CHECK_URL("redis://localhost", "localhost", 6379, "", 0);
    CHECK_URL("redis://localhost/", "localhost", 6379, "", 0);
    CHECK_URL("redis://127.0.0.1:6380", "127.0.0.1", 6380, "", 0);
    CHECK_URL("redis://cache.internal:7000/3", "cache.internal", 7000, "", 3);
    CHECK_URL("redis://h/15", "h", 6379, "", 15);
    CHECK_URL("redis://h:1/0", "h", 1, "", 0);
    CHECK_URL("redis://h:65535", "h", 65535, "", 0);
    CHECK_URL("redis://:s3cret@host:6379/2", "host", 6379, "s3cret", 2);
    CHECK_URL("redis://:pw@host", "host", 6379, "pw", 0);
    CHECK_URL("redis://default:pw@host", "host", 6379, "pw", 0); /* ACL user ignored */
    CHECK_URL("redis://pw@host", "host", 6379, "pw", 0);
    CHECK_URL("redis://:@host", "host", 6379, "", 0);
}

static void test_redis_url_rejects(void)
{
    CHECK_BAD_URL("");
    CHECK_BAD_URL("localhost:6379");
    CHECK_BAD_URL("//localhost");
    CHECK_BAD_URL("http://localhost");
    CHECK_BAD_URL("redis:/localhost");
    CHECK_BAD_URL("rediss://localhost"); /* TLS is not supported: refuse, do not downgrade */
    CHECK_BAD_URL("redis://");
    CHECK_BAD_URL("redis://:6379");
    CHECK_BAD_URL("redis:///0");
    CHECK_BAD_URL("redis://:pw@");
    CHECK_BAD_URL("redis://:pw@:6379");
    CHECK_BAD_URL("redis://host:");
    CHECK_BAD_URL("redis://host:0");
    CHECK_BAD_URL("redis://host:-1");
    CHECK_BAD_URL("redis://host:65536");
    CHECK_BAD_URL("redis://host:70000");
    CHECK_BAD_URL("redis://host:99999999999999999999999");
    CHECK_BAD_URL("redis://host:abc");
    CHECK_BAD_URL("redis://host:6379x");
    CHECK_BAD_URL("redis://host/16");
    CHECK_BAD_URL("redis://host/-1");
    CHECK_BAD_URL("redis://host/x");
    CHECK_BAD_URL("redis://host/1x");
    CHECK_BAD_URL("redis://host/0/1");
    CHECK_BAD_URL("redis://host:6379/0 ");
    CHECK_BAD_URL("redis://host?db=1");
    CHECK_BAD_URL("redis://host#x");
}

/* Values that do not fit the caller's buffers are errors, not truncations. */
static void test_redis_url_sizes(void)
{
    char host[5], pass[4];
    int port, db;
    CHECK(cfg_parse_redis_url("redis://abcd", host, sizeof(host), &port, pass, sizeof(pass), &db) ==
          CR_OK);
    CHECK_STR(host, "abcd");
    CHECK(cfg_parse_redis_url("redis://abcde", host, sizeof(host), &port, pass, sizeof(pass),
                              &db) == CR_EINVAL);
    CHECK(cfg_parse_redis_url("redis://:abc@h", host, sizeof(host), &port, pass, sizeof(pass),
                              &db) == CR_OK);
    CHECK_STR(pass, "abc");
    CHECK(cfg_parse_redis_url("redis://:abcd@h", host, sizeof(host), &port, pass, sizeof(pass),
                              &db) == CR_EINVAL);
}

int main(void)
{
    RUN(test_defaults);
    RUN(test_overrides);
    RUN(test_int_values);
    RUN(test_int_rejects);
    RUN(test_enum);
    RUN(test_required);
    RUN(test_small_err_buffer);
    RUN(test_common_rows);
    RUN(test_redis_url);
    RUN(test_redis_url_rejects);
    RUN(test_redis_url_sizes);
    return check_summary();
}
