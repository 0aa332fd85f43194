"""PROTOCOL §3: every verb is answered through the one verb table, including
the two that once bypassed it: a second auth on an authenticated session,
and the legacy whole-file write with its binary payload."""

import os

from helpers import pattern, read_file


def test_second_auth_is_refused_and_session_goes_on(sftp, workdir):
    resp = sftp.call("auth", username="someone", password="x")
    assert resp.get("error") == "already authenticated", resp
    assert resp.get("code") == "bad_request", resp
    # The session is unharmed: the next verb is served.
    assert sftp.ok("stat", path=workdir)["isDir"] is True


def test_legacy_write_takes_its_payload(sftp, workdir):
    path = os.path.join(workdir, "legacy.bin")
    data = pattern(300 * 1024)
    resp = sftp.request_with_binary("write", {"path": path}, data)
    assert "result" in resp, resp
    assert read_file(path) == data
