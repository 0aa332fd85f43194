"""Attacks on the relay's output bound and memory budget (issue 10 items
6 and 8): a browser that makes the relay answer while it does not read.
The kernel's socket buffers on loopback grow to 32 MiB (tcp_rmem) and
hide any growth of the relay's own queue, so the attacking client pins its
receive buffer small, before it connects (SMALL_BUFFERS says why then)."""

import os
import socket
import time


import procinfo
from relay import relay_binary
from helpers import login
from waits import _tcp_sockets
from test_attack_ws import OP_BINARY, OP_TEXT, finish, frame, health_ok, login_tracked

TINY_RCVBUF = 4096
STALL_SECS = 3
FLOOD_SECS = 80  # + wait_relay_took's 20 s: under pytest.ini's 120 s


# A small send buffer too: what was sent is then close to what the relay
# has taken. Both are set before the socket connects. Shrinking the receive
# buffer of a connection that has already offered a larger window leaves
# the kernel holding more than the buffer allows: it drops the relay's next
# segments whole, before reading the acknowledgement they carry, so the
# client never learns its requests arrived and both ends back off their
# retransmissions for minutes (seen as "the relay takes 15 KB/s" in CI;
# ss showed the relay's receive queue empty, the client's 107 KiB
# unacknowledged, both at backoff 6).
SMALL_BUFFERS = ((socket.SOL_SOCKET, socket.SO_RCVBUF, TINY_RCVBUF),
                 (socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024))


def flood(sock, batch, secs, stop_bytes=None, state=None, watch=None):
    """Send `batch` again and again (whole frames: a short send goes on
    where it stopped) for `secs` or until `stop_bytes`; returns bytes sent.
    Stops early once sends have blocked for STALL_SECS: the relay stopped
    reading. A later call with the same `state` dict goes on from where
    this one stopped, mid-frame if need be. `watch(sent)`, if given, is
    called about once a second."""
    sock.settimeout(0.5)
    view = memoryview(batch)
    state = {} if state is None else state
    sent, off, t0 = 0, state.get("off", 0), time.monotonic()
    progress = last_watch = t0
    while time.monotonic() - t0 < secs:
        if watch and time.monotonic() - last_watch >= 1:
            last_watch = time.monotonic()
            watch(sent)
        try:
            n = sock.send(view[off:])
        except socket.timeout:
            if time.monotonic() - progress >= STALL_SECS:
                break  # the relay stopped reading
            continue
        except OSError:
            break
        progress = time.monotonic()
        sent += n
        off = (off + n) % len(batch)
        if stop_bytes and sent >= stop_bytes and off == 0:
            break
    state["off"] = off
    return sent


def relay_rx_queue(relay, sock):
    """Bytes the client sent that wait unread in the relay's socket."""
    q = _tcp_sockets(sock.getsockname()[1], relay.port)
    return q.get((relay.port, sock.getsockname()[1]), (0, 0, 0))[2]


def trace_line(relay, sock, pid, sent):
    """One line of what a flood's two ends hold: for the slow runs CI saw."""
    cport = sock.getsockname()[1]
    q = _tcp_sockets(cport, relay.port)
    relay_q = q.get((relay.port, cport), (0, 0, 0))
    client_q = q.get((cport, relay.port), (0, 0, 0))
    return ("%.1f s: sent %d KiB; relay socket: unsent %d KiB, unread %d KiB; "
            "client socket: unsent %d KiB, unread %d KiB; relay CPU %.2f s"
            % (time.monotonic(), sent >> 10, relay_q[1] >> 10, relay_q[2] >> 10,
               client_q[1] >> 10, client_q[2] >> 10, procinfo.cpu_secs(pid)))


def wait_relay_took(relay, socks, timeout=20):
    """Wait until, for each of `socks`, the relay has read everything it
    sent, or has stopped reading it (its receive queue unchanged for
    STALL_SECS). One wait for all: the stalls are watched side by side."""
    last = {sock: None for sock in socks}
    since = {sock: time.monotonic() for sock in socks}
    t0 = time.monotonic()
    while last and time.monotonic() - t0 < timeout:
        for sock in list(last):
            q = relay_rx_queue(relay, sock)
            if q == 0:
                del last[sock]
            elif q != last[sock]:
                last[sock], since[sock] = q, time.monotonic()
            elif time.monotonic() - since[sock] >= STALL_SECS:
                del last[sock]
        time.sleep(0.1)


def test_bad_write_chunks_to_a_browser_that_never_reads(relay_factory, sshd):
    """Item 10.6, made visible: 3 MiB of back-to-back write_chunks on an
    unknown handle, each followed by an empty binary frame (71 bytes on the
    wire, answered by an error of ~75 bytes plus its queue entry), many per
    TCP segment, from a browser whose receive buffer is 4 KiB and which
    never reads. Once its unread output reaches the session's cap the relay
    must stop reading (its socket keeps unread bytes) and its RSS stays
    near where it was. The original code (9a2129c) read everything and held
    every answer."""
    relay = relay_factory(LOG_LEVEL="debug", **procinfo.asan_env(relay_binary()))
    s, sid = login_tracked(relay, sshd, sockopt=SMALL_BUFFERS)
    pid = relay.proc.pid
    sock = s.ws.sock
    req = frame(OP_TEXT, b'{"id":1,"method":"write_chunk","params":{}}')
    batch = (req + frame(OP_BINARY, b"")) * 2000
    total = 6 * 1024 * 1024
    rss0 = procinfo.rss_kib(pid)
    try:
        # A relay that is merely slow for a moment (the sanitizer build on a
        # busy machine) also blocks the sender for STALL_SECS; it then
        # drains its queue, where a paused one keeps it. So flood again
        # until the relay keeps unread bytes or all of `total` went in.
        # The pause comes after 2-3.5 MiB (the kernel takes the first
        # answers into the relay's send buffer), 5-15 s here. FLOOD_SECS
        # bounds the loop inside pytest's own timeout (pytest.ini), so a
        # relay that never pauses fails on the assertion below, not on a
        # timeout; the runs of 2 MiB in 90-120 s seen before were the
        # stalled TCP of SMALL_BUFFERS, not a slow relay.
        sent, t0, state = 0, time.monotonic(), {}
        while True:
            secs = max(1, min(30, FLOOD_SECS - (time.monotonic() - t0)))
            sent += flood(sock, batch, secs, stop_bytes=total - sent, state=state,
                          watch=lambda n: print(trace_line(relay, sock, pid, sent + n)))
            wait_relay_took(relay, [sock])
            left = relay_rx_queue(relay, sock)
            if left > 0 or sent >= total or time.monotonic() - t0 > FLOOD_SECS:
                break
        rss = procinfo.rss_kib(pid)
        print("sent %d KiB in %.0f s, relay left %d KiB unread, RSS %d -> %d KiB"
              % (sent >> 10, time.monotonic() - t0, left >> 10, rss0, rss))
        assert left > 0, "the relay read all %d KiB of requests whose answers were " \
            "never read: reading did not pause" % (sent >> 10)
        # AddressSanitizer adds its quarantine (16 MiB here), shadow memory
        # and redzones to every allocation: the pause (left > 0) is what
        # matters there.
        growth_kib = (64 if procinfo.sanitized_relay() else 6) * 1024
        assert rss < rss0 + growth_kib, (rss0, rss)
        assert health_ok(relay)
    finally:
        sock.close()
        finish(relay, s, sid)


BUDGET_MIB = 32
HALF_SENT_SESSIONS = 6
MSG = 16 * 1024 * 1024  # PROTOCOL §3: the largest binary message


def test_half_sent_messages_count_against_the_budget(relay_factory, sshd, workdir):
    """Item 10.8 from the other side: six sessions each send a write_chunk
    and all but the last byte of its 16 MiB binary frame, and stop there.
    The relay holds 6 x 16 MiB = 96 MiB for them, three times a 32 MiB
    budget; the budget must bound what the relay holds for browsers, so
    reading must pause (or the message be refused) before that."""
    relay = relay_factory(RELAY_MEMORY_BUDGET_MIB=BUDGET_MIB, **procinfo.asan_env(relay_binary()))
    pid = relay.proc.pid
    rss0 = procinfo.rss_kib(pid)
    payload = b"\x5a" * (MSG - 1)
    head = frame(OP_BINARY, b"", declared=MSG)[:-4]  # header + mask bit, no mask yet
    sessions = []
    try:
        for i in range(HALF_SENT_SESSIONS):
            s = login(relay, sshd)
            sessions.append(s)
            h = s.write_open(os.path.join(workdir, "half-%d.bin" % i))
            s.send_request("write_chunk", {"handle": h})
            sock = s.ws.sock
            sock.settimeout(0.5)
            # Mask 0: the masked payload is the payload itself.
            data = head + b"\0\0\0\0" + payload
            off, t0 = 0, time.monotonic()
            while off < len(data) and time.monotonic() - t0 < 10:
                try:
                    off += sock.send(data[off:off + (1 << 20)])
                except socket.timeout:
                    break  # the relay stopped reading: what the test wants
        wait_relay_took(relay, [s.ws.sock for s in sessions])
        rss = procinfo.rss_kib(pid)
        print("RSS %d -> %d KiB with %d half-sent 16 MiB messages"
              % (rss0, rss, len(sessions)))
        assert rss < rss0 + (BUDGET_MIB + 24) * 1024, \
            "the relay holds %d MiB for half-sent messages, budget %d MiB" % (
                (rss - rss0) >> 10, BUDGET_MIB)
        assert health_ok(relay)
    finally:
        # A close frame would land inside the half-sent message (and wait
        # 2 s each for an answer that cannot come): cut the connections.
        for s in sessions:
            s.ws.shutdown()
