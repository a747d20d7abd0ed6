#!/usr/bin/env python3
"""curve.py - the TTFT / fidelity curve of a3 at fixed ratios and with --ratio auto, from this
directory's results.jsonl (written by `kvfuse eval`, see README.md). Prints a Markdown table:
per configuration the mean recomputed ratio, answer agreement with full (token F1 and exact
match of the greedy answers), first-token KL, top-1 agreement (teacher-forced), F1 against the
gold answers, and TTFT relative to full on the same questions (sum over sum), over the
questions that have every configuration. Then the ratios auto picked, per question.

Also writes DIR/curve.svg: top-1 agreement with full (teacher-forced) against TTFT relative to
full, one point per configuration (the fixed ratios joined by a line, auto a diamond).

Usage: python3 curve.py [DIR]"""
import json, os, sys

d = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
recs = [json.loads(l) for l in open(os.path.join(d, "results.jsonl")) if l.strip().startswith("{")]
key = lambda r: "full" if r["method"] == "full" else f"{r['method']}@{r['ratio']}"
by = {}
for r in recs:
    by.setdefault(r["id"], {})[key(r)] = r
configs = sorted({key(r) for r in recs}, key=lambda k: (k != "full", k.endswith("auto"), k))
ids = [i for i, v in by.items() if all(c in v for c in configs)]
if not ids:
    sys.exit("no question has every configuration yet")
mean = lambda xs: sum(xs) / len(xs)
print(f"{len(ids)} questions with every configuration ({', '.join(configs)})\n")
print("| config | mean ratio | agreement F1 | agreement EM | first-token KL | top-1 TF | F1 vs gold | TTFT x full |")
print("|---|---|---|---|---|---|---|---|")
pts = []
for c in configs:
    rs = [by[i][c] for i in ids]
    full_t = sum(by[i]["full"]["ttft_ms"] for i in ids)
    if c == "full": ratio = 1.0
    elif c.endswith("auto"): ratio = mean([r["ratio_used"] for r in rs])
    else: ratio = rs[0]["ratio"]
    print(f"| {c} | {ratio:.3f} | {100 * mean([r['fid_f1'] for r in rs]):.1f} | {100 * mean([r['fid_em'] for r in rs]):.1f} | "
          f"{mean([r['kl'] for r in rs]):.3f} | {100 * mean([r['tf_agree'] for r in rs]):.1f} | {100 * mean([r['score'] for r in rs]):.1f} | "
          f"{sum(r['ttft_ms'] for r in rs) / full_t:.3f} |")
    pts.append((c, sum(r['ttft_ms'] for r in rs) / full_t, 100 * mean([r['tf_agree'] for r in rs]), ratio))
autos = [c for c in configs if c.endswith("auto")]
for c in autos:
    rs = sorted((by[i][c]["ratio_used"], i) for i in ids)
    print(f"\n{c}: ratios picked, lowest to highest: " + ", ".join(f"{x:.3f}" for x, _ in rs))

# the curve: x = TTFT / full, y = top-1 agreement (teacher-forced) with full
W, H, L, R, T, B = 640, 400, 70, 30, 40, 50
pw, ph = W - L - R, H - T - B
ys = [p[2] for p in pts]
y0 = max(0.0, min(ys) - 5); y1 = min(100.0, max(ys) + 5)
X = lambda x: L + x * pw
Y = lambda y: T + ph - (y - y0) / (y1 - y0) * ph
o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
     '<rect width="100%" height="100%" fill="white"/>',
     f'<text x="{L}" y="22" font-size="14" font-weight="bold">a3: fidelity vs TTFT, fixed ratios and --ratio auto ({len(ids)} questions)</text>',
     f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>',
     f'<text x="{L + pw / 2}" y="{H - 10}" text-anchor="middle">TTFT / TTFT of full prefill</text>',
     f'<text transform="translate(16,{T + ph / 2}) rotate(-90)" text-anchor="middle">top-1 agreement with full (%)</text>']
for i in range(6):
    x = i / 5
    o.append(f'<text x="{X(x):.1f}" y="{T + ph + 16}" text-anchor="middle">{x:.1f}</text>')
for i in range(6):
    y = y0 + (y1 - y0) * i / 5
    o.append(f'<text x="{L - 6}" y="{Y(y) + 4:.1f}" text-anchor="end">{y:.0f}</text>')
fixed = sorted((p for p in pts if not p[0].endswith("auto") and p[0] != "full"), key=lambda p: p[1])
o.append('<polyline fill="none" stroke="#2ca02c" stroke-width="2" points="' + " ".join(f"{X(p[1]):.1f},{Y(p[2]):.1f}" for p in fixed) + '"/>')
for name, x, y, ratio in pts:
    if name.endswith("auto"):
        o.append(f'<path d="M{X(x):.1f} {Y(y) - 7:.1f}l7 7l-7 7l-7 -7z" fill="white" stroke="#d62728" stroke-width="2"/>')
        o.append(f'<text x="{X(x) + 9:.1f}" y="{Y(y) + 16:.1f}" fill="#d62728">{name} (mean r {ratio:.3f})</text>')
    else:
        o.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="4" fill="{"#000" if name == "full" else "#2ca02c"}"/>')
        o.append(f'<text x="{X(x) + 6:.1f}" y="{Y(y) - 6:.1f}">{name}</text>')
o.append("</svg>")
open(os.path.join(d, "curve.svg"), "w").write("\n".join(o) + "\n")
