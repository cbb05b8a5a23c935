"""Beyond the basic scenarios: concurrency, TimedOut passthrough, raw-NTLM CredSSP clients,
shell ownership, unauthenticated Identify, hostile tokens, and what happens when the audit log
cannot be written or is rotated."""

from __future__ import annotations

import base64
import os
import signal
import socket
import threading
import time
import typing
import uuid

import pytest
import requests
from winrm.exceptions import WinRMTransportError, WSManFaultError

import harness
from helpers import (ALICE, BOB, RELAY_HOST, RELAY_PORT, audit_events, double_records, err_text, relay_log_excerpt,
                     relay_protocol, relay_url, run, user_is, wait_for)


def test_relay_receive_timedout_passthrough(relay):
    """Receive with nothing to say: the target's w:TimedOut fault passes through, pywinrm polls again."""
    p = relay_protocol("web01", operation_timeout_sec=1, read_timeout_sec=8)
    sid = p.open_shell()
    cid = p.run_command(sid, "sleep 2.5; echo after-wait")
    out = p.get_command_output(sid, cid)
    p.close_shell(sid)
    assert out == (b"after-wait\n", b"", 0), relay_log_excerpt(relay)
    faults = [r for r in double_records(relay, "web01") if r.get("shell_id") == sid and r.get("fault") == "w:TimedOut"]
    assert faults, "the double never timed out a Receive: test did not exercise the fault path"


def test_relay_concurrent_clients(relay):
    results = {}
    errors = []

    def worker(i, target, user):
        try:
            p = relay_protocol(target, user=user)
            results[i] = run(p, "echo", ["c%d" % i, "$COMPUTERNAME"])
            p.transport.close_session()
        except Exception as e:  # pragma: no cover - reported below
            errors.append((i, e))

    jobs = [(0, "web01", ALICE), (1, "web02", ALICE), (2, "web01", BOB), (3, "web02", ALICE), (4, "web01", ALICE)]
    threads = [threading.Thread(target=worker, args=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, [(i, err_text(e)) for i, e in errors]
    for i, target, _ in jobs:
        assert results[i] == (("c%d %s\n" % (i, target.upper())).encode(), b"", 0)


def test_relay_credssp_raw_ntlm_client(relay):
    """requests-credssp with auth_mechanism='ntlm' sends raw NTLMSSP (not SPNEGO) inside CredSSP."""
    p = relay_protocol("web01")
    p.transport.credssp_auth_mechanism = "ntlm"  # Protocol() does not expose it; the session is built lazily
    assert run(p, "echo", ["raw-ntlm"]) == (b"raw-ntlm\n", b"", 0), relay_log_excerpt(relay)
    p.transport.close_session()


def test_relay_credssp_tls12(relay, monkeypatch):
    """Windows clients use TLS 1.2 inside CredSSP; Python clients default to 1.3."""
    import ssl

    import spnego._credssp as cs

    seen = []
    orig = cs.default_tls_context

    def tls12_context(*a, **kw):
        ctx = orig(*a, **kw)
        ctx.context.maximum_version = ssl.TLSVersion.TLSv1_2
        seen.append(ctx)
        return ctx

    monkeypatch.setattr(cs, "default_tls_context", tls12_context)
    p = relay_protocol("web01")
    assert run(p, "echo", ["tls12"]) == (b"tls12\n", b"", 0), relay_log_excerpt(relay)
    ctx = p.transport.session.auth.contexts["127.0.0.20"]
    assert seen, "TLS context hook not used"
    assert ctx.tls_connection.version() == "TLSv1.2", ctx.tls_connection.version()
    # > 16 KiB response and request through TLS 1.2 records as well
    data = b"x" * 40000 + b"\n"
    sid = p.open_shell()
    cid = p.run_command(sid, "cat")
    p.send_command_input(sid, cid, data, end=True)
    assert p.get_command_output(sid, cid) == (data, b"", 0)
    p.close_shell(sid)


def test_relay_shell_belongs_to_creator(relay):
    """Bob may use web01, but not alice's shell there: the relay refuses it itself. (The double
    would refuse it too, so its answer alone proves nothing: what counts is that bob's request
    never reached it, and the relay's audit says why.)"""
    pa = relay_protocol("web01")
    sid = pa.open_shell()
    pb = relay_protocol("web01", user=BOB)
    try:
        with pytest.raises((WSManFaultError, WinRMTransportError)) as ei:
            pb.run_command(sid, "echo", ["stolen"])
        text = err_text(ei.value)
        assert "AccessDenied" in text, text
        denied = wait_for(lambda: [e for e in audit_events(relay) if e.get("event") == "denied"
                                   and e.get("shell_id") == sid and user_is(e.get("user"), BOB)])
        assert denied, "no denied audit event for bob on alice's shell" + relay_log_excerpt(relay)
        assert "session that created it" in (denied[-1].get("reason") or ""), denied[-1]
        reached = [r for r in double_records(relay, "web01") if user_is(r.get("user"), BOB)
                   and (r.get("shell_id") or "").upper() == sid.upper()]
        assert not reached, "bob's request on alice's shell reached the target: %s" % reached
    finally:
        pb.transport.close_session()
        pa.close_shell(sid)


def test_relay_identify_unauthenticated(relay):
    mid = "uuid:%s" % uuid.uuid4()
    body = (
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd" '
        'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"><s:Header><a:MessageID>%s</a:MessageID></s:Header>'
        "<s:Body><wsmid:Identify/></s:Body></s:Envelope>" % mid
    )
    r = requests.post(relay_url("web01"), data=body.encode(), timeout=10,
                      headers={"Content-Type": "application/soap+xml;charset=UTF-8", "WSMANIDENTIFY": "unauthenticated"})
    assert r.status_code == 200, (r.status_code, r.text)
    assert "IdentifyResponse" in r.text and "ProtocolVersion" in r.text


@pytest.mark.parametrize("scheme,token", [
    ("CredSSP", b"\x00" * 10),
    ("CredSSP", b"\x16\x03\x01\x00\x05hello"),
    ("Negotiate", b"\x00" * 10),
    ("Negotiate", b"\x60\x03\x06\x01\x00"),
    ("CredSSP", b"A" * 70000),
])
def test_relay_survives_garbage_auth(relay, scheme, token):
    hdr = "%s %s" % (scheme, base64.b64encode(token).decode())
    try:
        r = requests.post(relay_url("web01"), data=b"", headers={"Authorization": hdr}, timeout=10)
        assert r.status_code in (400, 401, 413, 431), r.status_code
    except requests.ConnectionError:
        pass  # closing the connection is an acceptable answer
    assert relay.relay_alive(), relay_log_excerpt(relay)
    # and it still serves a real client
    p = relay_protocol("web01")
    assert run(p, "echo", ["still-up"]) == (b"still-up\n", b"", 0)
    p.transport.close_session()


def test_relay_slow_client_does_not_block_others(relay):
    """A client that opens a connection and sends half a request must not stall other clients."""
    s = socket.create_connection((RELAY_HOST, RELAY_PORT), timeout=5)
    try:
        s.sendall(b"POST /wsman/web01 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        t0 = time.monotonic()
        p = relay_protocol("web01")
        assert run(p, "echo", ["parallel"]) == (b"parallel\n", b"", 0)
        p.transport.close_session()
        assert time.monotonic() - t0 < 10
    finally:
        s.close()


def test_relay_reconnects_after_target_restart(relay):
    """The target drops the relay's keep-alive connection (restart, idle timeout): the next request
    re-authenticates with the delegated credentials instead of failing the client session."""
    import signal

    import harness

    p = relay_protocol("web02")
    assert run(p, "echo", ["before"]) == (b"before\n", b"", 0)
    d = relay.procs["double-web02"]
    d.send_signal(signal.SIGTERM)
    d.wait(10)
    relay.start_double("web02", *harness.DOUBLES["web02"])
    assert run(p, "echo", ["after"]) == (b"after\n", b"", 0), relay_log_excerpt(relay)
    p.transport.close_session()



# ---------------------------------------------------------------- the audit trail cannot be lost

# Relay instances of their own, on addresses no other test uses.
AUDIT_REFUSE_HOST = "127.0.0.50"
AUDIT_CONTINUE_HOST = "127.0.0.51"
AUDIT_ROTATE_HOST = "127.0.0.52"


def audit_relay(h, monkeypatch, host: str, on_failure: str = "refuse", full: bool = False):
    """An ExtraRelay with `[audit] on_failure`. With `full`, its audit path is /dev/full, which opens
    in append mode and fails every write with ENOSPC, as a full disk does."""
    from harness import ExtraRelay

    # ExtraRelay builds its config from relay_config_toml; these keys belong in its [audit] table.
    orig = harness.relay_config_toml

    def config(workdir: str, transports: bool = False) -> str:
        text = orig(workdir, transports).replace("[audit]\n", '[audit]\non_failure = "%s"\n' % on_failure, 1)
        if full:
            text = text.replace('path = "%s"' % os.path.join(workdir, "audit.jsonl"), 'path = "/dev/full"', 1)
        return text

    monkeypatch.setattr(harness, "relay_config_toml", config)
    try:
        return ExtraRelay(h, host)
    finally:
        monkeypatch.setattr(harness, "relay_config_toml", orig)


def creates_since(h, n: int) -> typing.List[dict]:
    return [r for r in double_records(h, "web01")[n:] if r.get("action") == "Create"]


def test_relay_refuses_requests_while_the_audit_cannot_be_written(relay, monkeypatch):
    """[audit] on_failure = "refuse" (the default): with the audit log failing, a request gets a
    WS-Man fault and is never forwarded; the relay says so in its log, once."""
    extra = audit_relay(relay, monkeypatch, AUDIT_REFUSE_HOST, "refuse", full=True)
    try:
        seen = len(double_records(relay, "web01"))
        p = extra.protocol()
        for _ in range(2):
            with pytest.raises(WSManFaultError) as ei:
                p.open_shell()
            assert "audit" in err_text(ei.value).lower(), err_text(ei.value)
        p.transport.close_session()
        assert not creates_since(relay, seen), "a request reached the target although it could not be audited"
        with open(extra.log, encoding="utf-8", errors="replace") as fh:
            log = fh.read()
        assert log.count("audit log cannot be written") == 1, harness.tail(extra.log, 30)
        assert "refusing requests" in log, harness.tail(extra.log, 30)
    finally:
        extra.stop()


def test_relay_goes_on_unaudited_when_told_to(relay, monkeypatch):
    """on_failure = "continue": the same failing log does not stop requests; the log says they go
    on unaudited."""
    extra = audit_relay(relay, monkeypatch, AUDIT_CONTINUE_HOST, "continue", full=True)
    try:
        seen = len(double_records(relay, "web01"))
        p = extra.protocol()
        assert run(p, "echo", ["unaudited"]) == (b"unaudited\n", b"", 0), harness.tail(extra.log, 30)
        p.transport.close_session()
        assert creates_since(relay, seen)
        with open(extra.log, encoding="utf-8", errors="replace") as fh:
            log = fh.read()
        assert log.count("audit log cannot be written") == 1 and "unaudited" in log, harness.tail(extra.log, 30)
    finally:
        extra.stop()


def test_sighup_reopens_a_rotated_audit_log(relay, monkeypatch):
    """logrotate renames the log and sends SIGHUP: later events go to a new file at the configured
    path (mode 0600), earlier ones stay in the renamed file."""
    extra = audit_relay(relay, monkeypatch, AUDIT_ROTATE_HOST)
    try:
        p = extra.protocol()
        assert run(p, "echo", ["before-rotate"])[0] == b"before-rotate\n"
        rotated = extra.audit + ".1"
        os.rename(extra.audit, rotated)
        extra.proc.send_signal(signal.SIGHUP)
        # The reload is asynchronous: wait until the relay has created the new file.
        assert wait_for(lambda: os.path.exists(extra.audit), 10), \
            "no new audit log at %s after SIGHUP\n%s" % (extra.audit, harness.tail(extra.log, 20))
        assert os.stat(extra.audit).st_mode & 0o777 == 0o600
        assert run(p, "echo", ["after-rotate"])[0] == b"after-rotate\n"
        p.transport.close_session()
        commands = lambda path: [e.get("command") for e in harness.read_jsonl(path) if e.get("event") == "request"]
        assert any("before-rotate" in (c or "") for c in commands(rotated)), commands(rotated)
        assert not any("after-rotate" in (c or "") for c in commands(rotated)), commands(rotated)
        assert wait_for(lambda: any("after-rotate" in (c or "") for c in commands(extra.audit)), 5), \
            commands(extra.audit)
    finally:
        extra.stop()
