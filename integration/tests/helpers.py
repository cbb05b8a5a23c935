"""Helpers shared by the integration tests."""

from __future__ import annotations

import os
import sys
import time
import typing

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import harness  # noqa: E402
from harness import RELAY_HOST, RELAY_PORT, USERS  # noqa: E402,F401

ALICE = "LAB\\alice"
BOB = "LAB\\bob"


def relay_url(target: typing.Optional[str]) -> str:
    base = "http://%s:%d/wsman" % (RELAY_HOST, RELAY_PORT)
    return base + ("/" + target if target else "")


def relay_protocol(target: typing.Optional[str], user: str = ALICE, password: typing.Optional[str] = None, **kw: typing.Any):
    import winrm

    kw.setdefault("operation_timeout_sec", 20)
    kw.setdefault("read_timeout_sec", 30)
    return winrm.protocol.Protocol(
        endpoint=relay_url(target),
        transport="credssp",
        username=user,
        password=USERS[user] if password is None else password,
        server_cert_validation="ignore",
        message_encryption="always",
        **kw,
    )


def retarget(protocol: typing.Any, target: str) -> None:
    """Point an existing Protocol (same requests session, same TCP connection) at another target."""
    protocol.transport.endpoint = relay_url(target)


def run(protocol: typing.Any, command: str, args: typing.Sequence[str] = ()) -> typing.Tuple[bytes, bytes, int]:
    sid = protocol.open_shell()
    try:
        cid = protocol.run_command(sid, command, list(args))
        out = protocol.get_command_output(sid, cid)
        protocol.cleanup_command(sid, cid)
        return out
    finally:
        protocol.close_shell(sid, close_session=False)


def wait_for(pred: typing.Callable[[], typing.Any], timeout: float = 5.0, interval: float = 0.1) -> typing.Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def double_arrivals(h: harness.Harness, name: str) -> typing.List[dict]:
    """What reached the double, as it arrived (before it was answered)."""
    return harness.read_jsonl(h.double_arrivals(name))


# A client that opens a shell, starts a command that prints nothing for a minute, says so, then
# long-polls Receive with a 50 s OperationTimeout: tests kill it (or end its session) mid-Receive.
LONG_RECEIVE_CLIENT = r"""
import os, sys, winrm
p = winrm.protocol.Protocol(endpoint=os.environ["ENDPOINT"], transport="credssp", username=os.environ["USER_NAME"],
                            password=os.environ["USER_PASSWORD"], message_encryption="always",
                            operation_timeout_sec=50, read_timeout_sec=60)
shell = p.open_shell()
command = p.run_command(shell, "sleep", ["60"])
print(shell, flush=True)
p.get_command_output(shell, command)
"""


def start_long_receive(h: harness.Harness, endpoint: str, double: str = "web01") -> typing.Tuple[typing.Any, str]:
    """The long-Receive client in a process of its own, once its Receive has reached the target `double`
    (its arrivals log shows it) and waits there."""
    import subprocess

    env = harness.scrubbed_env({"ENDPOINT": endpoint, "USER_NAME": ALICE, "USER_PASSWORD": USERS[ALICE],
                                "PYTHONPATH": os.pathsep.join(sys.path)})
    child = subprocess.Popen([sys.executable, "-c", LONG_RECEIVE_CLIENT], stdout=subprocess.PIPE, env=env)
    shell = child.stdout.readline().decode().strip()
    assert shell, "the client did not open a shell"
    at_target = wait_for(lambda: [r for r in double_arrivals(h, double)
                                  if r.get("action") == "Receive" and r.get("shell_id") == shell], 20, 0.02)
    if not at_target:
        child.kill()
        raise AssertionError("the client's Receive did not reach %s within 20 s" % double)
    return child, shell


def audit_events(h: harness.Harness) -> typing.List[dict]:
    return harness.read_jsonl(h.audit_file)


def double_records(h: harness.Harness, name: str) -> typing.List[dict]:
    return harness.read_jsonl(h.double_log(name))


def user_is(record_user: typing.Any, user: str) -> bool:
    return isinstance(record_user, str) and record_user.lower() == user.lower()


def relay_log_excerpt(h: harness.Harness, n: int = 40) -> str:
    return "\n--- relay.log (tail) ---\n" + harness.tail(h.relay_log, n)


def err_text(e: BaseException) -> str:
    """Everything a client exception tells about the server's answer."""
    parts = [type(e).__name__, str(e)]
    for attr in ("response", "response_text", "reason", "fault_subcode", "fault_code", "message"):
        v = getattr(e, attr, None)
        if isinstance(v, (str, bytes)):
            parts.append(v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
    return "\n".join(parts)


def http_code(e: BaseException) -> typing.Optional[int]:
    code = getattr(e, "code", None)
    return code if isinstance(code, int) else None


PS_RESOURCE_URI = "http://schemas.microsoft.com/powershell/Microsoft.PowerShell"


def psrp_creation_blob() -> bytes:
    """A realistic PSRP creationXml payload: SESSION_CAPABILITY + INIT_RUNSPACEPOOL fragments."""
    import struct
    import uuid as _uuid

    rpid = _uuid.uuid4().bytes_le
    cap = (
        '<Obj RefId="0"><MS><Version N="protocolversion">2.3</Version><Version N="PSVersion">2.0</Version>'
        '<Version N="SerializationVersion">1.1.0.1</Version></MS></Obj>'
    ).encode()
    init = (
        '<Obj RefId="0"><MS><I32 N="MinRunspaces">1</I32><I32 N="MaxRunspaces">1</I32>'
        '<Obj N="PSThreadOptions" RefId="1"><TN RefId="0"><T>System.Management.Automation.Runspaces.PSThreadOptions</T>'
        "<T>System.Enum</T><T>System.ValueType</T><T>System.Object</T></TN><ToString>Default</ToString><I32>0</I32></Obj>"
        '<Obj N="ApartmentState" RefId="2"><TN RefId="1"><T>System.Threading.ApartmentState</T><T>System.Enum</T>'
        "<T>System.ValueType</T><T>System.Object</T></TN><ToString>Unknown</ToString><I32>2</I32></Obj>"
        '<Obj N="HostInfo" RefId="3"><MS><B N="_isHostNull">true</B><B N="_isHostUINull">true</B>'
        '<B N="_isHostRawUINull">true</B><B N="_useRunspaceHost">true</B></MS></Obj>'
        '<Nil N="ApplicationArguments" /></MS></Obj>'
    ).encode()

    def message(msg_type: int, data: bytes) -> bytes:
        return struct.pack("<II", 2, msg_type) + rpid + b"\x00" * 16 + b"\xef\xbb\xbf" + data

    def fragment(obj_id: int, data: bytes) -> bytes:
        return struct.pack(">QQB", obj_id, 0, 3) + struct.pack(">I", len(data)) + data

    return fragment(1, message(0x00010002, cap)) + fragment(2, message(0x00010004, init))


def ps_create_envelope(to: str, message_id: str, shell_id: str, creation_b64: str) -> str:
    """A PSRP shell Create exactly as pypsrp builds it (wsa:/wsman: prefixes, not pywinrm's)."""
    return (
        '<s:Envelope xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" '
        'xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:wsman="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd">'
        "<s:Header>"
        '<wsa:Action s:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/09/transfer/Create</wsa:Action>'
        '<wsman:DataLocale s:mustUnderstand="false" xml:lang="en-US" />'
        '<wsman:Locale s:mustUnderstand="true" xml:lang="en-US" />'
        '<wsman:MaxEnvelopeSize s:mustUnderstand="true">153600</wsman:MaxEnvelopeSize>'
        "<wsa:MessageID>%s</wsa:MessageID>"
        "<wsman:OperationTimeout>PT20S</wsman:OperationTimeout>"
        '<wsa:ReplyTo><wsa:Address s:mustUnderstand="true">'
        "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:Address></wsa:ReplyTo>"
        '<wsman:ResourceURI s:mustUnderstand="true">%s</wsman:ResourceURI>'
        '<wsman:SessionId s:mustUnderstand="false">uuid:%s</wsman:SessionId>'
        "<wsa:To>%s</wsa:To>"
        '<wsman:OptionSet s:mustUnderstand="true"><wsman:Option MustComply="true" Name="protocolversion">2.3'
        "</wsman:Option></wsman:OptionSet>"
        "</s:Header>"
        '<s:Body><rsp:Shell ShellId="%s"><rsp:InputStreams>stdin pr</rsp:InputStreams>'
        "<rsp:OutputStreams>stdout</rsp:OutputStreams>"
        '<creationXml xmlns="http://schemas.microsoft.com/powershell">%s</creationXml></rsp:Shell></s:Body>'
        "</s:Envelope>" % (message_id, PS_RESOURCE_URI, shell_id.lower(), to, shell_id, creation_b64)
    )


def capture_responses(protocol: typing.Any) -> typing.List[typing.Tuple[int, str]]:
    """Record (HTTP status, Content-Type) of every response on this Protocol's session (authenticates now)."""
    seen: typing.List[typing.Tuple[int, str]] = []
    session = protocol.transport.build_session()
    session.hooks["response"].append(lambda r, *a, **k: seen.append((r.status_code, r.headers.get("Content-Type", ""))))
    return seen


CREDSSP_ENCRYPTED = 'protocol="application/HTTP-CredSSP-session-encrypted"'


class RawCredSSP:
    """A CredSSP client on ONE TCP connection, driven by hand (pyspnego's CredSSP initiator and the
    double's multipart framing): what a real client never does on its own, such as logging on again
    on a connection that is already authenticated, or connecting from a chosen source address.
    `protocol()` gives a pywinrm Protocol whose messages travel on this connection."""

    def __init__(self, host: str, port: int, path: str = "/wsman/web01", source: typing.Optional[str] = None):
        import http.client

        self.host, self.port, self.path = host, port, path
        self.conn = http.client.HTTPConnection(host, port, timeout=60,
                                               source_address=(source, 0) if source else None)
        self.ctx: typing.Any = None

    def _post(self, body: bytes, headers: typing.Dict[str, str]) -> typing.Tuple[int, typing.Any, bytes]:
        self.conn.request("POST", self.path, body=body, headers=dict(headers, Connection="Keep-Alive"))
        response = self.conn.getresponse()
        return response.status, response.headers, response.read()

    def logon(self, user: str, password: typing.Optional[str] = None,
              before_credentials: typing.Optional[typing.Callable[[], None]] = None) -> None:
        """Log on; `before_credentials` runs just before the leg that delegates the credentials (the exchange
        is then authenticated but not complete)."""
        import base64
        import re

        import spnego

        ctx = spnego.client(user, USERS[user] if password is None else password, hostname=self.host,
                            protocol="credssp")
        token = ctx.step()
        while True:
            if ctx.complete and before_credentials is not None:
                before_credentials()
                before_credentials = None
            status, headers, _ = self._post(b"", {"Authorization": "CredSSP " + base64.b64encode(token).decode()})
            if status == 200 and ctx.complete:
                self.ctx = ctx
                return
            found = re.search(r"CredSSP ([^,\s]*)$", headers.get("WWW-Authenticate", ""))
            if status != 401 or not found or not found.group(1):
                raise PermissionError("logon refused: HTTP %d" % status)
            token = ctx.step(base64.b64decode(found.group(1)))
            if token is None:
                raise PermissionError("CredSSP exchange ended without a token")

    def send_message(self, message: typing.Union[str, bytes]) -> bytes:
        import target_double
        from winrm.exceptions import WinRMTransportError

        plain = message.encode() if isinstance(message, str) else message
        content_type, body = target_double.encrypt_credssp_body(self.ctx, plain)
        status, headers, answer = self._post(body, {"Content-Type": content_type})
        text, _ = target_double.decrypt_credssp_body(self.ctx, headers.get("Content-Type", ""), answer)
        if status != 200:
            raise WinRMTransportError("http", status, text.decode("utf-8", "replace"))
        return text

    def protocol(self, user: str = ALICE) -> typing.Any:
        import winrm

        p = winrm.protocol.Protocol(endpoint="http://%s:%d%s" % (self.host, self.port, self.path),
                                    transport="credssp", username=user, password=USERS[user],
                                    operation_timeout_sec=20, read_timeout_sec=30)
        p.transport.send_message = self.send_message
        return p

    def close(self) -> None:
        self.conn.close()


def credssp_tls_handshake(tls: typing.Any, incoming: typing.Any, outgoing: typing.Any,
                          leg: typing.Callable[[bytes], bytes]) -> None:
    """Drive a client ssl.SSLObject over MemoryBIOs (`incoming`, `outgoing`) through CredSSP's 401 legs:
    `leg(records)` posts the TLS records in `Authorization: CredSSP` and returns the relay's token bytes."""
    import ssl

    for _ in range(6):
        try:
            tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        out = outgoing.read()
        if not out:
            assert done, "TLS handshake stalled"
            return
        incoming.write(leg(out))
        if done:
            return
    raise AssertionError("TLS handshake did not finish")
