#!/usr/bin/env bash
# The API's edges: health, auth, routing errors, body limits, validation
# errors naming the field, tenant isolation, /readyz with Redis down,
# graceful SIGTERM.
. "$(dirname "$0")/../lib.sh"
t_init api_basics
t_tenant_key tenant_a
KEY_A=$T_KEY
t_provider_sandbox
t_start_api

assert_status 200 GET /healthz
assert_eq "$(json_get .status)" ok "healthz"
assert_status 200 GET /readyz
assert_eq "$(json_get .checks.postgres)" ok "readyz postgres"
assert_eq "$(json_get .checks.redis)" ok "readyz redis"

# --- authentication
assert_status 401 POST /v1/campaigns -d '{}'
assert_eq "$(json_get .error.code)" unauthorized "no key"
assert_status 401 POST /v1/campaigns -H "Authorization: Bearer nope" -d '{}'
assert_eq "$(json_get .error.code)" unauthorized "malformed key"
fake="crier_0123456789abcdef_0123456789abcdef0123456789abcdef01234567"
assert_status 401 POST /v1/campaigns -H "Authorization: Bearer $fake" -d '{}'
# A well-formed key whose secret part is wrong: the id exists, the hash does not match.
wrong="${KEY_A:0:23}$(printf '%s' "${KEY_A:23}" | tr '0-9a-f' '1-9a-f0')"
assert_status 401 POST /v1/campaigns -H "Authorization: Bearer $wrong" -d '{}'
# A revoked key stops working.
k2=$(t_ctl apikey create "$T_TENANT")
t_ctl apikey revoke "${k2:6:16}" >/dev/null
assert_status 401 GET /v1/campaigns/1/stats -H "Authorization: Bearer $k2"

# --- routing
assert_status 404 GET /v1/nothing-here "${T_AUTH[@]}"
assert_eq "$(json_get .error.code)" not_found "unknown route is JSON 404"
assert_status 404 GET /v1/campaigns/abc "${T_AUTH[@]}"
assert_eq "$(json_get .error.code)" not_found "non-numeric id"
assert_status 405 DELETE /v1/customers/import "${T_AUTH[@]}"
assert_eq "$(json_get .error.code)" method_not_allowed "wrong method"

# --- bodies
head -c 1100000 /dev/zero | tr '\0' 'a' >"$T_DIR/big.json"
assert_status 413 POST /v1/customers "${T_AUTH[@]}" -H 'Content-Type: application/json' \
  --data-binary @"$T_DIR/big.json"
assert_eq "$(json_get .error.code)" body_too_large "413 is JSON"
assert_status 400 POST /v1/customers "${T_AUTH[@]}" -d '{"external_id": '
assert_eq "$(json_get .error.code)" invalid_json "bad JSON"
assert_status 400 POST /v1/customers "${T_AUTH[@]}" -d '[1,2]'
assert_status 422 POST /v1/customers "${T_AUTH[@]}" -d '{"external_id":"x","phone":"12"}'
assert_eq "$(json_get .error.field)" phone "bad phone names the field"
assert_status 422 POST /v1/customers "${T_AUTH[@]}" -d '{"external_id":"x","emial":"a@b.c"}'
assert_eq "$(json_get .error.field)" emial "unknown field named"
assert_status 422 POST /v1/customers "${T_AUTH[@]}" -d '{"first_name":"x"}'
assert_eq "$(json_get .error.field)" external_id "missing external_id"
assert_eq "$(t_psql 'SELECT count(*) FROM customers')" 0 "bad input changed nothing"

# --- customers
assert_status 201 POST /v1/customers "${T_AUTH[@]}" \
  -d '{"external_id":"a1","first_name":"Ann","phone":"+1 (415) 555-0101","tags":["vip"]}'
assert_eq "$(json_get .created)" true "created"
assert_eq "$(t_psql "SELECT phone FROM customers WHERE external_id = 'a1'")" "+14155550101" \
  "phone normalised to E.164"
assert_status 200 POST /v1/customers "${T_AUTH[@]}" -d '{"external_id":"a1","last_name":"Lee"}'
assert_eq "$(json_get .created)" false "upsert updates"
assert_eq "$(t_psql "SELECT first_name || ' ' || last_name FROM customers WHERE external_id = 'a1'")" \
  "Ann Lee" "upsert keeps fields it was not given"

printf '%s\n' '{"external_id":"n1","phone":"+14155550102"}' 'not json' \
  '{"external_id":"n2","email":"bad"}' '' '{"external_id":"n1","first_name":"Later"}' \
  '{"external_id":"n3","email":"N3@Example.COM"}' >"$T_DIR/import.ndjson"
assert_status 200 POST /v1/customers/import "${T_AUTH[@]}" -H 'Content-Type: application/x-ndjson' \
  --data-binary @"$T_DIR/import.ndjson"
assert_eq "$(json_get .inserted)" 2 "import inserted"
assert_eq "$(json_get .updated)" 1 "import updated (same external_id twice: later line wins)"
assert_eq "$(json_get .rejected)" 2 "import rejected"
assert_eq "$(json_get '.errors[0].line')" 2 "malformed line number"
assert_eq "$(json_get '.errors[1].line')" 3 "bad email line number"
assert_eq "$(json_get '.errors[1].field')" email "bad email field"
assert_eq "$(t_psql "SELECT first_name FROM customers WHERE external_id = 'n1'")" Later "later line won"
assert_eq "$(t_psql "SELECT email FROM customers WHERE external_id = 'n3'")" "N3@example.com" \
  "email domain lower-cased"

# --- campaigns: validation names the field
t_api POST /v1/campaigns '{"name":"c","channel":"sms","message":{"body":"Hi {{frist_name}}"}}'
assert_eq "$T_STATUS" 422 "unknown template variable"
assert_eq "$(json_get .error.field)" message.body "template error field"
t_api POST /v1/campaigns '{"name":"c","channel":"sms","message":{"body":"Hi"},"segment":{"favourite_colour":"red"}}'
assert_eq "$T_STATUS" 422 "unknown criterion"
assert_eq "$(json_get .error.field)" segment.favourite_colour "criterion field"
t_api POST /v1/campaigns '{"name":"c","channel":"sms","message":{"body":"Hi"},"segment":{"days_since_last_contact":"ten"}}'
assert_eq "$(json_get .error.field)" segment.days_since_last_contact "criterion type"
t_api POST /v1/campaigns '{"name":"c","channel":"fax","message":{"body":"Hi"}}'
assert_eq "$(json_get .error.field)" channel "bad channel"
t_api POST /v1/campaigns '{"name":"c","channel":"sms","message":{"body":"Hi"},"provider_account_id":999999}'
assert_eq "$T_STATUS" 422 "unknown provider account"
assert_eq "$(json_get .error.field)" provider_account_id "provider field"
assert_eq "$(t_psql 'SELECT count(*) FROM campaigns')" 0 "no campaign from bad input"

t_api POST /v1/campaigns '{"name":"ok","channel":"sms","message":{"body":"Hi {{first_name|there}}"},"segment":{"has_phone":true,"tags":["vip"]}}'
assert_eq "$T_STATUS" 201 "campaign created"
assert_eq "$(json_get .status)" draft "new campaign is a draft"
CID=$(json_get .id)
t_api GET "/v1/campaigns/$CID"
assert_eq "$T_STATUS" 200 "get campaign"
assert_eq "$(json_get .segment.tags[0])" vip "segment stored"

# --- isolation: tenant B sees none of tenant A's objects
t_tenant_key tenant_b
t_api GET "/v1/campaigns/$CID"
assert_eq "$T_STATUS" 404 "other tenant's campaign"
t_api GET "/v1/campaigns/$CID/stats"
assert_eq "$T_STATUS" 404 "other tenant's stats"
t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 404 "other tenant cannot launch"
assert_eq "$(t_psql "SELECT status FROM campaigns WHERE id = $CID")" draft "still a draft"
T_KEY=$KEY_A

# --- readyz names Redis when it is down, and recovers
t_redis_kill
t_wait_until 10 "readyz 503" bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' $API_URL/readyz)\" = 503 ]"
assert_status 503 GET /readyz
assert_eq "$(json_get .checks.redis)" down "redis reported down"
assert_eq "$(json_get .checks.postgres)" ok "postgres still ok"
assert_eq "$(json_get .error.field)" redis "error names redis"
t_redis_start
t_wait_until 10 "readyz 200 again" bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' $API_URL/readyz)\" = 200 ]"

# --- graceful SIGTERM: exits 0 by itself
pid=$(t_pid api)
kill -TERM "$pid"
t_wait_until 10 "api exits after SIGTERM" bash -c "! kill -0 $pid 2>/dev/null"
assert_contains "$(cat "$T_DIR/api.log")" "drained; exiting" "api drained"
echo "api_basics ok"
