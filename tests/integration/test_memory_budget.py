"""RELAY_MEMORY_BUDGET_MIB: the bytes the relay holds for browsers, all
sessions together, are bounded; past the budget reading from browsers
pauses, and it resumes when the budget frees (never an error for a
message sent as one frame, as browsers send them). The budget's count
stays exact, waiting messages go first come first served, and a session
that holds part of the budget without moving data while another waits
is ended (ws.c's stall rule)."""

import hashlib
import json
import os
import socket
import threading
import time

import procinfo
import waits
from frozen import FrozenSessions
from helpers import gauge, login, make_file, pattern, sha256_file, wait_gauge, wait_until
from relay import relay_binary
from test_attack_ws import MASK, OP_BINARY, OP_CONT, OP_TEXT, frame
from wsclient import MiB

BUDGET_MIB = 32
SESSIONS = 6
CHUNKS = 4          # of 8 MiB per session: 32 MiB each, 192 MiB in all
CHUNK = 8 * MiB
SESSION_OUT_HIGH_WATER = MiB  # session.h: a session's queued output pauses its worker
RX_PAUSE_JOBS = 64   # ws.c: reading pauses at this many queued requests


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
        closed = log.count("moved less than %d KiB/s for %d s while others waited "
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



WAITING_GAUGE = "wattcloud_relay_budget_waiting_messages"
# A budget one held frame (HELD) fills enough that a second does not fit.
SMALL_BUDGET_MIB = 24


def read_chunk_batch(handle, n):
    """`n` read_chunk requests on `handle`, ids from 1000."""
    return [{"id": 1000 + i, "method": "read_chunk", "params": {"handle": handle}}
            for i in range(n)]


def text_frames(requests):
    """`requests` as client text frames, in one buffer."""
    return b"".join(frame(OP_TEXT, json.dumps(r).encode()) for r in requests)


def send_batch_then_frame(relay, s, requests, handle):
    """In one write: `requests` (text frames), then a write_chunk on
    `handle` and the start of a binary frame declaring HELD bytes."""
    batch = text_frames(requests)
    batch += frame(OP_TEXT, json.dumps({"id": 9000, "method": "write_chunk",
                                        "params": {"handle": handle}}).encode())
    batch += frame(OP_BINARY, b"\x5a" * 1000, declared=HELD)
    s.ws.sock.sendall(batch)
    waits.wait_relay_read_all(relay, s.ws.sock)


def masked(payload, offset):
    """`payload`, the bytes at `offset` of a frame's payload, masked as
    frame() masks them (RFC 6455 §5.3)."""
    key = (MASK * (len(payload) // 4 + 2))[offset % 4:][:len(payload)]
    n = len(payload)
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def cport(s):
    return s.ws.sock.getsockname()[1]


def upload_in_thread(s, path, data, result, timeout):
    """One write_chunk of `data` on a new upload of `path`, in a thread;
    `result` gets the answer or the exception. Returns the thread."""
    def run():
        try:
            handle = s.write_open(path)
            s.ws.settimeout(timeout)  # sending waits while the frame does
            rid = s.send_request("write_chunk", {"handle": handle})
            s.send_binary(data)
            result["resp"] = s.response(rid, timeout=timeout)
        except Exception as e:  # reported by the test
            result["err"] = repr(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_holder_that_reads_none_of_its_answers_must_still_move(relay_factory, sshd,
                                                                 workdir):
    """A session whose frame waited for the budget while its answers piled
    up unread was admitted with its reading still paused for that output,
    and a paused holder was exempt from the stall rule: it held 16 MiB for
    as long as it liked while others waited. No pause exempts a holder; it
    must move data in some direction, and this one moves none: it is
    closed (waiting, for the output it holds, or once admitted), and
    another user's chunk goes through."""
    relay = relay_factory(RELAY_MEMORY_BUDGET_MIB=SMALL_BUDGET_MIB)
    big = make_file(os.path.join(workdir, "big.bin"), b"\x11" * (12 * MiB))
    a = h = victim = None
    with FrozenSessions(sshd) as server:
        try:
            # a: a small receive buffer, and it reads nothing after login.
            a = login(relay, sshd, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
            rh = a.read_open(big)
            wh = a.write_open(os.path.join(workdir, "a.bin"))
            h = login(relay, sshd)
            start_held_message(relay, h, os.path.join(workdir, "hold.bin"), 1000)
            wait_gauge(relay, BUDGET_GAUGE, HELD)
            # With a's server stopped its 40 read_chunks wait unanswered, so
            # its frame is read and waits behind h's.
            server.freeze()
            send_batch_then_frame(relay, a, read_chunk_batch(rh, 40), wh)
            wait_gauge(relay, WAITING_GAUGE, 1)
            # Now 10 MiB of answers fill a's output, and its reading stays
            # paused for them whether it waits or is admitted.
            server.thaw()
            waits.wait_relay_closed(relay, cport(a), timeout=2 * STALL_WINDOW_SECS + 10)
            victim = login(relay, sshd)
            result = {}
            t = upload_in_thread(victim, os.path.join(workdir, "victim.bin"),
                                 pattern(HELD, 5), result, STALL_WINDOW_SECS + 20)
            t.join(STALL_WINDOW_SECS + 25)
            assert result.get("resp", {}).get("result") == {}, result
        finally:
            for s in (a, h, victim):
                if s:
                    s.close()


def test_a_new_frame_queues_behind_a_waiting_one(relay_factory, sshd, workdir):
    """16 + 8 MiB are held of 32: a 16 MiB chunk waits. A 4 MiB chunk that
    starts next would fit, but waits behind it (room that frees goes to
    those waiting, in order); both go through once a holder leaves."""
    relay = relay_factory(RELAY_MEMORY_BUDGET_MIB=BUDGET_MIB)
    holders, others = [], []
    try:
        for i, size in enumerate((HELD, 8 * MiB)):
            holders.append(login(relay, sshd))
            holders[-1].send_request("write_chunk", {"handle": holders[-1].write_open(
                os.path.join(workdir, "hold-%d.bin" % i))})
            holders[-1].ws.sock.sendall(frame(OP_BINARY, b"\x5a" * 1000, declared=size))
        wait_gauge(relay, BUDGET_GAUGE, HELD + 8 * MiB)
        results, threads = [], []
        for i, size in enumerate((HELD, 4 * MiB)):
            others.append(login(relay, sshd))
            results.append({})
            threads.append(upload_in_thread(others[-1], os.path.join(workdir, "o-%d.bin" % i),
                                            pattern(size, 40 + i), results[-1], 30))
            wait_gauge(relay, WAITING_GAUGE, i + 1)
        assert gauge(relay, BUDGET_GAUGE) == HELD + 8 * MiB
        waits.leave(relay, holders[0])
        for t, r in zip(threads, results):
            t.join(30)
            assert r.get("resp", {}).get("result") == {}, r
    finally:
        for s in holders + others:
            s.close()


def test_a_later_frame_that_does_not_fit_fails_its_message(relay_factory, sshd, workdir):
    """The README's exception: a message sent in several frames is
    admitted by its first, and a later frame that does not fit fails the
    message with the over-cap answer (a pause mid-message could hold the
    budget for ever). The session goes on, and the budget is whole after."""
    relay = relay_factory(RELAY_MEMORY_BUDGET_MIB=SMALL_BUDGET_MIB)
    piece = 64 * 1024
    h = login(relay, sshd)
    f = login(relay, sshd)
    try:
        start_held_message(relay, h, os.path.join(workdir, "h.bin"), MiB)
        handle = f.write_open(os.path.join(workdir, "f.bin"))
        rid = f.send_request("write_chunk", {"handle": handle})
        f.ws.sock.sendall(frame(OP_BINARY, pattern(piece, 1), fin=False))
        wait_gauge(relay, BUDGET_GAUGE, HELD + piece)
        # 8 MiB left in the budget: a 9 MiB later frame does not fit.
        f.ws.sock.sendall(frame(OP_CONT, pattern(9 * MiB, 2)))
        assert f.response(rid, timeout=20) == {"id": rid, "error": "stream buffer limit exceeded",
                                               "code": "limit"}
        assert f.ok("stat", path="/")["isDir"] is True
        waits.leave(relay, h)
        waits.leave(relay, f)
        wait_gauge(relay, BUDGET_GAUGE, 0)
    finally:
        for s in (h, f):
            s.close()


STANDBY = 6
IDLE_SECS = 3           # SFTP_IDLE_TIMEOUT_SECS, where a test sets it
CLOSE_FLUSH_SECS = 10   # ws.c


def hold_unread_output(relay, sshd, workdir):
    """A session with a small receive buffer that asks for 10 MiB of
    reads and reads none of the answers: the relay holds its queued
    output (about 1 MiB) and nothing else of it. Returns it once that is
    held."""
    big = make_file(os.path.join(workdir, "big.bin"), b"\x11" * (12 * MiB))
    d = login(relay, sshd, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    rh = d.read_open(big)
    d.ws.sock.sendall(text_frames(read_chunk_batch(rh, 40)))
    assert wait_until(lambda: gauge(relay, BUDGET_GAUGE) >= SESSION_OUT_HIGH_WATER, 15), \
        "the unread answers were not held"
    return d


def test_a_browser_that_reads_nothing_is_closed_after_its_idle_timeout(relay_factory,
                                                                       sshd, workdir):
    """The idle timeout asked for a close once the queued output was
    out, and a browser that reads nothing never let it out: its session
    and output stayed for ever. Output that does not move for
    CLOSE_FLUSH_SECS is given up."""
    relay = relay_factory(SFTP_IDLE_TIMEOUT_SECS=IDLE_SECS)
    d = hold_unread_output(relay, sshd, workdir)
    try:
        waits.wait_relay_closed(relay, cport(d), timeout=IDLE_SECS + CLOSE_FLUSH_SECS + 5)
        wait_gauge(relay, BUDGET_GAUGE, 0)
        assert "(CLOSE_FLUSH_SECS)" in relay.log_text()
    finally:
        d.close()


def server_frames(data):
    """(opcode, payload) of each whole frame in `data`, bytes a server
    sent (unmasked), and the bytes left over."""
    frames, i = [], 0
    while len(data) - i >= 2:
        n, h = data[i + 1] & 0x7F, 2
        if n == 126:
            n, h = int.from_bytes(data[i + 2:i + 4], "big"), 4
        elif n == 127:
            n, h = int.from_bytes(data[i + 2:i + 10], "big"), 10
        if len(data) - i < h + n:
            break
        frames.append((data[i] & 0x0F, data[i + h:i + h + n]))
        i += h + n
    return frames, data[i:]


SLOW_READ_BYTES_PER_SEC = 16 * 1024


def test_a_slow_reader_is_not_cut_while_its_last_answers_move(relay_factory, sshd, workdir):
    """CLOSE_FLUSH_SECS ends a closing session whose output does not move;
    one whose browser reads slowly still moves it. The rule counted from
    when lws last took a piece (256 KiB) of a frame, so a browser reading
    at 16 KiB/s, 16 s a piece once the kernel's buffers were full, was cut
    10 s into the flush without its answers or a Close. Progress is the
    bytes the browser's TCP acknowledges: the session stays, and every
    answer then arrives before a normal Close."""
    relay = relay_factory(SFTP_IDLE_TIMEOUT_SECS=IDLE_SECS)
    offset = len(relay.log_text())
    d = hold_unread_output(relay, sshd, workdir)
    try:
        wait_gauge(relay, 'wattcloud_relay_sessions{phase="closing"}', 1, timeout=IDLE_SECS + 5)
        sock, got = d.ws.sock, b""
        sock.settimeout(1)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2 * CLOSE_FLUSH_SECS + 5:
            due = int((time.monotonic() - t0) * SLOW_READ_BYTES_PER_SEC)
            if due > len(got):
                got += sock.recv(min(due - len(got), 4096))
            time.sleep(0.05)
        assert relay_holds(relay, d), "a slow but moving reader was cut"
        sock.settimeout(30)
        while True:
            b = sock.recv(1 << 20)
            if not b:
                break
            got += b
        frames, rest = server_frames(got)
        assert rest == b""
        assert frames[-1][0] == 0x8 and frames[-1][1][:2] == (1000).to_bytes(2, "big"), \
            frames[-1]
        assert "(CLOSE_FLUSH_SECS)" not in relay.log_since(offset)
    finally:
        d.close()


CLOSE_FLUSH_MIN_BYTES = 16 * 1024   # ws.c


def test_a_browser_reading_next_to_nothing_does_not_hold_the_flush_open(relay_factory,
                                                                        sshd, workdir):
    """The other side of the slow reader: one that reads 1 KiB a second,
    less than CLOSE_FLUSH_MIN_BYTES per CLOSE_FLUSH_SECS, moved its
    acknowledged bytes on every tick and kept its closing session, and the
    output it held, for as long as it liked. It is closed like one that
    reads nothing."""
    relay = relay_factory(SFTP_IDLE_TIMEOUT_SECS=IDLE_SECS)
    offset = len(relay.log_text())
    d = hold_unread_output(relay, sshd, workdir)
    try:
        wait_gauge(relay, 'wattcloud_relay_sessions{phase="closing"}', 1, timeout=IDLE_SECS + 5)
        sock = d.ws.sock
        sock.settimeout(1)
        t0 = time.monotonic()
        got = 0
        while relay_holds(relay, d) and time.monotonic() - t0 < 3 * CLOSE_FLUSH_SECS:
            due = int((time.monotonic() - t0) * 1024)
            if due > got:
                try:
                    got += len(sock.recv(min(due - got, 1024)))
                except OSError:
                    break
            time.sleep(0.1)
        assert not relay_holds(relay, d), "still flushing after %.0f s" % (
            time.monotonic() - t0)
        assert "(CLOSE_FLUSH_SECS)" in relay.log_since(offset)
    finally:
        d.close()


def test_answers_nobody_reads_do_not_keep_an_upload_waiting(relay_factory, sshd, workdir):
    """A 16 MiB budget, a session holding 1 MiB of answers it does not
    read: a 16 MiB chunk waited for ever (the rule watched reservations
    only), and every upload behind it, the queue being first come first
    served. Held output is held budget: the reader is closed, the chunk
    and the one behind it go through."""
    relay = relay_factory(RELAY_MEMORY_BUDGET_MIB=HELD // MiB)
    d = hold_unread_output(relay, sshd, workdir)
    sessions, results, threads = [d], [], []
    try:
        for i, size in enumerate((HELD, MiB)):
            sessions.append(login(relay, sshd))
            results.append({})
            threads.append(upload_in_thread(sessions[-1], os.path.join(workdir, "u%d.bin" % i),
                                            pattern(size, 60 + i), results[-1],
                                            STALL_WINDOW_SECS + 20))
            wait_gauge(relay, WAITING_GAUGE, i + 1)
        for t, r in zip(threads, results):
            t.join(STALL_WINDOW_SECS + 25)
            assert r.get("resp", {}).get("result") == {}, r
        assert not relay_holds(relay, d)
    finally:
        for s in sessions:
            s.close()


def test_an_upload_stuck_at_a_hung_server_does_not_keep_others_waiting(relay_factory, sshd,
                                                                        workdir):
    """Upload bytes accepted and not yet written are budget too: a 16 MiB
    chunk whose SFTP server stopped answering held them until
    SFTP_OP_TIMEOUT_SECS, however many uploads waited. Its session moves
    nothing, so it is closed when another chunk waits (and its worker cut
    SESSION_RELEASE_MS later, which frees the bytes)."""
    relay = relay_factory(RELAY_MEMORY_BUDGET_MIB=SMALL_BUDGET_MIB)
    offset = len(relay.log_text())
    stuck = victim = None
    with FrozenSessions(sshd) as server:
        try:
            stuck = login(relay, sshd)
            server.write_in_flight(relay, stuck, os.path.join(workdir, "stuck.bin"),
                                   pattern(HELD, 8))
            wait_gauge(relay, BUDGET_GAUGE, HELD)
            victim = login(relay, sshd)
            result = {}
            t = upload_in_thread(victim, os.path.join(workdir, "victim.bin"),
                                 pattern(HELD, 9), result, 3 * STALL_WINDOW_SECS + 20)
            t.join(3 * STALL_WINDOW_SECS + 25)
            assert result.get("resp", {}).get("result") == {}, result
            assert "(MESSAGE_MIN_BYTES_PER_SEC)" in relay.log_since(offset)
            assert "(SFTP_OP_TIMEOUT_SECS)" not in relay.log_since(offset)
        finally:
            for s in (stuck, victim):
                if s:
                    s.close()


def test_a_fragmented_chunk_that_fits_goes_through_while_another_waits(relay_factory,
                                                                       sshd, workdir):
    """A write_chunk sent as four 64 KiB frames (RFC 6455 §5.4; some
    client libraries fragment large messages) was dropped with "stream
    buffer limit exceeded" as soon as another user's frame waited,
    although its fragments fitted. A message already admitted takes
    its later frames when they fit."""
    relay = relay_factory(RELAY_MEMORY_BUDGET_MIB=SMALL_BUDGET_MIB)
    piece = 64 * 1024
    h = login(relay, sshd)
    f = login(relay, sshd)
    w = login(relay, sshd)
    try:
        start_held_message(relay, h, os.path.join(workdir, "h.bin"), MiB)
        wait_gauge(relay, BUDGET_GAUGE, HELD)
        handle = f.write_open(os.path.join(workdir, "f.bin"))
        data = pattern(4 * piece, 3)
        rid = f.send_request("write_chunk", {"handle": handle})
        f.ws.sock.sendall(frame(OP_BINARY, data[:piece], fin=False))
        wait_gauge(relay, BUDGET_GAUGE, HELD + piece)
        start_held_message(relay, w, os.path.join(workdir, "w.bin"), 1000)
        wait_gauge(relay, WAITING_GAUGE, 1)
        for i in range(1, 4):
            f.ws.sock.sendall(frame(OP_CONT, data[i * piece:(i + 1) * piece], fin=(i == 3)))
        assert f.response(rid, timeout=20) == {"id": rid, "result": {}}
        assert f.ok("write_close", handle=handle, timeout=20) == {}
        assert sha256_file(os.path.join(workdir, "f.bin")) == hashlib.sha256(data).hexdigest()
    finally:
        for s in (h, f, w):
            s.close()


def test_sessions_taking_turns_cannot_starve_a_waiting_upload(relay_factory, sshd, workdir):
    """Room that freed went to whoever asked first: a waiting frame was
    retried only at its session's tick, a new frame reserved the moment it
    arrived. An attacker who started a new held frame each time the rule
    closed one of its holders took the freed room every time, and the
    waiting chunk waited on. Now waiting frames are admitted in order and
    a new frame queues behind them."""
    relay = relay_factory(RELAY_MEMORY_BUDGET_MIB=BUDGET_MIB)
    standby = []
    for i in range(STANDBY):
        s = login(relay, sshd)
        s.send_request("write_chunk",
                       {"handle": s.write_open(os.path.join(workdir, "turn-%d.bin" % i))})
        standby.append(s)
    holders = fill_budget(relay, sshd, workdir)
    victim = login(relay, sshd)
    result = {}
    t = upload_in_thread(victim, os.path.join(workdir, "victim.bin"), pattern(HELD, 3),
                         result, 3 * STALL_WINDOW_SECS + 10)
    taken = 0
    try:
        wait_gauge(relay, WAITING_GAUGE, 1)
        # The attacker watches its holders and starts a new held frame the
        # moment one is closed.
        while t.is_alive():
            for i, s in enumerate(holders):
                if not relay_holds(relay, s) and standby:
                    holders[i] = standby.pop()
                    holders[i].ws.sock.sendall(frame(OP_BINARY, b"\x5a" * 1000,
                                                     declared=HELD))
                    taken += 1
            t.join(0.001)
        assert result.get("resp", {}).get("result") == {}, \
            "the attacker took the freed room %d times: %r" % (taken, result)
        assert taken >= 1
    finally:
        for s in holders + standby + [victim]:
            s.close()


def drip_held_frame(sock, data, start, rate, secs):
    """Send `data` from `start` on, as the rest of a frame's payload, at
    `rate` bytes a second for `secs` seconds, paced by the clock (a late
    wake-up sends what is due). Returns the offset reached; stops early
    when the relay closes the connection."""
    off, t0 = start, time.monotonic()
    while time.monotonic() - t0 < secs:
        due = start + int((time.monotonic() - t0) * rate)
        if due > off:
            try:
                sock.sendall(masked(data[off:due], off))
            except OSError:
                return off
            off = due
        time.sleep(8192 / rate)
    return off


def holder_and_waiter(relay, sshd, workdir):
    """A session holding a HELD frame of which it sent 1000 bytes, and
    another whose HELD chunk (sent in a thread) waits for the budget.
    Returns (holder, its handle, its write_chunk's id, its frame's data,
    waiter, its data, its result dict, its thread)."""
    slow = login(relay, sshd)
    handle = slow.write_open(os.path.join(workdir, "slow.bin"))
    rid = slow.send_request("write_chunk", {"handle": handle})
    data = pattern(HELD, 11)
    slow.ws.sock.sendall(frame(OP_BINARY, data[:1000], declared=HELD))
    wait_gauge(relay, BUDGET_GAUGE, HELD)
    victim = login(relay, sshd)
    vdata = pattern(HELD, 12)
    result = {}
    t = upload_in_thread(victim, os.path.join(workdir, "victim.bin"), vdata, result,
                         4 * STALL_WINDOW_SECS)
    wait_gauge(relay, WAITING_GAUGE, 1)
    return slow, handle, rid, data, victim, vdata, result, t


def test_a_holder_moving_over_the_minimum_rate_keeps_its_reservation(relay_factory, sshd,
                                                                      workdir):
    """The honest side of the stall rule: a frame arriving at 1.2 times
    MESSAGE_MIN_BYTES_PER_SEC while another waits, for more than two
    windows, is left alone and completes; the waiting chunk goes next.
    The waiting browser sends nothing meanwhile, for longer than the idle
    timeout: one the relay keeps waiting is not idle (it was closed as
    idle). The test below is the other side of the same line."""
    relay = relay_factory(RELAY_MEMORY_BUDGET_MIB=SMALL_BUDGET_MIB,
                          SFTP_IDLE_TIMEOUT_SECS=IDLE_SECS)
    slow = victim = None
    try:
        slow, handle, rid, data, victim, vdata, result, t = holder_and_waiter(relay, sshd,
                                                                              workdir)
        sock = slow.ws.sock
        off = drip_held_frame(sock, data, 1000, STALL_MIN_BYTES_PER_SEC * 6 // 5,
                              2.5 * STALL_WINDOW_SECS)
        assert relay_holds(relay, slow)
        assert t.is_alive(), "the victim's chunk did not wait: %r" % result
        sock.sendall(masked(data[off:], off))
        assert slow.response(rid, timeout=30) == {"id": rid, "result": {}}
        assert slow.ok("write_close", handle=handle, timeout=30) == {}
        t.join(30)
        assert result.get("resp", {}).get("result") == {}, result
        assert "MESSAGE_MIN_BYTES_PER_SEC" not in relay.log_text()
    finally:
        for s in (slow, victim):
            if s:
                s.close()


def test_a_holder_moving_under_the_minimum_rate_is_closed(relay_factory, sshd, workdir):
    """The other side of the line: the same frame arriving at 0.8 times
    MESSAGE_MIN_BYTES_PER_SEC while another waits is closed at the end of
    a window (the rule counts what moved, not whether anything did), and
    the waiting chunk goes through."""
    relay = relay_factory(RELAY_MEMORY_BUDGET_MIB=SMALL_BUDGET_MIB)
    slow = victim = None
    try:
        slow, _, _, data, victim, vdata, result, t = holder_and_waiter(relay, sshd, workdir)
        t0 = time.monotonic()
        drip_held_frame(slow.ws.sock, data, 1000, STALL_MIN_BYTES_PER_SEC * 4 // 5,
                        2.5 * STALL_WINDOW_SECS)
        waits.wait_relay_closed(relay, cport(slow), timeout=5)
        # Closed after one window, or two when the first began just before
        # the victim's frame was queued.
        assert time.monotonic() - t0 < 2 * STALL_WINDOW_SECS + 3
        t.join(30)
        assert result.get("resp", {}).get("result") == {}, result
        wait_gauge(relay, 'wattcloud_relay_sessions_ended_total{reason="budget_stall"}', 1)
        assert sha256_file(os.path.join(workdir, "victim.bin")) == \
            hashlib.sha256(vdata).hexdigest()
    finally:
        for s in (slow, victim):
            if s:
                s.close()
