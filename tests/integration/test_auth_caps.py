"""Oversized credentials (issue 10 item 16): a 60 KB password is a
bad_request answered on the auth id before any authentication is tried, and
does not count against the IP's auth-failure budget (PROTOCOL §4: five
failures block the IP)."""

from helpers import LOCAL, login
from sshd import TEST_USER
from wsclient import open_session

AUTH_MAX_FAILURES = 5  # RATELIMIT_AUTH_MAX_FAILURES


def test_long_password_is_bad_request_not_auth_failure(relay_factory, sshd):
    relay = relay_factory()
    # More oversized attempts than the failure budget: had any counted, the
    # IP would be blocked and the login below refused with 429.
    for _ in range(AUTH_MAX_FAILURES + 1):
        s = open_session(relay, LOCAL, sshd.port)
        try:
            s.expect_host_key()
            s.accept_host_key()
            resp = s.auth_password(TEST_USER, "p" * 60000)
            assert resp.get("id") == 1, resp
            assert resp.get("code") == "bad_request", resp
            assert "password too long" in resp.get("error", ""), resp
            s.expect_closed(timeout=10)
        finally:
            s.close()
    s = login(relay, sshd)
    try:
        assert s.ok("stat", path="/")["isDir"]
    finally:
        s.close()
    assert "p" * 100 not in relay.log_text()
