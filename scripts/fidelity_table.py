#!/usr/bin/env python3
"""fidelity_table.py [--ratios R,R...] [--methods M,M...] RESULTS.jsonl [MORE.jsonl ...] - the
README's fidelity table from `kvfuse eval` results files (several: their records are merged by
example, method and ratio; --ratios keeps only those ratios of the selective methods, --methods
only those methods).

Only the examples on which every (method, ratio) of the file has a run are counted, so every
cell averages the same examples (an interrupted evaluation leaves its last example partial).
Per method and ratio: answer agreement with full (token F1 of the greedy answers, %), exact
agreement (%), first-token KL(full || method) in nats, task F1 against the gold answer (%),
and the estimated compute share of full prefill (%). The task column is named after the
records' metric (F1 against gold for QA; the share found for needle and kv-retrieval;
string_match_all for RULER). Prints a Markdown table.
"""
import json
import sys
from collections import defaultdict


def read_records(paths, ratios=None, methods=None):
    """the records of `kvfuse eval` results files, in file order; with `ratios`, the selective
    methods' runs at other ratios are left out (runs without a ratio are kept); with `methods`,
    only those methods' runs are kept"""
    recs = []
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    r = json.loads(line)
                    if (ratios is None or r["ratio"] is None or float(r["ratio"]) in ratios) and \
                            (methods is None or r["method"] in methods):
                        recs.append(r)
    return recs


def main():
    args = sys.argv[1:]
    keep = methods = None
    while args[:1] in (["--ratios"], ["--methods"]) and len(args) > 1:
        if args[0] == "--ratios":
            keep = {float(r) for r in args[1].split(",")}
        else:
            methods = set(args[1].split(","))
        args = args[2:]
    if not args:
        sys.exit(__doc__.strip())
    recs = read_records(args, keep, methods)
    if not recs:
        sys.exit(f"{' '.join(args)}: no records")
    order = ["full", "prefix", "reuse", "epic", "cacheblend", "a3", "kvshare", "prophet", "focus", "oracle"]
    groups = sorted({(r["method"], r["ratio"]) for r in recs},
                    key=lambda g: (order.index(g[0]) if g[0] in order else 99, g[1] or 0))
    by_ex = defaultdict(dict)
    for r in recs:
        by_ex[r["id"]][(r["method"], r["ratio"])] = r
    ids = sorted(i for i, d in by_ex.items() if all(g in d for g in groups))
    if not ids:
        sys.exit("no example has a run of every method and ratio")
    print(f"{len(ids)} examples ({', '.join(ids)}), each cell the mean over all of them\n")
    names = {"f1": "F1 vs gold", "substring": "found %", "string_match_all": "RULER score"}
    metrics = {r.get("metric", "f1") for r in recs}
    task = names.get(metrics.pop(), "task score") if len(metrics) == 1 else "task score"
    print(f"| method | ratio | agreement F1 | agreement EM | first-token KL | {task} | compute % |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for g in groups:
        rs = [by_ex[i][g] for i in ids]
        n = len(rs)
        mean = lambda k: sum(float(r[k]) for r in rs) / n
        ratio = "-" if g[1] is None else f"{g[1]:g}"
        print(f"| {g[0]} | {ratio} | {100 * mean('fid_f1'):.1f} | {100 * mean('fid_em'):.1f} | "
              f"{mean('kl'):.3f} | {100 * mean('score'):.1f} | {100 * mean('compute_frac'):.1f} |")


if __name__ == "__main__":
    main()
