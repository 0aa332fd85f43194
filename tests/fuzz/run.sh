#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ with clang
# (-fsanitize=fuzzer,address,undefined) and runs each for a bounded time.
#
# Usage: tests/fuzz/run.sh [SECONDS] [TARGET...]
#   SECONDS  per target, default 30 (scripts/test.sh uses 10)
#   TARGET   fuzz_proto, fuzz_access, fuzz_keyformat, fuzz_netguard, fuzz_wsframe,
#            fuzz_sshsig, fuzz_store_reply (all
#            when none is named)
# Env: FUZZ_BUILD_DIR (default build-fuzz in the repository), FUZZ_JOBS
#      (parallel runs of one target, default 1), CC (default clang).
#
# The committed seeds in tests/fuzz/corpus/<target>/ are read, never
# written: new inputs go to $FUZZ_BUILD_DIR/corpus/<target>/, crashes to
# $FUZZ_BUILD_DIR/artifacts/. A crash, leak or sanitizer report fails the
# run (exit 1) and names the input; add it to the committed corpus (or a
# unit test) once fixed. Each run prints libFuzzer's last status line
# (executions, exec/s, coverage).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/tests/fuzz"
secs="${1:-30}"
shift || true
case "$secs" in ''|*[!0-9]*) echo "run.sh: SECONDS must be a number" >&2; exit 2 ;; esac
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(fuzz_proto fuzz_access fuzz_keyformat fuzz_netguard fuzz_wsframe
                                       fuzz_sshsig fuzz_store_reply)
out="${FUZZ_BUILD_DIR:-$root/build-fuzz}"
cc="${CC:-clang}"
command -v "$cc" >/dev/null || { echo "run.sh: $cc not found (scripts/deps.sh --test installs clang)" >&2; exit 1; }

# The relay sources each target needs: only the pure parsing and decision
# code, no libwebsockets and no libssh2.
sources_for() {
  case "$1" in
    fuzz_proto) echo "proto/proto.c proto/wipe.c relay/wipe_alloc.c" ;;
    fuzz_access) echo "relay/access.c relay/auth_cookie.c relay/ratelimit.c relay/client_ip.c relay/netguard.c relay/metrics.c relay/wipe_alloc.c proto/wipe.c relay/store.c relay/store_embedded.c relay/store_redis.c relay/config.c relay/log.c" ;;
    fuzz_keyformat) echo "relay/keyformat.c" ;;
    fuzz_netguard) echo "relay/netguard.c" ;;
    fuzz_wsframe) echo "relay/wsframe.c proto/proto.c proto/wipe.c relay/wipe_alloc.c" ;;
    fuzz_sshsig) echo "relay/sshsig.c proto/proto.c proto/wipe.c relay/wipe_alloc.c" ;;
    fuzz_store_reply) echo "relay/store_redis.c relay/store.c relay/store_embedded.c relay/access.c relay/auth_cookie.c relay/ratelimit.c relay/client_ip.c relay/netguard.c relay/metrics.c relay/wipe_alloc.c proto/wipe.c relay/config.c relay/log.c" ;;
    *) echo "run.sh: unknown target $1" >&2; return 1 ;;
  esac
}

# Longest input worth trying: a text frame carries at most a private key
# (PROTOCOL: 64 KiB cap); the others are short header-like strings.
max_len_for() {
  case "$1" in
    fuzz_proto) echo 16384 ;;
    fuzz_keyformat) echo 16384 ;;
    fuzz_sshsig) echo 12288 ;;
    *) echo 4096 ;;
  esac
}

cflags=(-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
        -fno-sanitize-recover=undefined -D_GNU_SOURCE -Wall -Wextra
        -iquote "$root/relay" -iquote "$root/proto" -I "$here")
# hiredis: fuzz_access links the store interface, whose shared
# implementation (never started by the fuzzer) is compiled in with it.
libs=(-ljansson -lcrypto -lpthread -lhiredis)

mkdir -p "$out/artifacts"
# -jobs switches libFuzzer to fork mode, which writes fuzz-N.log into the
# current directory: only when asked for, and then from inside $out.
jobs=()
if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
  jobs=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
fi
cd "$out"
failed=0
for t in "${targets[@]}"; do
  srcs=$(sources_for "$t")
  echo "===== $t: build"
  # shellcheck disable=SC2086  # word splitting of the source list is wanted
  (cd "$root" && "$cc" "${cflags[@]}" -o "$out/$t" "$here/$t.c" $srcs "${libs[@]}")
  mkdir -p "$out/corpus/$t"
  dict=()
  [ -f "$here/$t.dict" ] && dict=(-dict="$here/$t.dict")
  echo "===== $t: ${secs} s"
  log="$out/$t.log"
  rc=0
  # detect_leaks: a leak per input is the slow kind the daemon cannot afford.
  ASAN_OPTIONS="detect_leaks=1:${ASAN_OPTIONS:-}" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}" \
    "$out/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
      -max_len="$(max_len_for "$t")" -print_final_stats=1 "${jobs[@]}" \
      -artifact_prefix="$out/artifacts/$t-" "${dict[@]}" \
      "$out/corpus/$t" "$here/corpus/$t" >"$log" 2>&1 || rc=$?
  # The last status line: "#N DONE cov: C ft: F corp: ... exec/s: E ...".
  grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n 1 || true
  grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec' "$log" || true
  if [ "$rc" -ne 0 ]; then
    echo "===== $t: FAILED (exit $rc); see $log"
    grep -E 'ERROR: |SUMMARY: |runtime error|Test unit written to' "$log" | head -n 20 || true
    failed=1
  fi
done
exit "$failed"
