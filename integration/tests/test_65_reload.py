"""SIGHUP reloads the relay certificate (a PEM chain) without dropping live sessions (issue 4)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import ssl

import harness
from helpers import run, wait_for
from harness import ExtraRelay

HOST = "127.0.0.34"


def _served_fingerprint() -> str:
    pem = ssl.get_server_certificate((HOST, 5986), timeout=5)
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def _file_fingerprint(path: str) -> str:
    with open(path) as fh:
        first = fh.read().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest()


def test_sighup_reloads_a_certificate_chain_and_keeps_sessions(relay):
    ca = harness.make_test_ca(relay.workdir)
    extra = ExtraRelay(relay, HOST, listen_extra='https = "%s:5986"' % HOST, own_certificate=True)
    cert, key = os.path.join(extra.dir, "relay.crt"), os.path.join(extra.dir, "relay.key")
    try:
        before = _served_fingerprint()
        assert before == _file_fingerprint(cert)

        session = extra.protocol()
        assert run(session, "echo", ["before"])[0] == b"before\n"

        # A new leaf signed by the test CA, served as a chain (leaf + CA).
        leaf, leaf_key = harness.make_server_cert(extra.dir, "relay-next", HOST, ca)
        with open(cert, "w") as fh:
            fh.write(open(leaf).read() + open(ca[0]).read())
        shutil.copy(leaf_key, key)
        extra.proc.send_signal(signal.SIGHUP)
        after = wait_for(lambda: (lambda f: f if f != before else None)(_served_fingerprint()), 10)
        assert after == _file_fingerprint(leaf)

        # The session that began under the old certificate goes on...
        assert run(session, "echo", ["still"])[0] == b"still\n"
        session.transport.close_session()
        # ...and a new CredSSP session binds to the new key.
        assert run(extra.protocol(), "echo", ["after"])[0] == b"after\n"
        assert "reloaded certificate" in open(extra.log).read()
    finally:
        extra.stop()
