#!/usr/bin/env bash
# Send windows and expiry (issue 4, item 3): a campaign's window is in each
# recipient's local time (default 09:00-20:00, days of week optional) and
# PostgreSQL does the time-zone arithmetic; jobs outside it are deferred to
# the window's next opening (crier:delayed), never dropped; expire_after
# turns sends that would be too late into 'skipped' ('expired').
#
# Checks, and what each proves:
# 1. crier_window_due(tz, window, at) on fixed instants (a table below): inside
#    -> at itself; before the start / at or after the end -> the next opening;
#    days of week skipped (weekend -> Monday, same weekday -> a week later);
#    overnight windows (22:00-06:00), their after-midnight part belonging to
#    the day they started; a 24:00 (or 00:00) end; the NULL window meaning
#    09:00-20:00; local weekdays and hours in America/New_York, Asia/Tokyo;
#    the DST change days of Europe/Paris and America/New_York (the opening
#    at the right UTC instant); an unknown or NULL zone counting as UTC.
# 2. End to end (dispatcher + sandbox worker): one campaign whose window,
#    chosen at test time, is open now in America/New_York and Asia/Tokyo
#    and closed in Asia/Kolkata until the next minute boundary at least 20 s
#    away (the opening O). New York and Tokyo customers are sent now; the
#    Kolkata ones stay 'queued' with next_attempt_at = O, sit in
#    crier:delayed with score O, have no job and no send before O; at O
#    their jobs reach the stream at most 1 s late, once each, and they are
#    sent (sent_at >= O). Fails if windows were ignored, computed in UTC or
#    the server's zone, if deferred jobs were dropped or released late.
# 3. Expiry at release: a campaign with expire_after_minutes 1 whose window
#    opens in hours for its UTC customers (and is open in Tokyo): the UTC
#    deliveries become 'skipped' / 'expired' right away (not queued, no job,
#    nothing in crier:delayed), the Tokyo ones are sent, and the stats show
#    skipped_reasons {"expired": n}.
# 4. Expiry at the worker's claim: jobs released in time but claimed after
#    the deadline (workers stopped, launched_at moved back 2 minutes) are
#    skipped 'expired' and nothing is sent.
# 5. The worker defers a 'pending' delivery (a retry) outside the window too.
. "$(dirname "$0")/../lib.sh"
t_init send_window

# ----------------------------------------------------------------------------
# 1. crier_window_due on fixed instants.
# ----------------------------------------------------------------------------
# zone | window ('-': SQL NULL) | at | expected | what. 2027-03-03 is a Wednesday;
# 2027-03-06/07 a weekend; Europe/Paris changes to CEST on 2027-03-28 and back to CET on
# 2027-10-31, America/New_York to EDT on 2027-03-14 (EST before).
W='{"start":"09:00","end":"17:00"}'
WD='{"start":"09:00","end":"17:00","days":[1,2,3,4,5]}'
ON='{"start":"22:00","end":"06:00"}'
cases=$(
  cat <<EOF
UTC|$W|2027-03-03T12:00:00Z|2027-03-03T12:00:00Z|inside
UTC|$W|2027-03-03T09:00:00Z|2027-03-03T09:00:00Z|at the start: inside
UTC|$W|2027-03-03T07:30:00Z|2027-03-03T09:00:00Z|before the start: today's opening
UTC|$W|2027-03-03T17:00:00Z|2027-03-04T09:00:00Z|at the end: closed, next day's start
UTC|$W|2027-03-03T18:00:00Z|2027-03-04T09:00:00Z|after the end: next day's start
UTC|$WD|2027-03-05T12:00:00Z|2027-03-05T12:00:00Z|weekdays: Friday inside
UTC|$WD|2027-03-06T12:00:00Z|2027-03-08T09:00:00Z|weekdays: Saturday -> Monday
UTC|$WD|2027-03-05T18:00:00Z|2027-03-08T09:00:00Z|weekdays: Friday after the end -> Monday
UTC|{"start":"09:00","end":"17:00","days":[3]}|2027-03-03T18:00:00Z|2027-03-10T09:00:00Z|Wednesdays only: a week later
UTC|$ON|2027-03-03T23:00:00Z|2027-03-03T23:00:00Z|overnight: before midnight inside
UTC|$ON|2027-03-03T03:00:00Z|2027-03-03T03:00:00Z|overnight: after midnight inside
UTC|$ON|2027-03-03T12:00:00Z|2027-03-03T22:00:00Z|overnight: daytime -> tonight
UTC|$ON|2027-03-03T06:00:00Z|2027-03-03T22:00:00Z|overnight: at the end -> tonight
UTC|{"start":"22:00","end":"06:00","days":[1]}|2027-03-09T03:00:00Z|2027-03-09T03:00:00Z|overnight Mondays: Tuesday 03:00 is Monday's night
UTC|{"start":"22:00","end":"06:00","days":[1]}|2027-03-08T03:00:00Z|2027-03-08T22:00:00Z|overnight Mondays: Monday 03:00 is Sunday's night
UTC|{"start":"22:00","end":"06:00","days":[1]}|2027-03-09T07:00:00Z|2027-03-15T22:00:00Z|overnight Mondays: Tuesday morning -> next Monday
UTC|{"start":"22:00","end":"06:00","days":[2]}|2027-03-09T03:00:00Z|2027-03-09T22:00:00Z|overnight Tuesdays: Tuesday 03:00 is not Tuesday's night
UTC|{"start":"18:00","end":"24:00"}|2027-03-03T23:59:30Z|2027-03-03T23:59:30Z|24:00 end: 23:59 inside
UTC|{"start":"18:00","end":"24:00"}|2027-03-03T00:30:00Z|2027-03-03T18:00:00Z|24:00 end: 00:30 closed
UTC|{"start":"18:00","end":"00:00"}|2027-03-03T23:59:30Z|2027-03-03T23:59:30Z|00:00 end means 24:00
UTC|{"start":"18:00","end":"00:00"}|2027-03-04T00:00:00Z|2027-03-04T18:00:00Z|00:00 end: midnight closed
UTC|{"start":"00:00","end":"24:00"}|2027-03-03T00:00:00Z|2027-03-03T00:00:00Z|all day: midnight inside
UTC|-|2027-03-03T19:59:59Z|2027-03-03T19:59:59Z|default window: 19:59 inside
UTC|-|2027-03-03T20:00:00Z|2027-03-04T09:00:00Z|default window: 20:00 closed
UTC|-|2027-03-03T08:00:00Z|2027-03-03T09:00:00Z|default window: 08:00 -> 09:00
America/New_York|$W|2027-03-03T12:00:00Z|2027-03-03T14:00:00Z|New York 07:00 EST -> 09:00 EST
America/New_York|$W|2027-03-03T15:00:00Z|2027-03-03T15:00:00Z|New York 10:00 EST inside
America/New_York|$W|2027-03-03T23:00:00Z|2027-03-04T14:00:00Z|New York 18:00 EST -> tomorrow 09:00
America/New_York|{"start":"20:00","end":"23:00","days":[5]}|2027-03-06T02:00:00Z|2027-03-06T02:00:00Z|New York Friday 21:00 (Saturday in UTC) inside
America/New_York|-|2027-03-14T05:00:00Z|2027-03-14T13:00:00Z|New York DST day: 00:00 EST -> 09:00 EDT
Asia/Tokyo|-|2027-03-03T12:00:00Z|2027-03-04T00:00:00Z|Tokyo 21:00 -> 09:00 JST
Asia/Tokyo|-|2027-03-03T01:00:00Z|2027-03-03T01:00:00Z|Tokyo 10:00 inside
Asia/Tokyo|$WD|2027-03-05T16:00:00Z|2027-03-08T00:00:00Z|Tokyo Saturday 01:00 (Friday in UTC) -> Monday 09:00 JST
Asia/Tokyo|{"start":"22:00","end":"06:00","days":[5]}|2027-03-05T19:00:00Z|2027-03-05T19:00:00Z|Tokyo overnight Fridays: Saturday 04:00 JST inside
Europe/Paris|-|2027-03-27T20:00:00Z|2027-03-28T07:00:00Z|Paris spring DST: Saturday 21:00 CET -> Sunday 09:00 CEST
Europe/Paris|-|2027-03-28T06:30:00Z|2027-03-28T07:00:00Z|Paris spring DST day: 08:30 CEST -> 09:00 CEST
Europe/Paris|-|2027-10-30T19:00:00Z|2027-10-31T08:00:00Z|Paris autumn DST: Saturday 21:00 CEST -> Sunday 09:00 CET
Europe/Paris|-|2027-10-31T18:30:00Z|2027-10-31T18:30:00Z|Paris autumn DST day: 19:30 CET inside
Mars/Olympus_Mons|-|2027-03-03T07:00:00Z|2027-03-03T09:00:00Z|unknown zone counts as UTC
Mars/Olympus_Mons|-|2027-03-03T12:00:00Z|2027-03-03T12:00:00Z|unknown zone counts as UTC: inside
-|-|2027-03-03T07:00:00Z|2027-03-03T09:00:00Z|NULL zone counts as UTC
EOF
)
ncases=0
while IFS='|' read -r zone win at want what; do
  [ -n "$zone" ] || continue
  zsql="'$zone'"
  [ "$zone" = - ] && zsql=NULL
  wsql="'$win'::jsonb"
  [ "$win" = - ] && wsql=NULL
  got=$(t_psql "SELECT to_char(crier_window_due($zsql, $wsql, '$at'::timestamptz) AT TIME ZONE 'UTC',
                               'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
  assert_eq "$got" "$want" "crier_window_due($zone, $win, $at): $what"
  ncases=$((ncases + 1))
done <<<"$cases"
t_log "crier_window_due: $ncases cases as expected"

# ----------------------------------------------------------------------------
# 2. End to end: open for New York and Tokyo, opening at O for Kolkata.
# ----------------------------------------------------------------------------
t_tenant_key
t_provider_sandbox
t_start_api
t_start_dispatcher
t_start_worker

add_customers() { # TAG ZONE N FIRST_NUMBER
  t_psql "INSERT INTO customers (tenant_id, external_id, first_name, phone, timezone, tags)
          SELECT $T_TENANT, '$1-$2-' || g, 'N' || g, '+1555' || lpad(($4 + g)::text, 7, '0'),
                 '$2', '{$1}' FROM generate_series(1, $3) g" >/dev/null
}
add_customers w America/New_York 10 1000
add_customers w Asia/Tokyo 10 2000
add_customers w Asia/Kolkata 20 3000

# O: the next minute boundary at least 20 s away. The window opens at O in Kolkata
# and closes 2 minutes before it: open now in every zone whose local time is not
# within those 2 minutes (New York, Tokyo), closed now in Kolkata.
read -r O_MS WSTART WEND <<<"$(t_psql "
  SELECT (extract(epoch FROM o) * 1000)::bigint,
         to_char(o AT TIME ZONE 'Asia/Kolkata', 'HH24:MI'),
         to_char((o - interval '2 minutes') AT TIME ZONE 'Asia/Kolkata', 'HH24:MI')
  FROM (SELECT date_trunc('minute', now() + interval '20 seconds') + interval '1 minute' AS o) s" |
  tr '|' ' ')"
O_SQL="to_timestamp($O_MS / 1000.0)"
t_log "window $WSTART-$WEND (Asia/Kolkata opens at $(date -u -d "@$((O_MS / 1000))" +%H:%M:%SZ))"

t_api POST /v1/campaigns "{\"name\":\"windows\",\"channel\":\"sms\",\"message\":{\"body\":\"Hi\"},
  \"segment\":{\"has_phone\":true,\"tags\":[\"w\"]},
  \"send_window\":{\"start\":\"$WSTART\",\"end\":\"$WEND\"}}"
assert_eq "$T_STATUS" 201 "window campaign created: $T_BODY"
CID_W=$(json_get .id)
t_api POST "/v1/campaigns/$CID_W/launch"
assert_eq "$T_STATUS" 202 "window campaign launched"

zone_count() { # CAMPAIGN ZONE CONDITION
  t_psql "SELECT count(*) FROM deliveries d JOIN customers c ON c.id = d.customer_id
          WHERE d.campaign_id = $1 AND c.timezone = '$2' AND $3"
}
open_sent() {
  [ "$(zone_count "$CID_W" America/New_York "d.status = 'sent'")" = 10 ] &&
    [ "$(zone_count "$CID_W" Asia/Tokyo "d.status = 'sent'")" = 10 ]
}
t_wait_until 15 "New York and Tokyo customers sent while their window is open" open_sent
kol_deferred() { [ "$(zone_count "$CID_W" Asia/Kolkata "d.next_attempt_at IS NOT NULL")" = 20 ]; }
t_wait_until 15 "Kolkata deliveries deferred" kol_deferred

# Stream entries as "ms campaign delivery"; crier:delayed as "delivery campaign score".
stream_entries() {
  t_redis --raw XRANGE crier:jobs:sms - + | awk '
    /^[0-9]+-[0-9]+$/ { split($0, p, "-"); ms = p[1]; next }
    prev == "d" { d = $0 }
    prev == "c" { print ms, $0, d }
    { prev = $0 }'
}
delayed_entries() {
  t_redis --raw ZRANGE crier:delayed 0 -1 WITHSCORES |
    awk -F'|' 'NR % 2 == 1 { d = $2; c = $4; next } { print d, c, $0 }'
}
kolkata_ids() {
  t_psql "SELECT d.id FROM deliveries d JOIN customers c ON c.id = d.customer_id
          WHERE d.campaign_id = $CID_W AND c.timezone = 'Asia/Kolkata' ORDER BY d.id"
}
kolkata_ids >"$T_DIR/kolkata_ids"

# Before the opening.
stream_entries >"$T_DIR/entries_before"
delayed_entries >"$T_DIR/delayed_before"
sent_log_before=$(cat "$CRIER_SANDBOX_LOG" 2>/dev/null || true)
state_before=$(zone_count "$CID_W" Asia/Kolkata \
  "d.status = 'queued' AND d.next_attempt_at = $O_SQL AND d.sent_at IS NULL")
now_ms=$(t_psql "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
t_log "checks before the opening made $((O_MS - now_ms)) ms before it"
assert_ge "$((O_MS - now_ms))" 1 "the checks ran before the opening (the machine was too slow)"
assert_eq "$state_before" 20 "Kolkata deliveries 'queued' with next_attempt_at = the opening"
on_time=$(awk -v c="$CID_W" -v o="$O_MS" '$2 == c && $3 == o { print $1 }' "$T_DIR/delayed_before" |
  sort -u | comm -12 - <(sort -u "$T_DIR/kolkata_ids") | wc -l)
assert_eq "$on_time" 20 "each Kolkata delivery is in crier:delayed with score = the opening"
assert_eq "$(awk -v c="$CID_W" '$2 == c' "$T_DIR/delayed_before" | wc -l)" 20 \
  "crier:delayed holds only the Kolkata deliveries"
early=$(awk -v c="$CID_W" '$2 == c { print $3 }' "$T_DIR/entries_before" | sort -u |
  comm -12 - <(sort -u "$T_DIR/kolkata_ids") | wc -l)
assert_eq "$early" 0 "no Kolkata job in the stream before the opening"
while read -r id; do
  case "$sent_log_before" in
    *"\"delivery_id\":$id,"*) t_fail "delivery $id (Kolkata) sent before its window opened" ;;
  esac
done <"$T_DIR/kolkata_ids"
assert_eq "$(zone_count "$CID_W" America/New_York "d.sent_at < $O_SQL")" 10 "New York sent before O"

# ----------------------------------------------------------------------------
# 3. Expiry at release: the window opens in hours for UTC, now for Tokyo (while the
#    Kolkata deliveries wait for their opening).
# ----------------------------------------------------------------------------
add_customers x UTC 15 4000
add_customers x Asia/Tokyo 5 5000
read -r XSTART XEND <<<"$(t_psql "
  SELECT to_char(now() AT TIME ZONE 'UTC' + interval '3 hours', 'HH24:MI'),
         to_char(now() AT TIME ZONE 'UTC' + interval '10 hours', 'HH24:MI')" | tr '|' ' ')"
t_api POST /v1/campaigns "{\"name\":\"expiry\",\"channel\":\"sms\",\"message\":{\"body\":\"Hi\"},
  \"segment\":{\"has_phone\":true,\"tags\":[\"x\"]},\"expire_after_minutes\":1,
  \"send_window\":{\"start\":\"$XSTART\",\"end\":\"$XEND\"}}"
assert_eq "$T_STATUS" 201 "expiry campaign created: $T_BODY"
CID_X=$(json_get .id)
t_api POST "/v1/campaigns/$CID_X/launch"
assert_eq "$T_STATUS" 202 "expiry campaign launched"
x_done() {
  [ "$(zone_count "$CID_X" UTC "d.status = 'skipped'")" = 15 ] &&
    [ "$(zone_count "$CID_X" Asia/Tokyo "d.status = 'sent'")" = 5 ]
}
t_wait_until 30 "UTC deliveries expired, Tokyo ones sent" x_done
assert_eq "$(zone_count "$CID_X" UTC "d.skip_reason = 'expired'")" 15 "skipped as 'expired'"
assert_eq "$(zone_count "$CID_X" UTC "d.sent_at IS NULL")" 15 "expired deliveries never sent"
assert_eq "$(stream_entries | awk -v c="$CID_X" '$2 == c' | wc -l)" 5 "jobs for the Tokyo ones only"
assert_eq "$(delayed_entries | awk -v c="$CID_X" '$2 == c' | wc -l)" 0 "nothing deferred to crier:delayed"
t_api GET "/v1/campaigns/$CID_X/stats"
assert_eq "$T_STATUS" 200 "stats"
assert_eq "$(json_get .skipped_reasons | jq -S -c .)" '{"expired":15}' "stats show the expiries"
assert_eq "$(json_get .counts.sent)" 5 "stats show the sends"

# ----------------------------------------------------------------------------
# 2 (continued). The opening.
# ----------------------------------------------------------------------------
kol_sent() { [ "$(zone_count "$CID_W" Asia/Kolkata "d.status = 'sent'")" = 20 ]; }
t_wait_until $(((O_MS - now_ms) / 1000 + 30)) "Kolkata customers sent after the opening" kol_sent
stream_entries >"$T_DIR/entries_after"
awk -v c="$CID_W" '$2 == c { print $3, $1 }' "$T_DIR/entries_after" | sort >"$T_DIR/w_jobs"
kol_jobs=$(join "$T_DIR/w_jobs" <(sort "$T_DIR/kolkata_ids"))
assert_eq "$(wc -l <<<"$kol_jobs")" 20 "one job per Kolkata delivery, none duplicated"
read -r first last <<<"$(awk '{ print $2 }' <<<"$kol_jobs" | sort -n | sed -n '1p;$p' | paste -sd' ')"
t_log "Kolkata jobs reached the stream $((first - O_MS))..$((last - O_MS)) ms after the opening"
assert_ge "$first" "$O_MS" "no Kolkata job before the opening"
assert_le "$last" $((O_MS + 1000)) "Kolkata jobs moved at most 1 s after the opening"
assert_eq "$(zone_count "$CID_W" Asia/Kolkata "d.sent_at >= $O_SQL")" 20 "Kolkata sent at or after O"
assert_eq "$(delayed_entries | awk -v c="$CID_W" '$2 == c' | wc -l)" 0 "crier:delayed emptied"

# ----------------------------------------------------------------------------
# 4. Expiry at the claim: released in time, claimed too late.
# ----------------------------------------------------------------------------
t_stop worker
add_customers g UTC 10 6000
t_api POST /v1/campaigns '{"name":"late claim","channel":"sms","message":{"body":"Hi"},
  "segment":{"has_phone":true,"tags":["g"]},"expire_after_minutes":1,
  "send_window":{"start":"00:00","end":"24:00"}}'
assert_eq "$T_STATUS" 201 "late-claim campaign created: $T_BODY"
CID_G=$(json_get .id)
t_api POST "/v1/campaigns/$CID_G/launch"
assert_eq "$T_STATUS" 202 "late-claim campaign launched"
g_released() {
  [ "$(t_psql "SELECT expanded_at IS NOT NULL AND enqueued_cursor >= last_delivery_id
               AND last_delivery_id > 0 FROM campaigns WHERE id = $CID_G")" = t ] &&
    [ "$(stream_entries | awk -v c="$CID_G" '$2 == c { print $3 }' | sort -u | wc -l)" = 10 ]
}
t_wait_until 30 "late-claim campaign expanded and its 10 jobs released" g_released
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID_G AND status = 'queued'")" \
  10 "released in time: queued, not skipped by the dispatcher"
t_psql "UPDATE campaigns SET launched_at = launched_at - interval '2 minutes' WHERE id = $CID_G" >/dev/null
t_start_worker
g_skipped() {
  [ "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID_G AND status = 'skipped'")" = 10 ]
}
t_wait_until 30 "jobs claimed after the deadline skipped" g_skipped
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID_G AND skip_reason = 'expired' AND sent_at IS NULL")" \
  10 "claimed after the deadline: skipped as 'expired', never sent"
for id in $(t_psql "SELECT id FROM deliveries WHERE campaign_id = $CID_G"); do
  if grep -q "\"delivery_id\":$id," "$CRIER_SANDBOX_LOG" 2>/dev/null; then
    t_fail "expired delivery $id reached the provider"
  fi
done
t_api GET "/v1/campaigns/$CID_G/stats"
assert_eq "$(json_get .skipped_reasons | jq -S -c .)" '{"expired":10}' "stats show the expiries"
# ----------------------------------------------------------------------------
# 5. The worker's gate defers a job whose recipient is outside the window whatever the
#    delivery's state - here 'pending', as a retry being enqueued again: it becomes
#    'queued' again, is back in crier:delayed at the opening and its entry is acked.
#    (Without it, the delivery would be left behind with no job at all.)
# ----------------------------------------------------------------------------
add_customers p UTC 3 7000
t_api POST /v1/campaigns "{\"name\":\"pending\",\"channel\":\"sms\",\"message\":{\"body\":\"Hi\"},
  \"segment\":{\"has_phone\":true,\"tags\":[\"p\"]},
  \"send_window\":{\"start\":\"$XSTART\",\"end\":\"$XEND\"}}"
assert_eq "$T_STATUS" 201 "pending campaign created: $T_BODY"
CID_P=$(json_get .id)
t_api POST "/v1/campaigns/$CID_P/launch"
assert_eq "$T_STATUS" 202 "pending campaign launched"
p_deferred() { [ "$(delayed_entries | awk -v c="$CID_P" '$2 == c' | wc -l)" = 3 ]; }
t_wait_until 30 "the pending campaign's jobs deferred" p_deferred
read -r P_ID P_SCORE <<<"$(delayed_entries | awk -v c="$CID_P" '$2 == c { print $1, $3; exit }')"
P_MEMBER="sms|$P_ID|$T_TENANT|$CID_P|0"
assert_eq "$(t_redis ZREM crier:delayed "$P_MEMBER")" 1 "member removed"
t_psql "UPDATE deliveries SET status = 'pending', next_attempt_at = NULL WHERE id = $P_ID" >/dev/null
P_ENTRY=$(t_redis XADD crier:jobs:sms '*' d "$P_ID" t "$T_TENANT" c "$CID_P")
p_back() {
  [ "$(t_psql "SELECT status || ' ' || (next_attempt_at IS NOT NULL) FROM deliveries
               WHERE id = $P_ID")" = "queued true" ] &&
    [ -n "$(t_redis ZSCORE crier:delayed "$P_MEMBER")" ]
}
t_wait_until 30 "the pending delivery deferred again by the worker" p_back
assert_eq "$(t_redis ZSCORE crier:delayed "$P_MEMBER")" "$P_SCORE" "back at the window's opening"
acked() { [ -z "$(t_redis XPENDING crier:jobs:sms workers "$P_ENTRY" "$P_ENTRY" 1)" ]; }
t_wait_until 10 "its stream entry acknowledged" acked
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID_P AND sent_at IS NOT NULL")" \
  0 "nothing sent outside the window"
echo "send_window ok"
