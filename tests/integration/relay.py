"""Start and stop the wattcloud-relay binary under test.

The relay gets a clean environment: only the settings the test chose (plus
sanitizer options passed through from the caller). Its stderr goes to a log
file the tests can read. Stopping sends SIGTERM and requires exit status 0:
under AddressSanitizer a leak turns the exit status non-zero, and a relay
that must be killed is a bug too.
"""

import http.client
import os
import signal
import subprocess
import time

from sshd import free_port


def http_request(port, method, path, body=None, headers=None, timeout=5, source=None):
    """One plain HTTP request to 127.0.0.1:port, from the loopback address
    `source` when given. Returns (status, headers as list, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    return exchange(conn, method, path, body, headers)


def exchange(conn, method, path, body=None, headers=None):
    """One request on `conn` (plain or TLS), which is closed afterwards.
    Returns (status, headers as list, body bytes)."""
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def stop_process(proc, timeout=10):
    """SIGTERM, then SIGKILL after `timeout` s; waits for the process."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

# Variables copied from the caller's environment when set: sanitizer and
# coverage knobs, never anything that would configure the relay itself.
PASSTHROUGH_ENV = ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "TSAN_OPTIONS",
                   "MSAN_OPTIONS", "LLVM_PROFILE_FILE", "GCOV_PREFIX", "GCOV_PREFIX_STRIP")

STOP_TIMEOUT_SECS = 20


def relay_binary():
    default = os.path.join(os.path.dirname(__file__), "..", "..", "build", "wattcloud-relay")
    return os.path.abspath(os.environ.get("RELAY_BIN", default))


class Relay:
    """One relay process. `port` is its HTTP/WebSocket port on 127.0.0.1."""

    def __init__(self, binary, env, log_path):
        self.binary = binary
        self.env = dict(env)
        self.log_path = log_path
        self.port = None
        self.proc = None
        self.returncode = None

    # -- lifecycle ---------------------------------------------------------

    def spawn(self):
        """Start the process without waiting for it to be ready."""
        if not os.access(self.binary, os.X_OK):
            raise FileNotFoundError("relay binary %s is missing; build it or set RELAY_BIN"
                                    % self.binary)
        if "BIND_ADDR" not in self.env:
            self.env["BIND_ADDR"] = "127.0.0.1:%d" % free_port()
        try:
            self.port = int(self.env["BIND_ADDR"].rsplit(":", 1)[1])
        except (IndexError, ValueError):
            self.port = None  # an invalid BIND_ADDR under test
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
        env.update(self.env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary], env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log,
                                     start_new_session=True)
        return self

    def start(self, timeout=10.0):
        """Start and wait until GET /health answers 200."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                raise RuntimeError("relay exited with %d during start-up:\n%s"
                                   % (self.returncode, self.log_tail()))
            try:
                status, _, _ = self.http("GET", "/health", timeout=1)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise TimeoutError("relay not healthy after %.0f s:\n%s" % (timeout, self.log_tail()))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT_SECS):
        """SIGTERM, wait, and return the exit status (-9 when it had to be killed)."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.returncode = -9
                self._close_log()
                return self.returncode
        self.returncode = self.proc.returncode
        self.proc = None
        self._close_log()
        return self.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _close_log(self):
        try:
            self._log.close()
        except Exception:
            pass

    def stop_and_check(self):
        """Stop; raise AssertionError unless the relay exited with status 0."""
        rc = self.stop()
        if rc != 0:
            why = "had to be killed after %d s" % STOP_TIMEOUT_SECS if rc == -9 else \
                "exited with status %s" % rc
            raise AssertionError("relay %s on SIGTERM (log %s):\n%s"
                                 % (why, self.log_path, self.log_tail(60)))

    # -- logs --------------------------------------------------------------

    def log_text(self):
        """Everything the relay wrote to stderr/stdout so far."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except FileNotFoundError:
            return 0

    def log_since(self, offset):
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")

    def log_tail(self, lines=40):
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- HTTP --------------------------------------------------------------

    def http(self, method, path, body=None, headers=None, timeout=5):
        """One plain HTTP request. Returns (status, headers as list, body bytes)."""
        return http_request(self.port, method, path, body, headers, timeout)

    def ws_url(self, host, port, mode="sftp"):
        return "ws://127.0.0.1:%d/relay/ws?mode=%s&host=%s&port=%s" % (self.port, mode, host, port)
