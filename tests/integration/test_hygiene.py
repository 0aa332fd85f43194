"""PROTOCOL §2 step 4: credentials live only in the session's memory, are
wiped after use and never reach a log, a disk or a core file.

The relay's memory is scanned from outside (/proc/PID/mem: heap, anonymous
mappings, thread stacks, writable data of the binary and its libraries)
for the password, the key passphrase and lines of the private key, once the
login is done and a few requests ran, and again once the session ended. The
test process holds all of them itself: only the relay is scanned.

A local user of its own, `wchyg<random>` (removed afterwards), with a fresh
random password and its own keys, makes the needles distinctive: nothing
else on the machine knows them, and test runs at the same time do not
change each other's password.
"""

import os
import pwd
import secrets
import shutil
import string
import subprocess
import tempfile

import pytest

import procinfo
import sshd as sshd_mod
from helpers import LOCAL, wait_until
from relay import relay_binary
from wsclient import open_session

HYG_USER = "wchyg" + secrets.token_hex(3)


def random_secret(n=24):
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(n))


class HygieneSshd(sshd_mod.Sshd):
    """An sshd of the suite's variants that lets only `wchyg` in."""

    def _config(self):
        return super()._config().replace("AllowUsers %s" % sshd_mod.TEST_USER,
                                         "AllowUsers %s" % HYG_USER)


# Keys of wchyg: name -> (ssh-keygen arguments, has a passphrase). Covers the
# three parsers a key can go through: libssh2's own OpenSSH-format reader,
# OpenSSL's traditional PEM and its PKCS#8 decoder.
HYG_KEYS = {
    "ed25519_pass": (["-t", "ed25519"], True),
    "rsa_pem": (["-t", "rsa", "-b", "2048", "-m", "PEM"], False),
    "rsa_pkcs8_pass": (["-t", "rsa", "-b", "2048", "-m", "PKCS8"], True),
    "ecdsa": (["-t", "ecdsa", "-b", "256"], False),
}


class HygUser:
    def __init__(self, run_dir):
        try:
            pwd.getpwnam(HYG_USER)
        except KeyError:
            sshd_mod.run(["useradd", "-m", "-s", "/bin/bash", HYG_USER])
        self.pw = pwd.getpwnam(HYG_USER)
        os.makedirs(self.pw.pw_dir, exist_ok=True)
        os.chown(self.pw.pw_dir, self.pw.pw_uid, self.pw.pw_gid)
        self.password = random_secret()
        self.set_password(self.password)
        self.dir = os.path.join(run_dir, "hygiene")
        keydir = os.path.join(self.dir, "keys")
        os.makedirs(keydir, exist_ok=True)
        self.pems, self.passphrases = {}, {}
        pubs = []
        for name, (args, with_pass) in HYG_KEYS.items():
            path = os.path.join(keydir, "id_" + name)
            passphrase = random_secret() if with_pass else None
            sshd_mod.run([sshd_mod.SSH_KEYGEN, "-q", "-f", path, "-N", passphrase or "",
                          "-C", "wchyg-" + name] + args)
            with open(path) as f:
                self.pems[name] = f.read()
            with open(path + ".pub") as f:
                pubs.append(f.read().strip())
            self.passphrases[name] = passphrase
            os.unlink(path)  # the test holds it in memory; no copy on disk
        os.chmod(self.dir, 0o755)
        # Outside the checkout, which may be under /root (see sshd.py).
        self.ak = sshd_mod.AuthorizedKeys(pubs, self.pw)
        self.authorized_keys = self.ak.pattern

    @staticmethod
    def set_password(password):
        subprocess.run(["chpasswd"], input=("%s:%s\n" % (HYG_USER, password)).encode(),
                       check=True)

    def remove(self):
        self.ak.remove()
        subprocess.run(["userdel", "-r", "-f", HYG_USER], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def needles(self, key=None, extra=()):
        """Byte strings that must not be in the relay's memory: the password,
        and for `key` its passphrase and every full line of its base64 body."""
        out = {"password": self.password.encode()}
        if key is not None:
            if self.passphrases[key]:
                out["passphrase"] = self.passphrases[key].encode()
            for i, line in enumerate(key_body_lines(self.pems[key])):
                out["%s key line %d" % (key, i)] = line.encode()
        for i, e in enumerate(extra):
            out["extra %d" % i] = e.encode()
        return out


def key_body_lines(pem):
    """The full-length base64 lines of a private key (the last, short line
    of a body may be common text)."""
    lines = [ln.strip() for ln in pem.splitlines()
             if ln.strip() and not ln.startswith("-----") and ":" not in ln]
    return [ln for ln in lines if len(ln) >= 60]


@pytest.fixture(scope="module")
def hyg(run_dir, test_user):
    user = HygUser(run_dir)
    servers = {}
    try:
        for variant in ("default", "kbd"):
            servers[variant] = HygieneSshd(os.path.join(user.dir, "sshd-" + variant),
                                           variant, user.authorized_keys).start()
        user.sshd = servers["default"]
        user.sshd_kbd = servers["kbd"]
        yield user
    finally:
        for s in servers.values():
            s.stop()
        user.remove()


# A positive control for every scan: a setting the relay copies into its
# heap at start (an allow-list entry, lowercased) must be found, or the
# scanner is not seeing the heap and "nothing found" would prove nothing.
CANARY = "canary-" + secrets.token_hex(12) + ".example"


def hyg_relay(relay_factory, hyg, **env):
    return relay_factory(extra_ports=[hyg.sshd.port, hyg.sshd_kbd.port],
                         SFTP_HOST_ALLOWLIST="127.0.0.1," + CANARY, **env)


def hyg_login(relay, server, auth):
    s = open_session(relay, LOCAL, server.port)
    try:
        s.expect_host_key()
        s.accept_host_key()
        resp = auth(s)
        assert resp == {"id": 1, "result": {}}, "auth failed: %r" % resp
    except BaseException:
        s.close()
        raise
    return s


def some_requests(s, home):
    assert s.ok("stat", path=home)["isDir"] is True
    names = [e["name"] for e in s.ok("list", path=home)["entries"]]
    assert isinstance(names, list)
    assert s.ok("fs_info", path=home)["supported"] in (True, False)


def assert_not_in_memory(relay, needles, when):
    pid = relay.proc.pid
    found = procinfo.find_in_memory(pid, list(needles.values()) + [CANARY.encode()])
    canary = found.pop(CANARY.encode(), [])
    assert any(name in ("[heap]", "[anon]") for _, name in canary), \
        "the scanner did not find the canary in the relay's heap: %r" % canary
    if found:
        named = {k: found[v] for k, v in needles.items() if v in found}
        pytest.fail("%s: credentials in the relay's memory (pid %d): %s"
                    % (when, pid, "; ".join("%s at %s" % (k, ", ".join(
                        "0x%x (%s)" % a for a in v[:4])) for k, v in named.items())))


def session_gone(relay, before_threads):
    return procinfo.thread_count(relay.proc.pid) <= before_threads


def check_scenario(relay, hyg, server, auth, needles):
    """Log in, run requests, scan; close, wait for the worker to end, scan."""
    pid = relay.proc.pid
    threads = procinfo.thread_count(pid)
    s = hyg_login(relay, server, auth)
    try:
        some_requests(s, hyg.pw.pw_dir)
        assert_not_in_memory(relay, needles, "session open, after auth and requests")
    finally:
        s.close()
    assert wait_until(lambda: session_gone(relay, threads), 10), \
        "the session's worker thread did not end"
    assert_not_in_memory(relay, needles, "after the session ended")


# --------------------------------------------------------------------------
# Memory.

def test_password_not_in_memory(relay_factory, hyg):
    relay = hyg_relay(relay_factory, hyg)
    check_scenario(relay, hyg, hyg.sshd,
                   lambda s: s.auth_password(HYG_USER, hyg.password),
                   hyg.needles())


def test_keyboard_interactive_password_not_in_memory(relay_factory, hyg):
    relay = hyg_relay(relay_factory, hyg)
    check_scenario(relay, hyg, hyg.sshd_kbd,
                   lambda s: s.auth_password(HYG_USER, hyg.password),
                   hyg.needles())


@pytest.mark.parametrize("key", list(HYG_KEYS))
def test_private_key_not_in_memory(relay_factory, hyg, key):
    relay = hyg_relay(relay_factory, hyg)
    check_scenario(relay, hyg, hyg.sshd,
                   lambda s: s.auth_key(HYG_USER, hyg.pems[key], hyg.passphrases[key]),
                   hyg.needles(key))


def test_failed_logins_leave_nothing(relay_factory, hyg):
    """Refused credentials are wiped too: a wrong password, a wrong
    passphrase, a key the server does not know."""
    relay = hyg_relay(relay_factory, hyg)
    threads = procinfo.thread_count(relay.proc.pid)
    wrong_password = random_secret()
    wrong_passphrase = random_secret()
    attempts = [
        lambda s: s.auth_password(HYG_USER, wrong_password),
        lambda s: s.auth_key(HYG_USER, hyg.pems["ed25519_pass"], wrong_passphrase),
        lambda s: s.auth_key(HYG_USER, hyg.pems["rsa_pkcs8_pass"], wrong_passphrase),
    ]
    for attempt in attempts:
        s = open_session(relay, LOCAL, hyg.sshd.port)
        try:
            s.expect_host_key()
            s.accept_host_key()
            resp = attempt(s)
            assert "error" in resp, resp
            s.expect_closed(timeout=10)
        finally:
            s.close()
    # Scanned only once the last worker has ended: a worker still wiping
    # would be reported as a leak.
    assert wait_until(lambda: session_gone(relay, threads), 10), \
        "the refused sessions' worker threads did not end"
    needles = hyg.needles("ed25519_pass", extra=[wrong_password, wrong_passphrase])
    needles.update({k + " (pkcs8)": v for k, v in hyg.needles("rsa_pkcs8_pass").items()})
    assert_not_in_memory(relay, needles, "after refused logins")


# --------------------------------------------------------------------------
# Core dumps.

@pytest.fixture
def bin_dir():
    """A directory `nobody` can reach (pytest's tmp_path is root-only)."""
    path = tempfile.mkdtemp(prefix="wc-hygiene-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)

def test_no_core_dumps(relay_factory):
    relay = relay_factory()
    assert procinfo.core_limit(relay.proc.pid) == ("0", "0")


def test_non_dumpable_as_unprivileged_user(relay_factory, bin_dir):
    """Run as `nobody`: a dumpable process's /proc files belong to its own
    uid; the relay's belong to root because it made itself non-dumpable
    (so no core, and no other process of its uid can read its memory)."""
    nobody = pwd.getpwnam("nobody")
    binary = os.path.join(bin_dir, "wattcloud-relay")
    shutil.copy(relay_binary(), binary)
    os.chmod(binary, 0o755)
    wrapper = os.path.join(bin_dir, "as-nobody")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec setpriv --reuid=%d --regid=%d --clear-groups %s \"$@\"\n"
                % (nobody.pw_uid, nobody.pw_gid, binary))
    os.chmod(wrapper, 0o755)
    relay = relay_factory(start=False)
    relay.binary = wrapper
    relay.start()
    pid = relay.proc.pid
    with open("/proc/%d/status" % pid) as f:
        uids = [line.split()[1:] for line in f if line.startswith("Uid:")][0]
    assert all(int(u) == nobody.pw_uid for u in uids), uids
    st = os.stat("/proc/%d/mem" % pid)
    assert st.st_uid == 0, "/proc/%d/mem belongs to uid %d: the relay is dumpable" \
        % (pid, st.st_uid)
    assert procinfo.core_limit(pid) == ("0", "0")


# --------------------------------------------------------------------------
# Logs (test_logs.py covers password and key login; these are the others).

def test_keyboard_interactive_and_passphrases_never_logged(relay_factory, hyg):
    relay = hyg_relay(relay_factory, hyg, LOG_LEVEL="debug")
    wrong = random_secret()
    s = hyg_login(relay, hyg.sshd_kbd, lambda s: s.auth_password(HYG_USER, hyg.password))
    some_requests(s, hyg.pw.pw_dir)
    s.close()
    s = open_session(relay, LOCAL, hyg.sshd_kbd.port)
    s.expect_host_key()
    s.accept_host_key()
    assert "error" in s.auth_password(HYG_USER, wrong)
    s.close()
    for key in ("ed25519_pass", "rsa_pkcs8_pass"):
        hyg_login(relay, hyg.sshd, lambda s: s.auth_key(
            HYG_USER, hyg.pems[key], hyg.passphrases[key])).close()
        s = open_session(relay, LOCAL, hyg.sshd.port)
        s.expect_host_key()
        s.accept_host_key()
        assert "error" in s.auth_key(HYG_USER, hyg.pems[key], wrong)
        s.close()
    relay.stop_and_check()
    log = relay.log_text()
    assert log
    secrets_ = [hyg.password, wrong] + [p for p in hyg.passphrases.values() if p]
    for value in secrets_:
        assert value not in log
    for key in HYG_KEYS:
        for line in key_body_lines(hyg.pems[key]):
            assert line not in log
