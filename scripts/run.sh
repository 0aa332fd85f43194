#!/usr/bin/env bash
# The one command that builds the relay and runs it in the foreground with
# working defaults (listen 127.0.0.1:8443, the relay's own default). Settings
# come from the environment and, if present, /etc/wattcloud/wattcloud.env.
#
# Usage: scripts/run.sh [relay arguments...]   e.g. scripts/run.sh --help
# Env: WC_SKIP_DEPS=1 skips scripts/deps.sh; any relay setting (BIND_ADDR...).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ENV_FILE=/etc/wattcloud/wattcloud.env

# build.sh runs deps.sh first unless WC_SKIP_DEPS=1. Its output goes to
# stderr so that the relay's stdout stays the only thing on stdout.
bash "$root/scripts/build.sh" "$root/build" >&2

# Defaults are deliberately not exported here: variables already in the
# environment win over the env file, so exporting one would silently
# override what the operator wrote there.
args=()
if [ -e "$ENV_FILE" ]; then
  case " $* " in
    *" --env-file "*|*" --env-file="*) ;;  # the caller chose one already
    *)
      [ -r "$ENV_FILE" ] ||
        echo "run: warning: $ENV_FILE is not readable by $(id -un)" >&2
      args+=(--env-file "$ENV_FILE") ;;
  esac
fi

exec "$root/build/wattcloud-relay" "${args[@]}" "$@"
