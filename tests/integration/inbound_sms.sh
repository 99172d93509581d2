#!/usr/bin/env bash
# The worker's inbound consumer on SMS (issue 6 item 2), fed straight into crier:inbound
# with XADD after a real campaign through the fake Twilio:
# 1. Status callbacks are applied monotonically: repeated and out-of-order callbacks change
#    nothing, final states never go back, undelivered/failed keep their ErrorCode; another
#    tenant's callback for our message changes nothing.
# 2. Replies: 100 customers answer, 10 of them with an opt-out keyword (STOP, UNSUBSCRIBE,
#    END, ... in any case, trimmed): 90 deliveries 'responded', 10 customers opted out of
#    SMS with a 'stop_keyword' suppression and opted_out_at on their delivery (a STOP is not
#    a response); a second reply and a repeated MessageSid change nothing; HELP is recorded
#    with its keyword; START opts back in, lifts the suppression and is a response; a text
#    from an unknown number is kept.
# 3. The next campaign to the same segment skips the customers still opted out.
# 4. Malformed entries are acknowledged (never retried), their bodies never logged; the stats
#    equal the ground truth in deliveries.
. "$(dirname "$0")/../lib.sh"
t_init inbound_sms
t_tenant_key
t_start_fake_twilio
T_PROVIDER=$(CRIER_PROVIDER_SECRET=fake-auth-token t_ctl provider create "$T_TENANT" --channel sms \
  --kind twilio --from +15550100000 --rate 1000 --account-sid AC00000000000000000000000000000000)
OTHER=$(t_ctl tenant create other) || t_fail "tenant create"
t_start_api
t_start_dispatcher
t_start_worker

q() { t_psql "$1"; }
form() { # NAME VALUE ...: an application/x-www-form-urlencoded body
  local out='' v
  while [ $# -gt 1 ]; do
    v=$(jq -rn --arg v "$2" '$v | @uri')
    out+="${out:+&}$1=$v"
    shift 2
  done
  printf '%s' "$out"
}
xadd() { t_redis XADD crier:inbound '*' "$@" >/dev/null; }
status_cb() { # SID STATUS [ERRORCODE] [TENANT]
  xadd kind twilio_status tenant "${4:-$T_TENANT}" body "$(form MessageSid "$1" MessageStatus "$2" \
    ErrorCode "${3:-}" AccountSid AC00000000000000000000000000000000)"
}
reply() { # FROM BODY SID
  xadd kind twilio_sms tenant "$T_TENANT" body "$(form MessageSid "$3" From "$1" To +15550100000 \
    Body "$2" NumMedia 0)"
}
# Every entry read and acknowledged, and nothing waiting (the group exists once the worker ran).
settled() {
  local info pending lag
  info=$(t_redis XINFO GROUPS crier:inbound | tr '\n' ' ')
  pending=$(sed -n 's/.*pending \([0-9]*\).*/\1/p' <<<"$info")
  lag=$(sed -n 's/.*lag \([0-9]*\).*/\1/p' <<<"$info")
  [ "${pending:-1}" = 0 ] && [ "${lag:-1}" = 0 ]
}
campaign() { # TAG -> CID
  t_api POST /v1/campaigns "{\"name\":\"$1-$RANDOM\",\"channel\":\"sms\",\"message\":{\"body\":\"Hi {{first_name}}\"},
    \"segment\":{\"tags\":[\"$1\"]},\"send_window\":{\"start\":\"00:00\",\"end\":\"24:00\"}}"
  assert_eq "$T_STATUS" 201 "campaign $1 created: $T_BODY"
  local cid
  cid=$(json_get .id)
  t_api POST "/v1/campaigns/$cid/launch"
  assert_eq "$T_STATUS" 202 "campaign $1 launched"
  echo "$cid"
}
all_sent() { [ "$(q "SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND status = 'sent'")" = "$2" ]; }
sid_of() { q "SELECT d.provider_message_id FROM deliveries d JOIN customers c ON c.id = d.customer_id
              WHERE c.external_id = '$1' AND d.campaign_id = $2"; }
row_of() { q "SELECT d.status || '|' || COALESCE(d.provider_status, '') || '|' || COALESCE(d.error_code, '')
                || '|' || (d.delivered_at IS NOT NULL)
              FROM deliveries d JOIN customers c ON c.id = d.customer_id
              WHERE c.external_id = '$1' AND d.campaign_id = $2"; }
stats_true() { # CID: the API's counts equal GROUP BY status
  t_api GET "/v1/campaigns/$1/stats"
  assert_eq "$T_STATUS" 200 "stats of $1"
  assert_eq "$(jq -c '.counts | to_entries | sort_by(.key) | map("\(.key)=\(.value)") | join(",")' <<<"$T_BODY")" \
    "\"$(q "SELECT string_agg(status || '=' || n, ',' ORDER BY status) FROM
            (SELECT status, count(*) AS n FROM deliveries WHERE campaign_id = $1 GROUP BY status) s")\"" \
    "stats of campaign $1 equal the deliveries"
}

q "INSERT INTO customers (tenant_id, external_id, first_name, phone, tags)
   SELECT $T_TENANT, 'a' || g, 'A' || g, '+1555200' || lpad(g::text, 4, '0'), '{a}'
   FROM generate_series(1, 100) g" >/dev/null
q "INSERT INTO customers (tenant_id, external_id, first_name, phone, tags)
   SELECT $T_TENANT, 'b' || g, 'B' || g, '+1555300' || lpad(g::text, 4, '0'), '{b}'
   FROM generate_series(1, 10) g" >/dev/null
CA=$(campaign a)
CB=$(campaign b)
t_wait_until 60 "campaign a sent" all_sent "$CA" 100
t_wait_until 60 "campaign b sent" all_sent "$CB" 10

# --- 1. status callbacks ---
for i in 1 2 3 4 5 6; do eval "S$i=\$(sid_of b$i $CB)"; done
status_cb "$S1" sent
status_cb "$S1" delivered
status_cb "$S1" delivered               # repeated
status_cb "$S1" undelivered 30003       # late, after a final state
status_cb "$S2" undelivered 30003
status_cb "$S2" delivered               # a final state never goes back
status_cb "$S3" delivered               # out of order: delivered before sent
status_cb "$S3" sent
status_cb "$S4" failed 30008
status_cb "$S5" queued
status_cb "$S5" sending
status_cb "$S5" sent
status_cb "$S6" delivered "" "$OTHER"   # another tenant's callback for our message
t_wait_until 20 "status callbacks applied" settled
assert_eq "$(row_of b1 "$CB")" "delivered|delivered||true" "sent, delivered, repeated, late undelivered"
assert_eq "$(row_of b2 "$CB")" "undelivered|undelivered|30003|false" "undelivered stays, with its code"
assert_eq "$(row_of b3 "$CB")" "delivered|delivered||true" "delivered before sent"
assert_eq "$(row_of b4 "$CB")" "failed|failed|30008|false" "failed receipt"
assert_eq "$(row_of b5 "$CB")" "sent|sent||false" "queued, sending, sent: still sent"
assert_eq "$(row_of b6 "$CB")" "sent|||false" "another tenant's callback changed nothing"
assert_eq "$(q "SELECT count(*) FROM inbound_seen WHERE tenant_id = $T_TENANT AND key LIKE '$S1:%'")" 3 \
  "one dedupe key per (sid, status)"
stats_true "$CB"

# --- 2. replies, opt-out keywords ---
STOPS=(STOP stop " Stop " UNSUBSCRIBE End quit StopAll revoke OPTOUT "cancel.")
for i in $(seq 1 100); do
  phone="+1555200$(printf '%04d' "$i")"
  if [ "$i" -gt 90 ]; then
    reply "$phone" "${STOPS[$((i - 91))]}" "SMreply$i"
  elif [ "$i" -eq 7 ]; then
    reply "$phone" "stopping by tomorrow, yes" "SMreply$i" # not a keyword
  else
    reply "$phone" "Yes please $i" "SMreply$i"
  fi
done
t_wait_until 30 "replies applied" settled
assert_eq "$(q "SELECT count(*) FROM deliveries WHERE campaign_id = $CA AND status = 'responded'
  AND responded_at IS NOT NULL")" 90 "90 replies counted as responses"
assert_eq "$(q "SELECT count(*) FROM deliveries WHERE campaign_id = $CA AND status = 'sent'
  AND opted_out_at IS NOT NULL")" 10 "the 10 STOP replies are opt-outs on their deliveries, not responses"
assert_eq "$(q "SELECT count(*) FROM customers WHERE tenant_id = $T_TENANT AND sms_opt_out")" 10 \
  "10 customers opted out of SMS"
assert_eq "$(q "SELECT string_agg(c.external_id, ',' ORDER BY c.id) FROM customers c
  WHERE c.tenant_id = $T_TENANT AND c.sms_opt_out")" "a91,a92,a93,a94,a95,a96,a97,a98,a99,a100" \
  "the customers who sent a keyword"
assert_eq "$(q "SELECT count(*) FROM suppressions WHERE tenant_id = $T_TENANT AND channel = 'sms'
  AND reason = 'stop_keyword' AND address LIKE '+1555200%'")" 10 "10 suppressions"
assert_eq "$(q "SELECT count(*) FROM messages WHERE tenant_id = $T_TENANT AND direction = 'inbound'
  AND channel = 'sms' AND delivery_id IS NOT NULL AND customer_id IS NOT NULL")" 100 \
  "every reply stored, attributed to its delivery"
assert_eq "$(q "SELECT body || '|' || (meta->>'keyword') FROM messages WHERE provider_message_id = 'SMreply91'")" \
  "STOP|stop" "the STOP message keeps its keyword"
stats_true "$CA"

responded_at=$(q "SELECT responded_at FROM deliveries d JOIN customers c ON c.id = d.customer_id
  WHERE c.external_id = 'a1' AND d.campaign_id = $CA")
reply +15552000001 "and another thing" SMsecond1   # a second reply
reply +15552000002 "Yes please 2" SMreply2          # a repeated MessageSid
reply +15552000003 " help " SMhelp3
reply +15552000091 START SMstart91
reply +19995550000 "who is this" SMstranger
t_wait_until 20 "second replies applied" settled
assert_eq "$(q "SELECT count(*) FROM deliveries WHERE campaign_id = $CA AND status = 'responded'")" 91 \
  "a second reply counts once; a91's START is its answer"
assert_eq "$(q "SELECT responded_at FROM deliveries d JOIN customers c ON c.id = d.customer_id
  WHERE c.external_id = 'a1' AND d.campaign_id = $CA")" "$responded_at" "responded_at set once"
assert_eq "$(q "SELECT count(*) FROM messages WHERE provider_message_id = 'SMreply2'")" 1 \
  "a repeated MessageSid is stored once"
assert_eq "$(q "SELECT meta->>'keyword' FROM messages WHERE provider_message_id = 'SMhelp3'")" help \
  "HELP is recorded with its keyword"
assert_eq "$(q "SELECT sms_opt_out FROM customers WHERE tenant_id = $T_TENANT AND external_id = 'a91'")" f \
  "START opts back in"
assert_eq "$(q "SELECT count(*) FROM suppressions WHERE tenant_id = $T_TENANT AND address = '+15552000091'")" 0 \
  "START lifts the stop-keyword suppression"
assert_eq "$(q "SELECT (delivery_id IS NULL) || '|' || (customer_id IS NULL) FROM messages
  WHERE provider_message_id = 'SMstranger'")" "true|true" "a text from an unknown number is kept"
assert_eq "$(q "SELECT count(*) FROM messages WHERE tenant_id = $T_TENANT AND direction = 'inbound'")" 104 \
  "104 inbound messages"
stats_true "$CA"

# --- 3. the next campaign skips the customers still opted out ---
CA2=$(campaign a)
t_wait_campaign_done "$CA2" 60
assert_eq "$(q "SELECT count(*) FROM deliveries WHERE campaign_id = $CA2 AND status = 'sent'")" 91 \
  "the next campaign reached the 91 customers not opted out"
assert_status 200 GET "$FAKE_URL/_fake/stats"
jq -r 'select(.kind == "message") | .to' "$FAKE_RECORD" | sort | uniq -c |
  awk '$1 > 1 { print $2 }' >"$T_DIR/twice"
assert_eq "$(wc -l <"$T_DIR/twice")" 91 "91 customers got a second message"
for i in $(seq 92 100); do
  if grep -qx "+1555200$(printf '%04d' "$i")" "$T_DIR/twice"; then t_fail "a$i opted out and was sent again"; fi
done
stats_true "$CA2"

# --- 4. malformed entries ---
xadd body "SECRETBODY1" tenant "$T_TENANT"                       # no kind
xadd kind twilio_fax tenant "$T_TENANT" body "SECRETBODY2"       # unknown kind
xadd kind twilio_status tenant abc body "$(form MessageSid "$S6" MessageStatus delivered)"
xadd kind twilio_status tenant "$T_TENANT" body "SECRETBODY3=1"  # no sid, no status
xadd kind twilio_status tenant "$T_TENANT" body "$(form MessageSid "bad sid;" MessageStatus delivered)"
xadd kind twilio_sms tenant "$T_TENANT" body "Body=SECRETBODY4"  # no MessageSid, no From
xadd kind sendgrid_events tenant "$T_TENANT" body "SECRETBODY5 is not JSON"
xadd kind twilio_gather tenant "$T_TENANT" q 1 body "SpeechResult=SECRETBODY6"
xadd kind twilio_status tenant 999999 body "$(form MessageSid "$S6" MessageStatus delivered)" # no such tenant
status_cb "$S6" delivered # a good one after them
t_wait_until 20 "malformed entries acknowledged" settled
assert_eq "$(row_of b6 "$CB")" "delivered|delivered||true" "entries after malformed ones are applied"
t_alive worker || t_fail "the worker died on malformed entries"
assert_ge "$(grep -c 'acknowledged' "$T_DIR/worker.log")" 8 "malformed entries logged"
if grep -q "SECRETBODY\|Yes please\|who is this" "$T_DIR/worker.log"; then
  t_fail "an inbound body reached the log"
fi
stats_true "$CB"
echo "inbound_sms ok"
