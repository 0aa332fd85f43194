"""A server that stalls but is not gone (PROTOCOL §3): one SFTP operation may
take up to SFTP_OP_TIMEOUT_SECS, and only that rule or the keepalive's own
(SSH_KEEPALIVE_COUNT unanswered SSH_KEEPALIVE_SECS) declare a server gone.
The sshd processes of the session are stopped with SIGSTOP to stall it, the
way a loaded NAS or an fsync does; the log must name the rule that fired."""

import os
import signal
import threading
import time

from helpers import login, pattern, wait_until
from wsclient import MiB

# The keepalive of the two stall-survival tests: short, so that a stall
# longer than its interval and than its whole dead-peer budget
# (KEEPALIVE_COUNT x KEEPALIVE_SECS = 6 s) takes seconds, not the 60 s of
# the defaults. Either rule applied to an operation in progress (libssh2's
# own keepalive_config limiting each call to the interval, or a keepalive
# sent while a request waits) fails the operation within 6 s.
KEEPALIVE_SECS = 3
KEEPALIVE_COUNT = 2
STALL_SECS = 8   # longer than that budget, shorter than SFTP_OP_TIMEOUT_SECS (60 s)


class Stalled:
    """SIGSTOP the per-connection sshd processes of sessions opened inside
    the block; SIGCONT (then SIGKILL on exit) them."""

    def __init__(self, sshd):
        self.sshd = sshd
        self.before = sshd.descendant_pids()
        self.pids = set()

    def stop(self):
        self.pids = self.sshd.descendant_pids() - self.before
        assert self.pids, "no sshd process for the new session"
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)

    def cont(self):
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for pid in self.pids:
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass


def resume_after(stalled, secs):
    """SIGCONT after `secs`: the length of the stall is the scenario."""
    t = threading.Timer(secs, stalled.cont)
    t.daemon = True
    t.start()
    return t


def test_stat_during_a_stall_past_the_keepalive_completes(relay_factory, sshd, workdir):
    relay = relay_factory(SSH_KEEPALIVE_SECS=KEEPALIVE_SECS, SSH_KEEPALIVE_COUNT=KEEPALIVE_COUNT)
    with Stalled(sshd) as stalled:
        s = login(relay, sshd)
        try:
            assert s.ok("stat", path=workdir)["isDir"] is True
            stalled.stop()
            t0 = time.monotonic()
            timer = resume_after(stalled, STALL_SECS)
            resp = s.call("stat", path=workdir, timeout=STALL_SECS + 30)
            elapsed = time.monotonic() - t0
            timer.join()
            assert resp.get("result", {}).get("isDir") is True, \
                "stat across a %d s stall answered %r after %.1f s" % (STALL_SECS, resp, elapsed)
            assert elapsed >= STALL_SECS - 1
            assert s.ok("stat", path="/")["isDir"] is True
        finally:
            s.close()


def test_write_chunk_during_a_stall_past_the_keepalive_completes(relay_factory, sshd, workdir):
    relay = relay_factory(SSH_KEEPALIVE_SECS=KEEPALIVE_SECS, SSH_KEEPALIVE_COUNT=KEEPALIVE_COUNT)
    path = os.path.join(workdir, "stalled-upload")
    data = pattern(4 * MiB, 7)
    with Stalled(sshd) as stalled:
        s = login(relay, sshd)
        try:
            h = s.write_open(path)
            assert s.write_chunk(h, data[:2 * MiB]) == {"id": s.next_id - 1, "result": {}}
            stalled.stop()
            timer = resume_after(stalled, STALL_SECS)
            # Answered at once (write-through); the write itself waits out
            # the stall, and write_close reports how it went.
            s.write_chunk(h, data[2 * MiB:], timeout=STALL_SECS + 30)
            resp = s.call("write_close", handle=h, timeout=STALL_SECS + 30)
            timer.join()
            assert resp.get("result") == {}, resp
        finally:
            s.close()
    with open(path, "rb") as f:
        assert f.read() == data


def test_stall_beyond_the_op_timeout_names_the_rule(relay_factory, sshd):
    relay = relay_factory(SFTP_OP_TIMEOUT_SECS=3)
    with Stalled(sshd) as stalled:
        s = login(relay, sshd)
        try:
            stalled.stop()
            t0 = time.monotonic()
            resp = s.call("stat", path="/", timeout=20)
            elapsed = time.monotonic() - t0
            assert resp.get("code") == "timeout", resp
            assert resp.get("error") == "the SFTP server did not answer in time", resp
            assert 2.5 <= elapsed <= 10, elapsed
            s.expect_closed(timeout=10)
        finally:
            s.close()
    assert wait_until(lambda: "within 3 s (SFTP_OP_TIMEOUT_SECS)" in relay.log_text(), 10), \
        relay.log_tail(10)
    assert "connection to the SFTP server lost" not in relay.log_text()


def test_idle_stall_is_ended_by_the_keepalive_rule(relay_factory, sshd):
    relay = relay_factory(SSH_KEEPALIVE_SECS=1, SSH_KEEPALIVE_COUNT=2)
    with Stalled(sshd) as stalled:
        s = login(relay, sshd)
        try:
            stalled.stop()
            t0 = time.monotonic()
            s.expect_closed(timeout=15)
            elapsed = time.monotonic() - t0
            # One idle interval, then 2 intervals without an answer.
            assert 2 <= elapsed <= 8, elapsed
        finally:
            s.close()
    assert wait_until(lambda: "did not answer a keepalive within 2 s" in relay.log_text(), 10), \
        relay.log_tail(10)
