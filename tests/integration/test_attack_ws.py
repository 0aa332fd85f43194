"""Attacks on the WebSocket side of a session, as a hostile browser would
make them: frames written by hand on the session's own socket (RFC 6455
§5), so the relay sees exactly the bytes an attacker sends. Each attack
must end with the relay answering everyone, its session released, and its
descriptors, threads and memory back near where they started."""

import os
import socket
import subprocess
import re
import struct
import time

import pytest

import procinfo
from helpers import login
from waits import session_ids_since, wait_session_end

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
MASK = b"\x11\x22\x33\x44"


def frame(opcode, payload, fin=True, masked=True, rsv=0, declared=None):
    """One client frame. masked=False leaves out the mask a client must set
    (RFC 6455 §5.1); `declared` claims another payload length."""
    n = len(payload) if declared is None else declared
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mbit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 1 << 16:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def stat_req(rid, path="/"):
    return ('{"id":%d,"method":"stat","params":{"path":"%s"}}' % (rid, path)).encode()


def health_ok(relay, timeout=3):
    try:
        return relay.http("GET", "/health", timeout=timeout)[0] == 200
    except OSError:
        return False


def answered(frames, rid):
    return any(kind == "text" and isinstance(d, dict) and d.get("id") == rid
               for kind, d in frames)


def login_tracked(relay, sshd, **kw):
    """A session and its id (from the relay's log); `kw` goes to login()."""
    offset = relay.log_size()
    s = login(relay, sshd, **kw)
    ids = session_ids_since(relay, offset)
    assert len(ids) == 1, ids
    return s, ids[0]


def finish(relay, s, sid):
    s.close()
    wait_session_end(relay, sid, timeout=20)
    assert health_ok(relay)


# --------------------------------------------------------------------------
# RFC 6455 §5.1: "The server MUST close the connection upon receiving a
# frame that is not masked." Issue 10.15 listed it; nothing checks it.

def lws_version():
    """The installed libwebsockets' Debian version as a tuple, e.g. (4, 1)."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libwebsockets-dev"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    m = re.match(r"(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def test_unmasked_client_frame_closes(relay, sshd):
    """lws 4.1 (Debian 12) and 4.3 (Debian 13) record the mask bit but
    neither check it nor show it to the protocol callback, so there the
    request is served (README, known deviations); a later lws must close."""
    s, sid = login_tracked(relay, sshd)
    try:
        s.ws.sock.sendall(frame(OP_TEXT, stat_req(77), masked=False))
        # The first frame decides: a close, or the answer (served). An lws
        # that serves it keeps the session open, which a masked request
        # answered next shows at once, instead of waiting out a close that
        # does not come.
        kind, first = s.recv_frame(timeout=10)
        if kind != "close" and answered([(kind, first)], 77) and lws_version() < (4, 4):
            assert s.ok("stat", path="/", timeout=10)["isDir"] is True
            pytest.xfail("lws 4.1 and 4.3 serve unmasked client frames "
                         "(README, known deviations)")
        frames = [] if kind == "close" else [(kind, first)] + s.expect_closed(timeout=10)
        assert not answered(frames, 77), "the relay served an unmasked request: %r" % frames
    finally:
        finish(relay, s, sid)


# --------------------------------------------------------------------------
# Protocol violations that RFC 6455 says fail the connection. Each must
# close the session without serving the request it carried.

@pytest.mark.parametrize("name,raw", [
    ("continuation with nothing open", frame(OP_CONT, stat_req(78))),
    ("reserved bit set", frame(OP_TEXT, stat_req(78), rsv=4)),
    ("reserved data opcode", frame(0x3, stat_req(78))),
    ("reserved control opcode", frame(0xB, b"x")),
    ("fragmented ping", frame(OP_PING, b"x", fin=False)),
    ("ping over 125 bytes", frame(OP_PING, b"x" * 126)),
])
def test_protocol_violation_closes(relay, sshd, name, raw):
    s, sid = login_tracked(relay, sshd)
    try:
        s.ws.sock.sendall(raw + frame(OP_TEXT, stat_req(79)))
        frames = s.expect_closed(timeout=10)
        assert not answered(frames, 78) and not answered(frames, 79), (name, frames)
    finally:
        finish(relay, s, sid)


def test_invalid_utf8_split_across_fragments_closes(relay, sshd):
    """A text message whose UTF-8 is broken only across a fragment
    boundary (a lead byte ending one fragment, an ASCII byte opening the
    next): lws validates UTF-8 (LWS_SERVER_OPTION_VALIDATE_UTF8) and must
    close (1007) without the request being served."""
    s, sid = login_tracked(relay, sshd)
    try:
        msg = b'{"id":80,"method":"stat","params":{"path":"/\xc3'
        rest = b'A"}}'
        s.ws.sock.sendall(frame(OP_TEXT, msg, fin=False) + frame(OP_CONT, rest))
        frames = s.expect_closed(timeout=10)
        assert not answered(frames, 80), frames
    finally:
        finish(relay, s, sid)


def test_close_inside_a_message_ends_the_session(relay, sshd):
    """A Close between the fragments of a binary message that a
    write_chunk waits for: the session ends, its worker and upload go."""
    s, sid = login_tracked(relay, sshd)
    try:
        h = s.write_open("/tmp/attack-close-mid-%d.bin" % os.getpid())
        s.send_request("write_chunk", {"handle": h})
        s.ws.sock.sendall(frame(OP_BINARY, b"a" * 1000, fin=False)
                          + frame(OP_CLOSE, struct.pack("!H", 1000))
                          + frame(OP_CONT, b"b" * 10))
        s.expect_closed(timeout=10)
    finally:
        finish(relay, s, sid)


def test_control_frames_inside_a_text_message(relay, sshd):
    """Pings and unsolicited pongs between the fragments of a text request
    are legal; the request is served once, whole."""
    s, sid = login_tracked(relay, sshd)
    try:
        req = stat_req(81)
        parts = [req[:5], req[5:20], req[20:]]
        raw = frame(OP_TEXT, parts[0], fin=False) + frame(OP_PING, b"p1") \
            + frame(OP_CONT, parts[1], fin=False) + frame(OP_PONG, b"unsolicited") \
            + frame(OP_CONT, parts[2])
        s.ws.sock.sendall(raw)
        resp = s.response(81, timeout=10)
        assert resp["result"]["isDir"] is True
    finally:
        finish(relay, s, sid)


def test_empty_fragment_flood_is_cheap(relay, sshd):
    """200,000 empty continuation frames inside one binary message (6 bytes
    each on the wire): no busy loop, no memory growth; /health answers
    meanwhile and the message still completes."""
    s, sid = login_tracked(relay, sshd)
    pid = relay.proc.pid
    rss0 = procinfo.rss_kib(pid)
    try:
        sock = s.ws.sock
        sock.sendall(frame(OP_BINARY, b"", fin=False))
        burst = frame(OP_CONT, b"", fin=False) * 20000
        t0 = time.monotonic()
        for _ in range(10):
            sock.sendall(burst)
            assert health_ok(relay), "/health stopped answering during the flood"
        sock.sendall(frame(OP_CONT, b"", fin=True) + frame(OP_TEXT, stat_req(82)))
        resp = s.response(82, timeout=20)
        assert "result" in resp, resp
        took = time.monotonic() - t0
        assert took < 30, took
        assert procinfo.rss_kib(pid) < rss0 + 8 * 1024
    finally:
        finish(relay, s, sid)


def test_ping_flood_from_a_browser_that_never_reads(relay, sshd):
    """Pings of 125 bytes sent as fast as possible by a browser that never
    reads the pongs: lws keeps one pending pong, so the relay's memory
    must stay flat, and reading pauses by TCP alone."""
    s, sid = login_tracked(relay, sshd)
    pid = relay.proc.pid
    rss0 = procinfo.rss_kib(pid)
    sock = s.ws.sock
    sock.settimeout(0.5)
    ping = frame(OP_PING, b"P" * 125) * 2000
    sent = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 8:
            try:
                sock.sendall(ping)
                sent += len(ping)
            except socket.timeout:
                pass
            if sent > 200 * 1024 * 1024:
                break
        peak = procinfo.rss_kib(pid)
        print("sent %d MiB of pings, RSS %d -> %d KiB" % (sent >> 20, rss0, peak))
        assert peak < rss0 + 16 * 1024, (rss0, peak)
        assert health_ok(relay)
    finally:
        finish(relay, s, sid)
