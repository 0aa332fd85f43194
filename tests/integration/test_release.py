"""A session whose browser has gone is released within SESSION_RELEASE_MS
(session.h, 10 s) even when its worker is stuck closing handles against a
server that stopped answering: the relay cuts the SSH connection. Until
then the session keeps counting against its client IP."""

import os
import time

import procinfo
from frozen import FrozenSessions
from helpers import LOCAL, login, wait_until
from waits import leave, wait_for_log
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


WORKER_STACK_BYTES = 512 * 1024  # relay/session.c


def stack_sized_maps(pid):
    """Thread stacks of a worker's size: a writable anonymous mapping of
    WORKER_STACK_BYTES (the relay's own, above its guard page) or a little
    less (glibc's, the guard page inside the size), right above an
    inaccessible guard page. The guard tells stacks from the sanitizer's
    own regions of the same size."""
    maps = []
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            m = procinfo.MAPS_RE.match(line.rstrip("\n"))
            if m:
                maps.append((int(m.group(1), 16), int(m.group(2), 16), m.group(3), m.group(4)))
    found = []
    for below, (start, end, perms, name) in zip(maps, maps[1:]):
        if (perms.startswith("rw") and name == "" and below[2].startswith("---")
                and below[1] == start and below[1] - below[0] <= 64 * 1024
                and WORKER_STACK_BYTES - 16 * 1024 <= end - start <= WORKER_STACK_BYTES):
            found.append((start, end))
    return found


def test_stuck_worker_is_cut_at_the_deadline_with_nothing_else_happening(relay_factory,
                                                                          sshd, workdir):
    """The test above asks the relay for upgrades while it waits, and each
    request wakes the relay's loop. With nothing happening, lws_service()
    (which ignores its timeout in lws 4) slept until lws's own next timer,
    ~30 s away, and the cut came that late; server.c's LOOP_TICK_USECS timer
    wakes the loop. Here only the log is watched while waiting."""
    relay = relay_factory()
    with FrozenSessions(sshd) as server:
        s = login(relay, sshd)
        try:
            server.write_in_flight(relay, s, os.path.join(workdir, "stuck.bin"), b"x" * MiB)
            leave(relay, s)
            wait_for_log(relay, r"took over %d s; cutting the SSH connection" % RELEASE_SECS,
                         timeout=RELEASE_SECS + 4)
            wait_for_log(relay, r"session \S+ end: ", timeout=4)
        finally:
            s.close()
    assert relay.http("GET", "/health")[0] == 200


def test_worker_stacks_are_unmapped_when_sessions_end(relay_factory, sshd):
    """A session's worker stack goes back to the kernel at the join. glibc
    keeps the stacks it allocates in a cache, with the pages the thread last
    touched still resident: 24 KiB a session, 1.2 MiB held for good after a
    burst of 50 (bench: RSS after the burst went from 1.11x to 1.02x)."""
    relay = relay_factory()
    pid = relay.proc.pid
    warm = login(relay, sshd)
    warm.close()
    assert wait_until(lambda: procinfo.thread_count(pid) == 1, 10)
    base = len(stack_sized_maps(pid))
    sessions = [login(relay, sshd) for _ in range(3)]
    assert procinfo.thread_count(pid) == 4
    assert len(stack_sized_maps(pid)) >= base + 3, "the stacks were not found while running"
    for s in sessions:
        assert s.ok("stat", path="/")["isDir"] is True
        s.close()
    assert wait_until(lambda: procinfo.thread_count(pid) == 1, 10)
    assert wait_until(lambda: len(stack_sized_maps(pid)) == base, 5), \
        "worker stacks still mapped after their sessions ended: %d, before %d" % (
            len(stack_sized_maps(pid)), base)
