"""Issue 19: Ansible's winrm and psrp connections under a command policy. A relay of its own on 127.0.0.198 in front
of the shared web01 double: bob's rule has no command policy, alice's lists `hostname` (cmd line and cmdlet). The
tests run the real `ansible` ad-hoc command with an inventory they write, and assert what the relay forwarded or
refused (its audit), what the double received (its log) and what Ansible reported.

What they can still do under a policy: the winrm connection sends a raw command as `PowerShell ... -EncodedCommand`,
judged by its decoded script, so a raw command the policy lists runs. Everything else is refused: the psrp connection
appends `exit $LASTEXITCODE` to a raw command (a keyword and a variable), a module is Ansible's bootstrap wrapper
(script text starting with the call operator `&`), and over winrm that wrapper is encoded twice, so the script the
relay reads calls `PowerShell`.

What the double cannot answer is left failing at the Ansible level: it has no PowerShell, so a `powershell
-EncodedCommand` line ends with sh's 127 and a module's wrapper returns no result JSON."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import typing

import pytest

import harness
from helpers import ALICE, BOB, USERS, double_records, user_is, wait_for

ANSIBLE_RELAY = "127.0.0.198"

RULES = r"""
[[allow]]
users = ['LAB\alice']
targets = ["web01"]
shells = ["cmd", "powershell"]
commands = ["hostname"]
cmdlets = ["hostname"]

[[allow]]
users = ['LAB\bob']
targets = ["web01"]
shells = ["cmd", "powershell"]
"""

# A PowerShell module of the test's own. The #Requires line makes it a "new style" module, as every Windows module
# is: Ansible then pipes it to its bootstrap wrapper instead of copying a file over.
PROBE_MODULE = """#!powershell
#Requires -Version 3.0
@{ changed = $false; probe = 'relay' } | ConvertTo-Json
"""

# What Ansible's powershell shell puts before -EncodedCommand (its shell plugin's common arguments).
ENCODED_PREFIX = "PowerShell -NoProfile -NonInteractive -ExecutionPolicy Unrestricted -EncodedCommand "

WRAPPER_REFUSED = "the call operator or a background/chain operator (&) at line 1, column 1"
WINRM_WRAPPER_REFUSED = "is refused: PowerShell is not in allow[0]'s cmdlets"


def with_rules(config: str) -> str:
    return config[:config.index("[[allow]]")] + RULES


@pytest.fixture(scope="module")
def ansible_relay(relay: harness.Harness) -> typing.Iterator[harness.ExtraRelay]:
    extra = harness.ExtraRelay(relay, ANSIBLE_RELAY, edit=with_rules)
    try:
        yield extra
    finally:
        extra.stop()


def connection_vars(connection: str) -> dict:
    if connection == "winrm":
        return {"ansible_connection": "winrm", "ansible_winrm_scheme": "http", "ansible_winrm_path": "/wsman/web01",
                "ansible_winrm_transport": "credssp", "ansible_winrm_server_cert_validation": "ignore",
                "ansible_winrm_message_encryption": "always"}
    return {"ansible_connection": "psrp", "ansible_psrp_protocol": "http", "ansible_psrp_path": "wsman/web01",
            "ansible_psrp_auth": "credssp", "ansible_psrp_cert_validation": "ignore"}


def ansible(tmp_path: typing.Any, connection: str, user: str, module: str, args: str = "") -> dict:
    """Runs `ansible web01 -m MODULE -a ARGS` through the relay as `user`; returns its exit code, its output and the
    host's result as Ansible's tree callback wrote it."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="%s-%s-%s-" % (connection, user.split("\\")[-1], module),
                                         dir=str(tmp_path)))
    library = work / "library"
    library.mkdir()
    (library / "relay_probe.ps1").write_text(PROBE_MODULE)
    host = {"ansible_host": ANSIBLE_RELAY, "ansible_port": 5985, "ansible_user": user, "ansible_password": USERS[user]}
    host.update(connection_vars(connection))
    inventory = work / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {"web01": host}}}))
    tree = work / "tree"
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible"), "web01", "-i", str(inventory),
            "-M", str(library), "-t", str(tree), "-m", module]
    if args:
        argv += ["-a", args]
    # An empty configuration of its own: nothing from the machine's ansible.cfg or ~/.ansible.
    (work / "ansible.cfg").write_text("")
    env = harness.scrubbed_env({
        "ANSIBLE_CONFIG": str(work / "ansible.cfg"), "ANSIBLE_HOME": str(work / "home"),
        "ANSIBLE_LOCAL_TEMP": str(work / "tmp"),
        "ANSIBLE_NOCOLOR": "1", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
    })
    done = subprocess.run(argv, capture_output=True, env=env, cwd=str(work), timeout=170)
    out = done.stdout.decode("utf-8", "replace") + done.stderr.decode("utf-8", "replace")
    result_file = tree / "web01"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return {"rc": done.returncode, "out": out, "result": result}


def web01_since(h: harness.Harness, n: int) -> typing.List[dict]:
    return [r for r in double_records(h, "web01")[n:] if r.get("event") == "request"]


def commands_run(recs: typing.List[dict]) -> typing.List[str]:
    """What reached the double to be run: cmd lines, and the commands of PowerShell pipelines (a script as its
    text)."""
    lines = [r["command"] for r in recs if r.get("action") == "Command" and "command" in r]
    return lines + [c["line"] for r in recs for p in r.get("ran", []) for c in p["commands"]]


def decoded(line: str) -> str:
    assert line.startswith(ENCODED_PREFIX), line
    return base64.b64decode(line[len(ENCODED_PREFIX):]).decode("utf-16-le")


def bootstrap_wrapper() -> str:
    """Ansible's bootstrap wrapper as its powershell shell sends it: each line stripped, blank lines left out."""
    import ansible.executor.powershell as ps

    with open(os.path.join(os.path.dirname(ps.__file__), "bootstrap_wrapper.ps1")) as fh:
        return "\n".join(line.strip() for line in fh.read().splitlines() if line.strip())


def events_since(extra: harness.ExtraRelay, n: int, event: str) -> typing.List[dict]:
    return [e for e in extra.events()[n:] if e.get("event") == event]


def sessions_ended(extra: harness.ExtraRelay, n: int, runs: int) -> typing.List[dict]:
    """The audit lines after the n-th, once the sessions of `runs` Ansible runs have ended (Ansible has exited, so
    every request it made has been answered and audited)."""
    got = wait_for(lambda: len(events_since(extra, n, "session_end")) >= runs and extra.events()[n:], 10)
    assert got, "fewer than %d session_end lines after Ansible ran%s" % (runs, extra.excerpt())
    return got


@pytest.mark.parametrize("connection", ["winrm", "psrp"])
def test_without_a_command_policy_ansible_reaches_the_double(relay: harness.Harness, tmp_path: typing.Any,
                                                            ansible_relay: harness.ExtraRelay,
                                                            connection: str) -> None:
    """bob's rule has no command policy: a raw command and a module's wrapper are forwarded as Ansible sent them."""
    n_double, n_audit = len(double_records(relay, "web01")), len(ansible_relay.events())
    raw = ansible(tmp_path, connection, BOB, "raw", "hostname")
    probe = ansible(tmp_path, connection, BOB, "relay_probe")
    events = sessions_ended(ansible_relay, n_audit, 2)
    assert not [e for e in events if e.get("event") == "denied"], events
    recs = web01_since(relay, n_double)
    assert all(user_is(r.get("user"), BOB) for r in recs), recs
    ran = commands_run(recs)
    wrapper = bootstrap_wrapper()
    if connection == "winrm":
        # Every command is a cmd line starting PowerShell with the script encoded; the wrapper's module follows on
        # stdin (Sends). The double has no PowerShell: sh answers 127.
        assert len(ran) == 2 and decoded(ran[0]) == "hostname", ran
        # The module's command line is encoded twice: the shell plugin encodes the wrapper, the connection encodes
        # that command line again.
        assert decoded(decoded(ran[1])) == wrapper, ran
        assert [r for r in recs if r.get("action") == "Send"], recs
        assert raw["rc"] == 2 and raw["result"].get("rc") == 127, raw
    else:
        # psrp runs the raw command as script text with its exit code appended, and the wrapper as a script; the
        # double runs script text under sh, so the raw command succeeds.
        assert ran == ["hostname\nexit $LASTEXITCODE", wrapper], ran
        assert raw["rc"] == 0 and raw["result"].get("rc") == 0, raw
        assert raw["result"].get("stdout", "").strip() == socket.gethostname(), raw
    # The module's result never comes back (the wrapper needs PowerShell): Ansible reports it failed.
    assert probe["rc"] == 2 and "web01 | FAILED" in probe["out"], probe


def test_winrm_under_a_command_policy_runs_listed_raw_commands_only(relay: harness.Harness, tmp_path: typing.Any,
                                                                  ansible_relay: harness.ExtraRelay) -> None:
    """The winrm connection sends a raw command as `PowerShell ... -EncodedCommand`, which the relay judges by its
    decoded script under `cmdlets`: a listed command is forwarded, anything else and the module wrapper are
    refused."""
    n_double, n_audit = len(double_records(relay, "web01")), len(ansible_relay.events())
    allowed = ansible(tmp_path, "winrm", ALICE, "raw", "hostname")
    events = sessions_ended(ansible_relay, n_audit, 1)
    assert not [e for e in events if e.get("event") == "denied"], events
    ran = commands_run(web01_since(relay, n_double))
    assert [decoded(line) for line in ran] == ["hostname"], ran
    assert allowed["rc"] == 2 and allowed["result"].get("rc") == 127, allowed

    n_double, n_audit = len(double_records(relay, "web01")), len(ansible_relay.events())
    unlisted = ansible(tmp_path, "winrm", ALICE, "raw", "whoami")
    probe = ansible(tmp_path, "winrm", ALICE, "relay_probe")
    events = sessions_ended(ansible_relay, n_audit, 2)
    denied = [e for e in events if e.get("event") == "denied"]
    assert len(denied) == 2, events
    assert all(user_is(d.get("user"), ALICE) and d.get("target") == "web01" and d.get("action") == "Command"
               for d in denied), denied
    assert decoded(denied[0].get("command", "")) == "whoami", denied[0]
    assert "whoami is not in allow[0]'s cmdlets" in denied[0].get("reason", ""), denied[0]
    # The module's line runs PowerShell with a script that is itself `PowerShell ... -EncodedCommand <wrapper>`: the
    # relay reads that outer script as a call of PowerShell, which the policy does not list.
    assert decoded(decoded(denied[1].get("command", ""))) == bootstrap_wrapper(), denied[1]
    assert denied[1].get("reason", "").endswith(WINRM_WRAPPER_REFUSED), denied[1]
    # Nothing reached the double: no command line, no input.
    recs = web01_since(relay, n_double)
    assert not [r for r in recs if r.get("action") in ("Command", "Send")], recs
    # Ansible reports each refusal as a failed task with the relay's fault.
    for res, why in ((unlisted, "whoami is not in allow[0]'s cmdlets"), (probe, WINRM_WRAPPER_REFUSED)):
        assert res["rc"] == 2 and "web01 | FAILED" in res["out"], res
        assert why in res["result"].get("msg", ""), res


def test_psrp_under_a_command_policy_runs_nothing(relay: harness.Harness, tmp_path: typing.Any,
                                                  ansible_relay: harness.ExtraRelay) -> None:
    """The psrp connection appends `exit $LASTEXITCODE` to a raw command, and a module is its wrapper script:
    neither reads as plain commands, so under a `cmdlets` policy nothing Ansible sends runs."""
    n_double, n_audit = len(double_records(relay, "web01")), len(ansible_relay.events())
    raw = ansible(tmp_path, "psrp", ALICE, "raw", "hostname")
    probe = ansible(tmp_path, "psrp", ALICE, "relay_probe")
    events = sessions_ended(ansible_relay, n_audit, 2)
    denied = [e for e in events if e.get("event") == "denied"]
    assert len(denied) == 2, events
    assert all(user_is(d.get("user"), ALICE) and d.get("target") == "web01" for d in denied), denied
    assert denied[0].get("command") == "hostname\nexit $LASTEXITCODE", denied[0]
    assert "the keyword exit at line 2, column 1" in denied[0].get("reason", ""), denied[0]
    assert denied[1].get("command") == bootstrap_wrapper(), denied[1]
    assert WRAPPER_REFUSED in denied[1].get("reason", ""), denied[1]
    # Nothing reached the double: no pipeline (a CREATE_PIPELINE travels in a Command), no input.
    recs = web01_since(relay, n_double)
    assert not [r for r in recs if r.get("action") in ("Command", "Send")] and commands_run(recs) == [], recs
    for res, why in ((raw, "the keyword exit"), (probe, WRAPPER_REFUSED)):
        assert res["rc"] == 2 and "web01 | FAILED" in res["out"], res
        assert "Received a WSManFault message. (Code: 5, Machine: winrm-relay" in res["result"].get("msg", ""), res
        assert why in res["result"].get("msg", ""), res
