"""SFTP READ requests are sized by the server's limits@openssh.com answer.

libssh2 asks for 30000 bytes per READ whatever the server allows; with our
libssh2 patch (scripts/libssh2-patches/sftp-read-size.patch) the relay asks
OpenSSH's sftp-server for its limits and reads 255 KiB per request, which is
what makes downloads cheap (bench/RESULTS.md). The evidence comes from the
other side: the sftp-server of the `sftp_debug` variant logs every READ with
its length. A relay built against a libssh2 without the patch must keep
libssh2's 30000 bytes, and its --version says which it is.
"""

import os
import re

import procinfo
from helpers import LOCAL, make_file, pattern
from sshd import TEST_PASSWORD, TEST_USER
from wsclient import open_session

MiB = 1024 * 1024
LIBSSH2_READ_SIZE = 30000
# OpenSSH's sftp-server answers READs of up to SFTP_MAX_MSG_LENGTH - 1024.
OPENSSH_MAX_READ = 256 * 1024 - 1024

# internal-sftp -l DEBUG1: 'request 7: read "/path" (handle 0) off 0 len 261120'
READ_LINE = re.compile(r'request \d+: read "(?P<path>[^"]*)" \(handle \d+\) '
                       r'off (?P<off>\d+) len (?P<len>\d+)')


def relay_sizes_reads(relay_bin):
    return "SFTP read size from limits@openssh.com" in procinfo.relay_version(relay_bin)


def read_lengths(server, path):
    return [int(m.group("len")) for m in READ_LINE.finditer(server.sftp_log())
            if m.group("path") == path]


def test_reads_use_the_size_the_server_promised(relay_factory, sshd_variant, workdir):
    server = sshd_variant("sftp_debug")
    relay = relay_factory(extra_ports=[server.port], LOG_LEVEL="debug")
    data = pattern(3 * MiB + 12345, seed=7)
    path = make_file(os.path.join(workdir, "big.bin"), data)

    s = open_session(relay, LOCAL, server.port)
    try:
        s.expect_host_key()
        s.accept_host_key()
        assert s.auth_password(TEST_USER, TEST_PASSWORD) == {"id": 1, "result": {}}
        assert s.download(path) == data
        # The legacy whole-file read goes the same way.
        resp, body = s.call_then_binary("read", path=path)
        assert resp["result"] == {"size": len(data)} and body == data
    finally:
        s.close()

    lengths = read_lengths(server, path)
    assert lengths, "sftp-server logged no READ of %s:\n%s" % (path, server.sftp_log()[-2000:])
    if relay_sizes_reads(relay.binary):
        # Every request asks for all the server promised, never a tail.
        want = OPENSSH_MAX_READ
        assert set(lengths) == {want}, sorted(set(lengths))
    else:
        want = LIBSSH2_READ_SIZE
        assert max(lengths) == want, sorted(set(lengths))
    assert "SFTP reads of %d bytes" % want in relay.log_text()
