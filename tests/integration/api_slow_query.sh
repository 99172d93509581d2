#!/usr/bin/env bash
# One slow PostgreSQL query must not stall the API: while a request waits on
# a locked table, other requests are answered at once; the slow one ends in a
# 503 when the statement timeout fires.
. "$(dirname "$0")/../lib.sh"
t_init api_slow_query
t_tenant_key
t_provider_sandbox
export CRIER_PG_TIMEOUT_MS=3000
t_start_api
t_api POST /v1/campaigns '{"name":"c","channel":"sms","message":{"body":"Hi"}}'
assert_eq "$T_STATUS" 201 "campaign created"
CID=$(json_get .id)

# Hold an exclusive lock on campaigns for 6 s from another session.
psql -X -q "$CRIER_DATABASE_URL" -c "BEGIN; LOCK TABLE campaigns IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(6); COMMIT;" \
  >"$T_DIR/locker.log" 2>&1 &
locker=$!
sleep 0.5

# The slow request: blocks on the lock.
curl -s -o "$T_DIR/slow.body" -w '%{http_code} %{time_total}' -H "Authorization: Bearer $T_KEY" \
  "$API_URL/v1/campaigns/$CID" >"$T_DIR/slow.status" &
slow=$!
sleep 0.3

# Meanwhile: other requests come back promptly.
for i in 1 2 3 4 5; do
  out=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' "$API_URL/healthz")
  assert_eq "${out%% *}" 200 "healthz during the slow query"
  awk -v t="${out##* }" 'BEGIN { exit !(t < 0.5) }' || t_fail "healthz took ${out##* }s"
  out=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' -H "Authorization: Bearer $T_KEY" \
    -d "{\"external_id\":\"x$i\",\"phone\":\"+1415555010$i\"}" "$API_URL/v1/customers")
  assert_eq "${out%% *}" 201 "customer create during the slow query"
  awk -v t="${out##* }" 'BEGIN { exit !(t < 0.5) }' || t_fail "customer create took ${out##* }s"
done
if ! kill -0 "$slow" 2>/dev/null; then t_fail "the slow request finished before the lock was released"; fi

wait "$slow"
read -r code secs <"$T_DIR/slow.status" || true
assert_eq "$code" 503 "the slow request ends in 503 at the statement timeout"
assert_contains "$(cat "$T_DIR/slow.body")" '"field":"postgres"' "503 names postgres"
awk -v t="$secs" 'BEGIN { exit !(t >= 2.5 && t < 5.5) }' || t_fail "slow request took ${secs}s, expected about 3s"
wait "$locker" || true

# And after the lock is gone everything works again.
t_api GET "/v1/campaigns/$CID"
assert_eq "$T_STATUS" 200 "campaign readable after the lock"
echo "api_slow_query ok"
