#!/usr/bin/env bash
# Email campaigns through an SMTP server (the fake), issue 5 item 1: libcurl over smtp://
# with AUTH, one message per eligible customer: multipart/alternative with text/plain before
# text/html, the rendered subject (RFC 2047-encoded when not ASCII, decoded back by the
# server), List-Unsubscribe (the signed per-recipient URL) + List-Unsubscribe-Post, a
# Message-ID kept as the delivery's provider id and X-Crier-Delivery; a 451 (try later) is
# retried and the message still sent once; a 554 fails with the reply code.
. "$(dirname "$0")/../lib.sh"
t_init email_smtp
t_tenant_key
SMTP_PASS="pw-$(od -An -tx1 -N6 /dev/urandom | tr -d ' \n')"
rm -f "$T_DIR/smtp.port" "$T_DIR/smtp.http-port"
t_start fake-smtp "$(t_bin fake-smtp)" --port 0 --http-port 0 --port-file "$T_DIR/smtp.port" \
  --http-port-file "$T_DIR/smtp.http-port" --user crier --pass "$SMTP_PASS" \
  --record "$T_DIR/smtp.record" --record-bodies
t_wait_until 10 "fake-smtp ports" bash -c "test -s '$T_DIR/smtp.port' && test -s '$T_DIR/smtp.http-port'"
SMTP_PORT=$(cat "$T_DIR/smtp.port")
CTL="http://127.0.0.1:$(cat "$T_DIR/smtp.http-port")"
crier_wait_http "$CTL/_fake/stats" 10 "$T_DIR/fake-smtp.pid" || t_fail "fake-smtp down"
t_start_api
t_api POST /v1/provider-accounts "{\"channel\":\"email\",\"kind\":\"smtp\",\"from\":\"news@shop.example\",
  \"rate_per_second\":1000,\"credentials\":{\"host\":\"127.0.0.1\",\"port\":$SMTP_PORT,
  \"username\":\"crier\",\"password\":\"$SMTP_PASS\",\"security\":\"none\"}}"
assert_eq "$T_STATUS" 201 "SMTP account created: $T_BODY"
t_start_dispatcher
export CRIER_PUBLIC_URL=https://crier.example CRIER_RETRY_BASE_MS=200
t_start_worker
case "$(cat "$T_DIR"/*.log)" in *"$SMTP_PASS"*) t_fail "the SMTP password reached a log" ;; esac

N=20
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, email)
        SELECT $T_TENANT, 'm' || g, 'Zoë' || g, 'c' || g || '@example.com'
        FROM generate_series(1, $N) g" >/dev/null
assert_status 200 POST "$CTL/_fake/config" -d '{"p4xx":0.25,"seed":9}'
t_api POST /v1/campaigns '{"name":"smtp","channel":"email","segment":{},
  "message":{"subject":"Grüße {{first_name}}","text":"Hello {{first_name}}","html":"<p>Hello {{first_name}}</p>",
             "from_name":"The Shop"},"send_window":{"start":"00:00","end":"24:00"}}'
assert_eq "$T_STATUS" 201 "email campaign created: $T_BODY"
CID=$(json_get .id)
t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 202 "launched"
t_wait_until 60 "every delivery sent" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c \"SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status = 'sent'\")\" = $N ]"
assert_status 200 GET "$CTL/_fake/stats"
t_log "fake SMTP: $(jq -c '{accepted, duplicates, faults_4xx}' <<<"$T_BODY")"
assert_eq "$(json_get .accepted)" "$N" "one message per customer"
assert_eq "$(json_get .duplicates)" 0 "no duplicate"
assert_ge "$(json_get .faults_4xx)" 1 "451s were injected"
assert_ge "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND attempts > 1")" 1 \
  "deliveries answered 451 were retried"

while read -r id cust email mid; do
  line=$(jq -c --arg e "$email" 'select(.to == $e)' "$T_DIR/smtp.record")
  assert_eq "$(json_get .message_id "$line")" "$mid" "Message-ID of delivery $id"
  assert_eq "$(json_get .delivery_id "$line")" "$id" "X-Crier-Delivery"
  assert_eq "$(json_get .mail_from "$line")" news@shop.example "envelope sender"
  assert_eq "$(json_get .multipart_alternative "$line")" true "multipart/alternative"
  assert_eq "$(json_get .plain_before_html "$line")" true "text/plain before text/html"
  assert_eq "$(json_get .list_unsubscribe_post "$line")" "List-Unsubscribe=One-Click" "one-click"
  url=$(json_get .list_unsubscribe "$line")
  [[ "$url" =~ ^\<https://crier\.example/v1/unsubscribe\?token=$T_TENANT\.$cust\.email\.$id\.[0-9]{10}\.[0-9a-f]{32}\>$ ]] ||
    t_fail "List-Unsubscribe of delivery $id: $url"
done < <(t_psql "SELECT d.id, c.id, c.email, d.provider_message_id FROM deliveries d
                 JOIN customers c ON c.id = d.customer_id WHERE d.campaign_id = $CID" | tr '|' ' ')
line=$(jq -c 'select(.to == "c1@example.com")' "$T_DIR/smtp.record")
assert_eq "$(json_get .subject "$line")" "Grüße Zoë1" "non-ASCII subject encoded and decoded"
assert_contains "$(json_get .from "$line")" "news@shop.example" "From header"

# A permanent refusal: 554, failed with the reply code, not retried.
assert_status 200 POST "$CTL/_fake/config" -d '{"p4xx":0,"p5xx":1}'
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, email, tags)
        VALUES ($T_TENANT, 'x1', 'X', 'x1@example.com', '{x}')" >/dev/null
t_api POST /v1/campaigns '{"name":"refused","channel":"email","segment":{"tags":["x"]},
  "message":{"subject":"S","text":"T"},"send_window":{"start":"00:00","end":"24:00"}}'
C2=$(json_get .id)
t_api POST "/v1/campaigns/$C2/launch"
t_wait_until 30 "the refused delivery failed" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c \"SELECT status || ':' || error_code || ':' || attempts FROM deliveries WHERE campaign_id = $C2\")\" = failed:smtp_554:1 ]"
echo "email_smtp ok"
