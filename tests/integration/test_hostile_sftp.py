"""A hostile SFTP server (hostile_sftp.py: paramiko for SSH, SFTP written by
hand) must not make the relay's memory, threads or descriptors grow without
bound, stop its service thread or crash it: every length from the network
is checked (by libssh2 or the relay), every wait ends. Each scenario asserts
the exact answer the browser gets, that the relay stays healthy (/health,
and a session on the real sshd still works) and that RSS, threads and
descriptors come back."""

import json
import os
import re
import select
import socket
import struct
import time
import threading

import paramiko
import pytest
import websocket

import hostile_sftp as hs
import procinfo
import waits
from helpers import (EVICTED, LOST, OVER_SESSION_MEMORY, OVER_SHARE, Usage,
                     assert_libssh2_limit_ended, expect_fatal, gauge, login, make_file, pattern,
                     strip_id, wait_until)
from relay import relay_binary

ASAN = procinfo.sanitized_relay()
# What a session may hold in replies nobody asked for before libssh2 (our
# unclaimed-replies patch) ends it.
UNCLAIMED_MAX_KIB = 16 * 1024
# A limit on all libssh2 holds for a session below that (and above what it
# holds for a login and a STAT).
SESSION_MEMORY_MIB = 6
# A budget for all sessions that the stale-reply flood fills on its own
# (it would make libssh2 hold UNCLAIMED_MAX_KIB and more).
BUDGET_MIB = 12
# The operation timeout of the relays of this module: long enough for a
# loaded machine, short enough that the stalls of this file take seconds.
OP_TIMEOUT_SECS = 3
TIMEOUT = {"error": "the SFTP server did not answer in time", "code": "timeout"}
INVALID = {"error": "the SFTP server sent an invalid reply", "code": "io"}
MiB = 1024 * 1024


# --------------------------------------------------------------------------
# Scenarios: the user name of the login picks one.

class EndlessReaddir(hs.Scenario):
    """Every READDIR answers 100 new names: the directory never ends."""
    def on_readdir(self, rid, p):
        n = self.dir_sent.get(b"n", 0)
        self.dir_sent[b"n"] = n + 100
        names = b"".join(hs.name_entry("n%d" % (n + i)) for i in range(100))
        self.send(hs.NAME, rid, hs.u32(100) + names)


class MillionEntries(hs.Scenario):
    """1,000,000 entries, 1000 per NAME packet, then EOF."""
    TOTAL = 1000000
    PER = 1000

    def on_readdir(self, rid, p):
        n = self.dir_sent.get(b"n", 0)
        if n >= self.TOTAL:
            self.status(rid, hs.FX_EOF, "eof")
            return
        self.dir_sent[b"n"] = n + self.PER
        names = b"".join(hs.name_entry("m%07d" % (n + i)) for i in range(self.PER))
        self.send(hs.NAME, rid, hs.u32(self.PER) + names)


class LongName(hs.Scenario):
    """One name of 256 KiB (the NAME packet is over libssh2's 256 KiB
    packet limit, which READDIR answers are exempt from)."""
    def on_readdir(self, rid, p):
        self.send(hs.NAME, rid, hs.u32(1) + hs.name_entry("L" * (256 * 1024)))


class CountLie(hs.Scenario):
    """NAME says 2^31 entries and carries one."""
    def on_readdir(self, rid, p):
        self.send(hs.NAME, rid, hs.u32(1 << 31) + hs.name_entry("only"))


class HugeNamePacket(hs.Scenario):
    """A NAME packet of 2^32-1 bytes that keeps coming: libssh2 exempts
    READDIR answers from its 256 KiB packet limit."""
    FLOOD = 512 * MiB

    def on_readdir(self, rid, p):
        self.send_raw(hs.u32(0xFFFFFFFF) + bytes([hs.NAME]) + hs.u32(rid) + hs.u32(1))
        block = b"\0" * MiB
        for _ in range(self.FLOOD // MiB):
            self.send_raw(block)


class StatLengthMax(hs.Scenario):
    def on_stat(self, rid, p):
        self.send_raw(hs.u32(0xFFFFFFFF) + bytes([hs.ATTRS]) + hs.u32(rid) + b"\0" * 64)


class StatLengthShort(hs.Scenario):
    def on_stat(self, rid, p):
        self.send_raw(hs.u32(3) + bytes([hs.ATTRS]) + hs.u32(rid) + b"\0" * 64)


class StatWrongId(hs.Scenario):
    def on_stat(self, rid, p):
        self.send(hs.ATTRS, rid + 1000, hs.attrs(is_dir=True))


class StatUnsolicitedFlood(hs.Scenario):
    """Before each STAT answer, 256 MiB of DATA replies to requests never
    sent (ids far ahead of any the relay used)."""
    FLOOD = 256 * MiB
    PACKET = 200 * 1024

    def on_stat(self, rid, p):
        payload = hs.sstr(b"\0" * self.PACKET)
        for i in range(self.FLOOD // self.PACKET):
            self.send(hs.DATA, 0x40000000 + i, payload)
        super().on_stat(rid, p)


class Park(hs.Scenario):
    """STAT /park/N: N KiB of DATA replies carrying the id of the session's
    first STAT, already answered (libssh2 keeps them, unclaimed), then the
    answer: the session goes on, idle, holding them."""
    PACKET = 200 * 1024
    answered = None

    def on_stat(self, rid, p):
        path, _ = self.string(p)
        if path == b"/hang":
            return  # never answered: the request stays in flight
        if path.startswith(b"/park/") and self.answered is not None:
            payload = hs.sstr(b"\0" * self.PACKET)
            for _ in range(int(path[6:]) * 1024 // self.PACKET):
                self.send(hs.DATA, self.answered, payload)
            self.send(hs.ATTRS, rid, hs.attrs(1000))
            return
        self.answered = rid
        super().on_stat(rid, p)


class AuthPark(hs.Scenario):
    """Before answering the login: PACKETS messages of a type nobody
    waits for (libssh2 keeps the newest 64 of them, about 2 MiB), then no
    answer until the relay's side of the connection closes (at most
    HOLD_SECS); the login then fails."""
    PACKETS = 80
    PAYLOAD = 32 * 1024
    HOLD_SECS = 60

    @classmethod
    def on_auth(cls, transport):
        for _ in range(cls.PACKETS):
            m = paramiko.Message()
            m.add_byte(bytes([99]))
            m.add_bytes(b"\0" * cls.PAYLOAD)
            transport._send_user_message(m)
        sock = transport.sock
        deadline = time.monotonic() + cls.HOLD_SECS
        while time.monotonic() < deadline:
            if select.select([sock], [], [], 0.2)[0]:
                try:
                    if sock.recv(1, socket.MSG_PEEK) == b"":
                        break
                except OSError:
                    break
                time.sleep(0.05)  # a poll interval: the relay sent something else
        return paramiko.AUTH_FAILED


class ParkBig(Park):
    """Park, with a /f of 1 GiB to download."""
    file_size = 1024 * MiB


class StaleRepliesFlood(hs.Scenario):
    """Before each STAT answer, 256 MiB of DATA replies again carrying the
    ids of requests already answered."""
    FLOOD = 256 * MiB
    PACKET = 200 * 1024

    def on_stat(self, rid, p):
        payload = hs.sstr(b"\0" * self.PACKET)
        for i in range(self.FLOOD // self.PACKET):
            self.send(hs.DATA, i % max(rid, 1), payload)
        super().on_stat(rid, p)


class DuplicateReplies(hs.Scenario):
    """Every reply is sent twice."""
    def send(self, ptype, rid, payload=b""):
        super().send(ptype, rid, payload)
        super().send(ptype, rid, payload)


class ReadTooMuch(hs.Scenario):
    """READ answers 100 bytes more than asked (a file of 100 MiB)."""
    file_size = 100 * MiB

    def on_read(self, rid, p):
        h, off = self.string(p)
        _, length = struct.unpack(">QI", p[off:off + 12])
        self.send(hs.DATA, rid, hs.sstr(b"y" * (length + 100)))


class DataLengthLie(hs.Scenario):
    """DATA whose string length is larger than its packet."""
    file_size = 100 * MiB

    def on_read(self, rid, p):
        h, off = self.string(p)
        _, length = struct.unpack(">QI", p[off:off + 12])
        self.send(hs.DATA, rid, hs.u32(length + 1000) + b"y" * length)


class LimitsTiny(hs.Scenario):
    """limits@openssh.com promising 1-byte reads; the file is 1 MiB."""
    limits = (1, 1, 1, 1)
    file_size = MiB


class LimitsHuge(hs.Scenario):
    limits = (2 ** 64 - 1,) * 4
    file_size = MiB


class StatvfsZero(hs.Scenario):
    def statvfs(self):
        return hs.u64(0) * 11


class StatvfsMax(hs.Scenario):
    def statvfs(self):
        return hs.u64(2 ** 64 - 1) * 11


class HugeHandle(hs.Scenario):
    """OPEN answers a 1 MiB handle."""
    def on_open(self, rid, p):
        self.send(hs.HANDLE, rid, hs.sstr(b"H" * MiB))


class StatusOkNoHandle(hs.Scenario):
    """OPEN answers STATUS OK and then never the HANDLE libssh2 waits for;
    a HANDLE arrives for another request id instead."""
    def on_open(self, rid, p):
        self.status(rid, hs.FX_OK, "ok")
        self.send(hs.HANDLE, rid + 7, hs.sstr(b"h"))


class ReadStall(hs.Scenario):
    """READ is never answered (the server stops mid-transfer)."""
    file_size = 10 * MiB

    def on_read(self, rid, p):
        pass


class ReadDrip(hs.Scenario):
    """Each READ answer trickles in at one byte a second."""
    file_size = 10 * MiB

    def __init__(self, chan, server):
        super().__init__(chan, server)
        self.stop = threading.Event()

    def on_read(self, rid, p):
        h, off = self.string(p)
        _, length = struct.unpack(">QI", p[off:off + 12])
        body = bytes([hs.DATA]) + hs.u32(rid) + hs.sstr(b"z" * length)
        packet = hs.u32(len(body)) + body
        for i in range(len(packet)):
            self.send_raw(packet[i:i + 1])
            if self.stop.wait(1):
                return


class ReadAheadHeld(hs.Scenario):
    """READ is answered within the first 512 KiB of the file only (the
    chunk the test reads and the one the relay reads ahead): the read-ahead
    libssh2 sends past it is held, never answered, so closing the handle
    after one chunk leaves those requests abandoned (libssh2 calls them
    zombies and drops their replies if they ever come). No
    limits@openssh.com, so reads are libssh2's 30000 bytes: a score or so
    held per handle. A STAT of /late-new then answers, late, the oldest
    LATE_REPLIES of the newest ZOMBIES_MAX held requests; a STAT of
    /late-old the LATE_REPLIES held just before those. Each late reply
    carries LATE_BYTES."""
    extensions = [(b"posix-rename@openssh.com", b"1"), (b"statvfs@openssh.com", b"2")]
    file_size = 100 * MiB

    def __init__(self, chan, server):
        super().__init__(chan, server)
        self.held = []

    def on_read(self, rid, p):
        h, off = self.string(p)
        offset, _ = struct.unpack(">QI", p[off:off + 12])
        if offset < 512 * 1024:
            super().on_read(rid, p)
        else:
            self.held.append(rid)

    def late(self, rids):
        payload = hs.sstr(b"L" * LATE_BYTES)
        for rid in rids:
            self.send(hs.DATA, rid, payload)

    def on_stat(self, rid, p):
        path, _ = self.string(p)
        if path == b"/late-new":
            self.late(self.held[-ZOMBIES_MAX:][:LATE_REPLIES])
        elif path == b"/late-old":
            self.late(self.held[-(ZOMBIES_MAX + LATE_REPLIES):-ZOMBIES_MAX])
        else:
            super().on_stat(rid, p)
            return
        self.send(hs.ATTRS, rid, hs.attrs(self.file_size))


class ListDrip(hs.Scenario):
    """READDIR answers one name a second: each wait is short, the listing
    never ends."""
    def __init__(self, chan, server):
        super().__init__(chan, server)
        self.n = 0
        self.stop = threading.Event()

    def on_readdir(self, rid, p):
        if self.stop.wait(1):
            return
        self.n += 1
        self.send(hs.NAME, rid, hs.u32(1) + hs.name_entry("drip%d" % self.n))


class WriteDrip(hs.Store):
    """Acknowledges each WRITE a second after it came: every single wait of
    the relay ends well within the operation timeout, the upload hardly
    moves (30 KB/s)."""
    def __init__(self, chan, server):
        super().__init__(chan, server)
        self.stop = threading.Event()

    def dispatch(self, ptype, rid, p):
        if ptype == hs.WRITE and self.stop.wait(1):
            return
        super().dispatch(ptype, rid, p)


class NoExtensions(hs.Store):
    """Offers no extension, as servers that predate OpenSSH's do, answers
    the EXTENDED requests it does not know with FAILURE where the draft
    says OP_UNSUPPORTED, and records its REMOVEs and RENAMEs."""
    extensions = []

    def __init__(self, chan, server):
        super().__init__(chan, server)
        self.done = []      # ("remove", path) and ("rename", from, to), in order

    def on_extended(self, rid, p):
        self.status(rid, hs.FX_FAILURE, "unknown request")

    def dispatch(self, ptype, rid, p):
        if ptype == hs.REMOVE:
            path, _ = self.string(p)
            self.done.append(("remove", path))
            self.status(rid, hs.FX_OK, "ok")
        elif ptype == hs.RENAME:
            src, off = self.string(p)
            dst, _ = self.string(p, off)
            self.done.append(("rename", src, dst))
            self.status(rid, hs.FX_OK, "ok")
        else:
            super().dispatch(ptype, rid, p)


class FsyncFails(NoExtensions):
    """Offers fsync@openssh.com and fails every one (a disk error)."""
    extensions = [(b"fsync@openssh.com", b"1")]


def readdir_once(scenario, rid, p, entries):
    """Answer a handle's first READDIR with `entries` (name_entry()s), the
    next with EOF."""
    h, _ = scenario.string(p)
    if scenario.dir_sent.get(h):
        scenario.status(rid, hs.FX_EOF, "eof")
        return
    scenario.dir_sent[h] = len(entries)
    scenario.send(hs.NAME, rid, hs.u32(len(entries)) + b"".join(entries))


class HugeSizes(hs.Scenario):
    """Sizes of 2^64-1 bytes, which the wire's uint64 allows: for /f, for
    any open file, and for one of the two entries of /d."""
    HUGE = (1 << 64) - 1

    def on_stat(self, rid, p):
        path, _ = self.string(p)
        if path == b"/f":
            self.send(hs.ATTRS, rid, hs.attrs(self.HUGE))
        else:
            super().on_stat(rid, p)

    def on_fstat(self, rid, p):
        self.send(hs.ATTRS, rid, hs.attrs(self.HUGE))

    def on_readdir(self, rid, p):
        readdir_once(self, rid, p, [hs.name_entry("huge", size=self.HUGE),
                                    hs.name_entry("small", size=7)])


SCENARIOS = {cls.__name__: cls for cls in [
    hs.Scenario, EndlessReaddir, MillionEntries, LongName, CountLie, HugeNamePacket,
    StatLengthMax, StatLengthShort, StatWrongId, StatUnsolicitedFlood, StaleRepliesFlood, Park, ParkBig,
    AuthPark,
    DuplicateReplies, ReadTooMuch, DataLengthLie, LimitsTiny, LimitsHuge, StatvfsZero,
    StatvfsMax, HugeHandle, StatusOkNoHandle, ReadStall, ReadDrip, ListDrip, ReadAheadHeld,
    WriteDrip, NoExtensions, FsyncFails, HugeSizes]}


# --------------------------------------------------------------------------
# Fixtures and checks.

@pytest.fixture(scope="module")
def hostile():
    with hs.running(SCENARIOS) as server:
        yield server


@pytest.fixture
def relay(relay_factory, hostile):
    return relay_factory(extra_ports=(hostile.port,), SFTP_OP_TIMEOUT_SECS=OP_TIMEOUT_SECS,
                         **procinfo.asan_env(relay_binary()))


def attack(relay, hostile, scenario):
    """A logged-in session on the hostile server playing `scenario`."""
    return hs.login(relay, hostile, scenario)


# --------------------------------------------------------------------------
# The honest baseline: the fake server itself works through the relay.

def test_honest_fake_server_works(relay, hostile, sshd):
    use = Usage(relay)
    s = attack(relay, hostile, "Scenario")
    assert s.ok("stat", path="/f") == {"mtime": hs.MTIME, "size": 1000, "isDir": False}
    entries = s.ok("list", path="/d")["entries"]
    assert [e["name"] for e in entries] == ["e0", "e1", "e2"]
    assert s.ok("fs_info", path="/") == {"supported": True, "freeBytes": 500 * 4096,
                                         "totalBytes": 1000 * 4096}
    assert s.download("/f") == b"x" * 1000
    s.close()
    use.check(relay, sshd)


def timed_call(s, method, **params):
    t0 = time.monotonic()
    resp = s.call(method, params, timeout=OP_TIMEOUT_SECS * 4 + 10)
    return resp, time.monotonic() - t0


# --------------------------------------------------------------------------
# list: complete or an error, memory bounded whatever the server sends.

def test_endless_directory_fails_as_too_large(relay_factory, hostile, sshd):
    relay = relay_factory(extra_ports=(hostile.port,), SFTP_LIST_MAX_ENTRIES=1000,
                          **procinfo.asan_env(relay_binary()))
    use = Usage(relay)
    s = attack(relay, hostile, "EndlessReaddir")
    assert strip_id(s.call("list", path="/d", timeout=30)) == \
        {"error": "directory too large", "code": "limit"}
    assert s.ok("stat", path="/f")["size"] == 1000   # the session goes on
    s.close()
    use.check(relay, sshd)


def test_endless_directory_past_a_fragment_is_cut_never_complete(relay_factory, hostile, sshd):
    """Past the first 256 KiB fragment an error can no longer be an answer:
    the message is cut and the WebSocket closes (no complete message)."""
    relay = relay_factory(extra_ports=(hostile.port,), SFTP_LIST_MAX_ENTRIES=20000,
                          **procinfo.asan_env(relay_binary()))
    use = Usage(relay)
    s = attack(relay, hostile, "EndlessReaddir")
    s.send_request("list", {"path": "/d"})
    assert s.expect_closed(timeout=60) == []
    use.check(relay, sshd)


def recv_message(s, timeout):
    """The next data message, read frame by frame: websocket-client joins
    fragments by appending (quadratic for ~100 MiB, holding the GIL the
    hostile server's threads in this process need too)."""
    s.ws.settimeout(timeout)
    parts = []
    while True:
        f = s.ws.recv_frame()
        if f.opcode == websocket.ABNF.OPCODE_PING:
            s.ws.pong(f.data)
            continue
        if f.opcode == websocket.ABNF.OPCODE_PONG:
            continue
        assert f.opcode != websocket.ABNF.OPCODE_CLOSE, "closed after %d frames" % len(parts)
        parts.append(f.data)
        if f.fin:
            return b"".join(parts)


def test_million_entries_are_listed_whole_in_bounded_memory(relay, hostile, sshd):
    use = Usage(relay)
    s = attack(relay, hostile, "MillionEntries")
    rid = s.send_request("list", {"path": "/d"})
    frame = json.loads(recv_message(s, timeout=300))
    assert frame["id"] == rid and set(frame) == {"id", "result"}, str(frame)[:300]
    entries = frame["result"]["entries"]
    assert len(entries) == MillionEntries.TOTAL
    assert entries[0] == {"name": "m0000000", "path": "/d/m0000000", "size": 0,
                          "mtime": hs.MTIME, "isDir": False}
    assert entries[-1]["name"] == "m%07d" % (MillionEntries.TOTAL - 1)
    del frame, entries
    s.close()
    use.check(relay, sshd)


# A name of 256 KiB, and a NAME count of 2^31 with one name in the packet:
# libssh2 reports both as a name too long for the buffer (the same code,
# hence the same words); the listing fails, the session goes on.
@pytest.mark.parametrize("scenario", ["LongName", "CountLie"])
def test_impossible_name_is_an_error(relay, hostile, sshd, scenario):
    use = Usage(relay)
    s = attack(relay, hostile, scenario)
    assert strip_id(s.call("list", path="/d", timeout=30)) == \
        {"error": "a name in the directory is too long", "code": "io"}
    assert s.ok("stat", path="/f")["size"] == 1000
    s.close()
    use.check(relay, sshd)


@pytest.mark.our_libssh2("sftp-hostile-server.patch")
def test_name_packet_of_4_gib_is_refused_before_it_is_held(relay, hostile, sshd):
    """libssh2 exempts READDIR answers from its 256 KiB packet limit; our
    patch bounds them (LIBSSH2_SFTP_READDIR_PACKET_MAXLEN) instead of
    allocating and filling 2^32-1 bytes."""
    use = Usage(relay)
    s = attack(relay, hostile, "HugeNamePacket")
    expect_fatal(s, s.call("list", path="/d", timeout=120), LOST)
    use.check(relay, sshd)


# --------------------------------------------------------------------------
# Packet framing and request ids.

# Packets libssh2 refuses to frame at all (a length of 2^32-1, a length
# shorter than the header, an OPEN answered with a 1 MiB handle): the SFTP
# channel is unusable after them, so the session ends.
@pytest.mark.parametrize("scenario,method", [
    ("StatLengthMax", "stat"),
    ("StatLengthShort", "stat"),
    ("HugeHandle", "read_open"),
])
def test_unframeable_packet_ends_the_session(relay, hostile, sshd, scenario, method):
    use = Usage(relay)
    s = attack(relay, hostile, scenario)
    expect_fatal(s, s.call(method, path="/f", timeout=30), LOST)
    use.check(relay, sshd)


def test_answer_with_a_wrong_request_id_times_out(relay, hostile, sshd):
    use = Usage(relay)
    s = attack(relay, hostile, "StatWrongId")
    resp, secs = timed_call(s, "stat", path="/f")
    assert OP_TIMEOUT_SECS - 1 <= secs < OP_TIMEOUT_SECS * 2 + 2, secs
    expect_fatal(s, resp, TIMEOUT)
    use.check(relay, sshd)


def flood_relay(relay_factory, hostile):
    """Sending 256 MiB through paramiko takes longer than OP_TIMEOUT_SECS."""
    return relay_factory(extra_ports=(hostile.port,), SFTP_OP_TIMEOUT_SECS=60,
                         **procinfo.asan_env(relay_binary()))


@pytest.mark.our_libssh2("sftp-hostile-server.patch")
def test_flood_of_replies_to_requests_never_sent_is_dropped(relay_factory, hostile, sshd):
    """256 MiB of DATA for ids the relay never used: dropped as they come
    (our libssh2 patch), the real answer still arrives."""
    relay = flood_relay(relay_factory, hostile)
    use = Usage(relay)
    s = attack(relay, hostile, "StatUnsolicitedFlood")
    assert s.ok("stat", path="/f", timeout=120)["size"] == 1000
    s.close()
    use.check(relay, sshd)


@pytest.mark.our_libssh2("sftp-hostile-server.patch")
def test_flood_of_stale_replies_ends_the_session_in_bounded_memory(relay_factory, hostile, sshd):
    """256 MiB of DATA again for an id already answered: libssh2 would keep
    them all; with the patch the session fails at 16 MiB unclaimed."""
    relay = flood_relay(relay_factory, hostile)
    use = Usage(relay)
    s = attack(relay, hostile, "StaleRepliesFlood")
    expect_fatal(s, s.call("stat", path="/f", timeout=120), LOST)
    use.check(relay, sshd, held_kib=UNCLAIMED_MAX_KIB)


def test_libssh2_memory_past_the_session_limit_ends_the_session(relay_factory, hostile,
                                                                 sshd):
    """SSH_SESSION_MEMORY_MIB counts everything libssh2 allocates for a
    session, whatever the patch of the day bounds: the stale-reply flood
    above would make it hold 16 MiB; with a limit of SESSION_MEMORY_MIB the
    session ends there instead, and the log names the setting."""
    relay = relay_factory(extra_ports=(hostile.port,), SFTP_OP_TIMEOUT_SECS=60,
                          SSH_SESSION_MEMORY_MIB=SESSION_MEMORY_MIB,
                          **procinfo.asan_env(relay_binary()))
    use = Usage(relay)
    s = attack(relay, hostile, "StaleRepliesFlood")
    expect_fatal(s, s.call("stat", path="/f", timeout=120), OVER_SESSION_MEMORY)
    assert_libssh2_limit_ended(relay, SESSION_MEMORY_MIB)
    use.check(relay, sshd, held_kib=SESSION_MEMORY_MIB * 1024)


def start_downloads(relay, sshd, workdir, count, size):
    """`count` honest sessions on the real sshd, each with a file of `size`
    open and its first chunk read: each holds its read-ahead in libssh2."""
    started = []
    for i in range(count):
        path = make_file(os.path.join(workdir, "honest%d" % i), pattern(size, i))
        h = login(relay, sshd)
        handle = h.read_open(path)
        resp, first = h.call_then_binary("read_chunk", handle=handle)
        assert "result" in resp, resp
        started.append((h, handle, first))
    return started


def finish_downloads(started, size):
    """Read the rest of each download of start_downloads(): intact."""
    for i, (h, handle, first) in enumerate(started):
        _, rest = h.read_chunks(handle)
        assert first + rest == pattern(size, i)
        h.close()


def test_swollen_session_is_cut_at_its_share_of_the_budget(relay_factory, hostile, sshd,
                                                          workdir):
    """SSH_MEMORY_BUDGET_MIB bounds what libssh2 holds for all sessions
    together. When a hostile server has swollen its session until the
    budget is full, that session holds the most and more than its share:
    it is refused, the log says why, and two honest sessions on the real
    sshd, in the middle of their downloads, finish them intact."""
    relay = relay_factory(extra_ports=(hostile.port,), SFTP_OP_TIMEOUT_SECS=60,
                          SSH_MEMORY_BUDGET_MIB=BUDGET_MIB, **procinfo.asan_env(relay_binary()))
    use = Usage(relay)
    honest = start_downloads(relay, sshd, workdir, 2, 4 * MiB)
    s = attack(relay, hostile, "StaleRepliesFlood")
    expect_fatal(s, s.call("stat", path="/f", timeout=120), OVER_SHARE)
    finish_downloads(honest, 4 * MiB)
    log = relay.log_text()
    assert "the most of any, more than its share when all sessions together held " \
        "SSH_MEMORY_BUDGET_MIB (%d MiB)" % BUDGET_MIB in log
    held = [int(k) for k in re.findall(r"libssh2 held at most (\d+) KiB", log)]
    assert held and max(held) <= BUDGET_MIB * 1024, held
    assert gauge(relay, "wattcloud_relay_ssh_memory_budget_bytes") == BUDGET_MIB * MiB
    assert 0 < gauge(relay, "wattcloud_relay_ssh_memory_peak_bytes") <= BUDGET_MIB * MiB
    use.check(relay, sshd, held_kib=BUDGET_MIB * 1024)


def test_parked_memory_is_evicted_when_honest_sessions_need_room(relay_factory, hostile, sshd,
                                                                workdir):
    """Hostile sessions arrive one after another; each makes libssh2 keep
    just under what would be its share of half of SSH_MEMORY_BUDGET_MIB at
    that moment, as far as the gauge shows, then stays idle (together more
    than the budget: without eviction the honest downloads that follow are
    refused at the hard cap). Whoever finds the budget full evicts the
    largest parked sessions over their share, honest downloads are served
    and the total never passes the budget."""
    relay = relay_factory(extra_ports=(hostile.port,), SFTP_OP_TIMEOUT_SECS=60,
                          SSH_MEMORY_BUDGET_MIB=BUDGET_MIB, **procinfo.asan_env(relay_binary()))
    use = Usage(relay)
    path = make_file(os.path.join(workdir, "honest"), pattern(4 * MiB, 7))
    budget, half, margin = BUDGET_MIB * MiB, BUDGET_MIB * MiB // 2, 150 * 1024
    parked = []
    for k in range(1, 7):
        s = attack(relay, hostile, "Park")
        assert s.ok("stat", path="/f")["size"] == 1000
        total = gauge(relay, "wattcloud_relay_ssh_memory_bytes")
        share = half // k if total >= half * 0.9 else half
        room = int(min(share, budget - total) - margin - (total if k == 1 else 0))
        if room < Park.PACKET:
            s.close()
            break
        resp = strip_id(s.call("stat", path="/park/%d" % (room // 1024), timeout=120))
        assert resp in ({"result": {"mtime": hs.MTIME, "size": 1000, "isDir": False}},
                        OVER_SHARE, EVICTED), resp
        parked.append(s)
    assert len(parked) >= 3, "the hostile sessions parked too little to test anything"
    # The first parked session, the largest, is evicted first; a request it
    # has in flight then must tell its browser that the relay's memory, not
    # the server, ended it.
    parked[0].send_request("stat", {"path": "/hang"})
    for _ in range(3):
        h = login(relay, sshd)
        assert h.download(path) == pattern(4 * MiB, 7)
        h.close()
    log = relay.log_text()
    assert re.search(r"evicted: libssh2 held \d+ KiB for this session", log)
    assert "with no session to evict" not in log
    assert gauge(relay, "wattcloud_relay_ssh_memory_peak_bytes") <= budget
    answers = [strip_id(data) for kind, data in parked[0].expect_closed(timeout=30)
               if kind == "text"]
    assert answers == [EVICTED], answers
    for s in parked:
        s.close()
    use.check(relay, sshd, held_kib=BUDGET_MIB * 1024)


def test_login_evicted_for_memory_says_so(relay_factory, hostile, sshd, workdir):
    """A session still logging in can hold the most too: its server
    floods it with messages libssh2 keeps and does not answer the login.
    An honest download that needs the room evicts it, and its browser,
    waiting for the login's answer, learns that the relay's memory ended
    it, not the credentials or the server."""
    relay = relay_factory(extra_ports=(hostile.port,), SFTP_OP_TIMEOUT_SECS=60,
                          SSH_MEMORY_BUDGET_MIB=3, SFTP_MAX_CONCURRENT_PER_IP=10,
                          **procinfo.asan_env(relay_binary()))
    s = hs.open_session(relay, hs.LOCAL, hostile.port)
    try:
        s.expect_host_key()
        s.accept_host_key()
        rid = s.send_request("auth", {"type": "password", "username": "AuthPark",
                                      "password": "any"})
        held = "wattcloud_relay_ssh_memory_bytes"
        assert wait_until(lambda: gauge(relay, held) >= 2 * MiB, 30), \
            "the login never held the flood: %d bytes" % gauge(relay, held)
        # Three downloads under way, each holding its read-ahead, need more
        # than the budget leaves beside the parked login (3 x about 0.4 MiB).
        finish_downloads(start_downloads(relay, sshd, workdir, 3, MiB), MiB)
        answers = [data for kind, data in s.expect_closed(timeout=30) if kind == "text"]
        assert answers == [dict(EVICTED, id=rid)], answers
    finally:
        s.close()
    assert re.search(r"evicted: libssh2 held \d+ KiB for this session", relay.log_text())


def test_evicted_session_gives_its_memory_back_though_its_browser_does_not_read(
        relay_factory, hostile, sshd, workdir):
    """A hostile session parks most of the budget, then asks for 64 read
    chunks (16 MiB) and never reads the WebSocket: its worker waits for the
    browser to take its output. Evicted then, it must stop waiting and give
    its memory back, or the honest download that needs the room waits
    WIPE_ROOM_WAIT_MS and is refused."""
    relay = relay_factory(extra_ports=(hostile.port,), SFTP_OP_TIMEOUT_SECS=60,
                          SSH_MEMORY_BUDGET_MIB=BUDGET_MIB, SFTP_MAX_CONCURRENT_PER_IP=20,
                          **procinfo.asan_env(relay_binary()))
    use = Usage(relay)
    s = attack(relay, hostile, "ParkBig")
    assert s.ok("stat", path="/f")["size"] == ParkBig.file_size
    assert s.ok("stat", path="/park/%d" % (BUDGET_MIB * 1024 - 2048))["size"] == 1000
    handle = s.read_open("/f")
    for _ in range(64):
        s.send_request("read_chunk", {"handle": handle})
    served = 'wattcloud_relay_sftp_ops_total{verb="read_chunk",outcome="ok"}'

    def stalled():
        """The worker answers no more read chunks: it waits on the browser
        (64 chunks do not fit in the socket buffers on the way)."""
        before = gauge(relay, served)
        time.sleep(0.5)
        return 0 < before == gauge(relay, served) < 64
    assert wait_until(stalled, 30), "the stalled session kept being served"
    # Honest downloads side by side, each holding its read-ahead: together
    # they need more than the room the stalled session left.
    room = BUDGET_MIB * MiB - gauge(relay, "wattcloud_relay_ssh_memory_bytes")
    finish_downloads(start_downloads(relay, sshd, workdir, int(room // (256 * 1024)) + 2, MiB),
                     MiB)
    log = relay.log_text()
    assert re.search(r"evicted: libssh2 held \d+ KiB for this session", log)
    assert "with no session to evict" not in log
    s.close()
    use.check(relay, sshd, held_kib=BUDGET_MIB * 1024)


@pytest.mark.our_libssh2("sftp-hostile-server.patch")
def test_abandoned_read_requests_are_remembered_up_to_a_bound(relay_factory, hostile, sshd):
    """Read handles closed early while the server sits on their read-ahead:
    libssh2 remembers the newest ZOMBIES_MAX abandoned requests and drops
    their late replies (over 16 MiB of them are harmless); older ones are
    forgotten, so the list stays bounded, and their late replies count as
    unclaimed: past 16 MiB the session ends, in bounded memory. With a
    bound of 1260 or more (or none) the second batch would be dropped too
    and the session would live on; under 960, the first batch would end
    it."""
    relay = flood_relay(relay_factory, hostile)
    use = Usage(relay)
    s = attack(relay, hostile, "ReadAheadHeld")
    scenario = hostile.runs[-1]
    assert isinstance(scenario, ReadAheadHeld)
    while len(scenario.held) < ZOMBIES_MAX + LATE_REPLIES:
        h = s.read_open("/f")
        resp, data = s.call_then_binary("read_chunk", handle=h, timeout=30)
        assert resp["result"] == {"size": 256 * 1024} and data == b"x" * (256 * 1024), resp
        assert s.ok("read_close", handle=h) == {}
    assert s.ok("stat", path="/late-new", timeout=120)["size"] == ReadAheadHeld.file_size
    assert s.ok("stat", path="/f")["size"] == ReadAheadHeld.file_size
    expect_fatal(s, s.call("stat", path="/late-old", timeout=120), LOST)
    use.check(relay, sshd, held_kib=UNCLAIMED_MAX_KIB)


def test_duplicated_replies_are_harmless(relay, hostile, sshd):
    use = Usage(relay)
    s = attack(relay, hostile, "DuplicateReplies")
    for _ in range(100):
        assert s.ok("stat", path="/f") == {"mtime": hs.MTIME, "size": 1000, "isDir": False}
    assert [e["name"] for e in s.ok("list", path="/d")["entries"]] == ["e0", "e1", "e2"]
    assert s.download("/f") == b"x" * 1000
    s.close()
    use.check(relay, sshd)


# LIBSSH2_SFTP_ZOMBIES_MAX (sftp-hostile-server.patch): abandoned requests
# whose late replies libssh2 still recognises and drops; a late reply to an
# older one counts as unclaimed, and unclaimed replies end the session past
# LIBSSH2_SFTP_QUEUED_MAXBYTES (16 MiB).
ZOMBIES_MAX = 1024
QUEUED_MAXBYTES = 16 * MiB
# Each batch of late replies is over QUEUED_MAXBYTES in all (255 KiB each,
# under libssh2's 256 KiB packet limit), so it is harmless only if all but
# QUEUED_MAXBYTES // LATE_BYTES (64) of them are recognised and dropped.
LATE_REPLIES = 300
LATE_BYTES = 255 * 1024

# --------------------------------------------------------------------------
# READ answers.

def read_first_chunk(s):
    h = s.read_open("/f")
    return s.call("read_chunk", handle=h, timeout=30)


# READ replies libssh2 refuses: more bytes than asked (FXP_READ response
# too big), or a DATA length past its packet. The relay answers an error,
# never a frame over 256 KiB, and the session goes on; unpatched libssh2
# leaked each refused reply (255 KiB), which enough rounds make visible:
# 200 leak 50 MiB, twice RSS_SLACK_KIB; the sanitizer build, with twice the
# slack, keeps 300 (75 MiB).
READ_REFUSALS = 300 if ASAN else 200


@pytest.mark.parametrize("scenario", ["ReadTooMuch", "DataLengthLie"])
def test_bad_read_reply_is_refused_without_leaking(relay, hostile, sshd, scenario):
    use = Usage(relay)
    s = attack(relay, hostile, scenario)
    for _ in range(READ_REFUSALS):
        assert strip_id(read_first_chunk(s)) == INVALID
    s.close()
    use.check(relay, sshd)


@pytest.mark.parametrize("scenario", ["LimitsTiny", "LimitsHuge"])
def test_absurd_read_limits_still_read_in_256_kib_frames(relay, hostile, sshd, scenario):
    """limits@openssh.com promising 1-byte reads would have libssh2 queue a
    million READ requests per chunk; 2^64-1 is clamped to 255 KiB."""
    use = Usage(relay)
    s = attack(relay, hostile, scenario)
    h = s.read_open("/f")
    sizes, data = s.read_chunks(h, timeout=60)
    assert sizes == [256 * 1024] * 4 + [0]
    assert data == b"x" * MiB
    s.close()
    use.check(relay, sshd)


@pytest.mark.parametrize("scenario,want", [
    ("StatvfsZero", {"supported": True, "freeBytes": 0, "totalBytes": 0}),
    # Products past 2^63-1 saturate (sftp_ops_bytes): JSON cannot carry more.
    ("StatvfsMax", {"supported": True, "freeBytes": 2 ** 63 - 1, "totalBytes": 2 ** 63 - 1}),
])
def test_absurd_statvfs_values(relay, hostile, sshd, scenario, want):
    use = Usage(relay)
    s = attack(relay, hostile, scenario)
    assert s.ok("fs_info", path="/") == want
    s.close()
    use.check(relay, sshd)


# --------------------------------------------------------------------------
# OPEN answers.

def test_status_ok_instead_of_a_handle_times_out(relay, hostile, sshd):
    use = Usage(relay)
    s = attack(relay, hostile, "StatusOkNoHandle")
    resp, secs = timed_call(s, "read_open", path="/f")
    assert secs < OP_TIMEOUT_SECS * 2 + 2, secs
    expect_fatal(s, resp, TIMEOUT)
    use.check(relay, sshd)


# --------------------------------------------------------------------------
# Servers that stop, or crawl.

@pytest.mark.parametrize("scenario", ["ReadStall", "ReadDrip"])
def test_server_stopping_or_dripping_mid_read_times_out(relay, hostile, sshd, scenario):
    use = Usage(relay)
    s = attack(relay, hostile, scenario)
    h = s.read_open("/f")
    resp, secs = timed_call(s, "read_chunk", handle=h)
    assert secs < OP_TIMEOUT_SECS * 2 + 2, secs
    expect_fatal(s, resp, TIMEOUT)
    for run in hostile.runs:
        if hasattr(run, "stop"):
            run.stop.set()
    use.check(relay, sshd)


def test_listing_dripping_a_name_a_second_times_out(relay, hostile, sshd):
    """Each READDIR answers within the operation timeout, the listing would
    never end: one list fragment gets one operation timeout."""
    use = Usage(relay)
    s = attack(relay, hostile, "ListDrip")
    resp, secs = timed_call(s, "list", path="/d")
    assert secs < OP_TIMEOUT_SECS * 2 + 2, secs
    expect_fatal(s, resp, TIMEOUT)
    for run in hostile.runs:
        if hasattr(run, "stop"):
            run.stop.set()
    use.check(relay, sshd)


def test_write_acknowledged_a_packet_a_second_times_out(relay, hostile, sshd):
    """A chunk is many WRITEs, and libssh2 returns after each acknowledged
    one with a fresh timeout: a server acknowledging one a second kept a
    640 KiB chunk 22 s with a 3 s operation timeout (16 MiB at one a
    minute: hours). Like a read_chunk, each 256 KiB must be acknowledged
    within one operation timeout."""
    use = Usage(relay)
    s = attack(relay, hostile, "WriteDrip")
    h = s.write_open("/up")
    t0 = time.monotonic()
    # Accepted at once (write-through); the write's failure ends the
    # session, and the close waiting behind it is told why (it was told
    # only that the connection was lost).
    rid = s.send_request("write_chunk", {"handle": h})
    s.send_binary(b"w" * (640 * 1024))
    assert s.response(rid, timeout=10) == {"id": rid, "result": {}}
    resp = s.call("write_close", {"handle": h}, timeout=OP_TIMEOUT_SECS * 4 + 10)
    secs = time.monotonic() - t0
    assert secs < OP_TIMEOUT_SECS * 2 + 2, (secs, resp)
    expect_fatal(s, resp, TIMEOUT)
    waits.wait_for_log(relay, 'reason="sftp operation timeout"')
    for run in hostile.runs:
        if hasattr(run, "stop"):
            run.stop.set()
    use.check(relay, sshd)


def test_rename_without_posix_rename_renames(relay, hostile, sshd):
    """PROTOCOL §3: posix-rename@openssh.com when offered, otherwise a
    plain rename. libssh2 refuses the extension unasked with a positive
    code, which the relay took for success: {} and nothing renamed."""
    s = attack(relay, hostile, "NoExtensions")
    assert s.ok("rename", **{"from": "/a", "to": "/b"}) == {}
    s.close()
    run = hostile.runs[-1]
    assert run.done == [("rename", b"/a", b"/b")]
    assert not any(t == hs.EXTENDED for t, _ in run.requests)


class Namespace(hs.Store):
    """No posix-rename@openssh.com, and a real namespace with draft-02
    rename (as ProFTPD's mod_sftp or Windows servers): RENAME fails with
    NO_SUCH_FILE when `from` is missing and with FAILURE when `to` exists;
    REMOVE fails for a missing file. /final (an acknowledged upload) and
    /tmp-upload exist at the start."""
    extensions = [(b"statvfs@openssh.com", b"2")]

    def __init__(self, chan, server):
        super().__init__(chan, server)
        self.files = {b"/final": bytearray(b"acknowledged"), b"/tmp-upload": bytearray(b"new")}
        self.done = []

    def on_stat(self, rid, p):
        path, _ = self.string(p)
        if path in self.files:
            self.send(hs.ATTRS, rid, hs.attrs(len(self.files[path])))
        else:
            self.status(rid, hs.FX_NO_SUCH_FILE, "no such file")

    def dispatch(self, ptype, rid, p):
        if ptype == hs.REMOVE:
            path, _ = self.string(p)
            self.done.append(("remove", path))
            ok = self.files.pop(path, None) is not None
            self.status(rid, hs.FX_OK if ok else hs.FX_NO_SUCH_FILE, "")
        elif ptype == hs.RENAME:
            src, off = self.string(p)
            dst, _ = self.string(p, off)
            self.done.append(("rename", src, dst))
            if src not in self.files:
                self.status(rid, hs.FX_NO_SUCH_FILE, "no such file")
            elif dst in self.files:
                self.status(rid, hs.FX_FAILURE, "exists")
            else:
                self.files[dst] = self.files.pop(src)
                self.status(rid, hs.FX_OK, "ok")
        else:
            super().dispatch(ptype, rid, p)


NOT_FOUND = {"error": "no such file or directory", "code": "not_found"}


@pytest.mark.parametrize("src,dst,want,files", [
    # The retry of a rename whose answer was lost: `from` is gone. The
    # fallback removed `to` first, then the rename failed: the
    # acknowledged file was lost.
    ("/tmp-upload.gone", "/final", NOT_FOUND,
     {b"/final": b"acknowledged", b"/tmp-upload": b"new"}),
    # Onto itself: nothing changes (it removed the file, then failed).
    ("/final", "/final", {"result": {}}, {b"/final": b"acknowledged", b"/tmp-upload": b"new"}),
    # Replacing: `to` has the new content, nothing else is left.
    ("/tmp-upload", "/final", {"result": {}}, {b"/final": b"new"}),
    ("/tmp-upload", "/fresh", {"result": {}},
     {b"/final": b"acknowledged", b"/fresh": b"new"}),
])
def test_rename_without_posix_rename_never_loses_the_target(relay, hostile, sshd, src, dst,
                                                             want, files):
    s = attack(relay, hostile, "Namespace")
    resp = s.call("rename", {"from": src, "to": dst}, timeout=20)
    s.close()
    run = hostile.runs[-1]
    assert strip_id(resp) == want, (resp, run.done)
    assert {k: bytes(v) for k, v in run.files.items()} == files, run.done


class RemoveUnanswered(hs.Store):
    """Answers no REMOVE."""
    def dispatch(self, ptype, rid, p):
        if ptype != hs.REMOVE:
            super().dispatch(ptype, rid, p)


class StatAfterMkdirUnanswered(hs.Scenario):
    """MKDIR fails (FAILURE, as OpenSSH answers an existing path); the
    STAT the relay then sends to word the error is never answered."""
    def dispatch(self, ptype, rid, p):
        if ptype == hs.MKDIR:
            self.status(rid, hs.FX_FAILURE, "failure")
        elif ptype not in (hs.STAT, hs.LSTAT):
            super().dispatch(ptype, rid, p)


class CloseUnanswered(hs.Store):
    """Answers no CLOSE."""
    def on_close(self, rid, p):
        pass


@pytest.mark.parametrize("scenario,calls", [
    ("RemoveUnanswered", [("write_open", {"path": "/up"}), ("write_abort", {})]),
    ("StatAfterMkdirUnanswered", [("mkdir", {"path": "/x"})]),
    ("CloseUnanswered", [("read_open", {"path": "/f"}), ("read_close", {})]),
])
def test_an_unanswered_request_on_the_side_ends_the_session(relay, hostile, sshd, scenario,
                                                            calls):
    """A request an operation makes on the side (removing an aborted
    upload, the stat that words mkdir's error, a close) timed out and was
    ignored: the operation answered as if nothing had happened, the session
    went on, and libssh2, which keeps a timed-out request as sent, took
    that request's late answer for the next one of its kind (a delete of
    another path answered {} by an earlier REMOVE's OK; a stat by an
    earlier stat's). It is answered as the timeout it is, and the session
    ends."""
    use = Usage(relay)
    s = attack(relay, hostile, scenario)
    handle = None
    for method, params in calls[:-1]:
        handle = s.ok(method, **params)["handle"]
    method, params = calls[-1]
    if handle:
        params = dict(params, handle=handle)
    resp, secs = timed_call(s, method, **params)
    assert secs < OP_TIMEOUT_SECS * 2 + 2, secs
    expect_fatal(s, resp, TIMEOUT)
    use.check(relay, sshd)


class DirCloseUnanswered(hs.Scenario):
    """A listing that fails with a directory packet of 1.9 MiB buffered in
    its handle (a name over the relay's 1024 bytes second, padding after),
    and a CLOSE never answered."""
    PAD = 1900 * 1024

    def on_close(self, rid, p):
        pass

    def on_readdir(self, rid, p):
        pad = hs.name_entry("p" * 200)
        n = self.PAD // len(pad)
        self.send(hs.NAME, rid, hs.u32(2 + n) + hs.name_entry("ok") +
                  hs.name_entry("L" * 2000) + pad * n)


class NulName(hs.Scenario):
    """A directory of two: "ok", and a name holding a NUL byte."""
    def on_readdir(self, rid, p):
        readdir_once(self, rid, p, [hs.name_entry(b"a\0b"), hs.name_entry("ok")])


def test_a_name_holding_nul_is_left_out_of_a_listing(relay, hostile, sshd):
    """Its name went to the app whole and its path cut at the NUL, a path
    naming another file."""
    s = attack(relay, hostile, "NulName")
    assert [e["name"] for e in s.ok("list", path="/d")["entries"]] == ["ok"]
    s.close()


SCENARIOS.update({cls.__name__: cls for cls in [
    Namespace, RemoveUnanswered, StatAfterMkdirUnanswered, CloseUnanswered, DirCloseUnanswered, NulName]})
LEAKY_SESSIONS = 8


@pytest.mark.our_libssh2("sftp-shutdown-frees-handles.patch")
def test_unanswered_closes_do_not_leak(relay, hostile, sshd):
    """A close whose answer times out returns from libssh2 without the
    handle freed, and libssh2 freed no handle at shutdown: each listing
    against this server leaked its 1.9 MiB directory packet for good, as
    many times as sessions asked (RSS +30 MiB after 16). Under ASan the
    relay's exit status (LeakSanitizer) says the same."""
    use = Usage(relay)
    sessions = [attack(relay, hostile, "DirCloseUnanswered") for _ in range(LEAKY_SESSIONS)]
    rids = [s.send_request("list", {"path": "/d"}) for s in sessions]
    for s, rid in zip(sessions, rids):
        expect_fatal(s, s.response(rid, timeout=OP_TIMEOUT_SECS * 4 + 10), TIMEOUT)
    use.check(relay, sshd, held_kib=LEAKY_SESSIONS * 2 * 1024)
    if not ASAN:
        # What stays once every session is gone (their peak is allowed for).
        grown = procinfo.rss_kib(relay.proc.pid) - use.rss
        assert grown < LEAKY_SESSIONS * 1024, "RSS grew by %d KiB and stayed" % grown


@pytest.mark.our_libssh2("sftp-fsync-offered.patch")
def test_fsync_not_offered_is_not_asked_for(relay, hostile, sshd):
    """PROTOCOL §5: write_close waits for fsync@openssh.com when the server
    offers it. Asked anyway, a server answering FAILURE made a complete
    upload fail, and the relay removed the file."""
    s = attack(relay, hostile, "NoExtensions")
    h = s.write_open("/up")
    rid = s.send_request("write_chunk", {"handle": h})
    s.send_binary(b"data" * 1000)
    assert s.response(rid, timeout=20) == {"id": rid, "result": {}}
    assert s.ok("write_close", handle=h) == {}
    assert strip_id(s.request_with_binary("write", {"path": "/legacy", "size": 100},
                                          b"L" * 100, timeout=20)) == {"result": {}}
    s.close()
    run = hostile.runs[-1]
    assert run.done == []
    assert not any(t == hs.EXTENDED for t, _ in run.requests)
    assert {k: bytes(v) for k, v in run.files.items()} == {b"/up": b"data" * 1000,
                                                          b"/legacy": b"L" * 100}


def test_fsync_failure_is_answered_with_its_status(relay, hostile, sshd):
    """A failed fsync is a failed upload, answered with the server's
    status: the close that follows replaced it, and the browser read "the
    SFTP server sent an invalid reply". The file is removed, as after any
    write error."""
    s = attack(relay, hostile, "FsyncFails")
    h = s.write_open("/up")
    rid = s.send_request("write_chunk", {"handle": h})
    s.send_binary(b"data" * 1000)
    assert s.response(rid, timeout=20) == {"id": rid, "result": {}}
    assert strip_id(s.call("write_close", {"handle": h}, timeout=20)) == \
        {"error": "the server reported a failure", "code": "io"}
    s.close()
    assert hostile.runs[-1].done == [("remove", b"/up")]


BAD_SIZE = {"error": "the SFTP server did not report a valid file size", "code": "io"}


def test_sizes_past_int64_are_refused_not_negative(relay, hostile, sshd):
    """SFTP sizes are uint64, JSON's signed: stat and write_open's resume
    showed 2^64-1 as -1 (and seeked there). read already refused it; a
    listing leaves such an entry out, as it does a name that is not
    UTF-8."""
    s = attack(relay, hostile, "HugeSizes")
    assert strip_id(s.call("stat", {"path": "/f"}, timeout=20)) == BAD_SIZE
    assert strip_id(s.call("write_open", {"path": "/f", "resume": True}, timeout=20)) == \
        BAD_SIZE
    assert strip_id(s.call("read", {"path": "/f"}, timeout=20)) == BAD_SIZE
    assert [e["name"] for e in s.ok("list", path="/d")["entries"]] == ["small"]
    s.close()


class DirNamespace(hs.Store):
    """No posix-rename, with directories (draft-02 RENAME, as ProFTPD's
    mod_sftp or Windows servers): RENAME fails with FAILURE when `to`
    exists, file or directory; REMOVE fails on a directory. /B is a
    directory holding an acknowledged file, /B/y."""
    extensions = [(b"statvfs@openssh.com", b"2")]

    def __init__(self, chan, server):
        super().__init__(chan, server)
        self.files = {b"/A/x": bytearray(b"from-A"), b"/B/y": bytearray(b"acknowledged"),
                      b"/up": bytearray(b"new")}
        self.dirs = {b"/", b"/A", b"/B"}
        self.done = []

    def exists(self, path):
        return path in self.files or path in self.dirs

    def on_stat(self, rid, p):
        path, _ = self.string(p)
        if path in self.files:
            self.send(hs.ATTRS, rid, hs.attrs(len(self.files[path])))
        elif path in self.dirs:
            self.send(hs.ATTRS, rid, hs.attrs(is_dir=True))
        else:
            self.status(rid, hs.FX_NO_SUCH_FILE, "no such file")

    def move(self, src, dst):
        if src in self.files:
            self.files[dst] = self.files.pop(src)
            return
        self.dirs.discard(src)
        self.dirs.add(dst)
        for table in (self.files,):
            for k in [k for k in table if k.startswith(src + b"/")]:
                table[dst + k[len(src):]] = table.pop(k)
        for d in [d for d in self.dirs if d.startswith(src + b"/")]:
            self.dirs.discard(d)
            self.dirs.add(dst + d[len(src):])

    def dispatch(self, ptype, rid, p):
        if ptype == hs.REMOVE:
            path, _ = self.string(p)
            self.done.append(("remove", path))
            if path in self.files:
                del self.files[path]
                self.status(rid, hs.FX_OK, "")
            else:
                self.status(rid, hs.FX_FAILURE if path in self.dirs else hs.FX_NO_SUCH_FILE, "")
        elif ptype == hs.RENAME:
            src, off = self.string(p)
            dst, _ = self.string(p, off)
            self.done.append(("rename", src, dst))
            if not self.exists(src):
                self.status(rid, hs.FX_NO_SUCH_FILE, "no such file")
            elif self.exists(dst):
                self.status(rid, hs.FX_FAILURE, "exists")
            else:
                self.move(src, dst)
                self.status(rid, hs.FX_OK, "ok")
        else:
            super().dispatch(ptype, rid, p)


class NormalizingNamespace(DirNamespace):
    """DirNamespace on a server that reads "//f" as "/f", as every POSIX
    file system does."""
    def string(self, p, off=0):
        b, o = hs.Scenario.string(p, off)
        if b.startswith(b"/"):
            b = re.sub(rb"/+", b"/", b)
        return b, o


class WriteRefusedCloseUnanswered(hs.Store):
    """Refuses every WRITE (FAILURE) and answers no CLOSE."""
    def dispatch(self, ptype, rid, p):
        if ptype == hs.WRITE:
            self.status(rid, hs.FX_FAILURE, "disk error")
        else:
            super().dispatch(ptype, rid, p)

    def on_close(self, rid, p):
        pass


SCENARIOS.update({cls.__name__: cls for cls in [
    DirNamespace, NormalizingNamespace, WriteRefusedCloseUnanswered]})


def test_rename_onto_itself_spelled_otherwise_changes_nothing(relay, hostile, sshd):
    """"/up" and "//up" are one file: it was moved aside, the rename then
    found no "/up", it was moved back and the answer was not_found."""
    s = attack(relay, hostile, "NormalizingNamespace")
    assert s.ok("rename", **{"from": "/up", "to": "//up"}) == {}
    s.close()
    run = hostile.runs[-1]
    assert bytes(run.files[b"/up"]) == b"new" and all(op[0] != "rename" or op[1:] == (b"/up", b"/up")
                                                      for op in run.done), run.done


def test_a_request_queued_behind_a_listing_whose_close_timed_out_is_answered(relay, hostile,
                                                                            sshd):
    """The listing went out whole, then its close timed out: that made the
    answer count as cut short, the WebSocket closed, and the stat queued
    behind it got no answer at all."""
    s = attack(relay, hostile, "CloseUnanswered")
    r1 = s.send_request("list", {"path": "/d"})
    r2 = s.send_request("stat", {"path": "/f"})
    assert [e["name"] for e in s.response(r1, timeout=20)["result"]["entries"]] == \
        ["e0", "e1", "e2"]
    expect_fatal(s, s.response(r2, timeout=OP_TIMEOUT_SECS * 4 + 10), TIMEOUT)


def test_a_close_queued_behind_a_timed_out_cleanup_is_told_timeout(relay, hostile, sshd):
    """A chunk the server refused ends its upload; clearing it timed out (a
    CLOSE never answered), which ends the session: the write_close behind
    it was told the connection was lost, not that it timed out."""
    s = attack(relay, hostile, "WriteRefusedCloseUnanswered")
    h = s.write_open("/up")
    r1 = s.send_request("write_chunk", {"handle": h})
    s.send_binary(b"z" * 1000)
    r2 = s.send_request("write_close", {"handle": h})
    assert s.response(r1, timeout=20) == {"id": r1, "result": {}}
    expect_fatal(s, s.response(r2, timeout=OP_TIMEOUT_SECS * 4 + 10), TIMEOUT)


class DirNamespaceNoPerms(DirNamespace):
    """DirNamespace on a server whose STAT/LSTAT answers report the size
    only (the permissions, and with them the type, are optional in SFTP)."""
    def on_stat(self, rid, p):
        path, _ = self.string(p)
        if path in self.files or path in self.dirs:
            size = len(self.files[path]) if path in self.files else 4096
            self.send(hs.ATTRS, rid, hs.u32(hs.ATTR_SIZE) + hs.u64(size))
        else:
            self.status(rid, hs.FX_NO_SUCH_FILE, "no such file")


class NoDeleteNamespace(DirNamespace):
    """DirNamespace on an account that may rename but not remove (an
    "upload, no delete" policy)."""
    def dispatch(self, ptype, rid, p):
        if ptype == hs.REMOVE:
            path, _ = self.string(p)
            self.done.append(("remove", path))
            self.status(rid, FX_PERMISSION_DENIED, "permission denied")
        else:
            super().dispatch(ptype, rid, p)


class BigFileCloseUnanswered(CloseUnanswered):
    """CloseUnanswered with a file of three read fragments."""
    file_size = 700000


FX_PERMISSION_DENIED = 3
SCENARIOS.update({cls.__name__: cls for cls in [
    DirNamespaceNoPerms, NoDeleteNamespace, BigFileCloseUnanswered]})


@pytest.mark.parametrize("scenario", ["DirNamespace", "DirNamespaceNoPerms"])
@pytest.mark.parametrize("src", ["/A", "/up"])
def test_rename_without_posix_rename_does_not_replace_a_directory(relay, hostile, sshd,
                                                                  scenario, src):
    """rename(2) and posix-rename refuse to replace a directory (non-empty,
    or by a file). The fallback moved /B aside, renamed `from` onto /B,
    failed to remove the moved directory and answered {}: /B/y, an
    acknowledged file, was no longer at its path. With no type in the
    server's answer (DirNamespaceNoPerms) the directory passed for a file
    the same way."""
    resp, files, done = renamed(relay, hostile, scenario, src, "/B")
    assert files.get(b"/B/y") == b"acknowledged", (resp, files, done)
    assert resp == {"error": "the server reported a failure", "code": "io"}, resp


def test_rename_that_cannot_remove_the_replaced_file_changes_nothing(relay, hostile, sshd):
    """{} means renamed and nothing else changed: the replaced file was
    left under a .rn- name when the server refused to remove it. Both steps
    are undone and the refusal is answered."""
    s = attack(relay, hostile, "NoDeleteNamespace")
    resp = s.call("rename", {"from": "/up", "to": "/A/x"}, timeout=20)
    s.close()
    run = hostile.runs[-1]
    assert strip_id(resp) == {"error": "permission denied", "code": "permission_denied"}, resp
    assert {k: bytes(v) for k, v in run.files.items()} == \
        {b"/A/x": b"from-A", b"/B/y": b"acknowledged", b"/up": b"new"}, run.done


@pytest.mark.parametrize("scenario,size", [("CloseUnanswered", 1000),
                                           ("BigFileCloseUnanswered", 700000)])
def test_requests_queued_behind_a_whole_read_whose_close_timed_out_are_answered(
        relay, hostile, sshd, scenario, size):
    s = attack(relay, hostile, scenario)
    r1 = s.send_request("read", {"path": "/f"})
    r2 = s.send_request("stat", {"path": "/f"})
    r3 = s.send_request("list", {"path": "/d"})
    assert s.response(r1, timeout=20)["result"]["size"] == size
    got = b""
    while len(got) < size:
        got += s.recv_binary(timeout=20)
    assert got == b"x" * size
    assert strip_id(s.response(r2, timeout=OP_TIMEOUT_SECS * 4 + 10)) == TIMEOUT
    assert strip_id(s.response(r3, timeout=OP_TIMEOUT_SECS * 4 + 10)) == TIMEOUT
    assert s.expect_closed(timeout=15) == []


LONG_NAME = b"/" + b"n" * 230   # NAME_MAX is 255


class LongNames(DirNamespace):
    """Honest DirNamespace with NAME_MAX 255, as every POSIX file system:
    a path with a longer component is refused (OpenSSH answers FAILURE
    for ENAMETOOLONG). LONG, an acknowledged file, exists."""
    def __init__(self, chan, server):
        super().__init__(chan, server)
        self.files[LONG_NAME] = bytearray(b"acknowledged")

    def dispatch(self, ptype, rid, p):
        if ptype in (hs.RENAME, hs.STAT, hs.LSTAT):
            paths = [self.string(p)[0]]
            if ptype == hs.RENAME:
                paths.append(self.string(p, self.string(p)[1])[0])
            if any(len(c) > 255 for q in paths for c in q.split(b"/")):
                self.done.append(("too long", paths))
                self.status(rid, hs.FX_FAILURE, "File name too long")
                return
        super().dispatch(ptype, rid, p)


class DotDotNamespace(DirNamespace):
    """Honest DirNamespace that resolves "." and ".." as POSIX does."""
    def string(self, p, off=0):
        b, o = hs.Scenario.string(p, off)
        if b.startswith(b"/"):
            out = []
            for c in b.split(b"/"):
                if c in (b"", b"."):
                    continue
                if c == b"..":
                    if out:
                        out.pop()
                    continue
                out.append(c)
            b = b"/" + b"/".join(out)
        return b, o


class CaseInsensitive(DirNamespace):
    """Honest DirNamespace on a case-insensitive, case-preserving file
    system (Windows, macOS): names are looked up case-insensitively, and
    a name not there keeps its case; RENAME refuses an existing `to`
    (FAILURE), even when it is `from`."""
    def __init__(self, chan, server):
        super().__init__(chan, server)
        self.files = {b"/Up": bytearray(b"new"), b"/B/y": bytearray(b"acknowledged")}

    def real(self, path):
        for k in list(self.files) + list(self.dirs):
            if k.lower() == path.lower():
                return k
        return None

    def string(self, p, off=0):
        b, o = hs.Scenario.string(p, off)
        return (self.real(b) or b), o


class UploadOnlyInbox(DirNamespace):
    """Honest server with an "upload, no delete" policy whose inbox /A may
    be renamed out of but not into (a drop box): REMOVE is refused
    everywhere, RENAME into /A is refused (PERMISSION_DENIED)."""
    def dispatch(self, ptype, rid, p):
        if ptype == hs.REMOVE:
            path, _ = self.string(p)
            self.done.append(("remove refused", path))
            self.status(rid, FX_PERMISSION_DENIED, "permission denied")
            return
        if ptype == hs.RENAME:
            src, off = self.string(p)
            dst, _ = self.string(p, off)
            if dst.startswith(b"/A/"):
                self.done.append(("rename refused", src, dst))
                self.status(rid, FX_PERMISSION_DENIED, "permission denied")
                return
        super().dispatch(ptype, rid, p)


class RemovedByAnother(DirNamespace):
    """Someone else removes the moved-aside file first: its REMOVE answers
    NO_SUCH_FILE."""
    def dispatch(self, ptype, rid, p):
        if ptype == hs.REMOVE and b".rn-" in self.string(p)[0]:
            path, _ = self.string(p)
            self.files.pop(path, None)
            self.done.append(("remove", path))
            self.status(rid, hs.FX_NO_SUCH_FILE, "no such file")
        else:
            super().dispatch(ptype, rid, p)


SCENARIOS.update({cls.__name__: cls for cls in [
    LongNames, DotDotNamespace, CaseInsensitive, UploadOnlyInbox, RemovedByAnother]})
BEFORE = {b"/A/x": b"from-A", b"/B/y": b"acknowledged", b"/up": b"new"}


def renamed(relay, hostile, scenario, src, dst):
    """rename `src` to `dst` on `scenario`: (answer without id, the server's
    files afterwards, what the server did)."""
    s = attack(relay, hostile, scenario)
    resp = strip_id(s.call("rename", {"from": src, "to": dst}, timeout=20))
    s.close()
    run = hostile.runs[-1]
    return resp, {k: bytes(v) for k, v in run.files.items()}, run.done


def test_rename_replaces_a_file_whose_name_is_near_the_limit(relay, hostile, sshd):
    """The aside name was `to` and 36 bytes: a name of 220-255 bytes could
    not be moved aside on a server with NAME_MAX 255, and the rename was
    refused. It now has a length of its own, in the same directory."""
    resp, files, done = renamed(relay, hostile, "LongNames", "/up", LONG_NAME.decode())
    assert resp == {"result": {}}, (resp, done)
    assert files == {LONG_NAME: b"new", b"/A/x": b"from-A", b"/B/y": b"acknowledged"}, done


@pytest.mark.parametrize("scenario,src,dst,after", [
    ("DotDotNamespace", "/A/../up", "/up", BEFORE),
    # Case-insensitive: the file ends under the name asked for.
    ("CaseInsensitive", "/Up", "/up", {b"/up": b"new", b"/B/y": b"acknowledged"}),
])
def test_rename_onto_itself_under_any_spelling_answers_ok(relay, hostile, sshd, scenario, src,
                                                          dst, after):
    """One entry under two spellings the relay cannot tell apart: it was
    moved aside, the rename found no `from`, it was moved back, and the
    answer was not_found (on a case-insensitive server with its name
    changed all the same)."""
    resp, files, done = renamed(relay, hostile, scenario, src, dst)
    assert resp == {"result": {}}, (resp, done)
    assert files == after, done


def test_a_replaced_file_someone_else_removed_is_not_put_back(relay, hostile, sshd):
    """Removing the moved-aside file answered NO_SUCH_FILE: the rename was
    undone and `to`, gone, could not be put back. Gone is what was wanted."""
    resp, files, done = renamed(relay, hostile, "RemovedByAnother", "/up", "/A/x")
    assert resp == {"result": {}}, (resp, done)
    assert files == {b"/A/x": b"new", b"/B/y": b"acknowledged"}, done


def test_a_rename_that_can_be_neither_finished_nor_undone_says_so(relay, hostile, sshd):
    """An "upload, no delete" account whose inbox takes no renames in: the
    replaced file can be neither removed nor put back. No order of steps
    keeps "an error changes nothing" here; the answer says what happened
    (it said permission denied)."""
    resp, files, done = renamed(relay, hostile, "UploadOnlyInbox", "/A/x", "/up")
    assert resp["code"] == "io" and resp["error"].startswith("renamed, but"), (resp, done)
    assert files.get(b"/up") == b"from-A", done
