"""A session whose browser has gone is released within SESSION_RELEASE_MS
(session.h, 10 s) even when its worker is stuck closing handles against a
server that stopped answering: the relay cuts the SSH connection. Until
then the session keeps counting against its client IP."""

import os
import time

import procinfo
from frozen import FrozenSessions
from helpers import LOCAL, login, wait_until
from wsclient import MiB, upgrade_status

RELEASE_SECS = 10  # SESSION_RELEASE_MS in relay/session.h


def test_gone_session_keeps_its_ip_slot_until_released(relay_factory, sshd, workdir):
    relay = relay_factory(SFTP_MAX_CONCURRENT_PER_IP=1)
    pid = relay.proc.pid
    warm = login(relay, sshd)
    warm.close()
    assert wait_until(lambda: procinfo.thread_count(pid) == 1, 10)
    with FrozenSessions(sshd) as server:
        s = login(relay, sshd)
        handles = [s.write_open(os.path.join(workdir, "held-%d.bin" % i)) for i in range(4)]
        for h in handles:
            assert s.write_chunk(h, b"x" * MiB) == {"id": s.next_id - 1, "result": {}}
        server.freeze()
        s.ws.sock.close()  # the browser leaves with four uploads open
        t0 = time.monotonic()
        # The worker now closes and removes four partial files against a
        # server that does not answer: the session is not over yet.
        status = upgrade_status(relay, LOCAL, sshd.port)
        assert status == 429, "a new session was let in (%d) while the old one of the " \
            "same IP was still cleaning up" % status
        while upgrade_status(relay, LOCAL, sshd.port) != 101:
            assert time.monotonic() - t0 < RELEASE_SECS + 8, \
                "the session was not released within %d s:\n%s" % (RELEASE_SECS,
                                                                    relay.log_tail(20))
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        assert elapsed >= RELEASE_SECS - 2, "released after %.1f s" % elapsed
        assert "cutting the SSH connection" in relay.log_text()
    assert wait_until(lambda: procinfo.thread_count(pid) == 1, 10), \
        "threads: %d" % procinfo.thread_count(pid)
    s = login(relay, sshd)
    try:
        assert s.ok("stat", path="/")["isDir"] is True
    finally:
        s.close()
