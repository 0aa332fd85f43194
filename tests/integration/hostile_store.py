"""An attacker posing as the relay's state store (STATE_URL): a small RESP
server on 127.0.0.1 that answers the relay's connection steps (AUTH,
SELECT, SCRIPT LOAD) like Redis, so the relay takes it for a store, and
then answers what an attacker or a broken store would. It stands in for no
part of Redis: the tests of the store's behaviour run a real
redis-server (scale.py); this one only tests what the relay does when the
peer is hostile.

Stages: until `arm()`, it answers honestly (enough of the scripts for a
challenge, a cookie and an upgrade to go through). Once armed, the next
request (PING or EVALSHA) gets the hostile answer; with `sticky`
every later connection gets the hostile answer to its first command, so a
relay that reconnects stays refused; without it every connection is served
honestly up to its first request. `heal()` makes every new connection
honest again (PING answers PONG, every script answers 200).
"""

import hashlib
import socket
import threading
import time

from sshd import free_port

MiB = 1 << 20


def bulk_flood(size):
    """A bulk string of `size` bytes, streamed: the header, then the body."""
    def gen():
        yield b"$%d\r\n" % size
        chunk = b"x" * MiB
        left = size
        while left > 0:
            yield chunk[:min(left, len(chunk))]
            left -= min(left, len(chunk))
        yield b"\r\n"
    return gen


def array_flood(elements):
    """An array of `elements` integers (4 bytes each on the wire)."""
    def gen():
        yield b"*%d\r\n" % elements
        block = b":1\r\n" * 65536
        left = elements
        while left > 0:
            n = min(left, 65536)
            yield block[:4 * n]
            left -= n
    return gen


def drip(data, interval=1.0):
    """`data` one byte per `interval` seconds."""
    def gen():
        for i in range(len(data)):
            yield data[i:i + 1]
            time.sleep(interval)
    return gen


def once(data):
    def gen():
        yield data
    return gen


class HostileStore:
    """RESP on 127.0.0.1:<port>. `answers` is a list of generator factories
    (see above); connection k that is hostile gets answers[k % len]."""

    def __init__(self, answers, sticky=True):
        self.answers = list(answers)
        self.sticky = sticky
        self.port = free_port()
        self.sock = None
        self.armed = False      # hostile from the next request on
        self.tripped = False    # a hostile answer was sent
        self.healed = False
        self.scripts = {}       # sha1 -> script text (SCRIPT LOAD)
        self.values = {}        # what the challenge script stored
        self.hostile_sent = 0   # hostile answers started
        self.connections = 0
        self.lock = threading.Lock()
        self.threads = []
        self.stopping = False

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def arm(self):
        with self.lock:
            self.armed = True

    def heal(self):
        with self.lock:
            self.healed = True

    def stop(self):
        self.stopping = True
        try:
            self.sock.close()
        except OSError:
            pass

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                k = self.connections
                self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn, k), daemon=True)
            t.start()

    @staticmethod
    def _read_command(f):
        """One RESP command (an array of bulk strings) from file `f`, or None."""
        line = f.readline()
        if not line or not line.startswith(b"*"):
            return None
        args = []
        for _ in range(int(line[1:])):
            hdr = f.readline()
            if not hdr.startswith(b"$"):
                return None
            n = int(hdr[1:])
            data = f.read(n + 2)
            if len(data) != n + 2:
                return None
            args.append(data[:n])
        return args

    def _honest(self, args):
        name = args[0].upper()
        if name in (b"AUTH", b"SELECT"):
            return b"+OK\r\n"
        if name == b"SCRIPT":
            sha = hashlib.sha1(args[2]).hexdigest().encode()
            self.scripts[sha] = args[2]
            return b"$40\r\n" + sha + b"\r\n"
        if name == b"PING":
            return b"+PONG\r\n"
        if name == b"EVALSHA":
            # Just enough of store_redis.c's scripts for a cookie and an
            # upgrade: the challenge remembers its value, the take gives it
            # back once, every other script answers 0.
            script = self.scripts.get(args[1], b"")
            keys = args[3:3 + int(args[2])]
            argv = args[3 + int(args[2]):]
            with self.lock:
                if b"HINCRBY" in script:
                    if argv[1] != b"1":
                        return b":400\r\n"
                    self.values[keys[1]] = argv[2]
                    return b":200\r\n"
                if b"local v = redis.call('GET'" in script:
                    v = self.values.pop(keys[0], None)
                    return b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v)
            return b":0\r\n"
        return b":1\r\n"

    def _serve(self, conn, k):
        conn.settimeout(120)
        f = conn.makefile("rb")
        try:
            while True:
                args = self._read_command(f)
                if args is None:
                    return
                name = args[0].upper()
                with self.lock:
                    healed = self.healed
                    hostile = self.armed and not healed and (
                        (self.tripped and self.sticky) or name in (b"PING", b"EVALSHA"))
                    if hostile:
                        self.tripped = True
                        gen = self.answers[self.hostile_sent % len(self.answers)]
                        self.hostile_sent += 1
                if not hostile:
                    conn.sendall(self._honest(args))
                    continue
                for piece in gen():
                    if self.stopping:
                        return
                    conn.sendall(piece)
                # Whatever the relay says next, it gets nothing more.
                while conn.recv(65536):
                    pass
                return
        except OSError:
            return
        finally:
            try:
                f.close()
                conn.close()
            except OSError:
                pass
