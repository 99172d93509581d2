/* template.h - message templates with {{variable}} placeholders.
 *
 * Syntax: "{{ name }}" (spaces optional) where name is [A-Za-z_][A-Za-z0-9_.]*;
 * "{{name|fallback}}" renders fallback when the value is missing or empty.
 * Anything else between "{{" and "}}" is a syntax error. A lone "{" or "}" is
 * literal text. Values come from a lookup callback, so callers can resolve
 * columns and dotted JSON paths (attributes.city) as they like. */
#ifndef CRIER_TEMPLATE_H
#define CRIER_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "err.h"

/* Returns the value of the variable (name, namelen: not NUL-terminated), or
 * NULL when it is unknown/missing. The string is borrowed. */
typedef const char *(*tpl_lookup_fn)(void *ctx, const char *name, size_t namelen);

enum tpl_escape { TPL_ESCAPE_NONE = 0, TPL_ESCAPE_HTML };

/* Renders tpl into out (appending). CR_EINVAL on a syntax error (message in
 * err), CR_ETOOBIG when out's maximum is exceeded. */
enum cr_err tpl_render(const char *tpl, tpl_lookup_fn lookup, void *ctx, enum tpl_escape esc,
                       struct buf *out, char *err, size_t errsz) CR_MUST_CHECK;

/* The variables every message and call script can use: the customer's
 * columns and attributes.<path> (nested objects walked: attributes.a.b).
 * Set the strings (NULL: missing), pass &vars with tpl_customer_lookup, then
 * tpl_customer_cleanup. Numbers render as %g, booleans as true/false. */
struct tpl_customer {
    const char *first_name, *last_name, *email, *phone, *external_id;
    const char *attributes; /* the customer's attributes as JSON text, or NULL */
    struct cJSON *parsed;   /* attributes, parsed on first use */
    char num[32];
};
const char *tpl_customer_lookup(void *vars, const char *name, size_t namelen);
void tpl_customer_cleanup(struct tpl_customer *vars);

/* Returns true when name (namelen) is an allowed variable. */
typedef bool (*tpl_allowed_fn)(const char *name, size_t namelen);

/* Checks syntax and that every variable is allowed. On failure returns
 * CR_EINVAL and writes a human message into err, e.g.
 * "unknown variable {{frist_name}}" or "unclosed {{ at offset 12". */
enum cr_err tpl_validate(const char *tpl, tpl_allowed_fn allowed, char *err,
                         size_t errsz) CR_MUST_CHECK;

#endif
