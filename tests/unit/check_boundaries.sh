#!/bin/sh
# The lws/libssh2 boundary of relay/ (STYLE.md "What we take" 1): only the
# SSH side names libssh2, only the web side names libwebsockets, and the
# web side does not include the SSH side's headers (it gets the worker's
# entry point from main.c through server_run()). Comment lines are not
# read. Also: no include cycle between units of relay/ and proto/ (a unit
# is x.c with x.h). Run by ctest; exits 1 naming each crossing or cycle.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root/relay"

# The files allowed to name each library.
ssh_side="ssh_conn.c ssh_conn.h sftp_ops.c sftp_ops.h probe.c"
web_side="server.c server_ctx.h http.c http.h http_wire.c http_wire.h gate.c gate.h
ws.c ws.h static_files.c static_files.h"

in_list() {
    for item in $2; do [ "$item" = "$1" ] && return 0; done
    return 1
}

# Lines of `file` that are code: not inside or starting a comment line.
code_lines() {
    grep -nE "$2" "$1" | grep -vE '^[0-9]+:[[:space:]]*(/\*|\*|//)' || true
}

bad=0
for f in *.c *.h; do
    if ! in_list "$f" "$ssh_side"; then
        hits=$(code_lines "$f" '#include <libssh2|\blibssh2_[a-z_]+[[:space:]]*\(|\bLIBSSH2_[A-Z_]+')
        if [ -n "$hits" ]; then
            printf 'relay/%s uses libssh2 outside the SSH side:\n%s\n' "$f" "$hits"
            bad=1
        fi
    fi
    if ! in_list "$f" "$web_side"; then
        hits=$(code_lines "$f" '#include <libwebsockets|\blws_[a-z_]+[[:space:]]*\(|\bLWS_[A-Z_]+')
        if [ -n "$hits" ]; then
            printf 'relay/%s uses libwebsockets outside the web side:\n%s\n' "$f" "$hits"
            bad=1
        fi
    else
        hits=$(code_lines "$f" '#include "(worker|ssh_conn|sftp_ops)\.h"|\bworker_main\b')
        if [ -n "$hits" ]; then
            printf 'relay/%s (web side) names the SSH side:\n%s\n' "$f" "$hits"
            bad=1
        fi
    fi
done

# Every quoted include as an edge "unit included-unit"; tsort reports any
# loop. A unit including its own header is not an edge.
edges=$(cd "$root" && for f in relay/*.[ch] proto/*.[ch]; do
    from=$(basename "$f" | sed 's/\.[ch]$//')
    sed -n 's/^#include "\([^"]*\)\.h".*/\1/p' "$f" | while read -r to; do
        if [ "$to" != "$from" ]; then printf "%s %s\n" "$from" "$to"; fi
    done
done)
if ! printf '%s\n' "$edges" | tsort >/dev/null 2>/tmp/wc-tsort.$$; then
    printf 'include cycle between units:\n%s\n' "$(cat /tmp/wc-tsort.$$)"
    bad=1
fi
rm -f /tmp/wc-tsort.$$

[ "$bad" = 0 ] && echo "boundaries ok"
exit "$bad"
