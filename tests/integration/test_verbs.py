"""PROTOCOL §3: the file operations (stat, list, fs_info, mkdir, delete,
rename, legacy read/write), checked against the files on disk."""

import os

import pytest

from helpers import make_dir, make_file, read_file
from wsclient import MiB

MTIME = 1600000000  # a fixed mtime makes the expected results exact


def test_stat_file(sftp, workdir):
    path = make_file(os.path.join(workdir, "a.txt"), b"hello world")
    os.utime(path, (MTIME, MTIME))
    assert sftp.ok("stat", path=path) == {"mtime": MTIME, "size": 11, "isDir": False}


def test_stat_directory(sftp, workdir):
    path = make_dir(os.path.join(workdir, "sub"))
    os.utime(path, (MTIME, MTIME))
    result = sftp.ok("stat", path=path)
    assert result == {"mtime": MTIME, "size": os.stat(path).st_size, "isDir": True}


def test_stat_missing_path(sftp, workdir):
    resp = sftp.call("stat", path=os.path.join(workdir, "nope"))
    assert "error" in resp, resp
    assert resp.get("code") == "not_found", resp


def test_list_directory(sftp, workdir):
    make_file(os.path.join(workdir, "one"), b"1")
    make_file(os.path.join(workdir, "two.bin"), b"22")
    make_dir(os.path.join(workdir, "three"))
    for name in ("one", "two.bin", "three"):
        os.utime(os.path.join(workdir, name), (MTIME, MTIME))
    expected = sorted([
        {"name": "one", "path": workdir + "/one", "size": 1, "mtime": MTIME, "isDir": False},
        {"name": "two.bin", "path": workdir + "/two.bin", "size": 2, "mtime": MTIME,
         "isDir": False},
        {"name": "three", "path": workdir + "/three",
         "size": os.stat(os.path.join(workdir, "three")).st_size, "mtime": MTIME,
         "isDir": True},
    ], key=lambda e: e["name"])
    result = sftp.ok("list", path=workdir)
    assert set(result) == {"entries"}, result
    assert sorted(result["entries"], key=lambda e: e["name"]) == expected


def test_list_with_trailing_slash(sftp, workdir):
    make_file(os.path.join(workdir, "f"), b"x")
    entries = sftp.ok("list", path=workdir + "/")["entries"]
    assert [(e["name"], e["path"]) for e in entries] == [("f", workdir + "/f")]


def test_list_root_paths_have_single_slash(sftp):
    entries = sftp.ok("list", path="/")["entries"]
    home = [e for e in entries if e["name"] == "home"]
    assert home and home[0]["path"] == "/home" and home[0]["isDir"] is True, entries
    assert not any(e["name"] in (".", "..") for e in entries)


def test_list_empty_directory(sftp, workdir):
    assert sftp.ok("list", path=workdir) == {"entries": []}


def test_list_many_entries(sftp, workdir):
    names = {"file-%03d" % i for i in range(300)}
    for name in names:
        make_file(os.path.join(workdir, name), b"")
    entries = sftp.ok("list", path=workdir)["entries"]
    assert len(entries) == 300
    assert {e["name"] for e in entries} == names


def test_list_missing_directory(sftp, workdir):
    resp = sftp.call("list", path=os.path.join(workdir, "nope"))
    assert "error" in resp and resp.get("code") == "not_found", resp


def test_fs_info(sftp, workdir):
    result = sftp.ok("fs_info", path=workdir)
    assert set(result) == {"supported", "freeBytes", "totalBytes"}, result
    assert result["supported"] is True
    st = os.statvfs(workdir)
    assert result["totalBytes"] == st.f_blocks * st.f_frsize
    assert 0 < result["freeBytes"] <= result["totalBytes"]
    assert abs(result["freeBytes"] - st.f_bavail * st.f_frsize) < 512 * MiB


def test_fs_info_defaults_to_root(sftp):
    result = sftp.ok("fs_info")
    st = os.statvfs("/")
    assert result["supported"] is True, result
    assert result["totalBytes"] == st.f_blocks * st.f_frsize


def test_fs_info_failure_is_not_an_error(sftp, workdir):
    result = sftp.ok("fs_info", path=os.path.join(workdir, "missing", "dir"))
    assert result == {"supported": False}


def test_mkdir(sftp, workdir):
    path = os.path.join(workdir, "newdir")
    assert sftp.ok("mkdir", path=path) == {}
    assert os.path.isdir(path)


def test_mkdir_existing_says_already_exists(sftp, workdir):
    path = os.path.join(workdir, "newdir")
    assert sftp.ok("mkdir", path=path) == {}
    resp = sftp.call("mkdir", path=path)
    assert "already exists" in resp.get("error", ""), resp
    assert resp.get("code") == "exists", resp


def test_mkdir_missing_parent_is_not_already_exists(sftp, workdir):
    resp = sftp.call("mkdir", path=os.path.join(workdir, "no", "such", "parent"))
    assert "error" in resp, resp
    assert "already exists" not in resp["error"], resp


def test_delete_file(sftp, workdir):
    path = make_file(os.path.join(workdir, "gone"), b"bye")
    assert sftp.ok("delete", path=path) == {}
    assert not os.path.exists(path)


def test_delete_empty_directory(sftp, workdir):
    path = make_dir(os.path.join(workdir, "emptydir"))
    assert sftp.ok("delete", path=path) == {}
    assert not os.path.exists(path)


def test_delete_non_empty_directory_fails(sftp, workdir):
    path = make_dir(os.path.join(workdir, "full"))
    make_file(os.path.join(path, "keep"), b"k")
    resp = sftp.call("delete", path=path)
    assert "error" in resp, resp
    assert os.path.exists(os.path.join(path, "keep"))


def test_delete_missing_path(sftp, workdir):
    resp = sftp.call("delete", path=os.path.join(workdir, "nope"))
    assert "error" in resp and resp.get("code") == "not_found", resp


def test_rename(sftp, workdir):
    src = make_file(os.path.join(workdir, "from.txt"), b"payload")
    dst = os.path.join(workdir, "to.txt")
    assert sftp.ok("rename", {"from": src, "to": dst}) == {}
    assert not os.path.exists(src)
    assert read_file(dst) == b"payload"


def test_rename_legacy_parameter_names(sftp, workdir):
    src = make_file(os.path.join(workdir, "old"), b"legacy")
    dst = os.path.join(workdir, "new")
    assert sftp.ok("rename", oldPath=src, newPath=dst) == {}
    assert not os.path.exists(src)
    assert read_file(dst) == b"legacy"


def test_rename_replaces_existing_target(sftp, workdir):
    src = make_file(os.path.join(workdir, "src"), b"new content")
    dst = make_file(os.path.join(workdir, "dst"), b"old content, longer")
    assert sftp.ok("rename", {"from": src, "to": dst}) == {}
    assert not os.path.exists(src)
    assert read_file(dst) == b"new content"


def test_rename_directory(sftp, workdir):
    src = make_dir(os.path.join(workdir, "d1"))
    make_file(os.path.join(src, "inner"), b"i")
    dst = os.path.join(workdir, "d2")
    assert sftp.ok("rename", {"from": src, "to": dst}) == {}
    assert read_file(os.path.join(dst, "inner")) == b"i"


def test_rename_missing_source(sftp, workdir):
    resp = sftp.call("rename", {"from": os.path.join(workdir, "nope"),
                                "to": os.path.join(workdir, "x")})
    assert "error" in resp and resp.get("code") == "not_found", resp


def test_legacy_read(sftp, workdir):
    data = os.urandom(300 * 1024)
    path = make_file(os.path.join(workdir, "r.bin"), data)
    resp, payload = sftp.call_then_binary("read", path=path)
    assert resp["result"] == {"size": len(data)}
    assert payload == data


def test_legacy_read_empty_file(sftp, workdir):
    path = make_file(os.path.join(workdir, "empty"), b"")
    resp, payload = sftp.call_then_binary("read", path=path)
    assert resp["result"] == {"size": 0}
    assert payload == b""


def test_legacy_read_16_mib_is_allowed(sftp, workdir):
    path = os.path.join(workdir, "big")
    make_file(path, b"")
    os.truncate(path, 16 * MiB)
    resp, payload = sftp.call_then_binary("read", path=path, timeout=30)
    assert resp["result"] == {"size": 16 * MiB}
    assert len(payload) == 16 * MiB and payload.count(0) == 16 * MiB


def test_legacy_read_missing_file(sftp, workdir):
    resp = sftp.call("read", path=os.path.join(workdir, "nope"))
    assert "error" in resp and resp.get("code") == "not_found", resp
    assert sftp.ok("stat", path=workdir)["isDir"] is True


def test_legacy_write(sftp, workdir):
    data = os.urandom(123457)
    path = os.path.join(workdir, "w.bin")
    resp = sftp.request_with_binary("write", {"path": path, "size": len(data)}, data)
    assert resp["result"] == {}
    assert read_file(path) == data


def test_legacy_write_truncates(sftp, workdir):
    path = make_file(os.path.join(workdir, "w.txt"), b"a much longer old content")
    resp = sftp.request_with_binary("write", {"path": path, "size": 3}, b"new")
    assert resp["result"] == {}
    assert read_file(path) == b"new"


def test_legacy_write_empty_file(sftp, workdir):
    path = os.path.join(workdir, "zero")
    resp = sftp.request_with_binary("write", {"path": path, "size": 0}, b"")
    assert resp["result"] == {}
    assert read_file(path) == b""


@pytest.mark.parametrize("method", ["stat", "list", "delete", "mkdir", "read"])
def test_permission_denied_code(sftp, method):
    resp = sftp.call(method, path="/root/wc-not-allowed")
    assert "error" in resp, resp
    assert resp.get("code") == "permission_denied", resp
