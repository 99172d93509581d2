#!/usr/bin/env bash
# Campaigns: CRUD (edits only in draft), validation per channel, A/B
# variants, the lifecycle state machine (409 listing the allowed actions),
# actions on crier:actions, scheduled launches.
. "$(dirname "$0")/../lib.sh"
t_init campaigns
t_tenant_key
t_provider_sandbox
t_start_api

sms='{"name":"s","channel":"sms","message":{"body":"Hi {{first_name|there}}"}}'

# --- validation per channel, each naming the field
check422() { # JSON FIELD MSG
  t_api POST /v1/campaigns "$1"
  assert_eq "$T_STATUS" 422 "$3 (status)"
  assert_eq "$(json_get .error.field)" "$2" "$3 (field)"
}
check422 '{"name":"x","channel":"sms"}' message "sms needs a message"
check422 '{"name":"x","channel":"sms","message":{"body":""}}' message.body "empty body"
long=$(head -c 1601 /dev/zero | tr '\0' 'a')
check422 "{\"name\":\"x\",\"channel\":\"sms\",\"message\":{\"body\":\"$long\"}}" message.body "1601 chars"
ok1600=$(head -c 1600 /dev/zero | tr '\0' 'a')
t_api POST /v1/campaigns "{\"name\":\"x\",\"channel\":\"sms\",\"message\":{\"body\":\"$ok1600\"}}"
assert_eq "$T_STATUS" 201 "1600 characters are fine"
check422 '{"name":"x","channel":"sms","message":{"body":"Hi {{nickname}}"}}' message.body "unknown variable"
check422 '{"name":"x","channel":"sms","message":{"body":"Hi","subject":"no"}}' message.subject "subject on sms"
check422 '{"name":"x","channel":"email","message":{"text":"Hi"}}' message.subject "email needs a subject"
check422 '{"name":"x","channel":"email","message":{"subject":"Hello"}}' message.text "email needs text or html"
check422 '{"name":"x","channel":"voice"}' agent_config "voice needs an agent"
check422 '{"name":"x","channel":"voice","agent_template_id":"nope"}' agent_template_id "unknown agent template"
check422 '{"name":"x","channel":"sms","message":{"body":"Hi"},"send_window":{"start":"9am","end":"20:00"}}' send_window.start "window start"
check422 '{"name":"x","channel":"sms","message":{"body":"Hi"},"send_window":{"start":"09:00","end":"20:00","days":[1,8]}}' send_window.days "window days"
check422 '{"name":"x","channel":"sms","message":{"body":"Hi"},"send_window":{"start":"24:00","end":"06:00"}}' send_window.start "a window cannot start at 24:00"
check422 '{"name":"x","channel":"sms","message":{"body":"Hi"},"rate_per_minute":0}' rate_per_minute "rate"
check422 '{"name":"x","channel":"sms","message":{"body":"Hi"},"scheduled_at":"tomorrow"}' scheduled_at "scheduled_at"
check422 '{"name":"x","channel":"sms","message":{"body":"Hi"},"segment":{"has_phone":"yes"}}' segment.has_phone "criterion type"
check422 '{"name":"x","channel":"sms","variants":[{"name":"A","weight":1,"message":{"body":"a"}}]}' variants "one variant"
check422 '{"name":"x","channel":"sms","variants":[{"name":"A","weight":1,"message":{"body":"a"}},{"name":"A","weight":1,"message":{"body":"b"}}]}' variants[1].name "duplicate variant"
check422 '{"name":"x","channel":"sms","variants":[{"name":"A","weight":0,"message":{"body":"a"}},{"name":"B","weight":1,"message":{"body":"b"}}]}' variants[0].weight "weight"
check422 '{"name":"x","channel":"sms","variants":[{"name":"A","weight":1,"message":{"body":"{{x}}"}},{"name":"B","weight":1,"message":{"body":"b"}}]}' variants[0].message.body "variant body"
check422 '{"name":"x","channel":"sms","message":{"body":"Hi"},"colour":"red"}' colour "unknown field"
before=$(t_psql "SELECT count(*) FROM campaigns")

# Email campaigns are valid documents and launch.
t_ctl provider create "$T_TENANT" --channel email --kind sandbox --from news@example.com >/dev/null
t_api POST /v1/campaigns '{"name":"e","channel":"email","message":{"subject":"Hi {{first_name}}","text":"Hello","html":"<p>Hello {{first_name}}</p>"}}'
assert_eq "$T_STATUS" 201 "email campaign"
EID=$(json_get .id)
t_api POST "/v1/campaigns/$EID/launch"
assert_eq "$T_STATUS" 202 "email campaigns launch"
assert_eq "$(t_psql "SELECT status FROM campaigns WHERE id = $EID")" running "running"

# --- CRUD
t_api POST /v1/campaigns '{"name":"ab","channel":"sms","variants":[{"name":"A","weight":3,"message":{"body":"A {{first_name}}"}},{"name":"B","weight":1,"message":{"body":"B {{first_name}}"}}],"segment":{"has_phone":true},"rate_per_minute":600,"send_window":{"start":"09:00","end":"20:00","days":[1,2,3,4,5]},"expire_after_minutes":240}'
assert_eq "$T_STATUS" 201 "campaign with variants"
CID=$(json_get .id)
assert_eq "$(json_get .status)" draft "draft"
assert_eq "$(json_get .variants[1].name)" B "variants stored"
assert_eq "$(json_get .expire_after_minutes)" 240 "expiry stored"
assert_eq "$(json_get .send_window.days[4])" 5 "window stored"

t_api PATCH "/v1/campaigns/$CID" '{"name":"ab2","rate_per_minute":null}'
assert_eq "$T_STATUS" 200 "patch a draft"
assert_eq "$(json_get .name)" ab2 "renamed"
assert_eq "$(json_get .rate_per_minute)" null "null clears"
assert_eq "$(json_get .variants[0].weight)" 3 "untouched fields kept"
t_api PATCH "/v1/campaigns/$CID" '{"variants":[{"name":"A","weight":1,"message":{"body":"{{oops}}"}},{"name":"B","weight":1,"message":{"body":"b"}}]}'
assert_eq "$T_STATUS" 422 "a bad patch is refused"
assert_eq "$(json_get .error.field)" variants[0].message.body "bad patch field"
assert_eq "$(t_psql "SELECT name FROM campaigns WHERE id = $CID")" ab2 "a bad patch changes nothing"

# segment_id: the saved segment's criteria are copied
t_psql "INSERT INTO segments (tenant_id, name, criteria) VALUES ($T_TENANT, 'vips', '{\"tags\":[\"vip\"]}')" >/dev/null
SID=$(t_psql "SELECT id FROM segments WHERE name = 'vips'")
t_api PATCH "/v1/campaigns/$CID" "{\"segment_id\": $SID}"
assert_eq "$T_STATUS" 200 "segment_id"
assert_eq "$(json_get .segment.tags[0])" vip "criteria copied from the saved segment"
t_api PATCH "/v1/campaigns/$CID" '{"segment_id": 999999}'
assert_eq "$T_STATUS" 422 "unknown segment"

t_api GET "/v1/campaigns?limit=2"
assert_eq "$T_STATUS" 200 "list"
assert_eq "$(json_get '.campaigns | length')" 2 "page of 2"
cur=$(json_get .next_cursor)
t_api GET "/v1/campaigns?limit=2&cursor=$cur"
assert_eq "$(json_get '.campaigns[0].id > '"$cur")" true "next page after the cursor"
t_api GET "/v1/campaigns?status=bogus"
assert_eq "$T_STATUS" 400 "bad status filter"
t_api GET "/v1/campaigns?limit=0"
assert_eq "$(json_get .error.field)" limit "bad limit"
t_api GET "/v1/campaigns?status=draft&limit=500"
assert_eq "$(json_get '.campaigns | map(.status) | unique | join(",")')" draft "status filter"

# --- lifecycle
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, phone, tags)
        SELECT $T_TENANT, 'c' || g, 'N' || g, '+1555' || lpad(g::text, 7, '0'), '{vip}'
        FROM generate_series(1, 200) g" >/dev/null
t_api POST "/v1/campaigns/$CID/pause"
assert_eq "$T_STATUS" 409 "cannot pause a draft"
assert_eq "$(json_get .error.code)" invalid_transition "transition error"
assert_eq "$(json_get '.error.allowed | join(",")')" "launch,cancel" "allowed from draft"
assert_eq "$(json_get .error.status)" draft "current status"

t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 202 "launch"
assert_eq "$(json_get .campaign.status)" running "running"
t_api POST "/v1/campaigns/$CID/launch"
assert_eq "$T_STATUS" 200 "launch is idempotent"
assert_eq "$(json_get .already_launched)" true "already launched"
t_api PATCH "/v1/campaigns/$CID" '{"name":"late"}'
assert_eq "$T_STATUS" 409 "no edits once launched"
assert_eq "$(json_get .error.code)" not_editable "not editable"
t_api DELETE "/v1/campaigns/$CID"
assert_eq "$T_STATUS" 409 "cannot delete a launched campaign"

t_api POST "/v1/campaigns/$CID/resume"
assert_eq "$T_STATUS" 409 "cannot resume a running campaign"
assert_eq "$(json_get '.error.allowed | join(",")')" "pause,complete,cancel" "allowed from running"
t_api POST "/v1/campaigns/$CID/pause"
assert_eq "$T_STATUS" 200 "pause"
assert_eq "$(json_get .campaign.status)" paused "paused"
assert_eq "$(json_get '.campaign.paused_at != null')" true "paused_at set"
t_api POST "/v1/campaigns/$CID/pause"
assert_eq "$(json_get '.error.allowed | join(",")')" "resume,complete,cancel" "allowed from paused"
t_api POST "/v1/campaigns/$CID/resume"
assert_eq "$(json_get .campaign.status)" running "resumed"

# Deliveries waiting to be sent are closed by cancel.
t_psql "INSERT INTO deliveries (tenant_id, campaign_id, customer_id, channel, status)
        SELECT $T_TENANT, $CID, id, 'sms', 'queued' FROM customers WHERE tenant_id = $T_TENANT" >/dev/null
t_api POST "/v1/campaigns/$CID/cancel"
assert_eq "$T_STATUS" 200 "cancel"
assert_eq "$(json_get .campaign.status)" cancelled "cancelled"
assert_eq "$(json_get .deliveries_cancelled)" 200 "open deliveries cancelled"
assert_eq "$(t_psql "SELECT count(*) FROM deliveries WHERE campaign_id = $CID AND status <> 'cancelled'")" 0 \
  "none left to send"
for a in launch pause resume complete cancel; do
  t_api POST "/v1/campaigns/$CID/$a"
  assert_eq "$T_STATUS" 409 "$a on a cancelled campaign"
  assert_eq "$(json_get '.error.allowed | length')" 0 "nothing allowed after cancel"
done

# Actions were appended to crier:actions.
acts=$(t_redis --raw XRANGE crier:actions - + | awk 'prev == "type" {printf "%s,", $0} {prev = $0}')
assert_eq "$acts" "launch,launch,pause,resume,cancel," "actions stream (the email launch, then the sms lifecycle)"

# complete: running -> completed
t_api POST /v1/campaigns "$sms"
C2=$(json_get .id)
t_api POST "/v1/campaigns/$C2/launch"
t_api POST "/v1/campaigns/$C2/complete"
assert_eq "$(json_get .campaign.status)" completed "completed by the operator"

# scheduled launch: status scheduled until the time, then running by itself
t_start_dispatcher
t_api POST /v1/campaigns "$sms"
C3=$(json_get .id)
at=$(date -u -d '+3 seconds' +%Y-%m-%dT%H:%M:%SZ)
t_api POST "/v1/campaigns/$C3/launch" "{\"scheduled_at\":\"$at\"}"
assert_eq "$T_STATUS" 202 "scheduled launch accepted"
assert_eq "$(json_get .campaign.status)" scheduled "scheduled"
t_api POST "/v1/campaigns/$C3/launch" "{\"scheduled_at\":\"$at\"}"
assert_eq "$T_STATUS" 200 "launching a scheduled campaign again is idempotent"
t_wait_until 15 "scheduled campaign starts" bash -c \
  "[ \"\$(psql -X -At '$CRIER_DATABASE_URL' -c 'SELECT status FROM campaigns WHERE id = $C3')\" != scheduled ]"
late=$(t_psql "SELECT extract(epoch FROM launched_at - scheduled_at) FROM campaigns WHERE id = $C3")
awk -v l="$late" 'BEGIN { exit !(l >= 0 && l <= 2) }' || t_fail "scheduled launch was ${late}s late"

# delete a draft
t_api POST /v1/campaigns "$sms"
C4=$(json_get .id)
t_api DELETE "/v1/campaigns/$C4"
assert_eq "$T_STATUS" 204 "delete a draft"
t_api GET "/v1/campaigns/$C4"
assert_eq "$T_STATUS" 404 "deleted"
echo "campaigns ok"
