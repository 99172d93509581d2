#!/usr/bin/env bash
# Benchmark (not part of the pass/fail suite): 1,000,000 customers imported
# through `crierctl import` (the API's NDJSON import, chunks of 50,000 lines,
# two requests in flight), then the same file again (every row unchanged).
# Prints one figure per line as "name value unit"; the target is
# import_time <= 20 s on 2 cores with PostgreSQL on the same machine.
#
#   tests/bench/bench_import.sh         # CRIER_BENCH_CUSTOMERS=1000000 by default
#
# It starts its own PostgreSQL (durable settings, as the local stack) and
# Redis under a temporary directory and stops them at the end.
# CRIER_BENCH_IMPORT_ARGS passes options to crierctl import (e.g.
# "--parallel 1 --chunk-lines 100000").
# shellcheck source=tests/bench/lib.sh
. "$(dirname "$0")/lib.sh"
N=${CRIER_BENCH_CUSTOMERS:-1000000}
IMPORT_ARGS=${CRIER_BENCH_IMPORT_ARGS:-}
t_init bench_import
t_tenant_key bench_import
t_start_api

# Customers as a CRM export would have them: names, phone, email, time zone,
# two tags and an attribute (about 190 bytes a line).
FILE="$T_DIR/customers.ndjson"
awk -v n="$N" 'BEGIN {
  split("America/New_York America/Chicago America/Denver America/Los_Angeles Europe/London", tz, " ")
  for (i = 1; i <= n; i++)
    printf "{\"external_id\":\"c%07d\",\"first_name\":\"Name%d\",\"last_name\":\"Last%d\"," \
      "\"phone\":\"+1555%07d\",\"email\":\"user%d@example.com\",\"timezone\":\"%s\"," \
      "\"tags\":[\"bench\",\"t%d\"],\"attributes\":{\"score\":%d}}\n",
      i, i, i, i, i, tz[i % 5 + 1], i % 10, i % 100 }' >"$FILE"

export CRIER_API_URL=$API_URL CRIER_API_KEY=$T_KEY
ticks=$(getconf CLK_TCK)
cpu_of() { awk -v t="$ticks" '{printf "%.1f", ($14 + $15) / t}' "/proc/$1/stat"; }
pg_cpu() {
  local pm p s=0
  pm=$(head -n 1 "$STACK/pg/postmaster.pid")
  for p in "$pm" $(pgrep -P "$pm" || true); do
    [ -r "/proc/$p/stat" ] && s=$(awk -v a="$s" -v t="$ticks" '{printf "%.1f", a + ($14 + $15) / t}' "/proc/$p/stat")
  done
  printf '%s\n' "$s"
}

# run_import LABEL: one timed `crierctl import`; sets ELAPSED, CTL_CPU, API_CPU, PG_CPU,
# WAL_MB (WAL written) and CHECKPOINTS (checkpoints started meanwhile).
run_import() {
  local api0 pg0 t0 t1 out rc=0 lsn0 ck0
  api0=$(cpu_of "$(t_pid api)")
  pg0=$(pg_cpu)
  lsn0=$(t_psql 'SELECT pg_current_wal_lsn()')
  ck0=$(t_psql 'SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter')
  TIMEFORMAT='%U %S'
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086 # IMPORT_ARGS is a list of options
  { time "$CRIER_BIN_DIR/crierctl" import --quiet $IMPORT_ARGS "$FILE" >"$T_DIR/$1.out" 2>"$T_DIR/$1.err"; } 2>"$T_DIR/$1.time" || rc=$?
  t1=$(date +%s.%N)
  [ "$rc" = 0 ] || t_fail "crierctl import ($1) exited $rc: $(tail -n 5 "$T_DIR/$1.err")"
  out=$(cat "$T_DIR/$1.out")
  t_log "$out"
  ELAPSED=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  CTL_CPU=$(awk '{ printf "%.1f", $1 + $2 }' "$T_DIR/$1.time")
  API_CPU=$(awk -v a="$api0" -v b="$(cpu_of "$(t_pid api)")" 'BEGIN { printf "%.1f", b - a }')
  PG_CPU=$(awk -v a="$pg0" -v b="$(pg_cpu)" 'BEGIN { printf "%.1f", b - a }')
  WAL_MB=$(t_psql "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0') / 1048576)")
  CHECKPOINTS=$(($(t_psql 'SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter') - ck0))
}

run_import first
assert_eq "$(t_psql 'SELECT count(*) FROM customers')" "$N" "every customer imported"
awk -v n="$N" -v s="$ELAPSED" 'BEGIN { printf "import_rate %.0f customers/s\n", n / s }'
printf 'import_time %s s\n' "$ELAPSED"
printf 'cpu_api %s s\ncpu_postgres %s s\ncpu_crierctl %s s\n' "$API_CPU" "$PG_CPU" "$CTL_CPU"
printf 'wal_written %s MB\ncheckpoints %s\n' "$WAL_MB" "$CHECKPOINTS"

run_import again
assert_contains "$(cat "$T_DIR/again.out")" "$N unchanged" "a second import changes nothing"
awk -v n="$N" -v s="$ELAPSED" 'BEGIN { printf "reimport_rate %.0f customers/s\n", n / s }'
printf 'reimport_time %s s\n' "$ELAPSED"
printf 'reimport_cpu_api %s s\nreimport_cpu_postgres %s s\n' "$API_CPU" "$PG_CPU"

printf 'rss_peak_api %s MB\n' "$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$(t_pid api)/status")"
printf 'file_size %s MB\n' "$(du -m "$FILE" | cut -f1)"
