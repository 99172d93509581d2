#!/usr/bin/env bash
# The worker's inbound consumer on calls (issue 6 item 2), fed straight into crier:inbound
# with XADD after a real voice campaign through the fake Twilio:
# 1. Call status callbacks: progress events change nothing but provider_status; completed
#    makes the delivery 'delivered' (AnsweredBy kept in answered_by); busy, no-answer,
#    failed and canceled make it 'undelivered' with the call status as the error code; a
#    late or repeated callback changes nothing.
# 2. <Gather> answers: stored as inbound voice messages with meta {q, confidence, digits}
#    linked to the delivery, which becomes 'responded' once (also when the call's
#    'completed' callback comes later); a repeated answer is stored once; an answer naming
#    another tenant's delivery, or a call sid that is not the delivery's, changes nothing.
. "$(dirname "$0")/../lib.sh"
t_init inbound_voice
t_tenant_key
t_start_fake_twilio
T_PROVIDER=$(CRIER_PROVIDER_SECRET=fake-auth-token t_ctl provider create "$T_TENANT" \
  --channel voice --kind twilio --from +15550100000 --rate 100 \
  --account-sid AC00000000000000000000000000000000)
OTHER=$(t_ctl tenant create other) || t_fail "tenant create"
t_start_api
t_start_dispatcher
t_start_worker

q() { t_psql "$1"; }
form() {
  local out='' v
  while [ $# -gt 1 ]; do
    v=$(jq -rn --arg v "$2" '$v | @uri')
    out+="${out:+&}$1=$v"
    shift 2
  done
  printf '%s' "$out"
}
xadd() { t_redis XADD crier:inbound '*' "$@" >/dev/null; }
call_cb() { # SID STATUS [ANSWEREDBY] [TENANT]
  xadd kind twilio_status tenant "${4:-$T_TENANT}" body "$(form CallSid "$1" CallStatus "$2" \
    AnsweredBy "${3:-}" CallDuration 12 AccountSid AC00000000000000000000000000000000)"
}
gather() { # DELIVERY Q CALLSID SPEECH DIGITS [TENANT]
  xadd kind twilio_gather tenant "${6:-$T_TENANT}" delivery "$1" q "$2" body "$(form CallSid "$3" \
    SpeechResult "$4" Digits "$5" Confidence 0.87 AccountSid AC00000000000000000000000000000000)"
}
settled() {
  local info pending lag
  info=$(t_redis XINFO GROUPS crier:inbound | tr '\n' ' ')
  pending=$(sed -n 's/.*pending \([0-9]*\).*/\1/p' <<<"$info")
  lag=$(sed -n 's/.*lag \([0-9]*\).*/\1/p' <<<"$info")
  [ "${pending:-1}" = 0 ] && [ "${lag:-1}" = 0 ]
}
id_of() { q "SELECT d.id FROM deliveries d JOIN customers c ON c.id = d.customer_id
             WHERE c.external_id = '$1' AND d.campaign_id = $CID"; }
sid_of() { q "SELECT provider_message_id FROM deliveries WHERE id = $(id_of "$1")"; }
row_of() { q "SELECT status || '|' || COALESCE(provider_status, '') || '|' || COALESCE(error_code, '')
                || '|' || COALESCE(answered_by, '') || '|' || (delivered_at IS NOT NULL)
                || '|' || (responded_at IS NOT NULL)
              FROM deliveries WHERE id = $(id_of "$1")"; }

N=12
q "INSERT INTO customers (tenant_id, external_id, first_name, phone)
   SELECT $T_TENANT, 'v' || g, 'N' || g, '+1555400' || lpad(g::text, 4, '0')
   FROM generate_series(1, $N) g" >/dev/null
t_api POST /v1/campaigns '{"name":"calls","channel":"voice","agent_template_id":"reactivation",
  "segment":{"has_phone":true},"send_window":{"start":"00:00","end":"24:00"}}'
assert_eq "$T_STATUS" 201 "voice campaign created: $T_BODY"
CID=$(json_get .id)
t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 202 "voice campaign launched"
t_wait_until 60 "calls placed" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c \"SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status = 'sent'\")\" = $N ]"

# --- 1. call status callbacks ---
for s in initiated ringing in-progress; do call_cb "$(sid_of v1)" "$s"; done
call_cb "$(sid_of v1)" completed human
call_cb "$(sid_of v1)" completed human   # repeated
call_cb "$(sid_of v1)" ringing           # late
call_cb "$(sid_of v2)" busy
call_cb "$(sid_of v3)" no-answer
call_cb "$(sid_of v4)" failed
call_cb "$(sid_of v5)" canceled
call_cb "$(sid_of v5)" completed         # a final state never goes back
call_cb "$(sid_of v6)" ringing
call_cb "$(sid_of v7)" completed machine_start
call_cb "$(sid_of v8)" completed human "$OTHER" # another tenant's callback
t_wait_until 20 "call callbacks applied" settled
assert_eq "$(row_of v1)" "delivered|completed||human|true|false" "completed: delivered, answered by a human"
assert_eq "$(row_of v2)" "undelivered|busy|busy||false|false" "busy"
assert_eq "$(row_of v3)" "undelivered|no-answer|no-answer||false|false" "no-answer"
assert_eq "$(row_of v4)" "undelivered|failed|failed||false|false" "failed"
assert_eq "$(row_of v5)" "undelivered|canceled|canceled||false|false" "canceled, then a late completed"
assert_eq "$(row_of v6)" "sent|ringing|||false|false" "ringing is progress only"
assert_eq "$(row_of v7)" "delivered|completed||machine_start|true|false" "answered by a machine"
assert_eq "$(row_of v8)" "sent||||false|false" "another tenant's callback changed nothing"

# --- 2. gather answers ---
D9=$(id_of v9)
gather "$D9" 0 "$(sid_of v9)" "yes I would like to book" ""
gather "$D9" 1 "$(sid_of v9)" "" 2
gather "$D9" 1 "$(sid_of v9)" "" 2                 # repeated
t_wait_until 20 "answers applied" settled
call_cb "$(sid_of v9)" completed human             # the call ends after its answers
D10=$(id_of v10)
gather "$D10" 0 "$(sid_of v10)" "hello" "" "$OTHER" # another tenant
gather "$D10" 0 "$(sid_of v11)" "hello" ""          # not this delivery's call
gather "$(id_of v1)" 0 "$(sid_of v1)" "" ""         # no answer (timeout)
t_wait_until 20 "more answers applied" settled
assert_eq "$(row_of v9)" "responded|completed||human|true|true" "answered, then completed"
assert_eq "$(q "SELECT string_agg(body || '|' || meta::text, ';' ORDER BY id) FROM messages
  WHERE delivery_id = $D9 AND direction = 'inbound'")" \
  'yes I would like to book|{"q": 0, "confidence": 0.87};2|{"q": 1, "digits": "2", "confidence": 0.87}' \
  "answers stored once each, with their question, confidence and digits"
assert_eq "$(q "SELECT count(*) FROM messages WHERE delivery_id = $D9 AND direction = 'inbound' AND provider_message_id = '$(sid_of v9)'
  AND channel = 'voice' AND customer_id IS NOT NULL")" 2 "linked to the call and the customer"
assert_eq "$(row_of v10)" "sent||||false|false" "answers for another tenant or another call change nothing"
assert_eq "$(q "SELECT count(*) FROM messages WHERE delivery_id = $D10 AND direction = 'inbound'")" 0 \
  "and are not stored"
assert_eq "$(row_of v1)" "delivered|completed||human|true|false" "an empty gather is no answer"
t_api GET "/v1/campaigns/$CID/stats"
assert_eq "$(jq -c '[.counts.delivered, .counts.undelivered, .counts.responded, .counts.sent]' <<<"$T_BODY")" \
  "[2,4,1,5]" "stats: 2 delivered, 4 undelivered, 1 responded, 5 still sent"
echo "inbound_voice ok"
