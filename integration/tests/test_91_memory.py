"""Core images of the live relay: where the delegated password is in memory.

* While a CredSSP session is open, alice's password is in the relay's memory (the vault's SecretString,
  UTF-8; sspi's NTLM identity buffers for the open target connection, UTF-16LE) and in only a few places.
* Once the session ended (client closed its connection, audit ``session_end``) it is nowhere: the vault is
  wiped, the target contexts dropped, and the binary's zeroing allocator wiped every freed block.
* Between sessions (after every earlier test's sessions ended) it is nowhere either.
* The lifecycle paths wipe it too: a caller killed while its Receive waits at the target (the session ends on
  the relay's side, with a request in flight), and a re-authentication on the same connection (the first
  session ends while the connection, and a new session of another user on it, stays open).

The image is taken with gdb's ``gcore`` as root: the relay sets PR_SET_DUMPABLE 0, which stops non-root
debuggers but not root's CAP_SYS_PTRACE (the README's stated limit). Core files hold secrets: they live in a
0700 directory under the work dir and are deleted in ``finally`` blocks, and nothing printed here contains
the password (matches are shown as <PW>).
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import typing

import pytest

from helpers import (ALICE, BOB, RELAY_HOST, USERS, RawCredSSP, audit_events, relay_log_excerpt, relay_protocol, run,
                     start_long_receive, user_is, wait_for)

import harness

PASSWORD = USERS[ALICE]
ENCODINGS = ("utf-8", "utf-16-le")
RELAY_PORTS = (harness.RELAY_PORT, harness.RELAY_WEB01_PORT)

# Copies of the password allowed in memory while one session with one target connection is open.
# Measured (the test prints where each copy is, with the struct that points at it):
#   1 x UTF-8    the vault: DelegatedCredentials.password (SecretString = Box<str>, 23 bytes, next to
#                the user name's length 5);
#   3 x UTF-16LE sspi's AuthIdentityBuffers.password (ZeroizedUtf16String, a Vec<u16> of 23) of the
#                target connection: NegotiateClient.handle (the credentials handle sspi returned),
#                Negotiate.auth_identity and Ntlm.identity (sspi clones the identity into each layer
#                and keeps it for the life of the context, although NTLM needs only the session keys
#                once established).
# All four are owned by the session and zeroized on drop. The UTF-16 copies scale with the number of
# open target connections (3 each); this test opens one. Any further copy (per request, per message,
# a freed buffer) would be a regression. Without the binary's zeroing allocator the image also holds
# 2 freed, unreferenced UTF-16LE copies inside the decrypted TSCredentials DER (TSPasswordCreds,
# "LAB", "alice", password), which survive session_end: the second image catches that.
MAX_COPIES_OPEN_SESSION = 4

GDB_TIMEOUT = 120


# ---------------------------------------------------------------- process and socket state

def relay_pid(h: harness.Harness) -> int:
    proc = h.procs.get("relay")
    assert proc is not None and proc.poll() is None, "relay not running" + relay_log_excerpt(h, 20)
    return proc.pid


def open_relay_connections() -> typing.List[str]:
    """Relay-side TCP connections on its client ports that are still open (ESTABLISHED or CLOSE_WAIT):
    each one is a session whose credentials may still be held."""
    open_states = {"01": "ESTABLISHED", "08": "CLOSE_WAIT"}
    out = []
    try:
        with open("/proc/net/tcp") as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        ip_hex, port_hex = local.split(":")
        ip = socket.inet_ntoa(struct.pack("<I", int(ip_hex, 16)))
        if ip == RELAY_HOST and int(port_hex, 16) in RELAY_PORTS and state in open_states:
            rip_hex, rport_hex = remote.split(":")
            rip = socket.inet_ntoa(struct.pack("<I", int(rip_hex, 16)))
            out.append("%s:%d <- %s:%d %s" % (ip, int(port_hex, 16), rip, int(rport_hex, 16), open_states[state]))
    return out


def quiesce(h: harness.Harness) -> None:
    """Close client connections earlier tests left to the garbage collector, and wait until the relay
    has no client connection left (every session ended)."""
    gc.collect()
    left = wait_for(lambda: not open_relay_connections(), timeout=15)
    if not left:
        pytest.fail("client connections to the relay still open after 15 s (an earlier test keeps a session "
                    "alive): %s" % open_relay_connections())


# ---------------------------------------------------------------- core images

class Mapping(typing.NamedTuple):
    start: int
    end: int
    perms: str
    name: str


class Core(typing.NamedTuple):
    data: bytes
    segments: typing.List[typing.Tuple[int, int, int]]  # (file offset, vaddr, size) of PT_LOAD
    maps: typing.List[Mapping]
    threads: typing.List[typing.Tuple[str, int]]  # (name, stack pointer)


def require_gdb() -> None:
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed (integration/run.sh can apt-get install it): cannot take a core image")
    if os.geteuid() != 0:
        pytest.skip("not root: attaching to the relay (PR_SET_DUMPABLE 0) needs CAP_SYS_PTRACE")


def read_maps(pid: int) -> typing.List[Mapping]:
    maps = []
    with open("/proc/%d/maps" % pid) as fh:
        for line in fh:
            parts = line.split(None, 5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            maps.append(Mapping(lo, hi, parts[1], parts[5].strip() if len(parts) > 5 else ""))
    return maps


def load_segments(data: bytes) -> typing.List[typing.Tuple[int, int, int]]:
    assert data[:4] == b"\x7fELF" and data[4] == 2, "not an ELF64 core"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    segs = []
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1 and p_filesz:  # PT_LOAD
            segs.append((p_offset, p_vaddr, p_filesz))
    return segs


def take_core(pid: int, path: str) -> Core:
    """gcore the live relay; also record each thread's name and stack pointer (to attribute hits)."""
    cmd = ["gdb", "-batch", "-nx", "-p", str(pid),
           "-ex", "set pagination off",
           "-ex", "thread apply all p/x $sp",
           "-ex", "gcore %s" % path]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         timeout=GDB_TIMEOUT, env=harness.scrubbed_env())
    out = res.stdout.decode("utf-8", "replace")
    if "ptrace: Operation not permitted" in out:
        pytest.skip("ptrace is not permitted here (seccomp, container or Yama policy): %s" % out[-400:])
    assert res.returncode == 0 and os.path.exists(path), "gcore failed (rc %s):\n%s" % (res.returncode, out[-2000:])
    maps = read_maps(pid)
    threads = []
    name = "?"
    for line in out.splitlines():
        m = re.match(r'^Thread \d+ \(.*?\(LWP (\d+)\)(?: "([^"]*)")?', line)
        if m:
            name = "%s (LWP %s)" % (m.group(2) or "?", m.group(1))
            continue
        m = re.match(r"^\$\d+ = (0x[0-9a-f]+)", line)
        if m:
            threads.append((name, int(m.group(1), 16)))
    os.chmod(path, 0o600)
    with open(path, "rb") as fh:
        data = fh.read()
    return Core(data, load_segments(data), maps, threads)


def vaddr_of(core: Core, offset: int) -> typing.Optional[int]:
    for off, va, size in core.segments:
        if off <= offset < off + size:
            return va + offset - off
    return None


def region_of(core: Core, va: typing.Optional[int]) -> str:
    if va is None:
        return "core metadata (notes)"
    for m in core.maps:
        if m.start <= va < m.end:
            stacks = [t for t, sp in core.threads if m.start <= sp < m.end]
            if stacks:
                return "stack of thread %s %s(%s)" % (stacks[0], "below sp, dead frames " if
                                                      all(va < sp for t, sp in core.threads
                                                          if m.start <= sp < m.end) else "", m.perms)
            label = m.name or "anonymous mapping (glibc thread arena or large allocation)"
            return "%s %x-%x %s" % (label, m.start, m.end, m.perms)
    return "unmapped vaddr %x" % va


def redacted(b: bytes) -> str:
    for enc in ENCODINGS:
        b = b.replace(PASSWORD.encode(enc), b"<PW>")
    return "".join(chr(c) if 32 <= c < 127 else "." for c in b)


def describe(core: Core, offset: int, enc: str) -> str:
    """Where a match is: region, glibc chunk header before it, who points at it, bytes around it."""
    needle = PASSWORD.encode(enc)
    va = vaddr_of(core, offset)
    lines = ["%s at %s in %s" % (enc, "0x%x" % va if va is not None else "file offset %d" % offset,
                                 region_of(core, va))]
    if va is not None:
        # Heap allocations start 16-byte aligned after an 8-byte size field (low bits: flags).
        if va % 16 == 0 and offset >= 8:
            size, = struct.unpack_from("<Q", core.data, offset - 8)
            lines.append("  starts a block; glibc size field 0x%x (%d bytes)" % (size, size & ~7))
        refs = []
        pat = struct.pack("<Q", va)
        pos = core.data.find(pat)
        while pos != -1 and len(refs) < 4:
            if pos % 8 == 0:
                rva = vaddr_of(core, pos)
                words = struct.unpack_from("<4Q", core.data, max(0, pos - 8))
                refs.append("  pointed to from 0x%x (%s); words around: %s" % (
                    rva or 0, region_of(core, rva), " ".join("%x" % w for w in words)))
            pos = core.data.find(pat, pos + 1)
        lines += refs or ["  no pointer to it (freed or stale copy)"]
    lo, hi = max(0, offset - 32), min(len(core.data), offset + len(needle) + 32)
    lines.append("  context: %r" % redacted(core.data[lo:hi]))
    return "\n".join(lines)


def find_password(core: Core, password: str = PASSWORD) -> typing.Dict[str, typing.List[int]]:
    hits: typing.Dict[str, typing.List[int]] = {}
    for enc in ENCODINGS:
        needle = password.encode(enc)
        offs = []
        pos = core.data.find(needle)
        while pos != -1:
            offs.append(pos)
            pos = core.data.find(needle, pos + 1)
        hits[enc] = offs
    return hits


def report(core: Core, hits: typing.Dict[str, typing.List[int]], title: str) -> str:
    lines = ["%s: %s (core %d MB, %d threads)" % (
        title, ", ".join("%s x%d" % (enc, len(v)) for enc, v in hits.items()), len(core.data) >> 20, len(core.threads))]
    for enc, offs in hits.items():
        for off in offs:
            lines.append(describe(core, off, enc))
    return "\n".join(lines)


@pytest.fixture
def core_dir(relay: harness.Harness) -> typing.Iterator[str]:
    d = tempfile.mkdtemp(prefix="cores-", dir=relay.workdir)
    os.chmod(d, 0o700)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)  # core images contain secrets


def image(pid: int, core_dir: str, name: str) -> typing.Tuple[Core, typing.Dict[str, typing.List[int]], str]:
    path = os.path.join(core_dir, name)
    try:
        core = take_core(pid, path)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    hits = find_password(core)
    return core, hits, report(core, hits, name)


# ---------------------------------------------------------------- tests

def test_relay_is_hardened_yet_root_can_image_it(relay, core_dir):
    """PR_SET_DUMPABLE 0 and RLIMIT_CORE 0 are in force, and root's gdb still attaches (CAP_SYS_PTRACE)."""
    require_gdb()
    with open(relay.relay_log, encoding="utf-8", errors="replace") as fh:
        log = fh.read()
    line = next((ln for ln in log.splitlines() if "process hardened" in ln), None)
    assert line, "no 'process hardened' line in relay.log" + relay_log_excerpt(relay, 20)
    assert "dumpable=false" in line and "core_limit=0" in line, line
    pid = relay_pid(relay)
    with open("/proc/%d/limits" % pid) as fh:
        core_line = next(ln for ln in fh if ln.startswith("Max core file size"))
    assert core_line.split()[4:6] == ["0", "0"], core_line
    with open("/proc/%d/status" % pid) as fh:
        status = dict(ln.split(":", 1) for ln in fh if ":" in ln)
    locked_kb = int(status["VmLck"].split()[0])
    print("\n[memory] %s\n[memory] VmLck %s kB, VmRSS %s" % (line.split("INFO")[-1].strip(), locked_kb,
                                                                status["VmRSS"].strip()))
    if "memory_locked=true" in line:
        assert locked_kb > 0, status["VmLck"]
    core, _hits, _ = image(pid, core_dir, "attach-check.core")
    assert core.segments and core.threads, "gcore produced an image without memory or threads"


def test_no_password_in_memory_between_sessions(relay, core_dir):
    """After every earlier test's sessions ended (many of them alice's), her password is nowhere."""
    require_gdb()
    quiesce(relay)
    _core, hits, text = image(relay_pid(relay), core_dir, "between-sessions.core")
    print("\n[memory] " + text)
    assert not any(hits.values()), "password still in relay memory with no session open:\n" + text


def test_password_only_while_session_open(relay, core_dir):
    require_gdb()
    quiesce(relay)
    pid = relay_pid(relay)
    before = {e.get("session") for e in audit_events(relay) if e.get("event") == "session_start"}

    p = relay_protocol("web01")
    closed = False
    try:
        assert run(p, "echo", ["memory-test"]) == (b"memory-test\n", b"", 0)
        started = [e for e in audit_events(relay) if e.get("event") == "session_start"
                   and e.get("session") not in before and user_is(e.get("user"), ALICE)]
        assert len(started) == 1, started
        sid = started[0]["session"]
        assert len(open_relay_connections()) == 1, open_relay_connections()

        # 1. Session open (transport kept open): the password is there, a few times.
        _core, hits, text = image(pid, core_dir, "open-session.core")
        print("\n[memory] " + text)
        total = sum(len(v) for v in hits.values())
        # Positive control: the vault holds it in UTF-8, so the image and the search work.
        assert hits["utf-8"], "the open session's password is not in the image: the search is blind\n" + text
        assert len(hits["utf-8"]) == 1, "the vault should hold the only UTF-8 copy:\n" + text
        assert total <= MAX_COPIES_OPEN_SESSION, "more copies than expected with one session open:\n" + text

        # 2. End the session: client closes its connection, the relay audits session_end.
        p.transport.close_session()
        closed = True
        ended = wait_for(lambda: [e for e in audit_events(relay)
                                  if e.get("event") == "session_end" and e.get("session") == sid], 10)
        assert ended, "no session_end for %s after the client closed" % sid + relay_log_excerpt(relay, 20)
        assert wait_for(lambda: not open_relay_connections(), 10), open_relay_connections()

        _core, hits, text = image(pid, core_dir, "session-ended.core")
        print("\n[memory] " + text)
        assert not hits["utf-8"] and not hits["utf-16-le"], \
            "password still in relay memory after session_end:\n" + text
    finally:
        if not closed:
            p.transport.close_session()


def session_started_since(h: harness.Harness, before: typing.Set[typing.Any], user: str) -> str:
    started = [e for e in audit_events(h) if e.get("event") == "session_start"
               and e.get("session") not in before and user_is(e.get("user"), user)]
    assert len(started) == 1, started
    return started[0]["session"]


def test_password_wiped_after_the_caller_is_killed_mid_receive(relay, core_dir):
    """The caller dies while its Receive waits at the target: the relay cancels it, deletes the shell, ends
    the session, and then the password is nowhere (the in-flight request held no copy that outlives it)."""
    require_gdb()
    quiesce(relay)
    pid = relay_pid(relay)
    before = {e.get("session") for e in audit_events(relay) if e.get("event") == "session_start"}
    child, _shell = start_long_receive(relay, "http://%s:%d/wsman/web01" % (RELAY_HOST, harness.RELAY_PORT))
    try:
        sid = session_started_since(relay, before, ALICE)
        # Positive control: with the Receive in flight the session holds the password.
        _core, hits, text = image(pid, core_dir, "receive-in-flight.core")
        print("\n[memory] " + text)
        assert hits["utf-8"], "the password is not in the image with the session open: the search is blind\n" + text
    finally:
        child.kill()
        child.wait()
    ended = wait_for(lambda: [e for e in audit_events(relay)
                              if e.get("event") == "session_end" and e.get("session") == sid], 10)
    assert ended, "no session_end after the caller was killed" + relay_log_excerpt(relay, 20)
    assert wait_for(lambda: not open_relay_connections(), 10), open_relay_connections()
    _core, hits, text = image(pid, core_dir, "killed-mid-receive.core")
    print("\n[memory] " + text)
    assert not hits["utf-8"] and not hits["utf-16-le"], \
        "password still in relay memory after the caller was killed mid-Receive:\n" + text


def test_password_wiped_when_the_connection_reauthenticates(relay, core_dir):
    """alice logs on and opens a shell; on the same TCP connection bob logs on. alice's session ends there
    (re-authentication): with the connection and bob's session still open, her password is nowhere, and
    bob's is there (the image sees a live session's password)."""
    require_gdb()
    quiesce(relay)
    pid = relay_pid(relay)
    before = {e.get("session") for e in audit_events(relay) if e.get("event") == "session_start"}
    raw = RawCredSSP(RELAY_HOST, harness.RELAY_PORT)
    try:
        raw.logon(ALICE)
        shell = raw.protocol().open_shell()
        first = session_started_since(relay, before, ALICE)
        raw.logon(BOB)  # same TCP connection, new ClientHello
        ended = wait_for(lambda: [e for e in audit_events(relay)
                                  if e.get("event") == "session_end" and e.get("session") == first], 10)
        assert ended and ended[0]["reason"] == "re-authentication on the same connection", ended
        assert [e for e in audit_events(relay) if e.get("event") == "cleanup" and e.get("shell_id") == shell]
        bob_shell = raw.protocol(BOB).open_shell()  # bob's session is live and holds his password
        assert len(open_relay_connections()) == 1, open_relay_connections()
        core, hits, text = image(pid, core_dir, "reauthenticated.core")
        print("\n[memory] " + text)
        bob_hits = find_password(core, USERS[BOB])
        assert bob_hits["utf-8"], "bob's open session's password is not in the image: the search is blind"
        assert not hits["utf-8"] and not hits["utf-16-le"], \
            "alice's password still in relay memory after her session ended by re-authentication:\n" + text
        raw.protocol(BOB).close_shell(bob_shell, close_session=False)
    finally:
        raw.close()
