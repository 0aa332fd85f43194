"""Waiting for events instead of sleeping: the tests that need to know the
relay has done something wait for the proof of it, bounded in time — the
line the relay logs when a session ends or a drain begins, or the kernel's
socket queues showing that the relay has read every byte a client sent."""

import re
import time

SESSION_START_RE = re.compile(r"session (\S+) start: ")


def wait_for_log(relay, pattern, offset=0, timeout=10.0):
    """The first match of regex `pattern` in the relay's log after byte
    `offset`; AssertionError when none appears within `timeout` seconds."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        m = rx.search(relay.log_since(offset))
        if m:
            return m
        if time.monotonic() > deadline:
            raise AssertionError("no log line matching %r within %.0f s; log since:\n%s"
                                 % (pattern, timeout, relay.log_since(offset)[-4000:]))
        time.sleep(0.02)


def session_ids_since(relay, offset):
    """Ids of the sessions that started after byte `offset` of the log."""
    return SESSION_START_RE.findall(relay.log_since(offset))


def wait_session_end(relay, session_id, timeout=10.0):
    """Wait until the relay has let go of session `session_id` entirely (its
    browser side and its worker): the "session <id> end:" line."""
    return wait_for_log(relay, r"session %s end: " % re.escape(session_id), 0, timeout)


# /proc/net/tcp states of a socket whose owner has not closed it yet.
TCP_OPEN_STATES = (0x01, 0x08)  # ESTABLISHED, CLOSE_WAIT


def _tcp_sockets(port_a, port_b):
    """{(local port, remote port): (state, tx_queue, rx_queue)} of the IPv4
    TCP sockets between ports `port_a` and `port_b` on this host."""
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            lport = int(fields[1].split(":")[1], 16)
            rport = int(fields[2].split(":")[1], 16)
            if {lport, rport} == {port_a, port_b}:
                tx, rx = (int(x, 16) for x in fields[4].split(":"))
                out[(lport, rport)] = (int(fields[3], 16), tx, rx)
    return out


def wait_relay_read_all(relay, sock, timeout=10.0):
    """Wait until the relay has read from its socket every byte the client
    socket `sock` (a connection to the relay on 127.0.0.1) has sent: the
    client's send queue and the relay's receive queue are both empty. The
    relay hands what it reads to its callbacks at once, so the request is
    then known to the relay."""
    cport = sock.getsockname()[1]
    deadline = time.monotonic() + timeout
    while True:
        q = _tcp_sockets(cport, relay.port)
        client, server = q.get((cport, relay.port)), q.get((relay.port, cport))
        if client is not None and server is not None and client[1] == 0 and server[2] == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError("the relay has not read what the client sent within "
                                 "%.0f s: queues %r" % (timeout, q))
        time.sleep(0.02)


def relay_connections(relay):
    """The IPv4 TCP connections the relay holds open on its port."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if (int(fields[1].split(":")[1], 16) == relay.port and
                    int(fields[3], 16) in TCP_OPEN_STATES and fields[2] != "00000000:0000"):
                n += 1
    return n


def relay_holds(relay, cport):
    """The relay has not closed its side of the connection from the
    client's port `cport` yet."""
    return _tcp_sockets(cport, relay.port).get((relay.port, cport), (0,))[0] in TCP_OPEN_STATES


def wait_relay_closed(relay, cport, timeout=10.0):
    """Wait until the relay has closed its side of the connection from the
    client's port `cport` (gone from /proc/net/tcp, or in a state after
    its close, TIME_WAIT included): the WebSocket is gone from the relay,
    not only from the client."""
    deadline = time.monotonic() + timeout
    while relay_holds(relay, cport):
        if time.monotonic() > deadline:
            raise AssertionError("the relay still holds the connection from port %d after "
                                 "%.0f s" % (cport, timeout))
        time.sleep(0.02)


def leave(relay, session):
    """Close `session` from the browser's side and wait until the relay has
    closed its side too."""
    cport = session.ws.sock.getsockname()[1]
    session.close()
    wait_relay_closed(relay, cport)
