"""GET /metrics (issue 16): the exposition parses with the Prometheus
client library's own parser, every counter moves by exactly what a session
did, no label carries a client address, user, host or path, clients outside
METRICS_ALLOW get 403 (as the TCP peer and as the client a trusted proxy
reports), and the deploy/ examples (Grafana dashboard, Prometheus scrape
job) name only metrics a scrape has."""

import http.client
import json
import os
import re

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from helpers import login, pattern, wait_until
from sshd import TEST_USER
from wsclient import connect, get_challenge, get_cookie, open_session, post_answer

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DASHBOARD = os.path.join(REPO, "deploy", "grafana-dashboard.json")
SCRAPE_JOB = os.path.join(REPO, "deploy", "prometheus-scrape.yml.example")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# relay/metrics.h METRICS_BODY_MAX: a scrape with every series must fit.
METRICS_BODY_MAX = 256 * 1024
P = "wattcloud_relay_"


class Scrape:
    """One parsed scrape: samples by (name, labels), families by name."""

    def __init__(self, text):
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {}
        for fam in self.families.values():
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                assert key not in self.samples, "duplicate series %r" % (key,)
                self.samples[key] = s.value

    def get(self, name, **labels):
        key = (name, tuple(sorted(labels.items())))
        assert key in self.samples, "no series %s%r in the scrape" % (name, labels)
        return self.samples[key]

    def sample_names(self):
        return {name for name, _ in self.samples}


def http_get(port, path, source="127.0.0.1", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5,
                                      source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def scrape(relay):
    status, headers, body = http_get(relay.port, "/metrics")
    assert status == 200, (status, body)
    assert headers["Content-Type"] == CONTENT_TYPE
    assert len(body) < METRICS_BODY_MAX
    return Scrape(body.decode())


class CountingSession:
    """Counts the WebSocket payload bytes a session sends and receives, as
    the relay's byte counters must."""

    def __init__(self, session):
        self.s = session
        self.sent = 0
        self.received = 0
        ws = session.ws
        real_send, real_recv = ws.send, ws.recv_data

        def send(data, opcode=None, **kw):
            if opcode in (1, 2):  # text, binary; not the close or a pong
                self.sent += len(data.encode() if isinstance(data, str) else data)
            return real_send(data, opcode=opcode, **kw)

        def recv_data(control_frame=False):
            opcode, data = real_recv(control_frame=control_frame)
            if opcode in (1, 2):  # text, binary
                self.received += len(data)
            return opcode, data

        ws.send, ws.recv_data = send, recv_data


def delta(after, before, name, **labels):
    return after.get(name, **labels) - before.get(name, **labels)


def test_counters_move_by_what_a_session_did(relay_factory, sshd, workdir, client_keys):
    relay = relay_factory()
    host, port = "127.0.0.1", sshd.port
    before = scrape(relay)

    s = open_session(relay, host, port)
    s.expect_host_key()
    during_hostkey = scrape(relay)
    assert delta(during_hostkey, before, P + "sessions", phase="wait_host_key") == 1
    s.accept_host_key()
    assert s.auth_password(TEST_USER, "wrong password")["error"] == "authentication failed"
    assert s.expect_closed() == []
    wait_until(lambda: delta(scrape(relay), before, P + "sessions_ended_total",
                             reason="auth_failed") == 1, 10)

    s = open_session(relay, host, port)
    s.expect_host_key()
    s.accept_host_key()
    assert s.auth_key(TEST_USER, client_keys.pem("ed25519")) == {"id": 1, "result": {}}
    assert s.ok("stat", path=workdir)["isDir"] is True
    missing = s.call("stat", path=os.path.join(workdir, "missing"))
    assert missing["code"] == "not_found", missing
    data = pattern(300 * 1024 + 5, seed=3)
    path = os.path.join(workdir, "m.bin")
    s.upload(path, data, chunk=128 * 1024)  # 3 chunks
    assert s.download(path) == data  # 2 chunks of 256 KiB at most, then the empty one
    assert s.ok("mkdir", path=os.path.join(workdir, "d")) == {}
    during = scrape(relay)
    assert delta(during, before, P + "sessions", phase="ready") == 1
    assert during.get(P + "unwritten_upload_bytes") == 0
    # libssh2's allocations for the live session: its transport buffers
    # and keys at least, far under SSH_SESSION_MEMORY_MIB.
    assert 16 * 1024 < during.get(P + "ssh_memory_bytes") < 64 * 1024 * 1024
    s.close()
    after = wait_until(lambda: (lambda a: a if delta(a, before, P + "sessions_ended_total",
                                                     reason="browser_closed") == 1 else None)(
        scrape(relay)), 10)
    assert after, "the session's end was not counted"
    # Back to nothing, even though libssh2 frees a few blocks with free().
    assert after.get(P + "ssh_memory_bytes") == 0

    # Two cookies, two challenges; both sessions got a host key.
    assert delta(after, before, P + "challenges_issued_total") == 2
    assert delta(after, before, P + "cookies_issued_total") == 2
    assert delta(after, before, P + "ssh_connect_duration_seconds_count") == 2
    assert delta(after, before, P + "ssh_auth_total", method="password",
                 result="auth_failed") == 1
    assert delta(after, before, P + "ssh_auth_total", method="publickey", result="ok") == 1
    for phase in ("connecting", "wait_host_key", "wait_auth", "ready", "closing"):
        assert after.get(P + "sessions", phase=phase) == before.get(P + "sessions", phase=phase)
    # Exactly the verbs the session ran, each with its outcome and a latency.
    expected = {("stat", "ok"): 1, ("stat", "not_found"): 1, ("write_open", "ok"): 1,
                ("write_chunk", "ok"): 3, ("write_close", "ok"): 1, ("read_open", "ok"): 1,
                ("read_chunk", "ok"): 3, ("read_close", "ok"): 1, ("mkdir", "ok"): 1}
    for (name, labels), value in after.samples.items():
        if name == P + "sftp_ops_total":
            lab = dict(labels)
            want = expected.get((lab["verb"], lab["outcome"]), 0)
            assert value - before.get(name, **lab) == want, (lab, value)
    for verb in {v for v, _ in expected}:
        ops = sum(n for (v, _), n in expected.items() if v == verb)
        assert delta(after, before, P + "sftp_op_duration_seconds_count", verb=verb) == ops
        assert delta(after, before, P + "sftp_op_duration_seconds_bucket", verb=verb,
                     le="+Inf") == ops
    # Nothing may come from the browser before the host key is accepted.
    assert delta(during_hostkey, before, P + "bytes_from_browser_total") == 0


def test_bytes_counted_exactly(relay_factory, sshd, workdir):
    relay = relay_factory()
    s = login(relay, sshd)
    try:
        before = scrape(relay)
        c = CountingSession(s)
        data = pattern(200 * 1024 + 7, seed=5)
        path = os.path.join(workdir, "bytes.bin")
        s.upload(path, data, chunk=64 * 1024)
        assert s.download(path) == data
        assert s.call("stat", path="/nonexistent-dir/x")["code"] == "not_found"
        after = scrape(relay)
    finally:
        s.close()
    assert delta(after, before, P + "bytes_from_browser_total") == c.sent
    assert delta(after, before, P + "bytes_to_browser_total") == c.received
    assert c.sent > len(data) and c.received > len(data)


def test_refusals_counted_by_status_and_reason(relay_factory, sshd):
    relay = relay_factory()
    host, port = "127.0.0.1", sshd.port
    before = scrape(relay)
    # No cookie: 401, an invalid cookie at the gate.
    with pytest.raises(Exception) as e:
        connect(relay, host, port, cookie=None)
    assert getattr(e.value, "status_code", None) == 401
    # A cookie used twice: 403, reused.
    cookie = get_cookie(relay, host, port)
    connect(relay, host, port, cookie=cookie).close()
    with pytest.raises(Exception) as e:
        connect(relay, host, port, cookie=cookie)
    assert getattr(e.value, "status_code", None) == 403
    # A cookie for another port: 403, wrong target.
    other = get_cookie(relay, host, port + 1 if port < 65535 else port - 1)
    with pytest.raises(Exception) as e:
        connect(relay, host, port, cookie=other)
    assert getattr(e.value, "status_code", None) == 403
    # POST /relay/auth: a malformed body, an unknown challenge, too little work.
    assert post_answer(relay, None, None, raw_body=b"{}")[0] == 400
    assert post_answer(relay, "no-such-challenge", 1)[0] == 400
    status, ch = get_challenge(relay, "sftp:" + "0" * 32)
    assert status == 200
    bad = next(a for a in range(1000) if not _pow_ok(ch, "sftp:" + "0" * 32, a))
    assert post_answer(relay, ch["nonce_id"], bad)[0] == 403
    after = scrape(relay)
    assert delta(after, before, P + "upgrades_refused_total", status="401") == 1
    assert delta(after, before, P + "upgrades_refused_total", status="403") == 2
    assert delta(after, before, P + "cookies_refused_total", reason="invalid_or_expired") == 1
    assert delta(after, before, P + "cookies_refused_total", reason="reused") == 1
    assert delta(after, before, P + "cookies_refused_total", reason="wrong_target") == 1
    assert delta(after, before, P + "cookie_requests_refused_total", reason="malformed") == 1
    assert delta(after, before, P + "cookie_requests_refused_total",
                 reason="unknown_challenge") == 1
    assert delta(after, before, P + "cookie_requests_refused_total",
                 reason="insufficient_work") == 1
    assert delta(after, before, P + "challenges_issued_total") == 3
    assert delta(after, before, P + "cookies_issued_total") == 2


def _pow_ok(ch, purpose, answer):
    from wsclient import pow_ok
    return pow_ok(ch["nonce"], purpose, answer, ch["difficulty"])


def test_labels_identify_nobody_and_series_are_fixed(relay_factory, sshd, workdir):
    relay = relay_factory()
    before = scrape(relay)
    s = login(relay, sshd)
    try:
        s.ok("stat", path=workdir)
        during = scrape(relay)
    finally:
        s.close()
    assert set(during.samples) == set(before.samples), \
        "series appeared or vanished: %r" % (set(during.samples) ^ set(before.samples))
    forbidden = ["127.0.0.1", str(sshd.port), TEST_USER, workdir, "localhost"]
    for name, labels in during.samples:
        for key, value in labels:
            if name == P + "build_info":
                continue  # versions of the relay and its libraries
            for word in forbidden:
                assert word not in value, (name, key, value)
    info = during.get(P + "build_info", **dict(next(
        l for n, l in during.samples if n == P + "build_info")))
    assert info == 1
    labels = dict(next(l for n, l in during.samples if n == P + "build_info"))
    assert set(labels) == {"version", "libssh2", "libwebsockets", "openssl"}
    assert re.match(r"^\d+\.\d+", labels["libssh2"]) and labels["openssl"].startswith("OpenSSL")
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "process_max_fds", "process_start_time_seconds",
                 "process_virtual_memory_bytes"):
        assert during.get(name) > 0, name
    assert during.families[P + "sftp_op_duration_seconds"].type == "histogram"
    assert during.families[P + "sessions"].type == "gauge"
    assert during.families[P + "sessions_ended"].type == "counter"


def test_client_outside_metrics_allow_gets_403(relay_factory):
    """The TCP peer decides without a trusted proxy: 127.0.0.2 is outside
    METRICS_ALLOW=127.0.0.1/32 (Linux routes all of 127/8 to lo)."""
    relay = relay_factory(METRICS_ALLOW="127.0.0.1/32")
    status, _, body = http_get(relay.port, "/metrics", source="127.0.0.2")
    assert status == 403 and body == b"Forbidden: not in METRICS_ALLOW\n", (status, body)
    assert b"wattcloud_relay" not in body
    status, _, _ = http_get(relay.port, "/metrics", source="127.0.0.1")
    assert status == 200


def test_forwarded_public_client_gets_403(relay_factory):
    """Behind a trusted proxy the client it reports decides, not the proxy:
    a proxy that passed /metrics on would otherwise publish it as a loopback
    client (default METRICS_ALLOW)."""
    relay = relay_factory(TRUSTED_PROXY_IPS="127.0.0.1")
    status, _, body = http_get(relay.port, "/metrics",
                               headers={"X-Forwarded-For": "203.0.113.9"})
    assert status == 403 and body == b"Forbidden: not in METRICS_ALLOW\n", (status, body)
    status, _, _ = http_get(relay.port, "/metrics")
    assert status == 200


def test_only_get(relay_factory):
    relay = relay_factory()
    status, headers, body = relay.http("POST", "/metrics", body=b"")
    assert status == 405 and ("Allow", "GET") in headers, (status, headers, body)


# -- deploy/ ------------------------------------------------------------------

def dashboard_metric_names():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dash)
    assert len(exprs) >= 5, exprs
    names = set()
    for e in exprs:
        # Metric names: identifiers not followed by "(" (functions) and not
        # PromQL keywords or label names inside {} / by ().
        stripped = re.sub(r"\{[^}]*\}", "", e)
        stripped = re.sub(r"\b(by|without)\s*\([^)]*\)", "", stripped)
        for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", stripped):
            word = m.group(1)
            if word in ("sum", "rate", "increase", "histogram_quantile", "le", "by",
                        "irate", "avg", "max", "min", "without", "time"):
                continue
            if re.match(r"^\d", word):
                continue
            names.add(word)
    return dash, names


def test_dashboard_queries_exist_in_a_scrape(relay_factory):
    relay = relay_factory()
    dash, names = dashboard_metric_names()
    assert dash.get("title") and dash.get("panels"), "not a Grafana dashboard"
    have = scrape(relay).sample_names()
    missing = sorted(n for n in names if n not in have)
    assert not missing, "the dashboard queries metrics the relay does not have: %r" % missing
    for want in (P + "sessions", P + "bytes_to_browser_total", P + "ssh_auth_total",
                 P + "upgrades_refused_total", P + "sftp_op_duration_seconds_bucket"):
        assert want in names, "the dashboard should show %s" % want


def test_scrape_job_example(relay_factory):
    relay = relay_factory()
    with open(SCRAPE_JOB) as f:
        conf = yaml.safe_load(f)
    jobs = conf["scrape_configs"]
    job = next(j for j in jobs if j["job_name"] == "wattcloud-relay")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = job["static_configs"][0]["targets"]
    assert targets == ["127.0.0.1:8443"]  # the relay's default BIND_ADDR, on the loopback
    # What Prometheus would fetch, from this relay's port.
    status, headers, _ = http_get(relay.port, job.get("metrics_path", "/metrics"))
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE


def test_ssh_memory_returns_to_zero_after_logins_with_every_key_type(relay_factory, sshd,
                                                                     client_keys):
    """ssh_memory_bytes counts what libssh2 allocates through the relay's
    hooks. libssh2 frees a few of those blocks with free() (the public key
    it derives from an ECDSA private key), which the hooks never see; a
    session's end takes whatever is left of its count out of the total, so
    the gauge does not creep up login after login."""
    relay = relay_factory()
    for name in client_keys.names():
        s = open_session(relay, "127.0.0.1", sshd.port)
        s.expect_host_key()
        s.accept_host_key()
        assert s.auth_key(TEST_USER, client_keys.pem(name), client_keys.passphrase(name)) == \
            {"id": 1, "result": {}}, name
        assert scrape(relay).get(P + "ssh_memory_bytes") > 16 * 1024
        s.close()
    assert wait_until(lambda: scrape(relay).get(P + "sessions", phase="ready") == 0
                      and scrape(relay).get(P + "sessions", phase="closing") == 0, 10)
    assert scrape(relay).get(P + "ssh_memory_bytes") == 0
