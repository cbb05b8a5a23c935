#!/usr/bin/env bash
# Integration suite: venv (cached on requirements.txt hash) -> build relay -> pytest.
# Last line of output is always "N passed, N failed, N skipped"; exit status is non-zero
# on any failure, on a build failure, and when no test ran (pytest exit 5). In CI
# (CI=true, where the runner is root and gdb is installed) a skipped test_91_memory test
# counts as failed: the memory checks must not silently stop running.
#
# Usage: integration/run.sh [extra pytest args, e.g. -k direct]
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
VENV="$HERE/.venv"
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1

summary() { # passed failed skipped
    echo "$1 passed, $2 failed, $3 skipped"
}

# ---- 0. MIT Kerberos for the test realm (KDC, kadmin.local, kinit) and for building python-gssapi
# (krb5-config, headers): root on a fresh machine. Noninteractive: the packages ask debconf questions
# (default realm, servers) that the test realm never uses, it writes its own krb5.conf and kdc.conf.
krb5_missing=0
for tool in krb5kdc kdb5_util kadmin.local krb5-config; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || krb5_missing=1
done
if [ "$krb5_missing" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[run.sh] installing MIT Kerberos (test realm, python-gssapi build)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        krb5-kdc krb5-admin-server krb5-user libkrb5-dev) </dev/null >/dev/null 2>&1 \
        || echo "[run.sh] krb5 install failed: the Kerberos tests will fail"
fi

# ---- 0b. Samba AD DC for the Active Directory tests (integration/samba_ad.py): a throwaway LAB.TEST domain with
# groups, PACs and LDAP. Installing starts nothing; the tests run their own `samba -i`.
samba_missing=0
for tool in samba samba-tool ldbmodify ldbsearch kinit; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || samba_missing=1
done
if [ "$samba_missing" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[run.sh] installing Samba AD DC (Active Directory tests)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        samba samba-ad-dc samba-ad-provision samba-dsdb-modules samba-vfs-modules winbind ldb-tools krb5-user) \
        </dev/null >/dev/null 2>&1 || echo "[run.sh] samba install failed: the Active Directory tests will fail"
fi

# ---- 1. venv, reinstalled only when requirements.txt (or the interpreter) changed
want="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1) $("$PY" -c 'import sys; print(sys.version.split()[0])')"
stamp="$VENV/.requirements.stamp"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[run.sh] (re)creating $VENV"
    rm -rf "$VENV"
    if ! "$PY" -m venv "$VENV" </dev/null; then
        echo "[run.sh] python3 -m venv failed; trying virtualenv"
        "$PY" -m pip install -q virtualenv </dev/null && "$PY" -m virtualenv -q "$VENV" </dev/null
    fi
    if ! "$VENV/bin/python" -m pip install -q -r "$HERE/requirements.txt" </dev/null; then
        echo "[run.sh] pip install failed"
        rm -f "$stamp"
        summary 0 1 0
        exit 1
    fi
    echo "$want" >"$stamp"
fi

# ---- 2. build the relay (debug); honour CARGO_TARGET_DIR
target_dir="${CARGO_TARGET_DIR:-$REPO/target}"
case "$target_dir" in /*) ;; *) target_dir="$REPO/$target_dir" ;; esac
build_ok=1
# ---- gdb for test_91_memory (core images of the live relay); root on a fresh machine
if ! command -v gdb >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[run.sh] installing gdb (test_91_memory)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gdb) </dev/null >/dev/null 2>&1 \
        || echo "[run.sh] gdb install failed: test_91_memory will skip (a failure in CI)"
fi

echo "[run.sh] cargo build --bin winrm-relay"
if ! (cd "$REPO" && cargo build --bin winrm-relay </dev/null); then
    build_ok=0
    echo "[run.sh] relay build FAILED: relay scenarios will fail, direct (double) tests still run"
    export RELAY_BIN="/nonexistent/winrm-relay-build-failed"
else
    export RELAY_BIN="$target_dir/debug/winrm-relay"
fi

# ---- 3. pytest
junit="$(mktemp -d)/junit.xml"
(cd "$HERE" && "$VENV/bin/python" -m pytest tests -p no:cacheprovider -o junit_family=xunit2 \
    --junitxml="$junit" --timeout=180 -rfEs -v "$@" </dev/null)
rc=$?

# Prints "passed failed skipped"; in CI a skipped memory test is moved to failed (and said why).
read -r passed failed skipped < <("$VENV/bin/python" - "$junit" <<'PYEOF'
import os, sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    print(0, 1, 0); sys.exit()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = f = e = s = 0
for su in suites:
    t += int(su.get("tests", 0)); f += int(su.get("failures", 0))
    e += int(su.get("errors", 0)); s += int(su.get("skipped", 0))
memory_skips = [(tc.get("name"), tc.find("skipped").get("message", ""))
                for tc in root.iter("testcase")
                if tc.find("skipped") is not None and "test_91_memory" in tc.get("classname", "")]
if os.environ.get("CI", "").lower() in ("true", "1") and memory_skips:
    for name, why in memory_skips:
        print("[run.sh] CI: %s skipped, counted as failed: %s" % (name, why), file=sys.stderr)
    f += len(memory_skips); s -= len(memory_skips)
print(t - f - e - s, f + e, s)
PYEOF
)
rm -rf "$(dirname "$junit")"

status=0
if [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$passed" -eq 0 ] || [ "$build_ok" -ne 1 ]; then
    status=1
    # pytest crashed / collected nothing / build broke without a failing test: count it.
    if [ "$failed" -eq 0 ]; then failed=1; fi
fi
[ "$rc" -eq 5 ] && echo "[run.sh] pytest collected no tests"
summary "$passed" "$failed" "$skipped"
exit "$status"
