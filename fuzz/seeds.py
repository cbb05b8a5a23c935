#!/usr/bin/env python3
"""Write seed inputs into fuzz/corpus/<target>/ (gitignored). Deterministic.

    python3 fuzz/seeds.py
"""
import base64
import glob
import os
import re
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "integration", "corpus"))
import gen_corpus as g  # noqa: E402


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed_" + name), "wb") as fh:
        fh.write(data)


def legs(*parts):
    return b"".join(struct.pack(">H", len(p)) + p for p in parts)


# credssp_first_token
put("credssp_first_token", "spnego", g.spnego_init(g.ntlm_negotiate()))
put("credssp_first_token", "ntlm", g.ntlm_negotiate())
# Real Kerberos first tokens (made against the test realm): requests-credssp's raw krb5 AP-REQ, pyspnego's SPNEGO.
# Real MIT AP-REQs (bare krb5 and SPNEGO), as the client sent them.
for name in ("bob_eve_krb5", "alice_spnego"):
    with open(os.path.join(REPO, "src/proto/kerberos/fixtures/ticket", name + ".bin"), "rb") as fh:
        put("service_ticket", name, b"\x00" + fh.read())
for name in ("requests_credssp_kerberos_ap_req", "pyspnego_negotiate_kerberos"):
    with open(os.path.join(REPO, "src/proto/credssp/fixtures", name + ".bin"), "rb") as fh:
        put("credssp_first_token", name, fh.read())

# s4u_replies: Samba's answers to the relay's TGT and S4U2Proxy requests (0, 1), alice's logon (3).
S4U = os.path.join(REPO, "src/proto/kerberos/fixtures/s4u")
for pick, name in ((0, "as_rep.der"), (1, "alice_web01_tgs_rep.der"), (1, "alice_web02_tgs_rep.der"),
                   (3, "alice_spnego.bin"), (3, "carol_spnego.bin")):
    with open(os.path.join(S4U, name), "rb") as fh:
        put("s4u_replies", name.split(".")[0] + "_%d" % pick, bytes([pick]) + fh.read())

# http_auth_header
for i, v in enumerate([b"CredSSP AAEC", b"Negotiate", b"CredSSP\nBasic realm=\"WSMAN\", Negotiate AAEC\nCredSSP FgMD",
                       b"Negotiate\nNegotiate TlRMTVNTUAABAAAA, Kerberos"]):
    put("http_auth_header", str(i), v)

# psrp_summary: real CREATE_PIPELINE fragments from the wsman testdata
for path in glob.glob(os.path.join(REPO, "src/proto/wsman/testdata/*.xml")):
    text = open(path, encoding="utf-8").read()
    for j, m in enumerate(re.findall(r"<(?:rsp:Arguments|creationXml)[^>]*>([^<]+)<", text)):
        try:
            raw = base64.b64decode(m, validate=True)
        except ValueError:
            continue
        name = os.path.basename(path)[:-4] + "_%d" % j
        put("psrp_summary", name + "_frag", b"\x00" + raw)
        if len(raw) > 21 + 40:
            put("psrp_summary", name + "_xml", b"\x01" + raw[21 + 40:])

# shell_io: the same PSRP fragments as raw fragments, and a Receive envelope carrying them
for path in glob.glob(os.path.join(REPO, "src/proto/wsman/testdata/*.xml")):
    text = open(path, encoding="utf-8").read()
    name = os.path.basename(path)[:-4]
    put("shell_io", name + "_envelope", b"\x00" + text.encode())
    for j, m in enumerate(re.findall(r"<(?:rsp:Arguments|creationXml|rsp:Stream[^>]*)[^>]*>([^<]+)<", text)):
        try:
            raw = base64.b64decode(m, validate=True)
        except ValueError:
            continue
        put("shell_io", "%s_%d_frag" % (name, j), b"\x01" + bytes([min(len(raw) // 2, 255)]) + raw)

# psrp_stream: the same fragments as a Command's arguments, then as a Send, uncompressed and compressed
# (chunks stored raw: equal sizes, so no compressor is needed here)
def op(code, payload):
    return bytes([code]) + struct.pack("<H", len(payload)) + payload


def raw_chunks(payload):
    return b"".join(struct.pack("<HH", len(c) - 1, len(c) - 1) + c
                    for c in (payload[i:i + 65536] for i in range(0, len(payload), 65536)))


for path in glob.glob(os.path.join(REPO, "src/proto/wsman/testdata/*.xml")):
    text = open(path, encoding="utf-8").read()
    name = os.path.basename(path)[:-4]
    for j, m in enumerate(re.findall(r"<(?:rsp:Arguments|creationXml|rsp:Stream[^>]*)[^>]*>([^<]+)<", text)):
        try:
            raw = base64.b64decode(m, validate=True)[:65535]
        except ValueError:
            continue
        half = len(raw) // 2
        put("psrp_stream", "%s_%d_plain" % (name, j), b"\x00" + op(0x07, raw[:half]) + op(0x04, raw[half:]))
        put("psrp_stream", "%s_%d_xpress" % (name, j),
            b"\x01" + op(0x07, raw[:half]) + op(0x04, raw_chunks(raw[half:])[:65535]))

# credssp_acceptor: mode byte, then u16-framed legs
neg_ts = g.ts_request(6, [g.spnego_init(g.ntlm_negotiate())])
put("credssp_acceptor", "raw_hello", b"\x00" + legs(g.client_hello("seed")))
put("credssp_acceptor", "tls13_spnego", b"\x01" + legs(neg_ts, g.ts_request(6, [g._plausible_authenticate()],
                                                                         pub_key_auth=b"\x44" * 32, nonce=b"\x55" * 32)))
put("credssp_acceptor", "tls12_ntlm", b"\x04" + legs(g.ts_request(6, [g.ntlm_negotiate()]),
                                                     g.ts_request(6, [g._plausible_authenticate()],
                                                                  pub_key_auth=b"\x44" * 32, nonce=b"\x55" * 32)))
put("credssp_acceptor", "tls13_authinfo", b"\x01" + legs(g.ts_request(6, auth_info=b"\x00" * 40)))
put("credssp_acceptor", "after_hs_raw", b"\x02" + legs(g.record(0x17, b"\x00" * 40), g.record(0x15, b"\x01\x00")))
for case in g.tsreq_cases():
    if not case.runtime and case.stage == "first":
        put("credssp_acceptor", "tsreq_" + case.name, b"\x01" + legs(case.payload[:65535]))
for case in g.tls_cases():
    if not case.runtime and case.stage == "":
        put("credssp_acceptor", "tls_" + case.name, b"\x00" + legs(case.payload[:65535]))
print("seeds written under", os.path.join(HERE, "corpus"))
