"""A real browser end to end (issue "A real browser end to end").

Debian's headless Chromium loads the test page of tests/browser/ from the
relay itself (SPA_DIR) over TLS with a self-signed certificate, and the page
does what the Wattcloud app does: proof of work in JavaScript, the relay
cookie kept by the browser, wss:// to the relay, host key check, public key
login, vault folders, a 50 MiB upload in 8 MiB write_chunk frames, rename,
list, a streaming download and a SHA-256 comparison (WebCrypto). Further
runs of the page check the refusals a browser can observe: a reused cookie,
a wrong Origin and a changed host key.

The browser is driven over the DevTools protocol by the small client below
(python3-websocket): navigate, poll document.title until the page says
PASS or FAIL, read window.__result, take a screenshot. Screenshots and the
page's console go to tests/artifacts/run-*/browser/.

Chromium trusts the relay's certificate through
--ignore-certificate-errors-spki-list (honoured with a --user-data-dir),
which pins exactly this certificate's public key for this throwaway profile.

The relays run with BYO_DOMAIN=localhost:<port> and the page is opened at
https://localhost:<port>/: the strict Origin check (Origin must equal
https://BYO_DOMAIN, as in production) instead of the any-loopback rule of
BYO_DOMAIN=localhost, so that a page from another loopback origin is
refused.

Run (as root, like the rest of tests/integration; about 10 s):
    RELAY_BIN=build/wattcloud-relay /usr/bin/python3 -m pytest -q tests/integration/test_browser.py
Needs `chromium` (scripts/deps.sh --test installs it). WC_SKIP_BROWSER=1
skips these tests on a machine without it.

The page can be tried by hand too: start the relay with SPA_DIR=tests/browser
and open https://<relay>/#scenario=e2e&port=<sshd port>&fp=SHA256:...&user=...
&key=<URL-encoded private key>&dir=<a writable directory> (see e2e.js).
"""

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import websocket

import sshd as sshd_mod
from helpers import sha256_file, wait_until
from sshd import TEST_USER, free_port
from tlsutil import OPENSSL, use_tls

BROWSER_PAGE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "browser"))
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
UPLOAD_MIB = 50
CHUNK_MIB = 8


def chromium_binary():
    """The Chromium executable itself (not Debian's wrapper script, which
    adds flags from /etc/chromium.d)."""
    for path in CHROMIUM_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


# --------------------------------------------------------------------------
# A minimal DevTools protocol client.

class CdpError(Exception):
    pass


class Cdp:
    """Request/response over the DevTools WebSocket of one page target.
    Events that arrive meanwhile are kept in `events`."""

    def __init__(self, ws_url, timeout=30):
        # Chromium refuses DevTools WebSockets that carry an Origin header
        # unless --remote-allow-origins names it: send none.
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events = []

    def call(self, method, timeout=30, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CdpError("%s: no answer within %.0f s" % (method, timeout))
            self.ws.settimeout(left)
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise CdpError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expression, timeout=10):
        res = self.call("Runtime.evaluate", timeout=timeout, expression=expression,
                        returnByValue=True)
        if "exceptionDetails" in res:
            raise CdpError("%s: %s" % (expression, res["exceptionDetails"].get("text")))
        return res["result"].get("value")

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


class Browser:
    """Headless Chromium with a fresh profile, trusting one certificate."""

    def __init__(self, directory, spki_sha256_b64):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.profile = os.path.join(directory, "profile")
        self.log_path = os.path.join(directory, "chromium.log")
        self.spki = spki_sha256_b64
        self.proc = None
        self.cdp = None
        self.runs = 0
        self.last_screenshot = None

    # Chromium starts in about a second, but from a cold page cache on a
    # loaded machine (the CI's sanitizer pass, right after a build) it has
    # needed more than 20 s. The loop below waits for the file, so the
    # deadline only bounds a browser that never comes up.
    def start(self, timeout=90):
        binary = chromium_binary()
        if binary is None:
            raise FileNotFoundError("chromium is not installed: run scripts/deps.sh --test "
                                    "(or set WC_SKIP_BROWSER=1)")
        shutil.rmtree(self.profile, ignore_errors=True)
        os.makedirs(self.profile)
        argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-quic", "--no-default-browser-check",
                "--disable-default-apps", "--disable-extensions", "--mute-audio",
                "--hide-scrollbars", "--window-size=1100,860",
                "--user-data-dir=" + self.profile,
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                "--ignore-certificate-errors-spki-list=" + self.spki,
                "about:blank"]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, start_new_session=True)
        active = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        port = None
        while port is None:
            if self.proc.poll() is not None:
                raise RuntimeError("chromium exited with %s:\n%s"
                                   % (self.proc.returncode, self.log_tail()))
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("chromium wrote no DevToolsActivePort within %d s:\n%s"
                                   % (timeout, self.log_tail()))
            try:
                with open(active) as f:
                    first = f.readline().strip()
                port = int(first) if first else None
            except (FileNotFoundError, ValueError):
                port = None
            if port is None:
                time.sleep(0.05)
        with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=10) as r:
            targets = json.load(r)
        pages = [t for t in targets if t.get("type") == "page"]
        assert pages, "chromium has no page target: %r" % targets
        self.cdp = Cdp(pages[0]["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            self.cdp.call(domain + ".enable")
        return self

    def log_tail(self, n=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.cdp is not None:
            try:
                self.cdp.call("Browser.close", timeout=5)
            except Exception:
                pass
            self.cdp.close()
            self.cdp = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            # Helpers (zygote, renderers) of this browser run in its own
            # process group; make sure none outlives it.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc = None
            self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)  # throwaway: cookies, cache

    def console_lines(self):
        """Console and log messages (browser-side network errors included)
        collected since the last run_page()."""
        out = []
        for ev in self.cdp.events:
            if ev["method"] == "Runtime.consoleAPICalled":
                args = ev["params"].get("args", [])
                out.append("console.%s: %s" % (ev["params"].get("type"), " ".join(
                    str(a.get("value", a.get("description", ""))) for a in args)))
            elif ev["method"] == "Log.entryAdded":
                e = ev["params"]["entry"]
                out.append("log[%s/%s]: %s" % (e.get("source"), e.get("level"), e.get("text")))
            elif ev["method"] == "Runtime.exceptionThrown":
                d = ev["params"]["exceptionDetails"]
                out.append("exception: %s %s" % (d.get("text"),
                                                 d.get("exception", {}).get("description", "")))
        return out

    def run_page(self, url, name, timeout=45, network=False):
        """Open the test page, wait for PASS/FAIL in its title, save a
        screenshot and the console. Returns (result dict, title, console).
        network=True records the Network domain's events (HTTP requests,
        WebSocket handshakes and every frame, payload included: not for big
        transfers); network_events() returns them afterwards."""
        self.runs += 1
        self.cdp.call("Page.navigate", url="about:blank")
        if network:
            self.cdp.call("Network.enable")
        self.cdp.events.clear()
        self.cdp.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        title = ""
        while True:
            try:
                title = self.cdp.evaluate("document.title") or ""
            except CdpError:
                title = ""  # between navigations
            if title.startswith(("PASS", "FAIL")):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        try:
            result = self.cdp.evaluate("window.__result") or {}
        except CdpError:
            result = {}
        if network:
            # The page decides before Chromium has reported every socket's
            # end; the frames checked (none sent after a refused host key)
            # are only all known once each WebSocket is reported closed.
            if not wait_until(self.websockets_ended, 10):
                raise AssertionError("page %s: a WebSocket was not reported closed within "
                                     "10 s: %r" % (name, self.websocket_handshakes()))
            self.cdp.call("Network.disable")
        self.screenshot(os.path.join(self.dir, "%02d-%s.png" % (self.runs, name)))
        console = self.console_lines()
        with open(os.path.join(self.dir, "%02d-%s.console.txt" % (self.runs, name)), "w") as f:
            f.write("title: %s\n" % title)
            f.write("\n".join(console) + "\n")
        if not title.startswith(("PASS", "FAIL")):
            raise AssertionError("page %s did not finish within %d s (title %r); steps:\n%s"
                                 "\nconsole:\n%s" % (name, timeout, title,
                                                     "\n".join(result.get("steps", [])),
                                                     "\n".join(console)))
        return result, title, console

    def websockets_ended(self):
        """Has every WebSocket the page opened been reported closed or
        failed? Asks the browser once, which brings in the events sent
        before its answer."""
        self.cdp.evaluate("0")
        ended = {ev["params"]["requestId"] for ev in self.network_events(
            "Network.webSocketClosed", "Network.webSocketFrameError")}
        return all(ev["params"]["requestId"] in ended
                   for ev in self.network_events("Network.webSocketCreated"))

    def network_events(self, *methods):
        """Network.* events of the last run_page(network=True), by method."""
        return [ev for ev in self.cdp.events if ev["method"] in methods]

    def websocket_handshakes(self):
        """What the browser itself saw of each WebSocket it opened during the
        last run_page(network=True), in order: dicts with url, origin and
        cookie (the Origin and relay cookie it sent) and status (the HTTP
        status of the upgrade answer, None when none arrived)."""
        out = {}
        for ev in self.cdp.events:
            p = ev.get("params", {})
            rid = p.get("requestId")
            if ev["method"] == "Network.webSocketCreated":
                out[rid] = {"url": p["url"], "origin": None, "cookie": None, "status": None}
            elif ev["method"] == "Network.webSocketWillSendHandshakeRequest" and rid in out:
                h = {k.lower(): v for k, v in p["request"]["headers"].items()}
                out[rid]["origin"] = h.get("origin")
                m = re.search(r"(?:^|;\s*)relay_auth_sftp=([^;]+)", h.get("cookie", ""))
                out[rid]["cookie"] = m.group(1) if m else None
            elif ev["method"] == "Network.webSocketHandshakeResponseReceived" and rid in out:
                out[rid]["status"] = p["response"]["status"]
            elif ev["method"] == "Network.webSocketFrameError" and rid in out:
                m = re.search(r"Unexpected response code: (\d+)", p.get("errorMessage", ""))
                if m and out[rid]["status"] is None:
                    out[rid]["status"] = int(m.group(1))
        return list(out.values())

    def cookies_received(self):
        """relay_auth_sftp values the browser got in Set-Cookie headers during
        the last run_page(network=True)."""
        out = []
        for ev in self.network_events("Network.responseReceivedExtraInfo"):
            for name, value in ev["params"].get("headers", {}).items():
                if name.lower() == "set-cookie":
                    out += re.findall(r"(?:^|\n)relay_auth_sftp=([^;\n]+)", value)
        return out

    def screenshot(self, path):
        data = self.cdp.call("Page.captureScreenshot", format="png",
                             captureBeyondViewport=False)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        self.last_screenshot = path
        return path

    def cookies(self, url):
        return self.cdp.call("Network.getCookies", urls=[url])["cookies"]


# --------------------------------------------------------------------------
# Fixtures.

@pytest.fixture(scope="module")
def browser_dir(run_dir):
    path = os.path.join(run_dir, "browser")
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def self_signed(browser_dir):
    """A self-signed certificate for localhost / 127.0.0.1. Returns
    (cert path, key path, base64 SHA-256 of its SubjectPublicKeyInfo)."""
    cert = os.path.join(browser_dir, "relay-cert.pem")
    key = os.path.join(browser_dir, "relay-key.pem")
    sshd_mod.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                  "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                  "-days", "2", "-subj", "/CN=localhost",
                  "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                  "-addext", "basicConstraints=critical,CA:FALSE",
                  "-addext", "extendedKeyUsage=serverAuth"])
    pub = sshd_mod.run([OPENSSL, "x509", "-in", cert, "-noout", "-pubkey"])
    der = base64.b64decode("".join(line for line in pub.splitlines()
                                   if not line.startswith("-----")))
    spki = base64.b64encode(hashlib.sha256(der).digest()).decode()
    return cert, key, spki


@pytest.fixture(scope="module")
def browser(browser_dir, self_signed):
    if os.environ.get("WC_SKIP_BROWSER") == "1":
        pytest.skip("WC_SKIP_BROWSER=1")
    b = Browser(browser_dir, self_signed[2]).start()
    yield b
    b.stop()


@pytest.fixture
def page_relay(relay_factory, self_signed):
    """page_relay(**env) -> a started TLS relay serving tests/browser/, with
    BYO_DOMAIN=localhost:<its port> and a signing key shared by all relays
    of the test (so a cookie of one is valid at another)."""
    cert, key, _ = self_signed
    signing_key = base64.b64encode(secrets.token_bytes(32)).decode()

    def start(**env):
        port = free_port()
        settings = dict(BIND_ADDR="127.0.0.1:%d" % port, BYO_DOMAIN="localhost:%d" % port,
                        TLS_CERT=cert, TLS_KEY=key, SPA_DIR=BROWSER_PAGE_DIR,
                        RELAY_SIGNING_KEY=signing_key)
        settings.update(env)
        relay = relay_factory(start=False, **settings)
        ctx = ssl.create_default_context(cafile=cert)
        use_tls(relay, ctx)
        relay.start()
        relay.origin = "https://localhost:%d" % port
        return relay

    return start


def page_url(server, **params):
    """https://localhost:<port>/#k=v&... on relay `server` (the hash never
    reaches the server)."""
    return "%s/#%s" % (server.origin,
                       urllib.parse.urlencode(params, quote_via=urllib.parse.quote))


def session_lines(log):
    """{session id: [its log lines]} from a relay log."""
    out = {}
    for line in log.splitlines():
        m = re.search(r"session (\S+?):? ", line)
        if m:
            out.setdefault(m.group(1), []).append(line)
    return out


def wait_for_session_end(relay, offset, count=1, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        log = relay.log_since(offset)
        ends = re.findall(r"session \S+ end: .*", log)
        if len(ends) >= count or time.monotonic() > deadline:
            return log, ends
        time.sleep(0.05)


def assert_pass(result, title, console):
    assert title.startswith("PASS"), "page says %r\nsteps:\n%s\nconsole:\n%s" % (
        title, "\n".join(result.get("steps", [])), "\n".join(console))
    assert result.get("ok") is True, result


# --------------------------------------------------------------------------
# Scenarios.

def test_browser_upload_download_50mib(browser, page_relay, sshd, client_keys, workdir):
    relay = page_relay()
    offset = relay.log_size()
    fp = sshd.host_fingerprint("ed25519")
    started = time.monotonic()
    result, title, console = browser.run_page(page_url(
        relay, scenario="e2e", host="127.0.0.1", port=sshd.port, fp=fp, user=TEST_USER,
        key=client_keys.pem("ed25519"), dir=workdir, size_mib=UPLOAD_MIB,
        chunk_mib=CHUNK_MIB), "e2e", timeout=50)
    elapsed = time.monotonic() - started
    assert_pass(result, title, console)
    print("\nbrowser e2e: %s (%.1f s), screenshot %s" % (title, elapsed,
                                                         browser.last_screenshot))

    # What the page uploaded is on the server, byte for byte.
    size = UPLOAD_MIB * 1024 * 1024
    path = os.path.join(workdir, "WattcloudVault", "data", "blob.bin")
    assert result["path"] == path and result["size"] == size
    assert os.path.getsize(path) == size
    assert sha256_file(path) == result["sha256"]
    assert not os.path.exists(os.path.join(workdir, "WattcloudVault", "data", "blob.part"))
    assert os.path.isdir(os.path.join(workdir, "WattcloudVault", "manifests"))
    assert result["chunks"] == -(-UPLOAD_MIB // CHUNK_MIB)
    assert result["fingerprint"] == fp and result["keyType"] == "ssh-ed25519"

    # The browser kept the cookie the way the relay set it.
    cookies = [c for c in browser.cookies(relay.origin + "/relay/ws")
               if c["name"] == "relay_auth_sftp"]
    assert len(cookies) == 1, cookies
    c = cookies[0]
    assert c["httpOnly"] and c["secure"] and c["sameSite"] == "Strict" and c["path"] == "/relay"

    # One session, from the right origin, ended by the browser's Close.
    log, ends = wait_for_session_end(relay, offset)
    assert "origin=%s cookie=present -> 0" % relay.origin in log, log[-3000:]
    assert len(re.findall(r"session \S+ start: ", log)) == 1, log[-3000:]
    assert len(ends) == 1, log[-3000:]
    m = re.search(r"up=(\d+) down=(\d+)", ends[0])
    assert int(m.group(1)) >= size and int(m.group(2)) >= size, ends[0]
    assert "upgrade refused" not in log and not re.search(r"Z error ", log), log[-3000:]


def test_browser_reused_cookie_refused(browser, page_relay, sshd):
    relay = page_relay()
    offset = relay.log_size()
    result, title, console = browser.run_page(page_url(
        relay, scenario="reuse", host="127.0.0.1", port=sshd.port), "reuse", timeout=20,
        network=True)
    assert_pass(result, title, console)
    # What the browser saw: both upgrades carried the same cookie from the
    # page's own origin; the first was answered 101, the second 403.
    hs = browser.websocket_handshakes()
    assert [h["status"] for h in hs] == [101, 403], hs
    assert hs[0]["cookie"] and hs[0]["cookie"] == hs[1]["cookie"], hs
    assert hs[0]["origin"] == hs[1]["origin"] == relay.origin, hs
    log, ends = wait_for_session_end(relay, offset)
    gates = re.findall(r"gate: .* -> (\d+)", log)
    # The first upgrade passed, the second (same cookie, same origin) was
    # refused by the single-use rule (§1.2 check 7).
    assert gates == ["0", "403"], log[-3000:]
    assert re.search(r"gate: .*origin=%s cookie=present -> 403" % re.escape(relay.origin), log)
    assert re.search(r"upgrade refused: client=\S+ status=403", log), log[-3000:]
    assert len(re.findall(r"session \S+ start: ", log)) == 1, log[-3000:]
    # What the browser saw: Chromium reports the refused handshake.
    assert any("403" in line for line in console if line.startswith("log[")), console


def test_browser_wrong_origin_refused(browser, page_relay, sshd):
    target = page_relay()
    # Same signing key: its cookies are valid at `target`. Its page may
    # connect to `target` only because its BYO_DOMAIN names it (the page's
    # Content-Security-Policy allows 'self' and wss://BYO_DOMAIN).
    other = page_relay(BYO_DOMAIN="localhost:%d" % target.port)
    t_off, o_off = target.log_size(), other.log_size()
    result, title, console = browser.run_page(page_url(
        other, scenario="origin", host="127.0.0.1", port=sshd.port,
        relay="localhost:%d" % target.port), "origin", timeout=20, network=True)
    assert_pass(result, title, console)
    # The browser sent its own Origin and the upgrade was answered 403. (It
    # sent the cookie it had just got from `other` too, as the relay log
    # shows: same site, another port of localhost.)
    hs = browser.websocket_handshakes()
    assert len(hs) == 1 and hs[0]["status"] == 403, hs
    assert hs[0]["origin"] == other.origin, hs
    assert hs[0]["url"].startswith("wss://localhost:%d/relay/ws?" % target.port), hs
    got = browser.cookies_received()
    assert len(got) == 1, got
    log = target.log_since(t_off)
    # The cookie came along (same site) and the gate refused on the Origin.
    assert re.search(r"gate: .*origin=%s cookie=present -> 403" % re.escape(other.origin),
                     log), log[-3000:]
    assert re.search(r"upgrade refused: client=\S+ status=403", log), log[-3000:]
    assert "start: " not in log
    assert any("403" in line for line in console if line.startswith("log[")), console
    # The other relay only issued the cookie.
    assert "gate:" not in other.log_since(o_off)

    # Control: the very cookie the wrong origin could not use opens a session
    # from the right origin, so the refusal was the Origin's alone.
    t_off = target.log_size()
    result, title, console = browser.run_page(page_url(
        target, scenario="origin_control", host="127.0.0.1", port=sshd.port),
        "origin-control", timeout=20, network=True)
    assert_pass(result, title, console)
    requests = [ev["params"]["request"]["url"]
                for ev in browser.network_events("Network.requestWillBeSent")]
    assert not [u for u in requests if "/relay/auth" in u], requests  # no new cookie
    hs = browser.websocket_handshakes()
    assert [(h["status"], h["origin"], h["cookie"]) for h in hs] == \
        [(101, target.origin, got[0])], hs
    log, ends = wait_for_session_end(target, t_off)
    assert re.search(r"gate: .*origin=%s cookie=present -> 0" % re.escape(target.origin), log)
    assert len(ends) == 1


def test_browser_changed_host_key_aborts_before_credentials(browser, page_relay, sshd,
                                                            client_keys, run_dir):
    # The "pinned" key: another ed25519 key, as if the server's key had been replaced.
    other = os.path.join(run_dir, "browser", "replaced_host_key")
    if not os.path.exists(other):
        sshd_mod.run([sshd_mod.SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", other])
    pinned = sshd_mod.fingerprint(other + ".pub")
    relay = page_relay()
    offset = relay.log_size()
    sshd_before = len(sshd.log())
    result, title, console = browser.run_page(page_url(
        relay, scenario="hostkey", host="127.0.0.1", port=sshd.port, fp=pinned,
        user=TEST_USER, key=client_keys.pem("ed25519")),
        "hostkey", timeout=20, network=True)
    assert_pass(result, title, console)
    assert result["fingerprint"] == sshd.host_fingerprint("ed25519") != pinned
    # The browser got the host_key frame and sent not a single frame back.
    received = browser.network_events("Network.webSocketFrameReceived")
    sent = browser.network_events("Network.webSocketFrameSent")
    assert [json.loads(ev["params"]["response"]["payloadData"])["type"]
            for ev in received] == ["host_key"], received
    assert sent == [], sent

    log, ends = wait_for_session_end(relay, offset)
    sessions = session_lines(log)
    assert len(ends) == 1 and len(sessions) == 1, log[-3000:]
    lines = "\n".join(next(iter(sessions.values())))
    # No credentials reached the relay: no login, no login failure.
    assert "authenticated" not in lines and "login" not in lines, lines
    reason = ends[0].split("reason=", 1)[-1]
    assert "auth" not in reason and "login" not in reason, ends[0]
    # ... nor the SSH server: the relay's one connection ended before any
    # authentication request. (Only the lines of that connection count: a
    # session of an earlier test may still be logging its end.)
    def connection_lines():
        delta = sshd.log()[sshd_before:]
        ports = re.findall(r"Connection from 127\.0\.0\.1 port (\d+) ", delta)
        assert len(ports) <= 1, delta
        if not ports:
            return None
        conn = "\n".join(line for line in delta.splitlines()
                         if re.search(r"\bport %s\b" % ports[0], line))
        return conn if "Disconnected from 127.0.0.1 port %s" % ports[0] in conn else None

    conn = wait_until(connection_lines, 5)
    assert conn and "[preauth]" in conn.splitlines()[-1], sshd.log()[sshd_before:]
    for word in ("Accepted", "Failed", "Postponed", "Invalid user", "authentication"):
        assert word not in conn, conn
    print("\nchanged host key: the relay ended the session with reason=%s" % reason)

