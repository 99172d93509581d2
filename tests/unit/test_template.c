/* test_template.c - unit tests for common/template.c. */
#include <stdbool.h>
#include <string.h>

#include "check.h"
#include "template.h"

/* A lookup over a NULL-terminated list of name/value pairs; records the
 * last name it was asked for so tests can see what reached it. */
struct vars {
    const char *const *pairs;
    char last[64];
    int calls;
};

static const char *vars_lookup(void *ctx, const char *name, size_t namelen)
{
    struct vars *v = ctx;
    v->calls++;
    snprintf(v->last, sizeof(v->last), "%.*s", (int)namelen, name);
    for (size_t i = 0; v->pairs[i]; i += 2) {
        if (strlen(v->pairs[i]) == namelen && memcmp(v->pairs[i], name, namelen) == 0)
            return v->pairs[i + 1];
    }
    return NULL;
}

static const char *const base_vars[] = {
    "first_name",
    "Ada",
    "last_name",
    "Lovelace",
    "empty",
    "",
    "attributes.city",
    "Zürich",
    "html",
    "<b>Tom & \"Jerry\"</b> 'x'",
    NULL,
};

/* Renders tpl with base_vars; returns the code, output in *out (caller frees). */
static enum cr_err render(const char *tpl, enum tpl_escape esc, size_t max, struct buf *out,
                          char *err, size_t errsz)
{
    struct vars v = {.pairs = base_vars};
    buf_init(out, max);
    return tpl_render(tpl, vars_lookup, &v, esc, out, err, errsz);
}

#define CHECK_RENDER(tpl, esc, expected)                                                           \
    do {                                                                                           \
        struct buf out_;                                                                           \
        char err_[128];                                                                            \
        CHECK(render((tpl), (esc), 4096, &out_, err_, sizeof(err_)) == CR_OK);                     \
        CHECK_STR(buf_str(&out_), (expected));                                                     \
        buf_cleanup(&out_);                                                                        \
    } while (0)

#define CHECK_SYNTAX_ERROR(tpl, expected_msg)                                                      \
    do {                                                                                           \
        struct buf out_;                                                                           \
        char err_[128];                                                                            \
        CHECK(render((tpl), TPL_ESCAPE_NONE, 4096, &out_, err_, sizeof(err_)) == CR_EINVAL);       \
        CHECK_STR(err_, (expected_msg));                                                           \
        CHECK_STR(buf_str(&out_), "");                                                             \
        buf_cleanup(&out_);                                                                        \
        CHECK(tpl_validate((tpl), NULL, err_, sizeof(err_)) == CR_EINVAL);                         \
        CHECK_STR(err_, (expected_msg));                                                           \
    } while (0)

static void test_plain(void)
{
    CHECK_RENDER("", TPL_ESCAPE_NONE, "");
    CHECK_RENDER("no variables here", TPL_ESCAPE_NONE, "no variables here");
    CHECK_RENDER("Hi {{first_name}}!", TPL_ESCAPE_NONE, "Hi Ada!");
    CHECK_RENDER("Hi {{ first_name }} {{\tlast_name\t}}", TPL_ESCAPE_NONE, "Hi Ada Lovelace");
    CHECK_RENDER("{{first_name}}{{last_name}}", TPL_ESCAPE_NONE, "AdaLovelace");
    CHECK_RENDER("{{first_name}}", TPL_ESCAPE_NONE, "Ada");
}

static void test_missing(void)
{
    CHECK_RENDER("Hi {{nickname}}!", TPL_ESCAPE_NONE, "Hi !");
    CHECK_RENDER("Hi {{empty}}!", TPL_ESCAPE_NONE, "Hi !");

    /* A NULL lookup behaves as if every variable were missing. */
    struct buf out;
    char err[64];
    buf_init(&out, 100);
    CHECK(tpl_render("a{{x|y}}b{{z}}", NULL, NULL, TPL_ESCAPE_NONE, &out, err, sizeof(err)) ==
          CR_OK);
    CHECK_STR(buf_str(&out), "ayb");
    buf_cleanup(&out);
}

static void test_fallback(void)
{
    CHECK_RENDER("Hi {{nickname|there}}!", TPL_ESCAPE_NONE, "Hi there!");
    CHECK_RENDER("Hi {{ nickname | valued customer }}!", TPL_ESCAPE_NONE, "Hi valued customer!");
    CHECK_RENDER("Hi {{empty|friend}}!", TPL_ESCAPE_NONE, "Hi friend!");
    CHECK_RENDER("Hi {{first_name|friend}}!", TPL_ESCAPE_NONE, "Hi Ada!");
    CHECK_RENDER("Hi {{nickname|}}!", TPL_ESCAPE_NONE, "Hi !");
    /* The fallback is literal up to the first "}}": braces and pipes included. */
    CHECK_RENDER("{{x|a|b{c}d}}", TPL_ESCAPE_NONE, "a|b{c}d");
    CHECK_RENDER("{{x|à bientôt}}", TPL_ESCAPE_NONE, "à bientôt");
}

static void test_dotted_names(void)
{
    struct vars v = {.pairs = base_vars};
    struct buf out;
    char err[64];
    buf_init(&out, 100);
    CHECK(tpl_render("City: {{ attributes.city }}", vars_lookup, &v, TPL_ESCAPE_NONE, &out, err,
                     sizeof(err)) == CR_OK);
    CHECK_STR(buf_str(&out), "City: Zürich");
    CHECK_STR(v.last, "attributes.city");
    CHECK(v.calls == 1);
    buf_reset(&out);
    CHECK(tpl_render("{{a.b.c_1|-}}", vars_lookup, &v, TPL_ESCAPE_NONE, &out, err, sizeof(err)) ==
          CR_OK);
    CHECK_STR(v.last, "a.b.c_1");
    CHECK_STR(buf_str(&out), "-");
    buf_cleanup(&out);
}

static void test_escaping(void)
{
    CHECK_RENDER("<p>{{html}}</p>", TPL_ESCAPE_HTML,
                 "<p>&lt;b&gt;Tom &amp; &quot;Jerry&quot;&lt;/b&gt; &#39;x&#39;</p>");
    CHECK_RENDER("<p>{{html}}</p>", TPL_ESCAPE_NONE, "<p><b>Tom & \"Jerry\"</b> 'x'</p>");
    /* Template text itself is never escaped; fallbacks are. */
    CHECK_RENDER("<a href=\"x\">{{nope|Tom & Jerry <3}}</a>", TPL_ESCAPE_HTML,
                 "<a href=\"x\">Tom &amp; Jerry &lt;3</a>");
    CHECK_RENDER("{{nope|Tom & Jerry}}", TPL_ESCAPE_NONE, "Tom & Jerry");
    CHECK_RENDER("{{attributes.city}}", TPL_ESCAPE_HTML, "Zürich");
}

static void test_syntax_errors(void)
{
    CHECK_SYNTAX_ERROR("Hello {{first_name", "unclosed {{ at offset 6");
    CHECK_SYNTAX_ERROR("Hello {{first_name}", "unclosed {{ at offset 6");
    CHECK_SYNTAX_ERROR("ok {{a}} then {{", "unclosed {{ at offset 14");
    CHECK_SYNTAX_ERROR("x{{}}", "empty variable name in {{ at offset 1");
    CHECK_SYNTAX_ERROR("x{{   }}", "empty variable name in {{ at offset 1");
    CHECK_SYNTAX_ERROR("x{{|fallback}}", "empty variable name in {{ at offset 1");
    CHECK_SYNTAX_ERROR("{{first-name}}", "invalid character '-' in variable name at offset 7");
    CHECK_SYNTAX_ERROR("{{first name}}", "invalid character 'n' in variable name at offset 8");
    CHECK_SYNTAX_ERROR("{{1st}}", "invalid character '1' in variable name at offset 2");
    CHECK_SYNTAX_ERROR("{{{name}}}", "invalid character '{' in variable name at offset 2");
    CHECK_SYNTAX_ERROR("{{na\nme}}", "invalid character '?' in variable name at offset 4");

    /* Render appends: on error the existing content stays as it was. */
    struct buf out;
    char err[64];
    buf_init(&out, 100);
    CHECK(buf_puts(&out, "keep") == CR_OK);
    CHECK(tpl_render("a {{b", NULL, NULL, TPL_ESCAPE_NONE, &out, err, sizeof(err)) == CR_EINVAL);
    CHECK_STR(buf_str(&out), "keep");
    CHECK(tpl_render("+{{x|y}}", NULL, NULL, TPL_ESCAPE_NONE, &out, err, sizeof(err)) == CR_OK);
    CHECK_STR(buf_str(&out), "keep+y");
    buf_cleanup(&out);

    /* A NULL or tiny error buffer is tolerated. */
    buf_init(&out, 100);
    CHECK(tpl_render("{{", NULL, NULL, TPL_ESCAPE_NONE, &out, NULL, 0) == CR_EINVAL);
    char tiny[4];
    CHECK(tpl_validate("{{", NULL, tiny, sizeof(tiny)) == CR_EINVAL);
    CHECK_STR(tiny, "unc");
    buf_cleanup(&out);
}

static void test_limit(void)
{
    struct buf out;
    char err[128];
    /* "Hi Ada!" is 7 bytes. */
    CHECK(render("Hi {{first_name}}!", TPL_ESCAPE_NONE, 7, &out, err, sizeof(err)) == CR_OK);
    CHECK_STR(buf_str(&out), "Hi Ada!");
    buf_cleanup(&out);
    CHECK(render("Hi {{first_name}}!", TPL_ESCAPE_NONE, 6, &out, err, sizeof(err)) == CR_ETOOBIG);
    CHECK_STR(err, "rendered message exceeds 6 bytes");
    CHECK_STR(buf_str(&out), "");
    buf_cleanup(&out);
    /* Escaping grows the output: "&amp;" does not fit in 4 bytes. */
    CHECK(render("{{x|&}}", TPL_ESCAPE_HTML, 4, &out, err, sizeof(err)) == CR_ETOOBIG);
    buf_cleanup(&out);
    CHECK(render("{{x|&}}", TPL_ESCAPE_HTML, 5, &out, err, sizeof(err)) == CR_OK);
    CHECK_STR(buf_str(&out), "&amp;");
    buf_cleanup(&out);
}

static void test_single_braces(void)
{
    CHECK_RENDER("{ a } {b} }} } {", TPL_ESCAPE_NONE, "{ a } {b} }} } {");
    CHECK_RENDER("{x {{first_name}}}", TPL_ESCAPE_NONE, "{x Ada}");
    CHECK_RENDER("json: {\"k\": 1}", TPL_ESCAPE_HTML, "json: {\"k\": 1}");
    CHECK_RENDER("{{first_name}}}", TPL_ESCAPE_NONE, "Ada}");
}

static void test_unicode(void)
{
    CHECK_RENDER("Grüße, {{first_name}} 👋 — 日本語 {{nope|ñ}}", TPL_ESCAPE_HTML,
                 "Grüße, Ada 👋 — 日本語 ñ");
    /* Bytes that are not even valid UTF-8 are copied, not interpreted. */
    CHECK_RENDER("\xff\xfe{{first_name}}\x80", TPL_ESCAPE_NONE,
                 "\xff\xfe"
                 "Ada\x80");
}

static bool allow_names(const char *name, size_t len)
{
    static const char *const ok[] = {"first_name", "last_name", "attributes.city"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        if (strlen(ok[i]) == len && memcmp(ok[i], name, len) == 0)
            return true;
    }
    return false;
}

static void test_validate(void)
{
    char err[128];
    CHECK(tpl_validate("Hi {{first_name}} from {{ attributes.city|here }}", allow_names, err,
                       sizeof(err)) == CR_OK);
    CHECK_STR(err, "");
    CHECK(tpl_validate("no vars { }", allow_names, err, sizeof(err)) == CR_OK);
    CHECK(tpl_validate("Hi {{frist_name}} {{other}}", allow_names, err, sizeof(err)) == CR_EINVAL);
    CHECK_STR(err, "unknown variable {{frist_name}}");
    CHECK(tpl_validate("Hi {{ frist_name | x }}", allow_names, err, sizeof(err)) == CR_EINVAL);
    CHECK_STR(err, "unknown variable {{frist_name}}");
    /* The first problem in reading order wins. */
    CHECK(tpl_validate("{{nope}} {{", allow_names, err, sizeof(err)) == CR_EINVAL);
    CHECK_STR(err, "unknown variable {{nope}}");
    CHECK(tpl_validate("{{first_name}} {{", allow_names, err, sizeof(err)) == CR_EINVAL);
    CHECK_STR(err, "unclosed {{ at offset 15");
    /* NULL allowed: syntax only. */
    CHECK(tpl_validate("{{anything.at_all}}", NULL, err, sizeof(err)) == CR_OK);
}

static void test_customer_vars(void)
{
    struct tpl_customer c = {"Ada",
                             NULL,
                             "ada@example.com",
                             "+14155550100",
                             "c-1",
                             "{\"city\":\"Boston\",\"visits\":3,\"vip\":true,"
                             "\"clinic\":{\"name\":\"North & Co\"},\"a.b\":\"flat\"}",
                             NULL,
                             ""};
    struct buf out;
    char err[128];
    buf_init(&out, 4096);
    CHECK(tpl_render("{{first_name}} {{last_name|-}} {{phone}} {{external_id}} "
                     "{{attributes.city}} {{attributes.visits}} {{attributes.vip}} "
                     "{{attributes.clinic.name}} {{attributes.clinic|none}} "
                     "{{attributes.missing.x|none}} {{attributes.a.b|nested only}}",
                     tpl_customer_lookup, &c, TPL_ESCAPE_HTML, &out, err, sizeof(err)) == CR_OK);
    CHECK_STR(buf_str(&out), "Ada - +14155550100 c-1 Boston 3 true North &amp; Co none none "
                             "nested only");
    tpl_customer_cleanup(&c);
    CHECK(c.parsed == NULL);
    /* No attributes at all, or attributes that are not JSON: missing. */
    struct tpl_customer bare = {"Bo", NULL, NULL, NULL, NULL, NULL, NULL, ""};
    CHECK(tpl_customer_lookup(&bare, "attributes.city", 15) == NULL);
    CHECK(tpl_customer_lookup(&bare, "email", 5) == NULL);
    CHECK_STR(tpl_customer_lookup(&bare, "first_name", 10), "Bo");
    CHECK(tpl_customer_lookup(&bare, "first_namex", 10) != NULL); /* namelen bounds the name */
    bare.attributes = "not json";
    CHECK(tpl_customer_lookup(&bare, "attributes.city", 15) == NULL);
    tpl_customer_cleanup(&bare);
    buf_cleanup(&out);
}

int main(void)
{
    RUN(test_plain);
    RUN(test_missing);
    RUN(test_fallback);
    RUN(test_dotted_names);
    RUN(test_escaping);
    RUN(test_syntax_errors);
    RUN(test_limit);
    RUN(test_single_braces);
    RUN(test_unicode);
    RUN(test_validate);
    RUN(test_customer_vars);
    return check_summary();
}
