#!/usr/bin/env bash
# A call's TwiML (issue 6 item 3), driven the way Twilio drives it, every request signed
# (X-Twilio-Signature over the URL and the sorted form parameters) with the tenant's auth
# token. Scripted agent: POST (or GET) /twilio/voice?delivery=D says the greeting (customer
# variables filled in, everything XML-escaped) and asks question 0 in a <Gather> whose action
# is /twilio/gather?delivery=D&q=0; each answer goes to the inbound stream (kind
# twilio_gather, delivery, q, the raw body) and the next question comes back; after the last,
# the closing and <Hangup/>. AI agent: <Connect> to <ConversationRelay> or <Stream> with the
# delivery as a <Parameter>, whose action (gather without q) is recorded and hangs up. A bad
# or missing signature is a 403 and records nothing; an unknown or another tenant's delivery
# gets a polite <Say> + <Hangup/> (logged), not an error. An answer is recorded before the
# script is looked up: also for a delivery that cannot be served (the worker drops it), and
# while PostgreSQL is down (the call then ends with the apology, not a 503 for an answer
# already recorded; the call's first TwiML is a 503). Redis down: the answer is not
# acknowledged (503). Stopped while an answer's XADD waits for a frozen Redis, the API answers
# that request before freeing it and exits cleanly (a sanitizer build reports nothing).
. "$(dirname "$0")/../lib.sh"
t_init voice_twiml
t_tenant_key tenant_a
TA=$T_TENANT
AUTH_TOKEN=fake-auth-token-a
ACCOUNT=AC0000000000000000000000000000000a
CRIER_PROVIDER_SECRET=$AUTH_TOKEN t_ctl provider create "$TA" --channel voice --kind twilio \
  --from +15550100000 --account-sid "$ACCOUNT" >/dev/null
export CRIER_SHUTDOWN_GRACE=0 # the API exits as soon as it is told to
t_start_api

# sign URL [NAME=VALUE]...: the X-Twilio-Signature Twilio sends.
sign() {
  local data=$1 p
  shift
  while IFS= read -r p; do
    [ -n "$p" ] && data+="${p%%=*}${p#*=}"
  done < <(printf '%s\n' "$@" | LC_ALL=C sort)
  printf '%s' "$data" | openssl dgst -sha1 -hmac "$AUTH_TOKEN" -binary | base64
}
# twilio METHOD URL [NAME=VALUE]...: a signed request (form body for POST); T_STATUS, T_BODY.
twilio() {
  local method=$1 url=$2 p args=()
  shift 2
  for p in "$@"; do args+=(--data-urlencode "$p"); done
  _t_curl "$method" "$url" -H "X-Twilio-Signature: $(sign "$url" "$@")" "${args[@]}"
}
CALL=(CallSid=CA00000000000000000000000000000001 "AccountSid=$ACCOUNT" From=+15550100000
  To=+14155550101 CallStatus=in-progress)
FORM=() # CALL as curl arguments
for p in "${CALL[@]}"; do FORM+=(--data-urlencode "$p"); done
# The <Gather> action (or <Connect> action) of the last TwiML, unescaped.
action_of() {
  sed -n "s/.*<$1[^>]*action=\"\([^\"]*\)\".*/\1/p" <<<"$T_BODY" | sed 's/&amp;/\&/g'
}
events() { t_redis XLEN crier:inbound; }
# last_event FIELD: a field of the newest inbound stream entry.
last_event() {
  t_redis XREVRANGE crier:inbound + - COUNT 1 | tail -n +2 | paste - - |
    awk -F '\t' -v f="$1" '$1 == f { print $2 }'
}

AGENT=$(jq -c . <<'EOF'
{"name": "Survey", "campaign_type": "research", "system_prompt": "Be kind.",
 "greeting": "Hi {{first_name|there}}, this is <Ava> from {{attributes.clinic.name|us}}.",
 "questions": [
   {"id": "ok", "type": "yes_no", "text": "Is now a \"good\" time? Press 1 for yes & 2 for no."},
   {"id": "why", "type": "choice", "text": "Why did you stop?", "choices": ["Price & time", "Other"]},
   {"id": "more", "type": "open", "text": "Anything else?"}],
 "closing": "Thanks, that's all!",
 "expected_outcomes": [{"id": "done", "description": "Answered"}],
 "voice": {"language": "en-GB", "voice": "Polly.Amy-Neural"}}
EOF
)
t_api POST /v1/campaigns "{\"name\":\"survey\",\"channel\":\"voice\",\"segment\":{},\"agent_config\":$AGENT}"
assert_eq "$T_STATUS" 201 "scripted voice campaign: $T_BODY"
CS=$(json_get .id)
relay=$(jq -c '. + {agent: {mode: "conversation_relay", url: "wss://ai.example/relay?a=1&b=2"}}' <<<"$AGENT")
t_api POST /v1/campaigns "{\"name\":\"relay\",\"channel\":\"voice\",\"segment\":{},\"agent_config\":$relay}"
assert_eq "$T_STATUS" 201 "AI agent campaign: $T_BODY"
CR=$(json_get .id)
stream=$(jq -c '. + {agent: {mode: "stream", url: "wss://ai.example:8443/audio"}}' <<<"$AGENT")
t_api POST /v1/campaigns "{\"name\":\"stream\",\"channel\":\"voice\",\"segment\":{},\"agent_config\":$stream}"
assert_eq "$T_STATUS" 201 "stream campaign: $T_BODY"
CST=$(json_get .id)
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, phone, attributes)
        VALUES ($TA, 'v1', 'O''Brien & Co', '+14155550101', '{\"clinic\": {\"name\": \"Bright <Smiles>\"}}')" >/dev/null
new_delivery() { # TENANT CAMPAIGN EXTERNAL_ID
  t_psql "INSERT INTO deliveries (tenant_id, campaign_id, customer_id, channel, status, provider,
            provider_message_id, sent_at)
          SELECT $1, $2, id, 'voice', 'sent', 'twilio', 'CA' || md5(random()::text), now()
          FROM customers WHERE tenant_id = $1 AND external_id = '$3' RETURNING id"
}
D=$(new_delivery "$TA" "$CS" v1)
DR=$(new_delivery "$TA" "$CR" v1)
DS=$(new_delivery "$TA" "$CST" v1)
HOOK="$API_URL/v1/webhooks/$TA/twilio"
SAY='<Say voice="Polly.Amy-Neural" language="en-GB">'

# The call connects: greeting and question 0.
twilio POST "$HOOK/voice?delivery=$D" "${CALL[@]}"
assert_eq "$T_STATUS" 200 "voice TwiML: $T_BODY"
assert_contains "$T_BODY" '<?xml version="1.0" encoding="UTF-8"?><Response>' "a TwiML document"
assert_contains "$T_BODY" "${SAY}Hi O&apos;Brien &amp; Co, this is &lt;Ava&gt; from Bright &lt;Smiles&gt;.</Say>" \
  "the greeting with the customer's variables, escaped"
assert_contains "$T_BODY" "<Gather input=\"speech dtmf\" action=\"$HOOK/gather?delivery=$D&amp;q=0\" method=\"POST\" language=\"en-GB\"" \
  "question 0 gathers speech and keys, answered to the gather URL"
assert_contains "$T_BODY" "${SAY}Is now a &quot;good&quot; time? Press 1 for yes &amp; 2 for no.</Say></Gather>" \
  "question 0, escaped"
assert_eq "$(events)" 0 "fetching the script records nothing"
first=$T_BODY
curl -sS -o /dev/null -D "$T_DIR/h" -X POST "$HOOK/voice?delivery=$D" \
  -H "X-Twilio-Signature: $(sign "$HOOK/voice?delivery=$D" "${CALL[@]}")" \
  "${FORM[@]}"
assert_contains "$(tr -d '\r' <"$T_DIR/h")" "Content-Type: text/xml" "served as text/xml"
twilio GET "$HOOK/voice?delivery=$D"
assert_eq "$T_STATUS" 200 "GET works too (a signed URL, no body)"
assert_eq "$T_BODY" "$first" "the same document"

# Answer every question as Twilio would, following the actions.
url=$(action_of Gather)
for q in 0 1 2; do
  assert_eq "$url" "$HOOK/gather?delivery=$D&q=$q" "question $q's action"
  twilio POST "$url" "${CALL[@]}" "SpeechResult=answer $q & more" Confidence=0.9 Digits=$((q + 1))
  assert_eq "$T_STATUS" 200 "answer $q accepted: $T_BODY"
  assert_eq "$(events)" $((q + 1)) "answer $q recorded"
  assert_eq "$(last_event kind)|$(last_event tenant)|$(last_event delivery)|$(last_event q)" \
    "twilio_gather|$TA|$D|$q" "answer $q's entry"
  body=$(last_event body)
  assert_contains "$body" "SpeechResult=answer+$q+%26+more" "answer $q's raw body"
  assert_contains "$body" "Digits=$((q + 1))" "answer $q's keys"
  [ "$q" -lt 2 ] && url=$(action_of Gather)
  [ "$q" = 0 ] && assert_contains "$T_BODY" 'numDigits="1" hints="Price &amp; time, Other">' \
    "a choice question takes one key and hints its choices"
done
assert_eq "$T_BODY" "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>${SAY}Thanks, that&apos;s all!</Say><Hangup/></Response>" \
  "after the last answer: the closing, then hang up"

# AI agents: ConversationRelay or Stream, the delivery as a parameter.
twilio POST "$HOOK/voice?delivery=$DR" "${CALL[@]}"
assert_eq "$T_STATUS" 200 "relay TwiML"
assert_contains "$T_BODY" "<Connect action=\"$HOOK/gather?delivery=$DR\" method=\"POST\"><ConversationRelay url=\"wss://ai.example/relay?a=1&amp;b=2\" welcomeGreeting=\"Hi O&apos;Brien &amp; Co, this is &lt;Ava&gt; from Bright &lt;Smiles&gt;.\" language=\"en-GB\"><Parameter name=\"tenant\" value=\"$TA\"/><Parameter name=\"delivery\" value=\"$DR\"/></ConversationRelay></Connect>" \
  "bridged to the relay"
case "$T_BODY" in *"<Gather"*) t_fail "no script for an AI agent" ;; esac
n=$(events)
twilio POST "$(action_of Connect)" "${CALL[@]}" SessionStatus=completed 'HandoffData={"outcome":"done"}'
assert_eq "$T_STATUS" 200 "the Connect action"
assert_eq "$T_BODY" '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>' "then hang up"
assert_eq "$(events)" $((n + 1)) "the agent's result recorded"
assert_eq "$(last_event kind)|$(last_event delivery)|$(last_event q)" "twilio_gather|$DR|" \
  "as a gather without q"
assert_contains "$(last_event body)" "HandoffData=%7B%22outcome%22%3A%22done%22%7D" "with its body"
twilio POST "$HOOK/voice?delivery=$DS" "${CALL[@]}"
assert_contains "$T_BODY" "<Connect action=\"$HOOK/gather?delivery=$DS\" method=\"POST\"><Stream url=\"wss://ai.example:8443/audio\"><Parameter name=\"tenant\" value=\"$TA\"/><Parameter name=\"delivery\" value=\"$DS\"/></Stream></Connect>" \
  "bridged to a stream"

# Signatures: missing, wrong token, or made for another URL: 403, nothing recorded.
n=$(events)
assert_status 403 POST "$HOOK/gather?delivery=$D&q=0" --data-urlencode "${CALL[0]}"
assert_status 403 POST "$HOOK/voice?delivery=$D" -H "X-Twilio-Signature: $(sign "$HOOK/voice?delivery=$D")" \
  --data-urlencode "SpeechResult=x"
assert_status 403 POST "$HOOK/gather?delivery=$D&q=1" -H "X-Twilio-Signature: $(sign "$HOOK/gather?delivery=$D&q=0" "${CALL[@]}")" \
  "${FORM[@]}"
assert_status 403 GET "$HOOK/voice?delivery=$D" -H "X-Twilio-Signature: $(AUTH_TOKEN=wrong sign "$HOOK/voice?delivery=$D")"
assert_eq "$(json_get .error.code)" invalid_signature "the JSON error"
assert_eq "$(events)" "$n" "no forged answer recorded"

# Deliveries we cannot serve: unknown, another tenant's, a broken URL: a polite goodbye. The
# answer to a well-formed gather URL is recorded all the same; a broken URL records nothing.
t_tenant_key tenant_b
t_psql "INSERT INTO customers (tenant_id, external_id, phone) VALUES ($T_TENANT, 'b1', '+14155550199')" >/dev/null
CB=$(t_psql "INSERT INTO campaigns (tenant_id, name, channel, agent_config)
             VALUES ($T_TENANT, 'b', 'voice', '${AGENT//\'/\'\'}') RETURNING id")
DB=$(new_delivery "$T_TENANT" "$CB" b1)
GOODBYE='<?xml version="1.0" encoding="UTF-8"?><Response><Say language="en-US">Sorry, we cannot continue this call. Goodbye.</Say><Hangup/></Response>'
for path in "voice?delivery=$((DS + 1000))" "voice?delivery=$DB" "voice?delivery=x" voice \
  "gather?delivery=$DB&q=0" "gather?delivery=$D&q=x"; do
  twilio POST "$HOOK/$path" "${CALL[@]}" SpeechResult=hello
  assert_eq "$T_STATUS" 200 "$path: TwiML, not an error"
  assert_eq "$T_BODY" "$GOODBYE" "$path: a polite goodbye"
done
assert_eq "$(events)" $((n + 1)) "only the well-formed gather's answer recorded"
assert_eq "$(last_event kind)|$(last_event tenant)|$(last_event delivery)|$(last_event q)" \
  "twilio_gather|$TA|$DB|0" "as the signed URL says (the worker finds no such call of $TA)"
assert_contains "$(cat "$T_DIR/api.log")" "no voice delivery $DB here" "logged"

# PostgreSQL down (this test's database refuses connections): an answer is still recorded,
# then the call ends politely; the call's first TwiML is a 503 (Twilio's fallback URL).
t_psql_admin "ALTER DATABASE \"$T_DB\" ALLOW_CONNECTIONS false" >/dev/null
t_psql_admin "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '$T_DB'" >/dev/null
n=$(events)
twilio POST "$HOOK/gather?delivery=$D&q=1" "${CALL[@]}" "SpeechResult=call me later"
assert_eq "$T_STATUS" 200 "an answer while PostgreSQL is down: $T_BODY"
assert_eq "$T_BODY" "$GOODBYE" "the call ends with the apology"
assert_eq "$(events)" $((n + 1)) "the answer is recorded"
assert_eq "$(last_event delivery)|$(last_event q)" "$D|1" "with its delivery and question"
assert_contains "$(last_event body)" "SpeechResult=call+me+later" "and its body"
twilio POST "$HOOK/voice?delivery=$D" "${CALL[@]}"
assert_eq "$T_STATUS" 503 "the call's script needs PostgreSQL"
assert_contains "$(tail -n 20 "$T_DIR/api.log")" "answer for delivery $D recorded, no script" "logged"
t_psql_admin "ALTER DATABASE \"$T_DB\" ALLOW_CONNECTIONS true" >/dev/null
voice_ok() {
  twilio POST "$HOOK/voice?delivery=$D" "${CALL[@]}"
  [ "$T_STATUS" = 200 ]
}
t_wait_until 20 "the API reaches PostgreSQL again" voice_ok

# Redis down: the script is still served, an answer is not acknowledged.
t_redis_kill
twilio POST "$HOOK/voice?delivery=$D" "${CALL[@]}"
assert_eq "$T_STATUS" 200 "the script needs PostgreSQL only"
twilio POST "$HOOK/gather?delivery=$D&q=0" "${CALL[@]}" SpeechResult=yes
assert_eq "$T_STATUS" 503 "an answer that cannot be recorded is refused"
t_redis_start

# Stopped (grace 0) while an answer's XADD waits for Redis, frozen: the pending XADD is
# answered before the server frees its request; the API exits cleanly.
gather_ok() {
  twilio POST "$HOOK/gather?delivery=$D&q=2" "${CALL[@]}" SpeechResult=again
  [ "$T_STATUS" = 200 ]
}
t_wait_until 20 "the API back on Redis" gather_ok
REDIS_PID=$(crier_pid_of "$T_DIR/redis/redis.pid")
kill -STOP "$REDIS_PID"
twilio POST "$HOOK/gather?delivery=$D&q=2" "${CALL[@]}" SpeechResult=frozen &
CURL_PID=$!
sleep 1
t_stop api 10
kill -CONT "$REDIS_PID"
wait "$CURL_PID" || true
assert_contains "$(cat "$T_DIR/api.log")" "grace period over with 1 requests in flight" \
  "stopped with the answer's XADD pending"
assert_contains "$(tail -n 3 "$T_DIR/api.log")" "redis unavailable: connection lost" \
  "the pending request answered as the connection closed"
if grep -Eq 'Assertion|\[err\]' "$T_DIR/api.log"; then t_fail "the API failed on exit: $(tail -n 3 "$T_DIR/api.log")"; fi
echo "voice_twiml ok"
