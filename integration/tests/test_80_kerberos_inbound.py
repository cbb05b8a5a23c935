"""Domain mode, inbound: Kerberos inside CredSSP, against the test realm's MIT KDC (kerberos.KerberosRealm)."""

from __future__ import annotations

import os

import kerberos


def test_realm_issues_tickets_a_keytab_accepts(realm: kerberos.KerberosRealm) -> None:
    """The harness itself: alice gets a TGT with her NTLM password and a ticket for a service whose AES keytab
    an independent acceptor (pyspnego + python-gssapi) takes; the KDC log counts the exchanges."""
    import spnego

    keytab = realm.add_service("HTTP/realmcheck.lab.test", os.path.join(realm.dir, "realmcheck.keytab"))
    assert oct(os.stat(keytab).st_mode & 0o777) == "0o600"
    before = realm.as_exchanges("alice@LAB.TEST")
    client = spnego.client("alice@LAB.TEST", kerberos.PRINCIPALS["alice"], hostname="realmcheck.lab.test",
                           service="HTTP", protocol="kerberos")
    token = client.step()
    assert token[:1] == b"\x60"
    os.environ["KRB5_KTNAME"] = "FILE:" + keytab
    try:
        server = spnego.server(hostname="realmcheck.lab.test", service="HTTP", protocol="kerberos")
        server.step(token)
    finally:
        del os.environ["KRB5_KTNAME"]
    assert server.complete and server.client_principal == "alice@LAB.TEST"
    assert kerberos.wait_for_kdc_log(realm, lambda _: realm.as_exchanges("alice@LAB.TEST") == before + 1)
    assert realm.tgs_exchanges("alice@LAB.TEST", "HTTP/realmcheck.lab.test@LAB.TEST") == 1
