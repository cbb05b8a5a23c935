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
  ``multipart/encrypted;protocol="application/HTTP-SPNEGO-session-encrypted"``
  (or ``HTTP-CredSSP-session-encrypted`` after CredSSP, 16 KiB chunks under
  ``multipart/x-multi-encrypted``); over plain HTTP unencrypted bodies are refused
  (HTTP 401) and never processed. Over HTTPS (``--tls CERT,KEY``), like Windows, plain
  ``application/soap+xml`` bodies are accepted too (and encrypted ones still are).
* ``--auth negotiate,basic,credssp``: schemes offered, one ``WWW-Authenticate`` line each,
  in that order. Basic (HTTPS only) is checked against the same users file (user given as
  ``DOMAIN\\user`` or ``user``). CredSSP uses pyspnego's CredSSP acceptor (inner TLS with
  the HTTPS certificate, or a generated self-signed one over HTTP); when it completes, the
  delegated password is compared with the users file and only ``delegated_password_ok``
  is logged, never the password.
* ``--auth kerberos`` (with ``--spn HTTP/host``): a host that accepts Kerberos only, as with
  "Restrict NTLM" (``Negotiate`` offered; SPNEGO-wrapped or raw krb5 tokens under ``Negotiate``
  or ``Kerberos``; NTLM refused with 401). The acceptor is pyspnego with python-gssapi (MIT krb5)
  and its own keytab from ``KRB5_KTNAME=FILE:...`` (and the realm's ``KRB5_CONFIG``), as the
  harness gives them: independent of sspi. The user logged is the Kerberos principal
  (``alice@LAB.TEST``); bodies are sealed with Kerberos wrap tokens (pyspnego's
  ``wrap_winrm``/``unwrap_winrm``), and over TLS the channel binding is checked by MIT
  (``cbt``: verified when the ticket was bound to this channel, absent otherwise; with
  ``--cbt strict`` an unbound ticket is refused).
* ``--cbt strict`` (with ``--tls``): CbtHardeningLevel=Strict. The NTLM AUTHENTICATE must
  carry MsvAvChannelBindings = MD5(gss_channel_bindings("tls-server-end-point:" +
  hash of our certificate)); absent / all-zero / wrong bindings are refused
  with 401 (checked here and by pyspnego's acceptor, which is given the bindings).
* Every log record carries ``auth`` (negotiate / basic / credssp / none) and ``tls``;
  on TLS + Negotiate also ``cbt`` (verified / absent / zero / mismatch).
* WinRS over ``/bin/sh``: Create, Command, Receive, Send, Signal, Delete on the cmd
  shell resource.
* PowerShell remoting (PSRP) on ``http://schemas.microsoft.com/powershell/...``: a runspace
  pool opens (SESSION_CAPABILITY, APPLICATION_PRIVATE_DATA, RUNSPACEPOOL_STATE Opened) and
  pipelines run as pypsrp sends them: a script runs under ``/bin/sh`` (each stdout line an
  output string, each stderr line an ErrorRecord), ``Write-Output`` outputs its arguments,
  ``Write-Error`` makes an ErrorRecord; then PIPELINE_STATE Completed. Objects are CLIXML
  as Windows serialises them. Fragments are reassembled as a byte stream: one may straddle two Sends.
  Each request that completed a pipeline logs what ran (``ran``: command id, each command's name, whether it
  is a script, the SHA-256 and length of its text).
* Compression as Windows negotiates it: a PowerShell Create with the header ``rsp:CompressionType`` = ``xpress``
  gets ``<rsp:CompressionMode>XpressCompression</rsp:CompressionMode>`` in the created rsp:Shell; from then on
  every rsp:Stream of that shell's Sends is decompressed and every rsp:Stream of its ReceiveResponses is
  compressed (``xpress.py``: Xpress Huffman in WinRM's chunk framing). A stream that does not decompress is
  answered with a fault (logged ``fault`` and ``decompress_error``).
* ``--replay DIR``: answers with recorded exchanges instead (pypsrp's ``responses/*.yml``, recorded against
  Windows): each request gets the response recorded for its MessageID, with the recorded HTTP status; a
  request nobody recorded gets a fault (a Delete: a DeleteResponse, as the relay sends them at session end).
  Logged ``replayed``: the fixture's name, or ``unrecorded``.
* Every processed request is logged as one JSON line to ``--log``.

Run: ``python target_double.py --bind 127.0.0.21:5985 --name web01 --log web01.jsonl``
``python target_double.py --bind 127.0.0.25:5986 --tls web03.crt,web03.key --cbt strict ...``
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import xpress  # noqa: E402

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
WMI_PREFIX = "http://schemas.microsoft.com/wbem/wsman/1/wmi/"
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


def arrivals_log_path(log: str) -> str:
    """Where a double logging to `log` records requests as they arrive."""
    return re.sub(r"\.jsonl$", "", log) + ".arrivals.jsonl"


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


# ---------------------------------------------------------------------------
# PSRP (PowerShell remoting) as a Windows server answers it

PSRP_SESSION_CAPABILITY = 0x00010002
PSRP_RUNSPACEPOOL_STATE = 0x00021005
PSRP_CREATE_PIPELINE = 0x00021006
PSRP_APPLICATION_PRIVATE_DATA = 0x00021009
PSRP_PIPELINE_OUTPUT = 0x00041004
PSRP_ERROR_RECORD = 0x00041005
PSRP_PIPELINE_STATE = 0x00041006
PSRP_TO_CLIENT = 1


class PsrpAssembler:
    """Messages from fragments (object id, fragment id, start/end flags, length, blob), across calls. The bytes
    are one stream: a client cuts fixed windows out of it, so a fragment (even its header) can end in the next
    Send; what is not whole yet waits in `pending`."""

    def __init__(self) -> None:
        self.partial: typing.Dict[int, bytes] = {}
        self.pending = b""

    def push(self, data: bytes) -> typing.List[typing.Tuple[int, bytes, bytes, bytes]]:
        """Returns completed messages as (type, rpid bytes, pid bytes, payload without BOM)."""
        done = []
        data = self.pending + data
        while len(data) >= 21:
            obj_id, _frag_id, flags, length = struct.unpack(">QQBI", data[:21])
            if len(data) < 21 + length:
                break
            blob, data = data[21:21 + length], data[21 + length:]
            if flags & 1:
                self.partial[obj_id] = b""
            if obj_id not in self.partial:
                continue
            self.partial[obj_id] += blob
            if flags & 2:
                msg = self.partial.pop(obj_id)
                if len(msg) >= 40:
                    payload = msg[40:]
                    if payload.startswith(b"\xef\xbb\xbf"):
                        payload = payload[3:]
                    done.append((struct.unpack("<I", msg[4:8])[0], msg[8:24], msg[24:40], payload))
        self.pending = data
        return done


def clixml_string(text: str) -> str:
    """A string as PowerShell's serializer writes it: XML-escaped, control characters as _xHHHH_."""
    text = text.replace("_x", "_x005F_x")
    text = "".join(c if (ord(c) >= 0x20 or c == "\t") else "_x%04X_" % ord(c) for c in text)
    return xml_escape(text)


def clixml_error_record(message: str, command: str) -> str:
    m = clixml_string(message)
    return (
        '<Obj RefId="0"><TN RefId="0"><T>System.Management.Automation.ErrorRecord</T><T>System.Object</T></TN>'
        "<ToString>%s</ToString><MS>"
        '<Obj N="Exception" RefId="1"><TN RefId="1"><T>Microsoft.PowerShell.Commands.WriteErrorException</T>'
        "<T>System.SystemException</T><T>System.Exception</T><T>System.Object</T></TN>"
        "<ToString>Microsoft.PowerShell.Commands.WriteErrorException: %s</ToString>"
        '<Props><S N="Message">%s</S><Nil N="Data" /><Nil N="InnerException" /></Props></Obj>'
        '<Nil N="TargetObject" /><S N="FullyQualifiedErrorId">Microsoft.PowerShell.Commands.WriteErrorException</S>'
        '<Nil N="InvocationInfo" /><I32 N="ErrorCategory_Category">0</I32>'
        '<S N="ErrorCategory_Activity">%s</S><S N="ErrorCategory_Reason">WriteErrorException</S>'
        '<S N="ErrorCategory_TargetName"></S><S N="ErrorCategory_TargetType"></S>'
        '<S N="ErrorCategory_Message">NotSpecified: (:) [%s], WriteErrorException</S>'
        '<B N="SerializeExtendedInfo">false</B></MS></Obj>'
        % (m, m, m, clixml_string(command), clixml_string(command))
    )


def decode_clixml_escapes(text: str) -> str:
    return re.sub(r"_x([0-9A-Fa-f]{4})_", lambda mo: chr(int(mo.group(1), 16)), text or "")


class PsrpShell:
    """A runspace pool: what its next runspace Receive returns, and its pipelines."""

    def __init__(self, creation_b64: str) -> None:
        self.rpid = b"\x00" * 16
        self.next_object_id = 1
        for _t, rpid, _pid, _payload in PsrpAssembler().push(base64.b64decode(creation_b64 or "")):
            self.rpid = rpid
        self.pool_out: typing.List[bytes] = []
        self.queue_pool(PSRP_SESSION_CAPABILITY,
                        '<Obj RefId="0"><MS><Version N="protocolversion">2.3</Version><Version N="PSVersion">2.0</Version>'
                        '<Version N="SerializationVersion">1.1.0.1</Version></MS></Obj>')
        self.queue_pool(PSRP_APPLICATION_PRIVATE_DATA,
                        '<Obj RefId="0"><MS><Obj N="ApplicationPrivateData" RefId="1"><TN RefId="0">'
                        "<T>System.Management.Automation.PSPrimitiveDictionary</T><T>System.Collections.Hashtable</T>"
                        "<T>System.Object</T></TN><DCT /></Obj></MS></Obj>")
        self.queue_pool(PSRP_RUNSPACEPOOL_STATE, '<Obj RefId="0"><MS><I32 N="RunspaceState">2</I32></MS></Obj>')
        # command id -> (assembler, pid, output fragments, done)
        self.pipelines: typing.Dict[str, dict] = {}

    def fragment(self, msg_type: int, pid: bytes, xml: str) -> bytes:
        msg = struct.pack("<II", PSRP_TO_CLIENT, msg_type) + self.rpid + pid + b"\xef\xbb\xbf" + xml.encode("utf-8")
        obj_id = self.next_object_id
        self.next_object_id += 1
        return struct.pack(">QQBI", obj_id, 0, 3, len(msg)) + msg

    def queue_pool(self, msg_type: int, xml: str) -> None:
        self.pool_out.append(self.fragment(msg_type, b"\x00" * 16, xml))

    def feed(self, command_id: str, data: bytes) -> typing.List[dict]:
        """Fragments for a pipeline (Command arguments, then Send); runs it once CREATE_PIPELINE is whole.
        Returns what ran, for the log."""
        p = self.pipelines.setdefault(command_id, {"assembler": PsrpAssembler(), "out": [], "done": False})
        ran = []
        for msg_type, _rpid, pid, payload in p["assembler"].push(data):
            if msg_type == PSRP_CREATE_PIPELINE:
                ran.append({"command_id": command_id, "commands": self.run(p, pid, payload)})
        return ran

    def run(self, p: dict, pid: bytes, payload: bytes) -> typing.List[dict]:
        root = ET.fromstring(payload.decode("utf-8"))
        ps = root.find("./MS/Obj[@N='PowerShell']/MS")
        statements = ps.findall("./Obj[@N='ExtraCmds']/LST/Obj/MS/Obj[@N='Cmds']") if ps is not None else []
        if not statements and ps is not None:
            statements = ps.findall("./Obj[@N='Cmds']")
        ran: typing.List[dict] = []
        for cmds in statements:
            for cmd in cmds.findall("./LST/Obj/MS"):
                name = decode_clixml_escapes(text_of(cmd.find("./S[@N='Cmd']")) or "")
                is_script = (text_of(cmd.find("./B[@N='IsScript']")) or "").lower() == "true"
                args = []
                for arg in cmd.findall("./Obj[@N='Args']/LST/Obj/MS"):
                    n, v = arg.find("./*[@N='N']"), arg.find("./*[@N='V']")
                    args.append((None if n is None or n.tag == "Nil" else decode_clixml_escapes(n.text or ""),
                                 None if v is None or v.tag == "Nil" else decode_clixml_escapes(v.text or "")))
                line = " ".join([name] + ["%s%s" % ("-%s " % n if n else "", v or "") for n, v in args])
                self.run_command(p, pid, name, is_script, args)
                text = name.encode("utf-8")
                ran.append({"name": name[:200], "script": is_script, "sha256": sha256_hex(text), "bytes": len(text),
                            "line": line})
        p["out"].append(self.fragment(PSRP_PIPELINE_STATE, pid,
                                      '<Obj RefId="0"><MS><I32 N="PipelineState">4</I32></MS></Obj>'))
        p["done"] = True
        return ran

    def run_command(self, p: dict, pid: bytes, name: str, is_script: bool,
                    args: typing.List[typing.Tuple[typing.Optional[str], typing.Optional[str]]]) -> None:
        def output(text: str) -> None:
            p["out"].append(self.fragment(PSRP_PIPELINE_OUTPUT, pid, "<S>%s</S>" % clixml_string(text)))

        def error(text: str, command: str) -> None:
            p["out"].append(self.fragment(PSRP_ERROR_RECORD, pid, clixml_error_record(text, command)))

        if is_script:
            done = subprocess.run(["/bin/sh", "-c", name], capture_output=True, cwd="/tmp", timeout=60,
                                  env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"})
            for line in done.stdout.decode("utf-8", "replace").splitlines():
                output(line)
            for line in done.stderr.decode("utf-8", "replace").splitlines():
                error(line, "Write-Error")
        elif name.lower() == "write-output":
            for n, v in args:
                if v is not None and n in (None, "InputObject"):
                    output(v)
        elif name.lower() == "write-error":
            for n, v in args:
                if v is not None and n in (None, "Message"):
                    error(v, "Write-Error")
        else:
            error("The term '%s' is not recognized as a name of a cmdlet, function, script file, or executable "
                  "program." % name, name)


class Shell:
    def __init__(self, shell_id: str, owner: str, resource_uri: str, creation_xml: typing.Optional[str]) -> None:
        self.id = shell_id
        self.owner = owner
        self.resource_uri = resource_uri
        self.creation_xml = creation_xml
        self.commands: typing.Dict[str, Command] = {}
        self.created = time.time()
        self.psrp: typing.Optional[PsrpShell] = None
        # Xpress compression of every rsp:Stream, when the Create asked for it (PowerShell shells only, as Windows).
        self.compressed = False
        if resource_uri.startswith(PS_URI_PREFIX):
            try:
                self.psrp = PsrpShell(creation_xml or "")
            except (ValueError, struct.error):
                self.psrp = None


class State:
    def __init__(self, name: str, log: JsonLog, arrivals: typing.Optional[JsonLog] = None) -> None:
        self.name = name
        self.log = log
        # Requests as they arrive, before they are handled (the log has them once answered): a test waits here
        # for a Receive or a held-back Create to be at the target instead of sleeping.
        self.arrivals = arrivals or JsonLog(None)
        self.lock = threading.Lock()
        self.shells: typing.Dict[str, Shell] = {}
        # Seconds a Create answer is held back after the shell exists (a slow target).
        self.create_delay = 0.0

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
# Session encryption framing


def decrypt_body(ctx: typing.Any, content_type: str, body: bytes, kind: str = "negotiate") -> bytes:
    """NTLM sealing keeps the plaintext's length after the 16-byte signature; a Kerberos wrap token's data
    (encrypted data and padding) is not as long as the plaintext: it runs to the next boundary, as pywinrm
    and pypsrp read it."""
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
        if kind == "kerberos":
            end = body.find(BOUNDARY, pos)
            if end < 0:
                raise ValueError("missing boundary after the wrap token")
        else:
            end = pos + length  # RC4 sealing keeps the length
        data = body[pos:end]
        pos = end
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
        # As received (the relay clamps what a client asks for; tests read it from the log).
        self.op_timeout_text = text_of(header.find("w:OperationTimeout", NS))
        self.op_timeout = parse_duration(self.op_timeout_text, DEFAULT_OP_TIMEOUT)
        self.selectors = {
            sel.get("Name"): (sel.text or "").strip() for sel in header.findall("w:SelectorSet/w:Selector", NS)
        }
        self.shell_id = self.selectors.get("ShellId")
        self.compression = (text_of(header.find("rsp:CompressionType", NS)) or "").strip()
        size = (text_of(header.find("w:MaxEnvelopeSize", NS)) or "").strip()
        self.max_envelope = int(size) if size.isdigit() else 0
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
        if req.resource_uri.lower().startswith(WMI_PREFIX):
            return self.wmi(req, log_extra)
        if name == "Create":
            created = self.create(req, user, client_ip, log_extra)
            time.sleep(self.state.create_delay)
            return created
        if name == "Delete":
            return self.delete(req, user)
        if name == "Command":
            return self.command(req, user, log_extra)
        if name == "Receive":
            return self.receive(req, user, log_extra)
        if name == "Send":
            return self.send(req, user, log_extra)
        if name == "Signal":
            return self.signal(req, user, log_extra)
        raise Fault(
            "a:ActionNotSupported",
            2150858757,
            "The action %s is not supported by the service." % req.action,
            value="s:Sender",
        )

    # -- WMI/CIM: a Get answers one made-up instance; an Invoke (the action is the resource URI and the method)
    # answers ReturnValue 0. Nothing runs; the log says what arrived ("wmi": Get, or the method).
    def wmi(self, req: WsmanRequest, log_extra: dict) -> bytes:
        cls = req.resource_uri.rsplit("/", 1)[-1]
        ns = xml_escape(req.resource_uri)
        if req.action == ACTION_BASE_TRANSFER + "Get":
            log_extra["wmi"] = "Get"
            body = '<p:%s xmlns:p="%s"><p:Name>Spooler</p:Name><p:State>Running</p:State></p:%s>' % (cls, ns, cls)
            return envelope(ACTION_BASE_TRANSFER + "GetResponse", req.message_id, body)
        if req.action.lower().startswith(req.resource_uri.lower() + "/"):
            log_extra["wmi"] = req.action_name
            body = '<p:%s_OUTPUT xmlns:p="%s"><p:ReturnValue>0</p:ReturnValue></p:%s_OUTPUT>' % (
                req.action_name, ns, req.action_name)
            return envelope(req.action + "Response", req.message_id, body)
        raise Fault("a:ActionNotSupported", 2150858757, "This double answers WMI Get and Invoke only", value="s:Sender")

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
        compression = ""
        if shell.psrp is not None and req.compression.lower() == "xpress":
            shell.compressed = True
            log_extra["compression"] = "xpress"
            compression = "<rsp:CompressionMode>XpressCompression</rsp:CompressionMode>"
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
            "<rsp:InputStreams>%s</rsp:InputStreams><rsp:OutputStreams>%s</rsp:OutputStreams>%s"
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
                compression,
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
        if shell.psrp is not None:
            cmd_id = (cl.get("CommandId") or str(uuid.uuid4())).upper()
            args_b64 = "".join(a.text or "" for a in cl.findall("rsp:Arguments", NS))
            # rsp:Arguments are never compressed.
            ran = shell.psrp.feed(cmd_id, base64.b64decode(args_b64))
            if ran:
                log_extra["ran"] = ran
            log_extra["command_id"] = cmd_id
            if ran:
                log_extra["pipeline"] = ran
            body = "<rsp:CommandResponse><rsp:CommandId>%s</rsp:CommandId></rsp:CommandResponse>" % cmd_id
            return envelope(ACTION_BASE_SHELL + "CommandResponse", req.message_id, body)
        if shell.resource_uri != CMD_URI:
            raise Fault("a:ActionNotSupported", 2150858757, "This double runs only cmd and PowerShell", value="s:Sender")
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
        if shell.psrp is not None:
            return self.receive_psrp(req, shell, cmd_id, log_extra)
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

    def receive_psrp(self, req: WsmanRequest, shell: Shell, cmd_id: typing.Optional[str], log_extra: dict) -> bytes:
        """The runspace pool's messages (no CommandId), or a pipeline's output and, once it finished, Done."""
        psrp = typing.cast(PsrpShell, shell.psrp)
        if cmd_id is None:
            queue, attr, done = psrp.pool_out, "", False
        else:
            p = psrp.pipelines.get(cmd_id.upper())
            if p is None:
                raise Fault("w:InvalidSelectors", 2150858843, "Unknown pipeline %s" % cmd_id, value="s:Sender")
            queue, attr, done = p["out"], ' CommandId="%s"' % cmd_id, p["done"]
        # Like Windows, what does not fit in the client's MaxEnvelopeSize waits for the next Receive (counted
        # uncompressed, base64, with room for each stream's element).
        budget = (req.max_envelope or 153600) - 2048
        taken: typing.List[bytes] = []
        size = 0
        while queue and (not taken or size + (len(queue[0]) * 4 // 3 + 100) <= budget):
            taken.append(queue.pop(0))
            size += len(taken[-1]) * 4 // 3 + 100
        done = done and not queue
        if not taken and not done:
            time.sleep(min(req.op_timeout, 1.0))
            raise Fault("w:TimedOut", TIMED_OUT_CODE, TIMED_OUT_TEXT)
        if shell.compressed and taken:
            # One stream for what this Receive carries, compressed as a whole.
            log_extra["compressed_out"] = [len(f) for f in taken]
            taken = [xpress.compress(b"".join(taken))]
        parts = ['<rsp:Stream Name="stdout"%s>%s</rsp:Stream>' % (attr, base64.b64encode(f).decode()) for f in taken]
        if done:
            parts.append('<rsp:CommandState%s State="%sCommandState/Done"/>' % (attr, ACTION_BASE_SHELL))
            psrp.pipelines.pop(cmd_id.upper(), None)
        body = "<rsp:ReceiveResponse>%s</rsp:ReceiveResponse>" % "".join(parts)
        return envelope(ACTION_BASE_SHELL + "ReceiveResponse", req.message_id, body)

    # -- Send
    def send(self, req: WsmanRequest, user: str, log_extra: dict) -> bytes:
        shell = self._get_shell(req, user)
        if shell.psrp is not None:
            ran: typing.List[dict] = []
            for st in req.body.findall("rsp:Send/rsp:Stream", NS):
                data = base64.b64decode((st.text or "").encode())
                if shell.compressed:
                    try:
                        data = xpress.decompress(data)
                    except xpress.XpressError as e:
                        log_extra["decompress_error"] = str(e)
                        raise Fault("w:InternalError", 2147500037, "The data in stream %s could not be decompressed: %s"
                                    % (st.get("Name"), e))
                    log_extra.setdefault("decompressed_in", []).append(len(data))
                if st.get("CommandId"):
                    ran += shell.psrp.feed(st.get("CommandId").upper(), data)
            if ran:
                log_extra["ran"] = ran
            return envelope(ACTION_BASE_SHELL + "SendResponse", req.message_id, "<rsp:SendResponse/>")
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


class Recorded(Exception):
    """A recorded answer whose HTTP status was not 200 (a fault), sent back as recorded."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__("recorded HTTP %d" % status)
        self.status = status
        self.body = body


class ReplayDispatcher:
    """Answers with recorded exchanges (pypsrp's responses/*.yml): the response recorded for the request's
    MessageID, in recording order when a MessageID repeats."""

    def __init__(self, directory: str) -> None:
        import glob

        import yaml

        self.answers: typing.Dict[str, typing.List[typing.Tuple[str, int, bytes]]] = {}
        self.lock = threading.Lock()
        for path in sorted(glob.glob(os.path.join(directory, "test_*.yml"))):
            name = os.path.basename(path)[:-4]
            with open(path, encoding="utf-8") as fh:
                doc = yaml.safe_load(fh) or {}
            for m in doc.get("messages") or []:
                request, response = m.get("request"), m.get("response")
                if not isinstance(request, str) or not isinstance(response, str):
                    continue  # a recorded connection failure: nothing to answer
                try:
                    message_id = WsmanRequest(request.encode("utf-8")).message_id
                except (ET.ParseError, Fault):
                    continue
                status = int((m.get("transport_error") or {}).get("code", 200))
                self.answers.setdefault(message_id, []).append((name, status, response.encode("utf-8")))

    def handle(self, req: WsmanRequest, user: str, client_ip: str, log_extra: dict) -> bytes:
        with self.lock:
            queue = self.answers.get(req.message_id)
            answer = queue.pop(0) if queue else None
        if answer is None:
            log_extra["replayed"] = "unrecorded"
            if req.action_name == "Delete":
                return envelope(ACTION_BASE_TRANSFER + "DeleteResponse", req.message_id, "")
            raise Fault("w:InvalidSelectors", 2150858843, "No recorded answer for %s %s" % (req.action_name, req.message_id),
                        value="s:Sender")
        name, status, body = answer
        log_extra["replayed"] = name
        if status != 200:
            raise Recorded(status, body)
        return body


# ---------------------------------------------------------------------------
# CredSSP session encryption framing (as pywinrm/pypsrp build it)

CREDSSP_ENC_PROTOCOL = "application/HTTP-CredSSP-session-encrypted"
CREDSSP_CHUNK = 16384


def _encrypted_protocol_of(content_type: str) -> typing.Optional[str]:
    m = re.search(r'protocol="([^"]+)"', content_type)
    return m.group(1) if m else None


def decrypt_credssp_body(ctx: typing.Any, content_type: str, body: bytes) -> typing.Tuple[bytes, int]:
    """Decrypt a CredSSP-encrypted body. Returns (plain, number of part pairs).

    Each part pair: header part (OriginalContent ... Length=N), then an octet-stream part
    holding a u32 LE trailer length followed by TLS application-data records. The records
    are walked by their own length fields (never by searching for the boundary inside
    ciphertext)."""
    if not (content_type.startswith("multipart/encrypted") or content_type.startswith("multipart/x-multi-encrypted")):
        raise ValueError("not an encrypted body")
    if _encrypted_protocol_of(content_type) != CREDSSP_ENC_PROTOCOL:
        raise ValueError("unsupported encryption protocol in %r" % content_type)
    pos = 0
    out = []
    parts = 0
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
        if not m or CREDSSP_ENC_PROTOCOL.encode() not in headers:
            raise ValueError("bad part headers %r" % headers)
        length = int(m.group(1))
        pos = end + len(BOUNDARY) + 2
        if not body.startswith(octet_hdr, pos):
            raise ValueError("missing octet-stream header")
        pos += len(octet_hdr)
        pos += 4  # trailer length: informational (clients compute it differently; Windows ignores it)
        start = pos
        while not body.startswith(BOUNDARY, pos):
            if pos + 5 > len(body):
                raise ValueError("truncated TLS record at offset %d" % pos)
            (rec_len,) = struct.unpack(">H", body[pos + 3 : pos + 5])
            if body[pos] != 23:  # application_data
                raise ValueError("unexpected TLS record type %d" % body[pos])
            pos += 5 + rec_len
            if pos > len(body):
                raise ValueError("truncated TLS record")
        plain = ctx.unwrap(body[start:pos]).data
        if len(plain) != length:
            raise ValueError("decrypted length %d != declared %d" % (len(plain), length))
        if parts and length > CREDSSP_CHUNK:
            raise ValueError("chunk of %d bytes exceeds 16 KiB" % length)
        out.append(plain)
        parts += 1
    if parts > 1 and not content_type.startswith("multipart/x-multi-encrypted"):
        raise ValueError("several parts under %r" % content_type.split(";")[0])
    return b"".join(out), parts


def encrypt_credssp_body(ctx: typing.Any, plain: bytes) -> typing.Tuple[str, bytes]:
    from spnego._credssp import _tls_trailer_length  # type: ignore

    ssl_obj = ctx.get_extra_info("ssl_object")
    cipher, proto, _ = ssl_obj.cipher()
    chunks = [plain[i : i + CREDSSP_CHUNK] for i in range(0, len(plain), CREDSSP_CHUNK)] or [b""]
    payload = []
    for chunk in chunks:
        records = ctx.wrap(chunk).data
        trailer = _tls_trailer_length(len(chunk), proto, cipher)
        payload.append(
            BOUNDARY + b"\r\n"
            b"\tContent-Type: " + CREDSSP_ENC_PROTOCOL.encode() + b"\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=" + str(len(chunk)).encode() + b"\r\n"
            + BOUNDARY + b"\r\n"
            b"\tContent-Type: application/octet-stream\r\n"
            + struct.pack("<I", trailer) + records
        )
    payload.append(BOUNDARY + b"--\r\n")
    kind = "multipart/x-multi-encrypted" if len(plain) > CREDSSP_CHUNK else "multipart/encrypted"
    return '%s;protocol="%s";boundary="Encrypted Boundary"' % (kind, CREDSSP_ENC_PROTOCOL), b"".join(payload)


# ---------------------------------------------------------------------------
# Users, TLS, channel bindings


class Users:
    """The NTLM users file (DOMAIN:USER:PASSWORD lines), also used for Basic and delegated-credential checks."""

    def __init__(self, path: str) -> None:
        self.entries: typing.List[typing.Tuple[str, str, str]] = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.rstrip("\r\n")
                if not line or line.startswith("#"):
                    continue
                dom, user, pw = line.split(":", 2)
                self.entries.append((dom, user, pw))

    @staticmethod
    def split(name: str, domain: typing.Optional[str] = None) -> typing.Tuple[typing.Optional[str], str]:
        if "\\" in name:
            d, _, u = name.partition("\\")
            return d, u
        if "@" in name and not domain:
            u, _, d = name.partition("@")
            return d, u
        return (domain or None), name

    def find(self, name: str, domain: typing.Optional[str] = None) -> typing.Optional[typing.Tuple[str, str, str]]:
        d, u = self.split(name, domain)
        for ent in self.entries:
            if ent[1].lower() == u.lower() and (not d or ent[0].lower() == d.lower()):
                return ent
        return None

    def check(self, name: str, password: str, domain: typing.Optional[str] = None) -> typing.Optional[str]:
        """Canonical DOMAIN\\user when the password matches, else None."""
        import hmac

        ent = self.find(name, domain)
        if ent is None:
            hmac.compare_digest(password.encode(), password.encode())
            return None
        if hmac.compare_digest(ent[2].encode("utf-8"), password.encode("utf-8")):
            return "%s\\%s" % (ent[0], ent[1])
        return None


def tls_server_end_point(cert_der: bytes) -> bytes:
    """tls-server-end-point: hash of the certificate with its signature hash,
    SHA-256 when that is MD5 or SHA-1 (or unknown)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_der_x509_certificate(cert_der)
    try:
        algo = cert.signature_hash_algorithm
    except Exception:
        algo = None
    if algo is None or algo.name in ("md5", "sha1"):
        algo = hashes.SHA256()
    h = hashes.Hash(algo)
    h.update(cert_der)
    return h.finalize()


def ntlm_cbt_status(token: bytes, expected_md5: bytes) -> typing.Optional[typing.Tuple[str, typing.List[str]]]:
    """What an NTLM AUTHENTICATE (raw or inside SPNEGO) says about channel bindings: None if the token holds
    no AUTHENTICATE, else (verified / absent / zero / mismatch / ntlmv1, names of the AV pairs present)."""
    from spnego._ntlm_raw.messages import Authenticate, AvId, NTClientChallengeV2  # type: ignore

    i = token.find(b"NTLMSSP\x00\x03\x00\x00\x00")
    if i < 0:
        return None
    auth = Authenticate.unpack(token[i:])
    resp = auth.nt_challenge_response or b""
    if len(resp) <= 24:
        return "ntlmv1", []
    av = NTClientChallengeV2.unpack(resp[16:]).av_pairs
    names = [getattr(k, "name", None) or str(k) for k in av.keys()]
    cb = av.get(AvId.channel_bindings)
    if cb is None:
        return "absent", names
    if cb == b"\x00" * 16:
        return "zero", names
    return ("verified" if cb == expected_md5 else "mismatch"), names


# ---------------------------------------------------------------------------
# HTTP layer

AUTH_OFFERS = {"negotiate": "Negotiate", "basic": 'Basic realm="WSMAN"', "credssp": "CredSSP", "kerberos": "Negotiate"}
SCHEMES = {"negotiate": "negotiate", "ntlm": "negotiate", "basic": "basic", "credssp": "credssp",
           "kerberos": "kerberos"}
# GSS_C_CHANNEL_BOUND_FLAG: MIT krb5 sets it on an accepted context whose ticket carried this channel's bindings.
GSS_CHANNEL_BOUND = 2048


def kerberos_channel_bound(ctx: typing.Any) -> bool:
    """Whether pyspnego's (Negotiate) acceptor context saw this TLS channel's bindings in the Kerberos
    authenticator (its inner python-gssapi context's flags)."""
    inner = getattr(ctx, "_context", None)
    gss = getattr(inner, "_context", inner)
    return bool(int(getattr(gss, "actual_flags", 0) or 0) & GSS_CHANNEL_BOUND)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    timeout = 300  # idle keep-alive connections

    # per-connection state
    def setup(self) -> None:
        self.tls_failed = False
        self.tls_version: typing.Optional[str] = None
        ssl_ctx = self.server.ssl_context  # type: ignore[attr-defined]
        if ssl_ctx is not None:
            import ssl

            raw = self.request
            raw.settimeout(15)
            try:
                self.request = ssl_ctx.wrap_socket(raw, server_side=True)
                self.tls_version = self.request.version()
            except (ssl.SSLError, OSError) as e:
                # wrap_socket closed the connection. A readiness probe (connect, close) ends in EOF: not logged.
                self.tls_failed = True
                if not isinstance(e, (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError)):
                    self.server.state.log.write({  # type: ignore[attr-defined]
                        "event": "tls_handshake_failed", "reason": "%s: %s" % (type(e).__name__, e),
                        "peer": self.client_address[0], "auth": None, "tls": True,
                    })
                return
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.ctx = None
        self.user: typing.Optional[str] = None
        self.auth_kind: typing.Optional[str] = None  # negotiate / credssp (connection-bound)
        self.cbt: typing.Optional[str] = None
        self.delegated: typing.Optional[dict] = None
        self.conn_id = str(uuid.uuid4())[:8]
        self.requests_on_conn = 0

    def handle(self) -> None:
        if self.tls_failed:
            return
        super().handle()

    def finish(self) -> None:
        if self.tls_failed:
            return
        super().finish()

    def log_message(self, format: str, *args: typing.Any) -> None:  # quiet
        if self.server.verbose:  # type: ignore[attr-defined]
            sys.stderr.write("%s %s\n" % (self.conn_id, format % args))

    @property
    def app(self) -> "DoubleServer":
        return typing.cast("DoubleServer", self.server)

    def _log(self, record: dict, auth: typing.Optional[str] = None) -> None:
        """Every record carries auth and tls (and, on TLS + Negotiate, what the channel binding said)."""
        record.setdefault("auth", auth or self.auth_kind)
        record["tls"] = self.app.ssl_context is not None
        if record["tls"] and record.get("auth") in ("negotiate", "kerberos") and self.cbt is not None:
            record.setdefault("cbt", self.cbt)
        if record.get("auth") == "credssp" and self.delegated is not None:
            for k, v in self.delegated.items():
                record.setdefault(k, v)
        self.app.state.log.write(record)

    def _offers(self) -> typing.List[typing.Tuple[str, str]]:
        # One WWW-Authenticate line per scheme, in the configured order (like HTTP.sys).
        return [("WWW-Authenticate", AUTH_OFFERS[a]) for a in self.app.auths]

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

    # -- authentication steps; each returns (done, extra response headers). done=False: a response was sent.
    def _step_negotiate(self, token_b64: str, peer: str,
                        kind: str = "negotiate") -> typing.Tuple[bool, typing.List[typing.Tuple[str, str]]]:
        try:
            in_token = base64.b64decode(token_b64.strip())
        except Exception:
            self._fail_auth("undecodable token", peer, kind)
            return False, []
        if kind == "kerberos":
            return self._step_kerberos(in_token, peer)
        if self.ctx is None or self.ctx.complete or self.auth_kind != "negotiate":
            self.ctx = self.app.new_acceptor()
            self.user = None
            self.auth_kind = "negotiate"
            self.cbt = None
            self.delegated = None
        if self.app.ssl_context is not None:
            try:
                found = ntlm_cbt_status(in_token, self.app.cbt_md5)
            except Exception as e:
                found = ("unparsable (%s)" % e, [])
            if found is not None:
                status, av_names = found
                self.cbt = status
                if self.app.cbt_strict and status != "verified":
                    self._fail_auth("channel binding %s (CbtHardeningLevel=Strict); AV pairs sent: %s"
                                    % (status, ",".join(av_names)), peer, "negotiate")
                    return False, []
        try:
            out = self.ctx.step(in_token)
        except Exception as e:  # wrong password, malformed token, pyspnego's own CBT check...
            self._fail_auth("%s: %s" % (type(e).__name__, e), peer, "negotiate")
            return False, []
        if not self.ctx.complete:
            self._send(401, [("WWW-Authenticate", "Negotiate " + base64.b64encode(out or b"").decode())])
            return False, []
        if self.app.cbt_strict and self.cbt != "verified":  # never completes without an AUTHENTICATE, but be sure
            self._fail_auth("channel binding %s (CbtHardeningLevel=Strict)" % self.cbt, peer, "negotiate")
            return False, []
        self.user = self.ctx.client_principal or "?"
        self._log({"event": "auth_ok", "user": self.user, "conn": self.conn_id, "peer": peer})
        return True, ([("WWW-Authenticate", "Negotiate " + base64.b64encode(out).decode())] if out else [])

    def _step_kerberos(self, in_token: bytes, peer: str) -> typing.Tuple[bool, typing.List[typing.Tuple[str, str]]]:
        """Kerberos only: the AP-REQ (SPNEGO-wrapped or raw) is accepted with the keytab, NTLM is refused."""
        if b"NTLMSSP\x00" in in_token:
            self._fail_auth("NTLM refused: this host accepts Kerberos only", peer, "kerberos")
            return False, []
        if self.ctx is None or self.ctx.complete or self.auth_kind != "kerberos":
            self.ctx = self.app.new_kerberos_acceptor()
            self.user = None
            self.auth_kind = "kerberos"
            self.cbt = None
            self.delegated = None
        try:
            out = self.ctx.step(in_token)
        except Exception as e:  # a ticket for another key, a bad authenticator, mismatched channel bindings...
            self._fail_auth("%s: %s" % (type(e).__name__, e), peer, "kerberos")
            return False, []
        if not self.ctx.complete:
            self._send(401, [("WWW-Authenticate", "Negotiate " + base64.b64encode(out or b"").decode())])
            return False, []
        if self.ctx.negotiated_protocol != "kerberos":
            self._fail_auth("%s refused: this host accepts Kerberos only" % self.ctx.negotiated_protocol, peer,
                            "kerberos")
            return False, []
        if self.app.ssl_context is not None:
            self.cbt = "verified" if kerberos_channel_bound(self.ctx) else "absent"
            if self.app.cbt_strict and self.cbt != "verified":
                self._fail_auth("channel binding %s (CbtHardeningLevel=Strict)" % self.cbt, peer, "kerberos")
                return False, []
        self.user = self.ctx.client_principal or "?"
        self._log({"event": "auth_ok", "user": self.user, "conn": self.conn_id, "peer": peer})
        return True, ([("WWW-Authenticate", "Negotiate " + base64.b64encode(out).decode())] if out else [])

    def _step_basic(self, token_b64: str, peer: str) -> typing.Optional[str]:
        if self.app.ssl_context is None:
            self._fail_auth("Basic over plain HTTP (AllowUnencrypted=false)", peer, "basic")
            return None
        try:
            name, sep, password = base64.b64decode(token_b64.strip(), validate=True).decode("utf-8").partition(":")
        except Exception:
            self._fail_auth("undecodable Basic credentials", peer, "basic")
            return None
        user = self.app.users.check(name, password) if sep else None
        del password
        if user is None:
            self._fail_auth("logon failure", peer, "basic", claimed=name)
            return None
        return user

    def _step_credssp(self, token_b64: str, peer: str) -> typing.Tuple[bool, typing.List[typing.Tuple[str, str]]]:
        try:
            in_token = base64.b64decode(token_b64.strip())
        except Exception:
            self._fail_auth("undecodable token", peer, "credssp")
            return False, []
        if not in_token:
            self._send(401, self._offers())
            return False, []
        if self.ctx is None or self.ctx.complete or self.auth_kind != "credssp":
            self.ctx = self.app.new_credssp_acceptor()
            self.user = None
            self.auth_kind = "credssp"
            self.cbt = None
            self.delegated = None
        try:
            out = self.ctx.step(in_token)
        except Exception as e:
            self._fail_auth("%s: %s" % (type(e).__name__, e), peer, "credssp")
            return False, []
        if not self.ctx.complete:
            stage = self.ctx.get_extra_info("auth_stage")
            if not out:
                self._fail_auth("CredSSP exchange ended at stage %r without completing" % stage, peer, "credssp")
                return False, []
            if stage == "Authentication failure":  # TSRequest carrying errorCode (logon failure)
                self._log({"event": "auth_failed", "reason": "logon failure (TSRequest errorCode)", "conn": self.conn_id,
                           "peer": peer}, "credssp")
                self.ctx = None
            self._send(401, [("WWW-Authenticate", "CredSSP " + base64.b64encode(out).decode())])
            return False, []
        # Complete: the TSCredentials have been decrypted. Check, never keep or log the password.
        cred = self.ctx.get_extra_info("client_credential")
        dom = getattr(cred, "domain_name", None) or None
        uname = getattr(cred, "username", None)
        password = getattr(cred, "password", None)
        delegated_user = None
        ok = False
        if isinstance(uname, str) and isinstance(password, str):
            canon = self.app.users.check(uname, password, dom)
            ok = canon is not None
            d, u = Users.split(uname, dom)
            delegated_user = "%s\\%s" % (d, u) if d else u
        del password, cred
        self.user = self.ctx.client_principal or "?"
        self.delegated = {"delegated_user": delegated_user, "delegated_password_ok": ok,
                          "credssp_version": self.ctx.get_extra_info("protocol_version"),
                          "credssp_tls": self.ctx.get_extra_info("ssl_object").version()}
        self._log({"event": "auth_ok", "user": self.user, "conn": self.conn_id, "peer": peer})
        return True, ([("WWW-Authenticate", "CredSSP " + base64.b64encode(out).decode())] if out else [])

    def do_POST(self) -> None:
        self.requests_on_conn += 1
        body = self._read_body()
        peer = self.client_address[0]

        if not self.path.lower().startswith("/wsman"):
            self._send(404, [])
            return

        # Unauthenticated Identify, like Windows.
        if (self.headers.get("WSMANIDENTIFY") or "").lower() == "unauthenticated" and body:
            self._identify(body)
            return

        auth = self.headers.get("Authorization")
        extra_headers: typing.List[typing.Tuple[str, str]] = []
        basic_user: typing.Optional[str] = None
        if auth:
            scheme, _, token_b64 = auth.strip().partition(" ")
            kind = SCHEMES.get(scheme.lower())
            if kind == "negotiate" and "kerberos" in self.app.auths:
                kind = "kerberos"  # Negotiate on a Kerberos-only host
            if kind is None or kind not in self.app.auths:
                self._log({"event": "rejected", "reason": "scheme %r not offered" % scheme[:20], "conn": self.conn_id,
                           "peer": peer, "body_bytes": len(body)}, kind or "none")
                self._send(401, self._offers())
                return
            if kind in ("negotiate", "kerberos"):
                ok, extra_headers = self._step_negotiate(token_b64, peer, kind)
                if not ok:
                    return
            elif kind == "credssp":
                ok, extra_headers = self._step_credssp(token_b64, peer)
                if not ok:
                    return
            else:
                basic_user = self._step_basic(token_b64, peer)
                if basic_user is None:
                    return

        if basic_user is not None:
            kind, user, ctx = "basic", basic_user, None
        elif self.user is not None and self.ctx is not None and self.ctx.complete:
            kind, user, ctx = typing.cast(str, self.auth_kind), self.user, self.ctx
        else:
            # Not authenticated on this connection: like Windows, never look at the body.
            if body:
                self._log({"event": "rejected", "reason": "unauthenticated", "conn": self.conn_id, "peer": peer,
                           "body_bytes": len(body)}, "none")
            self._send(401, self._offers())
            return

        if not body:
            self._send(200, extra_headers)
            return

        ctype = self.headers.get("Content-Type") or ""
        encrypted = ctype.startswith("multipart/encrypted") or ctype.startswith("multipart/x-multi-encrypted")
        tls = self.app.ssl_context is not None
        chunks = None
        if not encrypted:
            if not tls:
                # AllowUnencrypted=false: over HTTP only sealed bodies are processed.
                self._log({"event": "rejected", "reason": "unencrypted body", "user": user, "conn": self.conn_id,
                           "peer": peer, "content_type": ctype, "body_bytes": len(body)}, kind)
                self._send(401, self._offers())
                return
            plain = body  # HTTPS: TLS protects the body, as on Windows
        else:
            want = {"negotiate": ENC_PROTOCOL, "kerberos": ENC_PROTOCOL, "credssp": CREDSSP_ENC_PROTOCOL}.get(kind)
            try:
                if want is None or _encrypted_protocol_of(ctype) != want:
                    raise ValueError("protocol %r does not match the %s context" % (_encrypted_protocol_of(ctype), kind))
                if kind in ("negotiate", "kerberos"):
                    plain = decrypt_body(ctx, ctype, body, kind)
                else:
                    plain, chunks = decrypt_credssp_body(ctx, ctype, body)
            except Exception as e:
                self._log({"event": "rejected", "reason": "decrypt failed: %s" % e, "user": user, "conn": self.conn_id,
                           "peer": peer}, kind)
                # The sealing state is now unusable: force re-authentication.
                self.ctx = None
                self.user = None
                self._send(400, [("Connection", "close")])
                self.close_connection = True
                return

        record: dict = {
            "event": "request",
            "user": user,
            "action": None,
            "resource_uri": None,
            "shell_id": None,
            "body_sha256": sha256_hex(raw_body_bytes(plain)),
            "envelope_sha256": sha256_hex(plain),
            "auth": kind,
            "encrypted": encrypted,
            "conn": self.conn_id,
            "peer": peer,
            "path": self.path,
        }
        if chunks is not None:
            record["enc_parts"] = chunks
        if tls:
            record["tls_version"] = self.tls_version
        status = 200
        relates = ""
        try:
            req = WsmanRequest(plain)
            relates = req.message_id
            record.update(action=req.action_name, resource_uri=req.resource_uri, shell_id=req.shell_id,
                          message_id=req.message_id, wsa_to=req.to, operation_timeout=req.op_timeout_text)
            self.app.state.arrivals.write({"event": "arrived", "action": req.action_name, "shell_id": req.shell_id,
                                           "message_id": req.message_id, "user": user, "conn": self.conn_id})
            resp = self.app.dispatcher.handle(req, user, peer, record)
        except Recorded as r:
            status = r.status
            resp = r.body
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
        self._log(record, kind)
        if not encrypted:
            self._send(status, extra_headers + [("Content-Type", "application/soap+xml;charset=UTF-8")], resp)
        elif kind in ("negotiate", "kerberos"):
            ctype_out, payload = encrypt_body(ctx, resp)
            self._send(status, extra_headers + [("Content-Type", ctype_out)], payload)
        else:
            ctype_out, payload = encrypt_credssp_body(ctx, resp)
            self._send(status, extra_headers + [("Content-Type", ctype_out)], payload)

    def _fail_auth(self, reason: str, peer: str, auth: str = "negotiate", claimed: typing.Optional[str] = None) -> None:
        rec = {"event": "auth_failed", "reason": reason, "conn": self.conn_id, "peer": peer}
        if claimed is not None:
            rec["claimed_user"] = claimed
        self._log(rec, auth)
        self.ctx = None
        self.user = None
        self.auth_kind = None
        self._send(401, self._offers())

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
        self._log({"event": "identify", "peer": self.client_address[0]}, "none")
        self._send(200, [("Content-Type", "application/soap+xml;charset=UTF-8")], payload)


class DoubleServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        addr: typing.Tuple[str, int],
        state: State,
        verbose: bool = False,
        auths: typing.Sequence[str] = ("negotiate",),
        tls: typing.Optional[typing.Tuple[str, str]] = None,
        cbt_strict: bool = False,
        tls_max: typing.Optional[str] = None,
        spn: typing.Optional[str] = None,
    ) -> None:
        import spnego  # noqa: F401  (imported here so --hang mode needs no pyspnego)

        self.spn = spn
        self.state = state
        self.dispatcher: typing.Union[Dispatcher, ReplayDispatcher] = Dispatcher(state)
        self.verbose = verbose
        self.auths = list(auths)
        self.users = Users(os.environ["NTLM_USER_FILE"])
        self.ssl_context = None
        self.cbt_strict = cbt_strict
        self.cbt_bindings = None
        self.cbt_md5 = b""
        self.cert_der: typing.Optional[bytes] = None
        if tls:
            import ssl

            cert, key = tls
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if tls_max == "1.2":
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(cert, key)
            self.ssl_context = ctx
            with open(cert, encoding="ascii") as fh:
                pem = fh.read()
            first = pem[pem.index("-----BEGIN CERTIFICATE-----") : pem.index("-----END CERTIFICATE-----") + 25]
            self.cert_der = ssl.PEM_cert_to_DER_cert(first)
            from spnego.channel_bindings import GssChannelBindings

            self.cbt_bindings = GssChannelBindings(application_data=b"tls-server-end-point:" + tls_server_end_point(self.cert_der))
            self.cbt_md5 = hashlib.md5(self.cbt_bindings.pack()).digest()
        elif cbt_strict:
            raise ValueError("--cbt strict needs --tls")
        self.credssp_tls = None
        if "credssp" in self.auths:
            self.credssp_tls = self._credssp_tls_context(tls)
        super().__init__(addr, Handler)

    @staticmethod
    def _credssp_tls_context(tls: typing.Optional[typing.Tuple[str, str]]) -> typing.Any:
        """The CredSSP (inner) TLS server context: the HTTPS certificate when there is one, else a
        self-signed RSA certificate like the one WinRM generates for CredSSP over HTTP."""
        import shutil as _shutil
        import ssl
        import tempfile

        import spnego.tls

        ctx = spnego.tls.default_tls_context(usage="accept")
        if tls:
            cert, key = tls
            ctx.context.load_cert_chain(cert, key)
            with open(cert, encoding="ascii") as fh:
                pem = fh.read()
            first = pem[pem.index("-----BEGIN CERTIFICATE-----") : pem.index("-----END CERTIFICATE-----") + 25]
            ctx.public_key = spnego.tls.get_certificate_public_key(ssl.PEM_cert_to_DER_cert(first))
        else:
            cert_pem, key_pem, pub = spnego.tls.generate_tls_certificate()
            d = tempfile.mkdtemp()
            try:
                p = os.path.join(d, "credssp.pem")
                with open(p, "wb") as fh:
                    fh.write(cert_pem + key_pem)
                ctx.context.load_cert_chain(p)
            finally:
                _shutil.rmtree(d)
            ctx.public_key = pub
        return ctx

    def new_acceptor(self) -> typing.Any:
        import spnego

        return spnego.server(hostname=self.state.name, service="http", protocol="negotiate",
                             channel_bindings=self.cbt_bindings if self.cbt_strict else None)

    def new_kerberos_acceptor(self) -> typing.Any:
        import spnego

        service, _, host = (self.spn or "").partition("/")
        # Over TLS MIT always checks the bindings it is given against the ticket's; --cbt strict also
        # refuses a ticket that carries none (see _step_kerberos).
        return spnego.server(hostname=host, service=service, protocol="negotiate",
                             channel_bindings=self.cbt_bindings)

    def new_credssp_acceptor(self) -> typing.Any:
        import spnego

        return spnego.server(hostname=self.state.name, service="http", protocol="credssp",
                             credssp_tls_context=self.credssp_tls)


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
    p.add_argument("--bind", required=True, action="append",
                   help="host:port, e.g. 127.0.0.21:5985; repeat it to serve one state (shells, log) on several")
    p.add_argument("--name", default=None, help="machine name (COMPUTERNAME), default from the bind address")
    p.add_argument("--log", default=None, help="JSON-lines request log file")
    p.add_argument("--ntlm-user-file", default=None, help="sets NTLM_USER_FILE (DOMAIN:USER:PASSWORD lines)")
    p.add_argument("--hang", action="store_true", help="accept TCP and never answer")
    p.add_argument("--tls", default=None, metavar="CERT,KEY", help="serve HTTPS (TLS 1.2+) with this PEM cert chain and key")
    p.add_argument("--tls-max", choices=["1.2", "1.3"], default=None, help="highest TLS version offered")
    p.add_argument("--auth", default="negotiate",
                   help="comma-separated schemes offered in this order: negotiate, basic, credssp, kerberos "
                        "(default negotiate); kerberos (Kerberos only, with --spn and KRB5_KTNAME) excludes negotiate")
    p.add_argument("--spn", default=None, help="with --auth kerberos: the service principal this host accepts, "
                                               "e.g. HTTP/web11.lab.test (its key in KRB5_KTNAME)")
    p.add_argument("--cbt", choices=["none", "strict"], default="none",
                   help="strict: with --tls, refuse NTLM without a matching tls-server-end-point binding")
    p.add_argument("--create-delay", type=float, default=0.0, help="hold each Create answer back this many seconds")
    p.add_argument("--replay", default=None, metavar="DIR",
                   help="answer with the exchanges recorded in DIR/test_*.yml (pypsrp's responses), by MessageID")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)

    binds = [(b.rpartition(":")[0], int(b.rpartition(":")[2])) for b in args.bind]
    host, port = binds[0]
    if args.hang:
        run_hang(host, port)
        return 0
    if args.ntlm_user_file:
        os.environ["NTLM_USER_FILE"] = os.path.abspath(args.ntlm_user_file)
    if not os.environ.get("NTLM_USER_FILE"):
        p.error("NTLM_USER_FILE not set (use --ntlm-user-file)")

    auths = [a.strip().lower() for a in args.auth.split(",") if a.strip()]
    bad = [a for a in auths if a not in AUTH_OFFERS]
    if bad or not auths:
        p.error("--auth: unknown scheme(s) %s" % bad)
    tls = None
    if args.tls:
        cert, _, key = args.tls.partition(",")
        tls = (cert, key or cert)
    if args.cbt == "strict" and not tls:
        p.error("--cbt strict needs --tls")
    if "kerberos" in auths and ("negotiate" in auths or not args.spn or "/" not in args.spn):
        p.error("--auth kerberos needs --spn service/host and excludes negotiate")

    state = State(args.name or host, JsonLog(args.log), JsonLog(arrivals_log_path(args.log)) if args.log else None)
    state.create_delay = args.create_delay
    servers = [DoubleServer(addr, state, verbose=args.verbose, auths=auths, tls=tls,
                            cbt_strict=args.cbt == "strict", tls_max=args.tls_max, spn=args.spn) for addr in binds]
    server = servers[0]
    if args.replay:
        replay = ReplayDispatcher(args.replay)
        for s in servers:
            s.dispatcher = replay

    def stop(signum: int, frame: typing.Any) -> None:
        for s in servers:
            threading.Thread(target=s.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for h, p_ in binds:
        print("target_double %s listening on %s://%s:%d auth=%s cbt=%s" % (
            state.name, "https" if tls else "http", h, p_, ",".join(auths), args.cbt), flush=True)
    others = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True) for s in servers[1:]]
    for t in others:
        t.start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        for t in others:
            t.join(timeout=5)
        state.kill_all()
        for s in servers:
            s.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
