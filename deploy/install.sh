#!/usr/bin/env bash
# Installs wattcloud-relay as a systemd service: builds it, installs the
# binary, its manual page and the unit, creates the settings file once, then
# enables and starts the service.
#
# Usage: deploy/install.sh [--root DIR] [--dry-run] [--binary PATH] [--domain NAME]
#   --root DIR     install under DIR instead of / (staging, packaging, tests);
#                  systemctl is not run
#   --dry-run      print what would be done and change nothing
#   --binary PATH  install this wattcloud-relay instead of building one
#   --domain NAME  BYO_DOMAIN for a newly created settings file
# Safe to re-run: binary and unit are replaced when they changed (and the
# service restarted then, which drains live sessions gracefully); the
# settings file /etc/wattcloud/wattcloud.env is never overwritten.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly repo
readonly UNIT_NAME=wattcloud-relay.service
readonly BIN_REL=usr/local/bin/wattcloud-relay
readonly UNIT_REL=etc/systemd/system/$UNIT_NAME
readonly MAN_REL=usr/local/share/man/man8/wattcloud-relay.8
readonly ENV_DIR_REL=etc/wattcloud
readonly ENV_REL=$ENV_DIR_REL/wattcloud.env

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
log() { printf 'install: %s\n' "$*"; }
die() { printf 'install: ERROR: %s\n' "$*" >&2; exit 1; }

root=/
dry_run=0
binary=""
domain=""
while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || { usage >&2; exit 2; }; root="$2"; shift 2 ;;
    --root=*) root="${1#--root=}"; shift ;;
    --dry-run) dry_run=1; shift ;;
    --binary) [ $# -ge 2 ] || { usage >&2; exit 2; }; binary="$2"; shift 2 ;;
    --binary=*) binary="${1#--binary=}"; shift ;;
    --domain) [ $# -ge 2 ] || { usage >&2; exit 2; }; domain="$2"; shift 2 ;;
    --domain=*) domain="${1#--domain=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

case "$root" in
  /*) ;;
  *) root="$(pwd)/$root" ;;
esac
root="${root%/}/"
if [ -n "$domain" ] && ! printf '%s' "$domain" | grep -Eq '^[A-Za-z0-9.-]+$'; then
  die "--domain takes a host name such as app.example.com"
fi
if [ "$root" = / ] && [ "$dry_run" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  die "installing into / needs root (or use --root DIR / --dry-run)"
fi

# Runs a command, or only shows it with --dry-run.
run() {
  if [ "$dry_run" -eq 1 ]; then
    printf 'would run: %s\n' "$*"
  else
    "$@"
  fi
}

# ------------------------------------------------------------------ build

if [ -z "$binary" ]; then
  if [ "$dry_run" -eq 1 ]; then
    printf 'would run: bash %s/scripts/build.sh\n' "$repo"
  else
    log "building (scripts/build.sh)"
    bash "$repo/scripts/build.sh" >&2
  fi
  binary="$repo/build/wattcloud-relay"
fi
if [ "$dry_run" -eq 0 ]; then
  [ -x "$binary" ] || die "$binary is not an executable"
  "$binary" --version >/dev/null || die "$binary does not run"
fi

# ------------------------------------------------------------------ files

# Installs $1 as $2 with mode $3 when the content differs; sets `changed`.
changed=0
install_file() {
  local src="$1" dst="$2" mode="$3"
  if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
    run chmod "$mode" "$dst"
    log "unchanged: $dst"
    return 0
  fi
  run install -D -m "$mode" "$src" "$dst"
  [ "$dry_run" -eq 1 ] || log "installed: $dst"
  changed=1
}

install_file "$binary" "$root$BIN_REL" 0755
install_file "$repo/systemd/$UNIT_NAME" "$root$UNIT_REL" 0644

# The manual page, as the binary prints it (its settings come from the same
# table as --help). It changes only with the binary: it restarts nothing.
if [ "$dry_run" -eq 1 ]; then
  run install -D -m 0644 "<(wattcloud-relay --man)" "$root$MAN_REL"
else
  man_tmp="$(mktemp)"
  trap 'rm -f "$man_tmp"' EXIT
  "$binary" --man >"$man_tmp" || die "$binary --man failed"
  changed_before_man=$changed
  install_file "$man_tmp" "$root$MAN_REL" 0644
  changed=$changed_before_man
  rm -f "$man_tmp"
  trap - EXIT
fi

# The settings file: created once from the example, with a fresh signing key
# and the values a same-host reverse proxy needs. Never overwritten: it is
# the operator's from then on.
env_file="$root$ENV_REL"
run install -d -m 0755 "$root$ENV_DIR_REL"
if [ -e "$env_file" ]; then
  log "kept existing $env_file (never overwritten)"
  mode="$(stat -c %a "$env_file")"
  [ "$mode" = 600 ] || log "warning: $env_file has mode $mode; it holds a secret, 600 is right"
elif [ "$dry_run" -eq 1 ]; then
  printf 'would create: %s (mode 0600) from wattcloud.env.example with a new RELAY_SIGNING_KEY\n' \
    "$env_file"
else
  command -v openssl >/dev/null || die "openssl is needed to generate RELAY_SIGNING_KEY"
  key="$(openssl rand -base64 32)"
  [ "${#key}" -eq 44 ] || die "openssl rand gave an unexpected key"
  tmp="$(mktemp "$root$ENV_DIR_REL/.wattcloud.env.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  chmod 0600 "$tmp"
  # The key is base64: no character of it is special to sed's replacement
  # except "/", so "|" delimits.
  edits=(-e "s|^#RELAY_SIGNING_KEY=\$|RELAY_SIGNING_KEY=$key|"
         -e 's|^#TRUSTED_PROXY_IPS=$|TRUSTED_PROXY_IPS=127.0.0.1|')
  if [ -n "$domain" ]; then
    edits+=(-e "s|^#BYO_DOMAIN=.*\$|BYO_DOMAIN=$domain|")
  fi
  sed "${edits[@]}" "$repo/wattcloud.env.example" >"$tmp"
  grep -q "^RELAY_SIGNING_KEY=$key\$" "$tmp" || die "could not write the key into $tmp"
  unset key
  # Check the result with the relay itself before it goes into place. The
  # variables of this shell must not mask the file's: run with none.
  env -i "$binary" --env-file "$tmp" --check-config >/dev/null ||
    die "the new settings file does not pass --check-config"
  # ln, not mv: fails instead of replacing a file that appeared meanwhile.
  ln "$tmp" "$env_file" || die "$env_file appeared during the install; left as it is"
  rm -f "$tmp"
  trap - EXIT
  log "created: $env_file (mode 0600, new RELAY_SIGNING_KEY, TRUSTED_PROXY_IPS=127.0.0.1)"
  [ -n "$domain" ] || log "edit $env_file: set BYO_DOMAIN to your domain"
fi

# ------------------------------------------------------------------ systemd

if [ "$root" != / ]; then
  log "installed under $root; not touching systemd"
  exit 0
fi
if [ ! -d /run/systemd/system ]; then
  log "systemd is not running here: start the relay yourself, e.g."
  log "  /usr/local/bin/wattcloud-relay --env-file /$ENV_REL"
  exit 0
fi
was_active=0
systemctl is-active --quiet "$UNIT_NAME" && was_active=1
run systemctl daemon-reload
run systemctl enable --now "$UNIT_NAME"
if [ "$was_active" -eq 1 ] && [ "$changed" -eq 1 ]; then
  log "restarting $UNIT_NAME for the new files (live sessions get the drain grace)"
  run systemctl restart "$UNIT_NAME"
fi
if [ "$dry_run" -eq 0 ]; then
  systemctl --no-pager --lines=5 status "$UNIT_NAME" || true
fi
# A minimal Debian has no curl: name it only where it is installed.
if command -v curl >/dev/null; then
  log "done; check with: curl -fsS http://127.0.0.1:8443/ready"
else
  log "done; check with: systemctl status $UNIT_NAME (README.md shows a" \
      "/ready check without curl)"
fi
