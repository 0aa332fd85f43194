#!/usr/bin/env bash
# Installs what wattcloud-relay needs to build (and, with --test, to run its
# tests) on Debian 12 or 13, and builds our libssh2: Debian 13's libssh2
# 1.11.1 source with our patches (scripts/libssh2-patches/), static, in a
# private prefix.
#
# Usage: scripts/deps.sh [--test]
# Safe to re-run: every step checks first, so a second run only reads state.
# Env: LIBSSH2_PRIVATE_PREFIX (default /opt/wattcloud-deps/libssh2), which
#      must match the CMake cache variable of the same name;
#      WC_LIBSSH2=system takes the system's libssh2 (>= 1.11: Debian 13)
#      instead, without our patches (CMake reads the same variable).
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

want_test=0
case "${1:-}" in
  "") ;;
  --test) want_test=1 ;;
  -h|--help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

readonly ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly PREFIX="${LIBSSH2_PRIVATE_PREFIX:-/opt/wattcloud-deps/libssh2}"
case "$PREFIX" in /*) ;; *) echo "deps: LIBSSH2_PRIVATE_PREFIX must be absolute" >&2; exit 2 ;; esac
readonly MIN_LIBSSH2=1.11
# Our own file, so the trixie entry can be found, checked and removed as one.
readonly TRIXIE_SOURCES=/etc/apt/sources.list.d/wattcloud-trixie-src.sources
# Debian 12's backports, for valkey-server only (install_valkey).
readonly BACKPORTS_SOURCES=/etc/apt/sources.list.d/wattcloud-bookworm-backports.sources

BUILD_PKGS=(build-essential cmake pkg-config libwebsockets-dev libjansson-dev
            libssl-dev zlib1g-dev libhiredis-dev)
# clang with libclang-rt-dev (libFuzzer and the sanitizer runtimes; the
# metapackage follows clang's default version: 14 on Debian 12) builds the
# fuzz targets of tests/fuzz/; llvm brings llvm-symbolizer for readable
# sanitizer stack traces.
# python3-prometheus-client parses /metrics and python3-yaml the scrape job
# example (test_metrics.py); man-db and groff-base render the manual page
# (test_manpage.py).
# caddy and nginx are the reverse proxies of deploy/ (test_deploy.py runs the
# relay behind each); systemd brings systemd-analyze to check the unit file;
# openssl makes the test certificates. chromium runs the browser end-to-end
# test (test_browser.py, headless, driven over its DevTools protocol); its
# fontconfig dependency brings a font, so the screenshots show text.
# redis-server and haproxy run the several-relays tests (test_scale.py and the
# store unit test start their own, on loopback). The store tests run against
# every engine the relay supports, so valkey-server is needed too: Debian 13
# has it; Debian 12 only in bookworm-backports, see install_valkey below.
# python3-paramiko is the SSH side of the hostile SFTP server
# (tests/integration/hostile_sftp.py, test_hostile_sftp.py); python3-asyncssh
# is a second one that speaks chacha20-poly1305, which paramiko does not
# (test_rekey_methods.py switches it to AES at a key re-exchange).
TEST_PKGS=(openssh-server openssh-client python3 python3-pytest python3-pytest-timeout
           python3-websocket python3-websockets valgrind clang libclang-rt-dev llvm caddy nginx
           systemd openssl chromium iproute2 python3-prometheus-client python3-yaml man-db
           groff-base python3-cryptography redis-server haproxy python3-paramiko
           python3-asyncssh strace)

# shellcheck source=scripts/apt-mirror.sh
. "$ROOT/scripts/apt-mirror.sh"

log() { printf 'deps: %s\n' "$*" >&2; }
die() { printf 'deps: ERROR: %s\n' "$*" >&2; exit 1; }

# Root is needed for apt and /opt; sudo only when we are not root already.
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "not root and sudo is not installed"
  SUDO=(sudo)
fi
as_root() { "${SUDO[@]}" "$@"; }
apt_get() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -q "$@"
}

# Everything temporary is undone on any exit, including Ctrl-C and errors.
tmpdir=""
our_policy_rc=0
cleanup() {
  if [ "$our_policy_rc" -eq 1 ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
  if [ -n "$tmpdir" ]; then as_root rm -rf "$tmpdir"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- apt helpers

# A fresh container has no package lists at all, and lists go stale on a
# long-lived machine, but refreshing costs time and network: refresh at most
# once per run, and only when something we need cannot be had without it.
apt_updated=0
apt_update_once() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    apt_get update
    apt_updated=1
  fi
}

is_installed() {
  dpkg-query -W -f='${db:Status-Status}\n' "$1" 2>/dev/null | grep -qx installed
}

# Prints the candidate version, or nothing when apt knows of none.
candidate() {
  LC_ALL=C apt-cache policy "$1" 2>/dev/null |
    awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }'
}

# Keeps service starts (the system sshd, mainly) out of package installs:
# the tests run their own sshd and the system one must stay as it was. An
# existing policy-rc.d (Docker images have one) is left alone.
block_service_starts() {
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from wattcloud scripts/deps.sh\nexit 101\n' |
      as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 0755 /usr/sbin/policy-rc.d
    our_policy_rc=1
  fi
}
unblock_service_starts() {
  if [ "$our_policy_rc" -eq 1 ]; then
    as_root rm -f /usr/sbin/policy-rc.d
    our_policy_rc=0
  fi
}

# Installs whichever of the named packages are missing.
install_pkgs() {
  local missing=() p
  for p in "$@"; do
    is_installed "$p" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0

  for p in "${missing[@]}"; do
    [ -n "$(candidate "$p")" ] || { apt_update_once; break; }
  done
  log "installing: ${missing[*]}"
  block_service_starts
  # Lists that were good enough to name a candidate may still point at .debs
  # the mirror has since replaced: one refresh and retry covers that.
  if ! apt_get install -y --no-install-recommends "${missing[@]}"; then
    [ "$apt_updated" -eq 0 ] || die "apt-get install failed"
    apt_update_once
    apt_get install -y --no-install-recommends "${missing[@]}"
  fi
  unblock_service_starts
}

# ---------------------------------------------------------------- valkey

# Debian 13 ships valkey-server; Debian 12 has it only in bookworm-backports
# (8.0, built for bookworm: it adds valkey-tools and nothing else). A
# backports entry is safe to leave in place: its packages have priority 100,
# so apt takes from it only what is asked for by name and the upgrades of
# those, never a newer version of anything else.
write_backports_sources() {
  local content mirror
  mirror="$(apt_mirror_for_suite bookworm)"
  [ -n "$mirror" ] || die "no 'deb' entry for suite bookworm in /etc/apt/sources.list(.d):" \
    "cannot tell which Debian mirror to take bookworm-backports from"
  content="# Written by wattcloud scripts/deps.sh: valkey-server for the store tests
# (Debian 12 has it only in backports). apt takes nothing else from here
# unless asked by name.
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"
  if [ "$(cat "$BACKPORTS_SOURCES" 2>/dev/null)" != "${content%$'\n'}" ]; then
    log "writing $BACKPORTS_SOURCES"
    printf '%s' "$content" | as_root tee "$BACKPORTS_SOURCES" >/dev/null
    as_root chmod 0644 "$BACKPORTS_SOURCES"
  fi
}

install_valkey() {
  is_installed valkey-server && return 0
  if [ "$(apt_host_codename)" != bookworm ]; then
    install_pkgs valkey-server
    return 0
  fi
  write_backports_sources
  log "apt-get update (bookworm-backports only)"
  apt_get update -o Dir::Etc::SourceList="$BACKPORTS_SOURCES" \
                 -o Dir::Etc::SourceParts=- -o APT::Get::List-Cleanup=0
  log "installing valkey-server from bookworm-backports"
  block_service_starts
  apt_get install -y --no-install-recommends \
    valkey-server/bookworm-backports valkey-tools/bookworm-backports
  unblock_service_starts
}

# ---------------------------------------------------------------- libssh2

# Version string from an installed libssh2.h, or nothing.
header_version() {
  [ -r "$1" ] || return 0
  sed -n 's/^#define LIBSSH2_VERSION  *"\([^"]*\)".*/\1/p' "$1" | head -n1
}

version_ok() {
  [ -n "$1" ] && dpkg --compare-versions "$1" ge "$MIN_LIBSSH2"
}

# Our own patches to libssh2 (scripts/libssh2-patches/*.patch): their
# digest is stamped into the prefix, so a changed patch set rebuilds.
PATCH_DIR="$ROOT/scripts/libssh2-patches"
PATCH_STAMP="$PREFIX/share/wattcloud-patches.sha256"

patches_digest() {
  cat "$PATCH_DIR"/*.patch 2>/dev/null | sha256sum | cut -d' ' -f1
}

private_build_ok() {
  [ -f "$PREFIX/lib/libssh2.a" ] &&
    version_ok "$(header_version "$PREFIX/include/libssh2.h")" &&
    [ "$(cat "$PATCH_STAMP" 2>/dev/null)" = "$(patches_digest)" ]
}

# Sets TRIXIE_KEYRING for the trixie entry. debian-archive-keyring has had
# trixie's keys since 2023.3+deb12u2 (Debian 12.11); an older one gets the
# package upgraded. If that is impossible the same file still works while
# trixie's Release stays signed with bookworm's key too (it is, as of 2026);
# apt-get update fails loudly on its own if it does not.
find_trixie_keyring() {
  TRIXIE_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
  local uid='Archive Automatic Signing Key (13/trixie)'
  grep -aqF "$uid" "$TRIXIE_KEYRING" 2>/dev/null && return 0
  log "$TRIXIE_KEYRING lacks trixie's key; upgrading debian-archive-keyring"
  apt_update_once
  apt_get install -y --no-install-recommends debian-archive-keyring
  grep -aqF "$uid" "$TRIXIE_KEYRING" 2>/dev/null && return 0
  log "warning: still no trixie key in $TRIXIE_KEYRING; relying on" \
      "trixie's Release being signed with bookworm's key as well"
}

# Source only: a `deb` line would let apt offer Debian 13 binaries (and a new
# libc) to this Debian 12 system on the next upgrade.
write_trixie_sources() {
  local content mirror
  find_trixie_keyring
  # From the mirror this system already uses for its own suite.
  mirror="$(apt_mirror_for_suite "$(apt_host_codename)")"
  [ -n "$mirror" ] || die "no 'deb' entry for suite $(apt_host_codename) in" \
    "/etc/apt/sources.list(.d): cannot tell which Debian mirror to take trixie's source from"
  content="# Written by wattcloud scripts/deps.sh: Debian 13 SOURCE packages only,
# to build libssh2 >= 1.11 privately. Never add \`deb\` to Types here.
Types: deb-src
URIs: $mirror
Suites: trixie
Components: main
Signed-By: $TRIXIE_KEYRING
"
  if [ "$(cat "$TRIXIE_SOURCES" 2>/dev/null)" != "${content%$'\n'}" ]; then
    log "writing $TRIXIE_SOURCES"
    printf '%s' "$content" | as_root tee "$TRIXIE_SOURCES" >/dev/null
    as_root chmod 0644 "$TRIXIE_SOURCES"
  fi
}

# Refreshes only the trixie source index: the system's own lists are left as
# they are, so this does not count as the run's general apt-get update.
update_trixie_sources() {
  log "apt-get update (trixie deb-src only)"
  apt_get update -o Dir::Etc::SourceList="$TRIXIE_SOURCES" \
                 -o Dir::Etc::SourceParts=- -o APT::Get::List-Cleanup=0
}

build_private_libssh2() {
  local started=$SECONDS
  install_pkgs dpkg-dev cmake build-essential libssl-dev pkg-config patch
  write_trixie_sources
  update_trixie_sources

  tmpdir="$(mktemp -d "${TMPDIR:-/tmp}/wattcloud-libssh2.XXXXXX")"
  # apt downloads as the unprivileged _apt user when it can write the target.
  if [ "$(id -u)" -eq 0 ] && getent passwd _apt >/dev/null; then
    chown _apt "$tmpdir"
  fi
  log "downloading libssh2/trixie source into $tmpdir"
  (cd "$tmpdir" && apt-get -q source --download-only libssh2/trixie)

  local dsc src
  dsc="$(ls "$tmpdir"/libssh2_*.dsc)"
  src="$tmpdir/src"
  # The extract applies Debian's patches too, which carry security fixes.
  log "(dpkg-source cannot check the uploader's signature without the" \
      "debian-keyring package; apt has already checked every file against" \
      "trixie's signed Release, so its warning about that is expected)"
  dpkg-source -x "$dsc" "$src"
  local p
  for p in "$PATCH_DIR"/*.patch; do
    [ -e "$p" ] || continue
    log "applying $(basename "$p")"
    patch -d "$src" -p1 --quiet < "$p"
  done

  # Built the way Debian builds its own package (build type None plus
  # dpkg-buildflags: -O2 -g and hardening), the -g also gives sanitizer
  # reports readable frames inside libssh2. Zlib stays off: a static
  # libssh2 with it would need -lz, which our CMakeLists does not link,
  # and the relay carries already-encrypted data that does not compress.
  local cflags
  cflags="$(dpkg-buildflags --get CFLAGS) $(dpkg-buildflags --get CPPFLAGS)"
  log "building libssh2 from $(basename "$dsc")"
  cmake -S "$src" -B "$tmpdir/build" \
    -DCMAKE_BUILD_TYPE=None \
    -DCMAKE_C_FLAGS="$cflags" \
    -DBUILD_SHARED_LIBS=OFF \
    -DBUILD_STATIC_LIBS=ON \
    -DCRYPTO_BACKEND=OpenSSL \
    -DENABLE_ZLIB_COMPRESSION=OFF \
    -DBUILD_EXAMPLES=OFF \
    -DBUILD_TESTING=OFF \
    -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
    -DCMAKE_INSTALL_PREFIX="$PREFIX" \
    -DCMAKE_INSTALL_LIBDIR=lib
  cmake --build "$tmpdir/build" -j2

  # Install beside the prefix and swap it in, so an interrupted run never
  # leaves a half-installed prefix that the skip check would accept.
  local parent stage
  parent="$(dirname "$PREFIX")"
  as_root mkdir -p "$parent"
  stage="$parent/.$(basename "$PREFIX").new"
  as_root rm -rf "$stage"
  as_root env DESTDIR="$stage" cmake --install "$tmpdir/build"
  as_root rm -rf "$PREFIX"
  as_root mv "$stage$PREFIX" "$PREFIX"
  as_root rm -rf "$stage"
  as_root mkdir -p "$(dirname "$PATCH_STAMP")"
  patches_digest | as_root tee "$PATCH_STAMP" >/dev/null

  private_build_ok || die "libssh2 install in $PREFIX failed its own check"
  log "built libssh2 $(header_version "$PREFIX/include/libssh2.h") in" \
      "$((SECONDS - started)) s"
}

# The deb-src entry must never bring Debian 13 binaries into view. Both what
# the sources configure and what the fetched Release files say are checked,
# since a `deb ... stable` line means trixie too nowadays. The slower
# `apt-get -s upgrade` proof runs only right after a build.
check_no_trixie_binaries() {
  # shellcheck disable=SC2016  # apt expands $(...) in its format, not bash
  if apt-get indextargets --no-release-info --format '$(TARGET_OF) $(RELEASE)' |
      grep -qE '^deb trixie(-|$)' ||
     LC_ALL=C apt-cache policy | grep -q 'n=trixie[-,].*b='; then
    die "apt knows Debian 13 (trixie) binary packages on this system;" \
        "remove the 'deb' trixie entry before going on"
  fi
  if [ "${1:-}" = --upgrade ] && LC_ALL=C apt-get -s upgrade 2>/dev/null |
      grep -E '^Inst ' | grep -qE 'trixie|Debian(-Security)?:13'; then
    die "apt-get upgrade would pull packages from Debian 13 (trixie)"
  fi
}

# 1 when this system is Debian 13 or later: trixie's packages are its own,
# and the checks against pulling them into Debian 12 do not apply.
host_is_trixie_or_later() {
  local v
  v="$(sed -n 's/^VERSION_ID=//p' /etc/os-release 2>/dev/null | tr -d '"')"
  [ -n "$v" ] && [ "${v%%.*}" -ge 13 ] 2>/dev/null
}

# The system's libssh2 (WC_LIBSSH2=system): 1.11 or newer from Debian, or
# a clear refusal.
use_system_libssh2() {
  local v cand
  v="$(pkg-config --modversion libssh2 2>/dev/null || true)"
  if ! version_ok "$v"; then
    cand="$(candidate libssh2-1-dev)"
    if [ -z "$cand" ] && [ "$apt_updated" -eq 0 ]; then
      apt_update_once
      cand="$(candidate libssh2-1-dev)"
    fi
    version_ok "$cand" ||
      die "WC_LIBSSH2=system, but this system's libssh2 is ${cand:-not available}" \
          "(1.11 or newer is needed); unset WC_LIBSSH2 to build our own"
    install_pkgs libssh2-1-dev
    v="$(pkg-config --modversion libssh2)"
    version_ok "$v" || die "libssh2-1-dev $cand installed but pkg-config says '$v'"
  fi
  LIBSSH2_USED="system libssh2 $v, without our patches (WC_LIBSSH2=system)"
}

# Sets LIBSSH2_USED to a description of the libssh2 the build will take,
# choosing the same way our CMakeLists does: by default our private static
# build of Debian 13's libssh2 with our patches (on Debian 12 and 13 alike:
# the patches are what make the relay faster than OpenSSH's sftp,
# bench/RESULTS.md); with WC_LIBSSH2=system the system's own.
ensure_libssh2() {
  case "${WC_LIBSSH2:-}" in
    system) use_system_libssh2; return 0 ;;
    ""|private) ;;
    *) die "WC_LIBSSH2 must be 'private', 'system' or unset, not '$WC_LIBSSH2'" ;;
  esac
  if private_build_ok; then
    log "private libssh2 in $PREFIX is current; not rebuilding"
    host_is_trixie_or_later || check_no_trixie_binaries
  else
    build_private_libssh2
    host_is_trixie_or_later || check_no_trixie_binaries --upgrade
  fi
  LIBSSH2_USED="private static libssh2 $(header_version "$PREFIX/include/libssh2.h")"
  LIBSSH2_USED+=" with our patches in $PREFIX"
}

# ---------------------------------------------------------------- main

install_pkgs "${BUILD_PKGS[@]}"
if [ "$want_test" -eq 1 ]; then
  install_pkgs "${TEST_PKGS[@]}"
  install_valkey
  # sshd refuses to start without its privilege-separation directory, and
  # /run is a tmpfs, so this is needed after every boot.
  as_root install -d -m 0755 /run/sshd
fi
ensure_libssh2
echo "deps: OK; libssh2 for the build: $LIBSSH2_USED"
