#!/usr/bin/env bash
# Several dispatchers at once (issue 4, items 7 and 8). Two dispatchers, A and
# B, run side by side throughout. Checks and what each proves:
#   1. No campaign is expanded or released twice: an unpaced 30,000-customer
#      campaign (small pages: several slices of work, between which the other
#      dispatcher keeps asking for leases) and a paced 4,000-customer one.
#      Each has exactly one job per queued delivery in crier:jobs:sms (a
#      second dispatcher releasing from its own cursor would repeat jobs), and
#      the logs show a single lease holder that did all the expanding and
#      releasing (debug log lines), while the other never held the campaign.
#   2. Takeover: the holder of a campaign in mid-expansion is killed -9; the
#      other dispatcher holds the lease (campaigns.lease_owner) and the
#      expansion goes on within 30 s (default 10 s lease); in the end each
#      customer has exactly one delivery and every queued delivery a job.
#   3. Delayed jobs: 3,000 members of crier:delayed, due over 1.5 s starting
#      2 s ahead, each become exactly one entry of crier:jobs:sms (no
#      duplicates although both dispatchers run the mover), never early, and
#      at most 1 s late (stream entry id time - due score, both on the Redis
#      server's clock).
. "$(dirname "$0")/../lib.sh"
t_init dispatchers_ha
t_tenant_key
t_provider_sandbox
t_start_api
N=30000
NPACED=4000
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, phone, tags)
        SELECT $T_TENANT, 'c' || g, 'N' || g, '+1555' || lpad(g::text, 7, '0'),
               CASE WHEN g <= $NPACED THEN '{paced}'::text[] ELSE '{}' END
        FROM generate_series(1, $N) g" >/dev/null

sql_true() { [ "$(t_psql "$1")" = t ]; }
deliveries() { t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $1"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# campaign JSON-SEGMENT [EXTRA-FIELDS]: creates and launches a campaign; prints its id.
campaign() {
  t_api POST /v1/campaigns "{\"name\":\"ha\",\"channel\":\"sms\",\"message\":{\"body\":\"Hi\"},\"segment\":$1,\"send_window\":{\"start\":\"00:00\",\"end\":\"24:00\"}${2:+,$2}}"
  [ "$T_STATUS" = 201 ] || t_fail "campaign create: $T_STATUS $T_BODY"
  local id
  id=$(json_get .id)
  t_api POST "/v1/campaigns/$id/launch"
  [ "$T_STATUS" = 202 ] || t_fail "launch $id: $T_STATUS $T_BODY"
  printf '%s\n' "$id"
}
released() {
  sql_true "SELECT expanded_at IS NOT NULL AND enqueued_cursor >= last_delivery_id FROM campaigns WHERE id = $1"
}
# stream_jobs CAMPAIGN FILE: the d field of every entry of crier:jobs:sms for CAMPAIGN, sorted.
stream_jobs() {
  t_redis --raw XRANGE crier:jobs:sms - + |
    awk -v c="$1" '/^[0-9]+-[0-9]+$/ {if (d != "" && cc == c) print d; d = ""; cc = ""; next}
                   prev == "d" {d = $0} prev == "c" {cc = $0} {prev = $0}
                   END {if (d != "" && cc == c) print d}' | sort >"$2"
}
queued_ids() {
  t_psql "SELECT id FROM deliveries WHERE campaign_id = $1 AND status = 'queued'" | sort >"$2"
}
# lines DISPATCHER PATTERN: how many lines of its log contain PATTERN.
lines() { grep -c -F -- "$2" "$T_DIR/dispatcher-$1.log" || true; }

# Small pages: the expansion takes many statements and several slices.
export CRIER_DISPATCH_PAGE=10 CRIER_LOG_LEVEL=debug
unset CRIER_LEASE_SECONDS
CRIER_DISPATCHER_ID=A t_start_dispatcher A
CRIER_DISPATCHER_ID=B t_start_dispatcher B

# --- 1. one holder per campaign ------------------------------------------------------
C1=$(campaign '{"has_phone":true}')
C2=$(campaign '{"tags":"paced"}' '"rate_per_minute":60000')
t0=$SECONDS
t_wait_until 120 "campaign $C1 expanded and released" released "$C1"
t_wait_until 60 "campaign $C2 expanded and released" released "$C2"
t_log "campaigns $C1 ($N customers) and $C2 ($NPACED, paced) expanded and released in $((SECONDS - t0)) s"
for c in "$C1" "$C2"; do
  if [ "$c" = "$C1" ]; then want=$N; else want=$NPACED; fi
  assert_eq "$(deliveries "$c")" "$want" "campaign $c: one delivery per customer"
  queued_ids "$c" "$T_DIR/queued_$c"
  assert_eq "$(wc -l <"$T_DIR/queued_$c")" "$want" "campaign $c: every delivery queued"
  stream_jobs "$c" "$T_DIR/jobs_$c"
  assert_eq "$(wc -l <"$T_DIR/jobs_$c")" "$want" "campaign $c: as many jobs as queued deliveries (nothing released twice)"
  assert_eq "$(comm -3 "$T_DIR/queued_$c" "$T_DIR/jobs_$c" | wc -l)" 0 "campaign $c: one job for each queued delivery"
  la=$(lines A "campaign $c: lease taken")
  lb=$(lines B "campaign $c: lease taken")
  ea=$(lines A "campaign $c: expanding from customer")
  eb=$(lines B "campaign $c: expanding from customer")
  ra=$(lines A "campaign $c: released ")
  rb=$(lines B "campaign $c: released ")
  t_log "campaign $c: leases taken A $la, B $lb; expansion slices A $ea, B $eb; release steps A $ra, B $rb"
  assert_eq "$((la + lb))" 1 "campaign $c: the lease was taken once"
  if [ "$la" = 1 ]; then holder=A other=B; else holder=B other=A; fi
  assert_eq "$(lines "$other" "campaign $c: expanding from")" 0 "campaign $c: only $holder expanded it"
  assert_eq "$(lines "$other" "campaign $c: released ")" 0 "campaign $c: only $holder released it"
done
slices=$(lines A "campaign $C1: expanding from customer")
slices=$((slices + $(lines B "campaign $C1: expanding from customer")))
assert_ge "$slices" 2 "campaign $C1 was expanded in several slices (the other dispatcher had its chances)"

# --- 2. takeover -----------------------------------------------------------------------
C3=$(campaign '{"has_phone":true}')
# Kill the holder early in the expansion: most of it is left for the other.
deadline=$((SECONDS + 60))
until [ "$(deliveries "$C3")" -ge 500 ]; do
  [ "$SECONDS" -lt "$deadline" ] || t_fail "campaign $C3 does not expand"
  sleep 0.02
done
holder=$(t_psql "SELECT lease_owner FROM campaigns WHERE id = $C3")
case "$holder" in
  A) other=B ;;
  B) other=A ;;
  *) t_fail "campaign $C3 held by '$holder', not A or B" ;;
esac
t_kill "dispatcher-$holder" KILL
killed_ms=$(now_ms)
at_kill=$(deliveries "$C3")
t_log "killed the holder $holder of campaign $C3 at $at_kill of $N deliveries"
t_wait_until 60 "$other takes campaign $C3 over" sql_true \
  "SELECT lease_owner = '$other' FROM campaigns WHERE id = $C3"
taken_ms=$(now_ms)
at_take=$(deliveries "$C3")
grew() { [ "$(deliveries "$C3")" -gt "$at_take" ]; }
t_wait_until 60 "the expansion of $C3 goes on under $other" grew
moving_ms=$(now_ms)
t_log "takeover by $other after $((taken_ms - killed_ms)) ms; expansion moving again after $((moving_ms - killed_ms)) ms (from $at_take deliveries)"
assert_le $((taken_ms - killed_ms)) 30000 "lease taken over within 30 s"
assert_le $((moving_ms - killed_ms)) 30000 "expansion resumed within 30 s"
assert_ge "$(lines "$other" "campaign $C3: lease taken over from $holder")" 1 "$other logs the takeover from $holder"
t_wait_until 120 "campaign $C3 expanded and released" released "$C3"
assert_eq "$(deliveries "$C3")" "$N" "campaign $C3: one delivery per customer"
assert_eq "$(t_psql "SELECT count(DISTINCT customer_id) FROM deliveries WHERE campaign_id = $C3")" "$N" \
  "campaign $C3: no customer twice"
queued_ids "$C3" "$T_DIR/queued_$C3"
assert_eq "$(wc -l <"$T_DIR/queued_$C3")" "$N" "campaign $C3: every delivery queued"
stream_jobs "$C3" "$T_DIR/jobs_$C3"
sort -u "$T_DIR/jobs_$C3" >"$T_DIR/jobs_u_$C3"
assert_eq "$(comm -23 "$T_DIR/queued_$C3" "$T_DIR/jobs_u_$C3" | wc -l)" 0 "campaign $C3: every queued delivery has a job"
t_log "campaign $C3: $(wc -l <"$T_DIR/jobs_$C3") jobs for $N deliveries (repeats of the page in flight at the kill are harmless)"
CRIER_DISPATCHER_ID=$holder t_start_dispatcher "$holder"

# --- 3. delayed jobs -----------------------------------------------------------------
ND=3000
mark=$(t_redis --raw XREVRANGE crier:jobs:sms + - COUNT 1 | head -n 1)
mapfile -t rt < <(t_redis --raw TIME)
base=$((rt[0] * 1000 + rt[1] / 1000 + 2000))
args=()
: >"$T_DIR/due"
for ((i = 0; i < ND; i++)); do
  d=$((900000000 + i))
  s=$((base + i * 1500 / ND))
  args+=("$s" "sms|$d|$T_TENANT|999999|0")
  printf '%s %s\n' "$d" "$s" >>"$T_DIR/due"
done
assert_eq "$(t_redis ZADD crier:delayed "${args[@]}")" "$ND" "delayed members added"
empty() { [ "$(t_redis ZCARD crier:delayed)" = 0 ]; }
t_wait_until 30 "crier:delayed emptied" empty
sleep 0.5 # a duplicate move would show now
t_redis --raw XRANGE crier:jobs:sms "(${mark:-0-0}" + |
  awk '/^[0-9]+-[0-9]+$/ {split($0, a, "-"); ms = a[1]; next} prev == "d" {print $0, ms} {prev = $0}' |
  awk '$1 >= 900000000' | LC_ALL=C sort >"$T_DIR/moved"
assert_eq "$(wc -l <"$T_DIR/moved")" "$ND" "one stream entry per delayed member"
assert_eq "$(cut -d' ' -f1 "$T_DIR/moved" | sort -u | wc -l)" "$ND" "no member moved twice"
report=$(LC_ALL=C join "$T_DIR/due" "$T_DIR/moved" |
  awk '{late = $3 - $2; n++; if (n == 1 || late > max) max = late; if (n == 1 || late < min) min = late; sum += late}
       END {printf "%d %d %d %d", n, min, max, sum / n}')
read -r joined min_late max_late avg_late <<<"$report"
t_log "delayed jobs: $joined moved; lateness min $min_late ms, avg $avg_late ms, max $max_late ms"
assert_eq "$joined" "$ND" "every delayed member reached the stream"
assert_ge "$min_late" 0 "no delayed job moved before it was due"
assert_le "$max_late" 1000 "every delayed job moved at most 1 s late"
echo "dispatchers_ha ok (takeover $((taken_ms - killed_ms)) ms, delayed max lateness $max_late ms)"
