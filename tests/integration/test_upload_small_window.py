"""Uploads arrive whole and in order when the SFTP server's SSH channel
takes little at a time.

Our libssh2 sends each SFTP WRITE request's data straight from the upload
frame (sftp-write-no-copy.patch): a request goes out as its header plus a
pointer into the frame, and one that the channel cannot take whole before
libssh2_sftp_write() returns keeps a copy of its data, as the frame is
only libssh2's until then. Those paths run when the server's channel
window or packet size is small, which OpenSSH's sshd never makes them (2
MiB window, 32 KiB packets). Here the server is paramiko with small ones:
paramiko's floors for what it asks of clients, a 32 KiB window and 4 KiB
packets (each 30000-byte request spans eight packets and the window runs
out inside most of them), and a 1000-byte window, which no rule forbids
(the window then runs out inside request headers too). The server's
handles are as long as SFTP allows (256 bytes), so each request's header
is 281 bytes. The SFTP side (hostile_sftp.Store) checks that
every WRITE follows the one before it and keeps what it was sent; the
test compares that with what the browser sent, byte for byte.

The third server's packets (260 bytes) are smaller than every request
that names a handle. libssh2 1.11.1 sent those with one channel write and
mishandled a short one: fsync sent its packet again from the first byte
on the retry and waited for an answer that could not come, so write_close
hung until SFTP_OP_TIMEOUT_SECS. sftp-requests-sent-whole.patch sends the
rest instead.

The fourth server's window is what runs out: it gives back each byte as
soon as its SFTP side has read it, and never more, so the relay never has
more than 200 bytes of window (hostile_sftp.TightWindowStore), less than
every request that names a handle and less than the OPEN of a long path.
Each of those requests is then sent in parts, each part waiting for the server's window adjust
(sftp-requests-sent-whole.patch: the channel takes nothing, the call
answers EAGAIN and is called again with the same packet). libssh2 1.11.1's
OPEN resumed on its own but answered NULL without LIBSSH2_ERROR_EAGAIN
after a short write, so write_open of the long path failed with "connection
to the SFTP server lost" before the patch sent OPEN the same way."""

import hashlib
import os

import pytest

import hostile_sftp as hs
import procinfo
from relay import relay_binary
from wsclient import MiB

# Smaller than any request that carries a 256-byte handle.
SPLIT_PACKET = 260
# (window, largest packet) the server gives the relay's channel: paramiko's
# floors (paramiko.common MIN_WINDOW_SIZE, MIN_PACKET_SIZE), a window
# smaller than one request's header and data, and packets smaller than the
# requests that carry a 256-byte handle (CLOSE 269 bytes, FSTAT 273, fsync
# 290), so each of those is split (sftp-requests-sent-whole.patch).
CHANNELS = ((32 * 1024, 4096), (1000, 4096),
            pytest.param((32 * 1024, SPLIT_PACKET),
                         marks=pytest.mark.our_libssh2("sftp-requests-sent-whole.patch")))
# libssh2 1.11 cuts WRITE requests at 30000 bytes of data.
WRITE_REQUEST_BYTES = 30000
# Chunk sizes that end inside a request and inside a packet.
CHUNKS = (2 * MiB, 777_777, 3 * WRITE_REQUEST_BYTES + 1, 1)


@pytest.fixture(params=CHANNELS, ids=lambda c: "window%d-packet%d" % c)
def server(request):
    window, packet = request.param
    with hs.running({"Store": hs.Store},
                    on_transport=hs.channel_limits(window, packet)) as srv:
        yield srv


LONG_PATH = hs.TightWindowStore.LONG_PATH


@pytest.mark.our_libssh2("sftp-requests-sent-whole.patch")
def test_upload_through_a_window_smaller_than_each_request(relay_factory):
    """Every request that names a handle, and the OPEN of a long path, is
    bigger than the whole window, so each waits for window adjusts part way
    through; all of them arrive whole and the upload is stored as sent."""
    with hs.running_tight_window() as server:
        relay = relay_factory(extra_ports=(server.port,), **procinfo.asan_env(relay_binary()))
        s = hs.login(relay, server, "Store")
        try:
            store = server.runs[-1]
            assert store.chan.in_window_size == hs.TightWindowStore.WINDOW
            chunk = os.urandom(3 * WRITE_REQUEST_BYTES + 7)
            h = s.write_open(LONG_PATH)
            assert s.write_chunk(h, chunk, timeout=60).get("result") == {}
            assert s.ok("write_close", handle=h, timeout=60) == {}
            # A STAT of the long path: the server read the path whole (it
            # answers "no such file" for what it does not know).
            resp = s.call("stat", path=LONG_PATH, timeout=60)
            assert resp.get("code") == "not_found", resp
        finally:
            s.close()
    assert server.errors == []
    assert bytes(store.files[LONG_PATH.encode()]) == chunk
    assert max(store.write_sizes) == WRITE_REQUEST_BYTES


def test_upload_through_a_small_channel_window_arrives_whole(relay_factory, server):
    relay = relay_factory(extra_ports=(server.port,), **procinfo.asan_env(relay_binary()))
    sent = hashlib.sha256()
    total = 0
    s = hs.login(relay, server, "Store")
    try:
        store = server.runs[-1]
        h = s.write_open("/up")
        for size in CHUNKS:
            chunk = os.urandom(size)
            sent.update(chunk)
            total += size
            assert s.write_chunk(h, chunk, timeout=60).get("result") == {}
        assert s.ok("write_close", handle=h, timeout=60) == {}
    finally:
        s.close()
    assert server.errors == []
    got = bytes(store.files[b"/up"])
    assert len(got) == total
    assert hashlib.sha256(got).hexdigest() == sent.hexdigest()
    # The requests are libssh2's usual ones: the small channel changed how
    # they were sent, not what they say.
    assert max(store.write_sizes) == WRITE_REQUEST_BYTES, max(store.write_sizes)
