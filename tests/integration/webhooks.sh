#!/usr/bin/env bash
# Signed webhooks (issue 6 item 1): Twilio inbound SMS and status callbacks and SendGrid's
# Event Webhook. Signatures are made here with the openssl CLI (HMAC-SHA1 over the URL and
# the sorted decoded parameters; ECDSA P-256 over timestamp + body), independently of
# crier's code. A good one is answered at once and lands in the inbound stream as
# "kind K tenant T at MS body RAW"; a bad, missing, stale or misaddressed one is a 403 and
# leaves the stream untouched; an unknown tenant looks exactly like a bad signature; the
# URL checked is CRIER_PUBLIC_URL + path + query, not the socket's; Redis down is a 503.
. "$(dirname "$0")/../lib.sh"
t_init webhooks
t_tenant_key
t_start_api

STREAM="${CRIER_KEY_PREFIX:-crier:}inbound"
TOKEN="tok$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
SID="AC$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
OTHER_SID="AC$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
FORM=(-H 'Content-Type: application/x-www-form-urlencoded')

t_api POST /v1/provider-accounts "{\"channel\":\"sms\",\"kind\":\"twilio\",\"from\":\"+15017122661\",
  \"credentials\":{\"account_sid\":\"$SID\",\"auth_token\":\"$TOKEN\"}}"
assert_eq "$T_STATUS" 201 "twilio account: $T_BODY"
t_api POST /v1/provider-accounts "{\"channel\":\"voice\",\"kind\":\"twilio\",\"from\":\"+15017122661\",
  \"credentials\":{\"account_sid\":\"$OTHER_SID\",\"auth_token\":\"other-$TOKEN\"}}"
assert_eq "$T_STATUS" 201 "second twilio account: $T_BODY"

xlen() { t_redis XLEN "$STREAM"; }

# last_entry: the newest stream entry's fields, byte for byte, into E[...] (E[nfields]: how
# many fields it has).
declare -A E
ENTRY_LUA="local e = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][2]
  if ARGV[1] == '' then return #e / 2 end
  for i = 1, #e, 2 do if e[i] == ARGV[1] then return e[i + 1] end end
  return '(none)'"
last_entry() {
  local f out
  E=()
  for f in nfields kind tenant at body; do
    out=$(t_redis EVAL "$ENTRY_LUA" 1 "$STREAM" "${f/nfields/}" && echo x)
    out=${out%x}
    E[$f]=${out%$'\n'}
  done
}

# form_body VAR NAME=VALUE...: VAR gets the urlencoded body, TO_SIGN the decoded, sorted
# parameters (what Twilio appends to the URL).
form_body() {
  local var=$1 kv body=""
  shift
  for kv in "$@"; do
    body+="${body:+&}${kv%%=*}=$(jq -rn --arg v "${kv#*=}" '$v | @uri')"
  done
  TO_SIGN=""
  while IFS= read -r kv; do
    TO_SIGN+="${kv%%=*}${kv#*=}"
  done < <(printf '%s\n' "$@" | LC_ALL=C sort -t= -k1,1 -s)
  printf -v "$var" '%s' "$body"
}
# twilio_sig TOKEN URL: signature over URL + $TO_SIGN.
twilio_sig() { printf '%s%s' "$2" "$TO_SIGN" | openssl dgst -sha1 -hmac "$1" -binary | base64 -w0; }

SMS_PATH="/v1/webhooks/$T_TENANT/twilio/sms"
STATUS_PATH="/v1/webhooks/$T_TENANT/twilio/status"
form_body BODY "MessageSid=SM$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" "AccountSid=$SID" \
  "From=+15558675310" "To=+15017122661" "Body=Hello there & more, 100% sure?" "NumMedia=0"
SIG=$(twilio_sig "$TOKEN" "$API_URL$SMS_PATH")

# --- Twilio: rejected requests leave nothing in the stream ------------------------------
n0=$(xlen)
twilio_reject() { # EXPECTED_STATUS MSG CURL_ARGS...
  local want=$1 msg=$2
  shift 2
  assert_status "$want" POST "$@"
  if [ "$want" = 403 ]; then
    assert_eq "$(json_get .error.code)" invalid_signature "$msg: error code"
  fi
  assert_eq "$(xlen)" "$n0" "$msg: nothing enqueued"
}
twilio_reject 403 "no signature" "$SMS_PATH" "${FORM[@]}" --data-binary "$BODY"
twilio_reject 403 "empty signature" "$SMS_PATH" "${FORM[@]}" -H "X-Twilio-Signature;" --data-binary "$BODY"
twilio_reject 403 "wrong token" "$SMS_PATH" "${FORM[@]}" \
  -H "X-Twilio-Signature: $(twilio_sig "x$TOKEN" "$API_URL$SMS_PATH")" --data-binary "$BODY"
twilio_reject 403 "tampered body" "$SMS_PATH" "${FORM[@]}" -H "X-Twilio-Signature: $SIG" \
  --data-binary "$BODY&Extra=1"
twilio_reject 403 "signed for another path" "$STATUS_PATH" "${FORM[@]}" \
  -H "X-Twilio-Signature: $SIG" --data-binary "$BODY"
twilio_reject 403 "signed for https" "$SMS_PATH" "${FORM[@]}" \
  -H "X-Twilio-Signature: $(twilio_sig "$TOKEN" "https://${API_URL#http://}$SMS_PATH")" \
  --data-binary "$BODY"
twilio_reject 403 "query added after signing" "$SMS_PATH?x=1" "${FORM[@]}" \
  -H "X-Twilio-Signature: $SIG" --data-binary "$BODY"
# The AccountSid picks the account: the other account's token does not sign for this SID.
twilio_reject 403 "other account's token" "$SMS_PATH" "${FORM[@]}" \
  -H "X-Twilio-Signature: $(twilio_sig "other-$TOKEN" "$API_URL$SMS_PATH")" --data-binary "$BODY"
bad_body=$T_BODY
# An unknown tenant answers exactly like a bad signature (no existence leak).
U=$((T_TENANT + 1000))
twilio_reject 403 "unknown tenant" "/v1/webhooks/$U/twilio/sms" "${FORM[@]}" \
  -H "X-Twilio-Signature: $(twilio_sig "$TOKEN" "$API_URL/v1/webhooks/$U/twilio/sms")" \
  --data-binary "$BODY"
assert_eq "$T_BODY" "$bad_body" "unknown tenant: same answer as a bad signature"
twilio_reject 415 "JSON body" "$SMS_PATH" -H 'Content-Type: application/json' \
  -H "X-Twilio-Signature: $SIG" --data-binary '{"Body":"x"}'
assert_status 405 GET "$SMS_PATH"

# --- Twilio: accepted ---------------------------------------------------------------------
t0=$(($(date +%s%N) / 1000000))
assert_status 200 POST "$SMS_PATH" "${FORM[@]}" -H "X-Twilio-Signature: $SIG" --data-binary "$BODY" \
  -D "$T_DIR/headers"
t1=$(($(date +%s%N) / 1000000))
assert_eq "$T_BODY" '<?xml version="1.0" encoding="UTF-8"?><Response></Response>' "empty TwiML"
assert_contains "$(tr -d '\r' <"$T_DIR/headers")" "Content-Type: text/xml" "TwiML content type"
assert_eq "$(xlen)" $((n0 + 1)) "one entry"
last_entry
assert_eq "${E[nfields]}" 4 "kind, tenant, at, body and nothing else"
assert_eq "${E[kind]}" twilio_sms "kind"
assert_eq "${E[tenant]}" "$T_TENANT" "tenant"
assert_eq "${E[body]}" "$BODY" "the body exactly as received"
assert_ge "${E[at]}" "$t0" "receive time"
assert_le "${E[at]}" "$t1" "receive time"

# Parameter order does not matter; the form is decoded before signing.
REORDERED=$(printf '%s\n' "$BODY" | tr '&' '\n' | tac | paste -sd '&')
assert_status 200 POST "$SMS_PATH" "${FORM[@]}" -H "X-Twilio-Signature: $SIG" \
  --data-binary "$REORDERED"
# Like the official validators: a signature over the URL without its explicit port.
assert_status 200 POST "$SMS_PATH" "${FORM[@]}" --data-binary "$BODY" \
  -H "X-Twilio-Signature: $(twilio_sig "$TOKEN" "http://127.0.0.1$SMS_PATH")"
assert_eq "$(xlen)" $((n0 + 3)) "three entries"

# Status callback, with a query string (part of the signed URL, byte for byte).
form_body SBODY "MessageSid=SM0123" "MessageStatus=delivered" "AccountSid=$OTHER_SID" "ErrorCode="
Q='?campaign=7&note=a%20b'
assert_status 204 POST "$STATUS_PATH$Q" "${FORM[@]}" --data-binary "$SBODY" \
  -H "X-Twilio-Signature: $(twilio_sig "other-$TOKEN" "$API_URL$STATUS_PATH$Q")"
last_entry
assert_eq "${E[kind]}:${E[tenant]}:${E[body]}" "twilio_status:$T_TENANT:$SBODY" "status entry"
n1=$(xlen)
twilio_reject_n1() { assert_status 403 POST "$@"; assert_eq "$(xlen)" "$n1" "nothing enqueued"; }
twilio_reject_n1 "$STATUS_PATH?campaign=7&note=a+b" "${FORM[@]}" --data-binary "$SBODY" \
  -H "X-Twilio-Signature: $(twilio_sig "other-$TOKEN" "$API_URL$STATUS_PATH$Q")"

# --- SendGrid -----------------------------------------------------------------------------
openssl ecparam -name prime256v1 -genkey -noout -out "$T_DIR/sg.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$T_DIR/other.pem" 2>/dev/null
openssl ecparam -name secp384r1 -genkey -noout -out "$T_DIR/p384.pem" 2>/dev/null
pub() { openssl ec -in "$1" -pubout -outform DER 2>/dev/null | base64 -w0; }
PUB=$(pub "$T_DIR/sg.pem")
SG_PATH="/v1/webhooks/$T_TENANT/sendgrid/events"
JSON=(-H 'Content-Type: application/json')
# sg_post EXPECTED BODY TIMESTAMP KEY: signs TIMESTAMP + BODY with KEY and posts it as
# ${SG_CT:-application/json}.
sg_post() {
  local want=$1 body=$2 ts=$3 key=$4 sig
  shift 4
  sig=$(printf '%s%s' "$ts" "$body" | openssl dgst -sha256 -sign "$key" | base64 -w0)
  assert_status "$want" POST "$SG_PATH" -H "Content-Type: ${SG_CT:-application/json}" --data-binary "$body" \
    -H "X-Twilio-Email-Event-Webhook-Signature: $sig" -H "X-Twilio-Email-Event-Webhook-Timestamp: $ts" "$@"
}
printf -v EVENTS '[{"email":"zo\xc3\xab@example.com","timestamp":%s,"event":"delivered","sg_event_id":"ev-1","sg_message_id":"m1.x","delivery_id":"42","tenant_id":"%s"},\r\n{"email":"a@example.com","event":"open","sg_event_id":"ev-2"}]\r\n' "$(date +%s)" "$T_TENANT"

# Before any key is configured: 403.
n2=$(xlen)
sg_post 403 "$EVENTS" "$(date +%s)" "$T_DIR/sg.pem"
assert_eq "$(xlen)" "$n2" "no key: nothing enqueued"

# The key lives in the SendGrid account's settings, validated as a P-256 public key.
bad_setting() { # JSON FIELD MSG
  t_api POST /v1/provider-accounts "$1"
  assert_eq "$T_STATUS" 422 "$3"
  assert_eq "$(json_get .error.field)" "$2" "$3 (field)"
}
SG_ACCOUNT='"channel":"email","kind":"sendgrid","from":"news@example.com","credentials":{"api_key":"SG.k"}'
bad_setting "{$SG_ACCOUNT,\"settings\":{\"webhook_public_key\":\"not a key\"}}" \
  settings.webhook_public_key "garbage key"
bad_setting "{$SG_ACCOUNT,\"settings\":{\"webhook_public_key\":\"$(pub "$T_DIR/p384.pem")\"}}" \
  settings.webhook_public_key "P-384 key"
bad_setting "{$SG_ACCOUNT,\"settings\":{\"webhook_public_key\":7}}" settings.webhook_public_key "number"
bad_setting "{$SG_ACCOUNT,\"settings\":{\"colour\":\"red\"}}" settings.colour "unknown setting"
bad_setting "{$SG_ACCOUNT,\"settings\":[]}" settings "settings not an object"
bad_setting "{\"channel\":\"sms\",\"kind\":\"sandbox\",\"from\":\"+15550100000\",\"settings\":{\"webhook_public_key\":\"$PUB\"}}" \
  settings.webhook_public_key "not for sandbox accounts"
t_api POST /v1/provider-accounts "{$SG_ACCOUNT,\"settings\":{\"webhook_public_key\":\"$(pub "$T_DIR/other.pem")\"}}"
assert_eq "$T_STATUS" 201 "sendgrid account: $T_BODY"
SGA=$(json_get .id)
t_api PATCH "/v1/provider-accounts/$SGA" "{\"settings\":{\"webhook_public_key\":\"$PUB\"}}"
assert_eq "$T_STATUS:$(json_get .settings.webhook_public_key)" "200:$PUB" "key set by PATCH"
t_api PATCH "/v1/provider-accounts/$SGA" '{"credentials":{"api_key":"SG.rotated"}}'
assert_eq "$T_STATUS:$(json_get .settings.webhook_public_key)" "200:$PUB" "new credentials keep the key"
t_api PATCH "/v1/provider-accounts/$SGA" '{"settings":{"webhook_public_key":"x"}}'
assert_eq "$T_STATUS" 422 "bad key in PATCH"
t_api GET "/v1/provider-accounts/$SGA"
assert_eq "$(json_get .settings.webhook_public_key)" "$PUB" "a rejected PATCH changed nothing"

# The failure above is cached for a few seconds at most; then the new key verifies.
sleep 5.2
sg_post 200 "$EVENTS" "$(date +%s)" "$T_DIR/sg.pem"
assert_eq "$T_BODY" "" "empty answer"
assert_eq "$(xlen)" $((n2 + 1)) "one entry"
last_entry
assert_eq "${E[kind]}:${E[tenant]}:${E[nfields]}" "sendgrid_events:$T_TENANT:4" "sendgrid entry"
assert_eq "${E[body]}" "$EVENTS" "the raw body, CRLFs and UTF-8 included"

n3=$(xlen)
now=$(date +%s)
sg_post 403 "$EVENTS" "$now" "$T_DIR/other.pem"                    # another key (no longer set)
sg_post 403 "$EVENTS" "$((now - 400))" "$T_DIR/sg.pem"             # replayed: too old
assert_eq "$(json_get .error.code)" stale_timestamp "stale timestamp"
sg_post 403 "$EVENTS" "$((now + 400))" "$T_DIR/sg.pem"             # from the future
assert_status 403 POST "$SG_PATH" "${JSON[@]}" --data-binary "$EVENTS"      # no headers
sig=$(printf '%s%s' "$now" "$EVENTS" | openssl dgst -sha256 -sign "$T_DIR/sg.pem" | base64 -w0)
assert_status 403 POST "$SG_PATH" "${JSON[@]}" --data-binary "$EVENTS" \
  -H "X-Twilio-Email-Event-Webhook-Signature: $sig"                            # no timestamp
# Timestamp changed after signing.
assert_status 403 POST "$SG_PATH" "${JSON[@]}" --data-binary "$EVENTS" \
  -H "X-Twilio-Email-Event-Webhook-Signature: $sig" -H "X-Twilio-Email-Event-Webhook-Timestamp: $((now + 1))"
# Body tampered after signing.
assert_status 403 POST "$SG_PATH" "${JSON[@]}" --data-binary "${EVENTS/delivered/bounce}" \
  -H "X-Twilio-Email-Event-Webhook-Signature: $sig" -H "X-Twilio-Email-Event-Webhook-Timestamp: $now"
# Unknown tenant, validly signed.
assert_status 403 POST "/v1/webhooks/$U/sendgrid/events" "${JSON[@]}" --data-binary "$EVENTS" \
  -H "X-Twilio-Email-Event-Webhook-Signature: $sig" -H "X-Twilio-Email-Event-Webhook-Timestamp: $now"
assert_eq "$(json_get .error.code)" invalid_signature "unknown tenant"
SG_CT=text/plain sg_post 415 "$EVENTS" "$now" "$T_DIR/sg.pem"
sg_post 400 '{"not":"an array"}' "$now" "$T_DIR/sg.pem"
assert_eq "$(xlen)" "$n3" "rejected events: nothing enqueued"

# null removes the key (the cache forgets it within its 30 s refresh).
t_api PATCH "/v1/provider-accounts/$SGA" '{"settings":{"webhook_public_key":null}}'
assert_eq "$T_STATUS:$(json_get '.settings | has("webhook_public_key")')" "200:false" "key removed"

# --- Cold cache after a restart: concurrent first requests share one PostgreSQL load; ----
# --- then the hot path never touches PostgreSQL. The API now sits behind a "proxy": -------
# --- CRIER_PUBLIC_URL, not the socket, makes the URL. -------------------------------------
t_stop api
export CRIER_PUBLIC_URL=https://hooks.example.com/
t_start api "$(t_bin crier-api)"
crier_wait_http "$API_URL/healthz" 30 "$T_DIR/api.pid" || t_fail "api did not restart"
form_body SBODY MessageSid=SM0123 MessageStatus=failed "AccountSid=$SID" ErrorCode=30003
SIG2=$(twilio_sig "$TOKEN" "https://hooks.example.com$STATUS_PATH")
commits() {
  t_psql "SELECT pg_stat_force_next_flush(); SELECT xact_commit FROM pg_stat_database
          WHERE datname = current_database()" | tail -n 1
}
# posts N: N signed status callbacks, up to 50 at once; prints "count status" lines.
posts() {
  local i
  for ((i = 0; i < $1; i++)); do
    printf 'url = "%s"\nrequest = "POST"\nheader = "Content-Type: application/x-www-form-urlencoded"\nheader = "X-Twilio-Signature: %s"\ndata-binary = "%s"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n' \
      "$API_URL$STATUS_PATH" "$SIG2" "$SBODY"
  done >"$T_DIR/curl.cfg"
  curl -sS --no-progress-meter -Z --parallel-max 50 -K "$T_DIR/curl.cfg" 2>>"$T_DIR/curl.err" | sort | uniq -c | tr -s ' '
}
n4=$(xlen)
sleep 1.2 # the restart's own queries reach the statistics
c0=$(commits)
assert_eq "$(posts 100)" " 100 204" "100 status callbacks on a cold cache accepted"
assert_eq "$(posts 100)" " 100 204" "100 more on a warm cache accepted"
sleep 1.2
c1=$(commits)
t_log "PostgreSQL commits during 200 webhooks after a restart: $((c1 - c0))"
assert_le $((c1 - c0)) 10 "PostgreSQL transactions during 200 webhooks (one load, this check's own)"
assert_eq "$(xlen)" $((n4 + 200)) "all enqueued"
assert_status 403 POST "$STATUS_PATH" "${FORM[@]}" --data-binary "$SBODY" \
  -H "X-Twilio-Signature: $(twilio_sig "$TOKEN" "$API_URL$STATUS_PATH")"
assert_eq "$(json_get .error.code)" invalid_signature "signed for the socket's URL: rejected"
assert_eq "$(xlen)" $((n4 + 200)) "nothing more enqueued"

# --- Cache pressure: unknown tenants never push real ones out -----------------------------
# Callbacks for 4,200 unknown tenants (the URLs carry no secret: anyone can send them) fill
# the secrets cache (4,096 tenants) with negative entries, all younger than their recheck
# time; a real tenant seen for the first time right after is still served - the least
# recently used negative entry makes room - and so is the tenant cached before the flood.
B=$(t_ctl tenant create cache_b) || t_fail "tenant create"
SIDB="AC$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
CRIER_PROVIDER_SECRET="tokb-$TOKEN" t_ctl provider create "$B" --channel sms --kind twilio \
  --from +15017122662 --account-sid "$SIDB" >/dev/null
for ((i = 1; i <= 4200; i++)); do
  printf 'next\nurl = "%s/v1/webhooks/%d/twilio/status"\nrequest = "POST"\nheader = "Content-Type: application/x-www-form-urlencoded"\nheader = "X-Twilio-Signature: forged"\ndata-binary = "MessageSid=SM1&MessageStatus=sent"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n' \
    "$API_URL" $((B + 100000 + i))
done >"$T_DIR/flood.cfg"
f0=$SECONDS
flood=$(curl -sS --no-progress-meter -Z --parallel-max 8 -K "$T_DIR/flood.cfg" 2>>"$T_DIR/curl.err" |
  sort | uniq -c | tr -s ' ')
t_log "4,200 unknown tenants in $((SECONDS - f0)) s: $flood"
assert_eq "$flood" " 4200 403" "every unknown tenant: 403, none turned away for a full cache"
form_body BBODY MessageSid=SM0456 MessageStatus=sent "AccountSid=$SIDB"
assert_status 204 POST "/v1/webhooks/$B/twilio/status" "${FORM[@]}" --data-binary "$BBODY" \
  -H "X-Twilio-Signature: $(twilio_sig "tokb-$TOKEN" "https://hooks.example.com/v1/webhooks/$B/twilio/status")"
assert_status 204 POST "$STATUS_PATH" "${FORM[@]}" --data-binary "$SBODY" -H "X-Twilio-Signature: $SIG2"

# --- Redis down: 503, the provider retries; back up: accepted -----------------------------
t_redis_kill TERM
assert_status 503 POST "$STATUS_PATH" "${FORM[@]}" --data-binary "$SBODY" -H "X-Twilio-Signature: $SIG2"
assert_eq "$(json_get .error.field)" redis "503 names redis"
# A bad signature is still a 403 (verification first: nothing about the tenant leaks).
assert_status 403 POST "$STATUS_PATH" "${FORM[@]}" --data-binary "$SBODY" -H "X-Twilio-Signature: x$SIG2"
t_redis_start
t_wait_until 15 "api reconnected to redis" bash -c \
  "curl -s -o /dev/null -w '%{http_code}' '$API_URL/readyz' | grep -q 200"
n5=$(xlen)
assert_status 204 POST "$STATUS_PATH" "${FORM[@]}" --data-binary "$SBODY" -H "X-Twilio-Signature: $SIG2"
assert_eq "$(xlen)" $((n5 + 1)) "accepted again"

if grep -q -- "$TOKEN" "$T_DIR"/*.log; then t_fail "auth token in a log"; fi
echo "webhooks ok"
