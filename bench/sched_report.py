#!/usr/bin/env python3
"""sched_report.py - the table of bench/sched.sh from its JSON (FIFO against cache-aware queue
order): mean / p50 / p90 / p99 / max TTFT over all requests, over those whose documents were all
cached when they ran ("hot") and the others, the chunk hit rate, and the two ratios. TTFT is the
server's ttft_ms, counted from the request's arrival, so the wait in the queue is in it.
Usage: bench/sched_report.py RESULT.json"""
import json
import sys


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float("nan")


def stats(rows, sel=None):
    v = [r["ttft_ms"] for r in rows if sel is None or r["hot"] == sel]
    return {"n": len(v), "mean": sum(v) / len(v) if v else float("nan"), "p50": pct(v, 50),
            "p90": pct(v, 90), "p99": pct(v, 99), "max": max(v) if v else float("nan")}


def hit_rate(rows):
    h, m = sum(r.get("chunk_hits", 0) for r in rows), sum(r.get("chunk_misses", 0) for r in rows)
    return h / (h + m) if h + m else float("nan")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = json.load(open(sys.argv[1]))
    if d.get("pool"):
        load = (f"each asking about one of {d['pool']} examples (weight 1/rank^{d['zipf']:g}), memory "
                f"chunk cache {d['cache_mb']} MiB = {d['frac'] * 100:.0f}% of their {d['pool_bytes'] >> 20} MiB")
    else:
        load = f"{d['hot'] * 100:.0f}% of requests with cached passages, the others unique"
    print(f"model {d['model']}; {d['clients']} clients x {d['reqs']} requests, {d['slots']} slots, "
          f"{d['docs']} passages each, {load}; method {d['method']}")
    aware = f"cache-aware (aging {d['aging_ms']:.0f} ms"
    aware += f", overtake {d['overtake']})" if d.get("overtake") else ")"
    runs = (("fifo", "fifo", d["fifo"]), ("aware", aware, d["aware"]))
    print(" requests | order | n | mean ms | p50 | p90 | p99 | max")
    res = {}
    for name, sel in (("all", None), ("hot", True), ("cold", False)):
        for key, order, rows in runs:
            s = stats(rows, sel)
            res[f"{name}/{key}"] = s
            print(f" {name} | {order} | {s['n']} | {s['mean']:.0f} | {s['p50']:.0f} | {s['p90']:.0f} | "
                  f"{s['p99']:.0f} | {s['max']:.0f}")
    if "chunk_hits" in d["fifo"][0]:
        print(f"chunk hit rate: FIFO {hit_rate(d['fifo']) * 100:.0f}%, cache-aware {hit_rate(d['aware']) * 100:.0f}%")
    a, f = res["all/aware"], res["all/fifo"]
    print(f"mean TTFT: FIFO / cache-aware = {f['mean'] / a['mean']:.2f}x; p99: cache-aware / FIFO = {a['p99'] / f['p99']:.2f}")


if __name__ == "__main__":
    main()
