#!/usr/bin/env bash
# Provider accounts: CRUD per tenant and channel; secrets sealed with
# AES-256-GCM, never returned by the API, never logged.
. "$(dirname "$0")/../lib.sh"
t_init providers
t_tenant_key
t_start_api
TOKEN="tok-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
SID=AC0123456789abcdef0123456789abcdef

t_api POST /v1/provider-accounts "{\"channel\":\"sms\",\"kind\":\"twilio\",\"from\":\"+1 415 555 0100\",\"rate_per_second\":5,\"credentials\":{\"account_sid\":\"$SID\",\"auth_token\":\"$TOKEN\"}}"
assert_eq "$T_STATUS" 201 "create twilio account"
PID1=$(json_get .id)
assert_eq "$(json_get .from)" "+14155550100" "from normalised"
assert_eq "$(json_get .is_default)" true "first account of the channel is the default"
assert_eq "$(json_get .settings.account_sid)" "$SID" "account sid shown"
assert_eq "$(json_get .has_credentials)" true "has credentials"
case "$T_BODY" in *"$TOKEN"*) t_fail "auth token returned by the API" ;; esac

# Stored sealed: not in clear anywhere in the row.
row=$(t_psql "SELECT row_to_json(p) FROM provider_accounts p WHERE id = $PID1")
case "$row" in *"$TOKEN"*) t_fail "auth token stored in clear" ;; esac
assert_contains "$(t_psql "SELECT credentials FROM provider_accounts WHERE id = $PID1")" "v1:" "sealed format"

t_api POST /v1/provider-accounts '{"channel":"sms","kind":"sandbox","from":"+14155550199","is_default":true}'
assert_eq "$T_STATUS" 201 "second account"
PID2=$(json_get .id)
assert_eq "$(t_psql "SELECT string_agg(id || ':' || is_default, ',' ORDER BY id) FROM provider_accounts")" \
  "$PID1:false,$PID2:true" "the default moved"
t_api PATCH "/v1/provider-accounts/$PID1" '{"is_default":true,"rate_per_second":7}'
assert_eq "$T_STATUS" 200 "patch"
assert_eq "$(t_psql "SELECT string_agg(id || ':' || is_default, ',' ORDER BY id) FROM provider_accounts")" \
  "$PID1:true,$PID2:false" "the default moved back"
assert_eq "$(json_get .rate_per_second)" 7 "rate changed"

# Validation names the field, and changes nothing.
n=$(t_psql "SELECT count(*) FROM provider_accounts")
bad() { # JSON FIELD MSG
  t_api POST /v1/provider-accounts "$1"
  assert_eq "$T_STATUS" 422 "$3"
  assert_eq "$(json_get .error.field)" "$2" "$3 (field)"
}
bad '{"channel":"fax","kind":"twilio","from":"+14155550100"}' channel "bad channel"
bad '{"channel":"email","kind":"twilio","from":"a@b.co"}' kind "twilio cannot send email"
bad '{"channel":"sms","kind":"twilio","from":"+14155550100","credentials":{"account_sid":"XX1","auth_token":"t"}}' credentials.account_sid "bad sid"
bad '{"channel":"sms","kind":"twilio","from":"+14155550100","credentials":{"account_sid":"'$SID'"}}' credentials.auth_token "missing token"
bad '{"channel":"sms","kind":"twilio","from":"+14155550100"}' credentials "missing credentials"
bad '{"channel":"sms","kind":"sandbox","from":"555"}' from "bad from number"
bad '{"channel":"email","kind":"smtp","from":"news@example.com","credentials":{"host":"mail.example.com","port":70000}}' credentials.port "bad port"
bad '{"channel":"email","kind":"sendgrid","from":"not-an-email"}' from "bad from address"
bad '{"channel":"sms","kind":"sandbox","from":"+14155550100","rate_per_second":0}' rate_per_second "bad rate"
assert_eq "$(t_psql "SELECT count(*) FROM provider_accounts")" "$n" "bad input created nothing"
t_api PATCH "/v1/provider-accounts/$PID1" '{"kind":"sandbox"}'
assert_eq "$T_STATUS" 422 "kind cannot change"

t_api POST /v1/provider-accounts '{"channel":"email","kind":"smtp","from":"news@example.com","credentials":{"host":"mail.example.com","port":587,"username":"u","password":"p-secret-9","security":"starttls"}}'
assert_eq "$T_STATUS" 201 "smtp account"
assert_eq "$(json_get .settings.host)" mail.example.com "smtp host shown"
case "$T_BODY" in *p-secret-9*) t_fail "smtp password returned" ;; esac

t_api GET "/v1/provider-accounts?channel=sms"
assert_eq "$(json_get '.provider_accounts | length')" 2 "list by channel"
case "$T_BODY" in *"$TOKEN"*) t_fail "token in the list" ;; esac

# In use: cannot be deleted; unused: deleted.
t_api POST /v1/campaigns "{\"name\":\"c\",\"channel\":\"sms\",\"message\":{\"body\":\"Hi\"},\"provider_account_id\":$PID1}"
assert_eq "$T_STATUS" 201 "campaign on the account"
t_api DELETE "/v1/provider-accounts/$PID1"
assert_eq "$T_STATUS" 409 "in use"
t_api DELETE "/v1/provider-accounts/$PID2"
assert_eq "$T_STATUS" 204 "deleted"
t_api GET "/v1/provider-accounts/$PID2"
assert_eq "$T_STATUS" 404 "gone"

# Never in a log.
if grep -q -- "$TOKEN" "$T_DIR"/*.log; then t_fail "auth token in a log"; fi
echo "providers ok"
