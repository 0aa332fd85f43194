#!/usr/bin/env bash
# The one command that runs every test: installs what the tests need, builds
# the relay twice (plain and ASan/UBSan) and runs the unit tests (ctest) and
# the integration tests (pytest) against each build, then a short fuzzing
# pass (tests/fuzz/run.sh 10). The soak test (tests/soak/) is not part of it.
#
# Usage: scripts/test.sh [--ctest REGEX] [PYTEST_ARGS...]
#   With arguments only a subset runs, in both passes: the unit tests whose
#   names match REGEX (ctest -R; none without --ctest) and pytest with
#   PYTEST_ARGS instead of tests/integration (none without them); the
#   fuzzing pass is skipped. E.g. the store tests against every engine:
#     scripts/test.sh --ctest store_redis tests/integration/test_scale.py
# Env: WC_TEST_QUICK=1 skips the sanitizer pass and the fuzzing pass.
# Exit status is non-zero when any step failed; both passes always run.
set -euo pipefail

ctest_regex=""
subset=0
if [ "${1:-}" = --ctest ]; then
  [ $# -ge 2 ] || { sed -n '7,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
  ctest_regex="$2"
  subset=1
  shift 2
fi
pytest_args=("$@")
[ "${#pytest_args[@]}" -eq 0 ] || subset=1

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Debian's python3-pytest and python3-websocket belong to the system python;
# a pyenv or venv python earlier in PATH would not see them.
readonly PY=/usr/bin/python3

# Without packages nothing below can work, so this one failure stops the run.
bash scripts/deps.sh --test

summary=()
failed=0
record() {  # record NAME STATUS
  summary+=("$(printf '%-31s %s' "$1" "$2")")
  if [ "$2" = FAIL ]; then failed=1; fi
}

# Runs one pass: build into $1 (with build.sh flag $2, may be empty), then
# ctest and pytest against that build. Failures are recorded, not fatal,
# so the other pass still runs.
run_pass() {
  local dir="$1" flag="$2" name rc
  name="$(basename "$dir")"

  echo "===== $name: build"
  if ! WC_SKIP_DEPS=1 bash scripts/build.sh ${flag:+"$flag"} "$dir"; then
    record "$name: build" FAIL
    record "$name: unit tests" "SKIP (no build)"
    record "$name: integration tests" "SKIP (no build)"
    return 0
  fi
  record "$name: build" PASS

  if [ "$subset" -eq 1 ] && [ -z "$ctest_regex" ]; then
    record "$name: unit tests" "SKIP (not in the subset)"
  else
    echo "===== $name: unit tests (ctest${ctest_regex:+ -R $ctest_regex})"
    if ctest --test-dir "$dir" --output-on-failure ${ctest_regex:+-R "$ctest_regex"}; then
      record "$name: unit tests" PASS
    else
      record "$name: unit tests" FAIL
    fi
  fi

  if [ "$subset" -eq 1 ] && [ "${#pytest_args[@]}" -eq 0 ]; then
    record "$name: integration tests" "SKIP (not in the subset)"
    return 0
  fi
  echo "===== $name: integration tests (pytest)"
  rc=0
  if [ "$subset" -eq 1 ]; then
    RELAY_BIN="$dir/wattcloud-relay" "$PY" -m pytest -q "${pytest_args[@]}" || rc=$?
  else
    # The slowest tests are listed at the end: CI must stay well under 45
    # minutes, and the list shows where the time goes.
    RELAY_BIN="$dir/wattcloud-relay" "$PY" -m pytest -q --durations=12 tests/integration || rc=$?
  fi
  case "$rc" in
    0) record "$name: integration tests" PASS ;;
    # pytest's "no tests collected": the suite is still being written.
    5) record "$name: integration tests" "SKIP (no tests collected)" ;;
    *) record "$name: integration tests" FAIL ;;
  esac
}

run_pass "$root/build" ""

if [ "${WC_TEST_QUICK:-0}" = 1 ]; then
  record "build-asan" "SKIP (WC_TEST_QUICK=1)"
else
  # Exported for the whole pass: the unit tests are sanitized binaries too.
  # abort_on_error/halt_on_error turn any report into a failed test instead
  # of a line in a log that nobody reads.
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  # The system's libssh2 leaks what one of our patches fixes; the file says
  # what that hides.
  if [ "${WC_LIBSSH2:-}" = system ]; then
    export LSAN_OPTIONS="suppressions=$root/tests/integration/lsan-system-libssh2.supp"
  fi
  run_pass "$root/build-asan" --asan
  unset ASAN_OPTIONS UBSAN_OPTIONS
  [ "${WC_LIBSSH2:-}" != system ] || unset LSAN_OPTIONS
fi

# A short fuzzing pass: each libFuzzer target of tests/fuzz/ for 10 s,
# built with ASan+UBSan. Long runs: tests/fuzz/run.sh 600.
if [ "${WC_TEST_QUICK:-0}" = 1 ]; then
  record "fuzz" "SKIP (WC_TEST_QUICK=1)"
elif [ "$subset" -eq 1 ]; then
  record "fuzz" "SKIP (a subset was asked for)"
else
  echo "===== fuzz (10 s per target)"
  if FUZZ_BUILD_DIR="$root/build-fuzz" bash tests/fuzz/run.sh 10; then
    record "fuzz (10 s per target)" PASS
  else
    record "fuzz (10 s per target)" FAIL
  fi
fi

echo
echo "===== summary"
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
  echo "RESULT: FAIL"
  exit 1
fi
echo "RESULT: PASS"
