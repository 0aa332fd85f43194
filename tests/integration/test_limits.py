"""PROTOCOL §3 timeouts and §4 abuse limits, each on a relay of its own."""

import os
import signal
import time

import websocket

from helpers import LOCAL, login, wait_until
from sshd import TEST_PASSWORD, TEST_USER
from wsclient import open_session, upgrade_status


def fail_auth_once(relay, sshd):
    s = open_session(relay, LOCAL, sshd.port)
    try:
        s.expect_host_key()
        s.accept_host_key()
        resp = s.auth_password(TEST_USER, "Wc-wrong-pass-4")
        assert resp.get("error") == "authentication failed", resp
        s.expect_closed(timeout=10)
    finally:
        s.close()


def test_concurrent_sessions_per_ip(relay_factory, sshd):
    relay = relay_factory(SFTP_MAX_CONCURRENT_PER_IP=3)
    sessions = [login(relay, sshd) for _ in range(3)]
    try:
        try:
            extra = open_session(relay, LOCAL, sshd.port)
        except websocket.WebSocketBadStatusException as e:
            assert e.status_code == 429, e
        else:
            extra.close()
            raise AssertionError("a 4th session was accepted with SFTP_MAX_CONCURRENT_PER_IP=3")
        # Closing one frees its slot at once (allow the close to propagate).
        sessions.pop().close()
        deadline = time.monotonic() + 2
        while True:
            try:
                sessions.append(login(relay, sshd))
                break
            except websocket.WebSocketBadStatusException as e:
                assert e.status_code == 429, e
                if time.monotonic() > deadline:
                    raise AssertionError("slot not freed 2 s after a session closed")
                time.sleep(0.1)
        assert all(s.ok("stat", path="/")["isDir"] for s in sessions)
    finally:
        for s in sessions:
            s.close()


def test_unauthenticated_sessions_count_too(relay_factory, sshd):
    relay = relay_factory(SFTP_MAX_CONCURRENT_PER_IP=3)
    waiting = []
    try:
        for _ in range(3):
            s = open_session(relay, LOCAL, sshd.port)
            waiting.append(s)
            s.expect_host_key()
        assert upgrade_status(relay, LOCAL, sshd.port) == 429
    finally:
        for s in waiting:
            s.close()


def test_idle_session_is_closed(relay_factory, sshd):
    relay = relay_factory(SFTP_IDLE_TIMEOUT_SECS=3)
    s = open_session(relay, LOCAL, sshd.port)
    try:
        s.expect_host_key()
        s.accept_host_key()
        # The idle clock runs from the last frame the relay received: the
        # auth request, so the time is taken before it is sent (a login
        # that is slow under load must not shorten the measured idle time).
        t0 = time.monotonic()
        assert s.auth_password(TEST_USER, TEST_PASSWORD) == {"id": 1, "result": {}}
        frames = s.expect_closed(timeout=10)
        elapsed = time.monotonic() - t0
        assert not any(kind == "text" and "id" not in data for kind, data in frames), frames
        # The relay counts idle time in whole seconds, so it may close up to
        # one second early.
        assert 2.0 <= elapsed <= 8, "closed after %.1f s with SFTP_IDLE_TIMEOUT_SECS=3" % elapsed
    finally:
        s.close()


def test_idle_close_is_not_lost_to_a_ping(relay_factory, sshd):
    """With a ping due at every tick (WS_PING_INTERVAL_SECS=1) the tick
    that finds the session idle also makes a ping due; the one writable
    turn it asked for sent the ping and nothing came back for the close,
    so the session stayed open (with the defaults: any idle timeout found
    on a ping tick), until CLOSE_FLUSH_SECS cut it without a Close frame.
    Now the close comes at once, a normal one (1000)."""
    relay = relay_factory(SFTP_IDLE_TIMEOUT_SECS=3, WS_PING_INTERVAL_SECS=1)
    s = login(relay, sshd)
    try:
        t0 = time.monotonic()
        assert s.ok("stat", path="/")["isDir"] is True
        s.expect_closed(timeout=20)
        elapsed = time.monotonic() - t0
        assert s.close_code == 1000 and elapsed <= 8, \
            "close code %r after %.1f s with SFTP_IDLE_TIMEOUT_SECS=3" % (s.close_code, elapsed)
        assert "CLOSE_FLUSH_SECS" not in relay.log_text()
    finally:
        s.close()


def test_active_session_is_not_idle(relay_factory, sshd):
    relay = relay_factory(SFTP_IDLE_TIMEOUT_SECS=3)
    s = login(relay, sshd)
    try:
        for _ in range(6):
            time.sleep(1)
            assert s.ok("stat", path="/")["isDir"] is True
    finally:
        s.close()


def test_auth_failures_block_the_ip(relay_factory, sshd):
    relay = relay_factory()
    for _ in range(4):
        fail_auth_once(relay, sshd)
    # Successful logins are refunded: they do not count towards the block.
    for _ in range(3):
        login(relay, sshd).close()
    fail_auth_once(relay, sshd)  # the 5th failure
    assert upgrade_status(relay, LOCAL, sshd.port) == 429


def test_four_auth_failures_do_not_block(relay_factory, sshd):
    relay = relay_factory()
    for _ in range(4):
        fail_auth_once(relay, sshd)
    s = login(relay, sshd)
    s.close()


def test_target_spray_blocks_the_ip(relay_factory, sshd):
    relay = relay_factory()
    # Six distinct targets (nothing listens on the other loopback addresses:
    # the sessions fail after the upgrade, which is enough to count).
    for i in range(2, 7):
        assert upgrade_status(relay, "127.0.0.%d" % i, sshd.port) == 101
    upgrade_status(relay, "127.0.0.7", sshd.port)
    assert upgrade_status(relay, LOCAL, sshd.port) == 429
    assert upgrade_status(relay, "127.0.0.2", sshd.port) == 429


class FrozenServer:
    """Stops (SIGSTOP) the sshd processes of the sessions opened inside the
    `with` block, as if the server hung; kills them on exit."""

    def __init__(self, sshd):
        self.sshd = sshd
        self.before = sshd.descendant_pids()
        self.frozen = set()

    def freeze(self):
        self.frozen = self.sshd.descendant_pids() - self.before
        assert self.frozen, "no sshd process for the new session"
        for pid in self.frozen:
            os.kill(pid, signal.SIGSTOP)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for pid in self.frozen:
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass


def test_dead_ssh_connection_is_detected_by_keepalive(relay_factory, sshd):
    relay = relay_factory(SSH_KEEPALIVE_SECS=1, SSH_KEEPALIVE_COUNT=2)
    with FrozenServer(sshd) as server:
        s = login(relay, sshd)
        try:
            server.freeze()
            t0 = time.monotonic()
            frames = s.expect_closed(timeout=15)
            elapsed = time.monotonic() - t0
            assert not any(kind == "text" and "id" not in data for kind, data in frames), frames
            assert elapsed >= 1, "closed after %.1f s: before any keepalive was due" % elapsed
        finally:
            s.close()


def test_hung_sftp_operation_times_out(relay_factory, sshd):
    relay = relay_factory(SFTP_OP_TIMEOUT_SECS=2)
    with FrozenServer(sshd) as server:
        s = login(relay, sshd)
        try:
            server.freeze()
            t0 = time.monotonic()
            rid = s.send_request("stat", {"path": "/"})
            # Either an error on this id, or (connection declared dead) a close.
            kind, frame = s.recv_frame(timeout=12)
            elapsed = time.monotonic() - t0
            if kind == "text":
                assert frame.get("id") == rid and "error" in frame, frame
            else:
                assert kind == "close", (kind, frame)
            assert 1.5 <= elapsed <= 8, "answered after %.1f s, SFTP_OP_TIMEOUT_SECS=2" % elapsed
        finally:
            s.close()


def test_max_sessions_for_the_whole_process(relay_factory, sshd):
    """MAX_SESSIONS counts every live session; the next upgrade gets 503."""
    relay = relay_factory(MAX_SESSIONS=2, SFTP_MAX_CONCURRENT_PER_IP=10)
    sessions = [login(relay, sshd) for _ in range(2)]
    try:
        assert upgrade_status(relay, LOCAL, sshd.port) == 503
        sessions.pop().close()
        assert wait_until(lambda: upgrade_status(relay, LOCAL, sshd.port) == 101, 5)
    finally:
        for s in sessions:
            s.close()
