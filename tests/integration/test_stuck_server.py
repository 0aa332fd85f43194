"""An SFTP server that stops answering in the middle of an upload, its
browser gone: the relay must still run its periodic work. lws_service()
ignores its timeout (lws 4), so with no WebSocket left the service loop
slept until lws's own next timer, about 30 s away: the worker stuck on the
server was cut long after SESSION_RELEASE_MS, and on SIGTERM the drain
overran its deadline until the relay was killed. server.c now wakes the
loop every LOOP_TICK_USECS.

The server is paramiko with the SFTP side written here (hostile_sftp.py):
it answers no WRITE, so the relay's worker waits in the middle of a chunk
(up to SFTP_OP_TIMEOUT_SECS, 60 s, longer than either deadline here)."""

import struct
import threading

import pytest

import hostile_sftp as hs
import procinfo
from helpers import wait_until
from relay import relay_binary
from wsclient import MiB

UNWRITTEN = "wattcloud_relay_unwritten_upload_bytes"
A = b"A" * (2 * MiB)


class HoldWrites(hs.Scenario):
    """Keeps every WRITE it gets and answers none of them."""

    def __init__(self, chan, server):
        super().__init__(chan, server)
        self.lock = threading.Lock()
        self.bytes = 0

    def received(self):
        with self.lock:
            return self.bytes

    def run(self):
        self.answer_init()
        while True:
            ptype, payload = self.recv_packet()
            (rid,) = struct.unpack(">I", payload[:4])
            if ptype == hs.WRITE:
                h, off = self.string(payload[4:])
                (n,) = struct.unpack(">I", payload[4 + off + 8:4 + off + 12])
                with self.lock:
                    self.bytes += n
            else:
                self.dispatch(ptype, rid, payload[4:])


@pytest.fixture(scope="module")
def server():
    with hs.running({"HoldWrites": HoldWrites}) as srv:
        yield srv


def unwritten(relay):
    status, _, body = relay.http("GET", "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(UNWRITTEN + " "):
            return int(line.split()[1])
    raise AssertionError("no %s in /metrics" % UNWRITTEN)


def start(relay_factory, server):
    relay = relay_factory(extra_ports=(server.port,), **procinfo.asan_env(relay_binary()))
    s = hs.login(relay, server, "HoldWrites")
    held = server.runs[-1]
    h = s.write_open("/up")
    # A: answered when its write starts; its first window of WRITEs is then
    # held at the server, and the relay's worker waits for their answers.
    assert s.write_chunk(h, A, timeout=30)["result"] == {}
    assert wait_until(lambda: held.received() > 0, 30)
    return relay, s


# relay/session.h.
SESSION_RELEASE_SECS = 10
# relay/server.c; the tests' relays run with SHUTDOWN_GRACE_SECS 3.
DRAIN_FORCE_SECS = 5
SHUTDOWN_GRACE_SECS = 3
# Time for a loaded machine on top of a deadline.
MARGIN_SECS = 4


def test_worker_stuck_after_the_browser_left_is_cut_at_the_release_deadline(
        relay_factory, server):
    relay, s = start(relay_factory, server)
    s.close()
    assert wait_until(lambda: "cutting the SSH connection" in relay.log_text(),
                      SESSION_RELEASE_SECS + MARGIN_SECS), relay.log_tail()
    assert wait_until(lambda: unwritten(relay) == 0, MARGIN_SECS), unwritten(relay)
    assert relay.http("GET", "/health")[0] == 200


def test_sigterm_with_a_worker_stuck_exits_by_the_drain_deadline(relay_factory, server):
    relay, s = start(relay_factory, server)
    s.close()
    rc = relay.stop(timeout=SHUTDOWN_GRACE_SECS + DRAIN_FORCE_SECS + MARGIN_SECS)
    assert rc == 0, (rc, relay.log_tail())
    assert "shutting down" in relay.log_text()
