#!/usr/bin/env python3
"""Relay CPU per MiB of PowerShell output through an Xpress-compressed shell, beside the same uncompressed.

Run (after integration/run.sh has created the venv; a release build for figures):

    unshare -n bash -c 'ip link set lo up; integration/.venv/bin/python benches/psrp_compression.py \\
        --relay-bin target/release/winrm-relay [--mib 4]'

Starts the integration double web01 (127.0.0.21:5985) and the relay (127.0.0.20:5985) with the harness. A pypsrp
client runs one script printing `--mib` MiB as 1 KiB lines (hex of random bytes), once asking for compression as Windows' WinRM client
does (integration/windows_client.py: the double then compresses every output stream, the client decompresses),
once plain. The figure is the relay process's own utime+stime (/proc) during that one invoke, per MiB of output
text: the client and the double (Python, slow at compressing) do not count. A warm-up invoke on the same runspace
pool comes first. Loopback only; everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import typing

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import harness  # noqa: E402
import windows_client  # noqa: E402

ALICE = "LAB\\alice"
LINE = 1023  # characters per output line (plus its newline: 1 KiB)


def relay_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) the process has used."""
    with open("/proc/%d/stat" % pid) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(pid: int, compressed: bool, mib: int) -> dict:
    from pypsrp.powershell import PowerShell, RunspacePool
    from pypsrp.wsman import WSMan

    cls = windows_client.xpress_wsman_class() if compressed else WSMan
    wsman = cls(harness.RELAY_HOST, port=harness.RELAY_PORT, path="wsman/web01", auth="credssp", ssl=False,
                username=ALICE, password=harness.USERS[ALICE], cert_validation=False, operation_timeout=60)
    lines = mib * 1024
    # Hex of random bytes: text that compresses about 2:1 (the Huffman stage at work), not a run of one byte.
    script = "head -c %d /dev/urandom | od -An -v -tx1 | tr -d ' \\n' | fold -w %d" % (lines * (LINE + 1) // 2, LINE)
    with RunspacePool(wsman) as pool:
        warm = PowerShell(pool)
        warm.add_script("yes warm-up | head -n 1000")
        warm.invoke()
        ps = PowerShell(pool)
        ps.add_script(script)
        cpu, wall = relay_cpu(pid), time.monotonic()
        out = ps.invoke()
        cpu, wall = relay_cpu(pid) - cpu, time.monotonic() - wall
    wsman.close()
    text = sum(len(s) + 1 for s in out)
    if len(out) < lines or text < lines * (LINE + 1) - LINE:
        raise SystemExit("wrong output: %d lines, %d bytes" % (len(out), text))
    if compressed and not getattr(wsman, "received", None):
        raise SystemExit("the shell was not compressed")
    packed = sum(p for _, p in getattr(wsman, "received", [])) or None
    return {"compressed": compressed, "output_mib": text / 2 ** 20, "wall_s": round(wall, 2),
            "relay_cpu_ms": round(cpu * 1e3, 1), "relay_cpu_ms_per_mib": round(cpu * 1e3 / (text / 2 ** 20), 1),
            "compressed_bytes_on_the_wire": packed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=4, help="MiB of output per run (default 4)")
    ap.add_argument("--relay-bin", default=None, help="relay binary (default: the harness's, RELAY_BIN)")
    ap.add_argument("--rust-log", default="info")
    args = ap.parse_args()
    harness.scrub_proxies_in_process()
    workdir = tempfile.mkdtemp(prefix="psrp-compression-")
    h = harness.Harness(workdir, relay_bin=args.relay_bin)
    try:
        h.write_ntlm_users()
        h.start_doubles(hang=False, names=("web01",))
        h.add_relay_users()
        h.write_relay_config()
        pid = h.start_relay(rust_log=args.rust_log).pid
        rows = [measure(pid, False, args.mib), measure(pid, True, args.mib)]
    finally:
        h.stop()
    print("%-12s %10s %8s %14s %18s" % ("shell", "output", "wall", "relay CPU", "relay CPU per MiB"))
    for r in rows:
        print("%-12s %7.1f MiB %6.1f s %11.1f ms %15.1f ms" % (
            "compressed" if r["compressed"] else "plain", r["output_mib"], r["wall_s"], r["relay_cpu_ms"],
            r["relay_cpu_ms_per_mib"]))
    print(json.dumps({"relay_bin": h.relay_bin, "runs": rows}))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
