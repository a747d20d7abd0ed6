#!/usr/bin/env python3
"""conv_budget.py - the table of bench/conv_budget.c's JSON lines: per mode, answer agreement with
the unbounded history (token F1 and exact match of the greedy answers, SQuAD normalisation), F1
against gold, peak KV cells and bytes as a share of the unbounded run's, prefill and TTFT.

    bench/conv_budget.py RESULTS.jsonl [--json OUT]
"""
import json
import re
import string
import sys
from collections import Counter, defaultdict


def norm(s):
    s = s.lower()
    s = "".join(c for c in s if c not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return s.split()


def f1(pred, ref):
    p, r = norm(pred), norm(ref)
    if not p and not r:
        return 1.0
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    full = {(r["conversation"], r["topic"]): r for r in rows if r["mode"] == "full"}
    acc = defaultdict(lambda: defaultdict(list))
    for r in rows:
        ref = full.get((r["conversation"], r["topic"]))
        if not ref:
            continue
        a = acc[r["mode"]]
        a["agree_f1"].append(f1(r["answer"], ref["answer"]))
        a["agree_em"].append(float(norm(r["answer"]) == norm(ref["answer"])))
        a["gold_f1"].append(max(f1(r["answer"], g) for g in r["gold"]) if r["gold"] else 0.0)
        a["peak_share"].append(r["peak_cells"] / ref["peak_cells"])
        a["peak_cells"].append(r["peak_cells"])
        a["peak_mib"].append(r["peak_kv_bytes"] / 2**20)
        a["prefill_ms"].append(r["prefill_ms"])
        a["probe_ms"].append(r["probe_ms"])
        a["ttft_ms"].append(r["ttft_ms"])
        a["history"].append(r["history_tokens"])
    mean = lambda v: sum(v) / len(v) if v else 0.0
    order = [m for m in ("full", "epi", "epil", "epia", "recent", "question", "epiq", "turn", "message") if m in acc]
    print("| mode | n | agreement F1 | agreement EM | F1 vs gold | peak KV cells | peak KV MiB | peak / full | "
          "history prefill ms | of it probe + eviction ms | TTFT after history ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    out = {}
    for m in order:
        a = acc[m]
        s = {k: mean(v) for k, v in a.items()}
        s["n"] = len(a["agree_f1"])
        out[m] = s
        print(f"| {m} | {s['n']} | {100 * s['agree_f1']:.1f} | {100 * s['agree_em']:.1f} | {100 * s['gold_f1']:.1f} | "
              f"{s['peak_cells']:.0f} | {s['peak_mib']:.1f} | {100 * s['peak_share']:.1f}% | {s['prefill_ms']:.0f} | "
              f"{s['probe_ms']:.0f} | {s['ttft_ms']:.0f} |")
    if "--json" in sys.argv:
        json.dump(out, open(sys.argv[sys.argv.index("--json") + 1], "w"), indent=1)


if __name__ == "__main__":
    main()
