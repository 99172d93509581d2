#!/usr/bin/env bash
# Benchmark (not part of the pass/fail suite): the dispatcher expands one campaign over a
# 1,000,000-customer segment into delivery rows and jobs, with no worker running.
# Target: <= 10 s from launch to the last job, dispatcher RSS <= 64 MB.
# Prints one figure per line as "name value unit".
#
#   tests/bench/bench_expand.sh          # CRIER_BENCH_CUSTOMERS=1000000
#
# The customers are written by SQL (the import is bench_import's subject). The campaign's
# send window is open all day, so every job goes to crier:jobs:sms; a second campaign
# with a closed window measures the deferral path (jobs to crier:delayed).
# shellcheck source=tests/bench/lib.sh
. "$(dirname "$0")/lib.sh"
N=${CRIER_BENCH_CUSTOMERS:-1000000}
t_init bench_expand
t_tenant_key bench
t_provider_sandbox
t_psql "
INSERT INTO customers (tenant_id, external_id, first_name, phone, timezone)
SELECT $T_TENANT, 'c' || g, 'First' || g, '+1555' || lpad(g::text, 7, '0'),
       (ARRAY['UTC', 'America/New_York', 'Europe/Paris', 'Asia/Tokyo'])[1 + g % 4]
FROM generate_series(1, $N) g;" >/dev/null
t_psql "VACUUM ANALYZE customers" >/dev/null
t_start_api
t_start_dispatcher

run() { # name window-json
  t_api POST /v1/campaigns "{\"name\":\"$1\",\"channel\":\"sms\",\"message\":{\"body\":\"Hi {{first_name}}\"},\"segment\":{\"has_phone\":true},\"send_window\":$2}"
  local cid
  cid=$(json_get .id)
  t_api POST "/v1/campaigns/$cid/launch"
  assert_eq "$T_STATUS" 202 "launched"
  t_wait_until 600 "$1 expanded" bash -c \
    "[ -n \"\$(psql -X -At '$CRIER_DATABASE_URL' -c \"SELECT 1 FROM campaigns WHERE id = $cid AND expanded_at IS NOT NULL AND enqueued_cursor >= (SELECT max(id) FROM deliveries WHERE campaign_id = $cid)\")\" ]"
  local s rows
  s=$(t_psql "SELECT extract(epoch FROM expanded_at - launched_at) FROM campaigns WHERE id = $cid")
  rows=$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $cid")
  printf '%s_deliveries %s rows\n' "$1" "$rows"
  printf '%s_time %.2f s\n' "$1" "$s"
  awk -v n="$rows" -v s="$s" -v k="$1" 'BEGIN { printf "%s_rate %.0f customers/s\n", k, n / s }'
}
run expand_open '{"start":"00:00","end":"24:00"}'
printf 'stream_jobs %s entries\n' "$(t_redis XLEN crier:jobs:sms)"
run expand_closed '{"start":"00:00","end":"00:01","days":[1]}'
printf 'delayed_jobs %s entries\n' "$(t_redis ZCARD crier:delayed)"
printf 'rss_peak_dispatcher %s MB\n' "$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$(t_pid dispatcher)/status")"
t_finish
