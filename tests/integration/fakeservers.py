"""Small TCP servers on 127.0.0.1 that are not (quite) SSH servers.

Each accepts connections in a thread and runs a script: a list of steps,
each ("send", bytes) or ("sleep", seconds) or ("close",). It records what the
client sent before the server's first byte, to check that the relay never
speaks first (PROTOCOL §2.1: peek at the banner before libssh2 sends its own).
"""

import socket
import threading
import time

from listener import LoopbackListener


class FakeServer(LoopbackListener):
    def __init__(self, script, hold_secs=15):
        super().__init__()
        self.script = script
        self.hold_secs = hold_secs
        self.connections = 0
        # Bytes the client sent before the server had sent anything.
        self.received_before_send = bytearray()
        self._threads = []
        self.start()

    def on_connection(self, conn):
        self.connections += 1
        t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
        t.start()
        self._threads.append(t)

    def _drain(self, conn, wait):
        """Read whatever the client sent within `wait` seconds."""
        conn.settimeout(wait)
        got = bytearray()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                got += data
        except (socket.timeout, OSError):
            pass
        return bytes(got)

    def _serve(self, conn):
        sent_any = False
        try:
            for step in self.script:
                if step[0] == "send":
                    if not sent_any:
                        self.received_before_send += self._drain(conn, 0.05)
                    conn.sendall(step[1])
                    sent_any = True
                elif step[0] == "sleep":
                    if not sent_any:
                        self.received_before_send += self._drain(conn, step[1])
                    else:
                        time.sleep(step[1])
                elif step[0] == "close":
                    return
            # Hold the connection open until the client goes away.
            deadline = time.monotonic() + self.hold_secs
            conn.settimeout(0.2)
            while time.monotonic() < deadline and not self.stopping():
                try:
                    data = conn.recv(65536)
                    if not data:
                        return
                    if not sent_any:
                        self.received_before_send += data
                except socket.timeout:
                    continue
        except OSError:
            pass
        finally:
            conn.close()



def http_server():
    """Answers like a web server as soon as a client connects."""
    return FakeServer([("send", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")])


def silent_server(hold_secs=15):
    """Accepts and never says anything."""
    return FakeServer([], hold_secs=hold_secs)


def trickle_banner_server(banner=b"SSH-2.0-", delay=0.1, then=b"garbage\r\n"):
    """Sends the banner one byte per packet, then junk, then hangs up."""
    steps = []
    for i in range(len(banner)):
        steps += [("send", banner[i:i + 1]), ("sleep", delay)]
    steps += [("send", then), ("sleep", 0.5), ("close",)]
    return FakeServer(steps)


def closed_port():
    """A port with nothing listening (bound, then released)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
