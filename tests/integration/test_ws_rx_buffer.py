"""server.c's WS_RX_BUFFER is the most the relay reads from a browser in
one recv(): lws's receive buffer per connection and its per-thread
service buffer. Bigger saves calls; each connection's buffer is memory
held while it reads, so it is a limit and this file pins it, by what the
service thread asks the kernel for (strace) during an upload."""

import re
import shutil
import subprocess

from helpers import login, make_dir, pattern, read_file
from wsclient import MiB

# server.c.
WS_RX_BUFFER = 256 * 1024

RECV = re.compile(r'^(\d+)\s+recvfrom\((\d+), "[^"]*"(?:\.\.\.)?, (\d+),')


def test_one_recv_reads_at_most_ws_rx_buffer(relay_factory, sshd, workdir, tmp_path):
    assert shutil.which("strace"), "strace is missing: scripts/deps.sh --test installs it"
    relay = relay_factory()
    pid = relay.proc.pid
    s = login(relay, sshd)
    out = tmp_path / "strace.txt"
    tracer = subprocess.Popen(["strace", "-f", "-s", "0", "-e", "trace=recvfrom",
                               "-o", str(out), "-p", str(pid)],
                              stderr=subprocess.PIPE, text=True)
    try:
        # strace names each thread as it attaches; the service thread is
        # the process's first.
        while "Process %d attached" % pid not in tracer.stderr.readline():
            assert tracer.poll() is None, "strace could not attach"
        d = make_dir(workdir + "/rx")
        data = pattern(16 * MiB)
        s.upload(d + "/f", data)
    finally:
        tracer.terminate()
        tracer.wait(30)
        s.close()
    assert read_file(d + "/f") == data
    asked = [int(m.group(3)) for m in map(RECV.match, out.read_text().splitlines())
             if m and int(m.group(1)) == pid]
    # 16 MiB of frames: the buffer filled many times over, never more.
    assert max(asked) == WS_RX_BUFFER, sorted(set(asked))[-5:]
    assert asked.count(WS_RX_BUFFER) >= 16, len(asked)
