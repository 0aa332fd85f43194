"""The shared store (STATE_URL) is a peer like any other: a hostile or
broken store must not make the relay hold unbounded memory, descriptors or
time, and the store's password must leave no copy behind (issue 15).

- A hostile store (hostile_store.py, an attacker speaking RESP, not a
  stand-in for Redis) answers a 64 MiB string, an array of a million
  elements, answers of the wrong type, or drips its answer a byte a
  second: the relay's memory stays flat (STORE_REPLY_MAX), it logs why
  with the store's name, answers 503 on /ready, challenges and upgrades,
  stays responsive (/health), and recovers once the store behaves.
- A real redis-server stopped with SIGSTOP while upgrades flood in: at
  most GATE_WAITS_MAX upgrades wait (one descriptor each), the others are
  refused at once, and all of them are answered once the round trip times
  out; the relay is back when the store runs again.
- A real redis-server with requirepass: after connecting (twice) the
  password is in the relay's memory exactly once, in its settings.
"""

import base64
import json
import os
import re
import secrets
import selectors
import signal
import socket
import subprocess
import time

import pytest

import procinfo
from helpers import LOCAL, wait_until
from hostile_store import MiB, HostileStore, array_flood, bulk_flood, drip, once
from relay import http_request, relay_binary
from scale import ENGINES, StoreServer, resp_command
from waits import wait_for_log
from wsclient import (cookie_from_headers, get_challenge, get_cookie, purpose_for, solve_pow,
                      upgrade_status)

pytestmark = pytest.mark.timeout(240)

# relay/store.h and relay/gate.c.
STORE_REPLY_MAX = 4096
STORE_CMD_TIMEOUT_SECS = 2
BACKOFF_MAX_SECS = 5
GATE_WAITS_MAX = 256
# Upgrades one client may have waiting: SFTP_MAX_CONCURRENT_PER_IP (its
# default; conftest.py raises it for the other tests).
PER_CLIENT_WAITS = 3
# What the relay may grow by while a hostile store sends tens of MiB: far
# below what it sends, above allocator noise.
RSS_SLACK_KIB = 16 * 1024


def store_env(url, **extra):
    env = {"STATE_URL": url,
           "RELAY_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
           "KEY_PREFIX": "wchostile:"}
    env.update(procinfo.asan_env(relay_binary()))
    env.update(extra)
    return env


def ready(relay):
    try:
        status, _, body = relay.http("GET", "/ready", timeout=2)
        return status, body.decode("utf-8", "replace")
    except OSError:
        return None, ""


def down_line(url, reason):
    """The relay's log line about the store (`reason`, a regex), naming it."""
    return re.escape("state store %s " % url) + reason


def health_ms(relay):
    t0 = time.monotonic()
    status = relay.http("GET", "/health", timeout=2)[0]
    assert status == 200
    return (time.monotonic() - t0) * 1000


def raw_upgrade(port, host, sport, cookie):
    """The upgrade request of test_scale.refused(), as bytes."""
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    return ("GET /relay/ws?mode=sftp&host=%s&port=%s HTTP/1.1\r\n"
            "Host: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n"
            "Cookie: relay_auth_sftp=%s\r\n\r\n" % (host, sport, port, key, cookie)).encode()


def read_answer(sock):
    """(status, body text) of the HTTP answer on `sock`, read to EOF."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode("utf-8", "replace")


def upgrade_answer(relay, host, sport, cookie):
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        s.sendall(raw_upgrade(relay.port, host, sport, cookie))
        return read_answer(s)


# ---- A hostile store -------------------------------------------------------

HOSTILE = {
    # name: (answer, sticky, reason the relay logs)
    "bulk_64mib": (bulk_flood(64 * MiB),
                   r"unavailable: it sent a string longer than STORE_REPLY_MAX"),
    "array_1e6": (array_flood(10 ** 6),
                  r"unavailable: it sent an array, which no command of ours answers"),
    "drip": (drip(b"+PONG" * 200, 1.0),
             r"unavailable: no complete answer within %d ms" % (STORE_CMD_TIMEOUT_SECS * 1000)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_store_costs_nothing_and_answers_503(relay_factory, sshd, name):
    answer, reason = HOSTILE[name]
    store = HostileStore([answer], sticky=True).start()
    try:
        relay = relay_factory(**store_env(store.url))
        pid = relay.proc.pid
        # Positive control: while it behaves, the relay takes it for a
        # store and issues cookies through it.
        assert wait_until(lambda: ready(relay)[0] == 200, 10), relay.log_tail()
        cookie = get_cookie(relay, LOCAL, sshd.port)
        rss0 = procinfo.rss_kib(pid)
        mark = relay.log_size()
        store.arm()

        t0 = time.monotonic()
        status, body = upgrade_answer(relay, LOCAL, sshd.port, cookie)
        took = time.monotonic() - t0
        assert status == 503, (status, body)
        assert "state store %s unavailable" % store.url in body, body
        assert took < STORE_CMD_TIMEOUT_SECS + 1.5, took
        wait_for_log(relay, down_line(store.url, reason), mark, timeout=10)
        # It stays refused: every reconnection meets the same answer.
        for _ in range(3):
            status, text = ready(relay)
            assert status == 503 and "state store %s unavailable" % store.url in text, text
            status, ch = get_challenge(relay, purpose_for(LOCAL, sshd.port))
            assert status == 503 and "state store %s unavailable" % store.url in str(ch), ch
            assert health_ms(relay) < 500
        grown = procinfo.rss_kib(pid) - rss0
        assert grown < RSS_SLACK_KIB, "RSS grew by %d KiB" % grown
        assert store.hostile_sent >= 1
        assert relay.alive()

        # The store behaves again: the relay is back by itself.
        store.heal()
        assert wait_until(lambda: ready(relay)[0] == 200, BACKOFF_MAX_SECS
                          + 2 * STORE_CMD_TIMEOUT_SECS + 5), relay.log_tail()
        assert "is back after" in relay.log_since(mark)
        assert get_challenge(relay, purpose_for(LOCAL, sshd.port))[0] == 200
    finally:
        store.stop()


# Answers of a type or value no command of ours gets, and what the relay
# logs for each (to a PING or a challenge, whichever met it). An error
# answer to a challenge is the store refusing that one request (as an
# out-of-memory Redis does): 503, the connection kept.
TO = r"unavailable: unexpected answer to (PING|a challenge): "
SENT = r"unavailable: it sent "
WRONG = [
    (b"+OK\r\n", TO + "a status"),
    (b":999999999999999999999\r\n", SENT + r"an integer that is malformed or over 18 digits"),
    (b":-5\r\n", TO + "the integer -5"),
    (b":9223372036854775807\r\n", SENT + r"an integer that is malformed or over 18 digits"),
    (b"$5\r\nhello\r\n", TO + "a string"),
    (b"*1\r\n:0\r\n", SENT + r"an array, which no command of ours answers"),
    (b"_\r\n", SENT + r"bytes that are no RESP2 answer"),
    (b"$-5\r\n", SENT + r"a string of a malformed length"),
    (b"$3\r\nabcdef\r\n", SENT + r"a string not ended by CRLF"),
    (b"-ERR nope\r\n", r"(answered an error: ERR nope|" + TO + "the error ERR nope)"),
    (b"$-1\r\n", TO + "nil"),
    # hiredis 1.2 refuses it, 0.14 took it (as a status "PO\nNG").
    (b"+PO\nNG\r\n", SENT + r"a status or error line holding a CR or LF"),
]


def test_wrong_types_are_refused_not_used(relay_factory, sshd):
    store = HostileStore([once(a) for a, _ in WRONG], sticky=False).start()
    try:
        relay = relay_factory(**store_env(store.url))
        assert wait_until(lambda: ready(relay)[0] == 200, 10), relay.log_tail()
        mark = relay.log_size()
        store.arm()
        statuses = set()
        purpose = purpose_for(LOCAL, sshd.port)
        seen = set()
        deadline = time.monotonic() + 5 * len(WRONG)
        while len(seen) < len(WRONG) and time.monotonic() < deadline:
            status, ch = get_challenge(relay, purpose)
            statuses.add(status)
            if status == 503:
                assert "state store %s unavailable" % store.url in str(ch), ch
            log = relay.log_since(mark)
            for i, (_, reason) in enumerate(WRONG):
                if re.search(down_line(store.url, reason), log):
                    seen.add(i)
            assert relay.alive()
            time.sleep(0.05)  # a poll interval, not an ordering
        missing = [WRONG[i][1] for i in range(len(WRONG)) if i not in seen]
        assert not missing, "not logged: %r\n%s" % (missing, relay.log_since(mark)[-3000:])
        # Never a guess from a wrong answer: only refusals.
        assert statuses == {503}, statuses
        assert health_ms(relay) < 500
    finally:
        store.stop()


# ---- A stopped store and a flood of upgrades ----------------------------------

SOURCES = ["127.0.0.%d" % i for i in range(2, 10)]
PER_SOURCE = 50        # under CONN_LIMIT_PER_CLIENT (64)
FD_SLACK = 32


def cookie_from(src, relay, host, port):
    """A cookie for client address `src` (a loopback address of its own)."""
    purpose = purpose_for(host, port)

    def request(method, path, body=None, headers=None):
        return http_request(relay.port, method, path, body, headers, timeout=10, source=src)

    status, _, body = request("GET", "/relay/auth/challenge?purpose=" + purpose)
    assert status == 200, body
    ch = json.loads(body)
    answer = solve_pow(ch["nonce"], purpose, ch["difficulty"])
    status, headers, body = request("POST", "/relay/auth",
                                    json.dumps({"nonce_id": ch["nonce_id"],
                                                "answer": answer}).encode(),
                                    {"Content-Type": "application/json"})
    assert status == 204, body
    cookie, _ = cookie_from_headers(headers)
    assert cookie
    return cookie


def release(store, stopped, sockets):
    """A flood test's cleanup: its client sockets closed, the store let go
    on if it is still stopped, then stopped for good."""
    for s in sockets:
        s.close()
    if stopped:
        os.kill(store.proc.pid, signal.SIGCONT)
    store.stop()


def test_upgrades_waiting_for_a_stopped_store_are_bounded(relay_factory, sshd, run_dir):
    # The bound is the relay's, whichever engine stopped answering: one
    # engine is enough here (test_scale.py runs every rule on both).
    store = StoreServer(os.path.join(run_dir, "store-flood"), ENGINES[0]).start()
    stopped = False
    socks = []
    try:
        # Each source may have PER_SOURCE upgrades waiting, so that only
        # the relay-wide bound is met here (the per-client one: below).
        relay = relay_factory(**store_env(store.url,
                                          SFTP_MAX_CONCURRENT_PER_IP=str(PER_SOURCE)))
        pid = relay.proc.pid
        assert wait_until(lambda: ready(relay)[0] == 200, 10), relay.log_tail()
        cookies = [(src, cookie_from(src, relay, LOCAL, sshd.port))
                   for src in SOURCES for _ in range(PER_SOURCE)]
        n = len(cookies)
        assert n > GATE_WAITS_MAX + FD_SLACK
        fd0 = procinfo.fd_count(pid)
        mark = relay.log_size()
        # Every request but its last two bytes, so that the flood reaches
        # the relay at once when the store has stopped.
        for src, cookie in cookies:
            s = socket.create_connection(("127.0.0.1", relay.port), timeout=10,
                                         source_address=(src, 0))
            req = raw_upgrade(relay.port, LOCAL, sshd.port, cookie)
            s.sendall(req[:-2])
            socks.append((s, req[-2:]))
        os.kill(store.proc.pid, signal.SIGSTOP)
        stopped = True
        t0 = time.monotonic()
        for s, rest in socks:
            s.sendall(rest)

        # The excess is refused at once, without waiting for the store.
        sel = selectors.DefaultSelector()
        for s, _ in socks:
            sel.register(s, selectors.EVENT_READ)
        answered = {}
        deadline = t0 + STORE_CMD_TIMEOUT_SECS - 0.2
        while len(answered) < n - GATE_WAITS_MAX and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.05):
                sel.unregister(key.fileobj)
                answered[key.fileobj] = (read_answer(key.fileobj), time.monotonic() - t0)
        excess = [a for a, _ in answered.values()]
        assert len(excess) == n - GATE_WAITS_MAX, \
            "%d answered before the store timeout, expected %d:\n%s" % (
                len(excess), n - GATE_WAITS_MAX, relay.log_since(mark)[-3000:])
        assert all(a == (503, "Service Unavailable: too many upgrades waiting for the "
                               "state store\n") for a in excess), set(excess)
        # What is held: one descriptor per waiting upgrade, no more.
        held = procinfo.fd_count(pid) - fd0
        assert GATE_WAITS_MAX - 4 <= held <= GATE_WAITS_MAX + FD_SLACK, held
        assert relay.log_since(mark).count(
            "status=503 reason=too many upgrades waiting for the state store\n") \
            == n - GATE_WAITS_MAX
        assert health_ms(relay) < 500

        # The round trip times out: every waiting upgrade is answered 503.
        rest = {}
        deadline = time.monotonic() + STORE_CMD_TIMEOUT_SECS + 10
        while len(rest) < GATE_WAITS_MAX and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.1):
                sel.unregister(key.fileobj)
                rest[key.fileobj] = read_answer(key.fileobj)
        assert len(rest) == GATE_WAITS_MAX, len(rest)
        for status, body in rest.values():
            assert status == 503 and "state store %s unavailable" % store.url in body, body
        assert wait_until(lambda: procinfo.fd_count(pid) <= fd0 + 4, 5), \
            procinfo.fd_targets(pid)
        status, text = ready(relay)
        assert status == 503 and "state store %s unavailable" % store.url in text

        os.kill(store.proc.pid, signal.SIGCONT)
        stopped = False
        assert wait_until(lambda: ready(relay)[0] == 200, BACKOFF_MAX_SECS
                          + 2 * STORE_CMD_TIMEOUT_SECS + 5), relay.log_tail()
        assert upgrade_status(relay, LOCAL, sshd.port) == 101
    finally:
        release(store, stopped, (s for s, _ in socks))


def test_one_client_cannot_take_every_waiting_slot(relay_factory, sshd, run_dir):
    """One client holds at most SFTP_MAX_CONCURRENT_PER_IP upgrades waiting
    for a stopped store (it can never have more sessions than that); its
    next ones get 429 at once while another client still gets to wait."""
    store = StoreServer(os.path.join(run_dir, "store-per-client"), ENGINES[0]).start()
    stopped = False
    socks = []
    try:
        relay = relay_factory(**store_env(store.url, SFTP_MAX_CONCURRENT_PER_IP=str(
            PER_CLIENT_WAITS)))
        assert wait_until(lambda: ready(relay)[0] == 200, 10), relay.log_tail()
        greedy, other = SOURCES[0], SOURCES[1]
        cookies = [(greedy, cookie_from(greedy, relay, LOCAL, sshd.port))
                   for _ in range(PER_CLIENT_WAITS + 4)]
        cookies.append((other, cookie_from(other, relay, LOCAL, sshd.port)))
        mark = relay.log_size()
        os.kill(store.proc.pid, signal.SIGSTOP)
        stopped = True
        t0 = time.monotonic()
        for src, cookie in cookies:
            s = socket.create_connection(("127.0.0.1", relay.port), timeout=10,
                                         source_address=(src, 0))
            s.sendall(raw_upgrade(relay.port, LOCAL, sshd.port, cookie))
            socks.append((src, s))

        # The greedy client's excess is refused before the store could
        # have answered anything; nobody else is.
        sel = selectors.DefaultSelector()
        for src, s in socks:
            sel.register(s, selectors.EVENT_READ, src)
        early = []
        deadline = t0 + STORE_CMD_TIMEOUT_SECS - 0.2
        while len(early) < 4 and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.05):
                sel.unregister(key.fileobj)
                early.append((key.data, read_answer(key.fileobj)))
        assert early == [(greedy, (429, "Too Many Requests: too many upgrades from this "
                                        "client waiting for the state store\n"))] * 4, \
            (early, relay.log_since(mark)[-3000:])

        # The ones that waited (the greedy client's first three and the other
        # client's one) are answered when the round trip times out.
        late = []
        deadline = time.monotonic() + STORE_CMD_TIMEOUT_SECS + 10
        while len(late) < PER_CLIENT_WAITS + 1 and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.1):
                sel.unregister(key.fileobj)
                late.append((key.data, read_answer(key.fileobj)))
        assert sorted(src for src, _ in late) == [greedy] * PER_CLIENT_WAITS + [other], late
        for _, (status, body) in late:
            assert status == 503 and "state store %s unavailable" % store.url in body, body
    finally:
        release(store, stopped, (s for _, s in socks))


# ---- The store's password ------------------------------------------------------

class PasswordStore(StoreServer):
    """`engine` with requirepass."""

    def __init__(self, workdir, engine, password):
        super().__init__(workdir, engine)
        self.password = password

    def start(self, timeout=10.0):
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.conf, "w") as f:
            f.write("bind 127.0.0.1\nport %d\nsave \"\"\nappendonly no\ndir %s\n"
                    "logfile %s\ndaemonize no\nrequirepass %s\n"
                    % (self.port, self.workdir, self.log, self.password))
        self.proc = subprocess.Popen([self.binary, self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        assert wait_until(lambda: self._answers(), timeout), "store not answering"
        return self

    def _answers(self):
        try:
            return resp_command(self.port, "PING").startswith(b"-NOAUTH")
        except OSError:
            return False


@pytest.mark.parametrize("engine", ENGINES)
def test_store_password_leaves_no_copy(relay_factory, sshd, run_dir, engine):
    password = "wcstorepw" + secrets.token_hex(12)
    workdir = os.path.join(run_dir, "store-password-" + engine)
    store = PasswordStore(workdir, engine, password).start()
    pwfile = os.path.join(workdir, "password")
    with open(pwfile, "w") as f:
        f.write(password + "\n")
    os.chmod(pwfile, 0o600)
    try:
        relay = relay_factory(**store_env(store.url, STATE_PASSWORD_FILE=pwfile))
        assert wait_until(lambda: ready(relay)[0] == 200, 10), relay.log_tail()
        assert get_challenge(relay, purpose_for(LOCAL, sshd.port))[0] == 200
        # A second connection (the store restarted), a second AUTH.
        mark = relay.log_size()
        store.stop()
        store.start()
        wait_for_log(relay, r"state store .* is back after", mark,
                     timeout=BACKOFF_MAX_SECS + 2 * STORE_CMD_TIMEOUT_SECS + 5)
        assert get_challenge(relay, purpose_for(LOCAL, sshd.port))[0] == 200
        assert password not in relay.log_text()
        found = procinfo.find_in_memory(relay.proc.pid, [password.encode()])
        hits = found.get(password.encode(), [])
        # Exactly one copy: the settings', which reconnecting needs. It is
        # also the positive control: the scan sees the relay's memory.
        assert len(hits) == 1, "password in relay memory %d times: %r" % (len(hits), hits)
    finally:
        store.stop()
