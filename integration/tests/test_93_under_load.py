"""Under load (issue 11): 200 concurrent CredSSP sessions, alice's and bob's interleaved, each running a series of
commands through a relay of the test's own (127.0.0.190) to four target doubles (127.0.0.191-194).

Every output must come back byte-exact, each target must have seen every command authenticated as the caller who
sent it (each command line carries its caller's name and a nonce of its session, so a request on another user's
connection would show), nothing may fail, and the relay's resident memory must not grow from one wave of sessions
to the next: two identical waves of 200 sessions, and the second may hold at most a few KiB more per session than
the first (a leak per session or per command would show many times over).

Most commands echo a tag; one command in every tenth session prints a 256 KiB binary file (every byte value),
checked by SHA-256, so the relay's buffers for large sealed answers are exercised and reused too.

It does NOT come back to its baseline: what 200 sessions held (about 75 KiB each) stays resident after they end,
glibc's arenas keep it and the relay's mlockall keeps it resident; a second wave reuses it. Returning it is left
to do.

Two waves of 200 sessions x 20 commands (8,000 commands, 32,000 WS-Man requests after the logons): the doubles
spawn /bin/sh per command, so on CI's two cores this test takes about 90 s."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
import typing

import pytest

import harness
from harness import USERS, ExtraRelay
from helpers import ALICE, BOB

RELAY = "127.0.0.190"
TARGETS = {"127.0.0.%d" % (191 + i): "f11-%d" % (i + 1) for i in range(4)}
SESSIONS = 200
COMMANDS = 20
WAVES = 2
# Sessions with index % BINARY_EVERY == 0 run one command (number BINARY_AT) that prints the binary file.
BINARY_EVERY = 10
BINARY_AT = 10
BINARY_SIZE = 256 * 1024
# What the second wave may hold beyond the first, per session: far below a session's ~75 KiB, far above noise.
GROWTH_PER_SESSION_KIB = 10
TAIL = """
[limits]
max_sessions = 400
max_sessions_per_user = 200
max_shells_per_user = 200
max_unauthenticated_per_source = 256

[[allow]]
users = ['LAB\\alice', 'LAB\\bob']
targets = [%s]
shells = ["cmd"]
""" % ", ".join('"%s"' % t for t in TARGETS)


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def protocol(user: str, target: str):
    import winrm

    return winrm.protocol.Protocol(
        endpoint="http://%s:5985/wsman/%s" % (RELAY, target),
        transport="credssp",
        username=user,
        password=USERS[user],
        server_cert_validation="ignore",
        message_encryption="always",
        operation_timeout_sec=20,
        read_timeout_sec=60,
    )


class Sent(typing.NamedTuple):
    user: str
    target: str
    tag: str


@pytest.fixture(scope="module")
def fleet(relay: harness.Harness) -> typing.Iterator[typing.Tuple[harness.Harness, ExtraRelay]]:
    h = relay
    started = [h.start_double(name, host, 5985, wait=False) for host, name in TARGETS.items()]
    for host, name in TARGETS.items():
        h.wait_double(name, host, 5985)
    own = ExtraRelay(h, RELAY, tail=TAIL)
    try:
        yield h, own
    finally:
        own.stop()
        for proc in started:
            proc.terminate()
        for proc in started:
            proc.wait(timeout=10)


class Blob(typing.NamedTuple):
    path: str
    sha256: str


def session(user: str, target: str, index: int, commands: int, blob: Blob, start: threading.Barrier,
            sent: typing.List[Sent], problems: typing.List[str]) -> None:
    try:
        p = protocol(user, target)
        start.wait(timeout=60)
        shell = p.open_shell()
        nonce = secrets.token_hex(8)
        for n in range(commands):
            # What the target logs as the command line names the caller: a command of alice's that arrived on
            # bob's connection (or the other way round) would show.
            tag = "%s-%03d-%d-%s" % (user.split("\\")[1], index, n, nonce)
            binary = index % BINARY_EVERY == 0 and n == BINARY_AT
            # The double runs the line with /bin/sh -c: `cat FILE ; : TAG` prints the file, the tag stays last.
            command = p.run_command(shell, "cat", [blob.path, ";", ":", tag]) if binary else \
                p.run_command(shell, "echo", [tag])
            stdout, stderr, code = p.get_command_output(shell, command)
            p.cleanup_command(shell, command)
            sent.append(Sent(user, target, tag))
            if binary:
                if (hashlib.sha256(stdout).hexdigest(), len(stdout), stderr, code) != (blob.sha256, BINARY_SIZE,
                                                                                          b"", 0):
                    problems.append("%s on %s: %d bytes of binary output, SHA-256 %s, stderr %r, exit %s" % (
                        tag, target, len(stdout), hashlib.sha256(stdout).hexdigest(), stderr[:100], code))
            elif (stdout, stderr, code) != ((tag + "\n").encode(), b"", 0):
                problems.append("%s on %s: %r" % (tag, target, (stdout, stderr, code)))
        p.close_shell(shell)
        p.transport.close_session()  # the session ends: the relay frees what it held for it
    except Exception as e:  # noqa: BLE001 - every failure is collected and reported
        problems.append("session %d of %s on %s: %r" % (index, user, target, e))


# A limit of its own: two waves take about 90 s on two idle cores, over 200 s on a machine shared with other work.
@pytest.mark.timeout(600)
def test_200_sessions_of_two_users_to_four_targets_stay_apart(fleet) -> None:
    h, relay = fleet
    hosts = list(TARGETS)
    data = bytes(range(256)) * (BINARY_SIZE // 256)
    blob = Blob(os.path.join(relay.dir, "binary-output.bin"), hashlib.sha256(data).hexdigest())
    with open(blob.path, "wb") as fh:
        fh.write(data)
    # A first session warms the relay up (its TLS configuration, the allocator's arenas): the baseline.
    warm_up: typing.List[str] = []
    session(ALICE, hosts[0], 999, 1, blob, threading.Barrier(1), [], warm_up)
    assert warm_up == []
    time.sleep(1)
    baseline = rss_kib(relay.proc.pid)
    offsets = {host: len(harness.read_jsonl(h.double_log(name))) for host, name in TARGETS.items()}

    sent: typing.List[Sent] = []
    problems: typing.List[str] = []
    peaks, afters = [], []
    started = time.monotonic()
    for wave in range(WAVES):
        start = threading.Barrier(SESSIONS)
        threads = [
            threading.Thread(target=session, args=((ALICE, BOB)[i % 2], hosts[(i // 2) % len(hosts)],
                                                   wave * SESSIONS + i, COMMANDS, blob, start, sent, problems))
            for i in range(SESSIONS)
        ]
        for t in threads:
            t.start()
        peak = baseline
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_kib(relay.proc.pid))
            time.sleep(0.2)
        time.sleep(1)
        peaks.append(peak)
        afters.append(rss_kib(relay.proc.pid))
    elapsed = time.monotonic() - started
    assert problems == [], "%d problems, first: %s" % (len(problems), problems[:5])
    assert len(sent) == WAVES * SESSIONS * COMMANDS

    # What each target saw: every command once, from the user whose command it was, and nothing refused.
    by_tag = {s.tag: s for s in sent}
    seen: typing.Dict[str, str] = {}
    for host, name in TARGETS.items():
        records = harness.read_jsonl(h.double_log(name))[offsets[host]:]
        requests = [r for r in records if r.get("event") == "request"]
        assert all(r.get("status") == 200 for r in requests), [r for r in requests if r.get("status") != 200][:3]
        assert not [r for r in records if r.get("event") == "rejected"]
        for r in requests:
            if r.get("action") != "Command":
                continue
            tag = r["command"].split()[-1]
            assert tag in by_tag, r
            assert tag not in seen, "command %s reached a target twice" % tag
            seen[tag] = host
            assert r["user"].lower() == by_tag[tag].user.lower(), "%s sent by %s ran as %s" % (
                tag, by_tag[tag].user, r["user"])
            assert by_tag[tag].target == host, "%s for %s reached %s" % (tag, by_tag[tag].target, host)
    assert len(seen) == len(sent)

    # The relay's own account: every request of these sessions answered 200, none refused or failed.
    events = [e for e in harness.read_jsonl(relay.audit) if e.get("event") in ("request", "denied", "error")]
    assert [e for e in events if e.get("event") != "request" or e.get("status") != 200][:3] == []

    # Memory: the second wave (the same sessions, commands and outputs) runs in what the first left behind; at its
    # peak and once it is over the relay holds at most a few KiB per session more than after the first.
    growth = (peaks[1] - peaks[0], afters[1] - afters[0])
    print("\n%d waves of %d sessions x %d commands in %.1f s; relay RSS baseline %d KiB, peaks %s KiB, after each "
          "wave %s KiB; second wave's growth %.1f KiB per session at the peak, %.1f after"
          % (WAVES, SESSIONS, COMMANDS, elapsed, baseline, peaks, afters, growth[0] / SESSIONS, growth[1] / SESSIONS))
    bound = SESSIONS * GROWTH_PER_SESSION_KIB
    assert growth[0] <= bound and growth[1] <= bound, (
        "the second wave grew the relay by %s KiB (bound %d KiB, %d per session): baseline %d, peaks %s, afters %s"
        % (growth, bound, GROWTH_PER_SESSION_KIB, baseline, peaks, afters))
