#!/usr/bin/python3
"""What the shared store costs (issue 15), on loopback:

  1. cookie round trip (GET /relay/auth/challenge + POST /relay/auth, the
     proof of work itself not counted) and upgrade latency (request sent to
     `101` read), one relay with the embedded store vs one relay with
     STATE_URL pointing at a local redis-server; interleaved, medians and
     p99;
  2. store round trips per challenge, per cookie and per upgrade (the
     store's INFO commandstats before and after);
  3. 200 upgrades/s (--rate) for --secs seconds spread over three relays
     sharing the store: achieved rate, 101s and refusals, latency p50/p99,
     relay and store CPU.

The target of every upgrade is 127.0.0.1 on a port where nothing listens:
the gate says yes, the session fails to connect and ends at once, so only
the HTTP side and the store are measured. Starts its own redis-server (or
valkey-server with --engine) and relays; needs nothing else. Prints a
table; writes it to bench/RESULTS.md only with --write-results (run that on
an idle machine).

    bench/scale.py [--relay build-bench/wattcloud-relay] [--n 300] [--rate 200]
"""

import argparse
import base64
import hashlib
import json
import os
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from relay import Relay  # noqa: E402
from scale import StoreServer  # noqa: E402
from sshd import free_port  # noqa: E402

POW_BITS = 12


def purpose_for(host, port):
    return "sftp:" + hashlib.sha256(("%s:%d" % (host, port)).encode()).hexdigest()[:32]


def solve(nonce_hex, purpose, bits):
    prefix = hashlib.sha256(bytes.fromhex(nonce_hex) + purpose.encode())
    answer = 0
    while True:
        h = prefix.copy()
        h.update(answer.to_bytes(8, "little"))
        if int.from_bytes(h.digest(), "big") >> (256 - bits) == 0:
            return answer
        answer += 1


def http(port, raw):
    """Send one raw request; (status, headers text, body, seconds to the
    whole answer)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while status != 101 and len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, head.decode(), body, time.perf_counter() - t0


def cookie(port, target_port):
    """A cookie; returns (cookie, seconds of the two HTTP round trips)."""
    purpose = purpose_for("127.0.0.1", target_port)
    st, _, body, t1 = http(port, ("GET /relay/auth/challenge?purpose=%s HTTP/1.1\r\n"
                                  "Host: x\r\nConnection: close\r\n\r\n" % purpose).encode())
    assert st == 200, (st, body)
    ch = json.loads(body)
    answer = solve(ch["nonce"], purpose, ch["difficulty"])
    payload = json.dumps({"nonce_id": ch["nonce_id"], "answer": answer}).encode()
    st, head, body, t2 = http(port, b"POST /relay/auth HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Type: application/json\r\nConnection: close\r\n"
                              b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
    assert st == 204, (st, body)
    value = head.split("relay_auth_sftp=", 1)[1].split(";", 1)[0]
    return value, t1 + t2


def upgrade(port, target_port, cookie_value):
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    raw = ("GET /relay/ws?mode=sftp&host=127.0.0.1&port=%d HTTP/1.1\r\nHost: x\r\n"
           "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           "Sec-WebSocket-Key: %s\r\nCookie: relay_auth_sftp=%s\r\n\r\n"
           % (target_port, key, cookie_value)).encode()
    st, _, _, secs = http(port, raw)
    return st, secs


def commandstats(store):
    """{command: calls} from the store's INFO commandstats."""
    text = store.command("INFO", "commandstats").decode()
    out = {}
    for line in text.split("\r\n"):
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_"):].partition(":")
            out[name] = int(rest.split("calls=")[1].split(",")[0])
    return out


def calls_between(a, b):
    return sum(b.get(k, 0) - a.get(k, 0) for k in b if k not in ("info",))


def cpu_secs(pid):
    with open("/proc/%d/stat" % pid) as f:
        f = f.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def ms(x):
    return "%.2f" % (x * 1000)


def relay_env(port, target_port, state_url=None, key=None):
    env = {
        "BIND_ADDR": "127.0.0.1:%d" % port,
        "POW_DIFFICULTY_BITS": str(POW_BITS),
        "AUTH_CHALLENGE_PER_MIN": "1000000",
        "SFTP_MAX_CONCURRENT_PER_IP": "1000",
        "MAX_SESSIONS": "4096",
        "SFTP_ALLOWED_PORTS": str(target_port),
        "SFTP_ALLOW_PRIVATE_CIDRS": "127.0.0.0/8",
        "TRUSTED_PROXY_IPS": "127.0.0.1",
        "LOG_LEVEL": "warn",
        "RELAY_SIGNING_KEY": key,
    }
    if state_url:
        env["STATE_URL"] = state_url
    return env


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--relay", default=os.path.join(ROOT, "build-bench", "wattcloud-relay"))
    ap.add_argument("--n", type=int, default=300, help="samples per variant")
    ap.add_argument("--rate", type=int, default=200, help="upgrades per second, 3 relays")
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--engine", choices=("redis-server", "valkey-server"),
                    default="redis-server", help="the store to measure against")
    ap.add_argument("--write-results", action="store_true",
                    help="append the table to bench/RESULTS.md (idle machine only)")
    args = ap.parse_args()
    if not os.access(args.relay, os.X_OK):
        alt = os.path.join(ROOT, "build", "wattcloud-relay")
        args.relay = alt if os.access(alt, os.X_OK) else args.relay
    work = tempfile.mkdtemp(prefix="wcbench-scale-")
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    target = free_port()  # nothing listens there
    store = StoreServer(os.path.join(work, "store"), args.engine).start()
    relays = []
    try:
        emb = Relay(args.relay, relay_env(free_port(), target, key=key),
                    os.path.join(work, "embedded.log")).start()
        red = Relay(args.relay, relay_env(free_port(), target, store.url, key),
                    os.path.join(work, "redis.log")).start()
        relays += [emb, red]
        time.sleep(0.5)  # the store connection

        # 1. latency, interleaved.
        res = {"embedded": {"cookie": [], "upgrade": []}, "redis": {"cookie": [], "upgrade": []}}
        for i in range(args.n):
            for name, r in (("embedded", emb), ("redis", red))[::1 if i % 2 else -1]:
                c, t = cookie(r.port, target)
                res[name]["cookie"].append(t)
                st, t = upgrade(r.port, target, c)
                assert st == 101, (name, st)
                res[name]["upgrade"].append(t)

        # 2. round trips.
        before = commandstats(store)
        c, _ = cookie(red.port, target)
        mid = commandstats(store)
        st, _ = upgrade(red.port, target, c)
        after = commandstats(store)
        rt_cookie = calls_between(before, mid)
        rt_upgrade = calls_between(mid, after)
        # Round trips are the scripts sent (EVALSHA); the totals also count
        # the commands each script runs inside the store.
        ev_cookie = mid.get("evalsha", 0) - before.get("evalsha", 0)
        ev_upgrade = after.get("evalsha", 0) - mid.get("evalsha", 0)

        # 3. load over three relays.
        three = [red] + [Relay(args.relay, relay_env(free_port(), target, store.url, key),
                               os.path.join(work, "relay%d.log" % i)).start()
                         for i in (2, 3)]
        relays += three[1:]
        time.sleep(0.5)
        total = args.rate * args.secs
        print("minting %d cookies ..." % total, file=sys.stderr)
        cookies = [cookie(three[i % 3].port, target)[0] for i in range(total)]
        lat, statuses, lock = [], {}, threading.Lock()
        cpu0 = [cpu_secs(r.proc.pid) for r in three] + [cpu_secs(store.proc.pid)]
        start = time.perf_counter()

        def fire(i):
            st, t = upgrade(three[i % 3].port, target, cookies[i])
            with lock:
                lat.append(t)
                statuses[st] = statuses.get(st, 0) + 1

        threads = []
        for i in range(total):
            due = start + i / float(args.rate)
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t = threading.Thread(target=fire, args=(i,))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        cpu1 = [cpu_secs(r.proc.pid) for r in three] + [cpu_secs(store.proc.pid)]

        lines = ["", "## Shared store (bench/scale.py, %s)" % time.strftime("%Y-%m-%d"), "",
                 "| | embedded p50 / p99 ms | Redis p50 / p99 ms | Redis - embedded (p50) |",
                 "|---|---|---|---|"]
        for what in ("cookie", "upgrade"):
            e, r = res["embedded"][what], res["redis"][what]
            lines.append("| %s round trip (n=%d) | %s / %s | %s / %s | %+.3f ms |" % (
                what, args.n, ms(statistics.median(e)), ms(pct(e, 99)),
                ms(statistics.median(r)), ms(pct(r, 99)),
                (statistics.median(r) - statistics.median(e)) * 1000))
        lines += ["", "Store round trips (EVALSHA): %d per cookie (challenge + answer), %d per "
                  "upgrade; commands run by the store, scripts' inner calls included: %d and "
                  "%d (an idle-connection PING may fall in either)."
                  % (ev_cookie, ev_upgrade, rt_cookie, rt_upgrade), "",
                  "%d upgrades at %d/s over 3 relays: %.0f/s achieved, statuses %s, "
                  "latency p50 %s ms, p99 %s ms, max %s ms; CPU seconds relays %s, store %.2f."
                  % (total, args.rate, total / wall, json.dumps(statuses, sort_keys=True),
                     ms(statistics.median(lat)), ms(pct(lat, 99)), ms(max(lat)),
                     "/".join("%.2f" % (cpu1[i] - cpu0[i]) for i in range(3)),
                     cpu1[3] - cpu0[3])]
        text = "\n".join(lines) + "\n"
        print(text)
        with open(os.path.join(work, "scale-results.md"), "w") as f:
            f.write(text)
        if args.write_results:
            with open(os.path.join(HERE, "RESULTS.md"), "a") as f:
                f.write(text)
        print("work directory: %s" % work, file=sys.stderr)
    finally:
        for r in relays:
            r.stop()
        store.stop()


if __name__ == "__main__":
    main()
