#!/usr/bin/env bash
# The customers row's summary columns (migrations/0005_customer_summary.sql), kept by
# statement-level triggers on interactions and appointments, read by the segment compiler
# for the unscoped criteria: after every kind of write (single and multi-row INSERT, the
# API's imports with their ON CONFLICT updates, UPDATE of each summarised column, a row
# moved to another customer, DELETE, a cascaded customer delete, TRUNCATE, two concurrent
# transactions on one customer) every customer's summary equals a recomputation from the
# base tables; a batch writes each customer it touched once, and a write that changes no
# summarised column does not rewrite the customers row. Previews follow the changes.
. "$(dirname "$0")/../lib.sh"
t_init customer_summary
t_tenant_key tenant_b
TB=$T_TENANT
t_tenant_key tenant_a
TA=$T_TENANT
t_start_api

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

# The summaries recomputed from the base tables, written independently of the triggers
# (window functions over the whole tables), for every customer.
EXPECTED="
  SELECT c.id, c.external_id,
         ix.at AS last_interaction_at, ra.satisfaction AS last_rating,
         bi.booking_intent AS last_booking_intent, COALESCE(ap.n, 0) AS appointment_count,
         ap.at AS last_scheduled_at, la.status AS last_appointment_status
  FROM customers c
  LEFT JOIN (SELECT customer_id, max(occurred_at) AS at FROM interactions GROUP BY 1) ix
    ON ix.customer_id = c.id
  LEFT JOIN (SELECT customer_id, satisfaction, row_number() OVER (PARTITION BY customer_id
               ORDER BY occurred_at DESC, id DESC) AS rn
             FROM interactions WHERE satisfaction IS NOT NULL) ra
    ON ra.customer_id = c.id AND ra.rn = 1
  LEFT JOIN (SELECT customer_id, booking_intent, row_number() OVER (PARTITION BY customer_id
               ORDER BY occurred_at DESC, id DESC) AS rn
             FROM interactions WHERE booking_intent IS NOT NULL) bi
    ON bi.customer_id = c.id AND bi.rn = 1
  LEFT JOIN (SELECT customer_id, count(*) AS n, max(scheduled_at) AS at FROM appointments
             GROUP BY 1) ap
    ON ap.customer_id = c.id
  LEFT JOIN (SELECT customer_id, status, row_number() OVER (PARTITION BY customer_id
               ORDER BY scheduled_at DESC, id DESC) AS rn FROM appointments) la
    ON la.customer_id = c.id AND la.rn = 1"

# consistent WHAT: every customer's summary columns equal the recomputation.
consistent() {
  local bad
  bad=$(t_psql "SELECT e.external_id || ': has (' || concat_ws(', ', c.last_interaction_at,
      c.last_rating, c.last_booking_intent, c.appointment_count, c.last_scheduled_at,
      c.last_appointment_status) || '), expected (' || concat_ws(', ', e.last_interaction_at,
      e.last_rating, e.last_booking_intent, e.appointment_count, e.last_scheduled_at,
      e.last_appointment_status) || ')'
    FROM customers c JOIN ($EXPECTED) e ON e.id = c.id
    WHERE (c.last_interaction_at, c.last_rating, c.last_booking_intent, c.appointment_count,
           c.last_scheduled_at, c.last_appointment_status)
      IS DISTINCT FROM (e.last_interaction_at, e.last_rating, e.last_booking_intent,
           e.appointment_count, e.last_scheduled_at, e.last_appointment_status)")
  [ -z "$bad" ] || t_fail "summary out of step after $1: $bad"
  CHECKS=$((CHECKS + 1))
}

# summary EXT: one customer's summary of tenant A, as "at|rating|intent|count|sched|status"
# with times as whole days ago (floor) and NULL as "-".
summary() {
  t_psql "SELECT concat_ws('|',
      COALESCE(floor(extract(epoch FROM now() - last_interaction_at) / 86400)::text, '-'),
      COALESCE(last_rating::text, '-'), COALESCE(last_booking_intent::text, '-'),
      appointment_count,
      COALESCE(floor(extract(epoch FROM now() - last_scheduled_at) / 86400)::text, '-'),
      COALESCE(last_appointment_status, '-'))
    FROM customers WHERE tenant_id = $TA AND external_id = '$1'"
}

expect_summary() { # expect_summary EXT WANT MSG
  assert_eq "$(summary "$1")" "$2" "$3"
  CHECKS=$((CHECKS + 1))
}

# count_of CRITERIA EXT: 1 when the preview of CRITERIA (sms) selects customer EXT, else 0.
count_of() {
  t_api POST /v1/segments/preview "$(jq -cn --argjson crit "$1" --arg t "x_$2" \
    '{channel: "sms", criteria: {all: [$crit, {tags_any: [$t]}]}}')"
  [ "$T_STATUS" = 200 ] || t_fail "preview $1: HTTP $T_STATUS: ${T_BODY:0:300}"
  json_get .count
}

# xmin EXT: the transaction that last wrote customer EXT's row.
xmin() { t_psql "SELECT xmin FROM customers WHERE tenant_id = $TA AND external_id = '$1'"; }

CHECKS=0

# Customers (tenant A c1..c6, tenant B b1), each tagged x_<external id>.
t_psql "INSERT INTO customers (tenant_id, external_id, phone, tags)
  SELECT $TA, 'c' || g, '+1555000000' || g, ARRAY['x_c' || g] FROM generate_series(1, 6) g;
  INSERT INTO customers (tenant_id, external_id, phone, tags)
  VALUES ($TB, 'b1', '+15550000100', '{x_b1}')" >/dev/null
cid() { t_psql "SELECT id FROM customers WHERE tenant_id = $TA AND external_id = '$1'"; }
C1=$(cid c1)
C2=$(cid c2)
C3=$(cid c3)
B1=$(t_psql "SELECT id FROM customers WHERE tenant_id = $TB AND external_id = 'b1'")
consistent "customers created"
expect_summary c1 "-|-|-|0|-|-" "a new customer has an empty summary"

# ---------------------------------------------------------------------------------------
# Interactions: INSERT (one row, several rows for several customers), ties.
# ---------------------------------------------------------------------------------------
ix() { # ix CUSTOMER_ID DAYS_AGO SATISFACTION INTENT [CHANNEL]: one interaction row's VALUES
  echo "($TA, $1, '${5:-sms}', now() - make_interval(days => $2), $3, $4)"
}
t_psql "INSERT INTO interactions (tenant_id, customer_id, channel, occurred_at, satisfaction,
  booking_intent) VALUES $(ix "$C1" 10 4 true)" >/dev/null
expect_summary c1 "10|4|true|0|-|-" "one interaction"
t_psql "INSERT INTO interactions (tenant_id, customer_id, channel, occurred_at, satisfaction,
  booking_intent) VALUES $(ix "$C1" 20 1 false), $(ix "$C1" 5 NULL NULL),
  $(ix "$C2" 30 2 NULL), $(ix "$C2" 3 NULL false web), $(ix "$C3" 40 NULL NULL)" >/dev/null
expect_summary c1 "5|4|true|0|-|-" "older rated rows and a newer unrated one"
expect_summary c2 "3|2|false|0|-|-" "a batch for several customers"
expect_summary c3 "40|-|-|0|-|-" "never rated, no intent"
consistent "multi-row insert"
# Same occurred_at: the higher id wins (rating 5 after rating 1).
t_psql "INSERT INTO interactions (tenant_id, customer_id, channel, occurred_at, satisfaction,
  booking_intent)
  SELECT $TA, $C3, 'sms', t, s, b FROM (SELECT now() - interval '2 days' AS t) x,
  (VALUES (1, false), (5, true)) v(s, b)" >/dev/null
expect_summary c3 "2|5|true|0|-|-" "ties on occurred_at: the highest id"
consistent "tied rows"
# The other tenant's rows only ever touch its own customer.
before_c1=$(xmin c1)
t_psql "INSERT INTO interactions (tenant_id, customer_id, channel, occurred_at, satisfaction)
  VALUES ($TB, $B1, 'sms', now(), 1)" >/dev/null
assert_eq "$(xmin c1)" "$before_c1" "tenant B's row leaves tenant A's customers alone"
assert_eq "$(t_psql "SELECT last_rating FROM customers WHERE id = $B1")" 1 "tenant B's customer"
assert_eq "$(count_of '{"min_satisfaction": 5}' c3)" 1 "preview: c3 rated 5 last"

# ---------------------------------------------------------------------------------------
# Interactions: UPDATE and DELETE.
# ---------------------------------------------------------------------------------------
# The latest rated row re-rated; then moved back in time (an older row becomes latest).
t_psql "UPDATE interactions SET satisfaction = 2 WHERE customer_id = $C1 AND satisfaction = 4" \
  >/dev/null
expect_summary c1 "5|2|true|0|-|-" "the latest rating changed"
t_psql "UPDATE interactions SET occurred_at = now() - interval '50 days'
  WHERE customer_id = $C1 AND satisfaction = 2" >/dev/null
expect_summary c1 "5|1|false|0|-|-" "the latest rated row moved back: the older one counts"
assert_eq "$(count_of '{"booking_intent": false}' c1)" 1 "preview: c1's latest intent is false"
# A booking intent cleared to NULL: the previous one counts again.
t_psql "UPDATE interactions SET booking_intent = NULL WHERE customer_id = $C1
  AND booking_intent = false" >/dev/null
expect_summary c1 "5|1|true|0|-|-" "an intent cleared"
consistent "updates of the summarised columns"
# A change of another column does not rewrite the customers row.
before_c1=$(xmin c1)
t_psql "UPDATE interactions SET outcome = 'noted', metadata = '{\"k\": 1}'
  WHERE customer_id = $C1" >/dev/null
assert_eq "$(xmin c1)" "$before_c1" "outcome / metadata changes leave the customers row alone"
CHECKS=$((CHECKS + 1))
# A row moved to another customer: both recomputed.
t_psql "UPDATE interactions SET customer_id = $C2 WHERE customer_id = $C3 AND satisfaction = 5" \
  >/dev/null
expect_summary c3 "2|1|false|0|-|-" "a row moved away"
expect_summary c2 "2|5|true|0|-|-" "a row moved in"
consistent "a row moved between customers"
# DELETE: the latest row, then all of a customer's rows.
t_psql "DELETE FROM interactions WHERE customer_id = $C2 AND satisfaction = 5" >/dev/null
expect_summary c2 "3|2|false|0|-|-" "the latest row deleted"
t_psql "DELETE FROM interactions WHERE customer_id = $C3" >/dev/null
expect_summary c3 "-|-|-|0|-|-" "every row deleted"
assert_eq "$(count_of '{"days_since_last_interaction": 10000}' c3)" 1 "preview: c3 never interacted"
assert_eq "$(count_of '{"not": {"min_satisfaction": 1}}' c3)" 1 "preview: c3 never rated"
consistent "deletes"

# ---------------------------------------------------------------------------------------
# Appointments: INSERT, UPDATE, DELETE.
# ---------------------------------------------------------------------------------------
ap() { # ap CUSTOMER_ID DAYS_AGO STATUS: one appointment row's VALUES
  echo "($TA, $1, '$3', now() - make_interval(days => $2))"
}
t_psql "INSERT INTO appointments (tenant_id, customer_id, status, scheduled_at)
  VALUES $(ap "$C1" 60 completed), $(ap "$C1" 5 cancelled), $(ap "$C1" -7 scheduled),
  $(ap "$C2" 30 no_show)" >/dev/null
expect_summary c1 "5|1|true|3|-7|scheduled" "appointments, an upcoming one latest"
expect_summary c2 "3|2|false|1|30|no_show" "one appointment"
assert_eq "$(count_of '{"days_since_last_appointment": 0}' c1)" 0 "preview: upcoming appointment"
t_psql "UPDATE appointments SET status = 'cancelled' WHERE customer_id = $C1
  AND status = 'scheduled'" >/dev/null
expect_summary c1 "5|1|true|3|-7|cancelled" "status updated"
assert_eq "$(count_of '{"last_appointment_status": "cancelled"}' c1)" 1 "preview: cancelled"
t_psql "UPDATE appointments SET scheduled_at = now() - interval '90 days' WHERE customer_id = $C1
  AND scheduled_at > now()" >/dev/null
expect_summary c1 "5|1|true|3|5|cancelled" "the latest moved back: the next one counts"
# Same scheduled_at: the higher id wins.
t_psql "INSERT INTO appointments (tenant_id, customer_id, status, scheduled_at)
  SELECT $TA, $C3, s, t FROM (SELECT now() - interval '4 days' AS t) x,
  (VALUES ('completed'), ('no_show')) v(s)" >/dev/null
expect_summary c3 "-|-|-|2|4|no_show" "ties on scheduled_at: the highest id"
t_psql "UPDATE appointments SET customer_id = $C2 WHERE customer_id = $C3 AND status = 'no_show'" \
  >/dev/null
expect_summary c3 "-|-|-|1|4|completed" "an appointment moved away"
expect_summary c2 "3|2|false|2|4|no_show" "an appointment moved in"
before_c1=$(xmin c1)
t_psql "UPDATE appointments SET updated_at = now() WHERE customer_id = $C1" >/dev/null
assert_eq "$(xmin c1)" "$before_c1" "updated_at changes leave the customers row alone"
t_psql "DELETE FROM appointments WHERE customer_id = $C1 AND status = 'cancelled'" >/dev/null
expect_summary c1 "5|1|true|1|60|completed" "cancelled appointments deleted"
t_psql "DELETE FROM appointments WHERE customer_id = $C3" >/dev/null
expect_summary c3 "-|-|-|0|-|-" "every appointment deleted"
assert_eq "$(count_of '{"has_appointment": false}' c3)" 1 "preview: c3 has no appointment"
consistent "appointment writes"

# ---------------------------------------------------------------------------------------
# The API's imports (INSERT ... ON CONFLICT DO UPDATE, customers updated in the same
# statement); the columns the importers and the customers API own stay theirs.
# ---------------------------------------------------------------------------------------
import() { # import KIND NDJSON
  printf '%s\n' "$2" >"$T_DIR/import.ndjson"
  assert_status 200 POST "/v1/$1/import" "${T_AUTH[@]}" \
    -H "Content-Type: application/x-ndjson" --data-binary @"$T_DIR/import.ndjson"
  assert_eq "$(json_get .rejected)" 0 "import $1: no rejected line (${T_BODY:0:300})"
}
d() { date -u -d "$1 days ago" +%Y-%m-%dT%H:%M:%SZ; }
import interactions "$(printf '%s\n' \
  "{\"external_id\":\"e1\",\"customer_external_id\":\"c4\",\"channel\":\"sms\",\"occurred_at\":\"$(d 8)\",\"satisfaction\":3,\"booking_intent\":true}" \
  "{\"external_id\":\"e2\",\"customer_external_id\":\"c4\",\"channel\":\"voice\",\"occurred_at\":\"$(d 6)\"}" \
  "{\"external_id\":\"e3\",\"customer_external_id\":\"c5\",\"channel\":\"web\",\"occurred_at\":\"$(d 1)\",\"satisfaction\":5}")"
expect_summary c4 "6|3|true|0|-|-" "imported interactions"
expect_summary c5 "1|5|-|0|-|-" "imported interaction of another customer"
# Re-import: e1 re-rated and its intent changed, e3 moved to c4.
import interactions "$(printf '%s\n' \
  "{\"external_id\":\"e1\",\"customer_external_id\":\"c4\",\"channel\":\"sms\",\"occurred_at\":\"$(d 8)\",\"satisfaction\":1,\"booking_intent\":false}" \
  "{\"external_id\":\"e3\",\"customer_external_id\":\"c4\",\"channel\":\"web\",\"occurred_at\":\"$(d 1)\",\"satisfaction\":5}" \
  "{\"external_id\":\"e4\",\"customer_external_id\":\"c6\",\"channel\":\"email\",\"occurred_at\":\"$(d 2)\",\"booking_intent\":true}")"
expect_summary c4 "1|5|false|0|-|-" "re-imported: updated and moved-in rows"
expect_summary c5 "-|-|-|0|-|-" "re-imported: the row moved away"
expect_summary c6 "2|-|true|0|-|-" "re-imported: a new row in the same batch"
import appointments "$(printf '%s\n' \
  "{\"external_id\":\"a1\",\"customer_external_id\":\"c4\",\"status\":\"completed\",\"scheduled_at\":\"$(d 40)\"}" \
  "{\"external_id\":\"a2\",\"customer_external_id\":\"c4\",\"status\":\"cancelled\",\"scheduled_at\":\"$(d 3)\"}")"
expect_summary c4 "1|5|false|2|3|cancelled" "imported appointments"
assert_eq "$(t_psql "SELECT floor(extract(epoch FROM now() - last_appointment_at) / 86400)
  FROM customers WHERE tenant_id = $TA AND external_id = 'c4'")" 40 \
  "the importer's last_appointment_at (not cancelled) is its own"
import appointments "{\"external_id\":\"a2\",\"customer_external_id\":\"c5\",\"status\":\"cancelled\",\"scheduled_at\":\"$(d 3)\"}"
expect_summary c4 "1|5|false|1|40|completed" "re-imported appointment moved away"
expect_summary c5 "-|-|-|1|3|cancelled" "re-imported appointment moved in"
# The customers API sets last_contact_at / last_appointment_at; the summary stays.
t_api PATCH "/v1/customers/$(cid c4)" '{"last_contact_at": "2020-01-01T00:00:00Z",
  "last_appointment_at": null}'
assert_eq "$T_STATUS" 200 "PATCH customer: ${T_BODY:0:300}"
expect_summary c4 "1|5|false|1|40|completed" "the customers API leaves the summary alone"
assert_eq "$(count_of '{"field": "days_since_last_contact", "op": "lte", "value": 1}' c4)" 1 \
  "preview: the latest interaction is a contact whatever last_contact_at says"
consistent "imports"

# ---------------------------------------------------------------------------------------
# One write per customer per statement; concurrent writers; cascades; TRUNCATE.
# ---------------------------------------------------------------------------------------
# 1,000 rows over 100 customers (c1 and 99 new ones) in one INSERT: 100 customer updates.
t_psql "INSERT INTO customers (tenant_id, external_id, tags)
  SELECT $TA, 'bulk' || g, '{bulk}' FROM generate_series(1, 99) g" >/dev/null
upd=$(t_psql "BEGIN;
  INSERT INTO interactions (tenant_id, customer_id, channel, occurred_at, satisfaction,
                            booking_intent)
  SELECT $TA, c.id, 'sms', now() - make_interval(hours => g), 1 + g % 5,
         CASE WHEN g % 3 = 0 THEN g % 2 = 0 END
  FROM customers c, generate_series(1, 10) g
  WHERE c.tenant_id = $TA AND (c.external_id LIKE 'bulk%' OR c.id = $C1);
  SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'customers';
  COMMIT;")
assert_eq "$upd" 100 "a 1,000-row batch updates each of its 100 customers once"
consistent "a 1,000-row batch"
# Two transactions on one customer: the first holds its newer row uncommitted while the
# second adds an older rated one; whichever order they commit in, neither summary is lost.
t_psql "BEGIN;
  INSERT INTO interactions (tenant_id, customer_id, channel, occurred_at, booking_intent)
  VALUES ($TA, $C2, 'sms', now() - interval '1 hour', true);
  SELECT pg_sleep(2); COMMIT;" >/dev/null &
slow=$!
sleep 0.7
t_psql "INSERT INTO interactions (tenant_id, customer_id, channel, occurred_at, satisfaction)
  VALUES ($TA, $C2, 'voice', now() - interval '2 hours', 4)" >/dev/null
wait "$slow" || t_fail "the slow transaction failed"
t_psql "BEGIN;
  INSERT INTO appointments (tenant_id, customer_id, status, scheduled_at)
  VALUES ($TA, $C2, 'scheduled', now() + interval '3 days');
  SELECT pg_sleep(2); COMMIT;" >/dev/null &
slow=$!
sleep 0.7
t_psql "DELETE FROM appointments WHERE customer_id = $C2 AND status = 'no_show'" >/dev/null
wait "$slow" || t_fail "the slow transaction failed"
expect_summary c2 "0|4|true|1|-3|scheduled" "concurrent writers on one customer"
consistent "concurrent writers"
# Deleting customers cascades to their rows; the triggers skip the deleted customers.
t_api DELETE "/v1/customers/$(cid c6)"
assert_eq "$T_STATUS" 204 "DELETE customer: ${T_BODY:0:300}"
t_psql "DELETE FROM customers WHERE tenant_id = $TA AND external_id LIKE 'bulk%'" >/dev/null
assert_eq "$(t_psql "SELECT count(*) FROM interactions WHERE customer_id NOT IN
  (SELECT id FROM customers)")" 0 "cascaded deletes"
consistent "deleted customers"
# TRUNCATE empties the tables for everyone.
t_psql "TRUNCATE interactions" >/dev/null
expect_summary c2 "-|-|-|1|-3|scheduled" "interactions truncated"
t_psql "TRUNCATE appointments" >/dev/null
expect_summary c2 "-|-|-|0|-|-" "appointments truncated"
assert_eq "$(t_psql "SELECT last_rating IS NULL FROM customers WHERE id = $B1")" t \
  "TRUNCATE reset tenant B too"
consistent "TRUNCATE"

t_log "customer_summary: $CHECKS checks passed"
echo "customer_summary ok"
