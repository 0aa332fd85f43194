"""What the tests can see of a running process from outside: its memory,
threads, open file descriptors, resident size and resource limits.

Everything reads /proc as root (CAP_SYS_PTRACE lets us read the memory of
the relay even though it makes itself non-dumpable).
"""

import functools
import os
import re

MAPS_RE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)$")

# Mappings larger than this are sanitizer shadow memory or reservations, not
# data the process wrote: reading terabytes of zero pages would take hours.
MAX_REGION_BYTES = 1 << 30


def regions(pid, writable_only=True):
    """(start, end, perms, name) of the readable mappings worth scanning:
    heap, anonymous maps, thread stacks and writable data of the binary and
    its libraries. Read-only file mappings hold only what is on disk."""
    out = []
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            m = MAPS_RE.match(line.rstrip("\n"))
            if not m:
                continue
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            perms, name = m.group(3), m.group(4)
            if perms[0] != "r" or name in ("[vvar]", "[vsyscall]", "[vdso]"):
                continue
            if writable_only and perms[1] != "w":
                continue
            if end - start > MAX_REGION_BYTES:
                continue
            out.append((start, end, perms, name))
    return out


def find_in_memory(pid, needles, writable_only=True):
    """Scan the process memory for each byte string in `needles`.
    Returns {needle: [(address, region name), ...]} for those found."""
    found = {}
    overlap = max(len(n) for n in needles) - 1
    step = 4 << 20
    with open("/proc/%d/mem" % pid, "rb", buffering=0) as mem:
        for start, end, _perms, name in regions(pid, writable_only):
            addr, tail = start, b""
            while addr < end:
                n = min(step, end - addr)
                try:
                    mem.seek(addr)
                    block = mem.read(n)
                except OSError:
                    block = b""
                if not block:  # unreadable page (guard, I/O mapping): skip it
                    addr += min(n, 4096)
                    tail = b""
                    continue
                buf = tail + block
                base = addr - len(tail)
                for needle in needles:
                    i = buf.find(needle)
                    while i >= 0:
                        where = found.setdefault(needle, [])
                        hit = (base + i, name or "[anon]")
                        if hit not in where:
                            where.append(hit)
                        i = buf.find(needle, i + 1)
                tail = buf[-overlap:] if overlap else b""
                addr += len(block)
    return found


def thread_count(pid):
    return len(os.listdir("/proc/%d/task" % pid))


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def fd_targets(pid):
    out = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            out.append(os.readlink("/proc/%d/fd/%s" % (pid, fd)))
        except OSError:
            pass
    return out


def status_field(pid, name):
    """A numeric field of /proc/PID/status in kB (VmRSS, VmHWM, ...)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise KeyError(name)


def cpu_secs(pid):
    """CPU seconds (user + system) process `pid` has used."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    return status_field(pid, "VmRSS")


def core_limit(pid):
    """(soft, hard) of "Max core file size" in /proc/PID/limits, as text."""
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max core file size"):
                parts = line.split()
                return parts[4], parts[5]
    raise KeyError("Max core file size")


def children(pid):
    """Direct children of `pid`."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        for c in children(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def is_asan_binary(path):
    """True when the binary was built with AddressSanitizer."""
    with open(path, "rb") as f:
        data = f.read()
    return b"__asan_init" in data or b"AddressSanitizer" in data


@functools.lru_cache(maxsize=None)
def sanitized_relay():
    """True when the relay under test (RELAY_BIN) is a sanitizer build: the
    pass that skips or loosens what a sanitizer distorts. Read once."""
    from relay import relay_binary  # relay.py does not import this module
    return is_asan_binary(relay_binary())


@functools.lru_cache(maxsize=None)
def relay_version(path):
    """What `path --version` prints. Read once per binary."""
    import subprocess
    return subprocess.run([path, "--version"], stdout=subprocess.PIPE, text=True,
                          check=True).stdout


def libssh2_patched():
    """True when the relay under test carries our libssh2 patches
    (scripts/libssh2-patches/, the default build); False when it was built
    against the system's libssh2 (WC_LIBSSH2=system). Its --version says
    which."""
    from relay import relay_binary
    return " with our patches" in relay_version(relay_binary())


def asan_env(path):
    """Environment for a relay under test whose RSS is measured: with an
    AddressSanitizer binary, a 16 MiB quarantine instead of 256 MiB, so
    freed memory held by ASan is not taken for memory the relay holds."""
    if not is_asan_binary(path):
        return {}
    opts = os.environ.get("ASAN_OPTIONS", "")
    return {"ASAN_OPTIONS": (opts + ":" if opts else "") + "quarantine_size_mb=16"}
