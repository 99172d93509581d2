#!/usr/bin/env bash
# Voice campaigns place calls through Twilio's Calls.json (the fake), issue 5 item 2: one
# call per eligible customer with Url = crier's TwiML endpoint for that delivery,
# StatusCallback = crier's status webhook with every progress event, answering-machine
# detection from the agent (async), Basic auth; the delivery records the CA sid; opt-outs are
# per channel (a voice opt-out is skipped, an SMS opt-out is still called); the account's
# calls-per-second rate holds; a 500 is retried and the call is still placed once.
. "$(dirname "$0")/../lib.sh"
t_init voice_calls
t_tenant_key
t_start_fake_twilio
T_PROVIDER=$(CRIER_PROVIDER_SECRET=fake-auth-token t_ctl provider create "$T_TENANT" \
  --channel voice --kind twilio --from +15550100000 --rate 10 \
  --account-sid AC00000000000000000000000000000000)
t_start_api
t_start_dispatcher
export CRIER_PUBLIC_URL=https://crier.example CRIER_RETRY_BASE_MS=200
t_start_worker

N=30
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, phone, voice_opt_out, sms_opt_out)
        SELECT $T_TENANT, 'v' || g, 'N' || g, '+1555' || lpad(g::text, 7, '0'), g = 1, g = 2
        FROM generate_series(1, $N) g" >/dev/null
assert_status 200 POST "$FAKE_URL/_fake/config" -d '{"p500":0.2,"seed":11}'
t_api POST /v1/campaigns '{"name":"calls","channel":"voice","agent_template_id":"reactivation",
  "segment":{"has_phone":true},"send_window":{"start":"00:00","end":"24:00"}}'
assert_eq "$T_STATUS" 201 "voice campaign created: $T_BODY"
CID=$(json_get .id)
assert_eq "$(json_get .agent_config.machine_detection)" enable "the agent asks for AMD"
t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 202 "voice campaign launched"
t_wait_until 60 "calls placed" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c \"SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status IN ('sent', 'skipped', 'failed')\")\" = $N ]"

assert_eq "$(t_psql "SELECT status || ':' || COALESCE(skip_reason, '') FROM deliveries d
  JOIN customers c ON c.id = d.customer_id WHERE c.external_id = 'v1' AND d.campaign_id = $CID")" \
  "skipped:opted_out" "a voice opt-out is not called"
assert_eq "$(t_psql "SELECT status FROM deliveries d JOIN customers c ON c.id = d.customer_id
  WHERE c.external_id = 'v2' AND d.campaign_id = $CID")" sent "an SMS opt-out is still called"
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status = 'sent'
  AND provider_message_id ~ '^CA[0-9a-f]{32}$' AND provider = 'twilio'")" $((N - 1)) \
  "every other customer called once, the CA sid recorded"
assert_ge "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND attempts > 1")" 1 \
  "some calls were retried after a 500"
assert_status 200 GET "$FAKE_URL/_fake/stats"
assert_eq "$(json_get .calls_accepted)" $((N - 1)) "the provider got one call per customer"
assert_eq "$(json_get .call_duplicates)" 0 "no duplicate call"
assert_eq "$(json_get .accepted)" 0 "no SMS"

# The wire format of every call.
jq -c 'select(.kind == "call")' "$FAKE_RECORD" >"$T_DIR/calls"
while read -r id to; do
  line=$(grep -F "\"to\":\"$to\"" "$T_DIR/calls")
  assert_eq "$(json_get .url "$line")" \
    "https://crier.example/v1/webhooks/$T_TENANT/twilio/voice?delivery=$id" "Url of delivery $id"
  assert_eq "$(json_get .status_callback "$line")" \
    "https://crier.example/v1/webhooks/$T_TENANT/twilio/status" "StatusCallback"
  assert_eq "$(json_get .from "$line")" "+15550100000" "From"
  assert_eq "$(json_get .machine_detection "$line")" Enable "answering-machine detection"
  assert_eq "$(json_get .async_amd "$line")" true "asynchronous AMD"
  assert_contains "$(json_get .status_callback_event "$line")" answered "progress events"
done < <(t_psql "SELECT d.id, c.phone FROM deliveries d JOIN customers c ON c.id = d.customer_id
                 WHERE d.campaign_id = $CID AND d.status = 'sent'" | tr '|' ' ')

# 10 calls per second: 29 calls (plus the 500s' retries) take at least about 2 s.
span=$(t_psql "SELECT extract(epoch FROM max(sent_at) - min(sent_at)) FROM deliveries WHERE campaign_id = $CID")
t_log "29 calls at 10/s took ${span}s"
awk -v s="$span" 'BEGIN { exit !(s >= 1.5) }' || t_fail "the account's call rate was not held"
echo "voice_calls ok"
