"""Faults on every side of a session, against the real sshd.

Each scenario ends with the same three checks: the browser got a clear
answer (an error on the pending request id, an error frame before the
host key, or at least a close — never a hang or a false success), the
relay is still healthy (/health answers, a new session works), and
nothing leaked (the relay's threads and file descriptors come back to
what they were before the scenario).
"""

import os
import signal
import threading
import time

import pytest
import websocket

import fakeservers
import procinfo
from blackhole import BlackholeProxy
from helpers import LOCAL, login, make_file, pattern, user_ids, wait_until
from relay import relay_binary
from waits import leave, session_ids_since, wait_session_end
from wsclient import MiB, READ_CHUNK, open_session

SETTLE_SECS = 10


# --------------------------------------------------------------------------
# Health and leak checks.

class Baseline:
    """Threads and fds of an idle relay, taken after one warm-up session so
    that one-time initialisation is not counted as a leak."""

    def __init__(self, relay, sshd):
        self.relay = relay
        self.sshd = sshd
        offset = relay.log_size()
        s = login(relay, sshd)
        assert s.ok("stat", path="/")["isDir"] is True
        leave(relay, s)
        # Counted once the relay has let go of the session entirely, its
        # sockets included: counted earlier, a leak could hide in the baseline.
        (sid,) = session_ids_since(relay, offset)
        wait_session_end(relay, sid, SETTLE_SECS)
        pid = relay.proc.pid
        assert wait_until(lambda: procinfo.thread_count(pid) == 1, SETTLE_SECS), \
            "the warm-up session's worker did not end"
        self.threads = procinfo.thread_count(pid)
        self.fds = procinfo.fd_count(pid)

    def counts(self):
        pid = self.relay.proc.pid
        return procinfo.thread_count(pid), procinfo.fd_count(pid)

    def settled(self):
        threads, fds = self.counts()
        return threads <= self.threads and fds <= self.fds

    def assert_recovered(self):
        """/health, no leaked thread or fd, and a new session works."""
        assert self.relay.alive(), "the relay died:\n" + self.relay.log_tail(40)
        if not wait_until(self.settled, SETTLE_SECS):
            threads, fds = self.counts()
            raise AssertionError(
                "relay did not settle within %d s: threads %d (baseline %d), fds %d "
                "(baseline %d): %r" % (SETTLE_SECS, threads, self.threads, fds, self.fds,
                                       sorted(procinfo.fd_targets(self.relay.proc.pid))))
        status, _, body = self.relay.http("GET", "/health")
        assert status == 200, (status, body)
        s = login(self.relay, self.sshd)
        try:
            assert s.ok("stat", path="/")["isDir"] is True
        finally:
            s.close()
        assert wait_until(self.settled, SETTLE_SECS), "a clean session leaked: %r" % (
            self.counts(),)


@pytest.fixture
def fresh(relay_factory, sshd):
    """A relay of its own and its baseline: (relay, Baseline)."""
    relay = relay_factory()
    return relay, Baseline(relay, sshd)


def collect_until_closed(s, timeout):
    """Frames until the relay closes; fails on a hang."""
    return s.expect_closed(timeout=timeout)


def id_frames(frames):
    return [d for kind, d in frames if kind == "text"]


def assert_no_typeless_frames(frames):
    """After auth the SPA reads only {"id":...} frames (PROTOCOL §2.5)."""
    bad = [d for d in id_frames(frames) if "id" not in d]
    assert not bad, "frames without id after auth: %r" % bad


# --------------------------------------------------------------------------
# sshd's per-connection process killed.

def kill_sessions_of(sshd):
    """SIGKILL the per-connection processes of `sshd` (monitor and the
    user's sftp process); the listener stays."""
    pids = sshd.descendant_pids()
    assert pids, "no per-connection sshd process found"
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def test_sshd_killed_mid_download(fresh, sshd, workdir):
    relay, base = fresh
    path = make_file(os.path.join(workdir, "big"), pattern(16 * MiB, 1))
    s = login(relay, sshd)
    try:
        h = s.read_open(path)
        resp, data = s.call_then_binary("read_chunk", handle=h)
        assert len(data) == READ_CHUNK
        kill_sessions_of(sshd)
        # A chunk read ahead before the kill may still come; then the
        # failure must be answered on the request's id, or the session ends.
        errors = []
        for _ in range(4):
            rid = s.send_request("read_chunk", {"handle": h})
            kind, frame = s.recv_frame(timeout=10)
            if kind == "close":
                break
            assert kind == "text" and frame.get("id") == rid, (kind, frame)
            if "error" in frame:
                errors.append(frame)
                break
            assert s.recv_binary(timeout=10)
        assert errors, "the browser was never told the download failed"
        print("sshd killed mid-download: %r" % errors[0])
        assert "lost" in errors[0]["error"] or errors[0].get("code") in ("io", "timeout"), \
            errors[0]
        assert_no_typeless_frames(collect_until_closed(s, 10))
    finally:
        s.close()
    base.assert_recovered()


def test_sshd_killed_mid_upload(fresh, sshd, workdir):
    relay, base = fresh
    path = os.path.join(workdir, "up")
    s = login(relay, sshd)
    try:
        h = s.write_open(path)
        assert s.write_chunk(h, pattern(1 * MiB, 2))["result"] == {}
        kill_sessions_of(sshd)
        # write_chunk may be acknowledged before its bytes are written
        # (write-through); the upload as a whole must never succeed.
        frames = []
        closed = False
        for i in range(3):
            try:
                rid = s.send_request("write_chunk", {"handle": h})
                s.send_binary(pattern(1 * MiB, 3 + i))
            except (OSError, websocket.WebSocketException):
                closed = True
                break
            kind, frame = s.recv_frame(timeout=10)
            if kind == "close":
                closed = True
                break
            assert frame.get("id") == rid, frame
            frames.append(frame)
            if "error" in frame:
                break
        if not closed:
            try:
                rid = s.send_request("write_close", {"handle": h})
                kind, frame = s.recv_frame(timeout=10)
                if kind == "text":
                    assert frame.get("id") == rid, frame
                    assert "error" in frame, \
                        "write_close answered %r after the server died" % frame
                    frames.append(frame)
            except (OSError, websocket.WebSocketException):
                pass
        print("sshd killed mid-upload: frames %r, closed %s" % (frames, closed))
        assert closed or any("error" in f for f in frames), frames
        assert_no_typeless_frames(collect_until_closed(s, 10))
    finally:
        s.close()
    base.assert_recovered()


# --------------------------------------------------------------------------
# The path to sshd black-holed (open, silent).

BLACKHOLE_SETTINGS = dict(SSH_KEEPALIVE_SECS=1, SSH_KEEPALIVE_COUNT=2,
                          SFTP_OP_TIMEOUT_SECS=3)


@pytest.fixture
def proxied(relay_factory, sshd):
    proxy = BlackholeProxy(sshd.port)
    try:
        relay = relay_factory(extra_ports=[proxy.port], **BLACKHOLE_SETTINGS)
        yield relay, Baseline(relay, sshd), proxy
    finally:
        proxy.close()


class Via:
    """Looks like an Sshd to login(): the proxy's port."""

    def __init__(self, port):
        self.port = port


def test_blackholed_request_gets_an_error(proxied, workdir):
    relay, base, proxy = proxied
    path = make_file(os.path.join(workdir, "f"), pattern(16 * MiB, 4))
    s = login(relay, Via(proxy.port))
    try:
        h = s.read_open(path)
        assert len(s.call_then_binary("read_chunk", handle=h)[1]) == READ_CHUNK
        # The read-ahead of the next chunk may or may not be done when the
        # proxy freezes: both are covered below (replies in flight still
        # arrive; a read-ahead caught by the freeze times out like any
        # request), so nothing is waited for here.
        proxy.freeze()
        t0 = time.monotonic()
        error = None
        # Replies already in flight (libssh2 reads up to 1 MiB ahead) still
        # arrive; the first request the server cannot answer gets the error.
        for _ in range(40):
            rid = s.send_request("read_chunk", {"handle": h})
            kind, frame = s.recv_frame(timeout=15)
            if kind == "close":
                break
            assert frame.get("id") == rid, frame
            if "error" in frame:
                error = frame
                break
            s.recv_binary(timeout=5)
        elapsed = time.monotonic() - t0
        assert error is not None, "no error for the request the server never answered"
        # The read ahead may have been waiting since before the freeze, so
        # only the upper bound is sharp.
        assert elapsed <= 9, "error after %.1f s, SFTP_OP_TIMEOUT_SECS=3" % elapsed
        frames = collect_until_closed(s, 10)
        assert_no_typeless_frames(frames)
    finally:
        s.close()
    base.assert_recovered()


def test_blackholed_idle_session_is_closed_by_keepalive(proxied):
    relay, base, proxy = proxied
    s = login(relay, Via(proxy.port))
    try:
        assert s.ok("stat", path="/")["isDir"] is True
        proxy.freeze()
        t0 = time.monotonic()
        frames = collect_until_closed(s, 20)
        elapsed = time.monotonic() - t0
        assert_no_typeless_frames(frames)
        # keepalive every 1 s, declared dead after 2 unanswered.
        assert elapsed <= 8, "closed %.1f s after the path went dead" % elapsed
    finally:
        s.close()
    base.assert_recovered()


def test_blackholed_before_auth(proxied, sshd):
    """Frozen between host key and auth: the auth request times out."""
    relay, base, proxy = proxied
    s = open_session(relay, LOCAL, proxy.port)
    try:
        s.expect_host_key()
        proxy.freeze()
        s.accept_host_key()
        t0 = time.monotonic()
        rid = s.send_request("auth", {"type": "password", "username": "wctest",
                                      "password": "irrelevant"})
        kind, frame = s.recv_frame(timeout=30)
        if kind == "text":
            assert frame.get("id") == rid and "error" in frame, frame
        assert time.monotonic() - t0 <= 15
        collect_until_closed(s, 10)
    finally:
        s.close()
    base.assert_recovered()


# --------------------------------------------------------------------------
# The browser goes away.

def sftp_processes_holding(sshd, path):
    """Pids among sshd's per-connection processes with `path` open."""
    out = []
    for pid in sshd.descendant_pids():
        try:
            fds = os.listdir("/proc/%d/fd" % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == path:
                    out.append(pid)
                    break
            except OSError:
                pass
    return out


def test_browser_vanishes_mid_download_closes_remote_handle(fresh, sshd, workdir):
    relay, base = fresh
    path = make_file(os.path.join(workdir, "dl"), pattern(8 * MiB, 5))
    s = login(relay, sshd)
    h = s.read_open(path)
    assert len(s.call_then_binary("read_chunk", handle=h)[1]) == READ_CHUNK
    assert wait_until(lambda: sftp_processes_holding(sshd, path), 5), \
        "the sftp server does not show the open file (test cannot see it)"
    s.send_request("read_chunk", {"handle": h})
    s.ws.sock.close()  # no close handshake
    assert wait_until(lambda: not sftp_processes_holding(sshd, path), 10), \
        "the SFTP server still has the file open 10 s after the browser left"
    base.assert_recovered()


def test_browser_vanishes_mid_upload_removes_partial_file(fresh, sshd, workdir):
    # test_streams.py covers the plain case; here with chunks still queued
    # in the relay when the browser goes.
    relay, base = fresh
    path = os.path.join(workdir, "partial")
    s = login(relay, sshd)
    h = s.write_open(path)
    assert s.write_chunk(h, pattern(1 * MiB, 6))["result"] == {}
    for i in range(4):
        s.send_request("write_chunk", {"handle": h})
        s.send_binary(pattern(4 * MiB, 7 + i))
    s.ws.sock.close()
    assert wait_until(lambda: not os.path.exists(path), 10), \
        "partial upload still on the server 10 s after the browser left"
    base.assert_recovered()


# --------------------------------------------------------------------------
# A browser that asks and never reads: memory must stay bounded.

def rss_limit_kib():
    """64 MiB for a plain build. AddressSanitizer keeps freed memory in
    quarantine and adds shadow memory: the relay is started with a small
    quarantine and allowed more."""
    return (160 if procinfo.sanitized_relay() else 64) * 1024


def asan_env():
    return procinfo.asan_env(relay_binary())


def watch_rss(pid, secs):
    peak = 0
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        peak = max(peak, procinfo.rss_kib(pid))
        time.sleep(0.1)
    return peak


def send_in_thread(fn):
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("legacy", [False, True], ids=["read_chunk", "legacy_read"])
def test_browser_that_never_reads_keeps_memory_bounded(relay_factory, sshd, workdir, legacy):
    relay = relay_factory(**asan_env())
    base = Baseline(relay, sshd)
    pid = relay.proc.pid
    if legacy:
        size = 16 * MiB
        path = make_file(os.path.join(workdir, "legacy"), pattern(size, 8))
    else:
        size = 200 * MiB
        path = os.path.join(workdir, "huge")
        with open(path, "wb") as f:
            f.truncate(size)  # sparse: reads as zeros, costs no disk
        os.chown(path, *user_ids())
    rss0 = procinfo.rss_kib(pid)
    s = login(relay, sshd)
    try:
        if legacy:
            n = 16  # 256 MiB asked for in all
            send_in_thread(lambda: [s.send_request("read", {"path": path})
                                    for _ in range(n)])
        else:
            h = s.read_open(path)
            n = size // READ_CHUNK + 1
            send_in_thread(lambda: [s.send_request("read_chunk", {"handle": h})
                                    for _ in range(n)])
        peak = watch_rss(pid, 5)
        assert peak < rss_limit_kib(), \
            "relay RSS peaked at %d KiB (from %d KiB) with a browser that does not read" \
            % (peak, rss0)
        # Everything asked for still arrives, in order, once the browser reads.
        for i in range(6):
            frame = s.recv_text(timeout=30)
            assert "result" in frame, frame
            got = s.recv_binary(timeout=30)
            assert len(got) == (size if legacy else READ_CHUNK)
    finally:
        s.ws.sock.close()  # leave with everything still queued
    print("RSS: idle %d KiB, peak %d KiB while not reading (%s)"
          % (rss0, peak, "legacy read x16 of 16 MiB" if legacy else "200 MiB read_chunk"))
    base.assert_recovered()


# --------------------------------------------------------------------------
# Servers that are not quite SSH servers.

def test_garbage_after_valid_banner_is_kex_failed(relay_factory, sshd):
    # The first byte 0xff makes the "packet length" absurd, so the failure
    # is immediate whatever the rest says.
    junk = b"\xff" + os.urandom(4095)
    server = fakeservers.FakeServer([("send", b"SSH-2.0-x\r\n"), ("send", junk)])
    try:
        relay = relay_factory(extra_ports=[server.port])
        base = Baseline(relay, sshd)
        s = open_session(relay, LOCAL, server.port)
        try:
            kind, frame = s.recv_frame(timeout=15)
            assert kind == "text", (kind, frame)
            assert frame.get("type") == "error" and frame.get("code") == "kex_failed", frame
            collect_until_closed(s, 10)
        finally:
            s.close()
        base.assert_recovered()
    finally:
        server.close()


def test_garbage_of_plausible_length_after_banner(relay_factory, sshd):
    """Random bytes that may look like a small packet: either way the relay
    must fail key exchange within its timeout, not hang."""
    junk = b"\x00\x00\x01\x00" + os.urandom(8192)
    server = fakeservers.FakeServer([("send", b"SSH-2.0-x\r\n"), ("send", junk)])
    try:
        relay = relay_factory(extra_ports=[server.port], SSH_CONNECT_TIMEOUT_SECS=3)
        base = Baseline(relay, sshd)
        s = open_session(relay, LOCAL, server.port)
        try:
            kind, frame = s.recv_frame(timeout=20)
            assert kind == "text", (kind, frame)
            assert frame.get("type") == "error" and frame.get("code") == "kex_failed", frame
            collect_until_closed(s, 10)
        finally:
            s.close()
        base.assert_recovered()
    finally:
        server.close()


# --------------------------------------------------------------------------
# A full disk on the SFTP server.

def test_disk_full_streamed_upload_is_reported(fresh, sshd, small_fs):
    relay, base = fresh
    path = os.path.join(small_fs, "too-big")
    s = login(relay, sshd)
    try:
        h = s.write_open(path)
        error = None
        for i in range(16):
            resp = s.write_chunk(h, pattern(1 * MiB, 20 + i), timeout=30)
            if "error" in resp:
                error = resp
                break
        if error is None:
            resp = s.call("write_close", handle=h, timeout=30)
            assert "error" in resp, \
                "write_close answered %r for 16 MiB into an 8 MiB file system" % resp
            error = resp
        else:
            # The handle is failed: closing it reports the failure again.
            resp = s.call("write_close", handle=h, timeout=30)
            assert "error" in resp, resp
        print("disk full: %r, then write_close %r" % (error, resp))
        assert error.get("code") in ("io", "no_space"), error
        # Nothing claims to be the uploaded file.
        assert not os.path.exists(path), "the partial upload was left on the server"
        # The session is still usable, and the space is back.
        assert s.ok("stat", path=small_fs)["isDir"] is True
        s.upload(os.path.join(small_fs, "fits"), pattern(1 * MiB, 40))
    finally:
        s.close()
    base.assert_recovered()


def test_disk_full_legacy_write_is_reported(fresh, sshd, small_fs):
    relay, base = fresh
    path = os.path.join(small_fs, "too-big-legacy")
    s = login(relay, sshd)
    try:
        data = pattern(12 * MiB, 41)
        resp = s.request_with_binary("write", {"path": path, "size": len(data)}, data,
                                     timeout=30)
        assert "error" in resp, "legacy write of 12 MiB into 8 MiB answered %r" % resp
        assert not os.path.exists(path), "the partial legacy write was left on the server"
    finally:
        s.close()
    base.assert_recovered()
