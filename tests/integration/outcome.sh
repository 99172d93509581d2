#!/usr/bin/env bash
# A delivery's outcome (issue 6 item 5): POST /v1/deliveries/{id}/outcome with an API key
# sets outcome / sentiment / satisfaction (each optional, at least one; a partial update keeps
# the others), answers the delivery; bad values are a 422 naming the field and change
# nothing; another tenant's delivery is a 404 and stays untouched. GET /v1/deliveries/{id}
# shows the delivery, tenant-scoped.
. "$(dirname "$0")/../lib.sh"
t_init outcome
t_tenant_key tenant_a
KEY_A=$T_KEY
TENANT_A=$T_TENANT
t_start_api

new_delivery() { # TENANT EXTERNAL_ID -> delivery id
  t_psql "WITH c AS (INSERT INTO customers (tenant_id, external_id, phone)
            VALUES ($1, '$2', '+14155550101') RETURNING id),
          k AS (INSERT INTO campaigns (tenant_id, name, channel) VALUES ($1, 'k-$2', 'voice')
            RETURNING id)
          INSERT INTO deliveries (tenant_id, campaign_id, customer_id, channel, status, provider,
            provider_message_id, sent_at)
          SELECT $1, k.id, c.id, 'voice', 'sent', 'twilio', 'CA$2', now() FROM c, k RETURNING id"
}
D=$(new_delivery "$TENANT_A" a1)
row() { t_psql "SELECT concat_ws('|', outcome, sentiment, satisfaction) FROM deliveries WHERE id = $1"; }

t_api POST "/v1/deliveries/$D/outcome" '{"outcome":"booked","sentiment":"positive","satisfaction":4}'
assert_eq "$T_STATUS" 200 "outcome recorded: $T_BODY"
assert_eq "$(json_get .id)" "$D" "answers the delivery's id"
assert_eq "$(json_get .status)" sent "and its status"
assert_eq "$(jq -r '[.outcome, .sentiment, .satisfaction] | join(",")' <<<"$T_BODY")" "booked,positive,4" \
  "and the three fields"
assert_eq "$(row "$D")" "booked|positive|4" "stored"

# Partial updates keep what they do not name.
t_api POST "/v1/deliveries/$D/outcome" '{"satisfaction":2}'
assert_eq "$T_STATUS" 200 "satisfaction alone"
assert_eq "$(row "$D")" "booked|positive|2" "outcome and sentiment kept"
t_api POST "/v1/deliveries/$D/outcome" '{"outcome":"call-back_later","sentiment":"neutral"}'
assert_eq "$T_STATUS" 200 "outcome and sentiment"
assert_eq "$(row "$D")" "call-back_later|neutral|2" "satisfaction kept"

# Bad values: 422 naming the field, nothing changed.
long=$(printf 'a%.0s' $(seq 65))
while IFS='|' read -r body field; do
  t_api POST "/v1/deliveries/$D/outcome" "$body"
  assert_eq "$T_STATUS" 422 "$body is refused: $T_BODY"
  assert_eq "$(json_get .error.field)" "$field" "$body names $field"
done <<EOF
{}|outcome
{"outcome":"Booked"}|outcome
{"outcome":""}|outcome
{"outcome":"$long"}|outcome
{"outcome":"no spaces"}|outcome
{"outcome":7}|outcome
{"outcome":null}|outcome
{"sentiment":"happy"}|sentiment
{"outcome":"ok","sentiment":"POSITIVE"}|sentiment
{"satisfaction":0}|satisfaction
{"satisfaction":6}|satisfaction
{"satisfaction":3.5}|satisfaction
{"satisfaction":"4"}|satisfaction
{"outcome":"ok","mood":"good"}|mood
EOF
assert_eq "$(row "$D")" "call-back_later|neutral|2" "no bad request changed anything"
t_api POST "/v1/deliveries/$D/outcome" '{"outcome":'
assert_eq "$T_STATUS" 400 "malformed JSON"
t_api POST "/v1/deliveries/$((D + 1000))/outcome" '{"outcome":"x"}'
assert_eq "$T_STATUS" 404 "no such delivery"
assert_status 401 POST "/v1/deliveries/$D/outcome" -d '{"outcome":"x"}'

# GET shows the delivery.
t_api GET "/v1/deliveries/$D"
assert_eq "$T_STATUS" 200 "get"
assert_eq "$(jq -r '[.id, .channel, .status, .provider_message_id, .outcome, .satisfaction] | join(",")' <<<"$T_BODY")" \
  "$D,voice,sent,CAa1,call-back_later,2" "the delivery as stored"
assert_ne "$(json_get .campaign_id)" null "names its campaign"
assert_ne "$(json_get .customer_id)" null "and its customer"
assert_ne "$(json_get .sent_at)" null "and its timestamps"

# Tenant B sees none of A's deliveries and cannot score them.
t_tenant_key tenant_b
DB=$(new_delivery "$T_TENANT" b1)
t_api POST "/v1/deliveries/$D/outcome" '{"outcome":"stolen"}'
assert_eq "$T_STATUS" 404 "A's delivery with B's key: $T_BODY"
assert_eq "$(json_get .error.code)" not_found "not found"
t_api GET "/v1/deliveries/$D"
assert_eq "$T_STATUS" 404 "B cannot read A's delivery"
assert_eq "$(row "$D")" "call-back_later|neutral|2" "A's delivery untouched"
t_api POST "/v1/deliveries/$DB/outcome" '{"sentiment":"negative"}'
assert_eq "$T_STATUS" 200 "B scores its own delivery"
assert_eq "$(row "$DB")" "negative" "B's delivery"
T_KEY=$KEY_A
t_api GET "/v1/deliveries/$DB"
assert_eq "$T_STATUS" 404 "A cannot read B's delivery"
echo "outcome ok"
