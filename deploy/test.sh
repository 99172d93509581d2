#!/usr/bin/env bash
# deploy/test.sh — build everything and run the whole suite (command 2 of the README).
#
# Installs missing packages (as root), builds two trees —
#   build/       -DCRIER_WERROR=ON
#   build-asan/  -DCRIER_SANITIZE=ON -DCRIER_WERROR=ON (ASan + UBSan, leaks detected)
# — runs the format check, then `ctest --output-on-failure -j2` in each tree: unit tests,
# and integration / end-to-end tests against the ephemeral PostgreSQL + Redis the `stack`
# fixture starts and stops (tests/integration.cmake). Whatever is left running is stopped
# on exit, even on failure or Ctrl-C. Exits non-zero when anything failed; the last line
# is "N passed, N failed".
#
# Knobs: CRIER_BUILD_DIR (default build), CRIER_ASAN_BUILD_DIR (default build-asan),
# CRIER_TEST_JOBS (ctest -j, default 2), CRIER_SKIP_ASAN=1, CTEST_ARGS (extra ctest args,
# e.g. "-L unit").
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deploy/lib.sh
. "$ROOT/deploy/lib.sh"
cd "$ROOT" || exit 1

abs() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$ROOT/$1" ;;
  esac
}
BUILD=$(abs "${CRIER_BUILD_DIR:-build}")
ASAN_BUILD=$(abs "${CRIER_ASAN_BUILD_DIR:-build-asan}")
JOBS=$(nproc 2>/dev/null || echo 2)
TEST_JOBS=${CRIER_TEST_JOBS:-2}
TREES=("$BUILD")
[ "${CRIER_SKIP_ASAN:-0}" = 1 ] || TREES+=("$ASAN_BUILD")

PASSED=0
FAILED=0
SKIPPED=0
FAILURES=()
START=$SECONDS

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
pass() { PASSED=$((PASSED + 1)); }
fail() {
  FAILED=$((FAILED + 1))
  FAILURES+=("$1")
}

# Stop whatever the test runs left behind: the fixture stacks and any per-test process
# whose pid file is still there (only processes those pid files name, checked by name).
cleanup() {
  local rc=$? tree f
  trap - EXIT INT TERM
  for tree in "${TREES[@]}"; do
    for f in "$tree"/testrun/*/*.pid "$tree"/testrun/*/redis/redis.pid; do
      [ -f "$f" ] && crier_stop_pidfile "$f" 5
    done
    if [ -e "$tree/teststack" ]; then
      "$ROOT/deploy/stack.sh" destroy "$tree/teststack" >/dev/null 2>&1 ||
        crier_warn "could not stop $tree/teststack"
    fi
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run_ctest TREE: runs the suite in TREE and adds its results to the counters.
run_ctest() {
  local tree=$1 name log rc total nfailed nskipped
  name=$(basename -- "$tree")
  log="$tree/ctest-output.log"
  # shellcheck disable=SC2086 # CTEST_ARGS is a list of words
  (cd "$tree" && ctest --output-on-failure -j "$TEST_JOBS" ${CTEST_ARGS:-}) 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  total=$(sed -n 's/.*tests passed, [0-9]* tests\{0,1\} failed out of \([0-9]*\).*/\1/p' "$log" | tail -n 1)
  nfailed=$(sed -n 's/.*tests passed, \([0-9]*\) tests\{0,1\} failed out of.*/\1/p' "$log" | tail -n 1)
  nskipped=$(grep -cE '^[[:space:]]*[0-9]+ - .*\((Skipped|Disabled)\)$' "$log" || true)
  if [ -z "$total" ]; then
    if grep -q 'No tests were found' "$log"; then
      total=0
      nfailed=0
    else
      fail "$name: ctest (exit $rc, no summary)"
      return
    fi
  fi
  PASSED=$((PASSED + total - nfailed - nskipped))
  FAILED=$((FAILED + nfailed))
  SKIPPED=$((SKIPPED + nskipped))
  if [ "$nfailed" -gt 0 ]; then
    while IFS= read -r line; do
      FAILURES+=("$name: $line")
    done < <(sed -n '/The following tests FAILED:/,$p' "$log" | grep -E '^[[:space:]]+[0-9]+ - ' | sed 's/^[[:space:]]*//')
  elif [ "$rc" -ne 0 ]; then
    fail "$name: ctest exited $rc"
  fi
}

# build_tree TREE CMAKE_ARGS...: configure and build; false on failure.
build_tree() {
  local tree=$1
  shift
  step "configure $(basename -- "$tree") ($*)"
  cmake -S "$ROOT" -B "$tree" "$@" || return 1
  step "build $(basename -- "$tree")"
  cmake --build "$tree" -j "$JOBS"
}

step "dependencies"
crier_install_deps || fail "install dependencies"

# 1. regular tree
if build_tree "$BUILD" -DCRIER_WERROR=ON; then
  if command -v clang-format >/dev/null 2>&1; then
    step "format check"
    if cmake --build "$BUILD" --target format-check; then pass; else fail "format-check"; fi
  else
    crier_warn "clang-format not found: format check skipped"
  fi
  step "tests in $(basename -- "$BUILD")"
  run_ctest "$BUILD"
else
  fail "build $(basename -- "$BUILD")"
fi

# 2. sanitizer tree
if [ "${CRIER_SKIP_ASAN:-0}" != 1 ]; then
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  if build_tree "$ASAN_BUILD" -DCRIER_SANITIZE=ON -DCRIER_WERROR=ON; then
    step "tests in $(basename -- "$ASAN_BUILD") (ASan + UBSan)"
    run_ctest "$ASAN_BUILD"
  else
    fail "build $(basename -- "$ASAN_BUILD")"
  fi
fi

step "summary ($((SECONDS - START)) s)"
if [ "${#FAILURES[@]}" -gt 0 ]; then
  echo "failed:"
  printf '  %s\n' "${FAILURES[@]}"
fi
[ "$SKIPPED" -gt 0 ] && echo "$SKIPPED skipped"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
