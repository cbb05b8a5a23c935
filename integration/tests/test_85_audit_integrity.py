"""Issue 12: session transcripts (cmd through pywinrm, a PowerShell pipeline through pypsrp and the PSRP double),
`audit show|list|verify`, the tamper-evident chain across restarts and rotation, syslog export (TCP, UDP, unix) as
RFC 5424, Prometheus metrics and health checks, JSON logs. Relays of their own on 127.0.0.160-179."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import typing
import urllib.request
import uuid

import pytest

import harness
from helpers import ALICE, BOB, USERS, wait_for

RELAY_A = "127.0.0.160"  # transcripts, syslog over TCP, metrics
SYSLOG_TCP = ("127.0.0.161", 6514)
RELAY_B = "127.0.0.163"  # keyed chain, small transcript cap, syslog over UDP
SYSLOG_UDP = ("127.0.0.164", 5514)
RELAY_C = "127.0.0.166"  # syslog to a unix socket, --log-format json
METRICS = (RELAY_A, 9985)
CAP = 4096
SHELL_QUOTA = 3

# <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG
RFC5424 = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (-|\[.*?\]) (.*)$", re.S)


class SyslogReceiver:
    """Collects syslog messages: UDP datagrams, octet-counted TCP frames, or unix datagrams; each parsed as RFC 5424."""

    def __init__(self, kind: str, address: typing.Any):
        self.kind = kind
        self.messages: typing.List[dict] = []
        self.errors: typing.List[bytes] = []
        family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
        sock_type = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
        self.sock = socket.socket(family, sock_type)
        self.sock.bind(address)
        if kind == "tcp":
            self.sock.listen(4)
        self.sock.settimeout(0.5)
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _parse(self, raw: bytes) -> None:
        m = RFC5424.match(raw)
        if not m:
            self.errors.append(raw)
            return
        pri, ts, host, app, pid, msgid, sd, msg = m.groups()
        self.messages.append({"pri": int(pri), "time": ts.decode(), "host": host.decode(), "app": app.decode(),
                              "pid": pid.decode(), "msgid": msgid.decode(), "sd": sd, "msg": msg})

    def _run(self) -> None:
        while not self.stopped:
            try:
                if self.kind == "tcp":
                    conn, _ = self.sock.accept()
                    threading.Thread(target=self._read_stream, args=(conn,), daemon=True).start()
                else:
                    self._parse(self.sock.recv(262144))
            except socket.timeout:
                continue
            except OSError:
                return

    def _read_stream(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(0.5)
        while not self.stopped:
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while True:
                m = re.match(rb"(\d+) ", buf)
                if not m or len(buf) < m.end() + int(m.group(1)):
                    break
                n = int(m.group(1))
                self._parse(buf[m.end():m.end() + n])
                buf = buf[m.end() + n:]

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()


def cli(h: harness.Harness, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([h.relay_bin] + list(args), capture_output=True, timeout=60, env=harness.scrubbed_env(),
                          stdin=subprocess.DEVNULL)


def session_end(extra: harness.ExtraRelay, session: str) -> typing.Optional[dict]:
    ends = [e for e in extra.events() if e["event"] == "session_end" and e.get("session") == session]
    return ends[-1] if ends else None


def sessions_of(extra: harness.ExtraRelay, marker: str) -> str:
    """The session whose audited Command carried `marker`."""
    found = [e["session"] for e in extra.events() if e.get("action") == "Command" and marker in str(e.get("command"))]
    assert found, "no audited command with %s%s" % (marker, extra.excerpt())
    return found[-1]


def records(path: str) -> typing.List[dict]:
    return harness.read_jsonl(path)


def transcript_of(extra: harness.ExtraRelay, session: str) -> str:
    names = [n for n in os.listdir(extra.transcripts) if n.endswith("Z-%s.jsonl" % session)]
    assert len(names) == 1, (session, os.listdir(extra.transcripts))
    return os.path.join(extra.transcripts, names[0])


def output_of(recs: typing.List[dict], command_id: str, kind: str) -> bytes:
    import base64

    out = b""
    for r in recs:
        if r["type"] == kind and r.get("command_id") == command_id:
            out += r["text"].encode() if "text" in r else base64.b64decode(r["base64"])
    return out


def fetch(path: str) -> typing.Tuple[int, str]:
    try:
        with urllib.request.urlopen("http://%s:%d%s" % (METRICS[0], METRICS[1], path), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def tcp_syslog():
    r = SyslogReceiver("tcp", SYSLOG_TCP)
    yield r
    r.stop()


@pytest.fixture(scope="module")
def relay_a(relay, tcp_syslog):
    harness.scrub_proxies_in_process()
    extra = harness.ExtraRelay(relay, RELAY_A,
                               audit_extra='syslog = "tcp://%s:%d"' % SYSLOG_TCP,
                               tail='[metrics]\nlisten = "%s:%d"\n[limits]\nmax_shells_per_user = %d\n'
                               % (METRICS[0], METRICS[1], SHELL_QUOTA))
    yield extra
    extra.stop()


def close(p: typing.Any) -> None:
    p.transport.close_session()


def test_cmd_transcript_holds_exact_output_stdin_and_exit_code_and_audit_show_prints_it(relay, relay_a):
    marker = "tx-%s" % uuid.uuid4().hex[:8]
    p = relay_a.protocol()
    sid = p.open_shell()
    cid = p.run_command(sid, "printf", ["'%s\\nsecond line \\303\\251\\n'" % marker])
    out, err, rc = p.get_command_output(sid, cid)
    p.cleanup_command(sid, cid)
    cid2 = p.run_command(sid, "sh", ["-c", "'cat; echo to-stderr >&2; exit 3'"])
    p.send_command_input(sid, cid2, "typed into stdin\n", end=True)
    out2, err2, rc2 = p.get_command_output(sid, cid2)
    p.cleanup_command(sid, cid2)
    p.close_shell(sid, close_session=False)
    close(p)
    assert (out, rc) == (("%s\nsecond line é\n" % marker).encode(), 0)
    assert (out2, err2, rc2) == (b"typed into stdin\n", b"to-stderr\n", 3)

    session = sessions_of(relay_a, marker)
    end = wait_for(lambda: session_end(relay_a, session), 10)
    assert end and end.get("transcript") and end.get("transcript_sha256"), end
    path = transcript_of(relay_a, session)
    assert os.path.basename(path) == end["transcript"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    recs = records(path)
    assert recs[0]["type"] == "session" and recs[0]["user"].lower() == ALICE.lower() and recs[0]["session"] == session
    assert recs[0]["source"].startswith("127.")
    assert [r["target"] for r in recs if r["type"] == "target"] == ["web01"]
    commands = [r for r in recs if r["type"] == "command"]
    assert len(commands) == 2 and marker in commands[0]["command"] and commands[1]["command"].startswith("sh -c")
    c1, c2 = commands[0]["command_id"], commands[1]["command_id"]
    # Exactly what the client received, byte for byte.
    assert output_of(recs, c1, "stdout") == out
    assert output_of(recs, c2, "stdin") == b"typed into stdin\n"
    assert output_of(recs, c2, "stdout") == out2 and output_of(recs, c2, "stderr") == err2
    assert [r["exit_code"] for r in recs if r["type"] == "exit"] == [0, 3]
    kinds = [r["type"] for r in recs]
    assert kinds[-1] == "end" and kinds.index("command") < kinds.index("stdout") < kinds.index("exit"), kinds
    # Times are in order.
    times = [r["time"] for r in recs]
    assert times == sorted(times)

    shown = cli(relay, "audit", "show", session, "--config", relay_a.config)
    text = shown.stdout.decode()
    assert shown.returncode == 0, shown.stderr.decode() + text
    assert "user       %s" % recs[0]["user"] in text and "targets    web01" in text, text
    assert "web01 $ printf" in text and marker + "\nsecond line é\n" in text, text
    assert "stdin| typed into stdin\n" in text and "stderr| to-stderr\n" in text and "exit code 3" in text, text
    assert "matches the audit log's session_end" in text, text
    shown = cli(relay, "audit", "show", session, "--config", relay_a.config, "--json")
    doc = json.loads(shown.stdout)
    assert doc["audit_log_binding"] == "matches" and doc["user"] == recs[0]["user"]
    assert doc["commands"][0]["stdout"] == out.decode() and doc["commands"][1]["exit_code"] == 3

    listed = cli(relay, "audit", "list", "--config", relay_a.config, "--target", "web01", "--json")
    assert session in [s["session"] for s in json.loads(listed.stdout)], listed.stdout
    listed = cli(relay, "audit", "list", "--config", relay_a.config, "--user", "LAB\\bob")
    assert listed.returncode == 0 and session not in listed.stdout.decode()
    listed = cli(relay, "audit", "list", "--config", relay_a.config, "--user", "lab\\ALI*")
    assert session in listed.stdout.decode() and "LAB\\alice" in listed.stdout.decode(), listed.stdout
    listed = cli(relay, "audit", "list", "--config", relay_a.config, "--since", "1h")
    assert session in listed.stdout.decode()
    listed = cli(relay, "audit", "list", "--config", relay_a.config, "--since", "2999-01-01")
    assert listed.returncode == 0 and session not in listed.stdout.decode()


def test_powershell_pipeline_transcript_through_the_psrp_double(relay, relay_a):
    from pypsrp.powershell import PowerShell, RunspacePool
    from pypsrp.wsman import WSMan

    marker = "psrp-%s" % uuid.uuid4().hex[:8]
    wsman = WSMan(RELAY_A, port=5985, path="wsman/web01", auth="credssp", ssl=False, username=ALICE,
                  password=USERS[ALICE], cert_validation=False)
    with RunspacePool(wsman) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet("Write-Output").add_argument(marker).add_argument("second object")
        ps.add_statement()
        ps.add_script("echo from-sh; echo sh-error >&2")
        ps.add_statement()
        ps.add_cmdlet("Write-Error").add_parameter("Message", "bad thing")
        output = ps.invoke()
        errors = [str(e) for e in ps.streams.error]
    wsman.close()  # ends the connection, so the session
    assert output == [marker, "second object", "from-sh"], output
    assert errors == ["sh-error", "bad thing"], errors

    session = sessions_of(relay_a, marker)
    assert wait_for(lambda: session_end(relay_a, session), 10)
    recs = records(transcript_of(relay_a, session))
    shells = [r for r in recs if r["type"] == "shell"]
    assert shells and shells[0]["shell"] == "powershell/Microsoft.PowerShell", shells
    commands = [r for r in recs if r["type"] == "command"]
    assert len(commands) == 1, commands
    assert commands[0]["command"] == ("Write-Output %s 'second object'; echo from-sh; echo sh-error >&2; "
                                      "Write-Error -Message 'bad thing'" % marker), commands
    cid = commands[0]["command_id"]
    assert output_of(recs, cid, "stdout") == ("%s\nsecond object\nfrom-sh\n" % marker).encode()
    assert output_of(recs, cid, "stderr") == b"sh-error\nbad thing\n"
    assert [r["state"] for r in recs if r["type"] == "state"] == ["Completed"]
    text = cli(relay, "audit", "show", session, "--config", relay_a.config).stdout.decode()
    assert marker + "\nsecond object\nfrom-sh\n" in text and "stderr| bad thing" in text, text
    assert "pipeline Completed" in text, text


def wait_syslog(receiver: SyslogReceiver, lines: typing.List[bytes], timeout: float = 10) -> typing.List[bytes]:
    """The audit lines not (yet) received, waiting up to `timeout`."""
    def missing() -> typing.List[bytes]:
        got = set(m["msg"] for m in receiver.messages)
        return [ln for ln in lines if ln not in got]
    wait_for(lambda: not missing(), timeout)
    return missing()


def file_lines(path: str) -> typing.List[bytes]:
    with open(path, "rb") as fh:
        return [ln for ln in fh.read().split(b"\n") if ln]


def check_syslog(receiver: SyslogReceiver, audit: str) -> None:
    lines = file_lines(audit)
    assert lines, "nothing audited"
    missing = wait_syslog(receiver, lines)
    assert not missing, "%d of %d audit lines never reached syslog: %s" % (len(missing), len(lines), missing[:3])
    assert not receiver.errors, receiver.errors[:3]
    by_msg = {m["msg"]: m for m in receiver.messages}
    for ln in lines:
        m = by_msg[ln]
        event = json.loads(ln)
        assert m["app"] == "winrm-relay" and m["msgid"] == event["event"] and m["time"] == event["time"], m
        assert m["pri"] >> 3 == 10, m  # facility authpriv
        assert m["pri"] & 7 == (4 if event["event"] in ("auth_failed", "denied", "audit_resumed") else 6), m
    # In the order written.
    order = [m["msg"] for m in receiver.messages if m["msg"] in set(lines)]
    assert order == lines


def test_syslog_over_tcp_receives_every_event(relay_a, tcp_syslog):
    p = relay_a.protocol()
    sid = p.open_shell()
    p.close_shell(sid, close_session=False)
    close(p)
    bad = relay_a.protocol(password="Wrong-Alice-Pass-77!")
    with pytest.raises(Exception):
        bad.open_shell()
    assert wait_for(lambda: any(e["event"] == "auth_failed" for e in relay_a.events()), 5)
    check_syslog(tcp_syslog, relay_a.audit)


def test_metrics_move_with_traffic_and_hold_no_secret(relay_a):
    from prometheus_client.parser import text_string_to_metric_families

    def samples() -> typing.Dict[typing.Tuple[str, typing.Tuple], float]:
        status, text = fetch("/metrics")
        assert status == 200
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def value(snapshot, name: str, **labels: str) -> float:
        return snapshot.get((name, tuple(sorted(labels.items()))), 0.0)

    assert fetch("/healthz") == (200, "ok\n")
    assert fetch("/readyz") == (200, "ready\n")
    assert fetch("/nothing")[0] == 404
    before = samples()
    p = relay_a.protocol()
    sid = p.open_shell()
    cid = p.run_command(sid, "echo", ["metrics"])
    p.get_command_output(sid, cid)
    p.cleanup_command(sid, cid)
    p.close_shell(sid, close_session=False)
    # A target that refuses connections.
    down = relay_a.protocol(target="down")
    with pytest.raises(Exception):
        down.open_shell()
    bad = relay_a.protocol(password="Wrong-Alice-Pass-77!")
    with pytest.raises(Exception):
        bad.open_shell()
    # bob's fifth wrong password locks bob out (auth.lockout_threshold = 5).
    for _ in range(5):
        with pytest.raises(Exception):
            relay_a.protocol(user=BOB, password="Wrong-Alice-Pass-77!").open_shell()
    # One shell more than limits.max_shells_per_user.
    shells = [p.open_shell() for _ in range(SHELL_QUOTA)]
    with pytest.raises(Exception):
        p.open_shell()
    for shell in shells:
        p.close_shell(shell, close_session=False)
    during = samples()
    close(p)
    close(down)
    assert value(during, "winrm_relay_sessions_active") >= 1
    assert value(during, "winrm_relay_requests_total", action="Command", status="200") == \
        value(before, "winrm_relay_requests_total", action="Command", status="200") + 1
    assert value(during, "winrm_relay_requests_total", action="Create", status="200") >= \
        value(before, "winrm_relay_requests_total", action="Create", status="200") + 1
    assert value(during, "winrm_relay_logons_total", result="success") >= \
        value(before, "winrm_relay_logons_total", result="success") + 2
    assert value(during, "winrm_relay_logons_total", result="failure") >= \
        value(before, "winrm_relay_logons_total", result="failure") + 1
    assert value(during, "winrm_relay_target_errors_total", target="down", kind="connect") == \
        value(before, "winrm_relay_target_errors_total", target="down", kind="connect") + 1
    assert value(during, "winrm_relay_lockouts_total") == value(before, "winrm_relay_lockouts_total") + 1
    assert value(during, "winrm_relay_quota_hits_total", quota="max_shells_per_user") == \
        value(before, "winrm_relay_quota_hits_total", quota="max_shells_per_user") + 1
    for direction in ("in", "out"):
        assert value(during, "winrm_relay_bytes_total", direction=direction) > \
            value(before, "winrm_relay_bytes_total", direction=direction)
    for share in ("relay", "target"):
        assert value(during, "winrm_relay_request_duration_seconds_count", share=share) > \
            value(before, "winrm_relay_request_duration_seconds_count", share=share)
    assert ("winrm_relay_audit_write_failures_total", ()) in during
    assert ("winrm_relay_syslog_dropped_total", ()) in during
    # Ends: the gauge goes back.
    assert wait_for(lambda: value(samples(), "winrm_relay_sessions_active") == 0, 10)
    _, text = fetch("/metrics")
    with open(os.path.join(relay_a.dir, "metrics.txt"), "w") as fh:
        fh.write(text)  # for test_90's secret grep too
    low = text.lower()
    assert "alice" not in low and "bob" not in low, "user names in metrics"
    for pw in list(USERS.values()) + ["Wrong-Alice-Pass-77!"]:
        assert pw not in text


def tamper(src: str, dst: str, change: typing.Callable[[typing.List[bytes]], None]) -> None:
    lines = file_lines(src)
    change(lines)
    with open(dst, "wb") as fh:
        fh.write(b"".join(ln + b"\n" for ln in lines))


def test_verify_passes_on_the_real_log_and_names_the_line_edited_removed_or_reordered(relay, relay_a, tmp_path):
    h = relay
    ok = cli(h, "audit", "verify", relay_a.audit, "--transcripts", relay_a.transcripts)
    assert ok.returncode == 0, ok.stderr.decode()
    assert ok.stdout.decode().startswith("ok: ") and "transcripts match their hash" in ok.stdout.decode()
    n = len(file_lines(relay_a.audit))
    assert n >= 8
    k = 5  # 1-based line to tamper with

    def edit(lines):
        at = lines[k - 1].index(b'"session":"') + len(b'"session":"')
        lines[k - 1] = lines[k - 1][:at] + (b"0" if lines[k - 1][at:at + 1] != b"0" else b"1") + lines[k - 1][at + 1:]

    def remove(lines):
        del lines[k - 1]

    def swap(lines):
        lines[k - 1], lines[k] = lines[k], lines[k - 1]

    for name, change, expect in [("edited", edit, "edited"), ("removed", remove, "removed"),
                                 ("swapped", swap, "reordered")]:
        copy = str(tmp_path / ("audit-%s.jsonl" % name))
        tamper(relay_a.audit, copy, change)
        bad = cli(h, "audit", "verify", copy)
        err = bad.stderr.decode()
        assert bad.returncode == 1, (name, bad.stdout, err)
        assert "%s:%d: %s" % (copy, k, expect) in err, (name, err)

    # A transcript altered after its session ended is found through the chain.
    tdir = tmp_path / "transcripts"
    shutil.copytree(relay_a.transcripts, tdir)
    victim = sorted(os.listdir(tdir))[0]
    with open(tdir / victim, "r+b") as fh:
        data = fh.read()
        fh.seek(0)
        fh.write(data.replace(b'"type":"session"', b'"type":"sessioN"', 1))
    bad = cli(h, "audit", "verify", relay_a.audit, "--transcripts", str(tdir))
    assert bad.returncode == 1 and ("transcript %s: altered" % victim) in bad.stderr.decode(), bad.stderr
    session = victim.split("Z-", 1)[1][:-len(".jsonl")]
    shown = cli(h, "audit", "show", session, "--config", relay_a.config, "--transcripts", str(tdir))
    assert shown.returncode == 1 and "was altered" in shown.stderr.decode(), shown.stderr


@pytest.fixture(scope="module")
def udp_syslog():
    r = SyslogReceiver("udp", SYSLOG_UDP)
    yield r
    r.stop()


def keyed_relay(h: harness.Harness) -> harness.ExtraRelay:
    key = os.path.join(h.workdir, "relay-" + RELAY_B + "-audit.key")
    if not os.path.exists(key):
        with open(key, "w") as fh:
            fh.write(uuid.uuid4().hex + uuid.uuid4().hex + "\n")
        os.chmod(key, 0o600)
    return harness.ExtraRelay(h, RELAY_B, audit_extra='hmac_key_file = "%s"\ntranscript_max_bytes = %d\n'
                              'syslog = "udp://%s:%d"' % (key, CAP, SYSLOG_UDP[0], SYSLOG_UDP[1]))


def test_transcript_output_is_cut_at_the_cap_and_commands_go_on(relay, udp_syslog):
    extra = keyed_relay(relay)
    try:
        marker = "after-cut-%s" % uuid.uuid4().hex[:8]
        p = extra.protocol()
        sid = p.open_shell()
        cid = p.run_command(sid, "head", ["-c", "100000", "/dev/zero", "|", "tr", "'\\0'", "x"])
        out, _, _ = p.get_command_output(sid, cid)
        p.cleanup_command(sid, cid)
        cid = p.run_command(sid, "echo", [marker])
        assert p.get_command_output(sid, cid)[0] == marker.encode() + b"\n"
        p.cleanup_command(sid, cid)
        p.close_shell(sid, close_session=False)
        close(p)
        assert out == b"x" * 100000
        session = sessions_of(extra, marker)
        assert wait_for(lambda: session_end(extra, session), 10)
        path = transcript_of(extra, session)
        recs = records(path)
        first = [r for r in recs if r["type"] == "command"][0]["command_id"]
        recorded = output_of(recs, first, "stdout")
        assert recorded == b"x" * len(recorded) and 0 < len(recorded) <= CAP
        cuts = [r for r in recs if r["type"] == "cut"]
        assert len(cuts) == 1 and "transcript_max_bytes" in cuts[0]["reason"], cuts
        later = [r for r in recs if r["type"] == "command" and marker in r["command"]]
        assert later, "commands after the cut must still be recorded"
        assert [r for r in recs if r["type"] == "exit"][-1]["exit_code"] == 0
        assert recs[-1]["type"] == "end" and recs[-1]["output_not_recorded_bytes"] > 100000 - CAP
        assert os.path.getsize(path) < CAP + 8192
        check_syslog(udp_syslog, extra.audit)
    finally:
        extra.stop()


def test_the_chain_goes_on_across_rotation_and_restart_and_a_key_keeps_it_honest(relay, udp_syslog):
    h = relay
    extra = keyed_relay(h)
    rotated = extra.audit + ".1"
    try:
        run_echo(extra, "before-rotation")
        # logrotate: move the file, then SIGHUP.
        if os.path.exists(rotated):
            os.remove(rotated)
        os.rename(extra.audit, rotated)
        extra.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "audit log reopened" in harness.tail(extra.log, 200), 10), extra.excerpt()
        run_echo(extra, "after-rotation")
    finally:
        extra.stop()
    extra = keyed_relay(h)  # a restart on the same log
    try:
        run_echo(extra, "after-restart")
    finally:
        extra.stop()
    key = os.path.join(h.workdir, "relay-" + RELAY_B + "-audit.key")
    old_lines, new_lines = file_lines(rotated), file_lines(extra.audit)
    assert json.loads(new_lines[0])["prev"] == json.loads(old_lines[-1])["hash"]
    seqs = [json.loads(ln)["seq"] for ln in old_lines + new_lines]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert all(json.loads(ln)["hash"].startswith("hmac-sha256:") for ln in new_lines)
    ok = cli(h, "audit", "verify", rotated, extra.audit, "--key", key, "--transcripts", extra.transcripts)
    assert ok.returncode == 0, ok.stderr.decode()
    # Without the key the keyed lines cannot be checked; with another key they are forgeries.
    nokey = cli(h, "audit", "verify", rotated, extra.audit)
    assert nokey.returncode == 1 and "pass the key file with --key" in nokey.stderr.decode()
    other = os.path.join(h.workdir, "other.key")
    with open(other, "w") as fh:
        fh.write("f" * 64)
    os.chmod(other, 0o600)
    forged = cli(h, "audit", "verify", rotated, extra.audit, "--key", other)
    assert forged.returncode == 1 and ":1: edited" in forged.stderr.decode(), forged.stderr
    # The newer file without the older: the link to it cannot be checked, but it is said.
    alone = cli(h, "audit", "verify", extra.audit, "--key", key)
    assert alone.returncode == 0 and "continues a chain from earlier files" in alone.stdout.decode()
    # Files out of order break the chain.
    swapped = cli(h, "audit", "verify", extra.audit, rotated, "--key", key)
    assert swapped.returncode == 1 and "%s:1: restarted" % rotated in swapped.stderr.decode(), swapped.stderr


def run_echo(extra: harness.ExtraRelay, text: str) -> None:
    p = extra.protocol()
    sid = p.open_shell()
    cid = p.run_command(sid, "echo", [text])
    assert p.get_command_output(sid, cid)[0] == text.encode() + b"\n"
    p.cleanup_command(sid, cid)
    p.close_shell(sid, close_session=False)
    close(p)
    session = sessions_of(extra, text)
    assert wait_for(lambda: session_end(extra, session), 10), extra.excerpt()


def test_syslog_to_a_unix_socket_and_json_logs_with_session_and_request_spans(relay, tmp_path):
    sock_dir = os.path.join(relay.workdir, "relay-" + RELAY_C)
    os.makedirs(sock_dir, exist_ok=True)
    sock_path = os.path.join(sock_dir, "log.sock")
    if os.path.exists(sock_path):
        os.remove(sock_path)
    receiver = SyslogReceiver("unix", sock_path)
    extra = harness.ExtraRelay(relay, RELAY_C, audit_extra='syslog = "unix://%s"' % sock_path,
                               args=["--log-format", "json"])
    try:
        run_echo(extra, "unix-syslog")
        # bob may not use web02: a denial logged inside the connection's span, naming the target.
        p = extra.protocol(user=BOB, target="web02")
        with pytest.raises(Exception):
            p.open_shell()
        assert wait_for(lambda: any(e["event"] == "denied" for e in extra.events()), 5)
        # A session still open at SIGTERM: its end, audited while the relay drains, still reaches syslog.
        open_session = extra.protocol()
        open_session.open_shell()
        extra.stop()
        assert [e for e in extra.events() if e["event"] == "session_end" and e.get("reason") == "relay shutting down"]
        check_syslog(receiver, extra.audit)
    finally:
        extra.stop()
        receiver.stop()
        os.remove(sock_path)  # a socket is no file for later tests to read
    logs = []
    with open(extra.log, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line.startswith("{"):
                logs.append(json.loads(line))
    assert logs, extra.excerpt()
    denied = [ln for ln in logs if ln.get("fields", {}).get("message") == "request denied"]
    assert denied, logs[-5:]
    spans = {s["name"]: s for s in denied[0]["spans"]}
    assert spans["conn"]["user"].lower() == BOB.lower() and spans["conn"]["session"] and spans["conn"]["source"]
    assert denied[0]["fields"]["target"] == "web02", denied[0]
