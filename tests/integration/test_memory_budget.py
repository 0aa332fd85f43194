"""RELAY_MEMORY_BUDGET_MIB: the bytes the relay holds for browsers, all
sessions together, are bounded; past the budget reading from browsers
pauses, and it resumes when the budget frees (never an error)."""

import hashlib
import os
import threading
import time

import procinfo
from frozen import FrozenSessions
from helpers import login, pattern, sha256_file
from relay import relay_binary
from wsclient import MiB

BUDGET_MIB = 32
SESSIONS = 6
CHUNKS = 4          # of 8 MiB per session: 32 MiB each, 192 MiB in all
CHUNK = 8 * MiB


def pipelined_upload(s, handle, data, answers, errors):
    """Send every chunk without waiting (a browser with a deep queue), then
    collect the answers."""
    try:
        ids = []
        for off in range(0, len(data), CHUNK):
            ids.append(s.send_request("write_chunk", {"handle": handle}))
            s.send_binary(data[off:off + CHUNK])
        for rid in ids:
            answers.append(s.response(rid, timeout=60))
    except Exception as e:  # reported by the test
        errors.append(repr(e))


def test_stalled_uploads_stay_within_the_budget(relay_factory, sshd, workdir):
    asan = procinfo.sanitized_relay()
    env = dict(procinfo.asan_env(relay_binary()), RELAY_MEMORY_BUDGET_MIB=BUDGET_MIB)
    relay = relay_factory(**env)
    pid = relay.proc.pid
    assert "memory budget for buffered bytes: %d MiB" % BUDGET_MIB in relay.log_text()
    rss0 = procinfo.rss_kib(pid)
    data = [pattern(CHUNKS * CHUNK, 20 + i) for i in range(SESSIONS)]
    with FrozenSessions(sshd) as server:
        sessions, handles = [], []
        try:
            for i in range(SESSIONS):
                s = login(relay, sshd, timeout=60)
                sessions.append(s)
                handles.append(s.write_open(os.path.join(workdir, "budget-%d.bin" % i)))
            server.freeze()
            answers = [[] for _ in range(SESSIONS)]
            errors = []
            threads = [threading.Thread(target=pipelined_upload, daemon=True,
                                        args=(sessions[i], handles[i], data[i], answers[i],
                                              errors)) for i in range(SESSIONS)]
            for t in threads:
                t.start()
            # Watch while every session pushes against the stalled server.
            peak, t0 = rss0, time.monotonic()
            while time.monotonic() - t0 < 8:
                peak = max(peak, procinfo.rss_kib(pid))
                time.sleep(0.1)
            # Held: the budget, plus one 8 MiB message per session that was
            # being read when the budget ran out, plus the relay's own use.
            margin = (SESSIONS * 8 + (96 if asan else 24)) * 1024
            assert peak - rss0 < BUDGET_MIB * 1024 + margin, \
                "RSS grew by %d KiB against a stalled server (budget %d MiB)" % (
                    peak - rss0, BUDGET_MIB)
            server.thaw()
            for t in threads:
                t.join(60)
            assert not errors, errors
            for i, s in enumerate(sessions):
                assert all(a.get("result") == {} for a in answers[i]), answers[i]
                assert len(answers[i]) == CHUNKS
                assert s.ok("write_close", handle=handles[i], timeout=60) == {}
        finally:
            for s in sessions:
                s.close()
    for i in range(SESSIONS):
        assert sha256_file(os.path.join(workdir, "budget-%d.bin" % i)) == \
            hashlib.sha256(data[i]).hexdigest()
    print("RSS %d KiB idle, +%d KiB peak with %d stalled uploads, budget %d MiB"
          % (rss0, peak - rss0, SESSIONS, BUDGET_MIB))
