#!/usr/bin/env bash
# Configures and builds wattcloud-relay with warnings as errors, after making
# sure the build dependencies (libssh2 >= 1.11 included) are in place.
#
# Usage: scripts/build.sh [--asan] [BUILD_DIR]
#   --asan     AddressSanitizer + UBSan build (-DSANITIZE=ON); BUILD_DIR
#              then defaults to build-asan instead of build.
#   BUILD_DIR  relative to the current directory; defaults are in the repo.
# Env: WC_SKIP_DEPS=1 skips scripts/deps.sh (test.sh has run it already);
#      LIBSSH2_PRIVATE_PREFIX, when set, is passed on to both.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

asan=0
build_dir=""
for arg in "$@"; do
  case "$arg" in
    --asan) asan=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) usage >&2; exit 2 ;;
    *)
      [ -z "$build_dir" ] || { usage >&2; exit 2; }
      build_dir="$arg" ;;
  esac
done
if [ -z "$build_dir" ]; then
  if [ "$asan" -eq 1 ]; then build_dir="$root/build-asan"; else build_dir="$root/build"; fi
fi

if [ "${WC_SKIP_DEPS:-0}" != 1 ]; then
  bash "$root/scripts/deps.sh"
fi

# SANITIZE is always passed, ON or OFF, so a reused build dir follows the
# flag given now instead of whatever its cache remembers.
cmake_args=(-S "$root" -B "$build_dir" -DWERROR=ON)
if [ "$asan" -eq 1 ]; then
  cmake_args+=(-DSANITIZE=ON)
else
  cmake_args+=(-DSANITIZE=OFF)
fi
if [ -n "${LIBSSH2_PRIVATE_PREFIX:-}" ]; then
  cmake_args+=(-DLIBSSH2_PRIVATE_PREFIX="$LIBSSH2_PRIVATE_PREFIX")
fi

echo "build: configuring $build_dir (asan=$asan)"
cmake "${cmake_args[@]}"
echo "build: building $build_dir"
cmake --build "$build_dir" -j2
echo "build: OK: $build_dir/wattcloud-relay"
