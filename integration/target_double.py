#!/usr/bin/env python3
"""A WinRM *target* double: an independent stand-in for a Windows WinRM service.

It behaves like a Windows host with AllowUnencrypted=false and Negotiate auth:

* HTTP/1.1 keep-alive, one thread per TCP connection, authentication state per
  connection (like HTTP.sys + WinRM).
* Authentication with pyspnego's acceptor (``spnego.server(protocol="negotiate")``),
  which reads its users from the file named by env ``NTLM_USER_FILE``
  (lines ``DOMAIN:USER:PASSWORD``). Both SPNEGO-wrapped NTLM (the relay, sspi) and
  raw NTLM under the ``Negotiate`` scheme (pywinrm / requests_ntlm) are accepted.
* After authentication every non-empty body must be
  ``multipart/encrypted;protocol="application/HTTP-SPNEGO-session-encrypted"``;
  plain bodies are refused (HTTP 401/500) and never processed.
* WinRS over ``/bin/sh``: Create, Command, Receive, Send, Signal, Delete on the cmd
  shell resource; Create/Delete (payload stored, not run) on PowerShell resource URIs.
* Every processed request is logged as one JSON line to ``--log``.

Run: ``python target_double.py --bind 127.0.0.21:5985 --name web01 --log web01.jsonl``
``--hang`` accepts TCP connections and never answers.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import hashlib
import http.server
import json
import os
import re
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import typing
import uuid
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape as xml_escape

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
    "wsmid": "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd",
}
CMD_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
PS_URI_PREFIX = "http://schemas.microsoft.com/powershell/"
SHELL_NS = NS["rsp"]
ACTION_BASE_TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer/"
ACTION_BASE_SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"
FAULT_ACTION = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
ENC_PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
BOUNDARY = b"--Encrypted Boundary"
CHUNK_CAP = 64 * 1024  # raw output bytes per Receive response (well under MaxEnvelopeSize)
DEFAULT_OP_TIMEOUT = 60.0

TIMED_OUT_CODE = 2150858793
TIMED_OUT_TEXT = "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.  "


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLog:
    def __init__(self, path: typing.Optional[str]) -> None:
        self._lock = threading.Lock()
        self._fh = open(path, "a", encoding="utf-8") if path else None

    def write(self, record: dict) -> None:
        record = {"time": now_iso(), **record}
        line = json.dumps(record, sort_keys=False)
        with self._lock:
            if self._fh:
                self._fh.write(line + "\n")
                self._fh.flush()


# ---------------------------------------------------------------------------
# WinRS state


class Command:
    def __init__(self, command_id: str, argv: typing.List[str], env: dict) -> None:
        self.id = command_id
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd="/tmp",
            start_new_session=True,
        )
        self.cond = threading.Condition()
        self.buffers: typing.Dict[str, typing.List[bytes]] = {"stdout": [], "stderr": []}
        self.eof = {"stdout": False, "stderr": False}
        self.exit_code: typing.Optional[int] = None
        self.done_reported = False
        self._readers = [
            threading.Thread(target=self._reader, args=("stdout", self.proc.stdout), daemon=True),
            threading.Thread(target=self._reader, args=("stderr", self.proc.stderr), daemon=True),
        ]
        for t in self._readers:
            t.start()
        threading.Thread(target=self._waiter, daemon=True).start()

    def _reader(self, name: str, fh: typing.IO[bytes]) -> None:
        fd = fh.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self.cond:
                if chunk:
                    self.buffers[name].append(chunk)
                else:
                    self.eof[name] = True
                self.cond.notify_all()
            if not chunk:
                break
        fh.close()

    def _waiter(self) -> None:
        rc = self.proc.wait()
        with self.cond:
            self.exit_code = rc
            self.cond.notify_all()

    def finished(self) -> bool:
        return self.exit_code is not None and self.eof["stdout"] and self.eof["stderr"]

    def has_output(self) -> bool:
        return bool(self.buffers["stdout"] or self.buffers["stderr"])

    def take(self, cap: int) -> typing.List[typing.Tuple[str, bytes]]:
        """Take up to `cap` bytes of buffered output (caller holds cond)."""
        out: typing.List[typing.Tuple[str, bytes]] = []
        budget = cap
        for name in ("stdout", "stderr"):
            buf = self.buffers[name]
            taken = []
            while buf and budget > 0:
                chunk = buf[0]
                if len(chunk) <= budget:
                    taken.append(buf.pop(0))
                    budget -= len(chunk)
                else:
                    taken.append(chunk[:budget])
                    buf[0] = chunk[budget:]
                    budget = 0
            if taken:
                out.append((name, b"".join(taken)))
        return out

    def send_stdin(self, data: bytes, end: bool) -> None:
        stdin = self.proc.stdin
        if stdin is None or stdin.closed:
            return
        try:
            if data:
                stdin.write(data)
                stdin.flush()
            if end:
                stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                try:
                    self.proc.kill()
                except OSError:
                    pass
        try:
            if self.proc.stdin and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass


class Shell:
    def __init__(self, shell_id: str, owner: str, resource_uri: str, creation_xml: typing.Optional[str]) -> None:
        self.id = shell_id
        self.owner = owner
        self.resource_uri = resource_uri
        self.creation_xml = creation_xml
        self.commands: typing.Dict[str, Command] = {}
        self.created = time.time()


class State:
    def __init__(self, name: str, log: JsonLog) -> None:
        self.name = name
        self.log = log
        self.lock = threading.Lock()
        self.shells: typing.Dict[str, Shell] = {}

    def kill_all(self) -> None:
        with self.lock:
            shells = list(self.shells.values())
            self.shells.clear()
        for sh in shells:
            for cmd in sh.commands.values():
                cmd.kill()


# ---------------------------------------------------------------------------
# SOAP helpers


class Fault(Exception):
    def __init__(self, subcode: str, code: int, message: str, http_status: int = 500, value: str = "s:Receiver"):
        super().__init__(message)
        self.subcode = subcode
        self.code = code
        self.message = message
        self.http_status = http_status
        self.value = value


def envelope(action: str, relates_to: str, body: str) -> bytes:
    msg_id = "uuid:" + str(uuid.uuid4()).upper()
    return (
        '<s:Envelope xml:lang="en-US" xmlns:s="%s" xmlns:a="%s" xmlns:x="%s" xmlns:w="%s" '
        'xmlns:rsp="%s" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">'
        "<s:Header><a:Action>%s</a:Action><a:MessageID>%s</a:MessageID>"
        "<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        "<a:RelatesTo>%s</a:RelatesTo></s:Header><s:Body>%s</s:Body></s:Envelope>"
        % (NS["s"], NS["a"], NS["x"], NS["w"], NS["rsp"], xml_escape(action), msg_id, xml_escape(relates_to), body)
    ).encode("utf-8")


def fault_envelope(relates_to: str, fault: Fault, machine: str) -> bytes:
    body = (
        "<s:Fault><s:Code><s:Value>%s</s:Value><s:Subcode><s:Value>%s</s:Value></s:Subcode></s:Code>"
        '<s:Reason><s:Text xml:lang="en-US">%s</s:Text></s:Reason>'
        '<s:Detail><f:WSManFault xmlns:f="%s" Code="%d" Machine="%s"><f:Message>%s</f:Message></f:WSManFault></s:Detail>'
        "</s:Fault>"
        % (
            fault.value,
            fault.subcode,
            xml_escape(fault.message),
            NS["f"],
            fault.code,
            xml_escape(machine),
            xml_escape(fault.message),
        )
    )
    return envelope(FAULT_ACTION, relates_to or "", body)


def parse_duration(text: typing.Optional[str], default: float) -> float:
    """Parse an xs:duration such as PT20S / PT20.000S / PT1M."""
    if not text:
        return default
    m = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?)?", text.strip())
    if not m:
        return default
    d, h, mi, s = m.groups()
    return int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


_BODY_RE = re.compile(
    rb"<((?:[A-Za-z_][\w.-]*:)?)Body(?:\s[^>]*?)?(?:/>|>.*?</\1Body\s*>)", re.S
)


def raw_body_bytes(plain: bytes) -> bytes:
    """The SOAP Body element exactly as it travelled (start tag to end tag)."""
    m = _BODY_RE.search(plain)
    return m.group(0) if m else b""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def text_of(el: typing.Optional[ET.Element]) -> typing.Optional[str]:
    return el.text if el is not None else None


# ---------------------------------------------------------------------------
# Session encryption framing (MS-WSMV 2.2.9.1.1)


def decrypt_body(ctx: typing.Any, content_type: str, body: bytes) -> bytes:
    if not (content_type.startswith("multipart/encrypted") or content_type.startswith("multipart/x-multi-encrypted")):
        raise ValueError("not an encrypted body")
    if ('protocol="%s"' % ENC_PROTOCOL) not in content_type:
        raise ValueError("unsupported encryption protocol in %r" % content_type)
    pos = 0
    out = []
    octet_hdr = b"\tContent-Type: application/octet-stream\r\n"
    while True:
        if body.startswith(BOUNDARY + b"--", pos):
            break
        if not body.startswith(BOUNDARY + b"\r\n", pos):
            raise ValueError("malformed multipart at offset %d" % pos)
        pos += len(BOUNDARY) + 2
        end = body.find(BOUNDARY + b"\r\n", pos)
        if end < 0:
            raise ValueError("missing second part")
        headers = body[pos:end]
        m = re.search(rb"Length=(\d+)", headers)
        if not m or ENC_PROTOCOL.encode() not in headers:
            raise ValueError("bad part headers %r" % headers)
        length = int(m.group(1))
        pos = end + len(BOUNDARY) + 2
        if not body.startswith(octet_hdr, pos):
            raise ValueError("missing octet-stream header")
        pos += len(octet_hdr)
        (hlen,) = struct.unpack("<I", body[pos : pos + 4])
        pos += 4
        header = body[pos : pos + hlen]
        pos += hlen
        data = body[pos : pos + length]  # RC4 sealing keeps the length
        pos += length
        plain = ctx.unwrap_winrm(header, data)
        if len(plain) != length:
            raise ValueError("decrypted length %d != declared %d" % (len(plain), length))
        out.append(plain)
    return b"".join(out)


def encrypt_body(ctx: typing.Any, plain: bytes) -> typing.Tuple[str, bytes]:
    res = ctx.wrap_winrm(plain)
    payload = (
        BOUNDARY + b"\r\n"
        b"\tContent-Type: " + ENC_PROTOCOL.encode() + b"\r\n"
        b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=" + str(len(plain)).encode() + b"\r\n"
        + BOUNDARY + b"\r\n"
        b"\tContent-Type: application/octet-stream\r\n"
        + struct.pack("<I", len(res.header)) + res.header + res.data
        + BOUNDARY + b"--\r\n"
    )
    ctype = 'multipart/encrypted;protocol="%s";boundary="Encrypted Boundary"' % ENC_PROTOCOL
    return ctype, payload


# ---------------------------------------------------------------------------
# WS-Man dispatcher


class WsmanRequest:
    def __init__(self, plain: bytes) -> None:
        self.plain = plain
        self.root = ET.fromstring(plain)
        if self.root.tag != "{%s}Envelope" % NS["s"]:
            raise Fault("w:InvalidMessageInformationHeader", 2150858817, "Not a SOAP 1.2 envelope", value="s:Sender")
        header = self.root.find("s:Header", NS)
        self.body = self.root.find("s:Body", NS)
        if header is None or self.body is None:
            raise Fault("w:InvalidMessageInformationHeader", 2150858817, "Missing Header or Body", value="s:Sender")
        self.action = (text_of(header.find("a:Action", NS)) or "").strip()
        self.message_id = (text_of(header.find("a:MessageID", NS)) or "").strip()
        self.resource_uri = (text_of(header.find("w:ResourceURI", NS)) or "").strip()
        self.to = text_of(header.find("a:To", NS))
        self.op_timeout = parse_duration(text_of(header.find("w:OperationTimeout", NS)), DEFAULT_OP_TIMEOUT)
        self.selectors = {
            sel.get("Name"): (sel.text or "").strip() for sel in header.findall("w:SelectorSet/w:Selector", NS)
        }
        self.shell_id = self.selectors.get("ShellId")
        self.action_name = self.action.rsplit("/", 1)[-1] if self.action else ""


class Dispatcher:
    def __init__(self, state: State) -> None:
        self.state = state

    def _get_shell(self, req: WsmanRequest, user: str) -> Shell:
        with self.state.lock:
            shell = self.state.shells.get(req.shell_id or "")
        if shell is None:
            raise Fault(
                "w:InvalidSelectors",
                2150858843,
                "The request for the Windows Remote Shell with ShellId %s failed because the shell was not found on the server."
                % (req.shell_id or ""),
                value="s:Sender",
            )
        if shell.owner.lower() != user.lower():
            raise Fault("w:AccessDenied", 5, "Access is denied. The shell belongs to another user.", value="s:Sender")
        return shell

    def handle(self, req: WsmanRequest, user: str, client_ip: str, log_extra: dict) -> bytes:
        name = req.action_name
        if name == "Create":
            return self.create(req, user, client_ip, log_extra)
        if name == "Delete":
            return self.delete(req, user)
        if name == "Command":
            return self.command(req, user, log_extra)
        if name == "Receive":
            return self.receive(req, user, log_extra)
        if name == "Send":
            return self.send(req, user)
        if name == "Signal":
            return self.signal(req, user, log_extra)
        raise Fault(
            "a:ActionNotSupported",
            2150858757,
            "The action %s is not supported by the service." % req.action,
            value="s:Sender",
        )

    # -- Create
    def create(self, req: WsmanRequest, user: str, client_ip: str, log_extra: dict) -> bytes:
        ruri = req.resource_uri
        shell_el = req.body.find("rsp:Shell", NS)
        if shell_el is None:
            raise Fault("w:SchemaValidationError", 2150858817, "Create without rsp:Shell", value="s:Sender")
        creation_xml = None
        if ruri == CMD_URI:
            pass
        elif ruri.startswith(PS_URI_PREFIX):
            cx = None
            for child in shell_el:
                if child.tag.endswith("}creationXml") or child.tag == "creationXml":
                    cx = child
            creation_xml = (cx.text or "") if cx is not None else ""
            log_extra["creation_xml_sha256"] = sha256_hex(creation_xml.encode("utf-8"))
        else:
            raise Fault(
                "w:InvalidResourceURI",
                2150858811,
                "The WS-Management service cannot process the request. The resource URI is not valid: %s" % ruri,
                value="s:Sender",
            )
        # PSRP clients choose the ShellId (rsp:Shell/@ShellId); WinRS leaves it to the server.
        shell_id = (shell_el.get("ShellId") or "").strip().upper() or str(uuid.uuid4()).upper()
        with self.state.lock:
            if shell_id in self.state.shells:
                raise Fault("w:AlreadyExists", 2150858803, "A shell with ShellId %s already exists." % shell_id,
                            value="s:Sender")
        in_streams = text_of(shell_el.find("rsp:InputStreams", NS)) or "stdin"
        out_streams = text_of(shell_el.find("rsp:OutputStreams", NS)) or "stdout stderr"
        shell = Shell(shell_id, user, ruri, creation_xml)
        with self.state.lock:
            self.state.shells[shell_id] = shell
        log_extra["shell_id"] = shell_id
        addr = "http://%s/wsman" % self.state.name
        body = (
            "<x:ResourceCreated><a:Address>%s</a:Address><a:ReferenceParameters>"
            "<w:ResourceURI>%s</w:ResourceURI><w:SelectorSet><w:Selector Name=\"ShellId\">%s</w:Selector>"
            "</w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>"
            '<rsp:Shell xmlns:rsp="%s"><rsp:ShellId>%s</rsp:ShellId><rsp:ResourceUri>%s</rsp:ResourceUri>'
            "<rsp:Owner>%s</rsp:Owner><rsp:ClientIP>%s</rsp:ClientIP><rsp:IdleTimeOut>PT7200.000S</rsp:IdleTimeOut>"
            "<rsp:InputStreams>%s</rsp:InputStreams><rsp:OutputStreams>%s</rsp:OutputStreams>"
            "<rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime><rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity>"
            "</rsp:Shell>"
            % (
                xml_escape(addr),
                xml_escape(ruri),
                shell_id,
                SHELL_NS,
                shell_id,
                xml_escape(ruri),
                xml_escape(user),
                xml_escape(client_ip),
                xml_escape(in_streams),
                xml_escape(out_streams),
            )
        )
        return envelope(ACTION_BASE_TRANSFER + "CreateResponse", req.message_id, body)

    # -- Delete
    def delete(self, req: WsmanRequest, user: str) -> bytes:
        shell = self._get_shell(req, user)
        with self.state.lock:
            self.state.shells.pop(shell.id, None)
        for cmd in shell.commands.values():
            cmd.kill()
        return envelope(ACTION_BASE_TRANSFER + "DeleteResponse", req.message_id, "")

    # -- Command
    def command(self, req: WsmanRequest, user: str, log_extra: dict) -> bytes:
        shell = self._get_shell(req, user)
        cl = req.body.find("rsp:CommandLine", NS)
        if cl is None:
            raise Fault("w:SchemaValidationError", 2150858817, "Command without rsp:CommandLine", value="s:Sender")
        if shell.resource_uri != CMD_URI:
            raise Fault("a:ActionNotSupported", 2150858757, "This double does not run PowerShell", value="s:Sender")
        command = (text_of(cl.find("rsp:Command", NS)) or "").strip()
        args = [a.text or "" for a in cl.findall("rsp:Arguments", NS)]
        line = " ".join([command] + args)
        log_extra["command"] = line
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "COMPUTERNAME": self.state.name.upper(),
            "USERNAME": user.split("\\")[-1],
            "USERDOMAIN": user.split("\\")[0] if "\\" in user else "",
            "LANG": "C.UTF-8",
        }
        cmd_id = str(uuid.uuid4()).upper()
        cmd = Command(cmd_id, ["/bin/sh", "-c", line], env)
        shell.commands[cmd_id] = cmd
        log_extra["command_id"] = cmd_id
        body = "<rsp:CommandResponse><rsp:CommandId>%s</rsp:CommandId></rsp:CommandResponse>" % cmd_id
        return envelope(ACTION_BASE_SHELL + "CommandResponse", req.message_id, body)

    # -- Receive
    def receive(self, req: WsmanRequest, user: str, log_extra: dict) -> bytes:
        shell = self._get_shell(req, user)
        ds = req.body.find("rsp:Receive/rsp:DesiredStream", NS)
        cmd_id = ds.get("CommandId") if ds is not None else None
        cmd = shell.commands.get(cmd_id or "")
        if cmd is None:
            if shell.resource_uri != CMD_URI:
                # PowerShell shells are never run here; behave like an idle pipeline.
                time.sleep(min(req.op_timeout, 1.0))
                raise Fault("w:TimedOut", TIMED_OUT_CODE, TIMED_OUT_TEXT)
            raise Fault(
                "w:InvalidSelectors",
                2150858843,
                "The request for the Windows Remote Shell command %s failed because the command was not found." % cmd_id,
                value="s:Sender",
            )
        deadline = time.monotonic() + req.op_timeout
        with cmd.cond:
            while not cmd.has_output() and not cmd.finished():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Fault("w:TimedOut", TIMED_OUT_CODE, TIMED_OUT_TEXT)
                cmd.cond.wait(remaining)
            # Give a quickly-finishing process a moment so short commands finish in one Receive.
            grace = time.monotonic() + 0.02
            while not cmd.finished():
                total = sum(len(c) for b in cmd.buffers.values() for c in b)
                remaining = grace - time.monotonic()
                if total >= CHUNK_CAP or remaining <= 0:
                    break
                cmd.cond.wait(remaining)
            taken = cmd.take(CHUNK_CAP)
            done = cmd.finished() and not cmd.has_output()
            exit_code = cmd.exit_code
        parts = []
        for name, data in taken:
            parts.append(
                '<rsp:Stream Name="%s" CommandId="%s">%s</rsp:Stream>' % (name, cmd.id, base64.b64encode(data).decode())
            )
        if done:
            parts.append('<rsp:Stream Name="stdout" CommandId="%s" End="true"></rsp:Stream>' % cmd.id)
            parts.append('<rsp:Stream Name="stderr" CommandId="%s" End="true"></rsp:Stream>' % cmd.id)
            code = exit_code if exit_code is not None else -1
            if code < 0:  # killed by a signal: report like Windows' TerminateProcess
                code = 0x40010004 if code == -signal.SIGKILL else 128 - code
            parts.append(
                '<rsp:CommandState CommandId="%s" State="%sCommandState/Done"><rsp:ExitCode>%d</rsp:ExitCode></rsp:CommandState>'
                % (cmd.id, ACTION_BASE_SHELL, code)
            )
            log_extra["exit_code"] = code
            cmd.done_reported = True
        else:
            parts.append('<rsp:CommandState CommandId="%s" State="%sCommandState/Running"/>' % (cmd.id, ACTION_BASE_SHELL))
        log_extra["command_id"] = cmd.id
        log_extra["bytes_out"] = sum(len(d) for _, d in taken)
        body = '<rsp:ReceiveResponse>%s</rsp:ReceiveResponse>' % "".join(parts)
        return envelope(ACTION_BASE_SHELL + "ReceiveResponse", req.message_id, body)

    # -- Send
    def send(self, req: WsmanRequest, user: str) -> bytes:
        shell = self._get_shell(req, user)
        for st in req.body.findall("rsp:Send/rsp:Stream", NS):
            cmd = shell.commands.get(st.get("CommandId") or "")
            if cmd is None:
                raise Fault("w:InvalidSelectors", 2150858843, "Unknown CommandId for Send", value="s:Sender")
            data = base64.b64decode((st.text or "").encode())
            end = (st.get("End") or "").lower() == "true"
            cmd.send_stdin(data, end)
        return envelope(ACTION_BASE_SHELL + "SendResponse", req.message_id, "<rsp:SendResponse/>")

    # -- Signal
    def signal(self, req: WsmanRequest, user: str, log_extra: dict) -> bytes:
        shell = self._get_shell(req, user)
        sig = req.body.find("rsp:Signal", NS)
        cmd_id = sig.get("CommandId") if sig is not None else None
        code = (text_of(sig.find("rsp:Code", NS)) if sig is not None else "") or ""
        log_extra["signal"] = code.rsplit("/", 1)[-1]
        cmd = shell.commands.get(cmd_id or "")
        if cmd is not None and (code.endswith("/terminate") or code.endswith("/ctrl_c") or code.endswith("/ctrl_break")):
            cmd.kill()
            if code.endswith("/terminate"):
                shell.commands.pop(cmd.id, None)
        return envelope(ACTION_BASE_SHELL + "SignalResponse", req.message_id, "<rsp:SignalResponse/>")


# ---------------------------------------------------------------------------
# HTTP layer


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    timeout = 300  # idle keep-alive connections

    # per-connection state
    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.ctx = None
        self.user: typing.Optional[str] = None
        self.conn_id = str(uuid.uuid4())[:8]
        self.requests_on_conn = 0

    def log_message(self, format: str, *args: typing.Any) -> None:  # quiet
        if self.server.verbose:  # type: ignore[attr-defined]
            sys.stderr.write("%s %s\n" % (self.conn_id, format % args))

    @property
    def app(self) -> "DoubleServer":
        return typing.cast("DoubleServer", self.server)

    def _send(self, status: int, headers: typing.List[typing.Tuple[str, str]], body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        # One write for status line, headers and body (no Nagle/delayed-ACK stalls).
        self._headers_buffer.append(b"\r\n")
        self.wfile.write(b"".join(self._headers_buffer) + body)
        self._headers_buffer = []
        self.wfile.flush()

    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        self._read_body()
        self._send(405, [("Allow", "POST")])

    def do_POST(self) -> None:
        self.requests_on_conn += 1
        body = self._read_body()
        log = self.app.state.log
        peer = self.client_address[0]

        if not self.path.lower().startswith("/wsman"):
            self._send(404, [])
            return

        # Unauthenticated Identify, like Windows.
        if (self.headers.get("WSMANIDENTIFY") or "").lower() == "unauthenticated" and body:
            self._identify(body)
            return

        auth = self.headers.get("Authorization")
        final_token: typing.Optional[bytes] = None
        if auth:
            scheme, _, token_b64 = auth.strip().partition(" ")
            if scheme.lower() not in ("negotiate", "ntlm"):
                self._send(401, [("WWW-Authenticate", "Negotiate")])
                return
            try:
                in_token = base64.b64decode(token_b64.strip())
            except Exception:
                self._fail_auth("undecodable token", peer)
                return
            if self.ctx is None or self.ctx.complete:
                self.ctx = self.app.new_acceptor()
                self.user = None
            try:
                out = self.ctx.step(in_token)
            except Exception as e:  # wrong password, malformed token...
                self._fail_auth("%s: %s" % (type(e).__name__, e), peer)
                return
            if not self.ctx.complete:
                self._send(401, [("WWW-Authenticate", "Negotiate " + base64.b64encode(out or b"").decode())])
                return
            self.user = self.ctx.client_principal or "?"
            log.write({"event": "auth_ok", "user": self.user, "conn": self.conn_id, "peer": peer, "auth": "negotiate"})
            final_token = out

        if self.user is None or self.ctx is None or not self.ctx.complete:
            # Not authenticated on this connection: like Windows, never look at the body.
            if body:
                log.write({"event": "rejected", "reason": "unauthenticated", "conn": self.conn_id, "peer": peer,
                           "body_bytes": len(body)})
            self._send(401, [("WWW-Authenticate", "Negotiate")])
            return

        extra_headers: typing.List[typing.Tuple[str, str]] = []
        if final_token:
            extra_headers.append(("WWW-Authenticate", "Negotiate " + base64.b64encode(final_token).decode()))

        if not body:
            self._send(200, extra_headers)
            return

        ctype = self.headers.get("Content-Type") or ""
        if not (ctype.startswith("multipart/encrypted") or ctype.startswith("multipart/x-multi-encrypted")):
            # AllowUnencrypted=false
            log.write({"event": "rejected", "reason": "unencrypted body", "user": self.user, "conn": self.conn_id,
                       "peer": peer, "content_type": ctype, "body_bytes": len(body)})
            self._send(401, [("WWW-Authenticate", "Negotiate")] + extra_headers[:0])
            return
        try:
            plain = decrypt_body(self.ctx, ctype, body)
        except Exception as e:
            log.write({"event": "rejected", "reason": "decrypt failed: %s" % e, "user": self.user, "conn": self.conn_id,
                       "peer": peer})
            # The sealing state is now unusable: force re-authentication.
            self.ctx = None
            self.user = None
            self._send(400, [("Connection", "close")])
            self.close_connection = True
            return

        record: dict = {
            "event": "request",
            "user": self.user,
            "action": None,
            "resource_uri": None,
            "shell_id": None,
            "body_sha256": sha256_hex(raw_body_bytes(plain)),
            "envelope_sha256": sha256_hex(plain),
            "auth": "negotiate",
            "conn": self.conn_id,
            "peer": peer,
            "path": self.path,
        }
        status = 200
        relates = ""
        try:
            req = WsmanRequest(plain)
            relates = req.message_id
            record.update(action=req.action_name, resource_uri=req.resource_uri, shell_id=req.shell_id,
                          message_id=req.message_id, wsa_to=req.to)
            resp = self.app.dispatcher.handle(req, self.user, peer, record)
        except Fault as f:
            status = f.http_status
            record["fault"] = f.subcode
            resp = fault_envelope(relates, f, self.app.state.name)
        except ET.ParseError as e:
            status = 400
            record["fault"] = "parse error: %s" % e
            resp = fault_envelope(relates, Fault("w:SchemaValidationError", 2150858817, "Malformed XML", value="s:Sender"),
                                  self.app.state.name)
        record["status"] = status
        log.write(record)
        ctype_out, payload = encrypt_body(self.ctx, resp)
        self._send(status, extra_headers + [("Content-Type", ctype_out)], payload)

    def _fail_auth(self, reason: str, peer: str) -> None:
        self.app.state.log.write({"event": "auth_failed", "reason": reason, "conn": self.conn_id, "peer": peer,
                                  "auth": "negotiate"})
        self.ctx = None
        self.user = None
        self._send(401, [("WWW-Authenticate", "Negotiate")])

    def _identify(self, body: bytes) -> None:
        try:
            root = ET.fromstring(body)
            mid = text_of(root.find("s:Header/a:MessageID", NS)) or ""
        except ET.ParseError:
            mid = ""
        resp_body = (
            '<wsmid:IdentifyResponse xmlns:wsmid="%s"><wsmid:ProtocolVersion>http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd'
            "</wsmid:ProtocolVersion><wsmid:ProductVendor>Microsoft Corporation</wsmid:ProductVendor>"
            "<wsmid:ProductVersion>OS: 0.0.0 SP: 0.0 Stack: 3.0</wsmid:ProductVersion></wsmid:IdentifyResponse>"
            % NS["wsmid"]
        )
        if mid:
            payload = envelope("http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity/IdentifyResponse", mid, resp_body)
        else:
            payload = ('<s:Envelope xmlns:s="%s"><s:Header/><s:Body>%s</s:Body></s:Envelope>' % (NS["s"], resp_body)).encode()
        self.app.state.log.write({"event": "identify", "peer": self.client_address[0], "auth": "none"})
        self._send(200, [("Content-Type", "application/soap+xml;charset=UTF-8")], payload)


class DoubleServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr: typing.Tuple[str, int], state: State, verbose: bool = False) -> None:
        import spnego  # noqa: F401  (imported here so --hang mode needs no pyspnego)

        self.state = state
        self.dispatcher = Dispatcher(state)
        self.verbose = verbose
        super().__init__(addr, Handler)

    def new_acceptor(self) -> typing.Any:
        import spnego

        return spnego.server(hostname=self.state.name, service="http", protocol="negotiate")


def run_hang(host: str, port: int) -> None:
    """Accept TCP connections and never answer (a wedged host)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(64)
    held: typing.List[socket.socket] = []

    def drain(c: socket.socket) -> None:
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass
        finally:
            c.close()

    print("target_double hanging on %s:%d" % (host, port), flush=True)
    while True:
        conn, _ = srv.accept()
        held.append(conn)
        threading.Thread(target=drain, args=(conn,), daemon=True).start()


def main(argv: typing.Optional[typing.List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bind", required=True, help="host:port, e.g. 127.0.0.21:5985")
    p.add_argument("--name", default=None, help="machine name (COMPUTERNAME), default from the bind address")
    p.add_argument("--log", default=None, help="JSON-lines request log file")
    p.add_argument("--ntlm-user-file", default=None, help="sets NTLM_USER_FILE (DOMAIN:USER:PASSWORD lines)")
    p.add_argument("--hang", action="store_true", help="accept TCP and never answer")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)

    host, _, port_s = args.bind.rpartition(":")
    port = int(port_s)
    if args.hang:
        run_hang(host, port)
        return 0
    if args.ntlm_user_file:
        os.environ["NTLM_USER_FILE"] = os.path.abspath(args.ntlm_user_file)
    if not os.environ.get("NTLM_USER_FILE"):
        p.error("NTLM_USER_FILE not set (use --ntlm-user-file)")

    state = State(args.name or host, JsonLog(args.log))
    server = DoubleServer((host, port), state, verbose=args.verbose)

    def stop(signum: int, frame: typing.Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("target_double %s listening on %s:%d" % (state.name, host, port), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        state.kill_all()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
