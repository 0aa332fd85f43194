"""A client that talks to the relay exactly like the Wattcloud browser app.

PROTOCOL.md §1.1 (cookie by proof of work), §2 (handshake) and §3 (requests,
binary framing). Assertions about the protocol that every caller relies on
(host_key frame shape, handle formats) live here; everything scenario
specific lives in the tests.
"""

import hashlib
import json
import re
import socket
import time
import urllib.parse

import websocket

MiB = 1024 * 1024
KiB = 1024
READ_CHUNK = 256 * KiB
MAX_FRAME = 16 * MiB

FINGERPRINT_RE = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
WRITE_HANDLE_RE = re.compile(r"^wh-[0-9a-f]{32}$")
READ_HANDLE_RE = re.compile(r"^rh-[0-9a-f]{32}$")
COOKIE_NAME = "relay_auth_sftp"

DEFAULT_TIMEOUT = 15


# --------------------------------------------------------------------------
# §1.1 relay cookie

def purpose_for(host, port):
    digest = hashlib.sha256(("%s:%d" % (host.lower(), int(port))).encode()).hexdigest()
    return "sftp:" + digest[:32]


def leading_zero_bits(digest):
    value = int.from_bytes(digest, "big")
    return 256 - value.bit_length()


def solve_pow(nonce_hex, purpose, difficulty):
    """Smallest answer whose hash has `difficulty` leading zero bits."""
    prefix = hashlib.sha256(bytes.fromhex(nonce_hex) + purpose.encode())
    answer = 0
    while True:
        h = prefix.copy()
        h.update(answer.to_bytes(8, "little"))
        if leading_zero_bits(h.digest()) >= difficulty:
            return answer
        answer += 1


def pow_ok(nonce_hex, purpose, answer, difficulty):
    digest = hashlib.sha256(bytes.fromhex(nonce_hex) + purpose.encode()
                            + answer.to_bytes(8, "little")).digest()
    return leading_zero_bits(digest) >= difficulty


def get_challenge(relay, purpose):
    """GET /relay/auth/challenge. Returns (status, parsed JSON or raw body)."""
    status, _, body = relay.http("GET", "/relay/auth/challenge?purpose="
                                 + urllib.parse.quote(purpose, safe=":"))
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def post_answer(relay, nonce_id, answer, raw_body=None):
    """POST /relay/auth. Returns (status, headers, body)."""
    body = raw_body if raw_body is not None else json.dumps(
        {"nonce_id": nonce_id, "answer": answer}).encode()
    return relay.http("POST", "/relay/auth", body=body,
                      headers={"Content-Type": "application/json"})


def cookie_from_headers(headers):
    """The relay_auth_sftp value and the full Set-Cookie line, or (None, None)."""
    for name, value in headers:
        if name.lower() == "set-cookie" and value.strip().startswith(COOKIE_NAME + "="):
            first = value.split(";", 1)[0]
            return first.split("=", 1)[1].strip(), value
    return None, None


def get_cookie(relay, host, port):
    """Fresh single-use cookie for host:port, as the SPA gets it."""
    purpose = purpose_for(host, port)
    status, challenge = get_challenge(relay, purpose)
    assert status == 200, "challenge: HTTP %d %r" % (status, challenge)
    answer = solve_pow(challenge["nonce"], purpose, challenge["difficulty"])
    status, headers, body = post_answer(relay, challenge["nonce_id"], answer)
    assert status == 204, "POST /relay/auth: HTTP %d %r" % (status, body)
    cookie, _ = cookie_from_headers(headers)
    assert cookie, "POST /relay/auth set no %s cookie: %r" % (COOKIE_NAME, headers)
    return cookie


# --------------------------------------------------------------------------
# §1.2 upgrade

def connect(relay, host, port, origin=None, cookie=True, timeout=DEFAULT_TIMEOUT,
            query=None, sockopt=()):
    """Open the WebSocket. cookie=True fetches a fresh cookie, a string is
    sent as is, None/False sends none. `sockopt` holds setsockopt()
    arguments applied before the socket connects. Raises
    WebSocketBadStatusException when the relay refuses the upgrade."""
    if cookie is True:
        cookie = get_cookie(relay, host, port)
    headers = []
    if cookie:
        headers.append("Cookie: %s=%s" % (COOKIE_NAME, cookie))
    url = "ws://127.0.0.1:%d/relay/ws?%s" % (
        relay.port, query if query is not None else
        "mode=sftp&host=%s&port=%s" % (urllib.parse.quote(str(host), safe=":[]"), port))
    ws = websocket.create_connection(url, header=headers, origin=origin, timeout=timeout,
                                     suppress_origin=origin is None, sockopt=sockopt)
    return ws


def upgrade_status(relay, host, port, **kw):
    """HTTP status of an upgrade attempt: 101 when it succeeded (then closed)."""
    try:
        ws = connect(relay, host, port, **kw)
    except websocket.WebSocketBadStatusException as e:
        return e.status_code
    ws.close(timeout=1)
    return 101


def open_session(relay, host, port, origin=None, cookie=True, timeout=DEFAULT_TIMEOUT,
                 sockopt=()):
    return Session(connect(relay, host, port, origin=origin, cookie=cookie, timeout=timeout,
                           sockopt=sockopt))


# --------------------------------------------------------------------------
# One WebSocket session.

class Session:
    def __init__(self, ws):
        self.ws = ws
        self.next_id = 1
        self.closed = False
        self.close_code = None
        self.host_key = None  # the host_key frame, once received

    # -- frames ------------------------------------------------------------

    def recv_frame(self, timeout=None, control=False):
        """Next frame: ('text', dict), ('binary', bytes), ('close', code or None)
        and, with control=True, ('ping', bytes) / ('pong', bytes).
        Pings are answered by websocket-client itself.
        `timeout` bounds the whole wait: the relay's pings (every
        WS_PING_INTERVAL_SECS) do not restart it, as they would if
        websocket-client skipped them inside one socket read (a 10 s wait
        for a close then lasted until a ping happened to come late, 40 to
        90 s in test_attack_ws)."""
        if self.closed:
            return ("close", self.close_code)
        old = self.ws.gettimeout()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise websocket.WebSocketTimeoutException(
                            "no frame within %.1f s" % timeout)
                    self.ws.settimeout(left)
                opcode, data = self.ws.recv_data(control_frame=deadline is not None or control)
                if control or opcode not in (websocket.ABNF.OPCODE_PING,
                                             websocket.ABNF.OPCODE_PONG):
                    break
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError) as e:
            if isinstance(e, (websocket.WebSocketTimeoutException, socket.timeout)):
                raise
            self.closed = True
            return ("close", None)
        finally:
            if timeout is not None and not self.closed:
                try:
                    self.ws.settimeout(old)
                except Exception:
                    pass
        if opcode == websocket.ABNF.OPCODE_TEXT:
            text = data.decode("utf-8")
            try:
                return ("text", json.loads(text))
            except ValueError:
                raise AssertionError("relay sent a text frame that is not JSON: %r" % text)
        if opcode == websocket.ABNF.OPCODE_BINARY:
            return ("binary", bytes(data))
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.closed = True
            self.close_code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            return ("close", self.close_code)
        if opcode == websocket.ABNF.OPCODE_PING:
            return ("ping", bytes(data))
        if opcode == websocket.ABNF.OPCODE_PONG:
            return ("pong", bytes(data))
        raise AssertionError("unexpected opcode %r" % opcode)

    def recv_text(self, timeout=None):
        kind, data = self.recv_frame(timeout)
        assert kind == "text", "expected a text frame, got %s %r" % (kind, _short(data))
        return data

    def recv_binary(self, timeout=None):
        kind, data = self.recv_frame(timeout)
        assert kind == "binary", "expected a binary frame, got %s %r" % (kind, _short(data))
        return data

    def expect_closed(self, timeout=10):
        """Wait until the relay closes; return the data frames seen before."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("relay did not close the session within %.1f s; "
                                     "frames seen: %r" % (timeout, _short(seen)))
            try:
                kind, data = self.recv_frame(timeout=left)
            except (websocket.WebSocketTimeoutException, socket.timeout):
                continue
            if kind == "close":
                return seen
            seen.append((kind, data))

    def expect_silence(self, secs):
        """Assert that no data frame and no close arrives for `secs`."""
        try:
            kind, data = self.recv_frame(timeout=secs)
        except (websocket.WebSocketTimeoutException, socket.timeout):
            return
        raise AssertionError("expected silence, got %s %r" % (kind, _short(data)))

    def send_text(self, text):
        self.ws.send(text, opcode=websocket.ABNF.OPCODE_TEXT)

    def send_json(self, obj):
        self.send_text(json.dumps(obj))

    def send_binary(self, data):
        self.ws.send(data, opcode=websocket.ABNF.OPCODE_BINARY)

    def send_ping(self, payload=b"p"):
        self.ws.ping(payload)

    def close(self):
        try:
            self.ws.close(timeout=2)
        except Exception:
            pass
        self.closed = True

    # -- §2 handshake ------------------------------------------------------

    def expect_host_key(self, timeout=None):
        frame = self.recv_text(timeout)
        assert frame.get("type") == "host_key", "expected host_key, got %r" % frame
        assert isinstance(frame.get("fingerprint"), str) and \
            FINGERPRINT_RE.match(frame["fingerprint"]), frame
        assert frame.get("relay_version") == 3 and type(frame["relay_version"]) is int, frame
        assert set(frame) <= {"type", "fingerprint", "relay_version", "features", "key_type"}, \
            "unexpected fields in host_key: %r" % frame
        self.host_key = frame
        return frame

    def accept_host_key(self):
        self.send_json({"type": "host_key_accepted"})

    def auth_password(self, user, password, with_type=True):
        params = {"username": user, "password": password}
        if with_type:
            params = {"type": "password", **params}
        return self.call("auth", params)

    def auth_key(self, user, pem, passphrase=None):
        return self.call("auth", {"type": "publickey", "username": user,
                                  "privateKey": pem, "passphrase": passphrase})

    # -- §3 requests -------------------------------------------------------

    def send_request(self, method, params=None, with_params=True):
        rid = self.next_id
        self.next_id += 1
        msg = {"id": rid, "method": method}
        if with_params:
            msg["params"] = params if params is not None else {}
        self.send_json(msg)
        return rid

    def response(self, rid, timeout=None):
        """The response to request `rid`; any other frame fails the test."""
        frame = self.recv_text(timeout)
        assert frame.get("id") == rid, "expected response to id %d, got %r" % (rid, frame)
        assert ("result" in frame) != ("error" in frame), "bad response shape %r" % frame
        if "error" in frame:
            assert isinstance(frame["error"], str) and frame["error"], frame
            assert set(frame) <= {"id", "error", "code"}, frame
            if "code" in frame:
                assert isinstance(frame["code"], str) and frame["code"], frame
        else:
            assert set(frame) == {"id", "result"}, frame
            assert isinstance(frame["result"], dict), frame
        return frame

    def call(self, method, params=None, timeout=None, **kw):
        params = dict(params or {}, **kw)
        return self.response(self.send_request(method, params), timeout)

    def ok(self, method, params=None, timeout=None, **kw):
        """call() that requires success and returns the result object."""
        resp = self.call(method, params, timeout, **kw)
        assert "result" in resp, "%s %r failed: %r" % (method, params or kw, resp)
        return resp["result"]

    def call_then_binary(self, method, params=None, timeout=None, **kw):
        """For read / read_chunk: (response, binary payload or None on error)."""
        resp = self.call(method, params, timeout, **kw)
        if "error" in resp:
            return resp, None
        return resp, self.recv_binary(timeout)

    def request_with_binary(self, method, params, data, timeout=None):
        """Text request, then its binary frame, then the answer."""
        rid = self.send_request(method, params)
        self.send_binary(data)
        return self.response(rid, timeout)

    def write_chunk(self, handle, data, timeout=None):
        return self.request_with_binary("write_chunk", {"handle": handle}, data, timeout)

    def write_open(self, path):
        result = self.ok("write_open", path=path)
        assert set(result) == {"handle"}, result
        assert WRITE_HANDLE_RE.match(result["handle"]), result
        return result["handle"]

    def read_open(self, path):
        result = self.ok("read_open", path=path)
        assert set(result) == {"handle"}, result
        assert READ_HANDLE_RE.match(result["handle"]), result
        return result["handle"]

    def upload(self, path, data, chunk=8 * MiB, timeout=60):
        handle = self.write_open(path)
        view = memoryview(data)
        for off in range(0, len(data), chunk):
            resp = self.write_chunk(handle, bytes(view[off:off + chunk]), timeout)
            assert resp.get("result") == {}, "write_chunk at %d: %r" % (off, resp)
        resp = self.call("write_close", handle=handle, timeout=timeout)
        assert resp.get("result") == {}, "write_close: %r" % resp
        return handle

    def read_chunks(self, handle, timeout=60):
        """All chunks of an open read handle, the final empty one included."""
        sizes, parts = [], []
        while True:
            resp, data = self.call_then_binary("read_chunk", handle=handle, timeout=timeout)
            assert "result" in resp, "read_chunk: %r" % resp
            assert set(resp["result"]) == {"size"}, resp
            assert resp["result"]["size"] == len(data), (resp, len(data))
            sizes.append(len(data))
            parts.append(data)
            if not data:
                return sizes, b"".join(parts)

    def download(self, path, timeout=60):
        handle = self.read_open(path)
        _, data = self.read_chunks(handle, timeout)
        assert self.ok("read_close", handle=handle) == {}
        return data


def _short(obj):
    text = repr(obj)
    return text if len(text) < 300 else text[:300] + "..."
