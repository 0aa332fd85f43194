"""A real OpenSSH sshd for the integration tests, and the test user's keys.

Everything lives in a private directory: host keys, sshd_config, the
authorized_keys file, the pid file and the log. The sshd listens on
127.0.0.1 on a free port; the relay reaches it like any SFTP server.

sshd drops to the user's uid to read authorized_keys, so the directories on
the way there are world-traversable and StrictModes is off.
"""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"

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


def write_authorized_keys(directory, keys):
    """authorized_keys/<user> readable by the user (sshd reads it as them)."""
    akdir = os.path.join(directory, "authorized_keys")
    os.makedirs(akdir, exist_ok=True)
    os.chmod(akdir, 0o755)
    path = os.path.join(akdir, TEST_USER)
    with open(path, "w") as f:
        f.write("\n".join(keys.public_keys()) + "\n")
    os.chmod(path, 0o644)
    return os.path.join(akdir, "%u")


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
}


class Sshd:
    """One sshd process with its own directory. Use start()/stop()."""

    def __init__(self, directory, variant, authorized_keys_file):
        self.dir = directory
        self.variant = variant
        spec = VARIANTS[variant]
        self.host_key_types = spec["host_keys"]
        self.kbd_only = spec["kbd_only"]
        self.host_key_algorithms = spec["host_key_algorithms"]
        self.authorized_keys_file = authorized_keys_file
        self.port = None
        self.proc = None
        self.config_path = os.path.join(directory, "sshd_config")
        self.log_path = os.path.join(directory, "sshd.log")
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
            "LogLevel VERBOSE",
            "MaxAuthTries 30",
            "MaxSessions 20",
            "MaxStartups 100:30:200",
            "Subsystem sftp internal-sftp",
        ]
        if self.host_key_algorithms:
            lines.append("HostKeyAlgorithms %s" % self.host_key_algorithms)
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
        os.makedirs("/run/sshd", exist_ok=True)
        os.chmod("/run/sshd", 0o755)
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


def make_test_dir(home, uid, gid, name):
    """A fresh directory owned by the test user under its home."""
    path = os.path.join(home, name)
    os.mkdir(path)
    os.chown(path, uid, gid)
    os.chmod(path, 0o755)
    return path


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)
