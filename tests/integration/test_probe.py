"""`wattcloud-relay probe` (issue 16) against the test sshd and fake servers:
each outcome (port not allowed, blocked target, refused, not SSH, every
login failure, success with each key type and with a password) with its
exit status, failing step and the relay's own messages; the host key
fingerprints as ssh-keygen prints them; the SFTP checks (extensions, free
space, a probe file created and removed); no secret in the output; runs
without root and without a daemon."""

import glob
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import pytest

from fakeservers import closed_port, http_server
from relay import relay_binary
from sshd import KEY_PASSPHRASE, SSH_KEYGEN, TEST_PASSWORD, TEST_USER

NOBODY = 65534


def probe(target, *args, env=None, user=None, timeout=60):
    """Run the probe; returns (exit status, stdout text, stderr text)."""
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    full_env.update(env or {})
    kw = {}
    if user is not None:
        kw["preexec_fn"] = lambda: (os.setgroups([]), os.setgid(user), os.setuid(user))
    res = subprocess.run([relay_binary(), "probe", target] + list(args), env=full_env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=timeout, start_new_session=True, **kw)
    return res.returncode, res.stdout.decode(), res.stderr.decode()


def probe_json(target, *args, **kw):
    rc, out, err = probe(target, "--json", *args, **kw)
    try:
        report = json.loads(out)
    except ValueError:
        raise AssertionError("probe --json printed no JSON (exit %d):\n%s\n%s" % (rc, out, err))
    assert report["ok"] is (rc == 0), (rc, report)
    return rc, report


def settings(port, **extra):
    env = {"SFTP_ALLOW_PRIVATE_CIDRS": "127.0.0.0/8", "SFTP_ALLOWED_PORTS": str(port)}
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def secrets_dir(tmp_path):
    os.chmod(tmp_path, 0o755)
    return tmp_path


def secret_file(directory, name, text):
    path = os.path.join(str(directory), name)
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)
    return path


def assert_no_secret(*texts):
    for text in texts:
        for secret in (TEST_PASSWORD, KEY_PASSPHRASE, "PRIVATE KEY", "wrong-pass-9"):
            assert secret not in text, "the probe printed a secret"


# -- before SSH ---------------------------------------------------------------

def test_port_not_allowed_names_the_setting(sshd):
    rc, report = probe_json("127.0.0.1:%d" % sshd.port, env=settings(22))
    assert rc == 1 and report["failed_step"] == "settings", report
    assert report["allow_with"] == "SFTP_ALLOWED_PORTS"
    assert report["error"] == ("port %d is not in SFTP_ALLOWED_PORTS=22; add it there to "
                               "allow it" % sshd.port)
    assert "connect" not in report


def test_host_not_in_allowlist(sshd):
    rc, report = probe_json("127.0.0.1:%d" % sshd.port,
                            env=settings(sshd.port, SFTP_HOST_ALLOWLIST="*.example.com"))
    assert rc == 1 and report["failed_step"] == "settings", report
    assert report["allow_with"] == "SFTP_HOST_ALLOWLIST"


def test_blocked_target_says_which_setting_allows_it(sshd):
    env = settings(sshd.port)
    del env["SFTP_ALLOW_PRIVATE_CIDRS"]
    rc, report = probe_json("localhost:%d" % sshd.port, env=env)
    assert rc == 1 and report["failed_step"] == "resolve", report
    assert report["error_code"] == "blocked_target"
    res = report["resolve"]
    assert res["verdict"] == "blocked"
    assert {"address": "127.0.0.1", "blocked": True} in res["addresses"]
    assert res["allow_with"].startswith("SFTP_ALLOW_PRIVATE_CIDRS=")
    assert "127.0.0.1/32" in res["allow_with"]
    assert "localhost: blocked address" in report["error"]
    assert "connect" not in report  # never connected
    # The text report says the same.
    rc, out, _ = probe("127.0.0.1:%d" % sshd.port, env=env)
    assert rc == 1
    assert "SFTP_ALLOW_PRIVATE_CIDRS: 127.0.0.1/32" in out
    assert 'FAILED at step "resolve"' in out


def test_refused():
    port = closed_port()
    rc, report = probe_json("127.0.0.1:%d" % port, env=settings(port))
    assert rc == 1 and report["failed_step"] == "connect", report
    assert report["error_code"] == "connect_failed"
    assert report["error"] == "connection failed: Connection refused"
    assert report["resolve"]["pinned"] == "127.0.0.1"


def test_not_ssh():
    server = http_server()
    try:
        rc, report = probe_json("127.0.0.1:%d" % server.port, env=settings(server.port))
    finally:
        server.close()
    assert rc == 1 and report["failed_step"] == "connect", report
    assert report["error_code"] == "not_ssh"
    assert report["error"] == "the server is not an SSH server"


def test_bad_arguments():
    for args in ([], ["--key", "k"], ["h", "--key", "k"], ["h", "--path", "/"],
                 ["h", "--user", "u", "--key", "k", "--password-file", "p"], ["h", "--bogus"],
                 ["h:70000"]):
        rc, out, err = probe(*args) if args else probe("--help-me")
        if args == ["h:70000"]:
            assert rc == 1 and "FAILED" in out, (args, rc, out)  # the target step
        else:
            assert rc == 2 and "usage: wattcloud-relay probe" in err, (args, rc, err)
    rc, out, _ = probe("--help")
    assert rc == 0 and out.startswith("usage: wattcloud-relay probe")
    rc, _, err = probe("h", env={"POW_DIFFICULTY_BITS": "3"})
    assert rc == 2 and "invalid POW_DIFFICULTY_BITS" in err


# -- SSH without logging in ------------------------------------------------------

def test_host_keys_match_ssh_keygen(sshd):
    rc, report = probe_json("127.0.0.1:%d" % sshd.port, env=settings(sshd.port))
    assert rc == 0, report
    conn = report["connect"]
    assert conn["banner"].startswith("SSH-2.0-OpenSSH"), conn
    for key in ("kex", "cipher", "mac", "host_key_algorithm"):
        assert conn[key] and conn[key] != "?", conn
    assert conn["tcp_connect_ms"] >= 0 and conn["handshake_ms"] >= conn["tcp_connect_ms"]
    # The one the app shows: ed25519 first, as with OpenSSH's ssh.
    assert report["host_key"] == {"type": "ssh-ed25519",
                                  "fingerprint": sshd.host_fingerprint("ed25519")}
    others = {k["type"]: k["fingerprint"] for k in report["other_host_keys"]}
    assert others == {"ecdsa-sha2-nistp256": sshd.host_fingerprint("ecdsa"),
                      "ssh-rsa": sshd.host_fingerprint("rsa")}, others
    assert "auth_methods" not in report and "login" not in report


def test_rsa_only_server(sshd_rsa_only):
    port = sshd_rsa_only.port
    rc, report = probe_json("127.0.0.1:%d" % port, env=settings(port))
    assert rc == 0, report
    assert report["host_key"] == {"type": "ssh-rsa",
                                  "fingerprint": sshd_rsa_only.host_fingerprint("rsa")}
    assert report["other_host_keys"] == []


def test_auth_methods_offered(sshd, sshd_kbd):
    rc, report = probe_json("127.0.0.1:%d" % sshd.port, "--user", TEST_USER,
                            env=settings(sshd.port))
    assert rc == 0 and set(report["auth_methods"].split(",")) >= {"publickey", "password"}
    rc, report = probe_json("127.0.0.1:%d" % sshd_kbd.port, "--user", TEST_USER,
                            env=settings(sshd_kbd.port))
    assert rc == 0 and report["auth_methods"] == "keyboard-interactive", report


# -- logging in -----------------------------------------------------------------------

def no_probe_files(directory):
    return not glob.glob(os.path.join(directory, ".wattcloud-probe-*"))


def test_password_login_and_sftp_checks(sshd, workdir, secrets_dir):
    pw = secret_file(secrets_dir, "pw", TEST_PASSWORD)
    rc, out, err = probe("127.0.0.1:%d" % sshd.port, "--user", TEST_USER, "--password-file",
                         pw, "--path", workdir, env=settings(sshd.port))
    assert rc == 0, out + err
    assert_no_secret(out, err)
    assert re.search(r"^login +ok \(password\)$", out, re.M), out
    assert re.search(r"^writable +yes: created, wrote, synced and removed %s/\.wattcloud-probe-"
                     % re.escape(workdir), out, re.M), out
    assert re.search(r"^result +ok$", out, re.M)
    assert no_probe_files(workdir)
    rc, report = probe_json("127.0.0.1:%d" % sshd.port, "--user", TEST_USER,
                            "--password-file", pw, "--path", workdir, env=settings(sshd.port))
    assert rc == 0, report
    assert report["login"] == {"method": "password", "result": "ok"}
    ext = report["extensions"]
    assert ext["posix-rename"] == "yes" and ext["statvfs"] == "yes" and ext["fsync"] == "yes"
    assert ext["limits"] in ("yes", "unknown (this libssh2 cannot ask)")
    st = os.statvfs(workdir)
    space = report["free_space"]
    assert space["path"] == workdir and space["total_bytes"] == st.f_blocks * st.f_frsize
    assert abs(space["free_bytes"] - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024
    assert report["writable"] == "yes"
    assert no_probe_files(workdir)


def test_keyboard_interactive_password(sshd_kbd, workdir, secrets_dir):
    pw = secret_file(secrets_dir, "pw", TEST_PASSWORD)
    rc, report = probe_json("127.0.0.1:%d" % sshd_kbd.port, "--user", TEST_USER,
                            "--password-file", pw, "--path", workdir, "--read-only",
                            env=settings(sshd_kbd.port))
    assert rc == 0 and report["login"]["result"] == "ok", report


def test_wrong_password(sshd, secrets_dir):
    pw = secret_file(secrets_dir, "pw", "wrong-pass-9")
    rc, out, err = probe("127.0.0.1:%d" % sshd.port, "--user", TEST_USER, "--password-file",
                         pw, env=settings(sshd.port))
    assert rc == 1, out
    assert_no_secret(out, err)
    assert re.search(r"^login +FAILED: authentication failed \(auth_failed\)$", out, re.M), out
    assert 'FAILED at step "login"' in out


@pytest.mark.parametrize("key", ["ed25519", "ecdsa", "rsa", "rsa_pem", "rsa_pkcs8"])
def test_key_login(sshd, workdir, client_keys, key):
    rc, report = probe_json("127.0.0.1:%d" % sshd.port, "--user", TEST_USER, "--key",
                            client_keys.path(key), "--path", workdir, env=settings(sshd.port))
    assert rc == 0, report
    assert report["login"] == {"method": "publickey", "result": "ok"}
    assert report["writable"] == "yes"
    assert no_probe_files(workdir)


def test_encrypted_key_with_passphrase_file(sshd, workdir, client_keys, secrets_dir):
    pp = secret_file(secrets_dir, "pp", KEY_PASSPHRASE)
    for key in ("ed25519_pass", "rsa_pass"):
        rc, out, err = probe("127.0.0.1:%d" % sshd.port, "--user", TEST_USER, "--key",
                             client_keys.path(key), "--passphrase-file", pp, "--path", workdir,
                             "--read-only", env=settings(sshd.port))
        assert rc == 0, out + err
        assert_no_secret(out, err)
        assert re.search(r"^writable +not checked \(--read-only\)$", out, re.M), out


def test_key_failures_have_the_relays_messages(sshd, client_keys, secrets_dir):
    target = "127.0.0.1:%d" % sshd.port
    env = settings(sshd.port)
    # Encrypted, no passphrase and no terminal (stdin is /dev/null, no tty).
    rc, report = probe_json(target, "--user", TEST_USER, "--key",
                            client_keys.path("ed25519_pass"), env=env)
    assert rc == 1 and report["failed_step"] == "login" and report["error_code"] == "bad_key"
    assert report["error"] == "private key is encrypted: passphrase required"
    # Wrong passphrase.
    pp = secret_file(secrets_dir, "pp-wrong", "wrong-pass-9")
    rc, out, err = probe(target, "--json", "--user", TEST_USER, "--key",
                         client_keys.path("ed25519_pass"), "--passphrase-file", pp, env=env)
    report = json.loads(out)
    assert rc == 1 and report["error_code"] == "bad_key", report
    assert report["error"] == "wrong passphrase or unsupported key format"
    assert_no_secret(out, err)
    # Not a key at all.
    junk = secret_file(secrets_dir, "junk", "this is not a key")
    rc, report = probe_json(target, "--user", TEST_USER, "--key", junk, env=env)
    assert rc == 1 and report["error_code"] == "bad_key"
    assert report["error"] == "unsupported key format: not a PEM or OpenSSH private key"
    # A good key the server does not know.
    stranger = os.path.join(str(secrets_dir), "stranger")
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", stranger], check=True)
    rc, report = probe_json(target, "--user", TEST_USER, "--key", stranger, env=env)
    assert rc == 1 and report["failed_step"] == "login", report
    assert report["error_code"] == "auth_failed" and report["error"] == "authentication failed"
    # An unreadable key file.
    rc, out, err = probe(target, "--user", TEST_USER, "--key", "/nonexistent/key", env=env)
    assert rc == 1 and "cannot read /nonexistent/key: No such file or directory" in out


def test_read_only_and_unwritable_path(sshd, workdir, client_keys):
    target = "127.0.0.1:%d" % sshd.port
    key = client_keys.path("ed25519")
    rc, report = probe_json(target, "--user", TEST_USER, "--key", key, "--path", workdir,
                            "--read-only", env=settings(sshd.port))
    assert rc == 0 and report["writable"] == "not checked (--read-only)", report
    assert "fsync" not in report["extensions"]
    assert no_probe_files(workdir)
    # / belongs to root: the test user cannot create files there.
    rc, report = probe_json(target, "--user", TEST_USER, "--key", key, "--path", "/",
                            env=settings(sshd.port))
    assert rc == 1 and report["failed_step"] == "writable", report
    assert report["error"] == "cannot create files in /: permission denied"
    assert report["error_code"] == "permission_denied"
    # A path that does not exist.
    rc, report = probe_json(target, "--user", TEST_USER, "--key", key, "--path",
                            os.path.join(workdir, "missing"), env=settings(sshd.port))
    assert rc == 1 and report["failed_step"] == "path", report
    assert report["error_code"] == "not_found"


def test_runs_without_root(sshd, client_keys):
    """As nobody, with a copy of the binary nobody can run and a key nobody
    can read: the probe needs no privilege and no daemon."""
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="wc-probe-nobody-"))
    try:
        run_as_nobody(sshd, client_keys, tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def run_as_nobody(sshd, client_keys, tmp_path):
    tmp_path.chmod(0o755)
    binary = tmp_path / "wattcloud-relay"
    shutil.copy(relay_binary(), binary)
    binary.chmod(0o755)
    key = tmp_path / "key"
    shutil.copy(client_keys.path("ed25519"), key)
    os.chown(key, NOBODY, NOBODY)
    key.chmod(0o600)
    res = subprocess.run(
        [str(binary), "probe", "127.0.0.1:%d" % sshd.port, "--json", "--user", TEST_USER,
         "--key", str(key), "--read-only"],
        env=dict({"PATH": "/usr/bin:/bin"}, **settings(sshd.port)), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, start_new_session=True,
        preexec_fn=lambda: (os.setgroups([]), os.setgid(NOBODY), os.setuid(NOBODY)))
    report = json.loads(res.stdout)
    assert res.returncode == 0 and report["login"]["result"] == "ok", report
