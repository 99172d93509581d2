#!/usr/bin/env bash
# End to end: 2,000 customers imported through the API, an SMS campaign over
# Twilio's wire format (the fake), launched; every customer gets exactly one
# message, and the stats equal the ground truth in deliveries.
. "$(dirname "$0")/../lib.sh"
t_init sms_campaign
t_tenant_key
t_start_fake_twilio
AUTH_TOKEN=fake-auth-token
T_PROVIDER=$(CRIER_PROVIDER_SECRET=$AUTH_TOKEN t_ctl provider create "$T_TENANT" --channel sms \
  --kind twilio --from +15550100000 --rate 100000 --account-sid AC00000000000000000000000000000000)
t_start_api
t_start_dispatcher
export CRIER_WORKER_CONCURRENCY=64
t_start_worker 1
t_start_worker 2

N=2000
for i in $(seq 1 $N); do
  printf '{"external_id":"e%d","first_name":"Name%d","phone":"+1555%07d","tags":["%s"]}\n' \
    "$i" "$i" "$i" "$([ $((i % 2)) = 0 ] && echo even || echo odd)"
done >"$T_DIR/customers.ndjson"
assert_status 200 POST /v1/customers/import "${T_AUTH[@]}" -H 'Content-Type: application/x-ndjson' \
  --data-binary @"$T_DIR/customers.ndjson"
assert_eq "$(json_get .inserted)" "$N" "all customers imported"
assert_eq "$(json_get .rejected)" 0 "none rejected"

t_api POST /v1/campaigns '{"name":"e2e","channel":"sms","message":{"body":"Hi {{first_name}}, your table is ready."},"segment":{"has_phone":true},"send_window":{"start":"00:00","end":"24:00"}}'
assert_eq "$T_STATUS" 201 "campaign created"
CID=$(json_get .id)
t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 202 "launched"

t_wait_campaign_done "$CID" 120
t_wait_until 10 "campaign completed" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c 'SELECT status FROM campaigns WHERE id = $CID')\" = completed ]"
t_api GET "/v1/campaigns/$CID/stats"
STATS=$T_BODY
assert_eq "$(json_get .status "$STATS")" completed "campaign completed by itself"
assert_eq "$(json_get .targeted "$STATS")" "$N" "targeted"
assert_eq "$(json_get .counts.sent "$STATS")" "$N" "all sent"

assert_status 200 GET "$FAKE_URL/_fake/stats"
assert_eq "$(json_get .accepted)" "$N" "fake accepted every message"
assert_eq "$(json_get .duplicates)" 0 "fake saw no duplicate"
assert_eq "$(json_get .unique_recipients)" "$N" "every customer reached"

# Rendered with the customer's own name, at the provider.
grep -q '"to":"+15550000007".*"body":"Hi Name7, your table is ready."' "$FAKE_RECORD" ||
  t_fail "message for customer 7 not rendered as expected"

# Stats equal the ground truth.
truth=$(t_psql "SELECT json_object_agg(status, n) FROM (SELECT status, count(*) n FROM deliveries WHERE campaign_id = $CID GROUP BY status) s")
assert_eq "$(jq -S -c . <<<"$truth")" "$(json_get .counts "$STATS" | jq -S -c .)" \
  "stats equal SELECT status, count(*) FROM deliveries"
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND provider_message_id LIKE 'SM%'")" \
  "$N" "provider message ids recorded"
assert_eq "$(t_psql "SELECT count(*) FROM messages WHERE direction = 'outbound'")" "$N" \
  "outbound messages stored"

# A second campaign on half the segment contacts exactly those customers.
t_api POST /v1/campaigns '{"name":"even","channel":"sms","message":{"body":"Even {{first_name}}"},"segment":{"tags":["even"]},"send_window":{"start":"00:00","end":"24:00"}}'
CID2=$(json_get .id)
t_api POST "/v1/campaigns/$CID2/launch"
t_wait_campaign_done "$CID2" 120
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID2 AND status = 'sent'")" \
  "$((N / 2))" "tag segment"
assert_status 200 GET "$FAKE_URL/_fake/stats"
assert_eq "$(json_get .duplicates)" 0 "still no duplicate"

# A deleted delivery takes its messages with it, and only its own: the
# customer's message of the other campaign stays.
read -r DID DCUST <<<"$(t_psql "SELECT id, customer_id FROM deliveries WHERE campaign_id = $CID2 ORDER BY id LIMIT 1" | tr '|' ' ')"
assert_eq "$(t_psql "SELECT count(*) FROM messages WHERE customer_id = $DCUST")" 2 "two messages before"
t_psql "DELETE FROM deliveries WHERE id = $DID" >/dev/null
assert_eq "$(t_psql "SELECT count(*) FROM messages WHERE delivery_id = $DID")" 0 "its messages deleted"
assert_eq "$(t_psql "SELECT count(*) FROM messages WHERE customer_id = $DCUST")" 1 "the other campaign's message kept"
echo "sms_campaign ok"
