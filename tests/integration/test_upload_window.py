"""An upload keeps a bounded window of SFTP WRITE data unanswered
(sftp_ops.c: WRITE_WINDOW_MIN to WRITE_WINDOW_MAX, from the TCP round trip;
the unit test test_stream_frames pins that function).

Why it matters: the second chunk of a session's first upload took 0.8-2.2 s
while the others took 50-200 ms when the relay put a whole 8 MiB chunk in
flight at once. OpenSSH's sshd, on a fresh connection, grows the buffer
that holds data not yet handed to sftp-server one packet at a time, each
step a new allocation, copy and wipe of the whole buffer: quadratic in the
bytes in flight. How long a chunk takes is bench/'s to measure ("worst
8 MiB chunk"); this file checks the cause, at the server, without a clock
in any assertion.

The server is paramiko with the SFTP side written here (hostile_sftp.py).
It answers no WRITE while more requests are arriving: it holds the answers
until the relay has stopped sending for HOLD_GAP_SECS (the relay is then
waiting for them, its window full), and records the most WRITE bytes it
held. A relay without a window would have all of a chunk unanswered at
once. A gap in the relay's sending that comes early (a loaded machine)
releases the answers sooner, which can only make the figure smaller; the
test asks that at least one window was seen full, so a server that never
held anything fails it too."""

import select
import struct

import pytest

import hostile_sftp as hs
import procinfo
from relay import relay_binary
from wsclient import MiB

# sftp_ops.c.
WRITE_WINDOW_MIN = 512 * 1024
WRITE_WINDOW_MAX = 4 * MiB
# libssh2 1.11 cuts WRITE requests at 30000 bytes of data.
WRITE_REQUEST_BYTES = 30000
# How long the relay's silence must last before the held answers go.
HOLD_GAP_SECS = 0.1
CHUNK = 8 * MiB
CHUNKS = 2


class WindowWatch(hs.Scenario):
    """Holds WRITE answers while requests keep coming (see the module)."""

    def __init__(self, chan, server):
        super().__init__(chan, server)
        self.held = []          # request ids of WRITEs not yet answered
        self.held_bytes = 0
        self.most_held = 0
        self.written = 0

    def run(self):
        self.answer_init()
        while True:
            if self.held and not self.chan.recv_ready():
                ready, _, _ = select.select([self.chan], [], [], HOLD_GAP_SECS)
                if not ready:
                    self.release()
            ptype, payload = self.recv_packet()
            (rid,) = struct.unpack(">I", payload[:4])
            if ptype == hs.WRITE:
                self.on_write(rid, payload[4:])
            else:
                self.release()
                self.dispatch(ptype, rid, payload[4:])

    def on_write(self, rid, p):
        h, off = self.string(p)
        offset, n = struct.unpack(">QI", p[off:off + 12])
        assert offset == self.written, (offset, self.written)
        assert len(p) == off + 12 + n, (len(p), off, n)
        self.written += n
        self.held.append(rid)
        self.held_bytes += n
        self.most_held = max(self.most_held, self.held_bytes)

    def release(self):
        for rid in self.held:
            self.status(rid, hs.FX_OK, "ok")
        self.held = []
        self.held_bytes = 0


@pytest.fixture(scope="module")
def server():
    with hs.running({"WindowWatch": WindowWatch}) as srv:
        yield srv


def test_upload_keeps_a_bounded_window_in_flight(relay_factory, server):
    relay = relay_factory(extra_ports=(server.port,), **procinfo.asan_env(relay_binary()))
    s = hs.login(relay, server, "WindowWatch")
    try:
        watch = server.runs[-1]
        h = s.write_open("/up")
        for _ in range(CHUNKS):
            assert s.write_chunk(h, b"u" * CHUNK, timeout=60).get("result") == {}
        assert s.ok("write_close", handle=h, timeout=60) == {}
    finally:
        s.close()
    assert watch.written == CHUNK * CHUNKS
    print("most WRITE bytes unanswered at once: %d" % watch.most_held)
    assert watch.most_held <= WRITE_WINDOW_MAX, watch.most_held
    assert watch.most_held >= WRITE_WINDOW_MIN - WRITE_REQUEST_BYTES, watch.most_held
