#!/usr/bin/env bash
# The dispatcher survives SIGKILL at any point of the expansion of a
# campaign over 50,000 customers (45,000 in its segment; issue 4, items 1 and
# 9). It is killed five times at random points, the r-th kill in the r-th
# sixth of the expansion (so each restarted dispatcher, with a new id, must
# take the campaign over once the dead one's lease lapses and move it on),
# and finally left to run to the end. Checks and what each proves:
#   - the kills landed mid-expansion (the campaign is not expanded after the
#     fifth), and each round made progress: the crash-resume is exercised;
#   - deliveries = customers of the segment, one each, nobody outside it
#     (customers without a phone are not matched by has_phone): nothing is
#     lost or doubled across the crashes (checkpointed cursor + dedupe key);
#   - opted-out customers of the segment are 'skipped' with reason 'opted_out'
#     (and the stats say so) and get no job; every other delivery is 'queued'
#     and its id is in crier:jobs:sms: no crash between a page's commit and
#     its XADDs leaves a delivery without a job;
#   - relaunching an expanded campaign creates nothing;
#   - outbox repair: deliveries left 'pending' (committed, never enqueued) get
#     exactly one new job each on restart;
#   - rows above the campaign's release cursor (enqueued_cursor: committed by
#     a page whose XADDs never ran) are released on restart, exactly those.
. "$(dirname "$0")/../lib.sh"
t_init dispatch_crash
t_tenant_key
t_provider_sandbox
t_start_api
N=50000
# Every 10th customer has no phone (outside the segment); of the others,
# every 7th has opted out of SMS (in the segment, skipped).
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, phone, sms_opt_out)
        SELECT $T_TENANT, 'c' || g, 'N' || g,
               CASE WHEN g % 10 = 0 THEN NULL ELSE '+1555' || lpad(g::text, 7, '0') END,
               g % 10 <> 0 AND g % 7 = 0
        FROM generate_series(1, $N) g" >/dev/null
EXPECTED=$(t_psql "SELECT count(*) FROM customers WHERE tenant_id = $T_TENANT AND phone IS NOT NULL")
OPTED=$(t_psql "SELECT count(*) FROM customers WHERE tenant_id = $T_TENANT AND phone IS NOT NULL AND sms_opt_out")
t_log "segment: $EXPECTED customers, $OPTED of them opted out"

t_api POST /v1/campaigns '{"name":"crash","channel":"sms","message":{"body":"Hi {{first_name}}"},"segment":{"has_phone":true},"send_window":{"start":"00:00","end":"24:00"}}'
assert_eq "$T_STATUS" 201 "campaign created"
CID=$(json_get .id)
t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 202 "launched"

deliveries() { t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID"; }
sql_true() { [ "$(t_psql "$1")" = t ]; }
# job_ids FILE: the delivery ids (field d) of crier:jobs:sms, sorted, unique.
job_ids() {
  t_redis --raw XRANGE crier:jobs:sms - + | awk 'prev == "d" {print} {prev = $0}' | sort -u >"$1"
}
# new_job_ids AFTER FILE: the d fields of the entries after stream id AFTER.
new_job_ids() {
  t_redis --raw XRANGE crier:jobs:sms "($1" + | awk 'prev == "d" {print} {prev = $0}' | sort >"$2"
}
last_entry() { t_redis --raw XREVRANGE crier:jobs:sms + - COUNT 1 | head -n 1; }

# Small pages make the expansion long enough to be killed in the middle; a
# short lease lets each restarted dispatcher (new id: host-pid) take the
# campaign over two seconds after the previous one died.
export CRIER_DISPATCH_PAGE=10 CRIER_LEASE_SECONDS=2
# Round r kills at a random point of the r-th sixth of the expansion (in
# deliveries created, whatever the machine's speed), so the kills spread over
# the whole expansion and the last sixth is left for the final run.
SIXTH=$((EXPECTED / 6))
# wait_count TARGET MSG: polls (more finely than t_wait_until) until the
# campaign has TARGET deliveries.
wait_count() {
  local deadline=$((SECONDS + 90))
  until [ "$(deliveries)" -ge "$1" ]; do
    [ "$SECONDS" -lt "$deadline" ] || t_fail "timed out: $2"
    t_alive dispatcher || t_fail "the dispatcher died: $2"
    sleep 0.02
  done
}
prev=0
for round in 1 2 3 4 5; do
  target=$(((round - 1) * SIXTH + 1 + (RANDOM * 32768 + RANDOM) % SIXTH))
  [ "$target" -gt "$prev" ] || target=$((prev + 1))
  t_start_dispatcher
  # This dispatcher must take the campaign over and go on past the target.
  wait_count "$target" "round $round: the expansion reaches $target deliveries"
  t_kill dispatcher KILL
  job_ids "$T_DIR/job_ids"
  t_psql "SELECT id FROM deliveries WHERE campaign_id = $CID AND status = 'queued'" | sort >"$T_DIR/queued_ids"
  nojob=$(comm -23 "$T_DIR/queued_ids" "$T_DIR/job_ids" | wc -l)
  state=$(t_psql "SELECT count(*) || ' deliveries, customer cursor ' || max(k.dispatch_cursor)
                  || ', release cursor ' || max(k.enqueued_cursor) || ' of ' || max(k.last_delivery_id)
                  FROM campaigns k LEFT JOIN deliveries d ON d.campaign_id = k.id WHERE k.id = $CID")
  t_log "round $round: SIGKILL at target $target: $state; $nojob queued without a job"
  now=$(deliveries)
  assert_ge "$now" $((prev + 1)) "round $round made progress"
  prev=$now
done
assert_eq "$(t_psql "SELECT expanded_at IS NULL FROM campaigns WHERE id = $CID")" t \
  "the five kills all landed before the end of the expansion"

unset CRIER_DISPATCH_PAGE
t_start_dispatcher
t_wait_until 90 "expansion finished and released" sql_true \
  "SELECT expanded_at IS NOT NULL AND enqueued_cursor >= last_delivery_id FROM campaigns WHERE id = $CID"
t_wait_until 30 "no pending deliveries" sql_true \
  "SELECT count(*) = 0 FROM deliveries WHERE campaign_id = $CID AND status = 'pending'"

assert_eq "$(deliveries)" "$EXPECTED" "one delivery per customer in the segment"
assert_eq "$(t_psql "SELECT count(DISTINCT customer_id) FROM deliveries WHERE campaign_id = $CID")" \
  "$EXPECTED" "no customer twice"
assert_eq "$(t_psql "SELECT count(*) FROM deliveries d LEFT JOIN customers c ON c.id = d.customer_id
                     WHERE d.campaign_id = $CID AND c.phone IS NULL")" \
  0 "nobody outside the segment"
assert_eq "$(t_psql "SELECT count(*) FROM deliveries d JOIN customers c ON c.id = d.customer_id
                     WHERE d.campaign_id = $CID AND d.status = 'skipped'
                       AND d.skip_reason = 'opted_out' AND c.sms_opt_out")" \
  "$OPTED" "every opted-out customer is skipped as opted_out"
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status = 'queued'")" \
  $((EXPECTED - OPTED)) "everybody else is queued"
t_api GET "/v1/campaigns/$CID/stats"
assert_eq "$T_STATUS" 200 "stats"
assert_eq "$(json_get '.skipped_reasons.opted_out')" "$OPTED" "the stats show the opt-outs"

job_ids "$T_DIR/job_ids"
t_psql "SELECT id FROM deliveries WHERE campaign_id = $CID AND status = 'queued'" | sort >"$T_DIR/queued_ids"
t_psql "SELECT id FROM deliveries WHERE campaign_id = $CID AND status = 'skipped'" | sort >"$T_DIR/skipped_ids"
assert_eq "$(comm -23 "$T_DIR/queued_ids" "$T_DIR/job_ids" | wc -l)" 0 "every queued delivery has a job"
assert_eq "$(comm -12 "$T_DIR/skipped_ids" "$T_DIR/job_ids" | wc -l)" 0 "skipped deliveries get no job"
jobs=$(t_redis XLEN crier:jobs:sms)
t_log "jobs in stream: $jobs for $((EXPECTED - OPTED)) queued deliveries (repeats after a crash are harmless: the claim takes a delivery once)"

# Relaunch: nothing new.
t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 200 "relaunch is idempotent"
assert_eq "$(json_get .already_launched)" true "already launched"
sleep 1
assert_eq "$(deliveries)" "$EXPECTED" "relaunch created nothing"
assert_eq "$(t_redis XLEN crier:jobs:sms)" "$jobs" "relaunch enqueued nothing"

# Outbox repair: rows committed without a job (a crash right after the
# commit) are enqueued on restart, each once.
t_stop dispatcher
t_psql "SELECT id FROM deliveries WHERE campaign_id = $CID AND status = 'queued' ORDER BY id DESC LIMIT 50" |
  sort >"$T_DIR/orphans"
t_psql "UPDATE deliveries SET status = 'pending' WHERE id IN
        (SELECT id FROM deliveries WHERE campaign_id = $CID AND status = 'queued' ORDER BY id DESC LIMIT 50)" >/dev/null
mark=$(last_entry)
t_start_dispatcher
t_wait_until 20 "orphaned pending rows re-enqueued" sql_true \
  "SELECT count(*) = 0 FROM deliveries WHERE campaign_id = $CID AND status = 'pending'"
new_job_ids "$mark" "$T_DIR/orphan_jobs"
assert_eq "$(wc -l <"$T_DIR/orphan_jobs")" 50 "exactly 50 new jobs"
assert_eq "$(comm -3 "$T_DIR/orphans" "$T_DIR/orphan_jobs" | wc -l)" 0 "the new jobs are the 50 orphans"

# Born-queued rows committed by an expansion page whose XADDs never ran sit
# above the campaign's enqueued_cursor: a restart enqueues exactly those.
t_stop dispatcher
t_psql "UPDATE campaigns SET enqueued_cursor = (SELECT max(id) - 30 FROM deliveries WHERE campaign_id = $CID) WHERE id = $CID" >/dev/null
t_psql "SELECT id FROM deliveries WHERE campaign_id = $CID AND status = 'queued'
          AND id > (SELECT enqueued_cursor FROM campaigns WHERE id = $CID)" | sort >"$T_DIR/above"
above=$(wc -l <"$T_DIR/above")
assert_ge "$above" 1 "queued rows above the release cursor"
mark=$(last_entry)
t_start_dispatcher
t_wait_until 20 "unenqueued rows enqueued" sql_true \
  "SELECT enqueued_cursor >= last_delivery_id FROM campaigns WHERE id = $CID"
sleep 0.5 # a stray second release would show now
new_job_ids "$mark" "$T_DIR/above_jobs"
assert_eq "$(wc -l <"$T_DIR/above_jobs")" "$above" "as many new jobs as queued rows above the cursor"
assert_eq "$(comm -3 "$T_DIR/above" "$T_DIR/above_jobs" | wc -l)" 0 \
  "the new jobs are exactly the queued rows above the release cursor"
echo "dispatch_crash ok (5 kills, $EXPECTED deliveries, $OPTED opted out, $jobs jobs)"
