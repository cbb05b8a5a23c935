"""Shared harness: start target doubles and the relay on loopback addresses.

Used by tests/conftest.py and by benches/relay_vs_direct.py. Everything binds to
127.0.0.x only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DOUBLE = os.path.join(HERE, "target_double.py")

RELAY_HOST = "127.0.0.20"
RELAY_PORT = 5985
RELAY_WEB01_PORT = 15001

# Distinctive passwords: the secrets test greps every relay-written file for them.
USERS: typing.Dict[str, str] = {
    "LAB\\alice": "Zq7-relay-secret-Alice!",
    "LAB\\bob": "Bob-9Kp-relay-secret#",
}

DOUBLES = {
    "web01": ("127.0.0.21", 5985),
    "web02": ("127.0.0.22", 5985),
}
DOWN = ("127.0.0.23", 5985)  # nothing listens here
HANG = ("127.0.0.24", 5985)  # accepts TCP, never answers

CONNECT_TIMEOUT_SECS = 3
TIMEOUT_SECS = 10

# Issue 4 (transports): doubles with TLS / Basic / CredSSP / strict CBT, and a second relay
# instance that has the HTTPS listener and the extended target list.
TRANSPORT_RELAY_HOST = "127.0.0.32"
TRANSPORT_RELAY_HTTP_PORT = 5985
TRANSPORT_RELAY_HTTPS_PORT = 5986
CA_FILE_NAME = "test-ca.pem"


class DoubleSpec(typing.NamedTuple):
    host: str
    port: int
    auth: str  # --auth of the double: negotiate / basic / credssp (comma list allowed)
    # None (HTTP), "ca" (cert from the test CA), "self" (self-signed, no CA), "self-ca" (self-signed with
    # CA:TRUE, as `openssl req -x509` makes it)
    tls: typing.Optional[str]
    cbt: str = "none"  # "strict" = CbtHardeningLevel=Strict
    sig_hash: str = "sha256"  # signature hash of the server certificate (the channel binding hashes with it)
    relay_auth: str = "negotiate"  # `auth` of the relay's [[target]]
    ca_file: bool = False  # relay names the test CA as ca_file
    cert_of: typing.Optional[str] = None  # serve this other double's certificate and key
    pin_of: typing.Optional[str] = None  # relay pins (tls_fingerprint) the certificate this double serves
    ca_file_own_cert: bool = False  # relay names the double's own certificate as ca_file

    @property
    def url(self) -> str:
        return "%s://%s:%d/wsman" % ("https" if self.tls else "http", self.host, self.port)


TRANSPORT_DOUBLES: typing.Dict[str, DoubleSpec] = {
    # HTTPS + Negotiate with CbtHardeningLevel=Strict
    "web03": DoubleSpec("127.0.0.25", 5986, "negotiate", "ca", cbt="strict", relay_auth="https-ntlm", ca_file=True),
    # HTTPS + Basic (local accounts)
    "web04": DoubleSpec("127.0.0.26", 5986, "basic", "ca", relay_auth="basic", ca_file=True),
    # HTTP + CredSSP (session encryption), the double checks the delegated password
    "web05": DoubleSpec("127.0.0.27", 5985, "credssp", None, relay_auth="credssp"),
    # HTTPS with a self-signed certificate and no ca_file: the relay must refuse it
    "web06": DoubleSpec("127.0.0.28", 5986, "negotiate", "self", relay_auth="https-ntlm"),
    # HTTPS + strict CBT with a SHA-384-signed certificate: the binding must use SHA-384, as Windows computes it
    "web07": DoubleSpec("127.0.0.29", 5986, "negotiate", "ca", cbt="strict", sig_hash="sha384",
                        relay_auth="https-ntlm", ca_file=True),
    # HTTPS + CredSSP (test-CA cert): after the CredSSP exchange the bodies are plain inside TLS, like Windows
    "web08": DoubleSpec("127.0.0.36", 5986, "credssp", "ca", relay_auth="credssp", ca_file=True),
    # web06 again (same self-signed certificate) for a relay target that pins it with tls_fingerprint. A second
    # instance because the relay refuses two targets at one host:port.
    "web06-pinned": DoubleSpec("127.0.0.37", 5986, "negotiate", "self", relay_auth="https-ntlm",
                               cert_of="web06", pin_of="web06"),
    # Serves web03's certificate (from the test CA) but the relay pins web06's: refused, whatever its issuer.
    "web09": DoubleSpec("127.0.0.38", 5986, "negotiate", "ca", relay_auth="https-ntlm", cert_of="web03",
                        pin_of="web06"),
    # Self-signed with CA:TRUE (`openssl req -x509`), listed as its own ca_file, as admins trust such a target.
    "web10": DoubleSpec("127.0.0.39", 5986, "negotiate", "self-ca", relay_auth="https-ntlm", ca_file_own_cert=True),
}


def scrubbed_env(extra: typing.Optional[dict] = None) -> dict:
    """Environment without proxies (loopback only) and without KRB5_* variables (the test process points itself
    at the test realm; the relay must work from its own [kerberos] section alone) for child processes; `extra`
    is added after that."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") and not k.startswith("KRB5")}
    env["NO_PROXY"] = "*"
    env["no_proxy"] = "*"
    if extra:
        env.update(extra)
    return env


def scrub_proxies_in_process() -> None:
    for k in list(os.environ):
        if k.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            del os.environ[k]
    os.environ["NO_PROXY"] = "*"
    os.environ["no_proxy"] = "*"


def relay_binary() -> str:
    if os.environ.get("RELAY_BIN"):
        return os.environ["RELAY_BIN"]
    target_dir = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    if not os.path.isabs(target_dir):
        target_dir = os.path.join(REPO, target_dir)
    return os.path.join(target_dir, "debug", "winrm-relay")


def nt_hash(password: str) -> str:
    try:
        return hashlib.new("md4", password.encode("utf-16-le")).hexdigest()
    except ValueError:  # OpenSSL 3 without legacy provider
        from spnego._ntlm_raw.crypto import ntowfv1  # type: ignore

        return ntowfv1(password).hex()


def wait_for_port(host: str, port: int, timeout: float, proc: typing.Optional[subprocess.Popen] = None) -> None:
    deadline = time.monotonic() + timeout
    last: typing.Optional[Exception] = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before %s:%d accepted connections" % (proc.returncode, host, port))
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as e:
            last = e
            time.sleep(0.1)
    raise TimeoutError("%s:%d not accepting connections after %.0fs (%s)" % (host, port, timeout, last))


def ensure_port_free(host: str, port: int) -> None:
    """Refuse to start when something already listens there (e.g. a concurrent run of this suite):
    otherwise the readiness probe would succeed against the other run's process."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            pass
    except OSError:
        return
    raise RuntimeError(
        "%s:%d is already in use (another integration run or a leftover process?); "
        "the suite needs the fixed loopback addresses 127.0.0.20-40 (and 127.0.0.1:15985)" % (host, port)
    )


def tail(path: str, n: int = 60) -> str:
    try:
        with open(path, "rb") as fh:
            lines = fh.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return "(no %s)" % path


def read_jsonl(path: str) -> typing.List[dict]:
    """The complete lines of a JSON-lines log that may be written to meanwhile: a last line without its
    newline is still being written (a reader can see part of a write) and is left for the next read."""
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def relay_config_toml(workdir: str, transports: bool = False) -> str:
    """The relay config. transports adds the issue-4 keys: an HTTPS listener on :5986 and targets
    web03..web08 with per-target auth / ca_file, allowed for alice. (The shared relay gets them with
    RELAY_IT_TRANSPORTS=1, see Harness.write_relay_config; extra instances built from this text keep
    the plain config.)"""
    w = workdir
    https = f'https = "{RELAY_HOST}:{TRANSPORT_RELAY_HTTPS_PORT}"\n' if transports else ""
    extra_targets = _transport_targets_toml(w) + "\n" if transports else ""
    extra_allowed = "".join(', "%s"' % n for n in TRANSPORT_DOUBLES) if transports else ""
    return f"""[listen]
http = "{RELAY_HOST}:{RELAY_PORT}"
{https}tls_cert = "{w}/relay.crt"
tls_key = "{w}/relay.key"

[auth]
users_file = "{w}/users"
credssp_min_version = 5

[audit]
path = "{w}/audit.jsonl"
transcripts = "{w}/transcripts"

[defaults]
connect_timeout_secs = {CONNECT_TIMEOUT_SECS}
timeout_secs = {TIMEOUT_SECS}

[[target]]
name = "web01"
url = "http://{DOUBLES['web01'][0]}:{DOUBLES['web01'][1]}/wsman"
listen = "{RELAY_HOST}:{RELAY_WEB01_PORT}"

[[target]]
name = "web02"
url = "http://{DOUBLES['web02'][0]}:{DOUBLES['web02'][1]}/wsman"

[[target]]
name = "down"
url = "http://{DOWN[0]}:{DOWN[1]}/wsman"

[[target]]
name = "hang"
url = "http://{HANG[0]}:{HANG[1]}/wsman"

{extra_targets}[[allow]]
users = ['LAB\\alice']
targets = ["web01", "web02", "down", "hang"{extra_allowed}]
shells = ["cmd", "powershell"]

[[allow]]
users = ['LAB\\bob']
targets = ["web01"]
shells = ["cmd"]
"""


def _hash(name: str) -> typing.Any:
    from cryptography.hazmat.primitives import hashes

    return {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512(), "sha1": hashes.SHA1()}[name]


def _write_key(path: str, key: typing.Any) -> None:
    from cryptography.hazmat.primitives import serialization

    with open(path, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption()))
    os.chmod(path, 0o600)


def make_test_ca(workdir: str) -> typing.Tuple[str, str]:
    """A test CA (RSA 2048): writes <workdir>/test-ca.pem (+ test-ca.key). Returns (cert path, key path)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    cert_path = os.path.join(workdir, CA_FILE_NAME)
    key_path = os.path.join(workdir, "test-ca.key")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "winrm-relay tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "winrm-relay integration test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, _hash("sha256"))
    )
    _write_key(key_path, key)
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _leaf_cert(workdir: str, name: str, ip: str,
               finish: typing.Callable[[typing.Any, typing.Any, typing.Any], typing.Any]) -> typing.Tuple[str, str]:
    """An RSA 2048 certificate for `name` and `ip` (DNS + IP SAN), valid from an hour ago for 30 days, kept as
    <workdir>/<name>.crt/.key (made once). `finish(builder, key, subject)` adds what the kind of certificate
    needs and signs it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    cert_path = os.path.join(workdir, "%s.crt" % name)
    key_path = os.path.join(workdir, "%s.key" % name)
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(ip))]),
                       critical=False)
    )
    cert = finish(builder, key, subject)
    _write_key(key_path, key)
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def make_server_cert(workdir: str, name: str, ip: str, ca: typing.Optional[typing.Tuple[str, str]],
                     sig_hash: str = "sha256") -> typing.Tuple[str, str]:
    """RSA 2048 server certificate for `ip` (IP + DNS SAN), signed by the test CA, or self-signed when
    ca is None. Writes <workdir>/<name>.crt/.key; returns their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    def finish(builder: typing.Any, key: typing.Any, subject: typing.Any) -> typing.Any:
        builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if ca is None:
            return builder.issuer_name(subject).sign(key, _hash(sig_hash))
        with open(ca[0], "rb") as fh:
            ca_cert = x509.load_pem_x509_certificate(fh.read())
        with open(ca[1], "rb") as fh:
            signer = serialization.load_pem_private_key(fh.read(), password=None)
        builder = builder.issuer_name(ca_cert.subject).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
        return builder.sign(signer, _hash(sig_hash))

    return _leaf_cert(workdir, name, ip, finish)


def make_openssl_style_cert(workdir: str, name: str, ip: str) -> typing.Tuple[str, str]:
    """What `openssl req -x509 -newkey rsa:2048 -subj /CN=<name> -addext subjectAltName=DNS:<name>,IP:<ip>` writes:
    self-signed, basicConstraints critical CA:TRUE, subject and authority key identifiers, the SAN, no key usage.
    Writes <workdir>/<name>.crt/.key; returns their paths."""
    from cryptography import x509

    def finish(builder: typing.Any, key: typing.Any, subject: typing.Any) -> typing.Any:
        return (
            builder.issuer_name(subject)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, _hash("sha256"))
        )

    return _leaf_cert(workdir, name, ip, finish)


def transport_server_cert(workdir: str, name: str) -> typing.Tuple[str, str]:
    """(cert, key) a transport double serves; generated on first use (test-CA certificates from the CA in workdir)."""
    spec = TRANSPORT_DOUBLES[name]
    if spec.cert_of:
        name, spec = spec.cert_of, TRANSPORT_DOUBLES[spec.cert_of]
    if spec.tls == "self-ca":
        return make_openssl_style_cert(workdir, name, spec.host)
    ca = make_test_ca(workdir) if spec.tls == "ca" else None
    return make_server_cert(workdir, name, spec.host, ca, spec.sig_hash)


def cert_fingerprint(cert_path: str) -> str:
    """SHA-256 fingerprint of a PEM certificate as the relay's tls_fingerprint takes it (sha256:AB:CD:...)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    with open(cert_path, "rb") as fh:
        digest = x509.load_pem_x509_certificate(fh.read()).fingerprint(hashes.SHA256())
    return "sha256:" + ":".join("%02X" % b for b in digest)


def transports_enabled() -> bool:
    """RELAY_IT_TRANSPORTS=1: the shared relay (127.0.0.20) also gets the issue-4 config (HTTPS listener
    on :5986, web03..web08) and start_doubles starts web03..web08. Off by default while the relay is
    learning those keys: a relay that refuses the config would fail every test. test_7_transports always
    uses its own relay instance (transports_config_toml) either way."""
    return os.environ.get("RELAY_IT_TRANSPORTS", "") == "1"


def _transport_targets_toml(workdir: str) -> str:
    out = []
    for name, spec in TRANSPORT_DOUBLES.items():
        t = '[[target]]\nname = "%s"\nurl = "%s"\nauth = "%s"\n' % (name, spec.url, spec.relay_auth)
        if spec.ca_file:
            t += 'ca_file = "%s/%s"\n' % (workdir, CA_FILE_NAME)
        if spec.ca_file_own_cert:
            t += 'ca_file = "%s"\n' % transport_server_cert(workdir, name)[0]
        if spec.pin_of:
            t += 'tls_fingerprint = "%s"\n' % cert_fingerprint(transport_server_cert(workdir, spec.pin_of)[0])
        out.append(t)
    return "\n".join(out)


def transports_config_toml(workdir: str, outdir: str) -> str:
    """The issue-4 config (relay_config_toml with transports) moved to TRANSPORT_RELAY_HOST, without the
    per-target web01 listener; audit goes to outdir."""
    config = relay_config_toml(workdir, transports=True)
    config = config.replace('http = "%s:%d"' % (RELAY_HOST, RELAY_PORT),
                            'http = "%s:%d"' % (TRANSPORT_RELAY_HOST, TRANSPORT_RELAY_HTTP_PORT))
    config = config.replace('https = "%s:%d"' % (RELAY_HOST, TRANSPORT_RELAY_HTTPS_PORT),
                            'https = "%s:%d"' % (TRANSPORT_RELAY_HOST, TRANSPORT_RELAY_HTTPS_PORT))
    config = config.replace('listen = "%s:%d"\n' % (RELAY_HOST, RELAY_WEB01_PORT), "")
    config = config.replace('path = "%s/audit.jsonl"' % workdir, 'path = "%s/audit.jsonl"' % outdir)
    config = config.replace('transcripts = "%s/transcripts"' % workdir, 'transcripts = "%s/transcripts"' % outdir)
    return config


class ExtraRelay:
    """A relay process of a test's own, on its own loopback address (host:5985): relay_config_toml without the
    web01 listener, audit, transcripts and log in a directory of its own. `listen_extra`, `auth_extra` and
    `audit_extra` go into those tables, `tail` at the end (more tables, [[target]]s, [[allow]] rules), then `edit`
    may rewrite the whole text; `args` go after `serve --config FILE`. Call stop() when done; a new ExtraRelay on
    the same host starts again on the same directory."""

    def __init__(self, h: "Harness", host: str, listen_extra: str = "", auth_extra: str = "", tail: str = "",
                 own_certificate: bool = False, nofile: typing.Optional[int] = None, own_users: bool = False,
                 audit_extra: str = "", args: typing.Sequence[str] = (),
                 edit: typing.Optional[typing.Callable[[str], str]] = None):
        self.host = host
        self.dir = os.path.join(h.workdir, "relay-" + host)
        os.makedirs(self.dir, exist_ok=True)
        self.audit = os.path.join(self.dir, "audit.jsonl")
        self.transcripts = os.path.join(self.dir, "transcripts")
        self.log = os.path.join(self.dir, "relay.log")
        config = relay_config_toml(h.workdir)
        config = config.replace('http = "%s:%d"' % (RELAY_HOST, RELAY_PORT), 'http = "%s:5985"' % host)
        config = config.replace('listen = "%s:%d"' % (RELAY_HOST, RELAY_WEB01_PORT), "")
        config = config.replace(os.path.join(h.workdir, "audit.jsonl"), self.audit)
        config = config.replace(os.path.join(h.workdir, "transcripts"), self.transcripts)
        config = config.replace("[audit]\n", "[audit]\n" + audit_extra + "\n", 1)
        if own_certificate:
            # A certificate pair of its own (generated at first start) that a test may replace.
            for name in ("relay.crt", "relay.key"):
                config = config.replace(os.path.join(h.workdir, name), os.path.join(self.dir, name))
        if own_users:
            # A users file of its own that a test may change.
            self.users = os.path.join(self.dir, "users")
            shutil.copy(h.users_file, self.users)
            config = config.replace(h.users_file, self.users)
        config = config.replace("[auth]\n", listen_extra + "\n[auth]\n" + auth_extra + "\n", 1) + "\n" + tail
        if edit:
            config = edit(config)
        self.config = os.path.join(self.dir, "relay.toml")
        with open(self.config, "w") as fh:
            fh.write(config)
        ensure_port_free(host, 5985)
        self.out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [h.relay_bin, "serve", "--config", self.config] + list(args),
            stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=scrubbed_env({"RUST_LOG": "info"}), cwd=self.dir,
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None,
        )
        try:
            wait_for_port(host, 5985, 60, self.proc)
        except Exception as e:
            self.stop()
            raise RuntimeError("relay at %s failed to start: %s%s" % (host, e, self.excerpt()))

    def url(self, target: str = "web01") -> str:
        return "http://%s:5985/wsman/%s" % (self.host, target)

    def protocol(self, user: str = "LAB\\alice", password: str = "", target: str = "web01") -> typing.Any:
        import winrm

        return winrm.protocol.Protocol(
            endpoint=self.url(target), transport="credssp", username=user,
            password=password or USERS[user], server_cert_validation="ignore", message_encryption="always",
            operation_timeout_sec=20, read_timeout_sec=30,
        )

    def events(self):
        return read_jsonl(self.audit)

    def excerpt(self, n: int = 30) -> str:
        return "\n--- %s (tail) ---\n%s" % (self.log, tail(self.log, n))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.out.close()


class Harness:
    """Owns a work directory, the target doubles and the relay process."""

    def __init__(self, workdir: str, relay_bin: typing.Optional[str] = None) -> None:
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.relay_bin = relay_bin or relay_binary()
        self.procs: typing.Dict[str, subprocess.Popen] = {}
        self._fhs: typing.List[typing.IO] = []
        self.ntlm_user_file = os.path.join(self.workdir, "double_ntlm_users")
        self.users_file = os.path.join(self.workdir, "users")
        self.config_file = os.path.join(self.workdir, "relay.toml")
        self.audit_file = os.path.join(self.workdir, "audit.jsonl")
        self.relay_log = os.path.join(self.workdir, "relay.log")

    # -- paths
    def double_log(self, name: str) -> str:
        return os.path.join(self.workdir, "double-%s.jsonl" % name)

    def double_arrivals(self, name: str) -> str:
        """The double's log of requests as they arrive, before they are answered."""
        return re.sub(r"\.jsonl$", "", self.double_log(name)) + ".arrivals.jsonl"

    def double_out(self, name: str) -> str:
        return os.path.join(self.workdir, "double-%s.out" % name)

    # -- doubles
    def write_ntlm_users(self) -> None:
        with open(self.ntlm_user_file, "w") as fh:
            for user, pw in USERS.items():
                dom, _, name = user.partition("\\")
                fh.write("%s:%s:%s\n" % (dom, name, pw))
        os.chmod(self.ntlm_user_file, 0o600)

    def start_double(self, name: str, host: str, port: int, hang: bool = False,
                     extra_args: typing.Sequence[str] = (), wait: bool = True,
                     extra_env: typing.Optional[dict] = None) -> subprocess.Popen:
        if not os.path.exists(self.ntlm_user_file):
            self.write_ntlm_users()
        ensure_port_free(host, port)
        argv = [sys.executable, DOUBLE, "--bind", "%s:%d" % (host, port), "--name", name, "--log", self.double_log(name)]
        if hang:
            argv.append("--hang")
        else:
            argv += ["--ntlm-user-file", self.ntlm_user_file] + list(extra_args)
        out = open(self.double_out(name), "ab")
        self._fhs.append(out)
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=scrubbed_env(extra_env), cwd=self.workdir)
        self.procs["double-" + name] = proc
        if wait:
            self.wait_double(name, host, port)
        return proc

    def wait_double(self, name: str, host: str, port: int) -> None:
        try:
            wait_for_port(host, port, 20, self.procs["double-" + name])
        except Exception as e:
            raise RuntimeError("double %s failed to start: %s\n%s" % (name, e, tail(self.double_out(name))))

    def start_doubles(self, hang: bool = True, names: typing.Iterable[str] = ("web01", "web02")) -> None:
        for name in names:
            host, port = DOUBLES[name]
            self.start_double(name, host, port)
        if hang:
            self.start_double("hang", HANG[0], HANG[1], hang=True)
        if transports_enabled():
            self.start_transport_doubles()

    # -- issue-4 transport doubles (TLS / Basic / CredSSP / strict CBT)
    @property
    def ca_file(self) -> str:
        return os.path.join(self.workdir, CA_FILE_NAME)

    def server_cert(self, name: str) -> typing.Tuple[str, str]:
        """(cert, key) of a transport double; generated on first use."""
        return transport_server_cert(self.workdir, name)

    def start_transport_double(self, name: str, wait: bool = True) -> subprocess.Popen:
        spec = TRANSPORT_DOUBLES[name]
        args = ["--auth", spec.auth, "--cbt", spec.cbt]
        if spec.tls:
            cert, key = self.server_cert(name)
            args += ["--tls", "%s,%s" % (cert, key)]
        return self.start_double(name, spec.host, spec.port, extra_args=args, wait=wait)

    def start_transport_doubles(self, names: typing.Optional[typing.Iterable[str]] = None) -> None:
        """Start web03..web08 (or `names`) in parallel; certificates come from the test CA in the work dir."""
        make_test_ca(self.workdir)
        todo = [n for n in (TRANSPORT_DOUBLES if names is None else names) if "double-" + n not in self.procs]
        for name in todo:
            self.start_transport_double(name, wait=False)
        for name in todo:
            self.wait_double(name, TRANSPORT_DOUBLES[name].host, TRANSPORT_DOUBLES[name].port)

    # -- relay
    def add_relay_users(self) -> None:
        if not os.path.exists(self.relay_bin):
            raise RuntimeError("relay binary not found at %s (build it: cargo build --bin winrm-relay)" % self.relay_bin)
        for user, pw in USERS.items():
            out_path = os.path.join(self.workdir, "user-add-%s.out" % user.split("\\")[-1])
            with open(out_path, "wb") as out:
                res = subprocess.run(
                    [self.relay_bin, "user", "add", user, "--users-file", self.users_file, "--password-stdin"],
                    input=(pw + "\n").encode(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=scrubbed_env(),
                    timeout=60,
                )
            if res.returncode != 0:
                raise RuntimeError("`winrm-relay user add %s` exited %d:\n%s" % (user, res.returncode, tail(out_path)))

    def write_relay_config(self) -> None:
        with open(self.config_file, "w") as fh:
            fh.write(relay_config_toml(self.workdir, transports=transports_enabled()))

    def start_relay(self, rust_log: str = "debug", startup_timeout: float = 60) -> subprocess.Popen:
        if not os.path.exists(self.users_file):
            self.add_relay_users()
        if not os.path.exists(self.config_file):
            self.write_relay_config()
        ensure_port_free(RELAY_HOST, RELAY_PORT)
        ensure_port_free(RELAY_HOST, RELAY_WEB01_PORT)
        https = 'https = "%s:%d"' % (RELAY_HOST, TRANSPORT_RELAY_HTTPS_PORT)
        with open(self.config_file) as fh:
            has_https = https in fh.read()
        if has_https:
            ensure_port_free(RELAY_HOST, TRANSPORT_RELAY_HTTPS_PORT)
        out = open(self.relay_log, "ab")
        self._fhs.append(out)
        proc = subprocess.Popen(
            [self.relay_bin, "serve", "--config", self.config_file],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=scrubbed_env({"RUST_LOG": rust_log, "RUST_BACKTRACE": "1"}),
            cwd=self.workdir,
        )
        self.procs["relay"] = proc
        try:
            wait_for_port(RELAY_HOST, RELAY_PORT, startup_timeout, proc)
            wait_for_port(RELAY_HOST, RELAY_WEB01_PORT, 10, proc)
            if has_https:
                wait_for_port(RELAY_HOST, TRANSPORT_RELAY_HTTPS_PORT, 10, proc)
        except Exception as e:
            raise RuntimeError("relay failed to start: %s\n--- relay.log ---\n%s" % (e, tail(self.relay_log)))
        return proc

    def relay_alive(self) -> bool:
        p = self.procs.get("relay")
        return p is not None and p.poll() is None

    # -- teardown
    def stop(self) -> None:
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for name, proc in list(self.procs.items()):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for fh in self._fhs:
            try:
                fh.close()
            except OSError:
                pass
        self._fhs.clear()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
