"""A hostile server beneath SFTP, in the SSH connection itself: libssh2
1.11.1 keeps every packet no call claims (a message type it does not know,
a reply to a request never made, a banner after the login) on the
session's list for as long as the session lasts, and it keeps channel data
in packets of any size, which costs some 80 times its payload when each
carries one byte. Either way a server could make one session hold any
amount of the relay's memory. unclaimed-packets.patch (in
scripts/libssh2-patches) keeps at most LIBSSH2_PACKETS_UNCLAIMED_MAX
unclaimed packets, dropping the oldest (the session goes on), and fails
the session past LIBSSH2_PACKETS_QUEUED_MAXBYTES of queued packets.

The server is paramiko (hostile_sftp.py), which sends the flood when the
relay asks for the status of FLOOD_PATH, then answers."""

import socket

import paramiko
import pytest

import hostile_sftp as hs
import procinfo
from helpers import LOST, Usage, expect_fatal
from relay import relay_binary

MiB = 1024 * 1024
FLOOD_PATH = b"/flood"
# libssh2's bounds (scripts/libssh2-patches/unclaimed-packets.patch).
UNCLAIMED_MAX = 64
QUEUED_MAX_BYTES = 32 * MiB
# What one queued packet costs besides its payload in the patch's count
# (LIBSSH2_PACKET_OVERHEAD), and in fact: a one-byte packet (10 bytes of
# payload) takes some 112 bytes of the relay's heap.
PACKET_OVERHEAD = 128
TINY_PACKET_HEAP = 112

# Unclaimed packets: each carries this much, FLOOD_BYTES in all; without
# the bound the relay would hold all of it.
UNCLAIMED_PAYLOAD = 32 * 1024
UNCLAIMED_FLOOD_BYTES = 128 * MiB


class UnclaimedFlood(hs.Scenario):
    """Before answering STAT of FLOOD_PATH, UNCLAIMED_FLOOD_BYTES of
    messages of type MSG that no call of libssh2 waits for."""

    MSG = 0

    def on_stat(self, rid, p):
        path, _ = self.string(p)
        if path != FLOOD_PATH:
            return super().on_stat(rid, p)
        t = self.chan.get_transport()
        # A recipient channel first, as a channel reply would carry.
        body = hs.u32(self.chan.remote_chanid) + b"\0" * (UNCLAIMED_PAYLOAD - 4)
        for _ in range(UNCLAIMED_FLOOD_BYTES // UNCLAIMED_PAYLOAD):
            m = paramiko.Message()
            m.add_byte(bytes([self.MSG]))
            m.add_bytes(body)
            t._send_user_message(m)
        self.send(hs.ATTRS, rid, hs.attrs(is_dir=True))


# SSH_MSG_UNIMPLEMENTED, SSH_MSG_USERAUTH_BANNER after the login,
# SSH_MSG_REQUEST_SUCCESS and SSH_MSG_CHANNEL_SUCCESS nobody asked for, and
# a type no RFC defines.
UNCLAIMED_TYPES = (3, 53, 81, 99, 200)
UNCLAIMED = {"Unclaimed%d" % t: type("Unclaimed%d" % t, (UnclaimedFlood,), {"MSG": t})
             for t in UNCLAIMED_TYPES}


class TinyData(hs.Scenario):
    """Before answering STAT of FLOOD_PATH, SFTP replies to ids the relay
    never used (which libssh2 drops once read), sent in channel data
    packets of one byte each: PACKETS of them, written to the socket in one
    go so that libssh2 reads them all before it takes any apart."""

    PACKETS = 0

    def on_stat(self, rid, p):
        path, _ = self.string(p)
        if path != FLOOD_PATH:
            return super().on_stat(rid, p)
        stream = bytearray()
        rid_unused = 0x40000000
        while len(stream) < self.PACKETS:
            body = bytes([hs.STATUS]) + hs.u32(rid_unused) + hs.u32(0) + hs.sstr("") + \
                hs.sstr("")
            stream += hs.u32(len(body)) + body
            rid_unused += 1
        send_unpaced(self.chan, bytes(stream[:self.PACKETS]))
        # The stream must end on a whole reply for the real answer to parse.
        rest = bytes(stream[self.PACKETS:])
        if rest:
            self.send_raw(rest)
        self.send(hs.ATTRS, rid, hs.attrs(is_dir=True))


# Linux's SO_SNDBUFFORCE (asm-generic/socket.h; Python has no name for
# it): a send buffer above net.core.wmem_max, for root.
SO_SNDBUFFORCE = 32


def send_unpaced(chan, data):
    """Send `data` on `chan` as one SSH_MSG_CHANNEL_DATA per byte, all
    encrypted first and then written at once. paramiko writes each packet
    as it makes it, slower than libssh2 reads them; a stream written at
    once arrives faster than libssh2 takes the packets apart. paramiko's
    own window accounting is bypassed, as a hostile server would.

    "At once" needs a send buffer that takes the whole stream in one
    send(): with a smaller one, paramiko's write loop (a poll, a send and a
    copy of the rest of the stream per turn) feeds the socket slower than
    libssh2 empties it, libssh2 meets an empty socket, takes apart what it
    has queued, and the bound is never reached (a 32 KiB send buffer fails
    the test every time; the default, autotuned one did now and then).
    With the stream in the kernel, the kernel hands it on as fast as the
    relay reads."""
    t = chan.get_transport()
    pk = t.packetizer
    out = []
    real_write = pk.write_all
    # The packetizer's own (re-entrant) write lock keeps any packet of
    # another thread out from between the blob's sequence numbers.
    with pk._Packetizer__write_lock:
        pk.write_all = out.append
        try:
            for b in data:
                m = paramiko.Message()
                m.add_byte(bytes([94]))  # SSH_MSG_CHANNEL_DATA
                m.add_int(chan.remote_chanid)
                m.add_string(bytes([b]))
                pk.send_message(m)
        finally:
            pk.write_all = real_write
        blob = b"".join(out)
        t.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 * len(blob))
        real_write(blob)


# Past the bound by half again; and a quarter of it, which is served.
TINY_OVER = int(1.5 * QUEUED_MAX_BYTES / (10 + PACKET_OVERHEAD))
TINY_UNDER = QUEUED_MAX_BYTES // 4 // (10 + PACKET_OVERHEAD)
TINY = {"TinyOver": type("TinyOver", (TinyData,), {"PACKETS": TINY_OVER}),
        "TinyUnder": type("TinyUnder", (TinyData,), {"PACKETS": TINY_UNDER})}


@pytest.fixture(scope="module")
def hostile():
    with hs.running(dict(UNCLAIMED, **TINY)) as server:
        yield server


@pytest.fixture
def relay(relay_factory, hostile):
    # paramiko takes a while to send a flood: more than the usual timeout.
    return relay_factory(extra_ports=(hostile.port,), SFTP_OP_TIMEOUT_SECS=120,
                         **procinfo.asan_env(relay_binary()))


@pytest.mark.our_libssh2("unclaimed-packets.patch")
@pytest.mark.parametrize("msg", UNCLAIMED_TYPES)
def test_flood_of_unclaimed_messages_is_kept_to_a_bound(relay, hostile, sshd, msg):
    """128 MiB of messages nobody waits for: libssh2 keeps the newest
    UNCLAIMED_MAX, the answer after them arrives, and the session goes on
    (a stray message now and then does not end it)."""
    use = Usage(relay)
    s = hs.login(relay, hostile, "Unclaimed%d" % msg)
    assert s.ok("stat", path=FLOOD_PATH.decode(), timeout=180)["isDir"] is True
    assert s.ok("stat", path="/f")["size"] == hs.Scenario.file_size
    s.close()
    use.check(relay, sshd, held_kib=UNCLAIMED_MAX * (UNCLAIMED_PAYLOAD + 1024) // 1024)


@pytest.mark.our_libssh2("unclaimed-packets.patch")
def test_channel_data_in_one_byte_packets_ends_the_session_at_the_bound(relay, hostile,
                                                                         sshd):
    """Some 370,000 packets of one byte each, well inside the channel's
    receive window: queued, they would cost some 40 MiB; the session ends
    at QUEUED_MAX_BYTES with the ordinary "connection lost" answer."""
    use = Usage(relay)
    s = hs.login(relay, hostile, "TinyOver")
    expect_fatal(s, s.call("stat", path=FLOOD_PATH.decode(), timeout=180), LOST)
    assert "(libssh2 -41, the server sent more than libssh2 keeps" in relay.log_text()
    held = QUEUED_MAX_BYTES // (10 + PACKET_OVERHEAD) * TINY_PACKET_HEAP
    use.check(relay, sshd, held_kib=held // 1024)


def test_channel_data_in_one_byte_packets_under_the_bound_is_served(relay, hostile, sshd):
    """A quarter of the bound in one-byte packets: odd, but allowed; the
    answer after them arrives and the session goes on."""
    s = hs.login(relay, hostile, "TinyUnder")
    assert s.ok("stat", path=FLOOD_PATH.decode(), timeout=180)["isDir"] is True
    assert s.ok("stat", path="/f")["size"] == hs.Scenario.file_size
    s.close()
