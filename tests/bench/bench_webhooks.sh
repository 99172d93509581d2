#!/usr/bin/env bash
# Benchmark (not part of the pass/fail suite): verified Twilio status callbacks per second
# and their latency, against crier-api on loopback. webhook-load (tests/bench/webhook_load.c)
# keeps CRIER_BENCH_CONNECTIONS keep-alive connections busy for CRIER_BENCH_SECONDS, each
# request a distinct, validly signed callback; every one is verified (HMAC-SHA1 over the
# public URL and the sorted form), appended to the inbound stream and answered 204.
# Prints one figure per line as "name value unit"; the target is >= 10,000 webhooks/s with
# p99 <= 10 ms on 2 cores (the load generator and Redis share them with the API).
#
#   tests/bench/bench_webhooks.sh     # CRIER_BENCH_CONNECTIONS=64 CRIER_BENCH_SECONDS=10
#   CRIER_BENCH_PERF=/tmp/api.perf tests/bench/bench_webhooks.sh   # also perf-record the API
#
# It starts its own PostgreSQL and Redis under a temporary directory and stops them at the end.
# shellcheck source=tests/bench/lib.sh
. "$(dirname "$0")/lib.sh"
CONNS=${CRIER_BENCH_CONNECTIONS:-64}
SECONDS_RUN=${CRIER_BENCH_SECONDS:-10}
t_init bench_webhooks
t_tenant_key
export CRIER_LOG_LEVEL=warn
t_start_api
TOKEN="bench$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
SID="AC$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
t_api POST /v1/provider-accounts "{\"channel\":\"sms\",\"kind\":\"twilio\",\"from\":\"+15017122661\",
  \"credentials\":{\"account_sid\":\"$SID\",\"auth_token\":\"$TOKEN\"}}"
assert_eq "$T_STATUS" 201 "twilio account"

LOAD="$BUILD/tests/webhook-load"
[ -x "$LOAD" ] || t_fail "$LOAD not built"
STREAM="${CRIER_KEY_PREFIX:-crier:}inbound"
n0=$(t_redis XLEN "$STREAM")
ticks=$(getconf CLK_TCK)
cpu_of() { awk -v t="$ticks" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }
api_pid=$(t_pid api)
redis_pid=$(t_redis INFO server | tr -d '\r' | awk -F: '/^process_id/ {print $2}')
api_cpu0=$(cpu_of "$api_pid")
redis_cpu0=$(cpu_of "$redis_pid")

if [ -n "${CRIER_BENCH_PERF:-}" ]; then
  perf record -g -o "$CRIER_BENCH_PERF" -p "$api_pid" -- sleep "$((SECONDS_RUN + 1))" \
    >"$T_DIR/perf.log" 2>&1 &
  perf_pid=$!
fi
"$LOAD" --connect "${CRIER_HTTP_ADDR}" --url "$CRIER_PUBLIC_URL/v1/webhooks/$T_TENANT/twilio/status" \
  --token "$TOKEN" --sid "$SID" --connections "$CONNS" --duration "$SECONDS_RUN" --warmup 1 \
  --expect 204 | tee "$T_DIR/load.out"
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] || t_fail "webhook-load failed ($rc)"
[ -z "${perf_pid:-}" ] || wait "$perf_pid"

n1=$(t_redis XLEN "$STREAM")
reqs=$(awk '$1 == "webhook_requests" {print $2}' "$T_DIR/load.out")
assert_ge $((n1 - n0)) "$reqs" "every measured webhook is in the inbound stream"
printf 'inbound_stream_entries %s entries\n' "$((n1 - n0))"
awk -v a="$api_cpu0" -v b="$(cpu_of "$api_pid")" -v s="$SECONDS_RUN" \
  'BEGIN { printf "cpu_api %.2f cores\n", (b - a) / (s + 1) }'
awk -v a="$redis_cpu0" -v b="$(cpu_of "$redis_pid")" -v s="$SECONDS_RUN" \
  'BEGIN { printf "cpu_redis %.2f cores\n", (b - a) / (s + 1) }'
awk '$1 == "webhook_rate" {r = $2} $1 == "webhook_latency_p99" {p = $2}
  END { printf "webhook_target_10000_per_s_p99_10_ms %s\n", (r >= 10000 && p <= 10) ? "met" : "missed" }' \
  "$T_DIR/load.out"
printf 'load_average_1m %s\n' "$(cut -d' ' -f1 /proc/loadavg)"
printf 'rss_peak_api %s MB\n' "$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$api_pid/status")"
