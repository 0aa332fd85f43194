"""A full disk, the way the Wattcloud app meets it (PROTOCOL §3): a write
error ends its upload at once (remote file closed, partial file removed,
slot freed), because the app abandons a failed upload without write_close
or write_abort. Later requests on that handle answer the same error."""

import os
import time


from helpers import login, pattern
from wsclient import MiB

PROMPT_SECS = 5


def timed_call(s, method, **params):
    t0 = time.monotonic()
    resp = s.call(method, params, timeout=30)
    elapsed = time.monotonic() - t0
    assert elapsed < PROMPT_SECS, "%s took %.1f s" % (method, elapsed)
    return resp


def upload_until_error(s, path, seed):
    """The app's upload: write_open, 1 MiB write_chunks until one fails,
    then give up on it without write_close or write_abort."""
    h = s.write_open(path)
    for i in range(16):
        rid = s.send_request("write_chunk", {"handle": h})
        s.send_binary(pattern(1 * MiB, seed + i))
        t0 = time.monotonic()
        resp = s.response(rid, timeout=30)
        assert time.monotonic() - t0 < PROMPT_SECS, "write_chunk %d was slow" % i
        if "error" in resp:
            return h, resp
    raise AssertionError("16 MiB went into an 8 MiB file system")


def test_abandoned_failed_uploads_leave_nothing_and_the_session_answers(relay_factory, sshd,
                                                                        small_fs):
    relay = relay_factory()
    s = login(relay, sshd)
    try:
        failed = []
        for n in range(4):
            path = os.path.join(small_fs, "x.tmp.%d" % n)
            h, err = upload_until_error(s, path, 100 * n)
            assert err.get("code") in ("no_space", "io"), err
            failed.append((h, err))
            # The partial file is gone at once, without write_close/abort.
            assert not os.path.exists(path), "partial upload %s left behind" % path
            assert timed_call(s, "stat", path=small_fs)["result"]["isDir"] is True
        assert not [f for f in os.listdir(small_fs) if ".tmp." in f], os.listdir(small_fs)
        # Later requests on a failed handle answer its error; abort is {}.
        h, err = failed[-1]
        rid = s.send_request("write_chunk", {"handle": h})
        s.send_binary(b"more")
        resp = s.response(rid, timeout=PROMPT_SECS)
        assert resp.get("error") == err["error"] and resp.get("code") == err.get("code"), resp
        resp = timed_call(s, "write_close", handle=h)
        assert resp.get("error") == err["error"], resp
        assert timed_call(s, "write_abort", handle=h) == {"id": resp["id"] + 1, "result": {}}
        # The slots were freed: 16 uploads can be open again, and one fits.
        handles = [s.write_open(os.path.join(small_fs, "slot.%d" % i)) for i in range(16)]
        for h in handles:
            assert timed_call(s, "write_abort", handle=h)["result"] == {}
        s.upload(os.path.join(small_fs, "fits"), pattern(1 * MiB, 999))
        assert os.path.getsize(os.path.join(small_fs, "fits")) == 1 * MiB
    finally:
        s.close()


def test_failed_resumable_upload_is_removed_too(relay_factory, sshd, small_fs):
    """PROTOCOL §3: a write error removes the partial file, also for an
    upload opened with "resume" (which keeps it only when the connection
    drops)."""
    relay = relay_factory()
    s = login(relay, sshd)
    try:
        path = os.path.join(small_fs, "r.tmp.0")
        opened = s.call("write_open", {"path": path, "resume": True}, timeout=30)
        h = opened["result"]["handle"]
        err = None
        for i in range(16):
            rid = s.send_request("write_chunk", {"handle": h})
            s.send_binary(pattern(1 * MiB, 900 + i))
            resp = s.response(rid, timeout=30)
            if "error" in resp:
                err = resp
                break
        assert err is not None, "16 MiB went into an 8 MiB file system"
        assert not os.path.exists(path), "failed resumable upload left %s" % path
        assert timed_call(s, "stat", path=small_fs)["result"]["isDir"] is True
    finally:
        s.close()
