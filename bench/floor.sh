#!/usr/bin/env bash
# The relay's CPU floor per GiB relayed, one direction, on this machine:
# the SSH cipher at OpenSSL's speed (`openssl speed`, 32 KiB packets, the
# size of an SSH channel packet) + one TCP receive + one TCP send + one
# copy (+ the WebSocket unmask, upload only), from bench/floor.c. Prints
# each part and the sums; bench/RESULTS.md compares the relay with them.
#
# Usage: bench/floor.sh [CIPHER...]   (default: chacha20-poly1305 aes-128-gcm)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ciphers=("$@")
[ ${#ciphers[@]} -gt 0 ] || ciphers=(chacha20-poly1305 aes-128-gcm)

bin="$(mktemp -d)/floor"
trap 'rm -rf "$(dirname "$bin")"' EXIT
cc -O2 -Wall -Wextra -o "$bin" "$here/floor.c"
declare -A part
while read -r name secs; do part[$name]=$secs; done < <("$bin")

printf '%-36s %s\n' "part" "CPU-s/GiB"
for p in tcp_recv tcp_send copy unmask; do printf '%-36s %s\n' "$p" "${part[$p]}"; done
for c in "${ciphers[@]}"; do
  # openssl speed reports 1000s of bytes per second of CPU time.
  kbps="$(openssl speed -seconds 2 -bytes 32768 -evp "$c" 2>/dev/null | tail -n1 | awk '{print $NF}')"
  kbps="${kbps%k}"
  crypt="$(awk -v k="$kbps" 'BEGIN { printf "%.3f", 1073741824 / (k * 1000) }')"
  printf '%-36s %s\n' "$c" "$crypt"
  awk -v c="$crypt" -v r="${part[tcp_recv]}" -v s="${part[tcp_send]}" \
      -v y="${part[copy]}" -v u="${part[unmask]}" -v n="$c" 'BEGIN {
    printf "%-36s %.2f\n", "floor download, " n, c + r + s + y
    printf "%-36s %.2f\n", "floor upload, " n, c + r + s + y + u }'
done
