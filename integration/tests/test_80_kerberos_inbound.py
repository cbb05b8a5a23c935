"""Domain mode, inbound: Kerberos inside CredSSP, against the test realm's MIT KDC (mit_realm.KerberosRealm).

A relay of its own (127.0.0.101, reached as relay.lab.test: requests-credssp builds the SPN from the URL's host)
with [kerberos] pointing at the test KDC, a keytab for HTTP/relay.lab.test and WSMAN/relay.lab.test, and no users
file at all: domain users log on with Kerberos and their delegated password goes on to web01 by NTLM.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import shutil
import ssl
import subprocess
import time
import typing

import pytest

import harness
import mit_realm
from helpers import ALICE, USERS, credssp_tls_handshake, double_records, err_text, user_is, wait_for

KRELAY_HOST = "127.0.0.101"
KRELAY_NAME = "relay.lab.test"
DOWN_KDC = "127.0.0.102"  # nothing listens here
SILENT_KDC = "127.0.0.103"  # accepts TCP, never answers (a fixture)
ALICE_UPN = "alice@LAB.TEST"
BOB_UPN = "bob@LAB.TEST"


def test_realm_issues_tickets_a_keytab_accepts(realm: mit_realm.KerberosRealm) -> None:
    """The harness itself: alice gets a TGT with her NTLM password and a ticket for a service whose AES keytab
    an independent acceptor (pyspnego + python-gssapi) takes; the KDC log counts the exchanges."""
    import spnego

    keytab = realm.add_service("HTTP/realmcheck.lab.test", os.path.join(realm.dir, "realmcheck.keytab"))
    assert oct(os.stat(keytab).st_mode & 0o777) == "0o600"
    before = realm.as_exchanges(ALICE_UPN)
    client = spnego.client(ALICE_UPN, mit_realm.PRINCIPALS["alice"], hostname="realmcheck.lab.test",
                           service="HTTP", protocol="kerberos")
    token = client.step()
    assert token[:1] == b"\x60"
    os.environ["KRB5_KTNAME"] = "FILE:" + keytab
    try:
        server = spnego.server(hostname="realmcheck.lab.test", service="HTTP", protocol="kerberos")
        server.step(token)
    finally:
        del os.environ["KRB5_KTNAME"]
    assert server.complete and server.client_principal == ALICE_UPN
    assert mit_realm.wait_for_kdc_log(realm, lambda _: realm.as_exchanges(ALICE_UPN) == before + 1)
    assert realm.tgs_exchanges(ALICE_UPN, "HTTP/realmcheck.lab.test@LAB.TEST") == 1


KerberosRelay = typing.Any  # harness.ExtraRelay with .keytab, the keytab it uses


@pytest.fixture(scope="module")
def krelay(realm: mit_realm.KerberosRealm, doubles: harness.Harness) -> typing.Iterator[KerberosRelay]:
    keytab = os.path.join(realm.dir, "relay.keytab")
    if not os.path.exists(keytab):
        for spn in ("HTTP/%s" % KRELAY_NAME, "WSMAN/%s" % KRELAY_NAME):
            realm.add_service(spn, keytab)
    mit_realm.map_hosts({KRELAY_NAME: KRELAY_HOST})
    # No users file: Kerberos is the only way in.
    no_users = lambda text: re.sub(r'(?m)^users_file = .*\n', "", text)  # noqa: E731
    r = harness.ExtraRelay(doubles, KRELAY_HOST, tail=realm.kerberos_toml(keytab), edit=no_users)
    r.keytab = keytab  # type: ignore[attr-defined]
    try:
        yield r
    finally:
        r.stop()


def url(target: str = "web01") -> str:
    return "http://%s:5985/wsman/%s" % (KRELAY_NAME, target)


def events_since(r: harness.ExtraRelay, n: int) -> typing.List[dict]:
    return r.events()[n:]


def web01_requests_since(h: harness.Harness, n: int) -> typing.List[dict]:
    return [rec for rec in double_records(h, "web01")[n:] if rec.get("event") == "request"]


# --------------------------------------------------------------------------- real clients

def test_pypsrp_raw_kerberos_logon_without_users_file(krelay: KerberosRelay, doubles: harness.Harness,
                                                       realm: mit_realm.KerberosRealm) -> None:
    """pypsrp with credssp_auth_mechanism="kerberos" sends a raw krb5 AP-REQ (the token that panics picky-krb in
    sspi's Negotiate server): alice, who is in no users file, runs a command on web01; the audit says kerberos and
    LAB\\alice; web01 gets her delegated password by NTLM."""
    from pypsrp.client import Client

    seen, web01 = len(krelay.events()), len(double_records(doubles, "web01"))
    c = Client(KRELAY_NAME, port=5985, path="wsman/web01", auth="credssp", ssl=False, username=ALICE_UPN,
               password=mit_realm.PRINCIPALS["alice"], credssp_auth_mechanism="kerberos", operation_timeout=20,
               read_timeout=30)
    try:
        out = c.execute_cmd("echo kerberos-pypsrp")
    except Exception as e:
        pytest.fail("pypsrp Kerberos logon failed: %s%s" % (err_text(e), krelay.excerpt()))
    assert out == ("kerberos-pypsrp\n", "", 0), out
    events = events_since(krelay, seen)
    starts = [e for e in events if e["event"] == "session_start"]
    assert len(starts) == 1 and starts[0]["user"] == ALICE and starts[0]["auth"] == "kerberos", events
    requests = [e for e in events if e["event"] == "request"]
    assert requests and all(e["user"] == ALICE and e["auth"] == "kerberos" for e in requests), requests
    forwarded = web01_requests_since(doubles, web01)
    assert forwarded and all(user_is(rec.get("user"), ALICE) for rec in forwarded), forwarded
    assert realm.tgs_exchanges(ALICE_UPN, "HTTP/%s@LAB.TEST" % KRELAY_NAME) >= 1


def test_pywinrm_spnego_kerberos_logon(krelay: KerberosRelay, doubles: harness.Harness) -> None:
    """pywinrm with credssp_auth_mechanism="auto": SPNEGO with Kerberos first (as Windows sends it). Same result:
    auth=kerberos, LAB\\alice, the command runs on web01."""
    import winrm

    seen = len(krelay.events())
    p = winrm.protocol.Protocol(endpoint=url(), transport="credssp", username=ALICE_UPN,
                                password=mit_realm.PRINCIPALS["alice"], message_encryption="always",
                                operation_timeout_sec=20, read_timeout_sec=30)
    assert p.transport.credssp_auth_mechanism == "auto"
    try:
        sid = p.open_shell()
        cid = p.run_command(sid, "echo", ["kerberos-pywinrm"])
        out, err, code = p.get_command_output(sid, cid)
        p.cleanup_command(sid, cid)
        p.close_shell(sid)
    except Exception as e:
        pytest.fail("pywinrm Kerberos (auto) logon failed: %s%s" % (err_text(e), krelay.excerpt()))
    assert (out, code) == (b"kerberos-pywinrm\n", 0), (out, err, code)
    starts = [e for e in events_since(krelay, seen) if e["event"] == "session_start"]
    assert [(e["user"], e["auth"]) for e in starts] == [(ALICE, "kerberos")], starts


def test_ntlm_logon_without_users_file_is_refused_as_ntlm(krelay: KerberosRelay, doubles: harness.Harness) -> None:
    """The NTLM path stays for users-file accounts: this relay has none, so LAB\\alice by NTLM is refused (401),
    audited as auth=ntlm, and nothing reaches web01."""
    import winrm
    from requests_credssp.exceptions import NTStatusException
    from winrm.exceptions import InvalidCredentialsError, WinRMTransportError

    seen, web01 = len(krelay.events()), len(double_records(doubles, "web01"))
    p = winrm.protocol.Protocol(endpoint=url(), transport="credssp", username=ALICE, password=USERS[ALICE],
                                message_encryption="always", operation_timeout_sec=20, read_timeout_sec=30)
    p.transport.credssp_auth_mechanism = "ntlm"
    with pytest.raises((InvalidCredentialsError, WinRMTransportError, NTStatusException)):
        p.open_shell()
    failed = [e for e in events_since(krelay, seen) if e["event"] == "auth_failed"]
    assert failed and failed[-1]["auth"] == "ntlm" and failed[-1]["user"] == ALICE, failed
    assert "not in the users file" in failed[-1]["reason"], failed
    assert web01_requests_since(doubles, web01) == []


def test_ntlm_logons_are_audited_as_ntlm(relay: harness.Harness) -> None:
    """The audit's auth field on the suite's NTLM relay (no [kerberos]): ntlm."""
    from helpers import audit_events, relay_protocol, run

    seen = len(audit_events(relay))
    assert run(relay_protocol("web01"), "echo", ["ntlm-audit"])[0] == b"ntlm-audit\n"
    starts = [e for e in audit_events(relay)[seen:] if e["event"] == "session_start"]
    assert starts and all(e["auth"] == "ntlm" and e["user"] == ALICE for e in starts), starts


# --------------------------------------------------------------------------- CredSSP by hand

class CredSSP:
    """A CredSSP client on one connection, driven by hand: pyspnego's CredSSP initiator with a chosen sub-context
    (Kerberos as one user, delegating another's credentials), or a TLS tunnel carrying hostile TSRequests."""

    def __init__(self, path: str = "/wsman/web01") -> None:
        self.path = path
        self.conn = http.client.HTTPConnection(KRELAY_NAME, 5985, timeout=30)

    def post(self, token: bytes, body: bytes = b"", headers: typing.Optional[dict] = None
             ) -> typing.Tuple[int, typing.Any, bytes]:
        h = {"Authorization": "CredSSP " + base64.b64encode(token).decode(), "Connection": "Keep-Alive"}
        h.update(headers or {})
        self.conn.request("POST", self.path, body=body, headers=h)
        r = self.conn.getresponse()
        return r.status, r.headers, r.read()

    @staticmethod
    def server_token(headers: typing.Any) -> bytes:
        m = re.search(r"CredSSP ([^,\s]*)$", headers.get("WWW-Authenticate", ""))
        return base64.b64decode(m.group(1)) if m and m.group(1) else b""

    def logon(self, delegated_user: str, delegated_password: str, ticket_user: str, ticket_password: str) -> int:
        """Kerberos as ticket_user, delegating delegated_user's credentials; the last HTTP status."""
        import spnego

        sub = spnego.client(ticket_user, ticket_password, hostname=KRELAY_NAME, service="HTTP", protocol="kerberos")
        ctx = spnego.client(delegated_user, delegated_password, hostname=KRELAY_NAME, protocol="credssp",
                            credssp_negotiate_context=sub)
        token = ctx.step()
        for _ in range(10):
            status, headers, _ = self.post(token)
            if status != 401:
                return status
            answer = self.server_token(headers)
            if not answer:
                return status
            try:
                token = ctx.step(answer)
            except Exception:
                return status  # the relay's error TSRequest: a refusal
            if token is None:
                return status
        raise AssertionError("CredSSP exchange does not end")

    # -- a TLS tunnel for raw TSRequests
    def tunnel(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_side=False)

        def leg(records: bytes) -> bytes:
            status, headers, _ = self.post(records)
            assert status == 401, status
            return self.server_token(headers)

        credssp_tls_handshake(self.tls, self.inc, self.out, leg)

    def first_token(self, nego_token: bytes) -> typing.Tuple[int, typing.Any]:
        """Send a first TSRequest with this negotiation token; the status and the relay's TSRequest, if any."""
        from spnego._credssp_structures import NegoData, TSRequest

        self.tls.write(TSRequest(6, nego_tokens=NegoData(nego_token)).pack())
        status, headers, _ = self.post(self.out.read())
        answer = self.server_token(headers)
        reply = None
        if answer:
            self.inc.write(answer)
            try:
                reply = TSRequest.unpack(self.tls.read())
            except ssl.SSLWantReadError:
                reply = None
        return status, reply

    def close(self) -> None:
        self.conn.close()


@pytest.mark.parametrize("delegated", [ALICE_UPN, "LAB\\alice", "LAB.TEST\\alice", "lab\\ALICE", "Alice@lab.test"])
def test_delegated_name_may_take_any_form_of_the_ticket_principal(krelay: KerberosRelay, delegated: str) -> None:
    """alice@LAB.TEST, LAB\\alice and LAB.TEST\\alice are the same person, case-insensitively: a Kerberos logon as
    alice that delegates any of these forms starts a session for LAB\\alice."""
    seen = len(krelay.events())
    c = CredSSP()
    try:
        status = c.logon(delegated, mit_realm.PRINCIPALS["alice"], ALICE_UPN, mit_realm.PRINCIPALS["alice"])
    finally:
        c.close()
    assert status != 401, status  # authenticated (the empty last POST is then answered as a request)
    starts = [e for e in events_since(krelay, seen) if e["event"] == "session_start"]
    assert [(e["user"], e["auth"]) for e in starts] == [(ALICE, "kerberos")], krelay.events()[seen:]


def _refused_logon(krelay: KerberosRelay, doubles: harness.Harness, delegated: typing.Tuple[str, str],
                   ticket: typing.Tuple[str, str]) -> dict:
    """A Kerberos logon with `ticket`'s (user, password) delegating `delegated`'s: it must be refused (401) with one
    auth_failed line (returned), no session and nothing forwarded."""
    seen, web01 = len(krelay.events()), len(double_records(doubles, "web01"))
    c = CredSSP()
    try:
        status = c.logon(delegated[0], delegated[1], ticket[0], ticket[1])
    finally:
        c.close()
    assert status == 401, status
    events = events_since(krelay, seen)
    assert not [e for e in events if e["event"] == "session_start"], events
    failed = [e for e in events if e["event"] == "auth_failed"]
    assert len(failed) == 1 and failed[0]["auth"] == "kerberos", events
    assert web01_requests_since(doubles, web01) == []
    return failed[0]


def test_ticket_and_delegated_credentials_of_different_principals_are_refused(
        krelay: KerberosRelay, doubles: harness.Harness) -> None:
    """A Kerberos ticket of bob delegating alice's credentials: 401, audited auth_failed naming both, no session,
    nothing forwarded."""
    failed = _refused_logon(krelay, doubles, (ALICE_UPN, mit_realm.PRINCIPALS["alice"]),
                            (BOB_UPN, mit_realm.PRINCIPALS["bob"]))
    assert failed["user"] == "LAB\\bob", failed
    assert "delegated credentials are for LAB\\alice, but the connection authenticated as LAB\\bob" in \
        failed["reason"], failed


def test_a_ticket_whose_name_only_starts_like_the_delegated_one_is_refused(
        krelay: KerberosRelay, realm: mit_realm.KerberosRealm, doubles: harness.Harness) -> None:
    """A ticket for bob/eve@LAB.TEST (a principal eve controls) delegating LAB\\bob with eve's password: sspi reports
    the ticket's first component only (bob), so without the relay's own reading of the ticket this started a session
    as LAB\\bob. Refused, audited auth_failed under the ticket's whole name, nothing forwarded. The reason also says
    what sspi reported: the day it says bob/eve, sspi reads the whole name and the relay's reading can go."""
    eve_password = "Eve-owns-bob/eve-1"
    if not realm.exists("bob/eve@LAB.TEST"):
        realm.add_user("bob/eve", eve_password)
    failed = _refused_logon(krelay, doubles, ("LAB\\bob", eve_password), ("bob/eve@LAB.TEST", eve_password))
    assert failed["user"] == "LAB\\bob/eve", failed
    assert "the Kerberos ticket is for bob/eve@LAB.TEST, but the delegated credentials are for LAB\\bob" in \
        failed["reason"], failed
    # The canary: sspi still reports the first component only.
    assert "(the security package reported the ticket as LAB\\bob)" in failed["reason"], failed


def _krb5_frame(after_oid: bytes) -> bytes:
    body = bytes.fromhex("06092a864886f712010202") + after_oid
    return _der(0x60, body)


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + content


def _real_ap_req() -> bytes:
    import spnego

    return spnego.client(ALICE_UPN, mit_realm.PRINCIPALS["alice"], hostname=KRELAY_NAME, service="HTTP",
                         protocol="kerberos").step()


def _hostile_tokens() -> typing.List[typing.Tuple[str, typing.Callable[[], bytes]]]:
    spnego_krb5 = lambda mech_token: _der(0x60, bytes.fromhex("06062b0601050502") + _der(  # noqa: E731
        0xa0, _der(0x30, _der(0xa0, _der(0x30, bytes.fromhex("06092a864886f712010202")))
                   + _der(0xa2, _der(0x04, mech_token)))))
    return [
        ("raw_krb5_garbage", lambda: _krb5_frame(b"\x01\x00" + _der(0x6e, os.urandom(40)))),
        ("raw_krb5_garbage_unframed", lambda: _krb5_frame(b"\x01\x00" + os.urandom(40))),
        ("raw_krb5_truncated_ap_req", lambda: _real_ap_req()[:300]),
        ("raw_krb5_ap_req_bad_inner_length", lambda: (lambda t: t[:19] + b"\x00\x10" + t[21:])(_real_ap_req())),
        ("raw_krb5_tgt_req", lambda: _krb5_frame(b"\x04\x00" + _der(0x30, b""))),
        ("raw_krb5_ap_req_flipped_ticket", lambda: (lambda t: t[:200] + bytes([t[200] ^ 0xff]) + t[201:])(
            _real_ap_req())),
        ("spnego_krb5_garbage_mech_token", lambda: spnego_krb5(os.urandom(64))),
        ("spnego_krb5_truncated_ap_req", lambda: spnego_krb5(_real_ap_req()[:250])),
    ]


@pytest.mark.parametrize("name,make", _hostile_tokens(), ids=[n for n, _ in _hostile_tokens()])
def test_hostile_kerberos_tokens_are_refused_cleanly(krelay: KerberosRelay, doubles: harness.Harness, name: str,
                                                     make: typing.Callable[[], bytes]) -> None:
    """Raw krb5 garbage, truncated or tampered AP-REQs, a user-to-user TGT-REQ, SPNEGO-wrapped garbage as the first
    token: each is a clean 401 with STATUS_LOGON_FAILURE in an error TSRequest (or a bare 401), audited as
    auth_failed; the relay keeps running (no panic: the relay log has none) and forwards nothing."""
    seen, web01 = len(krelay.events()), len(double_records(doubles, "web01"))
    c = CredSSP()
    try:
        c.tunnel()
        status, reply = c.first_token(make())
    finally:
        c.close()
    assert status == 401, status
    if reply is not None:
        assert reply.error_code & 0xFFFFFFFF == 0xC000006D, reply.error_code  # STATUS_LOGON_FAILURE
    assert krelay.proc.poll() is None, "relay died" + krelay.excerpt()
    failed = wait_for(lambda: [e for e in events_since(krelay, seen) if e["event"] == "auth_failed"])
    assert failed, events_since(krelay, seen)
    assert web01_requests_since(doubles, web01) == []
    with open(krelay.log, "rb") as fh:
        assert b"panicked" not in fh.read(), krelay.excerpt()


def test_after_the_hostile_tokens_the_relay_still_logs_people_on(krelay: KerberosRelay,
                                                                  doubles: harness.Harness) -> None:
    """After every hostile token above (this test comes after them in the file), a real Kerberos logon and
    command still work: nothing they did (a lockout, a wedged acceptor, a dead task) lingers."""
    test_pywinrm_spnego_kerberos_logon(krelay, doubles)


def test_raw_client_gets_a_raw_ap_rep_and_no_second_token_is_taken(krelay: KerberosRelay,
                                                                   doubles: harness.Harness) -> None:
    """The relay answers a raw krb5 AP-REQ with a raw AP-REP (what requests-credssp expects), not sspi's SPNEGO;
    a second negotiation token after it is refused (401, error TSRequest), not guessed at."""
    seen = len(krelay.events())
    c = CredSSP()
    try:
        c.tunnel()
        status, reply = c.first_token(_real_ap_req())
        assert status == 401 and reply is not None and not reply.error_code, (status, reply)
        ap_rep = reply.nego_tokens[0].nego_token
        assert ap_rep[:1] == b"\x60", ap_rep[:16].hex()
        assert bytes.fromhex("06092a864886f712010202" + "0200") in ap_rep[:20], ap_rep[:20].hex()
        status, reply = c.first_token(os.urandom(32))
    finally:
        c.close()
    assert status == 401, status
    assert reply is not None and reply.error_code & 0xFFFFFFFF == 0xC000006D, reply
    failed = [e for e in events_since(krelay, seen) if e["event"] == "auth_failed"]
    assert failed and "a second Kerberos token after the AP-REQ" in failed[-1]["reason"], failed


# --------------------------------------------------------------------------- winrm-relay check / kerberos test

def relay_cli(args: typing.Sequence[str], stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([harness.relay_binary()] + list(args), input=stdin.encode(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=harness.scrubbed_env(), timeout=timeout)


def test_check_lists_the_keytab_and_refuses_a_readable_one(krelay: KerberosRelay) -> None:
    res = relay_cli(["check", "--config", krelay.config])
    out = res.stdout.decode()
    assert res.returncode == 0, (out, res.stderr.decode())
    assert "HTTP/relay.lab.test@LAB.TEST: kvno 2, aes256-cts-hmac-sha1-96" in out, out
    assert "WSMAN/relay.lab.test@LAB.TEST: kvno 2, aes256-cts-hmac-sha1-96" in out, out
    readable = os.path.join(krelay.dir, "readable.keytab")
    shutil.copy(krelay.keytab, readable)
    os.chmod(readable, 0o644)
    config = os.path.join(krelay.dir, "readable-keytab.toml")
    with open(krelay.config) as fh, open(config, "w") as out_fh:
        out_fh.write(fh.read().replace(krelay.keytab, readable))
    res = relay_cli(["check", "--config", config])
    assert res.returncode == 1, res
    assert "readable by group or others (mode 644)" in res.stderr.decode(), res.stderr.decode()


def _config_with_kdc(krelay: KerberosRelay, kdc: str, name: str) -> str:
    path = os.path.join(krelay.dir, name)
    with open(krelay.config) as fh, open(path, "w") as out:
        out.write(re.sub(r'(?m)^kdc = .*$', 'kdc = ["%s"]' % kdc, fh.read()))
    return path


def test_kerberos_test_does_one_as_exchange(krelay: KerberosRelay, realm: mit_realm.KerberosRealm) -> None:
    """`winrm-relay kerberos test 'LAB\\alice'`: ok, and the KDC issued exactly one TGT for it (no service
    ticket asked for); the relay process itself gets no KRB5_* variable."""
    before = realm.as_exchanges(ALICE_UPN)
    tgs_before = sum(1 for line in realm.kdc_log_lines() if "TGS_REQ" in line)
    res = relay_cli(["kerberos", "test", "LAB\\alice", "--config", krelay.config, "--password-stdin"],
                    stdin=mit_realm.PRINCIPALS["alice"] + "\n")
    out = res.stdout.decode()
    assert res.returncode == 0, (out, res.stderr.decode())
    assert out.startswith("alice@LAB.TEST: ok: tcp://127.0.0.100:88 issued a ticket-granting ticket"), out
    assert mit_realm.wait_for_kdc_log(realm, lambda _: realm.as_exchanges(ALICE_UPN) == before + 1)
    time.sleep(0.2)
    assert realm.as_exchanges(ALICE_UPN) == before + 1
    assert sum(1 for line in realm.kdc_log_lines() if "TGS_REQ" in line) == tgs_before


@pytest.mark.parametrize("name,password,want", [
    ("LAB\\alice", "wrong-password-for-alice", "pre-authentication failed at tcp://127.0.0.100:88"),
    ("alice@LAB.TEST", "wrong-password-for-alice", "pre-authentication failed"),
    ("LAB\\nobody", "whatever", "unknown principal: tcp://127.0.0.100:88"),
])
def test_kerberos_test_says_why_the_domain_refused(krelay: KerberosRelay, name: str, password: str,
                                                   want: str) -> None:
    res = relay_cli(["kerberos", "test", name, "--config", krelay.config, "--password-stdin"], stdin=password + "\n")
    out = res.stdout.decode()
    assert res.returncode == 1, (out, res.stderr.decode())
    assert want in out, out


def _failed_kerberos_test(config: str) -> typing.Tuple[str, float]:
    """`kerberos test` for alice with `config`, which must fail (exit 1): what it printed, and how long it took."""
    started = time.monotonic()
    res = relay_cli(["kerberos", "test", "LAB\\alice", "--config", config, "--password-stdin"],
                    stdin=mit_realm.PRINCIPALS["alice"] + "\n")
    elapsed = time.monotonic() - started
    out = res.stdout.decode()
    assert res.returncode == 1, (out, res.stderr.decode())
    return out, elapsed


def test_kerberos_test_names_a_refusing_kdc_at_once(krelay: KerberosRelay) -> None:
    out, elapsed = _failed_kerberos_test(_config_with_kdc(krelay, "tcp://%s:88" % DOWN_KDC, "down-kdc.toml"))
    assert "KDC unreachable: tcp://%s:88: connect" % DOWN_KDC in out, out
    assert elapsed < harness.CONNECT_TIMEOUT_SECS + 2, elapsed


@pytest.fixture
def silent_kdc() -> typing.Iterator[str]:
    """A KDC address whose socket accepts TCP connections (the kernel completes the handshakes) and never
    answers, as test_81's silent KDC."""
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((SILENT_KDC, 88))
    s.listen(16)
    try:
        yield "tcp://%s:88" % SILENT_KDC
    finally:
        s.close()


def test_kerberos_test_names_a_silent_kdc_within_the_connect_timeout(krelay: KerberosRelay, silent_kdc: str) -> None:
    """A KDC that accepts and never answers is given up on after the connect timeout ([defaults]
    connect_timeout_secs bounds the answer too), not before and not much later, and named."""
    out, elapsed = _failed_kerberos_test(_config_with_kdc(krelay, silent_kdc, "silent-kdc.toml"))
    assert "KDC unreachable: %s: no answer within %ds" % (silent_kdc, harness.CONNECT_TIMEOUT_SECS) in out, out
    assert harness.CONNECT_TIMEOUT_SECS <= elapsed < harness.CONNECT_TIMEOUT_SECS + 2, elapsed


def test_kerberos_test_fails_over_to_the_next_kdc(krelay: KerberosRelay) -> None:
    config = _config_with_kdc(krelay, 'tcp://%s:88", "udp://%s:88' % (DOWN_KDC, mit_realm.KDC_HOST), "failover.toml")
    res = relay_cli(["kerberos", "test", "alice", "--config", config, "--password-stdin"],
                    stdin=mit_realm.PRINCIPALS["alice"] + "\n")
    out = res.stdout.decode()
    assert res.returncode == 0, (out, res.stderr.decode())
    assert "ok: udp://%s:88 issued" % mit_realm.KDC_HOST in out, out


def _readyz(host: str) -> typing.Tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen("http://%s:9985/readyz" % host, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_readyz_says_when_no_kdc_can_be_reached(h: harness.Harness, realm: mit_realm.KerberosRealm) -> None:
    """In domain mode /readyz also wants a KDC: one of the configured ones accepting a connection is
    enough, none makes the relay not ready, and the answer names them."""
    dead = "tcp://%s:88" % DOWN_KDC
    metrics = '\n[metrics]\nlisten = "%s:9985"\n'
    one_up = harness.ExtraRelay(h, "127.0.0.105", tail=realm.kerberos_toml(None, kdc=[dead] + realm.kdc_urls)
                                + metrics % "127.0.0.105")
    try:
        assert wait_for(lambda: _readyz("127.0.0.105") == (200, "ready\n"), 15), _readyz("127.0.0.105")
    finally:
        one_up.stop()
    all_down = harness.ExtraRelay(h, "127.0.0.106", tail=realm.kerberos_toml(None, kdc=[dead])
                                  + metrics % "127.0.0.106")
    try:
        status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(_readyz("127.0.0.106")), 15) \
            or _readyz("127.0.0.106")
        assert status == 503 and "no KDC accepts connections" in body and dead in body, body
    finally:
        all_down.stop()
