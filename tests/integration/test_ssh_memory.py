"""SSH_SESSION_MEMORY_MIB against the real sshd: when the relay refuses
libssh2 an allocation, wherever inside libssh2 that falls, the session
ends with a clear answer and the relay stays healthy (no crash, no hang,
no leak). Eight downloads of 4 MiB taken in turn make libssh2 hold about
6 MiB (its read-ahead for every handle), so a limit of 4 or 5 MiB is
reached in the middle of reading, at whatever allocation comes next."""

import os

import pytest

import procinfo
from helpers import Usage, assert_libssh2_limit_ended, login, make_file, pattern
from relay import relay_binary
from wsclient import MiB

FILES = 8
FILE_BYTES = 4 * MiB


@pytest.mark.our_libssh2("sftp-read-size.patch")
@pytest.mark.parametrize("limit_mib", [4, 5])
def test_refused_allocation_ends_the_session_cleanly(relay_factory, sshd, workdir, limit_mib):
    relay = relay_factory(SSH_SESSION_MEMORY_MIB=limit_mib, **procinfo.asan_env(relay_binary()))
    use = Usage(relay)
    s = login(relay, sshd)
    handles = [s.read_open(make_file(os.path.join(workdir, "m%d-%d" % (limit_mib, i)),
                                     pattern(FILE_BYTES, i)))
               for i in range(FILES)]
    answer, done = None, set()
    while answer is None and len(done) < FILES:
        for h in handles:
            if h in done:
                continue
            resp, chunk = s.call_then_binary("read_chunk", handle=h)
            if "result" not in resp:
                answer = resp
                break
            if not chunk:
                done.add(h)
    assert answer is not None, "eight interleaved downloads fitted in %d MiB" % limit_mib
    assert answer.get("code") == "io", answer
    s.expect_closed()
    assert_libssh2_limit_ended(relay, limit_mib)
    use.check(relay, sshd, held_kib=limit_mib * 1024)
