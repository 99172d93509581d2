# shellcheck shell=bash
# tests/bench/lib.sh - shared start of the benchmarks: builds the tree (Release-like
# flags), starts a private PostgreSQL (durable settings, as the local stack) and Redis
# under a temporary directory that is stopped and removed on exit, and sources
# tests/lib.sh with that stack, so a benchmark continues with t_init NAME.
#
#   . "$(dirname "$0")/lib.sh"     # sets ROOT, BUILD, STACK
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${CRIER_BUILD_DIR:-$ROOT/build}

if [ ! -x "$BUILD/crier-worker" ]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$BUILD" -j"$(nproc)" >/dev/null

STACK=$(mktemp -d /tmp/crier-bench.XXXXXX)
chmod 755 "$STACK"
bench_cleanup() {
  # CRIER_BENCH_PGLOG=FILE keeps PostgreSQL's server log.
  if [ -n "${CRIER_BENCH_PGLOG:-}" ]; then cp "$(readlink -f "$STACK/pg")/server.log" "$CRIER_BENCH_PGLOG" 2>/dev/null || true; fi
  if [ -n "${CRIER_BENCH_PGSS:-}" ]; then
    (. "$STACK/env" && psql -X "${CRIER_TEST_PG_ADMIN_URL%/postgres}/crier" -c "SELECT calls, rows, round(total_exec_time::numeric, 0) AS exec_ms, round(total_plan_time::numeric, 0) AS plan_ms, round((total_exec_time / calls)::numeric, 3) AS ms_per_call, left(regexp_replace(query, '\s+', ' ', 'g'), 200) AS query FROM pg_stat_statements ORDER BY total_exec_time + total_plan_time DESC LIMIT 40" >"$CRIER_BENCH_PGSS" 2>&1) || true
  fi
  "$ROOT/deploy/stack.sh" stop "$STACK" >/dev/null 2>&1 || true
  rm -rf "$STACK"
}
# tests/lib.sh chains an EXIT trap set before it is sourced.
trap bench_cleanup EXIT
"$ROOT/deploy/stack.sh" start "$STACK" >/dev/null
# CRIER_BENCH_PGCONF="name=value ..." sets server parameters for this run
# (e.g. log_min_duration_statement=0 with CRIER_BENCH_PGLOG).
for kv in ${CRIER_BENCH_PGCONF:-}; do
  (. "$STACK/env" && psql -X -q "$CRIER_TEST_PG_ADMIN_URL" -c "ALTER SYSTEM SET ${kv%%=*} = '${kv#*=}'" \
    -c "SELECT pg_reload_conf()" >/dev/null)
done

# CRIER_BENCH_PGSS=FILE loads pg_stat_statements and writes its top statements
# (by total time) to FILE at the end.
if [ -n "${CRIER_BENCH_PGSS:-}" ]; then
  (. "$STACK/env" && psql -X -q "$CRIER_TEST_PG_ADMIN_URL" -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" \
    >/dev/null)
  "$ROOT/deploy/stack.sh" stop "$STACK" >/dev/null
  "$ROOT/deploy/stack.sh" start "$STACK" >/dev/null
  (. "$STACK/env" && psql -X -q "${CRIER_TEST_PG_ADMIN_URL%/postgres}/crier" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null)
fi

if [ -n "${CRIER_BENCH_AUTOEXPLAIN:-}" ]; then
  (. "$STACK/env" && psql -X -q "$CRIER_TEST_PG_ADMIN_URL" -c "LOAD 'auto_explain'" \
    -c "ALTER SYSTEM SET session_preload_libraries = 'auto_explain'" \
    -c "ALTER SYSTEM SET auto_explain.log_min_duration = '$CRIER_BENCH_AUTOEXPLAIN'" \
    -c "ALTER SYSTEM SET auto_explain.log_nested_statements = on" \
    -c "SELECT pg_reload_conf()" >/dev/null)
fi

export CRIER_BIN_DIR=$BUILD CRIER_STACK_ENV=$STACK/env CRIER_SOURCE_DIR=$ROOT
export CRIER_TEST_TMP=$STACK/run
# shellcheck source=tests/lib.sh
. "$ROOT/tests/lib.sh"
