"""Attacks on the HTTP surface by an unauthenticated client: slow bodies,
pipelined and kept-alive floods, oversized headers, and upgrade refusals
repeated until the per-client cap on unupgraded connections would show a
leaked count. Loopback only; each attack bounded in count and time."""

import socket
import time

import pytest

import procinfo
from helpers import wait_until

# relay/server.c HTTP_REQUEST_DEADLINE_SECS and http.h CONN_LIMIT_PER_CLIENT.
REQUEST_DEADLINE_SECS = 5
CONN_LIMIT_PER_CLIENT = 64
GOOD_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def health_ok(relay, timeout=3):
    try:
        return relay.http("GET", "/health", timeout=timeout)[0] == 200
    except OSError:
        return False


def connect(relay, src="127.0.0.1", timeout=5, rcvbuf=None):
    """A TCP connection to the relay from `src`. `rcvbuf` is set before
    connecting: shrunk afterwards, below the window already offered, the
    kernel drops the relay's segments whole, acknowledgements included
    (test_attack_flow.SMALL_BUFFERS)."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((src, 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", relay.port))
    return s


def read_all(s):
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        data += b"<timeout>"
    except OSError:
        pass
    return data


def test_auth_body_trickle_is_cut_at_the_request_deadline(relay):
    """PROTOCOL/issue 10.2: a request must arrive complete within the
    deadline. Headers are cut at 5 s; a body sent one byte every 2 s (with
    Content-Length 1000, under the body cap) must be cut too, or one /64
    holds 64 descriptors for hours and many /64s fill the table."""
    s = connect(relay, timeout=0.2)
    s.sendall(b"POST /relay/auth HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    t0 = time.monotonic()
    closed_after = None
    try:
        while time.monotonic() - t0 < 3 * REQUEST_DEADLINE_SECS:
            try:
                s.send(b"{")
            except OSError:
                closed_after = time.monotonic() - t0
                break
            try:
                if s.recv(4096) == b"":
                    closed_after = time.monotonic() - t0
                    break
                closed_after = time.monotonic() - t0  # answered: fine too
                break
            except socket.timeout:
                pass
            time.sleep(1.8)
    finally:
        s.close()
    assert closed_after is not None and closed_after < REQUEST_DEADLINE_SECS + 3, \
        "a trickled body kept its connection for %s s" % (
            "over %d" % (3 * REQUEST_DEADLINE_SECS) if closed_after is None
            else "%.1f" % closed_after)


def test_header_trickle_is_cut_at_the_request_deadline(relay):
    s = connect(relay, timeout=0.2)
    t0 = time.monotonic()
    closed_after = None
    try:
        for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            try:
                s.send(bytes([b]))
                if s.recv(4096) == b"":
                    closed_after = time.monotonic() - t0
                    break
            except socket.timeout:
                pass
            except OSError:
                closed_after = time.monotonic() - t0
                break
            time.sleep(0.3)
    finally:
        s.close()
    assert closed_after is not None and closed_after < REQUEST_DEADLINE_SECS + 3, closed_after


def test_pipelined_requests_never_read(relay):
    """20,000 pipelined GET /health (and challenge requests) on one
    connection whose client never reads: lws must stop reading when its
    answers cannot go out; memory stays flat and others are served."""
    pid = relay.proc.pid
    rss0 = procinfo.rss_kib(pid)
    s = connect(relay, timeout=0.5, rcvbuf=4096)
    req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 500
    sent, t0 = 0, time.monotonic()
    try:
        while sent < 40 * len(req) and time.monotonic() - t0 < 15:
            try:
                sent += s.send(req)
            except socket.timeout:
                break
            except OSError:
                break
        assert health_ok(relay)
        rss = procinfo.rss_kib(pid)
        print("pipelined %d KiB, RSS %d -> %d KiB" % (sent >> 10, rss0, rss))
        assert rss < rss0 + 8 * 1024
    finally:
        s.close()
    assert health_ok(relay)


def test_many_requests_on_one_kept_alive_connection(relay):
    """3,000 requests one after another on one connection: each answered,
    the connection never counted twice, nothing left afterwards."""
    s = connect(relay)
    f = s.makefile("rb")
    try:
        for i in range(3000):
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            line = f.readline()
            assert line.startswith(b"HTTP/1.1 200"), (i, line)
            length = 0
            while True:
                h = f.readline()
                if h in (b"\r\n", b""):
                    break
                if h.lower().startswith(b"content-length:"):
                    length = int(h.split(b":")[1])
            assert f.read(length) == b"ok\n"
    finally:
        f.close()
        s.close()
    assert health_ok(relay)


@pytest.mark.xfail(strict=True, reason="headers beyond lws's budget (server.c "
                   "SERVER_HEADER_BUDGET, 16 KiB) are still dropped without a status; "
                   "issue 10.15 asked for 431")
def test_headers_over_the_lws_budget_get_431(relay):
    s = connect(relay)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n"
              + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 100) for i in range(200)) + b"\r\n")
    data = read_all(s)
    s.close()
    assert data.startswith(b"HTTP/1.1 431 "), data[:80]


def upgrade(path="/relay/ws?mode=sftp&host=127.0.0.1&port=22", extra=""):
    return ("GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n%s\r\n"
            % (path, GOOD_KEY, extra)).encode()


@pytest.mark.parametrize("name,req", [
    ("no cookie", upgrade()),
    ("bad version", upgrade().replace(b"Version: 13", b"Version: 12")),
    ("other path", upgrade("/elsewhere")),
    ("unknown Upgrade", b"GET /relay/ws HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\n"
                        b"Connection: Upgrade\r\n\r\n"),
    ("not HTTP", b"\x16\x03\x01\x02\x00garbage\r\n\r\n"),
    ("CONNECT", b"CONNECT x:22 HTTP/1.0\r\n\r\n"),
    ("chunked auth", b"POST /relay/auth HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ("oversized headers", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20000 + b"\r\n\r\n"),
    ("client hangs up", None),
])
def test_refused_connections_leave_no_count(relay, name, req):
    """Twice the per-client cap of connections, all open at once from one
    address, each refused (or hung up on by the client): afterwards the
    same address still gets CONN_LIMIT_PER_CLIENT connections served at
    once. A count leaked per refusal would lock that address out."""
    src = "127.0.3.%d" % (abs(hash(name)) % 200 + 10)
    for _ in range(2):
        socks = [connect(relay, src) for _ in range(CONN_LIMIT_PER_CLIENT)]
        for s in socks:
            try:
                if req is None:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                else:
                    s.sendall(req)
            except OSError:
                pass
        for s in socks:
            if req is not None:
                read_all(s)
            s.close()
    # The relay has let go of them all: the full cap is available again.
    def cap_free():
        socks = [connect(relay, src) for _ in range(CONN_LIMIT_PER_CLIENT)]
        try:
            for s in socks:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return all(read_all(s).startswith(b"HTTP/1.1 200") for s in socks)
        finally:
            for s in socks:
                s.close()
    assert wait_until(cap_free, 10, 0.5), "address %s is locked out after %s" % (src, name)
