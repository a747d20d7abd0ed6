#!/usr/bin/env python3
"""agreement.py - how much two `kvfuse eval` runs agree with each other, run by run.

For every (example, method, ratio) present in both results.jsonl files it compares the two
answers: token F1 after SQuAD normalisation (lower case, ASCII punctuation and the articles
a/an/the removed; two empty answers agree), the same way `kvfuse eval` scores a fused answer
against full's (tools/eval/eval_metrics.c), and whether the answer tokens are identical.

Used for the noise floor of answer agreement: the same method (`full`) run twice with a small,
legitimate change of arithmetic (e.g. --precision q8 against the default q16) shows how far
greedy answers of a model move when nothing but rounding changes.

usage: scripts/agreement.py A/results.jsonl B/results.jsonl [--json]
"""
import json
import re
import string
import sys
from collections import Counter, defaultdict


def normalize(s):
    s = "".join(c for c in s.lower() if c not in string.punctuation)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1(a, b):
    pa, pb = normalize(a).split(), normalize(b).split()
    if not pa or not pb:
        return 1.0 if not pa and not pb else 0.0
    same = sum((Counter(pa) & Counter(pb)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pa), same / len(pb)
    return 2 * p * r / (p + r)


def load(path):
    runs = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            d = json.loads(line)
            runs[(d["id"], d["method"], d.get("ratio"))] = d
    return runs


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    if len(args) != 2 or any(a in ("-h", "--help") for a in argv[1:]):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    a, b = load(args[0]), load(args[1])
    groups = defaultdict(list)
    for key in sorted(set(a) & set(b), key=str):
        x, y = a[key], b[key]
        groups[(key[1], key[2])].append((f1(x["answer"], y["answer"]),
                                         x.get("answer_tokens") == y.get("answer_tokens")))
    rows = []
    for (method, ratio), v in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        rows.append({"method": method, "ratio": ratio, "n": len(v),
                     "agreement_f1": round(100 * sum(f for f, _ in v) / len(v), 1),
                     "same_tokens": round(100 * sum(s for _, s in v) / len(v), 1)})
    if "--json" in argv:
        print(json.dumps(rows, indent=2))
    else:
        print("%-10s %6s %4s %14s %12s" % ("method", "ratio", "n", "agreement F1", "same tokens"))
        for r in rows:
            print("%-10s %6s %4d %14.1f %11.1f%%" % (r["method"], "-" if r["ratio"] is None else r["ratio"],
                                                   r["n"], r["agreement_f1"], r["same_tokens"]))
    if not rows:
        print("agreement: no (example, method, ratio) in both files", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
