#!/usr/bin/env bash
# Runs scripts/test.sh inside a fresh Debian 13 (trixie) root file system, the
# way a newcomer's new machine would run it: a debootstrap minbase + git, a
# copy of this checkout in /root/wattcloud (mode 0700, as after `git clone`
# in root's home), and nothing else installed until scripts/test.sh installs
# it. Must run as root on a Debian host (it uses debootstrap, chroot and
# mount namespaces).
#
# Usage: scripts/debian13.sh [--reuse] [--shell | --bench [BENCH_ARGS...] |
#                                       --tests [TEST_ARGS...]]
#   --reuse   keep the packages installed by the previous run (skips the
#             ~2 min install; the default starts from the bare debootstrap)
#   --shell   open a shell in the prepared root instead of running the tests
#   --bench   run bench/run.sh BENCH_ARGS there instead of the tests, and
#             copy its bench/RESULTS.md back into this checkout
#   --tests   run scripts/test.sh TEST_ARGS (a subset: [--ctest REGEX]
#             [PYTEST_ARGS...], see scripts/test.sh) instead of all tests
# Env: WC_DEB13_CACHE (default /var/cache/wattcloud-deb13) holds the rootfs,
#      the downloaded .debs and the last run's log; WC_TEST_QUICK=1 is passed
#      on to scripts/test.sh; WC_DEB13_MAX_AGE_DAYS (default 7) is how old
#      the debootstrap may get before it is made again.
set -euo pipefail

readonly ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly CACHE="${WC_DEB13_CACHE:-/var/cache/wattcloud-deb13}"
readonly SUITE=trixie
readonly MAX_AGE_DAYS="${WC_DEB13_MAX_AGE_DAYS:-7}"
# What a newcomer starts from. Anything else the tests need must come from
# scripts/deps.sh, or this pass fails: that is its point.
readonly INCLUDE=git
# Bump when the way the base is made changes, so cached bases are remade.
readonly BASE_FORMAT=1
readonly BASE="$CACHE/base"
readonly WORK="$CACHE/root"
readonly DEBS="$CACHE/debs"
readonly LOG="$CACHE/last-run.log"
readonly CHECKOUT=/root/wattcloud

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
log() { printf 'debian13: %s\n' "$*" >&2; }
die() { printf 'debian13: ERROR: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------ inside the namespace

# Runs as PID 1 of a private mount and PID namespace (see the end of this
# file): every mount made here disappears with the namespace, and every
# process left in the root (a stray sshd, a relay) is killed with it, on
# success, failure or Ctrl-C alike. The explicit unmount is only so that the
# order is clean while we still run.
inside() {
  local mode="$1" root="$2"
  shift 2
  INSIDE_ROOT="$root"
  umount_all() {
    local m
    for m in var/cache/apt/archives tmp run dev sys proc; do
      umount -R "$INSIDE_ROOT/$m" 2>/dev/null ||
        umount -lR "$INSIDE_ROOT/$m" 2>/dev/null || true
    done
  }
  trap umount_all EXIT

  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys"
  # /dev with /dev/pts and /dev/shm beneath it (Chromium needs /dev/shm).
  mount --rbind /dev "$root/dev"
  # A booted Debian 13 has /run and /tmp as fresh tmpfs; sshd needs /run/sshd.
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
  mkdir -p "$root/var/cache/apt/archives"
  mount --bind "$DEBS" "$root/var/cache/apt/archives"

  local env=(env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash
             TERM="${TERM:-dumb}" LANG=C.UTF-8
             PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
             WC_TEST_QUICK="${WC_TEST_QUICK:-0}" WC_LIBSSH2="${WC_LIBSSH2:-}"
             WC_BENCH_COMMIT="${WC_BENCH_COMMIT:-}" WC_BENCH_DIRTY="${WC_BENCH_DIRTY:-}")
  if [ "$mode" = shell ]; then
    chroot "$root" "${env[@]}" /bin/bash -l
  elif [ "$mode" = bench ]; then
    chroot "$root" "${env[@]}" /bin/bash -c 'cd "$0" && exec bash bench/run.sh "$@"' \
      "$CHECKOUT" "$@"
  else
    local rc=0
    # The packages first, while the mirror is reachable (scripts/test.sh
    # runs scripts/deps.sh again and then finds nothing to fetch).
    chroot "$root" "${env[@]}" /bin/bash -c 'cd "$0" && exec bash scripts/deps.sh --test' \
      "$CHECKOUT" || rc=$?
    # Then the tests in a network namespace of their own, with only a
    # loopback: their ports and abstract sockets cannot meet those of a
    # test run on the host at the same time (.ci/run runs the Debian 12
    # pass alongside), and nothing in them can reach beyond the machine.
    if [ "$rc" -eq 0 ]; then
      unshare --net -- /bin/bash -c 'ip link set lo up && exec "$@"' loopback-only \
        chroot "$root" "${env[@]}" /bin/bash -c 'cd "$0" && exec bash scripts/test.sh "$@"' \
        "$CHECKOUT" "$@" || rc=$?
    fi
    # The .deb cache is kept between runs: drop the versions the mirror no
    # longer has, so it does not grow with every point release.
    chroot "$root" "${env[@]}" apt-get -qq autoclean >/dev/null 2>&1 || true
    return "$rc"
  fi
}

if [ "${1:-}" = --inside ]; then
  shift
  inside "$@"
  exit $?
fi

# ------------------------------------------------------------ arguments

reuse=0
mode=test
# The arguments of --bench (for bench/run.sh) or --tests (for scripts/test.sh).
mode_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --reuse) reuse=1 ;;
    --shell) mode=shell ;;
    --bench) mode=bench; shift; mode_args=("$@"); break ;;
    --tests) mode=test; shift; mode_args=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot and mount need it)"
case "$CACHE" in /*) ;; *) die "WC_DEB13_CACHE must be an absolute path" ;; esac
case "$CACHE/" in "$ROOT"/*) die "WC_DEB13_CACHE must be outside the checkout" ;; esac
[ -r /etc/os-release ] && grep -q '^ID=debian' /etc/os-release ||
  die "the host must be Debian (debootstrap and its keyring come from apt)"

mkdir -p "$CACHE" "$DEBS"
chmod 0755 "$CACHE"
# One run at a time per cache: two would share one root file system.
exec 9>"$CACHE/lock"
flock -n 9 || die "another scripts/debian13.sh is using $CACHE"

# Nothing may be mounted under the cache before we delete or copy there; our
# own mounts live only in the namespace, so any found here come from elsewhere.
check_nothing_mounted() {
  if awk -v c="$CACHE/" 'index($5 "/", c) == 1 { found = 1 } END { exit !found }' \
       /proc/self/mountinfo; then
    die "something is mounted under $CACHE; unmount it first" \
        "(grep $CACHE /proc/self/mountinfo)"
  fi
}

# ------------------------------------------------------------ the mirror

# shellcheck source=scripts/apt-mirror.sh
. "$ROOT/scripts/apt-mirror.sh"

find_mirrors() {
  local codename
  codename="$(apt_host_codename)"
  [ -n "$codename" ] || die "no VERSION_CODENAME in /etc/os-release"
  MIRROR="$(apt_mirror_for_suite "$codename")"
  [ -n "$MIRROR" ] ||
    die "no 'deb' entry for suite $codename in /etc/apt/sources.list(.d):" \
        "cannot tell which Debian mirror to debootstrap from"
  SECURITY_MIRROR="$(apt_mirror_for_suite "$codename-security")"
}

# ------------------------------------------------------------ host tools

ensure_host_tools() {
  local need=()
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v unshare >/dev/null || need+=(util-linux)
  command -v ip >/dev/null || need+=(iproute2)
  if [ "${#need[@]}" -gt 0 ]; then
    log "installing on the host: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends "${need[@]}" ||
      { DEBIAN_FRONTEND=noninteractive apt-get -q update &&
        DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends "${need[@]}"; }
  fi
  [ -e "/usr/share/debootstrap/scripts/$SUITE" ] ||
    die "this debootstrap does not know $SUITE; upgrade the debootstrap package"
  KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
  grep -aqF 'Archive Automatic Signing Key (13/trixie)' "$KEYRING" 2>/dev/null ||
    die "$KEYRING lacks Debian 13's key; upgrade debian-archive-keyring"
}

# ------------------------------------------------------------ the base root

base_stamp() {
  printf 'format=%s suite=%s mirror=%s security=%s include=%s arch=%s\n' \
    "$BASE_FORMAT" "$SUITE" "$MIRROR" "${SECURITY_MIRROR:-none}" "$INCLUDE" \
    "$(dpkg --print-architecture)"
}

base_ok() {
  [ -f "$BASE.stamp" ] && [ -x "$BASE/usr/bin/apt-get" ] && [ -x "$BASE/usr/bin/git" ] &&
    grep -q "^VERSION_CODENAME=$SUITE\$" "$BASE/etc/os-release" 2>/dev/null &&
    [ "$(cat "$BASE.stamp")" = "$(base_stamp)" ] &&
    [ -z "$(find "$BASE.stamp" -mtime "+$MAX_AGE_DAYS")" ]
}

# The sources a Debian 13 installer would write, on this host's mirror.
write_chroot_sources() {
  local r="$1"
  rm -f "$r/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' \
      "$MIRROR" "$SUITE" "$SUITE"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [ -n "$SECURITY_MIRROR" ]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' \
        "$SECURITY_MIRROR" "$SUITE"
      printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
  } >"$r/etc/apt/sources.list.d/debian.sources"
}

make_base() {
  local started=$SECONDS tmp="$BASE.new"
  check_nothing_mounted
  rm -rf "$tmp" "$BASE" "$BASE.stamp"
  log "debootstrap --variant=minbase --include=$INCLUDE $SUITE from $MIRROR"
  # The .debs are kept in our cache, so the next debootstrap (after
  # MAX_AGE_DAYS) only downloads what changed.
  if ! debootstrap --variant=minbase --include="$INCLUDE" --keyring="$KEYRING" \
       --cache-dir="$DEBS" "$SUITE" "$tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
    tail -n 30 "$CACHE/debootstrap.log" >&2
    [ -f "$tmp/debootstrap/debootstrap.log" ] && tail -n 30 "$tmp/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (full log: $CACHE/debootstrap.log)"
  fi
  write_chroot_sources "$tmp"
  # A container-like root: no daemons may start from package scripts until
  # deps.sh says so itself (it writes its own policy-rc.d when none exists,
  # and removes it again), so none is left here.
  mv "$tmp" "$BASE"
  base_stamp >"$BASE.stamp"
  log "base root made in $((SECONDS - started)) s"
}

# ------------------------------------------------------------ the run's root

prepare_work_root() {
  local started=$SECONDS
  check_nothing_mounted
  # A root whose package installation was cut short (an interrupted run:
  # dpkg's journal in updates/ is not empty) is made afresh, not reused.
  if [ "$reuse" -eq 1 ] && [ -f "$WORK/.wattcloud-base" ] &&
     [ "$(cat "$WORK/.wattcloud-base")" = "$(cat "$BASE.stamp")" ] &&
     [ -z "$(ls -A "$WORK/var/lib/dpkg/updates" 2>/dev/null)" ]; then
    log "reusing $WORK (packages of the previous run kept)"
    rm -rf "$WORK$CHECKOUT"
  else
    rm -rf "$WORK"
    cp -a "$BASE" "$WORK"
    cp "$BASE.stamp" "$WORK/.wattcloud-base"
  fi
  # Name resolution as on the host; the chroot shares its network.
  cp -L /etc/resolv.conf "$WORK/etc/resolv.conf"

  # The checkout as a clone would leave it: tracked and new files of the
  # working tree (so uncommitted work is tested too), without build output.
  install -d -m 0700 "$WORK/root"
  mkdir -p "$WORK$CHECKOUT"
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
     while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
     tar --null -T - -cf -) | tar -C "$WORK$CHECKOUT" -xf -
  log "root ready in $((SECONDS - started)) s: $WORK (checkout in $CHECKOUT)"
}

# ------------------------------------------------------------ the namespace

# The namespace's first process is PID 1 there: when it is killed, the
# kernel kills everything else in the namespace and drops its mounts.
# unshare blocks SIGINT/SIGTERM while it waits, so a signal to this script
# kills that process itself; --kill-child covers unshare being killed.
ns_pid=""

stop_namespace() {
  local child
  [ -n "$ns_pid" ] || return 0
  for child in $(pgrep -P "$ns_pid" 2>/dev/null); do kill -KILL "$child" 2>/dev/null || true; done
  wait "$ns_pid" 2>/dev/null || true
  ns_pid=""
}

on_signal() {
  log "interrupted: killing everything in the Debian 13 root"
  stop_namespace
  exit 130
}

# ------------------------------------------------------------ main

# All of it in one function, read whole before it runs: bash reads a script
# as it goes, and an edit of this file during a run would otherwise change
# what the rest of the run does.
main() {
  ensure_host_tools
  find_mirrors
  if base_ok; then
    log "base root $BASE is current ($(cat "$BASE.stamp"))"
  else
    make_base
  fi
  prepare_work_root

  trap on_signal INT TERM

  started=$SECONDS
  ns=(unshare --mount --pid --kill-child --propagation private --)
  if [ "$mode" = shell ]; then
    # In the foreground, so the shell gets the terminal; leaving it ends all.
    exec "${ns[@]}" bash "$0" --inside shell "$WORK"
  fi

  # The copy has no .git: bench.py is told which commit it measures.
  WC_BENCH_COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  WC_BENCH_DIRTY="$(git -C "$ROOT" status --porcelain -- relay proto 2>/dev/null || true)"
  export WC_BENCH_COMMIT WC_BENCH_DIRTY
  what="scripts/test.sh${mode_args[*]:+ ${mode_args[*]}}"
  [ "$mode" = bench ] && what="bench/run.sh ${mode_args[*]}"
  log "running $what in Debian 13 (log: $LOG)"
  "${ns[@]}" bash "$0" --inside "$mode" "$WORK" "${mode_args[@]}" > >(tee "$LOG") 2>&1 &
  ns_pid=$!
  rc=0
  wait "$ns_pid" || rc=$?
  ns_pid=""
  check_nothing_mounted
  if [ "$mode" = bench ] && [ -f "$WORK$CHECKOUT/bench/RESULTS.md" ]; then
    # bench.py kept the other sections of the file it was given (this
    # checkout's, copied in): copying it back loses nothing.
    cp "$WORK$CHECKOUT/bench/RESULTS.md" "$ROOT/bench/RESULTS.md"
    log "bench/RESULTS.md copied back from Debian 13"
  fi
  log "$what in Debian 13 finished in $((SECONDS - started)) s, exit $rc"
  exit "$rc"
}

main; exit $?
