#!/usr/bin/env bash
# The email fakes themselves (issue 5, item 6): fake-sendgrid (POST /v3/mail/send) and
# fake-smtp (RFC 5321 over loopback), driven with curl the way a client would, including
# their fault injection and duplicate counting. No crier service takes part.
#
# Binaries: $FAKE_BIN_DIR/fake-sendgrid and $FAKE_BIN_DIR/fake-smtp, FAKE_BIN_DIR defaulting
# to $CRIER_BIN_DIR (the build tree, CMake targets fake-sendgrid and fake-smtp). To run
# against hand-built binaries: FAKE_BIN_DIR=/dir/with/them bash tests/integration/fake_email.sh
# (with CRIER_STACK_ENV / CRIER_SOURCE_DIR as for every integration test).
. "$(dirname "$0")/../lib.sh"
t_init fake_email

: "${FAKE_BIN_DIR:=$CRIER_BIN_DIR}"

fake_bin() {
  local b="$FAKE_BIN_DIR/$1"
  [ -x "$b" ] || t_fail "binary $b not built (targets fake-sendgrid / fake-smtp, or set FAKE_BIN_DIR)"
  printf '%s\n' "$b"
}

# wait_port NAME FILE: prints the port the fake NAME wrote to FILE.
wait_port() {
  local name=$1 file=$2 port='' i
  for ((i = 0; i < 100; i++)); do
    port=$(cat "$file" 2>/dev/null || true)
    [ -n "$port" ] && break
    t_alive "$name" || break
    sleep 0.1
  done
  [ -n "$port" ] || t_fail "$name wrote no port file (log: $T_DIR/$name.log)"
  printf '%s\n' "$port"
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ----------------------------------------------------------------------------------------
# fake-sendgrid
# ----------------------------------------------------------------------------------------

# start_sendgrid NAME ARGS...: exports SG_URL and SG_RECORD.
start_sendgrid() {
  local name=$1 bin port
  shift
  bin=$(fake_bin fake-sendgrid)
  SG_RECORD="$T_DIR/$name.record"
  t_start "$name" "$bin" --port 0 --port-file "$T_DIR/$name.port" --record "$SG_RECORD" "$@"
  port=$(wait_port "$name" "$T_DIR/$name.port")
  SG_URL="http://127.0.0.1:$port"
  crier_wait_http "$SG_URL/_fake/stats" 10 "$T_DIR/$name.pid" ||
    t_fail "$name does not answer on $SG_URL"
}

# sg_send JSON [CURL ARGS...]: POST /v3/mail/send with the key; T_STATUS, T_BODY, SG_HEADERS.
sg_send() {
  local json=$1
  shift
  sg_request -H "Authorization: Bearer $SG_KEY" "$@" --data-binary "$json"
}

# sg_request [CURL ARGS...]: POST /v3/mail/send; T_STATUS, T_BODY, SG_HEADERS.
sg_request() {
  local bodyf="$T_DIR/.sg.body" hdrf="$T_DIR/.sg.headers"
  T_STATUS=$(curl -sS -o "$bodyf" -D "$hdrf" -w '%{http_code}' --max-time 10 \
    -H 'Content-Type: application/json' "$@" "$SG_URL/v3/mail/send" 2>/dev/null) || true
  [ -n "$T_STATUS" ] || T_STATUS=000
  T_BODY=$(cat "$bodyf" 2>/dev/null || true)
  SG_HEADERS=$(tr -d '\r' <"$hdrf" 2>/dev/null || true)
  rm -f "$bodyf" "$hdrf"
}

header_of() { # NAME: value of that response header in SG_HEADERS (case-insensitive)
  printf '%s\n' "$SG_HEADERS" | awk -v n="$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')" \
    -F': ' 'tolower($1) == n { sub(/^[^:]*: /, ""); print; exit }'
}

# mail TO DELIVERY_ID SUBJECT: a valid mail/send body (DELIVERY_ID "" leaves custom_args out).
mail() {
  jq -cn --arg to "$1" --arg d "$2" --arg s "$3" '{
    personalizations: [{to: [{email: $to, name: "Pat"}]}
      + (if $d == "" then {} else {custom_args: {delivery_id: $d}} end)],
    from: {email: "news@crier.test", name: "Crier"},
    reply_to: {email: "help@crier.test"},
    subject: $s,
    content: [{type: "text/plain", value: "Hello"}, {type: "text/html", value: "<p>Hello</p>"}],
    headers: {"List-Unsubscribe": "<https://crier.test/u/tok>",
              "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
    custom_args: {campaign_id: "7"}
  }'
}

sg_stats() {
  assert_status 200 GET "$SG_URL/_fake/stats"
  SG_STATS=$T_BODY
}
sg_stat() { json_get ".$1" "$SG_STATS"; }
sg_config() {
  assert_status 200 POST "$SG_URL/_fake/config" -d "$1"
}
sg_records() { sg_stats >/dev/null; wc -l <"$SG_RECORD" | tr -d ' '; }
sg_last() { sg_stats >/dev/null; tail -n 1 "$SG_RECORD"; }

SG_KEY="SG.test-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
start_sendgrid fake-sendgrid --api-key "$SG_KEY" --verified-sender @crier.test

# Accepted: 202, empty body, X-Message-Id of 22 characters; recorded.
sg_send "$(mail Ann@Example.com d1 'Spring news')"
assert_eq "$T_STATUS" 202 "valid mail/send"
assert_eq "$T_BODY" "" "202 has an empty body"
MSGID=$(header_of X-Message-Id)
[[ "$MSGID" =~ ^[A-Za-z0-9_-]{22}$ ]] || t_fail "X-Message-Id '$MSGID' is not 22 characters"
line=$(sg_last)
assert_eq "$(json_get .message_id "$line")" "$MSGID" "record: message id"
assert_eq "$(json_get .to "$line")" Ann@Example.com "record: to"
assert_eq "$(json_get .subject "$line")" "Spring news" "record: subject"
assert_eq "$(json_get .delivery_id "$line")" d1 "record: delivery id"
assert_eq "$(json_get .custom_args.campaign_id "$line")" 7 "record: top-level custom_args merged"
assert_eq "$(json_get .list_unsubscribe "$line")" "<https://crier.test/u/tok>" "record: List-Unsubscribe"
assert_eq "$(json_get .list_unsubscribe_post "$line")" "List-Unsubscribe=One-Click" \
  "record: List-Unsubscribe-Post"
assert_eq "$(json_get '.content_types | join(",")' "$line")" "text/plain,text/html" "record: content"
assert_eq "$(json_get .duplicate "$line")" false "record: first send is no duplicate"
assert_eq "$(json_get .reply_lost "$line")" false "record: reply sent"

# Authentication: 401 with SendGrid's error JSON.
sg_request --data-binary "$(mail a@example.com d0 s)"
assert_eq "$T_STATUS" 401 "no Authorization"
assert_eq "$(json_get '.errors[0].message')" "authorization required" "401 message"
sg_request -H "Authorization: Bearer SG.wrong" --data-binary "$(mail a@example.com d0 s)"
assert_eq "$T_STATUS" 401 "wrong key"
assert_contains "$(json_get '.errors[0].message')" "invalid" "401 wrong key message"
sg_request -H "Authorization: Basic $(printf 'x:%s' "$SG_KEY" | base64)" --data-binary "$(mail a@example.com d0 s)"
assert_eq "$T_STATUS" 401 "Basic instead of Bearer"

# Validation: 400 {"errors":[{"message","field","help"}]} naming the field.
sg_send '{"personalizations": ['
assert_eq "$T_STATUS" 400 "bad JSON"
assert_eq "$(json_get '.errors[0].field')" null "bad JSON names no field"
bad() { # FIELD MSG JQ-FILTER (applied to a valid body)
  sg_send "$(mail bad@example.com dx 'Subject' | jq -c "$3")"
  assert_eq "$T_STATUS" 400 "$2"
  jq -e --arg f "$1" 'any(.errors[]; .field == $f and (.message | length > 0) and has("help"))' \
    <<<"$T_BODY" >/dev/null || t_fail "$2: no error for field $1 in $T_BODY"
}
bad from.email "from missing" 'del(.from)'
bad from.email "from not an address" '.from.email = "news at crier"'
bad personalizations.0.to.0.email "bad recipient" '.personalizations[0].to[0].email = "nobody"'
bad personalizations.0.to "to missing" 'del(.personalizations[0].to)'
bad personalizations "no personalizations" '.personalizations = []'
bad personalizations.0.to.1.email "same address twice" \
  '.personalizations[0].to += [{email: "BAD@example.com"}]'
bad subject "no subject anywhere" 'del(.subject)'
bad content "html before plain" '.content |= reverse'
bad content "text/plain twice" '.content += [{type: "text/plain", value: "x"}]'
bad content.0.value "empty content" '.content[0].value = ""'
bad content "no content" 'del(.content)'
bad headers.Subject "reserved header" '.headers.Subject = "x"'
bad personalizations.0.custom_args.delivery_id "custom_args not strings" \
  '.personalizations[0].custom_args.delivery_id = 5'
bad reply_to.email "bad reply_to" '.reply_to.email = "x"'
sg_send "$(mail ok@example.com d2 '' | jq -c 'del(.subject) | .personalizations[0].subject = "Own"')"
assert_eq "$T_STATUS" 202 "subject in every personalization is enough"
assert_eq "$(json_get .subject "$(sg_last)")" Own "record: personalization subject"
sg_send "$(mail ok@example.com d3 s | jq -c '.from.email = "news@elsewhere.test"')"
assert_eq "$T_STATUS" 403 "sender not verified"
assert_eq "$(json_get '.errors[0].field')" from "403 names from"
n=$(sg_records)
sg_send "$(mail ok@example.com d4 s | jq -c '.mail_settings = {sandbox_mode: {enable: true}}')"
assert_eq "$T_STATUS" 200 "sandbox mode"
assert_eq "$(sg_records)" "$n" "sandbox mode records nothing"
assert_status 404 POST "$SG_URL/v3/templates" -H "Authorization: Bearer $SG_KEY" -d '{}'

# Duplicates: same recipient and delivery id; without a delivery id, same recipient and subject.
sg_stats
d0=$(sg_stat duplicates)
sg_send "$(mail ann@example.com d1 'Other subject')"
assert_eq "$T_STATUS" 202 "resend of d1"
assert_eq "$(json_get .duplicate "$(sg_last)")" true "record marks the duplicate"
sg_send "$(mail ann@example.com d9 'Spring news')"
sg_send "$(mail bob@example.com '' 'Plain')"
sg_send "$(mail bob@example.com '' 'Plain')"
sg_send "$(mail bob@example.com '' 'Plain, again')"
sg_stats
assert_eq "$(sg_stat duplicates)" $((d0 + 2)) "duplicates: (to, delivery_id) and (to, subject)"
# Two personalizations: two messages, one request.
sg_send "$(mail cy@example.com d20 s | jq -c '.personalizations += [{to: [{email: "di@example.com"}],
  custom_args: {delivery_id: "d21"}}]')"
assert_eq "$T_STATUS" 202 "two personalizations"
sg_stats # flushes the record
assert_eq "$(tail -n 2 "$SG_RECORD" | jq -r .delivery_id | paste -sd,)" d20,d21 \
  "one record line per personalization"
sg_stats
assert_eq "$(sg_stat accepted)" $(($(sg_stat accepted_requests) + 1)) "accepted counts messages"
assert_eq "$(sg_stat unique_recipients)" 5 "unique recipients (lower-cased)"
assert_eq "$(sg_stat requests)" $(($(sg_stat accepted_requests) + $(sg_stat rejected) + \
  $(sg_stat sandboxed) + $(sg_stat faults_500) + $(sg_stat faults_429) + \
  $(sg_stat faults_timeout))) "requests add up"

# Faults.
assert_status 200 GET "$SG_URL/_fake/config"
for k in p500 p429 ptimeout paccept_timeout latency_ms retry_after timeout_ms seed; do
  [ "$(json_get ".$k")" != null ] || t_fail "config lacks $k"
done
assert_status 400 POST "$SG_URL/_fake/config" -d '{"p501":1}'
assert_status 400 POST "$SG_URL/_fake/config" -d '{"p500":0.8,"p429":0.5}'
assert_status 400 POST "$SG_URL/_fake/config" -d '{"latency_ms":-1}'
n=$(sg_records)
sg_config '{"p500":1}'
sg_send "$(mail f1@example.com f1 s)"
assert_eq "$T_STATUS" 500 "p500=1"
assert_ne "$(json_get '.errors[0].message')" null "500 carries SendGrid's error JSON"
sg_config '{"p500":0,"p429":1,"retry_after":3}'
sg_send "$(mail f1@example.com f1 s)"
assert_eq "$T_STATUS" 429 "p429=1"
assert_eq "$(header_of Retry-After)" 3 "429 carries Retry-After"
sg_config '{"p429":0,"ptimeout":1,"timeout_ms":400}'
t0=$(now_ms)
sg_send "$(mail f1@example.com f1 s)"
assert_eq "$T_STATUS" 000 "ptimeout=1: no reply"
assert_le $(($(now_ms) - t0)) 5000 "the withheld request's connection is closed after timeout_ms"
assert_eq "$(sg_records)" "$n" "faulted requests record nothing"
sg_config '{"ptimeout":0,"paccept_timeout":1}'
sg_send "$(mail f2@example.com f2 s)"
assert_eq "$T_STATUS" 000 "paccept_timeout=1: no reply"
assert_eq "$(sg_records)" $((n + 1)) "paccept_timeout: accepted and recorded"
assert_eq "$(json_get .reply_lost "$(sg_last)")" true "record: reply lost"
sg_config '{"paccept_timeout":0,"latency_ms":300}'
t0=$(now_ms)
sg_send "$(mail f2@example.com f2 s)"
assert_eq "$T_STATUS" 202 "latency: still accepted"
assert_ge $(($(now_ms) - t0)) 300 "latency_ms delays the reply"
assert_eq "$(json_get .duplicate "$(sg_last)")" true "the resend after a lost reply is a duplicate"
sg_stats
assert_eq "$(sg_stat faults_500)" 1 "faults_500"
assert_eq "$(sg_stat faults_429)" 1 "faults_429"
assert_eq "$(sg_stat faults_timeout)" 1 "faults_timeout"
assert_eq "$(sg_stat faults_accept_timeout)" 1 "faults_accept_timeout"
assert_ge "$(sg_stat faults_latency)" 1 "faults_latency"
t_wait_until 5 "held requests released" bash -c \
  "[ \"\$(curl -s '$SG_URL/_fake/stats' | jq .held)\" = 0 ]"

# Fractions draw reproducibly from the seed.
seq_of() {
  local i out=
  sg_config "{\"latency_ms\":0,\"p500\":0.3,\"p429\":0.3,\"seed\":$1}"
  for i in $(seq 1 20); do
    sg_send "$(mail "s$i@example.com" "s$i" s)"
    out+="$T_STATUS "
  done
  printf '%s\n' "$out"
}
a=$(seq_of 42)
b=$(seq_of 42)
assert_eq "$a" "$b" "same seed, same faults"
assert_contains "$a" 500 "p500=0.3 over 20 requests"
assert_contains "$a" 202 "some requests pass"
sg_config '{"p500":0,"p429":0}'

# Reset: counters and record cleared, faults kept.
assert_status 200 POST "$SG_URL/_fake/reset"
sg_stats
assert_eq "$(sg_stat requests)" 0 "reset: requests"
assert_eq "$(sg_stat duplicates)" 0 "reset: duplicates"
assert_eq "$(wc -c <"$SG_RECORD" | tr -d ' ')" 0 "reset truncates the record"
sg_send "$(mail ann@example.com d1 'Spring news')"
assert_eq "$(json_get .duplicate "$(sg_last)")" false "reset forgets recipients"

# The key from the environment.
SG_KEY2="SG.env-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
FAKE_SENDGRID_KEY=$SG_KEY2 start_sendgrid fake-sendgrid-env
sg_request -H "Authorization: Bearer $SG_KEY2" --data-binary "$(mail e@example.com e1 s)"
assert_eq "$T_STATUS" 202 "key from FAKE_SENDGRID_KEY"
t_stop fake-sendgrid-env

# ----------------------------------------------------------------------------------------
# fake-smtp
# ----------------------------------------------------------------------------------------

SMTP_USER=crier
SMTP_PASS="pw-$(od -An -tx1 -N6 /dev/urandom | tr -d ' \n')"
SMTP_RECORD="$T_DIR/fake-smtp.record"
t_start fake-smtp "$(fake_bin fake-smtp)" --port 0 --http-port 0 \
  --port-file "$T_DIR/fake-smtp.port" --http-port-file "$T_DIR/fake-smtp.http-port" \
  --user "$SMTP_USER" --pass "$SMTP_PASS" --record "$SMTP_RECORD" --record-bodies
SMTP_PORT=$(wait_port fake-smtp "$T_DIR/fake-smtp.port")
SMTP_CTL="http://127.0.0.1:$(wait_port fake-smtp "$T_DIR/fake-smtp.http-port")"
crier_wait_http "$SMTP_CTL/_fake/stats" 10 "$T_DIR/fake-smtp.pid" ||
  t_fail "fake-smtp control port does not answer"

# msg FILE DELIVERY_ID: a multipart/alternative message with CRLF line ends.
msg() {
  printf '%s\r\n' \
    'From: Crier News <news@crier.test>' \
    'To: Ann <ann@example.com>' \
    'Subject: =?UTF-8?Q?Caf=C3=A9_news?=' \
    "Message-ID: <$2@crier.test>" \
    "X-Crier-Delivery: $2" \
    'List-Unsubscribe: <https://crier.test/u/tok>' \
    'List-Unsubscribe-Post: List-Unsubscribe=One-Click' \
    'MIME-Version: 1.0' \
    'Content-Type: multipart/alternative; boundary="b1"' \
    '' \
    '--b1' \
    'Content-Type: text/plain; charset=utf-8' \
    'Content-Transfer-Encoding: quoted-printable' \
    '' \
    'Hello Ann,' \
    '.a line that starts with a dot' \
    '--b1' \
    'Content-Type: text/html; charset=utf-8' \
    '' \
    '<p>Hello Ann</p>' \
    '--b1--' >"$1"
}

# smtp_send FILE [CURL ARGS...]: SMTP_RC (curl's exit status), SMTP_CODE (last reply code).
smtp_send() {
  local file=$1
  shift
  SMTP_RC=0
  SMTP_CODE=$(curl -sS --max-time 10 -w '%{response_code}' --url "smtp://127.0.0.1:$SMTP_PORT" \
    --mail-from news@crier.test --upload-file "$file" "$@" 2>>"$T_DIR/curl-smtp.log") ||
    SMTP_RC=$?
}

smtp_stats() {
  assert_status 200 GET "$SMTP_CTL/_fake/stats"
  SMTP_STATS=$T_BODY
}
smtp_stat() { json_get ".$1" "$SMTP_STATS"; }
smtp_config() { assert_status 200 POST "$SMTP_CTL/_fake/config" -d "$1"; }
smtp_records() { smtp_stats >/dev/null; wc -l <"$SMTP_RECORD" | tr -d ' '; }
smtp_last() { smtp_stats >/dev/null; tail -n 1 "$SMTP_RECORD"; }

msg "$T_DIR/m1.eml" dlv-1
smtp_send "$T_DIR/m1.eml" --mail-rcpt ann@example.com --user "$SMTP_USER:$SMTP_PASS"
assert_eq "$SMTP_RC/$SMTP_CODE" 0/250 "SMTP send (AUTH PLAIN)"
line=$(smtp_last)
assert_eq "$(json_get .to "$line")" ann@example.com "smtp record: envelope recipient"
assert_eq "$(json_get .mail_from "$line")" news@crier.test "smtp record: MAIL FROM"
assert_eq "$(json_get .subject "$line")" "Café news" "smtp record: decoded subject"
assert_eq "$(json_get .message_id "$line")" "<dlv-1@crier.test>" "smtp record: Message-ID"
assert_eq "$(json_get .delivery_id "$line")" dlv-1 "smtp record: X-Crier-Delivery"
assert_eq "$(json_get .list_unsubscribe "$line")" "<https://crier.test/u/tok>" \
  "smtp record: List-Unsubscribe"
assert_eq "$(json_get .list_unsubscribe_post "$line")" "List-Unsubscribe=One-Click" \
  "smtp record: List-Unsubscribe-Post"
assert_eq "$(json_get '.multipart_alternative and .text_plain and .text_html and
  .plain_before_html' "$line")" true "smtp record: multipart/alternative, text/plain then text/html"
assert_contains "$(json_get .text "$line")" $'\n.a line that starts with a dot' \
  "dot-stuffing undone, the dot kept"
assert_eq "$(json_get .html "$line")" $'<p>Hello Ann</p>' "smtp record: html part"
assert_eq "$(json_get .duplicate "$line")" false "smtp record: first send"

msg "$T_DIR/m2.eml" dlv-2
smtp_send "$T_DIR/m2.eml" --mail-rcpt bob@example.com --mail-rcpt cy@example.com \
  --user "$SMTP_USER:$SMTP_PASS" --login-options AUTH=LOGIN
assert_eq "$SMTP_RC/$SMTP_CODE" 0/250 "SMTP send (AUTH LOGIN, two recipients)"
assert_eq "$(smtp_records)" 3 "one record line per recipient"

smtp_send "$T_DIR/m2.eml" --mail-rcpt bob@example.com --user "$SMTP_USER:wrong"
assert_ne "$SMTP_RC" 0 "wrong password fails"
assert_eq "$SMTP_CODE" 535 "wrong password: 535"
smtp_send "$T_DIR/m2.eml" --mail-rcpt bob@example.com --user "$SMTP_USER:wrong" \
  --login-options AUTH=LOGIN
assert_eq "$SMTP_CODE" 535 "wrong password over AUTH LOGIN: 535"
smtp_send "$T_DIR/m2.eml" --mail-rcpt bob@example.com
assert_eq "$SMTP_RC/$SMTP_CODE" 55/530 "MAIL without AUTH: 530"

# Duplicates: same recipient and X-Crier-Delivery.
smtp_send "$T_DIR/m1.eml" --mail-rcpt ann@example.com --user "$SMTP_USER:$SMTP_PASS"
assert_eq "$SMTP_RC" 0 "resend of dlv-1"
assert_eq "$(json_get .duplicate "$(smtp_last)")" true "smtp record marks the duplicate"
smtp_stats
assert_eq "$(smtp_stat duplicates)" 1 "smtp duplicates"
assert_eq "$(smtp_stat unique_recipients)" 3 "smtp unique recipients"
assert_eq "$(smtp_stat auth_failures)" 2 "smtp auth failures"

# Bad sequence and unknown commands (raw protocol).
exec 3<>"/dev/tcp/127.0.0.1/$SMTP_PORT"
printf 'MAIL FROM:<a@b.c>\r\nEHLO t\r\nDATA\r\nRCPT TO:<a@b.c>\r\nSTARTTLS\r\nXYZZY\r\nQUIT\r\n' >&3
raw=$(timeout 5 cat <&3 | tr -d '\r') || true
exec 3<&-
assert_contains "$raw" "503 5.5.1 Error: send HELO/EHLO first" "MAIL before EHLO"
assert_contains "$raw" "503 5.5.1 Error: need MAIL command" "DATA / RCPT before MAIL"
assert_contains "$raw" "250-AUTH PLAIN LOGIN" "EHLO advertises AUTH"
assert_contains "$raw" "250-SIZE" "EHLO advertises SIZE"
case "$raw" in *STARTTLS*) t_fail "STARTTLS advertised" ;; esac
assert_contains "$raw" "502 5.5.1" "STARTTLS refused"
assert_contains "$raw" "500 5.5.2" "unknown command"
assert_contains "$raw" "221 2.0.0" "QUIT"

# Faults at the end of DATA.
n=$(smtp_records)
smtp_config '{"p5xx":1}'
smtp_send "$T_DIR/m1.eml" --mail-rcpt f@example.com --user "$SMTP_USER:$SMTP_PASS"
assert_ne "$SMTP_RC" 0 "p5xx=1: curl fails"
assert_eq "$SMTP_CODE" 554 "p5xx=1: permanent 554"
smtp_config '{"p5xx":0,"p4xx":1}'
smtp_send "$T_DIR/m1.eml" --mail-rcpt f@example.com --user "$SMTP_USER:$SMTP_PASS"
assert_eq "$SMTP_CODE" 451 "p4xx=1: temporary 451"
smtp_config '{"p4xx":0,"ptimeout":1,"timeout_ms":400}'
t0=$(now_ms)
smtp_send "$T_DIR/m1.eml" --mail-rcpt f@example.com --user "$SMTP_USER:$SMTP_PASS"
assert_ne "$SMTP_RC" 0 "ptimeout=1: curl fails"
assert_le $(($(now_ms) - t0)) 5000 "the withheld DATA end is closed after timeout_ms"
assert_eq "$(smtp_records)" "$n" "refused and withheld messages record nothing"
smtp_config '{"ptimeout":0,"paccept_timeout":1}'
smtp_send "$T_DIR/m1.eml" --mail-rcpt g@example.com --user "$SMTP_USER:$SMTP_PASS"
assert_ne "$SMTP_RC" 0 "paccept_timeout=1: curl fails"
assert_eq "$(smtp_records)" $((n + 1)) "paccept_timeout: recorded"
assert_eq "$(json_get .reply_lost "$(smtp_last)")" true "smtp record: reply lost"
smtp_config '{"paccept_timeout":0,"latency_ms":300}'
t0=$(now_ms)
smtp_send "$T_DIR/m1.eml" --mail-rcpt g@example.com --user "$SMTP_USER:$SMTP_PASS"
assert_eq "$SMTP_RC/$SMTP_CODE" 0/250 "latency: accepted"
assert_ge $(($(now_ms) - t0)) 300 "latency_ms delays the DATA reply"
assert_eq "$(json_get .duplicate "$(smtp_last)")" true "the resend after a lost reply is a duplicate"
smtp_config '{"latency_ms":0}'
smtp_stats
assert_eq "$(smtp_stat faults_5xx)" 1 "faults_5xx"
assert_eq "$(smtp_stat faults_4xx)" 1 "faults_4xx"
assert_eq "$(smtp_stat faults_timeout)" 1 "faults_timeout"
assert_eq "$(smtp_stat faults_accept_timeout)" 1 "faults_accept_timeout"
assert_eq "$(smtp_stat faults_latency)" 1 "faults_latency"
assert_eq "$(smtp_stat requests)" $(($(smtp_stat accepted_transactions) + $(smtp_stat rejected) + \
  $(smtp_stat faults_4xx) + $(smtp_stat faults_5xx) + $(smtp_stat faults_timeout))) \
  "smtp requests add up"
assert_status 400 POST "$SMTP_CTL/_fake/config" -d '{"p500":1}'

assert_status 200 POST "$SMTP_CTL/_fake/reset"
smtp_stats
assert_eq "$(smtp_stat requests)/$(smtp_stat accepted)/$(smtp_stat duplicates)" 0/0/0 "smtp reset"
assert_eq "$(wc -c <"$SMTP_RECORD" | tr -d ' ')" 0 "smtp reset truncates the record"

echo "fake_email ok"
