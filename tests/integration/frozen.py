"""A hung SFTP server for the tests: the sshd processes of the sessions
opened since creation are stopped (SIGSTOP) and resumed (SIGCONT); killed
at the end, whatever happened."""

import os
import signal

from waits import wait_relay_read_all


class FrozenSessions:
    def __init__(self, sshd):
        self.sshd = sshd
        self.before = sshd.descendant_pids()
        self.pids = set()

    def _signal(self, sig):
        for pid in self.pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def freeze(self):
        self.pids = self.sshd.descendant_pids() - self.before
        assert self.pids, "no sshd process for the new sessions"
        self._signal(signal.SIGSTOP)

    def write_in_flight(self, relay, session, path, data):
        """Open an upload of `path` in `session`, freeze the server, and send
        a write_chunk of `data` that the relay has read in full and now
        waits on. Returns the request id."""
        handle = session.write_open(path)
        self.freeze()
        rid = session.send_request("write_chunk", {"handle": handle})
        session.send_binary(data)
        wait_relay_read_all(relay, session.ws.sock)
        return rid

    def thaw(self):
        self._signal(signal.SIGCONT)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._signal(signal.SIGKILL)
        self._signal(signal.SIGCONT)
