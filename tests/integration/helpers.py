"""Shared helpers of the scenarios: logging in, files on disk, waiting."""

import hashlib
import os
import pwd
import re
import time

import pytest

import procinfo
from relay import http_request
from sshd import TEST_PASSWORD, TEST_USER
from wsclient import open_session

LOCAL = "127.0.0.1"
# The answer to a request in flight when the SSH connection ends under it.
LOST = {"error": "connection to the SFTP server lost", "code": "io"}
# ... when the relay's memory limits ended it (relay/ssh_conn.c,
# ssh_memory_refusal): the session's own limit, its place in the budget.
OVER_SESSION_MEMORY = {"error": "the SFTP server made the relay hold more memory than one "
                                "session may", "code": "limit"}
OVER_SHARE = {"error": "the relay ran short of memory and this session held the most",
              "code": "limit"}
EVICTED = {"error": "the relay ran short of memory and ended this session, which held the "
                    "most, to make room for others", "code": "limit"}


def login(relay, sshd, keys=None, key=None, password=TEST_PASSWORD, timeout=15, sockopt=()):
    """An authenticated session on `sshd`: by password, or by the client key
    named `key` (then `keys` is the ClientKeys). `sockopt`: setsockopt()
    arguments for the socket before it connects."""
    s = open_session(relay, LOCAL, sshd.port, timeout=timeout, sockopt=sockopt)
    try:
        s.expect_host_key()
        s.accept_host_key()
        if key is None:
            resp = s.auth_password(TEST_USER, password)
        else:
            resp = s.auth_key(TEST_USER, keys.pem(key), keys.passphrase(key))
        assert resp == {"id": 1, "result": {}}, "auth failed: %r" % resp
    except BaseException:
        s.close()
        raise
    return s


def strip_id(resp):
    return {k: v for k, v in resp.items() if k != "id"}


def expect_fatal(s, resp, want):
    """`resp` is `want`, and the relay then ends the session."""
    assert strip_id(resp) == want, resp
    assert s.expect_closed(timeout=15) == []


def assert_serves(relay, sshd):
    """`relay` answers /health and serves a session on the honest `sshd`:
    what a test checks after attacking it."""
    status, _, _ = relay.http("GET", "/health")
    assert status == 200
    s = login(relay, sshd)
    try:
        assert s.ok("stat", path="/")["isDir"] is True
    finally:
        s.close()


# RSS growth allowed across an attack (ASan keeps up to 16 MiB of freed
# memory in quarantine here; see procinfo.asan_env).
RSS_SLACK_KIB = (48 if procinfo.sanitized_relay() else 24) * 1024
# What a byte the relay holds costs in RSS. Under ASan more than itself:
# shadow memory, redzones and size-class rounding, and every packet's
# transient copies pass through the quarantine; with a cap of 64 MiB, peaks
# of 102 and 117 MiB above the baseline were measured, against 67 MiB
# without ASan.
HELD_RSS_FACTOR = 2 if procinfo.sanitized_relay() else 1


class Usage:
    """RSS, threads and descriptors of the relay before an attack."""

    def __init__(self, relay):
        self.pid = relay.proc.pid
        self.rss = procinfo.rss_kib(self.pid)
        self.threads = procinfo.thread_count(self.pid)
        self.fds = procinfo.fd_count(self.pid)

    def check(self, relay, sshd, held_kib=0):
        """The relay is healthy, serves a real server, and is back to about
        the memory, threads and descriptors it had; its peak stayed within
        RSS_SLACK_KIB plus what the attack may make it hold (held_kib)."""
        assert_serves(relay, sshd)
        pid = self.pid
        assert wait_until(lambda: procinfo.thread_count(pid) <= self.threads, 10), \
            (self.threads, procinfo.thread_count(pid))
        assert wait_until(lambda: procinfo.fd_count(pid) <= self.fds, 10), \
            (self.fds, procinfo.fd_targets(pid))
        rss = procinfo.rss_kib(pid)
        peak = procinfo.status_field(pid, "VmHWM")
        print("RSS %d -> %d KiB, peak %d KiB" % (self.rss, rss, peak))
        assert peak < self.rss + RSS_SLACK_KIB + held_kib * HELD_RSS_FACTOR, (self.rss, peak)


def assert_libssh2_limit_ended(relay, limit_mib):
    """The relay's log says a session ended at SSH_SESSION_MEMORY_MIB =
    limit_mib, and no session's libssh2 held more (the peak each session
    logs at its end)."""
    log = relay.log_text()
    assert "the server made libssh2 hold more than %d MiB (SSH_SESSION_MEMORY_MIB)" % \
        limit_mib in log
    held = [int(k) for k in re.findall(r"libssh2 held at most (\d+) KiB", log)]
    assert held and max(held) <= limit_mib * 1024, held


def gauge(relay, name):
    """One unlabelled sample of the relay's /metrics, as a number."""
    status, _, body = http_request(relay.port, "GET", "/metrics")
    assert status == 200, status
    m = re.search(r"^%s (\S+)$" % re.escape(name), body.decode(), re.M)
    assert m, "no %s in /metrics" % name
    return float(m.group(1))


def wait_gauge(relay, name, want, timeout=10.0):
    """Wait until gauge() of `name` reads `want`."""
    deadline = time.monotonic() + timeout
    while True:
        got = gauge(relay, name)
        if got == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError("%s is %d, not %d, after %.0f s" % (name, got, want, timeout))
        time.sleep(0.02)


def user_ids():
    pw = pwd.getpwnam(TEST_USER)
    return pw.pw_uid, pw.pw_gid


def make_file(path, data):
    """Create a file on disk owned by the test user."""
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, *user_ids())
    return path


def make_dir(path):
    os.mkdir(path)
    os.chown(path, *user_ids())
    return path


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wait_until(predicate, timeout, interval=0.1):
    """Poll `predicate` until it is true; returns its final value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def pattern(n, seed=0):
    """n deterministic but non-repeating-looking bytes (fast for large n)."""
    block = hashlib.sha256(b"wattcloud-%d" % seed).digest() * 2048  # 64 KiB
    reps, rest = divmod(n, len(block))
    out = bytearray(block * reps + block[:rest])
    # Make every 64 KiB block distinct so misplaced chunks are detected.
    for i in range(0, n, len(block)):
        out[i:i + 8] = (i // len(block)).to_bytes(8, "little")[: max(0, min(8, n - i))]
    return bytes(out)


PATCHES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                           "scripts", "libssh2-patches")


def need_our_libssh2(patch):
    """Skip the calling test when the relay under test is built against the
    system's libssh2 (WC_LIBSSH2=system): what it checks is what `patch`
    (scripts/libssh2-patches/) fixes, and upstream libssh2 does not. Also
    used by conftest for @pytest.mark.our_libssh2(patch)."""
    assert os.path.isfile(os.path.join(PATCHES_DIR, patch)), "no libssh2 patch " + patch
    if not procinfo.libssh2_patched():
        pytest.skip("tests what scripts/libssh2-patches/%s fixes; this relay is built "
                    "against the system's libssh2 (WC_LIBSSH2=system)" % patch)
