#!/usr/bin/env bash
# CRIER_PUBLIC_URL given with trailing slashes ("http://host:port//"): crier-api and
# crier-worker strip them once when they load their configuration, so every URL built from
# it has a single slash before /v1 - the worker's Url and StatusCallback of a call (recorded
# by the fake Twilio), the API's <Gather> action and the unsubscribe page's form action - and
# a request Twilio signs for such a URL verifies.
. "$(dirname "$0")/../lib.sh"
t_init public_url
t_tenant_key
t_start_fake_twilio
CRIER_PROVIDER_SECRET=fake-auth-token t_ctl provider create "$T_TENANT" --channel voice \
  --kind twilio --from +15550100000 --rate 100 --account-sid AC00000000000000000000000000000000 \
  >/dev/null

# The API, by hand: t_start_api sets CRIER_PUBLIC_URL without a slash.
port=$(crier_free_port)
export CRIER_HTTP_ADDR="127.0.0.1:$port"
export API_URL="http://127.0.0.1:$port"
export CRIER_PUBLIC_URL="$API_URL//" # the dispatcher and the worker get it too
t_start api "$(t_bin crier-api)"
crier_wait_http "$API_URL/healthz" "${T_API_WAIT:-30}" "$T_DIR/api.pid" ||
  t_fail "crier-api did not become healthy (log: $T_DIR/api.log)"
t_start_dispatcher
t_start_worker

t_psql "INSERT INTO customers (tenant_id, external_id, first_name, email, phone)
        VALUES ($T_TENANT, 'p1', 'Pat', 'pat@example.com', '+14155550101')" >/dev/null
CUST=$(t_psql "SELECT id FROM customers WHERE external_id = 'p1'")
t_api POST /v1/campaigns '{"name":"calls","channel":"voice","agent_template_id":"reactivation",
  "segment":{},"send_window":{"start":"00:00","end":"24:00"}}'
assert_eq "$T_STATUS" 201 "voice campaign: $T_BODY"
CID=$(json_get .id)
t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 202 "launched"
sent() { [ "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status = 'sent'")" = 1 ]; }
t_wait_until 30 "the call placed" sent
D=$(t_psql "SELECT id FROM deliveries WHERE campaign_id = $CID")
HOOK="$API_URL/v1/webhooks/$T_TENANT/twilio"

# The worker's URLs, as the provider got them.
assert_status 200 GET "$FAKE_URL/_fake/stats" # flushes the record
call=$(jq -c 'select(.kind == "call")' "$FAKE_RECORD")
assert_eq "$(json_get .url "$call")" "$HOOK/voice?delivery=$D" "the call's Url"
assert_eq "$(json_get .status_callback "$call")" "$HOOK/status" "the call's StatusCallback"

# The API's: the script's <Gather> action, for a request signed over the single-slash URL.
sign() {
  local data=$1 p
  shift
  while IFS= read -r p; do
    [ -n "$p" ] && data+="${p%%=*}${p#*=}"
  done < <(printf '%s\n' "$@" | LC_ALL=C sort)
  printf '%s' "$data" | openssl dgst -sha1 -hmac fake-auth-token -binary | base64
}
FORM=(CallSid=CA00000000000000000000000000000001 AccountSid=AC00000000000000000000000000000000
  To=+14155550101 CallStatus=in-progress)
args=()
for p in "${FORM[@]}"; do args+=(--data-urlencode "$p"); done
assert_status 200 POST "$HOOK/voice?delivery=$D" -H "X-Twilio-Signature: $(sign "$HOOK/voice?delivery=$D" "${FORM[@]}")" \
  "${args[@]}"
assert_contains "$T_BODY" "<Gather input=\"speech dtmf\" action=\"$HOOK/gather?delivery=$D&amp;q=0\"" \
  "the <Gather> action"
case "$T_BODY" in *"$port//"*) t_fail "a double slash in the TwiML: $T_BODY" ;; esac

# The unsubscribe page's form (a token minted as common/unsub.c signs it).
[[ "$CRIER_SECRET_KEY" =~ ^[0-9a-fA-F]{64}$ ]] || t_fail "this test mints tokens with a hex CRIER_SECRET_KEY"
payload="$T_TENANT.$CUST.email.$D.$(($(date +%s) + 3600))"
sub=$(printf '%s' 'crier unsubscribe v2' |
  openssl dgst -sha256 -mac HMAC -macopt "hexkey:$CRIER_SECRET_KEY" -binary | od -An -tx1 | tr -d ' \n')
mac=$(printf '%s' "$payload" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$sub" -binary |
  od -An -tx1 | tr -d ' \n')
assert_status 200 GET "$API_URL/v1/unsubscribe?token=$payload.${mac:0:32}"
assert_contains "$T_BODY" "<form method=\"post\" action=\"$API_URL/v1/unsubscribe\">" \
  "the page's form action"
echo "public_url ok"
