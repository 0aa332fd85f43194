"""PROTOCOL §1.2 refusals as plain HTTP/1.1 that independent client
libraries read, RFC 6455 checks before the cookie is spent, request framing
(CONNECT, chunked or length-less bodies, duplicate lengths, several Cookie
lines, oversized headers), X-Forwarded-For read whole, and control bytes
escaped in the log."""

import asyncio
import base64
import socket
import time

import pytest
import websockets
import websockets.exceptions
import websockets.version

from helpers import LOCAL, login
from wsclient import COOKIE_NAME, get_cookie

GOOD_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def raw_request(relay, text, timeout=5, src=None):
    """Send `text` (str or bytes) and read until the relay closes. Returns
    (status line, headers dict lower-cased, body bytes, seconds taken)."""
    t0 = time.monotonic()
    s = socket.socket()
    s.settimeout(timeout)
    if src:
        s.bind((src, 0))
    s.connect(("127.0.0.1", relay.port))
    s.sendall(text.encode("latin-1") if isinstance(text, str) else text)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return lines[0], headers, body, time.monotonic() - t0


def upgrade_text(relay, host, port, extra=(), cookie=None, query=None, version="13",
                 key=GOOD_KEY, connection="Upgrade"):
    lines = ["GET /relay/ws?%s HTTP/1.1" % (query or "mode=sftp&host=%s&port=%d" % (host, port)),
             "Host: 127.0.0.1:%d" % relay.port, "Upgrade: websocket",
             "Connection: " + connection]
    if version is not None:
        lines.append("Sec-WebSocket-Version: %s" % version)
    if key is not None:
        lines.append("Sec-WebSocket-Key: %s" % key)
    if cookie:
        lines.append("Cookie: %s=%s" % (COOKIE_NAME, cookie))
    lines += list(extra)
    return "\r\n".join(lines) + "\r\n\r\n"


def assert_refusal(status_line, headers, body, status):
    assert status_line.startswith("HTTP/1.1 %d " % status), status_line
    assert headers.get("content-type", "").startswith("text/plain"), headers
    assert headers.get("connection", "").lower() == "close", headers
    assert headers.get("cache-control") == "no-store", headers
    assert headers.get("x-content-type-options") == "nosniff", headers
    assert int(headers["content-length"]) == len(body), (headers, body)
    assert b"<html" not in body.lower() and body.strip(), body


# websockets 14 (Debian 13) renamed the header argument and reports a
# refused upgrade as InvalidStatus; 10.4 (Debian 12) has InvalidStatusCode,
# which 14 still has but deprecated (touching it warns, and imports the
# deprecated websockets.legacy, which warns too).
_NEW_WEBSOCKETS = int(websockets.version.version.split(".")[0]) >= 14
_REFUSED = (websockets.exceptions.InvalidStatus if _NEW_WEBSOCKETS
            else websockets.exceptions.InvalidStatusCode)


def ws_status(url, headers=(), origin=None):
    """Status of an upgrade through the `websockets` library (not ours)."""
    key = "additional_headers" if _NEW_WEBSOCKETS else "extra_headers"

    async def attempt():
        try:
            ws = await websockets.connect(url, origin=origin, open_timeout=5,
                                          **{key: list(headers)})
        except _REFUSED as e:
            response = getattr(e, "response", None)
            return response.status_code if response is not None else e.status_code
        await ws.close()
        return 101
    return asyncio.run(attempt())


def ws_url(relay, port, mode="sftp"):
    return "ws://127.0.0.1:%d/relay/ws?mode=%s&host=%s&port=%d" % (relay.port, mode, LOCAL, port)


def test_refusal_statuses_through_websockets_library(relay_factory, sshd):
    relay = relay_factory(SFTP_MAX_CONCURRENT_PER_IP=1, MAX_SESSIONS=2)
    cookie = lambda: [("Cookie", "%s=%s" % (COOKIE_NAME, get_cookie(relay, LOCAL, sshd.port)))]
    assert ws_status(ws_url(relay, sshd.port), origin="https://evil.example") == 403
    assert ws_status(ws_url(relay, sshd.port)) == 401
    assert ws_status(ws_url(relay, sshd.port, mode="shell"), cookie()) == 400
    first = login(relay, sshd)
    try:
        # The per-IP limit (1) is reached: 429.
        assert ws_status(ws_url(relay, sshd.port), cookie()) == 429
    finally:
        first.close()


def test_relay_full_is_503_through_websockets_library(relay_factory, sshd):
    relay = relay_factory(MAX_SESSIONS=1)
    first = login(relay, sshd)
    try:
        status = ws_status(ws_url(relay, sshd.port), [
            ("Cookie", "%s=%s" % (COOKIE_NAME, get_cookie(relay, LOCAL, sshd.port)))])
        assert status == 503
    finally:
        first.close()


@pytest.mark.parametrize("status,kw", [
    (403, {"extra": ["Origin: https://evil.example"]}),
    (401, {}),
    (404, {"query": None}),
])
def test_refusals_are_plain_http11(shared_relay, sshd, status, kw):
    relay = shared_relay.get("refusals")
    text = upgrade_text(relay, LOCAL, sshd.port, **kw)
    if status == 404:
        text = text.replace("GET /relay/ws?", "GET /other?", 1)
    line, headers, body, _ = raw_request(relay, text)
    assert_refusal(line, headers, body, status)


# A Sec-WebSocket-Protocol list of 127 bytes naming ours last: one byte
# more than lws reads.
LIST_127 = "a" * 50 + ", " + "b" * 59 + ", wattcloud-sftp"
assert len(LIST_127) == 127


@pytest.mark.parametrize("why,kw", [
    ("version", {"version": "12"}),
    ("no version", {"version": None}),
    ("no key", {"key": None}),
    ("short key", {"key": base64.b64encode(b"x" * 15).decode()}),
    ("long key", {"key": base64.b64encode(b"x" * 17).decode()}),
    ("junk key", {"key": "!" * 22 + "=="}),
    ("http subprotocol", {"extra": ["Sec-WebSocket-Protocol: http"]}),
    ("http first", {"extra": ["Sec-WebSocket-Protocol: http, wattcloud-sftp"]}),
    ("unknown subprotocol", {"extra": ["Sec-WebSocket-Protocol: chat"]}),
    ("mode", {"query": "mode=shell&host=127.0.0.1&port=%d"}),
    # Lists lws's own reading refuses before it reaches our protocol, after
    # the gate: with the gate reading them its own way they spent the
    # cookie and got no answer at all (gate.c subprotocol_ok).
    ("63-byte name first",
     {"extra": ["Sec-WebSocket-Protocol: %s, wattcloud-sftp" % ("a" * 63)]}),
    ("quoted string first", {"extra": ['Sec-WebSocket-Protocol: "x", wattcloud-sftp']}),
    ("x=y first", {"extra": ["Sec-WebSocket-Protocol: x=y, wattcloud-sftp"]}),
    ("x.y/z first", {"extra": ["Sec-WebSocket-Protocol: x.y/z, wattcloud-sftp"]}),
    ("not UTF-8 first", {"extra": ["Sec-WebSocket-Protocol: \xffx, wattcloud-sftp"]}),
    ("list of 127 bytes", {"extra": ["Sec-WebSocket-Protocol: " + LIST_127]}),
    # Connection lists lws reads no further than the element before
    # "upgrade" (lws_process_ws_upgrade), or not at all.
    ("Connection empty element", {"connection": ", Upgrade"}),
    ("Connection two commas", {"connection": "keep-alive,, Upgrade"}),
    ("Connection number", {"connection": "1, Upgrade"}),
    ("Connection quoted", {"connection": '"x", Upgrade'}),
    ("Connection x=y", {"connection": "x=y, Upgrade"}),
    ("Connection of 127 bytes", {"connection": "a" * 50 + ", " + "b" * 66 + ", upgrade"}),
    ("Connection prefix", {"connection": "upgr"}),
])
def test_bad_handshake_is_400_and_keeps_the_cookie(shared_relay, sshd, why, kw):
    relay = shared_relay.get("handshake")
    cookie = get_cookie(relay, LOCAL, sshd.port)
    if "query" in kw:
        kw = dict(kw, query=kw["query"] % sshd.port)
    line, headers, body, _ = raw_request(relay, upgrade_text(relay, LOCAL, sshd.port,
                                                             cookie=cookie, **kw))
    assert_refusal(line, headers, body, 400)
    # The refused request did not spend the cookie: it still upgrades.
    line, headers, _, _ = raw_request_upgrade(relay, upgrade_text(relay, LOCAL, sshd.port,
                                                                  cookie=cookie))
    assert line.startswith("HTTP/1.1 101"), (why, line)


@pytest.mark.parametrize("connection", [
    "keep-alive, Upgrade", "UPGRADE", "upgrade, x=y", "Upgrade, \"x\"",
    # 126 bytes, lws's most.
    "a" * 50 + ", " + "b" * 65 + ", upgrade",
])
def test_connection_lists_that_upgrade(shared_relay, sshd, connection):
    relay = shared_relay.get("connection")
    cookie = get_cookie(relay, LOCAL, sshd.port)
    line, headers, _, _ = raw_request_upgrade(relay, upgrade_text(
        relay, LOCAL, sshd.port, cookie=cookie, connection=connection))
    assert line.startswith("HTTP/1.1 101"), line


@pytest.mark.parametrize("protocols", [
    "chat, wattcloud-sftp",
    # The longest name and list lws reads, and what lws never reads.
    "%s, wattcloud-sftp" % ("a" * 62),
    LIST_127[1:],
    'wattcloud-sftp, "x", y=z',
])
def test_sftp_subprotocol_upgrades_into_a_session(shared_relay, sshd, protocols):
    relay = shared_relay.get("subprotocol")
    cookie = get_cookie(relay, LOCAL, sshd.port)
    line, headers, _, _ = raw_request_upgrade(relay, upgrade_text(
        relay, LOCAL, sshd.port, cookie=cookie,
        extra=["Sec-WebSocket-Protocol: " + protocols]))
    assert line.startswith("HTTP/1.1 101"), line


def raw_request_upgrade(relay, text):
    """Send an upgrade, read the response head only, then hang up."""
    s = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
    try:
        s.sendall(text.encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    return head[0], head[1:], None, None


def test_two_cookie_lines(shared_relay, sshd):
    relay = shared_relay.get("cookies")
    cookie = get_cookie(relay, LOCAL, sshd.port)
    text = upgrade_text(relay, LOCAL, sshd.port, extra=[
        "Cookie: theme=dark", "Cookie: %s=%s" % (COOKIE_NAME, cookie), "Cookie: lang=en"])
    line, _, _, _ = raw_request_upgrade(relay, text)
    assert line.startswith("HTTP/1.1 101"), line


def test_connect_is_answered_at_once(shared_relay):
    relay = shared_relay.get("connect")
    line, headers, body, secs = raw_request(relay, "CONNECT example.com:443 HTTP/1.0\r\n\r\n")
    assert line.startswith("HTTP/1.1 405"), line
    assert secs < 2, secs
    line, headers, body, secs = raw_request(relay, "CONNECT x HTTP/1.0\r\n\r\n")
    assert_refusal(line, headers, body, 405)


@pytest.mark.parametrize("status,head", [
    (411, "Transfer-Encoding: chunked\r\n"),
    (411, ""),
    (400, "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
    (400, "Content-Length: 5\r\nContent-Length: 7\r\n"),
    (400, "Content-Length: -5\r\n"),
])
def test_auth_body_framing(shared_relay, status, head):
    relay = shared_relay.get("framing")
    line, headers, body, secs = raw_request(
        relay, "POST /relay/auth HTTP/1.1\r\nHost: x\r\n%s\r\n" % head)
    assert_refusal(line, headers, body, status)
    assert secs < 2, secs


def test_oversized_headers_get_431(shared_relay):
    relay = shared_relay.get("431")
    line, headers, body, _ = raw_request(
        relay, "GET /health HTTP/1.1\r\nHost: x\r\nCookie: a=%s\r\n\r\n" % ("b" * 10000))
    assert_refusal(line, headers, body, 431)


def test_long_x_forwarded_for_is_read_whole(relay_factory, sshd):
    relay = relay_factory(TRUSTED_PROXY_IPS="127.0.0.1")
    # 2 KiB of earlier hops; the proxy appended the real client last.
    chain = ", ".join(["198.51.100.%d" % (i % 250) for i in range(150)] + ["203.0.113.9"])
    assert len(chain) > 1024
    offset = relay.log_size()
    line, _, body, _ = raw_request(relay, upgrade_text(
        relay, LOCAL, sshd.port, extra=["Origin: https://evil.example",
                                        "X-Forwarded-For: %s" % chain]))
    assert line.startswith("HTTP/1.1 403"), line
    assert "client=203.0.113.9 " in relay.log_since(offset)
    # Longer than the relay reads: refused, not read as the proxy.
    line, headers, body, _ = raw_request(relay, upgrade_text(
        relay, LOCAL, sshd.port, extra=["X-Forwarded-For: " + ", ".join(["10.0.0.1"] * 1200)]))
    assert line.startswith("HTTP/1.1 431"), line


def test_control_bytes_are_escaped_in_the_log(shared_relay, sshd):
    relay = shared_relay.get("escape")
    offset = relay.log_size()
    raw_request(relay, upgrade_text(relay, LOCAL, sshd.port, cookie="x",
                                    extra=["Origin: http://localhost\x1b[31m\x07"]))
    deadline = time.monotonic() + 5
    while "gate:" not in relay.log_since(offset) and time.monotonic() < deadline:
        time.sleep(0.05)
    text = relay.log_since(offset)
    assert "\\x1b[31m\\x07" in text, text
    assert "\x1b" not in text and "\x07" not in text
