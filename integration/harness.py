"""Shared harness: start target doubles and the relay on loopback addresses.

Used by tests/conftest.py and by benches/relay_vs_direct.py. Everything binds to
127.0.0.x only.
"""

from __future__ import annotations

import hashlib
import json
import os
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


def scrubbed_env(extra: typing.Optional[dict] = None) -> dict:
    """Environment without proxies (loopback only) for child processes."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
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
        "the suite needs the fixed loopback addresses 127.0.0.20-24" % (host, port)
    )


def tail(path: str, n: int = 60) -> str:
    try:
        with open(path, "rb") as fh:
            lines = fh.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return "(no %s)" % path


def read_jsonl(path: str) -> typing.List[dict]:
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def relay_config_toml(workdir: str) -> str:
    w = workdir
    return f"""[listen]
http = "{RELAY_HOST}:{RELAY_PORT}"
tls_cert = "{w}/relay.crt"
tls_key = "{w}/relay.key"

[auth]
users_file = "{w}/users"
credssp_min_version = 5

[audit]
path = "{w}/audit.jsonl"

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

[[allow]]
users = ['LAB\\alice']
targets = ["web01", "web02", "down", "hang"]
shells = ["cmd", "powershell"]

[[allow]]
users = ['LAB\\bob']
targets = ["web01"]
shells = ["cmd"]
"""


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

    def double_out(self, name: str) -> str:
        return os.path.join(self.workdir, "double-%s.out" % name)

    # -- doubles
    def write_ntlm_users(self) -> None:
        with open(self.ntlm_user_file, "w") as fh:
            for user, pw in USERS.items():
                dom, _, name = user.partition("\\")
                fh.write("%s:%s:%s\n" % (dom, name, pw))
        os.chmod(self.ntlm_user_file, 0o600)

    def start_double(self, name: str, host: str, port: int, hang: bool = False) -> subprocess.Popen:
        if not os.path.exists(self.ntlm_user_file):
            self.write_ntlm_users()
        ensure_port_free(host, port)
        argv = [sys.executable, DOUBLE, "--bind", "%s:%d" % (host, port), "--name", name, "--log", self.double_log(name)]
        if hang:
            argv.append("--hang")
        else:
            argv += ["--ntlm-user-file", self.ntlm_user_file]
        out = open(self.double_out(name), "ab")
        self._fhs.append(out)
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=scrubbed_env(), cwd=self.workdir)
        self.procs["double-" + name] = proc
        try:
            wait_for_port(host, port, 20, proc)
        except Exception as e:
            raise RuntimeError("double %s failed to start: %s\n%s" % (name, e, tail(self.double_out(name))))
        return proc

    def start_doubles(self, hang: bool = True, names: typing.Iterable[str] = ("web01", "web02")) -> None:
        for name in names:
            host, port = DOUBLES[name]
            self.start_double(name, host, port)
        if hang:
            self.start_double("hang", HANG[0], HANG[1], hang=True)

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
            fh.write(relay_config_toml(self.workdir))

    def start_relay(self, rust_log: str = "debug", startup_timeout: float = 60) -> subprocess.Popen:
        if not os.path.exists(self.users_file):
            self.add_relay_users()
        if not os.path.exists(self.config_file):
            self.write_relay_config()
        ensure_port_free(RELAY_HOST, RELAY_PORT)
        ensure_port_free(RELAY_HOST, RELAY_WEB01_PORT)
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
