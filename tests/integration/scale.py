"""Real parts for the several-relays scenarios: a Redis or Valkey server
with its own config on its own loopback port and no persistence, and a real
HAProxy in front of N relays. Each is started and stopped by the test that
uses it; logs go to the run directory.
"""

import os
import shutil
import socket
import subprocess
import time

from relay import http_request, stop_process
from sshd import free_port

HAPROXY_BIN = "/usr/sbin/haproxy"


# Every engine the relay supports as its STATE_URL store (README "Several
# relays"). The store tests run against each; scripts/deps.sh --test
# installs both, on Debian 12 (valkey-server from bookworm-backports) and 13.
ENGINES = ("redis-server", "valkey-server")
# What each engine calls itself in INFO server (Valkey keeps redis_version
# for clients that check it, so server_name is what tells them apart).
ENGINE_NAMES = {"redis-server": "redis", "valkey-server": "valkey"}


def store_binary(engine):
    """The path of `engine`. A missing engine fails the test that wanted
    it: skipping would let a machine without Valkey pass unseen."""
    assert engine in ENGINES, engine
    path = shutil.which(engine, path="/usr/bin:/usr/sbin:/bin:/sbin")
    if path is None:
        raise FileNotFoundError("%s is not installed (scripts/deps.sh --test installs it)"
                                % engine)
    return path


def resp_command(port, *args, timeout=2.0):
    """One command in RESP over a fresh connection; the raw reply bytes."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(out)
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        # Multi-line replies (arrays, bulk strings): read what is there.
        s.settimeout(0.2)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        return data


class StoreServer:
    """`engine` (redis-server or valkey-server) on 127.0.0.1:<port>, config
    in `workdir`, no RDB/AOF."""

    def __init__(self, workdir, engine, port=None):
        self.workdir = workdir
        self.engine = engine
        self.port = port or free_port()
        self.binary = store_binary(engine)
        self.proc = None
        self.conf = os.path.join(workdir, "store.conf")
        self.log = os.path.join(workdir, "store.log")

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port

    def start(self, timeout=10.0):
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.conf, "w") as f:
            f.write("bind 127.0.0.1\n"
                    "port %d\n"
                    "protected-mode yes\n"
                    "save \"\"\n"
                    "appendonly no\n"
                    "dir %s\n"
                    "logfile %s\n"
                    "daemonize no\n"
                    "databases 16\n" % (self.port, self.workdir, self.log))
        self.proc = subprocess.Popen([self.binary, self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %d; see %s"
                                   % (self.binary, self.proc.returncode, self.log))
            try:
                if resp_command(self.port, "PING").startswith(b"+PONG"):
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("store not answering on port %d" % self.port)

    def command(self, *args):
        return resp_command(self.port, *args)

    def info_server(self):
        """INFO server as a dict."""
        raw = self.command("INFO", "server").decode("utf-8", "replace")
        return dict(line.split(":", 1) for line in raw.split("\r\n")
                    if ":" in line and not line.startswith(("$", "#")))

    def identity(self):
        """(server name, version) as the running server reports them:
        ("redis", "7.0.15") or ("valkey", "8.0.1")."""
        info = self.info_server()
        name = info.get("server_name", "redis")
        return name, info.get(name + "_version", info.get("redis_version"))

    def flush(self):
        assert self.command("FLUSHALL").startswith(b"+OK")

    def keys(self):
        """Every key, as text."""
        raw = self.command("KEYS", "*").decode("utf-8", "replace")
        lines = raw.split("\r\n")
        return [lines[i + 1] for i in range(1, len(lines) - 1, 2)
                if lines[i].startswith("$")]

    def stop(self):
        stop_process(self.proc)
        self.proc = None


class HAProxy:
    """HAProxy on 127.0.0.1:<port> in front of `backends` (ports), with the
    health checks, retries and X-Forwarded-For handling of
    deploy/haproxy.cfg.example (plain HTTP here: TLS is tested elsewhere).
    `.port` and `.http()` make it usable wherever a Relay is."""

    def __init__(self, workdir, backends, balance="roundrobin"):
        self.workdir = workdir
        self.backends = list(backends)
        self.balance = balance
        self.port = free_port()
        self.stats_port = free_port()
        self.proc = None
        self.cfg = os.path.join(workdir, "haproxy.cfg")
        self.log = os.path.join(workdir, "haproxy.log")

    def write_config(self):
        servers = "".join("    server r%d 127.0.0.1:%d check\n" % (i + 1, p)
                          for i, p in enumerate(self.backends))
        with open(self.cfg, "w") as f:
            f.write("""global
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 2h
    timeout http-request 5s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 503
    option http-buffer-request

frontend fe
    bind 127.0.0.1:%d
    http-request set-header X-Forwarded-For %%[src]
    default_backend relays

backend relays
    balance %s
    option httpchk GET /ready
    http-check expect status 200
    default-server inter 300ms fall 1 rise 1
%s
listen stats
    bind 127.0.0.1:%d
    stats enable
    stats uri /stats
""" % (self.port, self.balance, servers, self.stats_port))

    def start(self, timeout=10.0):
        os.makedirs(self.workdir, exist_ok=True)
        self.write_config()
        subprocess.run([HAPROXY_BIN, "-c", "-f", self.cfg], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen([HAPROXY_BIN, "-db", "-f", self.cfg],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("haproxy exited with %d; see %s"
                                   % (self.proc.returncode, self.log))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("haproxy not listening")

    def servers_up(self):
        """Names of the backend servers HAProxy sees up (its stats CSV)."""
        _, _, body = http_request(self.stats_port, "GET", "/stats;csv", timeout=2)
        up = []
        for line in body.decode().splitlines():
            f = line.split(",")
            if len(f) > 17 and f[0] == "relays" and f[1] not in ("BACKEND", "FRONTEND"):
                if f[17].startswith("UP"):
                    up.append(f[1])
        return up

    def http(self, method, path, body=None, headers=None, timeout=5):
        return http_request(self.port, method, path, body, headers, timeout)

    def stop(self):
        stop_process(self.proc)
        self.proc = None
        try:
            self._log.close()
        except Exception:
            pass
