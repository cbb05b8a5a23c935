"""Session isolation and abuse limits (issue 5): shell ownership, cleanup of
shells left open, logon lockout, shell quota, source allowlist.

Limits that would disturb the shared relay run on extra relay instances at
127.0.0.30-31 with their own config and audit log."""

from __future__ import annotations

import socket
import threading
import time
import typing

import pytest
from winrm.exceptions import WinRMTransportError, WSManFaultError

from harness import ExtraRelay
from helpers import ALICE, BOB, audit_events, double_records, err_text, relay_protocol, run, user_is, wait_for


def _fault_text(e: BaseException) -> str:
    return err_text(e)


def test_shell_of_another_session_is_denied(relay):
    """bob may use cmd on web01, like alice, but never alice's shell. The relay refuses it itself: the
    double would refuse another owner's shell too, so its answer proves nothing; its log must show that
    nothing of bob's request arrived."""
    alice = relay_protocol("web01")
    shell = alice.open_shell()
    try:
        bob = relay_protocol("web01", user=BOB)
        n = len(audit_events(relay))
        seen = len(double_records(relay, "web01"))
        with pytest.raises((WinRMTransportError, WSManFaultError)) as ei:
            bob.run_command(shell, "echo", ["hijack"])
        assert "AccessDenied" in _fault_text(ei.value) or "not opened in this session" in _fault_text(ei.value)
        denied = wait_for(
            lambda: [e for e in audit_events(relay)[n:] if e.get("event") == "denied" and e.get("shell_id") == shell], 3
        )
        assert denied and denied[0]["user"] == BOB
        # Unchanged for this shell and for bob (a logon of bob's at the target, auth_ok, would be no request).
        reached = [r for r in double_records(relay, "web01")[seen:] if r.get("event") != "auth_ok"
                   and (user_is(r.get("user"), BOB) or (r.get("shell_id") or "").upper() == shell.upper())]
        assert not reached, "bob's request on alice's shell reached the target: %s" % reached
        # The rightful owner still uses it.
        command = alice.run_command(shell, "echo", ["mine"])
        assert alice.get_command_output(shell, command)[0] == b"mine\n"
        alice.cleanup_command(shell, command)
        bob.transport.close_session()
    finally:
        alice.close_shell(shell)
        alice.transport.close_session()


def test_shells_left_open_are_deleted_at_session_end(relay):
    p = relay_protocol("web01")
    shell = p.open_shell()
    n = len(audit_events(relay))
    p.transport.close_session()  # the client walks away without Delete
    cleanup = wait_for(
        lambda: [e for e in audit_events(relay)[n:] if e.get("event") == "cleanup" and e.get("shell_id") == shell], 10
    )
    assert cleanup[0]["status"] == 200 and cleanup[0]["target"] == "web01"
    deletes = [r for r in double_records(relay, "web01") if r.get("action") == "Delete" and r.get("shell_id") == shell]
    assert deletes and all(r.get("user", "").lower().endswith("alice") for r in deletes)
    # Cleanup happens before the credentials go: session_end comes after it.
    kinds = [e["event"] for e in audit_events(relay)[n:] if e.get("session") == cleanup[0]["session"]]
    assert kinds.index("cleanup") < kinds.index("session_end")


@pytest.fixture
def limited(relay):
    extra = ExtraRelay(relay, "127.0.0.30", auth_extra="lockout_threshold = 3\nlockout_duration_secs = 600",
                       tail="[limits]\nmax_shells_per_user = 2\n")
    yield extra
    extra.stop()


def test_lockout_after_repeated_failures_hides_whether_the_password_was_right(limited):
    for _ in range(3):
        with pytest.raises(Exception):
            limited.protocol(password="Wrong-password-1").open_shell()
    # Locked out now: even the right password is refused, and looks the same.
    with pytest.raises(Exception) as ei:
        limited.protocol().open_shell()
    assert "401" in err_text(ei.value) or "auth" in type(ei.value).__name__.lower() or "logon" in err_text(ei.value).lower()
    failed = [e for e in limited.events() if e["event"] == "auth_failed"]
    assert len(failed) == 4
    assert "locked out" in failed[2]["reason"]
    assert "locked out" in failed[3]["reason"] and failed[3]["user"] == ALICE
    # Another user from the same source is not affected.
    assert run(limited.protocol(user=BOB), "echo", ["bob"])[0] == b"bob\n"


def test_shell_quota_per_user(limited):
    p = limited.protocol()
    shells = [p.open_shell(), p.open_shell()]
    with pytest.raises((WinRMTransportError, WSManFaultError)) as ei:
        p.open_shell()
    assert "QuotaLimit" in err_text(ei.value) or "max_shells_per_user" in err_text(ei.value)
    p.close_shell(shells.pop(), close_session=False)
    shells.append(p.open_shell())  # a slot came free
    for shell in shells:
        p.close_shell(shell, close_session=False)
    p.transport.close_session()
    denied = [e for e in limited.events() if e["event"] == "denied"]
    assert any("max_shells_per_user" in e.get("reason", "") for e in denied)


def test_sources_outside_the_allowlist_are_dropped(relay):
    extra = ExtraRelay(relay, "127.0.0.31", listen_extra='allow_sources = ["10.9.9.9/32"]')
    try:
        with socket.create_connection(("127.0.0.31", 5985), timeout=5) as s:
            s.settimeout(5)
            s.sendall(b"POST /wsman/web01 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
        assert data == b"", "an unlisted source got an answer: %r" % data[:200]
        events = wait_for(lambda: [e for e in extra.events() if e["event"] == "denied"], 3)
        assert "allow_sources" in events[0]["reason"]
    finally:
        extra.stop()


def _post_and_read(host: str, timeout: float = 10) -> bytes:
    with socket.create_connection((host, 5985), timeout=5) as s:
        s.settimeout(timeout)
        s.sendall(b"POST /wsman/web01 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        try:
            return s.recv(4096)
        except ConnectionResetError:
            return b""


def _closed_by_relay(s: socket.socket) -> bool:
    s.settimeout(3)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_connections_waiting_to_authenticate_are_capped(relay):
    """Places for connections waiting to log on are capped (max_sessions = 2 here). With every place taken, a
    newcomer takes the place of the oldest idle one; with none idle, it waits for a place (as long as it may take
    to send its headers, 3 s here) and is then answered 503 with Retry-After, not closed unanswered."""
    extra = ExtraRelay(relay, "127.0.0.35", listen_extra="header_read_timeout_secs = 3",
                       tail="[limits]\nmax_sessions = 2\nmax_sessions_per_user = 1\n")
    idle: typing.List[socket.socket] = []
    waiting: typing.List[threading.Thread] = []
    try:
        # A logged-on session frees its place among the unauthenticated.
        session = extra.protocol()
        assert run(session, "echo", ["in"])[0] == b"in\n"
        idle = [socket.create_connection(("127.0.0.35", 5985), timeout=5) for _ in range(2)]
        time.sleep(1.5)  # idle for longer than a client takes to send its first request
        answer = _post_and_read("127.0.0.35")
        assert answer.startswith(b"HTTP/1.1 401"), "a newcomer was not served: %r" % answer[:100]
        assert any(_closed_by_relay(s) for s in idle), "no idle connection made room"
        assert wait_for(lambda: [e for e in extra.events() if "make room" in e.get("reason", "")], 3)
        # Nothing idle to shed: two more logons of alice hold both places, waiting for her one session slot.
        for s in idle:
            s.close()
        idle = []

        def log_on() -> None:
            try:
                run(extra.protocol(), "echo", ["later"])
            except Exception:  # noqa: BLE001 - only the places they hold matter here
                pass

        waiting = [threading.Thread(target=log_on, daemon=True) for _ in range(2)]
        for t in waiting:
            t.start()
        time.sleep(1.5)
        answer = _post_and_read("127.0.0.35")
        assert answer.startswith(b"HTTP/1.1 503"), "a connection without a place: %r" % answer[:100]
        assert b"\r\nRetry-After: " in answer, answer[:300]
        assert wait_for(lambda: [e for e in extra.events() if "waiting to authenticate" in e.get("reason", "")], 3)
        # The logged-on session is unaffected.
        assert run(session, "echo", ["still"])[0] == b"still\n"
        session.transport.close_session()
        for t in waiting:
            t.join(30)
    finally:
        for s in idle:
            s.close()
        extra.stop()
