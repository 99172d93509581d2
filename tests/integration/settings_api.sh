#!/usr/bin/env bash
# A tenant's contact policy through the API: GET/PATCH /v1/settings (frequency
# cap, default time zone) and the suppression list (POST/GET/DELETE
# /v1/suppressions). Addresses are stored in the form the dispatcher and the
# worker compare (E.164 phones, lower-cased emails); every bad input is a 400
# naming the field and changes nothing; another tenant sees none of it.
. "$(dirname "$0")/../lib.sh"
t_init settings_api
t_tenant_key other
OTHER_KEY=$T_KEY
OTHER=$T_TENANT
t_tenant_key
t_start_api

t_api GET /v1/settings
assert_eq "$T_STATUS" 200 "settings readable"
assert_eq "$(json_get .frequency_cap_7d)" null "no cap by default"
assert_eq "$(json_get .default_timezone)" UTC "default zone"

t_api PATCH /v1/settings '{"frequency_cap_7d":3,"default_timezone":"Europe/Paris"}'
assert_eq "$T_STATUS" 200 "settings patched"
assert_eq "$(json_get .frequency_cap_7d)" 3 "cap set"
assert_eq "$(t_psql "SELECT frequency_cap_7d || ' ' || default_timezone FROM tenants WHERE id = $T_TENANT")" \
  "3 Europe/Paris" "stored"
assert_eq "$(t_psql "SELECT frequency_cap_7d IS NULL FROM tenants WHERE id = $OTHER")" t \
  "the other tenant is untouched"

for bad in '{"frequency_cap_7d":0}' '{"frequency_cap_7d":2.5}' '{"frequency_cap_7d":"3"}' \
  '{"frequency_cap_7d":100000}'; do
  t_api PATCH /v1/settings "$bad"
  assert_eq "$T_STATUS" 400 "rejected: $bad"
  assert_eq "$(json_get .error.field)" frequency_cap_7d "names the field: $bad"
done
t_api PATCH /v1/settings '{"default_timezone":"Mars/Olympus"}'
assert_eq "$(json_get .error.field)" default_timezone "unknown zone rejected"
t_api PATCH /v1/settings '{"cap":1}'
assert_eq "$T_STATUS $(json_get .error.field)" "400 cap" "unknown field rejected"
assert_eq "$(t_psql "SELECT frequency_cap_7d || ' ' || default_timezone FROM tenants WHERE id = $T_TENANT")" \
  "3 Europe/Paris" "bad requests changed nothing"
t_api PATCH /v1/settings '{"frequency_cap_7d":null}'
assert_eq "$(json_get .frequency_cap_7d)" null "cap removed"
assert_eq "$(json_get .default_timezone)" Europe/Paris "zone kept"

# Suppressions.
t_api POST /v1/suppressions '{"channel":"sms","address":"+1 (415) 555-0100","reason":"complaint"}'
assert_eq "$T_STATUS" 201 "phone suppressed"
S1=$(json_get .id)
assert_eq "$(json_get .address)" "+14155550100" "stored in E.164"
t_api POST /v1/suppressions '{"channel":"sms","address":"+14155550100"}'
assert_eq "$T_STATUS" 200 "a repeat answers the existing entry"
assert_eq "$(json_get .id)" "$S1" "same entry"
t_api POST /v1/suppressions '{"channel":"email","address":"Jane.Doe@Example.COM"}'
assert_eq "$T_STATUS" 201 "email suppressed"
assert_eq "$(json_get .address)" "jane.doe@example.com" "lower-cased"
assert_eq "$(json_get .reason)" manual "default reason"
for bad in '{"channel":"fax","address":"+14155550100"}:channel' \
  '{"channel":"sms","address":"hello"}:address' '{"channel":"email","address":"nobody"}:address' \
  '{"channel":"sms"}:address' '{"channel":"sms","address":"+14155550101","reason":7}:reason' \
  '{"channel":"sms","address":"+14155550101","why":"x"}:why'; do
  t_api POST /v1/suppressions "${bad%:*}"
  assert_eq "$T_STATUS $(json_get .error.field)" "400 ${bad##*:}" "rejected: ${bad%:*}"
done
assert_eq "$(t_psql "SELECT count(*) FROM suppressions")" 2 "bad requests stored nothing"

t_api GET '/v1/suppressions?channel=sms'
assert_eq "$(json_get '.suppressions | length')" 1 "filtered by channel"
t_api GET '/v1/suppressions?channel=sms&address=%2B1%20415%20555%200100'
assert_eq "$(json_get '.suppressions[0].id')" "$S1" "looked up by address, normalised"
t_api GET '/v1/suppressions?limit=1'
assert_eq "$(json_get '.suppressions | length')" 1 "paged"
cursor=$(json_get .next_cursor)
t_api GET "/v1/suppressions?limit=1&cursor=$cursor"
assert_eq "$(json_get '.suppressions[0].channel')" email "second page"
t_api GET '/v1/suppressions?channel=pigeon'
assert_eq "$T_STATUS $(json_get .error.field)" "400 channel" "bad filter"

# Another tenant sees and deletes none of it.
MY_KEY=$T_KEY
T_KEY=$OTHER_KEY
t_api GET /v1/suppressions
assert_eq "$(json_get '.suppressions | length')" 0 "other tenant sees nothing"
t_api DELETE "/v1/suppressions/$S1"
assert_eq "$T_STATUS" 404 "other tenant cannot delete"
T_KEY=$MY_KEY
t_api DELETE "/v1/suppressions/$S1"
assert_eq "$T_STATUS" 204 "deleted"
t_api DELETE "/v1/suppressions/$S1"
assert_eq "$T_STATUS" 404 "gone"
t_finish
