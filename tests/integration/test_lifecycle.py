"""PROTOCOL §6 and §1: start-up validation, /ready while draining, clean exit."""

import os
import signal
import subprocess
import time

import pytest

from helpers import login
from waits import wait_for_log

BAD_SETTINGS = [
    ("POW_DIFFICULTY_BITS", "11"),
    ("POW_DIFFICULTY_BITS", "lots"),
    ("BIND_ADDR", "not-an-address"),
    ("SFTP_ALLOWED_PORTS", "22,abc"),
    ("SFTP_ALLOWED_PORTS", "70000"),
    ("SFTP_ALLOW_PRIVATE_CIDRS", "10.0.0.0/33"),
    ("LOG_LEVEL", "loud"),
    ("SFTP_MAX_CONCURRENT_PER_IP", "-1"),
    ("TLS_CERT", "/nonexistent/cert.pem"),  # without TLS_KEY
]


@pytest.mark.parametrize("name,value", BAD_SETTINGS, ids=["%s=%s" % s for s in BAD_SETTINGS])
def test_invalid_setting_exits_2_naming_it(relay_factory, name, value):
    relay = relay_factory(start=False, **{name: value})
    relay.spawn()
    try:
        relay.proc.wait(timeout=10)
    except Exception:
        relay.kill()
        relay.returncode = 0
        raise AssertionError("relay started with %s=%s" % (name, value))
    assert relay.proc.returncode == 2, relay.log_text()
    assert name in relay.log_text(), relay.log_text()
    relay.returncode = 0  # an expected refusal: nothing to check on stop
    relay.proc = None


def test_sigterm_with_live_session_exits_0(relay_factory, sshd):
    relay = relay_factory(SHUTDOWN_GRACE_SECS=2)
    s = login(relay, sshd)
    assert s.ok("stat", path="/")["isDir"] is True
    t0 = time.monotonic()
    relay.stop_and_check()
    assert time.monotonic() - t0 < 10
    frames = s.expect_closed(timeout=5)
    assert not any(kind == "text" and "id" not in data for kind, data in frames), frames
    s.close()


def test_ready_is_503_while_draining(relay_factory, sshd, workdir):
    relay = relay_factory(SHUTDOWN_GRACE_SECS=5)
    s = login(relay, sshd)
    try:
        assert relay.http("GET", "/ready")[0] == 200
        # An upload whose chunk has not arrived yet is an operation in
        # progress: it keeps the relay draining (an idle one would not).
        handle = s.write_open(os.path.join(workdir, "draining"))
        s.send_request("write_chunk", {"handle": handle})
        # Answered only after the relay read the write_chunk before it.
        assert "result" in s.call("stat", path=workdir)
        relay.proc.send_signal(signal.SIGTERM)
        # The relay logs the drain once it has begun refusing.
        wait_for_log(relay, r"draining: ")
        status, _, _ = relay.http("GET", "/ready")
        assert status == 503
    finally:
        s.close()


def _listening_addresses(pid):
    """Local addresses of the process's listening TCP sockets (from ss)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if "pid=%d," % pid in line]


def test_ipv4_bind_addr_listens_only_there(relay_factory):
    """BIND_ADDR=127.0.0.1:P must not become every interface (lws 4.1 puts an
    IPv4 iface on an IPv6 socket bound to '::' unless IPv6 is disabled)."""
    relay = relay_factory()
    addrs = _listening_addresses(relay.proc.pid)
    assert addrs == ["127.0.0.1:%d" % relay.port], addrs
