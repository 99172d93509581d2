/* activity.c - STUB: replaced by its implementation. */
#include "api.h"

void interactions_import(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void appointments_import(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}
