"""A hostile SSH+SFTP server on 127.0.0.1 for the relay's tests.

Every other scenario talks to a real OpenSSH sshd, which is honest. This one
is an attacker: paramiko does the SSH transport (key exchange, password
login, channels), and the SFTP subsystem is written here at the packet
level, so a scenario controls every length, request id and reply.

The login user name picks the scenario: a session that logs in as
"endless_readdir" talks to the Scenario registered under that name. Each
SFTP channel runs its scenario in a thread of its own; `runs` records them
so a test can look at what the relay asked for.
"""

import contextlib
import socket
import struct
import threading

import paramiko

from listener import LoopbackListener
from helpers import LOCAL
from wsclient import open_session

# SFTP v3 packet types (draft-ietf-secsh-filexfer-02).
INIT, VERSION, OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT = 1, 2, 3, 4, 5, 6, 7, 8
SETSTAT, FSETSTAT, OPENDIR, READDIR, REMOVE, MKDIR, RMDIR = 9, 10, 11, 12, 13, 14, 15
REALPATH, STAT, RENAME, READLINK, SYMLINK = 16, 17, 18, 19, 20
STATUS, HANDLE, DATA, NAME, ATTRS = 101, 102, 103, 104, 105
EXTENDED, EXTENDED_REPLY = 200, 201

FX_OK, FX_EOF, FX_NO_SUCH_FILE, FX_FAILURE, FX_OP_UNSUPPORTED = 0, 1, 2, 4, 8

ATTR_SIZE, ATTR_PERMISSIONS, ATTR_ACMODTIME = 0x1, 0x4, 0x8
S_IFDIR, S_IFREG = 0o040000, 0o100000

MTIME = 1700000000


def u32(n):
    return struct.pack(">I", n)


def u64(n):
    return struct.pack(">Q", n)


def sstr(b):
    if isinstance(b, str):
        b = b.encode()
    return u32(len(b)) + b


def attrs(size=0, is_dir=False):
    mode = (S_IFDIR | 0o755) if is_dir else (S_IFREG | 0o644)
    return (u32(ATTR_SIZE | ATTR_PERMISSIONS | ATTR_ACMODTIME) + u64(size) + u32(mode)
            + u32(MTIME) + u32(MTIME))


def name_entry(name, size=0, is_dir=False):
    return sstr(name) + sstr(b"-rw-r--r-- 1 u u 0 Jan 1 00:00 x") + attrs(size, is_dir)


class Gone(Exception):
    """The relay closed the channel."""


class Scenario:
    """An honest, tiny SFTP server: "/" and "/d" are directories, "/d" holds
    `entries` files, "/f" is a file of `file_size` bytes of `FILE_BYTE`.
    Hostile scenarios override the handler of the request they attack."""

    extensions = [(b"posix-rename@openssh.com", b"1"), (b"statvfs@openssh.com", b"2"),
                  (b"limits@openssh.com", b"1")]
    limits = (256 * 1024, 255 * 1024, 255 * 1024, 64)
    entries = 3
    file_size = 1000
    FILE_BYTE = b"x"

    def __init__(self, chan, server):
        self.chan = chan
        self.server = server
        self.requests = []     # (type, id) of every request received
        self.handles = {}      # handle bytes -> path
        self.dir_sent = {}     # handle -> directory entries already sent
        self.next_handle = 0

    # -- wire ----------------------------------------------------------------

    def recv_exact(self, n):
        out = bytearray()
        while len(out) < n:
            b = self.chan.recv(n - len(out))
            if not b:
                raise Gone()
            out += b
        return bytes(out)

    def recv_packet(self):
        (n,) = struct.unpack(">I", self.recv_exact(4))
        body = self.recv_exact(n)
        return body[0], body[1:]

    def send_raw(self, data):
        self.chan.sendall(data)

    def send(self, ptype, rid, payload=b""):
        body = bytes([ptype]) + u32(rid) + payload
        self.send_raw(u32(len(body)) + body)

    def status(self, rid, code, msg=""):
        self.send(STATUS, rid, u32(code) + sstr(msg) + sstr(""))

    # -- the loop ------------------------------------------------------------

    def answer_init(self, extensions=None):
        """Read INIT, answer VERSION 3 with `extensions` (name, value) pairs."""
        ptype, payload = self.recv_packet()
        assert ptype == INIT, ptype
        ext = b"".join(sstr(n) + sstr(v) for n, v in (extensions or ()))
        body = bytes([VERSION]) + u32(3) + ext
        self.send_raw(u32(len(body)) + body)

    def run(self):
        self.answer_init(self.extensions)
        while True:
            ptype, payload = self.recv_packet()
            (rid,) = struct.unpack(">I", payload[:4])
            self.requests.append((ptype, rid))
            self.dispatch(ptype, rid, payload[4:])

    def dispatch(self, ptype, rid, p):
        handler = {OPEN: self.on_open, CLOSE: self.on_close, READ: self.on_read,
                   OPENDIR: self.on_opendir, READDIR: self.on_readdir,
                   STAT: self.on_stat, LSTAT: self.on_stat, FSTAT: self.on_fstat,
                   REALPATH: self.on_realpath, EXTENDED: self.on_extended}.get(ptype)
        if handler is None:
            self.status(rid, FX_OP_UNSUPPORTED, "unsupported")
        else:
            handler(rid, p)

    @staticmethod
    def string(p, off=0):
        (n,) = struct.unpack(">I", p[off:off + 4])
        return p[off + 4:off + 4 + n], off + 4 + n

    def new_handle(self, path):
        h = b"h%d" % self.next_handle
        self.next_handle += 1
        self.handles[h] = path
        return h

    # -- honest handlers -----------------------------------------------------

    def on_realpath(self, rid, p):
        self.send(NAME, rid, u32(1) + name_entry("/", is_dir=True))

    def on_stat(self, rid, p):
        path, _ = self.string(p)
        if path == b"/f":
            self.send(ATTRS, rid, attrs(self.file_size))
        elif path in (b"/", b"/d", b"."):
            self.send(ATTRS, rid, attrs(is_dir=True))
        else:
            self.status(rid, FX_NO_SUCH_FILE, "no such file")

    def on_fstat(self, rid, p):
        self.send(ATTRS, rid, attrs(self.file_size))

    def on_open(self, rid, p):
        path, _ = self.string(p)
        self.send_handle(rid, self.new_handle(path))

    def send_handle(self, rid, h):
        self.send(HANDLE, rid, sstr(h))

    def on_opendir(self, rid, p):
        path, _ = self.string(p)
        self.send(HANDLE, rid, sstr(self.new_handle(path)))

    def on_close(self, rid, p):
        self.status(rid, FX_OK, "ok")

    def on_read(self, rid, p):
        h, off = self.string(p)
        offset, length = struct.unpack(">QI", p[off:off + 12])
        if offset >= self.file_size:
            self.status(rid, FX_EOF, "eof")
            return
        n = min(length, self.file_size - offset)
        self.send(DATA, rid, sstr(self.FILE_BYTE * n))

    def on_readdir(self, rid, p):
        h, _ = self.string(p)
        sent = self.dir_sent.get(h, 0)
        if sent >= self.entries:
            self.status(rid, FX_EOF, "eof")
            return
        self.dir_sent[h] = self.entries
        names = b"".join(name_entry("e%d" % i, size=i) for i in range(self.entries))
        self.send(NAME, rid, u32(self.entries) + names)

    def on_extended(self, rid, p):
        name, off = self.string(p)
        if name == b"limits@openssh.com":
            self.send(EXTENDED_REPLY, rid, b"".join(u64(v) for v in self.limits))
        elif name == b"statvfs@openssh.com":
            self.send(EXTENDED_REPLY, rid, self.statvfs())
        else:
            self.status(rid, FX_OP_UNSUPPORTED, "unsupported")

    def statvfs(self):
        # bsize, frsize, blocks, bfree, bavail, files, ffree, favail, fsid, flag, namemax
        return b"".join(u64(v) for v in (4096, 4096, 1000, 600, 500, 100, 50, 50, 1, 0, 255))


# The longest handle an SFTP server may give (draft-ietf-secsh-filexfer-02).
HANDLE_BYTES = 256


class Store(Scenario):
    """An SFTP server that keeps what each upload writes, in order, and
    gives handles as long as SFTP allows (HANDLE_BYTES), so every request
    that names one is as long as it can be."""

    def __init__(self, chan, server):
        super().__init__(chan, server)
        self.files = {}          # path -> bytearray
        self.write_sizes = []

    def new_handle(self, path):
        h = super().new_handle(path)
        long_h = h + b"." * (HANDLE_BYTES - len(h))
        self.handles[long_h] = self.handles.pop(h)
        return long_h

    def dispatch(self, ptype, rid, p):
        if ptype != WRITE:
            super().dispatch(ptype, rid, p)
            return
        h, off = self.string(p)
        offset, n = struct.unpack(">QI", p[off:off + 12])
        data = p[off + 12:]
        assert len(data) == n, (len(data), n)
        f = self.files.setdefault(self.handles[h], bytearray())
        assert offset == len(f), (offset, len(f))
        f += data
        self.write_sizes.append(n)
        self.status(rid, FX_OK, "ok")


class TightWindowStore(Store):
    """Store, behind a channel that gives back only what was read: paramiko
    adjusts the window once more than in_window_threshold bytes were read
    (a tenth of the window); at 0 it adjusts for every read, so the relay's
    window never exceeds WINDOW. Run it with running_tight_window()."""

    # Smaller than a WRITE request's header (281 bytes with a 256-byte
    # handle), fsync (290), CLOSE (269) and the OPEN of LONG_PATH: each of
    # those goes out in parts.
    WINDOW = 200
    LONG_PATH = "/" + "p" * 300

    def __init__(self, chan, server):
        super().__init__(chan, server)
        chan.in_window_threshold = 0


def running_tight_window():
    """A HostileServer whose user "Store" is a TightWindowStore."""
    return running({"Store": TightWindowStore},
                   on_transport=channel_limits(TightWindowStore.WINDOW, 32 * 1024))


def channel_limits(window, packet):
    """An on_transport hook: the channels the server accepts get `window`
    and `packet` as they are (paramiko clamps only the ones it opens)."""
    def hook(transport):
        transport.default_window_size = window
        transport.default_max_packet_size = packet
    return hook


class _Iface(paramiko.ServerInterface):
    def __init__(self, server, transport):
        self.server = server
        self.transport = transport
        self.username = None

    def get_allowed_auths(self, username):
        return "password"

    def check_auth_password(self, username, password):
        if username not in self.server.scenarios:
            return paramiko.AUTH_FAILED
        # A scenario may act before the login is answered: it gets the
        # transport and decides the answer (Scenario.on_auth).
        on_auth = getattr(self.server.scenarios[username], "on_auth", None)
        if on_auth is not None and on_auth(self.transport) != paramiko.AUTH_SUCCESSFUL:
            return paramiko.AUTH_FAILED
        self.username = username
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind, chanid):
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_subsystem_request(self, channel, name):
        if name != "sftp" or self.username is None:
            return False
        cls = self.server.scenarios[self.username]
        scenario = cls(channel, self.server)
        self.server.runs.append(scenario)
        # The scenario reads INIT first, which the client sends only after
        # it heard that the subsystem started: nothing races the reply.
        t = threading.Thread(target=self.server.run_scenario, args=(scenario,), daemon=True)
        t.start()
        return True


class HostileServer(LoopbackListener):
    """Listens on 127.0.0.1 (a free port); `scenarios` maps user names to
    Scenario classes."""

    def __init__(self, scenarios, on_transport=None):
        super().__init__(backlog=32)
        self.scenarios = dict(scenarios)
        # Called with each new paramiko.Transport before it starts, so a
        # test can watch what the relay sends beneath SFTP.
        self.on_transport = on_transport
        self.runs = []
        self.errors = []
        self.host_key = paramiko.ECDSAKey.generate()
        self.transports = []
        self.start()

    def on_connection(self, conn):
        # paramiko leaves Nagle on: an answer it writes as two SSH packets
        # (a NAME of 1000 entries is 60 KB, two 32 KiB packets) then sends
        # its second, short segment only once the relay has acknowledged
        # the first, which the relay's kernel delays up to 40 ms. Each
        # round trip paid that: the million-entry listing took 53 s, 14 s
        # without it. The relay sets TCP_NODELAY on its own side.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = paramiko.Transport(conn)
        # Large channel windows so a flood is not slowed by paramiko's own
        # flow control: the relay's limits are under test, not ours.
        t.default_window_size = 64 * 1024 * 1024
        t.add_server_key(self.host_key)
        if self.on_transport:
            self.on_transport(t)
        self.transports.append(t)
        try:
            t.start_server(server=_Iface(self, t))
        except (paramiko.SSHException, EOFError, OSError):
            pass

    def run_scenario(self, scenario):
        try:
            scenario.run()
        except (Gone, EOFError, OSError, socket.timeout):
            pass
        except Exception as e:  # noqa: BLE001 - reported to the test
            self.errors.append("%s: %r" % (type(scenario).__name__, e))
        finally:
            try:
                scenario.chan.close()
            except Exception:  # noqa: BLE001
                pass

    def close(self):
        super().close()
        for t in self.transports:
            try:
                t.close()
            except Exception:  # noqa: BLE001
                pass


def login(relay, server, scenario):
    """A session of `relay`, logged in to `server` as the user that picks
    `scenario` (the password is not checked)."""
    s = open_session(relay, LOCAL, server.port)
    try:
        s.expect_host_key()
        s.accept_host_key()
        assert s.auth_password(scenario, "any") == {"id": 1, "result": {}}
    except BaseException:
        s.close()
        raise
    return s


@contextlib.contextmanager
def running(scenarios, on_transport=None):
    """A HostileServer for the span of a fixture; a scenario that failed on
    the server's side fails the test module when it closes."""
    server = HostileServer(scenarios, on_transport=on_transport)
    try:
        yield server
    finally:
        server.close()
    assert not server.errors, server.errors
