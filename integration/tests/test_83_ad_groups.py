"""Active Directory groups in the allowlist, against a real domain controller (Samba AD DC, samba_ad.SambaDomain).

The domain: alice in WinRM-Operators, dave in Tier2-Admins (nested in WinRM-Operators), bob in Helpdesk, carol in
none; svc-relay holds HTTP/relay.lab.test and WSMAN/relay.lab.test, svc-web01 HTTP/web01.lab.test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import typing
import urllib.error
import urllib.request

import pytest

import harness
import mit_realm
import samba_ad
from helpers import double_records, err_text, run, user_is, wait_for

ALICE_UPN = "alice@LAB.TEST"


def test_domain_issues_tickets_a_keytab_accepts(samba: samba_ad.SambaDomain) -> None:
    """The harness itself: alice gets a ticket for HTTP/relay.lab.test with her password, an independent acceptor
    (pyspnego + python-gssapi) takes it with svc-relay's exported AES keytab; the DC listens on its own address
    only."""
    import spnego

    keytab = samba.keytab("svc-relay")
    assert oct(os.stat(keytab).st_mode & 0o777) == "0o600"
    with samba.in_process():
        client = spnego.client(ALICE_UPN, samba_ad.PASSWORDS["alice"], hostname="relay.lab.test", service="HTTP",
                               protocol="kerberos")
        token = client.step()
        assert token[:1] == b"\x60"
        os.environ["KRB5_KTNAME"] = "FILE:" + keytab
        try:
            server = spnego.server(hostname="relay.lab.test", service="HTTP", protocol="kerberos")
            server.step(token)
        finally:
            del os.environ["KRB5_KTNAME"]
    assert server.complete and server.client_principal == ALICE_UPN
    import socket

    for host in ("127.0.0.1", "127.0.0.100"):
        try:
            with socket.create_connection((host, samba_ad.LDAP_PORT), timeout=0.5):
                raise AssertionError("something listens on %s:389" % host)
        except OSError:
            pass
    assert samba.sid("alice").startswith("S-1-5-21-")


# --------------------------------------------------------------------------- a relay with group rules

RELAY_HOST = "127.0.0.151"
RELAY_NAME = "relay.lab.test"
NTLM_DOUBLE = ("127.0.0.152", 5985)  # knows every domain user's password (NTLM)
# The same double on a second address, which only a user rule reaches (two targets cannot share host and port).
HELP_DOUBLE = ("127.0.0.154", 5985)
KRB_DOUBLE = ("127.0.0.153", 5985)  # Kerberos only, HTTP/web01.lab.test from svc-web01's keytab
METRICS = "%s:9985" % RELAY_HOST
OPERATORS = "LAB\\WinRM-Operators"
# The group rule's number: the two rules of the suite's base config (harness.relay_config_toml) come first.
GROUP_RULE = 2
# Callers by name: (user, password); alice and dave are operators (dave through Tier2-Admins), bob and carol not.
PEOPLE = {name: ("LAB\\%s" % name, samba_ad.PASSWORDS[name]) for name in ("alice", "bob", "carol", "dave")}


def _config_tail(samba: samba_ad.SambaDomain, extra_group: str = "") -> str:
    ntlm = "http://%s:%d/wsman" % NTLM_DOUBLE
    groups = "'%s'%s" % (OPERATORS, extra_group)
    return "\n".join([
        samba.kerberos_toml(samba.keytab("svc-relay")),
        samba.directory_toml(),
        '[metrics]\nlisten = "%s"\n' % METRICS,
        '[[target]]\nname = "adweb"\nurl = "%s"\nauth = "ntlm"\n' % ntlm,
        '[[target]]\nname = "adhelp"\nurl = "http://%s:%d/wsman"\nauth = "ntlm"\n' % HELP_DOUBLE,
        '[[target]]\nname = "adkrb"\nurl = "http://%s:%d/wsman"\nauth = "kerberos"\nspn = "HTTP/web01.lab.test"\n'
        % KRB_DOUBLE,
        "[[allow]]\ngroups = [%s]\ntargets = [\"adweb\", \"adkrb\"]\nshells = [\"cmd\", \"powershell\"]\n" % groups,
        "[[allow]]\nusers = ['LAB\\bob']\ntargets = [\"adhelp\"]\nshells = [\"cmd\"]\n",
    ])


class AdLab:
    """The relay (users file: the four people with their domain passwords; keytab: svc-relay) and two doubles."""

    def __init__(self, h: harness.Harness, samba: samba_ad.SambaDomain) -> None:
        self.h, self.samba = h, samba
        self.users_file = os.path.join(samba.dir, "double-ntlm-users")
        with open(self.users_file, "w") as fh:
            for name, (_, password) in PEOPLE.items():
                fh.write("LAB:%s:%s\n" % (name, password))
        os.chmod(self.users_file, 0o600)
        h.start_double("adweb", *NTLM_DOUBLE,
                       extra_args=["--ntlm-user-file", self.users_file, "--bind", "%s:%d" % HELP_DOUBLE])
        keytab = samba.keytab("svc-web01")
        h.start_double("adkrb", *KRB_DOUBLE, extra_args=["--auth", "kerberos", "--spn", "HTTP/web01.lab.test"],
                       extra_env=samba.client_env({"KRB5_KTNAME": "FILE:" + keytab}))
        self.relay = harness.ExtraRelay(h, RELAY_HOST, tail=_config_tail(samba), own_users=True)
        for name in ("carol", "dave"):
            self.add_user(*PEOPLE[name])
        before = harness.tail(self.relay.log, 400).count("ended_sessions")
        self.relay.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: harness.tail(self.relay.log, 400).count("ended_sessions") > before, 10), \
            self.relay.excerpt()

    def add_user(self, user: str, password: str) -> None:
        res = subprocess.run([self.h.relay_bin, "user", "add", user, "--users-file", self.relay.users,
                              "--password-stdin"], input=(password + "\n").encode(), capture_output=True,
                             env=harness.scrubbed_env(), timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr

    def stop(self) -> None:
        self.relay.stop()
        for name in ("adweb", "adkrb"):
            proc = self.h.procs.pop("double-" + name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def lab(doubles: harness.Harness, samba: samba_ad.SambaDomain) -> typing.Iterator[AdLab]:
    if not os.path.exists(doubles.users_file):
        doubles.add_relay_users()
    with mit_realm.hosts_mapped({RELAY_NAME: RELAY_HOST}):
        ad = AdLab(doubles, samba)
        try:
            with samba.in_process():
                yield ad
        finally:
            ad.stop()


def ntlm_run(name: str, target: str = "adweb") -> typing.Tuple[bytes, bytes, int]:
    """`echo <name>` on target through the relay, logging on with NTLM (users file) inside CredSSP."""
    import winrm

    user, password = PEOPLE[name]
    p = winrm.protocol.Protocol(endpoint="http://%s:5985/wsman/%s" % (RELAY_HOST, target), transport="credssp",
                                username=user, password=password, message_encryption="always",
                                operation_timeout_sec=20, read_timeout_sec=30)
    p.transport.credssp_auth_mechanism = "ntlm"
    return run(p, "echo", ["ad-%s" % name])


def pypsrp_run(name: str, target: str = "adweb") -> typing.Tuple[str, str, int]:
    """pypsrp with credssp_auth_mechanism="kerberos": a raw krb5 AP-REQ for HTTP/relay.lab.test from the DC."""
    from pypsrp.client import Client

    c = Client(RELAY_NAME, port=5985, path="wsman/%s" % target, auth="credssp", ssl=False,
               username="%s@%s" % (name, samba_ad.REALM), password=samba_ad.PASSWORDS[name],
               credssp_auth_mechanism="kerberos", operation_timeout=20, read_timeout=30)
    return c.execute_cmd("echo ad-%s" % name)


def pywinrm_kerberos_run(name: str, target: str = "adweb") -> typing.Tuple[bytes, bytes, int]:
    import winrm

    p = winrm.protocol.Protocol(endpoint="http://%s:5985/wsman/%s" % (RELAY_NAME, target), transport="credssp",
                                username="%s@%s" % (name, samba_ad.REALM), password=samba_ad.PASSWORDS[name],
                                message_encryption="always", operation_timeout_sec=20, read_timeout_sec=30)
    p.transport.credssp_auth_mechanism = "kerberos"
    return run(p, "echo", ["ad-%s" % name])


def arrivals(h: harness.Harness, name: str = "adweb") -> typing.List[dict]:
    return [r for r in double_records(h, name) if r.get("event") == "request"]


def _session_starts(events: typing.List[dict], user: str) -> typing.List[dict]:
    return [e for e in events if e["event"] == "session_start" and e.get("user", "").lower() == user.lower()]


def _check_outcome(lab: AdLab, name: str, auth: str, attempt: typing.Callable[[], typing.Any], seen: int,
                   web: int) -> None:
    """alice and dave run their command and the audit names the group rule and the group; bob and carol are refused
    with the reason in the audit and nothing reaches the double."""
    user = PEOPLE[name][0]
    if name in ("alice", "dave"):
        try:
            out = attempt()
        except Exception as e:
            pytest.fail("%s (%s) refused: %s%s" % (name, auth, err_text(e), lab.relay.excerpt()))
        assert ("ad-%s" % name) in (out[0].decode() if isinstance(out[0], bytes) else out[0]), out
        events = lab.relay.events()[seen:]
        starts = _session_starts(events, user)
        assert starts and starts[0]["auth"] == auth and starts[0]["groups"] == [OPERATORS], events
        granted = [e for e in events if e["event"] == "request" and e.get("user", "").lower() == user.lower()]
        assert granted and all(e["rule"] == GROUP_RULE and e["group"] == OPERATORS for e in granted), granted
        forwarded = arrivals(lab.h)[web:]
        assert forwarded and all(user_is(r.get("user"), user) for r in forwarded), forwarded
        return
    with pytest.raises(Exception) as refused:
        attempt()
    events = lab.relay.events()[seen:]
    starts = _session_starts(events, user)
    assert starts and starts[0]["auth"] == auth and starts[0]["groups"] == [], events
    denied = [e for e in events if e["event"] == "denied" and e.get("user", "").lower() == user.lower()]
    assert denied and "no [[allow]] rule lets %s reach target adweb" % user in denied[0]["reason"], (
        denied, err_text(refused.value))
    assert arrivals(lab.h)[web:] == []


@pytest.mark.parametrize("name", ["alice", "dave", "bob", "carol"])
def test_group_rule_for_ntlm_callers(lab: AdLab, name: str) -> None:
    """Users-file NTLM callers: the directory (tokenGroups) says alice and dave (nested) are WinRM-Operators."""
    seen, web = len(lab.relay.events()), len(arrivals(lab.h))
    _check_outcome(lab, name, "ntlm", lambda: ntlm_run(name), seen, web)


@pytest.mark.parametrize("name,client", [("alice", "pypsrp"), ("dave", "pywinrm"), ("bob", "pypsrp"),
                                         ("carol", "pywinrm")])
def test_group_rule_for_kerberos_callers(lab: AdLab, name: str, client: str) -> None:
    """Kerberos callers with tickets from the DC (pypsrp and pywinrm, credssp_auth_mechanism="kerberos")."""
    seen, web = len(lab.relay.events()), len(arrivals(lab.h))
    attempt = (lambda: pypsrp_run(name)) if client == "pypsrp" else (lambda: pywinrm_kerberos_run(name))
    _check_outcome(lab, name, "kerberos", attempt, seen, web)


def test_kerberos_to_the_target_with_a_ticket_from_the_dc(lab: AdLab) -> None:
    """Out: alice logs on with Kerberos and the relay gets her a ticket for HTTP/web01.lab.test from the DC (AES,
    svc-web01's keytab) with her delegated password; the Kerberos-only double names her."""
    seen, web = len(lab.relay.events()), len(arrivals(lab.h, "adkrb"))
    try:
        out = pypsrp_run("alice", "adkrb")
    except Exception as e:
        pytest.fail("alice to adkrb: %s%s" % (err_text(e), lab.relay.excerpt()))
    assert out[0].strip() == "ad-alice", out
    forwarded = arrivals(lab.h, "adkrb")[web:]
    assert forwarded and all(user_is(r.get("user"), "alice@LAB.TEST") for r in forwarded), forwarded
    granted = [e for e in lab.relay.events()[seen:] if e["event"] == "request"]
    assert granted and all(e["target"] == "adkrb" and e["group"] == OPERATORS for e in granted), granted


def test_pywinrm_spnego_kerberos_logon(lab: AdLab) -> None:
    """pywinrm with credssp_auth_mechanism="auto" (SPNEGO, Kerberos first, as Windows sends it) with the DC's
    ticket: auth kerberos, alice's group from her PAC."""
    import winrm

    seen = len(lab.relay.events())
    p = winrm.protocol.Protocol(endpoint="http://%s:5985/wsman/adweb" % RELAY_NAME, transport="credssp",
                                username="alice@LAB.TEST", password=samba_ad.PASSWORDS["alice"],
                                message_encryption="always", operation_timeout_sec=20, read_timeout_sec=30)
    assert p.transport.credssp_auth_mechanism == "auto"
    try:
        out = run(p, "echo", ["ad-spnego"])
    except Exception as e:
        pytest.fail("pywinrm (auto) refused: %s%s" % (err_text(e), lab.relay.excerpt()))
    assert out[0] == b"ad-spnego\n", out
    starts = _session_starts(lab.relay.events()[seen:], "LAB\\alice")
    assert [(e["auth"], e["groups"]) for e in starts] == [("kerberos", [OPERATORS])], starts


@pytest.mark.parametrize("name,password,want", [
    ("LAB\\alice", samba_ad.PASSWORDS["alice"], "alice@LAB.TEST: ok: tcp://127.0.0.150:88 issued a ticket-granting"),
    ("LAB\\alice", "wrong-password-for-alice", "pre-authentication failed at tcp://127.0.0.150:88"),
    ("LAB\\nobody", "whatever", "unknown principal: tcp://127.0.0.150:88"),
])
def test_kerberos_test_against_the_dc(lab: AdLab, name: str, password: str, want: str) -> None:
    """`winrm-relay kerberos test` against the Samba DC's KDC (Heimdal): what it says matches the MIT realm's."""
    res = subprocess.run([lab.h.relay_bin, "kerberos", "test", name, "--config", lab.relay.config,
                          "--password-stdin"], input=(password + "\n").encode(), capture_output=True,
                         env=harness.scrubbed_env(), timeout=60, cwd=lab.relay.dir)
    out = res.stdout.decode()
    assert res.returncode == (0 if "ok:" in want else 1), (out, res.stderr.decode())
    assert want in out, out


def test_check_online_finds_the_groups_a_rule_names(lab: AdLab, samba: samba_ad.SambaDomain) -> None:
    ok = subprocess.run([lab.h.relay_bin, "check", "--online", "-c", lab.relay.config], capture_output=True,
                        env=harness.scrubbed_env(), timeout=60, cwd=lab.relay.dir)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert b"group LAB\\WinRM-Operators: found in the directory" in ok.stdout, ok.stdout
    bad = os.path.join(lab.relay.dir, "nosuch-group.toml")
    with open(lab.relay.config) as fh:
        text = fh.read()
    with open(bad, "w") as fh:
        fh.write(text.replace("'%s'" % OPERATORS, "'%s', 'NoSuch-Group@lab.test'" % OPERATORS))
    res = subprocess.run([lab.h.relay_bin, "check", "--online", "-c", bad], capture_output=True,
                         env=harness.scrubbed_env(), timeout=60, cwd=lab.relay.dir)
    assert res.returncode == 1, res.stdout + res.stderr
    assert b"group LAB\\NoSuch-Group: not found in the directory (ldaps://127.0.0.150:636)" in res.stderr, res.stderr
    # StartTLS on 389, and failover past a DC that refuses connections (nothing listens on 127.0.0.155).
    starttls = os.path.join(lab.relay.dir, "starttls-failover.toml")
    ldaps = 'url = ["%s"]' % samba.ldaps_url
    assert ldaps in text, text
    with open(starttls, "w") as fh:
        fh.write(text.replace(ldaps, 'url = ["ldaps://127.0.0.155", "%s"]\nstarttls = true' % samba.ldap_url))
    res = subprocess.run([lab.h.relay_bin, "check", "--online", "-c", starttls], capture_output=True,
                         env=harness.scrubbed_env(), timeout=60, cwd=lab.relay.dir)
    assert res.returncode == 0, res.stdout + res.stderr
    assert b"group LAB\\WinRM-Operators: found in the directory" in res.stdout, res.stdout
    # Offline, the same file is valid: only --online asks the directory.
    offline = subprocess.run([lab.h.relay_bin, "check", "-c", bad], capture_output=True, env=harness.scrubbed_env(),
                             timeout=60, cwd=lab.relay.dir)
    assert offline.returncode == 0, offline.stdout + offline.stderr


@pytest.mark.parametrize("name,allowed", [("alice", True), ("carol", False)])
def test_policy_test_looks_up_the_callers_groups(lab: AdLab, name: str, allowed: bool) -> None:
    """`policy test` asks the directory for the caller's groups as a logon would, prints them and decides with
    them: alice (in WinRM-Operators) passes the group rule, carol (in no group) does not; nothing is sent anywhere."""
    web = len(arrivals(lab.h))
    res = subprocess.run([lab.h.relay_bin, "policy", "test", "-c", lab.relay.config, "--user", PEOPLE[name][0],
                          "--target", "adweb", "--", "hostname"], capture_output=True, env=harness.scrubbed_env(),
                         timeout=60, cwd=lab.relay.dir)
    out = res.stdout.decode()
    lines = out.splitlines()
    if allowed:
        assert res.returncode == 0, (out, res.stderr)
        assert lines[:2] == ["decision: allow", "rule: allow[%d]" % GROUP_RULE], out
        assert "groups: %s" % OPERATORS in lines, out
    else:
        assert res.returncode == 1 and lines[:2] == ["decision: deny", "rule: none"], (out, res.stderr)
        assert "no [[allow]] rule lets %s reach target adweb" % PEOPLE[name][0] in out, out
        assert "groups: none of those the rules name" in lines, out
    assert arrivals(lab.h)[web:] == []


def test_a_removed_member_is_refused_at_her_next_logon(lab: AdLab, samba: samba_ad.SambaDomain) -> None:
    """Membership is read at logon: alice out of WinRM-Operators, her next logon (NTLM and Kerberos) is refused."""
    assert ntlm_run("alice")[2] == 0
    samba.remove_members("WinRM-Operators", "alice")
    try:
        seen, web = len(lab.relay.events()), len(arrivals(lab.h))
        _check_outcome(lab, "bob", "ntlm", lambda: ntlm_run("bob"), seen, web)  # unchanged
        for attempt, auth in ((lambda: ntlm_run("alice"), "ntlm"), (lambda: pypsrp_run("alice"), "kerberos")):
            seen, web = len(lab.relay.events()), len(arrivals(lab.h))
            with pytest.raises(Exception):
                attempt()
            events = lab.relay.events()[seen:]
            starts = _session_starts(events, "LAB\\alice")
            assert starts and starts[0]["auth"] == auth and starts[0]["groups"] == [], events
            assert [e for e in events if e["event"] == "denied"], events
            assert arrivals(lab.h)[web:] == []
    finally:
        samba.add_members("WinRM-Operators", "alice")
    assert ntlm_run("alice")[2] == 0


def _readyz() -> typing.Tuple[int, str]:
    try:
        with urllib.request.urlopen("http://%s/readyz" % METRICS, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_directory_down_group_rules_deny_with_the_reason_user_rules_work(lab: AdLab,
                                                                        samba: samba_ad.SambaDomain) -> None:
    """The DC stopped: alice's group rule cannot grant (the denial names the directory and its error), bob's user
    rule still works, /readyz names the directory; nothing of alice's reaches the double. Then the DC again."""
    assert wait_for(lambda: _readyz()[0] == 200, 15), _readyz()
    samba.stop_server()
    try:
        seen, web = len(lab.relay.events()), len(arrivals(lab.h))
        with pytest.raises(Exception):
            ntlm_run("alice")
        events = lab.relay.events()[seen:]
        starts = _session_starts(events, "LAB\\alice")
        assert starts and "groups" not in starts[0], events
        assert "group membership unknown: directory unreachable: ldaps://127.0.0.150:636" in starts[0]["reason"]
        denied = [e for e in events if e["event"] == "denied"]
        assert denied, events
        reason = denied[0]["reason"]
        assert "rule %d (groups LAB\\WinRM-Operators)" % GROUP_RULE in reason, reason
        assert "ldaps://127.0.0.150:636: connect" in reason, reason
        assert arrivals(lab.h)[web:] == []
        assert ntlm_run("bob", "adhelp")[0] == b"ad-bob\n"
        status, body = _readyz()
        assert status == 503 and "group rules cannot be checked: directory unreachable: ldaps://127.0.0.150:636" \
            in body, body
    finally:
        samba.start_server()
    assert wait_for(lambda: _readyz()[0] == 200, 30), _readyz()
    assert ntlm_run("alice")[2] == 0
