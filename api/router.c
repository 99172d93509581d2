/* router.c - maps (method, path) to a handler, enforces the body limit and
 * authentication, and creates the struct api_req every handler receives. */
#include <event2/buffer.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "log.h"
#include "xalloc.h"

struct route {
    enum evhttp_cmd_type method;
    const char *pattern; /* "{id}" matches a positive integer segment */
    bool auth;
    size_t max_body;
    void (*handler)(struct api_req *r);
};

static const struct route routes[] = {
    {EVHTTP_REQ_GET, "/healthz", false, 0, health_healthz},
    {EVHTTP_REQ_GET, "/readyz", false, 0, health_readyz},
    {EVHTTP_REQ_POST, "/v1/customers", true, API_MAX_JSON_BODY, customers_create},
    {EVHTTP_REQ_GET, "/v1/customers", true, 0, customers_list},
    {EVHTTP_REQ_POST, "/v1/customers/import", true, API_MAX_IMPORT_BODY, customers_import},
    {EVHTTP_REQ_GET, "/v1/customers/{id}", true, 0, customers_get},
    {EVHTTP_REQ_PATCH, "/v1/customers/{id}", true, API_MAX_JSON_BODY, customers_patch},
    {EVHTTP_REQ_DELETE, "/v1/customers/{id}", true, 0, customers_delete},
    {EVHTTP_REQ_POST, "/v1/interactions/import", true, API_MAX_IMPORT_BODY, interactions_import},
    {EVHTTP_REQ_POST, "/v1/appointments/import", true, API_MAX_IMPORT_BODY, appointments_import},
    {EVHTTP_REQ_GET, "/v1/segment-templates", true, 0, segments_templates},
    {EVHTTP_REQ_POST, "/v1/segments/preview", true, API_MAX_JSON_BODY, segments_preview},
    {EVHTTP_REQ_POST, "/v1/segments", true, API_MAX_JSON_BODY, segments_create},
    {EVHTTP_REQ_GET, "/v1/segments", true, 0, segments_list},
    {EVHTTP_REQ_GET, "/v1/segments/{id}", true, 0, segments_get},
    {EVHTTP_REQ_PATCH, "/v1/segments/{id}", true, API_MAX_JSON_BODY, segments_patch},
    {EVHTTP_REQ_DELETE, "/v1/segments/{id}", true, 0, segments_delete},
    {EVHTTP_REQ_GET, "/v1/agent-templates", true, 0, agents_list},
    {EVHTTP_REQ_POST, "/v1/agent-templates/validate", true, API_MAX_JSON_BODY, agents_validate},
    {EVHTTP_REQ_GET, "/v1/agent-templates/{slug}", true, 0, agents_get},
    {EVHTTP_REQ_POST, "/v1/campaigns", true, API_MAX_JSON_BODY, campaigns_create},
    {EVHTTP_REQ_GET, "/v1/campaigns", true, 0, campaigns_list},
    {EVHTTP_REQ_GET, "/v1/campaigns/{id}", true, 0, campaigns_get},
    {EVHTTP_REQ_PATCH, "/v1/campaigns/{id}", true, API_MAX_JSON_BODY, campaigns_patch},
    {EVHTTP_REQ_DELETE, "/v1/campaigns/{id}", true, 0, campaigns_delete},
    {EVHTTP_REQ_POST, "/v1/campaigns/{id}/launch", true, API_MAX_JSON_BODY, campaigns_launch},
    {EVHTTP_REQ_POST, "/v1/campaigns/{id}/pause", true, API_MAX_JSON_BODY, campaigns_pause},
    {EVHTTP_REQ_POST, "/v1/campaigns/{id}/resume", true, API_MAX_JSON_BODY, campaigns_resume},
    {EVHTTP_REQ_POST, "/v1/campaigns/{id}/complete", true, API_MAX_JSON_BODY, campaigns_complete},
    {EVHTTP_REQ_POST, "/v1/campaigns/{id}/cancel", true, API_MAX_JSON_BODY, campaigns_cancel},
    {EVHTTP_REQ_GET, "/v1/campaigns/{id}/stats", true, 0, campaigns_stats},
    {EVHTTP_REQ_GET, "/v1/campaigns/{id}/events", true, 0, campaigns_events},
    {EVHTTP_REQ_GET, "/v1/settings", true, 0, settings_get},
    {EVHTTP_REQ_PATCH, "/v1/settings", true, API_MAX_JSON_BODY, settings_patch},
    {EVHTTP_REQ_POST, "/v1/suppressions", true, API_MAX_JSON_BODY, suppressions_create},
    {EVHTTP_REQ_GET, "/v1/suppressions", true, 0, suppressions_list},
    {EVHTTP_REQ_DELETE, "/v1/suppressions/{id}", true, 0, suppressions_delete},
    {EVHTTP_REQ_POST, "/v1/provider-accounts", true, API_MAX_JSON_BODY, providers_create},
    {EVHTTP_REQ_GET, "/v1/provider-accounts", true, 0, providers_list},
    {EVHTTP_REQ_GET, "/v1/provider-accounts/{id}", true, 0, providers_get},
    {EVHTTP_REQ_PATCH, "/v1/provider-accounts/{id}", true, API_MAX_JSON_BODY, providers_patch},
    {EVHTTP_REQ_DELETE, "/v1/provider-accounts/{id}", true, 0, providers_delete},
    {EVHTTP_REQ_GET, "/v1/deliveries/{id}", true, 0, deliveries_get},
    {EVHTTP_REQ_POST, "/v1/deliveries/{id}/outcome", true, API_MAX_JSON_BODY, deliveries_outcome},
    {EVHTTP_REQ_GET, "/v1/unsubscribe", false, 0, unsubscribe_show},
    {EVHTTP_REQ_POST, "/v1/unsubscribe", false, API_MAX_FORM_BODY, unsubscribe_post},
    {EVHTTP_REQ_POST, "/v1/webhooks/{id}/twilio/voice", false, API_MAX_JSON_BODY, voice_twiml},
    {EVHTTP_REQ_GET, "/v1/webhooks/{id}/twilio/voice", false, 0, voice_twiml},
    {EVHTTP_REQ_POST, "/v1/webhooks/{id}/twilio/gather", false, API_MAX_JSON_BODY, voice_gather},
    {EVHTTP_REQ_POST, "/v1/webhooks/{id}/twilio/sms", false, API_MAX_JSON_BODY,
     webhooks_twilio_sms},
    {EVHTTP_REQ_POST, "/v1/webhooks/{id}/twilio/status", false, API_MAX_JSON_BODY,
     webhooks_twilio_status},
    {EVHTTP_REQ_POST, "/v1/webhooks/{id}/sendgrid/events", false, API_MAX_JSON_BODY,
     webhooks_sendgrid_events},
};
#define NROUTES (sizeof(routes) / sizeof(routes[0]))

/* Matches path against pattern; fills ids and slug. */
static bool route_match(const char *pattern, const char *path, long long ids[2], char *slug,
                        size_t slugsz)
{
    int nid = 0;
    while (*pattern && *path) {
        if (*pattern != '{') { /* the common case: a literal character */
            if (*pattern != *path)
                return false;
            pattern++;
            path++;
            continue;
        }
        if (strncmp(pattern, "{slug}", 6) == 0) {
            size_t n = strspn(path, "abcdefghijklmnopqrstuvwxyz0123456789_-");
            if (n == 0 || n >= slugsz || (path[n] && path[n] != '/'))
                return false;
            memcpy(slug, path, n);
            slug[n] = '\0';
            pattern += 6;
            path += n;
            continue;
        }
        if (strncmp(pattern, "{id}", 4) == 0) {
            if (*path < '1' || *path > '9')
                return false;
            char *end = NULL;
            errno = 0;
            long long v = strtoll(path, &end, 10);
            if (errno || (*end && *end != '/') || nid >= 2)
                return false;
            ids[nid++] = v;
            pattern += 4;
            path = end;
            continue;
        }
        if (*pattern != *path)
            return false;
        pattern++;
        path++;
    }
    return *pattern == '\0' && *path == '\0';
}

static const char *method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    default:
        return "OTHER";
    }
}

void router_handle(struct evhttp_request *req, void *arg)
{
    struct app *app = arg;
    struct api_req *r = xcalloc(1, sizeof(*r));
    r->app = app;
    r->req = req;
    r->method = evhttp_request_get_command(req);
    gettimeofday(&r->started, NULL);
    app->inflight++;

    if (app->draining) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        http_reply_error(r, 503, "shutting_down", "server is shutting down", NULL);
        return;
    }
    r->uri = evhttp_uri_parse_with_flags(evhttp_request_get_uri(req), EVHTTP_URI_NONCONFORMANT);
    const char *path = r->uri ? evhttp_uri_get_path(r->uri) : NULL;
    if (!path || strlen(path) >= sizeof(r->path)) {
        snprintf(r->path, sizeof(r->path), "?");
        http_reply_error(r, 400, "bad_request", "malformed request URI", NULL);
        return;
    }
    snprintf(r->path, sizeof(r->path), "%s", path);
    r->query = evhttp_uri_get_query(r->uri);

    const struct route *hit = NULL;
    bool path_known = false;
    for (size_t i = 0; i < NROUTES; i++) {
        long long ids[2] = {0, 0};
        char slug[sizeof(r->slug)] = "";
        if (!route_match(routes[i].pattern, r->path, ids, slug, sizeof(slug)))
            continue;
        path_known = true;
        if (routes[i].method == r->method ||
            (routes[i].method == EVHTTP_REQ_GET && r->method == EVHTTP_REQ_HEAD)) {
            hit = &routes[i];
            memcpy(r->ids, ids, sizeof(ids));
            memcpy(r->slug, slug, sizeof(slug));
            break;
        }
    }
    if (!hit) {
        if (path_known) {
            char msg[96];
            snprintf(msg, sizeof(msg), "method %s not allowed here", method_name(r->method));
            http_reply_error(r, 405, "method_not_allowed", msg, NULL);
        } else {
            http_reply_error(r, 404, "not_found", "no such route", NULL);
        }
        return;
    }

    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len > hit->max_body) {
        char msg[96];
        snprintf(msg, sizeof(msg), "request body exceeds %zu bytes", hit->max_body);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        http_reply_error(r, 413, "body_too_large", msg, NULL);
        return;
    }
    r->body_len = len;
    r->body = len ? (const char *)evbuffer_pullup(in, -1) : NULL;
    r->max_body = hit->max_body;
    r->handler = hit->handler;
    if (hit->auth)
        auth_then_handle(r);
    else
        r->handler(r);
}
