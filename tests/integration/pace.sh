#!/usr/bin/env bash
# Pace (issue 4, item 2): a campaign's rate_per_minute is enforced by a Redis
# token bucket (one second's worth of tokens, common/pace.c). No workers run:
# every job released to crier:jobs:sms carries its release time in its stream
# entry id (ms), so the stream itself is the measurement.
#
# Checks, and what each proves:
# 1. Campaign A (rate 1200/min, 3000 customers, open all day): the jobs
#    released over one minute (measured after the first seconds) are within
#    5 % of 1200. Fails if the rate is not enforced (3000 at once) or is
#    enforced wrongly (per-second vs per-minute, lost refills).
# 2. Campaign A never bursts: for every pair of its jobs i <= j, the count
#    released between them stays within what a bucket of one second's
#    capacity allows: cap + elapsed * rate (+ a little for the gap between
#    the token grant and the XADD). Fails on a burst at the start beyond the
#    bucket capacity, or anywhere later.
# 3. Campaign B (rate 600/min, 400 customers all outside the window, so all
#    deferred to crier:delayed) made due all at once (members re-scored to
#    now): the delayed-set mover releases them at 10/s (within 5 % over
#    30 s) and without a burst (same pair check), and every one of them
#    reaches the stream exactly once. Fails if jobs leaving crier:delayed
#    bypass the campaign's bucket.
# A and B run at the same time on one dispatcher (each has its own bucket).
. "$(dirname "$0")/../lib.sh"
t_init pace
t_tenant_key
t_provider_sandbox
t_start_api
t_start_dispatcher

RATE_A=1200 N_A=3000
RATE_B=600 N_B=400
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, phone, tags)
        SELECT $T_TENANT, 'a' || g, 'A' || g, '+1555' || lpad(g::text, 7, '0'), '{a}'
        FROM generate_series(1, $N_A) g" >/dev/null
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, phone, tags)
        SELECT $T_TENANT, 'b' || g, 'B' || g, '+1556' || lpad(g::text, 7, '0'), '{b}'
        FROM generate_series(1, $N_B) g" >/dev/null

# B's window is open only on the weekday after tomorrow (UTC customers): every
# recipient is deferred by at least a day.
DAY_B=$(date -u -d '+2 days' +%u)
t_api POST /v1/campaigns "{\"name\":\"paced-delayed\",\"channel\":\"sms\",\"message\":{\"body\":\"Hi\"},
  \"segment\":{\"has_phone\":true,\"tags\":[\"b\"]},\"rate_per_minute\":$RATE_B,
  \"send_window\":{\"start\":\"00:00\",\"end\":\"24:00\",\"days\":[$DAY_B]}}"
assert_eq "$T_STATUS" 201 "campaign B created: $T_BODY"
CID_B=$(json_get .id)
t_api POST /v1/campaigns "{\"name\":\"paced\",\"channel\":\"sms\",\"message\":{\"body\":\"Hi\"},
  \"segment\":{\"has_phone\":true,\"tags\":[\"a\"]},\"rate_per_minute\":$RATE_A,
  \"send_window\":{\"start\":\"00:00\",\"end\":\"24:00\"}}"
assert_eq "$T_STATUS" 201 "campaign A created: $T_BODY"
CID_A=$(json_get .id)

# Members of crier:delayed belonging to campaign $1 (member: ch|delivery|tenant|campaign|rate).
delayed_of() {
  t_redis --raw ZRANGE crier:delayed 0 -1 | awk -F'|' -v c="$1" '$4 == c' | wc -l
}
redis_ms() { t_redis --raw TIME | awk 'NR == 1 {s = $1} NR == 2 {printf "%.0f\n", s * 1000 + int($1 / 1000)}'; }

t_api POST "/v1/campaigns/$CID_B/launch"
assert_eq "$T_STATUS" 202 "campaign B launched"
b_deferred() { [ "$(delayed_of "$CID_B")" = "$N_B" ]; }
t_wait_until 60 "campaign B's $N_B jobs deferred to crier:delayed" b_deferred
assert_eq "$(t_redis XLEN crier:jobs:sms)" 0 "nothing of B released while its window is closed"
min_due=$(t_redis --raw ZRANGE crier:delayed 0 0 WITHSCORES | sed -n 2p)
assert_ge "$((min_due - $(redis_ms)))" $((20 * 3600 * 1000)) "B deferred to its window's opening, a day away"

t_api POST "/v1/campaigns/$CID_A/launch"
assert_eq "$T_STATUS" 202 "campaign A launched"
a_started() { [ "$(t_redis XLEN crier:jobs:sms)" -gt 0 ]; }
t_wait_until 60 "campaign A's first jobs released" a_started

# B's window "opens": every member of B becomes due now, all together.
rescored=$(t_redis EVAL "
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local n = 0
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if string.match(m, '^%a+|%d+|%d+|(%d+)|') == ARGV[1] then
      redis.call('ZADD', KEYS[1], 'XX', now, m)
      n = n + 1
    end
  end
  return n" 1 crier:delayed "$CID_B")
assert_eq "$rescored" "$N_B" "all of B's members made due"

# "ms campaign delivery" per stream entry, in stream (time) order.
stream_entries() {
  t_redis --raw XRANGE crier:jobs:sms - + | awk '
    /^[0-9]+-[0-9]+$/ { split($0, p, "-"); ms = p[1]; next }
    prev == "d" { d = $0 }
    prev == "c" { print ms, $0, d }
    { prev = $0 }'
}
first_of() { awk -v c="$1" '$2 == c { print $1; exit }' "$T_DIR/entries"; }

stream_entries >"$T_DIR/entries"
A0=$(first_of "$CID_A")
[ -n "$A0" ] || t_fail "no job of campaign A in the stream"
# One minute measured from 3 s after A's first job; B's 30 s from 2 s after its first.
END_MS=$((A0 + 63000 + 500))
t_log "campaign A first job at $A0; measuring until $END_MS (redis time now $(redis_ms))"
past_end() { [ "$(redis_ms)" -ge "$END_MS" ]; }
t_wait_until 100 "a minute of campaign A's releases" past_end
stream_entries >"$T_DIR/entries"
B0=$(first_of "$CID_B")
[ -n "$B0" ] || t_fail "no job of campaign B reached the stream"

# count_in CAMPAIGN FROM_MS TO_MS: jobs with FROM <= ms < TO.
count_in() {
  awk -v c="$1" -v a="$2" -v b="$3" '$2 == c && $1 >= a && $1 < b { n++ } END { print n + 0 }' \
    "$T_DIR/entries"
}
# burst_excess CAMPAIGN RATE SLACK_MS: worst (count - allowed) over all pairs of the
# campaign's jobs, allowed = capacity + (elapsed + slack) * rate + 1 (capacity: one
# second's worth, as in common/pace.c). <= 0 when the bucket was respected.
burst_excess() {
  awk -v c="$1" -v rate="$2" -v slack="$3" '
    $2 == c { t[++n] = $1 }
    END {
      cap = rate / 60; if (cap < 1) cap = 1
      worst = -1e9
      for (i = 1; i <= n; i++)
        for (j = i; j <= n; j++) {
          ex = (j - i + 1) - (cap + (t[j] - t[i] + slack) * rate / 60000 + 1)
          if (ex > worst) { worst = ex; wi = i; wj = j }
        }
      printf "%d %d %.0f %.0f\n", (worst > 0 ? int(worst + 0.999) : 0), wj - wi + 1, t[wi], t[wj] - t[wi]
    }' "$T_DIR/entries"
}

# 1. A's rate over one minute.
got_a=$(count_in "$CID_A" $((A0 + 3000)) $((A0 + 63000)))
t_log "campaign A: $got_a jobs in 60 s (rate $RATE_A/min); first second: $(count_in "$CID_A" "$A0" $((A0 + 1000)))"
assert_ge "$got_a" $((RATE_A * 95 / 100)) "campaign A released at least 95 % of its rate over a minute"
assert_le "$got_a" $((RATE_A * 105 / 100)) "campaign A released at most 105 % of its rate over a minute"

# 2. No burst anywhere in A (including its start).
read -r ex n at span <<<"$(burst_excess "$CID_A" "$RATE_A" 250)"
t_log "campaign A: worst window $n jobs in $span ms (from $at), excess over the bucket $ex"
assert_eq "$ex" 0 "campaign A never released more than its bucket allows ($n jobs in $span ms)"

# 3. B's jobs leave crier:delayed at B's pace.
got_b=$(count_in "$CID_B" $((B0 + 2000)) $((B0 + 32000)))
exp_b=$((RATE_B / 2))
t_log "campaign B: $got_b jobs moved from crier:delayed in 30 s (rate $RATE_B/min); first second: $(count_in "$CID_B" "$B0" $((B0 + 1000)))"
assert_ge "$got_b" $((exp_b * 95 / 100)) "jobs leaving crier:delayed: at least 95 % of the rate"
assert_le "$got_b" $((exp_b * 105 / 100)) "jobs leaving crier:delayed: at most 105 % of the rate"
read -r ex n at span <<<"$(burst_excess "$CID_B" "$RATE_B" 100)"
t_log "campaign B: worst window $n jobs in $span ms (from $at), excess over the bucket $ex"
assert_eq "$ex" 0 "jobs leaving crier:delayed never burst past the bucket ($n jobs in $span ms)"
# All of B arrived by now (400 at 10/s take 40 s; more than 60 s passed), each once.
assert_eq "$(awk -v c="$CID_B" '$2 == c { print $3 }' "$T_DIR/entries" | sort -u | wc -l)" "$N_B" \
  "every one of B's deferred jobs reached the stream"
assert_eq "$(awk -v c="$CID_B" '$2 == c' "$T_DIR/entries" | wc -l)" "$N_B" "each exactly once"
assert_eq "$(delayed_of "$CID_B")" 0 "crier:delayed holds nothing of B any more"
echo "pace ok"
