#!/usr/bin/env python3
"""Hostile-input corpus for winrm-relay, layer by layer (see README.md here).

Every case is deterministic: fixed bytes or bytes from a seeded PRNG. Cases whose
bytes depend on a live session (a real NTLM AUTHENTICATE, a record sealed with the
session's TLS keys) are *builders*: functions the test calls with that session's
state; the manifest marks them "runtime".

    python3 integration/corpus/gen_corpus.py          # rewrite files/ and MANIFEST.tsv
    python3 integration/corpus/gen_corpus.py --check  # exit 1 if they are out of date

Layers and how the test delivers them (integration/tests/test_8_hostile.py):

  http     raw bytes written to a fresh TCP connection to the relay
  authz    value of an `Authorization:` header on an otherwise valid empty POST
  tls      bytes base64'd into `Authorization: CredSSP <b64>` (TLS records) on a fresh
           connection; `tls-mid` cases first run a real ClientHello leg
  tsreq    plaintext TSRequest DER written through a real TLS session (ssl.SSLObject over
           MemoryBIO) after the CredSSP TLS handshake, at a given stage:
           first | after_challenge (a real NTLM NEGOTIATE/CHALLENGE happened) |
           after_pubkey (pubKeyAuth was verified; next is authInfo)
  session  an HTTP body sent on an authenticated session (multipart framing, lengths,
           records); builders get a function that seals plaintext with the session
  soap     plaintext SOAP sealed correctly on an authenticated session; the test posts it
           to a live double (web01) and checks from its log that the relay let nothing through
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import sys
import typing

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = os.path.join(HERE, "files")
MANIFEST = os.path.join(HERE, "MANIFEST.tsv")
# Larger payloads are not written to files/ (the manifest says "generated").
MAX_FILE = 16 * 1024

RELAY = "127.0.0.20:5985"


class Case(typing.NamedTuple):
    layer: str
    name: str
    what: str
    # bytes for static cases; a callable (session state -> bytes) for runtime ones.
    payload: typing.Any
    # Free-form delivery detail: for tsreq the stage, for tls "mid" or "", for http "halfclose".
    stage: str = ""

    @property
    def runtime(self) -> bool:
        return callable(self.payload)


def rng(name: str) -> random.Random:
    return random.Random(hashlib.sha256(name.encode()).digest())


def rand_bytes(name: str, n: int) -> bytes:
    r = rng(name)
    return bytes(r.getrandbits(8) for _ in range(n))


# --------------------------------------------------------------------------- DER

def der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + der_len(len(content)) + content


def der_int(v: int) -> bytes:
    n = max(1, (v.bit_length() + 8) // 8)
    return tlv(0x02, v.to_bytes(n, "big", signed=True))


def ts_request(version: typing.Optional[int] = 6, nego: typing.Optional[typing.List[bytes]] = None,
               auth_info: typing.Optional[bytes] = None, pub_key_auth: typing.Optional[bytes] = None,
               error_code: typing.Optional[int] = None, nonce: typing.Optional[bytes] = None) -> bytes:
    fields = b""
    if version is not None:
        fields += tlv(0xA0, der_int(version))
    if nego is not None:
        fields += tlv(0xA1, tlv(0x30, b"".join(tlv(0x30, tlv(0xA0, tlv(0x04, t))) for t in nego)))
    if auth_info is not None:
        fields += tlv(0xA2, tlv(0x04, auth_info))
    if pub_key_auth is not None:
        fields += tlv(0xA3, tlv(0x04, pub_key_auth))
    if error_code is not None:
        fields += tlv(0xA4, der_int(error_code))
    if nonce is not None:
        fields += tlv(0xA5, tlv(0x04, nonce))
    return tlv(0x30, fields)


SPNEGO_OID = bytes.fromhex("06062b0601050502")
NTLM_OID = bytes.fromhex("060a2b06010401823702020a")
KRB5_OID = bytes.fromhex("06092a864886f712010202")


def spnego_init(mech_token: bytes, mech_oid: bytes = NTLM_OID) -> bytes:
    neg_token_init = tlv(0x30, tlv(0xA0, tlv(0x30, mech_oid)) + tlv(0xA2, tlv(0x04, mech_token)))
    return tlv(0x60, SPNEGO_OID + tlv(0xA0, neg_token_init))


# --------------------------------------------------------------------------- NTLM

NEG_FLAGS = 0xE2088297


def secbuf(length: int, offset: int, maxlen: typing.Optional[int] = None) -> bytes:
    return struct.pack("<HHI", length, length if maxlen is None else maxlen, offset)


def ntlm_negotiate(domain: typing.Tuple[int, int] = (0, 0), ws: typing.Tuple[int, int] = (0, 0),
                   flags: int = NEG_FLAGS, msg_type: int = 1, tail: bytes = b"") -> bytes:
    return (b"NTLMSSP\0" + struct.pack("<II", msg_type, flags) + secbuf(*domain) + secbuf(*ws)
            + bytes([10, 0, 0x61, 0x4A, 0, 0, 0, 15]) + tail)


def ntlm_authenticate(fields: typing.Dict[str, typing.Tuple[int, int]], payload: bytes = b"",
                      flags: int = NEG_FLAGS) -> bytes:
    """AUTHENTICATE with explicit (length, offset) per field: lm, nt, domain, user, ws, key."""
    order = ["lm", "nt", "domain", "user", "ws", "key"]
    head = b"NTLMSSP\0" + struct.pack("<I", 3)
    for f in order:
        head += secbuf(*fields.get(f, (0, 88)))
    head += struct.pack("<I", flags) + bytes([10, 0, 0x61, 0x4A, 0, 0, 0, 15]) + b"\0" * 16
    assert len(head) == 88
    return head + payload


def utf16(s: str) -> bytes:
    return s.encode("utf-16-le")


# --------------------------------------------------------------------------- TLS

def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u24(n: int) -> bytes:
    return struct.pack(">I", n)[1:]


def record(ctype: int, body: bytes, version: bytes = b"\x03\x03", length: typing.Optional[int] = None) -> bytes:
    return bytes([ctype]) + version + u16(len(body) if length is None else length) + body


def ext(etype: int, data: bytes, length: typing.Optional[int] = None) -> bytes:
    return u16(etype) + u16(len(data) if length is None else length) + data


def client_hello(name: str, version: bytes = b"\x03\x03", suites: typing.Sequence[int] = (0x1301, 0xC02F, 0xC030),
                 compression: bytes = b"\x01\x00", exts: typing.Optional[bytes] = None,
                 rec_version: bytes = b"\x03\x01", session_id: bytes = b"") -> bytes:
    if exts is None:
        exts = (ext(0x002B, b"\x04\x03\x04\x03\x03")  # supported_versions: 1.3, 1.2
                + ext(0x000A, u16(2) + u16(0x001D))  # supported_groups: x25519
                + ext(0x000D, u16(4) + u16(0x0804) + u16(0x0401))  # signature_algorithms
                + ext(0x0033, u16(36) + u16(0x001D) + u16(32) + rand_bytes(name + "ks", 32)))  # key_share
    body = (version + rand_bytes(name + "random", 32) + bytes([len(session_id)]) + session_id
            + u16(2 * len(suites)) + b"".join(u16(s) for s in suites) + compression + u16(len(exts)) + exts)
    hs = b"\x01" + u24(len(body)) + body
    return record(0x16, hs, version=rec_version)


def good_exts(name: str) -> bytes:
    return (ext(0x002B, b"\x04\x03\x04\x03\x03") + ext(0x000A, u16(2) + u16(0x001D))
            + ext(0x000D, u16(4) + u16(0x0804) + u16(0x0401))
            + ext(0x0033, u16(36) + u16(0x001D) + u16(32) + rand_bytes(name + "ks", 32)))


# --------------------------------------------------------------------------- HTTP

def post(path: str = "/wsman/web01", headers: typing.Sequence[typing.Tuple[str, str]] = (), body: bytes = b"",
         content_length: typing.Optional[str] = "auto") -> bytes:
    lines = ["POST %s HTTP/1.1" % path, "Host: %s" % RELAY]
    lines += ["%s: %s" % h for h in headers]
    if content_length == "auto":
        lines.append("Content-Length: %d" % len(body))
    elif content_length is not None:
        lines.append("Content-Length: %s" % content_length)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def http_cases() -> typing.List[Case]:
    c: typing.List[Case] = []

    def add(name: str, what: str, data: bytes, stage: str = "") -> None:
        c.append(Case("http", name, what, data, stage))

    add("bad_request_line", "not an HTTP request line", b"HELLO RELAY\r\n\r\n")
    add("request_line_no_version", "request line without HTTP version", b"POST /wsman/web01\r\n\r\n")
    add("request_line_http99", "unknown HTTP version 9.9", b"POST /wsman/web01 HTTP/9.9\r\nHost: x\r\n\r\n")
    add("binary_garbage", "512 random bytes instead of a request", rand_bytes("http-bin", 512))
    add("nul_in_request_line", "NUL bytes inside the request target",
        b"POST /wsman/\x00web01 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    add("huge_header_value", "one 100 KiB header value", post(headers=[("X-Big", "A" * 100_000)]))
    add("many_headers", "5,000 small headers", post(headers=[("X-H%d" % i, "v") for i in range(5000)]))
    add("huge_uri", "a 70 KiB request target", post(path="/wsman/" + "a" * 70_000))
    add("header_no_colon", "a header line without a colon",
        b"POST /wsman/web01 HTTP/1.1\r\nHost: x\r\nThis is not a header\r\nContent-Length: 0\r\n\r\n")
    add("header_name_space", "a space inside a header name",
        b"POST /wsman/web01 HTTP/1.1\r\nHost: x\r\nContent Length: 0\r\n\r\n")
    add("obs_fold", "obsolete header line folding (continuation line)",
        b"POST /wsman/web01 HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  folded\r\nContent-Length: 0\r\n\r\n")
    add("nul_in_header", "NUL byte in a header value",
        b"POST /wsman/web01 HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n")
    add("cl_conflict", "two different Content-Length headers",
        post(headers=[("Content-Length", "5"), ("Content-Length", "10")], body=b"12345", content_length=None))
    add("cl_list", "Content-Length: 5, 10",
        post(body=b"12345", content_length="5, 10"))
    add("cl_and_te", "Content-Length and Transfer-Encoding: chunked together (smuggling shape)",
        post(headers=[("Transfer-Encoding", "chunked")],
             body=b"0\r\n\r\nPOST /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", content_length="4"))
    add("cl_negative", "Content-Length: -1", post(body=b"", content_length="-1"))
    add("cl_overflow", "Content-Length: 2^70", post(body=b"", content_length=str(2 ** 70)))
    add("cl_hex", "Content-Length: 0x10", post(body=b"", content_length="0x10"))
    add("cl_huge_no_body", "Content-Length: 10^12 (over the envelope limit), no body",
        post(content_length=str(10 ** 12)), stage="halfclose")
    add("truncated_body", "Content-Length: 100 with 10 bytes, then the client half-closes",
        post(body=b"0123456789", content_length="100"), stage="halfclose")
    add("te_bad_chunk_size", "chunked body with chunk size 'zz'",
        post(headers=[("Transfer-Encoding", "chunked")], body=b"zz\r\nabc\r\n0\r\n\r\n", content_length=None))
    add("te_chunk_overflow", "chunked body with a 2^72 chunk size",
        post(headers=[("Transfer-Encoding", "chunked")], body=b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
             content_length=None))
    add("te_unknown", "Transfer-Encoding: gzip, chunked",
        post(headers=[("Transfer-Encoding", "gzip, chunked")], body=b"0\r\n\r\n", content_length=None))
    add("te_truncated", "chunked body cut in the middle of a chunk, then half-close",
        post(headers=[("Transfer-Encoding", "chunked")], body=b"100\r\nabc", content_length=None), stage="halfclose")
    add("pipelined_garbage", "a valid empty POST followed by garbage on the same connection",
        post() + rand_bytes("pipe", 300))
    add("pipelined_many", "200 pipelined empty POSTs in one write", post() * 200)
    add("get_method", "GET instead of POST", b"GET /wsman/web01 HTTP/1.1\r\nHost: x\r\n\r\n")
    add("connect_method", "CONNECT to another host", b"CONNECT 10.0.0.1:5985 HTTP/1.1\r\nHost: 10.0.0.1:5985\r\n\r\n")
    add("absolute_uri_elsewhere", "absolute-form target naming another host",
        b"POST http://10.9.9.9:5985/wsman/web01 HTTP/1.1\r\nHost: 10.9.9.9\r\nContent-Length: 0\r\n\r\n")
    add("path_traversal", "/wsman/../../etc/passwd", post(path="/wsman/../../etc/passwd"))
    add("path_encoded", "percent-encoded target with %00 and %2F", post(path="/wsman/web01%00%2F..%2Fweb02"))
    add("lf_only", "bare LF line endings (lenient parsers accept)",
        b"POST /wsman/web01 HTTP/1.1\nHost: x\nContent-Length: 0\n\n")
    add("http10_no_host", "HTTP/1.0 without Host", b"POST /wsman/web01 HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    add("http2_preface", "an HTTP/2 connection preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 9)
    add("tls_to_http", "a TLS ClientHello on the plain-HTTP port", client_hello("http-tls"))
    add("identify_huge", "unauthenticated WSMANIDENTIFY with a 1 MB declared body",
        post(headers=[("WSMANIDENTIFY", "unauthenticated")], content_length=str(1 << 20)), stage="halfclose")
    add("identify_garbage", "unauthenticated WSMANIDENTIFY with a garbage body",
        post(headers=[("WSMANIDENTIFY", "unauthenticated")], body=rand_bytes("ident", 200)))
    return c


def authz_cases() -> typing.List[Case]:
    c: typing.List[Case] = []

    def add(name: str, what: str, value: bytes) -> None:
        c.append(Case("authz", name, what, value))

    import base64

    b64 = lambda b: base64.b64encode(b)  # noqa: E731
    add("credssp_bad_b64", "CredSSP with invalid base64", b"CredSSP !!!!not*base64$$")
    add("credssp_b64_bad_padding", "CredSSP with misplaced padding", b"CredSSP AA==AA==")
    add("credssp_b64_urlsafe", "CredSSP with URL-safe alphabet", b"CredSSP " + base64.urlsafe_b64encode(b"\xfb\xff\xfe" * 10))
    add("credssp_b64_inner_space", "CredSSP token with a space inside", b"CredSSP AAAA AAAA")
    add("credssp_huge", "CredSSP with a 300 KiB token (fits hyper's buffer, random bytes)",
        b"CredSSP " + b64(rand_bytes("authz-huge", 220_000)))
    add("credssp_too_huge", "CredSSP with a 1 MiB token (over any header limit)", b"CredSSP " + b"A" * (1 << 20))
    add("empty_value", "empty Authorization header", b"")
    add("credssp_no_token", "bare CredSSP scheme", b"CredSSP")
    add("credssp_only_equals", "CredSSP ====", b"CredSSP ====")
    add("basic", "Basic credentials (must be refused, never checked)", b"Basic " + b64(b"LAB\\alice:not-the-password"))
    add("negotiate_ntlm", "Negotiate with an NTLM NEGOTIATE", b"Negotiate " + b64(ntlm_negotiate()))
    add("ntlm_scheme", "NTLM scheme", b"NTLM " + b64(ntlm_negotiate()))
    add("kerberos", "Kerberos scheme with garbage", b"Kerberos " + b64(rand_bytes("krb", 64)))
    add("unknown_scheme", "an unknown scheme", b"Bearer eyJhbGciOiJub25lIn0.e30.")
    add("nul_bytes", "NUL bytes inside the value", b"CredSSP AA\x00AA")
    add("non_ascii_utf8", "UTF-8 non-ASCII in the scheme", "CrédSSP AAAA".encode("utf-8"))
    add("latin1_byte", "a raw 0xFF byte in the token", b"CredSSP AAAA\xff")
    add("quoted_scheme", "scheme with a quote", b'Cred"SSP AAAA')
    add("long_scheme", "a 10 KiB scheme name", b"C" * 10_000 + b" AAAA")
    add("comma_list", "two offers in one Authorization value", b"CredSSP AAAA, Negotiate BBBB")
    add("credssp_zero_token", "CredSSP with 10 zero bytes (the picky-krb crasher as a TLS leg)",
        b"CredSSP " + b64(b"\x00" * 10))
    return c


def tls_cases() -> typing.List[Case]:
    c: typing.List[Case] = []

    def add(name: str, what: str, token: bytes, stage: str = "") -> None:
        c.append(Case("tls", name, what, token, stage))

    add("random_300", "300 random bytes", rand_bytes("tls-rand", 300))
    add("truncated_header", "3 bytes of a record header", b"\x16\x03\x01")
    add("length_past_end", "handshake record announcing 16 KiB with 10 bytes present",
        b"\x16\x03\x01\x40\x00" + rand_bytes("tls-lpe", 10))
    add("huge_length", "record length 0xFFFF (over the TLS maximum)", b"\x16\x03\x03\xff\xff" + b"\x00" * 64)
    add("wrong_version", "record version 9.9", record(0x16, b"\x01\x00\x00\x00", version=b"\x09\x09"))
    add("sslv2_hello", "SSLv2-format ClientHello", bytes.fromhex("802b0103010012000000100000390000380000350000330000320000")
        + rand_bytes("sslv2", 16))
    add("alert_first", "a fatal alert as the first record", record(0x15, b"\x02\x28"))
    add("appdata_first", "application data before any handshake", record(0x17, rand_bytes("appdata", 64)))
    add("ccs_first", "ChangeCipherSpec as the first record", record(0x14, b"\x01"))
    add("heartbeat", "heartbeat record (type 24) with an overlong payload length",
        record(24, b"\x01\x40\x00" + b"A" * 16))
    add("zero_length_records", "1,000 empty handshake records", record(0x16, b"") * 1000)
    add("hello_garbage_ext", "ClientHello whose extensions are random bytes",
        client_hello("ch-garbage", exts=rand_bytes("ch-ext", 120)))
    add("hello_ext_len_past_end", "ClientHello whose SNI extension claims 60000 bytes",
        client_hello("ch-lpe", exts=good_exts("ch-lpe") + ext(0x0000, b"\x00\x05\x00\x00\x02ab", length=60000)))
    add("hello_dup_ext", "ClientHello with supported_versions twice",
        client_hello("ch-dup", exts=good_exts("ch-dup") + ext(0x002B, b"\x02\x03\x04")))
    add("hello_keyshare_bad", "ClientHello with a key_share of the wrong size",
        client_hello("ch-ks", exts=ext(0x002B, b"\x02\x03\x04") + ext(0x000A, u16(2) + u16(0x001D))
                     + ext(0x000D, u16(2) + u16(0x0804)) + ext(0x0033, u16(7) + u16(0x001D) + u16(3) + b"abc")))
    add("hello_no_suites", "ClientHello with no cipher suites", client_hello("ch-ns", suites=()))
    add("hello_no_compression", "ClientHello with an empty compression list", client_hello("ch-nc", compression=b"\x00"))
    add("hello_tls10_only", "ClientHello offering only TLS 1.0",
        client_hello("ch-10", version=b"\x03\x01", suites=(0x002F,), exts=b""))
    add("hello_inner_len_lies", "handshake header says 0xFFFFFF bytes inside a short record",
        record(0x16, b"\x01\xff\xff\xff" + b"\x03\x03" + b"\x00" * 40))
    add("hello_split_8000", "a ClientHello fragmented into 1-byte records",
        b"".join(record(0x16, bytes([b]), version=b"\x03\x01") for b in client_hello("ch-frag")[5:]))
    add("two_hellos", "two ClientHellos in one token", client_hello("ch-two-a") + client_hello("ch-two-b"))
    add("hello_then_garbage", "a real ClientHello leg, then 200 random bytes as the second leg",
        rand_bytes("mid-garbage", 200), stage="mid")
    add("hello_then_alert", "a real ClientHello leg, then a fatal alert", record(0x15, b"\x02\x50"), stage="mid")
    add("hello_then_appdata", "a real ClientHello leg, then application data",
        record(0x17, rand_bytes("mid-app", 100)), stage="mid")
    add("hello_then_hello", "a real ClientHello leg, then another (renegotiation shape) ClientHello",
        client_hello("mid-hello"), stage="mid")
    return c


# A syntactically fine NTLM AUTHENTICATE (as sspi would parse it), for variations.
def _plausible_authenticate(**override: typing.Tuple[int, int]) -> bytes:
    dom, user, ws = utf16("LAB"), utf16("alice"), utf16("WS")
    nt = b"\x11" * 16 + b"\x01\x01\x00\x00\x00\x00\x00\x00" + b"\x00" * 8 + b"\x22" * 8 + b"\x00" * 4 + b"\x00" * 4
    payload = dom + user + ws + b"\x00" * 24 + nt + b"\x33" * 16
    o = 88
    fields = {"domain": (len(dom), o), "user": (len(user), o + len(dom)), "ws": (len(ws), o + len(dom) + len(user)),
              "lm": (24, o + len(dom) + len(user) + len(ws))}
    fields["nt"] = (len(nt), fields["lm"][1] + 24)
    fields["key"] = (16, fields["nt"][1] + len(nt))
    fields.update(override)
    return ntlm_authenticate(fields, payload)


def tsreq_cases() -> typing.List[Case]:
    c: typing.List[Case] = []

    def add(name: str, what: str, payload: typing.Any, stage: str = "first") -> None:
        c.append(Case("tsreq", name, what, payload, stage))

    neg = ntlm_negotiate()
    add("not_der", "200 random bytes instead of a TSRequest", rand_bytes("ts-rand", 200))
    add("empty_plaintext_record", "one byte: a truncated DER tag", b"\x30")
    add("wrong_outer_tag", "SET (0x31) instead of SEQUENCE", b"\x31" + ts_request(6, [neg])[1:])
    add("length_past_end", "outer SEQUENCE claims 2 GiB", b"\x30\x84\x7f\xff\xff\xff" + ts_request(6, [neg])[2:])
    add("indefinite_length", "BER indefinite length (not DER)", b"\x30\x80" + ts_request(6, [neg])[2:] + b"\x00\x00")
    add("deep_nesting", "5,000 nested [1] SEQUENCEs in place of negoTokens",
        tlv(0x30, tlv(0xA0, der_int(6)) + _nest(5000)))
    add("version_0", "version 0", ts_request(0, [neg]))
    add("version_99", "version 99", ts_request(99, [neg]))
    add("version_negative", "version -1", ts_request(-1, [neg]))
    add("version_bigint", "a 40-byte version INTEGER", tlv(0x30, tlv(0xA0, tlv(0x02, b"\x01" + b"\x00" * 39))
                                                        + tlv(0xA1, tlv(0x30, tlv(0x30, tlv(0xA0, tlv(0x04, neg)))))))
    add("version_missing", "no version field", ts_request(None, [neg]))
    add("nego_zeros", "negoToken of 10 zero bytes (picky-krb crasher)", ts_request(6, [b"\x00" * 10]))
    add("nego_empty", "empty negoToken", ts_request(6, [b""]))
    add("nego_none", "no negoTokens at all", ts_request(6))
    add("nego_many", "500 negoTokens", ts_request(6, [neg] * 500))
    add("ntlm_type99", "NTLM message type 99", ts_request(6, [ntlm_negotiate(msg_type=99)]))
    add("ntlm_short", "NTLMSSP signature and nothing else", ts_request(6, [b"NTLMSSP\0"]))
    add("ntlm_negotiate_offsets_past_end", "NTLM NEGOTIATE whose domain/workstation point past the end",
        ts_request(6, [ntlm_negotiate(domain=(0x100, 0xFFF0), ws=(0xFFFF, 0xFFFFFFF0))]))
    add("ntlm_authenticate_first", "an AUTHENTICATE as the first token, fields past the end",
        ts_request(6, [ntlm_authenticate({"user": (0xFFFF, 0xFFFFFF00), "domain": (8, 4000)})]))
    add("spnego_bad_inner", "SPNEGO with a valid outer frame and a garbage NegTokenInit",
        ts_request(6, [tlv(0x60, SPNEGO_OID + tlv(0xA0, rand_bytes("spnego-inner", 40)))]))
    add("spnego_wrong_mech", "SPNEGO offering only Kerberos with a garbage token",
        ts_request(6, [spnego_init(rand_bytes("krb-tok", 50), mech_oid=bytes.fromhex("06092a864886f712010202"))]))
    add("spnego_ntlm_garbage", "SPNEGO/NTLM whose mechToken is garbage",
        ts_request(6, [spnego_init(rand_bytes("spnego-mt", 60))]))
    add("spnego_nested_lengths", "SPNEGO whose inner lengths disagree with the outer",
        ts_request(6, [b"\x60\x10" + SPNEGO_OID + b"\xa0\x06\x30\x7f\xa0\x7f\x30\x7f"]))
    # Raw krb5 GSS-API tokens (requests-credssp's shape with credssp_auth_mechanism="kerberos"): sspi's Negotiate
    # server panics on any of them as they come; the relay must classify them first.
    add("krb5_raw_ap_req_garbage", "raw krb5 token: AP-REQ frame around random bytes",
        ts_request(6, [tlv(0x60, KRB5_OID + b"\x01\x00" + tlv(0x6E, rand_bytes("krb5-ap", 80)))]))
    add("krb5_raw_truncated", "raw krb5 token whose outer length claims more than it carries",
        ts_request(6, [(lambda t: t[:-30])(tlv(0x60, KRB5_OID + b"\x01\x00" + tlv(0x6E, rand_bytes("krb5-tr", 90))))]))
    add("krb5_raw_tgt_req", "raw krb5 user-to-user TGT-REQ",
        ts_request(6, [tlv(0x60, KRB5_OID + b"\x04\x00" + tlv(0x30, rand_bytes("krb5-u2u", 20)))]))
    add("spnego_krb5_first_garbage", "SPNEGO offering Kerberos then NTLM, with a garbage Kerberos token",
        ts_request(6, [tlv(0x60, SPNEGO_OID + tlv(0xA0, tlv(0x30, tlv(0xA0, tlv(0x30, KRB5_OID + NTLM_OID))
                                                             + tlv(0xA2, tlv(0x04, rand_bytes("krb5-sp", 70))))))]))
    add("pubkeyauth_1_byte", "pubKeyAuth of 1 byte in the first TSRequest", ts_request(6, pub_key_auth=b"\x01"))
    add("pubkeyauth_first_long", "32-byte pubKeyAuth before any negotiation", ts_request(6, pub_key_auth=b"\x02" * 32,
                                                                                         nonce=b"\x03" * 32))
    add("authinfo_first", "authInfo garbage in the first TSRequest", ts_request(6, auth_info=rand_bytes("ai1", 80)))
    add("error_code_from_client", "a client TSRequest carrying an errorCode", ts_request(6, [neg], error_code=0x7FFFFFFF))
    add("nonce_short", "clientNonce of 1 byte", ts_request(6, [neg], nonce=b"\x01"))
    add("close_notify", "a TLS close_notify alert instead of a TSRequest", b"", "first_close_notify")
    # After a real NEGOTIATE / CHALLENGE.
    add("auth_offsets_past_end", "AUTHENTICATE whose user/domain point past the end, with pubKeyAuth",
        ts_request(6, [_plausible_authenticate(user=(0x200, 0xFFFF0000), domain=(0xFFFF, 90))],
                   pub_key_auth=b"\x44" * 32, nonce=b"\x55" * 32), "after_challenge")
    add("auth_nt_short", "AUTHENTICATE with a 3-byte NT response", ts_request(
        6, [_plausible_authenticate(nt=(3, 88))], pub_key_auth=b"\x44" * 32, nonce=b"\x55" * 32), "after_challenge")
    add("auth_overlapping", "AUTHENTICATE fields overlapping the header", ts_request(
        6, [_plausible_authenticate(user=(40, 0), nt=(60, 8))], pub_key_auth=b"\x44" * 32, nonce=b"\x55" * 32),
        "after_challenge")
    add("auth_truncated", "AUTHENTICATE cut to 50 bytes", ts_request(
        6, [_plausible_authenticate()[:50]], pub_key_auth=b"\x44" * 32, nonce=b"\x55" * 32), "after_challenge")
    add("auth_plausible_bad_mic", "plausible AUTHENTICATE (wrong proof) with garbage pubKeyAuth", ts_request(
        6, [_plausible_authenticate()], pub_key_auth=rand_bytes("pka", 48), nonce=b"\x55" * 32), "after_challenge")
    add("version_change", "a version 5 TSRequest after a version 6 NEGOTIATE",
        lambda s: ts_request(5, [s.authenticate_token()], pub_key_auth=s.pub_key_auth(), nonce=s.nonce),
        "after_challenge")
    add("real_auth_pubkeyauth_1", "real AUTHENTICATE with a 1-byte pubKeyAuth",
        lambda s: ts_request(6, [s.authenticate_token()], pub_key_auth=b"\x01", nonce=s.nonce), "after_challenge")
    add("real_auth_pubkeyauth_garbage", "real AUTHENTICATE with 40 garbage bytes of pubKeyAuth",
        lambda s: ts_request(6, [s.authenticate_token()], pub_key_auth=rand_bytes("pka2", 40), nonce=s.nonce),
        "after_challenge")
    add("real_auth_no_nonce", "real AUTHENTICATE, pubKeyAuth sealed, clientNonce left out (v6 requires it)",
        lambda s: ts_request(6, [s.authenticate_token()], pub_key_auth=s.pub_key_auth()), "after_challenge")
    # After pubKeyAuth was verified: authInfo.
    add("authinfo_garbage", "authInfo of 80 random bytes", ts_request(6, auth_info=rand_bytes("ai2", 80)),
        "after_pubkey")
    add("authinfo_1_byte", "authInfo of 1 byte", ts_request(6, auth_info=b"\x01"), "after_pubkey")
    add("authinfo_sealed_garbage", "authInfo correctly sealed, plaintext not a TSCredentials",
        lambda s: ts_request(6, auth_info=s.seal(rand_bytes("ai3", 64))), "after_pubkey")
    add("authinfo_smartcard", "sealed TSCredentials of credType 2 (smart card) with garbage creds",
        lambda s: ts_request(6, auth_info=s.seal(tlv(0x30, tlv(0xA0, der_int(2)) + tlv(0xA1, tlv(0x04, b"\x30\x00"))))),
        "after_pubkey")
    add("authinfo_other_user", "sealed TSCredentials for LAB\\bob from a session that authenticated as alice",
        lambda s: ts_request(6, auth_info=s.seal(ts_password_creds("LAB", "bob", "not-bobs-password"))),
        "after_pubkey")
    add("authinfo_deep", "sealed TSCredentials whose credentials nest 3,000 deep",
        lambda s: ts_request(6, auth_info=s.seal(tlv(0x30, tlv(0xA0, der_int(1)) + tlv(0xA1, tlv(0x04, _nest(3000)))))),
        "after_pubkey")
    return c


def ts_password_creds(domain: str, user: str, password: str) -> bytes:
    creds = tlv(0x30, tlv(0xA0, tlv(0x04, utf16(domain))) + tlv(0xA1, tlv(0x04, utf16(user)))
                + tlv(0xA2, tlv(0x04, utf16(password))))
    return tlv(0x30, tlv(0xA0, der_int(1)) + tlv(0xA1, tlv(0x04, creds)))


def _nest(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        inner = tlv(0xA1, tlv(0x30, inner))
    return inner


# --------------------------------------------------------------------------- session

BOUNDARY = b"--Encrypted Boundary"
PROTO = b"application/HTTP-CredSSP-session-encrypted"


def part_pair(data: bytes, length: typing.Union[int, bytes], header_len: int = 17, proto: bytes = PROTO,
              data_ct: bytes = b"application/octet-stream") -> bytes:
    length_b = length if isinstance(length, bytes) else str(length).encode()
    return (BOUNDARY + b"\r\n\tContent-Type: " + proto + b"\r\n\tOriginalContent: type=application/soap+xml;"
            b"charset=UTF-8;Length=" + length_b + b"\r\n" + BOUNDARY + b"\r\n\tContent-Type: " + data_ct + b"\r\n"
            + struct.pack("<I", header_len) + data)


def body(*pairs: bytes) -> bytes:
    return b"".join(pairs) + BOUNDARY + b"--\r\n"


def session_cases() -> typing.List[Case]:
    """Builders take a Sealer `s`: s.record(plain) seals with the session (advancing its sequence
    number), s.soap is a valid Identify-less Create envelope for the path it is posted to."""
    c: typing.List[Case] = []

    def add(name: str, what: str, payload: typing.Any, stage: str = "") -> None:
        c.append(Case("session", name, what, payload, stage))

    add("random_body", "2 KiB random bytes under a CredSSP multipart Content-Type", rand_bytes("sess-rand", 2048))
    add("only_close_delim", "only the closing delimiter", BOUNDARY + b"--\r\n")
    add("no_close_delim", "a part pair without the closing delimiter",
        lambda s: part_pair(s.record(s.soap), len(s.soap)))
    add("length_negative", "OriginalContent Length=-1", lambda s: body(part_pair(s.record(s.soap), b"-1")))
    add("length_overflow", "OriginalContent Length=2^80", lambda s: body(part_pair(s.record(s.soap), str(2 ** 80).encode())))
    add("length_bigger", "Length larger than the record", lambda s: body(part_pair(s.record(s.soap), 100_000)))
    add("length_smaller", "Length smaller than the plaintext", lambda s: body(part_pair(s.record(s.soap), 10)))
    add("length_missing", "OriginalContent without Length",
        lambda s: body(part_pair(s.record(s.soap), b"").replace(b";Length=", b";")))
    add("header_len_max", "u32 prefix 0xFFFFFFFF", lambda s: body(part_pair(s.record(s.soap), len(s.soap), 0xFFFFFFFF)))
    add("bad_mac", "a sealed record with one ciphertext byte flipped",
        lambda s: body(part_pair(_flip(s.record(s.soap), 20), len(s.soap))))
    add("record_truncated", "the sealed record cut short",
        lambda s: body(part_pair(s.record(s.soap)[:-7], len(s.soap))))
    add("record_len_lies", "record header length larger than the data before the boundary",
        lambda s: body(part_pair(_relen(s.record(s.soap), 16000), len(s.soap))))
    add("record_not_tls", "data part holds random bytes, not TLS records",
        body(part_pair(rand_bytes("sess-nottls", 200), 100)))
    add("record_alert", "data part holds a TLS alert record (close_notify, unencrypted)",
        body(part_pair(record(0x15, b"\x01\x00"), 0)))
    add("record_handshake", "data part holds a plaintext ClientHello (renegotiation attempt)",
        body(part_pair(client_hello("sess-reneg"), 0)))
    add("wrong_data_ct", "data part Content-Type text/plain",
        lambda s: body(part_pair(s.record(s.soap), len(s.soap), data_ct=b"text/plain")))
    add("protocol_mismatch", "part header announces the SPNEGO protocol",
        lambda s: body(part_pair(s.record(s.soap), len(s.soap), proto=b"application/HTTP-SPNEGO-session-encrypted")))
    add("header_block_huge", "a 4 KiB header line in the first part",
        lambda s: body(part_pair(s.record(s.soap), len(s.soap)).replace(b"\tOriginalContent", b"\tX-Pad: " + b"p" * 4096
                                                                         + b"\r\n\tOriginalContent", 1)))
    add("pairs_4097", "4,097 empty part pairs (over MAX_PARTS, under the size limit)",
        body(*[part_pair(record(0x17, b""), 0) for _ in range(4097)]))
    add("over_size_limit", "a 600 KiB body (over max_envelope_size + sealing overhead)",
        body(part_pair(record(0x17, b"\x00" * 16000) * 38, 1)))
    add("trailing_garbage", "valid pair, closing delimiter, then 100 bytes of garbage",
        lambda s: body(part_pair(s.record(s.soap), len(s.soap))) + rand_bytes("trail", 100))
    add("unencrypted_soap", "a plain SOAP body after authentication (Content-Type soap+xml)", b"plain")
    add("spnego_content_type", "HTTP Content-Type announcing the SPNEGO protocol", b"spnego")
    add("replay", "the same sealed body sent twice (record replay)", b"replay")
    return c


def _flip(data: bytes, i: int) -> bytes:
    b = bytearray(data)
    b[i % len(b)] ^= 0x40
    return bytes(b)


def _relen(rec: bytes, n: int) -> bytes:
    return rec[:3] + struct.pack(">H", n) + rec[5:]


# --------------------------------------------------------------------------- soap

SOAP_NS = ('xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
           'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
           'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
           'xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell"')
CMD_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"


def create_envelope(mid: str = "uuid:11111111-2222-3333-4444-555555555555", header_extra: str = "",
                    body_inner: str = "<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams></rsp:Shell>",
                    to: str = "http://%s/wsman/down" % RELAY) -> str:
    return ('<s:Envelope %s><s:Header><a:To>%s</a:To>'
            '<a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/Create</a:Action>'
            '<a:MessageID>%s</a:MessageID><w:ResourceURI>%s</w:ResourceURI>%s</s:Header>'
            '<s:Body>%s</s:Body></s:Envelope>' % (SOAP_NS, to, mid, CMD_URI, header_extra, body_inner))


def soap_cases() -> typing.List[Case]:
    c: typing.List[Case] = []

    def add(name: str, what: str, xml: typing.Union[str, bytes]) -> None:
        c.append(Case("soap", name, what, xml.encode("utf-8") if isinstance(xml, str) else xml))

    laughs = '<!DOCTYPE s:Envelope [<!ENTITY lol "lol">' + "".join(
        '<!ENTITY lol%d "%s">' % (i, ("&lol%d;" % (i - 1) if i else "&lol;") * 10) for i in range(10)) + "]>"
    add("billion_laughs", "DTD with nested entity expansion (billion laughs)",
        laughs + create_envelope(header_extra="<w:Locale>&lol9;</w:Locale>"))
    add("external_entity", "DTD with an external SYSTEM entity (XXE)",
        '<!DOCTYPE s:Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        + create_envelope(header_extra="<w:Locale>&xxe;</w:Locale>"))
    add("parameter_entity", "DTD with an external parameter entity",
        '<!DOCTYPE x [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]>' + create_envelope())
    add("deep_10000", "10,000-deep element nesting inside the Body",
        create_envelope(body_inner="<x>" * 10000 + "</x>" * 10000))
    add("deep_unclosed", "100,000 unclosed elements", create_envelope(body_inner="<x>" * 100_000))
    add("utf16_bom", "the envelope in UTF-16LE with a BOM", b"\xff\xfe" + create_envelope().encode("utf-16-le"))
    add("latin1_bytes", "invalid UTF-8 bytes in a header value",
        create_envelope(header_extra="<w:Locale>caf\xe9</w:Locale>").encode("latin-1"))
    add("latin1_declared", "encoding=ISO-8859-1 declaration with Latin-1 bytes",
        ('<?xml version="1.0" encoding="ISO-8859-1"?>' + create_envelope(
            header_extra="<w:Locale>caf\xe9</w:Locale>")).encode("latin-1"))
    add("overlong_utf8", "overlong UTF-8 encoding of '<'", create_envelope().encode().replace(b"<s:Body>", b"\xc0\xbcs:Body>"))
    add("nul_char_ref", "&#0; character reference", create_envelope(header_extra="<w:Locale>&#0;</w:Locale>"))
    add("not_xml", "random bytes as the plaintext", rand_bytes("soap-rand", 500))
    add("empty_envelope", "an empty, self-closed Envelope", '<s:Envelope %s/>' % SOAP_NS)
    add("wrong_root_ns", "root Envelope in SOAP 1.1 namespace",
        create_envelope().replace("http://www.w3.org/2003/05/soap-envelope", "http://schemas.xmlsoap.org/soap/envelope/"))
    add("two_roots", "two Envelope roots", create_envelope() + create_envelope())
    add("duplicate_to", "two wsa:To headers", create_envelope(header_extra="<a:To>http://10.0.0.1/wsman</a:To>"))
    add("duplicate_shellid", "two ShellId selectors",
        create_envelope(header_extra='<w:SelectorSet><w:Selector Name="ShellId">A</w:Selector>'
                                     '<w:Selector Name="ShellId">B</w:Selector></w:SelectorSet>'))
    add("missing_action", "no wsa:Action", create_envelope().replace(
        "<a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/Create</a:Action>", ""))
    add("truncated", "the envelope cut in half", create_envelope()[:200])
    add("mismatched_end", "mismatched end tags", create_envelope().replace("</s:Header>", "</s:Head>"))
    add("undeclared_prefix", "elements with undeclared prefixes",
        create_envelope().replace('xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" ', ""))
    add("attr_bomb", "one element with 20,000 attributes",
        create_envelope(body_inner="<x " + " ".join('a%d="v"' % i for i in range(20000)) + "/>"))
    add("dup_attr", "duplicate attributes on one element", create_envelope(body_inner='<x a="1" a="2"/>'))
    add("huge_text", "a 400 KB text node in the Body (under the size limit)",
        create_envelope(body_inner="<x>" + "A" * 400_000 + "</x>"))
    add("bad_timeout", "OperationTimeout of PT99999999999999999999S",
        create_envelope(header_extra="<w:OperationTimeout>PT99999999999999999999S</w:OperationTimeout>"))
    add("cdata_pi_comment", "CDATA, processing instruction and comment in odd places",
        create_envelope().replace("<s:Header>", "<s:Header><?pi x?><!-- c --><![CDATA[<a:To>evil</a:To>]]>"))
    add("psrp_garbage_args", "a PSRP Command whose rsp:Arguments is garbage base64 fragments",
        create_envelope(body_inner="<rsp:CommandLine><rsp:Command></rsp:Command><rsp:Arguments>%s</rsp:Arguments>"
                                   "</rsp:CommandLine>" % __import__("base64").b64encode(
                                       rand_bytes("psrp-frag", 600)).decode()).replace(
            CMD_URI, "http://schemas.microsoft.com/powershell/Microsoft.PowerShell").replace(
            "transfer/Create", "wbem/wsman/1/windows/shell/Command"))
    return c


def all_cases() -> typing.List[Case]:
    cases = http_cases() + authz_cases() + tls_cases() + tsreq_cases() + session_cases() + soap_cases()
    names = [(c.layer, c.name) for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


def manifest_text(cases: typing.Sequence[Case]) -> str:
    lines = ["# layer\tname\tkind\tstage\tsize\tsha256/12\twhat"]
    for c in cases:
        if c.runtime:
            kind, size, digest = "runtime", "-", "-"
        else:
            kind = "file" if len(c.payload) <= MAX_FILE else "generated"
            size, digest = str(len(c.payload)), hashlib.sha256(c.payload).hexdigest()[:12]
        lines.append("\t".join([c.layer, c.name, kind, c.stage or "-", size, digest, c.what]))
    return "\n".join(lines) + "\n"


def write(check: bool = False) -> int:
    cases = all_cases()
    want = {os.path.join(c.layer, c.name + ".bin"): c.payload
            for c in cases if not c.runtime and len(c.payload) <= MAX_FILE}
    text = manifest_text(cases)
    if check:
        stale = []
        if not os.path.exists(MANIFEST) or open(MANIFEST).read() != text:
            stale.append("MANIFEST.tsv")
        for rel, data in want.items():
            p = os.path.join(FILES, rel)
            if not os.path.exists(p) or open(p, "rb").read() != data:
                stale.append(rel)
        if stale:
            print("out of date: %s" % ", ".join(stale))
            return 1
        return 0
    for rel, data in want.items():
        p = os.path.join(FILES, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as fh:
            fh.write(data)
    for layer in os.listdir(FILES):
        for f in os.listdir(os.path.join(FILES, layer)):
            if os.path.join(layer, f) not in want:
                os.remove(os.path.join(FILES, layer, f))
    with open(MANIFEST, "w") as fh:
        fh.write(text)
    by_layer: typing.Dict[str, int] = {}
    for c in cases:
        by_layer[c.layer] = by_layer.get(c.layer, 0) + 1
    print("%d cases: %s" % (len(cases), ", ".join("%s %d" % kv for kv in by_layer.items())))
    return 0


if __name__ == "__main__":
    sys.exit(write(check="--check" in sys.argv[1:]))
