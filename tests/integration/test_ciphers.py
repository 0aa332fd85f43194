"""Every cipher the relay may meet carries files byte for byte.

Our libssh2 has patched cipher paths: chacha20-poly1305 through OpenSSL
(openssl-chacha-poly1305.patch) and AES-CTR / AES-GCM a whole packet per
cipher call instead of one per 16-byte block (aes-per-packet.patch); every
HMAC keyed once per key exchange and restarted for each packet
(hmac-keyed-once.patch); UMAC-64, which libssh2 does not have, written for
it and preferred (umac-64.patch): a tag that differs from OpenSSH's in one
bit ends the session at its first packet. A server offering only one cipher, and for the
HMACs only one MAC (sshd.PINNED_ALGORITHMS; some NAS firmwares and FIPS
setups offer no chacha20), forces libssh2 onto that path in both
directions: the upload is encrypted by libssh2 and decrypted by sshd, the
download the other way round. Sizes are odd on purpose, so packets end in
every padding and partial-block position; the files are checked on the
server's disk and against what the relay hands back. sshd's own log names
the algorithms it negotiated, so a pass cannot come from another cipher,
and shows the keys renewed mid-transfer (RekeyLimit).
"""

import os
import re

import pytest

from helpers import login, make_file, need_our_libssh2, pattern, read_file
from sshd import PINNED_ALGORITHMS, pinned_variant
from wsclient import KiB, MiB

# OpenSSH at LogLevel DEBUG1, once per direction:
# "kex: client->server cipher: aes128-ctr MAC: umac-64-etm@openssh.com compression: none"
KEX_LINE = re.compile(r"kex: (?P<dir>client->server|server->client) cipher: (?P<cipher>\S+) "
                      r"MAC: (?P<mac>\S+) compression")

# What an AEAD cipher's MAC is called in that line.
IMPLICIT_MAC = "<implicit>"

# The MAC libssh2 takes when the server offers all of OpenSSH's: the first
# of its own list (mac.c) that sshd has too.
LIBSSH2_FIRST_MAC = "umac-64-etm@openssh.com"

# Upload chunks and download sizes: a few MiB in all, with lengths that are
# not multiples of the cipher block, the SFTP packet or the relay's chunk.
UPLOAD_CHUNKS = (2 * MiB + 12345, 1, 17, 64 * KiB - 3, 1 * MiB + 7)
DOWNLOAD_SIZES = (0, 1, 15, 16, 17, 4095, 3 * MiB + 54321)


# The pinned variants have RekeyLimit 1M: new keys (and fresh cipher
# contexts in libssh2) several times in the middle of the transfers.
MIN_KEY_EXCHANGES = 3


def negotiated(server):
    """{direction: [(cipher, mac) of each key exchange]} from sshd's log."""
    seen = {}
    for m in KEX_LINE.finditer(server.log()):
        seen.setdefault(m.group("dir"), []).append((m.group("cipher"), m.group("mac")))
    return seen


@pytest.mark.parametrize("cipher,mac", PINNED_ALGORITHMS,
                         ids=[pinned_variant(c, m) for c, m in PINNED_ALGORITHMS])
def test_pinned_cipher_carries_files_byte_exact(relay_factory, sshd_variant, workdir,
                                                cipher, mac):
    aead = "gcm" in cipher or "chacha" in cipher
    if not aead and (mac is None or "umac" in mac):
        need_our_libssh2("umac-64.patch")  # UMAC-64 chosen, or pinned
    server = sshd_variant(pinned_variant(cipher, mac))
    relay = relay_factory(extra_ports=[server.port])
    s = login(relay, server)
    try:
        # relay -> sshd: libssh2 encrypts.
        up = os.path.join(workdir, "up.bin")
        chunks = [pattern(n, seed=i) for i, n in enumerate(UPLOAD_CHUNKS)]
        handle = s.write_open(up)
        for chunk in chunks:
            assert s.write_chunk(handle, chunk)["result"] == {}
        assert s.ok("write_close", handle=handle) == {}
        assert read_file(up) == b"".join(chunks)

        # sshd -> relay: libssh2 decrypts.
        assert s.download(up) == b"".join(chunks)
        for n in DOWNLOAD_SIZES:
            data = pattern(n, seed=100 + n)
            path = make_file(os.path.join(workdir, "down-%d.bin" % n), data)
            assert s.download(path) == data, "download of %d bytes differs" % n
    finally:
        s.close()

    seen = negotiated(server)
    want_mac = IMPLICIT_MAC if aead else mac or LIBSSH2_FIRST_MAC
    for direction in ("client->server", "server->client"):
        assert direction in seen, "sshd logged no kex line for %s:\n%s" % (
            direction, server.log()[-3000:])
        assert len(seen[direction]) >= MIN_KEY_EXCHANGES, seen
        for got_cipher, got_mac in seen[direction]:
            assert got_cipher == cipher, seen
            assert got_mac == want_mac, seen
