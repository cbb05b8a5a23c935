"""Issue 4: every transport a real fleet uses (HTTPS in and out, Basic over TLS, CredSSP onward).

Two halves:

* ``test_direct_*``: the target doubles' new modes against real clients, no relay
  (pywinrm ntlm over HTTPS with channel binding -> web03/web07 with CbtHardeningLevel=Strict;
  pywinrm basic -> web04; pywinrm and pypsrp credssp -> web05; web06's self-signed certificate).
  They prove the doubles independently of the relay.
* ``test_relay_*``: the issue-4 matrix through a relay instance of its own at 127.0.0.32
  (HTTP :5985 and HTTPS :5986, config from ``harness.transports_config_toml``). The shared
  relay keeps the old config, so the rest of the suite runs whatever this relay supports.
  A relay that refuses the config or lacks a feature makes these tests FAIL (never skip),
  with the relay's log tail in the message.

Doubles: web03 127.0.0.25:5986 HTTPS+Negotiate+strict CBT (test-CA cert, SHA-256),
web04 127.0.0.26:5986 HTTPS+Basic, web05 127.0.0.27:5985 HTTP+CredSSP, web06 127.0.0.28:5986
HTTPS with a self-signed certificate (no ca_file), web07 127.0.0.29:5986 like web03 but with a
SHA-384-signed certificate (the binding hash must follow the signature hash), web08 127.0.0.36:5986
HTTPS+CredSSP (test-CA cert), web06-pinned 127.0.0.37:5986 a second web06 (same self-signed
certificate) that the relay pins with ``tls_fingerprint`` (the relay refuses two targets at one
host:port, so it cannot share web06's address), web09 127.0.0.38:5986 serving web03's test-CA
certificate while the relay pins web06's, web10 127.0.0.39:5986 with a self-signed CA:TRUE
certificate (as ``openssl req -x509`` makes it) that the relay lists as its ``ca_file``.
"""

from __future__ import annotations

import base64
import os
import re
import ssl
import subprocess
import typing
import uuid

import pytest
import requests
import winrm
from winrm.exceptions import InvalidCredentialsError, WinRMError, WinRMTransportError, WSManFaultError

import harness
from harness import TRANSPORT_DOUBLES, TRANSPORT_RELAY_HOST
from helpers import ALICE, BOB, USERS, double_records, err_text, run, wait_for

HTTP_PORT = harness.TRANSPORT_RELAY_HTTP_PORT
HTTPS_PORT = harness.TRANSPORT_RELAY_HTTPS_PORT
BIG_LINES = 100_000


def url_of(name: str) -> str:
    return TRANSPORT_DOUBLES[name].url


def expected_seq(n: int) -> bytes:
    return b"".join(b"%d\n" % i for i in range(1, n + 1))


def new_records(h: harness.Harness, name: str, since: int) -> typing.List[dict]:
    return double_records(h, name)[since:]


def double_says(h: harness.Harness, name: str, since: int) -> str:
    """What a double logged about authentication since `since` (for failure messages)."""
    import json

    recs = [r for r in new_records(h, name, since) if r["event"] not in ("request", "identify")]
    return "\n--- %s since the test began ---\n%s" % (name, "\n".join(json.dumps(r) for r in recs[-6:]) or "(nothing)")


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def tdoubles(h: harness.Harness) -> typing.Iterator[harness.Harness]:
    """web03..web08 (started here unless RELAY_IT_TRANSPORTS=1 already started them with the others).
    Needs only the work directory: the direct tests run without web01/web02 or the relay."""
    started = [n for n in TRANSPORT_DOUBLES if "double-" + n not in h.procs]
    h.start_transport_doubles(started)
    yield h
    for n in started:
        proc = h.procs.pop("double-" + n, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


class TransportRelay:
    """A relay instance with the issue-4 config at 127.0.0.32 (HTTP :5985, HTTPS :5986).

    Start-up failure is recorded, not raised: each relay test then fails with the reason."""

    def __init__(self, h: harness.Harness) -> None:
        self.h = h
        self.dir = os.path.join(h.workdir, "relay-" + TRANSPORT_RELAY_HOST)
        os.makedirs(self.dir, exist_ok=True)
        self.audit = os.path.join(self.dir, "audit.jsonl")
        self.log = os.path.join(self.dir, "relay.log")
        self.config = os.path.join(self.dir, "relay.toml")
        with open(self.config, "w") as fh:
            fh.write(harness.transports_config_toml(h.workdir, self.dir))
        self.error: typing.Optional[str] = None
        self.proc: typing.Optional[subprocess.Popen] = None
        self.out = open(self.log, "ab")
        for port in (HTTP_PORT, HTTPS_PORT):
            harness.ensure_port_free(TRANSPORT_RELAY_HOST, port)
        self.proc = subprocess.Popen(
            [h.relay_bin, "serve", "--config", self.config],
            stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=harness.scrubbed_env({"RUST_LOG": "debug", "RUST_BACKTRACE": "1"}), cwd=self.dir,
        )
        try:
            harness.wait_for_port(TRANSPORT_RELAY_HOST, HTTP_PORT, 30, self.proc)
            harness.wait_for_port(TRANSPORT_RELAY_HOST, HTTPS_PORT, 5, self.proc)
        except Exception as e:  # noqa: BLE001
            self.error = "relay with the issue-4 config did not come up: %s" % e

    def require(self) -> None:
        """Fail (not skip) the calling test when this relay is not serving."""
        if self.error:
            pytest.fail("%s\n--- %s (tail) ---\n%s" % (self.error, self.log, harness.tail(self.log, 25)), pytrace=False)
        if self.proc is None or self.proc.poll() is not None:
            pytest.fail("transport relay exited (status %s)\n%s" % (self.proc and self.proc.returncode,
                                                                   harness.tail(self.log, 40)), pytrace=False)

    def excerpt(self, n: int = 30) -> str:
        return "\n--- %s (tail) ---\n%s" % (self.log, harness.tail(self.log, n))

    def events(self) -> typing.List[dict]:
        return harness.read_jsonl(self.audit)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.out.close()


@pytest.fixture(scope="module")
def relay_transports(relay: harness.Harness, tdoubles: harness.Harness) -> typing.Iterator[TransportRelay]:
    # `relay` first: it created the users file and relay.crt/relay.key this instance shares.
    tr = TransportRelay(tdoubles)
    yield tr
    tr.stop()


@pytest.fixture
def rt(relay_transports: TransportRelay) -> typing.Iterator[TransportRelay]:
    relay_transports.require()
    yield relay_transports
    if relay_transports.proc is not None and relay_transports.proc.poll() is not None:
        pytest.fail("transport relay died during this test" + relay_transports.excerpt(40))


def relay_proto(target: str, transport: str = "credssp", https: bool = False, user: str = ALICE,
                password: typing.Optional[str] = None, **kw: typing.Any) -> winrm.protocol.Protocol:
    scheme, port = ("https", HTTPS_PORT) if https else ("http", HTTP_PORT)
    kw.setdefault("operation_timeout_sec", 20)
    kw.setdefault("read_timeout_sec", 30)
    if transport == "credssp" and not https:
        kw.setdefault("message_encryption", "always")
    return winrm.protocol.Protocol(
        endpoint="%s://%s:%d/wsman/%s" % (scheme, TRANSPORT_RELAY_HOST, port, target), transport=transport,
        username=user, password=USERS[user] if password is None else password, server_cert_validation="ignore", **kw,
    )


def direct_proto(name: str, transport: str, password: typing.Optional[str] = None, user: str = ALICE,
                 **kw: typing.Any) -> winrm.protocol.Protocol:
    kw.setdefault("operation_timeout_sec", 20)
    kw.setdefault("read_timeout_sec", 30)
    return winrm.protocol.Protocol(endpoint=url_of(name), transport=transport, username=user,
                                   password=USERS[user] if password is None else password, **kw)


# ---------------------------------------------------------------------------
# direct: the doubles against real clients


def _cert_der(h: harness.Harness, name: str) -> bytes:
    with open(h.server_cert(name)[0]) as fh:
        return ssl.PEM_cert_to_DER_cert(fh.read())


def _raw_ntlm_over_https(h: harness.Harness, name: str, cbt: str, monkeypatch: pytest.MonkeyPatch) -> requests.Response:
    """Authenticate with pyspnego's NTLM initiator (raw NTLM under the Negotiate scheme) over HTTPS,
    choosing the channel binding: right / none / wrong / zero (an all-zero MsvAvChannelBindings)."""
    import spnego
    import spnego._ntlm
    from spnego.channel_bindings import GssChannelBindings

    from target_double import tls_server_end_point  # the double's own tls-server-end-point helper

    app_data = b"tls-server-end-point:" + tls_server_end_point(_cert_der(h, name))
    cb = {
        "right": GssChannelBindings(application_data=app_data),
        "zero": GssChannelBindings(application_data=app_data),
        "wrong": GssChannelBindings(application_data=b"tls-server-end-point:" + b"\x5a" * 32),
        "none": None,
    }[cbt]
    ctx = spnego.client(ALICE, USERS[ALICE], hostname=name, service="http", protocol="ntlm", channel_bindings=cb)
    s = requests.Session()  # verify= per request: a session-level verify loses to REQUESTS_CA_BUNDLE
    r = s.post(url_of(name), data=b"", timeout=10, verify=h.ca_file,
               headers={"Authorization": "Negotiate " + base64.b64encode(ctx.step() or b"").decode()})
    assert r.status_code == 401, r.status_code
    challenge = re.search(r"Negotiate ([A-Za-z0-9+/=]+)", r.headers.get("WWW-Authenticate", ""))
    assert challenge, r.headers
    if cbt == "zero":  # the initiator hashes the bindings with this md5: make it emit sixteen zero bytes
        monkeypatch.setattr(spnego._ntlm, "md5", lambda data: b"\x00" * 16)
    auth = ctx.step(base64.b64decode(challenge.group(1)))
    monkeypatch.undo()
    r = s.post(url_of(name), data=b"", timeout=10, verify=h.ca_file,
               headers={"Authorization": "Negotiate " + base64.b64encode(auth or b"").decode()})
    r.close()
    s.close()
    return r


def test_direct_https_ntlm_with_cbt_strict(tdoubles):
    """pywinrm ntlm over HTTPS sends the tls-server-end-point binding; web03 verifies it. Plain SOAP bodies
    over HTTPS are processed (and encrypted ones still are)."""
    n = len(double_records(tdoubles, "web03"))
    p = direct_proto("web03", "ntlm", ca_trust_path=tdoubles.ca_file)  # message_encryption auto: none on HTTPS
    assert run(p, "echo", ["web03-direct"]) == (b"web03-direct\n", b"", 0)
    p = direct_proto("web03", "ntlm", ca_trust_path=tdoubles.ca_file, message_encryption="always")
    assert run(p, "echo", ["web03-sealed"]) == (b"web03-sealed\n", b"", 0)
    recs = [r for r in new_records(tdoubles, "web03", n) if r["event"] == "request"]
    assert recs and all(r["user"] == ALICE and r["auth"] == "negotiate" and r["tls"] is True
                        and r["cbt"] == "verified" for r in recs), recs
    assert {r["encrypted"] for r in recs} == {False, True}
    oks = [r for r in new_records(tdoubles, "web03", n) if r["event"] == "auth_ok"]
    assert len(oks) == 2 and all(r["cbt"] == "verified" for r in oks)


def test_direct_cbt_strict_refuses_missing_zero_or_wrong_bindings(tdoubles, monkeypatch):
    # pywinrm with send_cbt=False: no MsvAvChannelBindings at all.
    n = len(double_records(tdoubles, "web03"))
    with pytest.raises(InvalidCredentialsError):
        run(direct_proto("web03", "ntlm", ca_trust_path=tdoubles.ca_file, send_cbt=False), "echo", ["nope"])
    fails = [r for r in new_records(tdoubles, "web03", n) if r["event"] == "auth_failed"]
    assert fails and "channel binding absent" in fails[-1]["reason"] and fails[-1]["cbt"] == "absent", fails
    # pyspnego initiator, binding chosen by hand.
    assert _raw_ntlm_over_https(tdoubles, "web03", "right", monkeypatch).status_code == 200
    assert _raw_ntlm_over_https(tdoubles, "web03", "none", monkeypatch).status_code == 401
    assert _raw_ntlm_over_https(tdoubles, "web03", "wrong", monkeypatch).status_code == 401
    # pyspnego's acceptor alone treats an all-zero binding as "no binding, accept"; Strict must not.
    assert _raw_ntlm_over_https(tdoubles, "web03", "zero", monkeypatch).status_code == 401
    statuses = [r.get("cbt") for r in new_records(tdoubles, "web03", n) if r["event"] in ("auth_ok", "auth_failed")]
    assert statuses == ["absent", "verified", "absent", "mismatch", "zero"], statuses
    assert not [r for r in new_records(tdoubles, "web03", n) if r["event"] == "request"]


def test_direct_pyspnego_acceptor_itself_checks_bindings(tdoubles, monkeypatch):
    """The second line of defence: pyspnego's NTLM acceptor, given the bindings, refuses a client without them."""
    import spnego
    from spnego.channel_bindings import GssChannelBindings
    from spnego.exceptions import BadBindingsError

    monkeypatch.setenv("NTLM_USER_FILE", tdoubles.ntlm_user_file)
    cb = GssChannelBindings(application_data=b"tls-server-end-point:" + b"\x11" * 32)

    def attempt(client_cb: typing.Optional[GssChannelBindings]) -> bool:
        c = spnego.client(ALICE, USERS[ALICE], protocol="ntlm", channel_bindings=client_cb)
        s = spnego.server(protocol="negotiate", channel_bindings=cb)
        tok = c.step()
        while not s.complete:
            tok = s.step(tok)
            if not s.complete:
                tok = c.step(tok)
        return True

    assert attempt(cb)
    with pytest.raises(BadBindingsError):
        attempt(None)


def test_direct_cbt_hash_follows_certificate_signature(tdoubles):
    """web07's certificate is signed with SHA-384, so tls-server-end-point is SHA-384;
    requests-ntlm does the same, and the double verifies it."""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(_cert_der(tdoubles, "web07"))
    assert cert.signature_hash_algorithm.name == "sha384"
    n = len(double_records(tdoubles, "web07"))
    assert run(direct_proto("web07", "ntlm", ca_trust_path=tdoubles.ca_file), "echo", ["web07"])[0] == b"web07\n"
    recs = [r for r in new_records(tdoubles, "web07", n) if r["event"] == "request"]
    assert recs and all(r["cbt"] == "verified" for r in recs)


def test_direct_basic_over_https(tdoubles):
    n = len(double_records(tdoubles, "web04"))
    r = requests.post(url_of("web04"), data=b"", verify=tdoubles.ca_file, timeout=10)
    assert r.status_code == 401 and r.headers.get("WWW-Authenticate") == 'Basic realm="WSMAN"'
    assert run(direct_proto("web04", "basic", ca_trust_path=tdoubles.ca_file), "echo", ["basic"])[0] == b"basic\n"
    # The user may be given without the domain.
    p = winrm.protocol.Protocol(endpoint=url_of("web04"), transport="basic", username="alice",
                                password=USERS[ALICE], ca_trust_path=tdoubles.ca_file)
    assert run(p, "echo", ["bare"])[0] == b"bare\n"
    with pytest.raises(InvalidCredentialsError):
        run(direct_proto("web04", "basic", password="Wrong-Basic-Pass-1", ca_trust_path=tdoubles.ca_file), "echo")
    recs = new_records(tdoubles, "web04", n)
    reqs = [r for r in recs if r["event"] == "request"]
    assert reqs and all(r["user"] == ALICE and r["auth"] == "basic" and r["tls"] is True for r in reqs)
    fails = [r for r in recs if r["event"] == "auth_failed"]
    assert fails and fails[-1]["auth"] == "basic" and fails[-1]["claimed_user"] == ALICE


def test_direct_credssp_over_http(tdoubles):
    """pywinrm credssp to web05: CredSSP session encryption both ways, 16 KiB chunking both ways, and the
    double proves it received the delegated password (compares, logs only true/false)."""
    n = len(double_records(tdoubles, "web05"))
    p = direct_proto("web05", "credssp", message_encryption="always")
    sid = p.open_shell()
    stdin = os.urandom(30_000).hex().encode()  # 60 kB of stdin: a Send body split into 16 KiB chunks
    cid = p.run_command(sid, "cat")
    p.send_command_input(sid, cid, stdin, end=True)
    assert p.get_command_output(sid, cid) == (stdin, b"", 0)
    cid = p.run_command(sid, "seq 1 20000")  # 64 KiB Receives: chunked responses
    assert p.get_command_output(sid, cid) == (expected_seq(20000), b"", 0)
    p.close_shell(sid)
    recs = new_records(tdoubles, "web05", n)
    ok = [r for r in recs if r["event"] == "auth_ok"]
    assert ok and ok[0]["auth"] == "credssp" and ok[0]["tls"] is False
    assert ok[0]["delegated_password_ok"] is True and ok[0]["delegated_user"] == ALICE and ok[0]["user"] == ALICE
    reqs = [r for r in recs if r["event"] == "request"]
    assert all(r["encrypted"] and r["auth"] == "credssp" and r["delegated_password_ok"] is True for r in reqs)
    assert max(r.get("enc_parts", 1) for r in reqs) >= 4  # the 60 kB Send
    with pytest.raises(Exception) as ei:
        run(direct_proto("web05", "credssp", password="Wrong-Credssp-Pass-2", message_encryption="always"), "echo")
    assert "0x8009030c" in str(ei.value).lower() or "auth" in type(ei.value).__name__.lower(), err_text(ei.value)
    # After CredSSP over plain HTTP an unencrypted body is refused and never processed (requests-credssp,
    # which sent the body with its last leg, then complains that the 401 has no token).
    with pytest.raises(Exception):
        direct_proto("web05", "credssp", message_encryption="never").open_shell()
    assert any(r["event"] == "rejected" and r["reason"] == "unencrypted body" for r in new_records(tdoubles, "web05", n))


def test_direct_pypsrp_credssp(tdoubles):
    from pypsrp.client import Client

    c = Client("127.0.0.27", port=5985, path="wsman", auth="credssp", ssl=False, username=ALICE,
               password=USERS[ALICE])
    assert c.execute_cmd("echo pypsrp-credssp; exit 4") == ("pypsrp-credssp\n", "", 4)


def test_direct_credssp_over_https_and_offer_order(tdoubles):
    """A double offering Negotiate, Basic and CredSSP over HTTPS: three WWW-Authenticate lines in order;
    pywinrm credssp over HTTPS sends plain bodies (no CredSSP session encryption) and is served."""
    h = tdoubles
    cert, key = harness.make_server_cert(h.workdir, "multi", "127.0.0.33", harness.make_test_ca(h.workdir))
    proc = h.start_double("multi", "127.0.0.33", 5986,
                          extra_args=["--auth", "negotiate,basic,credssp", "--tls", "%s,%s" % (cert, key)])
    try:
        url = "https://127.0.0.33:5986/wsman"
        r = requests.post(url, data=b"", verify=h.ca_file, timeout=10)
        assert r.status_code == 401
        assert r.raw.headers.getlist("WWW-Authenticate") == ["Negotiate", 'Basic realm="WSMAN"', "CredSSP"]
        p = winrm.protocol.Protocol(endpoint=url, transport="credssp", username=ALICE, password=USERS[ALICE],
                                    ca_trust_path=h.ca_file)
        assert run(p, "echo", ["credssp-https"])[0] == b"credssp-https\n"
        recs = double_records(h, "multi")
        reqs = [x for x in recs if x["event"] == "request"]
        assert reqs and all(x["auth"] == "credssp" and x["tls"] is True and x["encrypted"] is False for x in reqs)
        assert [x for x in recs if x["event"] == "auth_ok"][0]["delegated_password_ok"] is True
    finally:
        h.procs.pop("double-multi", None)
        proc.terminate()
        proc.wait(timeout=10)


def test_direct_self_signed_target_is_untrusted(tdoubles):
    """web06's certificate is not from the test CA: a verifying client fails the handshake (and the double
    logs it); with verification off it is a normal Negotiate target."""
    n = len(double_records(tdoubles, "web06"))
    with pytest.raises(Exception) as ei:
        requests.post(url_of("web06"), data=b"", verify=tdoubles.ca_file, timeout=10)
    assert "CERTIFICATE_VERIFY_FAILED" in str(ei.value)
    failed = wait_for(lambda: [r for r in new_records(tdoubles, "web06", n) if r["event"] == "tls_handshake_failed"], 3)
    assert failed and "unknown ca" in failed[0]["reason"].lower(), failed
    p = direct_proto("web06", "ntlm", server_cert_validation="ignore")
    assert run(p, "echo", ["web06"])[0] == b"web06\n"


# ---------------------------------------------------------------------------
# through the relay (127.0.0.32): the issue-4 matrix


def _requests_for(h: harness.Harness, name: str, since: int, shell_id: typing.Optional[str] = None) -> typing.List[dict]:
    return [r for r in new_records(h, name, since) if r["event"] == "request"
            and (shell_id is None or r.get("shell_id") == shell_id)]


def test_relay_credssp_https_in_negotiate_http_out(rt, tdoubles):
    """CredSSP over the relay's HTTPS listener (plain bodies inside TLS, like Windows), Negotiate/HTTP to
    web01: 100k lines byte-exact, and web01 sees the caller."""
    n = len(double_records(tdoubles, "web01"))
    p = relay_proto("web01", https=True)
    # pywinrm (message_encryption auto) sends no empty priming POST over HTTPS: requests-credssp replays the
    # SOAP request on every CredSSP leg, so the last leg carries the first real body and must be answered.
    legs = _record_exchanges(p)
    try:
        out = run(p, "seq 1 %d" % BIG_LINES)
    except Exception as e:  # noqa: BLE001
        pytest.fail("CredSSP/HTTPS -> web01 failed: %s\nexchanges (Authorization scheme, request body bytes -> "
                    "status, response body bytes): %s%s" % (err_text(e), legs[:8], rt.excerpt()))
    assert out[2] == 0 and out[1] == b""
    assert out[0] == expected_seq(BIG_LINES), "output differs (%d bytes vs %d)" % (len(out[0]), len(expected_seq(BIG_LINES)))
    reqs = _requests_for(tdoubles, "web01", n)
    assert reqs and all(r["user"] == ALICE and r["auth"] == "negotiate" and r["encrypted"] for r in reqs), reqs[:3]


def test_relay_credssp_https_accepts_sealed_bodies_too(rt, tdoubles):
    """Windows accepts CredSSP-encrypted bodies on HTTPS as well (pywinrm message_encryption='always')."""
    p = relay_proto("web01", https=True, message_encryption="always")
    try:
        assert run(p, "echo", ["sealed-in-tls"]) == (b"sealed-in-tls\n", b"", 0)
    except (WinRMError, WinRMTransportError, WSManFaultError, requests.RequestException) as e:
        pytest.fail("CredSSP/HTTPS with session encryption refused: %s%s" % (err_text(e), rt.excerpt()))


def _record_exchanges(p: winrm.protocol.Protocol) -> typing.List[typing.Tuple[str, int, int, int]]:
    seen: typing.List[typing.Tuple[str, int, int, int]] = []
    session = p.transport.build_session()

    def hook(r: requests.Response, *a: typing.Any, **k: typing.Any) -> None:
        auth = r.request.headers.get("Authorization") or "-"
        scheme = (auth.decode("latin-1") if isinstance(auth, bytes) else auth).split(" ")[0]
        seen.append((scheme, len(r.request.body or b""), r.status_code, len(r.content)))

    session.hooks["response"].insert(0, hook)
    return seen


def test_relay_pypsrp_credssp_https(rt, tdoubles):
    from pypsrp.client import Client

    n = len(double_records(tdoubles, "web01"))
    c = Client(TRANSPORT_RELAY_HOST, port=HTTPS_PORT, path="wsman/web01", ssl=True, cert_validation=False,
               auth="credssp", username=ALICE, password=USERS[ALICE], operation_timeout=20)
    marker = "psrp-https-%s" % uuid.uuid4().hex[:8]
    try:
        out = c.execute_cmd("echo %s; exit 3" % marker)
    except Exception as e:  # noqa: BLE001
        pytest.fail("pypsrp CredSSP/HTTPS failed: %s%s" % (err_text(e), rt.excerpt()))
    assert out == (marker + "\n", "", 3)
    assert any(r.get("command", "").endswith(marker + "; exit 3") and r["user"] == ALICE
               for r in _requests_for(tdoubles, "web01", n))


def test_relay_basic_https_in_https_ntlm_cbt_out(rt, tdoubles):
    """Basic over the relay's HTTPS listener; the relay reaches web03 over HTTPS with NTLM and the
    tls-server-end-point binding; web03 (Strict) verifies it."""
    n = len(double_records(tdoubles, "web03"))
    p = relay_proto("web03", transport="basic", https=True)
    try:
        out = run(p, "echo", ["basic-to-cbt"])
    except Exception as e:  # noqa: BLE001
        pytest.fail("Basic/HTTPS -> https-ntlm web03 failed: %s%s%s" % (
            err_text(e), double_says(tdoubles, "web03", n), rt.excerpt()))
    assert out == (b"basic-to-cbt\n", b"", 0)
    reqs = _requests_for(tdoubles, "web03", n)
    assert reqs and all(r["user"] == ALICE and r["cbt"] == "verified" and r["tls"] is True
                        and r["auth"] == "negotiate" for r in reqs), reqs[:3]
    assert any(e.get("event") == "request" and e.get("target") == "web03" and e.get("user", "").lower() == ALICE.lower()
               and e.get("auth") == "basic" for e in rt.events())


def test_relay_cbt_hash_follows_certificate_signature(rt, tdoubles):
    """web07: strict CBT with a SHA-384-signed certificate; a relay that always hashes with SHA-256 fails here."""
    n = len(double_records(tdoubles, "web07"))
    try:
        out = run(relay_proto("web07"), "echo", ["sha384-binding"])
    except Exception as e:  # noqa: BLE001
        pytest.fail("CredSSP/HTTP -> https-ntlm web07 (SHA-384 cert) failed: %s%s%s" % (
            err_text(e), double_says(tdoubles, "web07", n), rt.excerpt()))
    assert out[0] == b"sha384-binding\n"
    assert all(r["cbt"] == "verified" for r in _requests_for(tdoubles, "web07", n))


def test_relay_credssp_http_in_basic_https_out(rt, tdoubles):
    n = len(double_records(tdoubles, "web04"))
    try:
        out = run(relay_proto("web04"), "echo", ["to-basic"])
    except Exception as e:  # noqa: BLE001
        pytest.fail("CredSSP/HTTP -> basic web04 failed: %s%s%s" % (
            err_text(e), double_says(tdoubles, "web04", n), rt.excerpt()))
    assert out == (b"to-basic\n", b"", 0)
    reqs = _requests_for(tdoubles, "web04", n)
    assert reqs and all(r["user"] == ALICE and r["auth"] == "basic" and r["tls"] is True for r in reqs), reqs[:3]


def test_relay_credssp_http_in_credssp_http_out(rt, tdoubles):
    """The third hop: the relay is a CredSSP client to web05 and delegates the caller's password, which the
    double compares with its users file (logging only true/false). Output crosses two CredSSP-sealed legs
    (16 KiB chunks on both) byte-exact."""
    n = len(double_records(tdoubles, "web05"))
    try:
        out = run(relay_proto("web05"), "seq 1 20000")
    except Exception as e:  # noqa: BLE001
        pytest.fail("CredSSP/HTTP -> credssp web05 failed: %s%s%s" % (
            err_text(e), double_says(tdoubles, "web05", n), rt.excerpt()))
    assert out == (expected_seq(20000), b"", 0)
    recs = new_records(tdoubles, "web05", n)
    ok = [r for r in recs if r["event"] == "auth_ok"]
    assert ok and all(r["delegated_password_ok"] is True and r["delegated_user"].lower() == ALICE.lower()
                      and r["user"].lower() == ALICE.lower() for r in ok), ok
    reqs = [r for r in recs if r["event"] == "request"]
    assert reqs and all(r["auth"] == "credssp" and r["encrypted"] and r["delegated_password_ok"] for r in reqs)


def test_relay_credssp_http_in_credssp_https_out(rt, tdoubles):
    """CredSSP onward to an HTTPS target: the relay verifies web08's certificate against ca_file, runs CredSSP
    inside TLS and delegates the caller's password; after the exchange the bodies are plain SOAP inside TLS
    (as Windows accepts them), and the double confirms the delegated password."""
    n = len(double_records(tdoubles, "web08"))
    try:
        out = run(relay_proto("web08"), "echo", ["credssp-to-https"])
    except Exception as e:  # noqa: BLE001
        pytest.fail("CredSSP/HTTP -> credssp https web08 failed: %s%s%s" % (
            err_text(e), double_says(tdoubles, "web08", n), rt.excerpt()))
    assert out == (b"credssp-to-https\n", b"", 0)
    recs = new_records(tdoubles, "web08", n)
    ok = [r for r in recs if r["event"] == "auth_ok"]
    assert ok and all(r["auth"] == "credssp" and r["tls"] is True and r["delegated_password_ok"] is True
                      and r["delegated_user"].lower() == ALICE.lower() and r["user"].lower() == ALICE.lower()
                      for r in ok), ok
    reqs = [r for r in recs if r["event"] == "request"]
    assert reqs and all(r["auth"] == "credssp" and r["tls"] is True and r["delegated_password_ok"] is True
                        and r["encrypted"] is False and r["user"].lower() == ALICE.lower() for r in reqs), reqs[:3]
    assert not [r for r in recs if r["event"] in ("rejected", "auth_failed", "tls_handshake_failed")], recs


def test_relay_pinned_target_works_and_is_recorded(rt, tdoubles):
    """web06-pinned: web06's self-signed certificate, which no CA vouches for, pinned by its SHA-256 fingerprint.
    Commands go through (NTLM with channel binding to that certificate); audited requests to it, like those to a
    CA-verified target (web03), say tls_verified: true."""
    n6 = len(double_records(tdoubles, "web06-pinned"))
    n3 = len(double_records(tdoubles, "web03"))
    before = len(rt.events())
    try:
        out = run(relay_proto("web06-pinned"), "echo", ["pinned"])
        out3 = run(relay_proto("web03"), "echo", ["verified"])
    except Exception as e:  # noqa: BLE001
        pytest.fail("CredSSP/HTTP -> web06-pinned / web03 failed: %s%s%s" % (
            err_text(e), double_says(tdoubles, "web06-pinned", n6), rt.excerpt()))
    assert out == (b"pinned\n", b"", 0)
    assert out3 == (b"verified\n", b"", 0)
    reqs = _requests_for(tdoubles, "web06-pinned", n6)
    assert reqs and all(r["user"] == ALICE and r["tls"] is True and r["auth"] == "negotiate" for r in reqs), reqs[:3]
    assert _requests_for(tdoubles, "web03", n3)

    events = rt.events()[before:]
    for name in ("web06-pinned", "web03"):
        audited = [e for e in events if e.get("event") == "request" and e.get("target") == name]
        assert audited and all(e.get("tls_verified") is True for e in audited), audited[:3]


def test_relay_wrong_pin_refused_with_fingerprint_fault(rt, tdoubles):
    """web09 presents a certificate from the test CA, but the relay pinned another one: the handshake is
    refused (a pin admits exactly one certificate, whatever its issuer), the fault names the target and the
    fingerprint, and nothing reaches the double."""
    n = len(double_records(tdoubles, "web09"))
    with pytest.raises((WinRMTransportError, WSManFaultError, WinRMError)) as ei:
        run(relay_proto("web09"), "echo", ["must-not-run"])
    text = err_text(ei.value)
    assert "web09" in text and "fingerprint" in text, "the fault does not name web09 and the fingerprint: %s%s" % (
        text[:800], rt.excerpt())
    assert harness.cert_fingerprint(tdoubles.server_cert("web06")[0]) in text, text[:800]
    assert not _requests_for(tdoubles, "web09", n)
    failed = wait_for(lambda: [r for r in new_records(tdoubles, "web09", n) if r["event"] == "tls_handshake_failed"], 3)
    assert failed, "web09 saw no refused handshake"


def test_direct_openssl_style_self_signed_cert_is_trusted_by_pywinrm(tdoubles):
    """What the relay has to match: pywinrm (requests/OpenSSL) trusts web10's CA:TRUE self-signed certificate
    once it is the CA bundle, and still checks the host name."""
    cert = tdoubles.server_cert("web10")[0]
    assert run(direct_proto("web10", "ntlm", ca_trust_path=cert), "echo", ["openssl-style"])[0] == b"openssl-style\n"
    import socket

    ctx = ssl.create_default_context(cafile=cert)
    spec = TRANSPORT_DOUBLES["web10"]
    with socket.create_connection((spec.host, spec.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError) as ei:
            ctx.wrap_socket(raw, server_hostname="web11")
    assert "hostname mismatch" in str(ei.value).lower(), ei.value


def test_relay_openssl_style_self_signed_cert_in_ca_file(rt, tdoubles):
    """web10's certificate says CA:TRUE; listed as its own ca_file it is accepted as the server certificate
    (chain validation alone refuses a CA used as end entity), with channel binding to it."""
    n = len(double_records(tdoubles, "web10"))
    try:
        out = run(relay_proto("web10"), "echo", ["self-signed-ca"])
    except Exception as e:  # noqa: BLE001
        pytest.fail("CredSSP/HTTP -> web10 failed: %s%s%s" % (err_text(e), double_says(tdoubles, "web10", n),
                                                              rt.excerpt()))
    assert out == (b"self-signed-ca\n", b"", 0)
    reqs = _requests_for(tdoubles, "web10", n)
    assert reqs and all(r["user"] == ALICE and r["tls"] is True for r in reqs), reqs[:3]


def test_relay_basic_over_http_refused_with_reason(rt, tdoubles):
    n = len(double_records(tdoubles, "web01"))
    r = requests.post("http://%s:%d/wsman/web01" % (TRANSPORT_RELAY_HOST, HTTP_PORT), data=b"", timeout=10,
                      auth=requests.auth.HTTPBasicAuth(ALICE, USERS[ALICE]))
    said = "%s %s %s %s" % (r.status_code, r.reason, r.headers, r.text)
    assert r.status_code == 401, said + rt.excerpt()
    assert re.search(r"basic", said, re.I) and re.search(r"https|tls", said, re.I), \
        "the 401 does not say Basic needs HTTPS: %s" % said
    # pywinrm sees an authentication failure, and nothing reaches the target.
    with pytest.raises(InvalidCredentialsError):
        relay_proto("web01", transport="basic").open_shell()
    assert not _requests_for(tdoubles, "web01", n)


def test_relay_self_signed_target_refused_with_tls_error(rt, tdoubles):
    n = len(double_records(tdoubles, "web06"))
    with pytest.raises((WinRMTransportError, WSManFaultError, WinRMError)) as ei:
        run(relay_proto("web06"), "echo", ["must-not-run"])
    text = err_text(ei.value)
    assert re.search(r"certificate|x509|UnknownIssuer|unknown.?ca|self.signed|tls", text, re.I), \
        "the fault does not name the TLS/certificate error: %s%s" % (text[:800], rt.excerpt())
    assert not _requests_for(tdoubles, "web06", n)
    # The double logs the aborted handshake in its connection thread, maybe after the fault reached us.
    failed = wait_for(lambda: [r for r in new_records(tdoubles, "web06", n) if r["event"] == "tls_handshake_failed"], 3)
    assert failed, "web06 saw no refused handshake"


def test_relay_bob_may_not_use_new_targets(rt, tdoubles):
    """The allow rules still apply to the new targets (only alice lists them)."""
    with pytest.raises((WinRMTransportError, WSManFaultError)) as ei:
        relay_proto("web03", user=BOB).open_shell()
    assert "AccessDenied" in err_text(ei.value) or "denied" in err_text(ei.value).lower()


def test_relay_https_listener_speaks_tls12_and_tls13(rt):
    """rustls with TLS 1.2 (Windows clients) and TLS 1.3 (Python's default) on the HTTPS listener."""
    import socket

    seen = {}
    for want in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ctx.maximum_version = want
        try:
            with socket.create_connection((TRANSPORT_RELAY_HOST, HTTPS_PORT), timeout=5) as raw:
                with ctx.wrap_socket(raw) as s:
                    seen[want.name] = s.version()
        except (ssl.SSLError, OSError) as e:
            seen[want.name] = "failed: %s" % e
    assert seen == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}, seen


def test_relay_basic_https_wrong_password_refused(rt, tdoubles):
    """Same users-file check as CredSSP: a wrong Basic password is a 401 and reaches no target. (The password
    is one test_90 greps for: it must not appear in anything the relay writes.)"""
    n = len(double_records(tdoubles, "web03"))
    before = len(rt.events())
    with pytest.raises(InvalidCredentialsError):
        relay_proto("web03", transport="basic", https=True, password="Wrong-Alice-Pass-77!").open_shell()
    assert not _requests_for(tdoubles, "web03", n)
    failed = wait_for(lambda: [e for e in rt.events()[before:] if e.get("event") == "auth_failed"], 3)
    assert failed, "no auth_failed audit record for a wrong Basic password"
