#!/usr/bin/env bash
# Every segment criterion run against PostgreSQL through POST /v1/segments/preview,
# on fixture customers built to pin its semantics (common/segment.c, the table at the
# top): whole-day boundaries at N-1, N and N+1 days (and an hour either side of N),
# several interactions / appointments of which only the latest counts, ties, NULLs
# (never contacted, never rated, no appointment), the interaction scope of channel /
# direction / metadata_key, reachability on the campaign's channel, and another
# tenant's rows, which never match.
#
# Exact membership: every fixture customer carries a tag of its group and a tag
# "x_<external id>"; a check previews {"all": [CRITERIA, {"tags_any": [ids]}]} for
# chunks of at most 5 candidates of the group (the preview's sample size), so count ==
# sample and the sample is the exact set.
. "$(dirname "$0")/../lib.sh"
t_init segment_criteria
t_tenant_key tenant_b
TB=$T_TENANT
KEY_B=$T_KEY
t_tenant_key tenant_a
TA=$T_TENANT
KEY_A=$T_KEY
t_start_api

CHECKS=0
MEMBERS_TENANT=$TA

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

# preview BODY: POST /v1/segments/preview; T_STATUS, T_BODY.
preview() { t_api POST /v1/segments/preview "$1"; }

# members CHANNEL CRITERIA GROUP: the external ids of GROUP (a tag, in $MEMBERS_TENANT)
# that CRITERIA selects on CHANNEL; sorted, space-separated.
members() {
  local ch=$1 crit=$2 group=$3 ids=() out=() i chunk body n s
  mapfile -t ids < <(t_psql "SELECT external_id FROM customers WHERE tenant_id = $MEMBERS_TENANT
    AND '$group' = ANY(tags) ORDER BY external_id")
  [ "${#ids[@]}" -gt 0 ] || t_fail "fixture group $group is empty"
  for ((i = 0; i < ${#ids[@]}; i += 5)); do
    chunk=$(printf '"x_%s",' "${ids[@]:i:5}")
    body=$(jq -cn --arg ch "$ch" --argjson crit "$crit" --argjson tags "[${chunk%,}]" \
      '{channel: $ch, criteria: {all: [$crit, {tags_any: $tags}]}}') ||
      t_fail "bad criteria JSON in the test: $crit"
    preview "$body"
    [ "$T_STATUS" = 200 ] || t_fail "preview $crit ($ch): HTTP $T_STATUS: ${T_BODY:0:500}"
    n=$(json_get .count)
    s=$(json_get '.sample | length')
    [ "$n" = "$s" ] || t_fail "preview $crit ($ch): count $n but $s in the sample: $T_BODY"
    mapfile -t -O "${#out[@]}" out < <(json_get '.sample[].external_id')
  done
  [ "${#out[@]}" -eq 0 ] || printf '%s\n' "${out[@]}" | sort | paste -sd ' ' -
}

# expect CHANNEL CRITERIA GROUP [EXPECTED IDS...]: exactly these members.
expect() {
  local ch=$1 crit=$2 group=$3 want got
  shift 3
  want=$( ([ $# -eq 0 ] || printf '%s\n' "$@") | sort | paste -sd ' ' -)
  got=$(members "$ch" "$crit" "$group")
  assert_eq "$got" "$want" "$ch $crit in $group"
  CHECKS=$((CHECKS + 1))
}

# expect_not CHANNEL CRITERIA GROUP: {"not": CRITERIA} selects exactly the reachable
# members of GROUP that CRITERIA does not (conditions are two-valued, NULLs included).
expect_not() {
  local ch=$1 crit=$2 group=$3 all yes no want
  all=$(members "$ch" '{}' "$group")
  yes=$(members "$ch" "$crit" "$group")
  no=$(members "$ch" "{\"not\": $crit}" "$group")
  want=$(comm -23 <(tr ' ' '\n' <<<"$all" | sed '/^$/d') <(tr ' ' '\n' <<<"$yes" | sed '/^$/d') |
    paste -sd ' ' -)
  assert_eq "$no" "$want" "not $crit in $group is the complement of $yes"
  CHECKS=$((CHECKS + 1))
}

# expect_422 CRITERIA FIELD: the preview rejects CRITERIA naming criteria.FIELD.
expect_422() {
  preview "$(jq -cn --argjson crit "$1" '{channel: "sms", criteria: $crit}')"
  assert_eq "$T_STATUS" 422 "422 for $1 (body ${T_BODY:0:300})"
  assert_eq "$(json_get .error.field)" "criteria.$2" "field named for $1"
  CHECKS=$((CHECKS + 1))
}

# ---------------------------------------------------------------------------------------
# Fixture. Times are hours before now(): D(N) = N whole days (N*24+1 hours), U(N) =
# just under N days (N*24-1 hours, still N-1 whole days); negative = in the future.
# ---------------------------------------------------------------------------------------
D() { echo $(($1 * 24 + 1)); }
U() { echo $(($1 * 24 - 1)); }

t_psql "
CREATE SEQUENCE fx_phone;
CREATE FUNCTION fx_cust(t bigint, ext text, grp text) RETURNS void LANGUAGE sql AS \$\$
  INSERT INTO customers (tenant_id, external_id, first_name, phone, email, tags)
  VALUES (t, ext, initcap(ext), '+1555' || lpad(nextval('fx_phone')::text, 7, '0'),
          ext || '@example.com', ARRAY[grp, 'x_' || ext]) \$\$;
CREATE FUNCTION fx_id(t bigint, ext text) RETURNS bigint LANGUAGE sql AS \$\$
  SELECT id FROM customers WHERE tenant_id = t AND external_id = ext \$\$;
CREATE FUNCTION fx_ix(t bigint, ext text, ch text, dir text, hrs int, sat int DEFAULT NULL,
                      intent boolean DEFAULT NULL, meta jsonb DEFAULT '{}') RETURNS void
  LANGUAGE sql AS \$\$
  INSERT INTO interactions (tenant_id, customer_id, channel, direction, occurred_at,
                            satisfaction, booking_intent, metadata)
  VALUES (t, fx_id(t, ext), ch, dir, now() - make_interval(hours => hrs), sat, intent, meta) \$\$;
CREATE FUNCTION fx_ap(t bigint, ext text, st text, hrs int) RETURNS void LANGUAGE sql AS \$\$
  INSERT INTO appointments (tenant_id, customer_id, status, scheduled_at)
  VALUES (t, fx_id(t, ext), st, now() - make_interval(hours => hrs)) \$\$;
CREATE FUNCTION fx_set(t bigint, ext text, col text, hrs int) RETURNS void LANGUAGE plpgsql AS \$\$
  BEGIN
    EXECUTE format('UPDATE customers SET %I = now() - make_interval(hours => \$1)
                    WHERE tenant_id = \$2 AND external_id = \$3', col) USING hrs, t, ext;
  END \$\$;"

# fx T SQL...: runs the fixture statements of tenant T in one transaction (one now()).
fx() {
  local t=$1
  shift
  t_psql "BEGIN; $(printf '%s\n' "$@" | sed "s/\bT\b/$t/g"); COMMIT;" >/dev/null
}
group() { # group T NAME IDS...
  local t=$1 g=$2 id sql=()
  shift 2
  for id in "$@"; do sql+=("SELECT fx_cust(T, '$id', '$g');"); done
  fx "$t" "${sql[@]}"
}

build_fixture() { # build_fixture T
  local t=$1

  # days_since_last_contact, N = 30: c.last_contact_at and interactions (either way).
  group "$t" g_contact lc_never lc_col29 lc_col30 lc_col31 lc_under30 lc_ix29 lc_ix30 \
    lc_ix31_old lc_newix lc_newcol
  fx "$t" \
    "SELECT fx_set(T, 'lc_col29', 'last_contact_at', $(D 29));" \
    "SELECT fx_set(T, 'lc_col30', 'last_contact_at', $(D 30));" \
    "SELECT fx_set(T, 'lc_col31', 'last_contact_at', $(D 31));" \
    "SELECT fx_set(T, 'lc_under30', 'last_contact_at', $(U 30));" \
    "SELECT fx_ix(T, 'lc_ix29', 'voice', 'inbound', $(D 29));" \
    "SELECT fx_ix(T, 'lc_ix30', 'sms', 'outbound', $(D 30));" \
    "SELECT fx_ix(T, 'lc_ix31_old', 'email', 'inbound', $(D 31));" \
    "SELECT fx_ix(T, 'lc_ix31_old', 'web', 'inbound', $(D 200));" \
    "SELECT fx_ix(T, 'lc_ix31_old', 'in_person', 'inbound', $(D 400));" \
    "SELECT fx_set(T, 'lc_newix', 'last_contact_at', $(D 100));" \
    "SELECT fx_ix(T, 'lc_newix', 'sms', 'inbound', $(D 2));" \
    "SELECT fx_set(T, 'lc_newcol', 'last_contact_at', $(D 1));" \
    "SELECT fx_ix(T, 'lc_newcol', 'sms', 'inbound', $(D 200));" \
    "SELECT fx_ix(T, 'lc_newcol', 'voice', 'outbound', $(D 45));"

  # days_since_last_appointment (N = 30), has_appointment, appointment counts.
  group "$t" g_appt ap_never ap_29 ap_30 ap_31 ap_col30 ap_future ap_cancel_recent ap_multi \
    ap_colnew
  fx "$t" \
    "SELECT fx_ap(T, 'ap_29', 'completed', $(D 29));" \
    "SELECT fx_ap(T, 'ap_30', 'completed', $(D 30));" \
    "SELECT fx_ap(T, 'ap_31', 'completed', $(D 31));" \
    "SELECT fx_ap(T, 'ap_31', 'completed', $(D 300));" \
    "SELECT fx_set(T, 'ap_col30', 'last_appointment_at', $(D 30));" \
    "SELECT fx_ap(T, 'ap_future', 'completed', $(D 200));" \
    "SELECT fx_ap(T, 'ap_future', 'scheduled', -120);" \
    "SELECT fx_ap(T, 'ap_cancel_recent', 'completed', $(D 100));" \
    "SELECT fx_ap(T, 'ap_cancel_recent', 'cancelled', $(D 2));" \
    "SELECT fx_ap(T, 'ap_multi', 'completed', $(D 40));" \
    "SELECT fx_ap(T, 'ap_multi', 'no_show', $(D 35));" \
    "SELECT fx_ap(T, 'ap_multi', 'completed', $(D 31));" \
    "SELECT fx_set(T, 'ap_colnew', 'last_appointment_at', $(D 3));" \
    "SELECT fx_ap(T, 'ap_colnew', 'completed', $(D 60));"

  # last_appointment_status: the latest by scheduled_at (future ones too; ties: by id).
  group "$t" g_status st_none st_cancelled st_rebooked st_cancel_ahead st_tie st_completed
  fx "$t" \
    "SELECT fx_ap(T, 'st_cancelled', 'completed', $(D 60));" \
    "SELECT fx_ap(T, 'st_cancelled', 'cancelled', $(D 10));" \
    "SELECT fx_ap(T, 'st_rebooked', 'cancelled', $(D 10));" \
    "SELECT fx_ap(T, 'st_rebooked', 'scheduled', -168);" \
    "SELECT fx_ap(T, 'st_cancel_ahead', 'completed', $(D 60));" \
    "SELECT fx_ap(T, 'st_cancel_ahead', 'cancelled', -168);" \
    "SELECT fx_ap(T, 'st_tie', 'completed', $(D 20));" \
    "SELECT fx_ap(T, 'st_tie', 'no_show', $(D 20));" \
    "SELECT fx_ap(T, 'st_completed', 'cancelled', $(D 60));" \
    "SELECT fx_ap(T, 'st_completed', 'completed', $(D 10));"

  # channel, direction, metadata_key and the scope they set.
  group "$t" g_ix ix_none ix_sms_in ix_voice_out ix_voice_in_old ix_web_key ix_email_keyfalse
  fx "$t" \
    "SELECT fx_ix(T, 'ix_sms_in', 'sms', 'inbound', $(D 5));" \
    "SELECT fx_ix(T, 'ix_voice_out', 'voice', 'outbound', $(D 5));" \
    "SELECT fx_ix(T, 'ix_voice_out', 'email', 'inbound', $(D 6));" \
    "SELECT fx_ix(T, 'ix_voice_in_old', 'voice', 'inbound', $(D 40));" \
    "SELECT fx_ix(T, 'ix_voice_in_old', 'sms', 'inbound', $(D 1));" \
    "SELECT fx_ix(T, 'ix_web_key', 'web', 'inbound', $(D 3), NULL, NULL,
                  '{\"visited_booking_page\": true}');" \
    "SELECT fx_ix(T, 'ix_email_keyfalse', 'email', 'inbound', $(D 3), NULL, NULL,
                  '{\"visited_booking_page\": false}');"

  # days_since_visit, N = 7 (web, or the metadata key), days_since_last_interaction.
  group "$t" g_visit vi_6 vi_7 vi_8 vi_7_sms1 vi_none vi_under7 vi_key
  fx "$t" \
    "SELECT fx_ix(T, 'vi_6', 'web', 'inbound', $(D 6));" \
    "SELECT fx_ix(T, 'vi_7', 'web', 'inbound', $(D 7));" \
    "SELECT fx_ix(T, 'vi_8', 'web', 'inbound', $(D 8));" \
    "SELECT fx_ix(T, 'vi_8', 'web', 'inbound', $(D 30));" \
    "SELECT fx_ix(T, 'vi_7_sms1', 'web', 'inbound', $(D 7));" \
    "SELECT fx_ix(T, 'vi_7_sms1', 'sms', 'inbound', $(D 1));" \
    "SELECT fx_ix(T, 'vi_none', 'sms', 'inbound', $(D 3));" \
    "SELECT fx_ix(T, 'vi_under7', 'web', 'inbound', $(U 7));" \
    "SELECT fx_ix(T, 'vi_key', 'email', 'inbound', $(D 2), NULL, NULL,
                  '{\"visited_booking_page\": 1}');" \
    "SELECT fx_ix(T, 'vi_key', 'web', 'inbound', $(D 10));"

  # booking_intent: the latest interaction that records one (NULLs skipped; ties: by id).
  group "$t" g_intent bi_none bi_yes bi_yes_then_no bi_no_then_yes bi_sms_yes_web_no bi_tie
  fx "$t" \
    "SELECT fx_ix(T, 'bi_none', 'sms', 'inbound', $(D 2));" \
    "SELECT fx_ix(T, 'bi_yes', 'sms', 'inbound', $(D 3), NULL, true);" \
    "SELECT fx_ix(T, 'bi_yes_then_no', 'sms', 'inbound', $(D 10), NULL, true);" \
    "SELECT fx_ix(T, 'bi_yes_then_no', 'sms', 'inbound', $(D 2), NULL, false);" \
    "SELECT fx_ix(T, 'bi_no_then_yes', 'web', 'inbound', $(D 10), NULL, false);" \
    "SELECT fx_ix(T, 'bi_no_then_yes', 'web', 'inbound', $(D 2), NULL, true);" \
    "SELECT fx_ix(T, 'bi_no_then_yes', 'sms', 'inbound', $(D 1));" \
    "SELECT fx_ix(T, 'bi_sms_yes_web_no', 'sms', 'inbound', $(D 5), NULL, true);" \
    "SELECT fx_ix(T, 'bi_sms_yes_web_no', 'web', 'inbound', $(D 1), NULL, false);" \
    "SELECT fx_ix(T, 'bi_tie', 'sms', 'inbound', $(D 4), NULL, true);" \
    "SELECT fx_ix(T, 'bi_tie', 'sms', 'inbound', $(D 4), NULL, false);"

  # satisfaction: the latest rated interaction.
  group "$t" g_sat sa_none sa_5 sa_5_then_2 sa_2_4_null sa_3 sa_voice5_sms1
  fx "$t" \
    "SELECT fx_ix(T, 'sa_none', 'sms', 'inbound', $(D 2));" \
    "SELECT fx_ix(T, 'sa_5', 'voice', 'inbound', $(D 10), 5);" \
    "SELECT fx_ix(T, 'sa_5_then_2', 'sms', 'inbound', $(D 20), 5);" \
    "SELECT fx_ix(T, 'sa_5_then_2', 'sms', 'inbound', $(D 5), 2);" \
    "SELECT fx_ix(T, 'sa_2_4_null', 'sms', 'inbound', $(D 20), 2);" \
    "SELECT fx_ix(T, 'sa_2_4_null', 'sms', 'inbound', $(D 10), 4);" \
    "SELECT fx_ix(T, 'sa_2_4_null', 'sms', 'inbound', $(D 1));" \
    "SELECT fx_ix(T, 'sa_3', 'web', 'inbound', $(D 3), 3);" \
    "SELECT fx_ix(T, 'sa_voice5_sms1', 'voice', 'inbound', $(D 10), 5);" \
    "SELECT fx_ix(T, 'sa_voice5_sms1', 'sms', 'inbound', $(D 2), 1);"

  # Reachability on the campaign's channel.
  group "$t" g_reach re_ok re_sms_out re_voice_out re_nophone re_supp re_suppb re_email_supp
  fx "$t" \
    "UPDATE customers SET sms_opt_out = true WHERE tenant_id = T AND external_id = 're_sms_out';" \
    "UPDATE customers SET voice_opt_out = true WHERE tenant_id = T AND external_id = 're_voice_out';" \
    "UPDATE customers SET phone = NULL WHERE tenant_id = T AND external_id = 're_nophone';" \
    "UPDATE customers SET email = 'Re.Email.Supp@Example.com'
       WHERE tenant_id = T AND external_id = 're_email_supp';"

  # The criteria that read the customers row only.
  group "$t" g_misc mi_a mi_b mi_c
  fx "$t" \
    "UPDATE customers SET tags = tags || '{vip,gold}', timezone = 'Europe/Paris',
       attributes = '{\"city\": \"Paris\", \"visits\": 3, \"interests\": [\"golf\", \"tennis\"]}'
       WHERE tenant_id = T AND external_id = 'mi_a';" \
    "UPDATE customers SET tags = tags || '{vip}', attributes = '{\"city\": \"Lyon\"}'
       WHERE tenant_id = T AND external_id = 'mi_b';" \
    "UPDATE customers SET timezone = 'Asia/Tokyo', attributes = '{\"pet\": null}', email = NULL
       WHERE tenant_id = T AND external_id = 'mi_c';"
}

# Tenant B first, with the same external ids and tags: its customers get the lower ids,
# and its rows sit in the same tables as A's.
build_fixture "$TB"
build_fixture "$TA"
# B's extra rows that would change A's answers if they leaked into A's queries.
fx "$TB" \
  "SELECT fx_ix(T, 'lc_never', 'sms', 'inbound', 1);" \
  "SELECT fx_ix(T, 'bi_yes', 'sms', 'inbound', 1, NULL, false);" \
  "SELECT fx_ap(T, 'st_cancelled', 'completed', -24);" \
  "SELECT fx_ix(T, 'sa_5', 'voice', 'inbound', 1, 1);"
# Suppressions: A's own (sms phone, email lower-cased) and one in B for A's phone.
t_psql "INSERT INTO suppressions (tenant_id, channel, address, reason)
  SELECT $TA, 'sms', phone, 'stop' FROM customers WHERE tenant_id = $TA AND external_id = 're_supp';
  INSERT INTO suppressions (tenant_id, channel, address, reason)
  SELECT $TB, 'sms', phone, 'stop' FROM customers WHERE tenant_id = $TA AND external_id = 're_suppb';
  INSERT INTO suppressions (tenant_id, channel, address, reason)
  VALUES ($TA, 'email', 're.email.supp@example.com', 'bounce')" >/dev/null
t_psql "ANALYZE customers; ANALYZE interactions; ANALYZE appointments; ANALYZE suppressions" \
  >/dev/null
t_log "fixture: $(t_psql "SELECT count(*) FROM customers") customers, \
$(t_psql "SELECT count(*) FROM interactions") interactions, \
$(t_psql "SELECT count(*) FROM appointments") appointments"

# ---------------------------------------------------------------------------------------
# days_since_last_contact (N = 30): whole days; the latest of c.last_contact_at and every
# interaction; never contacted = infinitely long ago.
# ---------------------------------------------------------------------------------------
expect sms '{"days_since_last_contact": 30}' g_contact \
  lc_never lc_col30 lc_col31 lc_ix30 lc_ix31_old
expect sms '{"field": "days_since_last_contact", "op": "gte", "value": 31}' g_contact \
  lc_never lc_col31 lc_ix31_old
expect sms '{"field": "days_since_last_contact", "op": "gte", "value": 29}' g_contact \
  lc_never lc_col29 lc_col30 lc_col31 lc_under30 lc_ix29 lc_ix30 lc_ix31_old
expect sms '{"field": "days_since_last_contact", "op": "lte", "value": 29}' g_contact \
  lc_col29 lc_under30 lc_ix29 lc_newix lc_newcol
expect sms '{"field": "days_since_last_contact", "op": "lte", "value": 30}' g_contact \
  lc_col29 lc_col30 lc_under30 lc_ix29 lc_ix30 lc_newix lc_newcol
expect sms '{"field": "days_since_last_contact", "op": "eq", "value": 30}' g_contact \
  lc_col30 lc_ix30
expect sms '{"field": "days_since_last_contact", "op": "eq", "value": 29}' g_contact \
  lc_col29 lc_under30 lc_ix29
expect sms '{"field": "days_since_last_contact", "op": "eq", "value": 31}' g_contact \
  lc_col31 lc_ix31_old
# Only the latest counts: an old column with a new interaction, and the reverse.
expect sms '{"field": "days_since_last_contact", "op": "lte", "value": 2}' g_contact \
  lc_newix lc_newcol
expect sms '{"field": "days_since_last_contact", "op": "lte", "value": 1}' g_contact lc_newcol
expect sms '{"field": "days_since_last_contact", "op": "eq", "value": 0}' g_contact
expect sms '{"days_since_last_contact": 0}' g_contact \
  lc_never lc_col29 lc_col30 lc_col31 lc_under30 lc_ix29 lc_ix30 lc_ix31_old lc_newix lc_newcol
expect_not sms '{"days_since_last_contact": 30}' g_contact
expect_not sms '{"field": "days_since_last_contact", "op": "lte", "value": 29}' g_contact
# Never narrowed by a channel scope.
expect sms '{"channel": "sms", "days_since_last_contact": 30}' g_contact lc_ix30

# ---------------------------------------------------------------------------------------
# days_since_last_appointment (N = 30): any status, upcoming ones included, and the
# c.last_appointment_at column; has_appointment; appointment counts.
# ---------------------------------------------------------------------------------------
expect sms '{"days_since_last_appointment": 30}' g_appt \
  ap_never ap_30 ap_31 ap_col30 ap_multi
expect sms '{"field": "days_since_last_appointment", "op": "gte", "value": 31}' g_appt \
  ap_never ap_31 ap_multi
expect sms '{"field": "days_since_last_appointment", "op": "lte", "value": 29}' g_appt \
  ap_29 ap_future ap_cancel_recent ap_colnew
expect sms '{"field": "days_since_last_appointment", "op": "lte", "value": 30}' g_appt \
  ap_29 ap_30 ap_col30 ap_future ap_cancel_recent ap_colnew
expect sms '{"field": "days_since_last_appointment", "op": "eq", "value": 30}' g_appt ap_30 ap_col30
expect sms '{"field": "days_since_last_appointment", "op": "eq", "value": 31}' g_appt ap_31 ap_multi
expect sms '{"field": "days_since_last_appointment", "op": "lte", "value": 0}' g_appt ap_future
expect sms '{"field": "days_since_last_appointment", "op": "lte", "value": 3}' g_appt \
  ap_future ap_cancel_recent ap_colnew
expect_not sms '{"days_since_last_appointment": 30}' g_appt

expect sms '{"has_appointment": true}' g_appt \
  ap_29 ap_30 ap_31 ap_future ap_cancel_recent ap_multi ap_colnew
expect sms '{"has_appointment": false}' g_appt ap_never ap_col30
expect sms '{"appointment_count_min": 2}' g_appt ap_31 ap_future ap_cancel_recent ap_multi
expect sms '{"appointment_count_min": 3}' g_appt ap_multi
expect sms '{"appointment_count_min": 4}' g_appt
expect sms '{"appointment_count_min": 0}' g_appt \
  ap_never ap_29 ap_30 ap_31 ap_col30 ap_future ap_cancel_recent ap_multi ap_colnew
expect sms '{"appointment_count_min": 1}' g_appt \
  ap_29 ap_30 ap_31 ap_future ap_cancel_recent ap_multi ap_colnew
expect sms '{"appointment_count_max": 1}' g_appt ap_never ap_29 ap_30 ap_col30 ap_colnew
expect sms '{"appointment_count_max": 0}' g_appt ap_never ap_col30
expect sms '{"field": "appointment_count", "op": "eq", "value": 1}' g_appt ap_29 ap_30 ap_colnew
expect sms '{"field": "appointment_count", "op": "eq", "value": 2}' g_appt \
  ap_31 ap_future ap_cancel_recent
expect sms '{"field": "appointment_count", "op": "eq", "value": 0}' g_appt ap_never ap_col30
expect sms '{"field": "appointment_count", "op": "lte", "value": 2}' g_appt \
  ap_never ap_29 ap_30 ap_31 ap_col30 ap_future ap_cancel_recent ap_colnew
expect_not sms '{"appointment_count_min": 2}' g_appt
expect_not sms '{"has_appointment": true}' g_appt

# ---------------------------------------------------------------------------------------
# last_appointment_status: the latest appointment by scheduled_at, future ones included.
# ---------------------------------------------------------------------------------------
expect sms '{"last_appointment_status": "cancelled"}' g_status st_cancelled st_cancel_ahead
expect sms '{"last_appointment_status": "scheduled"}' g_status st_rebooked
expect sms '{"last_appointment_status": "completed"}' g_status st_completed
expect sms '{"last_appointment_status": ["no_show"]}' g_status st_tie
expect sms '{"field": "last_appointment_status", "op": "in", "value": ["completed", "no_show"]}' \
  g_status st_tie st_completed
expect sms '{"not": {"last_appointment_status": "cancelled"}}' g_status \
  st_none st_rebooked st_tie st_completed
expect_not sms '{"last_appointment_status": "completed"}' g_status

# ---------------------------------------------------------------------------------------
# channel, direction, metadata_key, and their scope.
# ---------------------------------------------------------------------------------------
expect sms '{"channel": "sms"}' g_ix ix_sms_in ix_voice_in_old
expect sms '{"channel": ["voice", "web"]}' g_ix ix_voice_out ix_voice_in_old ix_web_key
expect sms '{"field": "channel", "op": "in", "value": ["voice", "web"]}' g_ix \
  ix_voice_out ix_voice_in_old ix_web_key
expect sms '{"channel": "in_person"}' g_ix
expect sms '{"direction": "outbound"}' g_ix ix_voice_out
expect sms '{"direction": "inbound"}' g_ix \
  ix_sms_in ix_voice_out ix_voice_in_old ix_web_key ix_email_keyfalse
expect sms '{"metadata_key": "visited_booking_page"}' g_ix ix_web_key ix_email_keyfalse
expect sms '{"metadata_key": ["nope", "visited_booking_page"]}' g_ix ix_web_key ix_email_keyfalse
expect sms '{"metadata_key": "nope"}' g_ix
expect_not sms '{"channel": "sms"}' g_ix
# One object: the same interaction is voice AND inbound ...
expect sms '{"channel": "voice", "direction": "inbound"}' g_ix ix_voice_in_old
expect sms '{"all": [{"field": "channel", "value": "voice"}, {"direction": "inbound"}]}' g_ix \
  ix_voice_in_old
# ... whereas under "any" each stands alone: some voice, and some inbound interaction.
expect sms '{"all": [{"any": [{"channel": "voice"}]}, {"any": [{"direction": "inbound"}]}]}' g_ix \
  ix_voice_out ix_voice_in_old
expect sms '{"channel": "web", "metadata_key": "visited_booking_page"}' g_ix ix_web_key
expect sms '{"channel": "voice", "days_since_last_interaction": 30}' g_ix ix_voice_in_old
expect sms '{"days_since_last_interaction": 30}' g_ix ix_none
expect sms '{"field": "days_since_last_interaction", "op": "lte", "value": 4}' g_ix \
  ix_voice_in_old ix_web_key ix_email_keyfalse
expect sms '{"all": [{"channel": "sms"}, {"field": "days_since_last_interaction", "op": "lte",
  "value": 4}]}' g_ix ix_voice_in_old
expect sms '{"direction": "outbound", "days_since_last_interaction": 5}' g_ix ix_voice_out
expect sms '{"direction": "outbound", "days_since_last_interaction": 6}' g_ix

# ---------------------------------------------------------------------------------------
# days_since_visit (N = 7): web interactions, or those carrying the metadata key.
# ---------------------------------------------------------------------------------------
expect sms '{"days_since_visit": 7}' g_visit vi_7 vi_8 vi_7_sms1 vi_none vi_key
expect sms '{"field": "days_since_visit", "op": "gte", "value": 8}' g_visit vi_8 vi_none vi_key
expect sms '{"field": "days_since_visit", "op": "lte", "value": 6}' g_visit vi_6 vi_under7
expect sms '{"field": "days_since_visit", "op": "lte", "value": 7}' g_visit \
  vi_6 vi_7 vi_7_sms1 vi_under7
expect sms '{"field": "days_since_visit", "op": "eq", "value": 7}' g_visit vi_7 vi_7_sms1
expect sms '{"field": "days_since_visit", "op": "eq", "value": 6}' g_visit vi_6 vi_under7
expect sms '{"metadata_key": "visited_booking_page", "days_since_visit": 2}' g_visit vi_key
expect sms '{"metadata_key": "visited_booking_page", "days_since_visit": 3}' g_visit
expect sms '{"all": [{"metadata_key": "visited_booking_page"}, {"field": "days_since_visit",
  "op": "lte", "value": 2}]}' g_visit vi_key
expect sms '{"channel": "sms", "days_since_visit": 2}' g_visit vi_none
expect sms '{"days_since_last_interaction": 7}' g_visit vi_7 vi_8
expect_not sms '{"days_since_visit": 7}' g_visit

# ---------------------------------------------------------------------------------------
# booking_intent: the latest interaction that records one.
# ---------------------------------------------------------------------------------------
expect sms '{"booking_intent": true}' g_intent bi_yes bi_no_then_yes
expect sms '{"booking_intent": false}' g_intent bi_yes_then_no bi_sms_yes_web_no bi_tie
expect sms '{"channel": "sms", "booking_intent": true}' g_intent bi_yes bi_sms_yes_web_no
expect sms '{"channel": "web", "booking_intent": false}' g_intent bi_sms_yes_web_no
expect sms '{"not": {"booking_intent": true}}' g_intent \
  bi_none bi_yes_then_no bi_sms_yes_web_no bi_tie
expect_not sms '{"booking_intent": false}' g_intent

# ---------------------------------------------------------------------------------------
# satisfaction: the latest rated interaction.
# ---------------------------------------------------------------------------------------
expect sms '{"min_satisfaction": 4}' g_sat sa_5 sa_2_4_null
expect sms '{"min_satisfaction": 5}' g_sat sa_5
expect sms '{"min_satisfaction": 1}' g_sat sa_5 sa_5_then_2 sa_2_4_null sa_3 sa_voice5_sms1
expect sms '{"max_satisfaction": 2}' g_sat sa_5_then_2 sa_voice5_sms1
expect sms '{"max_satisfaction": 5}' g_sat sa_5 sa_5_then_2 sa_2_4_null sa_3 sa_voice5_sms1
expect sms '{"field": "satisfaction", "op": "eq", "value": 3}' g_sat sa_3
expect sms '{"field": "satisfaction", "op": "lte", "value": 3}' g_sat \
  sa_5_then_2 sa_3 sa_voice5_sms1
expect sms '{"channel": "voice", "min_satisfaction": 5}' g_sat sa_5 sa_voice5_sms1
expect sms '{"channel": "sms", "max_satisfaction": 1}' g_sat sa_voice5_sms1
expect sms '{"not": {"min_satisfaction": 4}}' g_sat sa_none sa_5_then_2 sa_3 sa_voice5_sms1
expect_not sms '{"max_satisfaction": 2}' g_sat

# ---------------------------------------------------------------------------------------
# Reachability is always required, whatever the criteria say.
# ---------------------------------------------------------------------------------------
expect sms '{}' g_reach re_ok re_voice_out re_suppb re_email_supp
expect voice '{}' g_reach re_ok re_sms_out re_supp re_suppb re_email_supp
expect email '{}' g_reach re_ok re_sms_out re_voice_out re_nophone re_supp re_suppb
expect sms '{"has_phone": false}' g_reach
expect sms '{"not": {"has_phone": true}}' g_reach
expect email '{"any": [{"has_phone": false}, {"has_email": false}]}' g_reach re_nophone

# ---------------------------------------------------------------------------------------
# The customers row: tags, timezone, attribute, has_email.
# ---------------------------------------------------------------------------------------
expect sms '{"tags": ["vip", "gold"]}' g_misc mi_a
expect sms '{"tags": ["vip"]}' g_misc mi_a mi_b
expect sms '{"tags_any": ["gold", "nope"]}' g_misc mi_a
expect sms '{"timezone": "UTC"}' g_misc mi_b
expect sms '{"timezone": ["UTC", "Asia/Tokyo"]}' g_misc mi_b mi_c
expect sms '{"attribute": {"key": "city", "value": "Paris"}}' g_misc mi_a
expect sms '{"attribute": {"key": "interests", "value": ["golf"]}}' g_misc mi_a
expect sms '{"attribute": {"key": "visits", "value": 3}}' g_misc mi_a
expect sms '{"attribute": {"key": "pet", "exists": true}}' g_misc mi_c
expect sms '{"attribute": {"key": "pet", "exists": false}}' g_misc mi_a mi_b
expect sms '{"has_email": false}' g_misc mi_c

# ---------------------------------------------------------------------------------------
# The other tenant: B's own customers answer from B's rows only (and A's answers above
# were unchanged by B's rows and B's suppression of A's phone number).
# ---------------------------------------------------------------------------------------
T_KEY=$KEY_B
MEMBERS_TENANT=$TB
expect sms '{"days_since_last_contact": 30}' g_contact lc_col30 lc_col31 lc_ix30 lc_ix31_old
expect sms '{"booking_intent": true}' g_intent bi_no_then_yes
expect sms '{"last_appointment_status": "cancelled"}' g_status st_cancel_ahead
expect sms '{"min_satisfaction": 4}' g_sat sa_2_4_null
expect sms '{}' g_reach re_ok re_voice_out re_supp re_suppb re_email_supp
T_KEY=$KEY_A
MEMBERS_TENANT=$TA
# Untagged: the whole tenant; the counts never include the other tenant's customers.
preview '{"channel": "email", "criteria": {}}'
assert_eq "$T_STATUS" 200 "whole-tenant preview"
assert_eq "$(json_get .count)" "$(t_psql "SELECT count(*) FROM customers WHERE tenant_id = $TA
  AND email IS NOT NULL AND NOT email_opt_out AND lower(email) <> 're.email.supp@example.com'")" \
  "whole-tenant count is tenant A's"

# ---------------------------------------------------------------------------------------
# Errors name the field; hostile values stay values.
# ---------------------------------------------------------------------------------------
expect_422 '{"bogus": 1}' bogus
expect_422 '{"channel": "fax"}' channel
expect_422 '{"channel": "SMS"}' channel
expect_422 '{"direction": "sideways"}' direction
expect_422 '{"min_satisfaction": "4"}' min_satisfaction
expect_422 '{"max_satisfaction": 6}' max_satisfaction
expect_422 '{"booking_intent": "yes"}' booking_intent
expect_422 '{"last_appointment_status": "canceled"}' last_appointment_status
expect_422 '{"appointment_count_max": -1}' appointment_count_max
expect_422 '{"metadata_key": ""}' metadata_key
expect_422 '{"all": [{"field": "days_since_visit", "op": "lte", "value": -1}]}' days_since_visit
expect_422 '{"any": [{"not": {"days_since_last_contact": "30"}}]}' days_since_last_contact
expect_422 '{"field": "booking_intent", "op": "gte", "value": true}' op
expect_422 '{"all": [{"channel": "sms"}, {"channel": "voice"}]}' channel

ncust=$(t_psql "SELECT count(*) FROM customers")
# shellcheck disable=SC2016 # '$1' is literal on purpose
for evil in "x'); DROP TABLE customers; --" "' OR 1=1 --" '$1' "\\'; SELECT pg_sleep(5); --"; do
  crit=$(jq -cn --arg v "$evil" '{any: [{metadata_key: $v}, {tags: [$v]}, {timezone: $v},
    {attribute: {key: $v, value: $v}}, {attribute: {key: $v, exists: true}}]}')
  expect sms "$crit" g_misc
  expect sms "{\"not\": $crit}" g_misc mi_a mi_b mi_c
done
assert_eq "$(t_psql "SELECT count(*) FROM customers")" "$ncust" "customers intact"

# ---------------------------------------------------------------------------------------
# Writes after the fact: the latest / count criteria follow UPDATEs and DELETEs of
# interactions and appointments, rows moved between customers, and a multi-row INSERT
# (the unscoped forms read per-customer summaries the database keeps in step).
# ---------------------------------------------------------------------------------------
group "$TA" g_mut mu_ix_del mu_ix_upd mu_ix_move mu_ix_dest mu_ap_del mu_ap_upd mu_ap_move \
  mu_ap_dest mu_none
fx "$TA" \
  "SELECT fx_ix(T, 'mu_ix_del', 'voice', 'inbound', $(D 40), 1, false);" \
  "SELECT fx_ix(T, 'mu_ix_del', 'sms', 'inbound', $(D 2), 5, true);" \
  "SELECT fx_ix(T, 'mu_ix_upd', 'sms', 'inbound', $(D 3), 2);" \
  "SELECT fx_ix(T, 'mu_ix_move', 'web', 'inbound', $(D 1), 4, true);" \
  "SELECT fx_ix(T, 'mu_ix_dest', 'email', 'inbound', $(D 20), 3, false);" \
  "SELECT fx_ap(T, 'mu_ap_del', 'completed', $(D 60));" \
  "SELECT fx_ap(T, 'mu_ap_del', 'cancelled', $(D 5));" \
  "SELECT fx_ap(T, 'mu_ap_upd', 'cancelled', $(D 5));" \
  "SELECT fx_ap(T, 'mu_ap_move', 'no_show', $(D 3));" \
  "SELECT fx_ap(T, 'mu_ap_dest', 'completed', $(D 100));"
MU_IX="mu_ix_del mu_ix_upd mu_ix_move mu_ix_dest"
MU_AP="mu_ap_del mu_ap_upd mu_ap_move mu_ap_dest"
# shellcheck disable=SC2086 # word lists on purpose
{
  expect sms '{"min_satisfaction": 4}' g_mut mu_ix_del mu_ix_move
  expect sms '{"booking_intent": true}' g_mut mu_ix_del mu_ix_move
  expect sms '{"booking_intent": false}' g_mut mu_ix_dest
  expect sms '{"field": "days_since_last_interaction", "op": "lte", "value": 10}' g_mut \
    mu_ix_del mu_ix_upd mu_ix_move
  expect sms '{"days_since_last_contact": 10}' g_mut mu_ix_dest $MU_AP mu_none
  expect sms '{"last_appointment_status": "cancelled"}' g_mut mu_ap_del mu_ap_upd
  expect sms '{"field": "appointment_count", "op": "eq", "value": 1}' g_mut \
    mu_ap_upd mu_ap_move mu_ap_dest
  expect sms '{"appointment_count_min": 2}' g_mut mu_ap_del
  expect sms '{"days_since_last_appointment": 10}' g_mut $MU_IX mu_ap_dest mu_none
}
fx "$TA" \
  "DELETE FROM interactions WHERE customer_id = fx_id(T, 'mu_ix_del') AND channel = 'sms';" \
  "UPDATE interactions SET satisfaction = 5, booking_intent = true,
     occurred_at = now() - make_interval(hours => $(D 50))
   WHERE customer_id = fx_id(T, 'mu_ix_upd');" \
  "UPDATE interactions SET customer_id = fx_id(T, 'mu_ix_dest')
   WHERE customer_id = fx_id(T, 'mu_ix_move');" \
  "DELETE FROM appointments WHERE customer_id = fx_id(T, 'mu_ap_del') AND status = 'cancelled';" \
  "UPDATE appointments SET status = 'completed',
     scheduled_at = now() - make_interval(hours => $(D 40))
   WHERE customer_id = fx_id(T, 'mu_ap_upd');" \
  "UPDATE appointments SET customer_id = fx_id(T, 'mu_ap_dest')
   WHERE customer_id = fx_id(T, 'mu_ap_move');"
# shellcheck disable=SC2086 # word lists on purpose
{
  expect sms '{"min_satisfaction": 4}' g_mut mu_ix_upd mu_ix_dest
  expect sms '{"max_satisfaction": 1}' g_mut mu_ix_del
  expect sms '{"booking_intent": true}' g_mut mu_ix_upd mu_ix_dest
  expect sms '{"booking_intent": false}' g_mut mu_ix_del
  expect_not sms '{"booking_intent": false}' g_mut
  expect sms '{"field": "days_since_last_interaction", "op": "lte", "value": 10}' g_mut mu_ix_dest
  expect sms '{"days_since_last_interaction": 45}' g_mut mu_ix_upd mu_ix_move $MU_AP mu_none
  expect sms '{"days_since_last_contact": 10}' g_mut mu_ix_del mu_ix_upd mu_ix_move $MU_AP mu_none
  expect sms '{"has_appointment": false}' g_mut $MU_IX mu_ap_move mu_none
  expect sms '{"last_appointment_status": "completed"}' g_mut mu_ap_del mu_ap_upd
  expect sms '{"last_appointment_status": ["no_show", "cancelled"]}' g_mut mu_ap_dest
  expect_not sms '{"last_appointment_status": "completed"}' g_mut
  expect sms '{"field": "appointment_count", "op": "eq", "value": 1}' g_mut mu_ap_del mu_ap_upd
  expect sms '{"appointment_count_min": 2}' g_mut mu_ap_dest
  expect sms '{"days_since_last_appointment": 10}' g_mut $MU_IX mu_ap_del mu_ap_upd mu_ap_move \
    mu_none
  expect sms '{"field": "days_since_last_appointment", "op": "eq", "value": 40}' g_mut mu_ap_upd
}
# One multi-row INSERT for several customers, ties on occurred_at / scheduled_at included
# (the highest id is the latest).
t_psql "BEGIN;
  INSERT INTO interactions (tenant_id, customer_id, channel, direction, occurred_at, satisfaction,
                            booking_intent)
  SELECT $TA, fx_id($TA, v.ext), 'sms', 'inbound', now() - make_interval(hours => v.hrs), v.sat,
         v.intent
  FROM (VALUES ('mu_none', 30, 2, false), ('mu_none', 30, 4, true), ('mu_ap_del', 5, 1, NULL),
               ('mu_ix_del', 1, NULL, true)) v(ext, hrs, sat, intent);
  INSERT INTO appointments (tenant_id, customer_id, status, scheduled_at)
  SELECT $TA, fx_id($TA, v.ext), v.st, now() - make_interval(hours => v.hrs)
  FROM (VALUES ('mu_none', 50, 'cancelled'), ('mu_none', 50, 'completed'),
               ('mu_ix_del', -24, 'scheduled')) v(ext, hrs, st);
  COMMIT;" >/dev/null
expect sms '{"min_satisfaction": 4}' g_mut mu_ix_upd mu_ix_dest mu_none
expect sms '{"booking_intent": true}' g_mut mu_ix_del mu_ix_upd mu_ix_dest mu_none
expect sms '{"max_satisfaction": 1}' g_mut mu_ix_del mu_ap_del
expect sms '{"last_appointment_status": "completed"}' g_mut mu_ap_del mu_ap_upd mu_none
expect sms '{"last_appointment_status": "scheduled"}' g_mut mu_ix_del
expect sms '{"field": "appointment_count", "op": "eq", "value": 2}' g_mut mu_ap_dest mu_none

t_log "segment_criteria: $CHECKS checks passed"
