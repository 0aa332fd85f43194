"""A server that hangs up before its SSH banner (PROTOCOL §2.1) is told
apart from one that is not an SSH server: OpenSSH >= 9.8 PerSourcePenalties,
MaxStartups and fail2ban refuse a source address that way, and every user
of a relay shares its address."""

import time

import fakeservers
from helpers import LOCAL
from test_setup_errors import expect_setup_error
from wsclient import open_session


def setup_error(relay, port):
    s = open_session(relay, LOCAL, port)
    try:
        return expect_setup_error(s)
    finally:
        s.close()


def test_close_before_banner_is_closed_before_banner(relay_factory):
    server = fakeservers.FakeServer([("close",)])
    try:
        relay = relay_factory(extra_ports=[server.port])
        frame = setup_error(relay, server.port)
        assert frame["code"] == "closed_before_banner", frame
        assert "closed the connection before sending its SSH banner" in frame["error"], frame
        assert "PerSourcePenalties" in frame["error"], frame
        assert bytes(server.received_before_send) == b""
    finally:
        server.close()


def test_partial_banner_then_close_is_closed_before_banner(relay_factory):
    """Half a banner and a hang-up: answered at once, not after the banner
    timeout (peeking would see the same bytes until then)."""
    server = fakeservers.FakeServer([("send", b"SSH-2."), ("close",)])
    try:
        relay = relay_factory(extra_ports=[server.port], SSH_BANNER_TIMEOUT_SECS=10)
        t0 = time.monotonic()
        frame = setup_error(relay, server.port)
        assert frame["code"] == "closed_before_banner", frame
        assert time.monotonic() - t0 < 5
    finally:
        server.close()


def test_something_else_is_still_not_ssh(relay_factory):
    server = fakeservers.http_server()
    try:
        relay = relay_factory(extra_ports=[server.port])
        frame = setup_error(relay, server.port)
        assert frame["code"] == "not_ssh", frame
        assert frame["error"] == "the server is not an SSH server", frame
    finally:
        server.close()


def test_openssh_refusal_line_then_close_is_closed_before_banner(relay_factory):
    """OpenSSH >= 9.8 writes one line before it hangs up on a penalised
    source ("Not allowed at this time"; "Exceeded MaxStartups" for
    MaxStartups): still a refusal, not a non-SSH server, with its words."""
    for line in (b"Not allowed at this time\r\n", b"Exceeded MaxStartups\r\n"):
        server = fakeservers.FakeServer([("send", line), ("close",)])
        try:
            relay = relay_factory(extra_ports=[server.port])
            frame = setup_error(relay, server.port)
            assert frame["code"] == "closed_before_banner", frame
            assert line.strip().decode() in frame["error"], frame
            assert "PerSourcePenalties" in frame["error"], frame
        finally:
            server.close()


def test_one_line_without_hangup_is_still_not_ssh(relay_factory):
    """The same line from a server that stays connected is not a refusal."""
    server = fakeservers.FakeServer([("send", b"Not allowed at this time\r\n"), ("sleep", 5)])
    try:
        relay = relay_factory(extra_ports=[server.port])
        frame = setup_error(relay, server.port)
        assert frame["code"] == "not_ssh", frame
    finally:
        server.close()
