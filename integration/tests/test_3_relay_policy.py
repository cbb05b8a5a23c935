"""Authentication, authorisation and PowerShell passthrough through the relay."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import sys
import time
import uuid
import xml.etree.ElementTree as ET

import pytest
import winrm
from winrm.exceptions import InvalidCredentialsError, WinRMTransportError, WSManFaultError

from helpers import (ALICE, BOB, CREDSSP_ENCRYPTED, USERS, PS_RESOURCE_URI, capture_responses, audit_events, double_records, err_text, http_code,
                     ps_create_envelope, psrp_creation_blob, relay_log_excerpt, relay_protocol, relay_url, retarget,
                     run, user_is, wait_for)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from target_double import raw_body_bytes  # noqa: E402

WRONG_PASSWORD = "Wrong-Alice-Pass-77!"


def test_relay_users_file(relay):
    from spnego._ntlm_raw.crypto import ntowfv1

    st = os.stat(relay.users_file)
    assert stat.S_IMODE(st.st_mode) == 0o600
    lines = [ln.strip() for ln in open(relay.users_file) if ln.strip() and not ln.startswith("#")]
    entries = dict(ln.rsplit(":", 1) for ln in lines)
    for user, pw in USERS.items():
        assert re.fullmatch(r"[0-9a-fA-F]{32}", entries[user])
        assert entries[user].lower() == ntowfv1(pw).hex()


def test_relay_wrong_password(relay):
    n = len(audit_events(relay))
    p = relay_protocol("web01", password=WRONG_PASSWORD)
    t0 = time.monotonic()
    with pytest.raises(Exception) as ei:
        p.open_shell()
    e = ei.value
    assert time.monotonic() - t0 < 10
    auth_errors = (InvalidCredentialsError,)
    try:
        from requests_credssp.exceptions import AuthenticationException, NTStatusException

        auth_errors += (AuthenticationException, NTStatusException)
    except ImportError:
        pass
    from spnego.exceptions import SpnegoError

    auth_errors += (SpnegoError,)
    assert isinstance(e, auth_errors) or http_code(e) == 401, "not an authentication error: %r" % (e,)
    ev = wait_for(lambda: [x for x in audit_events(relay)[n:] if x.get("event") == "auth_failed"], 3)
    assert ev, "no auth_failed audit event" + relay_log_excerpt(relay)
    assert any(user_is(x.get("user"), ALICE) for x in ev), "auth_failed does not name the claimed user %s: %s" % (
        ALICE, ev)
    assert WRONG_PASSWORD not in open(relay.audit_file, encoding="utf-8").read()


def test_relay_bob_denied_web02_then_web01_same_connection(relay):
    n2 = len(double_records(relay, "web02"))
    na = len(audit_events(relay))
    p = relay_protocol("web02", user=BOB)
    with pytest.raises((WSManFaultError, WinRMTransportError)) as ei:
        p.open_shell()
    e = ei.value
    text = err_text(e)
    assert http_code(e) == 500, text
    assert isinstance(e, WSManFaultError), text
    assert (e.fault_subcode or "").endswith("AccessDenied"), text
    assert "web02" in text and re.search(r"allow|rule|polic|permit", text, re.I), text
    # The target never saw bob.
    assert not [r for r in double_records(relay, "web02")[n2:] if r.get("event") == "request"]

    # Same Protocol object, same CredSSP session: web01 is allowed.
    retarget(p, "web01")
    assert run(p, "echo", ["bob-ok"]) == (b"bob-ok\n", b"", 0), relay_log_excerpt(relay)
    p.transport.close_session()

    # The relay's audit says it was one session: a session is one logon on one TCP connection, so one
    # session_start for bob, and the denial and every later request under its id. (Whatever socket urllib3
    # chose, a second connection would have had to log on again, with a session of its own.)
    ev = wait_for(lambda: [x for x in audit_events(relay)[na:] if x.get("event") == "denied"], 3)
    assert ev, "no denied audit event"
    d = ev[0]
    assert user_is(d.get("user"), BOB) and d.get("target") == "web02", d
    starts = [x for x in audit_events(relay)[na:] if x.get("event") == "session_start"]
    assert [x.get("session") for x in starts] == [d.get("session")], (d, starts)
    later = [x for x in audit_events(relay)[na:] if x.get("event") == "request" and x.get("target") == "web01"]
    assert later and all(x.get("session") == d.get("session") for x in later), (d, later)
    web01_bob = [r for r in double_records(relay, "web01") if user_is(r.get("user"), BOB)]
    assert web01_bob, "web01 never saw LAB\\bob"


def _ps_create(p, target_url, pad: int = 0):
    mid = "uuid:%s" % str(uuid.uuid4()).upper()
    shell_id = str(uuid.uuid4()).upper()
    blob = psrp_creation_blob() + os.urandom(pad)
    creation_b64 = base64.b64encode(blob).decode()
    msg = ps_create_envelope(target_url, mid, shell_id, creation_b64)
    return mid, shell_id, creation_b64, msg


@pytest.mark.parametrize("pad", [0, 40000], ids=["small", "over16k"])
def test_relay_powershell_create_passthrough(relay, pad):
    p = relay_protocol("web01")
    mid, shell_id, creation_b64, msg = _ps_create(p, relay_url("web01"), pad)
    resp = p.send_message(msg)
    root = ET.fromstring(resp)
    relates = [n.text for n in root.iter() if n.tag.endswith("}RelatesTo")]
    assert relates == [mid]
    got_ids = [n.text for n in root.iter() if n.get("Name") == "ShellId"]
    assert got_ids == [shell_id]

    recs = [r for r in double_records(relay, "web01") if r.get("message_id") == mid]
    assert len(recs) == 1, recs
    rec = recs[0]
    assert rec["resource_uri"] == PS_RESOURCE_URI and rec["action"] == "Create"
    assert user_is(rec["user"], ALICE)
    assert rec["creation_xml_sha256"] == hashlib.sha256(creation_b64.encode()).hexdigest()
    # The whole SOAP Body went through byte for byte.
    assert rec["body_sha256"] == hashlib.sha256(raw_body_bytes(msg.encode())).hexdigest()
    # wsa:To is rewritten to the target URL (the client addressed the relay).
    assert rec.get("wsa_to") == "http://127.0.0.21:5985/wsman", rec.get("wsa_to")

    # Delete the PowerShell shell (also a PS-resource request).
    hdr = p.build_wsman_header(action="http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete",
                               resource_uri=PS_RESOURCE_URI, shell_id=shell_id)
    import xmltodict

    env = {"env:Envelope": hdr}
    env["env:Envelope"]["env:Body"] = {}
    p.send_message(xmltodict.unparse(env))
    p.transport.close_session()


def test_relay_bob_denied_powershell(relay):
    p = relay_protocol("web01", user=BOB)
    mid, shell_id, creation_b64, msg = _ps_create(p, relay_url("web01"))
    na = len(audit_events(relay))
    seen = capture_responses(p)
    with pytest.raises((WSManFaultError, WinRMTransportError)) as ei:
        p.send_message(msg)
    e = ei.value
    assert isinstance(e, WSManFaultError) and (e.fault_subcode or "").endswith("AccessDenied"), err_text(e)
    assert http_code(e) == 500
    # The relay's own fault: encrypted like any body, RelatesTo = our MessageID.
    assert seen[-1][0] == 500 and CREDSSP_ENCRYPTED in seen[-1][1], seen
    relates = [n.text for n in ET.fromstring(e.response).iter() if n.tag.endswith("}RelatesTo")]
    assert relates == [mid], relates
    assert not [r for r in double_records(relay, "web01") if r.get("message_id") == mid]
    ev = wait_for(lambda: [x for x in audit_events(relay)[na:] if x.get("event") == "denied"], 3)
    assert ev and user_is(ev[0].get("user"), BOB), ev
    # cmd is still fine for bob on the same connection
    assert run(p, "echo", ["cmd-ok"]) == (b"cmd-ok\n", b"", 0)
    p.transport.close_session()


def test_relay_refuses_credssp_below_min_version(relay, monkeypatch):
    """credssp_min_version = 5: a client speaking CredSSP v4 (no CVE-2018-0886 nonce binding) is refused
    with an authentication error, the session is not established, the relay stays up."""
    import spnego._credssp as cs

    monkeypatch.setattr(cs, "_CREDSSP_VERSION", 4)
    n1 = len(double_records(relay, "web01"))
    p = relay_protocol("web01")
    t0 = time.monotonic()
    with pytest.raises(Exception) as ei:
        p.open_shell()
    assert time.monotonic() - t0 < 10
    e = ei.value
    assert not isinstance(e, (WSManFaultError,)), err_text(e)
    assert http_code(e) in (None, 401), err_text(e)
    assert type(e).__name__ in ("AuthenticationException", "NTStatusException", "InvalidCredentialsError",
                                "SpnegoError", "InvalidTokenError", "BadMechanismError") or http_code(e) == 401, \
        "%s: %s" % (type(e).__name__, e)
    assert not [r for r in double_records(relay, "web01")[n1:] if r.get("event") == "request"]
    monkeypatch.undo()
    p2 = relay_protocol("web01")
    assert run(p2, "echo", ["v6-ok"]) == (b"v6-ok\n", b"", 0)
    p2.transport.close_session()
