"""PROTOCOL §2 step 4: credentials never reach a log, even at LOG_LEVEL=debug."""

from helpers import LOCAL, login
from sshd import KEY_PASSPHRASE, TEST_PASSWORD, TEST_USER
from wsclient import open_session

WRONG_PASSWORD = "Wc-wrong-pass-5-LOGCHECK"


def key_body_lines(pem):
    """The lines of a private key that carry key material."""
    return [line.strip() for line in pem.splitlines()
            if line.strip() and not line.startswith("-----") and ":" not in line
            and len(line.strip()) >= 16]


def test_password_never_logged(relay_factory, sshd):
    relay = relay_factory(LOG_LEVEL="debug")
    s = login(relay, sshd)
    assert s.ok("stat", path="/")["isDir"] is True
    s.close()
    s = open_session(relay, LOCAL, sshd.port)
    s.expect_host_key()
    s.accept_host_key()
    assert s.auth_password(TEST_USER, WRONG_PASSWORD)["error"] == "authentication failed"
    s.close()
    relay.stop_and_check()
    log = relay.log_text()
    assert log, "the relay logged nothing at LOG_LEVEL=debug"
    assert TEST_PASSWORD not in log
    assert WRONG_PASSWORD not in log


def test_private_key_never_logged(relay_factory, sshd, client_keys):
    relay = relay_factory(LOG_LEVEL="debug")
    used = ["rsa_pem", "ed25519_pass", "rsa_pkcs8"]
    for key in used:
        login(relay, sshd, keys=client_keys, key=key).close()
    # A failing one too: the error path must not dump the key either.
    s = open_session(relay, LOCAL, sshd.port)
    s.expect_host_key()
    s.accept_host_key()
    s.auth_key(TEST_USER, client_keys.pem("rsa_pass"), "wrong-passphrase-LOGCHECK")
    s.close()
    relay.stop_and_check()
    log = relay.log_text()
    assert KEY_PASSPHRASE not in log
    assert "wrong-passphrase-LOGCHECK" not in log
    assert "PRIVATE KEY-----" not in log
    for key in used + ["rsa_pass"]:
        for line in key_body_lines(client_keys.pem(key)):
            assert line not in log, "a line of the %s private key is in the log" % key
