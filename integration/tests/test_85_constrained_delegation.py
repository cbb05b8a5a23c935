"""Kerberos constrained delegation (S4U2Proxy) against the Samba AD DC (samba_ad.SambaDomain): a relay with
`[kerberos] delegation = "constrained"` takes plain Kerberos logons (pypsrp auth="kerberos", over HTTP with
wrap tokens and over HTTPS with channel binding) and reaches Kerberos-only target doubles in the caller's name
without a password; pywinrm's transport="kerberos" (pykerberos: a bare krb5 token under Negotiate, bodies sealed
with its WinRM wrap) does too.

The domain as samba_ad makes it, plus: svc-relay may delegate to HTTP/web01.lab.test (msDS-AllowedToDelegateTo),
not to HTTP/web02.lab.test (svc-web02, made here); carol is marked sensitive (NOT_DELEGATED) for this module.
"""

from __future__ import annotations

import os
import re
import typing

import pytest

import harness
import mit_realm
import samba_ad
from helpers import double_records, err_text, user_is, wait_for

RELAY_HOST = "127.0.0.170"
RELAY_NAME = "relay.lab.test"
WEB01 = ("127.0.0.171", 5985)  # Kerberos only, HTTP/web01.lab.test (svc-web01's keytab): delegation allowed
WEB02 = ("127.0.0.172", 5985)  # Kerberos only, HTTP/web02.lab.test (svc-web02's keytab): not in the list
WEB03 = ("127.0.0.173", 5985)  # Kerberos only, HTTP/web03.lab.test (svc-web03's keytab): delegation allowed
ALICE = "alice@LAB.TEST"
S4U_LINE = "constrained delegation: S4U2Proxy ticket issued"
# svc-relay's msDS-AllowedToDelegateTo for this module.
ALLOWED = ("HTTP/web01.lab.test", "HTTP/web03.lab.test")


def _config_tail(samba: samba_ad.SambaDomain) -> str:
    kerberos_table = samba.kerberos_toml(samba.keytab("svc-relay")) + 'delegation = "constrained"\n'
    return "\n".join([
        kerberos_table,
        '[[target]]\nname = "s4uweb"\nurl = "http://%s:%d/wsman"\nauth = "kerberos"\nspn = "HTTP/web01.lab.test"\n'
        % WEB01,
        '[[target]]\nname = "s4uweb2"\nurl = "http://%s:%d/wsman"\nauth = "kerberos"\nspn = "HTTP/web02.lab.test"\n'
        % WEB02,
        '[[target]]\nname = "s4uweb3"\nurl = "http://%s:%d/wsman"\nauth = "kerberos"\nspn = "HTTP/web03.lab.test"\n'
        % WEB03,
        "[[allow]]\nusers = ['LAB\\alice', 'LAB\\carol']\ntargets = [\"s4uweb\", \"s4uweb2\", \"s4uweb3\"]\n"
        "shells = [\"cmd\", \"powershell\"]\n",
    ])


class Lab:
    def __init__(self, h: harness.Harness, samba: samba_ad.SambaDomain) -> None:
        self.h, self.samba = h, samba
        for account, spn in (("svc-web02", "HTTP/web02.lab.test"), ("svc-web03", "HTTP/web03.lab.test")):
            if account not in samba_ad.SERVICES:
                samba_ad.SERVICES[account] = [spn]
                samba.add_service(account, [spn])
        for spn in ALLOWED:
            samba.samba_tool("delegation", "add-service", "svc-relay", spn)
        samba.samba_tool("user", "sensitive", "carol", "on")
        for name, (host, port), account, spn in (("s4uweb", WEB01, "svc-web01", "HTTP/web01.lab.test"),
                                                 ("s4uweb2", WEB02, "svc-web02", "HTTP/web02.lab.test"),
                                                 ("s4uweb3", WEB03, "svc-web03", "HTTP/web03.lab.test")):
            h.start_double(name, host, port, extra_args=["--auth", "kerberos", "--spn", spn],
                           extra_env=samba.client_env({"KRB5_KTNAME": "FILE:" + samba.keytab(account)}))
        # An HTTPS listener too: a Kerberos logon bound to the TLS channel.
        https = lambda text: text.replace('http = "%s:5985"' % RELAY_HOST,
                                          'http = "%s:5985"\nhttps = "%s:5986"' % (RELAY_HOST, RELAY_HOST), 1)
        self.relay = harness.ExtraRelay(h, RELAY_HOST, tail=_config_tail(samba), own_users=True, edit=https)
        # Forwardable tickets, as a domain-joined Windows client gets them.
        self.ccaches = {}
        for user in ("alice", "carol"):
            cc = os.path.join(samba.dir, "cc-s4u-%s" % user)
            samba._run_env([samba_ad.tool("kinit"), "-f", "%s@%s" % (user, samba_ad.REALM)],
                           samba_ad.PASSWORDS[user] + "\n", {"KRB5CCNAME": "FILE:" + cc})
            self.ccaches[user] = cc
        cc = os.path.join(samba.dir, "cc-s4u-alice-nf")
        samba._run_env([samba_ad.tool("kinit"), "-F", "%s@%s" % ("alice", samba_ad.REALM)],
                       samba_ad.PASSWORDS["alice"] + "\n", {"KRB5CCNAME": "FILE:" + cc})
        self.ccaches["alice-nf"] = cc

    def stop(self) -> None:
        self.relay.stop()
        for name in ("s4uweb", "s4uweb2", "s4uweb3"):
            proc = self.h.procs.pop("double-" + name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        self.samba.samba_tool("user", "sensitive", "carol", "off")
        for spn in ALLOWED:
            self.samba.samba_tool("delegation", "del-service", "svc-relay", spn)


@pytest.fixture(scope="module")
def lab(doubles: harness.Harness, samba: samba_ad.SambaDomain) -> typing.Iterator[Lab]:
    if not os.path.exists(doubles.users_file):
        doubles.add_relay_users()
    with mit_realm.hosts_mapped({RELAY_NAME: RELAY_HOST}):
        lab = Lab(doubles, samba)
        try:
            with samba.in_process():
                yield lab
        finally:
            lab.stop()


def as_user(lab: Lab, user: str) -> None:
    os.environ["KRB5CCNAME"] = "FILE:" + lab.ccaches[user]


def client(target: str, https: bool = False):
    """pypsrp with auth="kerberos" (SPNEGO, HTTP/relay.lab.test): over HTTP its bodies are sealed with Kerberos wrap
    tokens both ways; over HTTPS its ticket is bound to the TLS channel."""
    from pypsrp.client import Client

    return Client(RELAY_NAME, port=5986 if https else 5985, path="wsman/%s" % target, auth="kerberos", ssl=https,
                  cert_validation=False, negotiate_service="HTTP", operation_timeout=20, read_timeout=30)


def arrivals(h: harness.Harness, name: str) -> typing.List[dict]:
    return [r for r in double_records(h, name) if r.get("event") == "request"]


def s4u_lines(lab: Lab) -> typing.List[str]:
    return [line for line in harness.tail(lab.relay.log, 4000).splitlines() if S4U_LINE in line]


@pytest.mark.parametrize("https", [False, True], ids=["http-wrapped", "https-bound"])
def test_pypsrp_kerberos_runs_as_alice_without_her_password(lab: Lab, https: bool) -> None:
    as_user(lab, "alice")
    seen, web = len(lab.relay.events()), len(arrivals(lab.h, "s4uweb"))
    try:
        out = client("s4uweb", https).execute_cmd("echo s4u-alice")
    except Exception as e:
        pytest.fail("pypsrp kerberos: %s%s" % (err_text(e), lab.relay.excerpt()))
    assert out[0].strip() == "s4u-alice" and out[2] == 0, out
    forwarded = arrivals(lab.h, "s4uweb")[web:]
    assert forwarded and all(user_is(r.get("user"), ALICE) for r in forwarded), forwarded
    events = lab.relay.events()[seen:]
    starts = [e for e in events if e["event"] == "session_start"]
    assert starts and starts[0]["auth"] == "kerberos" and starts[0]["delegation"] == "constrained", starts
    requests = [e for e in events if e["event"] == "request"]
    assert requests and all(e.get("delegation") == "constrained" for e in requests), requests


def test_pywinrm_kerberos_runs_as_alice_without_her_password(lab: Lab) -> None:
    """pywinrm's transport="kerberos": a bare krb5 AP-REQ under Negotiate with mutual authentication, its bodies
    sealed over HTTP; the command reaches web01 in alice's name through S4U2Proxy."""
    import winrm

    as_user(lab, "alice")
    seen, web = len(lab.relay.events()), len(arrivals(lab.h, "s4uweb"))
    p = winrm.protocol.Protocol(endpoint="http://%s:5985/wsman/s4uweb" % RELAY_NAME, transport="kerberos",
                                username=ALICE, message_encryption="always", operation_timeout_sec=20,
                                read_timeout_sec=30)
    try:
        shell = p.open_shell()
        command = p.run_command(shell, "echo", ["s4u-pywinrm"])
        out, err, code = p.get_command_output(shell, command)
        p.cleanup_command(shell, command)
        p.close_shell(shell)
    except Exception as e:
        pytest.fail("pywinrm kerberos: %s%s" % (err_text(e), lab.relay.excerpt()))
    assert code == 0 and out.strip() == b"s4u-pywinrm", (code, out, err)
    forwarded = arrivals(lab.h, "s4uweb")[web:]
    assert forwarded and all(user_is(r.get("user"), ALICE) for r in forwarded), forwarded
    events = lab.relay.events()[seen:]
    starts = [e for e in events if e["event"] == "session_start"]
    assert starts and starts[0]["auth"] == "kerberos" and starts[0]["delegation"] == "constrained", starts
    requests = [e for e in events if e["event"] == "request"]
    assert requests and all(e.get("delegation") == "constrained" for e in requests), requests
    # close_shell closed the connection: the session ends here, not in a later test's window.
    assert wait_for(lambda: any(e["event"] == "session_end" for e in lab.relay.events()[seen:]), 30), \
        lab.relay.excerpt()


def test_two_targets_in_one_session_one_s4u2proxy_request_each(lab: Lab) -> None:
    """One logon, two commands to each of two targets: one S4U2Proxy request per target SPN (in the relay's log and
    in the KDC's), both named at the session's end; then the same session to a target the domain refuses: asked
    each time, never issued."""
    as_user(lab, "alice")
    before = len(s4u_lines(lab))
    kdc_before = {spn: len(lab.samba.s4u2proxy_requests(spn + "@LAB.TEST")) for spn in ALLOWED}
    seen, web, web3 = len(lab.relay.events()), len(arrivals(lab.h, "s4uweb")), len(arrivals(lab.h, "s4uweb3"))
    c = client("s4uweb")
    for target in ("s4uweb", "s4uweb3"):
        # The same connection and Kerberos context to another target's path.
        c.wsman.transport.endpoint = "http://%s:5985/wsman/%s" % (RELAY_NAME, target)
        assert c.execute_cmd("echo one")[2] == 0
        assert c.execute_cmd("echo two")[2] == 0
    c.wsman.transport.endpoint = "http://%s:5985/wsman/s4uweb2" % RELAY_NAME
    with pytest.raises(Exception):
        c.execute_cmd("echo refused")
    issued = s4u_lines(lab)[before:]
    assert len(issued) == 2, issued
    assert "HTTP/web01.lab.test" in issued[0] and "HTTP/web03.lab.test" in issued[1], issued
    # The KDC's own log: one TGS-REQ with cname-in-addl-tkt per target, from the relay's account.
    for spn in ALLOWED:
        asked = lab.samba.s4u2proxy_requests(spn + "@LAB.TEST")[kdc_before[spn]:]
        assert len(asked) == 1 and "TGS-REQ svc-relay@LAB.TEST " in asked[0], (spn, asked)
    for name, count in (("s4uweb", web), ("s4uweb3", web3)):
        forwarded = arrivals(lab.h, name)[count:]
        assert forwarded and all(user_is(r.get("user"), ALICE) for r in forwarded), (name, forwarded)
    c.wsman.transport.session.close()
    ends = []

    def ended() -> bool:
        ends[:] = [e for e in lab.relay.events()[seen:] if e["event"] == "session_end"]
        return bool(ends)

    assert wait_for(ended, 30), lab.relay.excerpt()
    events = lab.relay.events()[seen:]
    assert len({e["session"] for e in events if e["event"] == "request"}) == 1, events
    tickets = ends[0].get("tickets") or []
    assert [t.split(" ")[0] for t in tickets] == ["HTTP/web01.lab.test@LAB.TEST", "HTTP/web03.lab.test@LAB.TEST"], ends


def test_a_target_the_domain_does_not_allow_is_refused_naming_its_spn(lab: Lab) -> None:
    as_user(lab, "alice")
    seen, web2 = len(lab.relay.events()), len(arrivals(lab.h, "s4uweb2"))
    with pytest.raises(Exception) as refused:
        client("s4uweb2").execute_cmd("echo nope")
    text = err_text(refused.value)
    assert "does not allow svc-relay@LAB.TEST to delegate to HTTP/web02.lab.test" in text, text
    events = lab.relay.events()[seen:]
    failed = [e for e in events if "HTTP/web02.lab.test" in (e.get("reason") or "")]
    assert failed and "msDS-AllowedToDelegateTo" in failed[0]["reason"], events
    assert arrivals(lab.h, "s4uweb2")[web2:] == []


def test_a_sensitive_user_cannot_be_delegated_and_the_fault_says_so(lab: Lab) -> None:
    as_user(lab, "carol")
    seen, web = len(lab.relay.events()), len(arrivals(lab.h, "s4uweb"))
    with pytest.raises(Exception) as refused:
        client("s4uweb").execute_cmd("echo nope")
    text = err_text(refused.value)
    assert "carol@LAB.TEST cannot be delegated" in text and "sensitive" in text, text
    assert [e for e in lab.relay.events()[seen:] if "cannot be delegated" in (e.get("reason") or "")]
    assert arrivals(lab.h, "s4uweb")[web:] == []


def test_a_non_forwardable_ticket_is_refused_saying_how_to_fix_it(lab: Lab) -> None:
    as_user(lab, "alice-nf")
    web = len(arrivals(lab.h, "s4uweb"))
    with pytest.raises(Exception) as refused:
        client("s4uweb").execute_cmd("echo nope")
    text = err_text(refused.value)
    assert "not forwardable" in text and "kinit -f" in text, text
    assert arrivals(lab.h, "s4uweb")[web:] == []


def test_ntlm_in_negotiate_is_refused_because_it_cannot_be_delegated(lab: Lab) -> None:
    """An NTLM first token under Negotiate (what pywinrm's ntlm transport sends): a 401 whose text says Kerberos is
    needed; nothing forwarded."""
    import base64

    import requests
    import spnego

    web = len(arrivals(lab.h, "s4uweb"))
    token = spnego.client("alice", samba_ad.PASSWORDS["alice"], protocol="ntlm").step()
    answer = requests.post("http://%s:5985/wsman/s4uweb" % RELAY_HOST, data=b"",
                           headers={"Authorization": "Negotiate " + base64.b64encode(token).decode()}, timeout=30)
    assert answer.status_code == 401, answer
    assert "NTLM cannot be delegated" in answer.text and "Kerberos" in answer.text, answer.text
    assert arrivals(lab.h, "s4uweb")[web:] == []


def test_the_relay_never_holds_alices_password(lab: Lab) -> None:
    """A core image of the relay while alice's constrained session is open (its S4U2Proxy ticket in use): her
    password is nowhere in it, in any encoding test_91 looks for (this relay has no CredSSP session, and its users
    file holds hashes). Then her session's end names the ticket it held, with its times."""
    import shutil

    import test_91_memory as memory

    if shutil.which("gdb") is None:
        message = "gdb is not installed: cannot take a core image of the relay"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    as_user(lab, "alice")
    c = client("s4uweb")
    assert c.execute_cmd("echo in-session")[2] == 0
    seen = len(lab.relay.events())
    path = os.path.join(lab.relay.dir, "constrained.core")
    try:
        core = memory.take_core(lab.relay.proc.pid, path)
        hits = memory.find_password(core, samba_ad.PASSWORDS["alice"])
        assert not any(hits.values()), memory.report(core, hits, "alice's password in a constrained relay")
        assert core.segments, "the image holds no memory"
    finally:
        if os.path.exists(path):
            os.unlink(path)
    # The connection closes: the session ends, audited with the ticket it held.
    c.wsman.transport.session.close()
    ends = []

    def ended() -> bool:
        ends[:] = [e for e in lab.relay.events()[seen:] if e["event"] == "session_end"]
        return bool(ends)

    assert wait_for(ended, 30), lab.relay.excerpt()
    tickets = ends[0].get("tickets")
    assert tickets and len(tickets) == 1, ends
    assert re.match(r"^HTTP/web01\.lab\.test@LAB\.TEST for alice@LAB\.TEST from \S+Z to \S+Z$", tickets[0]), tickets


def test_check_names_the_relay_account(lab: Lab) -> None:
    import subprocess

    res = subprocess.run([lab.h.relay_bin, "check", "-c", lab.relay.config], capture_output=True,
                         env=harness.scrubbed_env(), timeout=60, cwd=lab.relay.dir)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(rb"relay account for constrained delegation: svc-relay@LAB\.TEST", res.stdout), res.stdout
