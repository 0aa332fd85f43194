"""OpenSSH >= 9.8 PerSourcePenalties against the relay's shared address.

Every user of one relay reaches a server from the relay's address, so a few
wrong passwords (anyone's) get the relay penalised by a user's own server,
which then closes each new connection before its SSH banner. The relay must
say so (code `closed_before_banner`, naming the likely cause) instead of
calling the server "not an SSH server".

The suite's shared servers run with penalties off (sshd.py); this test
starts its own server with OpenSSH's defaults. On an older sshd (Debian 12
ships 9.2) it is skipped: the same code path is covered there by a fake
server that closes before its banner.
"""

import pytest

import sshd as sshd_mod
from helpers import LOCAL
from sshd import TEST_USER
from wsclient import open_session

# The relay blocks an address at its own 5th failed login
# (LIMITS_AUTH_MAX_FAILURES): sshd's penalty (authfail:30s, sshd.py) must
# be in force before that; it is after the first.
MAX_WRONG_LOGINS = 4

pytestmark = pytest.mark.skipif(not sshd_mod.has_per_source_penalties(),
                                reason="this OpenSSH has no PerSourcePenalties (< 9.8)")


def first_frame(relay, port):
    """Open a session; return ('host_key', session) or ('error', frame)."""
    s = open_session(relay, LOCAL, port)
    kind, frame = s.recv_frame(timeout=15)
    assert kind == "text", "expected a text frame, got %s %r" % (kind, frame)
    if frame.get("type") == "host_key":
        return "host_key", s
    try:
        assert frame.get("type") == "error", frame
        assert s.expect_closed(timeout=5) == []
    finally:
        s.close()
    return "error", frame


def test_penalised_relay_is_told_apart_from_not_ssh(relay_factory, sshd_variant):
    server = sshd_variant("penalties")
    relay = relay_factory(extra_ports=[server.port])
    refused = None
    for attempt in range(MAX_WRONG_LOGINS + 1):
        what, got = first_frame(relay, server.port)
        if what == "error":
            refused = got
            break
        s = got
        try:
            s.accept_host_key()
            resp = s.auth_password(TEST_USER, "Wc-wrong-pass-%d" % attempt)
            assert resp.get("error") == "authentication failed", resp
            s.expect_closed(timeout=10)
        finally:
            s.close()
    assert refused is not None, (
        "sshd still answered after %d failed logins; its log:\n%s"
        % (MAX_WRONG_LOGINS, server.log()[-3000:]))
    assert refused["code"] == "closed_before_banner", refused
    assert "not an SSH server" not in refused["error"], refused
    assert "penalt" in server.log().lower(), "sshd did not log a penalty:\n%s" \
        % server.log()[-3000:]
