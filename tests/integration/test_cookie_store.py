"""The cookie store (issue 10 item 4): every cookie takes its slot when it is
issued, so a full store refuses to issue new cookies (503 on POST
/relay/auth, with a plain-text reason) and never refuses a cookie it already
issued. RELAY_COOKIE_STORE_SIZE is lowered so the store fills in a few
requests; POW_DIFFICULTY_BITS=12 (the suite's base) keeps issuing cheap."""

from helpers import LOCAL
from wsclient import (get_challenge, get_cookie, post_answer, purpose_for, solve_pow,
                      upgrade_status)

STORE = 3


def test_full_store_refuses_issuing_not_using(relay_factory, sshd):
    relay = relay_factory(RELAY_COOKIE_STORE_SIZE=STORE)
    cookies = [get_cookie(relay, LOCAL, sshd.port) for _ in range(STORE)]

    # The next cookie is refused when it would be issued, with a reason.
    purpose = purpose_for(LOCAL, sshd.port)
    status, challenge = get_challenge(relay, purpose)
    assert status == 200, challenge
    answer = solve_pow(challenge["nonce"], purpose, challenge["difficulty"])
    status, headers, body = post_answer(relay, challenge["nonce_id"], answer)
    assert status == 503, (status, body)
    assert b"too many cookies" in body, body
    assert not any(k.lower() == "set-cookie" for k, _ in headers), headers

    # Every cookie already issued still opens its session, exactly once.
    for cookie in cookies:
        assert upgrade_status(relay, LOCAL, sshd.port, cookie=cookie) == 101
        assert upgrade_status(relay, LOCAL, sshd.port, cookie=cookie) == 403

    # Used ids keep their slots until their cookies expire: still full.
    status, challenge = get_challenge(relay, purpose)
    answer = solve_pow(challenge["nonce"], purpose, challenge["difficulty"])
    status, _, body = post_answer(relay, challenge["nonce_id"], answer)
    assert status == 503, (status, body)

