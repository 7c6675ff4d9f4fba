#!/usr/bin/env python3
"""Quantiles of a Prometheus histogram between two scrapes of /metrics (text format).

    bench/prom-delta.py BEFORE AFTER METRIC [QUANTILE ...]

Prints one line of key=value pairs: the number of observations between the scrapes, their mean,
and each quantile (default 0.5 0.99) as the upper bound of the bucket it falls in (the histogram
keeps no finer detail; a quantile in the +Inf bucket prints "inf"). Used by bench/run-files.sh to
show where a chat's latency went (e.g. tern_storage_commit_seconds: the group commit's fsync).
"""

import math
import re
import sys

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def read(path, metric):
    buckets, total, count = {}, 0.0, 0.0
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
            if name == f"{metric}_bucket":
                le = re.search(r'le="([^"]+)"', labels)
                if le:
                    bound = math.inf if le.group(1) == "+Inf" else float(le.group(1))
                    buckets[bound] = buckets.get(bound, 0.0) + value
            elif name == f"{metric}_sum":
                total += value
            elif name == f"{metric}_count":
                count += value
    return buckets, total, count


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    before, after, metric = sys.argv[1], sys.argv[2], sys.argv[3]
    quantiles = [float(q) for q in sys.argv[4:]] or [0.5, 0.99]
    b0, s0, c0 = read(before, metric)
    b1, s1, c1 = read(after, metric)
    if not b1:
        sys.exit(f"prom-delta: no histogram {metric} in {after}")
    count = c1 - c0
    out = [f"{metric}_count={count:.0f}"]
    if count > 0:
        out.append(f"mean={(s1 - s0) / count:.6g}")
        cumulative = sorted((bound, b1[bound] - b0.get(bound, 0.0)) for bound in b1)
        for q in quantiles:
            rank = q * count
            bound = next((b for b, n in cumulative if n >= rank), math.inf)
            out.append(f"p{q * 100:g}={'inf' if math.isinf(bound) else f'{bound:.6g}'}")
    print("\t".join(out))


if __name__ == "__main__":
    main()
