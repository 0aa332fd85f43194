"""PROTOCOL §2 steps 1 and 5: failures before the host_key frame.

The relay sends {"type":"error","code":...,"error":...} and closes. It checks
the server's banner before sending a single byte of its own.
"""

import time

import fakeservers
from helpers import LOCAL
from wsclient import open_session


def expect_setup_error(session, timeout=15):
    """The error frame, then the close. Returns the frame."""
    kind, frame = session.recv_frame(timeout=timeout)
    assert kind == "text", "expected an error frame, got %s %r" % (kind, frame)
    assert frame.get("type") == "error", frame
    assert set(frame) == {"type", "code", "error"}, frame
    assert isinstance(frame["code"], str) and frame["code"], frame
    assert isinstance(frame["error"], str) and frame["error"], frame
    assert session.expect_closed(timeout=5) == []
    return frame


def setup_error_from(relay, port):
    s = open_session(relay, LOCAL, port)
    try:
        return expect_setup_error(s)
    finally:
        s.close()


def test_connection_refused(relay_factory):
    port = fakeservers.closed_port()
    relay = relay_factory(extra_ports=[port])
    setup_error_from(relay, port)


def test_http_server_is_not_ssh(relay_factory):
    server = fakeservers.http_server()
    try:
        relay = relay_factory(extra_ports=[server.port])
        frame = setup_error_from(relay, server.port)
        assert "ssh" in (frame["code"] + frame["error"]).lower(), frame
        assert server.connections == 1
        assert bytes(server.received_before_send) == b"", \
            "the relay sent bytes before the server's banner"
    finally:
        server.close()


def test_silent_server_times_out_on_banner(relay_factory):
    server = fakeservers.silent_server()
    try:
        relay = relay_factory(extra_ports=[server.port], SSH_BANNER_TIMEOUT_SECS=2)
        s = open_session(relay, LOCAL, server.port)
        try:
            t0 = time.monotonic()
            expect_setup_error(s, timeout=10)
            elapsed = time.monotonic() - t0
        finally:
            s.close()
        assert 1.5 <= elapsed <= 6, "error after %.1f s, SSH_BANNER_TIMEOUT_SECS=2" % elapsed
        assert bytes(server.received_before_send) == b"", \
            "the relay spoke first: %r" % bytes(server.received_before_send)
    finally:
        server.close()


def not_ssh_code(relay_factory):
    """The code this relay uses for a peer that is not an SSH server."""
    server = fakeservers.http_server()
    try:
        relay = relay_factory(extra_ports=[server.port])
        return setup_error_from(relay, server.port)["code"]
    finally:
        server.close()


def test_banner_split_into_single_bytes_passes_the_check(relay_factory):
    not_ssh = not_ssh_code(relay_factory)
    server = fakeservers.trickle_banner_server(b"SSH-2.0-", delay=0.1)
    try:
        relay = relay_factory(extra_ports=[server.port])
        frame = setup_error_from(relay, server.port)
        # The banner check passed; key exchange failed on the junk after it.
        assert frame["code"] != not_ssh, frame
    finally:
        server.close()


def test_ssh_1_99_banner_passes_the_check(relay_factory):
    not_ssh = not_ssh_code(relay_factory)
    server = fakeservers.trickle_banner_server(b"SSH-1.99-", delay=0.05)
    try:
        relay = relay_factory(extra_ports=[server.port])
        frame = setup_error_from(relay, server.port)
        assert frame["code"] != not_ssh, frame
    finally:
        server.close()


def test_near_miss_banner_is_not_ssh(relay_factory):
    not_ssh = not_ssh_code(relay_factory)
    server = fakeservers.trickle_banner_server(b"SSH-2.1-", delay=0.05)
    try:
        relay = relay_factory(extra_ports=[server.port])
        frame = setup_error_from(relay, server.port)
        assert frame["code"] == not_ssh, frame
    finally:
        server.close()
