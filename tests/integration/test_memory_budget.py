"""RELAY_MEMORY_BUDGET_MIB: the bytes the relay holds for browsers, all
sessions together, are bounded; past the budget reading from browsers
pauses, and it resumes when the budget frees (never an error). The
budget's count stays exact, and a message that holds a reservation
without arriving while another waits is ended (ws.c's stall rule)."""

import hashlib
import os
import socket
import threading
import time

import procinfo
import waits
from frozen import FrozenSessions
from helpers import gauge, login, pattern, sha256_file, wait_gauge
from relay import relay_binary
from test_attack_ws import OP_BINARY, frame
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


# What the budget tests below hold: two messages of this declared size fill
# a budget of BUDGET_MIB; a third waits at its start.
HELD = 16 * MiB
BUDGET_GAUGE = "wattcloud_relay_buffered_bytes"


def start_held_message(relay, s, path, sent):
    """write_chunk, then a binary frame declaring HELD bytes of which only
    `sent` are sent; returns once the relay has read them all (so it has
    reserved the frame, or been refused and paused)."""
    handle = s.write_open(path)
    s.send_request("write_chunk", {"handle": handle})
    s.ws.sock.sendall(frame(OP_BINARY, b"\x5a" * sent, declared=HELD))
    waits.wait_relay_read_all(relay, s.ws.sock)


def fill_budget(relay, sshd, workdir):
    """Two sessions whose half-sent messages reserve the whole budget."""
    holders = []
    for i in range(2):
        holders.append(login(relay, sshd))
        start_held_message(relay, holders[-1], os.path.join(workdir, "hold-%d.bin" % i), MiB)
    assert gauge(relay, "wattcloud_relay_memory_budget_bytes") == BUDGET_MIB * MiB
    wait_gauge(relay, BUDGET_GAUGE, 2 * HELD)
    return holders


def assert_budget_whole_after(relay, sshd, workdir, holders):
    """The holders leave: nothing is held any more, and a new upload's
    chunk goes through."""
    for s in holders:
        waits.leave(relay, s)
    wait_gauge(relay, BUDGET_GAUGE, 0)
    s = login(relay, sshd)
    try:
        handle = s.write_open(os.path.join(workdir, "after.bin"))
        rid = s.send_request("write_chunk", {"handle": handle})
        s.send_binary(pattern(2 * MiB, 7))
        assert s.response(rid, timeout=30) == {"id": rid, "result": {}}
        assert s.ok("write_close", handle=handle, timeout=30) == {}
    finally:
        s.close()


def test_a_message_that_waited_and_left_gives_back_nothing(relay_factory, sshd, workdir):
    """A message refused its reservation waits at its start; its session
    closing must not give back the reservation it never got (that pushed
    the budget's count below what was held and, once the holders left,
    wrapped it: every later upload waited for ever)."""
    relay = relay_factory(RELAY_MEMORY_BUDGET_MIB=BUDGET_MIB)
    holders = fill_budget(relay, sshd, workdir)
    try:
        waiter = login(relay, sshd)
        start_held_message(relay, waiter, os.path.join(workdir, "wait.bin"), 1000)
        assert gauge(relay, BUDGET_GAUGE) == 2 * HELD
        # Gone at once (the relay reads nothing of it while it waits, so a
        # close frame would go unread): well within the stall rule's window,
        # which would end the stalled holders below.
        cport = waiter.ws.sock.getsockname()[1]
        waiter.ws.sock.shutdown(socket.SHUT_RDWR)
        waits.wait_relay_closed(relay, cport)
        assert gauge(relay, BUDGET_GAUGE) == 2 * HELD
        assert_budget_whole_after(relay, sshd, workdir, holders)
    finally:
        for s in holders:
            s.close()


def test_a_whole_message_that_found_the_budget_full_gives_back_nothing(relay_factory, sshd,
                                                                       workdir):
    """A small write_chunk that arrives whole while the budget is full is
    refused its reservation but completes (it is already read); completing
    must not give back the reservation it never got."""
    relay = relay_factory(RELAY_MEMORY_BUDGET_MIB=BUDGET_MIB)
    holders = fill_budget(relay, sshd, workdir)
    try:
        s = login(relay, sshd)
        handle = s.write_open(os.path.join(workdir, "small.bin"))
        rid = s.send_request("write_chunk", {"handle": handle})
        s.send_binary(b"\x5a" * 1000)
        assert s.response(rid, timeout=30) == {"id": rid, "result": {}}
        assert s.ok("write_close", handle=handle, timeout=30) == {}
        waits.leave(relay, s)
        wait_gauge(relay, BUDGET_GAUGE, 2 * HELD)
        assert_budget_whole_after(relay, sshd, workdir, holders)
    finally:
        for s in holders:
            s.close()


# ws.c's stall rule: a message holding a reservation must arrive at this
# rate over each window while another waits for the budget.
STALL_WINDOW_SECS = 10
STALL_MIN_BYTES_PER_SEC = 64 * 1024


def relay_holds(relay, session):
    return waits.relay_holds(relay, session.ws.sock.getsockname()[1])


def test_headers_alone_do_not_hold_the_budget_from_others(relay_factory, sshd, workdir):
    """Two sessions start 16 MiB frames and stop sending: they hold the
    whole budget. While nobody waits they are left alone (a pause never
    fails anyone); once another user's chunk waits for the budget, holders
    that send less than STALL_MIN_BYTES_PER_SEC over a window are closed
    and the waiting chunk goes through. Without the rule it waited until
    the holders' idle timeout (30 min), restarted by any byte."""
    relay = relay_factory(RELAY_MEMORY_BUDGET_MIB=BUDGET_MIB)
    holders = fill_budget(relay, sshd, workdir)
    try:
        # A full window and a tick with nobody waiting: nothing happens.
        deadline = time.monotonic() + STALL_WINDOW_SECS + 1.5
        while time.monotonic() < deadline:
            assert all(relay_holds(relay, s) for s in holders)
            time.sleep(0.25)
        assert gauge(relay, BUDGET_GAUGE) == 2 * HELD
        offset = len(relay.log_text())
        victim = login(relay, sshd)
        try:
            handle = victim.write_open(os.path.join(workdir, "victim.bin"))
            data = pattern(2 * MiB, 9)
            rid = victim.send_request("write_chunk", {"handle": handle})
            victim.send_binary(data)
            assert victim.response(rid, timeout=STALL_WINDOW_SECS + 20) == \
                {"id": rid, "result": {}}
            assert victim.ok("write_close", handle=handle, timeout=30) == {}
        finally:
            victim.close()
        assert sha256_file(os.path.join(workdir, "victim.bin")) == \
            hashlib.sha256(data).hexdigest()
        # One holder closed frees room enough; the other holds on once the
        # victim's chunk is admitted, or is closed too when its own window
        # ends first (the victim is admitted at its next tick).
        log = relay.log_since(offset)
        closed = log.count("sent less than %d KiB/s for %d s while others waited "
                           "(MESSAGE_MIN_BYTES_PER_SEC)" % (STALL_MIN_BYTES_PER_SEC // 1024,
                                                           STALL_WINDOW_SECS))
        assert closed in (1, 2), log
        assert sum(relay_holds(relay, s) for s in holders) == 2 - closed
        wait_gauge(relay, 'wattcloud_relay_sessions_ended_total{reason="budget_stall"}', closed)
        for s in holders:
            waits.leave(relay, s)
        wait_gauge(relay, BUDGET_GAUGE, 0)
    finally:
        for s in holders:
            s.close()
