"""Fixtures: target doubles + relay on 127.0.0.x, one set for the whole session."""

from __future__ import annotations

import os
import sys
import typing

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import harness  # noqa: E402
import mit_realm  # noqa: E402
import samba_ad  # noqa: E402

harness.scrub_proxies_in_process()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "runs_last: run after every other test of the session (whatever the file "
                                       "order), e.g. a check of what the whole run left behind")


def pytest_collection_modifyitems(items: typing.List[pytest.Item]) -> None:
    """Tests marked runs_last go to the end, in their own order: file names order the rest, and a check of the
    whole run must come after the load and shutdown tests, whose files sort after it."""
    last = [item for item in items if item.get_closest_marker("runs_last")]
    if last:
        items[:] = [item for item in items if not item.get_closest_marker("runs_last")] + last


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = str(tmp_path_factory.mktemp("relay-it"))
    print("\n[integration] work directory: %s" % d)
    return d


@pytest.fixture(scope="session", autouse=True)
def realm_config(workdir: str) -> mit_realm.KerberosRealm:
    """The test process uses the test realm's krb5.conf from the first test on, started or not: pyspnego tries
    Kerberos before NTLM whenever python-gssapi is there, and the machine's /etc/krb5.conf (if any) names
    KDCs on the internet that NTLM logons would wait for."""
    r = mit_realm.KerberosRealm(os.path.join(workdir, "realm"))
    r.write_configs()
    r.use_in_process()
    return r


@pytest.fixture(scope="session")
def realm(realm_config: mit_realm.KerberosRealm) -> typing.Iterator[mit_realm.KerberosRealm]:
    """The LAB.TEST realm with its KDC on mit_realm.KDC_HOST:88, alice and bob (harness.USERS passwords)."""
    realm_config.start()
    try:
        yield realm_config
    finally:
        realm_config.stop()


@pytest.fixture(scope="session")
def samba(tmp_path_factory: pytest.TempPathFactory) -> typing.Iterator[samba_ad.SambaDomain]:
    """The LAB.TEST Active Directory domain: Samba AD DC on samba_ad.DC_HOST (KDC, LDAP, LDAPS) with the people,
    groups and service accounts samba_ad describes. Started by the first test that asks for it, stopped at the end
    of the session. Tests that talk Kerberos to it from this process wrap that in `samba.in_process()`.
    Its directory is outside the work directory: the domain's files hold the people's passwords and keys, and
    the secrets scan (test_90) reads every file under the work directory for what a relay may have leaked."""
    domain = samba_ad.SambaDomain(str(tmp_path_factory.mktemp("samba")))
    domain.start()
    try:
        yield domain
    finally:
        domain.stop()


@pytest.fixture(scope="session")
def h(workdir: str) -> typing.Iterator[harness.Harness]:
    hs = harness.Harness(workdir)
    hs.write_ntlm_users()
    try:
        yield hs
    finally:
        hs.stop()


@pytest.fixture(scope="session")
def doubles(h: harness.Harness) -> harness.Harness:
    h.start_doubles(hang=True)
    return h


@pytest.fixture(scope="session")
def relay(doubles: harness.Harness) -> harness.Harness:
    doubles.add_relay_users()
    doubles.write_relay_config()
    doubles.start_relay()
    return doubles


@pytest.fixture(autouse=True)
def _relay_still_alive(request: pytest.FixtureRequest) -> typing.Iterator[None]:
    yield
    if "relay" in request.fixturenames:
        hs: harness.Harness = request.getfixturevalue("relay")
        if not hs.relay_alive() and not getattr(hs, "relay_stopped_on_purpose", False):
            pytest.fail("relay process died during this test:\n" + harness.tail(hs.relay_log, 40))
