"""Deployment, graceful stop (issue "Deployment" item 6): on SIGTERM the
relay stops taking sessions (upgrade 503, /ready 503), lets each live
session finish the operation it is in, closes sessions as they go idle,
and exits 0 within SHUTDOWN_GRACE_SECS plus a few seconds."""

import os
import signal
import time

import websocket

from helpers import LOCAL, login, pattern, wait_until
from wsclient import MiB, upgrade_status

GRACE = 6
SLACK = 5  # DRAIN_FORCE_SECS in server.c plus scheduling


def ready_status(relay):
    try:
        return relay.http("GET", "/ready", timeout=2)[0]
    except OSError:
        return None


def test_sigterm_drains_idle_and_busy_sessions(relay_factory, sshd, workdir):
    relay = relay_factory(SHUTDOWN_GRACE_SECS=GRACE)
    idle = login(relay, sshd)
    busy = login(relay, sshd)
    try:
        assert relay.http("GET", "/ready")[0] == 200
        path = os.path.join(workdir, "drain-upload.bin")
        handle = busy.write_open(path)
        assert busy.write_chunk(handle, pattern(4 * MiB, seed=5))["result"] == {}

        # A write_chunk in flight: its 16 MiB frame is sent, its answer not
        # read, when SIGTERM arrives.
        rid = busy.send_request("write_chunk", {"handle": handle})
        busy.send_binary(pattern(16 * MiB, seed=6))
        t0 = time.monotonic()
        relay.proc.send_signal(signal.SIGTERM)

        assert wait_until(lambda: ready_status(relay) == 503, 2), "/ready did not turn 503"
        assert upgrade_status(relay, LOCAL, sshd.port) == 503

        # The operation in flight completes and is answered...
        assert busy.response(rid, timeout=GRACE) == {"id": rid, "result": {}}
        # ... then both sessions are closed, the idle one without having
        # received anything but the close.
        assert busy.expect_closed(timeout=GRACE) == []
        assert idle.expect_closed(timeout=GRACE) == []

        rc = relay.proc.wait(timeout=GRACE + SLACK)
        elapsed = time.monotonic() - t0
        assert rc == 0, relay.log_tail(40)
        assert elapsed < GRACE + SLACK, elapsed
        assert "draining: 2 live sessions" in relay.log_text()
    finally:
        idle.close()
        busy.close()


def test_idle_sessions_do_not_hold_the_exit(relay_factory, sshd):
    """With only idle sessions the relay closes them at once and exits well
    before the grace period ends."""
    relay = relay_factory(SHUTDOWN_GRACE_SECS=30)
    sessions = [login(relay, sshd) for _ in range(3)]
    try:
        t0 = time.monotonic()
        relay.proc.send_signal(signal.SIGTERM)
        for s in sessions:
            assert s.expect_closed(timeout=5) == []
        assert relay.proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 5
    finally:
        for s in sessions:
            s.close()


def test_session_busy_past_the_grace_is_cut(relay_factory, sshd, workdir):
    """A session that keeps working past the deadline is cut; the relay
    still exits 0, within the grace plus a few seconds."""
    grace = 2
    relay = relay_factory(SHUTDOWN_GRACE_SECS=grace)
    s = login(relay, sshd)
    try:
        handle = s.write_open(os.path.join(workdir, "cut.bin"))
        # The frame of this write_chunk never completes: the request stays
        # pending for as long as the relay lets it.
        rid = s.send_request("write_chunk", {"handle": handle})
        frame = websocket.ABNF.create_frame(pattern(MiB, seed=7),
                                            websocket.ABNF.OPCODE_BINARY)
        raw = frame.format()
        s.ws.sock.sendall(raw[:len(raw) // 2])
        t0 = time.monotonic()
        relay.proc.send_signal(signal.SIGTERM)
        assert relay.proc.wait(timeout=grace + SLACK + 2) == 0, relay.log_tail(40)
        assert time.monotonic() - t0 < grace + SLACK + 1
        del rid
    finally:
        s.close()


def test_pending_binary_frame_is_an_operation_in_progress(relay_factory, sshd, workdir):
    """SIGTERM while the binary frame of a write_chunk is still arriving:
    the upload is an operation in progress and must be allowed to finish
    within the grace, like one the SFTP server is busy with."""
    relay = relay_factory(SHUTDOWN_GRACE_SECS=GRACE)
    s = login(relay, sshd)
    try:
        handle = s.write_open(os.path.join(workdir, "half-frame.bin"))
        rid = s.send_request("write_chunk", {"handle": handle})
        frame = websocket.ABNF.create_frame(pattern(MiB, seed=8),
                                            websocket.ABNF.OPCODE_BINARY)
        raw = frame.format()
        s.ws.sock.sendall(raw[:len(raw) // 2])
        time.sleep(0.3)
        relay.proc.send_signal(signal.SIGTERM)
        time.sleep(2.5)  # more than one drain tick
        s.ws.sock.sendall(raw[len(raw) // 2:])
        assert s.response(rid, timeout=GRACE) == {"id": rid, "result": {}}
        assert s.expect_closed(timeout=GRACE) == []
        assert relay.proc.wait(timeout=GRACE + SLACK) == 0
    finally:
        s.close()
