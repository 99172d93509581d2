#!/usr/bin/env bash
# Live campaign events (issue 6, item 6): GET /v1/campaigns/{id}/events (server-sent
# events) and crierctl watch.
#
# What each check proves:
# - the stream is authenticated like every route (401 without a valid key, 404 for
#   another tenant's or a missing campaign);
# - a paced campaign read with curl -N from before its launch: the first event is
#   "stats" at once, progress appears as it runs (several stats events, terminal
#   rising through values between 0 and N), the last stats equal GET /stats, then
#   "event: done" with the final status, and the server ends the stream (curl exits
#   by itself);
# - crierctl watch (not a terminal: key=value lines) follows the same campaign live
#   and exits 0 with "done status=completed"; on a completed campaign it prints one
#   line with the final figures and the done line; a refused key, a missing campaign
#   and an unreachable API each exit 1 with a message naming the cause;
# - a quiet stream carries keep-alive comments (CRIER_EVENTS_HEARTBEAT=1);
# - at most CRIER_EVENTS_MAX_STREAMS (4 here) streams: the fifth is a 503; when a
#   client disconnects its slot is freed (a new stream is accepted again);
# - cancelling a campaign ends its stream with "event: done" {"status":"cancelled"};
# - SIGTERM ends open streams at once (each client sees a clean end) and the API exits
#   well within its grace period.
. "$(dirname "$0")/../lib.sh"
t_init events_sse
t_tenant_key other
OTHER_KEY=$T_KEY
t_tenant_key
t_provider_sandbox
export CRIER_EVENTS_POLL_MS=100 CRIER_EVENTS_HEARTBEAT=1 CRIER_EVENTS_MAX_STREAMS=4
t_start_api
t_start_dispatcher
t_start_worker
export CRIER_API_URL=$API_URL CRIER_API_KEY=$T_KEY

N=60
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, phone)
        SELECT $T_TENANT, 'w' || g, 'W' || g, '+1555' || lpad(g::text, 7, '0')
        FROM generate_series(1, $N) g" >/dev/null

new_campaign() { # NAME [RATE_PER_MINUTE]: prints the id
  t_api POST /v1/campaigns "{\"name\":\"$1\",\"channel\":\"sms\",\"message\":{\"body\":\"Hi {{first_name}}\"},
    \"segment\":{},\"send_window\":{\"start\":\"00:00\",\"end\":\"24:00\"}${2:+,\"rate_per_minute\":$2}}"
  [ "$T_STATUS" = 201 ] || t_fail "create campaign $1: $T_STATUS $T_BODY"
  json_get .id
}
# stream CAMPAIGN FILE: curl -N the campaign's events into FILE in the background;
# sets SPID to curl's pid.
stream() {
  curl -sN -H "Authorization: Bearer $T_KEY" "$API_URL/v1/campaigns/$1/events" >"$2" 2>/dev/null &
  SPID=$!
}
# stats_data FILE: the data of each stats event, one JSON per line.
stats_data() { awk '/^event: stats$/ { getline; sub(/^data: /, ""); print }' "$1"; }
gone() { ! kill -0 "$1" 2>/dev/null; }
ctl() { "$(t_bin crierctl)" "$@"; }

# Authentication and 404s.
assert_status 401 GET "/v1/campaigns/1/events"
assert_status 401 GET "/v1/campaigns/1/events" -H "Authorization: Bearer crier_0000000000000000_x"
C=$(new_campaign live 900)
assert_status 404 GET "/v1/campaigns/$C/events" -H "Authorization: Bearer $OTHER_KEY"
assert_eq "$(json_get .error.code)" not_found "another tenant's campaign"
assert_status 404 GET "/v1/campaigns/999999/events" -H "Authorization: Bearer $T_KEY"

# A paced campaign (900/min: about 4 s for 60), streamed and watched from before launch.
E1=$T_DIR/live.events
stream "$C" "$E1"
P1=$SPID
ctl watch "$C" >"$T_DIR/watch.out" 2>"$T_DIR/watch.err" &
W1=$!
t_wait_until 10 "the first stats event" grep -q '^event: stats$' "$E1"
assert_eq "$(head -n 1 "$E1")" "retry: 2000" "the stream opens with its retry delay"
assert_eq "$(stats_data "$E1" | head -n 1 | jq -r .status)" draft "the first event at once"
t_api POST "/v1/campaigns/$C/launch"
assert_eq "$T_STATUS" 202 "launched"
t_wait_campaign_done "$C" 60
t_wait_until 15 "the server ends the stream after done" gone "$P1"
wait "$P1" || t_fail "curl's stream did not end cleanly"
t_wait_until 15 "crierctl watch exits after done" gone "$W1"
rc=0
wait "$W1" || rc=$?
assert_eq "$rc" 0 "crierctl watch exits 0 (stderr: $(cat "$T_DIR/watch.err"))"

nstats=$(stats_data "$E1" | wc -l)
terms=$(stats_data "$E1" | jq -r .terminal | tr '\n' ' ')
t_log "stream: $nstats stats events; terminal: $terms"
assert_ge "$nstats" 3 "several stats events"
mid=$(stats_data "$E1" | jq -r --argjson n "$N" 'select(.terminal > 0 and .terminal < $n) | .terminal' | wc -l)
assert_ge "$mid" 1 "progress appears (a terminal count between 0 and $N)"
sorted=$(stats_data "$E1" | jq -r .terminal | sort -n -c && echo yes || echo no)
assert_eq "$sorted" yes "terminal never goes back"
assert_eq "$(grep '^event:' "$E1" | tail -n 1)" "event: done" "the last event is done"
assert_eq "$(tail -n 2 "$E1" | head -n 1)" 'data: {"status":"completed"}' "done says completed"
t_api GET "/v1/campaigns/$C/stats"
assert_eq "$(stats_data "$E1" | tail -n 1 | jq -S -c .)" "$(jq -S -c . <<<"$T_BODY")" \
  "the last stats event equals GET /stats"
assert_eq "$(json_get .contacted)" "$N" "everyone contacted"

# crierctl watch's lines.
lines=$(grep -c '^campaign=' "$T_DIR/watch.out" || true)
assert_ge "$lines" 2 "crierctl watch printed progress lines ($(cat "$T_DIR/watch.out"))"
assert_eq "$(tail -n 1 "$T_DIR/watch.out")" "done status=completed" "crierctl watch's last line"
last=$(grep '^campaign=' "$T_DIR/watch.out" | tail -n 1)
for kv in "campaign=$C" status=completed "targeted=$N" "terminal=$N" "contacted=$N" failed=0 \
  delivered_rate=0.0000; do
  assert_contains " $last " " $kv " "crierctl watch's last figures"
done
out=$(ctl watch "$C") || t_fail "crierctl watch on a completed campaign failed"
assert_eq "$(wc -l <<<"$out")" 2 "a completed campaign: one line and done ($out)"
assert_contains "$(head -n 1 <<<"$out")" "campaign=$C status=completed targeted=$N terminal=$N" \
  "the completed campaign's figures"
assert_eq "$(tail -n 1 <<<"$out")" "done status=completed" "and done"

# crierctl watch's errors.
rc=0
err=$(CRIER_API_KEY=crier_0000000000000000_x ctl watch "$C" 2>&1 >/dev/null) || rc=$?
assert_eq "$rc" 1 "a refused key exits 1"
assert_contains "$err" "refused the key (401" "the refused key is named"
rc=0
err=$(ctl watch 999999 2>&1 >/dev/null) || rc=$?
assert_eq "$rc" 1 "a missing campaign exits 1"
assert_contains "$err" "no such campaign 999999 (404" "the missing campaign is named"
rc=0
err=$(CRIER_API_URL="http://127.0.0.1:$(crier_free_port)" ctl watch "$C" 2>&1 >/dev/null) || rc=$?
assert_eq "$rc" 1 "an unreachable API exits 1"
assert_contains "$err" "cannot reach the API" "the unreachable API is named"
rc=0
ctl watch 2>/dev/null || rc=$?
assert_eq "$rc" 2 "usage"

# Keep-alive comments on a quiet stream.
D=$(new_campaign quiet)
curl -sN --max-time 3 -H "Authorization: Bearer $T_KEY" "$API_URL/v1/campaigns/$D/events" \
  >"$T_DIR/quiet.events" 2>/dev/null || true
assert_eq "$(stats_data "$T_DIR/quiet.events" | wc -l)" 1 "a quiet stream: one stats event"
assert_ge "$(grep -c '^: keep-alive$' "$T_DIR/quiet.events")" 1 "keep-alive comments"

# At most 4 streams; a disconnected client frees its slot.
pids=()
for i in 1 2 3 4; do
  stream "$D" "$T_DIR/slot$i.events"
  pids+=("$SPID")
done
t_wait_until 10 "4 streams open" bash -c \
  "for i in 1 2 3 4; do grep -q '^event: stats' '$T_DIR/slot'\$i.events || exit 1; done"
assert_status 503 GET "/v1/campaigns/$D/events" -H "Authorization: Bearer $T_KEY"
assert_eq "$(json_get .error.code)" too_many_streams "the fifth stream is refused"
kill "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
accepted() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 -H "Authorization: Bearer $T_KEY" \
    "$API_URL/v1/campaigns/$D/events")" = 200 ]
}
t_wait_until 10 "a slot is free again after a client left" accepted
for p in "${pids[@]:1}"; do
  kill "$p"
  wait "$p" 2>/dev/null || true
done

# Cancelling ends the stream with done.
t_wait_until 10 "the slots are free" accepted
stream "$D" "$T_DIR/cancel.events"
P2=$SPID
t_wait_until 10 "the stream is open" grep -q '^event: stats$' "$T_DIR/cancel.events"
t_api POST "/v1/campaigns/$D/cancel"
assert_eq "$T_STATUS" 200 "cancelled"
t_wait_until 10 "the stream ends after the cancel" gone "$P2"
assert_eq "$(tail -n 2 "$T_DIR/cancel.events" | head -n 1)" 'data: {"status":"cancelled"}' \
  "done says cancelled"

# SIGTERM ends the open streams and the API exits promptly.
F=$(new_campaign shutdown)
stream "$F" "$T_DIR/term1.events"
P3=$SPID
stream "$F" "$T_DIR/term2.events"
P4=$SPID
t_wait_until 10 "two streams open" bash -c \
  "grep -q '^event: stats' '$T_DIR/term1.events' && grep -q '^event: stats' '$T_DIR/term2.events'"
api=$(t_pid api)
t0=$SECONDS
kill -TERM "$api"
t_wait_until 5 "the streams end at SIGTERM" bash -c "! kill -0 $P3 2>/dev/null && ! kill -0 $P4 2>/dev/null"
wait "$P3" || t_fail "stream 1 did not end cleanly"
wait "$P4" || t_fail "stream 2 did not end cleanly"
t_wait_until 5 "the API exits" bash -c "! kill -0 $api 2>/dev/null"
t_log "API gone $((SECONDS - t0)) s after SIGTERM"
assert_contains "$(cat "$T_DIR/term1.events")" ": the server is shutting down" "the client is told"
echo "events_sse ok"
