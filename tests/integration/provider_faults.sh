#!/usr/bin/env bash
# Sends against a faulty provider (the fake Twilio's fault injection), issue 5 items 3-5:
# 1. Provider rate: an account's rate_per_second holds across two workers together, and an
#    SMS costs its segments: 60 two-segment messages at 20 segments/s take at least
#    (120 - 20 burst) / 20 = 5 s (a per-worker bucket would halve it, ignoring segments
#    would halve it again).
# 2. 429: every answer is 429 (Retry-After 2) for 3 s, then none: everyone is sent once,
#    no delivery used up an attempt on a 429, and the paused account was not hammered (far
#    fewer 429s than a worker retrying at will would draw).
# 3. 500s: 30 % of answers are 500 with 3 attempts at most and a 200 ms base backoff: every
#    delivery ends sent or failed; the retried ones went back through crier:delayed and were
#    sent on a later attempt; each failed one used its 3 attempts and has a crier:dlq entry;
#    the provider saw no duplicate.
# 4. Lost replies: requests the provider accepted but never answered (paccept_timeout) and
#    requests never processed nor answered (ptimeout) end 'unknown' after the send timeout
#    and are never sent again (the provider counts one request each, no duplicate).
. "$(dirname "$0")/../lib.sh"
t_init provider_faults
t_tenant_key
t_start_fake_twilio
T_PROVIDER=$(CRIER_PROVIDER_SECRET=fake-auth-token t_ctl provider create "$T_TENANT" --channel sms \
  --kind twilio --from +15550100000 --rate 20 --account-sid AC00000000000000000000000000000000)
t_start_api
t_start_dispatcher
export CRIER_RETRY_BASE_MS=200 CRIER_MAX_ATTEMPTS=3 CRIER_SEND_TIMEOUT_MS=1500
t_start_worker 1
t_start_worker 2

fake_config() { assert_status 200 POST "$FAKE_URL/_fake/config" -d "$1"; }
fake_stat() { assert_status 200 GET "$FAKE_URL/_fake/stats" && json_get ".$1"; }
q() { t_psql "$1"; }
add_customers() { # TAG N FIRST
  q "INSERT INTO customers (tenant_id, external_id, first_name, phone, tags)
     SELECT $T_TENANT, '$1-' || g, 'N' || g, '+1555' || lpad(($3 + g)::text, 7, '0'), '{$1}'
     FROM generate_series(1, $2) g" >/dev/null
}
campaign() { # TAG BODY -> CID
  t_api POST /v1/campaigns "{\"name\":\"$1\",\"channel\":\"sms\",\"message\":{\"body\":\"$2\"},
    \"segment\":{\"tags\":[\"$1\"]},\"send_window\":{\"start\":\"00:00\",\"end\":\"24:00\"}}"
  assert_eq "$T_STATUS" 201 "campaign $1 created: $T_BODY"
  local cid
  cid=$(json_get .id)
  t_api POST "/v1/campaigns/$cid/launch"
  assert_eq "$T_STATUS" 202 "campaign $1 launched"
  echo "$cid"
}
terminal() { # CID N
  [ "$(q "SELECT count(*) FROM deliveries WHERE campaign_id = $1
          AND status IN ('sent', 'failed', 'unknown', 'skipped')")" = "$2" ]
}

# --- 1. the account's rate, in segments, across both workers ---
LONG=$(printf 'x%.0s' $(seq 1 200)) # 200 GSM-7 characters: 2 segments
add_customers rate 60 1000
C1=$(campaign rate "$LONG")
t_wait_until 60 "rate campaign sent" terminal "$C1" 60
span=$(q "SELECT extract(epoch FROM max(sent_at) - min(sent_at)) FROM deliveries WHERE campaign_id = $C1")
t_log "60 two-segment messages at 20 segments/s over two workers took ${span}s (>= 5 s expected)"
assert_eq "$(q "SELECT count(*) FROM deliveries WHERE campaign_id = $C1 AND status = 'sent'")" 60 \
  "all sent"
awk -v s="$span" 'BEGIN { exit !(s >= 4.5) }' || t_fail "the account's rate was not held: ${span}s"
awk -v s="$span" 'BEGIN { exit !(s <= 20) }' || t_fail "far slower than the rate: ${span}s"
assert_eq "$(fake_stat duplicates)" 0 "no duplicate"

# --- 2. 429s pause the account, and use up no attempt ---
assert_status 200 POST "$FAKE_URL/_fake/reset"
q "UPDATE provider_accounts SET rate_per_second = 100000 WHERE id = $T_PROVIDER" >/dev/null
t_stop worker-1
t_stop worker-2
t_start_worker 1
t_start_worker 2
fake_config '{"p429":1,"retry_after":2}'
add_customers throttle 200 2000
C2=$(campaign throttle "Hi {{first_name}}")
t_wait_until 20 "the first 429s" bash -c "[ \"\$(curl -s $FAKE_URL/_fake/stats | jq .faults_429)\" -gt 0 ]"
sleep 3
fake_config '{"p429":0}'
t_wait_until 60 "throttled campaign sent" terminal "$C2" 200
n429=$(fake_stat faults_429)
t_log "429s answered: $n429 for 200 deliveries"
assert_eq "$(q "SELECT count(*) FROM deliveries WHERE campaign_id = $C2 AND status = 'sent'")" 200 \
  "everyone sent after the 429s"
assert_eq "$(q "SELECT max(attempts) FROM deliveries WHERE campaign_id = $C2")" 1 \
  "a 429 used up no attempt"
assert_eq "$(fake_stat accepted)" 200 "each accepted once"
assert_eq "$(fake_stat duplicates)" 0 "no duplicate"
# Without the pause, 200 deliveries retried every 2 s for 3 s would draw ~400 429s; with
# it, the account waits: the first wave in flight and about one probe per pause.
assert_le "$n429" 300 "the paused account was not hammered"

# --- 3. 500s: retries through crier:delayed, attempts exhausted -> failed + DLQ ---
assert_status 200 POST "$FAKE_URL/_fake/reset"
fake_config '{"p500":0.3,"seed":7}'
add_customers flaky 300 3000
C3=$(campaign flaky "Hello {{first_name}}")
t_wait_until 90 "flaky campaign terminal" terminal "$C3" 300
fake_config '{"p500":0}'
read -r sent failed retried_sent <<<"$(q "SELECT count(*) FILTER (WHERE status = 'sent'),
  count(*) FILTER (WHERE status = 'failed'),
  count(*) FILTER (WHERE status = 'sent' AND attempts > 1)
  FROM deliveries WHERE campaign_id = $C3" | tr '|' ' ')"
t_log "500s: $sent sent ($retried_sent after a retry), $failed failed; 500s drawn: $(fake_stat faults_500)"
assert_eq "$((sent + failed))" 300 "every delivery sent or failed"
assert_ge "$retried_sent" 1 "retried deliveries were sent on a later attempt"
assert_eq "$(q "SELECT count(*) FROM deliveries WHERE campaign_id = $C3 AND status = 'failed'
               AND (attempts <> 3 OR error_code <> '20500')")" 0 "failed ones used their 3 attempts on 500s"
dlq=$(t_redis --raw XRANGE crier:dlq - + | grep -c '^d$' || true)
assert_eq "$dlq" "$failed" "one crier:dlq entry per failed delivery"
assert_eq "$(fake_stat accepted)" "$sent" "the provider accepted exactly the sent ones"
assert_eq "$(fake_stat duplicates)" 0 "no duplicate"
assert_eq "$(q "SELECT count(*) FROM deliveries WHERE campaign_id = $C3 AND status = 'retry'")" 0 \
  "no retry left behind"

# --- 4. lost replies: unknown, never sent again ---
assert_status 200 POST "$FAKE_URL/_fake/reset"
fake_config '{"paccept_timeout":0.5,"ptimeout":0.5,"timeout_ms":5000,"seed":3}'
add_customers lost 20 4000
C4=$(campaign lost "Lost {{first_name}}")
t_wait_until 60 "lost-reply campaign terminal" terminal "$C4" 20
fake_config '{"paccept_timeout":0,"ptimeout":0}'
sleep 2
unknown=$(q "SELECT count(*) FROM deliveries WHERE campaign_id = $C4 AND status = 'unknown'")
t_log "lost replies: $unknown unknown; accepted without a reply: $(fake_stat faults_accept_timeout)"
assert_eq "$unknown" 20 "every delivery whose reply was lost is unknown"
assert_eq "$(fake_stat requests)" 20 "each was requested once, never again"
assert_eq "$(fake_stat duplicates)" 0 "no duplicate"
echo "provider_faults ok"
