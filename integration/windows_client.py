"""A client that behaves like Windows' WinRM client towards a PowerShell shell: pypsrp's WSMan asking for Xpress
compression in the Create, as Windows PowerShell 5.1 and PowerShell 7 on Windows do by default, and compressing /
decompressing every rsp:Stream of a shell created with it (xpress.py, written from the format). Shared by the
interop tests and benches/psrp_compression.py."""

from __future__ import annotations

import base64
import typing
import xml.etree.ElementTree as ET

import xpress

RSP = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
SOAP = "http://www.w3.org/2003/05/soap-envelope"
NS = {"rsp": RSP}
PS_PREFIX = "http://schemas.microsoft.com/powershell/"


def xpress_wsman_class() -> typing.Any:
    """The class (pypsrp is imported only when asked for)."""
    from pypsrp.wsman import WSMan, WSManAction

    class XpressWSMan(WSMan):
        """WSMan that puts `rsp:CompressionType` (xpress, mustUnderstand) in a PowerShell shell's Create, and for a
        shell created with XpressCompression compresses the streams of its Sends and decompresses those of its
        ReceiveResponses. `plain_sends` lets a test send one Send's bytes as they are (bad framing); `tight_sends`
        makes every compressed chunk of a Send end with its last symbols in its last word (xpress.compress)."""

        def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
            super().__init__(*args, **kwargs)
            self.compressed_shells: typing.Set[str] = set()
            self.sent: typing.List[typing.Tuple[int, int]] = []  # (original, compressed) bytes per Send stream
            self.received: typing.List[typing.Tuple[int, int]] = []
            self.plain_sends = False
            self.tight_sends = False

        def _create_header(self, action: str, resource_uri: str, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
            message_id, header = super()._create_header(action, resource_uri, *args, **kwargs)
            if action == WSManAction.CREATE and resource_uri.startswith(PS_PREFIX):
                ET.SubElement(header, "{%s}CompressionType" % RSP,
                              attrib={"{%s}mustUnderstand" % SOAP: "true"}).text = "xpress"
            return message_id, header

        @staticmethod
        def _shell_of(selector_set: typing.Any) -> str:
            for name, value, _attrs in getattr(selector_set, "values", []):
                if name == "ShellId":
                    return str(value).upper()
            return ""

        def create(self, resource_uri: str, resource: typing.Any, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
            body = super().create(resource_uri, resource, *args, **kwargs)
            mode = body.find("rsp:Shell/rsp:CompressionMode", NS)
            shell_id = body.find("rsp:Shell/rsp:ShellId", NS)
            if mode is not None and mode.text == "XpressCompression" and shell_id is not None:
                self.compressed_shells.add((shell_id.text or "").upper())
            return body

        def send(self, resource_uri: str, resource: typing.Any, option_set: typing.Any = None,
                 selector_set: typing.Any = None, timeout: typing.Any = None) -> typing.Any:
            if self._shell_of(selector_set) in self.compressed_shells and not self.plain_sends:
                for st in resource.findall("rsp:Stream", NS):
                    raw = base64.b64decode(st.text or "")
                    packed = xpress.compress(raw, tight=self.tight_sends)
                    self.sent.append((len(raw), len(packed)))
                    st.text = base64.b64encode(packed).decode()
            return super().send(resource_uri, resource, option_set, selector_set, timeout)

        def receive(self, resource_uri: str, resource: typing.Any, option_set: typing.Any = None,
                    selector_set: typing.Any = None, timeout: typing.Any = None) -> typing.Any:
            body = super().receive(resource_uri, resource, option_set, selector_set, timeout)
            if self._shell_of(selector_set) in self.compressed_shells:
                for st in body.iter("{%s}Stream" % RSP):
                    if st.text:
                        packed = base64.b64decode(st.text)
                        raw = xpress.decompress(packed)
                        self.received.append((len(raw), len(packed)))
                        st.text = base64.b64encode(raw).decode()
            return body

    return XpressWSMan
