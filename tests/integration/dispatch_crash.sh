#!/usr/bin/env bash
# The dispatcher survives SIGKILL at any point of an expansion: after a
# restart every customer of the segment has exactly one delivery and every
# delivery has at least one job; relaunching creates nothing new. Also the
# outbox repair: deliveries committed without a job get one on restart.
. "$(dirname "$0")/../lib.sh"
t_init dispatch_crash
t_tenant_key
t_provider_sandbox
t_start_api
N=20000
# Customers 1..N have phones; every 10th has none (outside the segment).
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, phone)
        SELECT $T_TENANT, 'c' || g, 'N' || g,
               CASE WHEN g % 10 = 0 THEN NULL ELSE '+1555' || lpad(g::text, 7, '0') END
        FROM generate_series(1, $N) g" >/dev/null
EXPECTED=$((N - N / 10))

t_api POST /v1/campaigns '{"name":"crash","channel":"sms","message":{"body":"Hi {{first_name}}"},"segment":{"has_phone":true},"send_window":{"start":"00:00","end":"24:00"}}'
assert_eq "$T_STATUS" 201 "campaign created"
CID=$(json_get .id)
t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 202 "launched"

# Small pages make the expansion long enough to be killed in the middle.
export CRIER_DISPATCH_PAGE=10
kills=0
for round in 1 2 3 4 5; do
  t_start_dispatcher
  sleep "0.$((RANDOM % 3 + 1))"
  t_kill dispatcher KILL
  kills=$((kills + 1))
  n=$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID")
  t_log "round $round: $n deliveries after SIGKILL"
done
done_before=$(t_psql "SELECT expanded_at IS NOT NULL FROM campaigns WHERE id = $CID")
t_log "expanded before the final run: $done_before"
assert_eq "$done_before" f "the kills interrupted the expansion"

unset CRIER_DISPATCH_PAGE
t_start_dispatcher
t_wait_until 60 "expansion finished" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c 'SELECT expanded_at IS NOT NULL FROM campaigns WHERE id = $CID')\" = t ]"
# Give the outbox a moment to enqueue anything left pending.
t_wait_until 30 "no pending deliveries" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c \"SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status = 'pending'\")\" = 0 ]"

assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID")" "$EXPECTED" \
  "one delivery per customer in the segment"
assert_eq "$(t_psql "SELECT count(DISTINCT customer_id) FROM deliveries WHERE campaign_id = $CID")" \
  "$EXPECTED" "no customer twice"
assert_eq "$(t_psql "SELECT count(*) FROM deliveries d JOIN customers c ON c.id = d.customer_id WHERE d.campaign_id = $CID AND c.phone IS NULL")" \
  0 "nobody outside the segment"

# Every delivery id appears in the jobs stream at least once.
t_redis --raw XRANGE crier:jobs:sms - + | awk 'prev == "d" {print} {prev = $0}' | sort -u >"$T_DIR/job_ids"
t_psql "SELECT id FROM deliveries WHERE campaign_id = $CID ORDER BY id" | sort -u >"$T_DIR/delivery_ids"
missing=$(comm -23 "$T_DIR/delivery_ids" "$T_DIR/job_ids" | wc -l)
assert_eq "$missing" 0 "every delivery has a job"
jobs=$(t_redis XLEN crier:jobs:sms)
t_log "jobs in stream: $jobs for $EXPECTED deliveries (duplicates are harmless: the claim dedupes)"

# Relaunch: nothing new.
t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 200 "relaunch is idempotent"
assert_eq "$(json_get .already_launched)" true "already launched"
sleep 1
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID")" "$EXPECTED" \
  "relaunch created nothing"

# Outbox repair: rows committed without a job (a crash right after the
# commit) are enqueued on restart.
t_stop dispatcher
t_psql "UPDATE deliveries SET status = 'pending' WHERE id IN
        (SELECT id FROM deliveries WHERE campaign_id = $CID ORDER BY id DESC LIMIT 50)" >/dev/null
before=$(t_redis XLEN crier:jobs:sms)
t_start_dispatcher
t_wait_until 20 "orphaned pending rows re-enqueued" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c \"SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status = 'pending'\")\" = 0 ]"
after=$(t_redis XLEN crier:jobs:sms)
assert_eq "$((after - before))" 50 "exactly the 50 orphans got new jobs"

# Born-queued rows committed by an expansion page whose XADD never ran sit
# above the campaign's enqueued_cursor: a restart enqueues exactly those.
t_stop dispatcher
t_psql "UPDATE campaigns SET enqueued_cursor = (SELECT max(id) - 30 FROM deliveries WHERE campaign_id = $CID) WHERE id = $CID" >/dev/null
before=$(t_redis XLEN crier:jobs:sms)
t_start_dispatcher
t_wait_until 20 "unenqueued rows enqueued" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c \"SELECT enqueued_cursor = (SELECT max(id) FROM deliveries WHERE campaign_id = $CID) FROM campaigns WHERE id = $CID\")\" = t ]"
after=$(t_redis XLEN crier:jobs:sms)
assert_eq "$((after - before))" 30 "exactly the 30 rows above the outbox marker got jobs"
echo "dispatch_crash ok ($kills kills)"
