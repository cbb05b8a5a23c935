"""The target double against real clients, no relay: proves the double is a faithful target."""

from __future__ import annotations

import uuid

import pytest
import requests
import winrm
from requests_ntlm import HttpNtlmAuth

from helpers import ALICE, USERS, double_records

WEB01 = "http://127.0.0.21:5985/wsman"


def direct_protocol(**kw):
    return winrm.protocol.Protocol(
        endpoint=WEB01,
        transport="ntlm",
        username=ALICE,
        password=USERS[ALICE],
        message_encryption="always",
        **kw,
    )


def test_direct_pywinrm_echo(doubles):
    p = direct_protocol()
    sid = p.open_shell()
    cid = p.run_command(sid, "echo", ["hi"])
    out, err, rc = p.get_command_output(sid, cid)
    p.cleanup_command(sid, cid)
    p.close_shell(sid)
    assert (out, err, rc) == (b"hi\n", b"", 0)
    recs = [r for r in double_records(doubles, "web01") if r.get("event") == "request" and r.get("shell_id") == sid]
    assert {r["action"] for r in recs} >= {"Create", "Command", "Receive", "Signal", "Delete"}
    assert all(r["user"] == "LAB\\alice" and r["auth"] == "negotiate" for r in recs)


def test_direct_stdin_exit_code_and_timeout(doubles):
    p = direct_protocol(operation_timeout_sec=1, read_timeout_sec=5)
    sid = p.open_shell()
    cid = p.run_command(sid, "cat")
    p.send_command_input(sid, cid, b"line1\nline2\n", end=True)
    assert p.get_command_output(sid, cid) == (b"line1\nline2\n", b"", 0)
    cid = p.run_command(sid, "sh -c 'echo oops >&2; exit 7'")
    assert p.get_command_output(sid, cid) == (b"", b"oops\n", 7)
    # Nothing within OperationTimeout -> w:TimedOut fault, pywinrm polls again.
    cid = p.run_command(sid, "sleep 1.5; echo late")
    assert p.get_command_output(sid, cid) == (b"late\n", b"", 0)
    p.close_shell(sid)
    recs = [r for r in double_records(doubles, "web01") if r.get("shell_id") == sid]
    assert any(r.get("fault") == "w:TimedOut" and r["status"] == 500 for r in recs)


def test_direct_pypsrp_negotiate_spnego(doubles):
    """pypsrp uses SPNEGO-wrapped NTLM (like the relay) with the final mechListMIC token."""
    from pypsrp.client import Client

    c = Client("127.0.0.21", port=5985, path="wsman", auth="negotiate", ssl=False, username=ALICE,
               password=USERS[ALICE], negotiate_service="HTTP")
    out, err, rc = c.execute_cmd("echo psrp-direct; exit 3")
    assert (out, err, rc) == ("psrp-direct\n", "", 3)


def test_direct_wrong_password(doubles):
    p = winrm.protocol.Protocol(endpoint=WEB01, transport="ntlm", username=ALICE, password="not-the-password",
                                message_encryption="always")
    with pytest.raises(winrm.exceptions.InvalidCredentialsError):
        p.open_shell()
    assert any(r.get("event") == "auth_failed" for r in double_records(doubles, "web01"))


def test_direct_unencrypted_refused(doubles):
    """Like AllowUnencrypted=false: a plain SOAP body is never processed, before or after auth."""
    mid = "uuid:%s" % uuid.uuid4()
    soap = (
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><s:Header>'
        "<a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/Create</a:Action>"
        "<a:MessageID>%s</a:MessageID>"
        "<w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI>"
        "</s:Header><s:Body/></s:Envelope>" % mid
    )
    hdrs = {"Content-Type": "application/soap+xml;charset=UTF-8"}
    r = requests.post(WEB01, data=soap, headers=hdrs, timeout=10)
    assert r.status_code == 401 and r.headers.get("WWW-Authenticate") == "Negotiate"

    s = requests.Session()
    s.auth = HttpNtlmAuth(ALICE, USERS[ALICE])
    r = s.post(WEB01, data=b"", timeout=10)
    assert r.status_code == 200
    s.auth = None  # same keep-alive connection, now authenticated
    r = s.post(WEB01, data=soap, headers=hdrs, timeout=10)
    assert r.status_code in (401, 500)
    assert not any(x.get("message_id") == mid for x in double_records(doubles, "web01"))
