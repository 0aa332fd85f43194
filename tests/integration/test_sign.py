"""The `sign` extension: public-key login where the private key stays with
the client (README "The sign extension").

The test client plays the browser: it holds keys made with Python's
`cryptography` and answers each sign_request with exactly what WebCrypto's
sign() returns for that key (Ed25519: 64 bytes; ECDSA: IEEE P1363 r||s with
SHA-256/384; RSA: RSASSA-PKCS1-v1_5 with SHA-256 or SHA-512 as the
algorithm says). The relay turns that into the SSH signature; a real sshd
decides. RSA keys of 2048 and 4096 bits sign with each rsa-sha2 variant,
each forced by an sshd whose PubkeyAcceptedAlgorithms offers only it.

Failing logins run on their own relays: five failures block the client's
address (PROTOCOL §4), which would spill into later tests.
"""

import base64
import hashlib
import os
import re
import secrets
import struct
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

import procinfo
import sshd as sshd_mod
from helpers import LOCAL, wait_until
from sshd import TEST_PASSWORD, TEST_USER
from wsclient import open_session, upgrade_status

# --------------------------------------------------------------------------
# A client key as the browser holds it: sign() is WebCrypto's output.


class ClientKey:
    def __init__(self, name, private):
        self.name = name
        self.private = private
        self.line = private.public_key().public_bytes(
            serialization.Encoding.OpenSSH,
            serialization.PublicFormat.OpenSSH).decode() + " wattcloud-" + name
        self.blob = base64.b64decode(self.line.split()[1])
        self.type = self.line.split()[0]
        self.fingerprint = "SHA256:" + base64.b64encode(
            hashlib.sha256(self.blob).digest()).decode().rstrip("=")

    def sign(self, algorithm, data):
        """What crypto.subtle.sign() returns for this key and algorithm."""
        k = self.private
        if isinstance(k, ed25519.Ed25519PrivateKey):
            assert algorithm == "ssh-ed25519", algorithm
            return k.sign(data)
        if isinstance(k, ec.EllipticCurvePrivateKey):
            h, n = {"ecdsa-sha2-nistp256": (hashes.SHA256(), 32),
                    "ecdsa-sha2-nistp384": (hashes.SHA384(), 48)}[algorithm]
            r, s = decode_dss_signature(k.sign(data, ec.ECDSA(h)))
            return r.to_bytes(n, "big") + s.to_bytes(n, "big")
        h = {"rsa-sha2-256": hashes.SHA256(), "rsa-sha2-512": hashes.SHA512()}[algorithm]
        return k.sign(data, padding.PKCS1v15(), h)

    def secrets(self):
        """Byte strings of the private key that must never be in the relay."""
        k = self.private
        if isinstance(k, ed25519.Ed25519PrivateKey):
            seed = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                   serialization.NoEncryption())
            return {"seed": seed, "seed base64": base64.b64encode(seed)}
        if isinstance(k, ec.EllipticCurvePrivateKey):
            nums = k.private_numbers()
            d = nums.private_value.to_bytes((k.curve.key_size + 7) // 8, "big")
            return {"d": d, "d base64": base64.b64encode(d)}
        nums = k.private_numbers()
        size = k.key_size // 8
        return {"d": nums.d.to_bytes(size, "big"), "p": nums.p.to_bytes(size // 2, "big"),
                "q": nums.q.to_bytes(size // 2, "big")}


def make_keys():
    return {
        "ed25519": ClientKey("ed25519", ed25519.Ed25519PrivateKey.generate()),
        "p256": ClientKey("p256", ec.generate_private_key(ec.SECP256R1())),
        "p384": ClientKey("p384", ec.generate_private_key(ec.SECP384R1())),
        "rsa2048": ClientKey("rsa2048", rsa.generate_private_key(65537, 2048)),
        "rsa4096": ClientKey("rsa4096", rsa.generate_private_key(65537, 4096)),
    }


EXPECTED_ALGORITHM = {"ed25519": "ssh-ed25519", "p256": "ecdsa-sha2-nistp256",
                      "p384": "ecdsa-sha2-nistp384", "rsa2048": "rsa-sha2-512",
                      "rsa4096": "rsa-sha2-512"}

# --------------------------------------------------------------------------
# sshd servers that accept exactly these keys.


class SignSshd(sshd_mod.Sshd):
    """The suite's default sshd, plus PubkeyAcceptedAlgorithms when given."""

    def __init__(self, directory, authorized_keys_file, accepted=None):
        super().__init__(directory, "default", authorized_keys_file)
        self.accepted = accepted

    def _config(self):
        text = super()._config()
        if self.accepted:
            text += "PubkeyAcceptedAlgorithms %s\n" % self.accepted
        return text


@pytest.fixture(scope="module")
def keys():
    return make_keys()


@pytest.fixture(scope="module")
def sign_servers(run_dir, test_user, keys):
    """{"any": sshd taking every algorithm, "rsa-sha2-256": ..., "rsa-sha2-512": ...}."""
    ak = sshd_mod.AuthorizedKeys([k.line for k in keys.values()], test_user)
    servers = {}
    try:
        for name, accepted in (("any", None),
                               ("rsa-sha2-256", "rsa-sha2-256,ssh-ed25519"),
                               ("rsa-sha2-512", "rsa-sha2-512,ssh-ed25519")):
            servers[name] = SignSshd(os.path.join(run_dir, "sshd-sign-" + name), ak.pattern,
                                     accepted).start()
        yield servers
    finally:
        for s in servers.values():
            s.stop()
        ak.remove()


@pytest.fixture
def sign_relay(relay_factory, sign_servers):
    """sign_relay(**env) -> a relay that may reach the sign servers."""
    def start(**env):
        return relay_factory(extra_ports=[s.port for s in sign_servers.values()], **env)
    return start


# --------------------------------------------------------------------------
# The browser's side of the handshake.

def accepted(relay, server):
    s = open_session(relay, LOCAL, server.port)
    frame = s.expect_host_key()
    assert "sign" in frame.get("features", []), frame
    s.accept_host_key()
    return s


def send_auth(s, key_line, user=TEST_USER, algorithm=None):
    params = {"type": "publickey-sign", "username": user, "publicKey": key_line}
    if algorithm is not None:
        params["algorithm"] = algorithm
    s.send_json({"id": 1, "method": "auth", "params": params})


def expect_sign_request(s, timeout=15):
    frame = s.recv_text(timeout)
    assert frame.get("type") == "sign_request", "expected sign_request, got %r" % frame
    assert set(frame) == {"type", "request", "algorithm", "data"}, frame
    assert type(frame["request"]) is int and frame["request"] >= 1, frame
    data = base64.b64decode(frame["data"], validate=True)
    return frame, data


def parse_userauth(data):
    """Split the signed data as RFC 4252 §7 defines it."""
    fields, off = [], 0

    def string():
        nonlocal off
        (n,) = struct.unpack(">I", data[off:off + 4])
        v = data[off + 4:off + 4 + n]
        assert len(v) == n
        off += 4 + n
        return v

    fields.append(string())          # session id
    fields.append(data[off]); off += 1
    for _ in range(3):
        fields.append(string())      # user, service, method
    fields.append(data[off]); off += 1
    fields.append(string())          # algorithm
    fields.append(string())          # public key blob
    assert off == len(data)
    return fields


def answer(s, frame, signature):
    s.send_json({"type": "sign", "request": frame["request"],
                 "signature": base64.b64encode(signature).decode()})


def sign_login(relay, server, key, algorithm=None):
    """A session logged in by `key`; returns (session, its sign_request with
    the signature sent added as "signature")."""
    s = accepted(relay, server)
    try:
        send_auth(s, key.line, algorithm=algorithm)
        frame, data = expect_sign_request(s)
        frame["signature"] = key.sign(frame["algorithm"], data)
        answer(s, frame, frame["signature"])
        resp = s.response(1)
        assert resp == {"id": 1, "result": {}}, "auth failed: %r" % resp
    except BaseException:
        s.close()
        raise
    return s, frame


def refused(s, error, code, timeout=15):
    """The auth answer is exactly this error, and the relay closes."""
    resp = s.response(1, timeout)
    assert resp == {"id": 1, "error": error, "code": code}, resp
    assert s.expect_closed(timeout=10) == []


# --------------------------------------------------------------------------
# Logins that work.

@pytest.mark.parametrize("name", ["ed25519", "p256", "p384", "rsa2048", "rsa4096"])
def test_sign_login_full_session(sign_relay, sign_servers, keys, workdir, name):
    relay = sign_relay()
    key = keys[name]
    offset = relay.log_size()
    s, frame = sign_login(relay, sign_servers["any"], key)
    try:
        assert frame["algorithm"] == EXPECTED_ALGORITHM[name], frame
        sid, msg, user, service, method, flag, alg, blob = parse_userauth(
            base64.b64decode(frame["data"]))
        assert len(sid) == 32, len(sid)  # curve25519-sha256's exchange hash
        assert (msg, user, service, method, flag) == (50, TEST_USER.encode(),
                                                      b"ssh-connection", b"publickey", 1)
        assert alg == frame["algorithm"].encode() and blob == key.blob
        # A whole session on this login: folder, upload, download.
        folder = os.path.join(workdir, "vault-" + name)
        assert s.ok("mkdir", path=folder) == {}
        data = secrets.token_bytes(300 * 1024 + 7)
        s.upload(folder + "/blob.bin", data, chunk=128 * 1024)
        assert s.download(folder + "/blob.bin") == data
        with open(os.path.join(folder, "blob.bin"), "rb") as f:
            assert f.read() == data
    finally:
        s.close()
    # The log names the key's type and fingerprint, never the signed data.
    log = relay.log_since(offset)
    assert "publickey-sign login with %s key %s" % (key.type, key.fingerprint) in log, log
    assert re.search(r"sign_request 1 sent: %s with %s key %s" % (
        re.escape(frame["algorithm"]), re.escape(key.type), re.escape(key.fingerprint)), log)
    assert "publickey-sign login succeeded with %s key %s" % (key.type, key.fingerprint) in log
    assert frame["data"] not in log and frame["data"][:40] not in log
    assert base64.b64encode(frame["signature"]).decode()[:40] not in log
    assert key.fingerprint == sshd_mod.run([sshd_mod.SSH_KEYGEN, "-lf", "-"],
                                           input=key.line.encode()).split()[1]


@pytest.mark.parametrize("bits", [2048, 4096])
@pytest.mark.parametrize("variant", ["rsa-sha2-256", "rsa-sha2-512"])
def test_sign_rsa_variants(sign_relay, sign_servers, keys, bits, variant):
    """Each rsa-sha2 variant, named by the client (a WebCrypto RSA key is
    bound to one hash) and checked by a server that accepts only it."""
    relay = sign_relay()
    s, frame = sign_login(relay, sign_servers[variant], keys["rsa%d" % bits], variant)
    try:
        assert frame["algorithm"] == variant, frame
        assert s.ok("stat", path="/home")["isDir"] is True
    finally:
        s.close()


def test_sign_rsa_default_is_sha512(sign_relay, sign_servers, keys):
    """Without "algorithm", RSA signs with rsa-sha2-512, the relay's first
    choice among what the server lists in server-sig-algs. A server that
    accepts only rsa-sha2-256: OpenSSH 9.2 (Debian 12) still lists both, so
    it refuses the key (the client names the algorithm for such a server);
    OpenSSH 10 (Debian 13) lists only rsa-sha2-256, which the relay then
    asks for."""
    relay = sign_relay()
    s, frame = sign_login(relay, sign_servers["rsa-sha2-512"], keys["rsa2048"])
    assert frame["algorithm"] == "rsa-sha2-512"
    s.close()
    s = accepted(relay, sign_servers["rsa-sha2-256"])
    try:
        send_auth(s, keys["rsa2048"].line)
        kind, frame = s.recv_frame(timeout=15)
        assert kind == "text", (kind, frame)
        if frame.get("type") == "sign_request":
            assert frame["algorithm"] == "rsa-sha2-256", frame
            data = base64.b64decode(frame["data"])
            answer(s, frame, keys["rsa2048"].sign(frame["algorithm"], data))
            assert s.response(1) == {"id": 1, "result": {}}
        else:
            assert frame == {"id": 1, "error": "authentication failed: the server does not "
                             "accept this public key", "code": "auth_failed"}, frame
            assert s.expect_closed(timeout=10) == []
    finally:
        s.close()


def test_sign_rsa_signature_with_the_other_hash_is_refused(sign_relay, sign_servers, keys):
    """The server checks the hash the algorithm names: a SHA-256 signature
    sent for rsa-sha2-512 (a key bound to the wrong hash in WebCrypto) fails."""
    relay = sign_relay()
    s = accepted(relay, sign_servers["rsa-sha2-512"])
    try:
        send_auth(s, keys["rsa2048"].line)
        frame, data = expect_sign_request(s)
        assert frame["algorithm"] == "rsa-sha2-512"
        answer(s, frame, keys["rsa2048"].sign("rsa-sha2-256", data))
        refused(s, "authentication failed: the server refused the signature", "auth_failed")
    finally:
        s.close()


def test_sign_unknown_and_late_answers_are_ignored(sign_relay, sign_servers, keys):
    relay = sign_relay()
    key = keys["ed25519"]
    offset = relay.log_size()
    s = accepted(relay, sign_servers["any"])
    try:
        send_auth(s, key.line)
        frame, data = expect_sign_request(s)
        good = key.sign(frame["algorithm"], data)
        # An answer to a request never made, and a non-request frame, change nothing.
        s.send_json({"type": "sign", "request": frame["request"] + 1,
                     "signature": base64.b64encode(b"\0" * 64).decode()})
        s.send_json({"type": "sign", "request": 0, "signature": "AAAA"})
        s.send_json({"type": "something else"})
        answer(s, frame, good)
        assert s.response(1) == {"id": 1, "result": {}}
        # A second answer to the finished request is ignored too.
        answer(s, frame, b"\1" * 64)
        assert s.ok("stat", path="/home")["isDir"] is True
    finally:
        s.close()
    log = relay.log_since(offset)
    assert "answer to sign_request %d ignored: not awaited" % (frame["request"] + 1) in log
    assert "answer to sign_request %d ignored: not awaited" % frame["request"] in log


def test_password_and_private_key_logins_unchanged(sign_relay, sshd, client_keys):
    """The other auth types beside the extension (test_auth.py has them all)."""
    relay = sign_relay()
    for auth in (lambda s: s.auth_password(TEST_USER, TEST_PASSWORD),
                 lambda s: s.auth_key(TEST_USER, client_keys.pem("ed25519"))):
        s = open_session(relay, LOCAL, sshd.port)
        try:
            s.expect_host_key()
            s.accept_host_key()
            assert auth(s) == {"id": 1, "result": {}}
        finally:
            s.close()


# --------------------------------------------------------------------------
# Refusals: every error string.


def short_rsa_line(bits):
    """An authorized_keys line of an RSA public key of `bits` bits, built by
    hand: python3-cryptography 43 (Debian 13) refuses to make RSA keys under
    1024 bits. The relay reads only the numbers, so n need not factor."""
    n = (1 << (bits - 1)) | secrets.randbits(bits - 1) | 1

    def mpint(v):
        b = v.to_bytes((v.bit_length() + 8) // 8, "big")  # a 0 byte before a set top bit
        return struct.pack(">I", len(b)) + b

    blob = struct.pack(">I", 7) + b"ssh-rsa" + mpint(65537) + mpint(n)
    return "ssh-rsa " + base64.b64encode(blob).decode() + " short"


BAD_LINES = [
    ("ssh-dss AAAAB3NzaC1kc3MAAACBAIDuNlKF24Dg me",
     'unsupported public key type "ssh-dss": use ssh-ed25519, ecdsa-sha2-nistp256, '
     "ecdsa-sha2-nistp384 or ssh-rsa"),
    ("ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjE= me",
     'unsupported public key type "ecdsa-sha2-nistp521": use ssh-ed25519, '
     "ecdsa-sha2-nistp256, ecdsa-sha2-nistp384 or ssh-rsa"),
    ("ssh-ed25519 AAAA!!!! me", "unsupported public key: the base64 key data is damaged"),
    ("ssh-ed25519", 'unsupported public key: expected an authorized_keys line '
                    '"type base64-key [comment]"'),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== me",
     "unsupported public key: the ssh-ed25519 key data is damaged"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbg==\n-----END OPENSSH PRIVATE KEY-----\n",
     "unsupported public key: this is a private key; send the public key line (the .pub "
     "file), the private key stays with you"),
    ("ssh-ed25519 AAAA a\nssh-ed25519 AAAA b",
     "unsupported public key: expected one authorized_keys line"),
    # An Ed25519 key under an ECDSA type.
    ("ecdsa-sha2-nistp256 " + ClientKey("x", ed25519.Ed25519PrivateKey.generate()).line.split()[1],
     "unsupported public key: the key data is not a ecdsa-sha2-nistp256 key"),
    # RSA under OpenSSH's RequiredRSASize.
    (short_rsa_line(768),
     "unsupported public key: not a usable RSA key (at least 1024 bits)"),
]


@pytest.mark.parametrize("name, algorithm, error", [
    ("rsa2048", "ssh-rsa", 'unsupported signature algorithm "ssh-rsa" for a ssh-rsa key: '
                           "use rsa-sha2-256 or rsa-sha2-512"),
    ("ed25519", "rsa-sha2-256", 'unsupported signature algorithm "rsa-sha2-256" for a '
                                "ssh-ed25519 key: use ssh-ed25519"),
])
def test_sign_bad_algorithm(sign_relay, sign_servers, keys, name, algorithm, error):
    relay = sign_relay()
    s = accepted(relay, sign_servers["any"])
    try:
        send_auth(s, keys[name].line, algorithm=algorithm)
        refused(s, error, "bad_key")
    finally:
        s.close()


def test_sign_bad_public_keys_named_and_not_counted(sign_relay, sign_servers, keys):
    """A key the relay cannot use answers what is wrong with it (code
    bad_key) before any login is tried, so it never counts as a failed
    login: more refusals than the failure budget, then a login works."""
    relay = sign_relay()
    for line, error in BAD_LINES:
        s = accepted(relay, sign_servers["any"])
        try:
            send_auth(s, line)
            refused(s, error, "bad_key")
        finally:
            s.close()
    assert len(BAD_LINES) > 5
    s, _ = sign_login(relay, sign_servers["any"], keys["p256"])
    s.close()


@pytest.mark.parametrize("params, error", [
    ({"type": "publickey-sign", "username": TEST_USER},
     "invalid auth request: missing publicKey"),
    ({"type": "publickey-sign", "username": TEST_USER, "publicKey": ""},
     "invalid auth request: missing publicKey"),
    ({"type": "publickey-sign", "publicKey": "ssh-ed25519 AAAA"},
     "invalid auth request: missing username"),
    ({"type": "publickey-sign", "username": TEST_USER, "publicKey": "ssh-rsa " + "A" * 9000},
     "invalid auth request: publicKey too long"),
    ({"type": "publickey-sign", "username": TEST_USER, "publicKey": "ssh-rsa AAAA",
      "algorithm": "r" * 65}, "invalid auth request: algorithm too long"),
])
def test_sign_bad_auth_requests(sign_relay, sign_servers, params, error):
    relay = sign_relay()
    s = accepted(relay, sign_servers["any"])
    try:
        s.send_json({"id": 1, "method": "auth", "params": params})
        refused(s, error, "bad_request")
    finally:
        s.close()


def test_sign_key_not_authorized(sign_relay, sign_servers):
    """The server refuses the key before any signature is asked for."""
    relay = sign_relay()
    stranger = ClientKey("stranger", ed25519.Ed25519PrivateKey.generate())
    s = accepted(relay, sign_servers["any"])
    try:
        send_auth(s, stranger.line)
        refused(s, "authentication failed: the server does not accept this public key",
                "auth_failed")
    finally:
        s.close()


def wrong_length(key, alg, data):
    return key.sign(alg, data)[:-1]


def der_ecdsa(key, alg, data):
    """What a naive port would send: OpenSSL's DER, not WebCrypto's r||s."""
    return key.private.sign(data, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("name, make, error, code", [
    ("ed25519", lambda k, a, d: secrets.token_bytes(64),
     "authentication failed: the server refused the signature", "auth_failed"),
    ("p256", lambda k, a, d: secrets.token_bytes(64),
     "authentication failed: the server refused the signature", "auth_failed"),
    ("rsa2048", lambda k, a, d: secrets.token_bytes(256),
     "authentication failed: the server refused the signature", "auth_failed"),
    ("ed25519", wrong_length, "invalid signature: ssh-ed25519 needs 64 bytes, got 63",
     "bad_signature"),
    ("p384", wrong_length, "invalid signature: ecdsa-sha2-nistp384 needs 96 bytes, got 95",
     "bad_signature"),
    ("rsa4096", wrong_length, "invalid signature: rsa-sha2-512 needs 512 bytes, got 511",
     "bad_signature"),
    ("p256", lambda k, a, d: b"\0" * 64, "invalid signature: ECDSA r or s is zero",
     "bad_signature"),
])
def test_sign_bad_signatures(sign_relay, sign_servers, keys, name, make, error, code):
    relay = sign_relay()
    key = keys[name]
    s = accepted(relay, sign_servers["any"])
    try:
        send_auth(s, key.line)
        frame, data = expect_sign_request(s)
        answer(s, frame, make(key, frame["algorithm"], data))
        refused(s, error, code)
    finally:
        s.close()


def test_sign_der_ecdsa_signature_refused(sign_relay, sign_servers, keys):
    relay = sign_relay()
    key = keys["p256"]
    s = accepted(relay, sign_servers["any"])
    try:
        send_auth(s, key.line)
        frame, data = expect_sign_request(s)
        der = der_ecdsa(key, frame["algorithm"], data)
        answer(s, frame, der)
        refused(s, "invalid signature: ecdsa-sha2-nistp256 needs 64 bytes, got %d" % len(der),
                "bad_signature")
    finally:
        s.close()


@pytest.mark.parametrize("reply, error", [
    ({"signature": "not base64!"}, "invalid signature: not base64, or longer than 2048 bytes"),
    ({"signature": base64.b64encode(b"x" * 2049).decode()},
     "invalid signature: not base64, or longer than 2048 bytes"),
    ({}, "invalid signature: the sign answer has no signature"),
    ({"signature": 12}, "invalid signature: the sign answer has no signature"),
    ({"signature": ""}, "invalid signature: the sign answer has no signature"),
])
def test_sign_malformed_answers(sign_relay, sign_servers, keys, reply, error):
    relay = sign_relay()
    s = accepted(relay, sign_servers["any"])
    try:
        send_auth(s, keys["ed25519"].line)
        frame, _ = expect_sign_request(s)
        s.send_json(dict({"type": "sign", "request": frame["request"]}, **reply))
        refused(s, error, "bad_signature")
    finally:
        s.close()


def test_sign_timeout(sign_relay, sign_servers, keys):
    """A page that never answers: a clear error after SIGN_TIMEOUT_SECS, and
    the relay serves the next login as usual."""
    relay = sign_relay(SIGN_TIMEOUT_SECS=2)
    key = keys["ed25519"]
    offset = relay.log_size()
    s = accepted(relay, sign_servers["any"])
    try:
        send_auth(s, key.line)
        frame, _ = expect_sign_request(s)
        started = time.monotonic()
        refused(s, "signature timeout: the browser did not answer the sign_request within 2 s",
                "sign_timeout")
        elapsed = time.monotonic() - started
        assert 1.5 <= elapsed <= 6, "answered after %.1f s, SIGN_TIMEOUT_SECS=2" % elapsed
    finally:
        s.close()
    assert "login refused: signature timeout" in relay.log_since(offset)
    # Healthy: the next session logs in and works.
    s, _ = sign_login(relay, sign_servers["any"], key)
    try:
        assert s.ok("stat", path="/home")["isDir"] is True
    finally:
        s.close()
    assert relay.http("GET", "/health")[0] == 200


def test_sign_request_ends_with_its_session(sign_relay, sign_servers, keys):
    """A browser that leaves while the relay waits for its signature ends
    the wait at once, not after SIGN_TIMEOUT_SECS."""
    relay = sign_relay(SIGN_TIMEOUT_SECS=120)
    pid = relay.proc.pid
    threads = procinfo.thread_count(pid)
    offset = relay.log_size()
    s = accepted(relay, sign_servers["any"])
    send_auth(s, keys["ed25519"].line)
    expect_sign_request(s)
    assert procinfo.thread_count(pid) > threads
    started = time.monotonic()
    s.close()
    assert wait_until(lambda: procinfo.thread_count(pid) <= threads, 10), \
        "the worker still waits for the signature"
    assert time.monotonic() - started < 10
    # The worker's thread ends before the service thread logs the session's
    # end: wait for that line.
    ended = re.compile(r"session \S+ end: .*reason=\"browser closed\"")
    assert wait_until(lambda: ended.search(relay.log_since(offset)), 10), \
        relay.log_since(offset)[-3000:]
    assert "the browser left before it answered the sign_request" in relay.log_since(offset)


def test_sign_failures_count_against_the_budget(sign_relay, sign_servers, keys):
    """PROTOCOL §4: each failed publickey-sign login is one attempt; after
    five the address is blocked (429 at the upgrade)."""
    relay = sign_relay(SIGN_TIMEOUT_SECS=1)
    key = keys["ed25519"]
    server = sign_servers["any"]
    for i in range(5):
        s = accepted(relay, server)
        try:
            send_auth(s, key.line)
            frame, data = expect_sign_request(s)
            if i == 0:
                pass  # never answered: the timeout counts too
            else:
                answer(s, frame, secrets.token_bytes(64))
            resp = s.response(1, timeout=10)
            assert "error" in resp, resp
        finally:
            s.close()
    assert upgrade_status(relay, LOCAL, server.port) == 429


# --------------------------------------------------------------------------
# Nothing of the private key ever reaches the relay.

CANARY = "canary-" + secrets.token_hex(12) + ".example"


def test_no_private_key_material_in_relay_memory(sign_relay, sign_servers, keys):
    """The relay's memory (heap, stacks, anonymous maps) holds the public
    key while the session is open -- proof that the scan sees what the
    relay holds -- and no byte string of any private key, during the
    session and after it ended."""
    relay = sign_relay(SFTP_HOST_ALLOWLIST="127.0.0.1," + CANARY)
    pid = relay.proc.pid
    for name in ("ed25519", "p256", "rsa2048"):
        key = keys[name]
        needles = {"%s %s" % (name, k): v for k, v in key.secrets().items()}
        threads = procinfo.thread_count(pid)
        s, _ = sign_login(relay, sign_servers["any"], key)
        try:
            assert s.ok("stat", path="/home")["isDir"] is True
            found = procinfo.find_in_memory(pid, list(needles.values()) +
                                            [CANARY.encode(), key.blob])
            assert any(n in ("[heap]", "[anon]") for _, n in found.pop(CANARY.encode(), [])), \
                "the scanner did not find the canary in the relay's heap"
            assert found.pop(key.blob, []), "the scanner did not find the public key"
            assert not found, "private key bytes in the relay: %r" % {
                k: found[v] for k, v in needles.items() if v in found}
        finally:
            s.close()
        assert wait_until(lambda: procinfo.thread_count(pid) <= threads, 10)
        found = procinfo.find_in_memory(pid, list(needles.values()))
        assert not found, "private key bytes in the relay after the session: %r" % found


def test_sign_logins_counted_under_their_own_method(sign_relay, sign_servers, keys):
    """/metrics counts publickey-sign logins apart from the private-key ones
    (ssh_auth_total's method label), ok and refused alike."""
    from test_metrics import P, delta, scrape
    relay = sign_relay()
    before = scrape(relay)
    s, _ = sign_login(relay, sign_servers["any"], keys["ed25519"])
    s.close()
    after = scrape(relay)
    assert delta(after, before, P + "ssh_auth_total", method="publickey-sign",
                 result="ok") == 1
    assert delta(after, before, P + "ssh_auth_total", method="publickey",
                 result="ok") == 0
