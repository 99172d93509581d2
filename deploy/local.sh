#!/usr/bin/env bash
# deploy/local.sh — crier on this machine, on the embedded default (sandbox provider).
#
#   deploy/local.sh up      install missing packages, build, start PostgreSQL + Redis under
#                           .local/, migrate, create the demo tenant / API key / sandbox SMS
#                           account once, start crier-api, crier-dispatcher, crier-worker
#   deploy/local.sh demo    up, then import synthetic customers, launch an SMS campaign and
#                           show its progress until it is done
#   deploy/local.sh stop    stop everything up started (by pid files; the worker may take up
#                           to CRIER_SHUTDOWN_GRACE (30 s) to finish sends in flight)
#   deploy/local.sh status  show what runs
#
# Re-running up/demo is harmless: the servers and services already running are reused (a
# service whose binary was rebuilt is restarted), the demo tenant is created once (kept in
# .local/demo.env), customers are upserted by external_id, and each demo run creates a new
# campaign.
#
# Knobs: CRIER_BUILD_DIR (default build), CRIER_SKIP_BUILD=1, CRIER_HTTP_ADDR (default
# 127.0.0.1:8080, or a free port when 8080 is busy), CRIER_PUBLIC_URL, CRIER_LOG_LEVEL,
# CRIER_LOG_FORMAT, CRIER_WORKER_CONCURRENCY, CRIER_DEMO_CUSTOMERS (default 5000),
# CRIER_DEMO_RATE (sandbox account messages/second, default 500), CRIER_DEMO_TIMEOUT
# (seconds, default 300), CRIER_DEMO_CAMPAIGN_EXTRA (JSON object merged into the campaign).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deploy/lib.sh
. "$ROOT/deploy/lib.sh"

LOCAL="$ROOT/.local"
LOGDIR="$LOCAL/log"
RUNDIR="$LOCAL/run"
BUILD=${CRIER_BUILD_DIR:-build}
case "$BUILD" in
  /*) ;;
  *) BUILD="$ROOT/$BUILD" ;;
esac
SERVICES=(api dispatcher worker)

say() { printf '%s\n' "==> $*" >&2; }
die() {
  printf '%s\n' "crier: error: $*" >&2
  exit 1
}

bin_of() {
  case "$1" in
    api) echo "$BUILD/crier-api" ;;
    dispatcher) echo "$BUILD/crier-dispatcher" ;;
    worker) echo "$BUILD/crier-worker" ;;
    ctl) echo "$BUILD/crierctl" ;;
  esac
}

do_build() {
  if [ "${CRIER_SKIP_BUILD:-0}" = 1 ]; then
    say "skipping build (CRIER_SKIP_BUILD=1)"
    return 0
  fi
  mkdir -p "$LOGDIR"
  say "building into $BUILD (log: $LOGDIR/build.log)"
  if ! { cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release &&
    cmake --build "$BUILD" -j "$(nproc 2>/dev/null || echo 2)"; } >"$LOGDIR/build.log" 2>&1; then
    tail -n 40 "$LOGDIR/build.log" >&2
    die "build failed (full log: $LOGDIR/build.log)"
  fi
}

load_stack_env() {
  # shellcheck disable=SC1091
  . "$LOCAL/env"
  export CRIER_LOG_LEVEL="${CRIER_LOG_LEVEL:-info}"
  export CRIER_SANDBOX_LOG="${CRIER_SANDBOX_LOG:-$LOCAL/sandbox.log}"
}

ctl() { "$(bin_of ctl)" "$@" 2>>"$LOGDIR/crierctl.log"; }

# The demo tenant, key and sandbox account are created once and kept in .local/demo.env.
ensure_demo_tenant() {
  local tenant key provider n
  if [ -f "$LOCAL/demo.env" ]; then
    # shellcheck disable=SC1091
    . "$LOCAL/demo.env"
    # Still there? (the database may have been recreated). An error means "cannot tell".
    n=$(PGCONNECT_TIMEOUT=5 psql -X -q -A -t "$CRIER_DATABASE_URL" \
      -c "SELECT count(*) FROM tenants WHERE id::text = '${CRIER_DEMO_TENANT:-}'" 2>/dev/null || echo '?')
    if [ -n "${CRIER_DEMO_API_KEY:-}" ] && [ "$n" != 0 ]; then
      return 0
    fi
    say "demo tenant in .local/demo.env no longer exists: creating a new one"
  fi
  say "creating the demo tenant, API key and sandbox SMS account"
  tenant=$(ctl tenant create demo) || die "crierctl tenant create failed (log: $LOGDIR/crierctl.log)"
  key=$(ctl apikey create "$tenant") || die "crierctl apikey create failed (log: $LOGDIR/crierctl.log)"
  provider=$(ctl provider create "$tenant" --channel sms --kind sandbox --from +15550100000 \
    --rate "${CRIER_DEMO_RATE:-500}") || die "crierctl provider create failed (log: $LOGDIR/crierctl.log)"
  (
    umask 077
    {
      echo "# demo tenant created by deploy/local.sh; source it"
      echo "CRIER_DEMO_TENANT='$tenant'"
      echo "CRIER_DEMO_API_KEY='$key'"
      echo "CRIER_DEMO_PROVIDER='$provider'"
    } >"$LOCAL/demo.env"
  )
  CRIER_DEMO_TENANT=$tenant
  CRIER_DEMO_API_KEY=$key
  CRIER_DEMO_PROVIDER=$provider
}

# The api listens on CRIER_HTTP_ADDR, else 127.0.0.1:8080, else the address it had last
# time, else a free port. Recorded in .local/api.addr.
choose_api_addr() {
  local addr port
  if [ -n "${CRIER_HTTP_ADDR:-}" ]; then
    printf '%s\n' "$CRIER_HTTP_ADDR"
    return 0
  fi
  if ! crier_port_busy 8080; then
    echo "127.0.0.1:8080"
    return 0
  fi
  addr=$(cat "$LOCAL/api.addr" 2>/dev/null || true)
  if [ -n "$addr" ] && ! crier_port_busy "${addr##*:}"; then
    printf '%s\n' "$addr"
    return 0
  fi
  port=$(crier_free_port)
  say "port 8080 is busy, the api takes $port"
  echo "127.0.0.1:$port"
}

service_running() { crier_pid_alive "$RUNDIR/$1.pid"; }

# start_service NAME: (re)start unless it runs already from an up-to-date binary.
start_service() {
  local name=$1 bin
  bin=$(bin_of "$name")
  [ -x "$bin" ] || die "$bin is missing (build first)"
  if service_running "$name"; then
    if [ "$bin" -nt "$RUNDIR/$name.pid" ]; then
      say "$name: binary rebuilt, restarting"
      crier_stop_pidfile "$RUNDIR/$name.pid" 40
    else
      say "$name: already running (pid $(crier_pid_of "$RUNDIR/$name.pid"))"
      return 0
    fi
  fi
  CRIER_BG_DETACH=1 crier_start_bg "$LOGDIR/$name.log" "$RUNDIR/$name.pid" "$bin"
  say "$name: started (pid $CRIER_BG_PID, log: $LOGDIR/$name.log)"
}

cmd_up() {
  crier_install_deps
  do_build
  mkdir -p "$LOGDIR" "$RUNDIR"
  say "starting PostgreSQL and Redis under .local/"
  "$ROOT/deploy/stack.sh" start "$LOCAL" >/dev/null
  load_stack_env
  say "migrating"
  "$(bin_of ctl)" migrate >>"$LOGDIR/crierctl.log" 2>&1 ||
    {
      tail -n 20 "$LOGDIR/crierctl.log" >&2
      die "crierctl migrate failed"
    }
  ensure_demo_tenant

  local addr
  if service_running api && [ -f "$LOCAL/api.addr" ]; then
    addr=$(cat "$LOCAL/api.addr")
  else
    addr=$(choose_api_addr)
  fi
  echo "$addr" >"$LOCAL/api.addr"
  export CRIER_HTTP_ADDR="$addr"
  export CRIER_PUBLIC_URL="${CRIER_PUBLIC_URL:-http://$addr}"
  API_URL="http://$addr"

  local s
  for s in "${SERVICES[@]}"; do
    start_service "$s"
  done
  if ! crier_wait_http "$API_URL/readyz" 30 "$RUNDIR/api.pid"; then
    tail -n 30 "$LOGDIR/api.log" >&2 || true
    die "crier-api is not ready at $API_URL/readyz (log: $LOGDIR/api.log)"
  fi
  for s in dispatcher worker; do
    service_running "$s" || {
      tail -n 30 "$LOGDIR/$s.log" >&2 || true
      die "crier-$s exited (log: $LOGDIR/$s.log)"
    }
  done

  cat <<EOF

crier is up (sandbox SMS provider: sends are appended to $CRIER_SANDBOX_LOG)
  API:      $API_URL
  API key:  $CRIER_DEMO_API_KEY
  tenant:   $CRIER_DEMO_TENANT (sandbox SMS account ${CRIER_DEMO_PROVIDER:-?}; all in .local/demo.env)
  logs:     .local/log/   stop: deploy/local.sh stop   status: deploy/local.sh status

  export CRIER_API=$API_URL CRIER_KEY=$CRIER_DEMO_API_KEY
  curl -s \$CRIER_API/readyz
  curl -s -H "Authorization: Bearer \$CRIER_KEY" -H 'Content-Type: application/x-ndjson' \\
       --data-binary @customers.ndjson \$CRIER_API/v1/customers/import
  curl -s -H "Authorization: Bearer \$CRIER_KEY" -d '{"name":"hello","channel":"sms",
       "message":{"body":"Hi {{first_name}}!"},"segment":{"has_phone":true}}' \$CRIER_API/v1/campaigns
  curl -s -X POST -H "Authorization: Bearer \$CRIER_KEY" \$CRIER_API/v1/campaigns/ID/launch
  curl -s -H "Authorization: Bearer \$CRIER_KEY" \$CRIER_API/v1/campaigns/ID/stats
EOF
}

# api METHOD PATH [CURL ARGS...]: sets STATUS and BODY.
api() {
  local method=$1 path=$2 out
  shift 2
  out=$(mktemp)
  STATUS=$(curl -sS -o "$out" -w '%{http_code}' --max-time 120 -X "$method" \
    -H "Authorization: Bearer $CRIER_DEMO_API_KEY" "$@" "$API_URL$path") || STATUS=000
  BODY=$(cat "$out")
  rm -f "$out"
}

gen_customers() {
  local n=$1
  awk -v n="$n" 'BEGIN {
    split("Ada Grace Alan Linus Ken Dennis Barbara Margaret Edsger Donald Frances Radia Tim Guido Bjarne Anita", fn, " ")
    split("Lovelace Hopper Turing Torvalds Thompson Ritchie Liskov Hamilton Dijkstra Knuth Allen Perlman Berners-Lee Rossum Stroustrup Borg", ln, " ")
    split("vip new lapsed newsletter spring-promo", tg, " ")
    for (i = 1; i <= n; i++) {
      tags = "\"demo\""
      if (i % 3 == 0) tags = tags ",\"" tg[1 + (i / 3) % 5] "\""
      if (i % 7 == 0) tags = tags ",\"vip\""
      printf "{\"external_id\":\"demo-%06d\",\"first_name\":\"%s\",\"last_name\":\"%s\",", i, fn[1 + i % 16], ln[1 + (i * 7) % 16]
      printf "\"phone\":\"+1555%07d\",\"email\":\"demo%06d@example.com\",\"tags\":[%s]}\n", i, i, tags
    }
  }'
}

# The stats line: "[#####.....]  42%  sent 2100/5000  (done 2150, status running)".
progress_line() {
  jq -r --argjson term '["sent","delivered","responded","undelivered","failed","unknown","skipped","cancelled"]' '
    (.targeted // 0) as $t | (.counts // {}) as $c
    | (($c.sent // 0) + ($c.delivered // 0) + ($c.responded // 0)) as $s
    | ([$c | to_entries[] | select(.key as $k | $term | index($k)) | .value] | add // 0) as $d
    | (if $t > 0 then ($s * 100 / $t | floor) else 0 end) as $pct
    | (if $t > 0 then ($s * 30 / $t | floor) else 0 end) as $w
    | "[" + ("#" * $w) + ("." * (30 - $w)) + "] " + ($pct | tostring) + "%  sent "
      + ($s | tostring) + "/" + ($t | tostring) + "  (done " + ($d | tostring)
      + ", status " + (.status // "?") + ")"' <<<"$1"
}

# done_state: "completed" when the campaign says so, "terminal" when every targeted delivery
# is in a terminal state, else "".
done_state() {
  jq -r --argjson term '["sent","delivered","responded","undelivered","failed","unknown","skipped","cancelled"]' '
    (.targeted // 0) as $t
    | ([(.counts // {}) | to_entries[] | select(.key as $k | $term | index($k)) | .value] | add // 0) as $d
    | if (.status == "completed" or .status == "cancelled") then .status
      elif ($t > 0 and $d >= $t) then "terminal:" + ($t | tostring)
      else "" end' <<<"$1"
}

cmd_demo() {
  cmd_up
  local n=${CRIER_DEMO_CUSTOMERS:-5000} file="$LOCAL/demo-customers.ndjson" campaign body
  say "generating $n synthetic customers ($file)"
  gen_customers "$n" >"$file"
  say "importing them"
  api POST /v1/customers/import -H 'Content-Type: application/x-ndjson' --data-binary "@$file"
  case "$STATUS" in
    2??) printf '%s\n' "$BODY" | jq -c . 2>/dev/null || printf '%s\n' "$BODY" ;;
    *) die "import failed: HTTP $STATUS: ${BODY:0:2000}" ;;
  esac

  # The demo sends at any hour: its window is the whole day (a campaign's
  # default is 09:00-20:00 in each customer's time zone).
  local extra=${CRIER_DEMO_CAMPAIGN_EXTRA:-}
  [ -n "$extra" ] || extra='{}'
  body=$(jq -cn --arg name "demo $(date '+%Y-%m-%d %H:%M:%S')" --argjson extra "$extra" '
    {name: $name, channel: "sms",
     message: {body: "Hi {{first_name}}, this is crier saying hello. Reply STOP to opt out."},
     segment: {has_phone: true},
     send_window: {start: "00:00", end: "24:00"}} * $extra')
  api POST /v1/campaigns -H 'Content-Type: application/json' --data-binary "$body"
  [ "$STATUS" = 201 ] || [ "$STATUS" = 200 ] || die "create campaign failed: HTTP $STATUS: ${BODY:0:2000}"
  campaign=$(jq -r '.id' <<<"$BODY")
  say "campaign $campaign created; launching"
  api POST "/v1/campaigns/$campaign/launch"
  case "$STATUS" in
    2??) ;;
    *) die "launch failed: HTTP $STATUS: ${BODY:0:2000}" ;;
  esac

  local timeout=${CRIER_DEMO_TIMEOUT:-300} deadline line state last_state='' stable=0 tty=0 last_print=0 printed=''
  [ -t 1 ] && tty=1
  deadline=$((SECONDS + timeout))
  while :; do
    api GET "/v1/campaigns/$campaign/stats"
    if [ "$STATUS" = 200 ]; then
      line=$(progress_line "$BODY")
      if [ "$tty" = 1 ]; then
        printf '\r%s\033[K' "$line"
      elif [ $((SECONDS - last_print)) -ge 5 ]; then
        printf '%s\n' "$line"
        last_print=$SECONDS
        printed=$line
      fi
      state=$(done_state "$BODY")
      case "$state" in
        completed | cancelled) break ;;
        terminal:*)
          # Every delivery so far is terminal; wait until targeted stays put (the
          # dispatcher may still be paging through the segment).
          if [ "$state" = "$last_state" ]; then stable=$((stable + 1)); else stable=0; fi
          [ "$stable" -ge 3 ] && break
          ;;
        *) stable=0 ;;
      esac
      last_state=$state
    else
      [ "$tty" = 1 ] && printf '\r\033[K'
      printf '%s\n' "stats: HTTP $STATUS ${BODY:0:300}" >&2
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      [ "$tty" = 1 ] && echo
      crier_warn "campaign $campaign not done after ${timeout}s"
      printf '%s\n' "$BODY" | jq . 2>/dev/null || printf '%s\n' "$BODY"
      return 1
    fi
    sleep 1
  done
  [ "$tty" = 1 ] && echo
  if [ "$tty" = 0 ] && [ "$(progress_line "$BODY")" != "$printed" ]; then
    progress_line "$BODY"
  fi
  say "campaign $campaign done; stats:"
  printf '%s\n' "$BODY" | jq .
}

cmd_stop() {
  local i s
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    s=${SERVICES[i]}
    if service_running "$s"; then
      crier_stop_pidfile "$RUNDIR/$s.pid" 40
      say "$s stopped"
    else
      rm -f "$RUNDIR/$s.pid"
    fi
  done
  if [ -d "$LOCAL" ]; then
    "$ROOT/deploy/stack.sh" stop "$LOCAL"
  fi
  say "stopped"
}

cmd_status() {
  local s rc=0 addr
  for s in "${SERVICES[@]}"; do
    if service_running "$s"; then
      printf '%-11s running (pid %s)\n' "$s:" "$(crier_pid_of "$RUNDIR/$s.pid")"
    else
      printf '%-11s stopped\n' "$s:"
      rc=3
    fi
  done
  if [ -d "$LOCAL" ]; then
    "$ROOT/deploy/stack.sh" status "$LOCAL" || rc=3
  else
    echo "postgresql: stopped"
    echo "redis: stopped"
    rc=3
  fi
  addr=$(cat "$LOCAL/api.addr" 2>/dev/null || true)
  if [ -n "$addr" ] && service_running api; then
    if curl -fsS -o /dev/null --max-time 2 "http://$addr/readyz" 2>/dev/null; then
      echo "api:        http://$addr (ready)"
    else
      echo "api:        http://$addr (NOT ready)"
    fi
  fi
  if [ -f "$LOCAL/demo.env" ]; then
    # shellcheck disable=SC1091
    . "$LOCAL/demo.env"
    echo "demo:       tenant $CRIER_DEMO_TENANT, API key $CRIER_DEMO_API_KEY"
  fi
  return $rc
}

case "${1:-}" in
  up) cmd_up ;;
  demo) cmd_demo ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 up|demo|stop|status" >&2
    exit 2
    ;;
esac
