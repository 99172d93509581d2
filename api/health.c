/* health.c - /healthz (the process runs) and /readyz (PostgreSQL and
 * Redis answer; 503 naming the dependency that does not). */
#include "api.h"

void health_healthz(struct api_req *r)
{
    http_reply_raw_json(r, 200, "{\"status\":\"ok\"}");
}

static void readyz_pg_done(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    (void)errmsg;
    (void)sqlstate;
    bool pg_ok = res != NULL;
    bool redis_ok = redis_link_ready(r->app);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "status", pg_ok && redis_ok ? "ready" : "unavailable");
    cJSON *checks = cJSON_AddObjectToObject(root, "checks");
    cJSON_AddStringToObject(checks, "postgres", pg_ok ? "ok" : "down");
    cJSON_AddStringToObject(checks, "redis", redis_ok ? "ok" : "down");
    if (!pg_ok || !redis_ok) {
        const char *dep = !pg_ok && !redis_ok ? "postgres,redis" : !pg_ok ? "postgres" : "redis";
        cJSON *e = cJSON_AddObjectToObject(root, "error");
        cJSON_AddStringToObject(e, "code", "dependency_unavailable");
        char msg[96];
        snprintf(msg, sizeof(msg), "%s unreachable", dep);
        cJSON_AddStringToObject(e, "message", msg);
        cJSON_AddStringToObject(e, "field", dep);
    }
    http_reply_json(r, pg_ok && redis_ok ? 200 : 503, root);
}

void health_readyz(struct api_req *r)
{
    pgpool_query(r->app->pg, "SELECT 1", 0, NULL, readyz_pg_done, r);
}
