/* auth.c - resolves "Authorization: Bearer <key>" to a tenant.
 *
 * The key's public id finds the row; the SHA-256 of the presented key is
 * compared with the stored hash in constant time. Verified keys are cached
 * for AUTH_CACHE_TTL seconds (a revoked key stops working within that
 * time); failures are never cached. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "apikey.h"
#include "crypto.h"
#include "log.h"
#include "xalloc.h"

#define AUTH_CACHE_SLOTS 256
#define AUTH_CACHE_TTL 10

struct auth_entry {
    char key_id[APIKEY_ID_LEN + 1];
    uint8_t hash[32];
    long long tenant_id;
    time_t expires;
};

struct auth_cache {
    struct auth_entry slot[AUTH_CACHE_SLOTS];
};

static const char sql_key_lookup[] = "SELECT tenant_id, encode(key_hash, 'hex') FROM api_keys "
                                     "WHERE key_id = $1 AND revoked_at IS NULL";

struct auth_state {
    char key_id[APIKEY_ID_LEN + 1];
    uint8_t hash[32];
};

struct auth_cache *auth_cache_new(void)
{
    return xcalloc(1, sizeof(struct auth_cache));
}

void auth_cache_free(struct auth_cache *c)
{
    free(c);
}

static unsigned slot_of(const char *key_id)
{
    unsigned h = 2166136261u;
    for (const char *p = key_id; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % AUTH_CACHE_SLOTS;
}

static void reply_401(struct api_req *r, const char *msg)
{
    evhttp_add_header(evhttp_request_get_output_headers(r->req), "WWW-Authenticate",
                      "Bearer realm=\"crier\"");
    http_reply_error(r, 401, "unauthorized", msg, NULL);
}

static void key_looked_up(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    struct auth_state *st = r->state;
    (void)sqlstate;
    if (!res) {
        http_reply_dependency(r, "postgres", errmsg);
        return;
    }
    uint8_t stored[32];
    if (PQntuples(res) != 1 || crypto_hex_decode(PQgetvalue(res, 0, 1), stored, 32) != CR_OK ||
        !crypto_ct_equal(stored, st->hash, 32)) {
        reply_401(r, "invalid or revoked API key");
        return;
    }
    r->tenant_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    struct auth_entry *e = &r->app->auth->slot[slot_of(st->key_id)];
    memcpy(e->key_id, st->key_id, sizeof(e->key_id));
    memcpy(e->hash, st->hash, 32);
    e->tenant_id = r->tenant_id;
    e->expires = time(NULL) + AUTH_CACHE_TTL;
    free(r->state);
    r->state = NULL;
    r->state_free = NULL;
    r->handler(r);
}

void auth_then_handle(struct api_req *r)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(r->req), "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) {
        reply_401(r, "missing bearer API key (Authorization: Bearer <key>)");
        return;
    }
    const char *key = h + 7;
    while (*key == ' ')
        key++;
    struct auth_state *st = xcalloc(1, sizeof(*st));
    if (apikey_parse(key, st->key_id, st->hash) != CR_OK) {
        free(st);
        reply_401(r, "malformed API key");
        return;
    }
    struct auth_entry *e = &r->app->auth->slot[slot_of(st->key_id)];
    if (e->expires > time(NULL) && strcmp(e->key_id, st->key_id) == 0 &&
        crypto_ct_equal(e->hash, st->hash, 32)) {
        r->tenant_id = e->tenant_id;
        free(st);
        r->handler(r);
        return;
    }
    r->state = st;
    r->state_free = free;
    const char *params[] = {st->key_id};
    pgpool_query(r->app->pg, sql_key_lookup, 1, params, key_looked_up, r);
}
