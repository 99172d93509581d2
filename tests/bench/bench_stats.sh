#!/usr/bin/env bash
# Benchmark (not part of the pass/fail suite): campaign statistics at 1,000,000
# deliveries. Target: GET /v1/campaigns/{id}/stats <= 50 ms, equal to the ground truth.
# Prints one figure per line as "name value unit".
#
#   tests/bench/bench_stats.sh     # CRIER_BENCH_DELIVERIES=1000000, CRIER_BENCH_REQUESTS=500
#
# The campaign's deliveries are written by one INSERT ... SELECT generate_series with a
# realistic mix (statuses, skip reasons, two channels, three variants, opt-outs, opens,
# clicks, outcomes, sentiments, satisfactions); the same insert is timed once more with
# migration 0011's insert trigger disabled (its cost on a bulk insert). Then:
# - GET /stats through the API, CRIER_BENCH_REQUESTS times on one connection: median,
#   p99 and max, and the answer compared with the ground truth (tests/stats_truth.sh);
# - the update trigger's cost on the worker's shape of write, a 256-row UPDATE of
#   statuses: the trigger's own time (EXPLAIN ANALYZE, median of 50 statements in one
#   session, warm), and pgbench's average latency of such UPDATEs with the trigger
#   enabled and disabled (alternating rounds of 10 s).
# shellcheck source=tests/bench/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/stats_truth.sh
. "$ROOT/tests/stats_truth.sh"
N=${CRIER_BENCH_DELIVERIES:-1000000}
REQS=${CRIER_BENCH_REQUESTS:-500}
t_init bench_stats
t_tenant_key bench
t_provider_sandbox
t_start_api

new_campaign() {
  t_api POST /v1/campaigns "{\"name\":\"$1\",\"channel\":\"sms\",\"segment\":{},
    \"variants\":[{\"name\":\"A\",\"weight\":1,\"message\":{\"body\":\"A\"}},
                  {\"name\":\"B\",\"weight\":1,\"message\":{\"body\":\"B\"}},
                  {\"name\":\"C\",\"weight\":1,\"message\":{\"body\":\"C\"}}]}"
  [ "$T_STATUS" = 201 ] || t_fail "campaign: $T_STATUS $T_BODY"
  local id
  id=$(json_get .id)
  t_psql "UPDATE campaigns SET status = 'running', launched_at = now(), expanded_at = now()
          WHERE id = $id" >/dev/null
  printf '%s\n' "$id"
}

# fill CAMPAIGN: N deliveries; prints the insert's time (s).
fill() {
  psql -X -q -A -t -v ON_ERROR_STOP=1 "$CRIER_DATABASE_URL" <<EOF | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' |
\timing on
INSERT INTO deliveries (tenant_id, campaign_id, customer_id, channel, status, skip_reason,
                        provider_message_id, variant, sent_at, delivered_at, responded_at,
                        opted_out_at, opened_at, clicked_at, outcome, sentiment, satisfaction)
SELECT $T_TENANT, $1, g, ch, st,
       CASE WHEN st = 'skipped' THEN (ARRAY['opted_out', 'suppressed', 'frequency_cap',
                                            'no_address', 'expired'])[1 + g % 5] END,
       CASE WHEN st IN ('sent', 'delivered', 'responded', 'undelivered') THEN 'SM' || g END,
       CASE WHEN st NOT IN ('skipped', 'queued', 'cancelled') THEN (ARRAY['A', 'B', 'C'])[1 + g % 3] END,
       CASE WHEN st IN ('sent', 'delivered', 'responded', 'undelivered') THEN now() END,
       CASE WHEN st IN ('delivered', 'responded') THEN now() END,
       CASE WHEN st = 'responded' THEN now() END,
       CASE WHEN st = 'responded' AND g % 7 = 0 THEN now() END,
       CASE WHEN ch = 'email' AND st IN ('delivered', 'responded') AND g % 2 = 0 THEN now() END,
       CASE WHEN ch = 'email' AND st IN ('delivered', 'responded') AND g % 6 = 0 THEN now() END,
       CASE WHEN st = 'responded' THEN (ARRAY['booked', 'declined', 'callback', 'not_interested'])[1 + g % 4] END,
       CASE WHEN st = 'responded' THEN (ARRAY['positive', 'neutral', 'negative'])[1 + g % 3] END,
       CASE WHEN st = 'responded' AND g % 3 > 0 THEN 1 + g % 5 END
FROM (SELECT g, CASE WHEN g % 5 = 0 THEN 'email' ELSE 'sms' END AS ch,
             CASE WHEN b < 55 THEN 'sent' WHEN b < 75 THEN 'delivered' WHEN b < 80 THEN 'responded'
                  WHEN b < 83 THEN 'undelivered' WHEN b < 87 THEN 'failed' WHEN b < 88 THEN 'unknown'
                  WHEN b < 94 THEN 'skipped' WHEN b < 96 THEN 'cancelled' WHEN b < 98 THEN 'queued'
                  WHEN b < 99 THEN 'retry' ELSE 'sending' END AS st
      FROM (SELECT g, (g::bigint * 7919) % 100 AS b FROM generate_series(1, $N) g) x) y;
EOF
    awk '{ printf "%.2f\n", $1 / 1000 }'
}

C=$(new_campaign bench)
t=$(fill "$C") || t_fail "the insert failed"
printf 'insert_%s_time %s s\n' "$N" "$t"
C2=$(new_campaign bench_untriggered)
t_psql "ALTER TABLE deliveries DISABLE TRIGGER deliveries_counters_insert" >/dev/null
t=$(fill "$C2") || t_fail "the insert failed"
printf 'insert_%s_time_without_trigger %s s\n' "$N" "$t"
t_psql "ALTER TABLE deliveries ENABLE TRIGGER deliveries_counters_insert" >/dev/null
t_psql "DELETE FROM campaigns WHERE id = $C2" >/dev/null # its deliveries and counters go
t_psql "VACUUM ANALYZE deliveries" >/dev/null
t_psql "VACUUM ANALYZE campaign_counters" >/dev/null
printf 'counter_rows %s rows\n' "$(t_psql "SELECT count(*) FROM campaign_counters WHERE campaign_id = $C")"

# GET /stats, many times on one connection.
cfg=$T_DIR/curl.cfg
: >"$cfg"
for ((i = 0; i < REQS; i++)); do
  printf 'url = "%s/v1/campaigns/%s/stats"\noutput = "/dev/null"\n' "$API_URL" "$C" >>"$cfg"
done
curl -s -H "Authorization: Bearer $T_KEY" -w '%{http_code} %{time_total}\n' -K "$cfg" >"$T_DIR/times"
[ "$(grep -vc '^200 ' "$T_DIR/times")" = 0 ] || t_fail "a stats request failed: $(grep -v '^200 ' "$T_DIR/times" | head -n 3)"
awk '{ print $2 * 1000 }' "$T_DIR/times" | sort -n >"$T_DIR/ms"
pick() { awk -v q="$1" '{ a[NR] = $1 } END { i = int(NR * q + 0.999); if (i < 1) i = 1; if (i > NR) i = NR; printf "%.2f", a[i] }' "$T_DIR/ms"; }
printf 'stats_requests %s requests\n' "$REQS"
printf 'stats_median %s ms\n' "$(pick 0.5)"
printf 'stats_p99 %s ms\n' "$(pick 0.99)"
printf 'stats_max %s ms\n' "$(pick 1)"

# The answer equals the ground truth, per channel and per variant too.
t_api GET "/v1/campaigns/$C/stats"
got=$(jq -S -c 'del(.campaign_id, .status, .expanded, .finished, .channels, .variants)' <<<"$T_BODY")
assert_eq "$got" "$(t_stats_truth "$C" TRUE)" "the stats equal the ground truth"
for ch in sms email; do
  assert_eq "$(jq -S -c ".channels.$ch" <<<"$T_BODY")" "$(t_stats_truth "$C" "channel = '$ch'")" \
    "channel $ch equals the ground truth"
done
for v in A B C; do
  assert_eq "$(jq -S -c ".variants.$v" <<<"$T_BODY")" "$(t_stats_truth "$C" "variant = '$v'")" \
    "variant $v equals the ground truth"
done
echo "stats_equal_ground_truth yes"

# The update trigger on the worker's shape of write: 256 rows change status.
FIRST=$(t_psql "SELECT min(id) FROM deliveries WHERE campaign_id = $C")
BLOCKS=$((N / 256 - 1))
sqlf=$T_DIR/explain.sql
: >"$sqlf"
for ((i = 0; i < 50; i++)); do
  b=$(((i * 7919) % BLOCKS))
  printf "EXPLAIN (ANALYZE, FORMAT TEXT) UPDATE deliveries SET status = CASE status WHEN 'sent' THEN 'delivered' WHEN 'delivered' THEN 'sent' ELSE status END, updated_at = now() WHERE id >= %s AND id < %s;\n" \
    $((FIRST + b * 256)) $((FIRST + b * 256 + 256)) >>"$sqlf"
done
psql -X -A -t -v ON_ERROR_STOP=1 "$CRIER_DATABASE_URL" -f "$sqlf" >"$T_DIR/explain.out"
trig=$(sed -n 's/^Trigger deliveries_counters_update: time=\([0-9.]*\).*/\1/p' "$T_DIR/explain.out" |
  tail -n 45 | sort -n | awk '{ a[NR] = $1 } END { printf "%.3f", a[int((NR + 1) / 2)] }')
stmt=$(sed -n 's/^Execution Time: \([0-9.]*\) ms/\1/p' "$T_DIR/explain.out" |
  tail -n 45 | sort -n | awk '{ a[NR] = $1 } END { printf "%.3f", a[int((NR + 1) / 2)] }')
printf 'update256_trigger_median %s ms\n' "$trig"
printf 'update256_statement_median %s ms\n' "$stmt"
if command -v pgbench >/dev/null; then
  cat >"$T_DIR/update.sql" <<EOF
\set b random(0, $BLOCKS)
UPDATE deliveries SET status = CASE status WHEN 'sent' THEN 'delivered' WHEN 'delivered' THEN 'sent' ELSE status END, updated_at = now() WHERE id >= $FIRST + :b * 256 AND id < $FIRST + :b * 256 + 256;
EOF
  declare -A lat=([on]=0 [off]=0)
  for round in 1 2; do
    for mode in on off; do
      if [ "$mode" = on ]; then
        t_psql "ALTER TABLE deliveries ENABLE TRIGGER deliveries_counters_update" >/dev/null
      else
        t_psql "ALTER TABLE deliveries DISABLE TRIGGER deliveries_counters_update" >/dev/null
      fi
      l=$(pgbench -n -f "$T_DIR/update.sql" -c 1 -T 10 "$CRIER_DATABASE_URL" 2>/dev/null |
        sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
      lat[$mode]=$(awk -v a="${lat[$mode]}" -v b="$l" -v r="$round" 'BEGIN { printf "%.3f", (a * (r - 1) + b) / r }')
    done
  done
  t_psql "ALTER TABLE deliveries ENABLE TRIGGER deliveries_counters_update" >/dev/null
  printf 'update256_pgbench_with_trigger %s ms\n' "${lat[on]}"
  printf 'update256_pgbench_without_trigger %s ms\n' "${lat[off]}"
fi
# The pgbench rounds changed statuses with the trigger off: nothing more to compare.
t_finish
