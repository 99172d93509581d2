#!/usr/bin/env bash
# Segments over the API: templates, preview (count + 5-customer sample),
# saved segments CRUD, errors naming the field.
. "$(dirname "$0")/../lib.sh"
t_init segments_api
t_tenant_key
t_provider_sandbox
t_start_api
t_psql "INSERT INTO customers (tenant_id, external_id, first_name, phone, email, tags, sms_opt_out)
        SELECT $T_TENANT, 'c' || g, 'N' || g,
               CASE WHEN g % 5 = 0 THEN NULL ELSE '+1555' || lpad(g::text, 7, '0') END,
               'c' || g || '@example.com',
               CASE WHEN g % 2 = 0 THEN '{vip}'::text[] ELSE '{}' END, g = 2
        FROM generate_series(1, 20) g" >/dev/null
# phones: 16 (every 5th has none); opted out of sms: customer 2.
t_psql "INSERT INTO suppressions (tenant_id, channel, address, reason) VALUES ($T_TENANT, 'sms', '+15550000004', 'complaint')" >/dev/null

t_api GET /v1/segment-templates
assert_eq "$T_STATUS" 200 "templates"
assert_eq "$(json_get '.templates | length')" 6 "six templates"
for id in $(json_get '.templates[].id'); do
  t_api POST /v1/segments/preview "{\"template_id\":\"$id\"}"
  assert_eq "$T_STATUS" 200 "template $id previews"
done

t_api POST /v1/segments/preview '{"criteria":{}}'
assert_eq "$T_STATUS" 200 "preview everyone"
assert_eq "$(json_get .count)" 14 "reachable on sms: 16 phones - 1 opted out - 1 suppressed"
assert_eq "$(json_get '.sample | length')" 5 "5-customer sample"
assert_eq "$(json_get '.sample[0].external_id')" c1 "sample in id order"
t_api POST /v1/segments/preview '{"criteria":{"tags":["vip"]}}'
assert_eq "$(json_get .count)" 6 "vips reachable on sms (2,4 excluded; 10,20 have no phone)"
t_api POST /v1/segments/preview '{"criteria":{"tags":["vip"]},"channel":"email"}'
assert_eq "$(json_get .count)" 10 "vips reachable by email"

t_api POST /v1/segments/preview '{"criteria":{"days_since_last_contact":-1}}'
assert_eq "$T_STATUS" 422 "bad criterion"
assert_eq "$(json_get .error.field)" criteria.days_since_last_contact "names the criterion"
t_api POST /v1/segments/preview '{"criteria":{"shoe_size":42}}'
assert_eq "$(json_get .error.field)" criteria.shoe_size "unknown criterion"
t_api POST /v1/segments/preview '{"template_id":"nope"}'
assert_eq "$(json_get .error.field)" template_id "unknown template"
t_api POST /v1/segments/preview '{"criteria":{},"template_id":"inactive_90_days"}'
assert_eq "$T_STATUS" 422 "exactly one source"
t_api POST /v1/segments/preview '{"criteria":{},"channel":"pigeon"}'
assert_eq "$(json_get .error.field)" channel "bad channel"

t_api POST /v1/segments '{"name":"vips","description":"VIP customers","criteria":{"tags":["vip"]}}'
assert_eq "$T_STATUS" 201 "create"
SID=$(json_get .id)
t_api POST /v1/segments '{"name":"vips","criteria":{}}'
assert_eq "$T_STATUS" 409 "name taken"
assert_eq "$(json_get .error.field)" name "names the name"
t_api POST /v1/segments '{"name":"bad","criteria":{"tags":"vip","oops":1}}'
assert_eq "$T_STATUS" 422 "bad criteria"
t_api POST /v1/segments/preview "{\"segment_id\":$SID}"
assert_eq "$(json_get .count)" 6 "preview a saved segment"
t_api PATCH "/v1/segments/$SID" '{"criteria":{"tags_any":["vip","x"]},"description":"any"}'
assert_eq "$T_STATUS" 200 "patch"
assert_eq "$(json_get .name)" vips "name kept"
assert_eq "$(json_get .criteria.tags_any[0])" vip "criteria replaced"
t_api GET "/v1/segments/$SID"
assert_eq "$(json_get .description)" any "get"
t_api GET /v1/segments
assert_eq "$(json_get '.segments | length')" 1 "list"

t_api POST /v1/campaigns "{\"name\":\"c\",\"channel\":\"sms\",\"message\":{\"body\":\"Hi\"},\"segment_id\":$SID}"
assert_eq "$T_STATUS" 201 "campaign on the segment"
t_api DELETE "/v1/segments/$SID"
assert_eq "$T_STATUS" 409 "in use by a campaign"
t_api POST /v1/segments '{"name":"tmp","criteria":{}}'
T2=$(json_get .id)
t_api DELETE "/v1/segments/$T2"
assert_eq "$T_STATUS" 204 "delete"
t_api GET "/v1/segments/$T2"
assert_eq "$T_STATUS" 404 "gone"
echo "segments_api ok"
