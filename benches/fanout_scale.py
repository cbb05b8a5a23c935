#!/usr/bin/env python3
"""Fan-out at scale: `winrm-relay run` on N targets (default 1,000) with --throttle 50, through the relay
and --direct, against target doubles. A measurement to run by hand, not a test.

Run (after integration/run.sh has created the venv and built the relay), in a network namespace of its own
since it binds loopback addresses 127.0.0.139-159:

    unshare -n bash -c 'ip link set lo up; integration/.venv/bin/python benches/fanout_scale.py'
    ... [--targets 1000] [--throttle 50] [--processes 20] [--mode both|relay|direct] [--command 'echo hi']

Targets: each double process serves one state on --targets/--processes ports (127.0.0.140+i, ports 6000+),
so 1,000 targets are 20 processes of 50 listeners, each target its own address:port (the relay refuses
two [[target]]s at one host:port; here the targets are unlisted `host:port` names admitted by a CIDR rule).
Every target authenticates (NTLM), creates a shell, runs the command under /bin/sh, and deletes it.

Prints per mode: targets ok/failed, wall time, the slowest target's time, the bound the issue sets
(2 x slowest x targets / throttle), the client's peak RSS (ru_maxrss from wait4), the relay's peak RSS
(VmHWM), and whether at most --throttle shells were open at once on the doubles (from their logs).
Results stream to a jsonl file, which is counted afterwards.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import typing

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import harness  # noqa: E402

ALICE = "LAB\\alice"
RELAY_HOST = "127.0.0.139"
FIRST_HOST = 140
FIRST_PORT = 6000

TAIL = """
[limits]
max_sessions_per_user = 200
max_shells_per_user = 200
max_operations_per_user = 1500

[[allow]]
users = ['LAB\\alice']
targets = ["127.0.0.128/27"]
shells = ["cmd"]
"""


def vm_hwm_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def parse_time(s: str) -> float:
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def most_open(logs: typing.List[str], offsets: typing.Dict[str, int]) -> int:
    edges = []
    for log in logs:
        for r in harness.read_jsonl(log)[offsets.get(log, 0):]:
            if r.get("event") == "request" and r.get("action") in ("Create", "Delete") and r.get("status") == 200:
                edges.append((parse_time(r["time"]), -1 if r["action"] == "Delete" else 1))
    edges.sort()
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def run_once(h: harness.Harness, mode: str, names: typing.List[str], args: argparse.Namespace,
             logs: typing.List[str], relay_pid: int) -> dict:
    targets_file = os.path.join(h.workdir, "targets.txt")
    with open(targets_file, "w") as fh:
        fh.write("\n".join(names) + "\n")
    out_path = os.path.join(h.workdir, "results-%s.jsonl" % mode)
    how = ["--relay", "http://%s:5985" % RELAY_HOST] if mode == "relay" else ["--direct"]
    argv = [h.relay_bin, "run", *how, "--user", ALICE, "--password-stdin", "--targets-file", targets_file,
            "--throttle", str(args.throttle), "--retries", "1", "--timeout", "300s", "--output", "jsonl", "--",
            args.command]
    offsets = {log: len(harness.read_jsonl(log)) for log in logs}
    with open(out_path, "wb") as out:
        started = time.monotonic()
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE,
                                 env=harness.scrubbed_env())
        child.stdin.write((harness.USERS[ALICE] + "\n").encode())
        child.stdin.close()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - started
        stderr = child.stderr.read().decode("utf-8", "replace")
        child.returncode = os.waitstatus_to_exitcode(status)
    results = harness.read_jsonl(out_path)
    slowest = max((r["duration_ms"] for r in results), default=0) / 1000.0
    ok = sum(1 for r in results if r["status"] == "ok")
    errors = sorted({r["error"] for r in results if r["error"]})[:3]
    return {
        "mode": mode,
        "exit": child.returncode,
        "targets": len(names),
        "results": len(results),
        "ok": ok,
        "failed": len(results) - ok,
        "wall_s": round(wall, 2),
        "slowest_target_s": round(slowest, 3),
        "bound_s": round(2 * slowest * len(names) / args.throttle, 2),
        "within_bound": wall <= 2 * slowest * len(names) / args.throttle,
        "client_max_rss_mib": round(usage.ru_maxrss / 1024.0, 1),
        "relay_hwm_mib": round(vm_hwm_kib(relay_pid) / 1024.0, 1) if mode == "relay" else None,
        "most_shells_open": most_open(logs, offsets),
        "summary": stderr.strip().splitlines()[-1] if stderr.strip() else "",
        "errors": errors,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--throttle", type=int, default=50)
    p.add_argument("--processes", type=int, default=20, help="double processes (at most 20: 127.0.0.140-159)")
    p.add_argument("--mode", choices=["both", "relay", "direct"], default="both")
    p.add_argument("--command", default="echo hello")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    if not 1 <= args.processes <= 20:
        p.error("--processes must be 1..20")
    harness.scrub_proxies_in_process()
    workdir = tempfile.mkdtemp(prefix="fanout-scale-")
    h = harness.Harness(workdir)
    relay = None
    try:
        h.write_ntlm_users()
        h.add_relay_users()
        per_process = -(-args.targets // args.processes)
        names: typing.List[str] = []
        logs = []
        for i in range(args.processes):
            host = "127.0.0.%d" % (FIRST_HOST + i)
            ports = [FIRST_PORT + j for j in range(per_process) if len(names) + j < args.targets]
            if not ports:
                break
            extra = [a for port in ports[1:] for a in ("--bind", "%s:%d" % (host, port))]
            h.start_double("scale-%02d" % i, host, ports[0], extra_args=extra, wait=False)
            names += ["%s:%d" % (host, port) for port in ports]
            logs.append(h.double_log("scale-%02d" % i))
        for i in range(args.processes):
            if "double-scale-%02d" % i in h.procs:
                h.wait_double("scale-%02d" % i, "127.0.0.%d" % (FIRST_HOST + i), FIRST_PORT)
        relay = harness.ExtraRelay(h, RELAY_HOST, tail=TAIL)
        modes = ["relay", "direct"] if args.mode == "both" else [args.mode]
        for mode in modes:
            print(json.dumps(run_once(h, mode, names, args, logs, relay.proc.pid)), flush=True)
    finally:
        if relay is not None:
            relay.stop()
        h.stop()
        if args.keep:
            print("work directory: %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
