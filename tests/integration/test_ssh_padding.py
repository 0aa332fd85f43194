"""The padding of the SSH packets the relay sends comes from a per-session
pool of PADDING_POOL_LEN random bytes (padding-pool.patch in
scripts/libssh2-patches), refilled when it runs short, each byte handed out
once. The server here is paramiko (hostile_sftp.py, playing an honest SFTP
server); after it decrypts each packet from the relay, the test keeps the
packet's padding. Over several refills of the pool, the padding must look
like what it is meant to be: random bytes never handed out twice. A pool
not refilled, refilled with the same bytes, or handed out from the wrong
end would repeat itself; zeros (the wiped bytes) would too."""

import collections

import pytest

import hostile_sftp as hs
import procinfo
from relay import relay_binary

# PADDING_POOL_LEN in padding-pool.patch.
PADDING_POOL_LEN = 1024
# Padding gathered: several refills of the pool.
PADDING_WANTED = 6 * PADDING_POOL_LEN
# A run of this many padding bytes seen twice would be a repeat: among
# 6 KiB of random bytes a chance repeat of 8 has odds of about 2^-38.
REPEAT_RUN = 8


class PaddingRecorder:
    """Wraps the inbound cipher paramiko sets after each key exchange and
    keeps the padding of every packet it decrypts. Encrypt-then-MAC gives
    the cipher the packet after its length in one call; otherwise it gets
    the first block, length included, then the rest.

    The server offers only aes128-ctr: paramiko 3 (Debian 13) also speaks
    AES-GCM, whose packets it decrypts in one AEAD call this wrapper does
    not see into, and which cipher carries the padding does not matter."""

    CIPHERS = ("aes128-ctr",)

    def __init__(self):
        self.padding = bytearray()
        self.packets = 0

    def hook(self, transport):
        transport.get_security_options().ciphers = self.CIPHERS
        pk = transport.packetizer
        orig = pk.set_inbound_cipher
        recorder = self

        # paramiko 2 passes the engine by position, paramiko 3 by name
        # (block_engine) along with its AEAD arguments.
        def set_inbound_cipher(*args, **kwargs):
            args = list(args)
            etm = kwargs.get("etm", False)
            assert not kwargs.get("aead"), "an AEAD cipher was negotiated"
            if args:
                args[0] = _Watched(args[0], recorder, etm)
            else:
                kwargs["block_engine"] = _Watched(kwargs["block_engine"], recorder, etm)
            orig(*args, **kwargs)
        pk.set_inbound_cipher = set_inbound_cipher

    def packet(self, body):
        """body: a decrypted packet after its length field."""
        pad = body[0]
        self.padding += body[len(body) - pad:]
        self.packets += 1


class _Watched:
    def __init__(self, engine, recorder, etm):
        self.engine = engine
        self.recorder = recorder
        self.etm = etm
        self.head = None

    def update(self, data):
        out = self.engine.update(data)
        if self.etm:
            self.recorder.packet(out)
        elif self.head is None:
            self.head = out
        else:
            self.recorder.packet(self.head[4:] + out)
            self.head = None
        return out


@pytest.fixture(scope="module")
def recorder():
    return PaddingRecorder()


@pytest.fixture(scope="module")
def server(recorder):
    with hs.running({"Scenario": hs.Scenario}, on_transport=recorder.hook) as srv:
        yield srv


def test_padding_is_random_across_pool_refills(relay_factory, server, recorder):
    relay = relay_factory(extra_ports=(server.port,), **procinfo.asan_env(relay_binary()))
    s = hs.login(relay, server, "Scenario")
    try:
        for _ in range(5000):
            if len(recorder.padding) >= PADDING_WANTED:
                break
            assert s.ok("stat", path="/f")["size"] == hs.Scenario.file_size
    finally:
        s.close()
    pad = bytes(recorder.padding)
    assert len(pad) >= PADDING_WANTED, (len(pad), recorder.packets)
    # SSH pads each packet with 4 to 255 bytes.
    assert recorder.packets and len(pad) >= 4 * recorder.packets
    seen = {}
    for i in range(len(pad) - REPEAT_RUN + 1):
        run = pad[i:i + REPEAT_RUN]
        assert run not in seen, "padding bytes %d and %d repeat: %s" % (seen[run], i, run.hex())
        seen[run] = i
    # Uniform bytes: among 6 KiB every value is expected about 24 times; a
    # byte value more than 3 times as often as that is not random.
    counts = collections.Counter(pad)
    assert len(counts) > 240, len(counts)
    assert max(counts.values()) < 3 * len(pad) / 256, counts.most_common(3)
