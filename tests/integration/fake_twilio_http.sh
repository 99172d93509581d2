#!/usr/bin/env bash
# The fake Twilio's own HTTP/1.1 server (tests/fakes/fake_http.c), driven with raw bytes
# over bash's /dev/tcp.
#
# What each check proves:
# 1. A 201's headers are evhttp's, in its order (Content-Type, Twilio-Request-Id, Date,
#    Content-Length), and Content-Length is the body's byte count; the connection stays open.
# 2. Three pipelined requests in one write get three replies, in order, on one connection.
# 3. A request split across writes (inside the request line, a header name, the body) is
#    answered once, with the whole body read.
# 4. "Connection: close" is echoed and the connection closes (a request after it is not
#    answered); HTTP/1.0 closes without Content-Length unless "Connection: keep-alive",
#    which is echoed with a Content-Length and keeps the connection open.
# 5. A malformed request line and a header line without a colon: 400 HTML page,
#    "Connection: close", closed. A body over 1 MiB: 413 and closed, nothing accepted.
# 6. Expect: 100-continue gets "100 Continue" before the body, then the reply.
# 7. A held reply (latency_ms) with a pipelined request behind it: both answered, in order.
# 8. A client that disconnects mid-request leaves the fake answering others.
. "$(dirname "$0")/../lib.sh"
t_init fake_twilio_http
t_start_fake_twilio --seed 7

ACCT=AC00000000000000000000000000000000
AUTH=$(printf '%s' "$ACCT:fake-auth-token" | base64 -w0)
PORT=${FAKE_URL##*:}
MSG_PATH=/2010-04-01/Accounts/$ACCT/Messages.json
FORM='To=%2B15551234567&From=%2B15005550006&Body=Hello+there'

# post_msg [EXTRA HEADER LINES] [VERSION]: a raw Messages.json POST.
post_msg() {
  printf 'POST %s HTTP/%s\r\nHost: x\r\nAuthorization: Basic %s\r\n%sContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s' \
    "$MSG_PATH" "${2:-1.1}" "$AUTH" "${1:-}" "${#FORM}" "$FORM"
}
# Ends in a blank line, which $(...) would strip: kept in a variable.
STATS=$'GET /_fake/stats HTTP/1.1\r\nHost: x\r\n\r\n'

# raw CHUNK...: sends each chunk (50 ms apart) on one connection, then reads for up to
# 2 s; the reply goes to $T_DIR/reply, RAW_CLOSED is 1 when the server closed.
raw() {
  local chunk rc=0
  exec 3<>"/dev/tcp/127.0.0.1/$PORT" || t_fail "connect to $PORT"
  for chunk in "$@"; do
    printf '%s' "$chunk" >&3 2>/dev/null || true
    sleep 0.05
  done
  timeout 2 cat <&3 >"$T_DIR/reply" 2>/dev/null || rc=$?
  exec 3>&- 3<&-
  RAW_CLOSED=$([ "$rc" -eq 124 ] && echo 0 || echo 1)
  REPLY_TEXT=$(tr -d '\r' <"$T_DIR/reply")
}
# The status codes of the replies (one may start right after the previous body).
statuses() { grep -ao 'HTTP/1\.[01] [0-9][0-9][0-9] ' <<<"$REPLY_TEXT" | awk '{print $2}' | paste -sd' '; }
header() { sed -n "s/^$1: //Ip" <<<"$REPLY_TEXT" | head -n1; }
stat() {
  assert_status 200 GET "$FAKE_URL/_fake/stats"
  json_get ".$1"
}

# 1. Headers of a 201.
raw "$(post_msg)"
assert_eq "$(statuses)" 201 "201 status line"
assert_eq "$(head -n1 <<<"$REPLY_TEXT")" "HTTP/1.1 201 Created" "reason phrase"
assert_eq "$(sed -n '2,/^$/p' <<<"$REPLY_TEXT" | sed -n 's/:.*//p' | paste -sd,)" \
  "Content-Type,Twilio-Request-Id,Date,Content-Length" "header order"
body=$(sed '1,/^$/d' <<<"$REPLY_TEXT")
assert_eq "$(header Content-Length)" "${#body}" "Content-Length is the body's length"
assert_eq "$(jq -r .status <<<"$body")" queued "body is the Message resource"
[[ "$(header Date)" =~ ^[A-Z][a-z]{2},\ [0-9]{2}\ [A-Z][a-z]{2}\ [0-9]{4}\ [0-9:]{8}\ GMT$ ]] ||
  t_fail "Date header: $(header Date)"
assert_eq "$RAW_CLOSED" 0 "HTTP/1.1 keeps the connection open"

# 2. Pipelined.
before=$(stat accepted)
raw "$(post_msg)$(post_msg)$STATS"
assert_eq "$(statuses)" "201 201 200" "three pipelined replies in order"
assert_eq "$(grep -c '^Twilio-Request-Id' <<<"$REPLY_TEXT")" 2 "two API replies"
assert_eq "$(grep -ao '"accepted":[0-9]*' <<<"$REPLY_TEXT")" "\"accepted\":$((before + 2))" \
  "the stats request saw both messages"

# 3. Split across writes.
full=$(post_msg)
raw "${full:0:7}" "${full:7:60}" "${full:67:40}" "${full:107:$((${#full} - 107 - 10))}" \
  "${full: -10}"
assert_eq "$(statuses)" 201 "split request answered once"
assert_eq "$(sed '1,/^$/d' <<<"$REPLY_TEXT" | jq -r .body)" "Hello there" "whole body read"

# 4. Connection handling.
raw "$(post_msg $'Connection: close\r\n')$STATS"
assert_eq "$(statuses)" 201 "nothing answered after Connection: close"
assert_eq "$(header Connection)" close "Connection: close echoed"
assert_eq "$RAW_CLOSED" 1 "Connection: close closes"
raw "$(post_msg '' 1.0)"
assert_eq "$(head -n1 <<<"$REPLY_TEXT")" "HTTP/1.0 201 Created" "HTTP/1.0 status line"
assert_eq "$(header Content-Length)$(header Date)" "" "HTTP/1.0: no Content-Length, no Date"
assert_eq "$RAW_CLOSED" 1 "HTTP/1.0 closes"
raw "$(post_msg $'Connection: keep-alive\r\n' 1.0)"
assert_eq "$(header Connection)" keep-alive "HTTP/1.0 keep-alive echoed"
[ -n "$(header Content-Length)" ] || t_fail "HTTP/1.0 keep-alive: Content-Length"
assert_eq "$RAW_CLOSED" 0 "HTTP/1.0 keep-alive stays open"

# 5. Malformed and oversized.
raw $'GARBAGE\r\n\r\n'
assert_eq "$(head -n1 <<<"$REPLY_TEXT")" "HTTP/1.1 400 Bad Request" "bad request line: 400"
assert_eq "$(header Content-Type)|$(header Connection)" "text/html|close" "400 page headers"
grep -q '<H1>Bad Request</H1>' <<<"$REPLY_TEXT" || t_fail "400 page body"
assert_eq "$RAW_CLOSED" 1 "400 closes"
raw $'GET /_fake/stats HTTP/1.1\r\nHost x\r\n\r\n'
assert_eq "$(statuses)" 400 "header without colon: 400"
before=$(stat requests)
printf -v big 'POST %s HTTP/1.1\r\nAuthorization: Basic %s\r\nContent-Length: 1048577\r\n\r\nTo=x' \
  "$MSG_PATH" "$AUTH"
raw "$big"
assert_eq "$(head -n1 <<<"$REPLY_TEXT")" "HTTP/1.1 413 Request Entity Too Large" "big body: 413"
assert_eq "$RAW_CLOSED" 1 "413 closes"
assert_eq "$(stat requests)" "$before" "a 413 never reaches the API"

# 6. Expect: 100-continue.
raw $'POST /_fake/config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n' '{}'
assert_eq "$(statuses)" "100 200" "100 Continue, then the reply"

# 7. Held reply with a request pipelined behind it.
assert_status 200 POST "$FAKE_URL/_fake/config" --data-binary '{"latency_ms":300}'
raw "$(post_msg)$STATS"
assert_eq "$(statuses)" "201 200" "held reply first, then the next"
assert_status 200 POST "$FAKE_URL/_fake/config" --data-binary '{"latency_ms":0}'
assert_eq "$(stat held)" 0 "nothing held"

# 8. A client gone mid-request.
exec 3<>"/dev/tcp/127.0.0.1/$PORT"
printf 'POST %s HTTP/1.1\r\nContent-Le' "$MSG_PATH" >&3
exec 3>&- 3<&-
raw "$STATS"
assert_eq "$(statuses)" 200 "still answering after a client left mid-request"
t_alive fake-twilio || t_fail "fake-twilio died"
echo "fake_twilio_http ok"
