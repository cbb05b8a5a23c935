"""Runs last: the relay stops cleanly on SIGTERM (what systemd and the fixtures send)."""

from __future__ import annotations

import signal
import socket
import time

from helpers import ALICE, RELAY_HOST, RELAY_PORT, audit_events, relay_protocol, user_is

import harness


def test_relay_sigterm_clean_exit(relay):
    # An idle authenticated keep-alive connection is open while we stop it.
    before = {e.get("session") for e in audit_events(relay) if e.get("event") == "session_start"}
    p = relay_protocol("web01")
    shell = p.open_shell()
    started = [e for e in audit_events(relay) if e.get("event") == "session_start"
               and e.get("session") not in before and user_is(e.get("user"), ALICE)]
    assert len(started) == 1, started
    session = started[0]["session"]
    proc = relay.procs["relay"]
    relay.relay_stopped_on_purpose = True
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=15)
    except Exception:
        raise AssertionError("relay still running 15 s after SIGTERM\n" + harness.tail(relay.relay_log, 20))
    elapsed = time.monotonic() - t0
    assert rc == 0, "exit status %s after SIGTERM\n%s" % (rc, harness.tail(relay.relay_log, 20))
    assert elapsed < 12, elapsed
    try:
        socket.create_connection((RELAY_HOST, RELAY_PORT), timeout=1).close()
        raise AssertionError("listener still accepting after exit")
    except OSError:
        pass
    # The session it interrupted ended as sessions do: its shell deleted, then the end audited.
    events = [e for e in audit_events(relay) if e.get("session") == session]
    kinds = [e.get("event") for e in events]
    assert "session_end" in kinds, "no session_end for the interrupted session %s: %s" % (session, kinds)
    cleanup = [e for e in events if e.get("event") == "cleanup" and e.get("shell_id") == shell]
    assert cleanup, "shell %s left open on the target at shutdown: %s" % (shell, kinds)
    assert kinds.index("cleanup") < kinds.index("session_end"), kinds
