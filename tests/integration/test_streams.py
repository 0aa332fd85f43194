"""PROTOCOL §3 streaming verbs: write_open/chunk/close/abort and
read_open/chunk/close, plus the write-through extension (§5)."""

import hashlib
import os
import time

from helpers import login, make_file, pattern, read_file, sha256_file, wait_until
from waits import session_ids_since, wait_session_end
from wsclient import KiB, MiB, READ_CHUNK, WRITE_HANDLE_RE

UNKNOWN_WRITE_HANDLE = "wh-" + "0" * 32
UNKNOWN_READ_HANDLE = "rh-" + "0" * 32


# -- uploads ---------------------------------------------------------------

def test_write_stream_single_chunk(sftp, workdir):
    path = os.path.join(workdir, "one.bin")
    data = os.urandom(100 * KiB)
    handle = sftp.upload(path, data)
    assert WRITE_HANDLE_RE.match(handle)
    assert read_file(path) == data


def test_write_stream_multi_chunk(sftp, workdir):
    path = os.path.join(workdir, "multi.bin")
    chunks = [pattern(3 * MiB, 1), pattern(100 * KiB + 7, 2), b"x", pattern(1 * MiB, 3)]
    handle = sftp.write_open(path)
    for chunk in chunks:
        assert sftp.write_chunk(handle, chunk)["result"] == {}
    assert sftp.ok("write_close", handle=handle) == {}
    assert read_file(path) == b"".join(chunks)


def test_write_stream_empty_file(sftp, workdir):
    path = os.path.join(workdir, "empty")
    handle = sftp.write_open(path)
    assert sftp.ok("write_close", handle=handle) == {}
    assert os.path.isfile(path) and os.path.getsize(path) == 0


def test_write_stream_truncates_existing_file(sftp, workdir):
    path = make_file(os.path.join(workdir, "old"), b"0123456789" * 1000)
    sftp.upload(path, b"short")
    assert read_file(path) == b"short"


def test_write_stream_exactly_16_mib_chunk(sftp, workdir):
    path = os.path.join(workdir, "16m")
    data = pattern(16 * MiB, 4)
    handle = sftp.write_open(path)
    assert sftp.write_chunk(handle, data, timeout=60)["result"] == {}
    assert sftp.ok("write_close", handle=handle, timeout=60) == {}
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_write_handles_are_unique(sftp, workdir):
    handles = {sftp.write_open(os.path.join(workdir, "f%d" % i)) for i in range(4)}
    assert len(handles) == 4
    for h in handles:
        assert sftp.ok("write_close", handle=h) == {}


def test_two_uploads_interleaved(sftp, workdir):
    a, b = os.path.join(workdir, "a"), os.path.join(workdir, "b")
    ha, hb = sftp.write_open(a), sftp.write_open(b)
    parts_a = [pattern(512 * KiB, 10 + i) for i in range(3)]
    parts_b = [pattern(300 * KiB, 20 + i) for i in range(3)]
    for pa, pb in zip(parts_a, parts_b):
        assert sftp.write_chunk(ha, pa)["result"] == {}
        assert sftp.write_chunk(hb, pb)["result"] == {}
    assert sftp.ok("write_close", handle=hb) == {}
    assert sftp.ok("write_close", handle=ha) == {}
    assert read_file(a) == b"".join(parts_a)
    assert read_file(b) == b"".join(parts_b)


def test_write_through_data_reaches_disk_before_close(sftp, workdir):
    path = os.path.join(workdir, "wt")
    handle = sftp.write_open(path)
    data = pattern(2 * MiB, 5)
    assert sftp.write_chunk(handle, data)["result"] == {}
    assert wait_until(lambda: os.path.exists(path) and os.path.getsize(path) == len(data), 5), \
        "write-through: acknowledged bytes are not on the server before write_close"
    assert sftp.ok("write_close", handle=handle) == {}
    assert read_file(path) == data


def test_write_abort_removes_partial_file(sftp, workdir):
    path = os.path.join(workdir, "partial")
    handle = sftp.write_open(path)
    assert sftp.write_chunk(handle, pattern(1 * MiB, 6))["result"] == {}
    assert sftp.ok("write_abort", handle=handle) == {}
    assert wait_until(lambda: not os.path.exists(path), 5), "partial file left on disk"
    # The handle is gone.
    resp = sftp.call("write_close", handle=handle)
    assert "error" in resp, resp


def test_write_abort_unknown_handle(sftp):
    assert sftp.ok("write_abort", handle=UNKNOWN_WRITE_HANDLE) == {}


def test_write_close_unknown_handle(sftp):
    resp = sftp.call("write_close", handle=UNKNOWN_WRITE_HANDLE)
    assert "error" in resp, resp


def test_write_chunk_after_close_is_unknown(sftp, workdir):
    path = os.path.join(workdir, "closed")
    handle = sftp.upload(path, b"done")
    resp = sftp.write_chunk(handle, b"more")
    assert "error" in resp and "handle" in resp["error"], resp
    assert read_file(path) == b"done"


def test_write_open_in_missing_directory(sftp, workdir):
    resp = sftp.call("write_open", path=os.path.join(workdir, "no", "dir", "f"))
    assert "error" in resp, resp
    assert resp.get("code") == "not_found", resp


def test_resume_appends_to_existing_file(sftp, workdir):
    assert "resume" in sftp.host_key.get("features", []), \
        "the relay no longer advertises resume: drop this test"
    first = pattern(1000 * KiB + 3, 30)
    path = make_file(os.path.join(workdir, "resumed"), first)
    result = sftp.ok("write_open", path=path, resume=True)
    assert set(result) == {"handle", "offset"}, result
    assert WRITE_HANDLE_RE.match(result["handle"]), result
    assert result["offset"] == len(first)
    rest = pattern(700 * KiB, 31)
    assert sftp.write_chunk(result["handle"], rest)["result"] == {}
    assert sftp.ok("write_close", handle=result["handle"]) == {}
    assert read_file(path) == first + rest


def test_resume_false_truncates(sftp, workdir):
    path = make_file(os.path.join(workdir, "notresumed"), b"old data")
    result = sftp.ok("write_open", path=path, resume=False)
    assert set(result) == {"handle"}, result
    assert sftp.ok("write_close", handle=result["handle"]) == {}
    assert read_file(path) == b""


def test_session_closed_mid_upload_removes_partial_file(relay, sshd, workdir):
    path = os.path.join(workdir, "abandoned")
    s = login(relay, sshd)
    handle = s.write_open(path)
    assert s.write_chunk(handle, pattern(1 * MiB, 7))["result"] == {}
    assert os.path.exists(path), "write-through: no file on the server after a chunk"
    s.ws.sock.close()  # the browser tab goes away: no close handshake
    assert wait_until(lambda: not os.path.exists(path), 5), \
        "partial upload still on disk 5 s after the session ended"


def test_session_closed_cleanly_mid_upload_removes_partial_file(relay, sshd, workdir):
    path = os.path.join(workdir, "abandoned2")
    s = login(relay, sshd)
    handle = s.write_open(path)
    assert s.write_chunk(handle, pattern(256 * KiB, 8))["result"] == {}
    s.close()
    assert wait_until(lambda: not os.path.exists(path), 5), \
        "partial upload still on disk 5 s after the session ended"


# -- downloads -------------------------------------------------------------

def test_read_stream_chunk_sizes(sftp, workdir):
    data = pattern(3 * READ_CHUNK + 1000, 9)
    path = make_file(os.path.join(workdir, "r"), data)
    handle = sftp.read_open(path)
    sizes, got = sftp.read_chunks(handle)
    assert sizes == [READ_CHUNK, READ_CHUNK, READ_CHUNK, 1000, 0]
    assert got == data
    assert sftp.ok("read_close", handle=handle) == {}


def test_read_stream_exact_multiple_of_chunk(sftp, workdir):
    data = pattern(2 * READ_CHUNK, 10)
    path = make_file(os.path.join(workdir, "r2"), data)
    handle = sftp.read_open(path)
    sizes, got = sftp.read_chunks(handle)
    assert sizes == [READ_CHUNK, READ_CHUNK, 0]
    assert got == data


def test_read_stream_empty_file(sftp, workdir):
    path = make_file(os.path.join(workdir, "e"), b"")
    handle = sftp.read_open(path)
    sizes, got = sftp.read_chunks(handle)
    assert sizes == [0] and got == b""


def test_read_stream_chunk_frames(sftp, workdir):
    """Exact frames: text {"id":N,"result":{"size":n}} then n binary bytes."""
    path = make_file(os.path.join(workdir, "small"), b"abc")
    handle = sftp.read_open(path)
    rid = sftp.send_request("read_chunk", {"handle": handle})
    assert sftp.recv_text() == {"id": rid, "result": {"size": 3}}
    assert sftp.recv_binary() == b"abc"
    rid = sftp.send_request("read_chunk", {"handle": handle})
    assert sftp.recv_text() == {"id": rid, "result": {"size": 0}}
    assert sftp.recv_binary() == b""


def test_read_open_missing_file(sftp, workdir):
    resp = sftp.call("read_open", path=os.path.join(workdir, "nope"))
    assert "error" in resp and resp.get("code") == "not_found", resp


def test_read_close_is_idempotent(sftp, workdir):
    path = make_file(os.path.join(workdir, "c"), b"data")
    handle = sftp.read_open(path)
    assert sftp.ok("read_close", handle=handle) == {}
    assert sftp.ok("read_close", handle=handle) == {}
    assert sftp.ok("read_close", handle=UNKNOWN_READ_HANDLE) == {}


def test_read_chunk_after_close_fails(sftp, workdir):
    path = make_file(os.path.join(workdir, "c2"), b"data")
    handle = sftp.read_open(path)
    assert sftp.ok("read_close", handle=handle) == {}
    resp, payload = sftp.call_then_binary("read_chunk", handle=handle)
    assert "error" in resp and payload is None, resp
    assert sftp.ok("stat", path=path)["size"] == 4  # no stray binary frame


def test_ninth_read_handle_is_refused(sftp, workdir):
    path = make_file(os.path.join(workdir, "many"), b"x" * 10)
    handles = [sftp.read_open(path) for _ in range(8)]
    assert len(set(handles)) == 8
    resp = sftp.call("read_open", path=path)
    assert resp.get("error") == "too many open read sessions", resp
    assert sftp.ok("read_close", handle=handles[0]) == {}
    handles[0] = sftp.read_open(path)
    for h in handles:
        assert sftp.ok("read_close", handle=h) == {}


def read_in_turn(sftp, handles):
    """One read_chunk on each open handle in turn until every one is at
    EOF: {handle: its bytes}."""
    got = {h: b"" for h in handles}
    done = set()
    while len(done) < len(handles):
        for h in handles:
            if h in done:
                continue
            resp, chunk = sftp.call_then_binary("read_chunk", handle=h)
            assert "result" in resp, resp
            assert resp["result"] == {"size": len(chunk)}, resp
            got[h] += chunk
            if not chunk:
                done.add(h)
    return got


def test_interleaved_downloads(sftp, workdir):
    da, db = pattern(700 * KiB, 11), pattern(600 * KiB, 12)
    pa = make_file(os.path.join(workdir, "a"), da)
    pb = make_file(os.path.join(workdir, "b"), db)
    ha, hb = sftp.read_open(pa), sftp.read_open(pb)
    got = read_in_turn(sftp, [ha, hb])
    assert got[ha] == da and got[hb] == db


def test_handles_are_per_session(relay, sshd, workdir):
    path = make_file(os.path.join(workdir, "shared"), b"secret")
    a, b = login(relay, sshd), login(relay, sshd)
    try:
        rh = a.read_open(path)
        wh = a.write_open(os.path.join(workdir, "upload"))
        resp, payload = b.call_then_binary("read_chunk", handle=rh)
        assert "error" in resp and payload is None, resp
        resp = b.write_chunk(wh, b"intruder")
        assert "error" in resp, resp
        # The owner's handles are untouched.
        assert a.write_chunk(wh, b"owner")["result"] == {}
        assert a.ok("write_close", handle=wh) == {}
        assert read_file(os.path.join(workdir, "upload")) == b"owner"
        assert a.read_chunks(rh)[1] == b"secret"
    finally:
        a.close()
        b.close()


# -- large round trip --------------------------------------------------------

def test_64_mib_round_trip(sftp, workdir):
    path = os.path.join(workdir, "big.bin")
    data = pattern(64 * MiB, 13)
    digest = hashlib.sha256(data).hexdigest()
    t0 = time.monotonic()
    sftp.upload(path, data, chunk=8 * MiB, timeout=120)
    t_up = time.monotonic() - t0
    assert sha256_file(path) == digest
    t0 = time.monotonic()
    got = sftp.download(path, timeout=120)
    t_down = time.monotonic() - t0
    assert len(got) == len(data)
    assert hashlib.sha256(got).hexdigest() == digest
    print("64 MiB upload %.2f s, download %.2f s" % (t_up, t_down))


def test_resumable_upload_survives_a_dropped_connection(relay, sshd, workdir):
    """PROTOCOL §5 resume: an upload opened with resume keeps its partial
    file when the connection drops, and a new session continues it."""
    path = os.path.join(workdir, "resumable")
    data = pattern(5 * MiB + 123, 41)
    first = 2 * MiB
    offset = relay.log_size()
    s = login(relay, sshd)
    (sid,) = session_ids_since(relay, offset)
    opened = s.ok("write_open", path=path, resume=True)
    assert opened["offset"] == 0
    assert s.write_chunk(opened["handle"], data[:first])["result"] == {}
    # The chunk is answered before it is written: a stat proves it landed.
    assert wait_until(lambda: os.path.exists(path) and os.path.getsize(path) == first, 5)
    s.ws.sock.close()  # connection lost, no close handshake
    # Once the session has ended, its clean-up is done: had it removed the
    # partial file, it would be gone by now.
    wait_session_end(relay, sid)
    assert os.path.exists(path), "the partial file of a resumable upload was removed"

    s2 = login(relay, sshd)
    try:
        again = s2.ok("write_open", path=path, resume=True)
        assert again["offset"] == first
        assert s2.write_chunk(again["handle"], data[again["offset"]:])["result"] == {}
        assert s2.ok("write_close", handle=again["handle"]) == {}
    finally:
        s2.close()
    assert read_file(path) == data


def test_write_handle_limit(sftp, workdir):
    """SFTP_MAX_WRITE_HANDLES (16) open uploads per session, then an error."""
    handles = [sftp.write_open(os.path.join(workdir, "w%d" % i)) for i in range(16)]
    resp = sftp.call("write_open", path=os.path.join(workdir, "w16"))
    assert resp.get("error") == "too many open write sessions", resp
    assert sftp.ok("write_abort", handle=handles[0]) == {}
    assert WRITE_HANDLE_RE.match(sftp.write_open(os.path.join(workdir, "w17")))


def test_eight_interleaved_downloads_stay_under_the_unclaimed_cap(sftp, workdir):
    """libssh2 reads ahead up to 4 times the buffer it is given (1 MiB for
    a 256 KiB chunk) and keeps the replies of every other handle while one
    is read: eight downloads taken in turn leave 2-4 MiB of replies
    unclaimed at once (a libssh2 built with a cap of 2 MiB ends this
    session, one of 4 MiB does not), which our libssh2 patch caps at
    16 MiB (LIBSSH2_SFTP_QUEUED_MAXBYTES) against a hostile server. The
    app may do this; the cap must never end such a session."""
    files = {}
    for i in range(8):
        data = pattern(4 * MiB, 20 + i)
        files[sftp.read_open(make_file(os.path.join(workdir, "r%d" % i), data))] = data
    assert read_in_turn(sftp, list(files)) == files
    for h in files:
        assert sftp.ok("read_close", handle=h) == {}
