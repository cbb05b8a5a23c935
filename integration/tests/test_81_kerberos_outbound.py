"""Domain mode, outbound: the relay authenticates to targets with Kerberos, getting the tickets from the test
realm's MIT KDC with the caller's delegated password, and seals bodies with Kerberos wrap tokens. The targets are
doubles whose acceptor is pyspnego + python-gssapi (MIT krb5) with keytabs of their own, independent of sspi.

Callers log on with NTLM inside CredSSP (users-file users, pywinrm); the relay has no KRB5_* variable and no
krb5.conf: only its [kerberos] section. Addresses 127.0.0.110-119 are this module's.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
import typing

import pytest
from winrm.exceptions import WinRMOperationTimeoutError, WinRMTransportError, WSManFaultError

import harness
import mit_realm
from helpers import err_text, run, wait_for

CLIENT_ERRORS = (WSManFaultError, WinRMTransportError, WinRMOperationTimeoutError)

RELAY = "127.0.0.110"
DEAD_KDC_RELAY = "127.0.0.116"
# Nothing listens here (refused at once), and here a KDC accepts TCP but never answers.
REFUSING_KDC = "127.0.0.119"
SILENT_KDC = "127.0.0.118"

ALICE = "LAB\\alice"
ALICE_KRB = "alice@LAB.TEST"
# carol's users-file password is not her password in the domain: the relay accepts her logon (NTLM against the
# users file) and the domain refuses the password she delegated.
CAROL = "LAB\\carol"
CAROL_USERS_FILE_PASSWORD = "Carol-users-file-only-7Q"
CAROL_DOMAIN_PASSWORD = "Carol-domain-password-4W"


class Double(typing.NamedTuple):
    host: str
    port: int
    relay_auth: str
    spn: str
    # The double's own acceptor: a Kerberos-only host with a keytab for `spn`, or an NTLM one.
    kerberos: bool = True
    tls: bool = False


DOUBLES: typing.Dict[str, Double] = {
    "web11": Double("127.0.0.111", 5985, "kerberos", "HTTP/web11.lab.test"),
    "web12": Double("127.0.0.112", 5985, "kerberos", "HTTP/web12.lab.test"),
    # HTTPS, CbtHardeningLevel=Strict: the ticket must be bound to the TLS channel.
    "web13": Double("127.0.0.113", 5986, "https-kerberos", "HTTP/web13.lab.test", tls=True),
    # A Kerberos-only host behind auth = "negotiate": negotiate must pick Kerberos.
    "web14": Double("127.0.0.114", 5985, "negotiate", "HTTP/web14.lab.test"),
    # NTLM host whose SPN the domain does not know: negotiate falls back to NTLM, as Windows does.
    "web15": Double("127.0.0.115", 5985, "negotiate", "HTTP/web15-unregistered.lab.test", kerberos=False),
    # auth = "kerberos" with an SPN the domain does not know: refused before the target sees a token.
    "web17": Double("127.0.0.117", 5985, "kerberos", "HTTP/nosuch.lab.test", kerberos=False),
}


def target_toml(name: str, d: Double, ca_file: typing.Optional[str]) -> str:
    scheme = "https" if d.tls else "http"
    out = '[[target]]\nname = "%s"\nurl = "%s://%s:%d/wsman"\nauth = "%s"\nspn = "%s"\n' % (
        name, scheme, d.host, d.port, d.relay_auth, d.spn)
    if d.tls and ca_file:
        out += 'ca_file = "%s"\n' % ca_file
    return out


ALLOW = """[[allow]]
users = ['LAB\\alice', 'LAB\\carol']
targets = [%s]
shells = ["cmd"]
""" % ", ".join('"%s"' % n for n in DOUBLES)


class Lab:
    def __init__(self, h: harness.Harness, realm: mit_realm.KerberosRealm) -> None:
        self.h, self.realm = h, realm
        self.relays: typing.List[harness.ExtraRelay] = []
        self.doubles: typing.List[str] = []
        self.silent_kdc: typing.Optional[socket.socket] = None

    def start_doubles(self) -> None:
        ca = harness.make_test_ca(self.h.workdir)
        for name, d in DOUBLES.items():
            args: typing.List[str] = []
            env: typing.Optional[dict] = None
            if d.kerberos:
                keytab = self.realm.add_service(d.spn, os.path.join(self.realm.dir, "%s.keytab" % name))
                args += ["--auth", "kerberos", "--spn", d.spn]
                env = self.realm.client_env({"KRB5_KTNAME": "FILE:" + keytab})
            if d.tls:
                cert, key = harness.make_server_cert(self.h.workdir, name, d.host, ca)
                args += ["--tls", "%s,%s" % (cert, key), "--cbt", "strict"]
            self.h.start_double(name, d.host, d.port, extra_args=args, wait=False, extra_env=env)
            self.doubles.append(name)
        for name in self.doubles:
            self.h.wait_double(name, DOUBLES[name].host, DOUBLES[name].port)

    def relay(self, host: str, kdc: typing.Optional[typing.Sequence[str]] = None) -> harness.ExtraRelay:
        targets = "\n".join(target_toml(n, d, self.h.ca_file) for n, d in DOUBLES.items())
        tail = self.realm.kerberos_toml(None, kdc) + "\n" + targets + "\n" + ALLOW
        relay = harness.ExtraRelay(self.h, host, tail=tail, own_users=True)
        self.relays.append(relay)
        return relay

    def add_carol(self, relay: harness.ExtraRelay) -> None:
        """carol in the relay's users file with a password the domain does not have for her, then a reload."""
        res = subprocess.run([self.h.relay_bin, "user", "add", CAROL, "--users-file", relay.users,
                              "--password-stdin"], input=(CAROL_USERS_FILE_PASSWORD + "\n").encode(),
                             capture_output=True, env=harness.scrubbed_env(), timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        before = harness.tail(relay.log, 400).count("ended_sessions")
        relay.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: harness.tail(relay.log, 400).count("ended_sessions") > before, 10), relay.excerpt()

    def start_silent_kdc(self) -> None:
        """A KDC that accepts TCP connections and never answers (the kernel completes the handshakes)."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((SILENT_KDC, 88))
        s.listen(16)
        self.silent_kdc = s

    def stop(self) -> None:
        for relay in self.relays:
            relay.stop()
        for name in self.doubles:
            proc = self.h.procs.pop("double-" + name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        if self.silent_kdc is not None:
            self.silent_kdc.close()


@pytest.fixture(scope="module")
def lab(h: harness.Harness, realm: mit_realm.KerberosRealm) -> typing.Iterator[Lab]:
    if not realm.exists("carol@%s" % mit_realm.REALM):
        realm.add_user("carol", CAROL_DOMAIN_PASSWORD)
    if not os.path.exists(h.users_file):
        h.add_relay_users()
    lab = Lab(h, realm)
    try:
        lab.start_doubles()
        lab.main = lab.relay(RELAY)  # type: ignore[attr-defined]
        lab.add_carol(lab.main)  # type: ignore[attr-defined]
        lab.start_silent_kdc()
        lab.dead = lab.relay(  # type: ignore[attr-defined]
            DEAD_KDC_RELAY, kdc=["tcp://%s:88" % REFUSING_KDC, "tcp://%s:88" % SILENT_KDC])
        yield lab
    finally:
        lab.stop()


def protocol(relay: harness.ExtraRelay, target: str, user: str = ALICE, password: str = "",
             **kw: typing.Any) -> typing.Any:
    import winrm

    kw.setdefault("operation_timeout_sec", 20)
    kw.setdefault("read_timeout_sec", 30)
    return winrm.protocol.Protocol(endpoint=relay.url(target), transport="credssp", username=user,
                                   password=password or harness.USERS[user], server_cert_validation="ignore",
                                   message_encryption="always", **kw)


def records(lab: Lab, name: str) -> typing.List[dict]:
    return harness.read_jsonl(lab.h.double_log(name))


def kdc_counts(realm: mit_realm.KerberosRealm) -> typing.Tuple[int, int, int]:
    return (realm.as_exchanges(ALICE_KRB),
            realm.tgs_exchanges(ALICE_KRB, "HTTP/web11.lab.test@LAB.TEST"),
            realm.tgs_exchanges(ALICE_KRB, "HTTP/web12.lab.test@LAB.TEST"))


def test_a_users_file_user_reaches_a_kerberos_only_target_as_herself(lab: Lab) -> None:
    """NTLM inside CredSSP to the relay, Kerberos from the relay: the target's acceptor (MIT, its own keytab)
    sees alice@LAB.TEST, and the bodies travel in Kerberos wrap tokens both ways."""
    n = len(records(lab, "web11"))
    p = protocol(lab.main, "web11")  # type: ignore[attr-defined]
    assert run(p, "echo", ["kerberos"]) == (b"kerberos\n", b"", 0), lab.main.excerpt()  # type: ignore[attr-defined]
    new = records(lab, "web11")[n:]
    auth = [r for r in new if r.get("event") == "auth_ok"]
    assert auth and all(r["user"] == ALICE_KRB and r["auth"] == "kerberos" for r in auth), new
    requests_seen = [r for r in new if r.get("event") == "request"]
    assert requests_seen and all(r["user"] == ALICE_KRB and r["encrypted"] for r in requests_seen), requests_seen
    assert not [r for r in new if r.get("event") in ("auth_failed", "rejected")], new
    ok = [e for e in lab.main.events() if e.get("event") == "request" and e.get("target") == "web11"]  # type: ignore
    assert ok and ok[-1]["status"] == 200, ok[-1:]


def test_one_session_two_targets_one_as_exchange(lab: Lab) -> None:
    """The KDC's own log: one AS exchange for alice in a session that uses two Kerberos targets (and a service
    ticket for each), however many requests it makes."""
    p = protocol(lab.main, "web11")  # type: ignore[attr-defined]
    before = kdc_counts(lab.realm)
    assert run(p, "echo", ["one"]) == (b"one\n", b"", 0)
    p.transport.endpoint = lab.main.url("web12")  # type: ignore[attr-defined]  same session, same connection
    assert run(p, "echo", ["two"]) == (b"two\n", b"", 0)
    p.transport.endpoint = lab.main.url("web11")  # type: ignore[attr-defined]
    assert run(p, "echo", ["three"]) == (b"three\n", b"", 0)
    want = (before[0] + 1, before[1] + 1, before[2] + 1)
    assert mit_realm.wait_for_kdc_log(lab.realm, lambda _: kdc_counts(lab.realm) == want), (before,
                                                                                            kdc_counts(lab.realm))
    time.sleep(0.5)
    assert kdc_counts(lab.realm) == want, "more KDC exchanges than one AS and one TGS per target"
    assert [r["user"] for r in records(lab, "web12") if r.get("event") == "auth_ok"][-1] == ALICE_KRB


def test_three_megabytes_out_and_forty_kilobytes_in_through_wrap_tokens(lab: Lab) -> None:
    p = protocol(lab.main, "web11", read_timeout_sec=60, operation_timeout_sec=50)  # type: ignore[attr-defined]
    out, err, code = run(p, "seq", ["1", "450000"])
    want = b"".join(b"%d\n" % i for i in range(1, 450001))
    assert len(want) > 3_000_000
    assert (code, err, len(out)) == (0, b"", len(want))
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(want).hexdigest(), "output differs"
    data = bytes((i * 7 + 13) % 251 for i in range(40_000)) + b"\n"
    sid = p.open_shell()
    try:
        cid = p.run_command(sid, "cat")
        p.send_command_input(sid, cid, data, end=True)
        assert p.get_command_output(sid, cid) == (data, b"", 0)
    finally:
        p.close_shell(sid)


def test_https_kerberos_binds_the_ticket_to_the_tls_channel(lab: Lab) -> None:
    """https-kerberos towards a target with CbtHardeningLevel=Strict: plain bodies inside TLS, and MIT checked
    that the authenticator carried this channel's tls-server-end-point binding."""
    n = len(records(lab, "web13"))
    p = protocol(lab.main, "web13")  # type: ignore[attr-defined]
    assert run(p, "echo", ["bound"]) == (b"bound\n", b"", 0), lab.main.excerpt()  # type: ignore[attr-defined]
    new = records(lab, "web13")[n:]
    auth = [r for r in new if r.get("event") == "auth_ok"]
    assert auth and all(r["user"] == ALICE_KRB and r["cbt"] == "verified" and r["tls"] for r in auth), new
    assert all(not r["encrypted"] for r in new if r.get("event") == "request"), new


def test_negotiate_uses_kerberos_when_the_target_has_an_spn(lab: Lab) -> None:
    n = len(records(lab, "web14"))
    p = protocol(lab.main, "web14")  # type: ignore[attr-defined]
    assert run(p, "echo", ["negotiated"]) == (b"negotiated\n", b"", 0), lab.main.excerpt()  # type: ignore
    auth = [r for r in records(lab, "web14")[n:] if r.get("event") == "auth_ok"]
    assert auth and auth[-1]["user"] == ALICE_KRB, auth


def test_negotiate_falls_back_to_ntlm_without_a_ticket(lab: Lab) -> None:
    """The domain has no such SPN: as Windows, negotiate uses NTLM (the double is an NTLM host)."""
    n = len(records(lab, "web15"))
    p = protocol(lab.main, "web15")  # type: ignore[attr-defined]
    assert run(p, "echo", ["ntlm"]) == (b"ntlm\n", b"", 0), lab.main.excerpt()  # type: ignore[attr-defined]
    auth = [r for r in records(lab, "web15")[n:] if r.get("event") == "auth_ok"]
    assert auth and auth[-1]["user"].lower() == ALICE.lower() and auth[-1]["auth"] == "negotiate", auth


def refused(relay: harness.ExtraRelay, target: str, **kw: typing.Any) -> typing.Tuple[str, float]:
    p = protocol(relay, target, **kw)
    t0 = time.monotonic()
    with pytest.raises(CLIENT_ERRORS) as ei:
        p.open_shell()
    return err_text(ei.value), time.monotonic() - t0


def audited_failure(relay: harness.ExtraRelay, target: str) -> dict:
    failures = [e for e in relay.events() if e.get("target") == target and e.get("event") == "request"]
    assert failures, relay.events()[-5:]
    return failures[-1]


def test_unknown_spn_is_named_and_the_target_sees_nothing(lab: Lab) -> None:
    n = len(records(lab, "web17"))
    text, elapsed = refused(lab.main, "web17")  # type: ignore[attr-defined]
    assert "unknown SPN HTTP/nosuch.lab.test" in text, text
    assert elapsed < harness.CONNECT_TIMEOUT_SECS + 5, elapsed
    event = audited_failure(lab.main, "web17")  # type: ignore[attr-defined]
    assert "unknown SPN HTTP/nosuch.lab.test" in event.get("reason", ""), event
    time.sleep(0.3)
    assert records(lab, "web17")[n:] == [], "the target got a request or a token"


def test_a_password_the_domain_refuses_is_a_failed_preauthentication(lab: Lab) -> None:
    before = len([x for x in lab.realm.kdc_log_lines() if "carol@LAB.TEST" in x and "PREAUTH_FAILED" in x])
    n = len(records(lab, "web11"))
    text, _ = refused(lab.main, "web11", user=CAROL, password=CAROL_USERS_FILE_PASSWORD)  # type: ignore[attr-defined]
    assert "pre-authentication failed: LAB.TEST refused the delegated password of carol@LAB.TEST" in text, text
    event = audited_failure(lab.main, "web11")  # type: ignore[attr-defined]
    assert event["user"].lower() == CAROL.lower() and "pre-authentication failed" in event["reason"], event
    assert CAROL_USERS_FILE_PASSWORD not in str(event)
    # The KDC refused exactly one attempt: no retries against the domain's lockout count.
    assert mit_realm.wait_for_kdc_log(lab.realm, lambda lines: len(
        [x for x in lines if "carol@LAB.TEST" in x and "PREAUTH_FAILED" in x]) == before + 1)
    assert not [r for r in records(lab, "web11")[n:] if r.get("user") == "carol@LAB.TEST"]


def test_unreachable_kdcs_are_named_within_the_connect_timeout(lab: Lab) -> None:
    """Both KDCs of the list are tried: one refuses the connection, one never answers (bounded by the connect
    timeout); the fault names each with what happened."""
    text, elapsed = refused(lab.dead, "web11", read_timeout_sec=40, operation_timeout_sec=30)  # type: ignore
    assert "tcp://%s:88: connect:" % REFUSING_KDC in text, text
    assert "tcp://%s:88: no answer within %ds" % (SILENT_KDC, harness.CONNECT_TIMEOUT_SECS) in text, text
    assert elapsed < harness.CONNECT_TIMEOUT_SECS + 3, "took %.1fs" % elapsed
    event = audited_failure(lab.dead, "web11")  # type: ignore[attr-defined]
    assert "KDC unreachable" in event.get("reason", ""), event
