"""Deployment, TLS (issue "Deployment" item 1): the relay terminating TLS
itself with TLS_CERT/TLS_KEY — full chain, TLS 1.2+ with AEAD ciphers only,
a complete SFTP session over wss://, certificate reload on SIGHUP without
dropping live sessions — and the refusal to serve plain HTTP on a
non-loopback address."""

import os
import shutil
import signal
import socket
import ssl
import subprocess
import warnings

import pytest

from helpers import pattern, read_file, wait_until
from relay import relay_binary
from tlsutil import TestPKI, peer_sha256, tls_socket, use_tls

# The only TLS 1.2 suites server.c allows: ECDHE with AES-GCM or ChaCha20.
TLS12_SUITES = {
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
}


@pytest.fixture(scope="module")
def pki(run_dir):
    return TestPKI(os.path.join(run_dir, "pki-tls"))


@pytest.fixture
def certs(pki, request):
    """A fresh server certificate; returns (chain, key, name)."""
    name = "srv-" + request.node.name.replace("[", "-").replace("]", "")[:40]
    chain, key = pki.server_cert(name)
    return chain, key, name


@pytest.fixture
def tls_relay(relay_factory, pki, certs):
    """A started relay with TLS on; returns (relay, endpoint)."""
    chain, key, _ = certs
    relay = relay_factory(start=False, TLS_CERT=chain, TLS_KEY=key)
    endpoint = use_tls(relay, pki.client_context())
    relay.start()
    return relay, endpoint


def old_tls_context(pki, maximum):
    """A client that offers only TLS <= `maximum`, with the security level
    lowered so that the client itself is willing: a refusal then comes
    from the server."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = pki.client_context(minimum=ssl.TLSVersion.TLSv1, maximum=maximum)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def check_config(env):
    """Run `wattcloud-relay --check-config` with exactly `env`."""
    full = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    full.update(env)
    return subprocess.run([relay_binary(), "--check-config"], env=full,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)


# -- a session over wss:// ---------------------------------------------------

def test_sftp_session_over_wss_verifies_full_chain(tls_relay, sshd, workdir):
    relay, endpoint = tls_relay
    # The client trusts only the root: verification needs the intermediate,
    # so this handshake proves the relay sends the whole chain.
    with tls_socket(relay.port, endpoint.ctx) as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")
    s = endpoint.login(sshd)
    try:
        assert s.ok("stat", path="/")["isDir"] is True
        data = pattern(3 * 1024 * 1024 + 17, seed=1)
        path = os.path.join(workdir, "over-tls.bin")
        s.upload(path, data, chunk=1024 * 1024)
        assert read_file(path) == data
        assert s.download(path) == data
        names = [e["name"] for e in s.ok("list", path=workdir)["entries"]]
        assert names == ["over-tls.bin"]
    finally:
        s.close()


def test_leaf_and_intermediate_are_sent(tls_relay, pki):
    relay, _ = tls_relay
    out = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % relay.port,
                          "-servername", "localhost", "-CAfile", pki.root, "-showcerts"],
                         input=b"", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=10).stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out, out
    assert out.count("-----BEGIN CERTIFICATE-----") == 2, out


# -- protocol versions and ciphers -------------------------------------------

@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1],
                         ids=["TLSv1.0", "TLSv1.1"])
def test_old_tls_versions_refused(tls_relay, pki, version):
    relay, _ = tls_relay
    with pytest.raises(ssl.SSLError) as err:
        tls_socket(relay.port, old_tls_context(pki, version)).close()
    # The server's "protocol version" alert, not a client-side refusal to
    # offer the version (which would prove nothing).
    assert err.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", err.value


def test_tls12_works_with_aead_ecdhe(tls_relay, pki):
    relay, _ = tls_relay
    ctx = pki.client_context(maximum=ssl.TLSVersion.TLSv1_2)
    with tls_socket(relay.port, ctx) as s:
        assert s.version() == "TLSv1.2"
        assert s.cipher()[0] in TLS12_SUITES, s.cipher()
    status, _, body = relay.http("GET", "/health")
    assert status == 200 and body == b"ok\n"


def test_tls12_cbc_and_rsa_kex_suites_refused(tls_relay, pki):
    relay, _ = tls_relay
    ctx = pki.client_context(maximum=ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers("AES128-SHA:AES256-SHA:AES128-GCM-SHA256:ECDHE-ECDSA-AES128-SHA:"
                    "ECDHE-ECDSA-AES256-SHA384")
    with pytest.raises(ssl.SSLError):
        tls_socket(relay.port, ctx).close()


def test_tls13_works(tls_relay, pki):
    relay, _ = tls_relay
    ctx = pki.client_context(minimum=ssl.TLSVersion.TLSv1_3)
    with tls_socket(relay.port, ctx) as s:
        assert s.version() == "TLSv1.3"


def test_plain_http_on_the_tls_port_gets_no_answer(tls_relay):
    relay, _ = tls_relay
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            reply = s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            reply = b""
    assert not reply.startswith(b"HTTP/"), reply


# -- SIGHUP ------------------------------------------------------------------

def replace_files(pairs):
    """Install new files the way certbot and friends do: write beside, rename."""
    for src, dst in pairs:
        tmp = dst + ".new"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def test_sighup_reloads_certificate_keeping_live_session(relay_factory, pki, sshd, workdir,
                                                         run_dir):
    live = os.path.join(run_dir, "live-%d" % os.getpid())
    os.makedirs(live, exist_ok=True)
    old_chain, old_key = pki.server_cert("reload-old")
    new_chain, new_key = pki.server_cert("reload-new")
    chain, key = os.path.join(live, "fullchain.pem"), os.path.join(live, "privkey.pem")
    replace_files([(old_chain, chain), (old_key, key)])

    relay = relay_factory(start=False, TLS_CERT=chain, TLS_KEY=key)
    endpoint = use_tls(relay, pki.client_context())
    relay.start()
    ctx = pki.client_context()
    assert peer_sha256(relay.port, ctx) == pki.leaf_der_sha256("reload-old")

    s = endpoint.login(sshd)
    try:
        path = os.path.join(workdir, "during-reload.bin")
        handle = s.write_open(path)
        first = pattern(512 * 1024, seed=2)
        assert s.write_chunk(handle, first) == {"id": s.next_id - 1, "result": {}}

        replace_files([(new_chain, chain), (new_key, key)])
        mark = relay.log_size()
        relay.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "TLS certificate reloaded" in relay.log_since(mark), 5), \
            relay.log_since(mark)

        # New handshakes get the new certificate...
        assert peer_sha256(relay.port, ctx) == pki.leaf_der_sha256("reload-new")
        # ... while the session negotiated before carries on, mid-upload.
        second = pattern(512 * 1024, seed=3)
        assert s.write_chunk(handle, second)["result"] == {}
        assert s.ok("write_close", handle=handle) == {}
        assert read_file(path) == first + second
        assert s.ok("stat", path=path)["size"] == len(first + second)
    finally:
        s.close()
    # And a whole new session works over the new certificate.
    s = endpoint.login(sshd)
    assert s.ok("stat", path="/")["isDir"] is True
    s.close()


def test_sighup_with_mismatched_key_keeps_old_certificate(relay_factory, pki, run_dir):
    live = os.path.join(run_dir, "live-mismatch-%d" % os.getpid())
    os.makedirs(live, exist_ok=True)
    old_chain, old_key = pki.server_cert("mismatch-old")
    new_chain, _ = pki.server_cert("mismatch-new")
    chain, key = os.path.join(live, "fullchain.pem"), os.path.join(live, "privkey.pem")
    replace_files([(old_chain, chain), (old_key, key)])
    relay = relay_factory(start=False, TLS_CERT=chain, TLS_KEY=key)
    use_tls(relay, pki.client_context())
    relay.start()
    ctx = pki.client_context()

    # Renewed certificate copied, its key not yet: a half-done renewal.
    replace_files([(new_chain, chain)])
    mark = relay.log_size()
    relay.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "not reloaded" in relay.log_since(mark), 5), \
        relay.log_since(mark)
    assert peer_sha256(relay.port, ctx) == pki.leaf_der_sha256("mismatch-old")
    assert relay.http("GET", "/health")[0] == 200


# -- start-up checks ---------------------------------------------------------

def test_unusable_tls_files_stop_the_start(relay_factory, pki, run_dir):
    chain, key = pki.server_cert("start-a")
    _, other_key = pki.server_cert("start-b")
    garbage = os.path.join(run_dir, "garbage.pem")
    with open(garbage, "w") as f:
        f.write("not a certificate\n")
    for cert_file, key_file in [(os.path.join(run_dir, "missing.pem"), key),
                                (garbage, key), (chain, other_key)]:
        relay = relay_factory(start=False, TLS_CERT=cert_file, TLS_KEY=key_file)
        relay.spawn()
        assert relay.proc.wait(timeout=10) == 2, relay.log_text()
        assert "TLS_CERT" in relay.log_text()
        relay.proc = None
        relay.returncode = 0


@pytest.mark.parametrize("bind", ["0.0.0.0:8443", "[::]:8443", "192.0.2.1:8443"])
def test_plaintext_on_non_loopback_needs_allow_plaintext(bind, pki):
    res = check_config({"BIND_ADDR": bind})
    assert res.returncode == 2, res.stdout
    assert b"BIND_ADDR" in res.stdout and b"ALLOW_PLAINTEXT" in res.stdout, res.stdout
    assert check_config({"BIND_ADDR": bind, "ALLOW_PLAINTEXT": "1"}).returncode == 0
    chain, key = pki.server_cert("nonloop")
    assert check_config({"BIND_ADDR": bind, "TLS_CERT": chain,
                         "TLS_KEY": key}).returncode == 0


@pytest.mark.parametrize("bind", ["127.0.0.1:8443", "127.0.0.2:8443", "[::1]:8443"])
def test_plaintext_on_loopback_is_fine(bind):
    assert check_config({"BIND_ADDR": bind}).returncode == 0



def test_address_not_on_this_host_stops_the_start(relay_factory):
    """lws 4.1 would otherwise run without a listener, retry in the
    background and still log 'listening' (server.c sets
    LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND). Only a bind attempt: no
    packet leaves the host."""
    relay = relay_factory(start=False, ALLOW_PLAINTEXT=1, BIND_ADDR="198.51.100.7:8443")
    relay.spawn()
    rc = relay.proc.wait(timeout=10)
    assert rc not in (0, None), relay.log_text()
    assert "cannot listen on 198.51.100.7" in relay.log_text()
    relay.proc = None
    relay.returncode = 0
