#!/usr/bin/env bash
# The fake Twilio's voice endpoint and fault injection (issue 5, item 6), driven with curl.
#
# What each check proves:
# 1. Calls.json answers Twilio's validation codes (21201 To missing, 21211 To invalid, 21213
#    From missing, 21212 From invalid, 21205 no Url/Twiml or a bad Url, 32018 Twiml too
#    long, 21609 StatusCallback, 21626 StatusCallbackEvent, 21208 Timeout, 21234
#    MachineDetection / AsyncAmd), 20003 on bad credentials, and a 201 Call resource (CA sid,
#    queued, outbound-api); a second call with the same (To, Url) counts in call_duplicates,
#    calls are recorded with "kind":"call", and messages still work beside them.
# 2. /_fake/config is checked as a whole (unknown key, out of range, fractions over 1, not
#    an object: 400 and nothing changes).
# 3. p500=1: 500 with code 20500 on both endpoints, not accepted, not "rejected"; bad
#    credentials still get 401 first. p429=1: 429, code 20429, Retry-After: retry_after
#    (absent with retry_after 0).
# 4. latency_ms: API replies come that much later; the control endpoints do not.
# 5. ptimeout: no reply, the connection closed after timeout_ms; nothing accepted; a client
#    that gives up first frees the held request at once ("held" back to 0).
# 6. paccept_timeout: curl --max-time 1 times out, yet the message / call is accepted,
#    recorded with "reply_lost":true, and the same send again counts as a duplicate.
# 7. Fractions: 1,000 sends with p500 0.1 and p429 0.05 land near 10 % / 5 %, the status
#    codes seen equal the fault counters, and the same seed replays the same sequence.
# 8. /_fake/reset zeroes the fault counters and keeps the configuration; requests always
#    equal accepted + calls_accepted + rejected + faults_500 + faults_429 + faults_timeout.
# 9. Command-line options set the same knobs (--p429, --retry-after, --seed); invalid ones
#    make it exit 2.
. "$(dirname "$0")/../lib.sh"
t_init fake_twilio_faults
t_start_fake_twilio --seed 7

ACCT=AC00000000000000000000000000000000
TOKEN=fake-auth-token
TO=+15550001111
FROM=+15550100000

api() { printf '%s\n' "$FAKE_URL/2010-04-01/Accounts/$ACCT/$1.json"; }
# tw RESOURCE [CURL ARGS...]: authenticated form POST to Messages or Calls (T_STATUS, T_BODY).
tw() {
  local res=$1
  shift
  _t_curl POST "$(api "$res")" -u "$ACCT:$TOKEN" "$@"
}
msg() { tw Messages --data-urlencode "To=${1:-$TO}" --data-urlencode "From=$FROM" --data-urlencode "Body=${2:-hello}"; }
call() { tw Calls --data-urlencode "To=$TO" --data-urlencode "From=$FROM" "$@"; }
expect_error() { # STATUS CODE MSG
  assert_eq "$T_STATUS" "$1" "$3: HTTP status (body ${T_BODY:0:300})"
  assert_eq "$(json_get .code)" "$2" "$3: Twilio code"
  assert_eq "$(json_get .status)" "$1" "$3: status in the body"
}
config() {
  _t_curl POST "$FAKE_URL/_fake/config" --data-binary "$1"
  assert_eq "$T_STATUS" 200 "config $1 accepted (${T_BODY:0:300})"
}
stats() {
  assert_status 200 GET "$FAKE_URL/_fake/stats"
  STATS=$T_BODY
}
stat() { json_get ".$1" "$STATS"; }
check_invariant() {
  stats
  assert_eq "$(stat requests)" \
    "$(jq '.accepted + .calls_accepted + .rejected + .faults_500 + .faults_429 + .faults_timeout' <<<"$STATS")" \
    "requests = accepted + calls_accepted + rejected + faults ($STATS)"
}
held_is_zero() { stats && [ "$(stat held)" = 0 ]; }

# --- 1. Calls.json ---
URL='https://crier.example/twiml/42?d=1'
call; expect_error 400 21205 "no Url, Twiml or ApplicationSid"
tw Calls --data-urlencode "From=$FROM" --data-urlencode "Url=$URL"; expect_error 400 21201 "To missing"
tw Calls --data-urlencode "To=5550001111" --data-urlencode "From=$FROM" --data-urlencode "Url=$URL"
expect_error 400 21211 "To not E.164"
tw Calls --data-urlencode "To=$TO" --data-urlencode "Url=$URL"; expect_error 400 21213 "From missing"
tw Calls --data-urlencode "To=$TO" --data-urlencode "From=abc" --data-urlencode "Url=$URL"
expect_error 400 21212 "From not E.164"
call --data-urlencode "Url=ftp://crier.example/x"; expect_error 400 21205 "Url not http(s)"
call --data-urlencode "Twiml=<Response><Say>$(head -c 4000 /dev/zero | tr '\0' a)</Say></Response>"
expect_error 400 32018 "Twiml over 4000 characters"
call --data-urlencode "Url=$URL" --data-urlencode "StatusCallback=not a url"
expect_error 400 21609 "StatusCallback not a URL"
call --data-urlencode "Url=$URL" -d StatusCallbackEvent=initiated -d StatusCallbackEvent=hungup
expect_error 400 21626 "unknown StatusCallbackEvent"
call --data-urlencode "Url=$URL" -d Timeout=0; expect_error 400 21208 "Timeout 0"
call --data-urlencode "Url=$URL" -d Timeout=ten; expect_error 400 21208 "Timeout not a number"
call --data-urlencode "Url=$URL" -d MachineDetection=Detect; expect_error 400 21234 "MachineDetection"
call --data-urlencode "Url=$URL" -d AsyncAmd=yes; expect_error 400 21234 "AsyncAmd"
_t_curl POST "$(api Calls)" -u "$ACCT:wrong" --data-urlencode "To=$TO" --data-urlencode "From=$FROM" \
  --data-urlencode "Url=$URL"
expect_error 401 20003 "bad credentials"
stats
assert_eq "$(stat calls_accepted)" 0 "no call accepted by the rejections"
assert_eq "$(stat rejected)" 14 "every rejection counted"

call --data-urlencode "Url=$URL" --data-urlencode "StatusCallback=https://crier.example/twilio/status" \
  -d StatusCallbackEvent=initiated -d 'StatusCallbackEvent=ringing answered' \
  -d StatusCallbackEvent=completed -d Timeout=30 -d MachineDetection=DetectMessageEnd -d AsyncAmd=true
assert_eq "$T_STATUS" 201 "call placed (${T_BODY:0:300})"
[[ "$(json_get .sid)" =~ ^CA[0-9a-f]{32}$ ]] || t_fail "call sid $(json_get .sid) is not CA + 32 hex"
CALL1=$(json_get .sid)
assert_eq "$(json_get .status)" queued "call status"
assert_eq "$(json_get .direction)" outbound-api "call direction"
assert_eq "$(json_get .to)" "$TO" "call to"
assert_eq "$(json_get .from)" "$FROM" "call from"
assert_eq "$(json_get .uri)" "/2010-04-01/Accounts/$ACCT/Calls/$CALL1.json" "call uri"
call --data-urlencode "Url=$URL"
assert_eq "$T_STATUS" 201 "the same call again is answered 201"
assert_ne "$(json_get .sid)" "$CALL1" "with a fresh sid"
call --data-urlencode "Twiml=<Response><Say>Hi</Say></Response>"
assert_eq "$T_STATUS" 201 "a Twiml call"
call --data-urlencode "Url=$URL" --data-urlencode "Twiml=<Response/>"
assert_eq "$T_STATUS" 201 "Url and Twiml together: Twilio uses the Url"
msg
assert_eq "$T_STATUS" 201 "a message beside the calls"
stats
assert_eq "$(stat calls_accepted)" 4 "calls accepted"
assert_eq "$(stat call_duplicates)" 2 "(To, Url) seen three times: two duplicates"
assert_eq "$(stat call_unique_recipients)" 1 "one call recipient"
assert_eq "$(stat accepted)" 1 "messages counted apart from calls"
assert_eq "$(stat duplicates)" 0 "no message duplicate"
assert_eq "$(jq -c 'select(.sid == "'"$CALL1"'") | [.kind, .to, .url, .status_callback_event, .machine_detection]' "$FAKE_RECORD")" \
  "[\"call\",\"$TO\",\"$URL\",\"initiated ringing answered completed\",\"DetectMessageEnd\"]" \
  "the call is recorded"
assert_eq "$(jq -r 'select(.kind == "message") | .body' "$FAKE_RECORD")" hello "the message is recorded"
check_invariant

# --- 2. configuration checks ---
assert_status 200 GET "$FAKE_URL/_fake/config"
BEFORE=$T_BODY
assert_eq "$(json_get .seed)" 7 "--seed shown"
assert_eq "$(json_get .timeout_ms)" 20000 "timeout_ms default"
assert_eq "$(json_get .retry_after)" 1 "retry_after default"
for bad in '{"bogus":1}' '{"p500":1.5}' '{"p500":0.6,"p429":0.5}' '{"latency_ms":-1}' \
  '{"latency_ms":2.5}' '{"timeout_ms":0}' '{"p500":"0.1"}' '[1]' 'nope'; do
  _t_curl POST "$FAKE_URL/_fake/config" --data-binary "$bad"
  assert_eq "$T_STATUS" 400 "config $bad refused"
  assert_ne "$(json_get .error)" null "config $bad: an error message"
done
assert_status 200 GET "$FAKE_URL/_fake/config"
assert_eq "$T_BODY" "$BEFORE" "refused configurations change nothing"

# --- 3. 500 and 429 ---
stats
base_acc=$(stat accepted) base_calls=$(stat calls_accepted) base_rej=$(stat rejected)
config '{"p500":1}'
assert_eq "$(json_get .p500)" 1 "config answers the new value"
msg; expect_error 500 20500 "p500=1 on Messages"
call --data-urlencode "Url=$URL"; expect_error 500 20500 "p500=1 on Calls"
_t_curl POST "$(api Messages)" -u "$ACCT:wrong" -d To=x
expect_error 401 20003 "authentication comes before faults"
stats
assert_eq "$(stat faults_500)" 2 "faults_500"
assert_eq "$(stat accepted)" "$base_acc" "a 500 is not accepted"
assert_eq "$(stat calls_accepted)" "$base_calls" "a 500 call is not accepted"
assert_eq "$(stat rejected)" $((base_rej + 1)) "faults are not counted as rejected"

config '{"p500":0,"p429":1,"retry_after":3}'
hdr="$T_DIR/headers"
_t_curl POST "$(api Messages)" -u "$ACCT:$TOKEN" -D "$hdr" --data-urlencode "To=$TO" \
  --data-urlencode "From=$FROM" -d Body=x
expect_error 429 20429 "p429=1"
assert_eq "$(tr -d '\r' <"$hdr" | sed -n 's/^Retry-After: *//Ip')" 3 "Retry-After: retry_after"
config '{"retry_after":0}'
_t_curl POST "$(api Calls)" -u "$ACCT:$TOKEN" -D "$hdr" --data-urlencode "To=$TO" \
  --data-urlencode "From=$FROM" --data-urlencode "Url=$URL"
expect_error 429 20429 "p429=1 on Calls"
if grep -qi '^Retry-After' "$hdr"; then t_fail "retry_after 0 still sends Retry-After"; fi
stats
assert_eq "$(stat faults_429)" 2 "faults_429"
assert_eq "$(stat accepted)" "$base_acc" "a 429 is not accepted"
check_invariant

# --- 4. latency ---
config '{"p429":0,"retry_after":1,"latency_ms":400}'
t=$(curl -sS -o /dev/null -w '%{http_code} %{time_total}' -u "$ACCT:$TOKEN" "$(api Messages)" \
  --data-urlencode "To=+15550002222" --data-urlencode "From=$FROM" -d Body=late)
assert_eq "${t% *}" 201 "a delayed message is still sent"
awk -v s="${t#* }" 'BEGIN { exit !(s >= 0.39) }' || t_fail "reply after ${t#* } s, not >= 0.4 s"
t=$(curl -sS -o /dev/null -w '%{http_code} %{time_total}' -u "$ACCT:wrong" "$(api Calls)" -d To=x)
assert_eq "${t% *}" 401 "errors are delayed too"
awk -v s="${t#* }" 'BEGIN { exit !(s >= 0.39) }' || t_fail "error after ${t#* } s, not >= 0.4 s"
t=$(curl -sS -o /dev/null -w '%{time_total}' "$FAKE_URL/_fake/stats")
awk -v s="$t" 'BEGIN { exit !(s < 0.3) }' || t_fail "control endpoint delayed (${t} s)"
config '{"latency_ms":0}'

# --- 5. ptimeout ---
stats
base_acc=$(stat accepted) lines=$(wc -l <"$FAKE_RECORD")
config '{"ptimeout":1,"timeout_ms":1500}'
rc=0
t=$(curl -sS -o /dev/null -w '%{time_total}' --max-time 10 -u "$ACCT:$TOKEN" "$(api Messages)" \
  --data-urlencode "To=$TO" --data-urlencode "From=$FROM" -d Body=lost 2>/dev/null) || rc=$?
assert_eq "$rc" 52 "no reply at all: the connection is closed empty (curl 52)"
awk -v s="$t" 'BEGIN { exit !(s >= 1.4 && s < 5) }' || t_fail "closed after $t s, not timeout_ms 1.5 s"
config '{"timeout_ms":60000}'
curl -sS -o /dev/null --max-time 2 -u "$ACCT:$TOKEN" "$(api Calls)" --data-urlencode "To=$TO" \
  --data-urlencode "From=$FROM" --data-urlencode "Url=$URL" 2>/dev/null &
cpid=$!
sleep 0.7
stats
assert_eq "$(stat held)" 1 "the timed-out call is held"
rc=0
wait "$cpid" || rc=$?
assert_eq "$rc" 28 "the client times out (curl 28)"
t_wait_until 3 "the held request freed once its client left" held_is_zero
stats
assert_eq "$(stat faults_timeout)" 2 "faults_timeout"
assert_eq "$(stat accepted)" "$base_acc" "a timed-out message is not accepted"
assert_eq "$(wc -l <"$FAKE_RECORD")" "$lines" "nor recorded"
check_invariant

# --- 6. paccept_timeout ---
config '{"ptimeout":0,"paccept_timeout":1,"timeout_ms":20000}'
rc=0
curl -sS -o /dev/null --max-time 1 -u "$ACCT:$TOKEN" "$(api Messages)" --data-urlencode "To=+15550003333" \
  --data-urlencode "From=$FROM" -d Body=maybe 2>/dev/null || rc=$?
assert_eq "$rc" 28 "paccept_timeout: the client times out"
rc=0
curl -sS -o /dev/null --max-time 1 -u "$ACCT:$TOKEN" "$(api Calls)" --data-urlencode "To=+15550003333" \
  --data-urlencode "From=$FROM" --data-urlencode "Url=$URL" 2>/dev/null || rc=$?
assert_eq "$rc" 28 "paccept_timeout on Calls: the client times out"
tw Messages --data-urlencode "To=$TO" --data-urlencode "From=$FROM"
expect_error 400 21602 "paccept_timeout: an invalid request is still answered"
stats
assert_eq "$(stat accepted)" $((base_acc + 1)) "yet the message was accepted"
assert_eq "$(stat faults_accept_timeout)" 2 "faults_accept_timeout"
assert_eq "$(jq -c 'select(.reply_lost) | [.kind, .to]' "$FAKE_RECORD" | tr '\n' ' ')" \
  '["message","+15550003333"] ["call","+15550003333"] ' "recorded with reply_lost"
config '{"paccept_timeout":0}'
msg +15550003333 maybe
assert_eq "$T_STATUS" 201 "the resend is answered"
tw Calls --data-urlencode "To=+15550003333" --data-urlencode "From=$FROM" --data-urlencode "Url=$URL"
assert_eq "$T_STATUS" 201 "the call resend is answered"
stats
assert_eq "$(stat duplicates)" 1 "a resend after a lost reply is a duplicate"
assert_eq "$(stat call_duplicates)" 3 "so is a call resend (2 before)"
check_invariant

# --- 7. fractions and the seed ---
# burst FILE N: N sequential messages over one connection; status codes in FILE, one a line.
burst() {
  local i
  for ((i = 1; i <= $2; i++)); do
    printf 'url = "%s"\nuser = "%s:%s"\ndata = "To=%%2B1555%07d&From=%%2B15550100000&Body=b"\n' \
      "$(api Messages)" "$ACCT" "$TOKEN" "$i"
    printf 'output = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n'
    if [ "$i" -lt "$2" ]; then printf 'next\n'; fi
  done >"$T_DIR/burst.cfg"
  curl -sS -K "$T_DIR/burst.cfg" >"$1"
}
assert_status 200 POST "$FAKE_URL/_fake/reset"
config '{"p500":0.1,"p429":0.05,"seed":42}'
burst "$T_DIR/codes1" 1000
n500=$(grep -c '^500$' "$T_DIR/codes1" || true)
n429=$(grep -c '^429$' "$T_DIR/codes1" || true)
n201=$(grep -c '^201$' "$T_DIR/codes1" || true)
t_log "1000 sends at p500 0.1, p429 0.05: $n500 x 500, $n429 x 429, $n201 x 201"
assert_eq "$((n500 + n429 + n201))" 1000 "only 201, 429 and 500 answered"
assert_ge "$n500" 55 "about 10 % answered 500"
assert_le "$n500" 145 "about 10 % answered 500"
assert_ge "$n429" 20 "about 5 % answered 429"
assert_le "$n429" 80 "about 5 % answered 429"
stats
assert_eq "$(stat faults_500)" "$n500" "faults_500 equals the 500s seen"
assert_eq "$(stat faults_429)" "$n429" "faults_429 equals the 429s seen"
assert_eq "$(stat accepted)" "$n201" "accepted equals the 201s seen"
assert_eq "$(stat duplicates)" 0 "no duplicate"
config '{"seed":42}'
burst "$T_DIR/codes2" 1000
cmp -s "$T_DIR/codes1" "$T_DIR/codes2" || t_fail "the same seed gave another sequence"
config '{"seed":43}'
burst "$T_DIR/codes3" 1000
if cmp -s "$T_DIR/codes1" "$T_DIR/codes3"; then t_fail "another seed gave the same sequence"; fi
check_invariant

# --- 8. reset keeps the configuration ---
assert_status 200 GET "$FAKE_URL/_fake/config"
BEFORE=$T_BODY
assert_status 200 POST "$FAKE_URL/_fake/reset"
stats
for k in accepted duplicates calls_accepted call_duplicates requests rejected faults_500 \
  faults_429 faults_timeout faults_accept_timeout held; do
  assert_eq "$(stat "$k")" 0 "$k after reset"
done
assert_status 200 GET "$FAKE_URL/_fake/config"
assert_eq "$T_BODY" "$BEFORE" "reset keeps the fault configuration"
assert_eq "$(wc -l <"$FAKE_RECORD")" 0 "reset truncates the record"

# --- 9. command-line options ---
t_stop fake-twilio
t_start_fake_twilio --p429 1 --retry-after 2 --seed 9 --timeout-ms 5000
assert_status 200 GET "$FAKE_URL/_fake/config"
assert_eq "$(jq -c '[.p429, .retry_after, .seed, .timeout_ms, .p500]' <<<"$T_BODY")" '[1,2,9,5000,0]' \
  "options set the knobs"
_t_curl POST "$(api Messages)" -u "$ACCT:$TOKEN" -D "$hdr" --data-urlencode "To=$TO" \
  --data-urlencode "From=$FROM" -d Body=x
expect_error 429 20429 "--p429 1"
assert_eq "$(tr -d '\r' <"$hdr" | sed -n 's/^Retry-After: *//Ip')" 2 "--retry-after 2"
bin=$(t_bin fake-twilio)
for bad in "--p500 1.5" "--p500 0.6 --p429 0.6" "--latency-ms x" "--timeout-ms 0" "--seed -1"; do
  rc=0
  # shellcheck disable=SC2086 # the options are split on purpose
  timeout 10 "$bin" --port 0 $bad >/dev/null 2>&1 || rc=$?
  assert_eq "$rc" 2 "fake-twilio $bad exits 2"
done
echo "fake_twilio_faults ok"
