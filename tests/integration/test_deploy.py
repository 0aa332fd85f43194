"""Deployment (issue "Deployment" items 2-5, 8): the settings example, the
systemd unit, deploy/install.sh, the relay behind the example Caddy and
nginx configurations, and the log format under journald.

The proxy tests run the real deploy/*.example files, changed only where a
test must differ from production (ports, paths, a test certificate), so an
example that stops working fails here."""

import json
import os
import re
import shutil
import signal
import stat
import subprocess

import pytest

from helpers import pattern, wait_until
from relay import relay_binary
from sshd import free_port, wait_for_port
from tlsutil import HttpsEndpoint, TestPKI, tls_socket
from waits import relay_connections

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ENV_EXAMPLE = os.path.join(REPO, "wattcloud.env.example")
UNIT = os.path.join(REPO, "systemd", "wattcloud-relay.service")
INSTALL = os.path.join(REPO, "deploy", "install.sh")
CADDYFILE = os.path.join(REPO, "deploy", "Caddyfile.example")
NGINX_CONF = os.path.join(REPO, "deploy", "nginx.conf.example")

CLIENT_ADDR = "127.0.0.2"  # the "public" client, distinct from the proxy's 127.0.0.1
SPOOFED_XFF = "203.0.113.7"
ATTACKER_ADDR = "127.0.0.3"
CONN_LIMIT_PER_CLIENT = 64  # conn_limit.h
INDEX = b"<!doctype html><title>Wattcloud via proxy</title>\n"


def run(argv, env=None, timeout=60, **kw):
    return subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout, **kw)


# -- the settings table, from the relay itself -------------------------------

def relay_settings():
    """[(name, help, default)] parsed from `wattcloud-relay --help`; default
    is "" for "(unset)" and "(empty)"."""
    out = run([relay_binary(), "--help"]).stdout.decode()
    found = re.findall(r"^  ([A-Z][A-Z0-9_]+) +(.*)\n +default: (.*)$", out, re.M)
    assert len(found) >= 20, "cannot parse the settings from --help:\n" + out
    return [(n, h.strip(), "" if d in ("(unset)", "(empty)") else d) for n, h, d in found]


def example_text():
    with open(ENV_EXAMPLE) as f:
        return f.read()


def test_env_example_documents_every_setting():
    text = example_text()
    for name, help_text, default in relay_settings():
        assert "# %s: %s\n" % (name, help_text) in text, \
            "wattcloud.env.example lacks the line '# %s: %s'" % (name, help_text)
        lines = re.findall(r"^#%s=(.*)$" % name, text, re.M)
        assert lines == [default], \
            "wattcloud.env.example should have exactly '#%s=%s', found %r" % (
                name, default, lines)


def test_env_example_names_only_real_settings():
    names = {n for n, _, _ in relay_settings()}
    in_example = set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]+)=", example_text(), re.M))
    assert in_example <= names, "not settings of the relay: %s" % sorted(in_example - names)
    # Everything is commented out: the example changes no default.
    assert not re.search(r"^[A-Z]", example_text(), re.M)


def test_env_example_defaults_are_valid(tmp_path):
    """Uncommented as it is, the example is a valid env file."""
    uncommented = re.sub(r"^#([A-Z][A-Z0-9_]+=)", r"\1", example_text(), flags=re.M)
    path = tmp_path / "all-defaults.env"
    path.write_text(uncommented)
    res = run([relay_binary(), "--env-file", str(path), "--check-config"], env={})
    assert res.returncode == 0, res.stdout


# -- systemd unit ------------------------------------------------------------

def unit_directives():
    out = {}
    with open(UNIT) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", ";", "[")):
                key, _, value = line.partition("=")
                out.setdefault(key, []).append(value)
    return out


def test_unit_hardening_directives():
    d = unit_directives()
    expected = {
        "EnvironmentFile": "/etc/wattcloud/wattcloud.env",
        "ExecStart": "/usr/local/bin/wattcloud-relay",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallArchitectures": "native", "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "", "AmbientCapabilities": "", "LimitCORE": "0",
        "LockPersonality": "yes", "RestrictRealtime": "yes", "RestrictNamespaces": "yes",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes",
        "ProtectHostname": "yes", "ProtectProc": "invisible", "ProcSubset": "pid",
        "UMask": "0077", "KillSignal": "SIGTERM", "Restart": "on-failure",
    }
    for key, value in expected.items():
        assert d.get(key, [None])[0] == value, (key, d.get(key))
    assert "@system-service" in d["SystemCallFilter"]
    for key in ("StateDirectory", "RuntimeDirectory", "CacheDirectory", "LogsDirectory"):
        assert key not in d, key
    # lws sizes fd tables from the limit: bounded, and enough for the
    # default MAX_SESSIONS (2 per session + 64).
    nofile = d["LimitNOFILE"][0]
    assert nofile.isdigit() and 2 * 512 + 64 <= int(nofile) <= 1 << 20, nofile
    # The stop timeout covers the drain: grace (default) + 5 s cut + margin.
    grace = int(dict((n, v) for n, _, v in relay_settings())["SHUTDOWN_GRACE_SECS"])
    assert int(d["TimeoutStopSec"][0].rstrip("s")) >= grace + 10


def systemd_analyze():
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (scripts/deps.sh --test installs "
                    "the systemd package)")
    return path


def test_unit_verifies_and_scores_ok(tmp_path):
    analyze = systemd_analyze()
    # verify insists that ExecStart exists: point it at the binary under test.
    with open(UNIT) as f:
        text = f.read()
    unit = tmp_path / "wattcloud-relay.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/wattcloud-relay",
                                 "ExecStart=" + relay_binary()))
    res = run([analyze, "verify", str(unit)])
    assert res.returncode == 0 and res.stdout == b"", res.stdout.decode()
    # No running manager needed: --offline scores the file as written.
    res = run([analyze, "security", "--offline=true", "--no-pager", str(unit)])
    out = res.stdout.decode()
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", out)
    assert m, out
    assert float(m.group(1)) < 2.0 and m.group(2) in ("SAFE", "OK"), m.group(0)


# -- install.sh --------------------------------------------------------------

def install(root, *args):
    return run(["bash", INSTALL, "--root", str(root), "--binary", relay_binary()] + list(args))


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_install_into_root(tmp_path):
    root = tmp_path / "root"
    res = install(root, "--domain", "files.example.com")
    assert res.returncode == 0, res.stdout.decode()
    binary = root / "usr/local/bin/wattcloud-relay"
    unit = root / "etc/systemd/system/wattcloud-relay.service"
    env = root / "etc/wattcloud/wattcloud.env"
    assert mode(binary) == 0o755 and mode(unit) == 0o644 and mode(env) == 0o600
    assert binary.read_bytes() == open(relay_binary(), "rb").read()
    assert unit.read_text() == open(UNIT).read()
    # The manual page, as the binary prints it.
    man = root / "usr/local/share/man/man8/wattcloud-relay.8"
    assert mode(man) == 0o644
    assert man.read_bytes() == run([relay_binary(), "--man"]).stdout
    assert man.read_bytes().startswith(b".TH WATTCLOUD-RELAY 8 ")
    text = env.read_text()
    keys = re.findall(r"^RELAY_SIGNING_KEY=(.*)$", text, re.M)
    assert len(keys) == 1 and re.fullmatch(r"[A-Za-z0-9+/]{43}=", keys[0]), keys
    assert re.search(r"^TRUSTED_PROXY_IPS=127\.0\.0\.1$", text, re.M)
    assert re.search(r"^BYO_DOMAIN=files\.example\.com$", text, re.M)
    # The rest is the example, untouched.
    assert text.count("\n") == example_text().count("\n")
    res = run([str(binary), "--env-file", str(env), "--check-config"], env={})
    assert res.returncode == 0, res.stdout
    assert not [p for p in os.listdir(root / "etc/wattcloud") if p.startswith(".")]

    # Re-run: same files, and the key (the operator's file) is kept.
    env.write_text(text + "LOG_LEVEL=debug\n")
    res = install(root)
    assert res.returncode == 0, res.stdout.decode()
    assert b"kept existing" in res.stdout and b"unchanged" in res.stdout
    assert env.read_text() == text + "LOG_LEVEL=debug\n"
    assert mode(env) == 0o600


def test_install_keys_differ_between_installs(tmp_path):
    keys = []
    for n in range(2):
        assert install(tmp_path / str(n)).returncode == 0
        text = (tmp_path / str(n) / "etc/wattcloud/wattcloud.env").read_text()
        keys += re.findall(r"^RELAY_SIGNING_KEY=(.*)$", text, re.M)
    assert len(keys) == 2 and keys[0] != keys[1]


def test_install_dry_run_changes_nothing(tmp_path):
    root = tmp_path / "root"
    res = install(root, "--dry-run")
    assert res.returncode == 0, res.stdout.decode()
    assert b"would" in res.stdout
    assert not root.exists()


def test_install_rejects_bad_arguments(tmp_path):
    assert run(["bash", INSTALL, "--bogus"]).returncode == 2
    assert install(tmp_path / "r", "--domain", "bad domain;rm").returncode != 0
    assert not (tmp_path / "r").exists()


# -- logs --------------------------------------------------------------------

def test_log_lines_carry_syslog_priority_under_journald(relay_factory):
    relay = relay_factory(JOURNAL_STREAM="8:12345", LOG_LEVEL="info")
    relay.http("GET", "/health")
    relay.stop_and_check()
    lines = relay.log_text().splitlines()
    assert lines and all(re.match(r"<[3467]>\S", line) for line in lines), lines[:5]
    assert any(line.startswith("<6>setting BIND_ADDR=") for line in lines), lines[:5]


def test_log_lines_have_time_and_level_without_journald(relay_factory):
    relay = relay_factory(LOG_LEVEL="info")
    relay.stop_and_check()
    for line in relay.log_text().splitlines():
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (error|warn|info|debug) ",
                        line), line


# -- behind a reverse proxy --------------------------------------------------

@pytest.fixture(scope="module")
def proxy_pki(run_dir):
    return TestPKI(os.path.join(run_dir, "pki-proxy"))


def substitute(text, replacements):
    """Apply (old, new) replacements, each of which must match: a change in
    the example that a test relies on must fail loudly, not silently."""
    for old, new in replacements:
        assert old in text, "the example no longer contains %r" % old
        text = text.replace(old, new)
    return text


class Proxy:
    def __init__(self, name, argv, env, port, workdir, access_log):
        self.name = name
        self.port = port
        self.access_log = access_log
        self.log_path = os.path.join(workdir, name + ".log")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log,
                                     start_new_session=True)
        try:
            wait_for_port(port, timeout=15, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError("%s did not start:\n%s" % (name, self.log()))

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def start_caddy(workdir, relay_port, spa, chain, key):
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy is not installed (scripts/deps.sh --test installs it)")
    port, http_port = free_port(), free_port()
    access_log = os.path.join(workdir, "caddy-access.log")
    with open(CADDYFILE) as f:
        text = f.read()
    text = substitute(text, [
        # Global options of a test: no admin API, nothing on :80, state in
        # the test's directory, nothing added to the system trust store.
        ("{\n\temail admin@example.com\n}",
         "{\n\tadmin off\n\tauto_https disable_redirects\n\tskip_install_trust\n"
         "\thttp_port %d\n\thttps_port %d\n\tstorage file_system %s\n}"
         % (http_port, port, os.path.join(workdir, "caddy-data"))),
        ("app.example.com {",
         "https://localhost:%d {\n\tbind 127.0.0.1\n\ttls %s %s" % (port, chain, key)),
        ("/var/log/caddy/wattcloud-access.log", access_log),
        ("/var/www/wattcloud", spa),
        ("127.0.0.1:8443", "127.0.0.1:%d" % relay_port),
    ])
    conf = os.path.join(workdir, "Caddyfile")
    with open(conf, "w") as f:
        f.write(text)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": workdir,
           "XDG_DATA_HOME": os.path.join(workdir, "xdg-data"),
           "XDG_CONFIG_HOME": os.path.join(workdir, "xdg-config")}
    res = run([caddy, "validate", "--config", conf, "--adapter", "caddyfile"], env=env)
    assert res.returncode == 0, res.stdout.decode()
    return Proxy("caddy", [caddy, "run", "--config", conf, "--adapter", "caddyfile"],
                 env, port, workdir, access_log)


def start_nginx(workdir, relay_port, spa, chain, key):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if nginx is None:
        pytest.skip("nginx is not installed (scripts/deps.sh --test installs it)")
    port, http_port = free_port(), free_port()
    access_log = os.path.join(workdir, "nginx-access.log")
    with open(NGINX_CONF) as f:
        snippet = f.read()
    snippet = substitute(snippet, [
        ("    listen 80;\n    listen [::]:80;\n", "    listen 127.0.0.1:%d;\n" % http_port),
        ("    listen 443 ssl http2;\n    listen [::]:443 ssl http2;\n",
         "    listen 127.0.0.1:%d ssl http2;\n" % port),
        ("/etc/letsencrypt/live/app.example.com/fullchain.pem", chain),
        ("/etc/letsencrypt/live/app.example.com/privkey.pem", key),
        ("/var/log/nginx/wattcloud-access.log", access_log),
        ("/var/www/wattcloud", spa),
        ("127.0.0.1:8443", "127.0.0.1:%d" % relay_port),
    ])
    temp = os.path.join(workdir, "nginx-tmp")
    os.makedirs(temp, exist_ok=True)
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        # The example is an http{} snippet (conf.d); this is the rest of a
        # minimal nginx.conf around it.
        f.write("daemon off;\nworker_processes 1;\nuser root root;\npid %s/nginx.pid;\n"
                "error_log %s/nginx-error.log info;\nevents { worker_connections 512; }\n"
                "http {\n    include /etc/nginx/mime.types;\n"
                "    default_type application/octet-stream;\n    access_log off;\n"
                "    client_body_temp_path %s/body;\n    proxy_temp_path %s/proxy;\n"
                "    fastcgi_temp_path %s/fastcgi;\n    uwsgi_temp_path %s/uwsgi;\n"
                "    scgi_temp_path %s/scgi;\n%s\n}\n"
                % (workdir, workdir, temp, temp, temp, temp, temp, snippet))
    res = run([nginx, "-t", "-c", conf, "-p", workdir])
    assert res.returncode == 0, res.stdout.decode()
    return Proxy("nginx", [nginx, "-c", conf, "-p", workdir], None, port, workdir,
                 access_log)


@pytest.fixture(params=["caddy", "nginx"])
def proxied(request, relay_factory, run_dir, proxy_pki):
    """(relay, proxy, endpoint): a relay on the loopback trusting 127.0.0.1,
    behind the example proxy config, and a client on 127.0.0.2."""
    name = request.param
    workdir = os.path.join(run_dir, "proxy-%s-%s" % (name, os.urandom(3).hex()))
    spa = os.path.join(workdir, "www")
    os.makedirs(spa)
    os.chmod(workdir, 0o755)
    with open(os.path.join(spa, "index.html"), "wb") as f:
        f.write(INDEX)
    chain, key = proxy_pki.server_cert("proxy-" + name)
    relay = relay_factory(TRUSTED_PROXY_IPS="127.0.0.1")
    starter = start_caddy if name == "caddy" else start_nginx
    proxy = starter(workdir, relay.port, spa, chain, key)
    try:
        yield relay, proxy, HttpsEndpoint(proxy.port, proxy_pki.client_context(),
                                          source=CLIENT_ADDR)
    finally:
        proxy.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print("---- %s log ----\n%s" % (name, proxy.log()))


def test_session_through_proxy_sees_forwarded_client_ip(proxied, sshd, workdir):
    relay, proxy, endpoint = proxied
    mark = relay.log_size()
    # A client-supplied X-Forwarded-For must be replaced, not appended to.
    s = endpoint.login(sshd, extra_headers=["X-Forwarded-For: " + SPOOFED_XFF])
    try:
        assert s.ok("stat", path="/")["isDir"] is True
        data = pattern(2 * 1024 * 1024 + 3, seed=11)
        path = os.path.join(workdir, "via-%s.bin" % proxy.name)
        s.upload(path, data, chunk=1024 * 1024)
        assert s.download(path) == data
    finally:
        s.close()
    log = relay.log_since(mark)
    starts = re.findall(r"session \S+ start: client=(\S+)", log)
    assert starts == [CLIENT_ADDR], log
    assert SPOOFED_XFF not in log


def test_health_ready_and_metrics_not_public(proxied):
    relay, _, endpoint = proxied
    for path in ("/health", "/ready", "/metrics", "/metrics?x=1", "/relay/../metrics"):
        status, _, body = endpoint.http("GET", path)
        assert status == 404 and b"ok" not in body and b"ready" not in body, (path, status)
        assert b"wattcloud_relay" not in body, path
    assert relay.http("GET", "/ready")[0] == 200  # still there on the loopback
    assert relay.http("GET", "/metrics")[0] == 200


def test_app_served_by_proxy_with_headers(proxied):
    _, _, endpoint = proxied
    for path in ("/", "/some/app/route"):
        status, headers, body = endpoint.http("GET", path)
        h = {k.lower(): v for k, v in headers}
        assert status == 200 and body == INDEX, (path, status)
        assert "'wasm-unsafe-eval'" in h["content-security-policy"]
        assert "frame-ancestors 'none'" in h["content-security-policy"]
        assert h["x-content-type-options"] == "nosniff"
        assert h["strict-transport-security"].startswith("max-age=")


def test_access_log_has_client_ip_not_cookies(proxied, sshd):
    _, proxy, endpoint = proxied
    endpoint.login(sshd).close()
    endpoint.http("GET", "/some/app/route")

    def logged():
        try:
            with open(proxy.access_log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # A proxy writes a request's line once it is done with it: wait for
    # both, the app route's too (the WebSocket's line may come first).
    assert wait_until(lambda: "/relay/ws" in logged() and "/some/app/route" in logged(), 5), \
        logged()
    text = logged()
    assert CLIENT_ADDR in text
    assert "relay_auth_sftp" not in text and "eyJ" not in text  # cookie name, JWT
    assert "host=127.0.0.1" not in text and "port=%d" % sshd.port not in text
    assert "/some/app/route" in text  # the path asked for, not the file served
    if proxy.name == "caddy":
        for line in text.splitlines():
            entry = json.loads(line)
            assert "Cookie" not in entry["request"]["headers"]
            assert "Set-Cookie" not in entry.get("resp_headers", {})


def test_one_client_holding_requests_does_not_lock_out_the_others(proxied, proxy_pki):
    """Behind a proxy every client reaches the relay from the proxy's
    address, and the relay capped unupgraded connections per TCP peer: one
    client holding 70 cookie answers with unfinished bodies (both example
    proxies stream request bodies) took all CONN_LIMIT_PER_CLIENT, and every
    other user got 502 until the relay cut them 5 s later, when the client
    opened them again. A trusted proxy is not capped (its own limits and
    the relay's table bound it)."""
    relay, proxy, endpoint = proxied
    purpose = "sftp:" + "0" * 32
    held = []
    try:
        for _ in range(CONN_LIMIT_PER_CLIENT + 6):
            s = tls_socket(proxy.port, proxy_pki.client_context(), source=ATTACKER_ADDR)
            s.sendall(b"POST /relay/auth HTTP/1.1\r\nHost: localhost\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            held.append(s)
        assert wait_until(lambda: relay_connections(relay) >= CONN_LIMIT_PER_CLIENT, 10), \
            relay_connections(relay)
        statuses = [endpoint.http("GET", "/relay/auth/challenge?purpose=" + purpose)[0]
                    for _ in range(5)]
        assert statuses == [200] * 5, statuses
    finally:
        for s in held:
            s.close()
