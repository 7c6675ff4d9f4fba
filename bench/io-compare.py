#!/usr/bin/env python3
"""Builds the I/O driver / shard comparison table from bench/run-io-matrix.sh reports.

Usage: io-compare.py OUT_DIR  (reads OUT_DIR/<io>-<shards>-{idle,prd,fanout}.json)
"""
import json
import pathlib
import sys


def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pct(report, name):
    hist = (report or {}).get("latency", {}).get(name) or {}
    value = hist.get("p99_us")
    return None if value is None else value / 1000.0


def fmt(value, unit="", digits=1):
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}"


def main():
    out = pathlib.Path(sys.argv[1])
    configs = sorted({p.name.rsplit("-", 1)[0] for p in out.glob("*-*-*.json")})
    env = (out / "environment.txt").read_text() if (out / "environment.txt").exists() else ""
    rows = []
    for config in configs:
        idle = load(out / f"{config}-idle.json")
        prd = load(out / f"{config}-prd.json")
        fan = load(out / f"{config}-fanout.json")
        mem = (idle or {}).get("server", {}) or {}
        per_conn = mem.get("memory_per_connection_bytes")
        held = ((idle or {}).get("connect") or {}).get("succeeded")
        cpu_per_msg = None
        p99 = None
        lost = dup = None
        if prd:
            server = prd.get("server") or {}
            traffic = prd.get("traffic") or {}
            secs = traffic.get("duration_secs") or prd["scenario"]["params"].get("duration_secs")
            delivered = prd["accounting"].get("delivered")
            if server.get("cpu_percent_avg") is not None and delivered:
                cpu_per_msg = server["cpu_percent_avg"] / 100.0 * secs / delivered * 1e6
            p99 = pct(prd, "delivery")
            lost = prd["accounting"].get("lost")
            dup = prd["accounting"].get("duplicated")
        max_dps = ((fan or {}).get("fanout") or {}).get("max_sustained_deliveries_per_sec")
        rows.append((config, held, per_conn, cpu_per_msg, p99, lost, dup, max_dps))
    print("# I/O driver and shard comparison\n")
    print("```\n" + env.strip() + "\n```\n")
    print("| io-shards | idle conns held | server bytes / idle conn | server CPU µs / delivered msg (PRD) "
          "| p99 delivery (PRD) | lost / dup (PRD) | max sustained deliveries/s (fan-out 100) |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for config, held, per_conn, cpu, p99, lost, dup, dps in rows:
        print(f"| {config} | {fmt(held)} | {fmt(per_conn and round(per_conn))} | {fmt(cpu, digits=2)} "
              f"| {fmt(p99, ' ms', 2)} | {fmt(lost)} / {fmt(dup)} | {fmt(dps and round(dps))} |")


if __name__ == "__main__":
    main()
