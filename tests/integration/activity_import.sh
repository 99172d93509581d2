#!/usr/bin/env bash
# Interactions and appointments imports: per-line errors (unknown customer,
# bad fields), idempotent re-import keyed by external_id, customers'
# last_contact_at / last_appointment_at kept in step, tenant isolation,
# `crierctl import --type`.
. "$(dirname "$0")/../lib.sh"
t_init activity_import
t_tenant_key tenant_a
KEY_A=$T_KEY
TENANT_A=$T_TENANT
t_start_api

for c in c1 c2 c3; do
  t_api POST /v1/customers "{\"external_id\":\"$c\",\"first_name\":\"$c\"}"
  assert_eq "$T_STATUS" 201 "customer $c"
done
cid() { t_psql "SELECT id FROM customers WHERE tenant_id = $TENANT_A AND external_id = '$1'"; }
C1=$(cid c1)
C2=$(cid c2)

import() { # import KIND FILE [CONTENT-TYPE]
  assert_status 200 POST "/v1/$1/import" "${T_AUTH[@]}" \
    -H "Content-Type: ${3:-application/x-ndjson}" --data-binary @"$2"
}
counts() { json_get '. | [.inserted,.updated,.unchanged,.rejected] | join(",")'; }

# --- interactions
cat >"$T_DIR/ia.ndjson" <<'EOF'
{"external_id":"i1","customer_external_id":"c1","channel":"sms","direction":"outbound","occurred_at":"2024-05-01T10:00:00Z","outcome":"replied","satisfaction":4,"booking_intent":true,"metadata":{"campaign":"spring"}}
{"external_id":"i2","customer_external_id":"c1","channel":"voice","occurred_at":"2024-06-01T09:00:00+02:00"}
{"external_id":"i3","customer_external_id":"nobody","channel":"sms","occurred_at":"2024-05-01T10:00:00Z"}

{"external_id":"i4","customer_external_id":"c2","channel":"fax","occurred_at":"2024-05-01T10:00:00Z"}
{"external_id":"i5","customer_external_id":"c2","channel":"web","occurred_at":"2024-05-01T10:00:00Z","satisfaction":6}
{"customer_external_id":"c2","channel":"web","occurred_at":"2024-05-01T10:00:00Z"}
{"external_id":"i7","customer_external_id":"c2","channel":"in_person","occurred_at":"2099-01-01T00:00:00Z"}
{"external_id":"i8","customer_external_id":"c2","channel":"email","direction":"sideways","occurred_at":"2024-05-01T10:00:00Z"}
{"external_id":"i9","customer_external_id":"c2","channel":"email","occurred_at":"2024-13-01T10:00:00Z"}
{"external_id":"i10","customer_external_id":"c2","channel":"email","occurred_at":"2024-04-01T08:00:00Z","booking_intent":"yes"}
EOF
import interactions "$T_DIR/ia.ndjson"
assert_eq "$(counts)" "3,0,0,7" "interaction counts"
assert_eq "$(json_get '. | [.errors[].line] | join(",")')" "3,5,6,7,9,10,11" "interaction error lines"
assert_eq "$(json_get '. | [.errors[].field] | join(",")')" \
  "customer_external_id,channel,satisfaction,external_id,direction,occurred_at,booking_intent" \
  "interaction error fields"
assert_eq "$(json_get '.errors[0].message')" "no customer with this customer_external_id" \
  "unknown customer message"
assert_eq "$(t_psql "SELECT count(*) FROM interactions")" 3 "three interactions"
assert_eq "$(t_psql "SELECT direction || ',' || satisfaction || ',' || booking_intent || ',' || (metadata->>'campaign') FROM interactions WHERE external_id = 'i1'")" \
  "outbound,4,true,spring" "interaction fields stored"
assert_eq "$(t_psql "SELECT direction FROM interactions WHERE external_id = 'i2'")" inbound \
  "direction defaults to inbound"
assert_eq "$(t_psql "SELECT customer_id FROM interactions WHERE external_id = 'i2'")" "$C1" \
  "customer looked up by external_id"
# last_contact_at: newest past interaction, either direction; never the future one
assert_eq "$(t_psql "SELECT last_contact_at = '2024-06-01T07:00:00Z' FROM customers WHERE id = $C1")" t \
  "c1 last_contact_at follows its newest interaction"
assert_eq "$(t_psql "SELECT last_contact_at IS NULL FROM customers WHERE id = $C2")" t \
  "a future interaction is not a contact"

# re-import: nothing doubles; a changed line updates; last_contact_at never goes back
import interactions "$T_DIR/ia.ndjson"
assert_eq "$(counts)" "0,0,3,7" "re-import changes nothing"
assert_eq "$(t_psql "SELECT count(*) FROM interactions")" 3 "still three interactions"
printf '%s\n' '{"external_id":"i2","customer_external_id":"c1","channel":"voice","occurred_at":"2024-01-01T00:00:00Z","outcome":"moved"}' \
  >"$T_DIR/ia2.ndjson"
import interactions "$T_DIR/ia2.ndjson"
assert_eq "$(counts)" "0,1,0,0" "changed interaction updated"
assert_eq "$(t_psql "SELECT outcome FROM interactions WHERE external_id = 'i2'")" moved "outcome updated"
assert_eq "$(t_psql "SELECT last_contact_at = '2024-06-01T07:00:00Z' FROM customers WHERE id = $C1")" t \
  "last_contact_at does not move back"
# the same key twice in one body: the later line wins
printf '%s\n' '{"external_id":"i9","customer_external_id":"c2","channel":"sms","occurred_at":"2024-02-01T00:00:00Z","outcome":"first"}' \
  '{"external_id":"i9","customer_external_id":"c2","channel":"sms","occurred_at":"2024-02-01T00:00:00Z","outcome":"second"}' \
  >"$T_DIR/ia3.ndjson"
import interactions "$T_DIR/ia3.ndjson"
assert_eq "$(counts)" "1,1,0,0" "duplicate key in one body"
assert_eq "$(t_psql "SELECT outcome FROM interactions WHERE external_id = 'i9'")" second "later line wins"
# CSV works too (metadata.<key> columns)
printf 'external_id,customer_external_id,channel,occurred_at,satisfaction,metadata.source\ni20,c3,web,2024-03-03,5,"site, form"\n' \
  >"$T_DIR/ia.csv"
import interactions "$T_DIR/ia.csv" text/csv
assert_eq "$(counts)" "1,0,0,0" "CSV interaction"
assert_eq "$(t_psql "SELECT satisfaction || '/' || (metadata->>'source') FROM interactions WHERE external_id = 'i20'")" \
  "5/site, form" "CSV interaction fields"

# --- appointments: last_appointment_at = latest non-cancelled scheduled_at
cat >"$T_DIR/ap.ndjson" <<'EOF'
{"external_id":"a1","customer_external_id":"c1","status":"completed","scheduled_at":"2024-01-10T10:00:00Z"}
{"external_id":"a2","customer_external_id":"c1","status":"scheduled","scheduled_at":"2024-03-10T10:00:00Z"}
{"external_id":"a3","customer_external_id":"c2","status":"cancelled","scheduled_at":"2024-04-10T10:00:00Z"}
{"external_id":"a4","customer_external_id":"ghost","status":"completed","scheduled_at":"2024-04-10T10:00:00Z"}
{"external_id":"a5","customer_external_id":"c2","status":"done","scheduled_at":"2024-04-10T10:00:00Z"}
{"external_id":"a6","customer_external_id":"c2","status":"no_show"}
EOF
import appointments "$T_DIR/ap.ndjson"
assert_eq "$(counts)" "3,0,0,3" "appointment counts"
assert_eq "$(json_get '. | [.errors[] | "\(.line):\(.field)"] | join(",")')" \
  "4:customer_external_id,5:status,6:scheduled_at" "appointment errors"
lap() { t_psql "SELECT COALESCE(to_char(last_appointment_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), 'none') FROM customers WHERE id = $1"; }
assert_eq "$(lap "$C1")" 2024-03-10 "c1: latest appointment"
assert_eq "$(lap "$C2")" none "c2: a cancelled appointment does not count"
import appointments "$T_DIR/ap.ndjson"
assert_eq "$(counts)" "0,0,3,3" "appointments re-import changes nothing"
assert_eq "$(t_psql "SELECT count(*) FROM appointments")" 3 "no doubled appointments"
# cancelling the latest falls back to the one before; moving one moves both customers
printf '%s\n' '{"external_id":"a2","customer_external_id":"c1","status":"cancelled","scheduled_at":"2024-03-10T10:00:00Z"}' \
  >"$T_DIR/ap2.ndjson"
import appointments "$T_DIR/ap2.ndjson"
assert_eq "$(counts)" "0,1,0,0" "status change"
assert_eq "$(lap "$C1")" 2024-01-10 "c1 falls back to its previous appointment"
printf '%s\n' '{"external_id":"a1","customer_external_id":"c2","status":"completed","scheduled_at":"2024-01-10T10:00:00Z"}' \
  >"$T_DIR/ap3.ndjson"
import appointments "$T_DIR/ap3.ndjson"
assert_eq "$(lap "$C1")" none "c1 lost its only non-cancelled appointment"
assert_eq "$(lap "$C2")" 2024-01-10 "c2 gained it"
assert_eq "$(t_psql "SELECT last_appointment_at = (SELECT max(scheduled_at) FROM appointments a WHERE a.customer_id = c.id AND a.status <> 'cancelled') FROM customers c WHERE c.id = $C2")" t \
  "in step with the appointments table"

# --- bad bodies change nothing
assert_status 415 POST /v1/appointments/import "${T_AUTH[@]}" -H 'Content-Type: application/xml' \
  --data-binary @"$T_DIR/ap.ndjson"
printf 'external_id,customer_external_id,status,when\n' >"$T_DIR/bad.csv"
assert_status 422 POST /v1/appointments/import "${T_AUTH[@]}" -H 'Content-Type: text/csv' \
  --data-binary @"$T_DIR/bad.csv"
assert_eq "$(json_get .error.field)" when "unknown CSV column"

# --- crierctl import --type
for i in $(seq 1 25); do
  printf '{"external_id":"ctl%d","customer_external_id":"c3","channel":"sms","occurred_at":"2024-02-%02dT12:00:00Z"}\n' "$i" "$i"
done >"$T_DIR/many.ndjson"
printf '{"external_id":"ctl-x","customer_external_id":"who","channel":"sms","occurred_at":"2024-02-01T12:00:00Z"}\n' \
  >>"$T_DIR/many.ndjson"
rc=0
CRIER_API_URL=$API_URL CRIER_API_KEY=$KEY_A "$CRIER_BIN_DIR/crierctl" import --type interactions \
  --chunk-lines 10 "$T_DIR/many.ndjson" >"$T_DIR/ctl.out" 2>"$T_DIR/ctl.err" || rc=$?
assert_eq "$rc" 1 "one line rejected"
assert_contains "$(cat "$T_DIR/ctl.err")" "many.ndjson:26: customer_external_id: no customer" "file line"
assert_contains "$(cat "$T_DIR/ctl.out")" "25 inserted" "25 interactions"
assert_eq "$(t_psql "SELECT to_char(last_contact_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM customers WHERE external_id = 'c3'")" \
  2024-03-03 "c3 last contact: the CSV row of March beats February"

# --- isolation: tenant B cannot attach activity to tenant A's customers
t_tenant_key tenant_b
import interactions "$T_DIR/ia2.ndjson"
assert_eq "$(counts)" "0,0,0,1" "B: A's customer is unknown"
import appointments "$T_DIR/ap2.ndjson"
assert_eq "$(counts)" "0,0,0,1" "B: A's customer is unknown for appointments"
assert_eq "$(t_psql "SELECT outcome FROM interactions WHERE external_id = 'i2'")" moved \
  "A's interaction untouched"
assert_eq "$(t_psql "SELECT count(*) FROM interactions WHERE tenant_id <> $TENANT_A")" 0 \
  "nothing written for B"
T_KEY=$KEY_A
echo "activity_import ok"
