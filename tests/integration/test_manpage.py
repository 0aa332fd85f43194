"""wattcloud-relay(8) (issue 16): `wattcloud-relay --man` renders with
`man -l` without a groff warning, has every section the issue lists,
documents every option of the daemon and of `probe`, and its SETTINGS
section equals the settings table as --help prints it (name, meaning and
default, in order), so the page cannot drift from the binary. install.sh
installing it is checked in test_deploy.py."""

import os
import re
import subprocess

import pytest

from relay import relay_binary

SECTIONS = ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SETTINGS", "PROBE", "SIGNALS",
            "FILES", "EXIT STATUS", "EXAMPLES", "SEE ALSO")


def run(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                          **kw)


def help_settings():
    """[(name, help, default)] from --help, as test_deploy reads them."""
    out = run([relay_binary(), "--help"]).stdout.decode()
    found = re.findall(r"^  ([A-Z][A-Z0-9_]+) +(.*)\n +default: (.*)$", out, re.M)
    assert len(found) >= 20, out
    return [(n, h.strip(), d) for n, h, d in found]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    if not os.path.exists("/usr/bin/man"):
        pytest.skip("man-db is not installed (scripts/deps.sh --test installs it)")
    page = tmp_path_factory.mktemp("man") / "wattcloud-relay.8"
    res = run([relay_binary(), "--man"])
    assert res.returncode == 0 and res.stdout.startswith(b".TH WATTCLOUD-RELAY 8 ")
    page.write_bytes(res.stdout)
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "MANWIDTH": "250", "MANPAGER": "cat",
           "PAGER": "cat", "MAN_DISABLE_SECCOMP": "1"}
    res = run(["man", "--warnings", "-l", str(page)], env=env)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stderr.decode() == "", "groff warnings:\n" + res.stderr.decode()
    # Bold and underline as overstrikes, when man keeps them.
    return re.sub(r".\x08", "", res.stdout.decode())


def section(text, name):
    names = "|".join(re.escape(s) for s in SECTIONS)
    m = re.search(r"^%s\n(.*?)(?=^(?:%s)\n|\Z)" % (re.escape(name), names), text, re.M | re.S)
    assert m, "no section %s in:\n%s" % (name, text[:2000])
    return m.group(1)


def test_has_every_section(rendered):
    for name in SECTIONS:
        section(rendered, name)
    assert "wattcloud-relay - WebSocket-to-SFTP relay" in section(rendered, "NAME")


def test_settings_equal_the_table(rendered):
    text = section(rendered, "SETTINGS")
    found = re.findall(r"^ {7}([A-Z][A-Z0-9_]+)\n {14}(.*)\n {14}Default: (.*)$", text, re.M)
    assert [(n, " ".join(h.split()), d.strip()) for n, h, d in found] == \
        [(n, " ".join(h.split()), d) for n, h, d in help_settings()]


def test_documents_every_option(rendered):
    options = section(rendered, "OPTIONS")
    usage = run([relay_binary(), "--help"]).stdout.decode()
    for opt in set(re.findall(r"^  (--[a-z-]+)", usage, re.M)) | {"--help"}:
        assert re.search(r"^ {7}%s\b" % re.escape(opt), options, re.M), opt
    probe_text = section(rendered, "PROBE")
    usage = run([relay_binary(), "probe", "--help"]).stdout.decode()
    for opt in set(re.findall(r"--[a-z-]+", usage)) - {"--help", "--env-file"}:
        assert re.search(r"^ {7}%s\b" % re.escape(opt), probe_text, re.M), opt
    assert "--env-file" in probe_text


def test_signals_and_exit_statuses(rendered):
    signals = section(rendered, "SIGNALS")
    for sig in ("SIGTERM", "SIGINT", "SIGHUP", "SHUTDOWN_GRACE_SECS"):
        assert sig in signals
    statuses = section(rendered, "EXIT STATUS")
    for code in ("0", "1", "2"):
        assert re.search(r"^ {7}%s\s" % code, statuses, re.M), code
    files = section(rendered, "FILES")
    assert "/etc/wattcloud/wattcloud.env" in files
    assert "/usr/local/share/man/man8/wattcloud-relay.8" in files
