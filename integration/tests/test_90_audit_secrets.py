"""Audit trail and secret hygiene. The secrets scan runs last of the whole session (marker runs_last, see
conftest.py), after the load test's relay, the memory tests and the shutdown test: it reads what every relay of
the run wrote, once each has exited and flushed."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import typing
import uuid

import pytest

import harness

from helpers import ALICE, USERS, audit_events, relay_log_excerpt, relay_protocol, run, user_is, wait_for

# "cleanup": shells a caller left open, deleted by the relay at session end (issue 5).
EVENTS = {"session_start", "auth_failed", "request", "denied", "session_end", "cleanup"}
REQUEST_FIELDS = {"time", "event", "session", "user", "source", "target", "action", "resource_uri", "status",
                  "bytes_in", "bytes_out", "duration_ms"}
WRONG_PASSWORDS = ["Wrong-Alice-Pass-77!"]


def test_audit_trail(relay):
    marker = "audit-marker-%s" % uuid.uuid4().hex[:12]
    p = relay_protocol("web01")
    assert run(p, "echo", [marker]) == (marker.encode() + b"\n", b"", 0)
    assert run(p, "sh -c 'exit 5'")[2] == 5
    p.transport.close_session()

    with open(relay.audit_file, encoding="utf-8") as fh:
        raw = [ln for ln in fh.read().splitlines() if ln.strip()]
    assert raw, "audit file is empty"
    events = []
    for ln in raw:
        obj = json.loads(ln)  # every line is one JSON object
        assert isinstance(obj, dict)
        assert isinstance(obj.get("time"), str) and obj["time"], obj
        assert obj.get("event") in EVENTS, obj
        events.append(obj)

    cmd = [e for e in events if e["event"] == "request" and e.get("action") == "Command"
           and marker in str(e.get("command") or "")]
    assert cmd, "no Command audit record with the command line" + relay_log_excerpt(relay, 10)
    c = cmd[-1]
    assert "echo" in c["command"]
    missing = REQUEST_FIELDS - set(c)
    assert not missing, "request record lacks %s: %s" % (missing, c)
    assert user_is(c["user"], ALICE) and c["target"] == "web01" and c.get("shell_id"), c
    assert c["source"].startswith("127.0.0.1") or c["source"].startswith("127."), c
    sess = c["session"]

    done = [e for e in events if e["event"] == "request" and e.get("session") == sess and e.get("action") == "Receive"
            and e.get("exit_code") is not None]
    assert 5 in [e["exit_code"] for e in done], done
    assert 0 in [e["exit_code"] for e in done], done

    assert [e for e in events if e["event"] == "session_start" and e.get("session") == sess]
    end = wait_for(lambda: [e for e in audit_events(relay) if e["event"] == "session_end" and e.get("session") == sess],
                   5)
    assert end, "no session_end after the client closed its connection"
    for e in events:
        if e["event"] == "request":
            assert isinstance(e.get("status"), int) and isinstance(e.get("duration_ms"), (int, float)), e
            assert isinstance(e.get("bytes_in"), int) and isinstance(e.get("bytes_out"), int), e
    # Every line is on the chain, and the whole suite's log (restarts and reloads included) verifies, with
    # every transcript it bound.
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    verified = subprocess.run([relay.relay_bin, "audit", "verify", relay.audit_file, "--transcripts",
                               os.path.join(relay.workdir, "transcripts")], capture_output=True, timeout=60,
                              env=harness.scrubbed_env())
    assert verified.returncode == 0, verified.stderr.decode()
    assert end[-1].get("transcript") and end[-1].get("transcript_sha256"), end[-1]


def live_relays(workdir: str) -> typing.List[str]:
    """Relay processes of this run still running: `serve` with a config under the work directory."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and any(a.startswith(workdir.encode()) for a in argv):
            found.append("%s: %s" % (pid, b" ".join(argv).decode("utf-8", "replace")))
    return found


@pytest.mark.runs_last
def test_no_secrets_in_relay_files(relay, request):
    """No password (UTF-8 or UTF-16LE; raw, hex or base64) in any file under the work dir (every relay's audit
    logs, session transcripts and logs, saved /metrics), except the doubles' own NTLM user file; no NT hash
    outside the relay's users file. Runs after every other test, with every relay of the run stopped, so what
    they write at the end (the load test's relay, shutdown) is read too."""
    assert request.session.items[-1] is request.node, "the secrets scan must be the session's last test"
    # The shared relay is still up when test_99 was not selected: stopped here, so its files are complete.
    proc = relay.procs.get("relay")
    if proc is not None and proc.poll() is None:
        relay.relay_stopped_on_purpose = True
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    # Every other relay (ExtraRelay) belongs to a test or module fixture that is over by now.
    assert wait_for(lambda: not live_relays(relay.workdir), 10), live_relays(relay.workdir)
    from spnego._ntlm_raw.crypto import ntowfv1

    secrets = list(USERS.values()) + WRONG_PASSWORDS
    needles = []  # (description, bytes, case-insensitive)
    for s in secrets:
        for enc in ("utf-8", "utf-16-le"):
            raw = s.encode(enc)
            needles += [("%s %s" % (s, enc), raw, False),
                        ("%s %s hex" % (s, enc), raw.hex().encode(), True),
                        ("%s %s base64" % (s, enc), base64.b64encode(raw), False)]
    # The NT hash is password-equivalent for NTLM: only the users file may hold it.
    hashes = [("NT hash of %s" % s, ntowfv1(s).hex().encode(), True) for s in USERS.values()]
    checked = []
    hits = []
    for root, _dirs, files in os.walk(relay.workdir):
        for f in files:
            path = os.path.join(root, f)
            if os.path.abspath(path) == os.path.abspath(relay.ntlm_user_file):
                continue
            with open(path, "rb") as fh:
                data = fh.read()
            low = data.lower()
            rel = os.path.relpath(path, relay.workdir)
            checked.append(rel)
            for desc, n, ci in needles + ([] if f == "users" else hashes):
                if (n.lower() in low) if ci else (n in data):
                    hits.append((rel, desc))
    assert "audit.jsonl" in checked and "relay.log" in checked and "users" in checked, checked
    transcripts = [f for f in checked if f.endswith(".jsonl") and "Z-" in f]
    assert len(transcripts) >= 5, "session transcripts were not checked: %s" % checked
    assert [f for f in checked if os.path.basename(f) == "metrics.txt"], checked
    relays = sorted({os.path.dirname(f) for f in checked if f.startswith("relay-") and f.endswith("relay.log")})
    print("\n[secrets] %d files scanned, the shared relay's and %d other relays' logs" % (len(checked), len(relays)))
    assert not hits, "secrets found: %s" % hits
