/* campaigns_more.c - STUB: replaced by its implementation. */
#include "api.h"

void campaigns_list(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void campaigns_patch(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void campaigns_delete(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void campaigns_pause(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void campaigns_resume(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void campaigns_complete(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void campaigns_cancel(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}
