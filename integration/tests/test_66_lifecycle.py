"""A session ends when it must, whatever is in flight (issue 8): the caller vanishing during a
Receive long-poll, SIGTERM, the lifetime and idle limits, re-authentication on an open connection;
and one address cannot lock everyone else out (per-source cap, absolute logon deadline).

Each test asserts the relay's own behaviour: its audit (cleanup, session_end, the cancelled
request), the double's independent log (the Delete arrived), and the wire (connections closed)."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import time
import typing

import pytest
from winrm.exceptions import WSManFaultError

import harness
from helpers import (ALICE, BOB, USERS, RawCredSSP, audit_events, double_arrivals, double_records, err_text, run,
                     start_long_receive, wait_for)
from harness import ExtraRelay

def session_of(events: typing.List[dict], shell: str) -> str:
    return next(e["session"] for e in events if e.get("shell_id") == shell)


def session_end(events: typing.List[dict], session: str) -> typing.Optional[dict]:
    return next((e for e in events if e["event"] == "session_end" and e["session"] == session), None)


def assert_ended_cleanly(events: typing.List[dict], session: str, shell: str, double_log: typing.List[dict],
                         reason: str) -> None:
    mine = [e for e in events if e.get("session") == session]
    kinds = [e["event"] for e in mine]
    cleanup = [e for e in mine if e["event"] == "cleanup" and e.get("shell_id") == shell]
    assert cleanup and cleanup[0].get("status") == 200, mine
    assert kinds.index("cleanup") < kinds.index("session_end")
    assert session_end(events, session)["reason"] == reason
    # The Receive that was in flight is audited, as cancelled.
    receives = [e for e in mine if e.get("action") == "Receive"]
    assert receives and "cancelled" in receives[-1].get("reason", "") and receives[-1]["status"] == 499, receives
    # The target really deleted it, at the relay's request.
    assert [r for r in double_log if r.get("action") == "Delete" and r.get("shell_id") == shell]


def test_caller_vanishing_during_receive_ends_the_session_within_5s(relay):
    child, shell = start_long_receive(relay, "http://%s:%d/wsman/web01" % (harness.RELAY_HOST, harness.RELAY_PORT))
    killed = time.monotonic()
    child.kill()
    child.wait()
    session = session_of(audit_events(relay), shell)
    ended = wait_for(lambda: session_end(audit_events(relay), session), 10, 0.05)
    elapsed = time.monotonic() - killed
    assert ended, "no session_end within 10 s of the caller going away"
    assert elapsed < 5, "session ended %.1f s after the caller went away" % elapsed
    assert_ended_cleanly(audit_events(relay), session, shell, double_records(relay, "web01"), "connection closed")
    print("[measure] session_end %.2f s after the caller was killed mid-Receive" % elapsed)


def test_sigterm_with_receive_in_flight_drains_and_exits_0(relay):
    extra = ExtraRelay(relay, "127.0.0.53")
    try:
        child, shell = start_long_receive(relay, "http://127.0.0.53:5985/wsman/web01")
        signalled = time.monotonic()
        extra.proc.send_signal(signal.SIGTERM)
        code = extra.proc.wait(timeout=15)
        elapsed = time.monotonic() - signalled
        child.wait(timeout=30)
        assert code == 0
        assert elapsed < 5, "relay took %.1f s to exit after SIGTERM" % elapsed
        events = extra.events()
        assert_ended_cleanly(events, session_of(events, shell), shell, double_records(relay, "web01"),
                             "relay shutting down")
        print("[measure] relay exited %.2f s after SIGTERM with a Receive in flight" % elapsed)
    finally:
        extra.stop()


def audit_time(event: dict) -> float:
    """An audit event's time, in seconds since the epoch."""
    return datetime.datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()


LIFETIME_SECS = 3
IDLE_SECS = 2


def test_lifetime_ends_a_session_with_receive_in_flight(relay):
    extra = ExtraRelay(relay, "127.0.0.41", tail="[session]\nmax_lifetime_secs = %d\n" % LIFETIME_SECS)
    try:
        child, shell = start_long_receive(relay, "http://127.0.0.41:5985/wsman/web01")
        events = extra.events()
        session = session_of(events, shell)
        started = next(e for e in events if e["event"] == "session_start" and e["session"] == session)
        ended = wait_for(lambda: session_end(extra.events(), session), 10, 0.05)
        child.kill()
        assert ended, "the lifetime did not end the session"
        # Not before the lifetime is over (a relay ending sessions at once fails here), and soon after.
        assert LIFETIME_SECS * 1000 - 50 <= ended["duration_ms"] < LIFETIME_SECS * 1000 + 5000, ended
        assert audit_time(ended) - audit_time(started) >= LIFETIME_SECS - 0.05, (started, ended)
        assert_ended_cleanly(extra.events(), session, shell, double_records(relay, "web01"),
                             "maximum session lifetime")
        assert started["time"] < ended["time"]
    finally:
        extra.stop()


def test_idle_timeout_ends_a_session_and_deletes_its_shell(relay):
    extra = ExtraRelay(relay, "127.0.0.42", tail="[session]\nidle_timeout_secs = %d\n" % IDLE_SECS)
    try:
        p = extra.protocol()
        shell = p.open_shell()
        session = session_of(extra.events(), shell)
        ended = wait_for(lambda: session_end(extra.events(), session), IDLE_SECS + 4, 0.05)
        assert ended and ended["reason"] == "idle timeout"
        # Idle for the whole timeout since the Create, its last request (a relay ending sessions at once, or
        # counting from the logon, fails here); the audit stamps the Create once answered, so a little slack.
        create = next(e for e in extra.events() if e.get("session") == session and e.get("action") == "Create")
        idle = audit_time(ended) - audit_time(create)
        assert IDLE_SECS - 0.25 <= idle < IDLE_SECS + 4, "session ended %.2f s after its last request" % idle
        cleanup = [e for e in extra.events() if e["event"] == "cleanup" and e.get("shell_id") == shell]
        assert cleanup and cleanup[0]["status"] == 200
    finally:
        extra.stop()


def test_reauthentication_deletes_the_previous_sessions_shells(relay):
    """A new CredSSP exchange on an authenticated connection ends that session first: its shells
    are deleted on the target (not just forgotten, which would leak them and free their quota)."""
    extra = ExtraRelay(relay, "127.0.0.43", tail="[limits]\nmax_shells_per_user = 1\n")
    raw = RawCredSSP("127.0.0.43", 5985)
    try:
        raw.logon(ALICE)
        shell = raw.protocol().open_shell()
        first = session_of(extra.events(), shell)
        raw.logon(ALICE)  # same TCP connection, new ClientHello
        events = extra.events()
        ended = session_end(events, first)
        assert ended and ended["reason"] == "re-authentication on the same connection"
        cleanup = [e for e in events if e["event"] == "cleanup" and e.get("shell_id") == shell]
        assert cleanup and cleanup[0]["status"] == 200
        assert [r for r in double_records(relay, "web01") if r.get("action") == "Delete" and r.get("shell_id") == shell]
        starts = [e for e in events if e["event"] == "session_start"]
        assert len({e["session"] for e in starts}) == 2
        # The quota slot came free because the shell is gone, and the new session works.
        again = raw.protocol()
        second_shell = again.open_shell()
        again.close_shell(second_shell, close_session=False)
    finally:
        raw.close()
        extra.stop()


def test_a_crowd_of_half_open_requests_from_one_address_locks_nobody_else_out(relay):
    extra = ExtraRelay(relay, "127.0.0.44")
    crowd: typing.List[socket.socket] = []
    try:
        baseline = float("inf")
        for _ in range(2):  # the faster of two, the first also warms the relay up
            started = time.monotonic()
            assert run(extra.protocol(), "echo", ["no crowd"])[0] == b"no crowd\n"
            baseline = min(baseline, time.monotonic() - started)
        for _ in range(500):
            s = socket.socket()
            s.bind(("127.0.0.70", 0))
            s.settimeout(5)
            s.connect(("127.0.0.44", 5985))
            try:
                s.sendall(b"POST /wsman/web01 HTTP/1.1\r\nHost: relay\r\nContent-Type: application/soap+xml\r\n")
            except OSError:
                pass  # already closed by the relay: that is the point
            crowd.append(s)
        started = time.monotonic()
        out = run(extra.protocol(), "echo", ["through the crowd"])
        elapsed = time.monotonic() - started
        assert out[0] == b"through the crowd\n"
        # Against the same logon + command on this relay without the crowd, measured in this run (the machine's
        # load shows in both): a crowd that made the logon wait would add seconds (the logon deadline).
        assert elapsed < 3 * baseline + 0.25, "logon + command took %.2f s under the crowd, %.2f s without" % (
            elapsed, baseline)
        # The crowd's sockets beyond the places were shed (its own oldest idle ones): audited under its address,
        # summarised rather than a line each.
        shed = [e for e in extra.events() if e["event"] == "denied" and "make room" in e.get("reason", "")]
        assert shed and all(e["source"].startswith("127.0.0.70") for e in shed) and len(shed) <= 40, shed[:3]
        print("[measure] logon + echo from another address under 500 half-open sockets: %.3f s (%.3f s without)"
              % (elapsed, baseline))
    finally:
        for s in crowd:
            s.close()
        extra.stop()


def test_401s_do_not_extend_the_logon_deadline(relay):
    extra = ExtraRelay(relay, "127.0.0.45", auth_extra="logon_timeout_secs = 2")
    try:
        with socket.create_connection(("127.0.0.45", 5985), timeout=5) as s:
            accepted = time.monotonic()
            closed_after = None
            while time.monotonic() - accepted < 8:
                try:
                    s.sendall(b"POST /wsman/web01 HTTP/1.1\r\nHost: relay\r\nContent-Length: 0\r\n\r\n")
                    answer = s.recv(65536)
                except OSError:
                    answer = b""
                if not answer or answer.startswith(b"HTTP/1.1 503"):  # EOF, or the closing answer
                    closed_after = time.monotonic() - accepted
                    break
                assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
                time.sleep(0.5)
        assert closed_after is not None, "a connection re-sending unauthenticated requests was kept for 8 s"
        assert 1.5 < closed_after < 3.5, closed_after
    finally:
        extra.stop()


def _cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_file_descriptors_the_accept_loop_backs_off(relay):
    extra = ExtraRelay(relay, "127.0.0.46", nofile=48)
    held: typing.List[socket.socket] = []
    try:
        # Connections from several addresses (each within its per-source share) use up the
        # relay's descriptors; the rest wait in the backlog while accept() fails with EMFILE.
        for i in range(6):
            for _ in range(16):
                s = socket.socket()
                s.bind(("127.0.0.%d" % (60 + i), 0))
                s.settimeout(5)
                s.connect(("127.0.0.46", 5985))
                held.append(s)
        time.sleep(0.5)
        with open(extra.log, "rb") as fh:
            before = fh.read().count(b"accept failed")
        cpu_before = _cpu_seconds(extra.proc.pid)
        time.sleep(3)
        cpu = _cpu_seconds(extra.proc.pid) - cpu_before
        with open(extra.log, "rb") as fh:
            failures = fh.read().count(b"accept failed") - before
        assert failures > 0, "the test did not exhaust the relay's file descriptors"
        assert failures <= 8, "%d failed accepts in 3 s: the loop retries too fast" % failures
        assert cpu < 0.5, "relay used %.2f s CPU in 3 s while out of descriptors" % cpu
        for s in held:
            s.close()
        held.clear()
        # Descriptors free again: the relay serves as before.
        assert wait_for(lambda: run(extra.protocol(), "echo", ["back"])[0] == b"back\n", 5)
    finally:
        for s in held:
            s.close()
        extra.stop()


def test_sighup_reloads_rules_and_ends_sessions_of_removed_users(relay):
    extra = ExtraRelay(relay, "127.0.0.47", own_users=True)
    try:
        alice, bob = extra.protocol(), extra.protocol(user=BOB)
        alice_shell, bob_shell = alice.open_shell(), bob.open_shell()
        bob_session = session_of(extra.events(), bob_shell)
        removed = subprocess.run([relay.relay_bin, "user", "remove", BOB, "--users-file", extra.users],
                                 capture_output=True, timeout=30)
        assert removed.returncode == 0, removed.stderr
        # alice loses web02 in the new rules.
        with open(extra.config) as fh:
            config = fh.read()
        with open(extra.config, "w") as fh:
            fh.write(config.replace('targets = ["web01", "web02", "down", "hang"]', 'targets = ["web01"]'))
        extra.proc.send_signal(signal.SIGHUP)
        ended = wait_for(lambda: session_end(extra.events(), bob_session), 5, 0.05)
        assert ended and ended["reason"] == "user removed from the users file"
        cleanup = [e for e in extra.events() if e["event"] == "cleanup" and e.get("shell_id") == bob_shell]
        assert cleanup and cleanup[0]["status"] == 200
        # alice's session goes on under the new rules: web01 yes, web02 no.
        command = alice.run_command(alice_shell, "echo", ["kept"])
        assert alice.get_command_output(alice_shell, command)[0] == b"kept\n"
        web02 = RawCredSSP("127.0.0.47", 5985, path="/wsman/web02")
        try:
            web02.logon(ALICE)
            with pytest.raises(WSManFaultError) as denied:
                web02.protocol().open_shell()
            assert "AccessDenied" in str(denied.value.fault_subcode) or "no [[allow]]" in err_text(denied.value)
        finally:
            web02.close()
        # A broken config is reported and the one in force stays.
        with open(extra.config, "a") as fh:
            fh.write("\n[nonsense\n")
        extra.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: b"reload failed" in open(extra.log, "rb").read(), 5)
        command = alice.run_command(alice_shell, "echo", ["still"])
        assert alice.get_command_output(alice_shell, command)[0] == b"still\n"
        alice.close_shell(alice_shell)
    finally:
        extra.stop()


def _set_password(relay, users_file: str, user: str, password: str) -> None:
    """`user add` over an existing user: what an admin runs to change a password."""
    done = subprocess.run([relay.relay_bin, "user", "add", user, "--users-file", users_file, "--password-stdin"],
                          input=(password + "\n").encode(), capture_output=True, timeout=30)
    assert done.returncode == 0 and b"updated" in done.stderr, done.stderr


def _reloaded(extra, count: int) -> bool:
    with open(extra.log, "rb") as fh:
        return fh.read().count(b"SIGHUP: reloaded") >= count


def test_sighup_ends_the_sessions_of_a_user_whose_password_changed(relay):
    """A changed NT hash (`user add` over an existing user, as after a leak) ends that user's sessions as a removal
    does: shells deleted, audited, credentials wiped. Other users' sessions go on; the user logs on again with the
    new password only."""
    extra = ExtraRelay(relay, "127.0.0.57", own_users=True)
    try:
        alice, bob = extra.protocol(), extra.protocol(user=BOB)
        alice_shell, bob_shell = alice.open_shell(), bob.open_shell()
        bob_session = session_of(extra.events(), bob_shell)
        _set_password(relay, extra.users, BOB, "Bob-new-pw-9")
        extra.proc.send_signal(signal.SIGHUP)
        ended = wait_for(lambda: session_end(extra.events(), bob_session), 5, 0.05)
        assert ended and ended["reason"] == "user's password changed in the users file", ended
        cleanup = [e for e in extra.events() if e["event"] == "cleanup" and e.get("shell_id") == bob_shell]
        assert cleanup and cleanup[0]["status"] == 200, cleanup
        # alice's session is untouched.
        command = alice.run_command(alice_shell, "echo", ["kept"])
        assert alice.get_command_output(alice_shell, command)[0] == b"kept\n"
        assert not [e for e in extra.events() if e["event"] == "session_end" and e.get("user") == ALICE]
        alice.close_shell(alice_shell)
        # The old password no longer logs on.
        import spnego.exceptions

        old = RawCredSSP("127.0.0.57", 5985)
        try:
            with pytest.raises((PermissionError, spnego.exceptions.SpnegoError)):
                old.logon(BOB)
        finally:
            old.close()
    finally:
        extra.stop()


def test_a_logon_under_way_at_a_reload_is_decided_by_the_new_users_file(relay):
    """bob's CredSSP exchange is authenticated (NTLM, pubKeyAuth) when his password changes and the relay reloads;
    the credentials he then delegates are those of the old password: refused, audited, no session."""
    extra = ExtraRelay(relay, "127.0.0.51", own_users=True)
    raw = RawCredSSP("127.0.0.51", 5985)
    try:
        seen = len(extra.events())

        def change_and_reload() -> None:
            _set_password(relay, extra.users, BOB, "Bob-new-pw-9")
            extra.proc.send_signal(signal.SIGHUP)
            assert wait_for(lambda: _reloaded(extra, 1), 5, 0.05), "the relay did not reload"

        with pytest.raises(PermissionError):
            raw.logon(BOB, before_credentials=change_and_reload)
        events = extra.events()[seen:]
        assert not [e for e in events if e["event"] == "session_start"], events
        failed = [e for e in events if e["event"] == "auth_failed"]
        assert len(failed) == 1 and failed[0]["user"] == BOB, events
        assert "the users file changed during the logon" in failed[0]["reason"], failed
    finally:
        raw.close()
        extra.stop()


def test_a_shell_created_after_the_caller_went_away_is_still_deleted(relay):
    """The caller dies while its Create is at a slow target: the relay lets the Create finish,
    learns the ShellId, and deletes the shell at session end instead of leaking it."""
    relay.start_double("slow", "127.0.0.48", 5985, extra_args=["--create-delay", "1.5"])
    tail = ('[[target]]\nname = "slow"\nurl = "http://127.0.0.48:5985/wsman"\n\n'
            '[[allow]]\nusers = [\'LAB\\alice\']\ntargets = ["slow"]\n')
    extra = ExtraRelay(relay, "127.0.0.49", tail=tail)
    try:
        client = ("import os, winrm\n"
                  "winrm.protocol.Protocol(endpoint=os.environ['ENDPOINT'], transport='credssp', "
                  "username=os.environ['USER_NAME'], password=os.environ['USER_PASSWORD'], "
                  "message_encryption='always').open_shell()\n")
        env = harness.scrubbed_env({"ENDPOINT": "http://127.0.0.49:5985/wsman/slow", "USER_NAME": ALICE,
                                    "USER_PASSWORD": USERS[ALICE], "PYTHONPATH": os.pathsep.join(sys.path)})
        child = subprocess.Popen([sys.executable, "-c", client], env=env)
        # The Create is at the target, which holds its answer back for 1.5 s.
        at_target = wait_for(lambda: [r for r in double_arrivals(relay, "slow") if r.get("action") == "Create"],
                             20, 0.02)
        assert at_target, "the Create never reached the target"
        child.kill()
        child.wait()
        assert not [e for e in extra.events() if e.get("action") == "Create"], "the Create finished too early"
        created = wait_for(lambda: [r for r in double_records(relay, "slow") if r.get("action") == "Create"], 5, 0.02)
        assert created, "the Create never reached the target"
        shell = created[0].get("shell_id")
        assert shell
        cleanup = wait_for(lambda: [e for e in extra.events() if e["event"] == "cleanup" and e.get("shell_id") == shell],
                           8, 0.05)
        assert cleanup and cleanup[0]["status"] == 200, extra.events()
        creates = [e for e in extra.events() if e.get("action") == "Create"]
        assert creates and creates[0].get("shell_id") == shell and creates[0]["status"] == 200
        assert "went away" in creates[0].get("reason", ""), creates[0]
        assert [r for r in double_records(relay, "slow") if r.get("action") == "Delete" and r.get("shell_id") == shell]
    finally:
        extra.stop()
