"""A TCP listener on 127.0.0.1 (a free port) that hands each connection to
a method of its subclass, on a thread of its own: what the test's fake,
hostile and black-hole servers have in common."""

import socket
import threading


class LoopbackListener:
    """Subclasses define on_connection(conn), called on the accept thread
    (start a thread there for long work), and call start() once their own
    state is set up."""

    def __init__(self, backlog=16):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        # The timeout lets close() end the accept loop with no connection
        # coming.
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._accept = threading.Thread(target=self._accept_loop, daemon=True)

    def start(self):
        self._accept.start()

    def stopping(self):
        return self._stop.is_set()

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.on_connection(conn)

    def on_connection(self, conn):
        raise NotImplementedError

    def close(self):
        """Stop accepting; subclasses close their own connections after."""
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        if self._accept.is_alive():
            self._accept.join(timeout=2)
