"""The `sign` extension in a real browser: headless Chromium keeps a
non-extractable WebCrypto key in IndexedDB (tests/browser/sshsign.js) and
answers the relay's sign_request itself; the private key never leaves the
page.

The browser, the TLS relay serving tests/browser/ and the DevTools driver
are those of test_browser.py. One sshd of its own per module, whose
authorized_keys gets the line the page printed.

Run (as root): RELAY_BIN=build/wattcloud-relay /usr/bin/python3 -m pytest -q \
    tests/integration/test_browser_sign.py
"""

import hashlib
import os

import pytest

import sshd as sshd_mod
from sshd import TEST_USER
from test_browser import (assert_pass, browser, browser_dir, page_relay,  # noqa: F401
                          page_url, self_signed, wait_for_session_end)

pytestmark = pytest.mark.usefixtures("browser")


class KeyServer:
    """An sshd whose authorized_keys holds exactly the lines given to
    install() (sshd reads the file at each login)."""

    def __init__(self, run_dir, test_user):
        self.user = test_user
        self.ak = sshd_mod.AuthorizedKeys(["# no key yet"], test_user)
        self.sshd = sshd_mod.Sshd(os.path.join(run_dir, "sshd-browser-sign"), "default",
                                  self.ak.pattern).start()
        self.port = self.sshd.port

    def install(self, lines):
        with open(os.path.join(self.ak.dir, self.user.pw_name), "w") as f:
            f.write("\n".join(lines) + "\n")

    def stop(self):
        self.sshd.stop()
        self.ak.remove()


@pytest.fixture(scope="module")
def key_server(run_dir, test_user):
    ks = KeyServer(run_dir, test_user)
    yield ks
    ks.stop()


def run_sign(browser, relay, server, workdir, name, **extra):  # noqa: F811
    return browser.run_page(page_url(
        relay, scenario="sign", host="127.0.0.1", port=server.port,
        fp=server.sshd.host_fingerprint("ed25519"), user=TEST_USER, dir=workdir, **extra),
        name, timeout=40)


def make_key(browser, relay, name, **extra):  # noqa: F811
    """The page makes (or loads) its key and shows the authorized_keys line.
    IndexedDB is per origin: the relay that serves this page must serve the
    login pages too."""
    result, title, console = browser.run_page(page_url(relay, scenario="sign_key", **extra),
                                              name, timeout=20)
    assert_pass(result, title, console)
    return result


def test_browser_sign_key_login_and_reload(browser, page_relay, key_server, workdir):  # noqa: F811
    # 1. The page makes its key and shows the authorized_keys line.
    relay = page_relay(SFTP_ALLOWED_PORTS="%d" % key_server.port)
    result = make_key(browser, relay, "sign-key")
    assert result["fresh"] is True, result
    line = result["line"]
    assert result["keyType"] in ("ssh-ed25519", "ecdsa-sha2-nistp256"), result
    assert line.startswith(result["keyType"] + " ") and line.endswith(" wattcloud"), line
    # ssh-keygen reads the line and agrees on the fingerprint.
    out = sshd_mod.run([sshd_mod.SSH_KEYGEN, "-lf", "-"], input=line.encode())
    assert out.split()[1] == result["fingerprint"], out
    print("\nbrowser key: %s %s" % (result["keyType"], result["fingerprint"]))

    # 2. The line goes into the server's authorized_keys.
    key_server.install([line])
    server = key_server

    # 3. Log in: sign_request answered in the page, then a session.
    offset = relay.log_size()
    result, title, console = run_sign(browser, relay, server, workdir, "sign-login")
    assert_pass(result, title, console)
    assert result.get("authError") is None, result
    assert result["signRequests"] == 1 and result["fresh"] is False, result
    assert result["line"] == line and "sign" in result["features"]
    path = result["path"]
    assert path.startswith(workdir + "/signed-")
    assert os.path.getsize(path) == result["size"] == 300 * 1024
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == result["sha256"]
    log, ends = wait_for_session_end(relay, offset)
    assert "publickey-sign login succeeded with %s key %s" % (
        result["keyType"], result["fingerprint"]) in log, log[-3000:]

    # 4. Reload the page: the key comes back from IndexedDB and logs in again.
    result2, title, console = run_sign(browser, relay, server, workdir, "sign-reload")
    assert_pass(result2, title, console)
    assert result2.get("authError") is None, result2
    assert result2["fresh"] is False and result2["line"] == line, result2
    assert result2["sha256"] != result["sha256"]


def test_browser_sign_refusals(browser, page_relay, key_server, workdir):  # noqa: F811
    # A relay of its own (a new origin, so a new key), which gives up on
    # a signature after 2 s.
    relay = page_relay(SFTP_ALLOWED_PORTS="%d" % key_server.port, SIGN_TIMEOUT_SECS=2)
    key_server.install([make_key(browser, relay, "sign-key-refusals")["line"]])
    server = key_server

    # A key the server does not know: refused before any signature.
    res, title, console = run_sign(browser, relay, server, workdir, "sign-wrong-key",
                                   keyname="stranger")
    assert_pass(res, title, console)
    assert res["fresh"] is True and res["signRequests"] == 0, res
    assert res["authError"] == "authentication failed: the server does not accept this " \
                               "public key" and res["authCode"] == "auth_failed", res

    # Random bytes instead of a signature.
    res, title, console = run_sign(browser, relay, server, workdir, "sign-garbage",
                                   answer="garbage")
    assert_pass(res, title, console)
    assert res["signRequests"] == 1, res
    assert res["authError"] == "authentication failed: the server refused the signature", res
    assert res["authCode"] == "auth_failed", res

    # A page that never answers: the relay gives up after SIGN_TIMEOUT_SECS.
    res, title, console = run_sign(browser, relay, server, workdir, "sign-never",
                                   answer="never")
    assert_pass(res, title, console)
    assert res["authError"] == "signature timeout: the browser did not answer the " \
                               "sign_request within 2 s", res
    assert res["authCode"] == "sign_timeout", res
    # ... and the relay is healthy: the same page logs in.
    res, title, console = run_sign(browser, relay, server, workdir, "sign-after-timeout")
    assert_pass(res, title, console)
    assert res.get("authError") is None and res["sha256"], res
