#!/usr/bin/env bash
# Email campaigns through SendGrid's v3 mail/send (the fake), issue 5 items 1 and 3: one
# message per eligible customer with the rendered subject, text/plain before text/html (HTML
# values escaped), crier's delivery id in custom_args, the sender's name and reply-to, and
# RFC 8058 List-Unsubscribe (a signed per-recipient URL) + List-Unsubscribe-Post headers;
# the delivery records SendGrid's X-Message-Id; an email opt-out and a customer without an
# email are skipped; 500s are retried and a 429 is retried without using an attempt, each
# message still sent once; a 403 (unverified sender) fails with the provider's code.
. "$(dirname "$0")/../lib.sh"
t_init email_sendgrid
t_tenant_key
SG_KEY="SG.test-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
rm -f "$T_DIR/sg.port"
t_start fake-sendgrid "$(t_bin fake-sendgrid)" --port 0 --port-file "$T_DIR/sg.port" \
  --record "$T_DIR/sg.record" --api-key "$SG_KEY" --verified-sender @shop.example
t_wait_until 10 "fake-sendgrid port" test -s "$T_DIR/sg.port"
SG_URL="http://127.0.0.1:$(cat "$T_DIR/sg.port")"
crier_wait_http "$SG_URL/_fake/stats" 10 "$T_DIR/fake-sendgrid.pid" || t_fail "fake-sendgrid down"
export CRIER_SENDGRID_BASE_URL=$SG_URL
T_PROVIDER=$(CRIER_PROVIDER_SECRET=$SG_KEY t_ctl provider create "$T_TENANT" --channel email \
  --kind sendgrid --from news@shop.example --rate 1000)
t_start_api
t_start_dispatcher
export CRIER_PUBLIC_URL=https://crier.example CRIER_RETRY_BASE_MS=200
t_start_worker
case "$(cat "$T_DIR"/*.log)" in *"$SG_KEY"*) t_fail "the API key reached a log" ;; esac

N=40
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, email, email_opt_out)
        SELECT $T_TENANT, 'm' || g, CASE WHEN g = 3 THEN 'Bo<b>' ELSE 'N' || g END,
               CASE WHEN g = 2 THEN NULL ELSE 'c' || g || '@example.com' END, g = 1
        FROM generate_series(1, $N) g" >/dev/null
assert_status 200 POST "$SG_URL/_fake/config" -d '{"p500":0.15,"p429":0.05,"retry_after":1,"seed":5}'
t_api POST /v1/campaigns '{"name":"news","channel":"email","segment":{},
  "message":{"subject":"Hi {{first_name}}","text":"Hello {{first_name}}","html":"<p>Hello {{first_name}}</p>",
             "from_name":"The Shop","reply_to":"help@shop.example"},
  "send_window":{"start":"00:00","end":"24:00"}}'
assert_eq "$T_STATUS" 201 "email campaign created: $T_BODY"
CID=$(json_get .id)
t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 202 "email campaign launched"
t_wait_until 60 "every delivery terminal" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c \"SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status IN ('sent', 'skipped', 'failed')\")\" = $N ]"

assert_eq "$(t_psql "SELECT string_agg(c.external_id || ':' || d.status || ':' || COALESCE(d.skip_reason, ''), ',' ORDER BY c.id)
  FROM deliveries d JOIN customers c ON c.id = d.customer_id WHERE d.campaign_id = $CID AND d.status <> 'sent'")" \
  "m1:skipped:opted_out,m2:skipped:no_address" "opt-out and missing address skipped, nobody failed"
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status = 'sent'
  AND provider = 'sendgrid' AND provider_message_id ~ '^[A-Za-z0-9_-]{22}$'")" $((N - 2)) \
  "every other customer sent, the X-Message-Id recorded"
assert_status 200 GET "$SG_URL/_fake/stats"
t_log "fake SendGrid: $(jq -c '{accepted, duplicates, faults_500, faults_429}' <<<"$T_BODY")"
assert_eq "$(json_get .accepted)" $((N - 2)) "one message per customer"
assert_eq "$(json_get .duplicates)" 0 "no duplicate"
assert_ge "$(json_get .faults_500)" 1 "500s were injected"
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND attempts > 1")" \
  "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND attempts > 1 AND status = 'sent'")" \
  "retried deliveries were sent"
assert_ge "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND attempts > 1")" 1 \
  "some deliveries were retried"

# The wire format of each message.
while read -r id cust email mid; do
  line=$(jq -c --arg e "$email" 'select(.to == $e)' "$T_DIR/sg.record")
  assert_eq "$(json_get .message_id "$line")" "$mid" "message id of delivery $id"
  assert_eq "$(json_get .delivery_id "$line")" "$id" "custom_args.delivery_id"
  assert_eq "$(json_get .custom_args.tenant_id "$line")" "$T_TENANT" "custom_args.tenant_id"
  assert_eq "$(json_get .from "$line")" news@shop.example "from"
  assert_eq "$(json_get '.content_types | join(",")' "$line")" "text/plain,text/html" "content order"
  assert_eq "$(json_get .list_unsubscribe_post "$line")" "List-Unsubscribe=One-Click" "one-click"
  url=$(json_get .list_unsubscribe "$line")
  [[ "$url" =~ ^\<https://crier\.example/v1/unsubscribe\?token=$T_TENANT\.$cust\.email\.$id\.[0-9]{10}\.[0-9a-f]{32}\>$ ]] ||
    t_fail "List-Unsubscribe of delivery $id: $url"
done < <(t_psql "SELECT d.id, c.id, c.email, d.provider_message_id FROM deliveries d
                 JOIN customers c ON c.id = d.customer_id WHERE d.campaign_id = $CID AND d.status = 'sent'" | tr '|' ' ')
line=$(jq -c 'select(.to == "c3@example.com")' "$T_DIR/sg.record")
assert_eq "$(json_get .subject "$line")" "Hi Bo<b>" "subject rendered (plain text: not escaped)"
assert_eq "$(json_get .reply_to "$line")" help@shop.example "reply-to"
assert_eq "$(t_psql "SELECT body FROM messages m JOIN deliveries d ON d.id = m.delivery_id
  JOIN customers c ON c.id = d.customer_id WHERE c.external_id = 'm3' AND d.campaign_id = $CID")" \
  "Hi Bo<b>

Hello Bo<b>" "the outbound message is stored"

# A sender SendGrid has not verified: 403, failed with the provider's code, not retried.
assert_status 200 POST "$SG_URL/_fake/config" -d '{"p500":0,"p429":0}'
t_psql "UPDATE provider_accounts SET from_address = 'news@elsewhere.example' WHERE id = $T_PROVIDER" >/dev/null
t_stop worker
t_start_worker
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, email, tags)
        VALUES ($T_TENANT, 'x1', 'X', 'x1@example.com', '{x}')" >/dev/null
t_api POST /v1/campaigns '{"name":"unverified","channel":"email","segment":{"tags":["x"]},
  "message":{"subject":"S","text":"T"},"send_window":{"start":"00:00","end":"24:00"}}'
C2=$(json_get .id)
t_api POST "/v1/campaigns/$C2/launch"
t_wait_until 30 "the unverified sender's delivery failed" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c \"SELECT status || ':' || error_code || ':' || attempts FROM deliveries WHERE campaign_id = $C2\")\" = failed:http_403:1 ]"
echo "email_sendgrid ok"
