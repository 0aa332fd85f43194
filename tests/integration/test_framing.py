"""PROTOCOL §3: request parsing, error strings, and the binary framing rules."""

import os

import pytest
import websocket

from helpers import login, pattern, read_file
from wsclient import MAX_FRAME, MiB

UNKNOWN_WRITE_HANDLE = "wh-" + "0" * 32


# -- requests ----------------------------------------------------------------

def test_unknown_method(sftp):
    resp = sftp.call("frobnicate", path="/")
    assert resp["error"] == "unknown method", resp


MISSING_PARAMS = [
    ("stat", {}, "missing path"),
    ("list", {}, "missing path"),
    ("mkdir", {}, "missing path"),
    ("delete", {}, "missing path"),
    ("read", {}, "missing path"),
    ("read_open", {}, "missing path"),
    ("write_open", {}, "missing path"),
    ("read_chunk", {}, "missing handle"),
    ("read_close", {}, "missing handle"),
    ("write_close", {}, "missing handle"),
    ("write_abort", {}, "missing handle"),
    ("rename", {}, "missing from"),
    ("rename", {"to": "/tmp/x"}, "missing from"),
    ("rename", {"from": "/tmp/x"}, "missing to"),
    ("rename", {"oldPath": "/tmp/x"}, "missing to"),
]


@pytest.mark.parametrize("method,params,error", MISSING_PARAMS,
                         ids=["%s-%s" % (m, "-".join(p) or "none") for m, p, _ in MISSING_PARAMS])
def test_missing_parameter(sftp, method, params, error):
    resp = sftp.call(method, params)
    assert resp["error"] == error, resp
    assert sftp.ok("stat", path="/")["isDir"] is True


def test_request_without_params_object(sftp):
    rid = sftp.send_request("stat", with_params=False)
    assert sftp.response(rid)["error"] == "missing path"


def test_wrong_parameter_type_is_an_error(sftp):
    resp = sftp.call("stat", path=12345)
    assert "error" in resp, resp
    assert sftp.ok("stat", path="/")["isDir"] is True


def test_largest_request_id_is_echoed(sftp):
    sftp.send_json({"id": 4294967295, "method": "stat", "params": {"path": "/"}})
    frame = sftp.recv_text()
    assert frame["id"] == 4294967295 and frame["result"]["isDir"] is True, frame


@pytest.mark.parametrize("text", [
    "hello", "{not json", '{"foo": 1}', "[1, 2, 3]", "42", '"stat"', "",
])
def test_text_frame_that_is_not_a_request_is_ignored(sftp, text):
    sftp.send_text(text)
    rid = sftp.send_request("stat", {"path": "/"})
    # The very next frame must be this answer: nothing for the ignored frame.
    assert sftp.response(rid)["result"]["isDir"] is True


# -- binary framing ----------------------------------------------------------

def test_write_chunk_unknown_handle_consumes_its_frame(sftp):
    resp = sftp.write_chunk(UNKNOWN_WRITE_HANDLE, b"orphan bytes")
    assert "error" in resp and "handle" in resp["error"].lower(), resp
    assert "unknown" in resp["error"].lower(), resp
    assert sftp.ok("stat", path="/")["isDir"] is True


def test_write_chunk_missing_handle_consumes_its_frame(sftp):
    resp = sftp.request_with_binary("write_chunk", {}, b"orphan bytes")
    assert resp["error"] == "missing handle", resp
    assert sftp.ok("stat", path="/")["isDir"] is True


def test_write_missing_path_consumes_its_frame(sftp, workdir):
    resp = sftp.request_with_binary("write", {"size": 5}, b"bytes")
    assert resp["error"] == "missing path", resp
    # Had the frame not been consumed, this write would take it.
    path = os.path.join(workdir, "after")
    resp = sftp.request_with_binary("write", {"path": path, "size": 4}, b"good")
    assert resp["result"] == {}
    assert read_file(path) == b"good"


def test_stray_binary_frame_is_dropped(sftp, workdir):
    sftp.send_binary(b"nobody asked for this")
    rid = sftp.send_request("stat", {"path": "/"})
    assert sftp.response(rid)["result"]["isDir"] is True
    # And it does not end up in the next upload either.
    path = os.path.join(workdir, "clean")
    sftp.upload(path, b"clean")
    assert read_file(path) == b"clean"


def test_binary_frame_in_fragments(sftp, workdir):
    """A message split into continuation frames is one binary frame."""
    path = os.path.join(workdir, "frag")
    handle = sftp.write_open(path)
    data = pattern(3 * MiB + 5, 21)
    rid = sftp.send_request("write_chunk", {"handle": handle})
    parts = [data[:MiB], data[MiB:2 * MiB + 3], data[2 * MiB + 3:]]
    sftp.ws.send_frame(websocket.ABNF.create_frame(parts[0], websocket.ABNF.OPCODE_BINARY, 0))
    sftp.ws.send_frame(websocket.ABNF.create_frame(parts[1], websocket.ABNF.OPCODE_CONT, 0))
    sftp.ws.send_frame(websocket.ABNF.create_frame(parts[2], websocket.ABNF.OPCODE_CONT, 1))
    assert sftp.response(rid)["result"] == {}
    assert sftp.ok("write_close", handle=handle) == {}
    assert read_file(path) == data


def test_oversized_frame_fails_pending_request_and_closes(sftp, workdir):
    handle = sftp.write_open(os.path.join(workdir, "toolarge"))
    rid = sftp.send_request("write_chunk", {"handle": handle})
    try:
        sftp.send_binary(b"\0" * (MAX_FRAME + 1))
    except (websocket.WebSocketConnectionClosedException, OSError):
        pass  # the relay may hang up while the frame is still being sent
    frames = sftp.expect_closed(timeout=15)
    assert len(frames) == 1, frames
    kind, frame = frames[0]
    assert kind == "text" and frame.get("id") == rid, frames
    assert frame.get("error") == "payload too large", frames


def test_oversized_frame_with_nothing_pending_answers_id_0(relay, sshd):
    s = login(relay, sshd)
    try:
        try:
            s.send_binary(b"\0" * (MAX_FRAME + 1))
        except (websocket.WebSocketConnectionClosedException, OSError):
            pass
        frames = s.expect_closed(timeout=15)
        assert len(frames) == 1, frames
        kind, frame = frames[0]
        assert kind == "text" and frame.get("id") == 0, frames
        assert frame.get("error") == "payload too large", frames
    finally:
        s.close()


def test_upload_buffer_limit(relay_factory, sshd, workdir):
    relay = relay_factory(SFTP_UPLOAD_BUFFER_BYTES=1048576)
    s = login(relay, sshd)
    try:
        handle = s.write_open(os.path.join(workdir, "capped"))
        resp = s.write_chunk(handle, pattern(2 * MiB, 22))
        assert resp.get("error") == "stream buffer limit exceeded", resp
        assert s.ok("stat", path="/")["isDir"] is True
    finally:
        s.close()


def test_upload_under_buffer_limit_streams(relay_factory, sshd, workdir):
    """With write-through, the cap is on unwritten bytes, not on the file."""
    relay = relay_factory(SFTP_UPLOAD_BUFFER_BYTES=1048576)
    s = login(relay, sshd)
    try:
        path = os.path.join(workdir, "streamed")
        data = pattern(4 * MiB, 23)
        s.upload(path, data, chunk=512 * 1024)
        assert read_file(path) == data
    finally:
        s.close()



def test_oversized_text_frame_answers_id_0_and_closes(relay, sshd):
    """A text frame over PROTO_MAX_TEXT_BYTES (64 KiB) cannot be a request."""
    s = login(relay, sshd)
    try:
        s.send_text('{"id":5,"method":"stat","params":{"path":"' + "a" * (64 * 1024) + '"}}')
        frames = s.expect_closed(timeout=15)
        assert frames == [("text", {"id": 0, "error": "payload too large", "code": "limit"})], \
            frames
    finally:
        s.close()
