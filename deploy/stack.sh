#!/usr/bin/env bash
# deploy/stack.sh — a private PostgreSQL + Redis pair living under one folder.
#
#   deploy/stack.sh start DIR   start (or reuse) DIR/pg and DIR/redis, write DIR/env
#   deploy/stack.sh stop DIR    stop both (exit 0 when already stopped)
#   deploy/stack.sh env DIR     print DIR/env (eval "$(deploy/stack.sh env DIR)")
#   deploy/stack.sh status DIR  say what runs
#   deploy/stack.sh destroy DIR stop both and delete DIR
#
# DIR/env exports CRIER_DATABASE_URL (role and database `crier`), CRIER_REDIS_URL,
# CRIER_SECRET_KEY (kept in DIR/secret_key) and CRIER_TEST_PG_ADMIN_URL (the `postgres`
# superuser's database, so tests can CREATE DATABASE per test).
# Honours CRIER_PG_FAST=1 / CRIER_REDIS_FAST=1 (no durability: tests only), and
# CRIER_STACK_FRESH=1 on start (wipe DIR first).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deploy/lib.sh
. "$ROOT/deploy/lib.sh"

usage() {
  echo "usage: $0 start|stop|env|status|destroy DIR" >&2
  exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
dir=$2

stack_stop() {
  local rc=0
  [ -e "$dir" ] || return 0
  crier_pg_stop "$dir/pg" || rc=1
  crier_redis_stop "$dir/redis" || rc=1
  return $rc
}

stack_destroy() {
  local real=
  stack_stop
  if [ -L "$dir/pg" ]; then real=$(readlink -f -- "$dir/pg"); fi
  rm -rf -- "$dir"
  if [ -n "$real" ]; then rm -rf -- "$real"; fi
}

case "$cmd" in
  start)
    if [ "${CRIER_STACK_FRESH:-0}" = 1 ] && [ -e "$dir" ]; then
      stack_destroy
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    pg_port=$(crier_pg_start "$dir/pg")
    if ! redis_port=$(crier_redis_start "$dir/redis"); then
      crier_pg_stop "$dir/pg" || true
      exit 1
    fi
    secret=$(crier_new_secret "$dir/secret_key")
    tmp="$dir/env.tmp.$$"
    {
      echo "# written by deploy/stack.sh start; source it"
      echo "export CRIER_DATABASE_URL='postgresql://crier@127.0.0.1:$pg_port/crier'"
      echo "export CRIER_REDIS_URL='redis://127.0.0.1:$redis_port/0'"
      echo "export CRIER_SECRET_KEY='$secret'"
      echo "export CRIER_TEST_PG_ADMIN_URL='postgresql://postgres@127.0.0.1:$pg_port/postgres'"
      echo "export CRIER_STACK_DIR='$dir'"
    } >"$tmp"
    mv -f "$tmp" "$dir/env"
    echo "stack up: PostgreSQL 127.0.0.1:$pg_port, Redis 127.0.0.1:$redis_port (env: $dir/env)"
    ;;
  stop)
    stack_stop
    ;;
  destroy)
    stack_destroy
    ;;
  env)
    if [ ! -f "$dir/env" ]; then
      echo "no stack env in $dir (run: $0 start $dir)" >&2
      exit 1
    fi
    cat "$dir/env"
    ;;
  status)
    rc=0
    if crier_pg_running "$dir/pg"; then
      echo "postgresql: running on 127.0.0.1:$(crier_pg_port "$dir/pg")"
    else
      echo "postgresql: stopped"
      rc=3
    fi
    if crier_redis_running "$dir/redis"; then
      echo "redis: running on 127.0.0.1:$(crier_redis_port "$dir/redis") (pid $(crier_pid_of "$dir/redis/redis.pid"))"
    else
      echo "redis: stopped"
      rc=3
    fi
    exit $rc
    ;;
  *) usage ;;
esac
