/* http.c - the response door: every reply leaves through here, in one
 * JSON error shape: {"error": {"code", "message", "field"}}. */
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "log.h"

/* JSON bodies end with a line break (newline); other types are sent as given. */
static void send_typed(struct api_req *r, int status, const char *ctype, const char *body,
                       size_t len, bool newline)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "Cache-Control", "no-store");
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, body, len);
    if (newline)
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
    send_typed(r, status, "application/json", json, strlen(json), true);
}

void http_reply_text(struct api_req *r, int status, const char *content_type, const char *body,
                     size_t len)
{
    send_typed(r, status, content_type, body, len, false);
}

void http_reply_json(struct api_req *r, int status, cJSON *body)
{
    char *s = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    send_typed(r, status, "application/json", s, strlen(s), true);
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

void http_id_params(const struct api_req *r, char tenant[24], char id[24])
{
    snprintf(tenant, 24, "%lld", r->tenant_id);
    snprintf(id, 24, "%lld", r->ids[0]);
}

bool http_one_row_or_reply(struct api_req *r, PGresult *res, const char *errmsg, const char *what)
{
    if (!res) {
        http_reply_dependency(r, "postgres", errmsg);
        return false;
    }
    if (PQntuples(res) != 1) {
        char msg[96];
        snprintf(msg, sizeof(msg), "no such %s", what);
        http_reply_error(r, 404, "not_found", msg, NULL);
        return false;
    }
    return true;
}

void http_reply_pg_row(struct api_req *r, PGresult *res, const char *errmsg, int status,
                       const char *what)
{
    if (http_one_row_or_reply(r, res, errmsg, what))
        http_reply_raw_json(r, status, PQgetvalue(res, 0, 0));
}

const char *http_unknown_key(const cJSON *obj, const char *const *allowed)
{
    for (const cJSON *it = obj ? obj->child : NULL; it; it = it->next) {
        bool known = false;
        for (int i = 0; allowed[i] && !known; i++)
            known = it->string && strcmp(it->string, allowed[i]) == 0;
        if (!known)
            return it->string ? it->string : "";
    }
    return NULL;
}

void http_reply_transition(struct api_req *r, const char *action, const char *status,
                           const char *const *allowed)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "code", "invalid_transition");
    char msg[128];
    snprintf(msg, sizeof(msg), "cannot %s a %s campaign", action, status);
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "field", "status");
    cJSON_AddStringToObject(e, "status", status);
    cJSON *arr = cJSON_AddArrayToObject(e, "allowed");
    for (int i = 0; allowed && allowed[i]; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateString(allowed[i]));
    http_reply_json(r, 409, root);
}

int http_page_params_or_reply(struct api_req *r, long *limit, long long *after)
{
    *limit = 50;
    *after = 0;
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    if (r->query && evhttp_parse_query_str(r->query, &q) != 0) {
        http_reply_error(r, 400, "bad_request", "malformed query string", NULL);
        return -1;
    }
    int rc = 0;
    const char *l = evhttp_find_header(&q, "limit");
    const char *c = evhttp_find_header(&q, "cursor");
    char *end = NULL;
    if (l) {
        long v = strtol(l, &end, 10);
        if (!*l || *end || v < 1 || v > 500) {
            http_reply_error(r, 400, "invalid_parameter", "limit must be an integer 1..500",
                             "limit");
            rc = -1;
        } else {
            *limit = v;
        }
    }
    if (!rc && c) {
        long long v = strtoll(c, &end, 10);
        if (!*c || *end || v < 0) {
            http_reply_error(r, 400, "invalid_parameter", "cursor is not one this API gave",
                             "cursor");
            rc = -1;
        } else {
            *after = v;
        }
    }
    evhttp_clear_headers(&q);
    return rc;
}

void http_reply_no_content(struct api_req *r)
{
    evhttp_send_reply(r->req, 204, "No Content", NULL);
    http_request_free(r);
}

static void page_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)sqlstate;
    http_reply_page(r, res, errmsg, r->page_key, r->page_limit);
}

void http_query_page(struct api_req *r, const char *sql, int nparams, const char *const *params,
                     const char *key, long limit)
{
    r->page_key = key;
    r->page_limit = limit;
    pgpool_query(r->app->pg, sql, nparams, params, page_done, r);
}

void http_reply_page(struct api_req *r, PGresult *res, const char *errmsg, const char *key,
                     long limit)
{
    if (!res) {
        http_reply_dependency(r, "postgres", errmsg);
        return;
    }
    cJSON *items = cJSON_Parse(PQgetvalue(res, 0, 0));
    int n = cJSON_GetArraySize(items);
    cJSON *last = n > 0 ? cJSON_GetArrayItem(items, n - 1) : NULL;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddItemToObject(root, key, items ? items : cJSON_CreateArray());
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(last, "id");
    if (cJSON_IsNumber(id) && n == limit) {
        char cur[24];
        snprintf(cur, sizeof(cur), "%.0f", id->valuedouble);
        cJSON_AddStringToObject(root, "next_cursor", cur);
    } else {
        cJSON_AddNullToObject(root, "next_cursor");
    }
    http_reply_json(r, 200, root);
}
