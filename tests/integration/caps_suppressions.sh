#!/usr/bin/env bash
# Caps and suppressions (issue 4, item 4): a customer who must not be contacted
# becomes 'skipped' with a reason, the stats show it, and nothing is sent to them.
#
# What each check proves:
# - Campaign 1 (tenant frequency cap 1, segment {} matching everyone):
#   * opted_out / suppressed / frequency_cap / no_address: each such customer's
#     delivery is skipped with exactly that reason and nothing reaches the provider
#     (sandbox log), while ordinary customers are sent to once;
#   * the cap is a rolling 7 days of *outbound* messages: a contact 8 days ago and an
#     inbound message yesterday do not count (those customers are sent to);
#   * scoping: a suppression of the same phone on another channel (voice), or by
#     another tenant, does not suppress; another tenant's messages do not count
#     toward this tenant's cap;
#   * stats.skipped_reasons equals both the SQL ground truth and what the set-up
#     implies; the campaign moves to 'completed' by itself.
# - Campaign 2 (same segment, cap 1): everyone campaign 1 reached is now capped
#   (the cap works across campaigns); nothing is sent.
# - Campaign 3 (cap raised to 2): the same customers are sent to again, so the cap's
#   value (not "any contact") is what decides.
# - Expansion gate: with the workers stopped, a customer opted out before the launch
#   is born 'skipped' (opted_out) when the campaign is expanded.
# - Claim-time gate: with the workers stopped, a campaign is launched (its deliveries
#   queued, jobs in the stream); then customers are opted out, suppressed and
#   contacted by SQL; a worker started afterwards skips them with those reasons
#   instead of sending; another tenant's suppression added meanwhile changes nothing.
. "$(dirname "$0")/../lib.sh"
t_init caps_suppressions
t_tenant_key other_tenant
TB=$T_TENANT
t_tenant_key
TA=$T_TENANT
t_provider_sandbox
t_start_api
t_start_dispatcher
t_start_worker
SANDBOX=$CRIER_SANDBOX_LOG
touch "$SANDBOX"

# cust TENANT EXTERNAL_ID PHONE|'' TAG [OPT_OUT]: prints the new customer's id.
cust() {
  local phone=NULL
  [ -n "$3" ] && phone="'$3'"
  t_psql "INSERT INTO customers (tenant_id, external_id, first_name, phone, tags, sms_opt_out)
          VALUES ($1, '$2', '$2', $phone, ARRAY['$4'], ${5:-false}) RETURNING id"
}
# msg TENANT CUSTOMER DIRECTION AGE: a message row AGE ago (a past contact).
msg() {
  t_psql "INSERT INTO messages (tenant_id, customer_id, direction, channel, body, created_at)
          VALUES ($1, $2, '$3', 'sms', 'earlier', now() - interval '$4')" >/dev/null
}
# outcome CAMPAIGN CUSTOMER: "status:skip_reason" of the customer's delivery.
outcome() {
  t_psql "SELECT status || ':' || COALESCE(skip_reason, '') FROM deliveries
          WHERE campaign_id = $1 AND customer_id = $2"
}
# sandbox_to PHONE: how many messages the sandbox provider got for PHONE.
sandbox_to() { grep -c "\"to\":\"$1\"" "$SANDBOX" || true; }
campaign_status() { t_psql "SELECT status FROM campaigns WHERE id = $1"; }
status_is() { [ "$(campaign_status "$1")" = "$2" ]; }
new_campaign() { # NAME SEGMENT_JSON: prints the id
  t_api POST /v1/campaigns "{\"name\":\"$1\",\"channel\":\"sms\",\"message\":{\"body\":\"$1 {{first_name}}\"},\"segment\":$2,\"send_window\":{\"start\":\"00:00\",\"end\":\"24:00\"}}"
  [ "$T_STATUS" = 201 ] || t_fail "create campaign $1: $T_STATUS $T_BODY"
  json_get .id
}
launch() {
  t_api POST "/v1/campaigns/$1/launch"
  assert_eq "$T_STATUS" 202 "campaign $1 launched"
}
# check_stats CAMPAIGN EXPECTED_REASONS_JSON: stats.skipped_reasons equals the SQL
# ground truth and the expectation from the set-up.
check_stats() {
  local truth got
  t_api GET "/v1/campaigns/$1/stats"
  assert_eq "$T_STATUS" 200 "stats of campaign $1"
  got=$(json_get .skipped_reasons | jq -S -c .)
  truth=$(t_psql "SELECT COALESCE(json_object_agg(skip_reason, n), '{}') FROM
                    (SELECT skip_reason, count(*) AS n FROM deliveries
                     WHERE campaign_id = $1 AND status = 'skipped' GROUP BY skip_reason) s" |
    jq -S -c .)
  assert_eq "$got" "$truth" "campaign $1: stats.skipped_reasons equal the deliveries table"
  assert_eq "$got" "$(jq -S -c . <<<"$2")" "campaign $1: skipped reasons as the set-up implies"
  assert_eq "$(json_get .counts.skipped)" "$(jq '[.[]] | add // 0' <<<"$2")" \
    "campaign $1: skipped count"
}

t_psql "UPDATE tenants SET frequency_cap_7d = 1 WHERE id = $TA" >/dev/null

# --- Tenant A's customers (tag g1) ---
P_NORMAL=+15550001001
P_OPTOUT=+15550001002
P_SUPP=+15550001003
P_CAPPED=+15550001004
P_OLD=+15550001005
P_INBOUND=+15550001006
P_VOICE=+15550001007
P_ISO=+15550001008
P_OTHERMSG=+15550001009
# Some are read only through ${!name} in the loops below.
# shellcheck disable=SC2034
{
  NORMAL=$(cust "$TA" normal "$P_NORMAL" g1)
  VOICE=$(cust "$TA" voice "$P_VOICE" g1)
  ISO=$(cust "$TA" iso "$P_ISO" g1)
}
OPTOUT=$(cust "$TA" optout "$P_OPTOUT" g1 true)
SUPP=$(cust "$TA" supp "$P_SUPP" g1)
CAPPED=$(cust "$TA" capped "$P_CAPPED" g1)
OLD=$(cust "$TA" old "$P_OLD" g1)
INBOUND=$(cust "$TA" inbound "$P_INBOUND" g1)
OTHERMSG=$(cust "$TA" othermsg "$P_OTHERMSG" g1)
NOPHONE=$(cust "$TA" nophone "" g1)
t_psql "INSERT INTO suppressions (tenant_id, channel, address, reason) VALUES
        ($TA, 'sms', '$P_SUPP', 'STOP by carrier'),
        ($TA, 'voice', '$P_VOICE', 'do not call'),
        ($TB, 'sms', '$P_ISO', 'other tenant')" >/dev/null
msg "$TA" "$CAPPED" outbound '1 day'
msg "$TA" "$OLD" outbound '8 days'
msg "$TA" "$INBOUND" inbound '1 day'
# Another tenant's contact recorded against this customer id must not count.
msg "$TB" "$OTHERMSG" outbound '1 hour'
# Tenant B has a customer with the opted-out and suppressed phones, not opted out.
cust "$TB" b_twin "$P_OPTOUT" g1 >/dev/null

# --- Campaign 1 ---
C1=$(new_campaign c1 '{}')
launch "$C1"
t_wait_until 60 "campaign 1 completed by itself" status_is "$C1" completed
assert_eq "$(t_psql "SELECT completed_at IS NOT NULL FROM campaigns WHERE id = $C1")" t \
  "campaign 1 completed_at set"
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $C1")" 10 \
  "campaign 1: a delivery for each of tenant A's customers, none for tenant B's"
for c in NORMAL OLD INBOUND VOICE ISO OTHERMSG; do
  assert_eq "$(outcome "$C1" "${!c}")" "sent:" "campaign 1: $c is sent to"
done
assert_eq "$(outcome "$C1" "$OPTOUT")" "skipped:opted_out" "campaign 1: opted-out customer"
assert_eq "$(outcome "$C1" "$SUPP")" "skipped:suppressed" "campaign 1: suppressed phone"
assert_eq "$(outcome "$C1" "$CAPPED")" "skipped:frequency_cap" "campaign 1: contacted yesterday, cap 1"
assert_eq "$(outcome "$C1" "$NOPHONE")" "skipped:no_address" "campaign 1: no phone"
check_stats "$C1" '{"opted_out":1,"suppressed":1,"frequency_cap":1,"no_address":1}'
for p in P_NORMAL P_OLD P_INBOUND P_VOICE P_ISO P_OTHERMSG; do
  assert_eq "$(sandbox_to "${!p}")" 1 "campaign 1: the provider got one message for $p"
done
for p in P_OPTOUT P_SUPP P_CAPPED; do
  assert_eq "$(sandbox_to "${!p}")" 0 "campaign 1: the provider got nothing for $p"
done
assert_eq "$(wc -l <"$SANDBOX")" 6 "campaign 1: six messages in all"

# --- Campaign 2: the same customers, the cap counts campaign 1's contacts ---
C2=$(new_campaign c2 '{"tags":["g1"]}')
launch "$C2"
t_wait_until 60 "campaign 2 completed by itself" status_is "$C2" completed
for c in NORMAL OLD INBOUND VOICE ISO OTHERMSG CAPPED; do
  assert_eq "$(outcome "$C2" "${!c}")" "skipped:frequency_cap" "campaign 2: $c capped across campaigns"
done
check_stats "$C2" '{"opted_out":1,"suppressed":1,"frequency_cap":7,"no_address":1}'
assert_eq "$(wc -l <"$SANDBOX")" 6 "campaign 2 sent nothing"

# --- Campaign 3: cap 2 lets one more contact through ---
t_psql "UPDATE tenants SET frequency_cap_7d = 2 WHERE id = $TA" >/dev/null
C3=$(new_campaign c3 '{"tags":["g1"]}')
launch "$C3"
t_wait_until 60 "campaign 3 completed by itself" status_is "$C3" completed
for c in NORMAL OLD INBOUND VOICE ISO OTHERMSG CAPPED; do
  assert_eq "$(outcome "$C3" "${!c}")" "sent:" "campaign 3: $c has 1 contact, under cap 2"
done
check_stats "$C3" '{"opted_out":1,"suppressed":1,"no_address":1}'
assert_eq "$(wc -l <"$SANDBOX")" 13 "campaign 3 sent seven messages"
assert_eq "$(sandbox_to "$P_CAPPED")" 1 "the customer capped in campaigns 1 and 2 got one message"

# --- Claim-time gate: changes after the launch, before the claim ---
t_psql "UPDATE tenants SET frequency_cap_7d = 1 WHERE id = $TA" >/dev/null
K_OK=$(cust "$TA" k_ok +15550002001 g2)
K_OPT=$(cust "$TA" k_opt +15550002002 g2)
K_SUPP=$(cust "$TA" k_supp +15550002003 g2)
K_CAP=$(cust "$TA" k_cap +15550002004 g2)
K_PRE=$(cust "$TA" k_pre +15550002005 g2 true)
t_stop worker
C4=$(new_campaign c4 '{"tags":["g2"]}')
launch "$C4"
t_wait_until 30 "campaign 4 expanded and released" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c \"SELECT expanded_at IS NOT NULL AND enqueued_cursor >= last_delivery_id AND last_delivery_id > 0 FROM campaigns WHERE id = $C4\")\" = t ]"
assert_eq "$(t_psql "SELECT string_agg(DISTINCT status, ',') FROM deliveries WHERE campaign_id = $C4
                    AND customer_id <> $K_PRE")" queued "campaign 4: queued while the workers are stopped"
assert_eq "$(outcome "$C4" "$K_PRE")" "skipped:opted_out" \
  "expansion gate: opted out before the launch, skipped with no worker running"
t_psql "UPDATE customers SET sms_opt_out = true WHERE id = $K_OPT" >/dev/null
t_psql "INSERT INTO suppressions (tenant_id, channel, address, reason) VALUES
        ($TA, 'sms', '+15550002003', 'complaint'),
        ($TB, 'sms', '+15550002001', 'other tenant')" >/dev/null
msg "$TA" "$K_CAP" outbound '1 minute'
t_start_worker
t_wait_until 60 "campaign 4 completed by itself" status_is "$C4" completed
assert_eq "$(outcome "$C4" "$K_OK")" "sent:" "claim gate: untouched customer (other tenant's suppression) sent"
assert_eq "$(outcome "$C4" "$K_OPT")" "skipped:opted_out" "claim gate: opted out after the launch"
assert_eq "$(outcome "$C4" "$K_SUPP")" "skipped:suppressed" "claim gate: suppressed after the launch"
assert_eq "$(outcome "$C4" "$K_CAP")" "skipped:frequency_cap" "claim gate: contacted after the launch"
check_stats "$C4" '{"opted_out":2,"suppressed":1,"frequency_cap":1}'
assert_eq "$(sandbox_to +15550002001)" 1 "claim gate: one message to the untouched customer"
for p in +15550002002 +15550002003 +15550002004 +15550002005; do
  assert_eq "$(sandbox_to "$p")" 0 "claim gate: nothing sent to $p"
done
assert_eq "$(wc -l <"$SANDBOX")" 14 "campaign 4 sent one message"
echo "caps_suppressions ok"
