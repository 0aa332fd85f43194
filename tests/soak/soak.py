#!/usr/bin/env python3
"""Soak test: many concurrent sessions of mixed operations against the real
sshd for a bounded time, then the books are checked.

Not part of scripts/test.sh (it runs for minutes). Run as root from the
repository root, after a build:

    /usr/bin/python3 tests/soak/soak.py [--sessions 100] [--minutes 10]
                                        [--relay build/wattcloud-relay]

Each of N client threads loops until the deadline: log in, run a random
number of random operations in its own directory, then leave — cleanly, or
(injected) by dropping the TCP connection, sometimes in the middle of an
upload or a download. Operations: streamed upload (write_open / chunks /
write_close), streamed download, legacy read and write, list, stat,
rename, delete, write_abort mid-upload.

Checks at the end (exit status 1 if any fails):
  * every upload the relay acknowledged (write_close or write answered {})
    and not since renamed away or deleted is on the server byte for byte,
    every download matched what was uploaded, every listing matched;
  * no file left over that nobody acknowledged (aborted and abandoned
    uploads are removed);
  * no error response at all: the injected faults (aborts, disconnects)
    do not produce error responses;
  * the relay's RSS is back within 10% of its level after a warm-up
    wave of N sessions, its fds back to the idle baseline, one thread
    left.
Figures (operations, bytes, latencies, RSS/fd/thread peaks) are printed
and written to the run directory as soak-summary.json.
"""

import argparse
import atexit
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import websocket  # noqa: E402

import procinfo  # noqa: E402
import sshd as sshd_mod  # noqa: E402
from helpers import LOCAL, pattern, wait_until  # noqa: E402
from relay import Relay  # noqa: E402
from sshd import TEST_PASSWORD, TEST_USER  # noqa: E402
from wsclient import COOKIE_NAME, KiB, MiB, Session, get_cookie  # noqa: E402


def client_ip(n):
    """The address client n claims through X-Forwarded-For. The per-IP
    limits (PROTOCOL §4) would otherwise see 100 sessions from one address:
    above all, at most 5 logins of one address may be in flight at once,
    by design. The relay trusts 127.0.0.1 as a proxy for this run."""
    return "10.77.%d.%d" % (n // 250, n % 250 + 1)


def open_session(relay, port, n, timeout=60):
    cookie = get_cookie(relay, LOCAL, port)
    url = "ws://127.0.0.1:%d/relay/ws?mode=sftp&host=%s&port=%d" % (relay.port, LOCAL, port)
    ws = websocket.create_connection(
        url, header=["Cookie: %s=%s" % (COOKIE_NAME, cookie),
                     "X-Forwarded-For: %s" % client_ip(n)],
        timeout=timeout, suppress_origin=True)
    return Session(ws)


class SoakSshd(sshd_mod.Sshd):
    """The suite's default sshd, taking many connections at once."""

    def _config(self):
        return (super()._config()
                .replace("MaxStartups 100:30:200", "MaxStartups 1000:30:2000")
                .replace("MaxSessions 20", "MaxSessions 100"))


def sha(data):
    return hashlib.sha256(data).hexdigest()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ops = {}
        self.lat = {}
        self.errors = []       # unexpected error responses / exceptions
        self.injected = {}     # faults we caused on purpose
        self.bytes_up = 0
        self.bytes_down = 0
        self.sessions = 0

    def op(self, name, secs):
        with self.lock:
            self.ops[name] = self.ops.get(name, 0) + 1
            self.lat.setdefault(name, []).append(secs)

    def inject(self, name):
        with self.lock:
            self.injected[name] = self.injected.get(name, 0) + 1

    def error(self, what):
        with self.lock:
            self.errors.append(what)

    def add(self, up=0, down=0, sessions=0):
        with self.lock:
            self.bytes_up += up
            self.bytes_down += down
            self.sessions += sessions


class Fatal(Exception):
    """A check failed: the client records it and starts a new session."""


class Client(threading.Thread):
    def __init__(self, n, relay, sshd, base_dir, deadline, stats, seed):
        super().__init__(daemon=True, name="soak-%d" % n)
        self.n = n
        self.relay = relay
        self.sshd = sshd
        self.dir = os.path.join(base_dir, "c%03d" % n)
        self.deadline = deadline
        self.stats = stats
        self.rng = random.Random(seed)
        self.files = {}        # path -> (size, seed): acknowledged uploads
        self.counter = 0

    # -- helpers -------------------------------------------------------

    def expect_ok(self, what, resp):
        if "result" not in resp:
            raise Fatal("%s: %r" % (what, resp))
        return resp["result"]

    def new_path(self):
        self.counter += 1
        return os.path.join(self.dir, "f%05d.bin" % self.counter)

    def timed(self, name, fn, *args):
        t0 = time.monotonic()
        out = fn(*args)
        self.stats.op(name, time.monotonic() - t0)
        return out

    def login(self):
        s = open_session(self.relay, self.sshd.port, self.n, timeout=60)
        s.expect_host_key(timeout=60)
        s.accept_host_key()
        self.expect_ok("auth", s.auth_password(TEST_USER, TEST_PASSWORD))
        self.stats.add(sessions=1)
        return s

    # -- operations ------------------------------------------------------

    def op_upload(self, s):
        size = self.rng.choice([0, 1, 1000, 64 * KiB, 300 * KiB, 1 * MiB, 2 * MiB + 17])
        seed = self.rng.randrange(1 << 30)
        data = pattern(size, seed)
        path = self.new_path()
        chunk = self.rng.choice([64 * KiB, 256 * KiB, 1 * MiB])
        h = self.expect_ok("write_open", s.call("write_open", path=path))["handle"]
        for off in range(0, len(data), chunk):
            self.expect_ok("write_chunk", s.write_chunk(h, data[off:off + chunk], timeout=60))
        self.expect_ok("write_close", s.call("write_close", handle=h, timeout=60))
        self.files[path] = (size, seed)
        self.stats.add(up=size)

    def op_legacy_write(self, s):
        size = self.rng.choice([0, 10, 50 * KiB, 700 * KiB])
        seed = self.rng.randrange(1 << 30)
        data = pattern(size, seed)
        path = self.new_path()
        self.expect_ok("write", s.request_with_binary("write", {"path": path, "size": size},
                                                       data, timeout=60))
        self.files[path] = (size, seed)
        self.stats.add(up=size)

    def pick(self):
        return self.rng.choice(sorted(self.files)) if self.files else None

    def op_download(self, s):
        path = self.pick()
        if not path:
            return self.op_upload(s)
        size, seed = self.files[path]
        h = self.expect_ok("read_open", s.call("read_open", path=path))["handle"]
        parts = []
        while True:
            resp, data = s.call_then_binary("read_chunk", handle=h, timeout=60)
            self.expect_ok("read_chunk", resp)
            parts.append(data)
            if not data:
                break
        self.expect_ok("read_close", s.call("read_close", handle=h))
        got = b"".join(parts)
        if len(got) != size or got != pattern(size, seed):
            raise Fatal("download of %s: %d bytes, expected %d, content %s"
                        % (path, len(got), size, "differs" if len(got) == size else "-"))
        self.stats.add(down=size)

    def op_legacy_read(self, s):
        small = [p for p, (n, _) in self.files.items() if n <= 1 * MiB]
        if not small:
            return self.op_legacy_write(s)
        path = self.rng.choice(sorted(small))
        size, seed = self.files[path]
        resp, data = s.call_then_binary("read", path=path, timeout=60)
        self.expect_ok("read", resp)
        if data != pattern(size, seed):
            raise Fatal("legacy read of %s differs" % path)
        self.stats.add(down=size)

    def op_list(self, s):
        entries = self.expect_ok("list", s.call("list", path=self.dir))["entries"]
        names = {e["path"] for e in entries}
        if names != set(self.files):
            raise Fatal("list %s: extra %r missing %r" % (
                self.dir, sorted(names - set(self.files))[:5],
                sorted(set(self.files) - names)[:5]))
        for e in entries:
            if e["size"] != self.files[e["path"]][0]:
                raise Fatal("list: %s has size %d, expected %d"
                            % (e["path"], e["size"], self.files[e["path"]][0]))

    def op_stat(self, s):
        path = self.pick()
        if not path:
            return
        st = self.expect_ok("stat", s.call("stat", path=path))
        if st["size"] != self.files[path][0] or st["isDir"]:
            raise Fatal("stat %s: %r" % (path, st))

    def op_rename(self, s):
        path = self.pick()
        if not path:
            return
        # Sometimes over another acknowledged file (rename replaces it).
        if len(self.files) > 1 and self.rng.random() < 0.3:
            to = self.rng.choice(sorted(p for p in self.files if p != path))
        else:
            to = self.new_path()
        self.expect_ok("rename", s.call("rename", **{"from": path, "to": to}))
        self.files[to] = self.files.pop(path)

    def op_delete(self, s):
        path = self.pick()
        if not path:
            return
        self.expect_ok("delete", s.call("delete", path=path))
        del self.files[path]

    def op_abort(self, s):
        path = self.new_path()
        h = self.expect_ok("write_open", s.call("write_open", path=path))["handle"]
        for i in range(self.rng.randint(0, 2)):
            self.expect_ok("write_chunk", s.write_chunk(h, pattern(256 * KiB, i), timeout=60))
        self.expect_ok("write_abort", s.call("write_abort", handle=h))
        self.stats.inject("write_abort")
        if os.path.exists(path):
            raise Fatal("write_abort left %s" % path)

    OPS = [("upload", 25), ("download", 20), ("list", 10), ("stat", 10), ("rename", 8),
           ("delete", 7), ("abort", 5), ("legacy_write", 5), ("legacy_read", 5)]

    # -- leaving -----------------------------------------------------------

    def leave(self, s):
        """End the session: cleanly, or (injected) by dropping the TCP
        connection, possibly with an upload or a download open."""
        r = self.rng.random()
        if r < 0.6:
            s.close()
            return
        if r < 0.75:
            self.stats.inject("disconnect")
        elif r < 0.9:
            path = self.new_path()
            h = self.expect_ok("write_open", s.call("write_open", path=path))["handle"]
            self.expect_ok("write_chunk", s.write_chunk(h, pattern(512 * KiB, 1), timeout=60))
            self.stats.inject("disconnect mid-upload")
        else:
            path = self.pick()
            if path:
                h = self.expect_ok("read_open", s.call("read_open", path=path))["handle"]
                s.send_request("read_chunk", {"handle": h})
            self.stats.inject("disconnect mid-download")
        try:
            s.ws.sock.close()
        except OSError:
            pass
        s.closed = True

    def run(self):
        names = [n for n, w in self.OPS]
        weights = [w for n, w in self.OPS]
        while time.monotonic() < self.deadline:
            s = None
            try:
                s = self.login()
                for _ in range(self.rng.randint(1, 25)):
                    if time.monotonic() >= self.deadline:
                        break
                    name = self.rng.choices(names, weights)[0]
                    self.timed(name, getattr(self, "op_" + name), s)
                self.leave(s)
            except Fatal as e:
                self.stats.error("client %d: %s" % (self.n, e))
            except Exception as e:  # a hang, a close, a protocol violation
                self.stats.error("client %d: %s: %s" % (self.n, type(e).__name__, e))
                if os.environ.get("SOAK_TRACE"):
                    traceback.print_exc()
            finally:
                if s is not None and not s.closed:
                    s.close()
            time.sleep(self.rng.random() * 0.2)

    # -- the books -----------------------------------------------------

    def audit(self):
        """Problems with this client's directory on the server."""
        problems = []
        on_disk = set(os.path.join(self.dir, f) for f in os.listdir(self.dir))
        for path in sorted(on_disk - set(self.files)):
            problems.append("left over, never acknowledged: %s (%d bytes)"
                            % (path, os.path.getsize(path)))
        for path, (size, seed) in sorted(self.files.items()):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                problems.append("acknowledged upload missing: %s" % path)
                continue
            if data != pattern(size, seed):
                problems.append("acknowledged upload differs: %s (%d bytes, expected %d)"
                                % (path, len(data), size))
        return problems


def sample(pid, samples, stop):
    while not stop.is_set():
        try:
            samples.append((time.monotonic(), procinfo.rss_kib(pid),
                            procinfo.fd_count(pid), procinfo.thread_count(pid)))
        except (OSError, KeyError):
            return
        stop.wait(1.0)


def trimmed_rss(pid):
    """Diagnosis for an RSS above the baseline: free memory the allocator
    keeps, or memory still in use? Ask glibc (through gdb) to give back
    what is free, and measure again. None without gdb."""
    if not shutil.which("gdb"):
        return None
    subprocess.run(["gdb", "-q", "-batch", "-p", str(pid), "-ex", "call (int) malloc_trim(0)"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    time.sleep(0.5)
    return procinfo.rss_kib(pid)


def percentile(values, p):
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def warm_up(relay, sshd, n, base_dir, user):
    """One wave of n concurrent sessions doing every operation once, so the
    allocator's per-thread arenas, the libraries' one-time state and the
    code pages of every path are there before the RSS baseline is taken."""
    def one(i):
        d = sshd_mod.make_test_dir(base_dir, user.pw_uid, user.pw_gid, "warm%03d" % i)
        a, b = os.path.join(d, "a"), os.path.join(d, "b")
        data = pattern(300 * KiB, i)
        try:
            s = open_session(relay, sshd.port, i, timeout=60)
            s.expect_host_key(timeout=60)
            s.accept_host_key()
            s.auth_password(TEST_USER, TEST_PASSWORD)
            s.call("stat", path=d)
            s.upload(a, data, chunk=200 * KiB)
            s.download(a)
            s.request_with_binary("write", {"path": b, "size": 10}, b"0123456789")
            s.call_then_binary("read", path=b)
            s.call("list", path=d)
            s.call("rename", **{"from": a, "to": b})
            s.call("delete", path=b)
            h = s.write_open(a)
            s.write_chunk(h, data[:1000])
            s.call("write_abort", handle=h)
            s.close()
        except Exception as e:
            print("warm-up %d: %s" % (i, e))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--relay", default=os.environ.get(
        "RELAY_BIN", os.path.join(ROOT, "build", "wattcloud-relay")))
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the relay (settings, GLIBC_TUNABLES)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("soak.py runs as root (test user, sshd)")

    run_dir = os.path.join(ROOT, "tests", "artifacts",
                           time.strftime("soak-%Y%m%d-%H%M%S"))
    os.makedirs(run_dir)
    os.chmod(run_dir, 0o755)
    user = sshd_mod.ensure_test_user()
    keys = sshd_mod.ClientKeys(os.path.join(run_dir, "keys"))
    ak = sshd_mod.AuthorizedKeys(keys.public_keys(), user)
    atexit.register(ak.remove)
    server = SoakSshd(os.path.join(run_dir, "sshd"), "default", ak.pattern).start()
    base_dir = sshd_mod.make_test_dir(user.pw_dir, user.pw_uid, user.pw_gid,
                                      "soak-" + os.path.basename(run_dir))
    env = {
        "SFTP_ALLOWED_PORTS": str(server.port),
        "SFTP_ALLOW_PRIVATE_CIDRS": "127.0.0.0/8",
        "POW_DIFFICULTY_BITS": "12",
        "AUTH_CHALLENGE_PER_MIN": "1000000",
        "TRUSTED_PROXY_IPS": "127.0.0.1",
        "MAX_SESSIONS": str(max(512, args.sessions * 2)),
        "LOG_LEVEL": "info",
        "SHUTDOWN_GRACE_SECS": "5",
    }
    env.update(kv.split("=", 1) for kv in args.env)
    relay = Relay(os.path.abspath(args.relay), env, os.path.join(run_dir, "relay.log"))
    relay.start()
    pid = relay.proc.pid
    stats = Stats()
    ok = True
    try:
        rss_idle = procinfo.rss_kib(pid)
        fds_idle = procinfo.fd_count(pid)
        warm_up(relay, server, args.sessions, base_dir, user)
        wait_until(lambda: procinfo.thread_count(pid) == 1, 30)
        time.sleep(1)
        rss_base = procinfo.rss_kib(pid)
        anon_base = procinfo.status_field(pid, "RssAnon")
        fds_base = procinfo.fd_count(pid)
        print("soak: %d sessions for %.1f min, seed %d; relay pid %d, RSS idle %d KiB, "
              "after warm-up %d KiB, fds %d" % (args.sessions, args.minutes, args.seed, pid,
                                                rss_idle, rss_base, fds_base))

        samples, stop = [], threading.Event()
        sampler = threading.Thread(target=sample, args=(pid, samples, stop), daemon=True)
        sampler.start()
        t0 = time.monotonic()
        deadline = t0 + args.minutes * 60
        clients = []
        for i in range(args.sessions):
            c = Client(i, relay, server, base_dir, deadline, stats, args.seed * 1000 + i)
            sshd_mod.make_test_dir(base_dir, user.pw_uid, user.pw_gid, "c%03d" % i)
            clients.append(c)
        for c in clients:
            c.start()
            time.sleep(0.02)  # spread the logins a little
        for c in clients:
            c.join(timeout=max(1, deadline - time.monotonic()) + 180)
        hung = [c.n for c in clients if c.is_alive()]
        elapsed = time.monotonic() - t0

        # Let the relay finish what the last sessions left (partial uploads
        # are removed by their workers), then look at it.
        settled = wait_until(lambda: procinfo.thread_count(pid) == 1
                             and procinfo.fd_count(pid) <= fds_base, 60)
        time.sleep(2)
        stop.set()
        sampler.join(timeout=5)
        rss_end = procinfo.rss_kib(pid)
        anon_end = procinfo.status_field(pid, "RssAnon")
        fds_end = procinfo.fd_count(pid)
        threads_end = procinfo.thread_count(pid)
        rss_trimmed = trimmed_rss(pid) if rss_end > rss_base * 1.10 else None
        problems = []
        for c in clients:
            problems += c.audit()
        health = relay.http("GET", "/health")[0]

        total_ops = sum(stats.ops.values())
        summary = {
            "sessions": args.sessions, "minutes": args.minutes, "seed": args.seed,
            "elapsed_secs": round(elapsed, 1),
            "logins": stats.sessions,
            "operations": total_ops,
            "operations_per_sec": round(total_ops / elapsed, 1),
            "ops": stats.ops,
            "latency_ms_p50_p99": {k: [round(percentile(v, 50) * 1000, 1),
                                       round(percentile(v, 99) * 1000, 1)]
                                   for k, v in sorted(stats.lat.items())},
            "bytes_up": stats.bytes_up, "bytes_down": stats.bytes_down,
            "injected": stats.injected,
            "unexpected_errors": len(stats.errors),
            "rss_kib": {"idle": rss_idle, "after_warm_up": rss_base,
                        "peak": max([s[1] for s in samples] or [0]), "end": rss_end,
                        "end_after_malloc_trim": rss_trimmed,
                        "anon_after_warm_up": anon_base, "anon_end": anon_end,
                        # at each tenth of the run: growth shows here
                        "timeline": [s[1] for s in samples][::max(1, len(samples) // 10)]},
            "fds": {"idle": fds_idle, "baseline": fds_base,
                    "peak": max([s[2] for s in samples] or [0]), "end": fds_end},
            "threads": {"peak": max([s[3] for s in samples] or [0]), "end": threads_end},
            "files_acknowledged": sum(len(c.files) for c in clients),
            "audit_problems": len(problems),
            "hung_clients": hung,
        }
        with open(os.path.join(run_dir, "soak-summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(json.dumps(summary, indent=2))

        def check(cond, what):
            nonlocal ok
            if not cond:
                ok = False
                print("FAIL: " + what)
        for e in stats.errors[:20]:
            print("error: " + e)
        for p in problems[:20]:
            print("audit: " + p)
        check(not stats.errors, "%d unexpected errors" % len(stats.errors))
        check(not problems, "%d audit problems" % len(problems))
        check(not hung, "clients hung: %r" % hung)
        check(health == 200, "/health answered %s" % health)
        check(settled, "relay did not settle: threads %d, fds %d (baseline %d)"
              % (threads_end, fds_end, fds_base))
        check(threads_end == 1, "threads left: %d" % threads_end)
        check(fds_end <= fds_base, "fds %d > baseline %d" % (fds_end, fds_base))
        if procinfo.is_asan_binary(relay.binary):
            # ASan's quarantine keeps up to 256 MiB of freed memory: its
            # RSS says nothing about ours. LeakSanitizer checks at exit.
            print("note: AddressSanitizer build, RSS not checked")
        else:
            check(rss_end <= rss_base * 1.10,
                  "RSS %d KiB > 110%% of %d KiB after warm-up" % (rss_end, rss_base))
    finally:
        rc = relay.stop()
        server.stop()
        if rc != 0:
            ok = False
            print("FAIL: relay exit status %s on SIGTERM (log %s)" % (rc, relay.log_path))
        sshd_mod.remove_tree(base_dir)
    print("soak: %s (logs in %s)" % ("PASS" if ok else "FAIL", run_dir))
    return 0 if ok else 1


def on_sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_sigterm)
    sys.exit(main())
