"""A TCP proxy on 127.0.0.1 that can be told to stop forwarding.

Put between the relay and sshd, it makes a connection that is still open
(no FIN, no RST) but carries nothing in either direction: what a dead NAT
entry, a pulled cable or a hung server looks like from the relay.
"""

import socket
import threading
import time


class BlackholeProxy:
    def __init__(self, target_port, target_host="127.0.0.1"):
        self.target = (target_host, target_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._frozen = threading.Event()
        self._stop = threading.Event()
        self._socks = []
        self._lock = threading.Lock()
        self._accept = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept.start()

    def freeze(self):
        """Stop forwarding in both directions; keep every socket open."""
        self._frozen.set()

    def thaw(self):
        self._frozen.clear()

    def _accept_loop(self):
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self.connections += 1
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        src.settimeout(0.1)
        while not self._stop.is_set():
            if self._frozen.is_set():
                time.sleep(0.05)  # not reading: the peer's data stays queued
                continue
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        if not self._frozen.is_set():
            # Pass an orderly close on, as a real path would.
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass
        self._accept.join(timeout=2)
