/* http.c - the response door: every reply leaves through here, in one
 * JSON error shape: {"error": {"code", "message", "field"}}. */
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "log.h"

static void send_and_free(struct api_req *r, int status, const char *body, size_t len)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "Cache-Control", "no-store");
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, body, len);
    evbuffer_add(out, "\n", 1);
    evhttp_send_reply(r->req, status, NULL, out);
    evbuffer_free(out);
    struct timeval now, d;
    gettimeofday(&now, NULL);
    timersub(&now, &r->started, &d);
    log_debug("%s %s -> %d (%ld us)",
              r->method == EVHTTP_REQ_GET    ? "GET"
              : r->method == EVHTTP_REQ_POST ? "POST"
                                             : "REQ",
              r->path, status, (long)(d.tv_sec * 1000000 + d.tv_usec));
    http_request_free(r);
}

void http_request_free(struct api_req *r)
{
    if (!r)
        return;
    if (r->state_free && r->state)
        r->state_free(r->state);
    if (r->uri)
        evhttp_uri_free(r->uri);
    r->app->inflight--;
    free(r);
}

void http_reply_raw_json(struct api_req *r, int status, const char *json)
{
    send_and_free(r, status, json, strlen(json));
}

void http_reply_json(struct api_req *r, int status, cJSON *body)
{
    char *s = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    send_and_free(r, status, s, strlen(s));
    free(s);
}

void http_reply_error(struct api_req *r, int status, const char *code, const char *message,
                      const char *field)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "code", code);
    cJSON_AddStringToObject(e, "message", message);
    if (field)
        cJSON_AddStringToObject(e, "field", field);
    http_reply_json(r, status, root);
}

void http_reply_dependency(struct api_req *r, const char *dependency, const char *detail)
{
    log_warn("%s: %s unavailable: %s", r->path, dependency, detail ? detail : "");
    char msg[128];
    snprintf(msg, sizeof(msg), "%s is unavailable; retry later", dependency);
    http_reply_error(r, 503, "dependency_unavailable", msg, dependency);
}

cJSON *http_body_json_or_reply(struct api_req *r)
{
    if (r->body_len == 0) {
        http_reply_error(r, 400, "invalid_json", "request body must be a JSON object", NULL);
        return NULL;
    }
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(r->body, r->body_len, &end, 0);
    if (!j) {
        char msg[96];
        snprintf(msg, sizeof(msg), "malformed JSON near byte %ld",
                 end ? (long)(end - r->body) : 0L);
        http_reply_error(r, 400, "invalid_json", msg, NULL);
        return NULL;
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        http_reply_error(r, 400, "invalid_json", "request body must be a JSON object", NULL);
        return NULL;
    }
    return j;
}
