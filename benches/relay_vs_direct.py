#!/usr/bin/env python3
"""Relay overhead benchmark: WinRS round-trips and bulk output, direct vs through the relay.

Run (after integration/run.sh has created the venv and built the relay):

    integration/.venv/bin/python benches/relay_vs_direct.py [--n 50] [--mb 20]

Starts one target double (web01 on 127.0.0.21:5985) and the relay (127.0.0.20:5985) with
the integration harness, then in one run:

* N round-trips (open shell, run `echo`, receive until Done, close shell) with pywinrm
  NTLM straight to the double, and with pywinrm CredSSP through the relay;
* one large-output command (default 20 MB on stdout) each way.

Prints p50/p99 latency per mode, the relay/direct ratios and the throughput ratio.
Loopback only; everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import typing

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import harness  # noqa: E402

ALICE = "LAB\\alice"


def percentile(values: typing.List[float], pct: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(pct / 100.0 * len(s)) - 1))
    return s[k]


def direct_protocol():
    import winrm

    host, port = harness.DOUBLES["web01"]
    return winrm.protocol.Protocol(
        endpoint="http://%s:%d/wsman" % (host, port),
        transport="ntlm",
        username=ALICE,
        password=harness.USERS[ALICE],
        message_encryption="always",
        operation_timeout_sec=20,
        read_timeout_sec=30,
    )


def relay_protocol():
    import winrm

    return winrm.protocol.Protocol(
        endpoint="http://%s:%d/wsman/web01" % (harness.RELAY_HOST, harness.RELAY_PORT),
        transport="credssp",
        username=ALICE,
        password=harness.USERS[ALICE],
        server_cert_validation="ignore",
        message_encryption="always",
        operation_timeout_sec=20,
        read_timeout_sec=30,
    )


def round_trip(p: typing.Any) -> float:
    t0 = time.perf_counter()
    sid = p.open_shell()
    cid = p.run_command(sid, "echo", ["bench"])
    out, err, rc = p.get_command_output(sid, cid)
    p.close_shell(sid, close_session=False)
    dt = time.perf_counter() - t0
    if (out, rc) != (b"bench\n", 0):
        raise RuntimeError("unexpected round-trip result %r" % ((out, err, rc),))
    return dt


def bulk(p: typing.Any, nbytes: int) -> float:
    # 64-byte lines: cheap to produce, easy to check.
    line = b"0123456789abcdef" * 4
    line = line[:63] + b"\n"
    nlines = nbytes // len(line)
    expected_len = nlines * len(line)
    sid = p.open_shell()
    t0 = time.perf_counter()
    cid = p.run_command(sid, "yes %s | head -n %d" % (line[:-1].decode(), nlines))
    out, err, rc = p.get_command_output(sid, cid)
    dt = time.perf_counter() - t0
    p.close_shell(sid, close_session=False)
    if rc != 0 or len(out) != expected_len or out[:64] != line or out[-64:] != line:
        raise RuntimeError("bulk output mismatch: rc=%s len=%d expected=%d" % (rc, len(out), expected_len))
    return expected_len / dt


def run_mode(name: str, make: typing.Callable[[], typing.Any], n: int, warmup: int, nbytes: int) -> dict:
    p = make()
    for _ in range(warmup):
        round_trip(p)
    lat = [round_trip(p) for _ in range(n)]
    tput = bulk(p, nbytes) if nbytes else float("nan")
    p.transport.close_session()
    return {
        "mode": name,
        "n": n,
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "mean_ms": statistics.mean(lat) * 1000,
        "throughput_MBps": tput / 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description="relay vs direct WinRS benchmark")
    ap.add_argument("--n", type=int, default=50, help="round-trips per mode (default 50)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--mb", type=float, default=20, help="bulk output size in MB (default 20; 0 to skip)")
    ap.add_argument("--relay-bin", default=None, help="relay binary (default: target/debug/winrm-relay)")
    ap.add_argument("--rust-log", default="info", help="RUST_LOG for the relay (default info)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    ap.add_argument("--direct-only", action="store_true", help="measure the double alone (no relay)")
    args = ap.parse_args()

    harness.scrub_proxies_in_process()
    workdir = tempfile.mkdtemp(prefix="relay-bench-")
    h = harness.Harness(workdir, relay_bin=args.relay_bin)
    nbytes = int(args.mb * 1e6)
    try:
        h.write_ntlm_users()
        h.start_doubles(hang=False, names=("web01",))
        if not args.direct_only:
            h.add_relay_users()
            h.write_relay_config()
            h.start_relay(rust_log=args.rust_log)

        t0 = time.perf_counter()
        direct = run_mode("direct (ntlm)", direct_protocol, args.n, args.warmup, nbytes)
        if args.direct_only:
            h.stop()
            shutil.rmtree(workdir, ignore_errors=True)
            print("direct only: p50 %.2f ms, p99 %.2f ms, bulk %.2f MB/s"
                  % (direct["p50_ms"], direct["p99_ms"], direct["throughput_MBps"]))
            return 0
        relay = run_mode("relay (credssp)", relay_protocol, args.n, args.warmup, nbytes)
        wall = time.perf_counter() - t0
    except Exception as e:
        print("benchmark failed: %s" % e, file=sys.stderr)
        print("--- relay.log (tail) ---\n" + harness.tail(h.relay_log, 30), file=sys.stderr)
        h.stop()
        print("work directory kept: %s" % workdir, file=sys.stderr)
        return 1
    h.stop()
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)

    print("WinRS round-trip (open shell, echo, receive, close), N=%d, bulk %.0f MB" % (args.n, nbytes / 1e6))
    print("%-18s %10s %10s %10s %14s" % ("mode", "p50 ms", "p99 ms", "mean ms", "bulk MB/s"))
    for r in (direct, relay):
        print("%-18s %10.2f %10.2f %10.2f %14.2f" % (r["mode"], r["p50_ms"], r["p99_ms"], r["mean_ms"],
                                                    r["throughput_MBps"]))
    ratios = {
        "p50_ratio": relay["p50_ms"] / direct["p50_ms"],
        "p99_ratio": relay["p99_ms"] / direct["p99_ms"],
        "throughput_ratio": relay["throughput_MBps"] / direct["throughput_MBps"] if nbytes else float("nan"),
    }
    print("relay/direct latency ratio: p50 %.2fx, p99 %.2fx" % (ratios["p50_ratio"], ratios["p99_ratio"]))
    print("relay/direct throughput ratio: %.2f" % ratios["throughput_ratio"])
    print("(wall %.1fs; relay binary %s, RUST_LOG=%s)" % (wall, h.relay_bin, args.rust_log))
    if args.json:
        print(json.dumps({"direct": direct, "relay": relay, **ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
