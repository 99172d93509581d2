#!/usr/bin/env bash
# End to end, what comes back (issue 6 item 8): an SMS campaign to 1,000 customers through
# the fake Twilio with status callbacks on. The fake POSTs each message's signed "sent" and
# "delivered" callbacks to the API's /v1/webhooks/{tenant}/twilio/status (CRIER_PUBLIC_URL
# is the API itself), which verifies them and writes them to the inbound stream; the
# workers' inbound consumers apply them. Then 100 customers answer through signed inbound
# SMS webhooks (signature computed here with openssl), 10 of them "STOP":
# - the stats say 1,000 delivered (delivered or responded), 90 responded, 10 opted out, and
#   SQL on deliveries says the same; a STOP is an opt-out, not a response;
# - the fake answers GET Messages/{Sid}.json with "delivered" (its record follows the
#   callbacks it sent); every callback was answered 2xx;
# - a reply with a wrong signature (wrong token, or a body changed after signing) is refused
#   with 403 and changes nothing: not in the inbound stream, not in the database;
# - a second campaign to the same segment skips exactly the 10 opted-out customers
#   (skipped, reason opted_out: the expansion records who the segment matched and why they
#   were not contacted) and sends to the other 990; the fake saw no duplicate.
. "$(dirname "$0")/../lib.sh"
t_init inbound_campaign
t_tenant_key
TOKEN=fake-auth-token
ACCOUNT=AC00000000000000000000000000000000
SENDER=+15550100000
N=1000
REPLIES=100
STOPS=10
t_start_fake_twilio --status-callbacks --callback-delay-ms 1500
CRIER_PROVIDER_SECRET=$TOKEN t_ctl provider create "$T_TENANT" --channel sms --kind twilio \
  --from "$SENDER" --rate 100000 --account-sid "$ACCOUNT" >/dev/null || t_fail "provider create"
t_start_api # before the workers: they take CRIER_PUBLIC_URL for StatusCallback
t_start_dispatcher
export CRIER_WORKER_CONCURRENCY=32
t_start_worker 1
t_start_worker 2

q() { t_psql "$1"; }
phone() { printf '+1555%07d' "$1"; }
fake_stat() {
  assert_status 200 GET "$FAKE_URL/_fake/stats"
  json_get ".$1"
}
count_is() { # SQL EXPECTED
  [ "$(q "$1")" = "$2" ]
}
callbacks_settled() { [ "$(fake_stat callbacks_pending)" = 0 ]; }
inbound_settled() { # every inbound entry read and acknowledged
  local info pending lag
  info=$(t_redis XINFO GROUPS crier:inbound | tr '\n' ' ')
  pending=$(sed -n 's/.*pending \([0-9]*\).*/\1/p' <<<"$info")
  lag=$(sed -n 's/.*lag \([0-9]*\).*/\1/p' <<<"$info")
  [ "${pending:-1}" = 0 ] && [ "${lag:-1}" = 0 ]
}
campaign() { # NAME BODY -> campaign id (launched)
  t_api POST /v1/campaigns "{\"name\":\"$1\",\"channel\":\"sms\",\"message\":{\"body\":\"$2\"},
    \"segment\":{\"has_phone\":true},\"send_window\":{\"start\":\"00:00\",\"end\":\"24:00\"}}"
  assert_eq "$T_STATUS" 201 "campaign $1 created: $T_BODY"
  local cid
  cid=$(json_get .id)
  t_api POST "/v1/campaigns/$cid/launch"
  assert_eq "$T_STATUS" 202 "campaign $1 launched: $T_BODY"
  echo "$cid"
}
# sms_webhook FROM BODY SID [TOKEN] [SENT BODY]: a Twilio inbound SMS webhook, signed with
# TOKEN (default the account's) over BODY, sending SENT BODY (default BODY). Sets T_STATUS.
sms_webhook() {
  local from=$1 body=$2 sid=$3 token=${4:-$TOKEN} sent=${5:-$2} url sig
  url="$API_URL/v1/webhooks/$T_TENANT/twilio/sms"
  # Parameters sorted by name: AccountSid Body From MessageSid NumMedia To.
  sig=$(printf '%s' "${url}AccountSid${ACCOUNT}Body${body}From${from}MessageSid${sid}NumMedia0To${SENDER}" |
    openssl dgst -sha1 -hmac "$token" -binary | base64)
  _t_curl POST "$url" -H "X-Twilio-Signature: $sig" \
    -H 'Content-Type: application/x-www-form-urlencoded' \
    --data-urlencode "AccountSid=$ACCOUNT" --data-urlencode "Body=$sent" \
    --data-urlencode "From=$from" --data-urlencode "MessageSid=$sid" \
    --data-urlencode "NumMedia=0" --data-urlencode "To=$SENDER"
}
# stats_match CID: the API's counts equal GROUP BY status on the campaign's deliveries.
stats_match() {
  local truth
  truth=$(q "SELECT COALESCE(json_object_agg(status, n), '{}') FROM
             (SELECT status, count(*) n FROM deliveries WHERE campaign_id = $1 GROUP BY status) s")
  assert_eq "$(jq -S -c . <<<"$truth")" "$(jq -S -c .counts <<<"$STATS")" \
    "campaign $1: stats counts equal SELECT status, count(*) FROM deliveries"
}

# --- 1,000 customers ---
for i in $(seq 1 $N); do
  printf '{"external_id":"c%d","first_name":"Name%d","phone":"%s"}\n' "$i" "$i" "$(phone "$i")"
done >"$T_DIR/customers.ndjson"
assert_status 200 POST /v1/customers/import "${T_AUTH[@]}" -H 'Content-Type: application/x-ndjson' \
  --data-binary @"$T_DIR/customers.ndjson"
assert_eq "$(json_get .inserted)" "$N" "all customers imported"

# --- campaign 1: sent, then delivered through the fake's signed status callbacks ---
START=$SECONDS
CID=$(campaign first "Hi {{first_name}}, your table is ready. Reply to tell us more.")
t_wait_campaign_done "$CID" 60
# Bounded well above the normal few seconds: a callback that outruns the worker's write of
# the send is retried by the inbound consumer's reclaim, after a minute.
t_wait_until 90 "all $N deliveries delivered by status callbacks" count_is \
  "SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status = 'delivered'" "$N"
t_log "campaign $CID: $N delivered after $((SECONDS - START)) s"
t_wait_until 20 "the fake's callbacks all sent" callbacks_settled
assert_eq "$(fake_stat callbacks_sent)" $((2 * N)) "a sent and a delivered callback per message, each answered 2xx"
assert_eq "$(fake_stat callbacks_failed)" 0 "no callback refused (every signature verified)"
assert_eq "$(fake_stat accepted)" "$N" "the fake accepted every message"
assert_eq "$(fake_stat duplicates)" 0 "no duplicate"
assert_eq "$(q "SELECT count(*) FROM deliveries WHERE campaign_id = $CID
                AND provider_status = 'delivered' AND delivered_at IS NOT NULL")" "$N" \
  "provider status and delivered_at recorded"
SID=$(q "SELECT provider_message_id FROM deliveries d JOIN customers c ON c.id = d.customer_id
         WHERE d.campaign_id = $CID AND c.external_id = 'c500'")
assert_status 200 GET "$FAKE_URL/2010-04-01/Accounts/$ACCOUNT/Messages/$SID.json" \
  -u "$ACCOUNT:$TOKEN"
assert_eq "$(json_get .status)" delivered "the fake's record follows its callbacks"

# --- 100 replies, 10 of them STOP ---
BODIES=("Yes please" "Sounds good, thanks!" "Can I book for Friday?" "Interested" "ok")
for i in $(seq 1 $REPLIES); do
  if [ "$i" -le "$STOPS" ]; then body=STOP; else body=${BODIES[i % ${#BODIES[@]}]}; fi
  sms_webhook "$(phone "$i")" "$body" "$(printf 'SMfeed%026x' "$i")"
  [ "$T_STATUS" = 200 ] || t_fail "reply $i: HTTP $T_STATUS: $T_BODY"
  assert_contains "$T_BODY" "<Response></Response>" "reply $i answered with empty TwiML"
done

# --- wrongly signed replies are refused and change nothing ---
t_wait_until 30 "the replies applied" inbound_settled
# The stream's last id, not its length: the workers trim what they have
# applied, so the length drops whenever their upkeep runs.
last_inbound_id() { t_redis XINFO STREAM crier:inbound | awk 'p { print; exit } /^last-generated-id$/ { p = 1 }'; }
LAST=$(last_inbound_id)
[ -n "$LAST" ] || t_fail "no last-generated-id for crier:inbound"
BAD1=$(printf 'SMbad0%026x' 1) BAD2=$(printf 'SMbad0%026x' 2) BAD3=$(printf 'SMbad0%026x' 3)
sms_webhook "$(phone 500)" "Yes" "$BAD1" wrong-token
assert_eq "$T_STATUS" 403 "a reply signed with another token is refused"
sms_webhook "$(phone 501)" "Yes" "$BAD2" "$TOKEN" "STOP"
assert_eq "$T_STATUS" 403 "a reply whose body changed after signing is refused"
_t_curl POST "$API_URL/v1/webhooks/$T_TENANT/twilio/sms" \
  -H 'Content-Type: application/x-www-form-urlencoded' \
  --data "AccountSid=$ACCOUNT&From=%2B15550000503&Body=Yes&MessageSid=$BAD3&To=%2B15550100000"
assert_eq "$T_STATUS" 403 "a reply without a signature is refused"
assert_eq "$(last_inbound_id)" "$LAST" "refused replies never reach the inbound stream"

# --- what the replies did ---
t_wait_until 30 "90 responded and 10 opted out" count_is \
  "SELECT count(*) FILTER (WHERE status = 'responded') || '/' || count(*) FILTER (WHERE opted_out_at IS NOT NULL)
     FROM deliveries WHERE campaign_id = $CID" "$((REPLIES - STOPS))/$STOPS"
t_wait_until 10 "every inbound entry acknowledged" inbound_settled
t_api GET "/v1/campaigns/$CID/stats"
assert_eq "$T_STATUS" 200 "stats of campaign 1"
STATS=$T_BODY
# The API's figures...
assert_eq "$(json_get .targeted "$STATS")" "$N" "targeted"
assert_eq "$(json_get .delivered "$STATS")" "$N" "stats: delivered (delivered or responded)"
assert_eq "$(json_get .responded "$STATS")" "$((REPLIES - STOPS))" "stats: responded"
assert_eq "$(json_get .opted_out "$STATS")" "$STOPS" "stats: opted out"
assert_eq "$(json_get '.counts.delivered + .counts.responded' "$STATS")" "$N" \
  "stats counts: delivered + responded"
stats_match "$CID"
# ... and the ground truth.
assert_eq "$(q "SELECT count(*) FILTER (WHERE status IN ('delivered', 'responded')) || '/' ||
                       count(*) FILTER (WHERE status = 'responded') || '/' ||
                       count(*) FILTER (WHERE opted_out_at IS NOT NULL)
                  FROM deliveries WHERE campaign_id = $CID")" \
  "$N/$((REPLIES - STOPS))/$STOPS" "SQL on deliveries: delivered/responded/opted out"
assert_eq "$(q "SELECT string_agg(c.external_id, ',' ORDER BY substr(c.external_id, 2)::int) FROM deliveries d
                JOIN customers c ON c.id = d.customer_id
                WHERE d.campaign_id = $CID AND d.opted_out_at IS NOT NULL AND d.status = 'delivered'")" \
  "$(seq -s, -f 'c%g' 1 $STOPS)" "the STOP senders opted out, not responded"
assert_eq "$(q "SELECT count(*) FROM deliveries d JOIN customers c ON c.id = d.customer_id
                WHERE d.campaign_id = $CID AND d.status = 'responded'
                  AND substr(c.external_id, 2)::int BETWEEN $((STOPS + 1)) AND $REPLIES")" \
  "$((REPLIES - STOPS))" "the other repliers responded"
assert_eq "$(q "SELECT count(*) FROM customers WHERE sms_opt_out")" "$STOPS" "customers opted out of SMS"
assert_eq "$(q "SELECT count(*) FROM suppressions WHERE channel = 'sms' AND reason = 'stop_keyword'")" \
  "$STOPS" "STOP suppressions"
assert_eq "$(q "SELECT count(*) FROM messages WHERE direction = 'inbound'")" "$REPLIES" \
  "every reply stored, no refused one"
assert_eq "$(q "SELECT count(*) FROM messages WHERE provider_message_id IN ('$BAD1', '$BAD2', '$BAD3')")" 0 \
  "refused replies stored nowhere"
assert_eq "$(q "SELECT string_agg(d.status || ':' || c.sms_opt_out, ',' ORDER BY c.id)
                FROM deliveries d JOIN customers c ON c.id = d.customer_id
                WHERE d.campaign_id = $CID AND c.external_id IN ('c500', 'c501', 'c503')")" \
  "delivered:false,delivered:false,delivered:false" "the customers of refused replies are unchanged"

# --- campaign 2: the opted-out 10 are skipped, the other 990 sent ---
CID2=$(campaign second "Second offer for {{first_name}}: 10% off this week.")
t_wait_campaign_done "$CID2" 60
t_wait_until 90 "campaign 2 delivered" count_is \
  "SELECT count(*) FROM deliveries WHERE campaign_id = $CID2 AND status = 'delivered'" "$((N - STOPS))"
t_wait_until 20 "the fake's callbacks all sent" callbacks_settled
t_wait_until 10 "every inbound entry acknowledged" inbound_settled
t_api GET "/v1/campaigns/$CID2/stats"
STATS=$T_BODY
assert_eq "$(json_get .targeted "$STATS")" "$N" "campaign 2: the segment matched every customer"
assert_eq "$(json_get .skipped_reasons.opted_out "$STATS")" "$STOPS" "campaign 2: skipped as opted out"
assert_eq "$(json_get .contacted "$STATS")" "$((N - STOPS))" "campaign 2: the others contacted"
stats_match "$CID2"
assert_eq "$(q "SELECT string_agg(c.external_id, ',' ORDER BY substr(c.external_id, 2)::int) FROM deliveries d
                JOIN customers c ON c.id = d.customer_id
                WHERE d.campaign_id = $CID2 AND d.status = 'skipped' AND d.skip_reason = 'opted_out'")" \
  "$(seq -s, -f 'c%g' 1 $STOPS)" "exactly the STOP senders skipped"
assert_eq "$(q "SELECT count(*) FROM deliveries WHERE campaign_id = $CID2
                AND provider_message_id LIKE 'SM%'")" "$((N - STOPS))" "990 sent"
assert_eq "$(fake_stat accepted)" "$((2 * N - STOPS))" "the fake accepted 1,990 messages in all"
assert_eq "$(fake_stat duplicates)" 0 "still no duplicate"
assert_eq "$(fake_stat unique_recipients)" "$N" "every customer reached once or twice"
assert_eq "$(fake_stat callbacks_failed)" 0 "no callback refused"
assert_eq "$(fake_stat callbacks_sent)" $((2 * (2 * N - STOPS))) "two callbacks per message"
stopped=$(jq -r --arg re '^\+15550000(00[1-9]|010)$' 'select(.to | test($re)) | .to' "$FAKE_RECORD" | wc -l)
assert_eq "$stopped" "$STOPS" "the opted-out customers got the first message only"
t_log "done in $((SECONDS - START)) s"
echo "inbound_campaign ok"
