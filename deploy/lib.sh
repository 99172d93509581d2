# shellcheck shell=bash
# deploy/lib.sh — shared shell helpers for crier's operational scripts.
#
# Sourced (never executed) by deploy/stack.sh, deploy/local.sh, deploy/test.sh and
# tests/lib.sh. It owns: dependency installation (apt), free-port selection, a private
# PostgreSQL cluster and a private Redis server living in a data folder, and starting /
# stopping background processes through pid files.
#
# Conventions:
#   * functions print their result (a port, a path) on stdout and talk on stderr;
#   * every server binds 127.0.0.1 only;
#   * processes are only ever stopped through the pid files these functions wrote —
#     never by name;
#   * PostgreSQL refuses to run as root: as root the cluster runs as the `postgres`
#     account the Debian package creates (CRIER_PG_USER overrides), otherwise as the
#     current user.
#
# Environment knobs:
#   CRIER_PG_BIN      PostgreSQL server binaries (default: newest /usr/lib/postgresql/*/bin)
#   CRIER_PG_USER     account that runs PostgreSQL when we are root (default postgres)
#   CRIER_PG_FAST=1   fsync=off, synchronous_commit=off, full_page_writes=off (tests only)
#   CRIER_REDIS_FAST=1  no AOF, no RDB snapshots (tests only)
#   CRIER_REDIS_FOREGROUND=1  run redis-server as a child of this shell instead of
#                     daemonizing it (so a test runner that kills the tree also kills it)

# Packages the project needs on Debian 12.
CRIER_APT_PACKAGES=(build-essential cmake pkg-config libhiredis-dev libpq-dev libcjson-dev
  libcurl4-openssl-dev libevent-dev libssl-dev redis-server postgresql curl jq
  clang-format openssl)

crier_log() { printf '%s\n' "crier: $*" >&2; }
crier_warn() { printf '%s\n' "crier: warning: $*" >&2; }
crier_die() {
  printf '%s\n' "crier: error: $*" >&2
  return 1
}

crier_is_root() { [ "$(id -u)" -eq 0 ]; }

# ----------------------------------------------------------------------------------------
# Dependencies
# ----------------------------------------------------------------------------------------

# crier_missing_packages: prints the packages of CRIER_APT_PACKAGES that are not installed.
crier_missing_packages() {
  local p st
  for p in "${CRIER_APT_PACKAGES[@]}"; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$st" in
      *" installed") ;;
      *) printf '%s\n' "$p" ;;
    esac
  done
}

# crier_install_deps: apt-get install only what is missing. Needs root; as another user it
# only warns (the build then tells what is really missing).
crier_install_deps() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    crier_warn "not a Debian system (no dpkg-query): install the dependencies yourself: ${CRIER_APT_PACKAGES[*]}"
    return 0
  fi
  local missing
  missing=$(crier_missing_packages | tr '\n' ' ')
  missing=${missing% }
  if [ -z "$missing" ]; then
    return 0
  fi
  if ! crier_is_root; then
    crier_warn "missing packages (not root, not installing): $missing"
    crier_warn "install them with: sudo apt-get install -y $missing"
    return 0
  fi
  crier_log "installing missing packages: $missing"
  # Keep the Debian postgresql/redis packages from starting their own system services
  # (port 5432/6379) during the install: we run private servers on free ports instead.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 ||
    crier_warn "apt-get update failed; trying the install with the package lists we have"
  # shellcheck disable=SC2086 # word splitting of the package list is intended
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2 || rc=$?
  if [ "$added_policy" = 1 ]; then rm -f "$policy"; fi
  if [ "$rc" -ne 0 ]; then
    crier_die "apt-get install failed ($rc)"
    return 1
  fi
  return 0
}

# ----------------------------------------------------------------------------------------
# Ports
# ----------------------------------------------------------------------------------------

# crier_port_busy PORT: true when something listens on 127.0.0.1:PORT (or any address).
crier_port_busy() {
  local port=$1
  if command -v ss >/dev/null 2>&1; then
    [ -n "$(ss -Htln "sport = :$port" 2>/dev/null)" ] && return 0
  fi
  # Fallback, and double check: try to connect.
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
  return 1
}

# crier_free_port: prints a TCP port nobody listens on. Chosen at random below the Linux
# ephemeral range (32768+) so parallel callers rarely collide and outgoing connections
# never hold it; callers that bind it should still retry on failure.
crier_free_port() {
  local i port
  for i in $(seq 1 200); do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    if ! crier_port_busy "$port"; then
      printf '%s\n' "$port"
      return 0
    fi
  done
  crier_die "no free port found"
}

# ----------------------------------------------------------------------------------------
# Processes through pid files
# ----------------------------------------------------------------------------------------
# A pid file holds the pid on its first line and the program's name on the second; the
# name is checked against /proc/PID/cmdline before any signal, so a stale pid file can
# never make us signal a process someone else started after a reboot or a pid wrap.

# crier_pid_state PID: the state letter of /proc/PID/stat (R, S, Z...), empty if gone.
crier_pid_state() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  printf '%s\n' "${stat%% *}"
}

# crier_pid_of PIDFILE: prints the pid when the pid file names a live process of ours.
crier_pid_of() {
  local pidfile=$1 pid name cmd
  [ -f "$pidfile" ] || return 1
  {
    read -r pid || true
    read -r name || true
  } <"$pidfile"
  case "$pid" in '' | *[!0-9]*) return 1 ;; esac
  kill -0 "$pid" 2>/dev/null || [ -d "/proc/$pid" ] || return 1
  if [ -r "/proc/$pid/stat" ]; then
    # A zombie has exited already.
    [ "$(crier_pid_state "$pid")" != Z ] || return 1
    if [ -n "$name" ]; then
      cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
      case "$cmd" in
        "" | *"$name"*) ;; # empty: caught in the middle of an exec
        *) return 1 ;;
      esac
    fi
  fi
  printf '%s\n' "$pid"
}

# crier_pid_alive PIDFILE: true when the pid file names a live process.
crier_pid_alive() { crier_pid_of "$1" >/dev/null; }

# crier_prog_name CMD...: the program's base name, skipping a leading `env VAR=...`.
crier_prog_name() {
  local a
  if [ "$(basename -- "$1")" = env ]; then
    shift
    for a in "$@"; do
      case "$a" in
        -*) ;;
        *=*) ;;
        *)
          basename -- "$a"
          return 0
          ;;
      esac
    done
  fi
  basename -- "$1"
}

# crier_start_bg LOGFILE PIDFILE CMD [ARGS...]: starts CMD in the background, stdout and
# stderr appended to LOGFILE, writes PIDFILE and sets CRIER_BG_PID. Call it directly, not
# inside $(...): the process must stay a child of the calling shell. It inherits the
# caller's environment (export what it needs, or use `env VAR=value CMD`). With
# CRIER_BG_DETACH=1 it runs in a new session (it survives the terminal; Ctrl-C in the
# terminal does not reach it).
crier_start_bg() {
  local log=$1 pidfile=$2 pid name
  shift 2
  [ $# -gt 0 ] || {
    crier_die "crier_start_bg: no command"
    return 1
  }
  mkdir -p "$(dirname -- "$log")" "$(dirname -- "$pidfile")"
  name=$(crier_prog_name "$@")
  if [ "${CRIER_BG_DETACH:-0}" = 1 ] && command -v setsid >/dev/null 2>&1; then
    # Not a process-group leader (no job control in scripts), so setsid execs in place
    # and $! is the service's own pid.
    setsid "$@" </dev/null >>"$log" 2>&1 &
  else
    "$@" </dev/null >>"$log" 2>&1 &
  fi
  pid=$!
  printf '%s\n%s\n' "$pid" "$name" >"$pidfile"
  CRIER_BG_PID=$pid
  # Until the child has exec'd, its cmdline is still this shell's and the pid file check
  # would call it dead: wait (briefly) for the exec.
  local i cmd
  for ((i = 0; i < 200; i++)); do
    [ -r "/proc/$pid/cmdline" ] || break
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    case "$cmd" in *"$name"*) break ;; esac
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
  return 0
}

# crier_stop_pid PID [TIMEOUT_SECONDS]: TERM, wait, then KILL after TIMEOUT (default 10).
crier_stop_pid() {
  local pid=$1 timeout=${2:-10} i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    # A zombie child of this shell is dead already; reap it.
    if [ -r "/proc/$pid/stat" ] && [ "$(crier_pid_state "$pid")" = Z ]; then
      break
    fi
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null && [ "$(crier_pid_state "$pid")" != Z ]; then
    crier_warn "pid $pid did not stop within ${timeout}s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      [ "$(crier_pid_state "$pid")" = Z ] && break
      sleep 0.1
    done
  fi
  wait "$pid" 2>/dev/null || true
  return 0
}

# crier_stop_pidfile PIDFILE [TIMEOUT_SECONDS]: stops the process the pid file names (if it
# is alive and ours) and removes the pid file. Returns 0 when it was already stopped.
crier_stop_pidfile() {
  local pidfile=$1 timeout=${2:-10} pid
  if pid=$(crier_pid_of "$pidfile"); then
    crier_stop_pid "$pid" "$timeout"
  fi
  rm -f "$pidfile"
  return 0
}

# ----------------------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------------------

# crier_wait_http URL TIMEOUT_SECONDS [PIDFILE]: waits until URL answers 2xx. With PIDFILE,
# gives up early when that process dies.
crier_wait_http() {
  local url=$1 timeout=${2:-30} pidfile=${3:-} deadline
  deadline=$((SECONDS + timeout))
  while :; do
    if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
      return 0
    fi
    if [ -n "$pidfile" ] && ! crier_pid_alive "$pidfile"; then
      crier_warn "process of $pidfile exited while waiting for $url"
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      crier_warn "timed out after ${timeout}s waiting for $url"
      return 1
    fi
    sleep 0.2
  done
}

# crier_new_secret FILE: creates FILE with 64 hex chars (32 random bytes) unless it exists;
# prints the key.
crier_new_secret() {
  local file=$1
  if [ ! -s "$file" ]; then
    mkdir -p "$(dirname -- "$file")"
    (
      umask 077
      if command -v openssl >/dev/null 2>&1; then
        openssl rand -hex 32
      else
        od -An -tx1 -N32 /dev/urandom | tr -d ' \n'
        echo
      fi
    ) >"$file"
  fi
  tr -d ' \n' <"$file"
  echo
}

# ----------------------------------------------------------------------------------------
# PostgreSQL
# ----------------------------------------------------------------------------------------

crier_pg_bindir() {
  if [ -n "${CRIER_PG_BIN:-}" ]; then
    printf '%s\n' "$CRIER_PG_BIN"
    return 0
  fi
  local d
  d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then
    printf '%s\n' "$d"
    return 0
  fi
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir)
    if [ -x "$d/initdb" ]; then
      printf '%s\n' "$d"
      return 0
    fi
  fi
  crier_die "PostgreSQL server binaries not found (install postgresql or set CRIER_PG_BIN)"
}

# The account that owns and runs the cluster: us, or postgres when we are root.
crier_pg_user() {
  if crier_is_root; then
    printf '%s\n' "${CRIER_PG_USER:-postgres}"
  else
    id -un
  fi
}

# crier_pg_run CMD...: runs CMD as the cluster's account, from / (the account may not be
# able to enter the current directory).
crier_pg_run() {
  if crier_is_root; then
    (cd / && runuser -u "$(crier_pg_user)" -- "$@")
  else
    (cd / && "$@")
  fi
}

# crier_pg_realdir DATADIR: the directory the cluster really lives in. As root, when the
# cluster account cannot reach DATADIR (a parent without o+x, e.g. /root), the cluster is
# created under /tmp and DATADIR becomes a symlink to it.
crier_pg_realdir() {
  local datadir=$1 user real
  if [ -L "$datadir" ]; then
    readlink -f -- "$datadir"
    return 0
  fi
  mkdir -p "$datadir"
  real=$(cd "$datadir" && pwd -P)
  if crier_is_root; then
    user=$(crier_pg_user)
    if ! id "$user" >/dev/null 2>&1; then
      crier_die "running as root and user '$user' does not exist (install postgresql, or set CRIER_PG_USER)"
      return 1
    fi
    if ! runuser -u "$user" -- test -x "$(dirname -- "$real")"; then
      if [ -n "$(ls -A "$real" 2>/dev/null)" ]; then
        crier_die "$real is not reachable by '$user' and not empty"
        return 1
      fi
      rmdir "$real"
      real=$(mktemp -d "${TMPDIR:-/tmp}/crier-pg.XXXXXX")
      chmod 755 "$real"
      ln -s "$real" "$datadir"
      crier_log "$datadir is not reachable by '$user': cluster lives in $real (symlinked)"
    fi
    chown "$user" "$real"
  fi
  chmod 700 "$real"
  printf '%s\n' "$real"
}

# crier_pg_running DATADIR: true when a postmaster runs from DATADIR.
crier_pg_running() {
  local datadir=$1 bin real
  [ -e "$datadir" ] || return 1
  real=$(readlink -f -- "$datadir")
  [ -f "$real/postmaster.pid" ] || return 1
  bin=$(crier_pg_bindir) || return 1
  crier_pg_run "$bin/pg_ctl" status -D "$real" >/dev/null 2>&1
}

# crier_pg_port DATADIR: the port of the running cluster (4th line of postmaster.pid).
crier_pg_port() {
  local real
  real=$(readlink -f -- "$1")
  sed -n 4p "$real/postmaster.pid" 2>/dev/null
}

# crier_pg_ensure_roles PORT: role `crier` (login) and database `crier` owned by it.
crier_pg_ensure_roles() {
  local port=$1 bin
  bin=$(crier_pg_bindir) || return 1
  PGCONNECT_TIMEOUT=10 "$bin/psql" -X -q -v ON_ERROR_STOP=1 \
    "postgresql://postgres@127.0.0.1:$port/postgres" >/dev/null <<'SQL'
SELECT 'CREATE ROLE crier LOGIN CREATEDB'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'crier')
\gexec
SELECT 'CREATE DATABASE crier OWNER crier'
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'crier')
\gexec
SQL
}

# crier_pg_start DATADIR [PORT]: initdb (trust auth, superuser `postgres`) when DATADIR has
# no cluster, then start it on 127.0.0.1:PORT (default: the port it used last if still
# free, else a free one) and make sure role and database `crier` exist. When a postmaster
# already runs from DATADIR it is reused. Prints the port.
crier_pg_start() {
  local datadir=$1 want=${2:-} bin real port conf sockdir locale attempt
  [ -n "$datadir" ] || {
    crier_die "usage: crier_pg_start DATADIR [PORT]"
    return 1
  }
  bin=$(crier_pg_bindir) || return 1

  if crier_pg_running "$datadir"; then
    port=$(crier_pg_port "$datadir")
    crier_log "PostgreSQL already running from $datadir on port $port"
    crier_pg_ensure_roles "$port" || return 1
    printf '%s\n' "$port"
    return 0
  fi

  real=$(crier_pg_realdir "$datadir") || return 1
  if [ ! -f "$real/PG_VERSION" ]; then
    locale=C
    if locale -a 2>/dev/null | grep -qix 'c.utf-\?8'; then locale=C.UTF-8; fi
    crier_log "initdb $datadir"
    if ! crier_pg_run "$bin/initdb" -D "$real" -U postgres --auth-local=trust --auth-host=trust \
      -E UTF8 --locale="$locale" >"$real.initdb.log" 2>&1; then
      cat "$real.initdb.log" >&2
      crier_die "initdb failed"
      return 1
    fi
    rm -f "$real.initdb.log"
    printf "\ninclude_if_exists = 'crier.conf'\n" >>"$real/postgresql.conf"
  fi

  for attempt in 1 2 3 4 5; do
    port=$want
    if [ -z "$port" ]; then
      port=$(sed -n "s/^port = \([0-9]*\).*/\1/p" "$real/crier.conf" 2>/dev/null | head -n 1)
      if [ -z "$port" ] || [ "$attempt" -gt 1 ] || crier_port_busy "$port"; then
        port=$(crier_free_port) || return 1
      fi
    fi
    # Unix socket inside the data dir when the path fits sun_path (108 bytes), else TCP only.
    sockdir=$real
    if [ $((${#real} + 20)) -ge 107 ]; then sockdir=''; fi
    conf="$real/crier.conf"
    {
      echo "# written by deploy/lib.sh crier_pg_start at every start"
      echo "port = $port"
      echo "listen_addresses = '127.0.0.1'"
      echo "unix_socket_directories = '$sockdir'"
      echo "max_connections = 300"
      echo "logging_collector = off"
      echo "log_line_prefix = '%m [%p] %q%u@%d '"
      # Durable and tuned for crier's writes: bursts of inserts (a campaign's
      # expansion) and updates (outcomes) without checkpoints in between.
      echo "shared_buffers = 512MB"
      echo "max_wal_size = 8GB"
      echo "checkpoint_timeout = 15min"
      echo "wal_compression = on"
      if [ "${CRIER_PG_FAST:-0}" = 1 ]; then
        echo "fsync = off"
        echo "synchronous_commit = off"
        echo "full_page_writes = off"
      fi
    } >"$conf"
    if crier_is_root; then chown "$(crier_pg_user)" "$conf"; fi

    if crier_pg_run "$bin/pg_ctl" -D "$real" -l "$real/server.log" -w -t 60 -s start >&2; then
      crier_pg_ensure_roles "$port" || return 1
      crier_log "PostgreSQL running from $datadir on 127.0.0.1:$port"
      printf '%s\n' "$port"
      return 0
    fi
    tail -n 20 "$real/server.log" >&2 2>/dev/null || true
    # Retry on another port only when we chose it ourselves.
    if [ -n "$want" ]; then break; fi
    crier_warn "PostgreSQL did not start on port $port, retrying on another port"
  done
  crier_die "PostgreSQL failed to start from $datadir (log: $real/server.log)"
}

# crier_pg_stop DATADIR: fast shutdown; 0 when it was not running.
crier_pg_stop() {
  local datadir=$1 bin real
  if ! crier_pg_running "$datadir"; then
    return 0
  fi
  bin=$(crier_pg_bindir) || return 1
  real=$(readlink -f -- "$datadir")
  if ! crier_pg_run "$bin/pg_ctl" -D "$real" -m fast -w -t 60 -s stop >&2; then
    crier_warn "fast shutdown failed, trying immediate"
    crier_pg_run "$bin/pg_ctl" -D "$real" -m immediate -w -t 30 -s stop >&2 || return 1
  fi
  crier_log "PostgreSQL from $datadir stopped"
}

# ----------------------------------------------------------------------------------------
# Redis
# ----------------------------------------------------------------------------------------

# crier_redis_running DATADIR: true when our redis-server from DATADIR runs.
crier_redis_running() { crier_pid_alive "$1/redis.pid"; }

# crier_redis_port DATADIR
crier_redis_port() { sed -n 's/^port \([0-9]*\).*/\1/p' "$1/redis.conf" 2>/dev/null | head -n 1; }

# crier_redis_start DATADIR [PORT]: redis-server on 127.0.0.1:PORT with its data, config,
# log and pid file in DATADIR; AOF with appendfsync everysec (CRIER_REDIS_FAST=1: no
# persistence). Reuses a server already running from DATADIR. Prints the port and sets
# CRIER_REDIS_PORT (with CRIER_REDIS_FOREGROUND=1 call it directly, not inside $(...), so
# the server stays a child of the calling shell).
crier_redis_start() {
  local datadir=$1 want=${2:-} real port attempt i pid
  [ -n "$datadir" ] || {
    crier_die "usage: crier_redis_start DATADIR [PORT]"
    return 1
  }
  command -v redis-server >/dev/null 2>&1 || {
    crier_die "redis-server not found (install redis-server)"
    return 1
  }
  mkdir -p "$datadir"
  real=$(cd "$datadir" && pwd -P)
  if crier_redis_running "$real"; then
    port=$(crier_redis_port "$real")
    crier_log "Redis already running from $datadir on port $port"
    CRIER_REDIS_PORT=$port
    printf '%s\n' "$port"
    return 0
  fi
  for attempt in 1 2 3 4 5; do
    port=$want
    if [ -z "$port" ]; then
      port=$(crier_redis_port "$real")
      if [ -z "$port" ] || [ "$attempt" -gt 1 ] || crier_port_busy "$port"; then
        port=$(crier_free_port) || return 1
      fi
    fi
    {
      echo "# written by deploy/lib.sh crier_redis_start at every start"
      echo "bind 127.0.0.1"
      echo "port $port"
      echo "protected-mode no"
      echo "dir $real"
      echo "pidfile $real/redis.pid"
      echo "logfile $real/redis.log"
      echo "unixsocket \"\""
      if [ "${CRIER_REDIS_FOREGROUND:-0}" = 1 ]; then
        echo "daemonize no"
      else
        echo "daemonize yes"
      fi
      if [ "${CRIER_REDIS_FAST:-0}" = 1 ]; then
        echo "appendonly no"
        echo "save \"\""
      else
        echo "appendonly yes"
        echo "appendfsync everysec"
        echo "save 3600 1 300 100 60 10000"
      fi
    } >"$real/redis.conf"
    rm -f "$real/redis.pid"
    if [ "${CRIER_REDIS_FOREGROUND:-0}" = 1 ]; then
      crier_start_bg "$real/redis.stdout.log" "$real/redis.pid" redis-server "$real/redis.conf"
      pid=$CRIER_BG_PID
    else
      redis-server "$real/redis.conf" >&2 || true
    fi
    for ((i = 0; i < 100; i++)); do
      if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
        # Daemonized redis writes its own pid file; add our name line for the check.
        if [ -s "$real/redis.pid" ]; then
          pid=$(head -n 1 "$real/redis.pid")
          printf '%s\nredis-server\n' "$pid" >"$real/redis.pid"
        fi
        if crier_redis_running "$real"; then
          crier_log "Redis running from $datadir on 127.0.0.1:$port"
          # shellcheck disable=SC2034 # read by callers
          CRIER_REDIS_PORT=$port
          printf '%s\n' "$port"
          return 0
        fi
        break # somebody else answers on that port
      fi
      if [ "${CRIER_REDIS_FOREGROUND:-0}" = 1 ] && ! kill -0 "$pid" 2>/dev/null; then break; fi
      sleep 0.1
    done
    tail -n 5 "$real/redis.log" >&2 2>/dev/null || true
    crier_stop_pidfile "$real/redis.pid" 5
    if [ -n "$want" ]; then break; fi
    crier_warn "Redis did not start on port $port, retrying on another port"
  done
  crier_die "Redis failed to start from $datadir (log: $real/redis.log)"
}

# crier_redis_stop DATADIR: TERM (redis saves/flushes on TERM), KILL after 20 s.
crier_redis_stop() {
  local datadir=$1
  [ -d "$datadir" ] || return 0
  if crier_redis_running "$datadir"; then
    crier_stop_pidfile "$datadir/redis.pid" 20
    crier_log "Redis from $datadir stopped"
  fi
  rm -f "$datadir/redis.pid"
  return 0
}
