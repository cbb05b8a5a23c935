"""`winrm-relay run` (issue 10): one command on many targets through a relay of the test's own (127.0.0.120)
or --direct, against a dozen target doubles (127.0.0.121-132), an address where nothing listens (.133), a
target that starts a few seconds late (.134) and one with a stand-in powershell.exe (.135).

What is checked is what the targets and the client's outputs show: the doubles' own logs (who they saw, when
each shell was created and deleted, so how many were open at once), the JSON results field by field, the
transcript, exit codes, and that the password appears nowhere."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import typing

import pytest

import harness
from harness import ExtraRelay
from helpers import ALICE, USERS, wait_for

RELAY = "127.0.0.120"
DOUBLES = {"127.0.0.%d" % (121 + i): "f10-%02d" % (i + 1) for i in range(12)}
NOTHING = "127.0.0.133"
LATE = "127.0.0.134"
POWERSHELL = "127.0.0.135"
POWERSHELL_TOO = "127.0.0.136"  # the same double, on a second --bind
RELAY_URL = "http://%s:5985" % RELAY
PASSWORD = USERS[ALICE]
FIELDS = {"target", "status", "exit_code", "stdout", "stderr", "attempts", "duration_ms", "error"}
# Output on both streams that names the machine, and a second of work so that sessions overlap.
COMMAND = ["echo out-$COMPUTERNAME; echo err-$COMPUTERNAME >&2; sleep 1"]

# A stand-in for powershell.exe on the double's PATH: decodes -EncodedCommand (UTF-16LE base64) and says what it
# got; a script starting with "throw " fails the way PowerShell does with a redirected stderr, in CLIXML.
FAKE_POWERSHELL = r'''#!%s
import base64, sys
from xml.sax.saxutils import escape
args = sys.argv[1:]
if args[:3] != ["-NoProfile", "-NonInteractive", "-EncodedCommand"] or len(args) != 4:
    sys.stderr.write("unexpected arguments %%r\n" %% args)
    sys.exit(2)
script = base64.b64decode(args[3]).decode("utf-16-le")
if script.startswith("throw "):
    sys.stdout.write("before the error\n")
    sys.stderr.write('#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
                     '<S S="Error">%%s_x000D__x000A_</S><S S="Error">At line:1 char:1_x000D__x000A_</S></Objs>'
                     %% escape(script[6:]))
    sys.exit(1)
sys.stdout.write("script: %%s\n" %% script)
'''

ALLOW_TAIL = """
[limits]
max_sessions_per_user = 60
max_shells_per_user = 60

[[allow]]
users = ['LAB\\alice']
targets = ["127.0.0.120/29", "127.0.0.128/27"]
shells = ["cmd"]
"""


class Fleet(typing.NamedTuple):
    h: harness.Harness
    relay: ExtraRelay


@pytest.fixture(scope="module")
def fleet(relay: harness.Harness) -> typing.Iterator[Fleet]:
    h = relay
    started = []
    for host, name in DOUBLES.items():
        started.append(h.start_double(name, host, 5985, wait=False))
    for host, name in DOUBLES.items():
        h.wait_double(name, host, 5985)
    bindir = os.path.join(h.workdir, "f10-bin")
    os.makedirs(bindir, exist_ok=True)
    fake = os.path.join(bindir, "powershell.exe")
    with open(fake, "w") as fh:
        fh.write(FAKE_POWERSHELL % sys.executable)
    os.chmod(fake, 0o755)
    started.append(h.start_double("f10-ps", POWERSHELL, 5985, extra_args=["--bind", POWERSHELL_TOO + ":5985"],
                                  extra_env={"PATH": bindir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")}))
    own = ExtraRelay(h, RELAY, tail=ALLOW_TAIL)
    try:
        yield Fleet(h, own)
    finally:
        own.stop()
        late = h.procs.get("double-f10-late")
        for proc in started + ([late] if late else []):
            if proc.poll() is None:
                proc.terminate()
        for proc in started + ([late] if late else []):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


class Ran(typing.NamedTuple):
    rc: int
    stdout: str
    stderr: str
    argv: typing.List[str]


def fanout(h: harness.Harness, *args: str, password: str = PASSWORD, timeout: float = 120) -> Ran:
    argv = [h.relay_bin, "run", *args]
    p = subprocess.run(argv, input=(password + "\n").encode(), capture_output=True, timeout=timeout,
                       env=harness.scrubbed_env(), cwd=h.workdir)
    return Ran(p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace"), argv)


def through_relay(*args: str) -> typing.List[str]:
    return ["--relay", RELAY_URL, "--user", ALICE, "--password-stdin", *args]


def direct(*args: str) -> typing.List[str]:
    return ["--direct", "--user", ALICE, "--password-stdin", *args]


def targets(*hosts: str) -> typing.List[str]:
    return ["--targets", ",".join(hosts)]


def parse_time(s: str) -> float:
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


Mark = typing.Dict[str, int]


def mark(h: harness.Harness) -> Mark:
    """How many records each double has logged so far: what a test saw is what comes after."""
    names = list(DOUBLES.values()) + ["f10-late", "f10-ps"]
    return {name: len(harness.read_jsonl(h.double_log(name))) for name in names}


def records(h: harness.Harness, name: str, since: Mark) -> typing.List[dict]:
    return harness.read_jsonl(h.double_log(name))[since[name]:]


def requests_of(h: harness.Harness, name: str, since: Mark) -> typing.List[dict]:
    return [r for r in records(h, name, since) if r.get("event") == "request"]


def most_shells_open_at_once(h: harness.Harness, names: typing.Iterable[str], since: Mark) -> int:
    """From the doubles' own logs: each shell is open from its Create to its Delete."""
    edges = []
    for name in names:
        for r in requests_of(h, name, since):
            if r.get("action") in ("Create", "Delete") and r.get("status") == 200:
                edges.append((parse_time(r["time"]), -1 if r["action"] == "Delete" else 1))
    # At the same millisecond a Delete counts before a Create: the slot was freed first.
    edges.sort()
    open_now = most = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    return most


def by_target(results: typing.List[dict]) -> typing.Dict[str, dict]:
    assert len({r["target"] for r in results}) == len(results), results
    return {r["target"]: r for r in results}


def assert_no_password(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text
        assert PASSWORD.encode("utf-16-le").decode("latin-1") not in text


def test_through_the_relay_throttled_retried_reported_and_transcribed(fleet: Fleet) -> None:
    h = fleet.h
    transcript = os.path.join(h.workdir, "f10-transcript.log")
    since = mark(h)
    # The late target comes up while its first attempts are being refused.
    late = threading.Timer(2.5, lambda: h.start_double("f10-late", LATE, 5985, wait=False))
    late.start()
    try:
        ran = fanout(h, *through_relay(*targets(LATE, *DOUBLES, NOTHING), "--throttle", "3", "--retries", "8",
                                       "--retry-delay", "1s", "--output", "json", "--transcript", transcript,
                                       "--", *COMMAND))
    finally:
        late.join()
    assert ran.rc == 1, ran  # the address where nothing listens failed
    results = json.loads(ran.stdout)
    assert isinstance(results, list) and len(results) == 14, ran.stdout
    assert all(set(r) == FIELDS for r in results), results
    found = by_target(results)
    for host, name in DOUBLES.items():
        r = found[host]
        machine = name.upper()
        assert (r["status"], r["exit_code"], r["attempts"], r["error"]) == ("ok", 0, 1, None), r
        assert (r["stdout"], r["stderr"]) == ("out-%s\n" % machine, "err-%s\n" % machine), r
        assert 1000 <= r["duration_ms"] < 60000, r
    r = found[LATE]
    assert (r["status"], r["exit_code"], r["stdout"], r["error"]) == ("ok", 0, "out-F10-LATE\n", None), r
    assert 2 <= r["attempts"] <= 8, r
    r = found[NOTHING]
    assert (r["status"], r["exit_code"], r["stdout"], r["stderr"], r["attempts"]) == ("failed", None, "", "", 8), r
    assert "cannot connect to 127.0.0.133:5985" in r["error"] and "refused" in r["error"], r
    assert r["duration_ms"] >= 7000, r  # seven retry delays
    summary = ran.stderr.strip().splitlines()[-1]
    assert summary.startswith("14 targets: 13 ok, 1 failed (2 retried) in "), ran.stderr

    # The targets' side: every one saw alice, ran the command once, and got its shell deleted.
    names = list(DOUBLES.values()) + ["f10-late"]
    for name in names:
        seen = records(h, name, since)
        assert seen, name
        assert {r["user"] for r in seen if r.get("event") in ("auth_ok", "request")} == {ALICE}, (name, seen)
        actions = [r["action"] for r in seen if r.get("event") == "request"]
        assert actions[:2] == ["Create", "Command"] and actions[-2:] == ["Signal", "Delete"], (name, actions)
        assert set(actions[2:-2]) == {"Receive"}, (name, actions)
        command = next(r["command"] for r in seen if r.get("action") == "Command")
        assert command == COMMAND[0], command
    assert 2 <= most_shells_open_at_once(h, names, since) <= 3

    with open(transcript, encoding="utf-8") as fh:
        text = fh.read()
    assert "User: LAB\\alice\nThrough: relay %s\nCommand: %s\n" % (RELAY_URL, COMMAND[0]) in text, text
    assert "Targets: 14 (throttle 3, at most 8 attempts 1s apart, timeout 120s)" in text, text
    for host, name in DOUBLES.items():
        assert "[%s] attempt 1: %s/wsman/%s\n" % (host, RELAY_URL, host) in text, text
        assert "[%s] ok: exit code 0, 1 attempt in " % host in text, text
        assert "[%s] stdout:\n    out-%s\n" % (host, name.upper()) in text, text
        assert "[%s] stderr:\n    err-%s\n" % (host, name.upper()) in text, text
    assert "[%s] attempt 1 failed: cannot connect to %s:5985" % (LATE, LATE) in text, text
    assert "; nothing ran, retrying in 1s" in text
    assert "[%s] attempt 8 failed: cannot connect" % NOTHING in text, text
    assert "[%s] failed: cannot connect to %s:5985" % (NOTHING, NOTHING) in text, text
    assert text.rstrip().endswith("%s\n**********************" % summary), text
    assert oct(os.stat(transcript).st_mode & 0o777) == "0o600"
    assert all(PASSWORD not in a for a in ran.argv)
    assert_no_password(ran.stdout, ran.stderr, text)


def comparable(results: typing.List[dict]) -> typing.Dict[str, dict]:
    return {t: {k: v for k, v in r.items() if k != "duration_ms"} for t, r in by_target(results).items()}


def test_direct_gives_the_same_results_as_through_the_relay(fleet: Fleet) -> None:
    h = fleet.h
    hosts = list(DOUBLES)[:6] + [NOTHING]
    common = targets(*hosts) + ["--throttle", "4", "--retries", "1", "--output", "jsonl", "--", *COMMAND]
    since = mark(h)
    relayed = fanout(h, *through_relay(*common))
    directly = fanout(h, *direct(*common))
    assert relayed.rc == directly.rc == 1, (relayed, directly)
    relayed_results = [json.loads(line) for line in relayed.stdout.splitlines()]
    direct_results = [json.loads(line) for line in directly.stdout.splitlines()]
    assert len(relayed_results) == len(direct_results) == len(hosts)
    assert comparable(relayed_results) == comparable(direct_results)
    assert comparable(direct_results)[NOTHING]["error"].startswith("cannot connect to 127.0.0.133:5985")
    # Both times each target saw alice: once from the relay, once from the client itself.
    for host in hosts[:-1]:
        creates = [r for r in requests_of(h, DOUBLES[host], since) if r["action"] == "Create"]
        assert [r["user"] for r in creates] == [ALICE, ALICE], creates


def test_a_throttle_above_the_relays_logon_cap_still_logs_everyone_on(fleet: Fleet) -> None:
    """The relay closes connections from one address beyond limits.max_unauthenticated_per_source (16) that are
    still logging on; the client queues its logons, so 24 sessions at once all get in, without a retry."""
    h = fleet.h
    # Two names for each double ("127.0.0.121", "127.0.0.121:5985"): 24 targets, 24 sessions at once.
    names = list(DOUBLES) + ["%s:5985" % host for host in DOUBLES]
    events_before = len(fleet.relay.events())
    ran = fanout(h, *through_relay(*targets(*names), "--throttle", "24", "--retries", "1", "--output", "jsonl", "--",
                                   "echo", "in"))
    assert ran.rc == 0, ran
    results = [json.loads(line) for line in ran.stdout.splitlines()]
    assert sorted(r["target"] for r in results) == sorted(names)
    assert all(r["status"] == "ok" and r["attempts"] == 1 for r in results), results
    refused = [e for e in fleet.relay.events()[events_before:] if e["event"] == "denied"]
    assert refused == [], refused


def test_exit_codes_and_refusals(fleet: Fleet) -> None:
    h = fleet.h
    three = targets(*list(DOUBLES)[:3])
    ok = fanout(h, *through_relay(*three, "--output", "jsonl", "--", "echo", "fine"))
    assert ok.rc == 0, ok
    assert [json.loads(line)["stdout"] for line in ok.stdout.splitlines()] == ["fine\n"] * 3

    # A non-zero exit code fails the target (exit 1), with the command's output kept.
    failing = fanout(h, *through_relay(*targets(list(DOUBLES)[0]), "--output", "json", "--", "echo no; exit 3"))
    assert failing.rc == 1, failing
    [r] = json.loads(failing.stdout)
    assert (r["status"], r["exit_code"], r["stdout"], r["attempts"]) == ("failed", 3, "no\n", 1), r
    assert r["error"] == "the command exited with code 3"

    # The relay refuses the logon: the run stops there (2), nothing reaches any target.
    since = mark(h)
    wrong = fanout(h, *through_relay(*three, "--throttle", "1", "--output", "jsonl", "--", "echo", "never"),
                   password="not-" + PASSWORD)
    assert wrong.rc == 2, wrong
    [r] = [json.loads(line) for line in wrong.stdout.splitlines()]
    assert (r["status"], r["attempts"]) == ("failed", 1), r
    assert r["error"] == ("the relay %s:5985 refused the logon of LAB\\alice (HTTP 401): check the user name and "
                          "password" % RELAY), r
    assert wrong.stderr.strip().endswith("; stopped: %s" % r["error"]), wrong.stderr
    assert ", 2 not started in " in wrong.stderr, wrong.stderr
    for host in list(DOUBLES)[:3]:
        assert requests_of(h, DOUBLES[host], since) == [], host

    # Usage and credential errors: 2, before anything is sent.
    for args, password, why in [
        (through_relay(*three, "--throttle", "0", "--", "x"), PASSWORD, "--throttle must be at least 1"),
        (through_relay(*three, "--retries", "0", "--", "x"), PASSWORD, "at least 1 (1 = no retry)"),
        (through_relay("--targets", " , ", "--", "x"), PASSWORD, "no targets"),
        (through_relay(*three, "--", "x"), "", "empty password"),
        (["--relay", RELAY_URL, "--user", "alice", *three, "--", "x"], PASSWORD, "DOMAIN\\user"),
        (through_relay(*three), PASSWORD, "COMMAND"),
        (direct(*three, "--relay", RELAY_URL, "--", "x"), PASSWORD, "cannot be used with"),
    ]:
        refused = fanout(h, *args, password=password)
        assert refused.rc == 2 and why in refused.stderr and refused.stdout == "", (args, refused)
    for host in list(DOUBLES)[:3]:
        assert requests_of(h, DOUBLES[host], since) == [], host


@pytest.mark.parametrize("mode", ["relay", "direct"])
def test_ctrl_c_stops_starting_deletes_open_shells_and_prints_what_finished(fleet: Fleet, mode: str) -> None:
    h = fleet.h
    hosts = list(DOUBLES)[:5]
    slow = [DOUBLES[host] for host in hosts[1:4]]
    how = through_relay if mode == "relay" else direct
    argv = [h.relay_bin, "run", *how(*targets(*hosts), "--throttle", "3", "--output", "jsonl", "--",
                                     "case $COMPUTERNAME in *01) echo quick;; *) sleep 60;; esac")]
    since = mark(h)
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=harness.scrubbed_env(), cwd=h.workdir)
    try:
        child.stdin.write((PASSWORD + "\n").encode())
        child.stdin.close()
        child.stdin = None  # communicate() would flush it
        running = wait_for(lambda: all(any(r["action"] == "Command" for r in requests_of(h, name, since))
                                       for name in slow), timeout=30)
        assert running, "the slow commands never started"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, (out, err)
    lines = out.decode().splitlines()
    assert len(lines) == 1, lines
    r = json.loads(lines[0])
    assert (r["target"], r["status"], r["stdout"]) == (hosts[0], "ok", "quick\n"), r
    summary = err.decode().strip().splitlines()[-1]
    assert summary.startswith("5 targets: 1 ok, 0 failed, 3 stopped (shells deleted), 1 not started in "), summary
    assert summary.endswith("; interrupted"), summary

    def deleted() -> bool:
        for name in slow:
            seen = requests_of(h, name, since)
            created = {r["shell_id"] for r in seen if r["action"] == "Create"}
            gone = {r["shell_id"] for r in seen if r["action"] == "Delete" and r.get("status") == 200}
            if not created or created != gone:
                return False
        return True

    # Through the relay, the relay deletes what the closed session left; directly, the client does.
    assert wait_for(deleted, timeout=10), {name: requests_of(h, name, since) for name in slow}
    assert requests_of(h, DOUBLES[hosts[4]], since) == [], "a target started after Ctrl-C"


def test_powershell_runs_encoded_and_clixml_errors_become_text(fleet: Fleet) -> None:
    h = fleet.h
    since = mark(h)
    ok = fanout(h, *through_relay(*targets(POWERSHELL, POWERSHELL_TOO), "--powershell", "--output", "json", "--",
                                  "Get-Service", "'Spooler' | % { \"$($_.Name) é\" }"))
    assert ok.rc == 0, ok
    results = json.loads(ok.stdout)
    assert sorted(r["target"] for r in results) == [POWERSHELL, POWERSHELL_TOO], results
    for r in results:
        assert (r["status"], r["exit_code"]) == ("ok", 0), r
        assert r["stdout"] == "script: Get-Service 'Spooler' | % { \"$($_.Name) é\" }\n", r
    commands = [x["command"] for x in requests_of(h, "f10-ps", since) if x["action"] == "Command"]
    assert len(commands) == 2, commands
    assert all(c.startswith("powershell.exe -NoProfile -NonInteractive -EncodedCommand ") for c in commands), commands

    failed = fanout(h, *through_relay(*targets(POWERSHELL), "--powershell", "--output", "json", "--",
                                      "throw Cannot find path 'C:\\nope' <because> it does not exist."))
    assert failed.rc == 1, failed
    [r] = json.loads(failed.stdout)
    assert (r["status"], r["exit_code"], r["stdout"]) == ("failed", 1, "before the error\n"), r
    assert r["stderr"] == "Cannot find path 'C:\\nope' <because> it does not exist.\nAt line:1 char:1\n", r


def read_terminal(argv: typing.List[str], h: harness.Harness, timeout: float = 60) -> typing.Tuple[int, str]:
    """Run with stdout and stderr on a terminal (a pty), the password on a pipe; all it drew, and its exit code."""
    master, slave = pty.openpty()
    # A size, as a real terminal has: the bar is drawn to its width.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=slave, stderr=slave, env=harness.scrubbed_env(),
                             cwd=h.workdir)
    os.close(slave)
    child.stdin.write((PASSWORD + "\n").encode())
    child.stdin.close()
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not data:
                break
            chunks.append(data)
        elif child.poll() is not None:
            break
    os.close(master)
    rc = child.wait(timeout=10)
    return rc, b"".join(chunks).decode("utf-8", "replace")


def test_on_a_terminal_a_table_and_a_progress_bar(fleet: Fleet) -> None:
    h = fleet.h
    hosts = list(DOUBLES)[:4]
    base = [h.relay_bin, "run", *through_relay(*targets(*hosts), "--throttle", "2", "--", "echo row-$COMPUTERNAME; "
                                               "sleep 0.5")]
    rc, drawn = read_terminal(base, h)
    assert rc == 0, drawn
    assert "TARGET       STATUS  EXIT     TIME  OUTPUT" in drawn, drawn
    for host in hosts:
        assert "%s  ok         0" % host in drawn and "row-%s" % DOUBLES[host].upper() in drawn, drawn
    assert "running" in drawn and "done:" in drawn, drawn  # the bar
    assert "4 targets: 4 ok, 0 failed in " in drawn, drawn
    rc, quiet = read_terminal(base[:2] + ["--no-progress"] + base[2:], h)
    assert rc == 0 and "TARGET" in quiet and "running" not in quiet and "done:" not in quiet, quiet
    # Not a terminal: only the results on stdout, only the summary on stderr.
    piped = fanout(h, *through_relay(*targets(*hosts), "--", "echo", "x"))
    assert [json.loads(line)["stdout"] for line in piped.stdout.splitlines()] == ["x\n"] * 4, piped
    assert piped.stderr.strip().startswith("4 targets: 4 ok, 0 failed in ") and len(piped.stderr.splitlines()) == 1
