#!/usr/bin/env python3
"""Comparison table for one bench/run-matrix.sh run.

Reads OUT_DIR/<target>.json (tern-loadgen reports, schema in loadgen/REPORT.md, schema_version 1),
OUT_DIR/runs.tsv (target, loadgen exit status), OUT_DIR/environment.txt and
OUT_DIR/logs/<target>.command, and prints a Markdown comparison with ratios relative to tern-ws
(or to the first target that has a report when tern-ws has none).

Usage: compare.py OUT_DIR
"""

import json
import os
import sys

ORDER = ["tern-ws", "tern-wt", "socketio", "centrifugo"]
SUPPORTED_SCHEMA = 1


def load(out):
    runs = {}
    tsv = os.path.join(out, "runs.tsv")
    if os.path.exists(tsv):
        with open(tsv) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 2:
                    runs[parts[0]] = parts[1]
    targets = [t for t in ORDER if t in runs] + [t for t in runs if t not in ORDER]
    reports = {}
    for t in targets:
        path = os.path.join(out, f"{t}.json")
        if os.path.exists(path):
            try:
                with open(path) as f:
                    reports[t] = json.load(f)
            except (OSError, ValueError) as e:
                print(f"compare.py: cannot read {path}: {e}", file=sys.stderr)
    return targets, runs, reports


def get(report, *path, default=None):
    node = report
    for key in path:
        if not isinstance(node, dict) or key not in node or node[key] is None:
            return default
        node = node[key]
    return node


def ms(us):
    if us is None:
        return "–"
    return f"{us / 1000:.2f}" if us < 100_000 else f"{us / 1000:.0f}"


def num(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def mib(b):
    return "–" if b is None else f"{b / (1 << 20):,.1f}"


def kib(b):
    return "–" if b is None else f"{b / 1024:,.1f}"


def ratio(v, base):
    if v is None or base in (None, 0):
        return "–"
    return f"{v / base:.2f}×"


def metrics(report):
    """The numbers the tables show, None where the report lacks them."""
    server = get(report, "server") or {}
    cpu = server.get("cpu_percent_avg")
    dps = get(report, "traffic", "delivered_per_sec")
    return {
        "p50": get(report, "latency", "delivery", "p50_us"),
        "p95": get(report, "latency", "delivery", "p95_us"),
        "p99": get(report, "latency", "delivery", "p99_us"),
        "p999": get(report, "latency", "delivery", "p999_us"),
        "max": get(report, "latency", "delivery", "max_us"),
        "ack_p99": get(report, "latency", "send_ack", "p99_us"),
        "connect_p99": get(report, "latency", "connect", "p99_us"),
        "sent_ps": get(report, "traffic", "sent_per_sec"),
        "delivered_ps": dps,
        "expected": get(report, "accounting", "expected"),
        "delivered": get(report, "accounting", "delivered"),
        "lost": get(report, "accounting", "lost"),
        "dup": get(report, "accounting", "duplicated"),
        "ooo": get(report, "accounting", "out_of_order"),
        "send_failed": get(report, "traffic", "send_failed"),
        "connected": get(report, "connect", "succeeded"),
        "users": get(report, "connect", "users"),
        "cpu_avg": cpu,
        "cpu_max": server.get("cpu_percent_max"),
        "rss_peak": server.get("rss_bytes_peak"),
        "rss_hold": server.get("rss_bytes_at_hold"),
        # The loadgen clamps a negative difference to 0; a server whose RSS fell while clients
        # connected (memory freed after setup) has no meaningful per-connection figure.
        "mem_conn": (
            None
            if (server.get("rss_bytes_at_hold") or 0) < (server.get("rss_bytes_before_connect") or 0)
            else server.get("memory_per_connection_bytes")
        ),
        "rss_before": server.get("rss_bytes_before_connect"),
        # Server CPU time per 1,000 deliveries, in ms: cpu% / 100 cores-seconds per second,
        # divided by deliveries per second.
        "cpu_per_k": (cpu * 10_000 / dps) if cpu is not None and dps else None,
        "loadgen_cpu": get(report, "loadgen", "cpu_percent_avg"),
    }


def status(target, runs, report):
    rc = runs.get(target)
    if report is None:
        return f"**no report** (exit {rc})"
    if get(report, "schema_version") != SUPPORTED_SCHEMA:
        return f"schema {get(report, 'schema_version')}?"
    if get(report, "passed") is True and rc == "0":
        return "pass"
    failures = get(report, "failures", default=[]) or []
    why = "; ".join(str(f) for f in failures[:2]) or f"exit {rc}"
    return f"**FAIL**: {why}"


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = sys.argv[1]
    targets, runs, reports = load(out)
    m = {t: metrics(reports[t]) for t in reports}
    base_name = "tern-ws" if "tern-ws" in m else next(iter(m), None)
    base = m.get(base_name, {})

    lines = ["# Peer comparison", ""]
    env = os.path.join(out, "environment.txt")
    if os.path.exists(env):
        with open(env) as f:
            kv = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        lines += [
            f"Run {kv.get('date_utc', '?')} on {kv.get('host_cores', '?')} cores "
            f"({kv.get('host_cpu', '?')}), {int(kv.get('host_mem_kib', '0')) // (1 << 20)} GiB, "
            f"kernel {kv.get('kernel', '?')}; loadgen and server on the same machine.",
            "",
            f"Scenario: `{kv.get('scenario', '?')}`.",
            "",
            f"Reproduce: `{kv.get('matrix_command', 'bench/run-matrix.sh')}`.",
            "",
        ]
        versions = [
            kv[k] if k == "rustc" else f"{k} {kv[k]}"
            for k in ("tern_commit", "rustc", "node", "socket.io", "centrifugo")
            if k in kv
        ]
        if versions:
            lines += ["Versions: " + ", ".join(versions) + ".", ""]

    lines += [
        "## Delivery latency and correctness",
        "",
        "Delivery latency is measured from the scheduled send time to the arrival at each recipient "
        "(open loop, no coordinated omission), in milliseconds.",
        "",
        "| target | status | p50 | p95 | p99 | p99.9 | max | send→ack p99 | sent/s | delivered/s "
        "| expected | delivered | lost | duplicated | out of order | connected |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for t in targets:
        r = reports.get(t)
        x = m.get(t, {})
        lines.append(
            f"| {t} | {status(t, runs, r)} | {ms(x.get('p50'))} | {ms(x.get('p95'))} | {ms(x.get('p99'))} "
            f"| {ms(x.get('p999'))} | {ms(x.get('max'))} | {ms(x.get('ack_p99'))} "
            f"| {num(x.get('sent_ps'), 1)} | {num(x.get('delivered_ps'), 1)} | {num(x.get('expected'))} "
            f"| {num(x.get('delivered'))} | {num(x.get('lost'))} | {num(x.get('dup'))} | {num(x.get('ooo'))} "
            f"| {num(x.get('connected'))}/{num(x.get('users'))} |"
        )

    lines += [
        "",
        "## Server resources",
        "",
        "Server CPU in percent of one core (200 = both cores), sampled from /proc for the server PID "
        "during traffic; memory per connection = (RSS with everyone connected − RSS before connecting) "
        "/ connections.",
        "",
        "| target | CPU avg % | CPU max % | CPU ms per 1,000 deliveries | RSS before connect MiB "
        "| RSS at hold MiB | RSS peak MiB | memory per connection KiB | loadgen CPU avg % |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    fell = []
    for t in targets:
        x = m.get(t, {})
        if t in m and x.get("mem_conn") is None:
            fell.append(t)
        lines.append(
            f"| {t} | {num(x.get('cpu_avg'), 1)} | {num(x.get('cpu_max'), 1)} | {num(x.get('cpu_per_k'), 1)} "
            f"| {mib(x.get('rss_before'))} | {mib(x.get('rss_hold'))} | {mib(x.get('rss_peak'))} "
            f"| {kib(x.get('mem_conn'))} | {num(x.get('loadgen_cpu'), 1)} |"
        )
    if fell:
        lines += [
            "",
            f"No memory per connection for {', '.join(fell)}: the server's RSS was lower with every "
            "client connected than before they connected (memory from setup was returned in between), "
            "so the difference measures something else. Use the `connect` scenario on a fresh server "
            "for that figure.",
        ]

    if base_name:
        lines += [
            "",
            f"## Ratios relative to {base_name}",
            "",
            f"Each value divided by {base_name}'s: above 1.00× means more latency, more throughput, "
            "more CPU or more memory than it.",
            "",
            "| target | p50 | p95 | p99 | max | delivered/s | CPU avg | CPU per delivery | RSS peak "
            "| memory per connection |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for t in targets:
            x = m.get(t, {})
            cells = [
                ratio(x.get(k), base.get(k))
                for k in ("p50", "p95", "p99", "max", "delivered_ps", "cpu_avg", "cpu_per_k", "rss_peak", "mem_conn")
            ]
            lines.append(f"| {t} | " + " | ".join(cells) + " |")

    lines += ["", "## Commands", ""]
    for t in targets:
        cmd = os.path.join(out, "logs", f"{t}.command")
        if os.path.exists(cmd):
            with open(cmd) as f:
                lines.append(f"- {t}: `{f.read().strip()}`")
        plot = os.path.join(out, f"{t}.svg")
        if os.path.exists(plot):
            lines.append(f"  plot: `{os.path.relpath(plot, out)}`")
    lines.append("")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
