"""A throwaway MIT Kerberos realm (LAB.TEST) for the domain-mode tests.

KerberosRealm creates the realm in a directory of its own (kdc.conf, krb5.conf, database, stash, keytabs,
KDC log), starts krb5kdc on KDC_HOST:88 (TCP and UDP), adds alice and bob with the passwords the NTLM side
uses (harness.USERS) and service principals with AES keytabs on demand.

Only the test process (and the Kerberos target doubles it starts) see this realm: `client_env()` is the
environment for them; `use_in_process()` points this Python process at it. The relay never gets a KRB5_*
variable (harness.scrubbed_env drops them): it is configured through its own [kerberos] section.

Clients derive the SPN from the URL host, so tests reach relays and doubles by name (relay.lab.test);
`map_hosts` resolves such names to loopback addresses inside this process only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import typing

import harness

REALM = "LAB.TEST"
NETBIOS = "LAB"
DOMAIN = "lab.test"
KDC_HOST = "127.0.0.100"
KDC_PORT = 88
# The keytab enctypes a Windows DC gives an account with AES enabled; picky-krb has no RC4.
AES_ENCTYPES = "aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal"
MASTER_PASSWORD = "kdb-master-Lab-Test-only"

# Domain users: the same people and passwords as the NTLM users LAB\alice and LAB\bob.
PRINCIPALS: typing.Dict[str, str] = {
    "alice": harness.USERS["LAB\\alice"],
    "bob": harness.USERS["LAB\\bob"],
}

_SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


def tool(name: str, packages: str = "krb5-kdc krb5-admin-server krb5-user") -> str:
    """Path of a tool from Debian's `packages` (krb5kdc and kdb5_util live in /usr/sbin, not always on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    raise RuntimeError("%s not found: install %s (integration/run.sh does it when root)" % (name, packages))



def krb5_conf(kdc: str, admin_server: typing.Optional[str] = None) -> str:
    """A krb5.conf for LAB.TEST's clients and doubles, its KDC at `kdc` (host:port): AES only, no DNS and no
    reverse lookups, TCP first. The MIT realm and the Samba domain (samba_ad) both serve LAB.TEST this way."""
    admin = "\n        admin_server = %s" % admin_server if admin_server else ""
    return f"""[libdefaults]
    default_realm = {REALM}
    dns_lookup_realm = false
    dns_lookup_kdc = false
    dns_canonicalize_hostname = false
    rdns = false
    ignore_acceptor_hostname = false
    forwardable = true
    udp_preference_limit = 1
    default_tkt_enctypes = aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96
    default_tgs_enctypes = aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96
    permitted_enctypes = aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96

[realms]
    {REALM} = {{
        kdc = tcp/{kdc}
        kdc = {kdc}{admin}
    }}

[domain_realm]
    .{DOMAIN} = {REALM}
    {DOMAIN} = {REALM}
"""

class KerberosRealm:
    """The LAB.TEST realm and its KDC. `start()` creates and starts it; `stop()` ends the KDC."""

    def __init__(self, directory: str, kdc_host: str = KDC_HOST, kdc_port: int = KDC_PORT) -> None:
        self.dir = os.path.abspath(directory)
        self.kdc_host, self.kdc_port = kdc_host, kdc_port
        self.kdc_conf = os.path.join(self.dir, "kdc.conf")
        self.krb5_conf = os.path.join(self.dir, "krb5.conf")
        self.kdc_log = os.path.join(self.dir, "kdc.log")
        self.kdc_out = os.path.join(self.dir, "krb5kdc.out")
        self.ccache = os.path.join(self.dir, "ccache")
        self.proc: typing.Optional[subprocess.Popen] = None
        self._out: typing.Optional[typing.IO] = None

    # -- addresses
    @property
    def kdc_urls(self) -> typing.List[str]:
        """The KDC as the relay's [kerberos] kdc list takes it."""
        return ["tcp://%s:%d" % (self.kdc_host, self.kdc_port)]

    def kerberos_toml(self, keytab: typing.Optional[str], kdc: typing.Optional[typing.Sequence[str]] = None) -> str:
        """A [kerberos] section for a relay that uses this realm."""
        kdcs = ", ".join('"%s"' % u for u in (self.kdc_urls if kdc is None else kdc))
        out = '[kerberos]\nrealm = "%s"\nnetbios = "%s"\nkdc = [%s]\n' % (REALM, NETBIOS, kdcs)
        if keytab:
            out += 'keytab = "%s"\n' % keytab
        return out

    # -- environment for the test-side processes
    def client_env(self, extra: typing.Optional[dict] = None) -> dict:
        """KRB5_* variables for a client or target double that must use this realm."""
        env = {
            "KRB5_CONFIG": self.krb5_conf,
            "KRB5_KDC_PROFILE": self.kdc_conf,
            "KRB5CCNAME": "FILE:" + self.ccache,
            "KRB5RCACHEDIR": self.dir,
            "KRB5_TRACE": os.path.join(self.dir, "krb5-trace.log"),
        }
        if extra:
            env.update(extra)
        return env

    def use_in_process(self) -> None:
        """Point this Python process (pyspnego through python-gssapi) at the realm. MIT krb5 reads these
        variables whenever it opens a context, so this takes effect for every later client."""
        os.environ.update(self.client_env())

    # -- lifecycle
    def _run(self, argv: typing.Sequence[str], input_text: typing.Optional[str] = None) -> str:
        env = harness.scrubbed_env(self.client_env())
        res = subprocess.run(list(argv), input=(input_text or "").encode(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=env, timeout=60, cwd=self.dir)
        out = res.stdout.decode("utf-8", "replace")
        if res.returncode != 0:
            raise RuntimeError("%s exited %d:\n%s" % (" ".join(argv), res.returncode, out))
        return out

    def kadmin(self, query: str) -> str:
        out = self._run([tool("kadmin.local"), "-r", REALM, "-q", query])
        # kadmin.local exits 0 even when the query failed; its error lines name the query.
        if re.search(r"^[a-z_.]+: .* while ", out, re.M):
            raise RuntimeError("kadmin.local -q %r failed:\n%s" % (query, out))
        return out

    def write_configs(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        d = self.dir
        kdc = "%s:%d" % (self.kdc_host, self.kdc_port)
        with open(self.kdc_conf, "w") as fh:
            fh.write(f"""[kdcdefaults]
    kdc_listen = {kdc}
    kdc_tcp_listen = {kdc}

[realms]
    {REALM} = {{
        database_name = {d}/principal
        key_stash_file = {d}/stash
        acl_file = {d}/kadm5.acl
        admin_keytab = FILE:{d}/kadm5.keytab
        kdc_listen = {kdc}
        kdc_tcp_listen = {kdc}
        max_life = 10h 0m 0s
        max_renewable_life = 7d 0h 0m 0s
        master_key_type = aes256-cts-hmac-sha1-96
        supported_enctypes = {AES_ENCTYPES}
        default_principal_flags = +preauth
    }}

[logging]
    kdc = FILE:{self.kdc_log}
    admin_server = FILE:{d}/kadmin.log
    default = FILE:{d}/krb5lib.log
""")
        with open(os.path.join(d, "kadm5.acl"), "w") as fh:
            fh.write("*/admin@%s *\n" % REALM)
        with open(self.krb5_conf, "w") as fh:
            fh.write(krb5_conf(kdc, admin_server=self.kdc_host))

    def start(self) -> "KerberosRealm":
        """Create the realm (database, users) and start the KDC; returns self."""
        self.write_configs()
        if not os.path.exists(os.path.join(self.dir, "principal")):
            self._run([tool("kdb5_util"), "-r", REALM, "create", "-s", "-P", MASTER_PASSWORD])
            for name, password in PRINCIPALS.items():
                self.add_user(name, password)
        self.start_kdc()
        return self

    def start_kdc(self) -> None:
        harness.ensure_port_free(self.kdc_host, self.kdc_port)
        self._out = open(self.kdc_out, "ab")
        # -n: stay in the foreground, so stop() ends exactly this process.
        self.proc = subprocess.Popen([tool("krb5kdc"), "-n", "-r", REALM], stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=harness.scrubbed_env(self.client_env()),
                                     cwd=self.dir)
        try:
            harness.wait_for_port(self.kdc_host, self.kdc_port, 20, self.proc)
        except Exception as e:
            self.stop()
            raise RuntimeError("krb5kdc failed to start: %s\n%s\n%s" % (e, harness.tail(self.kdc_out),
                                                                      harness.tail(self.kdc_log)))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._out is not None:
            self._out.close()
            self._out = None

    def restart_kdc(self) -> None:
        self.stop()
        self.start_kdc()

    # -- principals and keytabs
    def add_user(self, name: str, password: str) -> None:
        self.kadmin('addprinc -pw "%s" %s@%s' % (password, name, REALM))

    def add_service(self, spn: str, keytab: typing.Optional[str] = None) -> str:
        """Add service principal `spn` (e.g. "HTTP/web11.lab.test", realm optional) with a random key if it does
        not exist, and export its AES keys to `keytab` (default <realm dir>/<spn with / as _>.keytab; appended
        when the file exists, so one keytab can hold several SPNs). Each export makes a new key (kvno + 1), as
        `ktpass` does on Windows: export every SPN once, or every keytab that holds it. Returns the keytab path."""
        principal = spn if "@" in spn else "%s@%s" % (spn, REALM)
        if keytab is None:
            keytab = os.path.join(self.dir, principal.split("@")[0].replace("/", "_") + ".keytab")
        if not self.exists(principal):
            self.kadmin("addprinc -randkey %s" % principal)
        self.kadmin("ktadd -k %s -e \"%s\" %s" % (keytab, AES_ENCTYPES, principal))
        os.chmod(keytab, 0o600)
        return keytab

    def exists(self, principal: str) -> bool:
        return principal in self.kadmin("listprincs").split()

    # -- KDC log
    def kdc_log_lines(self) -> typing.List[str]:
        try:
            with open(self.kdc_log, encoding="utf-8", errors="replace") as fh:
                return fh.read().splitlines()
        except FileNotFoundError:
            return []

    def as_exchanges(self, client: str) -> int:
        """How many TGTs the KDC issued to `client` (e.g. "alice@LAB.TEST"): its log line for an AS exchange
        that succeeded is "AS_REQ (...) <addr>: ISSUE: authtime ..., <client> for krbtgt/<realm>@<realm>"."""
        needle = ", %s for krbtgt/" % client
        return sum(1 for line in self.kdc_log_lines() if "AS_REQ" in line and "ISSUE:" in line and needle in line)

    def tgs_exchanges(self, client: str, service: str) -> int:
        """How many service tickets for `service` (e.g. "HTTP/web11.lab.test@LAB.TEST") the KDC issued to `client`."""
        needle = ", %s for %s" % (client, service)
        return sum(1 for line in self.kdc_log_lines() if "TGS_REQ" in line and "ISSUE:" in line and needle in line)


_real_getaddrinfo = socket.getaddrinfo
_host_map: typing.Dict[str, str] = {}


def map_hosts(names: typing.Dict[str, str]) -> None:
    """Resolve these host names (e.g. {"relay.lab.test": "127.0.0.101"}) to the given addresses inside this
    process (clients build the SPN from the URL's host name, so tests must reach loopback by name); other names
    resolve as before. Never touches /etc/hosts."""
    _host_map.update({k.lower(): v for k, v in names.items()})
    if socket.getaddrinfo is not _mapped_getaddrinfo:
        socket.getaddrinfo = _mapped_getaddrinfo  # type: ignore[assignment]


@contextlib.contextmanager
def hosts_mapped(names: typing.Dict[str, str]) -> typing.Iterator[None]:
    """`map_hosts` for the time of a `with` block: the names mapped before it are mapped again after it."""
    saved = dict(_host_map)
    map_hosts(names)
    try:
        yield
    finally:
        _host_map.clear()
        _host_map.update(saved)


def _mapped_getaddrinfo(host: typing.Any, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if isinstance(host, str) and host.lower().rstrip(".") in _host_map:
        host = _host_map[host.lower().rstrip(".")]
    return _real_getaddrinfo(host, *args, **kwargs)


def wait_for_kdc_log(realm: KerberosRealm, predicate: typing.Callable[[typing.List[str]], bool],
                     timeout: float = 5.0) -> bool:
    """The KDC writes its log line after answering: poll it briefly."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate(realm.kdc_log_lines()):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
