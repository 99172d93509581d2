#!/usr/bin/env bash
# Benchmark (not part of the pass/fail suite): 100,000 customers, one SMS
# campaign over Twilio's wire format to the local fake, two workers.
# Prints one figure per line as "name value unit".
#
#   tests/bench/bench_sms.sh            # CRIER_BENCH_CUSTOMERS=100000 by default
#
# It starts its own PostgreSQL (durable settings, as the local stack) and
# Redis under a temporary directory and stops them at the end.
# shellcheck source=tests/bench/lib.sh
. "$(dirname "$0")/lib.sh"
N=${CRIER_BENCH_CUSTOMERS:-100000}
WORKERS=${CRIER_BENCH_WORKERS:-2}
t_init bench
t_tenant_key
t_start_fake_twilio
T_PROVIDER=$(CRIER_PROVIDER_SECRET=fake-auth-token t_ctl provider create "$T_TENANT" \
  --channel sms --kind twilio --from +15550100000 --rate 100000 --account-sid AC00000000000000000000000000000000)
t_start_api

# Import through the API (the real path), timed.
awk -v n="$N" 'BEGIN { for (i = 1; i <= n; i++)
  printf "{\"external_id\":\"b%d\",\"first_name\":\"Name%d\",\"phone\":\"+1555%07d\",\"tags\":[\"bench\"]}\n", i, i, i }' \
  >"$T_DIR/customers.ndjson"
t0=$(date +%s.%N)
assert_status 200 POST /v1/customers/import "${T_AUTH[@]}" -H 'Content-Type: application/x-ndjson' \
  --data-binary @"$T_DIR/customers.ndjson"
t1=$(date +%s.%N)
assert_eq "$(json_get .inserted)" "$N" "imported"

t_start_dispatcher
for i in $(seq 1 "$WORKERS"); do t_start_worker "$i"; done

t_api POST /v1/campaigns '{"name":"bench","channel":"sms","message":{"body":"Hi {{first_name}}, your appointment slot is open. Reply to book."},"segment":{"has_phone":true},"send_window":{"start":"00:00","end":"24:00"}}'
CID=$(json_get .id)
t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 202 "launched"
# Wait for the dispatcher to mark the campaign completed (every delivery
# terminal), polling once a second: a tighter poll of count(*) spent about 5 %
# of the two cores in psql and its backend, taken from the system measured.
# The figure itself comes from the persisted sent_at times, not the poll.
deadline=$((SECONDS + 600))
until [ "$(t_psql "SELECT status FROM campaigns WHERE id = $CID")" = completed ]; do
  [ "$SECONDS" -lt "$deadline" ] || t_fail "timed out waiting for the campaign to complete"
  sleep 1
done
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status = 'sent'")" "$N" "sent"

read -r expand_s total_s <<<"$(t_psql "SELECT extract(epoch FROM expanded_at - launched_at),
  extract(epoch FROM (SELECT max(sent_at) FROM deliveries WHERE campaign_id = $CID) - launched_at)
  FROM campaigns WHERE id = $CID" | tr '|' ' ')"
assert_status 200 GET "$FAKE_URL/_fake/stats"
dups=$(json_get .duplicates)
accepted=$(json_get .accepted)

rss() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$(t_pid "$1")/status"; }
awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN { printf "import_rate %.0f customers/s\n", n / (b - a) }'
awk -v n="$N" -v s="$expand_s" 'BEGIN { printf "expansion_rate %.0f customers/s\n", n / s }'
awk -v n="$N" -v s="$total_s" 'BEGIN { printf "send_rate_end_to_end %.0f sends/s\n", n / s }'
printf 'end_to_end_time %.2f s\n' "$total_s"
printf 'provider_accepted %s messages\n' "$accepted"
printf 'provider_duplicates %s messages\n' "$dups"
printf 'rss_peak_api %s MB\n' "$(rss api)"
printf 'rss_peak_dispatcher %s MB\n' "$(rss dispatcher)"
for i in $(seq 1 "$WORKERS"); do printf 'rss_peak_worker%s %s MB\n' "$i" "$(rss "worker-$i")"; done

# Where the two cores went during the run (user+system CPU seconds).
ticks=$(getconf CLK_TCK)
cpu_of() { awk -v t="$ticks" '{printf "%.1f", ($14 + $15) / t}' "/proc/$1/stat"; }
printf 'cpu_dispatcher %s s\n' "$(cpu_of "$(t_pid dispatcher)")"
for i in $(seq 1 "$WORKERS"); do printf 'cpu_worker%s %s s\n' "$i" "$(cpu_of "$(t_pid "worker-$i")")"; done
printf 'cpu_fake_twilio %s s\n' "$(cpu_of "$(t_pid fake-twilio)")"
pg_cpu=0
pm=$(head -n 1 "$STACK/pg/postmaster.pid")
for p in "$pm" $(pgrep -P "$pm" || true); do
  [ -r "/proc/$p/stat" ] && pg_cpu=$(awk -v a="$pg_cpu" -v t="$ticks" '{printf "%.1f", a + ($14 + $15) / t}' "/proc/$p/stat")
done
printf 'cpu_postgres_backends %s s\n' "$pg_cpu"
redis_pid=$(t_redis INFO server | tr -d '\r' | awk -F: '/^process_id/ {print $2}')
[ -n "$redis_pid" ] && printf 'cpu_redis %s s\n' "$(cpu_of "$redis_pid")"
if [ -n "${CRIER_BENCH_TABSTATS:-}" ]; then
  t_psql "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_dead_tup, pg_size_pretty(pg_relation_size(relid)) FROM pg_stat_user_tables WHERE relname IN ('customers','deliveries','messages','campaign_counters') ORDER BY 1" >"$CRIER_BENCH_TABSTATS"
  t_psql "SELECT indexrelname, idx_scan, pg_size_pretty(pg_relation_size(indexrelid)) FROM pg_stat_user_indexes WHERE relname IN ('customers','deliveries','messages') ORDER BY 1" >>"$CRIER_BENCH_TABSTATS"
fi
