#!/usr/bin/env bash
# Benchmark (not part of the pass/fail suite): POST /v1/segments/preview of every
# shipped segment template over 1,000,000 customers with a realistic history
# (about 3.3 interactions and 1.5 appointments per customer over the last year),
# next to a second tenant a tenth of that size. Target: each preview <= 500 ms.
# Prints one figure per line as "name value unit":
#   preview_<template_id> <median ms> ms   (and _min, _max, _count)
#
#   tests/bench/bench_segments.sh     # CRIER_BENCH_CUSTOMERS=1000000, CRIER_BENCH_RUNS=5
#   CRIER_BENCH_PG_SETTINGS="jit=off" tests/bench/bench_segments.sh
#                                     # PostgreSQL settings for the API's sessions
#                                     # (ALTER DATABASE ... SET), to compare tunings
#
# It starts its own PostgreSQL (durable settings, as the local stack) and Redis under
# a temporary directory and stops them at the end. Generating the data takes a few
# minutes; it is VACUUM ANALYZEd before timing (as autovacuum would leave it), the
# customers table after a VACUUM FULL (see below).
# shellcheck source=tests/bench/lib.sh
. "$(dirname "$0")/lib.sh"
N=${CRIER_BENCH_CUSTOMERS:-1000000}
RUNS=${CRIER_BENCH_RUNS:-5}
t_init bench_segments
t_tenant_key other
OTHER=$T_TENANT
t_tenant_key bench

# ---------------------------------------------------------------------------------------
# Data: customers of both tenants, then their interactions and appointments.
# ---------------------------------------------------------------------------------------
t0=$(date +%s.%N)
t_psql "
INSERT INTO customers (tenant_id, external_id, first_name, last_name, phone, email, timezone,
                       tags, sms_opt_out, email_opt_out, last_contact_at)
SELECT t, 'c' || g, 'First' || g, 'Last' || g,
       CASE WHEN random() < 0.95 THEN '+1555' || lpad(g::text, 7, '0') END,
       CASE WHEN random() < 0.70 THEN 'c' || g || '@example.com' END,
       (ARRAY['UTC', 'America/New_York', 'Europe/Paris'])[1 + g % 3],
       CASE WHEN random() < 0.2 THEN ARRAY['vip'] ELSE '{}' END,
       random() < 0.03, random() < 0.02,
       CASE WHEN random() < 0.6 THEN now() - random() * interval '400 days' END
FROM (VALUES ($T_TENANT, $N), ($OTHER, $N / 10)) AS tn(t, n), generate_series(1, tn.n) g;
-- 0..6 interactions each: sms 30%, web 30%, voice 20%, email 15%, in person 5%; a
-- satisfaction score on 30%, a booking intent on 40%, the booking page on half the web ones.
INSERT INTO interactions (tenant_id, customer_id, channel, direction, occurred_at,
                          satisfaction, booking_intent, metadata)
SELECT c.tenant_id, c.id, x.channel,
       CASE WHEN x.channel = 'web' OR random() < 0.5 THEN 'inbound' ELSE 'outbound' END,
       now() - random() * interval '365 days',
       CASE WHEN random() < 0.3 THEN 1 + floor(random() * 5)::int END,
       CASE WHEN random() < 0.4 THEN random() < 0.5 END,
       CASE WHEN x.channel = 'web' AND random() < 0.5
            THEN '{\"visited_booking_page\": true}'::jsonb ELSE '{}'::jsonb END
FROM customers c
CROSS JOIN LATERAL generate_series(1, floor(random() * 7)::int + 0 * c.id) g
CROSS JOIN LATERAL (SELECT (ARRAY['sms', 'sms', 'sms', 'web', 'web', 'web', 'voice', 'voice',
                                  'email', 'in_person'])[1 + floor(random() * 10)::int + 0 * g]
                           AS channel) x;
-- 0..3 appointments each over the last 400 days and the next 30: past ones completed,
-- cancelled or missed; upcoming ones scheduled or cancelled.
INSERT INTO appointments (tenant_id, customer_id, status, scheduled_at)
SELECT c.tenant_id, c.id,
       CASE WHEN a.at > now() THEN CASE WHEN random() < 0.8 THEN 'scheduled' ELSE 'cancelled' END
            WHEN a.r < 0.70 THEN 'completed' WHEN a.r < 0.88 THEN 'cancelled' ELSE 'no_show' END,
       a.at
FROM customers c
CROSS JOIN LATERAL generate_series(1, floor(random() * 4)::int + 0 * c.id) g
CROSS JOIN LATERAL (SELECT now() + interval '30 days' - random() * interval '430 days' + (0 * g)::int
                           * interval '1 day' AS at, random() AS r) a;
INSERT INTO suppressions (tenant_id, channel, address, reason)
SELECT $T_TENANT, 'sms', '+1555' || lpad((g * 997)::text, 7, '0'), 'stop'
FROM generate_series(1, 1000) g;
INSERT INTO suppressions (tenant_id, channel, address, reason)
SELECT $T_TENANT, 'email', 'c' || (g * 991) || '@example.com', 'bounce'
FROM generate_series(1, 500) g" >/dev/null
t_gen=$(date +%s.%N)
# The interactions and appointments went through the summary triggers
# (migrations/0005), which rewrote every customers row twice: compact the table,
# as a restore (or pg_repack after a bulk history import) would leave it, so the
# previews' scans are timed on the same layout as before the summaries existed.
size_loaded=$(t_psql "SELECT pg_relation_size('customers') / 1048576")
t_psql "VACUUM FULL customers" >/dev/null
for tbl in customers interactions appointments suppressions; do
  t_psql "VACUUM (ANALYZE) $tbl" >/dev/null
done
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" 'BEGIN { printf "data_generation %.0f s\n", b - a }'
awk -v a="$t0" -v b="$t_gen" 'BEGIN { printf "data_inserts %.0f s\n", b - a }'
printf 'data_customers_size %s MB (%s MB before VACUUM FULL)\n' \
  "$(t_psql "SELECT pg_relation_size('customers') / 1048576")" "$size_loaded"
printf 'data_customers %s rows\n' "$(t_psql "SELECT count(*) FROM customers WHERE tenant_id = $T_TENANT")"
printf 'data_interactions %s rows\n' "$(t_psql "SELECT count(*) FROM interactions WHERE tenant_id = $T_TENANT")"
printf 'data_appointments %s rows\n' "$(t_psql "SELECT count(*) FROM appointments WHERE tenant_id = $T_TENANT")"

for kv in ${CRIER_BENCH_PG_SETTINGS:-}; do
  t_psql "ALTER DATABASE \"$T_DB\" SET ${kv%%=*} = '${kv#*=}'" >/dev/null
  printf 'setting %s\n' "$kv"
done
t_start_api

# ---------------------------------------------------------------------------------------
# Previews: one warm-up, then RUNS timed runs per template (wall time of the HTTP call).
# ---------------------------------------------------------------------------------------
assert_status 200 GET /v1/segment-templates "${T_AUTH[@]}"
mapfile -t IDS < <(json_get '.templates[].id')
[ "${#IDS[@]}" -gt 0 ] || t_fail "no templates"

time_preview() { # time_preview BODY -> ms on stdout; T_BODY
  local s
  s=$(curl -sS -o "$T_DIR/preview.json" -w '%{http_code} %{time_total}' --max-time 120 \
    "${T_AUTH[@]}" -H 'Content-Type: application/json' --data-binary "$1" \
    "$API_URL/v1/segments/preview")
  T_BODY=$(cat "$T_DIR/preview.json")
  [ "${s%% *}" = 200 ] || t_fail "preview $1: HTTP ${s%% *}: ${T_BODY:0:300}"
  awk -v t="${s#* }" 'BEGIN { printf "%.1f\n", t * 1000 }'
}

slow=0
for id in "${IDS[@]}"; do
  body=$(jq -cn --arg id "$id" '{template_id: $id}')
  time_preview "$body" >/dev/null
  times=()
  for ((r = 0; r < RUNS; r++)); do times+=("$(time_preview "$body")"); done
  read -r med lo hi < <(printf '%s\n' "${times[@]}" | sort -n |
    awk '{ v[NR] = $1 } END { printf "%.0f %.0f %.0f\n", v[int((NR + 1) / 2)], v[1], v[NR] }')
  printf 'preview_%s %s ms\n' "$id" "$med"
  printf 'preview_%s_min %s ms\n' "$id" "$lo"
  printf 'preview_%s_max %s ms\n' "$id" "$hi"
  printf 'preview_%s_count %s customers\n' "$id" "$(json_get .count)"
  [ "$med" -le 500 ] || slow=$((slow + 1))
done
printf 'previews_over_500ms %s templates\n' "$slow"
