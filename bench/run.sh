#!/usr/bin/env bash
# The relay benchmark in one command: builds the release binaries (relay,
# bench/wsbench, bench/bare_libssh2) into build-bench/, then runs
# bench/bench.py, which starts its own sshd and relays, measures, prints a
# table and writes bench/RESULTS.md.
#
# Usage: bench/run.sh [--full] [--profile] [any other bench.py option]
#   (default)  quick mode: 256 MiB files, about 3 minutes
#   --full     1 GiB files, 1000 small-op iterations
#   --profile  also perf-record the relay during a download and an upload
#   --cipher C sshd (and sftp) pinned to cipher C (default chacha20-poly1305@openssh.com),
#              e.g. aes128-gcm@openssh.com or aes128-ctr
#   --mac M    sshd (and sftp) pinned to MAC M, e.g. hmac-sha2-256 with aes128-ctr
#              (a FIPS server offers no UMAC)
# A run on a busy machine (other processes using more than 0.3 CPUs before
# the start or on average during it) is printed but not written to
# RESULTS.md.
#   --help     all options
# Must run as root: it creates the local user wctest and starts sshd.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${WC_BENCH_BUILD_DIR:-$root/build-bench}"

for arg in "$@"; do
  case "$arg" in -h|--help) exec /usr/bin/python3 "$root/bench/bench.py" --help ;; esac
done
if [ "$(id -u)" -ne 0 ]; then
  echo "bench/run.sh: must run as root (creates the user wctest, starts sshd)" >&2
  exit 2
fi

# Build tools, libssh2 >= 1.11, and sshd/sftp/python3 (what the tests need).
bash "$root/scripts/deps.sh" --test
# --profile needs perf (Debian's linux-perf), which the tests do not.
for arg in "$@"; do
  case "$arg" in
    --profile|--profile-faults)
      command -v perf >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >/dev/null ;;
  esac
done

# Release, as deployed. No -Werror here: warnings that only -O3 inlining
# finds must not stop a benchmark (scripts/build.sh is the strict build).
# -g changes no code, it only lets perf (--profile) name functions and lines.
cmake_args=(-S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DWERROR=OFF -DSANITIZE=OFF
            "-DCMAKE_C_FLAGS_RELEASE=-O3 -DNDEBUG -g")
if [ -n "${LIBSSH2_PRIVATE_PREFIX:-}" ]; then
  cmake_args+=(-DLIBSSH2_PRIVATE_PREFIX="$LIBSSH2_PRIVATE_PREFIX")
fi
cmake "${cmake_args[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)" --target wattcloud-relay wsbench bare_libssh2 >/dev/null

# Debian's python3; the harness in tests/integration needs only the stdlib.
exec /usr/bin/python3 "$root/bench/bench.py" --build-dir "$build" "$@"
