#!/usr/bin/env bash
# Customers: GET/PATCH/DELETE /v1/customers/{id}, the list (keyset pagination,
# filters, parameter validation), time zones, upsert semantics of the import
# (NDJSON and CSV), `crierctl import`, and tenant isolation.
. "$(dirname "$0")/../lib.sh"
t_init customers
t_tenant_key tenant_a
KEY_A=$T_KEY
TENANT_A=$T_TENANT
t_start_api
export CRIER_API_URL=$API_URL

t_psql "UPDATE tenants SET default_timezone = 'Europe/Paris' WHERE id = $TENANT_A" >/dev/null

# --- create and get: every field
t_api POST /v1/customers '{"external_id":"a1","first_name":"Ann","last_name":"Lee",
  "phone":"+44 20 7946 0958","email":"Ann@Example.COM","timezone":"America/New_York",
  "locale":"en-US","tags":["vip","vip","new"],"attributes":{"plan":"gold","visits":3},
  "sms_opt_out":false,"email_opt_out":true,"last_contact_at":"2024-03-01T10:00:00Z",
  "last_appointment_at":"2024-02-29"}'
assert_eq "$T_STATUS" 201 "create"
A1=$(json_get .id)
t_api GET "/v1/customers/$A1"
assert_eq "$T_STATUS" 200 "get"
assert_eq "$(json_get .external_id)" a1 "get external_id"
assert_eq "$(json_get .phone)" "+442079460958" "phone in E.164"
assert_eq "$(json_get .email)" "Ann@example.com" "email domain lower-cased"
assert_eq "$(json_get .timezone)" "America/New_York" "timezone"
assert_eq "$(json_get .locale)" "en-US" "locale"
assert_eq "$(json_get '.tags | join(",")')" "vip,new" "tags (duplicates dropped)"
assert_eq "$(json_get .attributes.plan)" gold "attributes"
assert_eq "$(json_get .attributes.visits)" 3 "numeric attribute"
assert_eq "$(json_get .sms_opt_out)" false "sms_opt_out"
assert_eq "$(json_get .email_opt_out)" true "email_opt_out"
assert_eq "$(json_get .voice_opt_out)" false "voice_opt_out default"
assert_eq "$(json_get '.last_contact_at | startswith("2024-03-01")')" true "last_contact_at"
assert_eq "$(json_get '.last_appointment_at | startswith("2024-02-29")')" true "date-only timestamp"
for k in id external_id first_name last_name phone email timezone locale tags attributes \
  sms_opt_out email_opt_out voice_opt_out last_contact_at last_appointment_at created_at updated_at; do
  assert_eq "$(json_get ". | has(\"$k\")")" true "GET has $k"
done

# --- time zones: PostgreSQL's list; the tenant's default when missing
t_api POST /v1/customers '{"external_id":"tz0"}'
assert_eq "$T_STATUS" 201 "create without timezone"
TZ0=$(json_get .id)
t_api GET "/v1/customers/$TZ0"
assert_eq "$(json_get .timezone)" "Europe/Paris" "tenant default time zone"
for bad in '"Mars/Olympus_Mons"' '"america/new_york"' '"UTC; DROP"' '42'; do
  t_api POST /v1/customers "{\"external_id\":\"tz1\",\"timezone\":$bad}"
  assert_eq "$T_STATUS" 422 "bad timezone $bad"
  assert_eq "$(json_get .error.field)" timezone "bad timezone names the field"
done
t_api POST /v1/customers '{"external_id":"tz1","timezone":"Asia/Kolkata"}'
assert_eq "$T_STATUS" 201 "a zone PostgreSQL knows"
assert_eq "$(t_psql "SELECT count(*) FROM customers WHERE external_id = 'tz1'")" 1 "tz1 once"

# --- validation names the field and changes nothing
for body in '{"external_id":"v1","email":"no-at-sign"}:email' \
  '{"external_id":"v1","email":"a b@example.com"}:email' \
  '{"external_id":"v1","phone":"555-CALL-NOW"}:phone' \
  '{"external_id":"v1","last_contact_at":"2023-02-30T00:00:00Z"}:last_contact_at' \
  '{"external_id":"v1","tags":"vip"}:tags' '{"external_id":"v1","attributes":[1]}:attributes' \
  '{"external_id":"v1","sms_opt_out":"yes"}:sms_opt_out' '{"external_id":"v1","locale":"e n"}:locale' \
  '{"external_id":""}:external_id' '{"external_id":"v1","nickname":"x"}:nickname'; do
  t_api POST /v1/customers "${body%:*}"
  assert_eq "$T_STATUS" 422 "invalid ${body##*:}"
  assert_eq "$(json_get .error.field)" "${body##*:}" "error names ${body##*:}"
done
assert_eq "$(t_psql "SELECT count(*) FROM customers WHERE external_id = 'v1'")" 0 "nothing created"

# --- PATCH: partial update, null clears, merge patch of attributes
t_api PATCH "/v1/customers/$A1" '{"first_name":"Anna","last_name":null,"tags":["gold"],
  "attributes":{"visits":4,"plan":null,"city":"Leeds"},"sms_opt_out":true}'
assert_eq "$T_STATUS" 200 "patch"
assert_eq "$(json_get .first_name)" Anna "patched first_name"
assert_eq "$(json_get .last_name)" null "null cleared last_name"
assert_eq "$(json_get .email)" "Ann@example.com" "untouched email kept"
assert_eq "$(json_get '.tags | join(",")')" gold "tags replaced"
assert_eq "$(json_get '.attributes | keys | join(",")')" "city,visits" "attributes merged, null removed"
assert_eq "$(json_get .attributes.visits)" 4 "attribute updated"
assert_eq "$(json_get .sms_opt_out)" true "opt-out patched"
t_api PATCH "/v1/customers/$A1" '{"tags":null,"attributes":null,"phone":null}'
assert_eq "$T_STATUS" 200 "patch clears"
assert_eq "$(json_get '.tags | length')" 0 "tags cleared"
assert_eq "$(json_get '.attributes | length')" 0 "attributes cleared"
assert_eq "$(json_get .phone)" null "phone cleared"
t_api PATCH "/v1/customers/$A1" '{}'
assert_eq "$T_STATUS" 200 "empty patch"
for body in '{"timezone":null}:timezone' '{"sms_opt_out":null}:sms_opt_out' \
  '{"external_id":null}:external_id' '{"email":"bad"}:email' '{"timezone":"Nowhere/Land"}:timezone' \
  '{"colour":"red"}:colour'; do
  t_api PATCH "/v1/customers/$A1" "${body%:*}"
  assert_eq "$T_STATUS" 422 "patch ${body%:*}"
  assert_eq "$(json_get .error.field)" "${body##*:}" "patch error names ${body##*:}"
done
assert_eq "$(t_psql "SELECT first_name || ' ' || timezone FROM customers WHERE id = $A1")" \
  "Anna America/New_York" "bad patches changed nothing"
t_api PATCH "/v1/customers/$A1" '{"external_id":"tz0"}'
assert_eq "$T_STATUS" 409 "external_id taken"
assert_eq "$(json_get .error.field)" external_id "409 names external_id"
t_api PATCH "/v1/customers/$A1" '{"external_id":"a1-renamed"}'
assert_eq "$T_STATUS" 200 "external_id changed"
assert_eq "$(json_get .external_id)" a1-renamed "new external_id"
assert_status 400 PATCH "/v1/customers/$A1" "${T_AUTH[@]}" -d '{"first_name":'
assert_status 404 PATCH /v1/customers/999999 "${T_AUTH[@]}" -d '{"first_name":"x"}'
assert_status 404 GET /v1/customers/999999 "${T_AUTH[@]}"

# --- import: upsert keeps fields not given (opt-outs are never reverted)
printf '%s\n' '{"external_id":"a1-renamed","first_name":"Anne"}' \
  '{"external_id":"n1","tags":["x"],"sms_opt_out":true}' \
  '{"external_id":"n2"}' \
  '{"external_id":"n3","timezone":"Nowhere/Land"}' >"$T_DIR/up.ndjson"
assert_status 200 POST /v1/customers/import "${T_AUTH[@]}" -H 'Content-Type: application/x-ndjson' \
  --data-binary @"$T_DIR/up.ndjson"
assert_eq "$(json_get '. | [.inserted,.updated,.unchanged,.rejected] | join(",")')" "2,1,0,1" "import counts"
assert_eq "$(json_get '.errors[0].line')" 4 "bad time zone line"
assert_eq "$(json_get '.errors[0].field')" timezone "bad time zone field"
t_api GET "/v1/customers/$A1"
assert_eq "$(json_get .first_name)" Anne "import updated the name"
assert_eq "$(json_get .sms_opt_out)" true "import kept the opt-out it was not given"
assert_eq "$(json_get .timezone)" America/New_York "import kept the time zone"
assert_eq "$(t_psql "SELECT timezone FROM customers WHERE external_id = 'n2'")" Europe/Paris \
  "imported customer gets the tenant's time zone"
# rows of different shapes in one batch keep their own semantics
printf '%s\n' '{"external_id":"n1","first_name":"N1"}' '{"external_id":"n2","tags":["y"]}' \
  >"$T_DIR/shapes.ndjson"
assert_status 200 POST /v1/customers/import "${T_AUTH[@]}" -H 'Content-Type: application/x-ndjson' \
  --data-binary @"$T_DIR/shapes.ndjson"
assert_eq "$(json_get .updated)" 2 "two updates of different shapes"
assert_eq "$(t_psql "SELECT array_to_string(tags, ',') || '/' || sms_opt_out FROM customers WHERE external_id = 'n1'")" \
  "x/true" "n1 kept tags and opt-out"
assert_eq "$(t_psql "SELECT array_to_string(tags, ',') FROM customers WHERE external_id = 'n2'")" y "n2 tags set"
assert_status 200 POST /v1/customers/import "${T_AUTH[@]}" -H 'Content-Type: application/x-ndjson' \
  --data-binary @"$T_DIR/shapes.ndjson"
assert_eq "$(json_get '. | [.inserted,.updated,.unchanged] | join(",")')" "0,0,2" "re-import unchanged"
printf '%s\n' '{"external_id":"g1"} {"external_id":"g2"}' '["g3"]' '{"external_id":"g4","tags":["\u0000"]}' \
  '{"external_id":"g5","attributes":{"k":"\\u0000"}}' >"$T_DIR/garbage.ndjson"
printf '{"external_id":"g6","first_name":"\xff"}\n' >>"$T_DIR/garbage.ndjson"
assert_status 200 POST /v1/customers/import "${T_AUTH[@]}" -H 'Content-Type: application/x-ndjson' \
  --data-binary @"$T_DIR/garbage.ndjson"
assert_eq "$(json_get '. | [.inserted,.rejected] | join(",")')" "1,4" "garbage lines rejected"
assert_eq "$(json_get '. | [.errors[].message] | join("|")')" \
  "malformed JSON|each line must be a JSON object|strings must not contain \\u0000|line is not valid UTF-8 (or holds a NUL byte)" \
  "garbage line messages"
assert_eq "$(t_psql "SELECT attributes->>'k' FROM customers WHERE external_id = 'g5'")" '\u0000' \
  "an escaped backslash is text"
# one body, several batches in flight: for a key the last line still wins
awk 'BEGIN { for (i = 1; i <= 15000; i++) {
  if (i == 1 || i == 6000 || i == 12000 || i == 14999) printf "{\"external_id\":\"dupA\",\"first_name\":\"v%d\"}\n", i
  else printf "{\"external_id\":\"bulk%d\",\"tags\":[\"bulk\"]}\n", i } }' >"$T_DIR/bulk.ndjson"
assert_status 200 POST /v1/customers/import "${T_AUTH[@]}" -H 'Content-Type: application/x-ndjson' \
  --data-binary @"$T_DIR/bulk.ndjson"
assert_eq "$(json_get '. | [.inserted,.updated,.rejected] | join(",")')" "14997,3,0" "bulk counts"
assert_eq "$(t_psql "SELECT first_name FROM customers WHERE external_id = 'dupA'")" v14999 \
  "the last of four lines for one key, across batches"
assert_status 415 POST /v1/customers/import "${T_AUTH[@]}" -H 'Content-Type: application/xml' \
  --data-binary @"$T_DIR/shapes.ndjson"
assert_eq "$(json_get .error.field)" Content-Type "415 names Content-Type"

# --- CSV import: header row, RFC 4180 quoting, tags with |, attributes.<key>
{
  printf '\xef\xbb\xbfexternal_id,first_name,last_name,email,tags,attributes.city,sms_opt_out,timezone\r\n'
  printf 'c1,"Smith, Jo","O""Neil",jo@example.com,vip|new ,Paris,yes,\r\n'
  printf 'c2,Two,x,,,"Multi\nLine, ""quoted""",,\r\n'
  printf '\r\n'
  printf 'c3,Bad,x,not-an-email,,,,\r\n'
  printf 'c4,Short\r\n'
  printf 'c5,"Q"x,y,,,,,\r\n'
  printf 'c6,Al,Bo,,,,maybe,\r\n'
  printf 'c7,Zed,Last,z@example.com,,,false,Asia/Tokyo\r\n'
} >"$T_DIR/c.csv"
assert_status 200 POST /v1/customers/import "${T_AUTH[@]}" -H 'Content-Type: text/csv; charset=utf-8' \
  --data-binary @"$T_DIR/c.csv"
assert_eq "$(json_get '. | [.inserted,.rejected] | join(",")')" "3,4" "CSV counts"
assert_eq "$(json_get '. | [.errors[].line] | join(",")')" "6,7,8,9" "CSV error lines (physical)"
assert_eq "$(json_get '.errors[0].field')" email "CSV bad email field"
assert_eq "$(json_get '.errors[3].field')" sms_opt_out "CSV bad boolean field"
assert_eq "$(t_psql "SELECT first_name || '|' || last_name || '|' || array_to_string(tags, ',') || '|' || (attributes->>'city') || '|' || sms_opt_out FROM customers WHERE external_id = 'c1'")" \
  'Smith, Jo|O"Neil|vip,new|Paris|true' "CSV quoting, tags, attributes, booleans"
assert_eq "$(t_psql "SELECT attributes->>'city' FROM customers WHERE external_id = 'c2'")" 'Multi
Line, "quoted"' \
  "quoted newline, comma and quotes"
assert_eq "$(t_psql "SELECT timezone FROM customers WHERE external_id = 'c7'")" Asia/Tokyo "CSV time zone"
printf 'external_id,emial\nx1,a@b.co\n' >"$T_DIR/bad.csv"
assert_status 422 POST /v1/customers/import "${T_AUTH[@]}" -H 'Content-Type: text/csv' \
  --data-binary @"$T_DIR/bad.csv"
assert_eq "$(json_get .error.field)" emial "unknown CSV column named"
printf 'first_name\nx\n' >"$T_DIR/bad.csv"
assert_status 422 POST /v1/customers/import "${T_AUTH[@]}" -H 'Content-Type: text/csv' \
  --data-binary @"$T_DIR/bad.csv"
assert_eq "$(json_get .error.field)" external_id "CSV without external_id"
assert_eq "$(t_psql "SELECT count(*) FROM customers WHERE external_id = 'x1'")" 0 "bad header imports nothing"
# empty cells keep what the customer has
printf 'external_id,first_name,sms_opt_out\nc1,,\n' >"$T_DIR/keep.csv"
assert_status 200 POST /v1/customers/import "${T_AUTH[@]}" -H 'Content-Type: text/csv' \
  --data-binary @"$T_DIR/keep.csv"
assert_eq "$(json_get .unchanged)" 1 "empty cells change nothing"

# --- crierctl import: chunks, file line numbers, exit status, last line wins
{
  echo 'external_id,first_name,email'
  for i in $(seq 1 9); do echo "k$i,First$i,k$i@example.com"; done
  echo 'k3,Later,k3@example.com'
  echo 'k10,"Two'
  echo 'Lines",bad-email'
  echo 'k11,Eleven,k11@example.com'
} >"$T_DIR/ctl.csv"
rc=0
CRIER_API_KEY=$KEY_A "$CRIER_BIN_DIR/crierctl" import --chunk-lines 2 --parallel 3 "$T_DIR/ctl.csv" \
  >"$T_DIR/ctl.out" 2>"$T_DIR/ctl.err" || rc=$?
assert_eq "$rc" 1 "crierctl exits 1 when a line was rejected"
assert_contains "$(cat "$T_DIR/ctl.err")" "ctl.csv:12: first_name: first_name must not contain control characters" \
  "error with the file's line number"
assert_contains "$(cat "$T_DIR/ctl.out")" "10 inserted" "crierctl totals"
assert_contains "$(cat "$T_DIR/ctl.out")" "1 rejected" "crierctl rejected total"
assert_eq "$(t_psql "SELECT first_name FROM customers WHERE external_id = 'k3'")" Later \
  "the file's last line for a key wins across chunks"
for i in $(seq 1 300); do printf '{"external_id":"p%d","first_name":"v%d"}\n' "$((i % 7))" "$i"; done \
  >"$T_DIR/dups.ndjson"
CRIER_API_KEY=$KEY_A "$CRIER_BIN_DIR/crierctl" import --chunk-lines 4 --parallel 4 "$T_DIR/dups.ndjson" \
  >"$T_DIR/ctl.out" 2>"$T_DIR/ctl.err" || t_fail "crierctl import dups: $(cat "$T_DIR/ctl.err")"
assert_eq "$(t_psql "SELECT string_agg(external_id || '=' || first_name, ',' ORDER BY external_id) FROM customers WHERE external_id LIKE 'p_'")" \
  "p0=v294,p1=v295,p2=v296,p3=v297,p4=v298,p5=v299,p6=v300" \
  "the same keys in parallel chunks: the file's last line wins for each"
rc=0
CRIER_API_KEY=nope "$CRIER_BIN_DIR/crierctl" import "$T_DIR/dups.ndjson" >/dev/null 2>"$T_DIR/ctl.err" || rc=$?
assert_eq "$rc" 3 "a refused import exits 3"
assert_contains "$(cat "$T_DIR/ctl.err")" "HTTP 401" "crierctl shows the API's answer"

# --- the list: keyset pagination and filters
for i in 1 2 3 4 5 6; do
  t_api POST /v1/customers "{\"external_id\":\"l$i\",\"first_name\":\"List$i\",\"tags\":[\"list\"$([ $((i % 2)) = 0 ] && echo ',"even"')],
    \"phone\":\"+1415555010$i\",\"sms_opt_out\":$([ "$i" = 3 ] && echo true || echo false)}"
  assert_eq "$T_STATUS" 201 "create l$i"
done
seen=()
cursor=
pages=0
while :; do
  t_api GET "/v1/customers?tag=list&limit=4${cursor:+&cursor=$cursor}"
  assert_eq "$T_STATUS" 200 "list page"
  while IFS= read -r x; do seen+=("$x"); done < <(json_get '.customers[].external_id')
  cursor=$(json_get .next_cursor)
  pages=$((pages + 1))
  [ "$cursor" != null ] || break
done
assert_eq "${seen[*]}" "l1 l2 l3 l4 l5 l6" "pages cover the tag in id order, once each"
assert_eq "$pages" 2 "two pages of 4"
t_api GET "/v1/customers?tag=list&tag=even"
assert_eq "$(json_get '. | [.customers[].external_id] | join(",")')" "l2,l4,l6" "tags: all of them"
t_api GET "/v1/customers?q=list5"
assert_eq "$(json_get '. | [.customers[].external_id] | join(",")')" "l5" "q searches names (any case)"
t_api GET "/v1/customers?q=%2B1%20(415)%20555-0104"
assert_eq "$(json_get '. | [.customers[].external_id] | join(",")')" "l4" "q finds a phone however written"
t_api GET "/v1/customers?q=%25"
assert_eq "$(json_get '.customers | length')" 0 "q escapes LIKE wildcards"
t_api GET "/v1/customers?tag=list&opted_out=sms"
assert_eq "$(json_get '. | [.customers[].external_id] | join(",")')" "l3" "opted_out=sms"
t_api GET "/v1/customers?external_id=l6"
assert_eq "$(json_get '. | [.customers[].external_id] | join(",")')" "l6" "external_id filter"
t_api GET "/v1/customers?has_phone=false&tag=list"
assert_eq "$(json_get '.customers | length')" 0 "has_phone=false"
t_api GET "/v1/customers?timezone=Asia/Tokyo"
assert_eq "$(json_get '. | [.customers[].external_id] | join(",")')" "c7" "timezone filter"
t_api GET "/v1/customers?updated_since=2000-01-01T00:00:00Z&limit=200"
assert_ge "$(json_get '.customers | length')" 20 "updated_since"
good=$(printf 'v1:%s' "$A1" | base64 | tr '+/' '-_' | tr -d '=')
for bad in "limit=0:limit" "limit=abc:limit" "limit=501:limit" "cursor=abc:cursor" \
  "cursor=${good}x:cursor" "cursor=$(printf 'v1:-5' | base64 | tr -d '='):cursor" \
  "colour=red:colour" "has_phone=yes:has_phone" "opted_out=fax:opted_out" \
  "timezone=Nowhere:timezone" "updated_since=yesterday:updated_since" "limit=1&limit=2:limit" \
  "q=:q"; do
  t_api GET "/v1/customers?${bad%:*}"
  assert_eq "$T_STATUS" 400 "bad parameter ${bad%:*}"
  assert_eq "$(json_get .error.field)" "${bad##*:}" "400 names ${bad##*:}"
done
t_api GET "/v1/customers?cursor=$good&limit=1"
assert_eq "$T_STATUS" 200 "a well-formed cursor"

# --- isolation: tenant B sees nothing of tenant A's
t_tenant_key tenant_b
KEY_B=$T_KEY
t_api GET "/v1/customers/$A1"
assert_eq "$T_STATUS" 404 "B cannot GET A's customer"
t_api PATCH "/v1/customers/$A1" '{"first_name":"Mallory"}'
assert_eq "$T_STATUS" 404 "B cannot PATCH A's customer"
t_api PATCH "/v1/customers/$A1" '{"nickname":"Mallory"}'
assert_eq "$T_STATUS" 404 "an invalid PATCH of A's customer is a 404 too"
t_api DELETE "/v1/customers/$A1"
assert_eq "$T_STATUS" 404 "B cannot DELETE A's customer"
t_api GET "/v1/customers?limit=200"
assert_eq "$(json_get '.customers | length')" 0 "B's list is empty"
t_api GET "/v1/customers?external_id=l1"
assert_eq "$(json_get '.customers | length')" 0 "B cannot find A's customer by external_id"
t_api POST /v1/customers '{"external_id":"l1","first_name":"B-one"}'
assert_eq "$T_STATUS" 201 "B has its own l1"
B1=$(json_get .id)
t_api GET "/v1/customers?limit=200"
assert_eq "$(json_get '. | [.customers[].id] | join(",")')" "$B1" "B lists only its own"
T_KEY=$KEY_A
assert_eq "$(t_psql "SELECT first_name FROM customers WHERE id = $A1")" Anne "A's customer untouched"
t_api GET "/v1/customers/$B1"
assert_eq "$T_STATUS" 404 "A cannot GET B's customer"
assert_eq "$(t_psql "SELECT first_name FROM customers WHERE tenant_id = $TENANT_A AND external_id = 'l1'")" \
  List1 "A's l1 untouched by B's import"

# --- delete: 204, then gone; deliveries etc. cascade
t_api DELETE "/v1/customers/$A1"
assert_eq "$T_STATUS" 204 "delete"
assert_eq "$T_BODY" "" "204 has no body"
t_api GET "/v1/customers/$A1"
assert_eq "$T_STATUS" 404 "deleted customer is gone"
t_api DELETE "/v1/customers/$A1"
assert_eq "$T_STATUS" 404 "delete twice"
T_KEY=$KEY_B
t_api GET "/v1/customers/$B1"
assert_eq "$T_STATUS" 200 "B's customer still there"
echo "customers ok"
