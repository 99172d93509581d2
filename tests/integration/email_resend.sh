#!/usr/bin/env bash
# A worker killed while its sends are at the provider (issue 5 item 5): the sends are
# ambiguous - the provider accepted them but no answer came back. A live worker reclaims
# the jobs once they are CRIER_ORPHAN_AGE_S idle and
# - marks them 'unknown', never sending again (the default, every channel);
# - sends an email again when its tenant opted in (PATCH /v1/settings
#   {"email_resend_unknown": true}): the provider then holds a duplicate, which that tenant
#   accepted; its SMS are still never sent again.
# Also: the setting's validation, and a worker refusing an orphan age that a live send could
# outlast.
. "$(dirname "$0")/../lib.sh"
t_init email_resend
t_tenant_key
A_TENANT=$T_TENANT A_KEY=$T_KEY
t_tenant_key "${T_NAME}_b"
B_TENANT=$T_TENANT B_KEY=$T_KEY

SG_KEY="SG.test-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
rm -f "$T_DIR/sg.port"
t_start fake-sendgrid "$(t_bin fake-sendgrid)" --port 0 --port-file "$T_DIR/sg.port" \
  --record "$T_DIR/sg.record" --api-key "$SG_KEY" --verified-sender @shop.example
t_wait_until 10 "fake-sendgrid port" test -s "$T_DIR/sg.port"
SG_URL="http://127.0.0.1:$(cat "$T_DIR/sg.port")"
crier_wait_http "$SG_URL/_fake/stats" 10 "$T_DIR/fake-sendgrid.pid" || t_fail "fake-sendgrid down"
export CRIER_SENDGRID_BASE_URL=$SG_URL
t_start_fake_twilio
for t in "$A_TENANT" "$B_TENANT"; do
  CRIER_PROVIDER_SECRET=$SG_KEY t_ctl provider create "$t" --channel email --kind sendgrid \
    --from news@shop.example --rate 1000 >/dev/null
  CRIER_PROVIDER_SECRET=fake-auth-token t_ctl provider create "$t" --channel sms --kind twilio \
    --from +15550100000 --rate 1000 --account-sid AC00000000000000000000000000000000 >/dev/null
done
t_start_api
t_start_dispatcher
export CRIER_PUBLIC_URL=https://crier.example

# --- the setting ---
T_KEY=$B_KEY
t_api GET /v1/settings
assert_eq "$(json_get .email_resend_unknown)" false "off by default"
t_api PATCH /v1/settings '{"email_resend_unknown":"yes"}'
assert_eq "$T_STATUS" 400 "a non-boolean is refused"
assert_eq "$(json_get .error.field)" email_resend_unknown "the error names the field"
t_api GET /v1/settings
assert_eq "$(json_get .email_resend_unknown)" false "a refused PATCH changes nothing"
t_api PATCH /v1/settings '{"email_resend_unknown":true}'
assert_eq "$T_STATUS" 200 "opted in: $T_BODY"
assert_eq "$(json_get .email_resend_unknown)" true "the answer shows it"
t_api PATCH /v1/settings '{"frequency_cap_7d":null}'
assert_eq "$(json_get .email_resend_unknown)" true "other PATCHes keep it"

# --- a worker refuses an orphan age a live send could outlast ---
rc=0
CRIER_ORPHAN_AGE_S=10 CRIER_SEND_TIMEOUT_MS=15000 "$(t_bin crier-worker)" >"$T_DIR/refused.log" 2>&1 || rc=$?
assert_eq "$rc" 2 "orphan age below send timeout + 15 s refused"
grep -q CRIER_ORPHAN_AGE_S "$T_DIR/refused.log" || t_fail "the refusal names CRIER_ORPHAN_AGE_S"

# --- worker 1 hangs at the provider and dies ---
N=6
for t in "$A_TENANT" "$B_TENANT"; do
  t_psql "INSERT INTO customers (tenant_id, external_id, first_name, email, phone)
          SELECT $t, 'c' || g, 'N' || g, 'c' || g || '@example.com', '+1555' || lpad(g::text, 7, '0')
          FROM generate_series(1, $N) g" >/dev/null
done
assert_status 200 POST "$SG_URL/_fake/config" -d '{"paccept_timeout":1,"timeout_ms":120000}'
assert_status 200 POST "$FAKE_URL/_fake/config" -d '{"paccept_timeout":1,"timeout_ms":120000}'
CRIER_SEND_TIMEOUT_MS=100000 CRIER_ORPHAN_AGE_S=200 t_start_worker 1
launch() { # KEY CHANNEL -> CID
  T_KEY=$1
  local msg='{"subject":"Hi","text":"Hello {{first_name}}"}'
  [ "$2" = sms ] && msg='{"body":"Hello {{first_name}}"}'
  t_api POST /v1/campaigns "{\"name\":\"$2\",\"channel\":\"$2\",\"segment\":{},\"message\":$msg,
    \"send_window\":{\"start\":\"00:00\",\"end\":\"24:00\"}}"
  assert_eq "$T_STATUS" 201 "campaign created: $T_BODY"
  local cid
  cid=$(json_get .id)
  t_api POST "/v1/campaigns/$cid/launch"
  assert_eq "$T_STATUS" 202 "launched"
  echo "$cid"
}
CA=$(launch "$A_KEY" email)
CB=$(launch "$B_KEY" email)
CS=$(launch "$B_KEY" sms)
sg_stat() { assert_status 200 GET "$SG_URL/_fake/stats" && json_get ".$1"; }
tw_stat() { assert_status 200 GET "$FAKE_URL/_fake/stats" && json_get ".$1"; }
t_wait_until 30 "every send at the provider, unanswered" bash -c \
  "[ \"\$(curl -s $SG_URL/_fake/stats | jq .faults_accept_timeout)\" = $((2 * N)) ] &&
   [ \"\$(curl -s $FAKE_URL/_fake/stats | jq .faults_accept_timeout)\" = $N ]"
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id IN ($CA, $CB, $CS)
  AND status = 'sending'")" $((3 * N)) "all in flight"
t_kill worker-1 KILL

# --- worker 2 reclaims them ---
assert_status 200 POST "$SG_URL/_fake/config" -d '{"paccept_timeout":0}'
assert_status 200 POST "$FAKE_URL/_fake/config" -d '{"paccept_timeout":0}'
CRIER_ORPHAN_AGE_S=18 CRIER_SEND_TIMEOUT_MS=2000 t_start_worker 2
t_wait_until 90 "every delivery terminal" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c \"SELECT count(*) FROM deliveries
     WHERE campaign_id IN ($CA, $CB, $CS) AND status IN ('sent', 'unknown')\")\" = $((3 * N)) ]"
status_of() { t_psql "SELECT string_agg(DISTINCT status || '/' || attempts, ',') FROM deliveries WHERE campaign_id = $1"; }
assert_eq "$(status_of "$CA")" "unknown/1" "tenant A (no opt-in): emails unknown, never sent again"
assert_eq "$(status_of "$CB")" "sent/2" "tenant B (opted in): emails sent again"
assert_eq "$(status_of "$CS")" "unknown/1" "tenant B's SMS: unknown, never sent again"
sleep 1
assert_eq "$(sg_stat requests)" $((3 * N)) "SendGrid saw A's emails once and B's twice"
assert_eq "$(sg_stat duplicates)" "$N" "the duplicates are B's, which B accepted"
assert_eq "$(tw_stat requests)" "$N" "Twilio saw each SMS once"
assert_eq "$(tw_stat duplicates)" 0 "no duplicate SMS"
grep -q "sent again" "$T_DIR/worker-2.log" || t_fail "the resend is logged"
echo "email_resend ok"
