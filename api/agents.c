/* agents.c - STUB: replaced by its implementation. */
#include "api.h"

void agents_list(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void agents_get(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void agents_validate(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}
