"""TLS for the deployment tests: test certificates made with openssl, and
HTTPS / wss:// clients that speak to a relay (or a proxy in front of it)
exactly like wsclient.py does over plain HTTP.

A relay started with TLS_CERT/TLS_KEY answers nothing over plain HTTP, so
`use_tls(relay, ctx)` swaps the Relay object's http() for an HTTPS one:
Relay.start() (its /health poll) and wsclient.get_cookie() then work as
they are.
"""

import hashlib
import http.client
import os
import socket
import ssl
import subprocess
import urllib.parse

import websocket

from helpers import LOCAL
from relay import exchange
from sshd import TEST_PASSWORD, TEST_USER
from wsclient import COOKIE_NAME, Session, get_cookie

OPENSSL = "/usr/bin/openssl"


def _openssl(*args, cwd=None):
    res = subprocess.run([OPENSSL] + list(args), cwd=cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    if res.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args),
                                                     res.stdout.decode(errors="replace")))


class TestPKI:
    """A root CA, an intermediate CA and server certificates signed by the
    intermediate for localhost / 127.0.0.1. Clients trust only the root, so
    a handshake verifies only when the server sends the full chain."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.root = self._path("root.pem")
        self._ca("root", None, "Wattcloud Test Root")
        self._ca("inter", "root", "Wattcloud Test Intermediate")
        self.inter = self._path("inter.pem")
        self.serial = 0

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _ca(self, name, parent, cn):
        key, csr, pem = (self._path(name + ext) for ext in (".key", ".csr", ".pem"))
        ext = self._path(name + ".ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
                    "subjectKeyIdentifier=hash\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=" + cn)
        if parent is None:
            _openssl("x509", "-req", "-in", csr, "-signkey", key, "-out", pem, "-days", "2",
                     "-extfile", ext)
        else:
            _openssl("x509", "-req", "-in", csr, "-CA", self._path(parent + ".pem"),
                     "-CAkey", self._path(parent + ".key"), "-set_serial", "1000",
                     "-out", pem, "-days", "2", "-extfile", ext)

    def server_cert(self, name, cn="localhost"):
        """Write NAME.key and NAME.chain.pem (leaf + intermediate). Returns
        (chain path, key path)."""
        self.serial += 1
        key, csr, leaf = (self._path(name + ext) for ext in (".key", ".csr", ".leaf.pem"))
        chain, ext = self._path(name + ".chain.pem"), self._path(name + ".ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=" + cn)
        _openssl("x509", "-req", "-in", csr, "-CA", self.inter, "-CAkey",
                 self._path("inter.key"), "-set_serial", str(2000 + self.serial),
                 "-out", leaf, "-days", "2", "-extfile", ext)
        with open(chain, "w") as out:
            for part in (leaf, self.inter):
                with open(part) as f:
                    out.write(f.read())
        return chain, key

    def leaf_der_sha256(self, name):
        """SHA-256 of the DER leaf certificate NAME, as the tests compare."""
        with open(self._path(name + ".leaf.pem")) as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
        return hashlib.sha256(der).hexdigest()

    def client_context(self, minimum=None, maximum=None):
        """A verifying client context that trusts only the test root."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.root)
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
        return ctx


def tls_socket(port, ctx, source=None, server_hostname="localhost", timeout=10):
    """A TCP connection to 127.0.0.1:port (from address `source` when given),
    TLS done with `server_hostname` as SNI and name to verify."""
    raw = socket.create_connection((LOCAL, port), timeout=timeout,
                                   source_address=(source, 0) if source else None)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def peer_sha256(port, ctx, **kw):
    """SHA-256 of the leaf certificate a new handshake receives."""
    with tls_socket(port, ctx, **kw) as s:
        return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


class _TlsConnection(http.client.HTTPConnection):
    """HTTPS to 127.0.0.1 whatever the name in the Host header and SNI."""

    def __init__(self, endpoint, timeout):
        super().__init__(endpoint.server_hostname, endpoint.port, timeout=timeout)
        self.endpoint = endpoint

    def connect(self):
        e = self.endpoint
        self.sock = tls_socket(e.port, e.ctx, source=e.source,
                               server_hostname=e.server_hostname, timeout=self.timeout)


class HttpsEndpoint:
    """What wsclient.get_cookie() needs (`http`, `port`) for an HTTPS server:
    the relay itself with TLS on, or a proxy in front of it. Connections go
    to 127.0.0.1 with `server_hostname` ("localhost") as SNI and Host.
    `source` binds the client side to another loopback address (127.0.0.2)
    so that the address a proxy forwards can be told apart from its own."""

    def __init__(self, port, ctx, source=None, server_hostname="localhost"):
        self._port = port
        self.ctx = ctx
        self.source = source
        self.server_hostname = server_hostname

    @property
    def port(self):
        return self._port

    def http(self, method, path, body=None, headers=None, timeout=5):
        return exchange(_TlsConnection(self, timeout), method, path, body, headers)

    def connect(self, host, port, extra_headers=(), timeout=15):
        """wss:// upgrade into an SFTP session to host:port with a fresh cookie."""
        cookie = get_cookie(self, host, port)
        sock = tls_socket(self.port, self.ctx, source=self.source,
                          server_hostname=self.server_hostname, timeout=timeout)
        url = "wss://%s:%d/relay/ws?mode=sftp&host=%s&port=%d" % (
            self.server_hostname, self.port, urllib.parse.quote(host, safe=":[]"), port)
        headers = ["Cookie: %s=%s" % (COOKIE_NAME, cookie)] + list(extra_headers)
        try:
            ws = websocket.create_connection(url, socket=sock, header=headers,
                                             timeout=timeout, suppress_origin=True)
        except BaseException:
            sock.close()
            raise
        return Session(ws)

    def login(self, sshd, **kw):
        """An authenticated session, like helpers.login() over plain HTTP."""
        s = self.connect(LOCAL, sshd.port, **kw)
        try:
            s.expect_host_key()
            s.accept_host_key()
            resp = s.auth_password(TEST_USER, TEST_PASSWORD)
            assert resp == {"id": 1, "result": {}}, "auth failed: %r" % resp
        except BaseException:
            s.close()
            raise
        return s


class _RelayEndpoint(HttpsEndpoint):
    def __init__(self, relay, ctx):
        super().__init__(None, ctx)
        self.relay = relay

    @property
    def port(self):
        return self.relay.port


def use_tls(relay, ctx):
    """Make `relay` (a conftest Relay, not yet started) speak HTTPS in its
    http(), so that start() and wsclient.get_cookie() work over TLS.
    Returns the HttpsEndpoint for wss:// sessions."""
    endpoint = _RelayEndpoint(relay, ctx)
    relay.http = endpoint.http
    return endpoint
