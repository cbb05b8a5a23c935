"""Unreachable / wedged targets, missing target name, unencrypted bodies."""

from __future__ import annotations

import re
import time
import uuid

import pytest
import requests
from requests_credssp import HttpCredSSPAuth
from winrm.exceptions import WinRMOperationTimeoutError, WinRMTransportError, WSManFaultError

from helpers import (ALICE, RELAY_HOST, USERS, double_records, err_text, http_code, relay_log_excerpt, relay_protocol,
                     relay_url)

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
    n = len(double_records(relay, "web01"))
    mid = "uuid:%s" % uuid.uuid4()
    s = requests.Session()
    s.auth = HttpCredSSPAuth(ALICE, USERS[ALICE])
    r = s.post(relay_url("web01"), data=b"", timeout=10)
    assert r.status_code == 200, relay_log_excerpt(relay)
    s.auth = None  # keep the authenticated keep-alive connection, send plaintext
    r = s.post(relay_url("web01"), data=_plain_create(mid),
               headers={"Content-Type": "application/soap+xml;charset=UTF-8"}, timeout=10)
    assert r.status_code in (400, 401, 415, 500), (r.status_code, r.text)
    time.sleep(0.3)
    assert not [x for x in double_records(relay, "web01")[n:] if x.get("message_id") == mid]
    assert not [x for x in double_records(relay, "web01")[n:] if x.get("event") == "request"]
