#!/usr/bin/python3
"""Relay performance benchmark (GitHub issue "Performance").

Starts its own OpenSSH sshd on 127.0.0.1 (tests/integration/sshd.py, with
the cipher pinned and the connection limits raised) and the release build
of the relay, then measures, interleaving the variants of each comparison
and quoting medians:

  1. download: relay (read_open + one read_chunk at a time) vs `sftp -b` get
     vs bare libssh2
  2. upload: relay (write_open + 8 MiB write_chunks + write_close) vs
     `sftp -b` put vs bare libssh2
  3. small operations (mkdir, stat, rename, list, delete) vs one `sftp -b`
     batch of the same
  4. N concurrent sessions, each downloading then uploading: aggregate
     throughput, relay CPU per GiB, peak relay RSS (and N `sftp -b` as a
     reference)
  5. memory: relay RSS with M idle authenticated sessions, and peak RSS
     during a 1 GiB upload

The data path client is bench/wsbench (C); this script only orchestrates.
Run it through bench/run.sh, which builds the binaries first. Must run as
root: it creates the local user `wctest` and starts sshd.
"""

import argparse
import datetime
import json
import mmap
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import sshd as sshd_mod  # noqa: E402
from relay import Relay  # noqa: E402

DEFAULT_OUT = os.path.join(HERE, "RESULTS.md")
DEFAULT_CIPHER = "chacha20-poly1305@openssh.com"
MiB = 1024 * 1024
GiB = 1024 * MiB

MODES = {
    # size of the single-session file, per-session size for the concurrent
    # test, small-op iterations, repetitions, concurrent repetitions
    "quick": dict(size=256 * MiB, mix_size=16 * MiB, smallops=300, reps=5, conc_reps=3),
    "full": dict(size=1 * GiB, mix_size=32 * MiB, smallops=1000, reps=5, conc_reps=3),
}

TARGETS = {
    "download": 0.85,
    "upload": 0.85,
    "stretch": 1.0,
    "cpu": 1.3,
    "smallops": 0.7,
    "idle_kib": 256,
    "upload_peak_mib": 64,
    "faults_per_gib": 5000,
    "worst_chunk_ratio": 2.0,
    "burst_rss_ratio": 1.10,
    "ssh_client_cpu": 1.0,
    "floor": 2.0,
}

# bench/floor.sh's name (openssl speed -evp) of each SSH cipher it can
# price; for others (aes128-ctr with its HMAC) no floor row is printed.
FLOOR_CIPHERS = {
    "chacha20-poly1305@openssh.com": "chacha20-poly1305",
    "aes128-gcm@openssh.com": "aes-128-gcm",
    "aes256-gcm@openssh.com": "aes-256-gcm",
}

# Other processes may use at most this many CPUs, before the start and on
# average during the run, for the run to be written to RESULTS.md.
BUSY_CPUS = 0.3


def log(msg):
    print("bench: " + msg, flush=True)


def parse_kv(line):
    """key=value pairs of a wsbench / bare_libssh2 result line."""
    out = {}
    for m in re.finditer(r'(\w+)=("([^"]*)"|\S+)', line):
        val = m.group(3) if m.group(3) is not None else m.group(2)
        try:
            out[m.group(1)] = int(val)
        except ValueError:
            try:
                out[m.group(1)] = float(val)
            except ValueError:
                out[m.group(1)] = val
    return out


def worst_chunk(chunk):
    """The worst chunk of all runs (a stall is what matters), the median of
    the runs' median chunks, and where the worst one was."""
    worst = [w for w in chunk["worst"] if w is not None]
    if not worst:
        return dict(worst=None, median=None, worst_index=None)
    return dict(worst=max(worst), median=median([m for m in chunk["median"] if m is not None]),
                worst_index=chunk["worst_index"][chunk["worst"].index(max(worst))])


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def read_cpu_times():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cpus(secs=1.0):
    """How many CPUs were busy during the next `secs` (0 .. nproc)."""
    b0, t0 = read_cpu_times()
    time.sleep(secs)
    b1, t1 = read_cpu_times()
    return (b1 - b0) / max(1, t1 - t0) * os.cpu_count()


def fault_cost_usecs(mib=256):
    """Microseconds one page fault takes now: the first write to each 4 KiB
    page of `mib` MiB freshly mapped, less a second pass over the same
    pages (this loop's own cost). On this project's VMs it is 1.5-3 us
    where the guest's memory is backed by the host already and 13-18 us
    where it is not (the host faults too), and the guest gives freed
    memory back after a while: the same code pays 8x more for every page
    it maps afresh, sshd's growing buffers included (RESULTS.md, seventh
    session). So each run records it at its start and end."""
    size = mib * MiB
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            m.madvise(mmap.MADV_NOHUGEPAGE)
        passes = []
        for _ in range(2):
            t0 = time.perf_counter()
            for off in range(0, size, mmap.PAGESIZE):
                m[off] = 1
            passes.append(time.perf_counter() - t0)
    finally:
        m.close()
    return max(0.0, passes[0] - passes[1]) * 1e6 / (size // mmap.PAGESIZE)


def rotate(items, k):
    k %= len(items)
    return items[k:] + items[:k]


# --------------------------------------------------------------------------
# The servers.

def profile_summary(report):
    """From a perf report file of profile(): self time per library, largest
    first (its "--sort dso" part), and the largest named functions (its
    "--no-children" part, functions over 1.5%). Library names lose their
    version suffix; the kernel is "kernel"."""
    by_lib, top, part = [], [], None
    with open(report, errors="replace") as f:
        for line in f:
            if line.startswith("==== perf report "):
                part = line.split()[-1]
                continue
            if part == "--no-children":
                m = re.match(r"\s+([\d.]+)%\s+\S+\s+\[[.k]\]\s+(\S+)", line)
                if m and not m.group(2).startswith("0x"):
                    top.append((m.group(2), float(m.group(1))))
            elif part == "dso":
                m = re.match(r"\s+([\d.]+)%\s+(\S+)\s*$", line)
                if m:
                    lib = m.group(2)
                    lib = "kernel" if lib.startswith("[kernel") else re.sub(r"\.so[.\d]*$",
                                                                              "", lib)
                    by_lib.append((lib, float(m.group(1))))
    return sorted(by_lib, key=lambda kv: -kv[1]), sorted(top, key=lambda kv: -kv[1])


class FileGrowth:
    """Samples the size of the file an upload writes, on the server's side,
    every millisecond in a thread of this script, and times each 8 MiB of
    it: the same measure for the relay, sftp and bare libssh2, since every
    path ends in sftp-server's write(2) to that file. Slice #0 runs from the
    first byte stored to the first 8 MiB, so connection set-up is not in it.
    A Python thread costs the machine under 2% of one CPU at this rate, the
    same for every variant.

    With `server_pids` (a callable giving the pids of sshd's connection
    processes, sftp-server among them) it also reads their minor page
    faults and CPU time at each slice boundary: whether a slow slice is
    the server faulting in memory or computing. The pids are looked up once,
    when the file appears (before its first byte), since that scan reads
    all of /proc; at a boundary only their three stat files are read."""

    SLICE = 8 * MiB
    PERIOD = 0.001

    def __init__(self, path, server_pids=None):
        self.path = path
        self.server_pids = server_pids
        self.pids = None
        # When the first byte was stored and each slice boundary passed,
        # and the (minor faults, CPU s) of the server's processes, summed,
        # at each of them.
        self.marks = []
        self.usage = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.done.set()
        self.thread.join()

    def _server_usage(self):
        """Minor faults (stat(5)'s 10th field) and CPU seconds (schedstat's
        first, in ns: clock ticks are too coarse for a 25 ms slice) of the
        server's processes, summed."""
        faults, cpu_ns = 0, 0
        for pid in self.pids:
            try:
                with open("/proc/%d/stat" % pid) as f:
                    faults += int(f.read().rsplit(")", 1)[1].split()[7])
                with open("/proc/%d/schedstat" % pid) as f:
                    cpu_ns += int(f.read().split()[0])
            except OSError:
                continue
        return faults, cpu_ns / 1e9

    def _run(self):
        """Marks each slice boundary as the first sample at or past it,
        with the server's usage read there when its pids are known."""
        while not self.done.wait(self.PERIOD):
            try:
                size = os.stat(self.path).st_size
            except OSError:
                continue
            now = time.monotonic()
            if self.server_pids and self.pids is None:
                self.pids = self.server_pids()
            # Boundary 0 is the first byte stored, boundary k is k slices.
            while size > 0 and size >= len(self.marks) * self.SLICE:
                self.marks.append(now)
                if self.pids:
                    self.usage.append(self._server_usage())

    def slices(self):
        """Seconds per 8 MiB slice, or [] when nothing was stored."""
        return [b - a for a, b in zip(self.marks, self.marks[1:])]

    def record(self, into):
        """Append this run's worst slice, its index and the median slice to
        `into` (a worst_chunk() dict of lists), and, when the server's
        processes were read, slice #0's faults and CPU and the median
        slice's, with both slices' seconds (into["server"], a list of
        6-tuples: seconds, faults and CPU s, each #0 then median)."""
        s = self.slices()
        if len(s) < 2:
            return
        into["worst"].append(max(s))
        into["worst_index"].append(s.index(max(s)))
        into["median"].append(median(s))
        steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(self.usage, self.usage[1:])]
        if len(steps) >= 2:
            into.setdefault("server", []).append(
                (s[0], median(s[1:]), steps[0][0], median([x[0] for x in steps[1:]]),
                 steps[0][1], median([x[1] for x in steps[1:]])))


class BenchSshd(sshd_mod.Sshd):
    """The test suite's sshd with the cipher pinned (so relay, sftp and bare
    libssh2 are compared on the same one) and the limits raised for a few
    hundred simultaneous connections."""

    OVERRIDE = ("maxsessions", "maxstartups", "loglevel", "ciphers", "macs")

    def __init__(self, directory, authorized_keys_file, cipher, mac=None):
        super().__init__(directory, "default", authorized_keys_file)
        self.cipher = cipher
        self.mac = mac

    def _config(self):
        # sshd takes the first value of a keyword: drop the suite's own.
        lines = [l for l in super()._config().splitlines()
                 if l.split(" ", 1)[0].lower() not in self.OVERRIDE]
        lines += ["MaxSessions 1000", "MaxStartups 2000:30:4000", "LogLevel INFO",
                  "Ciphers %s" % self.cipher]
        if self.mac:
            lines.append("MACs %s" % self.mac)
        return "\n".join(lines) + "\n"


class CpuCgroup:
    """A cgroup-v1 cpuacct group: CPU time of a process and everything it
    forks, exited processes included. sshd's privilege-separated children
    do not reach the listener's cutime, so this is how sshd is measured.
    None of it when the hierarchy is missing or read-only."""

    ROOT = "/sys/fs/cgroup/cpuacct"

    def __init__(self, name):
        self.path = os.path.join(self.ROOT, "%s-%d" % (name, os.getpid()))
        try:
            os.mkdir(self.path)
        except OSError:
            self.path = None

    def add(self, pid):
        if not self.path:
            return False
        try:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write(str(pid))
            return True
        except OSError:
            return False

    def seconds(self):
        with open(os.path.join(self.path, "cpuacct.usage")) as f:
            return int(f.read()) / 1e9

    def leave(self, pid):
        """Move `pid` back to the root group (so this one can be removed)."""
        try:
            with open(os.path.join(self.ROOT, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        except OSError:
            pass

    def remove(self):
        if self.path:
            try:
                os.rmdir(self.path)
            except OSError:
                pass


class PubKey:
    """The one client key pair, in the shape write_authorized_keys wants."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "id_ed25519")
        sshd_mod.run([sshd_mod.SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "wcbench",
                      "-f", self.path])

    def public_keys(self):
        with open(self.path + ".pub") as f:
            return [f.read().strip()]


class Bench:
    def __init__(self, args):
        self.args = args
        self.mode = MODES["full" if args.full else "quick"].copy()
        for k in ("size", "mix_size"):
            if getattr(args, k + "_mib"):
                self.mode[k] = getattr(args, k + "_mib") * MiB
        for k in ("smallops", "reps", "conc_reps"):
            if getattr(args, k):
                self.mode[k] = getattr(args, k)
        self.wsbench_bin = os.path.join(args.build_dir, "bench", "wsbench")
        self.bare_bin = os.path.join(args.build_dir, "bench", "bare_libssh2")
        self.relay_bin = os.path.join(args.build_dir, "wattcloud-relay")
        for b in (self.wsbench_bin, self.bare_bin, self.relay_bin):
            if not os.access(b, os.X_OK):
                sys.exit("bench: %s is missing: run bench/run.sh, which builds it" % b)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.work = args.work_dir or tempfile.mkdtemp(prefix="wcbench-%s-" % stamp)
        os.makedirs(self.work, exist_ok=True)
        os.chmod(self.work, 0o755)  # sshd reads authorized_keys as wctest
        self.pw = sshd_mod.ensure_test_user()
        base = args.data_dir or "/dev/shm"
        self.data = os.path.join(base, "wcbench-%d" % os.getpid())
        os.makedirs(self.data)
        os.chown(self.data, self.pw.pw_uid, self.pw.pw_gid)
        os.chmod(self.data, 0o755)
        self.key = PubKey(self.work)
        # sshd reads authorized_keys as wctest: AuthorizedKeys puts it where
        # that user can reach it wherever the checkout is.
        self.authkeys = sshd_mod.AuthorizedKeys(self.key.public_keys(), self.pw)
        self.sshd = BenchSshd(os.path.join(self.work, "sshd"), self.authkeys.pattern,
                              args.cipher, args.mac)
        self.relays = []
        self.results = {}
        self.raw = {}
        self.notes = []
        self.profiles = {}  # kind -> (by library, top functions), from profile()

    # -- helpers -----------------------------------------------------------

    def start_relay(self, name):
        env = {
            "SFTP_ALLOW_PRIVATE_CIDRS": "127.0.0.0/8",
            "POW_DIFFICULTY_BITS": "12",
            "SFTP_ALLOWED_PORTS": str(self.sshd.port),
            # Every benchmark session needs a fresh single-use cookie.
            "AUTH_CHALLENGE_PER_MIN": "1000000",
            "SFTP_MAX_CONCURRENT_PER_IP": "1000",
            "MAX_SESSIONS": "1000",
            "LOG_LEVEL": "info",
            "SHUTDOWN_GRACE_SECS": "3",
        }
        for item in self.args.relay_env or []:
            k, _, v = item.partition("=")
            env[k] = v
        r = Relay(self.relay_bin, env, os.path.join(self.work, "relay-%s.log" % name)).start()
        self.relays.append(r)
        return r

    def stop_relay(self, r):
        rc = r.stop()
        if rc != 0:
            self.notes.append("relay (%s) exited with status %s on SIGTERM" % (r.log_path, rc))
        if r in self.relays:
            self.relays.remove(r)

    def path(self, name):
        return os.path.join(self.data, name)

    def sshd_cpu(self):
        """CPU seconds of sshd and all its connection processes so far, or
        None when they cannot be measured."""
        return self.sshd_cg.seconds() if self.sshd_measured else None

    def sshd_settle(self, timeout=5.0):
        """Wait until sshd has no connection processes left, so that the
        previous run's teardown is not counted in the next one."""
        deadline = time.monotonic() + timeout
        while self.sshd.descendant_pids() and time.monotonic() < deadline:
            time.sleep(0.02)

    def measured(self, fn):
        """Run fn() and return (its value, client CPU s, sshd CPU s, client
        minor page faults): the client is every process we started and
        reaped in fn (wsbench and its children, sftp + ssh, bare_libssh2)."""
        self.sshd_settle()
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        s0 = self.sshd_cpu()
        value = fn()
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.sshd_settle()
        s1 = self.sshd_cpu()
        client = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
        return (value, client, (s1 - s0) if s0 is not None else None,
                c1.ru_minflt - c0.ru_minflt)

    def mkdir(self, name):
        p = self.path(name)
        os.mkdir(p)
        os.chown(p, self.pw.pw_uid, self.pw.pw_gid)
        return p

    def remove(self, name):
        p = self.path(name)
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        elif os.path.exists(p):
            os.unlink(p)

    def make_file(self, name, size):
        p = self.path(name)
        with open(p, "wb") as f:
            left = size
            block = 8 * MiB
            while left:
                n = min(block, left)
                f.write(os.urandom(n))
                left -= n
        os.chown(p, self.pw.pw_uid, self.pw.pw_gid)
        return p

    def wsbench(self, relay, args, sessions=1, timeout=600, check=True):
        argv = [self.wsbench_bin, "--relay", "127.0.0.1:%d" % relay.port, "--host", "127.0.0.1",
                "--port", str(self.sshd.port), "--user", sshd_mod.TEST_USER, "--key",
                self.key.path, "--relay-pid", str(relay.proc.pid),
                "--sessions", str(sessions)] + args
        res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             timeout=timeout)
        out = res.stdout.decode(errors="replace").strip().splitlines()
        kv = parse_kv(out[-1]) if out else {}
        if check and (res.returncode != 0 or kv.get("errors", 1) != 0):
            raise RuntimeError("wsbench %s failed (%d): %s %s\nrelay log: %s"
                               % (" ".join(args), res.returncode, out[-1] if out else "",
                                  res.stderr.decode(errors="replace"), relay.log_path))
        return kv

    def bare_run(self, args):
        argv = [self.bare_bin, "--port", str(self.sshd.port), "--user", sshd_mod.TEST_USER,
                "--key", self.key.path] + args
        res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
        if res.returncode != 0:
            raise RuntimeError("bare_libssh2 %s failed: %s"
                               % (" ".join(args), res.stderr.decode(errors="replace")))
        return parse_kv(res.stdout.decode().strip().splitlines()[-1])

    def sftp_argv(self, batch_path):
        argv = ["sftp", "-q", "-b", batch_path, "-i", self.key.path, "-P", str(self.sshd.port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
                "-o", "Ciphers=%s" % self.args.cipher]
        # The client's MAC: with --mac only that one, as sshd offers.
        argv += ["-o", "MACs=%s" % self.args.mac] if self.args.mac else []
        return argv + ["%s@127.0.0.1" % sshd_mod.TEST_USER]

    def write_batch(self, name, lines):
        path = os.path.join(self.work, name)
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def sftp_timed(self, commands, name):
        """Run `commands` in one `sftp -b` batch between two local timestamps
        (`!date`), so the SSH connection set-up is not counted. Seconds."""
        batch = self.write_batch(name, ["!date +%s.%N"] + commands + ["!date +%s.%N"])
        res = subprocess.run(self.sftp_argv(batch), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, timeout=600)
        stamps = [float(l) for l in res.stdout.decode().split() if re.fullmatch(r"\d+\.\d+", l)]
        if res.returncode != 0 or len(stamps) != 2:
            raise RuntimeError("sftp batch %s failed (%d): %s" % (
                name, res.returncode, res.stderr.decode(errors="replace")[-2000:]))
        return stamps[1] - stamps[0]

    # -- 0. correctness ----------------------------------------------------

    def check_data_path(self, relay):
        """One untimed round trip with checksums: a fast benchmark of a
        broken data path would be worthless."""
        import hashlib
        want = hashlib.sha256()
        with open(self.src, "rb") as f:
            for block in iter(lambda: f.read(8 * MiB), b""):
                want.update(block)
        kv = self.wsbench(relay, ["--sha256", "download", self.src])
        if kv.get("sha256") != want.hexdigest() or kv.get("bytes") != self.mode["size"]:
            raise RuntimeError("download through the relay returned other bytes: %r" % kv)
        dst = self.path("check-up.bin")
        self.wsbench(relay, ["--src", self.src, "upload", dst, str(self.mode["size"])])
        got = hashlib.sha256()
        with open(dst, "rb") as f:
            for block in iter(lambda: f.read(8 * MiB), b""):
                got.update(block)
        os.unlink(dst)
        if got.hexdigest() != want.hexdigest():
            raise RuntimeError("upload through the relay stored other bytes")
        log("data path checked: download and upload are byte-exact (SHA-256)")

    # -- 1./2. single-session transfers -----------------------------------

    def setup_costs(self, relay):
        """Client and sshd CPU of a session that moves nothing (connect,
        authenticate, close), per variant: subtracted from the transfer
        runs so that their CPU per GiB is the transfer's alone."""
        empty = self.path("empty.bin")
        open(empty, "wb").close()
        runs = {
            "relay": lambda: self.wsbench(relay, ["idle", "0"]),
            "sftp": lambda: self.sftp_timed([], "batch-empty.txt"),
            "bare": lambda: self.bare_run(["read", empty]),
        }
        cost = {}
        for variant, fn in runs.items():
            samples = [self.measured(fn)[1:] for _ in range(3)]
            cost[variant] = (median([c for c, _, _ in samples]),
                             median([x for _, x, _ in samples]) or 0.0,
                             median([f for _, _, f in samples]) or 0)
        os.unlink(empty)
        self.raw["setup_cpu_s"] = cost
        return cost

    def transfers(self, relay):
        size = self.mode["size"]
        gib = size / GiB
        setup = self.setup_costs(relay)
        for kind in ("download", "upload"):
            runs = {"relay": [], "sftp": [], "bare": []}
            cpu = {v: {"client": [], "relay": [], "sshd": []} for v in runs}
            # Minor page faults per GiB: the relay's (from /proc, over the
            # measured phase) and the client's (rusage of reaped children,
            # less a session that moves nothing).
            faults = {v: {"client": [], "relay": []} for v in runs}
            chunk = {"worst": [], "median": [], "worst_index": []}
            bare_chunk = {"worst": [], "median": [], "worst_index": []}
            # Each variant's 8 MiB slices as the server stored them.
            stored = {v: {"worst": [], "median": [], "worst_index": []} for v in runs}
            dst = self.path("up.bin")
            for rep in range(self.mode["reps"]):
                for variant in rotate(["relay", "sftp", "bare"], rep):
                    growth = (FileGrowth(dst, self.sshd.descendant_pids) if kind == "upload"
                              else None)
                    if growth:
                        self.remove("up.bin")
                        growth.start()
                    if variant == "relay":
                        args = (["download", self.src] if kind == "download" else
                                ["--src", self.src, "upload", dst, str(size)])
                        kv, client, sshd, flt = self.measured(
                            lambda: self.wsbench(relay, args))
                        secs = kv["max_session_secs"]
                        cpu[variant]["relay"].append(kv["relay_cpu_s"] / gib)
                        if kv.get("relay_minflt", -1) >= 0:
                            faults[variant]["relay"].append(kv["relay_minflt"] / gib)
                        if kind == "upload":
                            chunk["worst"].append(kv.get("worst_chunk_secs"))
                            chunk["median"].append(kv.get("median_chunk_secs"))
                            chunk["worst_index"].append(kv.get("worst_chunk_index"))
                    elif variant == "sftp":
                        cmd = ("get %s /dev/null" % self.src if kind == "download" else
                               "put %s %s" % (self.src, dst))
                        secs, client, sshd, flt = self.measured(
                            lambda: self.sftp_timed([cmd], "batch-%s.txt" % kind))
                    else:
                        kv, client, sshd, flt = self.measured(lambda: self.bare_run(
                            ["read", self.src] if kind == "download" else
                            ["--src", self.src, "write", dst, str(size)]))
                        secs = kv["secs"]
                        # bare_libssh2 is the relay's SSH half on its own: its
                        # own transfer-phase CPU is the floor for the relay's.
                        cpu[variant]["relay"].append(kv["cpu_s_per_gib"])
                        if kind == "upload":
                            bare_chunk["worst"].append(kv.get("worst_chunk_secs"))
                            bare_chunk["median"].append(kv.get("median_chunk_secs"))
                            bare_chunk["worst_index"].append(kv.get("worst_chunk_index"))
                        self.cipher_seen = (kv["cipher_cs"], kv["cipher_sc"])
                        self.libssh2_version = kv["libssh2"]
                    if growth:
                        growth.stop()
                        growth.record(stored[variant])
                    cpu[variant]["client"].append(max(0.0, client - setup[variant][0]) / gib)
                    faults[variant]["client"].append(max(0, flt - setup[variant][2]) / gib)
                    cpu[variant]["sshd"].append(
                        None if sshd is None else max(0.0, sshd - setup[variant][1]) / gib)
                    runs[variant].append(size / secs / 1e6)
                    if kind == "upload" and os.path.getsize(dst) != size:
                        raise RuntimeError("%s upload stored %d bytes, not %d"
                                           % (variant, os.path.getsize(dst), size))
                log("%s rep %d: relay %.0f, sftp %.0f, bare %.0f MB/s" % (
                    kind, rep + 1, runs["relay"][-1], runs["sftp"][-1], runs["bare"][-1]))
            self.remove("up.bin")
            self.raw[kind] = dict(mbps=runs, cpu_s_per_gib=cpu, minflt_per_gib=faults,
                                  chunk_secs=chunk, bare_chunk_secs=bare_chunk,
                                  stored_slice_secs=stored)
            self.results[kind] = {k: median(v) for k, v in runs.items()}
            self.results[kind]["relay_cpu"] = median(cpu["relay"]["relay"])
            self.results[kind]["bare_cpu"] = median(cpu["bare"]["relay"])
            self.results[kind]["cpu"] = {v: {p: median(x) for p, x in d.items()}
                                         for v, d in cpu.items()}
            self.results[kind]["faults"] = {v: {p: median(x) for p, x in d.items()}
                                            for v, d in faults.items()}
            if kind == "upload":
                self.results[kind]["chunk"] = worst_chunk(chunk)
                self.results[kind]["bare_chunk"] = worst_chunk(bare_chunk)
                self.results[kind]["stored"] = {v: worst_chunk(c) for v, c in stored.items()}
                # Medians over the runs of slice #0's server faults and CPU
                # and of the median slice's.
                self.results[kind]["server_first"] = {
                    v: [median([x[i] for x in c["server"]]) for i in range(6)]
                    for v, c in stored.items() if c.get("server")}

    # -- 3. small operations ----------------------------------------------

    def smallops(self, relay):
        n = self.mode["smallops"]
        rel, direct, lat = [], [], []
        for rep in range(self.mode["reps"]):
            for variant in rotate(["relay", "sftp"], rep):
                d = self.mkdir("ops-%s-%d" % (variant, rep))
                if variant == "relay":
                    kv = self.wsbench(relay, ["smallops", d, str(n)])
                    rel.append(kv["ops"] / kv["max_session_secs"])
                    lat.append({k[3:]: kv[k] for k in kv if k.startswith("us_")})
                else:
                    cmds = []
                    for i in range(n):
                        a, b = "%s/d%d" % (d, i), "%s/e%d" % (d, i)
                        # sftp has no plain stat command: df (statvfs@openssh.com
                        # on the path) is its one-round-trip path query.
                        cmds += ["mkdir " + a, "df " + a, "rename %s %s" % (a, b),
                                 "ls -l " + b, "rmdir " + b]
                    direct.append(5 * n / self.sftp_timed(cmds, "batch-ops.txt"))
                self.remove(os.path.basename(d))
            log("smallops rep %d: relay %.0f, sftp %.0f ops/s" % (rep + 1, rel[-1], direct[-1]))
        self.raw["smallops"] = dict(relay=rel, sftp=direct, relay_latency_us=lat)
        self.results["smallops"] = dict(
            relay=median(rel), sftp=median(direct),
            latency_us={k: median([l[k] for l in lat]) for k in lat[0]})

    # -- 4. concurrent sessions -------------------------------------------

    def sftp_concurrent(self, n, mix_src, size):
        """n `sftp -b` processes doing the same get + put, started together:
        each batch says it is connected, then waits for a GO file."""
        sync = os.path.join(self.work, "sync")
        shutil.rmtree(sync, ignore_errors=True)
        os.makedirs(sync)
        go = os.path.join(sync, "GO")
        procs = []
        for i in range(n):
            batch = self.write_batch("batch-conc-%d.txt" % i, [
                "!sh -c 'touch %s/ready-%d; while [ ! -e %s ]; do sleep 0.01; done'"
                % (sync, i, go),
                "get %s /dev/null" % mix_src,
                "put %s %s" % (mix_src, self.path("conc/up-sftp-%d" % i)),
                "!date +%s.%N",
            ])
            procs.append(subprocess.Popen(self.sftp_argv(batch), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE))
        deadline = time.monotonic() + 120
        while (len([f for f in os.listdir(sync) if f.startswith("ready-")]) < n
               and time.monotonic() < deadline and all(p.poll() is None for p in procs)):
            time.sleep(0.02)
        t0 = time.time()
        open(go, "w").close()
        ends, errors = [], 0
        for p in procs:
            out, err = p.communicate(timeout=600)
            stamps = [float(l) for l in out.decode().split() if re.fullmatch(r"\d+\.\d+", l)]
            if p.returncode != 0 or not stamps:
                errors += 1
            else:
                ends.append(stamps[-1])
        wall = max(ends) - t0 if ends else float("nan")
        return dict(mbps=(n - errors) * 2 * size / wall / 1e6, errors=errors, wall=wall)

    @staticmethod
    def proc_status(pid, field):
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return None

    def settled_rss_kib(self, relay, threads, timeout=30.0):
        """The relay's RSS once its sessions are gone: the worker threads
        have ended (back to `threads`) and the last session's clean-up
        (malloc_trim) has run. None when they do not end in time."""
        deadline = time.monotonic() + timeout
        while self.proc_status(relay.proc.pid, "Threads") > threads:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        time.sleep(0.5)  # the service thread frees the last session after the join
        return self.proc_status(relay.proc.pid, "VmRSS")

    def concurrent(self, relay):
        n, size = self.args.sessions, self.mode["mix_size"]
        mix_src = self.make_file("mix.bin", size)
        rel, ref = [], []
        # RSS of the warmed-up relay with no session, before the bursts and
        # after each: memory kept after sessions end.
        threads0 = self.proc_status(relay.proc.pid, "Threads")
        rss0 = self.proc_status(relay.proc.pid, "VmRSS")
        after = []
        for rep in range(self.mode["conc_reps"]):
            for variant in rotate(["relay", "sftp"], rep):
                self.remove("conc")
                self.mkdir("conc")
                if variant == "relay":
                    kv = self.wsbench(relay, ["mix", mix_src, self.path("conc/up-%d"), str(size)],
                                      sessions=n, check=False)
                    kv["cpu_s_per_gib"] = (kv["relay_cpu_s"] / (kv["bytes"] / GiB)
                                           if kv.get("bytes") else None)
                    kv["minflt_per_gib"] = (kv["relay_minflt"] / (kv["bytes"] / GiB)
                                            if kv.get("bytes") else None)
                    kv["rss_after_kib"] = self.settled_rss_kib(relay, threads0)
                    after.append(kv["rss_after_kib"])
                    rel.append(kv)
                    log("concurrent rep %d relay: %d/%d ok, %.0f MB/s, relay CPU %.2f s/GiB, "
                        "peak RSS %.1f MiB%s" % (
                            rep + 1, kv["ok"], n, kv["mbps"], kv["cpu_s_per_gib"] or 0,
                            kv["relay_hwm_kb"] / 1024,
                            (" first error: " + kv["error"]) if kv.get("error") else ""))
                else:
                    r = self.sftp_concurrent(n, mix_src, size)
                    ref.append(r)
                    log("concurrent rep %d sftp: %d errors, %.0f MB/s"
                        % (rep + 1, r["errors"], r["mbps"]))
        self.remove("conc")
        self.raw["concurrent"] = dict(relay=rel, sftp=ref)
        self.results["concurrent"] = dict(
            sessions=n, size=size,
            relay_mbps=median([k["mbps"] for k in rel]),
            sftp_mbps=median([r["mbps"] for r in ref]),
            errors=sum(k["errors"] for k in rel),
            sftp_errors=sum(r["errors"] for r in ref),
            cpu=median([k["cpu_s_per_gib"] for k in rel]),
            hwm_mib=max(k["relay_hwm_kb"] for k in rel) / 1024,
            faults=median([k["minflt_per_gib"] for k in rel]),
            rss0_mib=rss0 / 1024,
            rss_after_mib=(max(after) / 1024) if after and None not in after else None,
            first_error=next((k["error"] for k in rel if k.get("error")), None))

    # -- 5. memory ---------------------------------------------------------

    def memory(self):
        n = self.args.idle_sessions
        relay = self.start_relay("idle")
        try:
            # One session first, so one-time allocations (TLS/crypto
            # tables, first thread arena) are in the baseline.
            self.wsbench(relay, ["smallops", self.mkdir("warm"), "1"])
            time.sleep(1)
            kv = self.wsbench(relay, ["idle", "3"], sessions=n, timeout=300, check=False)
        finally:
            self.stop_relay(relay)
        per = (kv["relay_rss_ready_kb"] - kv["relay_rss_before_kb"]) / n
        log("idle: %d/%d sessions ready; relay RSS %.1f -> %.1f MiB: %.0f KiB per session" % (
            kv.get("ready", 0), n, kv["relay_rss_before_kb"] / 1024,
            kv["relay_rss_ready_kb"] / 1024, per))
        self.raw["idle"] = kv
        self.results["idle"] = dict(sessions=n, ready=kv.get("ready", 0),
                                    rss0_mib=kv["relay_rss_before_kb"] / 1024,
                                    rssn_mib=kv["relay_rss_ready_kb"] / 1024, per_kib=per,
                                    error=kv.get("error"))

        # Peak RSS during a 1 GiB upload (generated data: no 1 GiB source
        # file needed in quick mode), in a fresh relay.
        size = self.args.peak_upload_mib * MiB
        relay = self.start_relay("upload-peak")
        try:
            self.wsbench(relay, ["smallops", self.mkdir("warm2"), "1"])
            kv = self.wsbench(relay, ["upload", self.path("peak.bin"), str(size)], timeout=900)
        finally:
            self.stop_relay(relay)
            self.remove("peak.bin")
        log("upload of %d MiB: peak relay RSS %.1f MiB (%.0f MB/s)"
            % (size // MiB, kv["relay_hwm_kb"] / 1024, kv["mbps"]))
        self.raw["upload_peak"] = kv
        self.results["upload_peak"] = dict(size=size, hwm_mib=kv["relay_hwm_kb"] / 1024,
                                           rss_start_mib=kv["relay_rss_ready_kb"] / 1024)

    # -- the run -----------------------------------------------------------

    def load_check_start(self):
        """How busy the machine is before we start (3 s of /proc/stat), and
        the start of the 'during' measure: every process of ours (this
        script and all it starts, sshd in its own group) is in a cpuacct
        group, so the machine's busy time minus theirs is everyone else's."""
        self.load_start = " ".join(open("/proc/loadavg").read().split()[:3])
        self.busy_start = busy_cpus(3.0)
        self.fault_usecs = [fault_cost_usecs()]
        if self.busy_start > BUSY_CPUS:
            log("WARNING: the machine is busy before the start (%.2f CPUs in use by other "
                "processes, load %s): the run will be printed, not written to RESULTS.md"
                % (self.busy_start, self.load_start))
        self.all_cg = CpuCgroup("wcbench-all")
        self.all_measured = self.all_cg.add(os.getpid())
        self.jiffies0 = read_cpu_times()[0]
        self.wall0 = time.monotonic()

    def measure_floor(self):
        """bench/floor.sh on this machine now, for the cipher under test: the
        floor moves with the machine (a VM whose host is busier or quieter),
        so the relay is compared with the floor of its own run."""
        self.floor = None
        name = FLOOR_CIPHERS.get(self.args.cipher)
        if name is None:
            self.notes.append("no floor for cipher %s (bench/floor.sh prices %s)"
                              % (self.args.cipher, ", ".join(sorted(FLOOR_CIPHERS))))
            return
        res = subprocess.run(["bash", os.path.join(ROOT, "bench", "floor.sh"), name],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        floor = {}
        for line in res.stdout.decode(errors="replace").splitlines():
            m = re.match(r"floor (download|upload), \S+\s+([0-9.]+)$", line)
            if m:
                floor[m.group(1)] = float(m.group(2))
        if res.returncode != 0 or len(floor) != 2:
            self.notes.append("bench/floor.sh failed: %s" % res.stdout.decode(errors="replace"))
            return
        self.floor = floor
        log("floor (bench/floor.sh %s): download %.2f, upload %.2f CPU-s/GiB"
            % (name, floor["download"], floor["upload"]))

    def load_check_end(self):
        """Other processes' average CPUs during the run, or None when our
        own CPU could not be measured (no cpuacct groups)."""
        self.load_end = " ".join(open("/proc/loadavg").read().split()[:3])
        self.fault_usecs.append(fault_cost_usecs())
        self.busy_during = None
        if self.all_measured and self.sshd_measured:
            busy = (read_cpu_times()[0] - self.jiffies0) / os.sysconf("SC_CLK_TCK")
            ours = self.all_cg.seconds() + self.sshd_cg.seconds()
            self.busy_during = max(0.0, busy - ours) / max(1e-3, time.monotonic() - self.wall0)
        else:
            self.notes.append("load during the run not measured (no writable cgroup-v1 "
                              "cpuacct): only the load before the start was checked")
        self.all_cg.leave(os.getpid())
        self.all_cg.remove()
        self.busy = (self.busy_start > BUSY_CPUS or
                     (self.busy_during is not None and self.busy_during > BUSY_CPUS))

    def run(self):
        t_start = time.monotonic()
        self.load_check_start()
        log("work dir %s, data dir %s" % (self.work, self.data))
        if not self.args.only or "transfer" in self.args.only:
            self.measure_floor()
        self.sshd.start()
        self.sshd_cg = CpuCgroup("wcbench-sshd")
        self.sshd_measured = self.sshd_cg.add(self.sshd.proc.pid)
        if not self.sshd_measured:
            self.notes.append("sshd CPU not measured: no writable cgroup-v1 cpuacct "
                              "hierarchy at %s" % CpuCgroup.ROOT)
        log("sshd on port %d (Ciphers %s)" % (self.sshd.port, self.args.cipher))
        try:
            self.src = self.make_file("src.bin", self.mode["size"])
            relay = self.start_relay("main")
            log("relay pid %d on port %d" % (relay.proc.pid, relay.port))
            self.check_data_path(relay)
            if not self.args.only or "transfer" in self.args.only:
                self.transfers(relay)
            if not self.args.only or "smallops" in self.args.only:
                self.smallops(relay)
            if not self.args.only or "concurrent" in self.args.only:
                self.concurrent(relay)
            if self.args.profile:
                self.profile(relay)
            self.stop_relay(relay)
            if not self.args.only or "memory" in self.args.only:
                self.memory()
        finally:
            for r in list(self.relays):
                self.stop_relay(r)
            self.sshd.stop()
            if hasattr(self, "sshd_cg"):
                self.load_check_end()
                self.sshd_cg.remove()
            shutil.rmtree(self.data, ignore_errors=True)
            self.authkeys.remove()
        self.elapsed = time.monotonic() - t_start
        with open(os.path.join(self.work, "raw.json"), "w") as f:
            json.dump(dict(results=self.results, raw=self.raw), f, indent=1, default=str)
        report = self.report()
        print()
        print(report)
        self.write_results(report)
        log("logs, batches and raw.json in %s" % self.work)

    # -- profiling (optional) ---------------------------------------------

    def profile(self, relay):
        """perf record the relay during one download and one upload."""
        if not shutil.which("perf"):
            self.notes.append("--profile: perf not found")
            return
        for kind in ("download", "upload"):
            data = os.path.join(self.work, "perf-%s.data" % kind)
            # --profile-faults: where the relay takes its page faults (every
            # one recorded) instead of where it spends CPU.
            what = (["-e", "minor-faults", "-c", "1"] if self.args.profile_faults
                    else ["-F", "999"])
            perf = subprocess.Popen(["perf", "record", *what, "--call-graph",
                                     "dwarf,16384", "-o", data, "-p", str(relay.proc.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            if kind == "download":
                self.wsbench(relay, ["download", self.src])
            else:
                self.wsbench(relay, ["--src", self.src, "upload", self.path("up.bin"),
                                     str(self.mode["size"])])
                self.remove("up.bin")
            perf.send_signal(2)
            perf.wait()
            report = os.path.join(self.work, "perf-%s.txt" % kind)
            with open(report, "w") as f:
                # Self time per function, then inclusive time (callers
                # included) to see which part of the relay spends it.
                for mode in ("--no-children", "--children"):
                    f.write("==== perf report %s\n" % mode)
                    f.flush()
                    subprocess.run(["perf", "report", "-i", data, mode, "--stdio",
                                    "--percent-limit", "1.5", "--sort", "dso,symbol",
                                    "-g", "none"], stdout=f, stderr=subprocess.DEVNULL)
                # Self time per library, every sample counted.
                f.write("==== perf report --sort dso\n")
                f.flush()
                subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio",
                                "--sort", "dso", "-g", "none"], stdout=f,
                               stderr=subprocess.DEVNULL)
            log("profile of a relay %s: %s" % (kind, report))
            self.profiles[kind] = profile_summary(report)

    # -- output ------------------------------------------------------------

    def machine(self):
        def cmd(argv):
            try:
                r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                return r.stdout.decode(errors="replace").strip()
            except OSError:
                return "?"
        cpu = "?"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        mem = "?"
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem = "%.1f GiB" % (int(line.split()[1]) / 1024 / 1024)
        # scripts/debian13.sh runs us in a copy without .git and says which
        # commit it copied (and whether relay/ or proto/ had changes).
        commit = os.environ.get("WC_BENCH_COMMIT") or cmd(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
        dirty = os.environ.get("WC_BENCH_DIRTY") if "WC_BENCH_COMMIT" in os.environ \
            else cmd(["git", "-C", ROOT, "status", "--porcelain", "--", "relay", "proto"])
        return [
            ("nproc", str(os.cpu_count())),
            ("CPU", cpu),
            ("memory", mem),
            ("kernel", platform.release()),
            ("libssh2", getattr(self, "libssh2_version", "?")),
            ("relay --version", cmd([self.relay_bin, "--version"])),
            ("OpenSSH", cmd(["ssh", "-V"])),
            ("libwebsockets", cmd(["pkg-config", "--modversion", "libwebsockets"])),
            ("negotiated cipher", "%s (both directions; sshd pinned to Ciphers %s%s)"
             % (getattr(self, "cipher_seen", ("?", "?"))[0], self.args.cipher,
                ", MACs " + self.args.mac if self.args.mac else "")),
            ("relay build", "%s (CMAKE_BUILD_TYPE=Release), commit %s%s"
             % (self.relay_bin, commit, " + uncommitted changes in relay/ or proto/"
                if dirty else "")),
            ("extra relay environment", " ".join(self.args.relay_env or []) or "none"),
            ("page fault", "us per 4 KiB page freshly mapped, at the start and at the end: "
             + ", ".join("%.1f" % u for u in getattr(self, "fault_usecs", []))),
            ("data", "files on %s (%s)" % (os.path.dirname(self.data),
                                            cmd(["stat", "-f", "-c", "%T",
                                                 os.path.dirname(self.data)]))),
        ]

    def report(self):
        R = self.results
        rows = []

        def row(metric, relay, direct, ratio, target, ok):
            rows.append((metric, relay, direct, ratio, target, ok))

        def f(v, fmt="%.0f"):
            return "-" if v is None else fmt % v

        def verdict(ok):
            return "-" if ok is None else ("ok" if ok else "MISS")

        size_txt = "%d MiB" % (self.mode["size"] // MiB)
        for kind in ("download", "upload"):
            if kind not in R:
                continue
            r = R[kind]
            ratio = r["relay"] / r["sftp"]
            row("%s MB/s, 1 session, %s (vs sftp)" % (kind, size_txt), f(r["relay"]),
                f(r["sftp"]), "%.2f" % ratio, ">= %.2f (stretch 1.0)" % TARGETS[kind],
                verdict(ratio >= TARGETS[kind]))
            row("%s MB/s (vs bare libssh2)" % kind, f(r["relay"]), f(r["bare"]),
                "%.2f" % (r["relay"] / r["bare"]), "", "-")
            cr = r["relay_cpu"] / r["bare_cpu"]
            row("%s relay CPU s/GiB (vs bare libssh2)" % kind, f(r["relay_cpu"], "%.2f"),
                f(r["bare_cpu"], "%.2f"), "%.2f" % cr, "<= %.1f" % TARGETS["cpu"],
                verdict(cr <= TARGETS["cpu"]))
            ssh = r["cpu"]["sftp"]["client"]
            row("%s relay CPU s/GiB (vs OpenSSH's sftp + ssh client)" % kind,
                f(r["relay_cpu"], "%.2f"), f(ssh, "%.2f"), "%.2f" % (r["relay_cpu"] / ssh),
                "<= %.1f" % TARGETS["ssh_client_cpu"],
                verdict(r["relay_cpu"] <= TARGETS["ssh_client_cpu"] * ssh))
            fl = (getattr(self, "floor", None) or {}).get(kind)
            if fl:
                row("%s relay CPU s/GiB (vs the floor, bench/floor.sh in this run)" % kind,
                    f(r["relay_cpu"], "%.2f"), f(fl, "%.2f"), "%.2f" % (r["relay_cpu"] / fl),
                    "<= %.1f" % TARGETS["floor"],
                    verdict(r["relay_cpu"] <= TARGETS["floor"] * fl))
            rf = r.get("faults", {}).get("relay", {}).get("relay")
            row("%s relay minor page faults per GiB" % kind, f(rf), "", "",
                "< %d" % TARGETS["faults_per_gib"],
                verdict(None if rf is None else rf < TARGETS["faults_per_gib"]))
            ch = r.get("chunk")
            if ch and ch["worst"] is not None and ch["median"]:
                row("upload: worst 8 MiB chunk s (chunk #%d) vs median chunk s"
                    % ch["worst_index"], f(ch["worst"], "%.3f"), f(ch["median"], "%.3f"),
                    "%.1f" % (ch["worst"] / ch["median"]),
                    "<= %.1f" % TARGETS["worst_chunk_ratio"],
                    verdict(ch["worst"] / ch["median"] <= TARGETS["worst_chunk_ratio"]))
            # The same figure for bare libssh2 against the same sshd: what a
            # fresh SFTP stream costs the server before it runs at speed,
            # with no relay in the path (its chunk #0 is the relay's #1: the
            # relay answers a chunk when it starts writing it).
            ch = r.get("bare_chunk")
            if ch and ch["worst"] is not None and ch["median"]:
                row("upload, bare libssh2: worst 8 MiB write s (#%d) vs median s"
                    % ch["worst_index"], f(ch["worst"], "%.3f"), f(ch["median"], "%.3f"),
                    "%.1f" % (ch["worst"] / ch["median"]), "", "-")
            # What the server stored, timed the same way for every path
            # (FileGrowth): whether a slow start is sshd's and sftp-server's
            # (then OpenSSH's sftp has it too) or the relay's.
            for v, name in (("relay", "relay"), ("sftp", "OpenSSH's sftp"),
                            ("bare", "bare libssh2")):
                ch = r.get("stored", {}).get(v)
                if ch and ch["worst"] is not None and ch["median"]:
                    row("upload, %s: worst 8 MiB stored s (#%d) vs median s"
                        % (name, ch["worst_index"]), f(ch["worst"], "%.3f"),
                        f(ch["median"], "%.3f"), "%.1f" % (ch["worst"] / ch["median"]), "", "-")
        if "smallops" in R:
            r = R["smallops"]
            ratio = r["relay"] / r["sftp"]
            row("small ops/s (vs one sftp -b batch)", f(r["relay"]), f(r["sftp"]),
                "%.2f" % ratio, ">= %.2f" % TARGETS["smallops"],
                verdict(ratio >= TARGETS["smallops"]))
        if "concurrent" in R:
            r = R["concurrent"]
            row("%d sessions, each %d MiB down + up: aggregate MB/s (vs %d x sftp -b)"
                % (r["sessions"], r["size"] // MiB, r["sessions"]),
                f(r["relay_mbps"]), f(r["sftp_mbps"]), "%.2f" % (r["relay_mbps"] / r["sftp_mbps"]),
                "", "-")
            row("%d sessions: failed sessions (all reps)" % r["sessions"], str(r["errors"]),
                str(r["sftp_errors"]), "", "0", verdict(r["errors"] == 0))
            row("%d sessions: relay CPU s/GiB moved" % r["sessions"], f(r["cpu"], "%.2f"), "",
                "", "", "-")
            row("%d sessions: peak relay RSS MiB" % r["sessions"], f(r["hwm_mib"], "%.1f"), "",
                "", "", "-")
            row("%d sessions: relay minor page faults per GiB moved" % r["sessions"],
                f(r.get("faults")), "", "", "", "-")
            ra = r.get("rss_after_mib")
            row("%d sessions: relay RSS MiB after the bursts (sessions gone) vs before"
                % r["sessions"], f(ra, "%.1f"), f(r["rss0_mib"], "%.1f"),
                "-" if ra is None else "%.2f" % (ra / r["rss0_mib"]),
                "<= %.2f" % TARGETS["burst_rss_ratio"],
                verdict(None if ra is None else ra / r["rss0_mib"] <= TARGETS["burst_rss_ratio"]))
        if "idle" in R:
            r = R["idle"]
            row("idle: KiB per authenticated session (%d sessions, %.1f -> %.1f MiB)"
                % (r["sessions"], r["rss0_mib"], r["rssn_mib"]), f(r["per_kib"]), "", "",
                "<= %d" % TARGETS["idle_kib"],
                verdict(r["per_kib"] <= TARGETS["idle_kib"] and r["ready"] == r["sessions"]))
        if "upload_peak" in R:
            r = R["upload_peak"]
            row("peak relay RSS MiB during a %d MiB upload" % (r["size"] // MiB),
                f(r["hwm_mib"], "%.1f"), "", "", "<= %d" % TARGETS["upload_peak_mib"],
                verdict(r["hwm_mib"] <= TARGETS["upload_peak_mib"]))

        head = ("metric", "relay", "direct", "ratio", "target", "")
        widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(6)]
        lines = ["| " + " | ".join(str(c).ljust(widths[i]) for i, c in enumerate(head)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        for r in rows:
            lines.append("| " + " | ".join(str(c).ljust(widths[i]) for i, c in enumerate(r))
                         + " |")
        out = ["### Results (%s mode, medians of %d runs; concurrent: %d runs)"
               % ("full" if self.args.full else "quick", self.mode["reps"],
                  self.mode["conc_reps"]), ""]
        out += lines
        if "download" in R or "upload" in R:
            out += ["", "CPU seconds per GiB moved, by process (medians; the CPU of a "
                    "session that moves nothing is subtracted; relay = the relay process, "
                    "or bare_libssh2's own transfer-phase CPU):", "",
                    "| transfer | path | client | relay | sshd | total "
                    "| client faults/GiB | relay faults/GiB |",
                    "|---|---|---|---|---|---|---|---|"]
            names = {"relay": ("wsbench", "relay"), "sftp": ("sftp + ssh", "-"),
                     "bare": ("bare_libssh2", "-")}
            for kind in ("download", "upload"):
                for v in ("relay", "sftp", "bare"):
                    if kind not in R:
                        continue
                    c = R[kind]["cpu"][v]
                    relay_cpu = c["relay"] if v == "relay" else None
                    client = c["client"]
                    total = client + (c["sshd"] or 0) + (relay_cpu or 0)
                    fl = R[kind].get("faults", {}).get(v, {})
                    out.append("| %s | %s | %.2f | %s | %s | %.2f | %s | %s |" % (
                        kind, names[v][0], client,
                        "%.2f" % relay_cpu if relay_cpu is not None else "-",
                        "%.2f" % c["sshd"] if c["sshd"] is not None else "?", total,
                        f(fl.get("client")), f(fl.get("relay"))))
        first = R.get("upload", {}).get("server_first")
        if first:
            out += ["", "The server's processes (sshd's for the connection and sftp-server) "
                    "while each upload's first 8 MiB is stored, against its median 8 MiB "
                    "(medians of the runs; FileGrowth):", "",
                    "| path | stored s #0 / median | server minor faults #0 / median "
                    "| server CPU s #0 / median |", "|---|---|---|---|"]
            names = {"relay": "relay", "sftp": "OpenSSH's sftp", "bare": "bare libssh2"}
            for v, (t0, tm, f0, fm, c0, cm) in first.items():
                out.append("| %s | %.3f / %.3f | %.0f / %.0f | %.3f / %.3f |"
                           % (names[v], t0, tm, f0, fm, c0, cm))
        if "smallops" in R:
            lat = R["smallops"]["latency_us"]
            out += ["", "Relay small-op latency, median µs per verb: " +
                    ", ".join("%s %.0f" % (k, v) for k, v in lat.items())]
        if self.profiles:
            out += ["", "Where the relay process spends its CPU (perf, --profile; self time, "
                    "share of the relay's samples):", ""]
            for kind, (by_lib, top) in self.profiles.items():
                out.append("- %s, by library: %s" % (kind, ", ".join(
                    "%s %.0f%%" % kv for kv in by_lib[:6])))
                out.append("- %s, top functions: %s" % (kind, ", ".join(
                    "%s %.1f%%" % kv for kv in top[:8])))
        if R.get("concurrent", {}).get("first_error"):
            out += ["", "First concurrent-session error: " + R["concurrent"]["first_error"]]
        if R.get("idle", {}).get("error"):
            out += ["", "First idle-session error: " + R["idle"]["error"]]
        out += ["", "### Machine", ""]
        out += ["- %s: %s" % kv for kv in self.machine()]
        out += ["- run: %s, %.0f s; other processes were using %.2f CPUs just before "
                "the start and %s on average during the run; load average at the start "
                "%s, at the end %s; benchmark niceness %d"
                % (datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), self.elapsed,
                   self.busy_start, "?" if self.busy_during is None else
                   "%.2f" % self.busy_during, self.load_start, self.load_end, os.nice(0))]
        if self.busy:
            out += ["- BUSY MACHINE: other processes used more than %.1f CPUs; this run is "
                    "indicative only and was not written to RESULTS.md" % BUSY_CPUS]
        if self.notes:
            out += ["", "### Notes", ""] + ["- " + n for n in self.notes]
        return "\n".join(out)

    def section_name(self):
        """The RESULTS.md section this run replaces: one per mode, Debian
        release and cipher, so a Debian 13 or an AES run keeps the others."""
        name = "## %s run, Debian %s" % ("Full" if self.args.full else "Quick",
                                         debian_release())
        if self.args.cipher != DEFAULT_CIPHER:
            name += ", " + self.args.cipher
        if self.args.mac:
            name += " + " + self.args.mac
        if os.environ.get("WC_LIBSSH2") == "system":
            name += ", system libssh2 (without our patches)"
        return name

    def write_results(self, report):
        """Replace this mode's section of RESULTS.md. The other mode's
        section and any hand-written section (## Analysis, ...) stay."""
        path = self.args.out
        if self.busy and path == DEFAULT_OUT:
            # A busy machine's figures say more about the neighbours than
            # about the relay: keep them out of the record.
            path = os.path.join(self.work, "RESULTS.md")
            log("the machine was busy (others used %.2f CPUs before, %s during): "
                "not writing %s" % (self.busy_start, "?" if self.busy_during is None
                                    else "%.2f" % self.busy_during, DEFAULT_OUT))
        if self.args.only and path == DEFAULT_OUT:
            # A partial run must not replace the results of a whole one.
            path = os.path.join(self.work, "RESULTS.md")
        section = self.section_name()
        header = ("# Relay benchmark results\n\n"
                  "Written by `bench/run.sh` (see bench/README.md for what each row "
                  "measures). Ratios are relay / direct: above 1 is better for "
                  "throughput, below 1 is better for CPU. Each run section (mode, "
                  "Debian release, cipher when not the default) is replaced by the "
                  "next run of its kind; other sections are kept as they are.\n")
        sections = []
        if os.path.exists(path):
            with open(path) as f:
                text = f.read()
            for m in re.finditer(r"^(## .*?)\n(.*?)(?=^## |\Z)", text, re.M | re.S):
                sections.append((m.group(1), m.group(2).strip()))
        runs = dict(s for s in sections if RUN_SECTION.match(s[0]))
        runs[section] = report
        with open(path, "w") as f:
            f.write(header)
            for name in sorted(runs, key=run_order):
                f.write("\n%s\n\n%s\n" % (name, runs[name]))
            for name, body in sections:
                if not RUN_SECTION.match(name):
                    f.write("\n%s\n\n%s\n" % (name, body))
        log("wrote %s" % path)


RUN_SECTION = re.compile(r"^## (Quick|Full) run\b")


def run_order(name):
    """Quick before Full, then by release and cipher."""
    return (0 if name.startswith("## Quick") else 1, name)


def debian_release():
    """VERSION_ID of /etc/os-release ("12", "13"), or "?"."""
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("VERSION_ID="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "?"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true",
                   help="1 GiB files, 1000 small-op iterations (default: quick, 256 MiB)")
    p.add_argument("--build-dir", default=os.path.join(ROOT, "build-bench"))
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--work-dir", help="logs, keys, sshd config (default: a new /tmp dir)")
    p.add_argument("--data-dir", help="where test files live (default /dev/shm, a tmpfs, "
                   "so the disk does not blur the comparison)")
    p.add_argument("--cipher", default=DEFAULT_CIPHER,
                   help="the one cipher sshd offers (default: libssh2's and OpenSSH's first)")
    p.add_argument("--mac", help="the one MAC sshd offers (default: all of OpenSSH's; "
                   "meaningless with an AEAD cipher)")
    p.add_argument("--sessions", type=int, default=50, help="concurrent sessions (50)")
    p.add_argument("--idle-sessions", type=int, default=200, help="idle sessions (200)")
    p.add_argument("--peak-upload-mib", type=int, default=1024,
                   help="upload size for the peak RSS measurement (1024)")
    p.add_argument("--size-mib", type=int, help="single-session file size")
    p.add_argument("--mix-size-mib", type=int, help="per-session size, concurrent test")
    p.add_argument("--smallops", type=int, help="small-op iterations (5 ops each)")
    p.add_argument("--reps", type=int, help="repetitions of tests 1-3")
    p.add_argument("--conc-reps", type=int, help="repetitions of test 4")
    p.add_argument("--only", action="append",
                   choices=["transfer", "smallops", "concurrent", "memory"],
                   help="run only these parts (repeatable)")
    p.add_argument("--relay-env", action="append", metavar="NAME=VALUE",
                   help="extra environment for the relays, e.g. "
                   "GLIBC_TUNABLES=glibc.malloc.arena_max=2 (repeatable)")
    p.add_argument("--profile", action="store_true",
                   help="also perf-record the relay during a download and an upload")
    p.add_argument("--profile-faults", action="store_true",
                   help="with --profile: record page faults instead of CPU time")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: must run as root (creates the user wctest, starts sshd)")
    Bench(args).run()


if __name__ == "__main__":
    main()
