#!/usr/bin/env python3
"""Markdown summary of a bench/run-abuse.sh results directory: python3 bench/abuse-summary.py DIR."""
import json, os, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None
def mib(b): return f"{b / 1048576:.0f} MiB"
def ms(us): return f"{us / 1000:.1f} ms"
env = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(out, "environment.txt")) if "=" in l)
print(f"# Abuse measurements, {env.get('date_utc')}\n")
print(f"Server `{env.get('tern_binary')}` ({env.get('tern_build')} build, commit {env.get('tern_commit')}), "
      f"{env.get('host_cores')}-core {env.get('host_cpu')}, load average at start {env.get('load_avg_at_start')}. "
      f"`{env.get('command')}`; {env.get('runs')}.\n")
print("| measurement | value |\n| --- | --- |")
r = load("idle")
if r:
    x, h = r["result"], r["healthz"]
    print(f"| idle TLS connections one address (127.0.0.2) holds after {x['hold_secs']:.0f} s "
          f"(server fd limit {env.get('nofile')}) | {x['held_at_end']} held of "
          f"{x['attempted']} tried ({x['open_failed']} failed to open, {x['closed_by_server']} closed by the server) |")
    acc = os.path.join(out, "logs", "idle.server-summary.txt")
    if os.path.exists(acc):
        n = open(acc).read().strip().split("=")[-1]
        print(f"| server log lines `accept failed` during it | {n} |")
    print(f"| GET /healthz from another address during it | {h['ok']} ok / {h['probes']} "
          f"({h['failures'][0] if h['failures'] else 'no failure'}) |")
r = load("h2")
if r:
    x, m = r["result"], r.get("server_rss") or {}
    print(f"| HTTP/2 prior knowledge: connections answered h2 | {x['conns_h2_answered']} of {x['conns_attempted']} "
          f"(max streams {x['server_max_concurrent_streams']}, initial window {x['server_initial_window']}) |")
    print(f"| HTTP/2: streams with an unfinished body held / opened | {x['streams_pending_at_end']} / {x['streams_opened']} "
          f"({mib(x['body_bytes_sent'])} sent) |")
    if m: print(f"| HTTP/2: server RSS before → peak | {mib(m['before_bytes'])} → {mib(m['peak_bytes'])} |")
r = load("slow-body")
if r:
    x, m = r["result"], r.get("server_rss") or {}
    print(f"| slow body (1 B / 4 s): connections still held after {x['duration_secs']:.0f} s | "
          f"{x['held_at_end']} of {x['opened']} (answered early {x['answered'] or 'none'}) |")
    if m: print(f"| slow body: server RSS before → peak | {mib(m['before_bytes'])} → {mib(m['peak_bytes'])} |")
r = load("bystander")
if r:
    x = r["result"]
    for p in x["phases"]:
        b, l = p["bystander"], p["login"]
        la = f", load avg {p['load_avg_start']:.1f}→{p['load_avg_end']:.1f}" if 'load_avg_start' in p else ""
        print(f"| bystander delivery p50 / p90 / p99 / max, {p['name']}{la} | {ms(b['latency']['p50_us'])} / {ms(b['latency']['p90_us'])} / "
              f"{ms(b['latency']['p99_us'])} / {ms(b['latency']['max_us'])} (lost {b['lost']}, dup {b['duplicates']}) |")
        print(f"| legitimate login success, {p['name']} | {l['ok']}/{l['attempts']} ({l['success_rate']*100:.0f}%; "
              f"429: {l['rate_limited']}, other: {l['other_status'] or 0}, errors: {sum(l['errors'].values())}); "
              f"p50 {ms(l['latency']['p50_us'])} |")
        a = p.get("attacker")
        if a and a.get("logins"):
            lf = a["logins"]
            print(f"| attacker logins ({lf['conns']} conns) | {lf['tried']} tried, answers {lf['by_status']} |")
        if a and a.get("sends"):
            sf = a["sends"]
            print(f"| attacker sends ({sf['inflight']} in flight, {sf['payload_bytes']} B) | {sf['acked']} acked "
                  f"({sf['acked_per_sec']:.0f}/s), refused {sf['refused'] or 0}, closed {sf['closed'] or 0} |")
    if x.get("p99_ratio"):
        print(f"| bystander p99 attack / quiet | {x['p99_ratio']:.2f}x |")
