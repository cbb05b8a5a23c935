"""Logon places under pressure and the audit under a flood (issue 17, sections 2 and 3).

- A connect/close loop from a source outside `allow_sources`, and from one holding its share of the places while
  they are all taken, adds a few summary lines to the audit (with a `count` that adds up to the metrics), not one
  line per connection; a real logon afterwards is audited.
- With the default limits, 500 idle sockets from 25 addresses do not keep another address's logon out, and 200
  concurrent logons of one user from one address (an automation host's burst) are all served.

- Both at once: while the 500 idle sockets are held, the 200-logon burst from one address and another address's
  logon are all served.

Relays of their own on 127.0.0.210-213; client sources in 127.0.2-6.x (loopback, so the namespace has them)."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import struct
import threading
import time
import typing
import urllib.request

import pytest

from harness import USERS, ExtraRelay
from helpers import ALICE, RawCredSSP, run, wait_for

FLOOD_SECS = 4.0
# What a flood may add to the audit log: a few lines at once per source and reason, then a summary per interval.
MAX_FLOOD_LINES = 40
MAX_FLOOD_BYTES = 64 * 1024


def metrics(host: str) -> typing.Dict[str, float]:
    with urllib.request.urlopen("http://%s:9985/metrics" % host, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def refusals_counted(host: str) -> float:
    """winrm_relay_refusals_before_logon_total, all causes (0 when the relay has no such metric)."""
    return sum(v for k, v in metrics(host).items() if k.startswith("winrm_relay_refusals_before_logon_total"))


def connect_close_loop(source: str, relay: typing.Tuple[str, int], secs: float) -> int:
    """Connect and close at once (RST, so no TIME_WAIT piles up) from `source` for `secs`; returns how many."""
    n = 0
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.bind((source, 0))
        try:
            s.connect(relay)
            n += 1
        except OSError:
            pass
        finally:
            s.close()
    return n


def refusal_lines(path: str, skip: int = 0) -> typing.Tuple[int, int, int]:
    """Lines and bytes of refusals (`denied`, `auth_failed`) in the audit log past its first `skip` lines, and
    how many lines it has in all."""
    with open(path, "rb") as fh:
        lines = fh.read().splitlines(keepends=True)
    refusals = [ln for ln in lines[skip:] if json.loads(ln)["event"] in ("denied", "auth_failed")]
    return len(refusals), sum(len(ln) for ln in refusals), len(lines)


def logon_in_turn(source: str) -> threading.Thread:
    """A logon of alice from `source` on a connection of its own, closed once logged on; started in a thread."""

    def log_on() -> None:
        raw = RawCredSSP("127.0.0.210", 5985, source=source)
        try:
            raw.logon(ALICE)
        except Exception:  # noqa: BLE001 - only the place it holds while it waits matters
            pass
        finally:
            raw.close()

    t = threading.Thread(target=log_on, daemon=True)
    t.start()
    return t


@pytest.fixture
def flooded(relay):
    """A relay that admits 127.0.0.1 and 127.0.3.0/24 only, with places for 4 connections waiting to log on, 2 per
    source under pressure, one session per user, and metrics."""
    extra = ExtraRelay(relay, "127.0.0.210", listen_extra='allow_sources = ["127.0.0.1/32", "127.0.3.0/24"]',
                       tail='[metrics]\nlisten = "127.0.0.210:9985"\n'
                            "[limits]\nmax_sessions = 4\nmax_unauthenticated_per_source = 2\nmax_sessions_per_user = 1\n")
    yield extra
    extra.stop()


def test_a_flood_of_refused_connections_is_summarised_and_counted(flooded):
    addr = ("127.0.0.210", 5985)
    _, _, before = refusal_lines(flooded.audit)

    # Outside allow_sources.
    unlisted = connect_close_loop("127.0.2.1", addr, FLOOD_SECS)

    # Past its share while every place is taken: two sources hold two places each with logons of alice waiting
    # for her one session slot (not idle: nothing to shed), and one of them keeps connecting.
    first = flooded.protocol()
    assert run(first, "echo", ["first"])[0] == b"first\n"
    waiting = [logon_in_turn(src) for src in ("127.0.3.1", "127.0.3.1", "127.0.3.2", "127.0.3.2")]
    try:
        time.sleep(1.5)
        over_cap = connect_close_loop("127.0.3.1", addr, FLOOD_SECS)
    finally:
        first.transport.close_session()
    for t in waiting:
        t.join(30)
    assert unlisted > 100 and over_cap > 100, (unlisted, over_cap)

    # A real logon afterwards is audited.
    p = flooded.protocol()
    assert run(p, "echo", ["after"])[0] == b"after\n"
    p.transport.close_session()
    assert wait_for(lambda: [e for e in flooded.events() if e["event"] == "session_start"], 5)

    # Every refusal is counted, and the summary lines (written once their interval is over) account for each.
    def balanced() -> typing.Optional[typing.Tuple[float, float]]:
        counted = refusals_counted("127.0.0.210")
        lines = sum(e.get("count", 0) for e in flooded.events())
        return (counted, lines) if counted == lines else None

    assert wait_for(balanced, 25, 0.5), (refusals_counted("127.0.0.210"),
                                         sum(e.get("count", 0) for e in flooded.events()))
    lines, size, _ = refusal_lines(flooded.audit, before)
    assert lines <= MAX_FLOOD_LINES, "%d audit lines for %d refused connections" % (lines, unlisted + over_cap)
    assert size <= MAX_FLOOD_BYTES, size
    assert refusals_counted("127.0.0.210") >= unlisted
    print("flood: %d + %d refused connections, %d audit lines, %d bytes" % (unlisted, over_cap, lines, size))
    summaries = [e for e in flooded.events() if e.get("count", 0) > 1]
    assert any(e["source"] == "127.0.2.1" and "allow_sources" in e["reason"] for e in summaries), summaries
    assert any(e["source"] == "127.0.3.1" for e in summaries), summaries


def idle_sockets(relay: typing.Tuple[str, int], sources: int, per_source: int, net: str) -> typing.List[socket.socket]:
    held = []
    for i in range(per_source):
        for a in range(sources):
            s = socket.socket()
            s.bind(("%s.%d" % (net, a + 1), 0))
            s.settimeout(5)
            s.connect(relay)
            held.append(s)
    return held


def timed_logon_and_command(extra: ExtraRelay) -> float:
    start = time.monotonic()
    p = extra.protocol()
    assert run(p, "echo", ["through"])[0] == b"through\n"
    elapsed = time.monotonic() - start
    p.transport.close_session()
    return elapsed


def test_idle_sockets_from_many_addresses_do_not_keep_a_logon_out(relay):
    """Default limits: 20 idle sockets from each of 25 addresses (more than the 300 places), then alice from
    another address logs on and runs a command within a second."""
    extra = ExtraRelay(relay, "127.0.0.211")
    held: typing.List[socket.socket] = []
    try:
        baseline = timed_logon_and_command(extra)
        held = idle_sockets(("127.0.0.211", 5985), 25, 20, "127.0.4")
        time.sleep(2)  # idle, as a hoarder's sockets are
        elapsed = timed_logon_and_command(extra)
        assert elapsed < 1.0, "logon + command took %.2f s under 500 idle sockets (%.2f s without)" % (
            elapsed, baseline)
        print("logon + command: %.2f s under 500 idle sockets, %.2f s without" % (elapsed, baseline))
        shed = [e for e in extra.events() if e["event"] == "denied" and "make room" in e.get("reason", "")]
        assert shed and all(e["source"].startswith("127.0.4.") for e in shed), shed[:3]
    finally:
        for s in held:
            s.close()
        extra.stop()


_source = threading.local()


@pytest.fixture
def bound_sources(monkeypatch):
    """Lets a client thread choose its source address (`_source.address`): pywinrm has no such option."""
    import urllib3.util.connection

    plain = urllib3.util.connection.create_connection

    def create_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, *a, **kw):
        bound = getattr(_source, "address", None)
        return plain(address, timeout, (bound, 0) if bound else source_address, *a, **kw)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)


def burst(extra: ExtraRelay, n: int, source: typing.Optional[str] = None) -> typing.Tuple[typing.List[str], float]:
    """n concurrent CredSSP logons of alice (from `source`), each running a command; their results and the time."""
    start = threading.Barrier(n)

    def one(i: int) -> str:
        import winrm

        _source.address = source
        p = winrm.protocol.Protocol(
            endpoint=extra.url(), transport="credssp", username=ALICE, password=USERS[ALICE],
            server_cert_validation="ignore", message_encryption="always", operation_timeout_sec=20,
            read_timeout_sec=30)
        start.wait(60)
        try:
            out = run(p, "echo", ["burst%d" % i])[0]
            return "ok" if out == b"burst%d\n" % i else "wrong output %r" % out
        except Exception as e:  # noqa: BLE001 - the failure is the result
            return "%s: %s" % (type(e).__name__, str(e)[:200])
        finally:
            p.transport.close_session()

    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, range(n)))
    return results, time.monotonic() - began


def test_a_burst_of_200_logons_from_one_address_is_served(relay):
    """Default limits (max_sessions_per_user = 25): 200 concurrent CredSSP logons of alice from one address,
    each running a command, all succeed."""
    extra = ExtraRelay(relay, "127.0.0.212")
    n = 200
    try:
        results, took = burst(extra, n)
        failed = [r for r in results if r != "ok"]
        assert not failed, "%d of %d failed in %.0f s, e.g. %s%s" % (len(failed), n, took, failed[:3], extra.excerpt())
        print("burst: %d logons + commands in %.1f s" % (n, took))
        starts = [e for e in extra.events() if e["event"] == "session_start"]
        assert len(starts) == n, len(starts)
    finally:
        extra.stop()


def test_idle_hoarders_a_burst_and_another_logon_at_once(relay, bound_sources):
    """Default limits, both at once: 500 idle sockets from 25 addresses are held while 200 logons from one
    address run and alice logs on from another; every logon is served (the burst's address holds its share of
    the places while they are all taken, the rest of it waits for places its own logons release)."""
    extra = ExtraRelay(relay, "127.0.0.213")
    held: typing.List[socket.socket] = []
    try:
        held = idle_sockets(("127.0.0.213", 5985), 25, 20, "127.0.4")
        time.sleep(2)
        outcome: typing.Dict[str, typing.Any] = {}
        crowd = threading.Thread(target=lambda: outcome.update(burst=burst(extra, 200, "127.0.5.1")))
        crowd.start()
        time.sleep(1)
        _source.address = "127.0.6.1"
        try:
            elapsed = timed_logon_and_command(extra)
        finally:
            _source.address = None
        crowd.join(170)
        results, took = outcome["burst"]
        failed = [r for r in results if r != "ok"]
        assert not failed, "%d of 200 failed in %.0f s, e.g. %s%s" % (len(failed), took, failed[:3], extra.excerpt())
        print("at once: alice in %.2f s, the burst in %.1f s, next to 500 idle sockets" % (elapsed, took))
        starts = [e for e in extra.events() if e["event"] == "session_start"]
        assert len(starts) == 201 and sum(e["source"].startswith("127.0.6.1:") for e in starts) == 1, len(starts)
    finally:
        for s in held:
            s.close()
        extra.stop()

