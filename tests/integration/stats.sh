#!/usr/bin/env bash
# Campaign statistics (issue 6, item 6): GET /v1/campaigns/{id}/stats is read from the
# counters migration 0011's statement triggers keep on deliveries, and every number it
# gives equals the ground truth computed by SQL on deliveries alone (tests/stats_truth.sh).
#
# What each check proves:
# - after a real campaign (dispatcher + worker, sandbox, A/B variants: every delivery
#   sent), then after SQL sets a mix of statuses (delivered, responded, undelivered,
#   failed, unknown, skipped with reasons, cancelled), opt-outs, opens, clicks,
#   outcomes, sentiments and satisfactions, and adds email deliveries to the campaign:
#   the whole summary, each channel's and each variant's equal the SQL ground truth
#   (counts, skipped reasons, contacted/delivered/..., rates, outcome, sentiment and
#   satisfaction distributions), and the channels and variants listed are exactly
#   those in deliveries;
# - an UPDATE that changes no counted column writes no counter row (xmin unchanged);
# - deleting customers cascades through deliveries (0007's statement trigger) and the
#   counters follow; deleting a draft campaign with deliveries (API) and a tenant
#   (SQL cascade) removes their counters;
# - two psql sessions updating the same campaign at once, many statements each: the
#   numbers stay true; each backend writes its own shard, so a transaction holding its
#   counter rows (sleeping 4 s) blocks no other writer (lock_timeout 1.5 s);
# - the migration's backfill: 0011 applied again over existing deliveries (its objects
#   dropped, its schema_migrations row removed) counts them exactly.
. "$(dirname "$0")/../lib.sh"
# shellcheck source=tests/stats_truth.sh
. "$(dirname "$0")/../stats_truth.sh"
t_init stats
t_tenant_key
t_provider_sandbox
t_start_api
t_start_dispatcher
t_start_worker

N=120
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, phone, email)
        SELECT $T_TENANT, 's' || g, 'S' || g, '+1555' || lpad(g::text, 7, '0'),
               's' || g || '@example.com'
        FROM generate_series(1, $N) g" >/dev/null

t_api POST /v1/campaigns '{"name":"stats","channel":"sms","segment":{},
  "send_window":{"start":"00:00","end":"24:00"},
  "variants":[{"name":"A","weight":1,"message":{"body":"A {{first_name}}"}},
              {"name":"B","weight":1,"message":{"body":"B {{first_name}}"}}]}'
assert_eq "$T_STATUS" 201 "campaign created: $T_BODY"
C=$(json_get .id)
t_api POST "/v1/campaigns/$C/launch"
assert_eq "$T_STATUS" 202 "launched"
t_wait_campaign_done "$C" 60
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $C AND status = 'sent'")" \
  "$N" "every delivery sent"

# check CAMPAIGN WHAT: every number of the stats equals the ground truth.
check() {
  local cid=$1 what=$2 got want ch v
  t_api GET "/v1/campaigns/$cid/stats"
  assert_eq "$T_STATUS" 200 "$what: stats"
  got=$(jq -S -c 'del(.campaign_id, .status, .expanded, .finished, .channels, .variants)' <<<"$T_BODY")
  want=$(t_stats_truth "$cid" TRUE)
  assert_eq "$got" "$want" "$what: the campaign's summary equals the ground truth"
  assert_eq "$(jq -r '.channels | keys | join(",")' <<<"$T_BODY")" \
    "$(t_psql "SELECT COALESCE(string_agg(DISTINCT channel, ',' ORDER BY channel), '')
               FROM deliveries WHERE campaign_id = $cid")" "$what: the channels listed"
  assert_eq "$(jq -r '.variants | keys | join(",")' <<<"$T_BODY")" \
    "$(t_psql "SELECT COALESCE(string_agg(DISTINCT variant, ',' ORDER BY variant), '')
               FROM deliveries WHERE campaign_id = $cid")" "$what: the variants listed"
  for ch in $(jq -r '.channels | keys[]' <<<"$T_BODY"); do
    assert_eq "$(jq -S -c ".channels.$ch" <<<"$T_BODY")" "$(t_stats_truth "$cid" "channel = '$ch'")" \
      "$what: channel $ch equals the ground truth"
  done
  for v in $(jq -r '.variants | keys[]' <<<"$T_BODY"); do
    assert_eq "$(jq -S -c ".variants[\"$v\"]" <<<"$T_BODY")" "$(t_stats_truth "$cid" "variant = '$v'")" \
      "$what: variant $v equals the ground truth"
  done
  t_log "$what: stats equal the ground truth ($(jq -c '{targeted, contacted, delivered, responded, failed}' <<<"$T_BODY"))"
}

check "$C" "after the campaign"
assert_eq "$(json_get .status)" completed "the campaign completed"
assert_eq "$(json_get .finished)" true "finished"
assert_eq "$(json_get '.variants | length')" 2 "both variants were used"
# From here on only SQL changes deliveries (the dispatcher would close the retries
# below, the campaign being completed).
t_stop dispatcher
t_stop worker

# A mix of everything, set by SQL (several statements, several rows each).
t_psql "
UPDATE deliveries SET status = 'delivered', delivered_at = now()
 WHERE campaign_id = $C AND id % 9 IN (1, 2);
UPDATE deliveries SET status = 'responded', delivered_at = now(), responded_at = now()
 WHERE campaign_id = $C AND id % 9 = 3;
UPDATE deliveries SET status = 'undelivered' WHERE campaign_id = $C AND id % 9 = 4;
UPDATE deliveries SET status = 'failed', error_code = '30003' WHERE campaign_id = $C AND id % 9 = 5;
UPDATE deliveries SET status = 'unknown' WHERE campaign_id = $C AND id % 9 = 6;
UPDATE deliveries SET status = 'skipped', variant = NULL,
       skip_reason = (ARRAY['suppressed', 'frequency_cap', 'expired'])[1 + (id / 9) % 3]
 WHERE campaign_id = $C AND id % 9 = 7;
UPDATE deliveries SET status = 'cancelled', variant = NULL WHERE campaign_id = $C AND id % 18 = 8;
UPDATE deliveries SET status = 'retry', next_attempt_at = now() + interval '1 hour'
 WHERE campaign_id = $C AND id % 18 = 17;
UPDATE deliveries SET opted_out_at = now() WHERE campaign_id = $C AND id % 10 = 0;
UPDATE deliveries SET opened_at = now() WHERE campaign_id = $C AND id % 4 = 0;
UPDATE deliveries SET clicked_at = now() WHERE campaign_id = $C AND id % 8 = 0;
UPDATE deliveries SET outcome = (ARRAY['booked', 'declined', 'callback: later', NULL])[1 + id % 4],
       sentiment = (ARRAY['positive', 'neutral', 'negative', NULL, 'positive'])[1 + id % 5],
       satisfaction = (ARRAY[5, 4, NULL, 2, 1, 3, NULL])[1 + id % 7]
 WHERE campaign_id = $C;" >/dev/null
check "$C" "after the mixed updates"

# Email deliveries in the same campaign: a second channel in the breakdown.
t_psql "INSERT INTO customers (tenant_id, external_id, email)
        SELECT $T_TENANT, 'e' || g, 'e' || g || '@example.com' FROM generate_series(1, 30) g" >/dev/null
t_psql "INSERT INTO deliveries (tenant_id, campaign_id, customer_id, channel, status,
                                provider_message_id, sent_at, variant, opened_at, outcome,
                                satisfaction)
        SELECT $T_TENANT, $C, c.id, 'email',
               (ARRAY['sent', 'delivered', 'failed'])[1 + c.id % 3],
               CASE WHEN c.id % 3 < 2 THEN 'em' || c.id END, now(),
               (ARRAY['A', 'B', 'C'])[1 + c.id % 3],
               CASE WHEN c.id % 2 = 0 THEN now() END, 'booked', 1 + c.id % 5
        FROM customers c WHERE c.tenant_id = $T_TENANT AND c.external_id LIKE 'e%'" >/dev/null
check "$C" "with email deliveries"
assert_eq "$(json_get '.channels | keys | join(",")')" "email,sms" "both channels"

# An update that changes no counted column writes no counter row.
before=$(t_psql "SELECT string_agg(xmin::text || ':' || n, ',' ORDER BY shard, key)
                 FROM campaign_counters WHERE campaign_id = $C")
t_psql "UPDATE deliveries SET updated_at = now(), last_error = 'x' WHERE campaign_id = $C" >/dev/null
after=$(t_psql "SELECT string_agg(xmin::text || ':' || n, ',' ORDER BY shard, key)
                FROM campaign_counters WHERE campaign_id = $C")
assert_eq "$after" "$before" "an update of uncounted columns leaves the counters untouched"

# Customers deleted: the cascade through deliveries is counted.
t_api DELETE "/v1/customers/$(t_psql "SELECT customer_id FROM deliveries WHERE campaign_id = $C
                                       AND status = 'responded' ORDER BY id LIMIT 1")"
assert_eq "$T_STATUS" 204 "a customer deleted through the API"
t_psql "DELETE FROM customers WHERE tenant_id = $T_TENANT AND id % 7 = 3" >/dev/null
check "$C" "after customers were deleted"

# Two sessions at once, many statements each, on disjoint rows of the same campaign.
churn() { # PARITY
  local i sql=""
  for ((i = 0; i < 43; i++)); do
    sql+="UPDATE deliveries SET status = CASE status WHEN 'delivered' THEN 'responded'
            WHEN 'responded' THEN 'delivered' WHEN 'sent' THEN 'unknown' WHEN 'unknown' THEN 'sent'
            ELSE status END,
          responded_at = CASE WHEN status = 'delivered' THEN now() END,
          satisfaction = CASE WHEN satisfaction IS NULL THEN 3 END,
          opted_out_at = CASE WHEN opted_out_at IS NULL AND id % 3 = 0 THEN now() END
          WHERE campaign_id = $C AND id % 2 = $1 AND id % 5 = $((i % 5));"
  done
  psql -X -q -v ON_ERROR_STOP=1 "$CRIER_DATABASE_URL" -c "$sql" >/dev/null
}
churn 0 &
p0=$!
churn 1 &
p1=$!
wait "$p0" || t_fail "session 0's updates failed"
wait "$p1" || t_fail "session 1's updates failed"
check "$C" "after two concurrent sessions"

# Each backend writes a shard of its own: a transaction holding its counter rows for
# seconds blocks no other writer of the same campaign (lock_timeout 1.5 s).
psql -X -q -v ON_ERROR_STOP=1 "$CRIER_DATABASE_URL" >"$T_DIR/holder.out" 2>&1 <<EOF &
BEGIN;
UPDATE deliveries SET status = 'unknown' WHERE campaign_id = $C AND status = 'sent' AND id % 2 = 0;
SELECT 'shard=' || current_setting('crier.counter_shard');
SELECT pg_sleep(4);
COMMIT;
EOF
holder=$!
t_wait_until 10 "the holder's update ran" bash -c \
  "psql -X -At '$CRIER_DATABASE_URL' -c \"SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(4)%' AND state = 'active'\" | grep -q 1"
t0=$SECONDS
out=$(psql -X -q -At -v ON_ERROR_STOP=1 "$CRIER_DATABASE_URL" 2>&1 <<EOF
SET lock_timeout = '1500ms';
UPDATE deliveries SET status = 'unknown' WHERE campaign_id = $C AND status = 'sent' AND id % 2 = 1;
SELECT 'shard=' || current_setting('crier.counter_shard');
EOF
) || t_fail "a writer was blocked by another transaction's counter rows: $out"
hshard=$(sed -n 's/^ *shard=\([0-9]*\).*/\1/p' "$T_DIR/holder.out" | head -n 1)
oshard=$(sed -n 's/^shard=\([0-9]*\).*/\1/p' <<<"$out")
t_log "holder on shard $hshard; the other writer on shard $oshard, done in $((SECONDS - t0)) s"
[ -n "$hshard" ] && [ -n "$oshard" ] || t_fail "shards: '$(cat "$T_DIR/holder.out")' '$out'"
assert_ne "$oshard" "$hshard" "two live backends write different shards"
wait "$holder" || t_fail "the holder failed: $(cat "$T_DIR/holder.out")"
check "$C" "after the concurrent transactions"

# Deleting a draft campaign with deliveries (API) removes its counters.
t_api POST /v1/campaigns '{"name":"draft","channel":"sms","message":{"body":"x"},"segment":{}}'
assert_eq "$T_STATUS" 201 "draft created"
D=$(json_get .id)
t_psql "INSERT INTO deliveries (tenant_id, campaign_id, customer_id, channel, status)
        SELECT $T_TENANT, $D, id, 'sms', 'queued' FROM customers WHERE tenant_id = $T_TENANT" >/dev/null
check "$D" "a draft with deliveries"
assert_ge "$(t_psql "SELECT count(*) FROM campaign_counters WHERE campaign_id = $D")" 1 "its counters"
t_api DELETE "/v1/campaigns/$D"
assert_eq "$T_STATUS" 204 "draft deleted"
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $D")" 0 "its deliveries went"
assert_eq "$(t_psql "SELECT count(*) FROM campaign_counters WHERE campaign_id = $D")" 0 \
  "its counters went"

# A tenant deleted: its campaigns, deliveries and counters go.
TOTHER=$(t_ctl tenant create other) || t_fail "tenant create"
t_psql "INSERT INTO customers (tenant_id, external_id, phone)
        SELECT $TOTHER, 'o' || g, '+1666' || lpad(g::text, 7, '0') FROM generate_series(1, 20) g;
        INSERT INTO campaigns (tenant_id, name, channel) VALUES ($TOTHER, 'o', 'sms');" >/dev/null
O=$(t_psql "SELECT id FROM campaigns WHERE tenant_id = $TOTHER")
t_psql "INSERT INTO deliveries (tenant_id, campaign_id, customer_id, channel, status)
        SELECT $TOTHER, $O, id, 'sms', 'queued' FROM customers WHERE tenant_id = $TOTHER" >/dev/null
assert_eq "$(t_psql "SELECT sum(n) FROM campaign_counters WHERE campaign_id = $O AND key = '*|s:queued'")" \
  20 "the other tenant's campaign is counted"
t_psql "DELETE FROM tenants WHERE id = $TOTHER" >/dev/null
assert_eq "$(t_psql "SELECT count(*) FROM campaign_counters WHERE campaign_id = $O")" 0 \
  "a deleted tenant's counters went"
check "$C" "after another tenant was deleted"

# The backfill: 0011 applied over existing deliveries counts them.
t_psql "DROP TABLE campaign_counters;
        DROP FUNCTION crier_deliveries_counted, crier_deliveries_truncated,
                      crier_campaigns_uncounted CASCADE;
        DROP FUNCTION crier_counter_keys, crier_counter_shard;
        DELETE FROM schema_migrations WHERE name = '0011_campaign_counters.sql';" >/dev/null
t_ctl migrate >/dev/null || t_fail "migrate again"
check "$C" "after the backfill"
echo "stats ok"
