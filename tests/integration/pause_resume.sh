#!/usr/bin/env bash
# Pause stops the sending (workers leave a paused campaign's jobs unsent);
# resume continues exactly where it stopped: nobody twice, nobody skipped.
. "$(dirname "$0")/../lib.sh"
t_init pause_resume
t_tenant_key
t_start_fake_twilio
CRIER_PROVIDER_SECRET=fake-auth-token t_ctl provider create "$T_TENANT" --channel sms \
  --kind twilio --from +15550100000 --account-sid AC00000000000000000000000000000000 >/dev/null
t_start_api
t_start_dispatcher
# Slow the workers down so the pause lands in the middle of the campaign.
export CRIER_WORKER_CONCURRENCY=2 CRIER_WORKER_BATCH=2
t_start_worker 1
t_start_worker 2
N=3000
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, phone)
        SELECT $T_TENANT, 'c' || g, 'N' || g, '+1555' || lpad(g::text, 7, '0')
        FROM generate_series(1, $N) g" >/dev/null
t_api POST /v1/campaigns '{"name":"p","channel":"sms","message":{"body":"Hi {{first_name}}"},"segment":{"has_phone":true},"send_window":{"start":"00:00","end":"24:00"}}'
CID=$(json_get .id)
t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 202 "launched"

sent() { t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status = 'sent'"; }
t_wait_until 60 "30% sent" bash -c "[ \$(psql -X -At '$CRIER_DATABASE_URL' -c \"SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status = 'sent'\") -ge $((N * 3 / 10)) ]"
t_api POST "/v1/campaigns/$CID/pause"
assert_eq "$T_STATUS" 200 "paused"
sleep 1 # sends already in flight finish
at_pause=$(sent)
sleep 3
after=$(sent)
t_log "sent at pause: $at_pause, three seconds later: $after (of $N)"
assert_eq "$after" "$at_pause" "nothing is sent while paused"
assert_le "$at_pause" $((N * 9 / 10)) "the pause landed before the end"
assert_status 200 GET "$FAKE_URL/_fake/stats"
assert_eq "$(json_get .accepted)" "$at_pause" "the provider got exactly what is recorded as sent"

t_api POST "/v1/campaigns/$CID/resume"
assert_eq "$T_STATUS" 200 "resumed"
t_wait_until 120 "campaign completed" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c 'SELECT status FROM campaigns WHERE id = $CID')\" = completed ]"
assert_eq "$(sent)" "$N" "every customer sent to"
assert_status 200 GET "$FAKE_URL/_fake/stats"
assert_eq "$(json_get .accepted)" "$N" "the provider accepted each customer once"
assert_eq "$(json_get .duplicates)" 0 "nobody twice"
assert_eq "$(json_get .unique_recipients)" "$N" "nobody skipped"
echo "pause_resume ok"
