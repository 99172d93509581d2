#!/usr/bin/env bash
# Unsubscribe links (issue 6 item 4). The List-Unsubscribe URL a worker puts in an email
# (fake SendGrid) works without an API key: GET shows a confirmation page (address masked,
# a POST button) and changes nothing; the RFC 8058 one-click POST opts the customer out of
# that channel only, suppresses the address (reason unsubscribe) and stamps the delivery's
# opted_out_at, idempotently; the next campaign skips them. The token may come in the form
# body; JSON for a client that asks. Missing, tampered, forged and expired tokens are refused
# (400, 403) with a page or JSON and change nothing.
. "$(dirname "$0")/../lib.sh"
t_init unsubscribe
t_tenant_key "Bright & Smiles <Dental>"
SG_KEY="SG.test-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
rm -f "$T_DIR/sg.port"
t_start fake-sendgrid "$(t_bin fake-sendgrid)" --port 0 --port-file "$T_DIR/sg.port" \
  --record "$T_DIR/sg.record" --api-key "$SG_KEY" --verified-sender @shop.example
t_wait_until 10 "fake-sendgrid port" test -s "$T_DIR/sg.port"
SG_URL="http://127.0.0.1:$(cat "$T_DIR/sg.port")"
crier_wait_http "$SG_URL/_fake/stats" 10 "$T_DIR/fake-sendgrid.pid" || t_fail "fake-sendgrid down"
export CRIER_SENDGRID_BASE_URL=$SG_URL
CRIER_PROVIDER_SECRET=$SG_KEY t_ctl provider create "$T_TENANT" --channel email \
  --kind sendgrid --from news@shop.example --rate 1000 >/dev/null
t_start_api # exports CRIER_PUBLIC_URL=$API_URL: the worker's links point at this API
t_start_dispatcher
t_start_worker

[[ "$CRIER_SECRET_KEY" =~ ^[0-9a-fA-F]{64}$ ]] || t_fail "this test mints tokens with a hex CRIER_SECRET_KEY"
# mint TENANT CUSTOMER CHANNEL DELIVERY EXPIRES [KEY]: a token as common/unsub.c signs it.
mint() {
  local payload="$1.$2.$3.$4.$5" sub mac
  sub=$(printf '%s' 'crier unsubscribe v2' |
    openssl dgst -sha256 -mac HMAC -macopt "hexkey:${6:-$CRIER_SECRET_KEY}" -binary | od -An -tx1 | tr -d ' \n')
  mac=$(printf '%s' "$payload" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$sub" -binary |
    od -An -tx1 | tr -d ' \n')
  printf '%s.%s\n' "$payload" "${mac:0:32}"
}

t_psql "INSERT INTO customers (tenant_id, external_id, email, phone) VALUES
  ($T_TENANT, 'u1', 'Ann.Lee@Example.com', '+14155550101'),
  ($T_TENANT, 'u2', 'bob@example.com', NULL),
  ($T_TENANT, 'u3', 'cy@example.com', '+14155550103')" >/dev/null
cust() { t_psql "SELECT id FROM customers WHERE external_id = '$1'"; }
U1=$(cust u1) U2=$(cust u2) U3=$(cust u3)
campaign() {
  t_api POST /v1/campaigns "{\"name\":\"$1\",\"channel\":\"email\",\"segment\":{},
    \"message\":{\"subject\":\"Hi\",\"text\":\"Hello\"},\"send_window\":{\"start\":\"00:00\",\"end\":\"24:00\"}}"
  assert_eq "$T_STATUS" 201 "campaign $1: $T_BODY"
  CID=$(json_get .id)
  t_api POST "/v1/campaigns/$CID/launch"
  assert_eq "$T_STATUS" 202 "campaign $1 launched"
  t_wait_campaign_done "$CID" 60
}
campaign first
C1=$CID
delivery() { t_psql "SELECT id FROM deliveries WHERE campaign_id = $1 AND customer_id = $2"; }
D1=$(delivery "$C1" "$U1")
assert_status 200 GET "$SG_URL/_fake/stats" # flushes the record
line=$(jq -c 'select(.to == "Ann.Lee@Example.com")' "$T_DIR/sg.record")
URL=$(json_get .list_unsubscribe "$line")
URL=${URL#<}
URL=${URL%>}
[[ "$URL" == "$API_URL/v1/unsubscribe?token=$T_TENANT.$U1.email.$D1."* ]] ||
  t_fail "List-Unsubscribe of u1 names tenant, customer, channel and delivery: $URL"
TOKEN=${URL#*token=}
IFS=. read -r _ _ _ _ EXP _ <<<"$TOKEN"
now=$(date +%s)
assert_ge "$EXP" $((now + 30 * 86400)) "the link works for at least 30 days"
assert_le "$EXP" $((now + 366 * 86400)) "but it expires"
assert_eq "$(mint "$T_TENANT" "$U1" email "$D1" "$EXP")" "$TOKEN" "the test mints tokens as crier does"

state() { # CUSTOMER -> sms,email,voice opt-outs | suppressions | opted_out_at set on deliveries
  t_psql "SELECT concat_ws('|', (SELECT concat_ws(',', sms_opt_out, email_opt_out, voice_opt_out)
      FROM customers WHERE id = $1),
    (SELECT string_agg(channel || ':' || address || ':' || reason, ',' ORDER BY id)
      FROM suppressions WHERE tenant_id = $T_TENANT AND address IN
        (SELECT lower(email) FROM customers WHERE id = $1 UNION SELECT phone FROM customers WHERE id = $1)),
    (SELECT count(*) FROM deliveries WHERE customer_id = $1 AND opted_out_at IS NOT NULL))"
}
assert_eq "$(state "$U1")" "f,f,f|0" "u1 subscribed at first"

# GET: a confirmation page, nothing changed.
assert_status 200 GET "$URL" -D "$T_DIR/headers"
assert_contains "$(tr -d '\r' <"$T_DIR/headers")" "Content-Type: text/html" "an HTML page"
assert_contains "$T_BODY" "A***@Example.com" "the address, masked"
case "$T_BODY" in *Ann.Lee*) t_fail "the page shows the whole address" ;; esac
assert_contains "$T_BODY" "Bright &amp; Smiles &lt;Dental&gt;" "who sends (HTML-escaped)"
assert_contains "$T_BODY" '<form method="post" action="'"$API_URL"'/v1/unsubscribe">' "a POST form"
assert_contains "$T_BODY" "name=\"token\" value=\"$TOKEN\"" "carrying the token"
assert_eq "$(state "$U1")" "f,f,f|0" "a GET changes nothing"

# One-click POST (RFC 8058): opted out of email only, suppressed, delivery stamped.
assert_status 200 POST "$URL" -H 'Content-Type: application/x-www-form-urlencoded' \
  --data 'List-Unsubscribe=One-Click'
assert_contains "$T_BODY" "You are unsubscribed" "confirmed"
assert_contains "$T_BODY" "A***@Example.com will get no more emails from Bright &amp; Smiles &lt;Dental&gt;." "what was done"
assert_eq "$(state "$U1")" "f,t,f|email:ann.lee@example.com:unsubscribe|1" \
  "u1 opted out of email, the address suppressed, the delivery stamped"
assert_eq "$(t_psql "SELECT opted_out_at IS NOT NULL FROM deliveries WHERE id = $D1")" t \
  "the delivery that carried the link"
stamp=$(t_psql "SELECT opted_out_at FROM deliveries WHERE id = $D1")
# Idempotent.
assert_status 200 POST "$URL" --data 'List-Unsubscribe=One-Click'
assert_eq "$(state "$U1")" "f,t,f|email:ann.lee@example.com:unsubscribe|1" "a repeat changes nothing"
assert_eq "$(t_psql "SELECT opted_out_at FROM deliveries WHERE id = $D1")" "$stamp" "first stamp kept"
assert_status 200 GET "$URL"
assert_contains "$T_BODY" "already off the list" "the page knows"
case "$T_BODY" in *"<form"*) t_fail "no button once unsubscribed" ;; esac

# The confirmation page's button: the token in the form body; JSON on request.
D2=$(delivery "$C1" "$U2")
T2=$(mint "$T_TENANT" "$U2" email "$D2" $((now + 3600)))
assert_status 200 POST /v1/unsubscribe -H 'Accept: application/json' \
  --data "token=$T2&List-Unsubscribe=One-Click"
assert_eq "$(jq -c '{unsubscribed, channel, address, changed}' <<<"$T_BODY")" \
  '{"unsubscribed":true,"channel":"email","address":"b***@example.com","changed":true}' "JSON reply"
assert_eq "$(state "$U2")" "f,t,f|email:bob@example.com:unsubscribe|1" "u2 opted out"

# An SMS token (no delivery): the phone number, the sms channel only.
T3=$(mint "$T_TENANT" "$U3" sms 0 $((now + 3600)))
assert_status 200 GET "/v1/unsubscribe?token=$T3"
assert_contains "$T_BODY" "+*******0103" "a phone number shows its last digits only"
assert_contains "$T_BODY" "text messages" "the channel in words"
assert_status 200 POST "/v1/unsubscribe?token=$T3"
assert_eq "$(state "$U3")" "t,f,f|sms:+14155550103:unsubscribe|0" "u3 off SMS only"

# Refused: nothing changes for anyone.
before=$(t_psql "SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM (
  SELECT row_to_json(c)::text x FROM customers c UNION ALL SELECT row_to_json(s)::text FROM suppressions s
  UNION ALL SELECT row_to_json(d)::text FROM deliveries d) y")
U3E=$(mint "$T_TENANT" "$U3" email 0 $((now + 3600)))
refuse() { # STATUS CODE WHAT TOKEN-OR-EMPTY
  local q=${4:+?token=$4}
  assert_status "$1" POST "/v1/unsubscribe$q" --data 'List-Unsubscribe=One-Click'
  assert_contains "$T_BODY" "<h1>" "$3: a page"
  assert_status "$1" GET "/v1/unsubscribe$q" -H 'Accept: application/json'
  assert_eq "$(json_get .error.code)" "$2" "$3: JSON error"
}
refuse 400 invalid_token "no token" ""
refuse 400 invalid_token "a tampered MAC" "${U3E%?}$( [ "${U3E: -1}" = 0 ] && echo 1 || echo 0)"
refuse 400 invalid_token "another customer under the MAC" "$T_TENANT.$U2.email.0.$((now + 3600)).${U3E##*.}"
refuse 400 invalid_token "a longer life under the MAC" "$T_TENANT.$U3.email.0.$((now + 7200)).${U3E##*.}"
refuse 400 invalid_token "another key" "$(mint "$T_TENANT" "$U3" email 0 $((now + 3600)) "$(printf 'ab%.0s' $(seq 32))")"
refuse 400 invalid_token "the old format" "$T_TENANT.$U3.email.${U3E##*.}"
refuse 403 token_expired "an expired token" "$(mint "$T_TENANT" "$U3" email 0 $((now - 1)))"
assert_contains "$(curl -sS "$API_URL/v1/unsubscribe?token=$(mint "$T_TENANT" "$U3" email 0 $((now - 1)))")" \
  "expired" "the page says the link expired"
after=$(t_psql "SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM (
  SELECT row_to_json(c)::text x FROM customers c UNION ALL SELECT row_to_json(s)::text FROM suppressions s
  UNION ALL SELECT row_to_json(d)::text FROM deliveries d) y")
assert_eq "$after" "$before" "no refused request changed anything"
# A genuine token for a customer who is gone: nothing to do, said plainly.
assert_status 200 POST "/v1/unsubscribe?token=$(mint "$T_TENANT" 999999 email 0 $((now + 60)))"
assert_contains "$T_BODY" "not on the list" "unknown customer"

# The next campaign leaves the unsubscribed out.
campaign second
assert_eq "$(t_psql "SELECT string_agg(c.external_id || ':' || d.status || ':' || COALESCE(d.skip_reason, ''),
  ',' ORDER BY c.external_id) FROM deliveries d JOIN customers c ON c.id = d.customer_id
  WHERE d.campaign_id = $CID")" "u1:skipped:opted_out,u2:skipped:opted_out,u3:sent:" \
  "u1 and u2 are not emailed again (u3 left SMS only)"
echo "unsubscribe ok"
