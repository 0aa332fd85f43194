"""Answers too large to hold: the legacy `read` of any size and `list` of any
directory go out as one WebSocket message in fragments (PROTOCOL §3), with
relay memory bounded whatever the size, and never a short message passed
off as complete."""

import hashlib
import json
import os

import websocket

import procinfo
from helpers import login, make_dir, make_file, user_ids, wait_until
from relay import relay_binary
from wsclient import MiB

ASAN = procinfo.sanitized_relay()
# Growth of the relay's peak RSS allowed while one large answer streams.
# AddressSanitizer keeps freed memory in quarantine (limited to 16 MiB here).
RSS_GROWTH_LIMIT_KIB = (100 if ASAN else 40) * 1024


def asan_env():
    return procinfo.asan_env(relay_binary())


def reset_peak_rss(pid):
    """Start VmHWM afresh from the current RSS (Linux clear_refs "5")."""
    with open("/proc/%d/clear_refs" % pid, "w") as f:
        f.write("5")
    return procinfo.status_field(pid, "VmHWM")


def peak_rss(pid):
    return procinfo.status_field(pid, "VmHWM")


def recv_message_frames(s, timeout=30):
    """The frames of the next data message, as websocket-client sees them
    on the wire: [(opcode, fin, payload)], ending with the FIN frame, or
    with a close frame when the relay closes mid-message."""
    s.ws.settimeout(timeout)
    frames = []
    while True:
        f = s.ws.recv_frame()
        if f.opcode in (websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_PONG):
            if f.opcode == websocket.ABNF.OPCODE_PING:
                s.ws.pong(f.data)
            continue
        frames.append((f.opcode, f.fin, f.data))
        if f.opcode == websocket.ABNF.OPCODE_CLOSE or f.fin:
            return frames


# --------------------------------------------------------------------------
# Legacy read.

def test_legacy_read_of_100_mib_is_whole_and_memory_bounded(relay_factory, sshd, workdir):
    relay = relay_factory(**asan_env())
    pid = relay.proc.pid
    size = 100 * MiB
    data = os.urandom(size)
    path = make_file(os.path.join(workdir, "vault-body"), data)
    want = hashlib.sha256(data).hexdigest()
    del data
    s = login(relay, sshd)
    try:
        assert s.ok("stat", path="/")["isDir"] is True  # warm up
        base = reset_peak_rss(pid)
        rid = s.send_request("read", {"path": path})
        head = s.recv_text(timeout=30)
        assert head == {"id": rid, "result": {"size": size}}, head
        frames = recv_message_frames(s, timeout=60)
        growth = peak_rss(pid) - base
        assert frames[0][0] == websocket.ABNF.OPCODE_BINARY and not frames[0][1], frames[0][:2]
        assert all(op == websocket.ABNF.OPCODE_CONT for op, _, _ in frames[1:]), \
            [op for op, _, _ in frames]
        assert frames[-1][1], "the message did not end with a FIN frame"
        body = b"".join(payload for _, _, payload in frames)
        assert len(body) == size
        assert hashlib.sha256(body).hexdigest() == want
        print("legacy read of 100 MiB: %d frames, relay peak RSS +%d KiB"
              % (len(frames), growth))
        assert growth < RSS_GROWTH_LIMIT_KIB, \
            "relay RSS grew by %d KiB for one 100 MiB read" % growth
        # The session goes on; nothing was interleaved or left over.
        assert s.ok("stat", path=path)["size"] == size
    finally:
        s.close()


def test_legacy_read_over_16_mib_is_served(sftp, workdir):
    path = make_file(os.path.join(workdir, "big"), b"")
    os.truncate(path, 16 * MiB + 1)
    resp, payload = sftp.call_then_binary("read", path=path, timeout=30)
    assert resp["result"] == {"size": 16 * MiB + 1}, resp
    assert len(payload) == 16 * MiB + 1 and payload.count(0) == 16 * MiB + 1
    assert sftp.ok("stat", path=path)["size"] == 16 * MiB + 1


def test_legacy_read_of_empty_file(sftp, workdir):
    path = make_file(os.path.join(workdir, "empty"), b"")
    resp, payload = sftp.call_then_binary("read", path=path)
    assert resp["result"] == {"size": 0} and payload == b""


def test_file_shrinking_during_read_closes_the_session(relay_factory, sshd, workdir):
    """Never a short message: once the size is announced and the message has
    begun, a file that shrank ends the WebSocket instead."""
    relay = relay_factory()
    size = 64 * MiB
    path = make_file(os.path.join(workdir, "shrinks"), b"")
    os.truncate(path, size)
    s = login(relay, sshd)
    try:
        rid = s.send_request("read", {"path": path})
        assert s.recv_text(timeout=30) == {"id": rid, "result": {"size": size}}
        # The relay has begun the message; it cannot have read more than its
        # bounded queue ahead of us, so most of the file is still to come.
        s.ws.settimeout(30)
        first = s.ws.recv_frame()
        assert first.opcode == websocket.ABNF.OPCODE_BINARY and not first.fin
        os.truncate(path, 0)
        frames = recv_message_frames(s, timeout=30)
        got = len(first.data) + sum(len(p) for op, _, p in frames
                                    if op == websocket.ABNF.OPCODE_CONT)
        assert frames[-1][0] == websocket.ABNF.OPCODE_CLOSE, \
            "the relay finished a message of %d bytes for a file announced as %d" % (got, size)
        assert got < size
        code = int.from_bytes(frames[-1][2][:2], "big") if len(frames[-1][2]) >= 2 else None
        assert code == 1011, code
    finally:
        s.close()
    assert wait_until(lambda: "cut short" in relay.log_text(), 10), relay.log_tail(10)


# --------------------------------------------------------------------------
# list

def make_many_files(path, n, name_len):
    uid, gid = user_ids()
    names = []
    for i in range(n):
        name = ("%08d-" % i) + "n" * (name_len - 9)
        fd = os.open(os.path.join(path, name), os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
        names.append(name)
    os.chown(path, uid, gid)
    return names


def test_list_of_a_huge_directory_is_complete_and_memory_bounded(relay_factory, sshd,
                                                                  workdir):
    n = 100000
    relay = relay_factory(**asan_env())
    pid = relay.proc.pid
    d = make_dir(os.path.join(workdir, "huge-dir"))
    names = make_many_files(d, n, 200)
    s = login(relay, sshd)
    try:
        assert s.ok("stat", path="/")["isDir"] is True  # warm up
        base = reset_peak_rss(pid)
        rid = s.send_request("list", {"path": d + "/"})
        frames = recv_message_frames(s, timeout=60)
        growth = peak_rss(pid) - base
        assert frames[-1][0] != websocket.ABNF.OPCODE_CLOSE, "the relay closed mid-listing"
        assert frames[0][0] == websocket.ABNF.OPCODE_TEXT
        text = b"".join(p for _, _, p in frames)
        print("list of %d entries: %d bytes in %d frames, relay peak RSS +%d KiB"
              % (n, len(text), len(frames), growth))
        msg = json.loads(text.decode("utf-8"))
        assert msg["id"] == rid and set(msg) == {"id", "result"}
        entries = msg["result"]["entries"]
        assert sorted(e["name"] for e in entries) == sorted(names)
        e = entries[0]
        assert set(e) == {"name", "path", "size", "mtime", "isDir"}, e
        assert e["path"] == d + "/" + e["name"] and e["isDir"] is False and e["size"] == 0
        assert len(frames) > 1, "a %d-byte listing was sent as one frame" % len(text)
        assert growth < RSS_GROWTH_LIMIT_KIB, \
            "relay RSS grew by %d KiB for one listing of %d entries" % (growth, n)
        assert s.ok("stat", path=d)["isDir"] is True
    finally:
        s.close()


def test_list_over_the_entry_limit_is_an_error(relay_factory, sshd, workdir):
    relay = relay_factory(SFTP_LIST_MAX_ENTRIES=20)
    d = make_dir(os.path.join(workdir, "d"))
    make_many_files(d, 21, 20)
    few = make_dir(os.path.join(workdir, "few"))
    make_many_files(few, 20, 20)
    s = login(relay, sshd)
    try:
        resp = s.call("list", path=d)
        assert resp.get("error") == "directory too large" and resp.get("code") == "limit", resp
        assert len(s.ok("list", path=few)["entries"]) == 20
    finally:
        s.close()


def test_list_cut_short_after_streaming_began_closes(relay_factory, sshd, workdir):
    """Past the first fragment an error cannot be an answer any more: the
    WebSocket closes, never a truncated listing passed off as complete."""
    relay = relay_factory(SFTP_LIST_MAX_ENTRIES=3000)
    d = make_dir(os.path.join(workdir, "d"))
    make_many_files(d, 3001, 200)   # ~1.3 MB of JSON: several fragments
    s = login(relay, sshd)
    try:
        s.send_request("list", {"path": d})
        frames = recv_message_frames(s, timeout=30)
        assert frames[0][0] == websocket.ABNF.OPCODE_TEXT and not frames[0][1]
        assert frames[-1][0] == websocket.ABNF.OPCODE_CLOSE, \
            "a listing over SFTP_LIST_MAX_ENTRIES was finished"
    finally:
        s.close()
    assert wait_until(lambda: "directory too large" in relay.log_text(), 10), \
        relay.log_tail(10)
