#!/usr/bin/env bash
# The worker's inbound consumer on SendGrid events (issue 6 item 2), fed straight into
# crier:inbound with XADD after a real email campaign through the fake SendGrid. Each kind:
# processed/deferred (provider_status only), delivered, bounce (hard: suppressed; blocked:
# not), dropped, open/click (once), spamreport, unsubscribe and group_unsubscribe
# (suppression, opted_out_at, the customer's email opt-out for unsubscribes). The delivery
# is found by custom_args delivery_id, or by the sg_message_id prefix; events are deduped
# on sg_event_id; an event for another tenant's delivery, or naming another tenant, changes
# nothing; malformed events in an array are skipped, the others applied.
. "$(dirname "$0")/../lib.sh"
t_init inbound_sendgrid
t_tenant_key
SG_KEY="SG.test-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
rm -f "$T_DIR/sg.port"
t_start fake-sendgrid "$(t_bin fake-sendgrid)" --port 0 --port-file "$T_DIR/sg.port" \
  --api-key "$SG_KEY" --verified-sender @shop.example
t_wait_until 10 "fake-sendgrid port" test -s "$T_DIR/sg.port"
SG_URL="http://127.0.0.1:$(cat "$T_DIR/sg.port")"
crier_wait_http "$SG_URL/_fake/stats" 10 "$T_DIR/fake-sendgrid.pid" || t_fail "fake-sendgrid down"
export CRIER_SENDGRID_BASE_URL=$SG_URL
CRIER_PROVIDER_SECRET=$SG_KEY t_ctl provider create "$T_TENANT" --channel email \
  --kind sendgrid --from news@shop.example --rate 1000 >/dev/null
OTHER=$(t_ctl tenant create other) || t_fail "tenant create"
t_start_api
t_start_dispatcher
t_start_worker

q() { t_psql "$1"; }
settled() {
  local info pending lag
  info=$(t_redis XINFO GROUPS crier:inbound | tr '\n' ' ')
  pending=$(sed -n 's/.*pending \([0-9]*\).*/\1/p' <<<"$info")
  lag=$(sed -n 's/.*lag \([0-9]*\).*/\1/p' <<<"$info")
  [ "${pending:-1}" = 0 ] && [ "${lag:-1}" = 0 ]
}
events() { # TENANT JSON-ARRAY
  t_redis XADD crier:inbound '*' kind sendgrid_events tenant "$1" body "$2" >/dev/null
}
N=14
q "INSERT INTO customers (tenant_id, external_id, first_name, email)
   SELECT $T_TENANT, 'm' || g, 'N' || g, 'Mail' || g || '@Example.com' FROM generate_series(1, $N) g" >/dev/null
t_api POST /v1/campaigns '{"name":"news","channel":"email","segment":{},
  "message":{"subject":"Hi {{first_name}}","text":"Hello {{first_name}}"},
  "send_window":{"start":"00:00","end":"24:00"}}'
assert_eq "$T_STATUS" 201 "email campaign created: $T_BODY"
CID=$(json_get .id)
t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 202 "email campaign launched"
t_wait_until 60 "emails sent" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c \"SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status = 'sent'\")\" = $N ]"

for i in $(seq 1 $N); do
  IFS='|' read -r id xid <<<"$(q "SELECT d.id, d.provider_message_id FROM deliveries d
    JOIN customers c ON c.id = d.customer_id WHERE c.external_id = 'm$i' AND d.campaign_id = $CID")"
  eval "D$i=$id X$i=$xid"
done
NOW=$(date +%s)
ev() { # N EVENT ID [EXTRA JSON]: one event for customer mN with crier's custom_args
  local n=$1 d x
  d=$(eval echo "\$D$n")
  x=$(eval echo "\$X$n")
  printf '{"email":"Mail%s@Example.com","timestamp":%s,"event":"%s","sg_event_id":"%s","sg_message_id":"%s.filter0001p1-1-1-0.0","delivery_id":"%s","tenant_id":"%s"%s}' \
    "$n" "$NOW" "$2" "$3" "$x" "$d" "$T_TENANT" "${4:+,$4}"
}
row_of() { q "SELECT status || '|' || COALESCE(provider_status, '') || '|' || COALESCE(error_code, '')
                || '|' || (opened_at IS NOT NULL) || '|' || (clicked_at IS NOT NULL)
                || '|' || (opted_out_at IS NOT NULL) FROM deliveries WHERE id = $1"; }
supp() { q "SELECT COALESCE(string_agg(reason, ','), '') FROM suppressions WHERE tenant_id = $T_TENANT
            AND channel = 'email' AND address = 'mail$1@example.com'"; }
optout() { q "SELECT email_opt_out FROM customers WHERE tenant_id = $T_TENANT AND external_id = 'm$1'"; }

# m1 by sg_message_id alone (no custom_args)
events "$T_TENANT" "[{\"email\":\"Mail1@Example.com\",\"timestamp\":$NOW,\"event\":\"processed\",\"sg_event_id\":\"e1a\",\"sg_message_id\":\"$X1.filter0001p1-1-1-0.0\"},
  {\"email\":\"Mail1@Example.com\",\"timestamp\":$NOW,\"event\":\"delivered\",\"sg_event_id\":\"e1b\",\"sg_message_id\":\"$X1.filter0001p1-1-1-0.0\"}]"
events "$T_TENANT" "[$(ev 2 deferred e2), $(ev 3 bounce e3 '"type":"bounce","reason":"550 5.1.1 no such user"'),
  $(ev 4 bounce e4 '"type":"blocked"'), $(ev 5 dropped e5), $(ev 6 delivered e6a), $(ev 6 open e6b),
  $(ev 6 open e6c), $(ev 6 click e6d), $(ev 7 spamreport e7), $(ev 8 unsubscribe e8),
  $(ev 9 group_unsubscribe e9 '"asm_group_id":1'), $(ev 10 delivered e10),
  {\"event\":\"delivered\"}, 42, {\"sg_event_id\":\"nokind\"}, $(ev 14 group_resubscribe e14)]"
events "$T_TENANT" "[$(ev 10 delivered e10), $(ev 10 bounce e10 '"type":"bounce"')]" # repeated id
# another tenant's webhook naming our delivery; our webhook with an event naming another tenant
events "$OTHER" "[$(ev 11 bounce e11a '"type":"bounce"')]"
events "$T_TENANT" "[$(ev 12 unsubscribe e12 | sed "s/\"tenant_id\":\"$T_TENANT\"/\"tenant_id\":\"$OTHER\"/")]"
# a delivery id that is not ours: the sg_message_id decides
events "$T_TENANT" "[$(ev 13 delivered e13 | sed "s/\"delivery_id\":\"$D13\"/\"delivery_id\":\"999999\"/")]"
t_wait_until 20 "events applied" settled
assert_eq "$(row_of "$D1")" "delivered|delivered||false|false|false" "processed + delivered, found by sg_message_id"
assert_eq "$(row_of "$D2")" "sent|deferred||false|false|false" "deferred: provider status only"
assert_eq "$(row_of "$D3")" "undelivered|bounce|bounce|false|false|false" "hard bounce"
assert_eq "$(supp 3)" bounce "a hard bounce suppresses the address (lower-cased)"
assert_eq "$(row_of "$D4")" "undelivered|blocked|blocked|false|false|false" "blocked"
assert_eq "$(supp 4)" "" "a blocked message does not suppress"
assert_eq "$(row_of "$D5")" "failed|dropped|dropped|false|false|false" "dropped"
assert_eq "$(row_of "$D6")" "delivered|delivered||true|true|false" "delivered, opened, clicked"
assert_eq "$(q "SELECT opened_at = to_timestamp($NOW) FROM deliveries WHERE id = $D6")" t \
  "opened_at is the event's time"
assert_eq "$(row_of "$D7")" "sent|||false|false|true" "spam report"
assert_eq "$(supp 7)" spamreport "a spam report suppresses"
assert_eq "$(row_of "$D8")" "sent|||false|false|true" "unsubscribe"
assert_eq "$(supp 8)|$(optout 8)" "unsubscribe|t" "an unsubscribe suppresses and opts out"
assert_eq "$(supp 9)|$(optout 9)" "unsubscribe|t" "a group unsubscribe too"
assert_eq "$(row_of "$D10")" "delivered|delivered||false|false|false" "a repeated sg_event_id is applied once"
assert_eq "$(row_of "$D11")|$(supp 11)" "sent|||false|false|false|" "another tenant's webhook changed nothing"
assert_eq "$(row_of "$D12")|$(supp 12)|$(optout 12)" "sent|||false|false|false||f" \
  "an event naming another tenant changed nothing"
assert_eq "$(row_of "$D13")" "delivered|delivered||false|false|false" "a foreign delivery id: found by sg_message_id"
assert_eq "$(row_of "$D14")" "sent|||false|false|false" "group_resubscribe is not acted on"
assert_eq "$(q "SELECT count(*) FROM inbound_seen WHERE tenant_id = $T_TENANT AND key LIKE 'sg:%'")" 16 \
  "each applied event recorded once"
grep -q "3 malformed SendGrid events skipped" "$T_DIR/worker.log" || t_fail "malformed events not logged"
if grep -q "no such user\|Mail[0-9]*@" "$T_DIR/worker.log"; then t_fail "an event's content reached the log"; fi
t_api GET "/v1/campaigns/$CID/stats"
assert_eq "$(jq -cS '.counts' <<<"$T_BODY")" \
  "$(q "SELECT json_object_agg(status, n) FROM (SELECT status, count(*) AS n FROM deliveries
        WHERE campaign_id = $CID GROUP BY status) s" | jq -cS .)" \
  "stats equal the deliveries"
echo "inbound_sendgrid ok"
