"""Hostile WebSocket framing against the real relay: frames written by hand
(masked, as a browser must) on the session's own socket, so the relay sees
exactly the bytes an attacker would send. One crafted frame must never stop
the relay; error answers must not grow its memory without bound."""

import os
import struct
import threading
import time

import procinfo
from helpers import login, pattern, wait_until
from relay import relay_binary


OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
MASK = b"\x11\x22\x33\x44"


def raw_frame(opcode, payload, fin=True, declared=None):
    """One client frame: FIN bit, opcode, masked payload. `declared` puts
    another length into the header than the payload sent (an attacker's
    claim: the relay must judge by it before reading the bytes)."""
    n = len(payload) if declared is None else declared
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return head + MASK + masked


def health_ok(relay, timeout=3):
    try:
        return relay.http("GET", "/health", timeout=timeout)[0] == 200
    except OSError:
        return False


def test_continuation_declaring_2_63_bytes(relay_factory, sshd, workdir):
    relay = relay_factory()
    s = login(relay, sshd)
    try:
        handle = s.write_open(os.path.join(workdir, "crafted.bin"))
        rid = s.send_request("write_chunk", {"handle": handle})
        sock = s.ws.sock
        sock.sendall(raw_frame(OP_BINARY, b"A" * 10, fin=False))
        sock.sendall(raw_frame(OP_CONT, b"B" * 16, fin=False, declared=(1 << 63) - 1))
        resp = s.response(rid, timeout=10)
        assert resp.get("error") == "payload too large", resp
        s.expect_closed(timeout=10)
    finally:
        s.close()
    # The service thread is still serving everyone.
    assert health_ok(relay), "relay stopped answering /health:\n" + relay.log_tail(20)
    other = login(relay, sshd)
    try:
        assert other.ok("stat", path="/")["isDir"] is True
    finally:
        other.close()


def test_fragmented_upload_is_assembled(sftp, workdir):
    """A write_chunk whose binary message comes in five frames (and a ping
    between two of them) is stored whole, in order."""
    path = os.path.join(workdir, "fragmented.bin")
    data = pattern(300 * 1024 + 7, 3)
    handle = sftp.write_open(path)
    rid = sftp.send_request("write_chunk", {"handle": handle})
    sock = sftp.ws.sock
    cuts = [0, 1, 70000, 70000, 200000, len(data)]
    for i in range(5):
        op = OP_BINARY if i == 0 else OP_CONT
        sock.sendall(raw_frame(op, data[cuts[i]:cuts[i + 1]], fin=(i == 4)))
        if i == 2:
            sock.sendall(bytes([0x89, 0x80 | 1]) + MASK + bytes([ord("p") ^ MASK[0]]))
    assert sftp.response(rid, timeout=20) == {"id": rid, "result": {}}
    assert sftp.ok("write_close", handle=handle) == {}
    with open(path, "rb") as f:
        assert f.read() == data


def test_text_message_inside_binary_message_closes(sftp):
    sock = sftp.ws.sock
    sock.sendall(raw_frame(OP_BINARY, b"x" * 10, fin=False))
    sock.sendall(raw_frame(OP_TEXT, b'{"id":9,"method":"stat","params":{"path":"/"}}'))
    frames = sftp.expect_closed(timeout=10)
    assert not any(kind == "text" and d.get("id") == 9 for kind, d in frames), frames


def test_text_message_declared_over_64_kib_is_refused(sftp):
    sock = sftp.ws.sock
    sock.sendall(raw_frame(OP_TEXT, b'{"id":', fin=False, declared=65 * 1024))
    frames = sftp.expect_closed(timeout=10)
    texts = [d for kind, d in frames if kind == "text"]
    assert {"id": 0, "error": "payload too large", "code": "limit"} in texts or \
        any(t.get("error") == "payload too large" for t in texts), frames


# --------------------------------------------------------------------------
# Error answers count against the session's output bound.

# How long the slow reader reads: an unbounded queue grew by ~10 MiB/s,
# so 8 s of it are 80 MiB, over three times the plain build's 24 MiB
# allowance below; the sanitizer build, slower and allowed 64 MiB, keeps
# 15 s.
SLOW_READER_SECS = {False: 8, True: 15}


def test_error_answers_to_a_slow_reader_stay_bounded(relay_factory, sshd):
    """Back-to-back write_chunks on an unknown handle, each with its binary
    frame, from a browser that reads its answers slowly: every answer is an
    error frame the service thread queues itself, without a worker. Reading
    from that browser must pause while its unread output is at the bound,
    so the relay's memory stays flat however long the browser keeps
    sending (it grew by ~10 MiB/s before)."""
    asan = procinfo.sanitized_relay()
    relay = relay_factory(**procinfo.asan_env(relay_binary()))
    pid = relay.proc.pid
    s = login(relay, sshd)
    bad = "wh-" + "0" * 32
    req = raw_frame(OP_TEXT, ('{"id":4294967295,"method":"write_chunk","params":'
                              '{"handle":"%s"}}' % bad).encode())
    batch = (req + raw_frame(OP_BINARY, b"x" * 16)) * 512
    sock = s.ws.sock
    sock.settimeout(2.0)
    stop = threading.Event()
    sent = [0]

    def sender():
        while not stop.is_set():
            try:
                sock.sendall(batch)
            except OSError:
                if stop.is_set():
                    return
                continue  # the relay paused reading: keep trying
            sent[0] += len(batch)

    rss0 = procinfo.rss_kib(pid)
    t = threading.Thread(target=sender, daemon=True)
    t.start()
    peak, t0, got = rss0, time.monotonic(), 0
    try:
        while time.monotonic() - t0 < SLOW_READER_SECS[asan]:
            try:
                got += len(sock.recv(4096))  # ~80 KB/s: a slow reader
            except OSError:
                pass
            time.sleep(0.05)
            peak = max(peak, procinfo.rss_kib(pid))
    finally:
        stop.set()
        t.join(5)
        sock.close()
    print("sent %d MiB, read %d KiB, RSS %d -> %d KiB" % (sent[0] >> 20, got >> 10, rss0, peak))
    limit = rss0 + (64 if asan else 24) * 1024
    assert peak < limit, "RSS grew from %d to %d KiB while answers were read slowly" % (rss0, peak)
    assert wait_until(lambda: health_ok(relay), 10)
