#!/usr/bin/env bash
# Every shipped segment template (GET /v1/segment-templates) compiled and run against
# PostgreSQL through POST /v1/segments/preview, by template_id and by its criteria, on
# a fixture built to hit each one: customers that match, and near misses (one
# condition off: too old, too recent, booked since, a later answer, another channel,
# unreachable on the template's channel). Another tenant holds the same fixture plus
# extra matches, which never show up in this tenant's previews.
. "$(dirname "$0")/../lib.sh"
t_init segment_templates
t_tenant_key tenant_b
TB=$T_TENANT
KEY_B=$T_KEY
t_tenant_key tenant_a
TA=$T_TENANT
KEY_A=$T_KEY
t_start_api

# The expected members of each template in tenant A (sorted). A template the test does
# not know fails the test: a new template needs its fixture and expectations here.
declare -A WANT=(
  [sms_booking_abandoners]="sa1 sa2 sa3"
  [booking_flow_abandoners]="bf1 bf2"
  [high_satisfaction_no_repeat]="hs1 hs2 hs_boundary"
  [recent_callers_without_booking]="rc1 rc2"
  [inactive_90_days]="in1 in2 in3"
  [cancelled_appointments]="ca1 ca2"
)

# ---------------------------------------------------------------------------------------
# Fixture (hours before now(): D(N) = N whole days and an hour; negative = upcoming).
# Every customer has a phone, an email and last_contact_at = 10 days ago (so it is not
# "inactive") unless its line says otherwise.
# ---------------------------------------------------------------------------------------
D() { echo $(($1 * 24 + 1)); }

t_psql "
CREATE SEQUENCE fx_phone;
CREATE FUNCTION fx_id(t bigint, ext text) RETURNS bigint LANGUAGE sql AS \$\$
  SELECT id FROM customers WHERE tenant_id = t AND external_id = ext \$\$;
CREATE FUNCTION fx_cust(t bigint, ext text) RETURNS void LANGUAGE sql AS \$\$
  INSERT INTO customers (tenant_id, external_id, first_name, phone, email, last_contact_at)
  VALUES (t, ext, initcap(ext), '+1555' || lpad(nextval('fx_phone')::text, 7, '0'),
          ext || '@example.com', now() - interval '10 days 1 hour') \$\$;
CREATE FUNCTION fx_ix(t bigint, ext text, ch text, dir text, hrs int, sat int DEFAULT NULL,
                      intent boolean DEFAULT NULL, meta jsonb DEFAULT '{}') RETURNS void
  LANGUAGE sql AS \$\$
  INSERT INTO interactions (tenant_id, customer_id, channel, direction, occurred_at,
                            satisfaction, booking_intent, metadata)
  VALUES (t, fx_id(t, ext), ch, dir, now() - make_interval(hours => hrs), sat, intent, meta) \$\$;
CREATE FUNCTION fx_ap(t bigint, ext text, st text, hrs int) RETURNS void LANGUAGE sql AS \$\$
  INSERT INTO appointments (tenant_id, customer_id, status, scheduled_at)
  VALUES (t, fx_id(t, ext), st, now() - make_interval(hours => hrs)) \$\$;
CREATE FUNCTION fx_upd(t bigint, ext text, assignments text) RETURNS void LANGUAGE plpgsql AS \$\$
  BEGIN
    EXECUTE 'UPDATE customers SET ' || assignments || ' WHERE tenant_id = \$1 AND external_id = \$2'
      USING t, ext;
  END \$\$;" >/dev/null

KEY='{"visited_booking_page": true}'

build_fixture() { # build_fixture T: one transaction, one now()
  local t=$1 ids
  ids="sa1 sa2 sa3 sa_no1 sa_no2 sa_no3 sa_no4 sa_no5 sa_no6
       bf1 bf2 bf_no1 bf_no2 bf_no3 bf_no4 bf_no5
       hs1 hs2 hs_boundary hs_no1 hs_no2 hs_no3 hs_no4 hs_no5
       rc1 rc2 rc_no1 rc_no2 rc_no3 rc_no4 rc_no5
       in1 in2 in3 in_no1 in_no2 in_no3 in_no4
       ca1 ca2 ca_no1 ca_no2 ca_no3"
  t_psql "BEGIN;
  $(for id in $ids; do printf "SELECT fx_cust(%s, '%s');\n" "$t" "$id"; done)

  -- sms_booking_abandoners: the latest SMS that recorded an intent says yes, an SMS in
  -- the last 14 days, no appointment from 14 days ago on.
  SELECT fx_ix($t, 'sa1', 'sms', 'inbound', $(D 3), NULL, true);
  SELECT fx_ix($t, 'sa2', 'sms', 'inbound', $(D 20), NULL, true);
  SELECT fx_ix($t, 'sa2', 'sms', 'outbound', $(D 10));
  SELECT fx_ap($t, 'sa2', 'completed', $(D 60));
  SELECT fx_ix($t, 'sa3', 'sms', 'inbound', $(D 14), NULL, true);
  SELECT fx_ix($t, 'sa_no1', 'sms', 'inbound', $(D 10), NULL, true);  -- then said no
  SELECT fx_ix($t, 'sa_no1', 'sms', 'inbound', $(D 2), NULL, false);
  SELECT fx_ix($t, 'sa_no2', 'sms', 'inbound', $(D 3), NULL, true);   -- booked since
  SELECT fx_ap($t, 'sa_no2', 'scheduled', -72);
  SELECT fx_ix($t, 'sa_no3', 'sms', 'inbound', $(D 20), NULL, true);  -- SMS too old
  SELECT fx_ix($t, 'sa_no4', 'web', 'inbound', $(D 3), NULL, true);   -- intent on the web
  SELECT fx_ix($t, 'sa_no4', 'sms', 'inbound', $(D 3));
  SELECT fx_ix($t, 'sa_no5', 'sms', 'inbound', $(D 3), NULL, true);   -- opted out of SMS
  SELECT fx_upd($t, 'sa_no5', 'sms_opt_out = true');
  SELECT fx_ix($t, 'sa_no6', 'sms', 'inbound', $(D 15), NULL, true);  -- 15 days

  -- booking_flow_abandoners: the latest visit carrying the key 1 to 7 days ago.
  SELECT fx_ix($t, 'bf1', 'web', 'inbound', $(D 2), NULL, NULL, '$KEY');
  SELECT fx_ix($t, 'bf2', 'web', 'inbound', $(D 7), NULL, NULL, '$KEY');
  SELECT fx_ap($t, 'bf2', 'completed', $(D 30));
  SELECT fx_ix($t, 'bf_no1', 'web', 'inbound', $(D 5), NULL, NULL, '$KEY'); -- again today
  SELECT fx_ix($t, 'bf_no1', 'web', 'inbound', 23, NULL, NULL, '$KEY');
  SELECT fx_ix($t, 'bf_no2', 'web', 'inbound', $(D 8), NULL, NULL, '$KEY'); -- 8 days
  SELECT fx_ix($t, 'bf_no3', 'web', 'inbound', $(D 3), NULL, NULL, '$KEY'); -- booked since
  SELECT fx_ap($t, 'bf_no3', 'scheduled', -48);
  SELECT fx_ix($t, 'bf_no4', 'web', 'inbound', $(D 3), NULL, NULL, '$KEY'); -- no email
  SELECT fx_upd($t, 'bf_no4', 'email = NULL');
  SELECT fx_ix($t, 'bf_no5', 'web', 'inbound', $(D 3), NULL, NULL, '{\"other\": true}');

  -- high_satisfaction_no_repeat: latest rating >= 4, one completed appointment 30+ days ago.
  SELECT fx_ix($t, 'hs1', 'voice', 'inbound', $(D 40), 5);
  SELECT fx_ap($t, 'hs1', 'completed', $(D 45));
  SELECT fx_ix($t, 'hs2', 'sms', 'inbound', $(D 100), 2);
  SELECT fx_ix($t, 'hs2', 'sms', 'inbound', $(D 50), 4);
  SELECT fx_ix($t, 'hs2', 'sms', 'inbound', $(D 5));
  SELECT fx_ap($t, 'hs2', 'completed', $(D 60));
  SELECT fx_ix($t, 'hs_boundary', 'email', 'inbound', $(D 30), 4);
  SELECT fx_ap($t, 'hs_boundary', 'completed', $(D 30));
  SELECT fx_ix($t, 'hs_no1', 'sms', 'inbound', $(D 40), 5);          -- came twice
  SELECT fx_ap($t, 'hs_no1', 'completed', $(D 200));
  SELECT fx_ap($t, 'hs_no1', 'completed', $(D 45));
  SELECT fx_ix($t, 'hs_no2', 'sms', 'inbound', $(D 100), 5);         -- latest rating 3
  SELECT fx_ix($t, 'hs_no2', 'sms', 'inbound', $(D 40), 3);
  SELECT fx_ap($t, 'hs_no2', 'completed', $(D 60));
  SELECT fx_ix($t, 'hs_no3', 'sms', 'inbound', $(D 40), 5);          -- 29 days ago
  SELECT fx_ap($t, 'hs_no3', 'completed', $(D 29));
  SELECT fx_ix($t, 'hs_no4', 'sms', 'inbound', $(D 40), 5);          -- did not show up
  SELECT fx_ap($t, 'hs_no4', 'no_show', $(D 60));
  SELECT fx_ix($t, 'hs_no5', 'sms', 'inbound', $(D 40), 5);          -- only an upcoming one
  SELECT fx_ap($t, 'hs_no5', 'scheduled', -24);

  -- recent_callers_without_booking: an inbound call in the last 7 days, nothing booked.
  SELECT fx_ix($t, 'rc1', 'voice', 'inbound', $(D 2));
  SELECT fx_ix($t, 'rc2', 'voice', 'inbound', $(D 7));
  SELECT fx_ap($t, 'rc2', 'completed', $(D 90));
  SELECT fx_ix($t, 'rc_no1', 'voice', 'outbound', $(D 2));           -- we called them
  SELECT fx_ix($t, 'rc_no2', 'voice', 'inbound', $(D 8));            -- 8 days
  SELECT fx_ix($t, 'rc_no3', 'voice', 'inbound', $(D 2));            -- booked
  SELECT fx_ap($t, 'rc_no3', 'scheduled', -24);
  SELECT fx_ix($t, 'rc_no4', 'voice', 'inbound', $(D 2));            -- came 5 days ago
  SELECT fx_ap($t, 'rc_no4', 'completed', $(D 5));
  SELECT fx_ix($t, 'rc_no5', 'voice', 'inbound', $(D 2));            -- no phone for SMS
  SELECT fx_upd($t, 'rc_no5', 'phone = NULL');

  -- inactive_90_days: no contact and no appointment for 90+ days (never counts).
  SELECT fx_upd($t, 'in1', 'last_contact_at = NULL');
  SELECT fx_upd($t, 'in2', 'last_contact_at = now() - interval ''90 days 1 hour''');
  SELECT fx_ix($t, 'in2', 'sms', 'outbound', $(D 120));
  SELECT fx_ap($t, 'in2', 'completed', $(D 200));
  SELECT fx_upd($t, 'in3', 'last_contact_at = now() - interval ''100 days'',
                            last_appointment_at = now() - interval ''95 days''');
  SELECT fx_upd($t, 'in_no1', 'last_contact_at = now() - interval ''200 days''');
  SELECT fx_ix($t, 'in_no1', 'sms', 'inbound', $(D 89));             -- wrote 89 days ago
  SELECT fx_upd($t, 'in_no2', 'last_contact_at = NULL');             -- has an upcoming one
  SELECT fx_ap($t, 'in_no2', 'scheduled', -240);
  SELECT fx_upd($t, 'in_no3', 'last_contact_at = NULL,
                               last_appointment_at = now() - interval ''89 days 1 hour''');
  SELECT fx_upd($t, 'in_no4', 'last_contact_at = NULL, email_opt_out = true');

  -- cancelled_appointments: the latest appointment (upcoming ones too) was cancelled.
  SELECT fx_ap($t, 'ca1', 'completed', $(D 100));
  SELECT fx_ap($t, 'ca1', 'cancelled', $(D 5));
  SELECT fx_ap($t, 'ca2', 'cancelled', -48);
  SELECT fx_ap($t, 'ca_no1', 'cancelled', $(D 5));                   -- rebooked
  SELECT fx_ap($t, 'ca_no1', 'scheduled', -100);
  SELECT fx_ap($t, 'ca_no2', 'cancelled', $(D 50));                  -- then did not show
  SELECT fx_ap($t, 'ca_no2', 'no_show', $(D 10));
  SELECT fx_ap($t, 'ca_no3', 'cancelled', $(D 5));                   -- opted out of SMS
  SELECT fx_upd($t, 'ca_no3', 'sms_opt_out = true');
  COMMIT;" >/dev/null
}

build_fixture "$TB"
build_fixture "$TA"
# Tenant B has one more match of every template; none may show up in A's previews.
t_psql "BEGIN;
  SELECT fx_cust($TB, 'b_only_sa'); SELECT fx_ix($TB, 'b_only_sa', 'sms', 'inbound', 30, NULL, true);
  SELECT fx_cust($TB, 'b_only_bf'); SELECT fx_ix($TB, 'b_only_bf', 'web', 'inbound', 30, NULL, NULL, '$KEY');
  SELECT fx_cust($TB, 'b_only_hs'); SELECT fx_ix($TB, 'b_only_hs', 'sms', 'inbound', 30, 5);
    SELECT fx_ap($TB, 'b_only_hs', 'completed', $(D 40));
  SELECT fx_cust($TB, 'b_only_rc'); SELECT fx_ix($TB, 'b_only_rc', 'voice', 'inbound', 30);
  SELECT fx_cust($TB, 'b_only_in'); SELECT fx_upd($TB, 'b_only_in', 'last_contact_at = NULL');
  SELECT fx_cust($TB, 'b_only_ca'); SELECT fx_ap($TB, 'b_only_ca', 'cancelled', 30);
  COMMIT; ANALYZE;" >/dev/null 2>&1

# ---------------------------------------------------------------------------------------
# The list
# ---------------------------------------------------------------------------------------
assert_status 200 GET /v1/segment-templates -H "Authorization: Bearer $KEY_A"
TEMPLATES=$T_BODY
n=$(json_get '.templates | length' "$TEMPLATES")
assert_eq "$n" "${#WANT[@]}" "number of templates"
assert_eq "$(jq -r '[.templates[].id] | sort | join(" ")' <<<"$TEMPLATES")" \
  "$(printf '%s\n' "${!WANT[@]}" | sort | paste -sd ' ' -)" "template ids"

sample_ids() { jq -r '[.sample[].external_id] | sort | join(" ")' <<<"$T_BODY"; }

for ((i = 0; i < n; i++)); do
  tpl=$(jq -c ".templates[$i]" <<<"$TEMPLATES")
  id=$(json_get .id "$tpl")
  ch=$(json_get .channel "$tpl")
  [ -n "${WANT[$id]+x}" ] || t_fail "template $id has no expectation in this test"
  for f in name description; do
    [ -n "$(json_get ".$f // empty" "$tpl")" ] || t_fail "template $id has no $f"
  done
  case "$ch" in sms | email | voice) ;; *) t_fail "template $id: channel '$ch'" ;; esac
  assert_eq "$(json_get '.criteria | type' "$tpl")" object "template $id: criteria object"
  want=${WANT[$id]}
  nwant=$(wc -w <<<"$want")

  # By id: the template's own channel.
  t_api POST /v1/segments/preview "$(jq -cn --arg id "$id" '{template_id: $id}')"
  assert_eq "$T_STATUS" 200 "preview of template $id (body ${T_BODY:0:300})"
  assert_eq "$(json_get .count)" "$nwant" "template $id: count"
  assert_eq "$(sample_ids)" "$want" "template $id: members"

  # By its criteria from the list, on its channel: the same answer.
  t_api POST /v1/segments/preview "$(jq -c '{criteria, channel}' <<<"$tpl")"
  assert_eq "$T_STATUS" 200 "preview of template $id's criteria"
  assert_eq "$(json_get .count)" "$nwant" "template $id's criteria: count"
  assert_eq "$(sample_ids)" "$want" "template $id's criteria: members"

  # Tenant B: its own rows, one more match.
  T_KEY=$KEY_B
  t_api POST /v1/segments/preview "$(jq -cn --arg id "$id" '{template_id: $id}')"
  T_KEY=$KEY_A
  assert_eq "$T_STATUS" 200 "tenant B preview of template $id"
  assert_eq "$(json_get .count)" "$((nwant + 1))" "template $id in tenant B: count"
  t_log "template $id ($ch): $want"
done

# An unknown template is a client error, not a preview of everyone.
t_api POST /v1/segments/preview '{"template_id": "no_such_template"}'
case "$T_STATUS" in
  404 | 422) ;;
  *) t_fail "unknown template_id: HTTP $T_STATUS: ${T_BODY:0:300}" ;;
esac
t_log "segment_templates: $n templates previewed"
