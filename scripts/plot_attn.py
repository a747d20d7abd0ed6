#!/usr/bin/env python3
"""plot_attn.py - issue 12's plot: speed and needle score of every attention method against
context length, as one SVG of three panels (prefill tok/s, decode tok/s, needle found).

Inputs are committed results, so the plot is rebuilt without a model:
  --bench FILE.jsonl   `bench/sparse_attn.sh` runs (JSON=...), one or more files
  --needle MODE=DIR    `kvfuse eval --dataset needle` folders, full prefill rows, per method
usage: scripts/plot_attn.py --bench a.jsonl [--bench b.jsonl] --needle dense=results/x ... -o out.svg
"""
import argparse
import json
import math
import os
import statistics
import sys

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def bench_series(files):
    """{mode: {length(tokens): (prefill tok/s, decode tok/s)}} (medians over reps)"""
    runs = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    d = json.loads(line)
                    runs.setdefault((d["mode"], d["length"]), []).append(d)
    out = {}
    for (mode, _), rs in runs.items():
        tokens = rs[0]["prompt_tokens"]
        pp = statistics.median(r["prompt_tokens"] / r["prefill_ms"] * 1e3 for r in rs)
        tg = statistics.median(r["decode_tok_s"] for r in rs)
        out.setdefault(mode, {})[tokens] = (pp, tg)
    return out


def needle_series(specs):
    """{mode: {length: share found}} from the `full` rows of eval folders"""
    out = {}
    for spec in specs:
        mode, _, folder = spec.partition("=")
        with open(os.path.join(folder, "results.jsonl"), encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                d = json.loads(line)
                if d["method"] != "full":
                    continue
                length = d.get("length") or d.get("total_tokens")
                out.setdefault(mode, {}).setdefault(length, []).append(d["score"])
    return {m: {L: 100.0 * sum(v) / len(v) for L, v in s.items()} for m, s in out.items()}


def panel(x0, y0, w, h, title, ylabel, series, log_x=True):
    xs = [x for s in series.values() for x in s]
    ys = [y for s in series.values() for y in s.values()]
    if not xs:
        return []
    lo, hi = min(xs), max(xs)
    if lo == hi:
        lo, hi = lo / 2, hi * 2
    ymax = max(ys) * 1.1 or 1.0

    def px(x):
        t = (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo)) if log_x else (x - lo) / (hi - lo)
        return x0 + 50 + t * (w - 70)

    def py(y):
        return y0 + h - 30 - y / ymax * (h - 60)

    e = ['<text x="%d" y="%d" font-weight="bold">%s</text>' % (x0 + 50, y0 + 16, title),
         '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (x0 + 50, py(0), x0 + w - 20, py(0)),
         '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (x0 + 50, py(0), x0 + 50, py(ymax)),
         '<text x="%d" y="%d" transform="rotate(-90 %d %d)" text-anchor="middle">%s</text>'
         % (x0 + 14, y0 + h / 2, x0 + 14, y0 + h / 2, ylabel)]
    for k in range(5):
        y = ymax * k / 4
        e.append('<text x="%d" y="%.0f" text-anchor="end">%.0f</text>' % (x0 + 46, py(y) + 4, y))
    for x in sorted(set(xs)):
        e.append('<text x="%.0f" y="%d" text-anchor="middle">%dk</text>' % (px(x), y0 + h - 12, round(x / 1024)))
    for i, (mode, s) in enumerate(sorted(series.items())):
        c = COLOURS[i % len(COLOURS)]
        pts = sorted(s.items())
        e.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>'
                 % (c, " ".join("%.1f,%.1f" % (px(x), py(y)) for x, y in pts)))
        for x, y in pts:
            e.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (px(x), py(y), c))
        e.append('<text x="%d" y="%d" fill="%s">%s</text>' % (x0 + w - 120, y0 + 34 + 14 * i, c, mode))
    return e


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", action="append", default=[], help="sparse_attn.sh JSON lines")
    ap.add_argument("--needle", action="append", default=[], help="MODE=eval folder")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    b = bench_series(a.bench)
    pp = {m: {L: v[0] for L, v in s.items()} for m, s in b.items() if m not in ("mac", "louis")}
    tg = {m: {L: v[1] for L, v in s.items()} for m, s in b.items()}
    nd = needle_series(a.needle)
    W, H = 420, 300
    body = panel(0, 0, W, H, "prefill tok/s", "tok/s", pp)
    body += panel(W, 0, W, H, "decode tok/s", "tok/s", tg)
    body += panel(2 * W, 0, W, H, "needle found (full prefill), %", "%", nd)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
                'font-size="12">\n<rect width="100%%" height="100%%" fill="white"/>\n' % (3 * W, H))
        f.write("\n".join(body) + "\n</svg>\n")
    print("wrote %s (%d bench modes, %d needle modes)" % (a.out, len(b), len(nd)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
