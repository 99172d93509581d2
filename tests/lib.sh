# shellcheck shell=bash
# tests/lib.sh — helpers for crier's bash integration and end-to-end tests.
#
# A test (tests/integration/NAME.sh or tests/e2e/NAME.sh) looks like:
#
#   #!/usr/bin/env bash
#   . "$(dirname "$0")/../lib.sh"
#   t_init my_test                 # fresh database + private redis, migrated
#   t_tenant_key                   # T_TENANT, T_KEY, T_AUTH=(-H "Authorization: Bearer ...")
#   t_start_api                    # API_URL
#   assert_status 200 GET /healthz
#   assert_status 201 POST /v1/campaigns "${T_AUTH[@]}" -d '{"name":"x",...}'
#   id=$(json_get .id)
#   assert_eq "$(json_get .status)" draft "new campaign is a draft"
#
# CTest runs each test with CRIER_BIN_DIR (build tree with the binaries),
# CRIER_STACK_ENV (env file written by deploy/stack.sh: PostgreSQL + Redis of the
# `stack` fixture) and CRIER_SOURCE_DIR. Without a stack env the test exits 77 (skipped).
# Everything a test starts is stopped by t_finish, which runs on EXIT: services by pid,
# then its redis, then its database is dropped; on failure it prints the tails of the
# logs in $T_DIR. A sanitizer report in any service log fails the test.
#
# Strict mode (set -euo pipefail) is on for the test script.
#
# Process helpers, all by name (a name owns $T_DIR/NAME.log and $T_DIR/NAME.pid):
#   t_start NAME CMD...        any background process (inherits exported env)
#   t_start_api                crier-api on a free port; exports API_URL, CRIER_HTTP_ADDR,
#                              CRIER_PUBLIC_URL
#   t_start_dispatcher [ID]    crier-dispatcher (name dispatcher, or dispatcher-ID)
#   t_start_worker [ID]        crier-worker (name worker, or worker-ID); concurrency from
#                              CRIER_WORKER_CONCURRENCY; sandbox sends go to
#                              $CRIER_SANDBOX_LOG ($T_DIR/sandbox.log)
#   t_start_fake_twilio [ARGS] fake-twilio; exports FAKE_URL, FAKE_RECORD and
#                              CRIER_TWILIO_BASE_URL=$FAKE_URL (for workers started after)
#   t_stop NAME [TIMEOUT]      TERM, then KILL after TIMEOUT seconds (default 10)
#   t_kill NAME [SIGNAL]       send SIGNAL (default KILL) and wait until it is gone
#   t_pid NAME / t_alive NAME
#   t_redis_kill [SIGNAL]      kill the test's redis (default KILL); t_redis_start restarts
#                              it on the same port with the same data dir (AOF everysec)
# Data helpers:
#   t_ctl ARGS...              crierctl with the test's env (stdout = its output)
#   t_tenant_key [NAME]        tenant + API key: T_TENANT, T_KEY, T_AUTH (array)
#   t_provider_sandbox [RATE]  sandbox SMS provider account for T_TENANT: T_PROVIDER
#   t_psql SQL                 run SQL on the test database (unaligned, tuples only)
#   t_redis ARGS...            redis-cli against the test's redis
#   t_api METHOD PATH [JSON] [CURL ARGS...]   authenticated JSON request: T_STATUS, T_BODY
#   t_wait_until TIMEOUT MSG CMD...           poll CMD every 0.2 s, fail after TIMEOUT s
#   t_wait_campaign_done ID [TIMEOUT]         until status completed or all terminal
# Assertions (each fails the test with MSG):
#   assert_eq A B MSG, assert_ne A B MSG, assert_ge A B MSG, assert_le A B MSG,
#   assert_contains HAYSTACK NEEDLE MSG, assert_status EXPECTED METHOD URL [CURL ARGS...]
#   (URL may be a path: prefixed with $API_URL; sets T_STATUS and T_BODY),
#   json_get PATH [JSON] (jq -r on $T_BODY by default; "a.b" means ".a.b"), t_fail MSG.
# Knobs: CRIER_TEST_TMP (parent of $T_DIR, default $CRIER_BIN_DIR/testrun; $T_DIR is kept
# only when the test fails, or with CRIER_KEEP_TEST_DIR=1), CRIER_KEEP_TEST_DB=1,
# CRIER_LOG_LEVEL (default info), T_STOP_TIMEOUT (s, default 15), T_LOG_TAIL (lines, 40),
# T_START_GRACE (s a dispatcher/worker must survive at start, 0.3), T_API_WAIT (s, 30),
# T_CURL_TIMEOUT (s, 30). Per-test Redis is persistent (AOF); CRIER_REDIS_FAST=1 turns
# persistence off.

set -euo pipefail

T_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${CRIER_SOURCE_DIR:=$(cd "$T_LIB_DIR/.." && pwd)}"
: "${CRIER_BIN_DIR:=$CRIER_SOURCE_DIR/build}"
export CRIER_SOURCE_DIR CRIER_BIN_DIR
# shellcheck source=deploy/lib.sh
. "$CRIER_SOURCE_DIR/deploy/lib.sh"

if [ -z "${CRIER_STACK_ENV:-}" ] || [ ! -f "${CRIER_STACK_ENV}" ]; then
  echo "SKIP: no stack env (CRIER_STACK_ENV='${CRIER_STACK_ENV:-}'); start one with deploy/stack.sh start DIR" >&2
  exit 77
fi
# shellcheck disable=SC1090
. "$CRIER_STACK_ENV"
: "${CRIER_TEST_PG_ADMIN_URL:?stack env lacks CRIER_TEST_PG_ADMIN_URL}"
export CRIER_LOG_LEVEL="${CRIER_LOG_LEVEL:-info}"

T_NAME=
T_DB=
T_DIR=
T_DB_CREATED=0
T_PROCS=()
T_STATUS=
T_BODY=
T_AUTH=()
T_REDIS_PORT=

t_log() { printf '%s\n' "[$(date +%H:%M:%S)] $*" >&2; }

t_fail() {
  printf '%s\n' "FAIL: $*" >&2
  exit 1
}

t_bin() {
  local b="$CRIER_BIN_DIR/$1"
  [ -x "$b" ] || t_fail "binary $b not built"
  printf '%s\n' "$b"
}

# ----------------------------------------------------------------------------------------
# Set-up and tear-down
# ----------------------------------------------------------------------------------------

t_psql_admin() {
  PGCONNECT_TIMEOUT=10 psql -X -q -A -t -v ON_ERROR_STOP=1 "$CRIER_TEST_PG_ADMIN_URL" -c "$1"
}

# t_init NAME: fresh database t_<name>_<random> owned by the stack's app role, migrated;
# a private redis on a free port; $T_DIR for logs.
t_init() {
  local name=${1:-${0##*/}} san rnd base user i ctl
  T_NAME=$name
  san=$(printf '%s' "${name%.sh}" | LC_ALL=C tr '[:upper:]' '[:lower:]' | LC_ALL=C tr -c 'a-z0-9_' '_')
  san=${san:0:40}
  rnd=$(od -An -tx1 -N4 /dev/urandom | tr -d ' \n')
  T_DB="t_${san}_$rnd"
  T_DIR="${CRIER_TEST_TMP:-$CRIER_BIN_DIR/testrun}/$T_DB"
  mkdir -p "$T_DIR"
  export T_NAME T_DB T_DIR
  t_log "test $T_NAME: dir $T_DIR"

  base=${CRIER_DATABASE_URL%%\?*}
  user=$(printf '%s' "$base" | sed -n 's|^postgres[a-z]*://\([^:@/]*\)[:@].*|\1|p')
  user=${user:-crier}
  for i in 1 2 3 4 5; do
    if t_psql_admin "CREATE DATABASE \"$T_DB\" OWNER \"$user\"" 2>"$T_DIR/createdb.err"; then
      T_DB_CREATED=1
      break
    fi
    # CREATE DATABASE fails when another session uses the template at that moment.
    sleep "0.$((RANDOM % 9 + 1))"
  done
  [ "$T_DB_CREATED" = 1 ] || t_fail "CREATE DATABASE $T_DB: $(cat "$T_DIR/createdb.err")"
  export CRIER_DATABASE_URL="${base%/*}/$T_DB"

  t_redis_start

  if [ -z "${CRIER_SECRET_KEY:-}" ]; then
    CRIER_SECRET_KEY=$(crier_new_secret "$T_DIR/secret_key")
  fi
  export CRIER_SECRET_KEY
  export CRIER_SANDBOX_LOG="$T_DIR/sandbox.log"

  ctl=$(t_bin crierctl)
  if ! "$ctl" migrate >>"$T_DIR/migrate.log" 2>&1; then
    t_fail "crierctl migrate failed (log: $T_DIR/migrate.log)"
  fi
}

# t_redis_start: (re)starts the test's redis in $T_DIR/redis, on the same port as before.
t_redis_start() {
  [ -n "$T_DIR" ] || t_fail "t_redis_start before t_init"
  CRIER_REDIS_FOREGROUND=1 crier_redis_start "$T_DIR/redis" "$T_REDIS_PORT" >/dev/null ||
    t_fail "redis-server did not start (log: $T_DIR/redis/redis.log)"
  T_REDIS_PORT=$CRIER_REDIS_PORT
  export T_REDIS_PORT
  export CRIER_REDIS_URL="redis://127.0.0.1:$T_REDIS_PORT/0"
}

# t_redis_kill [SIGNAL]: kill the test's redis (default KILL) and wait until it is gone.
t_redis_kill() {
  local sig=${1:-KILL} pid i
  pid=$(crier_pid_of "$T_DIR/redis/redis.pid") || return 0
  kill -"$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    [ "$(crier_pid_state "$pid")" = Z ] && break
    sleep 0.1
  done
  wait "$pid" 2>/dev/null || true
  rm -f "$T_DIR/redis/redis.pid"
}

t_redis_stop() { crier_redis_stop "$T_DIR/redis"; }

t_redis() { redis-cli -h 127.0.0.1 -p "$T_REDIS_PORT" "$@"; }

t_psql() {
  PGCONNECT_TIMEOUT=10 psql -X -q -A -t -v ON_ERROR_STOP=1 "$CRIER_DATABASE_URL" -c "$1"
}

# Sanitizer reports in service logs (ASan, LSan, UBSan).
T_SAN_RE='==[0-9]+==ERROR: (Address|Leak|Memory|Thread)Sanitizer|SUMMARY: UndefinedBehaviorSanitizer|:[0-9]+:[0-9]+: runtime error: '

t_finish() {
  local rc=$? i f
  trap - EXIT INT TERM
  set +e
  for ((i = ${#T_PROCS[@]} - 1; i >= 0; i--)); do
    crier_stop_pidfile "$T_DIR/${T_PROCS[i]}.pid" "${T_STOP_TIMEOUT:-15}"
  done
  if [ -n "$T_DIR" ]; then
    t_redis_stop >/dev/null 2>&1
  fi
  if [ -n "$T_DIR" ] && [ "$rc" -ne 77 ]; then
    for f in "$T_DIR"/*.log; do
      [ -f "$f" ] || continue
      if grep -Eq "$T_SAN_RE" "$f"; then
        printf '%s\n' "FAIL: sanitizer report in $f:" >&2
        grep -E -A 30 "$T_SAN_RE" "$f" | head -n 60 >&2
        [ "$rc" -eq 0 ] && rc=1
      fi
    done
  fi
  if [ "$T_DB_CREATED" = 1 ] && [ "${CRIER_KEEP_TEST_DB:-0}" != 1 ]; then
    t_psql_admin "DROP DATABASE IF EXISTS \"$T_DB\" WITH (FORCE)" >/dev/null 2>&1 ||
      printf '%s\n' "warning: could not drop database $T_DB" >&2
  fi
  if [ -n "$T_DIR" ]; then
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
      for f in "$T_DIR"/*.log; do
        [ -s "$f" ] || continue
        printf '%s\n' "----- tail of $f -----" >&2
        tail -n "${T_LOG_TAIL:-40}" "$f" >&2
      done
      if [ -s "$T_DIR/redis/redis.log" ]; then
        printf '%s\n' "----- tail of $T_DIR/redis/redis.log -----" >&2
        grep -v 'overcommit' "$T_DIR/redis/redis.log" | tail -n 8 >&2
      fi
      printf '%s\n' "FAILED ($rc): $T_NAME; files kept in $T_DIR" >&2
    elif [ "${CRIER_KEEP_TEST_DIR:-0}" != 1 ]; then
      rm -rf -- "$T_DIR"
    fi
  fi
  if [ -n "$T_PREV_EXIT_TRAP" ]; then
    (exit "$rc") # the previous trap sees the test's status in $?
    eval "$T_PREV_EXIT_TRAP"
  fi
  exit "$rc"
}
# An EXIT trap the sourcing script set before (a benchmark's own clean-up, say) still runs,
# after t_finish's clean-up.
# shellcheck disable=SC2120 # the positional parameters are set by eval
_t_prev_exit_trap() {
  local t
  t=$(trap -p EXIT)
  [ -n "$t" ] || return 0
  eval "set -- $t"
  printf '%s' "${3:-}"
}
# shellcheck disable=SC2119
T_PREV_EXIT_TRAP=$(_t_prev_exit_trap)
trap t_finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------

# t_start NAME CMD...: background process logging to $T_DIR/NAME.log.
t_start() {
  local name=$1
  shift
  [ -n "$T_DIR" ] || t_fail "t_start before t_init"
  if crier_pid_alive "$T_DIR/$name.pid"; then t_fail "$name is already running"; fi
  crier_start_bg "$T_DIR/$name.log" "$T_DIR/$name.pid" "$@"
  local known=0 p
  for p in "${T_PROCS[@]}"; do [ "$p" = "$name" ] && known=1; done
  [ "$known" = 1 ] || T_PROCS+=("$name")
  t_log "started $name (pid $CRIER_BG_PID)"
}

t_pid() { crier_pid_of "$T_DIR/$1.pid"; }
t_alive() { crier_pid_alive "$T_DIR/$1.pid"; }
t_stop() { crier_stop_pidfile "$T_DIR/$1.pid" "${2:-10}"; }

# t_kill NAME [SIGNAL]: default SIGKILL; waits until the process is gone.
t_kill() {
  local name=$1 sig=${2:-KILL} pid i
  pid=$(crier_pid_of "$T_DIR/$name.pid") || t_fail "t_kill: $name is not running"
  kill -"$sig" "$pid"
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    [ "$(crier_pid_state "$pid")" = Z ] && break
    sleep 0.1
  done
  wait "$pid" 2>/dev/null || true
  t_log "killed $name (pid $pid) with SIG$sig"
}

# _t_check_started NAME: fail when the process died right away.
_t_check_started() {
  sleep "${T_START_GRACE:-0.3}"
  t_alive "$1" || t_fail "$1 exited at start (log: $T_DIR/$1.log): $(tail -n 20 "$T_DIR/$1.log" 2>/dev/null)"
}

t_start_api() {
  local bin port attempt
  bin=$(t_bin crier-api)
  for attempt in 1 2 3; do
    port=$(crier_free_port)
    export CRIER_HTTP_ADDR="127.0.0.1:$port"
    export CRIER_PUBLIC_URL="http://127.0.0.1:$port"
    t_start api "$bin"
    if crier_wait_http "$CRIER_PUBLIC_URL/healthz" "${T_API_WAIT:-30}" "$T_DIR/api.pid"; then
      export API_URL="$CRIER_PUBLIC_URL"
      return 0
    fi
    t_stop api 5
    grep -qi 'in use' "$T_DIR/api.log" 2>/dev/null || break # retry only a port race
  done
  t_fail "crier-api did not become healthy (log: $T_DIR/api.log)"
}

t_start_dispatcher() {
  local name=dispatcher${1:+-$1} bin
  bin=$(t_bin crier-dispatcher)
  t_start "$name" "$bin"
  _t_check_started "$name"
}

t_start_worker() {
  local name=worker${1:+-$1} bin
  bin=$(t_bin crier-worker)
  t_start "$name" "$bin"
  _t_check_started "$name"
}

t_start_fake_twilio() {
  local bin port i
  bin=$(t_bin fake-twilio)
  rm -f "$T_DIR/fake-twilio.port"
  export FAKE_RECORD="$T_DIR/fake-twilio.record"
  t_start fake-twilio "$bin" --port 0 --port-file "$T_DIR/fake-twilio.port" --record "$FAKE_RECORD" "$@"
  for ((i = 0; i < 100; i++)); do
    port=$(cat "$T_DIR/fake-twilio.port" 2>/dev/null || true)
    [ -n "$port" ] && break
    t_alive fake-twilio || break
    sleep 0.1
  done
  [ -n "$port" ] || t_fail "fake-twilio wrote no port file (log: $T_DIR/fake-twilio.log)"
  export FAKE_URL="http://127.0.0.1:$port"
  export CRIER_TWILIO_BASE_URL="$FAKE_URL"
  crier_wait_http "$FAKE_URL/_fake/stats" 10 "$T_DIR/fake-twilio.pid" ||
    t_fail "fake-twilio does not answer on $FAKE_URL"
}

# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------

# t_ctl ARGS...: crierctl; stderr appended to $T_DIR/crierctl.log.
t_ctl() {
  local out rc=0 bin
  bin=$(t_bin crierctl)
  out=$("$bin" "$@" 2>>"$T_DIR/crierctl.log") || rc=$?
  if [ "$rc" -ne 0 ]; then
    printf '%s\n' "crierctl $* failed ($rc): $(tail -n 5 "$T_DIR/crierctl.log")" >&2
    return "$rc"
  fi
  printf '%s\n' "$out"
}

t_tenant_key() {
  T_TENANT=$(t_ctl tenant create "${1:-$T_NAME}") || t_fail "tenant create"
  [ -n "$T_TENANT" ] || t_fail "tenant create printed nothing"
  T_KEY=$(t_ctl apikey create "$T_TENANT") || t_fail "apikey create"
  [ -n "$T_KEY" ] || t_fail "apikey create printed nothing"
  export T_TENANT T_KEY
  # shellcheck disable=SC2034 # used by the tests: "${T_AUTH[@]}"
  T_AUTH=(-H "Authorization: Bearer $T_KEY")
}

t_provider_sandbox() {
  [ -n "${T_TENANT:-}" ] || t_fail "t_provider_sandbox before t_tenant_key"
  T_PROVIDER=$(t_ctl provider create "$T_TENANT" --channel sms --kind sandbox \
    --from +15550100000 ${1:+--rate "$1"}) || t_fail "provider create"
  export T_PROVIDER
}

# ----------------------------------------------------------------------------------------
# HTTP and assertions
# ----------------------------------------------------------------------------------------

_t_url() {
  case "$1" in
    /*)
      [ -n "${API_URL:-}" ] || t_fail "path $1 given but API_URL is not set (t_start_api)"
      printf '%s\n' "$API_URL$1"
      ;;
    *) printf '%s\n' "$1" ;;
  esac
}

# _t_curl METHOD URL [ARGS...]: sets T_STATUS and T_BODY.
_t_curl() {
  local method=$1 url
  url=$(_t_url "$2")
  shift 2
  local bodyf="$T_DIR/.body.$$"
  T_STATUS=$(curl -sS -o "$bodyf" -w '%{http_code}' --max-time "${T_CURL_TIMEOUT:-30}" \
    -X "$method" "$@" "$url") || T_STATUS=000
  T_BODY=$(cat "$bodyf" 2>/dev/null || true)
  rm -f "$bodyf"
}

# assert_status EXPECTED METHOD URL [CURL ARGS...]
assert_status() {
  local expected=$1 method=$2 url=$3
  shift 3
  _t_curl "$method" "$url" "$@"
  if [ "$T_STATUS" != "$expected" ]; then
    t_fail "$method $url: expected HTTP $expected, got $T_STATUS; body: ${T_BODY:0:2000}"
  fi
}

# t_api METHOD PATH [JSON] [CURL ARGS...]: authenticated request (T_KEY), JSON body.
t_api() {
  local method=$1 url=$2 data=${3-}
  shift 2
  [ $# -gt 0 ] && shift
  local args=(-H "Authorization: Bearer ${T_KEY:-}")
  if [ -n "$data" ]; then args+=(-H 'Content-Type: application/json' --data-binary "$data"); fi
  _t_curl "$method" "$url" "${args[@]}" "$@"
}

json_get() {
  local path=$1
  case "$path" in .*) ;; *) path=".$path" ;; esac
  if [ $# -ge 2 ]; then
    jq -r "$path" <<<"$2"
  else
    jq -r "$path" <<<"$T_BODY"
  fi
}

assert_eq() { [ "$1" == "$2" ] || t_fail "${3:-assert_eq}: '$1' != '$2'"; }
assert_ne() { [ "$1" != "$2" ] || t_fail "${3:-assert_ne}: both '$1'"; }
assert_ge() { [ "$1" -ge "$2" ] 2>/dev/null || t_fail "${3:-assert_ge}: '$1' < '$2'"; }
assert_le() { [ "$1" -le "$2" ] 2>/dev/null || t_fail "${3:-assert_le}: '$1' > '$2'"; }
assert_contains() {
  case "$1" in
    *"$2"*) ;;
    *) t_fail "${3:-assert_contains}: '${1:0:500}' does not contain '$2'" ;;
  esac
}

# t_wait_until TIMEOUT MSG CMD...: poll CMD every 0.2 s; fail with MSG after TIMEOUT s.
t_wait_until() {
  local timeout=$1 msg=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || t_fail "timed out after ${timeout}s: $msg"
    sleep 0.2
  done
}

# Delivery statuses that no longer change without outside input.
T_TERMINAL_STATUSES='["sent","delivered","responded","undelivered","failed","unknown","skipped","cancelled"]'

# _t_campaign_done ID: true when the stats say completed, or every delivery is terminal.
_t_campaign_done() {
  t_api GET "/v1/campaigns/$1/stats"
  [ "$T_STATUS" = 200 ] || return 1
  jq -e --argjson term "$T_TERMINAL_STATUSES" '
    (.status == "completed") or
    ((.targeted // 0) > 0 and
     ([(.counts // {}) | to_entries[] | select(.key as $k | $term | index($k)) | .value] | add // 0)
       >= .targeted)' <<<"$T_BODY" >/dev/null
}

# t_wait_campaign_done ID [TIMEOUT]: leaves the last stats in T_BODY.
t_wait_campaign_done() {
  local deadline=$((SECONDS + ${2:-120}))
  until _t_campaign_done "$1"; do
    [ "$SECONDS" -lt "$deadline" ] ||
      t_fail "campaign $1 not done after ${2:-120}s; last stats ($T_STATUS): ${T_BODY:0:1000}"
    sleep 0.5
  done
}
