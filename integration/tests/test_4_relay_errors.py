"""Unreachable / wedged targets, missing target name, unencrypted bodies."""

from __future__ import annotations

import re
import time
import uuid

import pytest
import requests
from winrm.exceptions import WinRMOperationTimeoutError, WinRMTransportError, WSManFaultError

from helpers import (ALICE, RELAY_HOST, RawCredSSP, audit_events, double_records, err_text, http_code,
                     relay_log_excerpt, relay_protocol, relay_url, user_is, wait_for)

import harness

CLIENT_ERRORS = (WSManFaultError, WinRMTransportError, WinRMOperationTimeoutError)


def test_relay_target_down(relay):
    p = relay_protocol("down")
    t0 = time.monotonic()
    with pytest.raises(CLIENT_ERRORS) as ei:
        p.open_shell()
    elapsed = time.monotonic() - t0
    text = err_text(ei.value)
    assert elapsed < 8, "took %.1fs" % elapsed
    assert "down" in text or "127.0.0.23" in text, text + relay_log_excerpt(relay)
    assert http_code(ei.value) in (500, 502, 503, 504), text


def test_relay_target_hangs(relay):
    p = relay_protocol("hang", read_timeout_sec=40, operation_timeout_sec=30)
    t0 = time.monotonic()
    with pytest.raises(CLIENT_ERRORS) as ei:
        p.open_shell()
    elapsed = time.monotonic() - t0
    text = err_text(ei.value)
    assert elapsed < harness.TIMEOUT_SECS + 5, "took %.1fs" % elapsed
    assert isinstance(ei.value, WinRMOperationTimeoutError) or re.search(
        r"time(d)?[ -]?out|did not (answer|respond)|no (answer|response) within|within \d+ ?s", text, re.I), text
    assert "hang" in text or "127.0.0.24" in text or isinstance(ei.value, WinRMOperationTimeoutError), text


def test_relay_no_target_in_path(relay):
    p = relay_protocol(None, read_timeout_sec=15, operation_timeout_sec=10)
    t0 = time.monotonic()
    with pytest.raises(Exception) as ei:
        p.open_shell()
    assert time.monotonic() - t0 < 10
    text = err_text(ei.value)
    code = http_code(ei.value)
    assert code is not None and 400 <= code < 600, text
    assert re.search(r"/wsman/<?target|target", text, re.I), text

    # A raw unauthenticated POST: an answer (401 or 4xx), not a hang.
    r = requests.post(relay_url(None), data=b"<x/>", headers={"Content-Type": "application/soap+xml;charset=UTF-8"},
                      timeout=10)
    assert 400 <= r.status_code < 500


def _plain_create(mid: str) -> bytes:
    return (
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
        'xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell"><s:Header>'
        "<a:To>%s</a:To>"
        "<a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/Create</a:Action>"
        "<a:MessageID>%s</a:MessageID>"
        "<w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI>"
        "</s:Header><s:Body><rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams>"
        "<rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell></s:Body></s:Envelope>"
        % (relay_url("web01"), mid)
    ).encode()


def test_relay_unauthenticated_body_not_forwarded(relay):
    n = len(double_records(relay, "web01"))
    mid = "uuid:%s" % uuid.uuid4()
    r = requests.post(relay_url("web01"), data=_plain_create(mid),
                      headers={"Content-Type": "application/soap+xml;charset=UTF-8"}, timeout=10)
    assert r.status_code == 401, (r.status_code, r.text)
    assert "CredSSP" in r.headers.get("WWW-Authenticate", "")
    time.sleep(0.3)
    assert double_records(relay, "web01")[n:] == [], "the target saw something"


def test_relay_unencrypted_body_after_auth_refused(relay):
    """A plaintext envelope on an authenticated connection (one socket: logon, then the plain POST) is refused
    by the relay as unencrypted, audited for that session, and never forwarded. (A 401 alone proves nothing:
    a fresh, unauthenticated connection gets one too.)"""
    n = len(double_records(relay, "web01"))
    mid = "uuid:%s" % uuid.uuid4()
    raw = RawCredSSP(RELAY_HOST, harness.RELAY_PORT)
    try:
        raw.logon(ALICE)
        audited = len(audit_events(relay))
        status, _headers, body = raw._post(_plain_create(mid), {"Content-Type": "application/soap+xml;charset=UTF-8"})
    finally:
        raw.close()
    assert status == 401, (status, body[:300])
    denied = wait_for(lambda: [e for e in audit_events(relay)[audited:] if e.get("event") == "denied"], 5)
    assert denied and denied[0].get("reason", "").startswith("unencrypted request body refused"), \
        audit_events(relay)[audited:] + [relay_log_excerpt(relay)]
    assert user_is(denied[0].get("user"), ALICE) and denied[0].get("session"), denied[0]
    started = [e for e in audit_events(relay) if e.get("event") == "session_start"
               and e.get("session") == denied[0]["session"]]
    assert started and user_is(started[0].get("user"), ALICE), "the refusal is not of the logged-on session"
    assert not [x for x in double_records(relay, "web01")[n:] if x.get("message_id") == mid]
    assert not [x for x in double_records(relay, "web01")[n:] if x.get("event") == "request"]
