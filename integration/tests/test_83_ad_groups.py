"""Active Directory groups in the allowlist, against a real domain controller (Samba AD DC, samba_ad.SambaDomain).

The domain: alice in WinRM-Operators, dave in Tier2-Admins (nested in WinRM-Operators), bob in Helpdesk, carol in
none; svc-relay holds HTTP/relay.lab.test and WSMAN/relay.lab.test, svc-web01 HTTP/web01.lab.test.
"""

from __future__ import annotations

import os

import samba_ad

ALICE_UPN = "alice@LAB.TEST"


def test_domain_issues_tickets_a_keytab_accepts(samba: samba_ad.SambaDomain) -> None:
    """The harness itself: alice gets a ticket for HTTP/relay.lab.test with her password, an independent acceptor
    (pyspnego + python-gssapi) takes it with svc-relay's exported AES keytab; the DC listens on its own address
    only."""
    import spnego

    keytab = samba.keytab("svc-relay")
    assert oct(os.stat(keytab).st_mode & 0o777) == "0o600"
    with samba.in_process():
        client = spnego.client(ALICE_UPN, samba_ad.PASSWORDS["alice"], hostname="relay.lab.test", service="HTTP",
                               protocol="kerberos")
        token = client.step()
        assert token[:1] == b"\x60"
        os.environ["KRB5_KTNAME"] = "FILE:" + keytab
        try:
            server = spnego.server(hostname="relay.lab.test", service="HTTP", protocol="kerberos")
            server.step(token)
        finally:
            del os.environ["KRB5_KTNAME"]
    assert server.complete and server.client_principal == ALICE_UPN
    import socket

    for host in ("127.0.0.1", "127.0.0.100"):
        try:
            with socket.create_connection((host, samba_ad.LDAP_PORT), timeout=0.5):
                raise AssertionError("something listens on %s:389" % host)
        except OSError:
            pass
    assert samba.sid("alice").startswith("S-1-5-21-")
