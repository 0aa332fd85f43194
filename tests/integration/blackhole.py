"""A TCP proxy on 127.0.0.1 that can be told to stop forwarding.

Put between the relay and sshd, it makes a connection that is still open
(no FIN, no RST) but carries nothing in either direction: what a dead NAT
entry, a pulled cable or a hung server looks like from the relay.
"""

import socket
import threading
import time

from listener import LoopbackListener


class BlackholeProxy(LoopbackListener):
    def __init__(self, target_port, target_host="127.0.0.1"):
        super().__init__()
        self.target = (target_host, target_port)
        self.connections = 0
        self._frozen = threading.Event()
        self._socks = []
        self._lock = threading.Lock()
        self.start()

    def freeze(self):
        """Stop forwarding in both directions; keep every socket open."""
        self._frozen.set()

    def thaw(self):
        self._frozen.clear()

    def on_connection(self, client):
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        self.connections += 1
        with self._lock:
            self._socks += [client, upstream]
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        src.settimeout(0.1)
        while not self.stopping():
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
        super().close()
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass
