"""Deployment, graceful stop (issue "Deployment" item 6): on SIGTERM the
relay stops taking sessions (upgrade 503, /ready 503), lets each live
session finish the operation it is in, closes sessions as they go idle,
and exits 0 within SHUTDOWN_GRACE_SECS plus a few seconds.

An operation is held "in flight" for as long as a test needs by stopping
(SIGSTOP) the sshd processes of that one session: the relay has sent the
write and waits for the server's answer, exactly as with a slow server."""

import os
import signal
import time

import pytest
import websocket

from frozen import FrozenSessions
from helpers import LOCAL, login, pattern
from waits import leave, wait_for_log, wait_relay_read_all
from wsclient import MiB, upgrade_status

GRACE = 6
SLACK = 5  # DRAIN_FORCE_SECS in server.c plus scheduling


def ready_status(relay):
    try:
        return relay.http("GET", "/ready", timeout=2)[0]
    except OSError:
        return None


def frames_for(session, secs):
    """The frames that arrive within `secs`; fails on a close."""
    frames, deadline = [], time.monotonic() + secs
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return frames
        try:
            kind, data = session.recv_frame(timeout=left)
        except (websocket.WebSocketTimeoutException, OSError):
            return frames
        assert kind != "close", "closed while its operation was in progress; " \
            "frames before: %r" % frames
        frames.append((kind, data))


def test_sigterm_drains_idle_and_busy_sessions(relay_factory, sshd, workdir):
    relay = relay_factory(SHUTDOWN_GRACE_SECS=GRACE)
    idle = login(relay, sshd)
    assert idle.ok("stat", path="/")["isDir"] is True
    with FrozenSessions(sshd) as server:
        busy = login(relay, sshd)
        try:
            handle = busy.write_open(os.path.join(workdir, "drain-upload.bin"))
            assert busy.write_chunk(handle, pattern(MiB, seed=5))["result"] == {}
            assert relay.http("GET", "/ready")[0] == 200

            # A write_chunk in flight: the server has stopped answering.
            server.freeze()
            rid = busy.send_request("write_chunk", {"handle": handle})
            busy.send_binary(pattern(4 * MiB, seed=6))
            wait_relay_read_all(relay, busy.ws.sock)
            t0 = time.monotonic()
            relay.proc.send_signal(signal.SIGTERM)

            wait_for_log(relay, r"draining: ")
            assert ready_status(relay) == 503
            assert upgrade_status(relay, LOCAL, sshd.port) == 503
            # The refusal is logged with the client, like every other.
            wait_for_log(relay, r"upgrade refused: client=127\.0\.0\.1 status=503 reason=draining")
            # The idle session is closed at once, with nothing but the close.
            assert idle.expect_closed(timeout=3) == []
            # The busy one is left to finish. With write-through the relay
            # may answer the chunk before the server has all of it (the
            # guarantee comes with write_close); either way the session
            # stays open while the write is in progress.
            frames = frames_for(busy, 2)
            assert frames in ([], [("text", {"id": rid, "result": {}})]), frames
            assert relay.proc.poll() is None

            server.thaw()
            if not frames:
                assert busy.response(rid, timeout=GRACE) == {"id": rid, "result": {}}
            assert busy.expect_closed(timeout=GRACE) == []

            rc = relay.proc.wait(timeout=GRACE + SLACK)
            elapsed = time.monotonic() - t0
            assert rc == 0, relay.log_tail(40)
            assert elapsed < GRACE, "exit %.1f s after SIGTERM: the drain waited for " \
                "the deadline instead of closing the finished session" % elapsed
            assert "draining: 2 live sessions" in relay.log_text()
        finally:
            idle.close()
            busy.close()


@pytest.mark.parametrize("browser_left", (False, True), ids=("browser_there", "browser_left"))
def test_session_busy_past_the_grace_is_cut(relay_factory, sshd, workdir, browser_left):
    """An operation still running at the deadline is cut; the relay exits 0
    within the grace plus a few seconds all the same. Also when its browser
    has left: then no WebSocket timer wakes the relay's loop, and
    lws_service() ignores its timeout (lws 4), so the loop slept until lws's
    own next timer, ~30 s away, and the relay had to be killed; server.c's
    LOOP_TICK_USECS timer wakes it."""
    grace = 2
    relay = relay_factory(SHUTDOWN_GRACE_SECS=grace)
    with FrozenSessions(sshd) as server:
        s = login(relay, sshd)
        try:
            server.write_in_flight(relay, s, os.path.join(workdir, "cut.bin"),
                                   pattern(4 * MiB, seed=7))
            if browser_left:
                leave(relay, s)
            t0 = time.monotonic()
            relay.proc.send_signal(signal.SIGTERM)
            assert relay.proc.wait(timeout=grace + SLACK + 3) == 0, relay.log_tail(40)
            elapsed = time.monotonic() - t0
            # The deadline is counted in whole seconds (time()): up to 1 s early.
            assert grace - 1.1 <= elapsed < grace + SLACK + 1, elapsed
        finally:
            s.close()


def test_session_idle_since_auth_is_closed_at_once(relay_factory, sshd):
    relay = relay_factory(SHUTDOWN_GRACE_SECS=30)
    sessions = [login(relay, sshd) for _ in range(2)]
    try:
        t0 = time.monotonic()
        relay.proc.send_signal(signal.SIGTERM)
        for s in sessions:
            assert s.expect_closed(timeout=4) == []
        assert relay.proc.wait(timeout=5) == 0
        assert time.monotonic() - t0 < 5
    finally:
        for s in sessions:
            s.close()
        if relay.proc is not None and relay.proc.poll() is None:
            relay.kill()
            relay.returncode = 0


def test_pending_binary_frame_is_an_operation_in_progress(relay_factory, sshd, workdir):
    relay = relay_factory(SHUTDOWN_GRACE_SECS=GRACE)
    s = login(relay, sshd)
    try:
        handle = s.write_open(os.path.join(workdir, "half-frame.bin"))
        rid = s.send_request("write_chunk", {"handle": handle})
        raw = websocket.ABNF.create_frame(pattern(MiB, seed=8),
                                          websocket.ABNF.OPCODE_BINARY).format()
        s.ws.sock.sendall(raw[:len(raw) // 2])
        wait_relay_read_all(relay, s.ws.sock)
        relay.proc.send_signal(signal.SIGTERM)
        # The first drain tick runs right after the "draining:" line, in the
        # same turn of the service loop; an HTTP answer after that line
        # shows the loop has moved past it, so the tick has seen the
        # half-received frame.
        wait_for_log(relay, r"draining: ")
        relay.http("GET", "/health", timeout=5)
        s.ws.sock.sendall(raw[len(raw) // 2:])
        assert s.response(rid, timeout=GRACE) == {"id": rid, "result": {}}
        assert s.expect_closed(timeout=GRACE) == []
        assert relay.proc.wait(timeout=GRACE + SLACK) == 0
    finally:
        s.close()
