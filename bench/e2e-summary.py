import json, sys, glob, os
d = sys.argv[1]

def warmup_cells(w):
    """The warm-up columns (`chat --warmup`; reports without one have none): for information,
    the measured columns before them leave the warm-up out."""
    if not w:
        return " | ".join(["-"] * 8)
    srv = w.get("server_cpu_percent_avg")
    return " | ".join([
        f"{w['duration_secs']:.0f}", f"{w['sent']:,}", f"{w['delivered']:,} / {w['expected']:,}",
        f"{w['delivery']['p50_us']/1000:.2f}", f"{w['delivery']['p99_us']/1000:.2f}",
        f"{w['late_keys']} / {w['undecryptable']}", "-" if srv is None else f"{srv:.1f}",
        f"{w['first_sends_after_warmup']:,}",
    ])

print("| run | status | users | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | send→ack p99 ms | delivered/s | expected | delivered | lost | dup | undecryptable | late keys | server CPU avg % | server CPU ms / 1,000 deliveries | loadgen CPU avg % (procs) | connect s | warm-up s | warm-up sent | warm-up delivered / expected | warm-up p50 ms | warm-up p99 ms | warm-up late keys / undecryptable | warm-up server CPU avg % | first sends after warm-up |")
print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for f in sorted(glob.glob(os.path.join(d, "tern-*.json"))):
    r = json.load(open(f))
    L = r["latency"]["delivery"]; A = r["accounting"]; S = r.get("server") or {}; T = r["traffic"]
    ms = lambda us: f"{us/1000:.2f}" if us is not None else "-"
    cpu = S.get("cpu_percent_avg"); dps = T.get("delivered_per_sec")
    per_k = f"{cpu*10000/dps:.1f}" if cpu and dps else "-"
    print(f"| {os.path.basename(f)[:-5]} | {'pass' if r['passed'] else 'FAIL'} | {r['scenario']['users']} | {ms(L['p50_us'])} | {ms(L['p95_us'])} | {ms(L['p99_us'])} | {ms(L['p999_us'])} | {ms(L['max_us'])} | {ms(r['latency']['send_ack']['p99_us'])} | {dps:,.1f} | {A['expected']:,} | {A['delivered']:,} | {A['lost']} | {A['duplicated']} | {A.get('undecryptable',0)} | {A.get('late_keys',0)} | {cpu:.1f} | {per_k} | {r['loadgen']['cpu_percent_avg']:.1f} ({r['loadgen']['processes']}) | {r['connect']['duration_secs']:.1f} | {warmup_cells(r.get('warmup'))} |")
for f in sorted(glob.glob(os.path.join(d, "rotation-*.json"))):
    r = json.load(open(f))
    print(f"\n{os.path.basename(f)}: {r['members']} members over {r['target']}, passed={r['passed']} {r['failures']}")
    print("| message | kind | key shares | claimed | query ms | claim ms | encrypt ms | upload ms | send→ack ms | first decrypted ms | p50 | p99 | all decrypted ms | loadgen CPU ms | server CPU ms |")
    print("|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for s in r["sends"]:
        sc = s['server_cpu_ms']
        print(f"| {s['message']} | {s['kind']} | {s['key_shares']} | {s['devices_claimed']} | {s['query_ms']:.1f} | {s['claim_ms']:.1f} | {s['encrypt_ms']:.1f} | {s['upload_ms']:.1f} | {s['send_ack_ms']:.1f} | {s['decrypted_first_ms']:.1f} | {s['decrypted_p50_ms']:.1f} | {s['decrypted_p99_ms']:.1f} | {s['decrypted_all_ms']:.1f} | {s['loadgen_cpu_ms']:.0f} | {'-' if sc is None else f'{sc:.0f}'} |")
