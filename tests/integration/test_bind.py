"""A relay that cannot listen exits at once with a clear message and a
non-zero status, on every supported libwebsockets, so that systemd's
Restart= acts and the operator reads why.

lws 4.1 (Debian 12) fails lws_create_context() for a port in use and for an
address that is not on this host with LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND.
lws 4.3 (Debian 13) still does for a port in use, but for an address that
is not on this host (EADDRNOTAVAIL) it retries for ever, ~8,000 log lines a
second: test_tls.py::test_address_not_on_this_host_stops_the_start checks
the exit, this file that the refusal is short too.

Binding sends nothing: 192.0.2.1 (TEST-NET-1) is only used as an address
this host does not have.
"""

import socket

NOT_ON_THIS_HOST = "192.0.2.1"
EXIT_WITHIN_SECS = 10
# A retry loop logs thousands of lines a second; a clear refusal a handful.
MAX_LOG_LINES = 50


def exits_without_listening(relay_factory, bind_addr):
    relay = relay_factory(start=False, BIND_ADDR=bind_addr, ALLOW_PLAINTEXT="1")
    relay.spawn()
    try:
        rc = relay.proc.wait(timeout=EXIT_WITHIN_SECS)
    except Exception:
        relay.kill()
        relay.returncode = 0
        raise AssertionError("relay still running %d s after it could not listen on %s; "
                             "log (last lines):\n%s" % (EXIT_WITHIN_SECS, bind_addr,
                                                       relay.log_tail(20)))
    text = relay.log_text()
    relay.returncode = 0  # an expected refusal: nothing to check on stop
    relay.proc = None
    assert rc != 0, text
    assert "cannot listen" in text, text
    assert len(text.splitlines()) <= MAX_LOG_LINES, text[-3000:]


def test_address_not_on_this_host_exits(relay_factory):
    exits_without_listening(relay_factory, "%s:8443" % NOT_ON_THIS_HOST)


def test_port_in_use_exits(relay_factory):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        exits_without_listening(relay_factory, "127.0.0.1:%d" % s.getsockname()[1])
