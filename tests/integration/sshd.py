"""A real OpenSSH sshd for the integration tests, and the test user's keys.

Everything lives in a private directory: host keys, sshd_config, the
authorized_keys file, the pid file and the log. The sshd listens on
127.0.0.1 on a free port; the relay reaches it like any SFTP server.

sshd drops to the user's uid to read authorized_keys, so that file lives in
a directory of its own under /tmp (see AuthorizedKeys), never in the
checkout: a checkout under /root (mode 0700) is not traversable by the test
user. StrictModes is off.

OpenSSH >= 9.8 penalises a source address after failed logins
(PerSourcePenalties, on by default) and then closes its connections before
the banner. Every connection of the suite comes from 127.0.0.1 and many
tests fail logins on purpose, so the servers turn penalties off where the
sshd knows the option; the "penalties" variant keeps them on for the test
of that very behaviour.
"""

import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"

TEST_USER = "wctest"
TEST_PASSWORD = "Wc-test-pass-1"
KEY_PASSPHRASE = "Wc-key-passphrase-7"

# Client keys: name -> (ssh-keygen arguments, passphrase or None).
CLIENT_KEYS = {
    "ed25519": (["-t", "ed25519"], None),
    "ecdsa": (["-t", "ecdsa", "-b", "256"], None),
    "rsa": (["-t", "rsa", "-b", "2048"], None),
    "rsa_pem": (["-t", "rsa", "-b", "2048", "-m", "PEM"], None),
    "rsa_pkcs8": (["-t", "rsa", "-b", "2048", "-m", "PKCS8"], None),
    "ed25519_pass": (["-t", "ed25519"], KEY_PASSPHRASE),
    "rsa_pass": (["-t", "rsa", "-b", "2048"], KEY_PASSPHRASE),
}

# Host key type name (ssh-keygen -t) -> the type as known_hosts writes it.
HOST_KEY_TYPES = {
    "ed25519": "ssh-ed25519",
    "ecdsa": "ecdsa-sha2-nistp256",
    "rsa": "ssh-rsa",
}


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, timeout=10.0, proc=None):
    """Poll until 127.0.0.1:port accepts a connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before listening" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("nothing listens on 127.0.0.1:%d after %.0f s" % (port, timeout))


def run(argv, **kw):
    """Run a command, raising with its output when it fails."""
    res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
    if res.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), res.returncode,
                                                  res.stdout.decode(errors="replace")))
    return res.stdout.decode(errors="replace")


def fingerprint(pubkey_path):
    """SHA-256 fingerprint of a public key exactly as `ssh-keygen -lf` prints it."""
    out = run([SSH_KEYGEN, "-lf", pubkey_path])
    fp = out.split()[1]
    assert re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", fp), out
    return fp


# --------------------------------------------------------------------------
# The test user and its keys.

def ensure_test_user():
    """Create the local user once and (re)set its password. Returns pwd entry."""
    try:
        pw = pwd.getpwnam(TEST_USER)
    except KeyError:
        run(["useradd", "-m", "-s", "/bin/bash", TEST_USER])
        pw = pwd.getpwnam(TEST_USER)
    subprocess.run(["chpasswd"], input=("%s:%s\n" % (TEST_USER, TEST_PASSWORD)).encode(),
                   check=True)
    os.makedirs(pw.pw_dir, exist_ok=True)
    os.chown(pw.pw_dir, pw.pw_uid, pw.pw_gid)
    return pwd.getpwnam(TEST_USER)


class ClientKeys:
    """Client key pairs of the test user, generated once per run.

    `pem(name)` is the private key text as the browser sends it,
    `passphrase(name)` the passphrase it was created with (or None)."""

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self._pass = {}
        for name, (args, passphrase) in CLIENT_KEYS.items():
            path = os.path.join(directory, "id_" + name)
            run([SSH_KEYGEN, "-q", "-f", path, "-N", passphrase or "",
                 "-C", "wctest-" + name] + args)
            self._pass[name] = passphrase

    def names(self):
        return list(CLIENT_KEYS)

    def path(self, name):
        return os.path.join(self.dir, "id_" + name)

    def pem(self, name):
        with open(self.path(name)) as f:
            return f.read()

    def passphrase(self, name):
        return self._pass[name]

    def public_keys(self):
        out = []
        for name in CLIENT_KEYS:
            with open(self.path(name) + ".pub") as f:
                out.append(f.read().strip())
        return out


def _modes_on_the_way(path):
    """'/root 0700 root, /root/x 0755 root, ...' for an error message."""
    parts, cur = [], "/"
    for name in os.path.abspath(path).split("/")[1:]:
        cur = os.path.join(cur, name)
        try:
            st = os.stat(cur)
            owner = pwd.getpwuid(st.st_uid).pw_name
            parts.append("%s %04o %s" % (cur, stat.S_IMODE(st.st_mode), owner))
        except (OSError, KeyError) as e:
            parts.append("%s (%s)" % (cur, e))
    return ", ".join(parts)


def check_readable_as(pw, path):
    """Raise, naming the directory modes on the way, unless user `pw` can
    read `path`: sshd reads authorized_keys with the user's uid, and when it
    cannot, the only symptom is a failed key login."""
    res = subprocess.run(["/bin/cat", path], user=pw.pw_uid, group=pw.pw_gid,
                         extra_groups=[], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if res.returncode != 0:
        raise RuntimeError(
            "test set-up: user %s cannot read %s (%s), so sshd could not read its "
            "authorized keys and every key login would fail. Modes on the way: %s"
            % (pw.pw_name, path, res.stderr.decode(errors="replace").strip(),
               _modes_on_the_way(path)))


class AuthorizedKeys:
    """The authorized_keys file of user `pw` (public key lines) in a fresh
    directory under the system's temp directory (mode 0755, file 0644),
    which the user can reach wherever the checkout is. `pattern` is the
    AuthorizedKeysFile value; remove() deletes the directory."""

    def __init__(self, public_keys, pw):
        self.dir = tempfile.mkdtemp(prefix="wattcloud-authkeys-")
        os.chmod(self.dir, 0o755)
        path = os.path.join(self.dir, pw.pw_name)
        with open(path, "w") as f:
            f.write("\n".join(public_keys) + "\n")
        os.chmod(path, 0o644)
        try:
            check_readable_as(pw, path)
        except BaseException:
            self.remove()
            raise
        self.pattern = os.path.join(self.dir, "%u")

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# The server.

VARIANTS = {
    # Password and public key; all three host key types (ed25519 must win).
    "default": dict(host_keys=("ed25519", "ecdsa", "rsa"), kbd_only=False,
                    host_key_algorithms=None),
    # PAM keyboard-interactive only: the relay must fall back to it.
    "kbd": dict(host_keys=("ed25519",), kbd_only=True, host_key_algorithms=None),
    # Only an RSA host key, signed with rsa-sha2 (needs libssh2 >= 1.11).
    "rsa_only": dict(host_keys=("rsa",), kbd_only=False,
                     host_key_algorithms="rsa-sha2-512,rsa-sha2-256"),
    # No ed25519: ECDSA must be preferred over RSA.
    "ecdsa_rsa": dict(host_keys=("rsa", "ecdsa"), kbd_only=False, host_key_algorithms=None),
    # OpenSSH's PerSourcePenalties left on (>= 9.8 only). Not in the suite's
    # shared servers: its penalties would spoil every later test using it.
    "penalties": dict(host_keys=("ed25519",), kbd_only=False, host_key_algorithms=None,
                      penalties=True),
    # The SFTP server logs every request (with its length) into sshd.log.
    "sftp_debug": dict(host_keys=("ed25519",), kbd_only=False, host_key_algorithms=None,
                       sftp_log_level="DEBUG1"),
}

# sshd offering one cipher (and optionally one MAC), for test_ciphers.py: the
# AES paths and the HMACs of our libssh2 are patched
# (scripts/libssh2-patches/), and only a server that offers nothing else
# makes libssh2 take them. LogLevel DEBUG1
# makes sshd log the algorithms it negotiated ("kex: client->server cipher:
# ..."), so the test can show which ones carried the bytes.
PINNED_ALGORITHMS = (
    # Our libssh2 takes umac-64-etm@openssh.com when it may choose, as
    # OpenSSH's client does (umac-64.patch); MAC-then-encrypt decrypts on
    # another path (before the MAC check) and hashes the packet in two
    # pieces (its first 5 bytes, then the rest).
    ("aes128-ctr", None),
    ("aes128-ctr", "umac-64@openssh.com"),
    ("aes128-ctr", "hmac-sha2-256"),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
    # The other HMACs both sides have, under AES-CTR. libssh2 keeps each
    # direction's HMAC keyed from one key exchange to the next and restarts
    # it for every packet (hmac-keyed-once.patch): a MAC not restarted, or
    # still keyed with the old key after a rekey, fails the next packet.
    # hmac-ripemd160 is left out: OpenSSH no longer has it.
    ("aes128-ctr", "hmac-sha2-512"),
    ("aes128-ctr", "hmac-sha2-512-etm@openssh.com"),
    ("aes128-ctr", "hmac-sha1"),
    ("aes128-ctr", "hmac-sha1-etm@openssh.com"),
    ("aes128-ctr", "hmac-sha1-96"),
    ("aes128-ctr", "hmac-md5"),
    ("aes256-ctr", None),
    ("aes128-gcm@openssh.com", None),
    ("aes256-gcm@openssh.com", None),
    ("chacha20-poly1305@openssh.com", None),
)


def pinned_variant(cipher, mac=None, rekey=True):
    """The VARIANTS name of sshd pinned to `cipher` (and `mac`); with
    rekey, sshd renews the keys after every MiB (RekeyLimit 1M)."""
    return "pinned-" + cipher + ("+" + mac if mac else "") + ("" if rekey else "-norekey")


for _cipher, _mac in PINNED_ALGORITHMS:
    for _rekey in (True, False):
        VARIANTS[pinned_variant(_cipher, _mac, _rekey)] = dict(
            host_keys=("ed25519",), kbd_only=False, host_key_algorithms=None,
            ciphers=_cipher, macs=_mac, log_level="DEBUG1",
            rekey_limit="1M" if _rekey else None)

# sshd renewing the keys every REKEY_OFTEN_LIMIT bytes, pinned to one cipher:
# hundreds of key exchanges in one transfer, so a per-exchange leak in
# libssh2 shows in what the session holds (test_rekey_memory.py).
REKEY_OFTEN_LIMIT = "64K"
REKEY_OFTEN_CIPHERS = ("chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes128-ctr")


def rekey_often_variant(cipher):
    return "rekey-often-" + cipher


for _cipher in REKEY_OFTEN_CIPHERS:
    VARIANTS[rekey_often_variant(_cipher)] = dict(
        host_keys=("ed25519",), kbd_only=False, host_key_algorithms=None,
        ciphers=_cipher, macs=None, log_level="DEBUG1", rekey_limit=REKEY_OFTEN_LIMIT)

# Variants every run starts once (sshd_servers); the others are started by
# the tests that need them.
SHARED_VARIANTS = ("default", "kbd", "rsa_only", "ecdsa_rsa")

_SUPPORTS = {}


def ensure_privsep_dir():
    """sshd (even `sshd -t`) refuses to run without /run/sshd, and /run is
    a tmpfs: a fresh boot has none."""
    os.makedirs("/run/sshd", exist_ok=True)
    os.chmod("/run/sshd", 0o755)


def sshd_supports(option_line, host_key):
    """Whether this sshd accepts a config line (older versions refuse
    unknown options in `sshd -t`). Checked once per line per run; raises
    when sshd refuses even the config without that line."""
    if option_line not in _SUPPORTS:
        ensure_privsep_dir()
        d = tempfile.mkdtemp(prefix="wattcloud-sshd-probe-")
        try:
            cfg = os.path.join(d, "sshd_config")
            results = []
            for extra in (option_line, ""):
                with open(cfg, "w") as f:
                    f.write("HostKey %s\n%s\n" % (host_key, extra))
                results.append(subprocess.run([SSHD, "-t", "-f", cfg],
                                              stdin=subprocess.DEVNULL,
                                              stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT))
                if results[0].returncode == 0:
                    break
            if results[-1].returncode != 0:
                raise RuntimeError("sshd -t fails even without %r: %s" % (
                    option_line, results[-1].stdout.decode(errors="replace")))
            _SUPPORTS[option_line] = results[0].returncode == 0
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return _SUPPORTS[option_line]


def has_per_source_penalties():
    """True for OpenSSH >= 9.8, which has PerSourcePenalties."""
    d = tempfile.mkdtemp(prefix="wattcloud-sshd-probe-")
    try:
        key = os.path.join(d, "k")
        run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", key])
        return sshd_supports("PerSourcePenalties no", key)
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Sshd:
    """One sshd process with its own directory. Use start()/stop()."""

    def __init__(self, directory, variant, authorized_keys_file):
        self.dir = directory
        self.variant = variant
        spec = VARIANTS[variant]
        self.host_key_types = spec["host_keys"]
        self.kbd_only = spec["kbd_only"]
        self.host_key_algorithms = spec["host_key_algorithms"]
        self.penalties = spec.get("penalties", False)
        self.sftp_log_level = spec.get("sftp_log_level")
        self.ciphers = spec.get("ciphers")
        self.macs = spec.get("macs")
        self.log_level = spec.get("log_level", "VERBOSE")
        self.rekey_limit = spec.get("rekey_limit")
        self.authorized_keys_file = authorized_keys_file
        self.port = None
        self.proc = None
        self.config_path = os.path.join(directory, "sshd_config")
        self.log_path = os.path.join(directory, "sshd.log")
        self.sftp_log_path = None  # set by _subsystem_line() (sftp_debug)
        self.pid_path = os.path.join(directory, "sshd.pid")
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o755)
        self.host_key_paths = {}
        for t in self.host_key_types:
            path = os.path.join(directory, "ssh_host_%s_key" % t)
            run([SSH_KEYGEN, "-q", "-t", t, "-N", "", "-C", "host-" + t, "-f", path])
            self.host_key_paths[t] = path

    def host_fingerprint(self, key_type):
        return fingerprint(self.host_key_paths[key_type] + ".pub")

    def _subsystem_line(self):
        """internal-sftp, or for the sftp_debug variant the sftp-server
        program logging at sftp_log_level into sftp_log_path. internal-sftp
        cannot do that: the session child's log goes to syslog or to the
        channel's stderr, never to sshd's -E file. sshd runs a subsystem
        command through the user's shell, so the redirection works."""
        if not self.sftp_log_level:
            return "Subsystem sftp internal-sftp"
        # The SFTP server runs as the test user, who may not reach the
        # checkout (under /root, mode 0700): its log lives under /tmp.
        log_dir = tempfile.mkdtemp(prefix="wattcloud-sftplog-")
        os.chmod(log_dir, 0o755)
        self.sftp_log_path = os.path.join(log_dir, "sftp-server.log")
        with open(self.sftp_log_path, "ab"):
            pass
        pw = pwd.getpwnam(TEST_USER)
        os.chown(self.sftp_log_path, pw.pw_uid, pw.pw_gid)
        return "Subsystem sftp %s -e -l %s 2>>%s" % (SFTP_SERVER, self.sftp_log_level,
                                                     self.sftp_log_path)

    def sftp_log(self):
        """What the sftp_debug variant's SFTP server logged so far."""
        with open(self.sftp_log_path, errors="replace") as f:
            return f.read()

    def _config(self):
        lines = [
            "ListenAddress 127.0.0.1",
            "Port %d" % self.port,
            *("HostKey %s" % p for p in self.host_key_paths.values()),
            "PidFile %s" % self.pid_path,
            "AuthorizedKeysFile %s" % self.authorized_keys_file,
            "StrictModes no",
            "PermitRootLogin no",
            "AllowUsers %s" % TEST_USER,
            "LogLevel %s" % self.log_level,
            "MaxAuthTries 30",
            "MaxSessions 20",
            "MaxStartups 100:30:200",
            self._subsystem_line(),
        ]
        if self.host_key_algorithms:
            lines.append("HostKeyAlgorithms %s" % self.host_key_algorithms)
        if self.ciphers:
            lines.append("Ciphers %s" % self.ciphers)
        if self.macs:
            lines.append("MACs %s" % self.macs)
        if self.rekey_limit:
            lines.append("RekeyLimit %s" % self.rekey_limit)
        any_key = next(iter(self.host_key_paths.values()))
        if not sshd_supports("PerSourcePenalties no", any_key):
            if self.penalties:
                raise RuntimeError("this sshd has no PerSourcePenalties (OpenSSH < 9.8)")
        elif not self.penalties:
            lines.append("PerSourcePenalties no")
        else:
            # OpenSSH's defaults but for a failed login's penalty (5 s),
            # which is enforced only once penalties add up to more than
            # 15 s: 30 s makes the first failure enough however slowly the
            # logins come (the defaults need 4 within about 6 s).
            lines.append("PerSourcePenalties authfail:30s")
        if self.kbd_only:
            lines += [
                "UsePAM yes",
                "KbdInteractiveAuthentication yes",
                "PasswordAuthentication no",
                "PubkeyAuthentication no",
                "AuthenticationMethods keyboard-interactive",
            ]
        else:
            lines += [
                "UsePAM no",
                "KbdInteractiveAuthentication no",
                "PasswordAuthentication yes",
                "PubkeyAuthentication yes",
            ]
        return "\n".join(lines) + "\n"

    def start(self):
        ensure_privsep_dir()
        self.port = free_port()
        with open(self.config_path, "w") as f:
            f.write(self._config())
        run([SSHD, "-t", "-f", self.config_path])
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", self.config_path, "-E", self.log_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "sshd.stderr"), "wb"))
        try:
            wait_for_port(self.port, proc=self.proc)
        except Exception as e:
            self.stop()
            raise RuntimeError("sshd (%s) did not start: %s\n%s" % (self.variant, e, self.log()))
        return self

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.sftp_log_path:
            # Kept with the other logs of the run, then removed from /tmp.
            shutil.copy(self.sftp_log_path, os.path.join(os.path.dirname(self.log_path),
                                                         "sftp-server.log"))
            shutil.rmtree(os.path.dirname(self.sftp_log_path), ignore_errors=True)
            self.sftp_log_path = None

    def descendant_pids(self):
        """Pids of the per-connection processes this sshd forked."""
        children = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry) as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        found, todo = set(), [self.proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, offset):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""


def make_test_dir(home, uid, gid, name):
    """A fresh directory owned by the test user under its home."""
    path = os.path.join(home, name)
    os.mkdir(path)
    os.chown(path, uid, gid)
    os.chmod(path, 0o755)
    return path


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)
