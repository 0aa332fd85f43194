"""The first upload of a session must not stall: every 8 MiB write_chunk is
answered about as fast as the others.

A write_chunk is answered before its bytes go to the server, and the worker
writes chunk N while the browser sends chunk N+1, so the answer to chunk
N+1 waits for chunk N's write. The second chunk of a session's first upload
took 0.8-2.2 s while the others took 50-200 ms: the relay put 2 MiB in
flight at once, and OpenSSH's sshd, on a fresh connection, grows the buffer
that holds data not yet handed to sftp-server one packet at a time, each
step a new allocation, copy and wipe of the whole buffer (quadratic in the
bytes in flight; measured with perf on sshd: memmove, mmap/munmap and page
faults). sftp_ops.c's WRITE_WINDOW bounds the bytes in flight."""

import os
import statistics
import time

import pytest

import procinfo
from helpers import login, pattern
from wsclient import MiB

# What this file proves is timing (no chunk much slower than the others),
# which a sanitizer cannot judge and whose figures it distorts; the relay
# code it drives (write_chunk, write-through, write_close) is the same as
# test_streams.py's and test_verbs.py's uploads, which the sanitizer pass
# runs. Left out of that pass to keep CI well inside its time.
pytestmark = pytest.mark.skipif(procinfo.sanitized_relay(),
                                reason="timing only: run in the plain passes")

CHUNKS = 20
# The goal is worst <= 2x the median. The allowance on top absorbs
# scheduling noise on a busy test machine (a chunk is 50-500 ms here); the
# stall this guards against added 0.7-2 s.
MEDIAN_FACTOR = 2.0
ALLOWANCE_SECS = 0.25


def test_no_chunk_of_a_first_upload_stalls(relay_factory, sshd, workdir):
    relay = relay_factory()
    data = pattern(8 * MiB, 5)
    slow = []
    for run in range(2):  # two fresh sessions, each with its first upload
        s = login(relay, sshd)
        try:
            h = s.write_open(os.path.join(workdir, "latency-%d.bin" % run))
            times = []
            for _ in range(CHUNKS):
                t0 = time.monotonic()
                assert s.write_chunk(h, data, timeout=30).get("result") == {}
                times.append(time.monotonic() - t0)
            assert s.ok("write_close", handle=h, timeout=30) == {}
        finally:
            s.close()
        limit = MEDIAN_FACTOR * statistics.median(times) + ALLOWANCE_SECS
        print("session %d: chunk latencies %s (limit %.3f)"
              % (run, " ".join("%.3f" % t for t in times), limit))
        # The stall this guards against hit the second chunk. The first chunk
        # of the relay process's first upload also pays for warming up (the
        # first SFTP writes of this sshd, first-use page faults): it runs
        # slower in proportion to the machine's load, which is bench/'s to
        # measure ("worst 8 MiB chunk" row), not a test's.
        slow += [(run, i, round(t, 3), round(limit, 3)) for i, t in enumerate(times)
                 if t > limit and (run, i) != (0, 0)]
    assert not slow, "chunks over 2x the median + %.2f s (session, chunk, secs, limit): %r" % (
        ALLOWANCE_SECS, slow)
