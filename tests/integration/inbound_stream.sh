#!/usr/bin/env bash
# The inbound stream's consumer under load and failure (issue 6 review), fed straight into
# crier:inbound with XADD:
# 1. A batch whose events pass the statement's size limit (three SendGrid entries of ~6 MiB)
#    ends before the entry that does not fit; that entry is applied by the next batch, never
#    acknowledged unapplied.
# 2. PostgreSQL down (this test's database refuses connections): the entry read stays
#    pending and the worker backs off instead of reading the rest of the stream (which waits,
#    undelivered); the pending entry, deleted from the stream meanwhile, is acknowledged;
#    once PostgreSQL is back everything is applied within seconds (no 60 s reclaim).
# 3. A status callback whose sid matches none of the tenant's deliveries is logged with its
#    sid and acknowledged.
# 4. The stream is trimmed below what the group still needs: everything before the oldest
#    pending entry (one waiting for its delivery) goes, that entry and the ones after stay.
# 5. Dedupe keys older than 30 days are purged from inbound_seen; younger ones stay.
. "$(dirname "$0")/../lib.sh"
t_init inbound_stream
t_tenant_key
T=$T_TENANT
STREAM=crier:inbound

q() { t_psql "$1"; }
xadd() { t_redis XADD "$STREAM" '*' "$@"; }
group() { # FIELD of the inbound group (pending, lag, last-delivered-id)
  t_redis XINFO GROUPS "$STREAM" | paste - - | awk -F '\t' -v f="$1" '$1 == f { print $2 }'
}
settled() { [ "$(group pending)" = 0 ] && [ "$(group lag)" = 0 ]; }
count_is() { [ "$(q "$1")" = "$2" ]; }

# Customers, an email delivery (SendGrid events), 21 SMS deliveries 'sent' (status
# callbacks), a voice delivery still 'queued' (its answers wait).
q "INSERT INTO customers (tenant_id, external_id, email, phone)
   SELECT $T, 'c' || g, 'c' || g || '@example.com', '+1555700' || lpad(g::text, 4, '0')
   FROM generate_series(1, 23) g" >/dev/null
for ch in email sms voice; do
  q "INSERT INTO campaigns (tenant_id, name, channel, status, launched_at)
     VALUES ($T, '$ch', '$ch', 'running', now())" >/dev/null
done
camp() { q "SELECT id FROM campaigns WHERE tenant_id = $T AND channel = '$1'"; }
cust() { q "SELECT id FROM customers WHERE external_id = '$1'"; }
DE=$(q "INSERT INTO deliveries (tenant_id, campaign_id, customer_id, channel, status, provider,
          provider_message_id, sent_at)
        VALUES ($T, $(camp email), $(cust c1), 'email', 'sent', 'sendgrid', 'sgmsg1', now())
        RETURNING id")
q "INSERT INTO deliveries (tenant_id, campaign_id, customer_id, channel, status, provider,
     provider_message_id, sent_at)
   SELECT $T, $(camp sms), c.id, 'sms', 'sent', 'twilio', 'SMtest' || substr(c.external_id, 2), now()
   FROM customers c WHERE c.tenant_id = $T AND substr(c.external_id, 2)::int BETWEEN 2 AND 22" >/dev/null
DV=$(q "INSERT INTO deliveries (tenant_id, campaign_id, customer_id, channel, status)
        VALUES ($T, $(camp voice), $(cust c23), 'voice', 'queued') RETURNING id")
# Dedupe keys: two past 30 days, one younger.
q "INSERT INTO inbound_seen (tenant_id, key, seen_at) VALUES
   ($T, 'old:1', now() - interval '31 days'), ($T, 'old:2', now() - interval '45 days'),
   ($T, 'young:1', now() - interval '29 days')" >/dev/null

# --- 1. an oversized batch: written before the worker starts, read as one batch ---
PAD=$(head -c 102400 /dev/zero | tr '\0' x)
for e in 1 2 3; do
  jq -nc --arg pad "$PAD" --arg d "$DE" --argjson e "$e" \
    '[range(60) | {event: "open", sg_event_id: "big-\($e)-\(.)", delivery_id: $d,
                   email: "c1@example.com", pad: $pad}]' >"$T_DIR/big$e.json"
  t_redis -x XADD "$STREAM" '*' kind sendgrid_events tenant "$T" at 0 body <"$T_DIR/big$e.json" >/dev/null
done
t_start_worker
t_wait_until 60 "the three big entries applied" settled
assert_eq "$(q "SELECT count(*) FROM inbound_seen WHERE key LIKE 'sg:big-%'")" 180 \
  "every event of the three entries applied (60 each)"
assert_contains "$(cat "$T_DIR/worker.log")" "1 entries left for the next one" "the batch ended early"
if grep -q "too large" "$T_DIR/worker.log"; then t_fail "an entry was dropped as too large"; fi

# --- 2. PostgreSQL down ---
sms_cb() { xadd kind twilio_status tenant "$T" at 0 body "MessageSid=SMtest$1&MessageStatus=delivered" >/dev/null; }
t_psql_admin "ALTER DATABASE \"$T_DB\" ALLOW_CONNECTIONS false" >/dev/null
t_psql_admin "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '$T_DB'" >/dev/null
S0=$(xadd kind twilio_status tenant "$T" at 0 body "MessageSid=SMgone&MessageStatus=delivered")
pending_is() { [ "$(group pending)" = "$1" ]; }
t_wait_until 10 "the first entry read (and failed)" pending_is 1
for i in $(seq 2 22); do sms_cb "$i"; done
sleep 4
assert_eq "$(group lag)|$(group pending)" "21|1" \
  "backing off: the 21 entries after the failure stay unread in the stream"
assert_contains "$(cat "$T_DIR/worker.log")" "while new entries wait in the stream" "the back-off logged"
t_redis XDEL "$STREAM" "$S0" >/dev/null # a pending entry deleted meanwhile
t_psql_admin "ALTER DATABASE \"$T_DB\" ALLOW_CONNECTIONS true" >/dev/null
t_wait_until 30 "every pending entry done soon after PostgreSQL is back" bash -c \
  "[ \"\$(redis-cli -p $T_REDIS_PORT XPENDING $STREAM inbound | head -n 1)\" = 0 ]"
t_wait_until 10 "every callback applied" count_is \
  "SELECT count(*) FROM deliveries WHERE tenant_id = $T AND channel = 'sms' AND status = 'delivered'" 21
assert_contains "$(cat "$T_DIR/worker.log")" "pending inbound entries were deleted from the stream; acknowledged" \
  "the deleted entry acknowledged"

# --- 3. a status callback that matches none of the tenant's deliveries ---
xadd kind twilio_status tenant "$T" at 0 body "MessageSid=SMnobody42&MessageStatus=delivered" >/dev/null
last_delivered() { [ "$(group last-delivered-id)" = "$(t_redis XREVRANGE "$STREAM" + - COUNT 1 | head -n 1)" ]; }
done_all() { last_delivered && pending_is 0; }
t_wait_until 10 "the unmatched callback acknowledged" done_all
assert_contains "$(cat "$T_DIR/worker.log")" "status callback for SMnobody42 (tenant $T) matches none" \
  "its sid logged"

# The rule behind it (migration 0010): such a sid waits only while one of the tenant's SMS or
# calls is 'sending' (its outcome not written yet); another tenant's deliveries are not
# looked at.
status_of() { q "BEGIN; $1; SELECT crier_inbound_twilio_status($T, '$2', 'delivered', NULL, NULL); ROLLBACK"; }
assert_eq "$(status_of "UPDATE deliveries SET status = status WHERE false" SMnobody43)" unmatched "no delivery being sent: unmatched"
assert_eq "$(status_of "UPDATE deliveries SET status = 'sending' WHERE id = $DV" SMnobody43)" wait \
  "one of the tenant's calls being sent: wait"
OTHER=$(t_ctl tenant create other) || t_fail "tenant create"
assert_eq "$(status_of "UPDATE deliveries SET status = status WHERE false" SMtest2)" duplicate \
  "the tenant's own sid matches (its callback was applied already)"
assert_eq "$(q "SELECT crier_inbound_twilio_status($OTHER, 'SMtest2', 'delivered', NULL, NULL)")" \
  unmatched "another tenant's sid: unmatched"

# --- 4. trimming, bounded by the oldest pending entry ---
W=$(xadd kind twilio_gather tenant "$T" at 0 delivery "$DV" q 0 body "CallSid=CAwait&Digits=1")
for i in $(seq 1 30); do
  xadd kind twilio_status tenant "$T" at 0 body "MessageSid=SMnone$i&MessageStatus=sent" >/dev/null
done
pending_only_w() { last_delivered && pending_is 1; }
t_wait_until 10 "all but the waiting answer applied" pending_only_w
first_is_w() { [ "$(t_redis XRANGE "$STREAM" - + COUNT 1 | head -n 1)" = "$W" ]; }
t_wait_until 30 "the stream trimmed up to the waiting entry" first_is_w
assert_eq "$(t_redis XLEN "$STREAM")" 31 "the waiting entry and the 30 after it kept"
assert_eq "$(t_redis XPENDING "$STREAM" inbound | sed -n 2p)" "$W" "still pending"

# --- 5. old dedupe keys purged (the worker purges 3 s after its start, then every 30 s) ---
t_wait_until 40 "old dedupe keys purged" count_is \
  "SELECT count(*) FROM inbound_seen WHERE key LIKE 'old:%'" 0
assert_eq "$(q "SELECT count(*) FROM inbound_seen WHERE key = 'young:1'")" 1 "a younger key stays"
# --- 6. a worker stopped, after its grace period, while a batch's statement runs ---
# (A row lock held elsewhere keeps the statement waiting.) The pool's callbacks run at exit
# with everything they touch still alive (a sanitizer build reports nothing), queue no new
# statement, and acknowledge nothing: the entry stays pending for another worker.
t_stop worker
CRIER_SHUTDOWN_GRACE=0 t_start_worker 2
t_start locker psql -X -q "$CRIER_DATABASE_URL" -c "BEGIN; SELECT id FROM deliveries
  WHERE provider_message_id = 'SMtest3' FOR UPDATE; SELECT pg_sleep(120); COMMIT"
locked() { [ "$(q "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
  AND pid <> pg_backend_pid() AND query LIKE '%pg_sleep(120)%' AND state = 'active'")" = 1 ]; }
t_wait_until 10 "the row locked" locked
L=$(xadd kind twilio_status tenant "$T" at 0 body "MessageSid=SMtest3&MessageStatus=read")
waiting() { [ "$(q "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
  AND application_name = 'crier-worker' AND wait_event_type = 'Lock'")" = 1 ]; }
t_wait_until 10 "the batch's statement waits for the lock" waiting
t_stop worker-2 10
if t_alive worker-2; then t_fail "the worker did not stop"; fi
assert_contains "$(cat "$T_DIR/worker-2.log")" "grace period over" "it stopped after the grace period"
assert_contains "$(cat "$T_DIR/worker-2.log")" "entries dropped as malformed" "and cleaned up to the end"
assert_contains "$(t_redis XPENDING "$STREAM" inbound - + 10 | tr '\n' ' ')" "$L" \
  "the entry stays pending"
t_stop locker 5
echo "inbound_stream ok"
