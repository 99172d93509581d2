/* segment.h - compiles segment criteria (JSON) into parameterised SQL.
 *
 * The output is a boolean SQL expression over the customers table aliased
 * "c" (see migrations/0001_init.sql, and 0005_customer_summary.sql for the
 * summary columns it reads), using only placeholders $N for values
 * (numbered from first_param): no value is ever spliced into the SQL text.
 * The caller binds $1 = tenant id itself and ANDs the expression into its own
 * statement, e.g.
 *   SELECT c.id FROM customers c WHERE c.tenant_id = $1 AND (<expr>) ...
 * The expression always includes the channel's reachability rule: the
 * customer has an address for the channel, is not opted out of it, and the
 * address is not in suppressions for that tenant and channel.
 *
 * Criteria, flat form (all keys ANDed) and tree form ({"all": [...]} |
 * {"any": [...]} | {"not": X} whose leaves are {"field": F, "op": OP,
 * "value": V} or flat objects): the table at the top of segment.c gives
 * every criterion's ops, values and exact semantics (whole days, "latest"
 * rows, NULLs, the interaction scope set by channel / direction /
 * metadata_key). The shipped templates are in segment_templates.h. */
#ifndef CRIER_SEGMENT_H
#define CRIER_SEGMENT_H

#include <cjson/cJSON.h>

#include "buf.h"
#include "err.h"

enum seg_channel { SEG_CHANNEL_SMS = 0, SEG_CHANNEL_EMAIL, SEG_CHANNEL_VOICE };

#define SEG_MAX_PARAMS 64

struct seg_query {
    struct buf sql;               /* the boolean expression */
    int nparams;                  /* values bound to $first_param.. */
    char *params[SEG_MAX_PARAMS]; /* heap strings, text format (arrays as {..} literals) */
};

/* Compiles criteria for channel. On CR_EINVAL writes the offending field
 * name (e.g. "days_since_last_contact") into field and a message into msg;
 * the API maps that to a 422 naming the field. Call seg_query_cleanup in all
 * cases. */
enum cr_err seg_compile(const cJSON *criteria, enum seg_channel channel, int first_param,
                        struct seg_query *out, char *field, size_t fieldsz, char *msg,
                        size_t msgsz) CR_MUST_CHECK;
/* The same criteria without the reachability clause: every customer the
 * criteria match, opted out, suppressed or without an address included (a
 * campaign's expansion records those as skipped, with the reason). */
enum cr_err seg_compile_matching(const cJSON *criteria, enum seg_channel channel, int first_param,
                                 struct seg_query *out, char *field, size_t fieldsz, char *msg,
                                 size_t msgsz) CR_MUST_CHECK;
void seg_query_cleanup(struct seg_query *q);
/* Parses "sms"|"email"|"voice"; CR_EINVAL otherwise. */
enum cr_err seg_channel_parse(const char *s, enum seg_channel *out) CR_MUST_CHECK;

#endif
