"""The relay fails closed on what it cannot read, and its refusals tell an attacker nothing (issue 8):
envelopes whose resource or shell it cannot check are refused and never forwarded, an absurd
OperationTimeout is clamped instead of crashing the connection, and every refused logon gets the
same NTSTATUS whatever the cause (unknown user, wrong password, locked out)."""

from __future__ import annotations

import os
import re
import sys
import typing

import pytest
from winrm.exceptions import WinRMTransportError, WSManFaultError

from harness import ExtraRelay
from helpers import ALICE, BOB, RawCredSSP, audit_events, double_records, err_text, relay_protocol, wait_for

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STATUS_LOGON_FAILURE = 0xC000006D
CMD_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
PS_URI = "http://schemas.microsoft.com/powershell/Microsoft.PowerShell"
RESOURCE_URI = '<w:ResourceURI mustUnderstand="true">%s</w:ResourceURI>'


class Captured(Exception):
    pass


def envelope_of(protocol: typing.Any, call: typing.Callable[[], typing.Any]) -> str:
    """The XML pywinrm would send for `call`, without sending it."""
    sent: typing.List[str] = []

    def capture(message: str) -> bytes:
        sent.append(message if isinstance(message, str) else message.decode())
        raise Captured()

    real = protocol.send_message
    protocol.send_message = capture
    try:
        with pytest.raises(Captured):
            call()
    finally:
        protocol.send_message = real
    return sent[0]


def refused_unforwarded(relay: typing.Any, protocol: typing.Any, xml: str, reason: str) -> None:
    """Send `xml` on `protocol`'s session: the relay answers a fault, audits a denial naming `reason`,
    and the target never sees it."""
    before = len(double_records(relay, "web01"))
    n = len(audit_events(relay))
    with pytest.raises((WinRMTransportError, WSManFaultError)) as refused:
        protocol.send_message(xml)
    text = err_text(refused.value)
    assert "AccessDenied" in text or "cannot" in text, text
    denied = wait_for(lambda: [e for e in audit_events(relay)[n:] if e["event"] == "denied"], 3)
    assert denied and reason in denied[0]["reason"], audit_events(relay)[n:]
    assert len(double_records(relay, "web01")) == before, "the refused envelope reached the target"


def test_a_resource_uri_the_relay_cannot_read_is_refused_and_not_forwarded(relay):
    p = relay_protocol("web01")
    create = envelope_of(p, p.open_shell)
    assert create.count(RESOURCE_URI % CMD_URI) == 1, create
    old_namespace = create.replace(
        RESOURCE_URI % CMD_URI,
        '<m:ResourceURI xmlns:m="http://schemas.xmlsoap.org/ws/2005/06/management">%s</m:ResourceURI>' % CMD_URI)
    refused_unforwarded(relay, p, old_namespace, "ResourceURI")
    missing = create.replace(RESOURCE_URI % CMD_URI, "")
    refused_unforwarded(relay, p, missing, "ResourceURI")
    p.transport.close_session()


def test_a_shell_used_as_another_resource_is_refused_and_not_forwarded(relay):
    p = relay_protocol("web01")
    shell = p.open_shell()
    try:
        command = envelope_of(p, lambda: p.run_command(shell, "echo", ["x"]))
        as_powershell = command.replace(RESOURCE_URI % CMD_URI, RESOURCE_URI % PS_URI)
        assert as_powershell != command
        refused_unforwarded(relay, p, as_powershell, "cannot be used as")
        no_selector = command.replace('<w:Selector Name="ShellId">%s</w:Selector>' % shell, "")
        assert no_selector != command
        refused_unforwarded(relay, p, no_selector, "ShellId")
    finally:
        p.close_shell(shell)


# [limits] max_operation_timeout_secs when the config leaves it out (the shared relay's).
MAX_OPERATION_TIMEOUT_SECS = 60


def test_an_absurd_operation_timeout_is_clamped_not_a_crash(relay):
    """The Receive asks for 2^64-1 seconds: the relay answers it (no crash), and the target received an
    OperationTimeout of at most the relay's maximum (its log has the value as it arrived)."""
    from target_double import parse_duration

    p = relay_protocol("web01")
    shell = p.open_shell()
    try:
        command = p.run_command(shell, "echo", ["clamped"])
        receive = envelope_of(p, lambda: p.get_command_output(shell, command))
        assert "<w:OperationTimeout>PT20S</w:OperationTimeout>" in receive, receive
        huge = receive.replace("PT20S", "PT18446744073709551615S")
        message_id = re.search(r"<a:MessageID>([^<]+)</a:MessageID>", huge).group(1)
        answer = p.send_message(huge)
        assert b"clamped" in answer or b"Y2xhbXBlZA" in answer, answer[:300]
    finally:
        p.close_shell(shell)
    at_target = [r for r in double_records(relay, "web01") if r.get("message_id") == message_id]
    assert len(at_target) == 1 and at_target[0].get("action") == "Receive", at_target
    received = at_target[0].get("operation_timeout")
    assert received and 0 < parse_duration(received, 0) <= MAX_OPERATION_TIMEOUT_SECS, \
        "the target received OperationTimeout %r, the relay's maximum is %d s" % (received, MAX_OPERATION_TIMEOUT_SECS)


def _logon_status(relay_host: str, user: str, password: str) -> int:
    raw = RawCredSSP(relay_host, 5985)
    try:
        with pytest.raises(Exception) as refused:
            raw.logon(user, password)
        status = getattr(refused.value, "nt_status", None)
        assert isinstance(status, int), "no NTSTATUS in %r" % refused.value
        return status & 0xFFFFFFFF
    finally:
        raw.close()


def test_every_refused_logon_gets_the_same_ntstatus(relay):
    extra = ExtraRelay(relay, "127.0.0.54", auth_extra="lockout_threshold = 2")
    try:
        unknown = _logon_status("127.0.0.54", "LAB\\nobody", "Whatever-1")
        wrong = _logon_status("127.0.0.54", ALICE, "Wrong-password-1")
        _logon_status("127.0.0.54", BOB, "Wrong-password-1")
        _logon_status("127.0.0.54", BOB, "Wrong-password-2")
        from harness import USERS

        locked = _logon_status("127.0.0.54", BOB, USERS[BOB])  # the right password, but locked out
        assert unknown == wrong == locked == STATUS_LOGON_FAILURE, (hex(unknown), hex(wrong), hex(locked))
        reasons = [e["reason"] for e in extra.events() if e["event"] == "auth_failed"]
        # The detailed cause is for the audit only: there the three differ.
        assert len(reasons) == 5 and len({reasons[0], reasons[1], reasons[4]}) == 3, reasons
        assert "locked out" in reasons[4], reasons
    finally:
        extra.stop()


def _lock_out_and_try(host: str, lock_as: str, spellings: typing.Sequence[str]) -> typing.List[dict]:
    """Five wrong passwords as `lock_as`, then alice's right password under every spelling and as LAB\\alice:
    each must be refused. The audit lines of the right-password attempts."""
    from harness import USERS

    seen = len(audit_events_of(host))
    for n in range(5):
        assert _logon_status(host, lock_as, "Wrong-password-%d" % n) == STATUS_LOGON_FAILURE
    for spelling in list(spellings) + [ALICE]:
        status = _logon_status(host, spelling, USERS[ALICE])
        assert status == STATUS_LOGON_FAILURE, (spelling, hex(status))
    return [e for e in audit_events_of(host)[seen:] if e["event"] == "auth_failed"][5:]


def audit_events_of(host: str) -> typing.List[dict]:
    return _EXTRA[host].events()


_EXTRA: typing.Dict[str, typing.Any] = {}


@pytest.mark.parametrize("host,lock_as,spellings,domain_mode", [
    ("127.0.0.55", ALICE, ["\\LAB\\alice", "alice@LAB", "lab\\ALICE"], False),
    ("127.0.0.58", "\\LAB\\alice", ["\\LAB\\alice", "alice@LAB", "lab\\ALICE"], False),
    ("127.0.0.56", "LAB.TEST\\alice", ["alice@LAB.TEST", "LAB.TEST\\alice", "alice@lab.test"], True),
], ids=["as LAB-alice", "as backslash-LAB-alice", "domain mode"])
def test_a_lockout_holds_whatever_spelling_the_caller_sends(request, relay, host: str, lock_as: str,
                                                             spellings: typing.List[str], domain_mode: bool) -> None:
    """Five wrong passwords lock LAB\\alice out from this address, whether guessed as LAB\\alice or as \\LAB\\alice
    (domain "", user "LAB\\alice"), or in domain mode (with [kerberos], LAB is LAB.TEST) as LAB.TEST\\alice; her right
    password is then refused under every spelling of her name, and no such attempt clears the count: LAB\\alice
    itself stays locked."""
    tail = request.getfixturevalue("realm").kerberos_toml(None) if domain_mode else ""
    extra = ExtraRelay(relay, host, auth_extra="lockout_threshold = 5", tail=tail)
    _EXTRA[host] = extra
    try:
        tried = _lock_out_and_try(host, lock_as, spellings)
        assert len(tried) == 4, tried
        assert all("locked out" in e["reason"] for e in tried), [e["reason"] for e in tried]
        assert not [e for e in extra.events() if e["event"] == "session_start"]
    finally:
        _EXTRA.pop(host, None)
        extra.stop()
