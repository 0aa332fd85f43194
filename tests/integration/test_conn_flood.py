"""Connections that never become sessions: 2,000 hostile connections from
one address (127.0.0.2) must not stop another (127.0.0.1) from using the
relay — health, challenge, cookie, a WebSocket session with login — and
the descriptor limit is respected (start refused when too low, no busy
accept loop or log flood at it)."""

import os
import resource
import selectors
import socket
import subprocess
import threading
import time

import procinfo
import waits

from helpers import login, wait_until
from relay import Relay, relay_binary

ATTACKER = "127.0.0.2"
HOSTILE = 2000


def open_hostile(port, n, payload):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.bind((ATTACKER, 0))
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks.append(s)
    for s in socks:
        try:
            if payload:
                s.send(payload)
        except OSError:
            pass
    return socks


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def test_hostile_connections_from_one_address(relay_factory, sshd):
    raise_nofile(HOSTILE + 500)
    relay = relay_factory()
    t0 = time.monotonic()
    idle = open_hostile(relay.port, HOSTILE // 2, b"")
    connect = open_hostile(relay.port, HOSTILE // 2, b"CONNECT x HTTP/1.0\r\n\r\n")
    try:
        # The good client, while the attacker holds (or tries to hold) 2,000.
        status, _, body = relay.http("GET", "/health", timeout=3)
        assert status == 200 and body == b"ok\n"
        s = login(relay, sshd, timeout=10)
        try:
            s.send_json({"id": 2, "method": "stat", "params": {"path": "/"}})
            assert s.recv_text(timeout=10)["id"] == 2
        finally:
            s.close()
        assert time.monotonic() - t0 < 30
    finally:
        for s in idle + connect:
            s.close()
    log = relay.log_text()
    assert "too many unupgraded connections" in log
    # Folded, not one line per refused connection.
    assert log.count("too many unupgraded connections") < 50, log.count("too many")


def run_relay(run_dir, nofile, **env):
    e = {"BIND_ADDR": "127.0.0.1:%d" % _free_port(), "LOG_LEVEL": "info"}
    e.update({k: str(v) for k, v in env.items()})
    return subprocess.run(["prlimit", "--nofile=%d:%d" % (nofile, nofile), relay_binary()],
                          env=e, capture_output=True, timeout=20)


def test_descriptor_limit_too_low_refuses_start(run_dir):
    res = run_relay(run_dir, 300, MAX_SESSIONS=512)
    assert res.returncode == 2, res
    err = res.stderr.decode()
    assert "RLIMIT_NOFILE" in err and "MAX_SESSIONS=512" in err, err


def test_at_the_descriptor_limit_no_busy_loop(run_dir):
    relay = Relay(relay_binary(), {"MAX_SESSIONS": "4", "LOG_LEVEL": "info"},
                  os.path.join(run_dir, "relay-fdlimit.log"))
    relay.spawn = _spawn_limited(relay, 200)
    relay.spawn()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if relay.http("GET", "/health", timeout=1)[0] == 200:
                break
        except OSError:
            time.sleep(0.05)
    try:
        socks = []
        for i in range(4):  # 4 clients x 60 < the cap each, 240 > 200 descriptors
            src = "127.0.0.%d" % (10 + i)
            for _ in range(60):
                s = socket.socket()
                s.bind((src, 0))
                s.settimeout(2)
                try:
                    s.connect(("127.0.0.1", relay.port))
                except OSError:
                    pass
                socks.append(s)
        cpu0 = procinfo.cpu_secs(relay.proc.pid)
        time.sleep(1.5)
        spent = procinfo.cpu_secs(relay.proc.pid) - cpu0
        assert spent < 0.5, "relay spun for %.2f CPU-s at the descriptor limit" % spent
        for s in socks:
            s.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if relay.http("GET", "/health", timeout=1)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        assert relay.http("GET", "/health", timeout=2)[0] == 200
        assert relay.log_text().count("\n") < 200
    finally:
        relay.stop()


def start_limited(run_dir, nofile, name, **env):
    """A relay whose RLIMIT_NOFILE is `nofile`, serving /health."""
    e = {"MAX_SESSIONS": "4", "LOG_LEVEL": "info"}
    e.update({k: str(v) for k, v in env.items()})
    relay = Relay(relay_binary(), e, os.path.join(run_dir, name))
    relay.spawn = _spawn_limited(relay, nofile)
    relay.spawn()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if relay.http("GET", "/health", timeout=1)[0] == 200:
                return relay
        except OSError:
            time.sleep(0.05)
    relay.stop()
    raise AssertionError("the relay did not start")


def health_on(sock):
    """GET /health on the connected socket `sock`: the status line."""
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


# Unupgraded connections counted with 300 descriptors and MAX_SESSIONS 4
# (server.c): 300 less 2 * 4 + 64 outside lws's table, less the sessions'
# 4 and lws's own 16.
TABLE_300 = 300 - (2 * 4 + 64) - 4 - 16


def test_full_table_gives_up_the_busiest_network_not_a_light_client(run_dir):
    """Each of five addresses holds 60 idle connections, under its cap of
    CONN_LIMIT_PER_CLIENT, together more than the relay's table (MAX_SESSIONS
    4 and 300 descriptors: 208 unupgraded connections). The table filled and
    lws stopped accepting: a new client waited until the idle connections
    timed out (5 s), and the attacker opened them again. Now each newcomer
    takes the place of the oldest connection of the network holding the
    most: the client is served at once, and the two connections it opened
    before the flood are not the ones given up."""
    relay = start_limited(run_dir, 300, "relay-full-table.log")
    socks, mine = [], []
    try:
        for _ in range(2):
            mine.append(socket.create_connection(("127.0.0.1", relay.port), timeout=3))
        for i in range(5):
            src = "127.0.0.%d" % (20 + i)
            for _ in range(60):
                s = socket.socket()
                s.setblocking(False)
                s.bind((src, 0))
                try:
                    s.connect(("127.0.0.1", relay.port))
                except BlockingIOError:
                    pass
                socks.append(s)
        assert wait_until(lambda: waits.relay_connections(relay) >= TABLE_300, 5), \
            waits.relay_connections(relay)
        mine.append(socket.create_connection(("127.0.0.1", relay.port), timeout=3))
        assert [health_on(s) for s in mine] == [b"HTTP/1.1 200 OK"] * 3
        assert "table of unupgraded connections is full" in relay.log_text()
    finally:
        for s in socks + mine:
            s.close()
        relay.stop()


class KeepAliveClients:
    """Keep-alive clients that send GET /health again as soon as each
    answer is in, one connection per entry of `sources` (their addresses),
    in a thread until stop(). `closed` counts connections the relay ended."""

    REQUEST = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    ANSWER_END = b"\r\n\r\nok\n"

    def __init__(self, port, sources):
        self.port, self.sources = port, list(sources)
        self.closed = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def open(self, sel, conns):
        s = socket.socket()
        s.setblocking(False)
        s.bind((self.sources.pop(0), 0))
        try:
            s.connect(("127.0.0.1", self.port))
        except BlockingIOError:
            pass
        conns[s] = b""
        sel.register(s, selectors.EVENT_WRITE)

    def run(self):
        sel, conns = selectors.DefaultSelector(), {}
        try:
            while not self.done.is_set():
                # A few at a time, while the others are busy: a connection
                # given up while its next request waits is what lws kept.
                for _ in range(min(5, len(self.sources))):
                    self.open(sel, conns)
                for key, ev in sel.select(timeout=0.005):
                    s = key.fileobj
                    if ev & selectors.EVENT_WRITE:
                        sel.modify(s, selectors.EVENT_READ)
                        data = b""
                    else:
                        try:
                            data = s.recv(65536)
                        except OSError:
                            data = b""
                        if not data:
                            sel.unregister(s)
                            s.close()
                            del conns[s]
                            self.closed += 1
                            continue
                    conns[s] += data
                    if ev & selectors.EVENT_WRITE or self.ANSWER_END in conns[s]:
                        conns[s] = conns[s].split(self.ANSWER_END)[-1]
                        try:
                            s.send(self.REQUEST)
                        except OSError:
                            pass
        finally:
            for s in conns:
                s.close()

    def stop(self):
        self.done.set()
        self.thread.join(30)


def test_busy_connections_given_up_to_make_room_are_closed(run_dir):
    """The full table again, with every connection busy: keep-alive clients
    asking for /health over and over. A connection given up to make room
    was only marked for lws to kill on its next turn, and lws replaces that
    mark whenever a request's headers complete: busy ones lived on,
    uncounted, lws's own table filled, and a new client was not served for
    as long as the clients kept going (and one address held more than its
    64). Given-up connections are shut down as well."""
    relay = start_limited(run_dir, 300, "relay-busy-table.log")
    clients = KeepAliveClients(relay.port, ["127.0.0.%d" % (30 + i % 5) for i in range(300)])
    try:
        # 300 connections into a table of TABLE_300: each one past it gives
        # one up, and every one given up is closed (before, busy ones lived
        # on: 75 of 92 closed, lws's table full).
        assert wait_until(lambda: clients.closed >= 300 - TABLE_300, 15), clients.closed
        s = socket.create_connection(("127.0.0.1", relay.port), timeout=3)
        try:
            assert health_on(s) == b"HTTP/1.1 200 OK"
        finally:
            s.close()
        assert waits.relay_connections(relay) <= TABLE_300
    finally:
        clients.stop()
        relay.stop()


def _spawn_limited(relay, nofile):
    """Relay.spawn with RLIMIT_NOFILE lowered (soft and hard) in the child."""
    plain = relay.spawn

    def spawn():
        real_popen = subprocess.Popen

        def popen(*a, **kw):
            kw["preexec_fn"] = lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                          (nofile, nofile))
            return real_popen(*a, **kw)
        subprocess.Popen = popen
        try:
            return plain()
        finally:
            subprocess.Popen = real_popen
    return spawn


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
