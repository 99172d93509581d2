/* segments.c - STUB: replaced by its implementation. */
#include "api.h"

void segments_templates(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void segments_preview(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void segments_create(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void segments_list(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void segments_get(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void segments_patch(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}

void segments_delete(struct api_req *r)
{
    http_reply_error(r, 501, "not_implemented", "not implemented yet", NULL);
}
