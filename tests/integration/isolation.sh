#!/usr/bin/env bash
# Tenant isolation: tenant B's key gets 404 on every route naming one of
# tenant A's objects, never sees them in a list, and changes nothing.
. "$(dirname "$0")/../lib.sh"
t_init isolation
t_tenant_key tenant_a
KEY_A=$T_KEY
t_provider_sandbox
PA=$T_PROVIDER
t_start_api

t_api POST /v1/customers '{"external_id":"a-1","first_name":"Ann","phone":"+14155550101"}'
CU=$(json_get .id)
t_api POST /v1/segments '{"name":"a-seg","criteria":{"has_phone":true}}'
SE=$(json_get .id)
t_api POST /v1/campaigns '{"name":"a-camp","channel":"sms","message":{"body":"Hi"}}'
CA=$(json_get .id)
t_api POST /v1/campaigns '{"name":"a-run","channel":"sms","message":{"body":"Hi"}}'
CR=$(json_get .id)
t_api POST "/v1/campaigns/$CR/launch"
assert_eq "$T_STATUS" 202 "tenant A launches"
snapshot() {
  t_psql "SELECT md5(string_agg(t, '|' ORDER BY t)) FROM (
    SELECT row_to_json(c)::text t FROM customers c UNION ALL
    SELECT row_to_json(s)::text FROM segments s UNION ALL
    SELECT row_to_json(k)::text FROM campaigns k UNION ALL
    SELECT row_to_json(p)::text FROM provider_accounts p) x"
}
before=$(snapshot)

t_tenant_key tenant_b
routes=(
  "GET /v1/customers/$CU" "PATCH /v1/customers/$CU" "DELETE /v1/customers/$CU"
  "GET /v1/segments/$SE" "PATCH /v1/segments/$SE" "DELETE /v1/segments/$SE"
  "GET /v1/campaigns/$CA" "PATCH /v1/campaigns/$CA" "DELETE /v1/campaigns/$CA"
  "POST /v1/campaigns/$CA/launch" "POST /v1/campaigns/$CR/pause" "POST /v1/campaigns/$CR/resume"
  "POST /v1/campaigns/$CR/complete" "POST /v1/campaigns/$CR/cancel" "GET /v1/campaigns/$CR/stats"
  "GET /v1/provider-accounts/$PA" "PATCH /v1/provider-accounts/$PA" "DELETE /v1/provider-accounts/$PA"
)
for route in "${routes[@]}"; do
  method=${route%% *}
  path=${route#* }
  body=''
  [ "$method" = PATCH ] && body='{"name":"stolen"}'
  t_api "$method" "$path" "$body"
  assert_eq "$T_STATUS" 404 "$route with tenant B's key"
  assert_eq "$(json_get .error.code)" not_found "$route error code"
done

# Lists show none of A's objects.
for list in customers segments campaigns provider-accounts; do
  t_api GET "/v1/$list"
  assert_eq "$T_STATUS" 200 "list $list"
  n=$(jq '[.. | objects | select(has("id"))] | length' <<<"$T_BODY")
  assert_eq "$n" 0 "tenant B sees nothing in $list"
done

# References in bodies to A's objects are refused, naming the field.
t_api POST /v1/campaigns "{\"name\":\"b\",\"channel\":\"sms\",\"message\":{\"body\":\"Hi\"},\"provider_account_id\":$PA}"
assert_eq "$T_STATUS" 422 "A's provider account in B's campaign"
assert_eq "$(json_get .error.field)" provider_account_id "names provider_account_id"
t_api POST /v1/segments/preview "{\"segment_id\": $SE}"
assert_eq "$T_STATUS" 422 "A's saved segment in B's preview"
t_api POST /v1/segments/preview '{"criteria":{}}'
assert_eq "$(json_get .count)" 0 "B's preview counts none of A's customers"

assert_eq "$(snapshot)" "$before" "tenant A's objects are unchanged"
T_KEY=$KEY_A
t_api GET "/v1/customers/$CU"
assert_eq "$T_STATUS" 200 "tenant A still sees its customer"
echo "isolation ok"
