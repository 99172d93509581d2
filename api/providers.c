/* providers.c - provider accounts: CRUD per tenant and channel.
 *
 * Secrets (Twilio auth token, SendGrid API key, SMTP password) are sealed
 * with AES-256-GCM under CRIER_SECRET_KEY before they reach PostgreSQL and
 * are never returned or logged; the non-secret part of the configuration
 * (account SID, SMTP host...) is kept in settings and shown. A SendGrid
 * account's settings may also hold webhook_public_key, the Event Webhook's
 * verification key (public: shown), set through "settings". */
#include <sys/queue.h>

#include <event2/keyvalq_struct.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "crypto.h"
#include "phone.h"
#include "websig.h"
#include "xalloc.h"

#define PROVIDER_JSON_COLUMNS                                                                      \
    "id, channel, kind, name, from_address AS \"from\", rate_per_second, is_default, settings,"    \
    " credentials IS NOT NULL AS has_credentials, created_at, updated_at"

/* A new account is the channel's default when asked, or when the channel
 * has none yet; making it the default demotes the previous one (the
 * one-default rule is checked at commit). */
static const char sql_insert[] =
    "WITH demote AS (UPDATE provider_accounts SET is_default = false, updated_at = now()"
    "   WHERE tenant_id = $1 AND channel = $2 AND is_default"
    "     AND COALESCE($8::boolean, false) RETURNING id),"
    " ins AS (INSERT INTO provider_accounts (tenant_id, channel, kind, name, from_address,"
    "   rate_per_second, credentials, is_default, settings)"
    "   VALUES ($1, $2, $3, COALESCE($4, ''), $5, COALESCE($6::int, 10), $7,"
    "     COALESCE($8::boolean, NOT EXISTS (SELECT 1 FROM provider_accounts"
    "       WHERE tenant_id = $1 AND channel = $2 AND is_default)), $9::jsonb)"
    "   RETURNING *)"
    " SELECT row_to_json((SELECT x FROM (SELECT " PROVIDER_JSON_COLUMNS ") x)) FROM ins";

static const char sql_list[] =
    "SELECT COALESCE(json_agg(x ORDER BY x.id), '[]') FROM (SELECT " PROVIDER_JSON_COLUMNS
    " FROM provider_accounts WHERE tenant_id = $1 AND ($2::text IS NULL OR channel = $2)) x";

static const char sql_get[] = "SELECT row_to_json(x) FROM (SELECT " PROVIDER_JSON_COLUMNS
                              " FROM provider_accounts WHERE tenant_id = $1 AND id = $2) x";

/* $3 name, $4 from, $5 rate, $6 is_default, $7 sealed credentials,
 * $8 settings derived from new credentials (replace those; the settings
 * set through "settings" stay), $9 "settings" changes (null removes). */
static const char sql_patch[] =
    "WITH cur AS (SELECT id, channel FROM provider_accounts WHERE tenant_id = $1 AND id = $2),"
    " demote AS (UPDATE provider_accounts p SET is_default = false, updated_at = now()"
    "   FROM cur WHERE p.tenant_id = $1 AND p.channel = cur.channel AND p.is_default"
    "     AND p.id <> cur.id AND COALESCE($6::boolean, false) RETURNING p.id),"
    " upd AS (UPDATE provider_accounts p SET name = COALESCE($3, p.name),"
    "   from_address = COALESCE($4, p.from_address),"
    "   rate_per_second = COALESCE($5::int, p.rate_per_second),"
    "   is_default = COALESCE($6::boolean, p.is_default),"
    "   credentials = COALESCE($7, p.credentials),"
    "   settings = jsonb_strip_nulls(COALESCE($8::jsonb, p.settings - 'webhook_public_key')"
    "     || jsonb_build_object('webhook_public_key', p.settings -> 'webhook_public_key')"
    "     || COALESCE($9::jsonb, '{}')),"
    "   updated_at = now()"
    "   FROM cur WHERE p.id = cur.id RETURNING p.*)"
    " SELECT row_to_json((SELECT x FROM (SELECT " PROVIDER_JSON_COLUMNS ") x)) FROM upd";

static const char sql_kind[] =
    "SELECT kind, channel FROM provider_accounts WHERE tenant_id = $1 AND id = $2";

static const char sql_delete[] =
    "DELETE FROM provider_accounts WHERE tenant_id = $1 AND id = $2 RETURNING id";

/* ---------------------------------------------------------------------
 * Validation
 * ------------------------------------------------------------------- */

struct perr {
    char field[96];
    char msg[200];
};

static int pfail(struct perr *e, const char *field, const char *msg)
{
    snprintf(e->field, sizeof(e->field), "%s", field);
    snprintf(e->msg, sizeof(e->msg), "%s", msg);
    return -1;
}

static bool hex_of(const char *s, size_t n)
{
    if (strlen(s) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!strchr("0123456789abcdefABCDEF", s[i]))
            return false;
    return true;
}

static const char *str_item(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Checks the credentials for kind and splits them into the sealed secret
 * document (*sealed_doc) and the shown settings (*settings). */
static int check_credentials(const char *kind, const cJSON *c, struct perr *e, cJSON **sealed_doc,
                             cJSON **settings)
{
    *sealed_doc = NULL;
    *settings = cJSON_CreateObject();
    if (!strcmp(kind, "sandbox")) {
        if (c && !cJSON_IsNull(c))
            return pfail(e, "credentials", "the sandbox provider takes no credentials");
        return 0;
    }
    if (!cJSON_IsObject(c))
        return pfail(e, "credentials", "credentials are required for this kind");
    static const char *const twilio_keys[] = {"account_sid", "auth_token", NULL};
    static const char *const sendgrid_keys[] = {"api_key", NULL};
    static const char *const smtp_keys[] = {"host",     "port",     "username",
                                            "password", "security", NULL};
    const char *const *keys = !strcmp(kind, "twilio")     ? twilio_keys
                              : !strcmp(kind, "sendgrid") ? sendgrid_keys
                                                          : smtp_keys;
    const char *bad = http_unknown_key(c, keys);
    if (bad) {
        char f[96];
        snprintf(f, sizeof(f), "credentials.%.60s", bad);
        return pfail(e, f, "unknown credential for this kind");
    }
    *sealed_doc = cJSON_CreateObject();
    if (!strcmp(kind, "twilio")) {
        const char *sid = str_item(c, "account_sid"), *tok = str_item(c, "auth_token");
        if (!sid || strncmp(sid, "AC", 2) != 0 || !hex_of(sid + 2, 32))
            return pfail(e, "credentials.account_sid",
                         "account_sid must be AC followed by 32 hex characters");
        if (!tok || !*tok || strlen(tok) > 256)
            return pfail(e, "credentials.auth_token", "auth_token is required");
        cJSON_AddStringToObject(*sealed_doc, "account_sid", sid);
        cJSON_AddStringToObject(*sealed_doc, "secret", tok);
        cJSON_AddStringToObject(*settings, "account_sid", sid);
    } else if (!strcmp(kind, "sendgrid")) {
        const char *key = str_item(c, "api_key");
        if (!key || !*key || strlen(key) > 512)
            return pfail(e, "credentials.api_key", "api_key is required");
        cJSON_AddStringToObject(*sealed_doc, "secret", key);
    } else {
        const char *host = str_item(c, "host"), *user = str_item(c, "username");
        const char *pass = str_item(c, "password"), *sec = str_item(c, "security");
        const cJSON *port = cJSON_GetObjectItemCaseSensitive(c, "port");
        if (!host || !*host || strlen(host) > 253 || strpbrk(host, " /:@"))
            return pfail(e, "credentials.host", "host must be a host name");
        if (!cJSON_IsNumber(port) || port->valuedouble < 1 || port->valuedouble > 65535 ||
            port->valuedouble != (int)port->valuedouble)
            return pfail(e, "credentials.port", "port must be an integer 1..65535");
        if (sec && strcmp(sec, "starttls") && strcmp(sec, "tls") && strcmp(sec, "none"))
            return pfail(e, "credentials.security", "security must be starttls, tls or none");
        if ((user && strlen(user) > 256) || (pass && strlen(pass) > 512))
            return pfail(e, "credentials.username", "username or password too long");
        cJSON_AddStringToObject(*sealed_doc, "host", host);
        cJSON_AddNumberToObject(*sealed_doc, "port", port->valuedouble);
        cJSON_AddStringToObject(*sealed_doc, "security", sec ? sec : "starttls");
        if (user)
            cJSON_AddStringToObject(*sealed_doc, "username", user);
        if (pass)
            cJSON_AddStringToObject(*sealed_doc, "secret", pass);
        cJSON_AddStringToObject(*settings, "host", host);
        cJSON_AddNumberToObject(*settings, "port", port->valuedouble);
        cJSON_AddStringToObject(*settings, "security", sec ? sec : "starttls");
        if (user)
            cJSON_AddStringToObject(*settings, "username", user);
    }
    return 0;
}

/* Normalises "from" for the channel into out: an E.164 number (or a Twilio
 * Messaging Service SID for sms), or an email address. */
static int check_from(const char *channel, const cJSON *v, char *out, size_t outsz, struct perr *e)
{
    if (!cJSON_IsString(v) || !*v->valuestring || strlen(v->valuestring) > 320)
        return pfail(e, "from", "from is required");
    const char *s = v->valuestring;
    if (!strcmp(channel, "email")) {
        const char *at = strchr(s, '@');
        if (!at || at == s || !strchr(at, '.') || strpbrk(s, " <>,;\"\\"))
            return pfail(e, "from", "from must be an email address for the email channel");
        snprintf(out, outsz, "%s", s);
        return 0;
    }
    if (!strcmp(channel, "sms") && strncmp(s, "MG", 2) == 0 && hex_of(s + 2, 32)) {
        snprintf(out, outsz, "%s", s);
        return 0;
    }
    if (phone_normalize(s, NULL, out, outsz) != CR_OK)
        return pfail(e, "from", "from must be an international phone number, e.g. +14155550100");
    return 0;
}

/* Checks the optional "settings" object: only a SendGrid account has one
 * setting, webhook_public_key (the Event Webhook's verification key as
 * SendGrid shows it: base64 DER of a P-256 public key; null removes it). */
static int check_settings(const char *kind, const cJSON *s, struct perr *e)
{
    if (!s)
        return 0;
    if (!cJSON_IsObject(s))
        return pfail(e, "settings", "settings must be an object");
    static const char *const sendgrid_settings[] = {"webhook_public_key", NULL};
    static const char *const none[] = {NULL};
    const char *bad = http_unknown_key(s, !strcmp(kind, "sendgrid") ? sendgrid_settings : none);
    if (bad) {
        char f[96];
        snprintf(f, sizeof(f), "settings.%.60s", bad);
        return pfail(e, f, "unknown setting for this kind");
    }
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(s, "webhook_public_key");
    struct websig_key *k = NULL;
    if (key && !cJSON_IsNull(key) &&
        (!cJSON_IsString(key) || strlen(key->valuestring) > 1024 ||
         websig_key_parse(key->valuestring, &k) != CR_OK))
        return pfail(e, "settings.webhook_public_key",
                     "webhook_public_key must be the Event Webhook's verification key as SendGrid "
                     "shows it: base64 DER of a P-256 (prime256v1) public key");
    websig_key_free(k);
    return 0;
}

static int check_common(const cJSON *in, struct perr *e)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(in, "name");
    const cJSON *rate = cJSON_GetObjectItemCaseSensitive(in, "rate_per_second");
    const cJSON *def = cJSON_GetObjectItemCaseSensitive(in, "is_default");
    if (name && (!cJSON_IsString(name) || strlen(name->valuestring) > 200))
        return pfail(e, "name", "name must be a string of at most 200 characters");
    if (rate && (!cJSON_IsNumber(rate) || rate->valuedouble < 1 || rate->valuedouble > 100000 ||
                 rate->valuedouble != (double)(long)rate->valuedouble))
        return pfail(e, "rate_per_second", "rate_per_second must be an integer 1..100000");
    if (def && !cJSON_IsBool(def))
        return pfail(e, "is_default", "is_default must be true or false");
    return 0;
}

/* Seals doc under the app's key; caller frees. NULL on failure. */
static char *seal(const struct app *app, const cJSON *doc)
{
    char *plain = cJSON_PrintUnformatted(doc);
    char *out = NULL;
    if (crypto_seal(app->secret, plain, strlen(plain), &out) != CR_OK)
        out = NULL;
    memset(plain, 0, strlen(plain));
    free(plain);
    return out;
}

/* ---------------------------------------------------------------------
 * Handlers
 * ------------------------------------------------------------------- */

static void row_done(struct api_req *r, PGresult *res, const char *errmsg, const char *sqlstate,
                     int status)
{
    if (!res && !strcmp(sqlstate, "23514")) {
        http_reply_error(r, 422, "invalid_field", "this kind cannot serve this channel", "kind");
        return;
    }
    http_reply_pg_row(r, res, errmsg, status, "provider account");
}

static void created(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    row_done(arg, res, errmsg, sqlstate, 201);
}

static void fetched(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    row_done(arg, res, errmsg, sqlstate, 200);
}

static const char *bool_param(const cJSON *v)
{
    return cJSON_IsBool(v) ? (cJSON_IsTrue(v) ? "true" : "false") : NULL;
}

void providers_create(struct api_req *r)
{
    static const char *const keys[] = {
        "channel",    "kind",        "name",     "from", "rate_per_second",
        "is_default", "credentials", "settings", NULL};
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return;
    struct perr e = {"", ""};
    cJSON *sealed_doc = NULL, *settings = NULL;
    const char *bad = http_unknown_key(in, keys);
    const char *channel = str_item(in, "channel"), *kind = str_item(in, "kind");
    char from[328];
    int rc = 0;
    if (bad)
        rc = pfail(&e, bad, "unknown field");
    else if (!channel ||
             (strcmp(channel, "sms") && strcmp(channel, "email") && strcmp(channel, "voice")))
        rc = pfail(&e, "channel", "channel must be sms, email or voice");
    else if (!kind || (strcmp(kind, "twilio") && strcmp(kind, "sendgrid") && strcmp(kind, "smtp") &&
                       strcmp(kind, "sandbox")))
        rc = pfail(&e, "kind", "kind must be twilio, sendgrid, smtp or sandbox");
    else if ((!strcmp(kind, "twilio") && !strcmp(channel, "email")) ||
             ((!strcmp(kind, "sendgrid") || !strcmp(kind, "smtp")) && strcmp(channel, "email")))
        rc = pfail(&e, "kind", "this kind cannot serve this channel");
    else if (check_common(in, &e) ||
             check_from(channel, cJSON_GetObjectItem(in, "from"), from, sizeof(from), &e))
        rc = -1;
    else
        rc = check_credentials(kind, cJSON_GetObjectItemCaseSensitive(in, "credentials"), &e,
                               &sealed_doc, &settings);
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(in, "settings");
    if (rc == 0)
        rc = check_settings(kind, js, &e);
    if (rc != 0) {
        http_reply_error(r, 422, "invalid_field", e.msg, e.field);
        goto out;
    }
    char *sealed = sealed_doc ? seal(r->app, sealed_doc) : NULL;
    if (sealed_doc && !sealed) {
        http_reply_error(r, 503, "crypto_unavailable", "cannot seal the credentials", NULL);
        goto out;
    }
    char tenant[24], rate[24];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    const cJSON *jr = cJSON_GetObjectItemCaseSensitive(in, "rate_per_second");
    if (jr)
        snprintf(rate, sizeof(rate), "%ld", (long)jr->valuedouble);
    const cJSON *wk = cJSON_GetObjectItemCaseSensitive(js, "webhook_public_key");
    if (cJSON_IsString(wk))
        cJSON_AddStringToObject(settings, "webhook_public_key", wk->valuestring);
    char *settings_text = cJSON_PrintUnformatted(settings);
    const char *params[] = {
        tenant,       channel,
        kind,         str_item(in, "name"),
        from,         jr ? rate : NULL,
        sealed,       bool_param(cJSON_GetObjectItemCaseSensitive(in, "is_default")),
        settings_text};
    pgpool_query(r->app->pg, sql_insert, 9, params, created, r);
    free(settings_text);
    free(sealed);
out:
    cJSON_Delete(sealed_doc);
    cJSON_Delete(settings);
    cJSON_Delete(in);
}

void providers_list(struct api_req *r)
{
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    evhttp_parse_query_str(r->query ? r->query : "", &q);
    const char *ch = evhttp_find_header(&q, "channel");
    if (ch && strcmp(ch, "sms") && strcmp(ch, "email") && strcmp(ch, "voice")) {
        evhttp_clear_headers(&q);
        http_reply_error(r, 400, "invalid_parameter", "channel must be sms, email or voice",
                         "channel");
        return;
    }
    char tenant[24];
    snprintf(tenant, sizeof(tenant), "%lld", r->tenant_id);
    char *channel = ch ? xstrdup(ch) : NULL;
    evhttp_clear_headers(&q);
    const char *params[] = {tenant, channel};
    /* Not paged (a tenant has a handful of accounts): next_cursor is null. */
    http_query_page(r, sql_list, 2, params, "provider_accounts", -1);
    free(channel);
}

void providers_get(struct api_req *r)
{
    char tenant[24], id[24];
    http_id_params(r, tenant, id);
    const char *params[] = {tenant, id};
    pgpool_query(r->app->pg, sql_get, 2, params, fetched, r);
}

/* PATCH needs the account's kind and channel to validate from and
 * credentials: load them first. */
static void patch_loaded(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    cJSON *in = r->state;
    (void)sqlstate;
    if (!http_one_row_or_reply(r, res, errmsg, "provider account"))
        return;
    static const char *const keys[] = {
        "name", "from", "rate_per_second", "is_default", "credentials", "settings", NULL};
    const char *kind = PQgetvalue(res, 0, 0), *channel = PQgetvalue(res, 0, 1);
    struct perr e = {"", ""};
    cJSON *sealed_doc = NULL, *settings = NULL;
    char from[328] = "";
    const cJSON *jf = cJSON_GetObjectItemCaseSensitive(in, "from");
    const cJSON *jc = cJSON_GetObjectItemCaseSensitive(in, "credentials");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(in, "settings");
    const char *bad = http_unknown_key(in, keys);
    int rc = 0;
    if (bad)
        rc = pfail(&e, bad,
                   !strcmp(bad, "kind") || !strcmp(bad, "channel")
                       ? "kind and channel cannot change: create another account"
                       : "unknown field");
    else if (check_common(in, &e) || (jf && check_from(channel, jf, from, sizeof(from), &e)))
        rc = -1;
    else if (jc)
        rc = check_credentials(kind, jc, &e, &sealed_doc, &settings);
    if (rc == 0)
        rc = check_settings(kind, js, &e);
    if (rc != 0) {
        cJSON_Delete(sealed_doc);
        cJSON_Delete(settings);
        http_reply_error(r, 422, "invalid_field", e.msg, e.field);
        return;
    }
    char *sealed = sealed_doc ? seal(r->app, sealed_doc) : NULL;
    char *settings_text = jc && settings ? cJSON_PrintUnformatted(settings) : NULL;
    char *settings_patch = js ? cJSON_PrintUnformatted(js) : NULL;
    char tenant[24], id[24], rate[24];
    http_id_params(r, tenant, id);
    const cJSON *jr = cJSON_GetObjectItemCaseSensitive(in, "rate_per_second");
    if (jr)
        snprintf(rate, sizeof(rate), "%ld", (long)jr->valuedouble);
    const cJSON *jn = cJSON_GetObjectItemCaseSensitive(in, "name");
    const char *params[] = {tenant,
                            id,
                            jn ? jn->valuestring : NULL,
                            jf ? from : NULL,
                            jr ? rate : NULL,
                            bool_param(cJSON_GetObjectItemCaseSensitive(in, "is_default")),
                            sealed,
                            settings_text,
                            settings_patch};
    pgpool_query(r->app->pg, sql_patch, 9, params, fetched, r);
    free(sealed);
    free(settings_text);
    free(settings_patch);
    cJSON_Delete(sealed_doc);
    cJSON_Delete(settings);
}

static void free_json(void *p)
{
    cJSON_Delete(p);
}

void providers_patch(struct api_req *r)
{
    cJSON *in = http_body_json_or_reply(r);
    if (!in)
        return;
    r->state = in;
    r->state_free = free_json;
    char tenant[24], id[24];
    http_id_params(r, tenant, id);
    const char *params[] = {tenant, id};
    pgpool_query(r->app->pg, sql_kind, 2, params, patch_loaded, r);
}

static void deleted(void *arg, PGresult *res, const char *errmsg, const char *sqlstate)
{
    struct api_req *r = arg;
    if (!res && !strcmp(sqlstate, "23503")) {
        http_reply_error(r, 409, "in_use", "campaigns use this provider account", "id");
        return;
    }
    if (!http_one_row_or_reply(r, res, errmsg, "provider account"))
        return;
    http_reply_no_content(r);
}

void providers_delete(struct api_req *r)
{
    char tenant[24], id[24];
    http_id_params(r, tenant, id);
    const char *params[] = {tenant, id};
    pgpool_query(r->app->pg, sql_delete, 2, params, deleted, r);
}
