"""PROTOCOL §2 steps 2-3: the host_key frame and its acceptance."""

import time

import websocket

from helpers import LOCAL, login
from waits import session_ids_since, wait_session_end
from sshd import TEST_PASSWORD, TEST_USER
from wsclient import open_session

REQUIRED_FEATURES = {"write-through", "fsync", "codes"}


def sshd_auth_lines(sshd):
    return [line for line in sshd.log().splitlines()
            if "Accepted " in line or "Failed " in line]


def test_host_key_frame_prefers_ed25519(relay, sshd):
    s = open_session(relay, LOCAL, sshd.port)
    try:
        frame = s.expect_host_key()
        assert frame["fingerprint"] == sshd.host_fingerprint("ed25519")
        assert frame["key_type"] == "ssh-ed25519"
        assert frame["relay_version"] == 3
        assert isinstance(frame["features"], list)
        assert all(isinstance(f, str) for f in frame["features"]), frame
        assert REQUIRED_FEATURES <= set(frame["features"]), frame
    finally:
        s.close()


def test_host_key_prefers_ecdsa_over_rsa(relay, sshd_ecdsa_rsa):
    s = open_session(relay, LOCAL, sshd_ecdsa_rsa.port)
    try:
        frame = s.expect_host_key()
        assert frame["fingerprint"] == sshd_ecdsa_rsa.host_fingerprint("ecdsa")
        assert frame["key_type"] == "ecdsa-sha2-nistp256"
    finally:
        s.close()


def test_host_key_of_rsa_only_server(relay, sshd_rsa_only):
    s = open_session(relay, LOCAL, sshd_rsa_only.port)
    try:
        frame = s.expect_host_key()
        assert frame["fingerprint"] == sshd_rsa_only.host_fingerprint("rsa")
        assert frame["key_type"] == "ssh-rsa"
        s.accept_host_key()
        assert s.auth_password(TEST_USER, TEST_PASSWORD) == {"id": 1, "result": {}}
        assert s.ok("stat", path="/")["isDir"] is True
    finally:
        s.close()


def test_other_json_instead_of_acceptance_closes_without_auth(relay, sshd):
    s = open_session(relay, LOCAL, sshd.port)
    try:
        s.expect_host_key()
        s.send_json({"type": "host_key_rejected"})
        # Nothing may follow: after host_key the SPA only parses {"id":...}
        # frames, and no credential may be asked for.
        assert s.expect_closed(timeout=10) == []
    finally:
        s.close()


def test_auth_request_without_acceptance_is_not_tried(relay, sshd):
    before = sshd_auth_lines(sshd)
    offset = relay.log_size()
    s = open_session(relay, LOCAL, sshd.port)
    try:
        s.expect_host_key()
        (sid,) = session_ids_since(relay, offset)
        s.send_json({"id": 1, "method": "auth",
                     "params": {"type": "password", "username": TEST_USER,
                                "password": TEST_PASSWORD}})
        frames = s.expect_closed(timeout=10)
        assert not any(kind == "text" and "result" in data for kind, data in frames), frames
    finally:
        s.close()
    # The session's end line comes after its worker let go of the SSH
    # connection: any attempt it made with the credentials is over, and
    # sshd logs an attempt before it answers it.
    wait_session_end(relay, sid)
    assert sshd_auth_lines(sshd) == before, "the relay tried the credentials"


def test_browser_close_before_acceptance_leaves_relay_usable(relay, sshd):
    s = open_session(relay, LOCAL, sshd.port)
    s.expect_host_key()
    s.close()
    login(relay, sshd).close()


def test_silence_after_host_key_closes_after_timeout(relay_factory, sshd):
    relay = relay_factory(HOST_KEY_TIMEOUT_SECS=3)
    s = open_session(relay, LOCAL, sshd.port)
    try:
        s.expect_host_key()
        t0 = time.monotonic()
        assert s.expect_closed(timeout=10) == []
        elapsed = time.monotonic() - t0
        assert 2.5 <= elapsed <= 7, "closed after %.1f s, HOST_KEY_TIMEOUT_SECS=3" % elapsed
    finally:
        s.close()


def test_relay_pings_while_waiting_for_acceptance(relay_factory, sshd):
    relay = relay_factory(HOST_KEY_TIMEOUT_SECS=6, WS_PING_INTERVAL_SECS=1)
    s = open_session(relay, LOCAL, sshd.port)
    try:
        s.expect_host_key()
        deadline = time.monotonic() + 4
        kinds = []
        while time.monotonic() < deadline:
            try:
                kind, _ = s.recv_frame(timeout=deadline - time.monotonic(), control=True)
            except websocket.WebSocketTimeoutException:
                break
            kinds.append(kind)
            if kind in ("ping", "close"):
                break
        assert "ping" in kinds, "no ping within 4 s with WS_PING_INTERVAL_SECS=1: %r" % kinds
    finally:
        s.close()


def test_browser_pings_do_not_extend_acceptance_wait(relay_factory, sshd):
    relay = relay_factory(HOST_KEY_TIMEOUT_SECS=3)
    s = open_session(relay, LOCAL, sshd.port)
    try:
        s.expect_host_key()
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 9 and not closed:
            try:
                s.send_ping()
            except (websocket.WebSocketConnectionClosedException, OSError):
                closed = True
                break
            try:
                kind, data = s.recv_frame(timeout=0.5, control=True)
            except websocket.WebSocketTimeoutException:
                continue
            except websocket.WebSocketConnectionClosedException:
                closed = True
                break
            assert kind in ("ping", "pong", "close"), (kind, data)
            closed = kind == "close"
        elapsed = time.monotonic() - t0
        assert closed, "session still open after 9 s of pings; HOST_KEY_TIMEOUT_SECS=3"
        assert elapsed <= 7, "closed only after %.1f s" % elapsed
    finally:
        s.close()
