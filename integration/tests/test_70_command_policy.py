"""Issue 19: a command policy at the relay (commands, cmdlets, methods), checked before anything reaches the
target. A relay of its own on 127.0.0.140 in front of the shared web01 double: alice may run listed cmd lines,
listed PowerShell commands and read Win32_Service (StopService invocable); bob may also invoke its Create. Every
refusal is an AccessDenied fault naming the command and the rule, a `denied` audit line with the command as sent,
and nothing in the double's log."""

from __future__ import annotations

import re
import subprocess
import typing
import uuid

import pytest
from winrm.exceptions import WSManFaultError

import harness
from helpers import ALICE, BOB, USERS, double_records, err_text, user_is, wait_for

POLICY_RELAY = "127.0.0.140"
WIN32_SERVICE = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_Service"

RULES = r"""
[[allow]]
users = ['LAB\alice']
targets = ["web01"]
shells = ["cmd", "powershell", "%(wmi)s"]
commands = ["echo allowed-*", "hostname"]
cmdlets = ["Get-Service", "Restart-Service -Name Spooler|W32Time", "Write-Output"]
methods = ["StopService"]

[[allow]]
users = ['LAB\bob']
targets = ["web01"]
shells = ["%(wmi)s"]
methods = ["StopService", "Create"]
""" % {"wmi": WIN32_SERVICE}


def with_policy(config: str) -> str:
    """The shared relay's config with its rules replaced by RULES."""
    return config[:config.index("[[allow]]")] + RULES


@pytest.fixture(scope="module")
def policy_relay(relay: harness.Harness) -> typing.Iterator[harness.ExtraRelay]:
    extra = harness.ExtraRelay(relay, POLICY_RELAY, edit=with_policy)
    try:
        yield extra
    finally:
        extra.stop()


def ran_lines(pipeline: dict) -> typing.List[str]:
    """The commands of one pipeline the double ran, each as one line (a script as its text)."""
    return [c["line"] for c in pipeline["commands"]]


def web01_since(h: harness.Harness, n: int) -> typing.List[dict]:
    return [r for r in double_records(h, "web01")[n:] if r.get("event") == "request"]


def denied_since(extra: harness.ExtraRelay, n: int, count: int) -> typing.List[dict]:
    """The first `count` denied audit lines after the n-th event, once they are written."""
    def denied() -> typing.Optional[typing.List[dict]]:
        lines = [e for e in extra.events()[n:] if e.get("event") == "denied"]
        return lines if len(lines) >= count else None

    got = wait_for(denied, 10)
    assert got, "fewer than %d denied audit lines%s" % (count, extra.excerpt())
    return got


def assert_access_denied(e: WSManFaultError, *words: str) -> None:
    text = err_text(e)
    assert (e.fault_subcode or "").endswith("AccessDenied"), text
    for w in words:
        assert w in text, (w, text)


# -- cmd

def test_cmd_lines_run_only_as_listed(relay: harness.Harness, policy_relay: harness.ExtraRelay) -> None:
    n_double, n_audit = len(double_records(relay, "web01")), len(policy_relay.events())
    p = policy_relay.protocol()
    sid = p.open_shell()
    cid = p.run_command(sid, "echo", ["allowed-1"])
    assert p.get_command_output(sid, cid) == (b"allowed-1\n", b"", 0), policy_relay.excerpt()
    p.cleanup_command(sid, cid)
    refused = [
        ("whoami", [], "matches none of allow[0]'s commands"),
        ("echo", ["allowed-2", "&", "whoami"], "'&'"),
        ("echo", ["allowed-3", "|", "cat"], "'|'"),
        ("echo allowed-4 & whoami", [], "'&'"),
    ]
    for command, args, why in refused:
        with pytest.raises(WSManFaultError) as ei:
            p.run_command(sid, command, args)
        assert_access_denied(ei.value, why, "allow[0]")
    # Input to a shell under a command policy: refused before the target sees it.
    cid = p.run_command(sid, "echo", ["allowed-5"])
    with pytest.raises(WSManFaultError) as ei:
        p.send_command_input(sid, cid, "whoami\r\n")
    assert_access_denied(ei.value, "input to a shell under a command policy is refused (allow[0])")
    p.cleanup_command(sid, cid)
    p.close_shell(sid)

    denied = denied_since(policy_relay, n_audit, 5)
    assert [d.get("command") for d in denied[:4]] == [
        "whoami", "echo allowed-2 & whoami", "echo allowed-3 | cat", "echo allowed-4 & whoami"], denied
    assert all(user_is(d.get("user"), ALICE) and d.get("target") == "web01" for d in denied), denied
    assert denied[4].get("action") == "Send", denied[4]
    # The double saw the two allowed lines and nothing else: no refused command, no input.
    recs = web01_since(relay, n_double)
    assert [r["command"] for r in recs if r.get("action") == "Command"] == ["echo allowed-1", "echo allowed-5"], recs
    assert not [r for r in recs if r.get("action") == "Send"], recs


# -- WMI/CIM

def wmi_envelope(url: str, action: str, body: str, selectors: str = "") -> str:
    return (
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><s:Header>'
        "<a:To>%s</a:To><a:ReplyTo><a:Address s:mustUnderstand=\"true\">"
        "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo>"
        '<a:Action s:mustUnderstand="true">%s</a:Action><a:MessageID>uuid:%s</a:MessageID>'
        '<w:ResourceURI s:mustUnderstand="true">%s</w:ResourceURI>'
        '<w:MaxEnvelopeSize s:mustUnderstand="true">153600</w:MaxEnvelopeSize>'
        "<w:OperationTimeout>PT20S</w:OperationTimeout>%s</s:Header><s:Body>%s</s:Body></s:Envelope>"
        % (url, action, uuid.uuid4(), WIN32_SERVICE, selectors, body)
    )


SPOOLER = '<w:SelectorSet><w:Selector Name="Name">Spooler</w:Selector></w:SelectorSet>'
GET = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get"
CREATE_INPUT = ('<p:Create_INPUT xmlns:p="%s"><p:Name>evil</p:Name>'
                "<p:PathName>cmd.exe /c net localgroup administrators eve /add</p:PathName></p:Create_INPUT>"
                % WIN32_SERVICE)


def test_wmi_reads_and_listed_methods_only(relay: harness.Harness, policy_relay: harness.ExtraRelay) -> None:
    n_double, n_audit = len(double_records(relay, "web01")), len(policy_relay.events())
    url = policy_relay.url()
    alice = policy_relay.protocol()
    got = alice.send_message(wmi_envelope(url, GET, "", SPOOLER))
    assert b"<p:State>Running</p:State>" in got, got
    stopped = alice.send_message(wmi_envelope(url, WIN32_SERVICE + "/StopService",
                                              '<p:StopService_INPUT xmlns:p="%s"/>' % WIN32_SERVICE, SPOOLER))
    assert b"<p:ReturnValue>0</p:ReturnValue>" in stopped, stopped
    with pytest.raises(WSManFaultError) as ei:
        alice.send_message(wmi_envelope(url, WIN32_SERVICE + "/Create", CREATE_INPUT))
    assert_access_denied(ei.value, "method Create of %s is not in allow[0]'s methods" % WIN32_SERVICE)
    with pytest.raises(WSManFaultError) as ei:
        alice.send_message(wmi_envelope(url, "http://schemas.xmlsoap.org/ws/2004/09/transfer/Put", "", SPOOLER))
    assert_access_denied(ei.value, "wmi_writes = true")
    # bob's rule lists Create.
    bob = policy_relay.protocol(user=BOB)
    created = bob.send_message(wmi_envelope(url, WIN32_SERVICE + "/Create", CREATE_INPUT))
    assert b"<p:ReturnValue>0</p:ReturnValue>" in created, created

    denied = denied_since(policy_relay, n_audit, 2)
    assert [d.get("action") for d in denied] == ["Create", "Put"], denied
    recs = web01_since(relay, n_double)
    assert [(r.get("user", "").lower(), r.get("wmi")) for r in recs] == [
        (ALICE.lower(), "Get"), (ALICE.lower(), "StopService"), (BOB.lower(), "Create")], recs


# -- PowerShell (pypsrp: API pipelines and script text)

def psrp_pool(extra: harness.ExtraRelay):
    from pypsrp.powershell import RunspacePool
    from pypsrp.wsman import WSMan

    wsman = WSMan(extra.host, port=5985, path="wsman/web01", auth="credssp", ssl=False, username=ALICE,
                  password=USERS[ALICE], cert_validation=False)
    return wsman, RunspacePool(wsman)


def test_powershell_pipelines_run_only_as_listed(relay: harness.Harness, policy_relay: harness.ExtraRelay) -> None:
    from pypsrp.exceptions import WSManFaultError as PsrpFaultError
    from pypsrp.powershell import PowerShell

    n_double, n_audit = len(double_records(relay, "web01")), len(policy_relay.events())
    allowed = [
        lambda ps: ps.add_cmdlet("Get-Service"),
        lambda ps: ps.add_cmdlet("Restart-Service").add_parameter("Name", "Spooler"),
        lambda ps: ps.add_cmdlet("Write-Output").add_argument("policy-ok"),
        lambda ps: ps.add_script("Get-Service"),
        lambda ps: ps.add_script("Restart-Service -Name Spooler"),
    ]
    refused = [
        (lambda ps: ps.add_cmdlet("Restart-Service").add_parameter("Name", "WinRM"),
         "Restart-Service -Name:WinRM is refused: allow[0] allows it only as"),
        (lambda ps: ps.add_cmdlet("Stop-Computer"), "Stop-Computer is not in allow[0]'s cmdlets"),
        (lambda ps: ps.add_script("Restart-Service -Name WinRM"), "allows it only as"),
        (lambda ps: ps.add_script("Get-Service; Stop-Computer"), "Stop-Computer is not in allow[0]'s cmdlets"),
        (lambda ps: ps.add_script("Invoke-Expression 'Stop-Computer'"), "Invoke-Expression is not in"),
        (lambda ps: ps.add_script("$x = 'Spooler'; Restart-Service -Name $x"), "a variable or subexpression ($)"),
        (lambda ps: ps.add_script("Get-Service | ForEach-Object { Stop-Computer }"), "a script block ({})"),
    ]
    wsman, pool = psrp_pool(policy_relay)
    with wsman, pool:
        outputs = []
        for build in allowed:
            ps = PowerShell(pool)
            build(ps)
            outputs.append(ps.invoke())
        assert ["policy-ok"] in [[str(o) for o in out] for out in outputs], outputs
        for build, why in refused:
            ps = PowerShell(pool)
            build(ps)
            with pytest.raises(PsrpFaultError) as ei:
                ps.invoke()
            assert ei.value.code == 5 and why in (ei.value.reason or ""), (why, ei.value.args)

    denied = denied_since(policy_relay, n_audit, len(refused))
    assert all(d.get("action") == "Command" and user_is(d.get("user"), ALICE) for d in denied), denied
    assert "Restart-Service -Name WinRM" in denied[0].get("command", ""), denied[0]
    assert "Stop-Computer" in denied[1].get("command", ""), denied[1]
    ran = [c for r in web01_since(relay, n_double) for p in r.get("ran", []) for c in ran_lines(p)]
    assert ran == ["Get-Service", "Restart-Service -Name Spooler", "Write-Output policy-ok", "Get-Service",
                   "Restart-Service -Name Spooler"], ran
    assert not [c for c in ran if re.search(r"WinRM|Stop-Computer|Invoke-Expression|\$x", c)], ran


# -- policy test

def test_policy_test_says_decision_rule_and_reason(policy_relay: harness.ExtraRelay) -> None:
    def policy_test(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([harness.relay_binary(), "policy", "test", "--config", policy_relay.config,
                               "--user", ALICE, "--target", "web01"] + list(args), capture_output=True,
                              env=harness.scrubbed_env(), cwd=policy_relay.dir, timeout=60)

    res = policy_test("--shell", "powershell", "--", "Restart-Service -Name WinRM")
    out = res.stdout.decode()
    assert res.returncode == 1, (out, res.stderr.decode())
    assert out.splitlines()[:2] == ["decision: deny", "rule: allow[0]"], out
    assert "reason: Restart-Service -Name WinRM is refused" in out, out
    res = policy_test("--shell", "powershell", "--", "Restart-Service -Name Spooler")
    assert res.returncode == 0 and res.stdout.decode().startswith("decision: allow\nrule: allow[0]\n"), res
    res = policy_test("--", "echo allowed-1 & whoami")
    assert res.returncode == 1 and "holds cmd's '&'" in res.stdout.decode(), res


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "compressed"])
def test_a_pipeline_continued_in_sends_is_judged_whole(relay: harness.Harness, policy_relay: harness.ExtraRelay,
                                                       compress: bool) -> None:
    """With an 8 KiB envelope pypsrp sends a long script's CREATE_PIPELINE in the Command and then Sends: the
    relay forwards the first pieces (nothing can run from them) and refuses the Send that completes a refused
    pipeline; the pool goes on with the next one. `compressed`: the same fence for a client that compresses as
    Windows does (windows_client: Xpress in the Create, every Send stream compressed), the relay judging what
    the Sends hold once decompressed."""
    from pypsrp.exceptions import WSManFaultError as PsrpFaultError
    from pypsrp.powershell import PowerShell, RunspacePool
    from pypsrp.wsman import WSMan

    import windows_client

    n_double, n_audit = len(double_records(relay, "web01")), len(policy_relay.events())
    padding = "".join("# padding line %04d to push the end of this script past the Command\n" % i
                      for i in range(250))
    client = windows_client.xpress_wsman_class() if compress else WSMan
    wsman = client(policy_relay.host, port=5985, path="wsman/web01", auth="credssp", ssl=False, username=ALICE,
                   password=USERS[ALICE], cert_validation=False, max_envelope_size=8192)
    with wsman, RunspacePool(wsman) as pool:
        if compress:
            assert wsman.compressed_shells, "the double did not negotiate compression"
        ps = PowerShell(pool)
        ps.add_script(padding + "Get-Service\nStop-Computer\n")
        with pytest.raises(PsrpFaultError) as ei:
            ps.invoke()
        assert ei.value.code == 5 and "Stop-Computer is not in allow[0]'s cmdlets" in (ei.value.reason or ""), \
            ei.value.args
        ps = PowerShell(pool)
        ps.add_script(padding + "Write-Output split-ok\n")
        ps.invoke()
    if compress:
        # Sends really went compressed: fewer bytes on the wire than in the streams.
        assert wsman.sent and all(packed < raw for raw, packed in wsman.sent if raw > 1024), wsman.sent

    recs = web01_since(relay, n_double)
    sends = [r for r in recs if r.get("action") == "Send"]
    assert sends, "the scripts did not continue in Sends: %s" % recs
    ran = [c for r in recs for p in r.get("ran", []) for c in ran_lines(p)]
    assert len(ran) == 1 and ran[0].endswith("Write-Output split-ok\n"), ran
    assert not [c for c in ran if "Stop-Computer" in c], ran
    denied = denied_since(policy_relay, n_audit, 1)
    # The line holds the script as sent (its first 4 KiB) and the reason names the refused command.
    assert denied[0].get("action") == "Send", denied[0]
    assert denied[0].get("command", "").startswith("# padding line 0000"), denied[0]
    assert "Stop-Computer is not in allow[0]'s cmdlets" in denied[0].get("reason", ""), denied[0]
