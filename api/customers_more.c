/* customers_more.c - STUB: replaced by its implementation. */
#include "api.h"

void customers_list(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void customers_get(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void customers_patch(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void customers_delete(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}
