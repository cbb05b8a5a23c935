"""Target patterns of the allow rules against host names a caller types (issue 8): a name glob must not turn
the relay into a pivot to unlisted hosts, and CIDR rules judge the address the relay connects to.

A relay of its own at 127.0.0.40 with the shared config plus two rules: alice may reach ``local*`` (a glob,
so configured aliases only) and bob the loopback networks. A target double listens on 127.0.0.1:15985, which
the caller names as ``localhost:15985``: an unlisted host that ``local*`` would match as text and that
resolves (via /etc/hosts) into bob's networks.
"""

from __future__ import annotations

import typing

import pytest
import winrm
from winrm.exceptions import WinRMTransportError, WSManFaultError

import harness
from helpers import ALICE, BOB, USERS, double_records, err_text, run, wait_for

HOST = "127.0.0.40"
PIVOT = ("127.0.0.1", 15985)
PIVOT_NAME = "localhost:%d" % PIVOT[1]

RULES = """
[[allow]]
users = ['LAB\\alice']
targets = ["local*"]
shells = ["cmd"]

[[allow]]
users = ['LAB\\bob']
targets = ["127.0.0.0/8", "::1/128"]
shells = ["cmd"]
"""


@pytest.fixture(scope="module")
def pivot(relay: harness.Harness) -> typing.Iterator[harness.ExtraRelay]:
    """The double behind localhost:15985 and the relay at 127.0.0.40."""
    proc = relay.start_double("pivot", PIVOT[0], PIVOT[1])
    own = harness.ExtraRelay(relay, HOST, tail=RULES)
    yield own
    own.stop()
    relay.procs.pop("double-pivot", None)
    proc.terminate()
    proc.wait(timeout=10)


def protocol(own: harness.ExtraRelay, user: str) -> winrm.protocol.Protocol:
    return winrm.protocol.Protocol(
        endpoint=own.url(PIVOT_NAME), transport="credssp", username=user, password=USERS[user],
        server_cert_validation="ignore", message_encryption="always", operation_timeout_sec=20, read_timeout_sec=30,
    )


def test_policy_name_glob_does_not_reach_an_unlisted_host(relay, pivot):
    """`local*` matches the text "localhost", but globs only name [[target]] aliases: alice is refused with
    AccessDenied before the relay connects anywhere, and the double sees nothing at all."""
    before = len(pivot.events())
    with pytest.raises((WSManFaultError, WinRMTransportError)) as ei:
        protocol(pivot, ALICE).open_shell()
    text = err_text(ei.value)
    assert isinstance(ei.value, WSManFaultError) and (ei.value.fault_subcode or "").endswith("AccessDenied"), \
        text + pivot.excerpt()
    assert PIVOT_NAME in text and "not a [[target]]" in text, text
    assert double_records(relay, "pivot") == [], "the refused request reached the double"
    denied = wait_for(lambda: [e for e in pivot.events()[before:] if e.get("event") == "denied"], 3)
    assert denied and denied[0].get("user", "").lower() == ALICE.lower() and denied[0].get("target") == PIVOT_NAME, \
        denied


def test_policy_cidr_rule_admits_the_resolved_address(relay, pivot):
    """bob's rule names networks, not names: localhost resolves into them, so his command runs on the double
    (which also shows the double is there for the refusal above to be the relay's)."""
    n = len(double_records(relay, "pivot"))
    try:
        out = run(protocol(pivot, BOB), "echo", ["via-resolved-address"])
    except Exception as e:  # noqa: BLE001
        pytest.fail("bob -> %s failed: %s%s" % (PIVOT_NAME, err_text(e), pivot.excerpt()))
    assert out == (b"via-resolved-address\n", b"", 0)
    reqs = [r for r in double_records(relay, "pivot")[n:] if r.get("event") == "request"]
    assert reqs and all(r.get("user", "").lower() == BOB.lower() for r in reqs), reqs[:3]
    assert not [r for r in double_records(relay, "pivot") if r.get("user", "").lower() == ALICE.lower()]
