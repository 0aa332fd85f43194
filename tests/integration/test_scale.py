"""Several relays behind HAProxy behave as one (issue 15): a real store
shared through STATE_URL, three relays, a real HAProxy, all on loopback and
started by the module. Every test runs once per store engine the relay
supports (scale.ENGINES: redis-server and valkey-server); an engine that is
not installed fails its tests instead of skipping them. Each test starts
from an empty store.

Cross-relay rules are tested by talking to each relay directly (as HAProxy
would: the relays trust 127.0.0.1 as a proxy), so that which relay answers
what is certain; the full flow and the rolling restart go through HAProxy.
"""

import base64
import os
import secrets
import socket
import threading
import time

import pytest

import procinfo
from helpers import LOCAL, wait_until
from relay import Relay, relay_binary
from scale import ENGINE_NAMES, ENGINES, HAProxy, StoreServer
from sshd import TEST_PASSWORD, TEST_USER, free_port
from wsclient import (connect, cookie_from_headers, get_challenge, get_cookie, open_session,
                      post_answer, purpose_for, solve_pow, upgrade_status, Session)

# STATE_LEASE_SECS of these relays: a dead relay's sessions stop counting
# within this time (30 by default; short here so the test of a killed relay
# waits 6 s, not 30, while still leaving a live lease three renewals).
LEASE_SECS = 6
# store_redis.c reconnects with backoff up to STORE_BACKOFF_MAX_MS, and
# checks an idle connection every STORE_PING_MS.
BACKOFF_MAX_SECS = 5
MAX_PER_IP = 3
CHALLENGES_PER_MIN = 40
PREFIX = "wctest:"

pytestmark = pytest.mark.timeout(300)


class Cluster:
    def __init__(self, run_dir, sshd_servers, engine):
        self.dir = os.path.join(run_dir, "scale-" + engine)
        os.makedirs(self.dir, exist_ok=True)
        self.sshd_ports = [s.port for s in sshd_servers.values()]
        self.store = StoreServer(os.path.join(self.dir, "store"), engine)
        self.key = base64.b64encode(secrets.token_bytes(32)).decode()
        self.ports = [free_port() for _ in range(3)]
        self.relays = [None, None, None]
        self.starts = [0, 0, 0]
        self.haproxy = None

    def env(self, i, url=None):
        """Relay i's settings; `url` (default the store's) is its STATE_URL."""
        return {
            "BIND_ADDR": "127.0.0.1:%d" % self.ports[i],
            "STATE_URL": url or self.store.url,
            "KEY_PREFIX": PREFIX,
            "STATE_LEASE_SECS": str(LEASE_SECS),
            "RELAY_SIGNING_KEY": self.key,
            "TRUSTED_PROXY_IPS": "127.0.0.1",
            "SFTP_ALLOWED_PORTS": ",".join(str(p) for p in self.sshd_ports + [22]),
            "SFTP_ALLOW_PRIVATE_CIDRS": "127.0.0.0/8",
            "SFTP_MAX_CONCURRENT_PER_IP": str(MAX_PER_IP),
            "AUTH_CHALLENGE_PER_MIN": str(CHALLENGES_PER_MIN),
            "POW_DIFFICULTY_BITS": "12",
            "SHUTDOWN_GRACE_SECS": "5",
            "LOG_LEVEL": "debug",
        }

    def start_relay(self, i):
        self.starts[i] += 1
        log = os.path.join(self.dir, "relay%d-%d.log" % (i + 1, self.starts[i]))
        r = Relay(relay_binary(), self.env(i), log)
        self.relays[i] = r.start()
        assert wait_until(lambda: ready(r) == 200, 10), \
            "relay %d not ready:\n%s" % (i + 1, r.log_tail())
        return r

    def start(self):
        self.store.start()
        # The engine asked for is the one answering (a redis-server that is
        # really Valkey under another name would test one engine twice).
        name, version = self.store.identity()
        assert name == ENGINE_NAMES[self.store.engine] and version, \
            (self.store.engine, self.store.info_server())
        print("store engine: %s %s" % (name, version))
        for i in range(3):
            self.start_relay(i)
        self.haproxy = HAProxy(self.dir, self.ports)
        self.haproxy.start()
        assert wait_until(lambda: len(self.haproxy.servers_up()) == 3, 10), \
            "haproxy sees %r up" % self.haproxy.servers_up()
        return self

    def ensure(self):
        """Bring back whatever a previous test stopped, and empty the store."""
        if self.store.proc is None or self.store.proc.poll() is not None:
            self.store.start()
        self.store.flush()
        for i, r in enumerate(self.relays):
            if r is None or not r.alive():
                self.start_relay(i)
        for r in self.relays:
            assert wait_until(lambda: ready(r) == 200, 15), r.log_tail()
        assert wait_until(lambda: len(self.haproxy.servers_up()) == 3, 10)

    def stop(self):
        errors = []
        if self.haproxy:
            self.haproxy.stop()
        for r in self.relays:
            if r is not None and r.alive():
                try:
                    r.stop_and_check()
                except AssertionError as e:
                    errors.append(str(e))
        self.store.stop()
        if errors:
            raise AssertionError("\n\n".join(errors))


def ready(relay):
    try:
        return relay.http("GET", "/ready", timeout=2)[0]
    except OSError:
        return None


# Every engine in the plain passes. The sanitizer pass runs the relay's
# side once: the relay's code does not depend on the engine (its answers
# are checked the same way), and a second cluster there costs CI minutes.
TESTED_ENGINES = ENGINES[:1] if procinfo.sanitized_relay() else ENGINES


@pytest.fixture(scope="module", params=TESTED_ENGINES)
def cluster(run_dir, sshd_servers, request):
    c = Cluster(run_dir, sshd_servers, request.param)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def nodes(cluster, request):
    cluster.ensure()
    yield cluster
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for i, r in enumerate(cluster.relays):
            if r is not None:
                print("---- relay %d log (%s) ----\n%s" % (i + 1, r.log_path, r.log_tail(60)))


def cookie_via(challenge_relay, answer_relay, host, port):
    """A cookie whose challenge comes from one relay and whose answer goes
    to another."""
    purpose = purpose_for(host, port)
    status, ch = get_challenge(challenge_relay, purpose)
    assert status == 200, "challenge: %d %r" % (status, ch)
    answer = solve_pow(ch["nonce"], purpose, ch["difficulty"])
    status, headers, body = post_answer(answer_relay, ch["nonce_id"], answer)
    assert status == 204, "POST /relay/auth: %d %r" % (status, body)
    cookie, _ = cookie_from_headers(headers)
    assert cookie
    return cookie


def login_with(relay, sshd, cookie, password=TEST_PASSWORD):
    """A session at `relay` with `cookie`; returns (session, auth response)."""
    s = Session(connect(relay, LOCAL, sshd.port, cookie=cookie))
    s.expect_host_key()
    s.accept_host_key()
    return s, s.auth_password(TEST_USER, password)


def logged_in(relay, sshd, cookie=None):
    cookie = cookie or get_cookie(relay, LOCAL, sshd.port)
    s, resp = login_with(relay, sshd, cookie)
    assert resp == {"id": 1, "result": {}}, resp
    return s


def refused(relay, host, port, cookie):
    """The HTTP status and body text of an upgrade: 101 and "" when the
    relay upgraded (the connection is then closed)."""
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    req = ("GET /relay/ws?mode=sftp&host=%s&port=%s HTTP/1.1\r\n"
           "Host: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n"
           "Cookie: relay_auth_sftp=%s\r\n\r\n" % (host, port, relay.port, key, cookie))
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sk:
        sk.sendall(req.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sk.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status == 101:
            return 101, ""
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = sk.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, body.decode("utf-8", "replace")


def count(relay, needle):
    return relay.log_text().count(needle)


# --------------------------------------------------------------------------


def test_challenge_answer_upgrade_on_three_relays(nodes, sshd, workdir):
    r1, r2, r3 = nodes.relays
    cookie = cookie_via(r1, r2, LOCAL, sshd.port)
    s = logged_in(r3, sshd, cookie)
    try:
        data = os.urandom(300 * 1024)
        s.upload(workdir + "/cross.bin", data)
        assert s.download(workdir + "/cross.bin") == data
    finally:
        s.close()


def test_full_flow_through_haproxy_round_robin(nodes, sshd, workdir):
    ha = nodes.haproxy
    marks = [r.log_size() for r in nodes.relays]
    flows = 6
    for i in range(flows):
        s = open_session(ha, LOCAL, sshd.port)
        try:
            s.expect_host_key()
            s.accept_host_key()
            assert s.auth_password(TEST_USER, TEST_PASSWORD) == {"id": 1, "result": {}}
            data = os.urandom(64 * 1024 + i)
            s.upload(workdir + "/ha%d.bin" % i, data)
            assert s.download(workdir + "/ha%d.bin" % i) == data
        finally:
            s.close()
    logs = [r.log_since(m) for r, m in zip(nodes.relays, marks)]
    issued = {}   # nonce_id -> relay that issued it
    answered = {}  # nonce_id -> relay that took the answer
    started = [log.count(" start: client=127.0.0.1 ") for log in logs]
    for i, log in enumerate(logs):
        for line in log.splitlines():
            if "debug challenge: client=127.0.0.1 nonce_id=" in line and line.endswith("-> 200"):
                issued[line.split("nonce_id=")[1].split()[0]] = i
            if "debug cookie: client=127.0.0.1 nonce_id=" in line and line.endswith("-> 204"):
                answered[line.split("nonce_id=")[1].split()[0]] = i
    assert len(issued) == flows and set(answered) == set(issued), (issued, answered)
    assert sum(started) == flows, started
    # Round robin over three relays, three requests per flow: each flow's
    # challenge, answer and upgrade landed on three different relays.
    for nonce_id, at in issued.items():
        assert answered[nonce_id] != at, (nonce_id, issued, answered)
        upgraded = [i for i in range(3) if started[i]]
        assert at not in upgraded and answered[nonce_id] not in upgraded, (issued, started)


def test_cookie_reuse_on_another_relay(nodes, sshd):
    r1, r2, _ = nodes.relays
    cookie = get_cookie(r1, LOCAL, sshd.port)
    assert upgrade_status(r1, LOCAL, sshd.port, cookie=cookie) == 101
    assert refused(r2, LOCAL, sshd.port, cookie)[0] == 403
    assert refused(r1, LOCAL, sshd.port, cookie)[0] == 403


def test_sessions_counted_across_relays(nodes, sshd):
    sessions = []
    try:
        for r in nodes.relays:
            sessions.append(logged_in(r, sshd))
        for r in nodes.relays:
            cookie = get_cookie(r, LOCAL, sshd.port)
            assert refused(r, LOCAL, sshd.port, cookie)[0] == 429
        # A closed session frees its slot at once, on every relay.
        sessions.pop().close()
        r1 = nodes.relays[0]
        assert wait_until(lambda: live_leases(nodes) == MAX_PER_IP - 1, 5)
        sessions.append(logged_in(r1, sshd))
    finally:
        for s in sessions:
            s.close()


def live_leases(nodes):
    """Unexpired leases of 127.0.0.1 (an expired one stays in the set until
    the next upgrade prunes it, but no longer counts)."""
    raw = nodes.store.command(
        "EVAL", "local t = redis.call('TIME') "
        "return redis.call('ZCOUNT', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000) + 1, "
        "'+inf')", "1", PREFIX + "live:127.0.0.1")
    return int(raw[1:].split(b"\r\n")[0])


def test_auth_failures_spread_over_relays_block(nodes, sshd):
    relays = nodes.relays
    for i in range(5):
        r = relays[i % 3]
        s, resp = login_with(r, sshd, get_cookie(r, LOCAL, sshd.port), password="wrong-%d" % i)
        assert resp.get("error") == "authentication failed", resp
        s.close()
    for r in relays:
        assert refused(r, LOCAL, sshd.port, get_cookie(r, LOCAL, sshd.port))[0] == 429


def test_spray_across_relays_blocks(nodes, sshd):
    relays = nodes.relays
    # Documentation addresses: check 10 refuses them (403), but every one
    # counts as a target (PROTOCOL §4 spray).
    for i in range(5):
        r = relays[i % 3]
        host = "192.0.2.%d" % (i + 1)
        assert refused(r, host, 22, get_cookie(r, host, 22))[0] == 403
    r = relays[2]
    assert refused(r, "192.0.2.99", 22, get_cookie(r, "192.0.2.99", 22))[0] == 429
    for r in relays:
        assert refused(r, LOCAL, sshd.port, get_cookie(r, LOCAL, sshd.port))[0] == 429


def test_challenge_rate_across_relays(nodes, sshd):
    purpose = purpose_for(LOCAL, sshd.port)
    statuses = [get_challenge(nodes.relays[i % 3], purpose)[0]
                for i in range(CHALLENGES_PER_MIN + 1)]
    assert statuses[:CHALLENGES_PER_MIN] == [200] * CHALLENGES_PER_MIN
    assert statuses[CHALLENGES_PER_MIN] == 429
    for r in nodes.relays:
        assert get_challenge(r, purpose)[0] == 429


def test_challenge_is_answered_once_across_relays(nodes, sshd):
    r1, r2, r3 = nodes.relays
    purpose = purpose_for(LOCAL, sshd.port)
    status, ch = get_challenge(r1, purpose)
    assert status == 200
    answer = solve_pow(ch["nonce"], purpose, ch["difficulty"])
    assert post_answer(r2, ch["nonce_id"], answer)[0] == 204
    assert post_answer(r3, ch["nonce_id"], answer)[0] == 400


def test_store_keys_are_namespaced_with_ttls_and_no_names(nodes, sshd):
    s = logged_in(nodes.relays[0], sshd)
    try:
        keys = nodes.store.keys()
        assert keys, "nothing in the store"
        for k in keys:
            assert k.startswith(PREFIX), k
            ttl = int(nodes.store.command("PTTL", k)[1:].split(b"\r\n")[0])
            assert ttl > 0, "key %s has no TTL (%d)" % (k, ttl)
        dump = b"".join(nodes.store.command("DUMP", k) for k in keys)
        # The target is hashed; its port and the user never appear.
        assert b"wctest" not in dump.replace(PREFIX.encode(), b"")
        assert TEST_USER.encode() not in dump
    finally:
        s.close()


# What this test proves is the lease's lifetime: a killed relay stops
# renewing, and its leases stop counting once STATE_LEASE_SECS has passed on
# the store's clock, and not before.
def test_killed_relay_frees_its_slots_within_the_lease(nodes, sshd):
    r1, _, r3 = nodes.relays
    sessions = [logged_in(r3, sshd) for _ in range(MAX_PER_IP)]
    r3.proc.kill()
    r3.proc.wait()
    killed = time.monotonic()
    for s in sessions:
        try:
            s.close()
        except Exception:  # noqa: BLE001 - its relay is gone
            pass
    assert refused(r1, LOCAL, sshd.port, get_cookie(r1, LOCAL, sshd.port))[0] == 429

    def slot_free():
        return live_leases(nodes) == 0

    assert wait_until(slot_free, LEASE_SECS + 5, interval=0.5), \
        "leases of the killed relay still counted after %d s" % (LEASE_SECS + 5)
    elapsed = time.monotonic() - killed
    # Renewed at most a third of the lease before the kill, so the leases
    # run out between two thirds of it and all of it after.
    assert LEASE_SECS * 2 / 3 - 1 <= elapsed <= LEASE_SECS + 5, \
        "the killed relay's leases stopped counting %.1f s after it died" % elapsed
    s = logged_in(r1, sshd)
    s.close()
    nodes.relays[2] = None  # restarted by the next test's ensure()


def test_store_down_refuses_new_and_keeps_running_sessions(nodes, sshd, workdir):
    r1, r2, r3 = nodes.relays
    running = logged_in(r1, sshd)
    try:
        spare_cookie = get_cookie(r2, LOCAL, sshd.port)
        marks = [r.log_size() for r in nodes.relays]
        nodes.store.stop()
        for r in nodes.relays:
            assert wait_until(lambda: ready(r) == 503, 5), r.log_tail()
        status, _, body = r2.http("GET", "/ready")
        assert status == 503 and b"state store redis://127.0.0.1:%d/0 unavailable" \
            % nodes.store.port in body, body
        status, text = refused(r2, LOCAL, sshd.port, spare_cookie)
        assert status == 503, status
        assert "state store redis://127.0.0.1:%d/0 unavailable" % nodes.store.port in text
        status, ch = get_challenge(r3, purpose_for(LOCAL, sshd.port))
        assert status == 503, (status, ch)
        for i, r in enumerate(nodes.relays):
            assert "state store redis://127.0.0.1:%d/0 unavailable" % nodes.store.port \
                in r.log_since(marks[i]), r.log_tail()
        # The session that was running carries on.
        data = os.urandom(100 * 1024)
        running.upload(workdir + "/during.bin", data)
        assert running.download(workdir + "/during.bin") == data

        nodes.store.start()
        for r in nodes.relays:
            assert wait_until(lambda: ready(r) == 200, BACKOFF_MAX_SECS + 5), r.log_tail()
            assert "is back after" in r.log_text()
        s = logged_in(r2, sshd)
        s.close()
        # The running session's lease is registered again in the new store.
        assert wait_until(lambda: live_leases(nodes) == 1, 5)
        running.ok("stat", {"path": workdir})
    finally:
        running.close()


def test_rolling_restart_fails_no_new_session(nodes, sshd):
    ha = nodes.haproxy
    failures, done = [], []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                s = open_session(ha, LOCAL, sshd.port)
                try:
                    s.expect_host_key()
                    s.accept_host_key()
                    resp = s.auth_password(TEST_USER, TEST_PASSWORD)
                    assert resp == {"id": 1, "result": {}}, resp
                    s.ok("stat", {"path": "/"})
                finally:
                    s.close()
                done.append(1)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                failures.append(repr(e))
            time.sleep(1.6)  # stay under AUTH_CHALLENGE_PER_MIN

    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        assert wait_until(lambda: len(done) >= 2, 30), failures
        for i in range(3):
            # Upgrade relay i: drain it (SIGTERM), start it again.
            nodes.relays[i].stop_and_check()
            nodes.start_relay(i)
            assert wait_until(lambda: len(nodes.haproxy.servers_up()) == 3, 10)
            n = len(done)
            assert wait_until(lambda: len(done) >= n + 1, 30), failures
    finally:
        stop.set()
        t.join(30)
    assert not failures, failures
    assert len(done) >= 5

