"""Fixtures: real sshd servers, the relay under test, the test user's files.

Run from the repository root:
    RELAY_BIN=build/wattcloud-relay /usr/bin/python3 -m pytest -q tests/integration

Logs (sshd, relay) and keys of a run go to tests/artifacts/run-*/ (or under
WC_ARTIFACTS_DIR), printed at the end of the run. Must run as root: it creates the
local user `wctest` and starts sshd.
"""

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import sshd as sshd_mod  # noqa: E402
from helpers import login, make_dir, need_our_libssh2, user_ids  # noqa: E402
from relay import Relay, relay_binary  # noqa: E402

# Settings every relay of the suite gets (PROTOCOL §6 and relay/config.h).
BASE_ENV = {
    "SFTP_ALLOW_PRIVATE_CIDRS": "127.0.0.0/8",
    "POW_DIFFICULTY_BITS": "12",
    "LOG_LEVEL": "debug",
    # The suite opens far more sessions per minute than a browser; each needs
    # a challenge. The rate limit itself is tested with its own relay.
    "AUTH_CHALLENGE_PER_MIN": "100000",
    # Tests run one after another and close their sessions, but a failing
    # test must not make the next ones fail with 429. The limit itself is
    # tested with SFTP_MAX_CONCURRENT_PER_IP=3.
    "SFTP_MAX_CONCURRENT_PER_IP": "16",
    "SHUTDOWN_GRACE_SECS": "3",
}


# --------------------------------------------------------------------------
# Reporting: keep each phase's result on the test item so fixtures can print
# the relay log of a failed test; print where the logs are.

@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request):
    rep = getattr(request.node, "rep_call", None)
    return rep is not None and rep.failed


_RUN_DIR = []


# Tests of what one of our libssh2 patches fixes carry
# @pytest.mark.our_libssh2("name.patch"): skipped, with the patch named,
# against a relay built with the system's libssh2.
def pytest_configure(config):
    config.addinivalue_line("markers", "our_libssh2(patch): the test checks what that "
                            "patch of scripts/libssh2-patches/ fixes")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    for mark in item.iter_markers("our_libssh2"):
        need_our_libssh2(*mark.args)


def pytest_terminal_summary(terminalreporter):
    if _RUN_DIR:
        terminalreporter.write_line("wattcloud integration logs: %s" % _RUN_DIR[0])


# --------------------------------------------------------------------------
# Run directory, user, keys, sshd servers.

ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "artifacts")
KEEP_RUNS = 5
PRUNE_AFTER_SECS = 3 * 3600


@pytest.fixture(scope="session")
def run_dir():
    """tests/artifacts/run-<time>-<rand>/ (git-ignored): keys, sshd and relay
    logs of this run. The last KEEP_RUNS runs, and any from the last
    PRUNE_AFTER_SECS, are kept."""
    base = os.path.abspath(os.environ.get("WC_ARTIFACTS_DIR") or ARTIFACTS)
    os.makedirs(base, exist_ok=True)
    os.chmod(base, 0o755)
    # Prune old runs, never one that may still be going (runs can overlap).
    old = sorted(d for d in os.listdir(base) if d.startswith("run-"))
    for d in old[:max(0, len(old) - KEEP_RUNS + 1)]:
        path = os.path.join(base, d)
        if time.time() - os.path.getmtime(path) > PRUNE_AFTER_SECS:
            shutil.rmtree(path, ignore_errors=True)
    path = tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=base)
    os.chmod(path, 0o755)  # for a developer's eyes; sshd reads nothing here as the user
    _RUN_DIR.append(path)
    return path


@pytest.fixture(scope="session")
def test_user():
    assert os.geteuid() == 0, "the integration tests run as root (useradd, sshd)"
    return sshd_mod.ensure_test_user()


@pytest.fixture(scope="session")
def client_keys(run_dir):
    return sshd_mod.ClientKeys(os.path.join(run_dir, "keys"))


@pytest.fixture(scope="session")
def authorized_keys(test_user, client_keys):
    """The test user's authorized_keys, outside the checkout (which may sit
    under /root, where the user cannot reach it); checked readable as the
    user, else the run stops here with the reason."""
    ak = sshd_mod.AuthorizedKeys(client_keys.public_keys(), test_user)
    yield ak
    ak.remove()


@pytest.fixture(scope="session")
def sshd_servers(run_dir, authorized_keys):
    """The shared sshd variants, started once per run (each takes ~50 ms)."""
    servers = {}
    try:
        for variant in sshd_mod.SHARED_VARIANTS:
            servers[variant] = sshd_mod.Sshd(
                os.path.join(run_dir, "sshd-" + variant), variant,
                authorized_keys.pattern).start()
        yield servers
    finally:
        for s in servers.values():
            s.stop()


# Lines of each sshd log shown with a failed test: the reason a login or
# connection failed (penalties, a refused key, an unreadable file) is often
# only there.
SSHD_LOG_TAIL_LINES = 40


def print_sshd_logs(servers, marks):
    """Print what each of `servers` (name -> Sshd) logged since `marks`."""
    for name, server in servers.items():
        lines = server.log_since(marks.get(name, 0)).splitlines()
        if lines:
            print("---- sshd %s log during this test (%s, last %d of %d lines) ----\n%s"
                  % (name, server.log_path, min(len(lines), SSHD_LOG_TAIL_LINES),
                     len(lines), "\n".join(lines[-SSHD_LOG_TAIL_LINES:])))


@pytest.fixture(autouse=True)
def sshd_logs_on_failure(request):
    """With a failed test that used the shared sshd servers, print the tail
    of what they logged during it next to the test's own output."""
    if "sshd_servers" not in request.fixturenames:
        yield
        return
    servers = request.getfixturevalue("sshd_servers")
    marks = {name: s.log_size() for name, s in servers.items()}
    yield
    if _failed(request):
        print_sshd_logs(servers, marks)


@pytest.fixture
def sshd_variant(request, run_dir, authorized_keys):
    """sshd_variant(name) -> a started Sshd of a variant outside the shared
    set (its own directory); stopped after the test, its log printed when
    the test failed."""
    started = []

    def start(variant):
        n = len(started) + 1
        server = sshd_mod.Sshd(os.path.join(run_dir, "sshd-%s-%s-%d" % (
            variant, _safe_name(request.node), n)), variant, authorized_keys.pattern)
        started.append(server)
        return server.start()

    yield start
    if _failed(request):
        print_sshd_logs({s.variant: s for s in started}, {})
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def sshd(sshd_servers):
    """Password + public key; ed25519, ECDSA and RSA host keys."""
    return sshd_servers["default"]


@pytest.fixture(scope="session")
def sshd_kbd(sshd_servers):
    """PAM keyboard-interactive only."""
    return sshd_servers["kbd"]


@pytest.fixture(scope="session")
def sshd_rsa_only(sshd_servers):
    return sshd_servers["rsa_only"]


@pytest.fixture(scope="session")
def sshd_ecdsa_rsa(sshd_servers):
    return sshd_servers["ecdsa_rsa"]


# --------------------------------------------------------------------------
# The relay.

class RelayStarter:
    """Starts relays with BASE_ENV + overrides and checks them on stop."""

    def __init__(self, run_dir, sshd_servers, label):
        self.run_dir = run_dir
        self.sshd_ports = [s.port for s in sshd_servers.values()]
        self.label = label
        self.relays = []

    def env(self, extra_ports=(), **overrides):
        env = dict(BASE_ENV)
        env["SFTP_ALLOWED_PORTS"] = ",".join(str(p) for p in
                                             list(self.sshd_ports) + list(extra_ports))
        env.update({k: str(v) for k, v in overrides.items()})
        return env

    def new(self, extra_ports=(), start=True, **overrides):
        n = len(self.relays) + 1
        log = os.path.join(self.run_dir, "relay-%s-%d.log" % (self.label, n))
        relay = Relay(relay_binary(), self.env(extra_ports, **overrides), log)
        self.relays.append(relay)
        return relay.start() if start else relay

    def stop_all(self):
        """Stop every relay; raise if one did not exit with status 0."""
        errors = []
        for relay in self.relays:
            try:
                relay.stop_and_check()
            except AssertionError as e:
                errors.append(str(e))
        if errors:
            raise AssertionError("\n\n".join(errors))


def _safe_name(node):
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in node.name)[:80]


@pytest.fixture
def relay_factory(request, run_dir, sshd_servers):
    """relay_factory(extra_ports=(), **env) -> a started Relay with its own
    settings; stopped (and its exit status checked) after the test."""
    starter = RelayStarter(run_dir, sshd_servers, _safe_name(request.node))
    yield starter.new
    if _failed(request):
        for r in starter.relays:
            print("---- relay log %s (last lines) ----\n%s" % (r.log_path, r.log_tail(80)))
    starter.stop_all()


class SharedRelay:
    """The relay a module's tests share. When a test crashes it, that test
    fails and the next test gets a fresh relay, so one crash is reported
    once instead of failing the rest of the module."""

    def __init__(self, starter):
        self.starter = starter
        self.current = None
        self.crashed = []
        self.last_test = None

    def get(self, test_name):
        """A live relay. Raises (after restarting it) when the previous one
        died after its test had already been checked."""
        previous, last = self.current, self.last_test
        self.last_test = test_name
        if previous is not None and previous.alive():
            return previous
        self.current = self.starter.new()
        if previous is not None and previous not in self.crashed:
            self.mark_crashed(previous)
            raise AssertionError("the shared relay died after test %s (exit %s):\n%s"
                                 % (last, previous.returncode, previous.log_tail(40)))
        return self.current

    def mark_crashed(self, relay):
        self.crashed.append(relay)
        relay.stop()  # collect the exit status; already reported by the test

    def stop(self):
        if self.current is not None and self.current not in self.crashed:
            self.current.stop_and_check()


@pytest.fixture(scope="module")
def shared_relay(request, run_dir, sshd_servers):
    """One relay with the base settings, shared by the tests of a module;
    its exit status is checked when the module is done."""
    shared = SharedRelay(RelayStarter(run_dir, sshd_servers,
                                      "shared-" + request.module.__name__))
    yield shared
    shared.stop()


@pytest.fixture
def relay(request, shared_relay):
    """The module's shared relay; fails the test during which it died."""
    relay = shared_relay.get(request.node.name)
    start = relay.log_size()
    yield relay
    try:  # let the relay process what the test's last frames caused
        relay.http("GET", "/health", timeout=2)
    except OSError:
        pass
    if _failed(request):
        print("---- relay log during this test (%s) ----\n%s"
              % (relay.log_path, relay.log_since(start)[-8000:]))
    if not relay.alive():
        rc = relay.proc.poll() if relay.proc else relay.returncode
        shared_relay.mark_crashed(relay)
        raise AssertionError("the relay died during this test (exit %s):\n%s"
                             % (rc, relay.log_since(start)[-6000:]))


# --------------------------------------------------------------------------
# Test files and sessions.

@pytest.fixture
def workdir(test_user):
    """A fresh directory under the test user's home, owned by the user."""
    path = sshd_mod.make_test_dir(test_user.pw_dir, test_user.pw_uid, test_user.pw_gid,
                                  "t-" + secrets.token_hex(6))
    yield path
    sshd_mod.remove_tree(path)


@pytest.fixture
def sftp(relay, sshd):
    """A session on the shared relay, authenticated by password."""
    s = login(relay, sshd)
    yield s
    s.close()


# A full disk on the SFTP server (test_faults, test_abandoned_uploads).
@pytest.fixture
def small_fs(workdir):
    """An 8 MiB tmpfs owned by the test user inside workdir."""
    path = make_dir(os.path.join(workdir, "small"))
    uid, gid = user_ids()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o",
                          "size=8m,uid=%d,gid=%d,mode=0755" % (uid, gid), "tmpfs", path],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % res.stdout.decode(errors="replace"))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)
