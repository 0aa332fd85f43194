"""PROTOCOL §2 step 4: credentials.

Failing authentications run on their own relay: the relay blocks an IP
after 5 failures (§4), which would spill into later tests.
"""

import os
import subprocess

import pytest

from helpers import LOCAL
from sshd import CLIENT_KEYS, SSH_KEYGEN, TEST_PASSWORD, TEST_USER
from wsclient import open_session


def accepted_session(relay, sshd):
    s = open_session(relay, LOCAL, sshd.port)
    s.expect_host_key()
    s.accept_host_key()
    return s


def assert_auth_failed_and_closed(s, resp):
    assert resp["id"] == 1, resp
    assert resp["error"] == "authentication failed", resp
    assert s.expect_closed(timeout=10) == []


def test_password_ok(relay, sshd):
    s = accepted_session(relay, sshd)
    try:
        assert s.auth_password(TEST_USER, TEST_PASSWORD) == {"id": 1, "result": {}}
        assert s.ok("stat", path="/home")["isDir"] is True
    finally:
        s.close()


def test_missing_type_means_password(relay, sshd):
    s = accepted_session(relay, sshd)
    try:
        resp = s.auth_password(TEST_USER, TEST_PASSWORD, with_type=False)
        assert resp == {"id": 1, "result": {}}
        assert s.ok("stat", path="/home")["isDir"] is True
    finally:
        s.close()


def test_wrong_password(relay_factory, sshd):
    relay = relay_factory()
    s = accepted_session(relay, sshd)
    try:
        assert_auth_failed_and_closed(s, s.auth_password(TEST_USER, "Wc-wrong-pass-2"))
    finally:
        s.close()


def test_unknown_user(relay_factory, sshd):
    relay = relay_factory()
    s = accepted_session(relay, sshd)
    try:
        assert_auth_failed_and_closed(s, s.auth_password("wc-no-such-user", TEST_PASSWORD))
    finally:
        s.close()


@pytest.mark.parametrize("key", list(CLIENT_KEYS))
def test_publickey_formats(relay, sshd, client_keys, key):
    s = accepted_session(relay, sshd)
    try:
        pem = client_keys.pem(key)
        resp = s.auth_key(TEST_USER, pem, client_keys.passphrase(key))
        assert resp == {"id": 1, "result": {}}, "%s key (%s): %r" % (key, pem.splitlines()[0], resp)
        assert s.ok("stat", path="/home")["isDir"] is True
    finally:
        s.close()


@pytest.mark.parametrize("key", ["ed25519_pass", "rsa_pass"])
def test_wrong_passphrase(relay_factory, sshd, client_keys, key):
    relay = relay_factory()
    s = accepted_session(relay, sshd)
    try:
        resp = s.auth_key(TEST_USER, client_keys.pem(key), "not-the-passphrase")
        assert resp["id"] == 1 and "passphrase" in resp.get("error", ""), resp
        assert s.expect_closed(timeout=10) == []
    finally:
        s.close()


def test_garbage_key_names_the_key_problem(relay_factory, sshd):
    relay = relay_factory()
    s = accepted_session(relay, sshd)
    try:
        garbage = "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----\n"
        resp = s.auth_key(TEST_USER, garbage)
        assert resp["id"] == 1 and "error" in resp, resp
        assert resp["error"] != "authentication failed", resp
        assert "key" in resp["error"].lower(), resp
        assert s.expect_closed(timeout=10) == []
    finally:
        s.close()


def test_plain_text_key_names_the_key_problem(relay_factory, sshd):
    relay = relay_factory()
    s = accepted_session(relay, sshd)
    try:
        resp = s.auth_key(TEST_USER, "this is not a private key")
        assert resp["id"] == 1 and "error" in resp, resp
        assert resp["error"] != "authentication failed", resp
        assert "key" in resp["error"].lower(), resp
        assert s.expect_closed(timeout=10) == []
    finally:
        s.close()


def test_valid_key_not_authorized(relay_factory, sshd, tmp_path):
    path = str(tmp_path / "stranger")
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    with open(path) as f:
        pem = f.read()
    relay = relay_factory()
    s = accepted_session(relay, sshd)
    try:
        assert_auth_failed_and_closed(s, s.auth_key(TEST_USER, pem))
    finally:
        s.close()
    os.unlink(path)


def test_keyboard_interactive_fallback(relay, sshd_kbd):
    s = accepted_session(relay, sshd_kbd)
    try:
        assert s.auth_password(TEST_USER, TEST_PASSWORD) == {"id": 1, "result": {}}
        assert s.ok("stat", path="/home")["isDir"] is True
    finally:
        s.close()


def test_keyboard_interactive_wrong_password(relay_factory, sshd_kbd):
    relay = relay_factory()
    s = accepted_session(relay, sshd_kbd)
    try:
        resp = s.auth_password(TEST_USER, "Wc-wrong-pass-3")
        assert_auth_failed_and_closed(s, resp)
    finally:
        s.close()
