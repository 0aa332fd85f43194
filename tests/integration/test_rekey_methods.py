"""A server may start a key re-exchange whenever it likes, and OpenSSH's
does (RekeyLimit). libssh2 agrees on the new methods as soon as the
server's KEXINIT arrives but goes on with the old keys until NEWKEYS; had
the server offered other ciphers or MACs than at first, the new methods'
code would run on the old ones' state, of another type. And it took
whatever host key the re-exchange came with, though the browser was shown
and accepted only the first (rekey-same-methods.patch in
scripts/libssh2-patches). Such a server is refused: the request in flight
gets the ordinary "connection lost" answer at once, the session ends, the
relay logs libssh2's reason, and everyone else is served as before. A
re-exchange to the same methods and key goes on working.

The server is paramiko (hostile_sftp.py), which starts the re-exchange
itself when the relay asks for the status of REKEY_PATH, offering the
methods (or the host key) of the scenario; it answers once the exchange
is over. paramiko speaks no chacha20-poly1305, whose switch to or from AES
is the one that crashed the relay (a SIGSEGV in EVP_Cipher, every session
gone): asyncssh plays that server, its SFTP side its own."""

import asyncio
import contextlib
import tempfile
import threading
import warnings

import paramiko
import pytest

with warnings.catch_warnings():
    # asyncssh imports ciphers that python3-cryptography calls deprecated.
    warnings.simplefilter("ignore")
    import asyncssh

import hostile_sftp as hs
import procinfo
from helpers import LOCAL, LOST, assert_serves, expect_fatal, wait_until
from relay import relay_binary
from wsclient import open_session

# What the server offers at first.
FIRST = {"ciphers": ("aes128-ctr",), "digests": ("hmac-sha2-256",)}
REKEY_PATH = b"/rekey"
# The relay logs libssh2's error with the session's end: other methods are
# refused as LIBSSH2_ERROR_KEX_FAILURE, another host key within the
# exchange, which libssh2 then reports as LIBSSH2_ERROR_KEY_EXCHANGE_FAILURE.
REFUSED = {"RekeyOtherCipher": "(libssh2 -5, key exchange failed",
           "RekeyOtherMac": "(libssh2 -5, key exchange failed",
           "RekeyToGcm": "(libssh2 -5, key exchange failed",
           "RekeyOtherHostKey": "(libssh2 -8, key exchange failed"}
# Longer than the call waits: a refusal that left the call to time out
# (as libssh2 1.11.1 does with any failed rekey) fails the test.
OP_TIMEOUT_SECS = 120
CALL_SECS = 30


class RekeyOnStat(hs.Scenario):
    """Answers STAT of REKEY_PATH (a directory) after a key re-exchange of
    its own, in which it offers OFFER (SecurityOptions fields) instead."""

    OFFER = {}

    def on_stat(self, rid, p):
        path, _ = self.string(p)
        if path != REKEY_PATH:
            return super().on_stat(rid, p)
        t = self.chan.get_transport()
        self.before_rekey(t)
        try:
            t.renegotiate_keys()
        except (paramiko.SSHException, EOFError, OSError):
            raise hs.Gone()
        self.send(hs.ATTRS, rid, hs.attrs(is_dir=True))

    def before_rekey(self, transport):
        offer(transport, self.OFFER)


class RekeySame(RekeyOnStat):
    OFFER = FIRST


class RekeyOtherCipher(RekeyOnStat):
    OFFER = {"ciphers": ("aes256-ctr",)}


class RekeyOtherMac(RekeyOnStat):
    OFFER = {"digests": ("hmac-sha2-512",)}


class RekeyToGcm(RekeyOnStat):
    """AES-GCM brings its own MAC method, whose state is of another type
    than HMAC's. paramiko 3 (Debian 13) speaks it; paramiko 2 does not."""
    OFFER = {"ciphers": ("aes128-gcm@openssh.com",)}


GCM = "aes128-gcm@openssh.com" in paramiko.Transport._preferred_ciphers


class RekeyOtherHostKey(RekeyOnStat):
    """Signs the re-exchange with a new host key of the same type: not the
    key the browser was shown and accepted."""

    def before_rekey(self, transport):
        transport.add_server_key(paramiko.ECDSAKey.generate())


def offer(transport, fields):
    """Make paramiko offer `fields` (SecurityOptions name -> names)."""
    opts = transport.get_security_options()
    for field, names in fields.items():
        setattr(opts, field, names)


def offer_first(transport):
    offer(transport, FIRST)


@pytest.fixture(scope="module")
def server():
    scenarios = {c.__name__: c for c in (RekeySame, RekeyOtherCipher, RekeyOtherMac, RekeyToGcm,
                                         RekeyOtherHostKey)}
    with hs.running(scenarios, on_transport=offer_first) as srv:
        yield srv


@pytest.fixture
def relay(relay_factory, server):
    return relay_factory(extra_ports=(server.port,), SFTP_OP_TIMEOUT_SECS=OP_TIMEOUT_SECS,
                         **procinfo.asan_env(relay_binary()))


def test_rekey_to_the_same_methods_goes_on(relay, server):
    s = hs.login(relay, server, "RekeySame")
    try:
        for _ in range(2):
            assert s.ok("stat", path=REKEY_PATH.decode(), timeout=CALL_SECS)["isDir"] is True
        assert s.ok("stat", path="/f")["size"] == hs.Scenario.file_size
    finally:
        s.close()


@pytest.mark.parametrize("scenario", [
    "RekeyOtherCipher",
    "RekeyOtherMac",
    pytest.param("RekeyToGcm", marks=pytest.mark.skipif(
        not GCM, reason="this paramiko has no AES-GCM")),
    "RekeyOtherHostKey",
])
@pytest.mark.our_libssh2("rekey-same-methods.patch")
def test_rekey_to_other_methods_or_host_key_is_refused(relay, server, sshd, scenario):
    s = hs.login(relay, server, scenario)
    try:
        expect_fatal(s, s.call("stat", path=REKEY_PATH.decode(), timeout=CALL_SECS), LOST)
    finally:
        s.close()
    assert wait_until(lambda: REFUSED[scenario] in relay.log_text(), 10), relay.log_tail()
    # Everyone else is served as before.
    assert_serves(relay, sshd)


# --------------------------------------------------------------------------
# chacha20-poly1305 and AES, with asyncssh as the server.

CHACHA = "chacha20-poly1305@openssh.com"


class _AnyPassword(asyncssh.SSHServer):
    def begin_auth(self, username):
        return True

    def password_auth_supported(self):
        return True

    def validate_password(self, username, password):
        return True


@contextlib.contextmanager
def asyncssh_server(first, then):
    """An asyncssh SFTP server on 127.0.0.1 offering only the cipher
    `first`; a STAT of REKEY_PATH makes it start a key re-exchange offering
    only `then`. asyncssh has no public call for that: its connection's
    algorithm lists and _send_kexinit() are what its own rekeys use.
    Yields the port."""
    tmp = tempfile.TemporaryDirectory(prefix="wc-asyncssh-")
    root = tmp.name

    class Sftp(asyncssh.SFTPServer):
        def __init__(self, chan):
            super().__init__(chan, chroot=root)
            self.conn = chan.get_connection()

        def stat(self, path):
            if path.endswith(REKEY_PATH):
                self.conn._enc_algs = [then.encode()]
                self.conn._send_kexinit()
                path = b"/"
            return super().stat(path)

    loop = asyncio.new_event_loop()
    box = {}

    async def serve():
        box["server"] = await asyncssh.create_server(
            _AnyPassword, "127.0.0.1", 0, sftp_factory=Sftp, encryption_algs=[first],
            mac_algs=["hmac-sha2-256"],
            server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")])

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(30)
    try:
        yield box["server"].sockets[0].getsockname()[1]
    finally:
        box["server"].close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        tmp.cleanup()


@pytest.mark.parametrize("first,then", [(CHACHA, "aes128-ctr"), ("aes128-ctr", CHACHA)],
                         ids=["chacha_to_aes", "aes_to_chacha"])
@pytest.mark.our_libssh2("rekey-same-methods.patch")
def test_rekey_between_chacha20_and_aes_is_refused(relay_factory, sshd, first, then):
    with asyncssh_server(first, then) as port:
        relay = relay_factory(extra_ports=(port,), SFTP_OP_TIMEOUT_SECS=OP_TIMEOUT_SECS,
                              **procinfo.asan_env(relay_binary()))
        s = open_session(relay, LOCAL, port)
        try:
            s.expect_host_key()
            s.accept_host_key()
            assert s.auth_password("u", "any") == {"id": 1, "result": {}}
            assert s.ok("stat", path="/")["isDir"] is True
            expect_fatal(s, s.call("stat", path=REKEY_PATH.decode(), timeout=CALL_SECS), LOST)
        finally:
            s.close()
        assert wait_until(lambda: "(libssh2 -5, key exchange failed" in relay.log_text(), 10), \
            relay.log_tail()
        assert_serves(relay, sshd)


# --------------------------------------------------------------------------
# A server that re-exchanges keys over and over, with the same methods.

# Re-exchanges before the first reading (every buffer libssh2 keeps has
# reached its size by then), and between the two readings.
REKEYS_WARM = 30
REKEYS = 400
# What the relay's RSS may move between the readings; 0-4 KiB seen. One
# host key blob (an ECDSA P-256 key: 104 bytes) kept per exchange, as
# libssh2 1.11.1 did before rekey-and-gcm-leaks.patch, adds about 44 KiB
# over REKEYS.
REKEY_RSS_SLACK_KIB = 24


@pytest.mark.our_libssh2("rekey-and-gcm-leaks.patch")
def test_rekey_over_and_over_holds_memory_steady(relay, server, sshd):
    """Under a sanitizer, RSS is ASan's; the exchanges still run, and its
    leak check at the relay's exit catches what is lost for good."""
    asan = procinfo.sanitized_relay()
    s = hs.login(relay, server, "RekeySame")
    pid = relay.proc.pid
    try:
        for _ in range(REKEYS_WARM):
            s.ok("stat", path=REKEY_PATH.decode(), timeout=CALL_SECS)
        before = procinfo.rss_kib(pid)
        for _ in range(REKEYS // 8 if asan else REKEYS):
            s.ok("stat", path=REKEY_PATH.decode(), timeout=CALL_SECS)
        after = procinfo.rss_kib(pid)
        print("RSS %d -> %d KiB" % (before, after))
        if not asan:
            assert after - before < REKEY_RSS_SLACK_KIB, (before, after)
        assert s.ok("stat", path="/f")["size"] == hs.Scenario.file_size
    finally:
        s.close()
    assert_serves(relay, sshd)
