/* agents.c - agent templates (read-only, built in) and validation of agent
 * configs (common/agent.c). */
#include <sys/queue.h>

#include <event2/keyvalq_struct.h>
#include <string.h>

#include "agent.h"
#include "api.h"

static cJSON *template_json(const struct agent_template *t)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", t->id);
    cJSON_AddStringToObject(o, "name", t->name);
    cJSON_AddStringToObject(o, "campaign_type", t->campaign_type);
    cJSON *config = cJSON_Parse(t->json);
    cJSON_AddItemToObject(o, "config", config ? config : cJSON_CreateObject());
    return o;
}

void agents_list(struct api_req *r)
{
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    if (evhttp_parse_query_str(r->query ? r->query : "", &q) != 0) {
        http_reply_error(r, 400, "bad_request", "malformed query string", NULL);
        return;
    }
    const char *type = evhttp_find_header(&q, "campaign_type");
    if (type && strcmp(type, "research") != 0 && strcmp(type, "outbound_sales") != 0) {
        evhttp_clear_headers(&q);
        http_reply_error(r, 400, "invalid_parameter",
                         "campaign_type must be research or outbound_sales", "campaign_type");
        return;
    }
    size_t n = 0;
    const struct agent_template *all = agent_templates(&n);
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(root, "templates");
    for (size_t i = 0; i < n; i++)
        if (!type || strcmp(all[i].campaign_type, type) == 0)
            cJSON_AddItemToArray(arr, template_json(&all[i]));
    evhttp_clear_headers(&q);
    http_reply_json(r, 200, root);
}

void agents_get(struct api_req *r)
{
    const struct agent_template *t = agent_template_find(r->slug);
    if (!t) {
        http_reply_error(r, 404, "not_found", "no such agent template", NULL);
        return;
    }
    http_reply_json(r, 200, template_json(t));
}

/* The body is an agent config. 200 {"valid": true} or 422 with every
 * problem: {"valid": false, "errors": [{"field", "message"}], "error": the
 * first one in the common error shape}. */
void agents_validate(struct api_req *r)
{
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return;
    cJSON *errors = NULL;
    enum cr_err err = agent_validate(in, &errors);
    cJSON_Delete(in);
    cJSON *root = cJSON_CreateObject();
    if (err == CR_OK) {
        cJSON_AddBoolToObject(root, "valid", true);
        http_reply_json(r, 200, root);
        return;
    }
    cJSON_AddBoolToObject(root, "valid", false);
    const cJSON *first = cJSON_GetArrayItem(errors, 0);
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "code", "invalid_field");
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(first, "message");
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(first, "field");
    cJSON_AddStringToObject(e, "message", cJSON_IsString(m) ? m->valuestring : "invalid config");
    if (cJSON_IsString(f))
        cJSON_AddStringToObject(e, "field", f->valuestring);
    cJSON_AddItemToObject(root, "errors", errors ? errors : cJSON_CreateArray());
    http_reply_json(r, 422, root);
}
