"""WinRS through the relay with unmodified clients (pywinrm, pypsrp) over CredSSP."""

from __future__ import annotations

import os
import time

import winrm

from helpers import (ALICE, RELAY_HOST, USERS, audit_events, double_records, relay_log_excerpt, relay_protocol, retarget, run,
                     user_is)


def _records_since(h, name, n0):
    return [r for r in double_records(h, name)[n0:] if r.get("event") == "request"]


def test_relay_two_targets_one_session(relay):
    n1, n2 = len(double_records(relay, "web01")), len(double_records(relay, "web02"))
    na = len(audit_events(relay))
    p = relay_protocol("web01")
    assert run(p, "echo", ["hello"]) == (b"hello\n", b"", 0), relay_log_excerpt(relay)
    assert run(p, "echo $COMPUTERNAME") == (b"WEB01\n", b"", 0)
    retarget(p, "web02")
    assert run(p, "echo $COMPUTERNAME") == (b"WEB02\n", b"", 0)
    assert run(p, "echo", ["hello"]) == (b"hello\n", b"", 0)
    p.transport.close_session()

    # Delegation really happened: the targets saw LAB\alice authenticate with her own credentials.
    r1, r2 = _records_since(relay, "web01", n1), _records_since(relay, "web02", n2)
    assert r1 and r2
    for r in r1 + r2:
        assert user_is(r["user"], ALICE), r
        assert r["auth"] == "negotiate"
    assert {"Create", "Command", "Receive", "Signal", "Delete"} <= {r["action"] for r in r1}
    assert {"Create", "Command", "Receive", "Delete"} <= {r["action"] for r in r2}
    # The relay talks to the targets itself (its own source address, not the client's socket).
    assert all(r["peer"].startswith("127.") for r in r1 + r2)
    # One client connection = one relay session, across both targets.
    ev = [e for e in audit_events(relay)[na:] if e.get("event") == "request"]
    assert {e.get("target") for e in ev} == {"web01", "web02"}, ev
    assert len({e.get("session") for e in ev}) == 1, [e.get("session") for e in ev]


def test_relay_session_per_target_port(relay):
    """winrm.Session drops the /wsman/<target> path; the per-target listener routes it."""
    n1 = len(double_records(relay, "web01"))
    s = winrm.Session("http://%s:15001/wsman" % RELAY_HOST, auth=(ALICE, USERS[ALICE]), transport="credssp",
                      server_cert_validation="ignore")
    r = s.run_cmd("echo", ["via-port", "$COMPUTERNAME"])
    assert (r.std_out, r.std_err, r.status_code) == (b"via-port WEB01\n", b"", 0), relay_log_excerpt(relay)
    recs = _records_since(relay, "web01", n1)
    assert recs and all(user_is(x["user"], ALICE) for x in recs)


def test_relay_pypsrp_execute_cmd(relay):
    from pypsrp.client import Client

    c = Client(RELAY_HOST, port=5985, path="wsman/web01", auth="credssp", ssl=False, username=ALICE,
               password=USERS[ALICE], cert_validation=False)
    out, err, rc = c.execute_cmd("echo psrp")
    assert (out, err, rc) == ("psrp\n", "", 0), relay_log_excerpt(relay)


def test_relay_large_output_byte_exact(relay):
    expected = "".join("%d\n" % i for i in range(1, 200001)).encode()
    p = relay_protocol("web01")
    t0 = time.monotonic()
    out, err, rc = run(p, "seq 1 200000")
    elapsed = time.monotonic() - t0
    p.transport.close_session()
    assert rc == 0 and err == b""
    assert len(out) == len(expected), "got %d bytes, expected %d" % (len(out), len(expected))
    assert out == expected
    print("200,000 lines (%d bytes) through the relay in %.2fs" % (len(out), elapsed))


def test_relay_exit_code(relay):
    p = relay_protocol("web01")
    assert run(p, "sh -c 'exit 7'") == (b"", b"", 7)
    assert run(p, "echo to-stderr >&2; exit 42") == (b"", b"to-stderr\n", 42)
    p.transport.close_session()


def test_relay_stdin_send(relay):
    # > 16 KiB so the CredSSP request is chunked (multipart/x-multi-encrypted) on the client side.
    data = b"".join(b"stdin line %06d %s\n" % (i, os.urandom(8).hex().encode()) for i in range(900))
    assert len(data) > 16384
    p = relay_protocol("web01")
    sid = p.open_shell()
    cid = p.run_command(sid, "cat")
    p.send_command_input(sid, cid, data[:100], end=False)
    p.send_command_input(sid, cid, data[100:], end=True)
    out, err, rc = p.get_command_output(sid, cid)
    p.close_shell(sid)
    assert (err, rc) == (b"", 0)
    assert out == data


def test_relay_unicode_and_xml_specials(relay):
    na = len(audit_events(relay))
    p = relay_protocol("web01")
    text = "h\u00e9llo \u2713 \u65e5\u672c <a&b> \"q\" 'z'"
    out, err, rc = run(p, "cat <<'EOF'\n%s\nEOF" % text)
    p.transport.close_session()
    assert (out.decode("utf-8"), err, rc) == (text + "\n", b"", 0)
    cmds = [e.get("command") for e in audit_events(relay)[na:] if e.get("action") == "Command"]
    assert any(c and text in c for c in cmds), cmds
