#!/usr/bin/env python3
"""fidelity_pair.py A B RATIO RESULTS.jsonl [MORE.jsonl ...] - is method A's fidelity to full
prefill different from method B's at RATIO, question by question? From `kvfuse eval` results
files (read and merged by example, method and ratio with fidelity_table.py's reader).
A or B may name its own ratio as METHOD@R (focus@0.1 cacheblend 0.05: focus at r = 0.1 against
cacheblend at 0.05), to pair methods at equal compute rather than equal ratio; the mean
compute share of each side (`compute_frac`, of full prefill's work) is printed above the table.

Only the examples with a run of both A and B at RATIO count. Per example d = A's answer
agreement F1 with full minus B's (points). Prints, for answer agreement F1, teacher-forced token
agreement (the share of full's answer tokens each method's greedy choice reproduces when fed
full's answer so far; when every run has it) and first-token KL(full || method):
  - the mean of A and B and the mean paired difference, with a 95% bootstrap interval
    (10,000 resamples of the examples, fixed seed, so the output is reproducible);
  - how many examples A is better on, worse on, and tied;
  - the two-sided exact sign test's p over the untied examples.
A difference whose interval contains 0 is not shown by these examples.

When every paired run records whether its first token is full's (`top1_first`), the examples
are also split by that: both, only A, only B, neither, with each side's mean agreement (greedy,
and teacher-forced when the table above has it).

--by N also prints the mean agreement of A and B per block of N consecutive examples (in the
examples' order), to show how much a mean moves between subsets of the same size.
"""
import math
import random
import sys
from collections import defaultdict

from fidelity_table import read_records


def sign_test_p(wins, losses):
    """two-sided exact binomial test of wins against losses at p = 1/2"""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def boot_ci(diffs, reps=10000, seed=1):
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
    return means[int(0.025 * reps)], means[int(0.975 * reps) - 1]


def mean(v):
    return sum(v) / len(v)


def pct(runs, part, side, key):
    """the mean of `key` over the examples `part` of one side, in percent"""
    return mean([runs[i][side][key] for i in part]) * 100.0


def parse_side(spec, ratio):
    """METHOD or METHOD@R -> (label, method, ratio)"""
    method, sep, r = spec.partition("@")
    if not method or (sep and not r):
        sys.exit(f"{spec}: expected METHOD or METHOD@RATIO")
    try:
        rr = float(r) if sep else ratio
    except ValueError:
        sys.exit(f"{spec}: '{r}' is not a ratio")
    return (spec if sep else method), method, rr


def main():
    args = sys.argv[1:]
    block = 0
    if args[:1] == ["--by"] and len(args) > 1:
        block = int(args[1])
        args = args[2:]
    if len(args) < 4:
        sys.exit(__doc__.strip())
    ratio, paths = float(args[2]), args[3:]
    sides = [parse_side(spec, ratio) for spec in args[:2]]
    (a, ma, ra), (b, mb, rb) = sides
    if (ma, ra) == (mb, rb):
        sys.exit(f"{a} and {b} are the same runs")
    runs = defaultdict(dict)
    for r in read_records(paths, None, {ma, mb}):
        if r["ratio"] is None:
            continue
        for label, m, rr in sides:
            if r["method"] == m and float(r["ratio"]) == rr:
                runs[r["id"]][label] = r
    ids = sorted(i for i, d in runs.items() if a in d and b in d)
    at = f"r = {ra}" if ra == rb else f"r = {ra} and {rb}"
    if not ids:
        sys.exit(f"no example has runs of both {ma} and {mb} at {at}")
    print(f"{a} against {b} at {at}, {len(ids)} examples ({ids[0]} .. {ids[-1]})\n")
    if all(runs[i][s].get("compute_frac") is not None for i in ids for s in (a, b)):
        ca, cb = (pct(runs, ids, s, "compute_frac") for s in (a, b))
        print(f"compute, share of full prefill's work: {a} {ca:.1f}%, {b} {cb:.1f}%\n")
    print(f"| measure | {a} | {b} | {a} - {b} (95% interval) | {a} better / worse / tied | sign test p |")
    print("|---|---:|---:|---:|---|---:|")
    measures = [("agreement F1", "fid_f1", 100.0, True), ("first-token KL", "kl", 1.0, False)]
    if all(runs[i][m].get("tf_agree") is not None for i in ids for m in (a, b)):
        measures.insert(1, ("teacher-forced agreement %", "tf_agree", 100.0, True))
    for name, key, scale, higher in measures:
        xa = [runs[i][a][key] * scale for i in ids]
        xb = [runs[i][b][key] * scale for i in ids]
        d = [p - q for p, q in zip(xa, xb)]
        lo, hi = boot_ci(d)
        better = sum(1 for v in d if (v > 0 if higher else v < 0))
        worse = sum(1 for v in d if (v < 0 if higher else v > 0))
        tied = len(d) - better - worse
        fmt = "%.1f" if higher else "%.3f"
        print(f"| {name} | {fmt % mean(xa)} | {fmt % mean(xb)} | {fmt % mean(d)} "
              f"({fmt % lo} .. {fmt % hi}) | {better} / {worse} / {tied} | "
              f"{sign_test_p(better, worse):.3g} |")
    if all(runs[i][s].get("top1_first") is not None for i in ids for s in (a, b)):
        # greedy agreement splits at the first token: an answer that starts elsewhere rarely
        # comes back, so show the later tokens' agreement apart from the first token's
        tf = "tf_agree" in [m[1] for m in measures]
        head = f" {a} teacher-forced % | {b} teacher-forced % |" if tf else ""
        print(f"\n| first token equals full's | examples | {a} agreement F1 | {b} agreement F1 |{head}")
        print("|---|---:|---:|---:|" + ("---:|---:|" if tf else ""))
        for fa, fb, name in ((1, 1, "both"), (1, 0, f"{a} only"), (0, 1, f"{b} only"), (0, 0, "neither")):
            part = [i for i in ids if runs[i][a]["top1_first"] == fa and runs[i][b]["top1_first"] == fb]
            if part:
                cells = [pct(runs, part, s, key)
                         for key in (("fid_f1", "tf_agree") if tf else ("fid_f1",)) for s in (a, b)]
                print(f"| {name} | {len(part)} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    if block > 0:
        print(f"\n| examples | {a} agreement F1 | {b} agreement F1 |")
        print("|---|---:|---:|")
        for s in range(0, len(ids), block):
            part = ids[s:s + block]
            fa, fb = (pct(runs, part, s, "fid_f1") for s in (a, b))
            print(f"| {part[0]} .. {part[-1]} ({len(part)}) | {fa:.1f} | {fb:.1f} |")


if __name__ == "__main__":
    main()
