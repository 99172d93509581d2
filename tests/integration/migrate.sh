#!/usr/bin/env bash
# crierctl migrate: idempotent, safe when run concurrently, refuses edited
# migrations; tenant and key bootstrap commands.
. "$(dirname "$0")/../lib.sh"
t_init migrate

out=$(t_ctl migrate)
assert_contains "$out" "up to date" "second run applies nothing"
n=$(t_psql "SELECT count(*) FROM schema_migrations")
assert_ge "$n" 1 "migrations recorded"

# Two concurrent runs on an empty database: both succeed, each file once.
t_psql "DROP SCHEMA public CASCADE; CREATE SCHEMA public;" >/dev/null
ctl=$(t_bin crierctl)
"$ctl" migrate >"$T_DIR/m1.log" 2>&1 &
p1=$!
"$ctl" migrate >"$T_DIR/m2.log" 2>&1 &
p2=$!
wait $p1 || t_fail "concurrent migrate 1 failed: $(cat "$T_DIR/m1.log")"
wait $p2 || t_fail "concurrent migrate 2 failed: $(cat "$T_DIR/m2.log")"
assert_eq "$(t_psql "SELECT count(*) FROM schema_migrations")" "$n" "each migration once"
assert_eq "$(grep -c '^applied' "$T_DIR/m1.log" "$T_DIR/m2.log" | awk -F: '{s+=$2} END {print s}')" \
  "$n" "applied by exactly one of the two runs"

# An applied file whose text changed is refused.
t_psql "UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE name = '0001_init.sql'" >/dev/null
if "$ctl" migrate >"$T_DIR/m3.log" 2>&1; then t_fail "migrate accepted an edited migration"; fi
assert_contains "$(cat "$T_DIR/m3.log")" "was edited after it was applied" "edit detected"

# Bootstrap: tenant ids, keys printed once and stored only as a hash.
tid=$(t_ctl tenant create "Acme")
assert_eq "$(t_psql "SELECT name FROM tenants WHERE id = $tid")" Acme "tenant created"
key=$(t_ctl apikey create "$tid")
case "$key" in crier_*) ;; *) t_fail "key format: $key" ;; esac
assert_eq "$(t_psql "SELECT count(*) FROM api_keys WHERE key_hash = sha256('$key'::bytea)")" 1 \
  "only the SHA-256 of the key is stored"
if t_ctl apikey create 999999 >/dev/null 2>&1; then t_fail "key for a missing tenant"; fi
t_ctl apikey revoke "${key:6:16}" >/dev/null
assert_eq "$(t_psql "SELECT revoked_at IS NOT NULL FROM api_keys WHERE key_id = '${key:6:16}'")" t "revoked"
echo "migrate ok"
