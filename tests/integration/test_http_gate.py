"""PROTOCOL §1: the HTTP surface, the proof-of-work cookie and the upgrade
checks. Rate limits and one-shot state run on relays of their own."""

import base64
import hashlib
import hmac
import json
import re
import time
import uuid

import pytest
import websocket

from helpers import LOCAL
from wsclient import (connect, cookie_from_headers, get_challenge, get_cookie, pow_ok,
                      post_answer, purpose_for, solve_pow, upgrade_status)

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def b64url_json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def challenge_ok(relay, host=LOCAL, port=22):
    purpose = purpose_for(host, port)
    status, challenge = get_challenge(relay, purpose)
    assert status == 200, (status, challenge)
    return purpose, challenge


def wrong_answer(nonce, purpose, difficulty):
    answer = 0
    while pow_ok(nonce, purpose, answer, difficulty):
        answer += 1
    return answer


# -- plain HTTP -------------------------------------------------------------

def test_health(relay):
    status, _, body = relay.http("GET", "/health")
    assert status == 200 and body.strip() == b"ok", (status, body)


def test_ready(relay):
    status, _, _ = relay.http("GET", "/ready")
    assert status == 200


def test_unknown_path_is_404_without_spa_dir(relay):
    status, _, _ = relay.http("GET", "/no/such/page")
    assert status == 404


# -- challenge and cookie -----------------------------------------------------

def test_challenge_shape(relay):
    _, challenge = challenge_ok(relay)
    assert set(challenge) == {"nonce_id", "nonce", "difficulty"}, challenge
    assert UUID_RE.match(challenge["nonce_id"]), challenge
    assert re.fullmatch(r"[0-9a-f]{32}", challenge["nonce"]), challenge
    assert challenge["difficulty"] == 12


@pytest.mark.parametrize("purpose", [
    "", "sftp:", "sftp:" + "A" * 32, "sftp:" + "a" * 31, "sftp:" + "a" * 33,
    "ftp:" + "a" * 32, "sftp:" + "g" * 32, "SFTP:" + "a" * 32,
])
def test_challenge_rejects_bad_purpose(relay, purpose):
    status, _ = get_challenge(relay, purpose)
    assert status == 400


def test_challenge_without_purpose(relay):
    status, _, _ = relay.http("GET", "/relay/auth/challenge")
    assert status == 400


def test_cookie_issued(relay):
    purpose, ch = challenge_ok(relay, LOCAL, 2222)
    answer = solve_pow(ch["nonce"], purpose, ch["difficulty"])
    status, headers, _ = post_answer(relay, ch["nonce_id"], answer)
    assert status == 204
    cookie, line = cookie_from_headers(headers)
    assert cookie, headers
    attrs = [a.strip().lower() for a in line.split(";")[1:]]
    for attr in ("httponly", "secure", "samesite=strict", "path=/relay", "max-age=600"):
        assert attr in attrs, line
    header, claims, signature = cookie.split(".")
    assert b64url_json(header)["alg"] == "HS256"
    claims = b64url_json(claims)
    assert UUID_RE.match(claims["jti"]), claims
    assert claims["purpose"] == purpose
    assert claims["exp"] - claims["iat"] == 600
    assert abs(claims["iat"] - time.time()) < 30
    assert signature


def test_answer_is_single_use(relay):
    purpose, ch = challenge_ok(relay)
    answer = solve_pow(ch["nonce"], purpose, ch["difficulty"])
    assert post_answer(relay, ch["nonce_id"], answer)[0] == 204
    assert post_answer(relay, ch["nonce_id"], answer)[0] == 400


def test_insufficient_work_is_403_and_uses_up_the_challenge(relay):
    purpose, ch = challenge_ok(relay)
    bad = wrong_answer(ch["nonce"], purpose, ch["difficulty"])
    assert post_answer(relay, ch["nonce_id"], bad)[0] == 403
    good = solve_pow(ch["nonce"], purpose, ch["difficulty"])
    assert post_answer(relay, ch["nonce_id"], good)[0] == 400


def test_unknown_nonce_id(relay):
    assert post_answer(relay, "00000000-0000-4000-8000-000000000000", 1)[0] == 400


@pytest.mark.parametrize("body", [b"", b"not json", b"{}", b'{"nonce_id": 5, "answer": 1}',
                                  b'{"nonce_id": "x", "answer": "1"}', b"[]"])
def test_malformed_answer_body(relay, body):
    assert post_answer(relay, None, None, raw_body=body)[0] == 400


def test_answer_body_too_large(relay):
    body = json.dumps({"nonce_id": "x" * 17000, "answer": 1}).encode()
    assert post_answer(relay, None, None, raw_body=body)[0] == 413


def test_challenge_rate_limit(relay_factory):
    relay = relay_factory(AUTH_CHALLENGE_PER_MIN=3)
    assert get_challenge(relay, "bad")[0] == 400  # counts too
    assert get_challenge(relay, purpose_for(LOCAL, 22))[0] == 200
    assert get_challenge(relay, purpose_for(LOCAL, 22))[0] == 200
    assert get_challenge(relay, purpose_for(LOCAL, 22))[0] == 429


# -- upgrade checks, in PROTOCOL order ---------------------------------------

@pytest.mark.parametrize("origin", [
    None, "http://localhost", "https://localhost:5173", "http://127.0.0.1:8080",
    "http://[::1]:3000", "HTTPS://LOCALHOST",
])
def test_loopback_origins_accepted_for_localhost(relay, sshd, origin):
    assert upgrade_status(relay, LOCAL, sshd.port, origin=origin) == 101


@pytest.mark.parametrize("origin", [
    "https://attacker.localhost", "https://localhost.evil.com", "http://127.0.0.2",
    "https://evil.com", "null",
])
def test_foreign_origins_refused(relay, sshd, origin):
    assert upgrade_status(relay, LOCAL, sshd.port, origin=origin) == 403


def test_origin_must_match_byo_domain(relay_factory, sshd):
    relay = relay_factory(BYO_DOMAIN="files.example.com")
    assert upgrade_status(relay, LOCAL, sshd.port, origin="https://files.example.com") == 101
    assert upgrade_status(relay, LOCAL, sshd.port, origin="HTTPS://Files.Example.COM") == 101
    assert upgrade_status(relay, LOCAL, sshd.port, origin="http://files.example.com") == 403
    assert upgrade_status(relay, LOCAL, sshd.port, origin="https://localhost") == 403
    assert upgrade_status(relay, LOCAL, sshd.port, origin=None) == 403


def test_upgrade_without_cookie(relay, sshd):
    assert upgrade_status(relay, LOCAL, sshd.port, cookie=None) == 401


def test_upgrade_with_tampered_cookie(relay, sshd):
    cookie = get_cookie(relay, LOCAL, sshd.port)
    head, claims, sig = cookie.split(".")
    sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    assert upgrade_status(relay, LOCAL, sshd.port, cookie=".".join([head, claims, sig])) == 401


def test_upgrade_with_cookie_of_another_relay(relay, relay_factory, sshd):
    other = relay_factory()
    cookie = get_cookie(other, LOCAL, sshd.port)
    assert upgrade_status(relay, LOCAL, sshd.port, cookie=cookie) == 401


SIGNING_KEY = bytes(range(1, 33))  # RELAY_SIGNING_KEY, given to the relay in base64


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims, key=SIGNING_KEY, alg="HS256"):
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signing_input = (head + "." + body).encode()
    sig = b64url(hmac.new(key, signing_input, hashlib.sha256).digest()) if alg == "HS256" else ""
    return head + "." + body + "." + sig


def claims_for(host, port, iat=None, ttl=600):
    iat = int(time.time()) if iat is None else iat
    return {"jti": str(uuid.uuid4()), "purpose": purpose_for(host, port),
            "iat": iat, "exp": iat + ttl}


@pytest.fixture
def keyed_relay(relay_factory):
    return relay_factory(RELAY_SIGNING_KEY=base64.b64encode(SIGNING_KEY).decode())


def test_cookie_signed_with_the_shared_key_is_accepted(keyed_relay, sshd):
    cookie = make_jwt(claims_for(LOCAL, sshd.port))
    assert upgrade_status(keyed_relay, LOCAL, sshd.port, cookie=cookie) == 101


def test_instances_sharing_a_key_accept_each_others_cookies(keyed_relay, relay_factory, sshd):
    other = relay_factory(RELAY_SIGNING_KEY=base64.b64encode(SIGNING_KEY).decode())
    cookie = get_cookie(other, LOCAL, sshd.port)
    assert upgrade_status(keyed_relay, LOCAL, sshd.port, cookie=cookie) == 101


def test_expired_cookie(keyed_relay, sshd):
    cookie = make_jwt(claims_for(LOCAL, sshd.port, iat=int(time.time()) - 700))
    assert upgrade_status(keyed_relay, LOCAL, sshd.port, cookie=cookie) == 401


def test_unsigned_cookie(keyed_relay, sshd):
    cookie = make_jwt(claims_for(LOCAL, sshd.port), alg="none")
    assert upgrade_status(keyed_relay, LOCAL, sshd.port, cookie=cookie) == 401


def test_cookie_signed_with_another_key(keyed_relay, sshd):
    cookie = make_jwt(claims_for(LOCAL, sshd.port), key=bytes(range(100, 132)))
    assert upgrade_status(keyed_relay, LOCAL, sshd.port, cookie=cookie) == 401


@pytest.mark.parametrize("query", [
    "mode=sftp&port=%(port)d", "mode=sftp&host=&port=%(port)d", "mode=sftp&host=127.0.0.1",
    "mode=sftp&host=127.0.0.1&port=0", "mode=sftp&host=127.0.0.1&port=65536",
    "mode=sftp&host=127.0.0.1&port=abc", "mode=sftp&host=127.0.0.1&port=22x",
])
def test_upgrade_bad_host_or_port(relay, sshd, query):
    cookie = get_cookie(relay, LOCAL, sshd.port)
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        connect(relay, LOCAL, sshd.port, cookie=cookie, query=query % {"port": sshd.port})
    assert e.value.status_code == 400


def test_upgrade_port_not_allowed(relay):
    assert upgrade_status(relay, LOCAL, 2023) == 403


def test_upgrade_host_allowlist(relay_factory, sshd):
    relay = relay_factory(SFTP_HOST_ALLOWLIST="*.example.com,127.0.0.1")
    assert upgrade_status(relay, LOCAL, sshd.port) == 101
    for host in ("evil.com", "example.com", "a.b.example.com", "127.0.0.2"):
        assert upgrade_status(relay, host, sshd.port) == 403, host


def test_upgrade_cookie_for_another_target(relay, sshd, sshd_kbd):
    cookie = get_cookie(relay, LOCAL, sshd_kbd.port)
    assert upgrade_status(relay, LOCAL, sshd.port, cookie=cookie) == 403


def test_upgrade_cookie_is_single_use(relay, sshd):
    cookie = get_cookie(relay, LOCAL, sshd.port)
    assert upgrade_status(relay, LOCAL, sshd.port, cookie=cookie) == 101
    assert upgrade_status(relay, LOCAL, sshd.port, cookie=cookie) == 403


@pytest.mark.parametrize("host", [
    "10.1.2.3", "192.168.1.1", "172.16.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "198.18.0.1", "192.0.2.1", "224.0.0.1", "255.255.255.255",
    "::1", "fd00::1", "fe80::1", "::ffff:10.0.0.1", "2002:a00:1::", "::",
])
def test_upgrade_blocked_target_address(relay_factory, sshd, host):
    # Own relay: many distinct targets from one IP would trip the spray block.
    relay = relay_factory()
    assert upgrade_status(relay, host, sshd.port) == 403
