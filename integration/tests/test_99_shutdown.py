"""Runs last: the relay stops cleanly on SIGTERM (what systemd and the fixtures send)."""

from __future__ import annotations

import signal
import socket
import time

from helpers import RELAY_HOST, RELAY_PORT, audit_events, relay_protocol, wait_for

import harness


def test_relay_sigterm_clean_exit(relay):
    # An idle authenticated keep-alive connection is open while we stop it.
    p = relay_protocol("web01")
    sid = p.open_shell()
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
    ends = wait_for(lambda: [e for e in audit_events(relay) if e.get("event") == "session_end"], 1)
    assert ends
