"""While one upload chunk is being written to the SFTP server, the relay
answers the write_chunks queued behind it (worker.c, answer_ahead), up to
WRITE_AHEAD_BYTES of them; a chunk so answered is written even if the
browser leaves.

Why it matters: the app sends a chunk only once the one before is answered.
Answered only when its own write began, a chunk waited for the whole write
of the chunk before it whenever the server was slower than the browser:
the first chunks of a session's first upload took 3x the others (bench/,
"worst 8 MiB chunk"), sshd and sftp-server still growing their buffers.

The server is paramiko with the SFTP side written here (hostile_sftp.py).
It holds the answers to WRITE requests until the test lets them go, so the
relay is stuck in the middle of writing chunk A for as long as the test
likes. The relay's unwritten-bytes gauge (/metrics) tells when a chunk the
test sent has been queued behind A."""

import select
import struct
import threading

import pytest
import websocket

import hostile_sftp as hs
import procinfo
from helpers import wait_until
from relay import relay_binary
from wsclient import MiB

UNWRITTEN = "wattcloud_relay_unwritten_upload_bytes"
# relay/worker.c: one frame, PROTO_MAX_FRAME_BYTES.
WRITE_AHEAD_BYTES = 16 * MiB
A = b"A" * (2 * MiB)
# B and C fill WRITE_AHEAD_BYTES exactly; D, one byte, is one too many.
B = b"B" * (6 * MiB + 17)
C = b"C" * (WRITE_AHEAD_BYTES - len(B))
D = b"D"
# How long an answer that must not come is waited for. A relay that
# answered too early would do it within milliseconds of the write answer
# that lets it run; a relay that does not never answers, whatever the wait.
NO_ANSWER_SECS = 1.5


class WriteGate(hs.Scenario):
    """Keeps every WRITE it gets (the file, by offset) but answers them only
    as the test allows: `allow(n)` lets n more answers go, `open()` all."""

    file_size = 0

    def __init__(self, chan, server):
        super().__init__(chan, server)
        self.lock = threading.Lock()
        self.data = bytearray()
        self.held = []           # WRITE request ids not answered yet
        self.allowed = 0
        self.opened = False
        self.closed = threading.Event()   # the relay closed the file

    def allow(self, n):
        with self.lock:
            self.allowed += n

    def open(self):
        with self.lock:
            self.opened = True

    def received(self):
        with self.lock:
            return len(self.data)

    def run(self):
        self.answer_init()
        while True:
            self.answer_allowed()
            # Wake up now and then to let allowed answers go while the
            # relay, its window full, sends nothing.
            ready, _, _ = select.select([self.chan], [], [], 0.02)
            if not ready:
                continue
            ptype, payload = self.recv_packet()
            (rid,) = struct.unpack(">I", payload[:4])
            if ptype == hs.WRITE:
                self.on_write(rid, payload[4:])
            elif ptype == hs.CLOSE:
                self.status(rid, hs.FX_OK, "ok")
                self.closed.set()
            else:
                self.dispatch(ptype, rid, payload[4:])

    def on_write(self, rid, p):
        h, off = self.string(p)
        offset, n = struct.unpack(">QI", p[off:off + 12])
        with self.lock:
            assert offset == len(self.data), (offset, len(self.data))
            self.data += p[off + 12:off + 12 + n]
            self.held.append(rid)

    def answer_allowed(self):
        with self.lock:
            n = len(self.held) if self.opened else min(self.allowed, len(self.held))
            go, self.held = self.held[:n], self.held[n:]
            if not self.opened:
                self.allowed -= n
        for rid in go:
            self.status(rid, hs.FX_OK, "ok")


@pytest.fixture(scope="module")
def server():
    with hs.running({"WriteGate": WriteGate}) as srv:
        yield srv


def unwritten(relay):
    status, _, body = relay.http("GET", "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(UNWRITTEN + " "):
            return int(line.split()[1])
    raise AssertionError("no %s in /metrics" % UNWRITTEN)


def queued(relay, n):
    """Wait until the relay holds n unwritten upload bytes."""
    assert wait_until(lambda: unwritten(relay) == n, 30), (unwritten(relay), n)


def start(relay_factory, server, resume=False):
    relay = relay_factory(extra_ports=(server.port,), **procinfo.asan_env(relay_binary()))
    s = hs.login(relay, server, "WriteGate")
    gate = server.runs[-1]
    params = {"path": "/up"}
    if resume:
        params["resume"] = True
    h = s.ok("write_open", params)["handle"]
    # A: answered when its write starts; its first window of WRITEs is then
    # held at the server.
    assert s.write_chunk(h, A, timeout=30)["result"] == {}
    assert wait_until(lambda: gate.received() > 0, 30)
    return relay, s, gate, h


def test_next_chunks_are_answered_while_the_one_before_is_written(relay_factory, server):
    relay, s, gate, h = start(relay_factory, server)
    try:
        # Each chunk waits until the relay has queued it behind A, then one
        # WRITE answer lets the relay's write of A go on a little, and it
        # answers what it may meanwhile, A still far from written.
        for chunk in (B, C):
            rid = s.send_request("write_chunk", {"handle": h})
            s.send_binary(chunk)
            queued(relay, len(A) + len(B) + (len(C) if chunk is C else 0))
            gate.allow(1)
            assert s.response(rid, timeout=30)["result"] == {}
            assert gate.received() < len(A)

        # D: B and C already fill WRITE_AHEAD_BYTES, so D waits for its turn
        # (while C is written) however far A gets.
        rid_d = s.send_request("write_chunk", {"handle": h})
        s.send_binary(D)
        queued(relay, len(A) + len(B) + len(C) + len(D))
        gate.allow(1)
        with pytest.raises(websocket.WebSocketTimeoutException):
            s.recv_text(timeout=NO_ANSWER_SECS)
        assert gate.received() < len(A)

        gate.open()
        assert s.response(rid_d, timeout=60)["result"] == {}
        assert s.ok("write_close", handle=h, timeout=60) == {}
    finally:
        s.close()
    assert bytes(gate.data) == A + B + C + D


def test_chunk_answered_ahead_is_written_when_the_browser_leaves(relay_factory, server):
    """A resumable upload keeps what was written when the browser leaves
    (PROTOCOL §5 resume): everything answered must be in it."""
    relay, s, gate, h = start(relay_factory, server, resume=True)
    rid_b = s.send_request("write_chunk", {"handle": h})
    s.send_binary(B)
    queued(relay, len(A) + len(B))
    gate.allow(1)
    assert s.response(rid_b, timeout=30)["result"] == {}
    s.close()
    gate.open()
    assert gate.closed.wait(30)
    assert bytes(gate.data) == A + B
    assert wait_until(lambda: unwritten(relay) == 0, 30), unwritten(relay)


# A server that stops answering in the middle of an upload, its browser
# gone: the relay's loop must still run its periodic work. lws_service()
# ignores its timeout, so with no WebSocket left the loop slept until lws's
# own next timer, ~30 s away (server.c, LOOP_TICK_USECS).

# relay/session.h.
SESSION_RELEASE_SECS = 10
# relay/server.c; the tests' relays run with SHUTDOWN_GRACE_SECS 3.
DRAIN_FORCE_SECS = 5
SHUTDOWN_GRACE_SECS = 3
# Time for a loaded machine on top of a deadline.
MARGIN_SECS = 4


def test_worker_stuck_after_the_browser_left_is_cut_at_the_release_deadline(
        relay_factory, server):
    relay, s, gate, h = start(relay_factory, server)
    s.close()
    assert wait_until(lambda: "cutting the SSH connection" in relay.log_text(),
                      SESSION_RELEASE_SECS + MARGIN_SECS), relay.log_tail()
    assert wait_until(lambda: unwritten(relay) == 0, MARGIN_SECS), unwritten(relay)
    assert relay.http("GET", "/health")[0] == 200


def test_sigterm_with_a_worker_stuck_exits_by_the_drain_deadline(relay_factory, server):
    relay, s, gate, h = start(relay_factory, server)
    s.close()
    rc = relay.stop(timeout=SHUTDOWN_GRACE_SECS + DRAIN_FORCE_SECS + MARGIN_SECS)
    assert rc == 0, (rc, relay.log_tail())
    assert "shutting down" in relay.log_text()
