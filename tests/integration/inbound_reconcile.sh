#!/usr/bin/env bash
# Reconciliation (issue 6 item 7): deliveries left 'sent' (their status callbacks lost) are
# looked up with GET .../Messages/{Sid}.json and .../Calls/{Sid}.json (the fake Twilio's,
# whose statuses the test sets through /_fake/status) once CRIER_RECONCILE_AFTER_S has
# passed, and the answers go through the status callbacks' own monotonic path: delivered,
# undelivered (with the error code), failed, completed (answered_by) and busy calls end in
# their state; messages the provider still has queued stay 'sent' and are asked about again
# later (doubling). Two workers never ask about the same delivery at once; a delivery whose
# callback came is not asked about; a callback after the reconciliation changes nothing.
. "$(dirname "$0")/../lib.sh"
t_init inbound_reconcile
t_tenant_key
t_start_fake_twilio
ACCT=AC00000000000000000000000000000000
CRIER_PROVIDER_SECRET=fake-auth-token t_ctl provider create "$T_TENANT" --channel sms --kind twilio \
  --from +15550100000 --rate 1000 --account-sid "$ACCT" >/dev/null
CRIER_PROVIDER_SECRET=fake-auth-token t_ctl provider create "$T_TENANT" --channel voice --kind twilio \
  --from +15550100001 --rate 1000 --account-sid "$ACCT" >/dev/null
t_start_api
t_start_dispatcher
export CRIER_RECONCILE_AFTER_S=4 CRIER_RECONCILE_EVERY_S=1 CRIER_RECONCILE_BATCH=7
t_start_worker 1
t_start_worker 2

q() { t_psql "$1"; }
fake_status() { # SID JSON-FIELDS
  assert_status 200 POST "$FAKE_URL/_fake/status" -d "{\"sid\":\"$1\",$2}"
}
fetches() { curl -sS "$FAKE_URL/_fake/stats" | jq -r .fetches; }
sid_of() { q "SELECT d.provider_message_id FROM deliveries d JOIN customers c ON c.id = d.customer_id
              WHERE c.external_id = '$1'"; }
row_of() { q "SELECT d.status || '|' || COALESCE(d.provider_status, '') || '|' || COALESCE(d.error_code, '')
                || '|' || COALESCE(d.answered_by, '')
              FROM deliveries d JOIN customers c ON c.id = d.customer_id WHERE c.external_id = '$1'"; }
sent_count() { [ "$(q "SELECT count(*) FROM deliveries WHERE status = 'sent'")" = "$1" ]; }
count_is() { [ "$(q "$1")" = "$2" ]; }

q "INSERT INTO customers (tenant_id, external_id, phone, tags)
   SELECT $T_TENANT, 'r' || g, '+1555500' || lpad(g::text, 4, '0'), '{sms}' FROM generate_series(1, 20) g" >/dev/null
q "INSERT INTO customers (tenant_id, external_id, phone, tags)
   SELECT $T_TENANT, 'c' || g, '+1555600' || lpad(g::text, 4, '0'), '{voice}' FROM generate_series(1, 6) g" >/dev/null
t_api POST /v1/campaigns '{"name":"texts","channel":"sms","message":{"body":"Hello"},
  "segment":{"tags":["sms"]},"send_window":{"start":"00:00","end":"24:00"}}'
assert_eq "$T_STATUS" 201 "sms campaign: $T_BODY"
CS=$(json_get .id)
t_api POST /v1/campaigns '{"name":"calls","channel":"voice","agent_template_id":"reactivation",
  "segment":{"tags":["voice"]},"send_window":{"start":"00:00","end":"24:00"}}'
assert_eq "$T_STATUS" 201 "voice campaign: $T_BODY"
CV=$(json_get .id)
t_api POST "/v1/campaigns/$CS/launch"
t_api POST "/v1/campaigns/$CV/launch"
t_wait_until 30 "everything sent" sent_count 26

# What the provider knows now (its callbacks were lost), set before anything is old enough.
for i in 1 2 3 4 5 6 7 8; do fake_status "$(sid_of r$i)" '"status":"delivered"'; done
for i in 9 10 11; do fake_status "$(sid_of r$i)" '"status":"undelivered","error_code":30003'; done
fake_status "$(sid_of r12)" '"status":"failed","error_code":30008'
fake_status "$(sid_of r13)" '"status":"sent"'
fake_status "$(sid_of c1)" '"status":"completed","answered_by":"human"'
fake_status "$(sid_of c2)" '"status":"busy"'
fake_status "$(sid_of c3)" '"status":"no-answer"'
# r20's own callback arrives: it is never asked about.
t_redis XADD crier:inbound '*' kind twilio_status tenant "$T_TENANT" \
  body "MessageSid=$(sid_of r20)&MessageStatus=delivered" >/dev/null
assert_eq "$(q "SELECT count(*) FROM deliveries WHERE reconciled_at IS NOT NULL")" 0 "nothing asked yet"

t_wait_until 30 "every 'sent' delivery asked once" count_is \
  "SELECT count(*) FROM deliveries WHERE reconciled_at IS NOT NULL" 25
assert_eq "$(fetches)" 25 "one GET per delivery, whichever worker asked"
t_wait_until 10 "answers applied" sent_count 10
assert_eq "$(row_of r1)" "delivered|delivered||" "delivered"
assert_eq "$(row_of r9)" "undelivered|undelivered|30003|" "undelivered with its code"
assert_eq "$(row_of r12)" "failed|failed|30008|" "failed"
assert_eq "$(row_of r13)" "sent|sent||" "the provider says sent: still sent"
assert_eq "$(row_of r14)" "sent|queued||" "the provider still has it queued"
assert_eq "$(row_of r20)" "delivered|delivered||" "r20 by its callback"
assert_eq "$(q "SELECT reconciled_at IS NULL FROM deliveries d JOIN customers c ON c.id = d.customer_id
  WHERE c.external_id = 'r20'")" t "a delivery whose callback came is not asked about"
assert_eq "$(row_of c1)" "delivered|completed||human" "completed call"
assert_eq "$(row_of c2)" "undelivered|busy|busy|" "busy"
assert_eq "$(row_of c3)" "undelivered|no-answer|no-answer|" "no answer"
assert_eq "$(row_of c4)" "sent|queued||" "a queued call stays sent"
assert_eq "$(q "SELECT count(*) FROM inbound_seen WHERE key = '$(sid_of r1):delivered'")" 1 \
  "the answer went through the callbacks' path (dedupe key)"

# A late callback changes nothing; what is still 'sent' is asked about again, later.
t_redis XADD crier:inbound '*' kind twilio_status tenant "$T_TENANT" \
  body "MessageSid=$(sid_of r9)&MessageStatus=delivered" >/dev/null
fake_status "$(sid_of r14)" '"status":"delivered"'
t_wait_until 30 "the second round" count_is "SELECT status FROM deliveries d JOIN customers c
  ON c.id = d.customer_id WHERE c.external_id = 'r14'" delivered
assert_eq "$(row_of r9)" "undelivered|undelivered|30003|" "a final state never goes back"
assert_ge "$(fetches)" 26 "asked again"
for name in worker-1 worker-2; do
  grep -q "reconciliation: asking Twilio" "$T_DIR/$name.log" || t_log "$name did not reconcile"
  if grep -q "fake-auth-token" "$T_DIR/$name.log"; then t_fail "a secret reached the log"; fi
done
for c in "$CS" "$CV"; do
  t_api GET "/v1/campaigns/$c/stats"
  assert_eq "$(jq -cS '.counts' <<<"$T_BODY")" \
    "$(q "SELECT json_object_agg(status, n) FROM (SELECT status, count(*) AS n FROM deliveries
          WHERE campaign_id = $c GROUP BY status) s" | jq -cS .)" "stats of $c equal the deliveries"
done
echo "inbound_reconcile ok"
