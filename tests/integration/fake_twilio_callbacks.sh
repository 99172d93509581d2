#!/usr/bin/env bash
# The fake Twilio's status callbacks, received by crier-api's webhook (which checks every
# X-Twilio-Signature with common/websig.c and writes what verifies to crier:inbound; no
# worker runs, so the stream keeps every callback as it came):
# 1. Off by default; "status_callbacks" and "callback_delay_ms" in /_fake/config are
#    checked (booleans, range) and shown.
# 2. A message: "sent" then "delivered", each signed, with MessageSid/SmsSid,
#    MessageStatus/SmsStatus, AccountSid, From (or MessagingServiceSid), To, ApiVersion;
#    GET Messages/{Sid}.json follows (queued -> delivered).
# 3. A call with every StatusCallbackEvent and MachineDetection: initiated, ringing,
#    in-progress, completed, SequenceNumber 0..3, AnsweredBy on the last two, CallDuration on
#    completed; a call without StatusCallbackEvent gets "completed" only.
# 4. A final status set by POST /_fake/status before the first callback: one callback, that
#    status, with its ErrorCode.
# 5. A callback the receiver refuses (another tenant's URL: 403) counts as failed; none is
#    planned while callbacks are off, nor for a send without StatusCallback.
. "$(dirname "$0")/../lib.sh"
t_init fake_twilio_callbacks
t_tenant_key
TOKEN=fake-auth-token
ACCOUNT=AC00000000000000000000000000000000
t_start_fake_twilio
CRIER_PROVIDER_SECRET=$TOKEN t_ctl provider create "$T_TENANT" --channel sms --kind twilio \
  --from +15550100000 --account-sid "$ACCOUNT" >/dev/null || t_fail "provider create"
OTHER=$(t_ctl tenant create other) || t_fail "tenant create"
t_start_api
API="$FAKE_URL/2010-04-01/Accounts/$ACCOUNT"
CB="$API_URL/v1/webhooks/$T_TENANT/twilio/status"

config() {
  _t_curl POST "$FAKE_URL/_fake/config" --data-binary "$1"
  assert_eq "$T_STATUS" 200 "config $1 accepted (${T_BODY:0:300})"
}
stat() {
  assert_status 200 GET "$FAKE_URL/_fake/stats"
  json_get ".$1"
}
settled() { [ "$(stat callbacks_pending)" = 0 ]; }
send() { # Messages|Calls FORM-ARGS...: sets SID
  local what=$1
  shift
  _t_curl POST "$API/$what.json" -u "$ACCOUNT:$TOKEN" "$@"
  assert_eq "$T_STATUS" 201 "$what accepted: $T_BODY"
  SID=$(json_get .sid)
}
fetch_status() { # Messages|Calls SID
  assert_status 200 GET "$API/$1/$2.json" -u "$ACCOUNT:$TOKEN"
  json_get .status
}
# The bodies of the callbacks about SID that reached the stream, in order.
callbacks_of() { t_redis XRANGE crier:inbound - + | grep -E "(MessageSid|CallSid)=$1(&|$)" || true; }
param() { tr '&' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
field_list() { # SID PARAM: the PARAM of each callback of SID, comma-separated
  local b out='' n=0
  while IFS= read -r b; do
    [ $((n++)) -gt 0 ] && out+=,
    out+=$(param "$b" "$2")
  done < <(callbacks_of "$1")
  printf '%s' "$out"
}

# --- 1. off by default; configuration ---
assert_status 200 GET "$FAKE_URL/_fake/config"
assert_eq "$(json_get .status_callbacks)" false "off by default"
assert_eq "$(json_get .callback_delay_ms)" 1000 "callback_delay_ms default"
BEFORE=$T_BODY
for bad in '{"status_callbacks":1}' '{"status_callbacks":"true"}' '{"callback_delay_ms":-1}' \
  '{"callback_delay_ms":600001}' '{"callback_delay_ms":true}' '{"status_callbacks":true,"bogus":1}'; do
  _t_curl POST "$FAKE_URL/_fake/config" --data-binary "$bad"
  assert_eq "$T_STATUS" 400 "config $bad refused"
done
assert_status 200 GET "$FAKE_URL/_fake/config"
assert_eq "$T_BODY" "$BEFORE" "refused configurations change nothing"
send Messages --data-urlencode To=+15550001001 --data-urlencode From=+15550100000 -d Body=off \
  --data-urlencode "StatusCallback=$CB"
OFF_SID=$SID
config '{"status_callbacks":true,"callback_delay_ms":100}'
assert_eq "$(json_get .status_callbacks)" true "turned on"

# --- 2. a message: sent, then delivered ---
send Messages --data-urlencode To=+15550001002 --data-urlencode From=+15550100000 -d Body=hello \
  --data-urlencode "StatusCallback=$CB"
MSG=$SID
send Messages --data-urlencode To=+15550001003 -d MessagingServiceSid=MG0123456789abcdef0123456789abcdef \
  -d Body=svc --data-urlencode "StatusCallback=$CB"
SVC=$SID
send Messages --data-urlencode To=+15550001004 --data-urlencode From=+15550100000 -d Body=nocb
NOCB=$SID
# --- 3. calls ---
send Calls --data-urlencode To=+15550002001 --data-urlencode From=+15550100000 \
  --data-urlencode Url=http://example.com/twiml --data-urlencode "StatusCallback=$CB" \
  -d StatusCallbackEvent=initiated -d StatusCallbackEvent=ringing \
  -d StatusCallbackEvent=answered -d StatusCallbackEvent=completed -d MachineDetection=Enable
CALL=$SID
send Calls --data-urlencode To=+15550002002 --data-urlencode From=+15550100000 \
  --data-urlencode Url=http://example.com/twiml --data-urlencode "StatusCallback=$CB"
CALL2=$SID
t_wait_until 20 "callbacks sent" settled
assert_eq "$(stat callbacks_sent)" 9 "2 + 2 message callbacks, 4 + 1 call callbacks, all 2xx"
assert_eq "$(stat callbacks_failed)" 0 "every signature verified by crier-api"

assert_eq "$(field_list "$MSG" MessageStatus)" sent,delivered "message: sent, then delivered"
assert_eq "$(field_list "$MSG" SmsStatus)" sent,delivered "SmsStatus too"
assert_eq "$(field_list "$MSG" SmsSid)" "$MSG,$MSG" "SmsSid"
assert_eq "$(field_list "$MSG" From)" "%2B15550100000,%2B15550100000" "From"
assert_eq "$(field_list "$MSG" To)" "%2B15550001002,%2B15550001002" "To"
assert_eq "$(field_list "$MSG" AccountSid)" "$ACCOUNT,$ACCOUNT" "AccountSid"
assert_eq "$(field_list "$MSG" ApiVersion)" "2010-04-01,2010-04-01" "ApiVersion"
assert_eq "$(field_list "$MSG" ErrorCode)" "," "no ErrorCode on a delivery"
assert_eq "$(fetch_status Messages "$MSG")" delivered "GET follows the callbacks"
assert_eq "$(field_list "$SVC" MessagingServiceSid)" \
  MG0123456789abcdef0123456789abcdef,MG0123456789abcdef0123456789abcdef "service message"
assert_eq "$(field_list "$SVC" From)" "," "a service message has no From"
assert_eq "$(callbacks_of "$NOCB")" "" "no StatusCallback, no callback"
assert_eq "$(fetch_status Messages "$NOCB")" queued "a message without callbacks stays queued"
assert_eq "$(callbacks_of "$OFF_SID")" "" "none while callbacks were off"

assert_eq "$(field_list "$CALL" CallStatus)" initiated,ringing,in-progress,completed "call events"
assert_eq "$(field_list "$CALL" SequenceNumber)" 0,1,2,3 "SequenceNumber"
assert_eq "$(field_list "$CALL" AnsweredBy)" ",,human,human" "AnsweredBy once answered"
duration=$(field_list "$CALL" CallDuration)
[[ "$duration" =~ ^,,,[1-9][0-9]?$ ]] || t_fail "CallDuration on completed only: '$duration'"
assert_eq "$(field_list "$CALL" Direction)" outbound-api,outbound-api,outbound-api,outbound-api "Direction"
assert_status 200 GET "$API/Calls/$CALL.json" -u "$ACCOUNT:$TOKEN"
assert_eq "$(json_get .status)/$(json_get .answered_by)" completed/human \
  "GET: the call completed, answered by a human"
assert_eq "$(field_list "$CALL2" CallStatus)" completed "default events: completed only"
assert_eq "$(field_list "$CALL2" AnsweredBy)" "" "no AMD, no AnsweredBy"

# --- 4. a final status set before the first callback ---
config '{"callback_delay_ms":1500}'
send Messages --data-urlencode To=+15550001005 --data-urlencode From=+15550100000 -d Body=und \
  --data-urlencode "StatusCallback=$CB"
UND=$SID
assert_status 200 POST "$FAKE_URL/_fake/status" -d "{\"sid\":\"$UND\",\"status\":\"undelivered\",\"error_code\":30003}"
send Calls --data-urlencode To=+15550002003 --data-urlencode From=+15550100000 \
  --data-urlencode Url=http://example.com/twiml --data-urlencode "StatusCallback=$CB" \
  -d StatusCallbackEvent=ringing -d StatusCallbackEvent=completed
BUSY=$SID
assert_status 200 POST "$FAKE_URL/_fake/status" -d "{\"sid\":\"$BUSY\",\"status\":\"busy\"}"
t_wait_until 20 "callbacks sent" settled
assert_eq "$(field_list "$UND" MessageStatus)" undelivered "one callback: the final status"
assert_eq "$(field_list "$UND" ErrorCode)" 30003 "with its ErrorCode"
assert_eq "$(field_list "$BUSY" CallStatus)" busy "busy call: the completed event only"
assert_eq "$(field_list "$BUSY" CallDuration)" 0 "no talk time"
assert_eq "$(fetch_status Messages "$UND")" undelivered "GET keeps the final status"

# --- 5. a refused callback ---
config '{"callback_delay_ms":50}'
failed=$(stat callbacks_failed)
send Messages --data-urlencode To=+15550001006 --data-urlencode From=+15550100000 -d Body=other \
  --data-urlencode "StatusCallback=$API_URL/v1/webhooks/$OTHER/twilio/status"
OTHER_SID=$SID
t_wait_until 20 "callbacks sent" settled
assert_eq "$(stat callbacks_failed)" "$((failed + 2))" "403s count as failed"
assert_eq "$(callbacks_of "$OTHER_SID")" "" "refused callbacks never reach the stream"
assert_eq "$(fetch_status Messages "$OTHER_SID")" delivered "the provider's record moves on anyway"
assert_eq "$(stat callbacks_dropped)" 0 "none dropped"
echo "fake_twilio_callbacks ok"
