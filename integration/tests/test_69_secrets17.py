"""Issue 17 sections 6 and 7: `check` refuses CredSSP delegation to a host only NTLM vouches for (http://) unless
the target opts in; `user add` says the users file is password-equivalent; the users file read as a systemd
credential from $CREDENTIALS_DIRECTORY (by `serve`, which then logs a user on, and by `check`), and the error
without that variable. A relay of its own on 127.0.0.145."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import typing

import pytest

import harness
from helpers import ALICE, USERS, wait_for

CRED_RELAY = "127.0.0.145"
CREDSSP_OVER_HTTP = '\n[[target]]\nname = "app01"\nurl = "http://%s:%d/wsman"\nauth = "credssp"\n' % (
    harness.TRANSPORT_DOUBLES["web05"].host, harness.TRANSPORT_DOUBLES["web05"].port)


def relay_cli(args: typing.Sequence[str], stdin: str = "", cwd: typing.Optional[str] = None
              ) -> subprocess.CompletedProcess:
    return subprocess.run([harness.relay_binary()] + list(args), input=stdin.encode(), capture_output=True,
                          env=harness.scrubbed_env(), cwd=cwd, timeout=60)


def write(path: str, text: str) -> str:
    with open(path, "w") as fh:
        fh.write(text)
    return path


def test_check_refuses_credssp_over_http_unless_the_target_opts_in(relay: harness.Harness) -> None:
    base = harness.relay_config_toml(relay.workdir)
    refused = write(os.path.join(relay.workdir, "credssp-over-http.toml"), base + CREDSSP_OVER_HTTP)
    res = relay_cli(["check", "--config", refused])
    err = res.stderr.decode()
    assert res.returncode == 1, (res.stdout.decode(), err)
    assert re.search(r'credssp-over-http\.toml:\d+: target\[\d+\]\.auth: auth "credssp" over http:// delegates the '
                     r"caller's password to a host only NTLM vouches for \(target \"app01\"", err), err
    assert "allow_ntlm_only_delegation = true" in err, err
    accepted = write(os.path.join(relay.workdir, "credssp-over-http-opt-in.toml"),
                     base + CREDSSP_OVER_HTTP + "allow_ntlm_only_delegation = true\n")
    res = relay_cli(["check", "--config", accepted])
    assert res.returncode == 0, (res.stdout.decode(), res.stderr.decode())


def test_user_add_says_the_users_file_is_password_equivalent(tmp_path) -> None:
    users = str(tmp_path / "users")
    res = relay_cli(["user", "add", ALICE, "--users-file", users, "--password-stdin"], stdin=USERS[ALICE] + "\n")
    err = res.stderr.decode()
    assert res.returncode == 0, err
    assert "is password-equivalent" in err and "pass-the-hash" in err, err
    assert "systemd-creds encrypt --name=users %s" % users in err, err


@pytest.fixture()
def credentials(relay: harness.Harness, tmp_path, monkeypatch) -> str:
    """A credentials directory as systemd makes it (0500, the users file 0400 in it), named in the environment of
    the relay processes the test starts."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    shutil.copy(relay.users_file, creds / "users")
    os.chmod(creds / "users", 0o400)
    os.chmod(creds, 0o500)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    yield str(creds)
    os.chmod(creds, 0o700)


def credential_config(config: str, h: harness.Harness) -> str:
    assert h.users_file in config
    return config.replace(h.users_file, "credential:users")


def test_serve_reads_the_users_file_from_the_credentials_directory(relay: harness.Harness, credentials: str) -> None:
    extra = harness.ExtraRelay(relay, CRED_RELAY, edit=lambda c: credential_config(c, relay))
    try:
        assert "credential:users" in open(extra.config).read()
        p = extra.protocol()
        sid = p.open_shell()
        cid = p.run_command(sid, "echo", ["from-credentials"])
        assert p.get_command_output(sid, cid)[0] == b"from-credentials\n"
        p.cleanup_command(sid, cid)
        p.close_shell(sid)
        assert wait_for(lambda: [e for e in extra.events() if e["event"] == "session_start"
                                 and e.get("user") == ALICE], 10), extra.excerpt()
        res = relay_cli(["check", "--config", extra.config])
        assert res.returncode == 0, (res.stdout.decode(), res.stderr.decode())
    finally:
        extra.stop()


def test_check_says_a_credential_needs_the_credentials_directory(relay: harness.Harness, monkeypatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = write(os.path.join(relay.workdir, "credential-users.toml"),
                   credential_config(harness.relay_config_toml(relay.workdir), relay))
    res = relay_cli(["check", "--config", config])
    err = res.stderr.decode()
    assert res.returncode == 1, (res.stdout.decode(), err)
    assert re.search(r'credential-users\.toml:\d+: auth\.users_file: "credential:users" names a systemd credential, '
                     r"but \$CREDENTIALS_DIRECTORY is not set: systemd sets it for a service with "
                     r"LoadCredentialEncrypted=users:", err), err
