"""deploy/haproxy.cfg.example run as it is (issue 15): the real HAProxy with
the example file, changed only where a test must differ from production
(listening addresses, the certificate, the relays' and the web app's
addresses, the admin socket and the log target), in front of three relays
that share a real Redis. A client on 127.0.0.2 speaks TLS to it and
verifies the test CA.

Checked through it: the whole cookie -> upgrade -> session -> transfer flow
with sessions on three different relays, the client's X-Forwarded-For
replaced (the relays and the web app see 127.0.0.2, never the header the
client sent), internal endpoints refused, no query string or cookie in its
log, a quiet session outliving HAProxy's client/server timeouts until the
relay ends it (`timeout tunnel` above the relay's idle timeout), and a
draining relay (SIGTERM) taken out by the /ready health checks while new
sessions keep working. The draining test runs last: it stops a relay.
"""

import base64
import http.server
import os
import re
import resource
import secrets
import signal
import socket
import subprocess
import threading
import time

import pytest

import procinfo
from frozen import FrozenSessions
from helpers import LOCAL, login, pattern, wait_until
from relay import Relay, relay_binary, stop_process
from scale import HAPROXY_BIN, StoreServer
from sshd import TEST_PASSWORD, TEST_USER, free_port, wait_for_port
from tlsutil import HttpsEndpoint, TestPKI
from waits import wait_for_log, wait_relay_read_all
from wsclient import MiB

# What this file proves is the proxy's configuration; the relay code it
# drives is the same as test_scale.py's, which the sanitizer pass runs. Left
# out of that pass to keep CI well inside its time.
pytestmark = [
    pytest.mark.skipif(procinfo.sanitized_relay(),
                       reason="proxy configuration only: run in the plain passes"),
    pytest.mark.timeout(300),
]

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
EXAMPLE = os.path.join(REPO, "deploy", "haproxy.cfg.example")

CLIENT_ADDR = "127.0.0.2"  # the "public" client, distinct from HAProxy's 127.0.0.1
SPOOFED_XFF = "203.0.113.7"
# The relays' SFTP_IDLE_TIMEOUT_SECS here: above the example's `timeout
# client` and `timeout server` (30 s), so a session that outlives them
# shows that HAProxy applies `timeout tunnel` to it.
IDLE_SECS = 35
# Long enough for the draining relay to stay up (its busy session frozen)
# while HAProxy's checks take it out.
GRACE_SECS = 20
PREFIX = "wchaproxy:"


def substitute_lines(text, replacements):
    """Apply (old, new) replacements, each of which must occur exactly once
    and within one line, and check that the lines holding them are the only
    ones that changed: the test runs the example, not a copy of it."""
    out = text
    for old, new in replacements:
        assert "\n" not in old and "\n" not in new, old
        assert text.count(old) == 1, "the example should contain %r exactly once" % old
        out = out.replace(old, new)
    before, after = text.split("\n"), out.split("\n")
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(changed) == len(replacements), changed
    for a, _ in changed:
        assert sum(old in a for old, _ in replacements) == 1, a
    return out


def fd_limit_substitution(text):
    """HAProxy needs two descriptors per connection of the global maxconn
    and refuses to start when it cannot raise its limit that far. A systemd
    service may (its hard limit is 524288); this machine's hard limit may
    be lower (20000 here), and only root with CAP_SYS_RESOURCE could raise
    it. Then, and only then, the global maxconn is lowered to fit."""
    found = re.search(r"^    maxconn (\d+)$", text, re.M)
    assert found, "the example has no global maxconn"
    want = int(found.group(1))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    spare = 200  # listeners, checks, logs, the admin socket
    if hard == resource.RLIM_INFINITY or hard >= 2 * want + spare:
        return []
    return [(found.group(0), "    maxconn %d" % ((hard - spare) // 2))]


class AppServer:
    """The example's `backend app` (the web app's static files): answers
    every GET with 200 and records the headers HAProxy sent."""

    def __init__(self):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the stdlib's name
                seen.append((self.path, self.headers.get_all("X-Forwarded-For") or []))
                body = b"app\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((LOCAL, 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class ExampleHAProxy:
    def __init__(self, workdir, pem, relay_ports, app_port):
        self.port, self.http_port = free_port(), free_port()
        self.admin_sock = os.path.join(workdir, "admin.sock")
        self.cfg = os.path.join(workdir, "haproxy.cfg")
        self.log_path = os.path.join(workdir, "haproxy.log")
        with open(EXAMPLE) as f:
            text = f.read()
        text = substitute_lines(text, [
            # Its output goes to this test's log file instead of syslog.
            ("    log /dev/log local0", "    log stdout format raw local0"),
            ("/run/haproxy/admin.sock", self.admin_sock),
            ("bind :443 ssl crt /etc/haproxy/certs/app.example.com.pem",
             "bind 127.0.0.1:%d ssl crt %s" % (self.port, pem)),
            ("    bind :80", "    bind 127.0.0.1:%d" % self.http_port),
            ("server relay1 10.0.0.11:8443", "server relay1 127.0.0.1:%d" % relay_ports[0]),
            ("server relay2 10.0.0.12:8443", "server relay2 127.0.0.1:%d" % relay_ports[1]),
            ("server relay3 10.0.0.13:8443", "server relay3 127.0.0.1:%d" % relay_ports[2]),
            ("server web1 10.0.0.30:8080", "server web1 127.0.0.1:%d" % app_port),
        ] + fd_limit_substitution(text))
        with open(self.cfg, "w") as f:
            f.write(text)
        res = subprocess.run([HAPROXY_BIN, "-c", "-f", self.cfg], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        assert res.returncode == 0, res.stdout.decode(errors="replace")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([HAPROXY_BIN, "-db", "-f", self.cfg],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, start_new_session=True)
        try:
            wait_for_port(self.port, timeout=15, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError("haproxy did not start:\n%s" % self.log())

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def admin(self, command):
        """One command on the example's admin socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.admin_sock)
            s.sendall(command.encode() + b"\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return data.decode(errors="replace")
                data += chunk

    def servers(self, backend="relays"):
        """{server name: its `show stat` row as a dict} of one backend."""
        lines = self.admin("show stat").splitlines()
        names = lines[0].lstrip("# ").split(",")
        rows = {}
        for line in lines[1:]:
            row = dict(zip(names, line.split(",")))
            if row.get("pxname") == backend and row.get("svname") not in ("BACKEND", "FRONTEND"):
                rows[row["svname"]] = row
        return rows

    def up(self):
        """Servers that get traffic: "UP", or "UP 1/2" (one failed check of
        the two that take a server out)."""
        return sorted(n for n, r in self.servers().items() if r["status"].startswith("UP"))

    def stop(self):
        stop_process(self.proc)
        self._log.close()


class Deployment:
    def __init__(self, run_dir, sshd_servers):
        self.dir = os.path.join(run_dir, "haproxy-example")
        os.makedirs(self.dir, exist_ok=True)
        self.sshd_ports = [s.port for s in sshd_servers.values()]
        self.key = base64.b64encode(secrets.token_bytes(32)).decode()
        self.store = StoreServer(os.path.join(self.dir, "store"), "redis-server")
        self.relays = []
        self.app = None
        self.haproxy = None

    def env(self, port):
        # The relay settings the example's header lists, on loopback.
        return {
            "BIND_ADDR": "127.0.0.1:%d" % port,
            "ALLOW_PLAINTEXT": "1",
            "TRUSTED_PROXY_IPS": "127.0.0.1",
            "RELAY_SIGNING_KEY": self.key,
            "STATE_URL": self.store.url,
            "KEY_PREFIX": PREFIX,
            "SFTP_IDLE_TIMEOUT_SECS": str(IDLE_SECS),
            # No pings within the idle test's quiet time: nothing may cross
            # HAProxy while the session is idle.
            "WS_PING_INTERVAL_SECS": str(IDLE_SECS * 3),
            "SHUTDOWN_GRACE_SECS": str(GRACE_SECS),
            "SFTP_ALLOWED_PORTS": ",".join(str(p) for p in self.sshd_ports),
            "SFTP_ALLOW_PRIVATE_CIDRS": "127.0.0.0/8",
            "SFTP_MAX_CONCURRENT_PER_IP": "16",
            "AUTH_CHALLENGE_PER_MIN": "1000",
            "POW_DIFFICULTY_BITS": "12",
            "LOG_LEVEL": "debug",
        }

    def start(self):
        self.store.start()
        for i in range(3):
            r = Relay(relay_binary(), self.env(free_port()),
                      os.path.join(self.dir, "relay%d.log" % (i + 1)))
            self.relays.append(r)
            r.start()
        self.app = AppServer()
        pki = TestPKI(os.path.join(self.dir, "pki"))
        chain, key = pki.server_cert("haproxy")
        pem = os.path.join(self.dir, "haproxy.pem")
        with open(pem, "w") as out:
            for part in (chain, key):
                with open(part) as f:
                    out.write(f.read())
        self.haproxy = ExampleHAProxy(self.dir, pem, [r.port for r in self.relays],
                                      self.app.port)
        self.client = HttpsEndpoint(self.haproxy.port, pki.client_context(), source=CLIENT_ADDR)
        # `rise 2`, `inter 1s`: up after two good checks.
        assert wait_until(lambda: self.haproxy.up() == ["relay1", "relay2", "relay3"], 15), \
            self.haproxy.servers()
        return self

    def stop(self):
        errors = []
        if self.haproxy:
            self.haproxy.stop()
        if self.app:
            self.app.stop()
        for r in self.relays:
            if r.alive():
                try:
                    r.stop_and_check()
                except AssertionError as e:
                    errors.append(str(e))
        self.store.stop()
        if errors:
            raise AssertionError("\n\n".join(errors))


@pytest.fixture(scope="module")
def deployment(run_dir, sshd_servers):
    d = Deployment(run_dir, sshd_servers)
    try:
        d.start()
        yield d
    finally:
        d.stop()


@pytest.fixture
def dep(deployment, request):
    yield deployment
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print("---- haproxy log ----\n%s" % deployment.haproxy.log()[-4000:])
        for i, r in enumerate(deployment.relays):
            print("---- relay %d log ----\n%s" % (i + 1, r.log_tail(40)))


def starts(log):
    return re.findall(r"session \S+ start: client=(\S+)", log)


# --------------------------------------------------------------------------


def test_example_changed_only_where_the_test_must(tmp_path):
    """The substitution itself fails on a string found more than once, on
    one not found, and on two that change the same line."""
    with open(EXAMPLE) as f:
        text = f.read()
    with pytest.raises(AssertionError, match="exactly once"):
        substitute_lines(text, [("10.0.0.1", "127.0.0.1")])  # in four lines
    with pytest.raises(AssertionError, match="exactly once"):
        substitute_lines(text, [("bind :8443", "bind :1")])  # not there
    with pytest.raises(AssertionError):
        substitute_lines(text, [("server relay1 ", "server r1 "), ("relay1 10.0.0.11", "x")])
    assert substitute_lines(text, []) == text


def test_haproxy_example_is_valid_and_does_what_the_readme_says(tmp_path):
    """deploy/haproxy.cfg.example passes `haproxy -c` (with a throwaway
    certificate and paths of this machine) and holds the rules the README
    lists."""
    with open(EXAMPLE) as f:
        text = f.read()
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=app.example.com"],
                   check=True, capture_output=True)
    pem = tmp_path / "both.pem"
    pem.write_bytes(crt.read_bytes() + key.read_bytes())
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text.replace("/etc/haproxy/certs/app.example.com.pem", str(pem))
                   .replace("/run/haproxy/admin.sock", str(tmp_path / "admin.sock")))
    res = subprocess.run(["/usr/sbin/haproxy", "-c", "-f", str(cfg)], capture_output=True)
    assert res.returncode == 0, res.stderr.decode() + res.stdout.decode()
    assert re.search(r"^\s+balance leastconn$", text, re.M)
    assert re.search(r"^\s+option httpchk GET /ready$", text, re.M)
    assert re.search(r"^\s+http-request set-header X-Forwarded-For %\[src\]$", text, re.M)
    assert re.search(r"^\s+retry-on .*\b503\b", text, re.M)
    tunnel = int(re.search(r"^\s+timeout tunnel (\d+)s$", text, re.M).group(1))
    assert tunnel > 1800, "timeout tunnel must be above SFTP_IDLE_TIMEOUT_SECS (1800)"
    assert "ssl crt" in text and "STATE_URL=" in text and "TRUSTED_PROXY_IPS=" in text


def test_sessions_over_tls_on_three_relays(dep, sshd, workdir):
    marks = [r.log_size() for r in dep.relays]
    sessions = []
    try:
        # leastconn: each new session goes to a relay without one.
        for i in range(3):
            sessions.append(dep.client.login(
                sshd, extra_headers=["X-Forwarded-For: " + SPOOFED_XFF]))
        for i, s in enumerate(sessions):
            data = pattern(MiB + 7 * i, seed=40 + i)
            path = os.path.join(workdir, "haproxy-example-%d.bin" % i)
            s.upload(path, data, chunk=256 * 1024)
            assert s.download(path) == data
    finally:
        for s in sessions:
            s.close()
    logs = [r.log_since(m) for r, m in zip(dep.relays, marks)]
    # One session on each relay, each seeing the client's address as
    # HAProxy set it, not the one the client claimed.
    assert [starts(log) for log in logs] == [[CLIENT_ADDR]] * 3, [starts(x) for x in logs]
    for log in logs:
        assert SPOOFED_XFF not in log


def test_client_x_forwarded_for_is_replaced(dep):
    status, _, body = dep.client.http("GET", "/some/app/route",
                                      headers={"X-Forwarded-For": SPOOFED_XFF})
    assert status == 200 and body == b"app\n", (status, body)
    assert dep.app.seen[-1] == ("/some/app/route", [CLIENT_ADDR]), dep.app.seen[-1]


def test_internal_endpoints_https_redirect_and_hsts(dep):
    for path in ("/health", "/ready"):
        status, _, _ = dep.client.http("GET", path)
        assert status == 404, (path, status)
    assert dep.relays[0].http("GET", "/ready")[0] == 200  # still there for the checks
    status, headers, _ = dep.client.http("GET", "/relay/auth/challenge?purpose=x")
    h = {k.lower(): v for k, v in headers}
    assert h["strict-transport-security"] == "max-age=31536000; includeSubDomains", h
    with socket.create_connection((LOCAL, dep.haproxy.http_port), timeout=5) as s:
        s.sendall(b"GET /relay/ws HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
        head = s.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 301"), head
    assert "\r\nlocation: https://app.example.com/relay/ws\r\n" in head.lower(), head


def test_log_has_client_and_path_but_no_query_or_cookie(dep, sshd):
    dep.client.login(sshd).close()
    # HAProxy writes a tunnel's line when it closes.
    assert wait_until(lambda: "/relay/ws" in dep.haproxy.log(), 5), dep.haproxy.log()
    text = dep.haproxy.log()
    # The lines of requests over TLS ("public~"); the redirect test speaks
    # plain HTTP from 127.0.0.1.
    lines = [line for line in text.splitlines() if " public~ relays/" in line]
    assert lines and all(line.startswith(CLIENT_ADDR + ":") for line in lines), lines
    assert "relay_auth_sftp" not in text and "eyJ" not in text
    assert "host=" not in text and "purpose=" not in text and "mode=sftp" not in text


def test_tunnel_timeout_above_the_relay_default_idle_timeout():
    with open(EXAMPLE) as f:
        text = f.read()
    out = subprocess.run([relay_binary(), "--help"], stdout=subprocess.PIPE).stdout.decode()
    default_idle = int(re.search(r"^  SFTP_IDLE_TIMEOUT_SECS .*\n +default: (\d+)$",
                                 out, re.M).group(1))
    tunnel = int(re.search(r"^\s+timeout tunnel (\d+)s$", text, re.M).group(1))
    assert tunnel > default_idle, (tunnel, default_idle)


def test_quiet_session_outlives_haproxy_timeouts_until_the_relay_ends_it(dep, sshd):
    with open(EXAMPLE) as f:
        text = f.read()
    # The premise: a quiet tunnel longer than these is only HAProxy's if
    # `timeout tunnel` is not applied.
    for name in ("client", "server"):
        secs = int(re.search(r"^\s+timeout %s (\d+)s$" % name, text, re.M).group(1))
        assert secs < IDLE_SECS - 2, (name, secs)

    marks = [r.log_size() for r in dep.relays]
    s = dep.client.connect(LOCAL, sshd.port)
    try:
        s.expect_host_key()
        s.accept_host_key()
        t0 = time.monotonic()  # the relay's idle clock starts at the auth request
        assert s.auth_password(TEST_USER, TEST_PASSWORD) == {"id": 1, "result": {}}
        # A close frame, not a cut connection: the relay ended it.
        assert s.expect_closed(timeout=IDLE_SECS + 20) == []
        elapsed = time.monotonic() - t0
    finally:
        s.close()
    assert elapsed >= IDLE_SECS - 1, "closed after %.1f s" % elapsed
    # The relay logs the end once the SSH side is closed too.
    end = re.compile(r'session \S+ end: client=%s .*reason="idle timeout"'
                     % re.escape(CLIENT_ADDR))
    assert wait_until(lambda: end.search("".join(r.log_since(m) for r, m in
                                                 zip(dep.relays, marks))), 5), \
        "".join(r.log_since(m) for r, m in zip(dep.relays, marks))


def held_sessions_off(dep, sshd, relay_index):
    """Idle sessions through HAProxy on every relay but one: with
    `balance leastconn`, HAProxy then sends every new request to that one
    (HAProxy counts only its own connections). Returns the sessions."""
    sessions = {}
    try:
        for _ in range(3):
            marks = [r.log_size() for r in dep.relays]
            s = dep.client.login(sshd)
            on = [i for i, (r, m) in enumerate(zip(dep.relays, marks)) if starts(r.log_since(m))]
            assert len(on) == 1 and on[0] not in sessions, (on, sorted(sessions))
            sessions[on[0]] = s
        sessions.pop(relay_index).close()
        name = "relay%d" % (relay_index + 1)
        assert wait_until(lambda: dep.haproxy.servers()[name]["scur"] == "0", 5), \
            dep.haproxy.servers()[name]
    except BaseException:
        for s in sessions.values():
            s.close()
        raise
    return list(sessions.values())


def test_draining_relay_is_taken_out_and_new_sessions_work(dep, sshd, workdir):
    ha, x = dep.haproxy, dep.relays[0]
    held = held_sessions_off(dep, sshd, 0)
    try:
        with FrozenSessions(sshd) as server:
            # A session busy on relay1 (straight to it: HAProxy does not
            # count it) keeps it draining, not exited, for up to GRACE_SECS
            # after SIGTERM: an SFTP write its server does not answer.
            busy = login(x, sshd)
            try:
                handle = busy.write_open(os.path.join(workdir, "haproxy-drain.bin"))
                assert busy.write_chunk(handle, pattern(MiB, seed=50))["result"] == {}
                server.freeze()
                busy.send_request("write_chunk", {"handle": handle})
                busy.send_binary(pattern(4 * MiB, seed=51))
                wait_relay_read_all(x, busy.ws.sock)
                mark = x.log_size()
                x.proc.send_signal(signal.SIGTERM)
                wait_for_log(x, r"draining: ")
                t0 = time.monotonic()

                # New sessions from the SIGTERM on. Until the /ready checks
                # take relay1 out, HAProxy sends it every request (it has
                # the fewest connections); it still answers challenges and
                # cookies, refuses the upgrade 503, and HAProxy retries the
                # upgrade on another relay.
                done = 0
                while "relay1" in ha.up():
                    assert time.monotonic() - t0 < 10, ha.servers()["relay1"]
                    s = dep.client.login(sshd)
                    s.ok("stat", path="/")
                    s.close()
                    done += 1
                row = ha.servers()["relay1"]
                assert x.alive(), "relay1 exited before HAProxy took it out"
                assert row["status"].startswith("DOWN") and row["check_code"] == "503", row
                drained = x.log_since(mark)
                assert done >= 1 and re.search(
                    r"upgrade refused: client=\S+ status=503 reason=draining", drained), \
                    (done, drained)
                assert int(row["wredis"]) >= 1, row  # the upgrade went to another relay
                for _ in range(3):
                    s = dep.client.login(sshd)
                    s.ok("stat", path="/")
                    s.close()
                assert starts(x.log_since(mark)) == [], x.log_since(mark)
            finally:
                server.thaw()
                busy.close()
    finally:
        for s in held:
            s.close()
    assert x.proc.wait(timeout=GRACE_SECS + 10) == 0, x.log_tail(40)
