#!/usr/bin/env bash
# fidelity_scripts.sh - the scripts that turn `kvfuse eval` results into the README's fidelity
# tables, on a small hand-made results file whose answers are known: fidelity_table.py keeps
# only the examples with every run and averages them; fidelity_pair.py pairs two methods per
# example (means, difference, better / worse / tied, exact sign test, a bootstrap interval that
# holds the mean and is reproducible, blocks; teacher-forced agreement only when every paired
# run has it; a side at its own ratio, METHOD@R, with each side's compute share) and refuses
# files without a common example, a malformed side and a side paired with itself.
# No model; under a second.
set -uo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
# example i: A and B at r = 0.05 with these agreements and KLs; example 6 has no B run
a_f1 = [1, 1, 1, 0.5, 0, 1, 1]
b_f1 = [0, 0, 1, 0.5, 1, 0.2]
a_kl = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
b_kl = [0.2, 0.1, 0.4, 0.5, 0.6, 0.7]
a_tf = [0.9, 0.8, 1, 0.5, 0.2, 1, 1]
b_tf = [0.5, 0.8, 0.9, 0.5, 0.4, 0.6]
def rec(i, m, r, f1, kl, tf=1.0):
    d = {"id": f"q-{i:04d}", "method": m, "ratio": r, "fid_f1": f1, "fid_em": float(f1 == 1), "kl": kl,
         "top1_first": int(f1 > 0.3),
         "score": 0.5, "compute_frac": 1.0 if m == "full" else 0.1, "metric": "f1"}
    if tf is not None:
        d["tf_agree"] = tf
    return json.dumps(d)
with open(f"{tmp}/a.jsonl", "w") as f:
    for i in range(7):
        print(rec(i, "full", None, 1, 0), file=f)
        print(rec(i, "A", 0.05, a_f1[i], a_kl[i], a_tf[i]), file=f)
        print(rec(i, "A", 0.1, 1, 0), file=f)
with open(f"{tmp}/b.jsonl", "w") as f:
    for i in range(6):
        print(rec(i, "B", 0.05, b_f1[i], b_kl[i], b_tf[i]), file=f)
with open(f"{tmp}/b_notf.jsonl", "w") as f:  # one B run without teacher-forced agreement
    for i in range(6):
        print(rec(i, "B", 0.05, b_f1[i], b_kl[i], None if i == 3 else b_tf[i]), file=f)
PY
python3 scripts/fidelity_pair.py --by 3 A B 0.05 "$tmp/a.jsonl" "$tmp/b.jsonl" >"$tmp/pair.txt" 2>&1; rp1=$?
python3 scripts/fidelity_pair.py --by 3 A B 0.05 "$tmp/a.jsonl" "$tmp/b.jsonl" >"$tmp/pair2.txt" 2>&1
python3 scripts/fidelity_pair.py A B 0.1 "$tmp/a.jsonl" "$tmp/b.jsonl" >"$tmp/none.txt" 2>&1; rp2=$?
python3 scripts/fidelity_pair.py A B 0.05 "$tmp/a.jsonl" "$tmp/b_notf.jsonl" >"$tmp/notf.txt" 2>&1
python3 scripts/fidelity_pair.py A@0.1 B 0.05 "$tmp/a.jsonl" "$tmp/b.jsonl" >"$tmp/cross.txt" 2>&1; rc1=$?
python3 scripts/fidelity_pair.py A@ B 0.05 "$tmp/a.jsonl" "$tmp/b.jsonl" >"$tmp/bad.txt" 2>&1; rc2=$?
python3 scripts/fidelity_pair.py A A@0.05 0.05 "$tmp/a.jsonl" >"$tmp/same.txt" 2>&1; rc3=$?
python3 scripts/fidelity_table.py --ratios 0.05 --methods full,A,B "$tmp/a.jsonl" "$tmp/b.jsonl" \
    >"$tmp/table.txt" 2>&1; rt=$?
sed 's/^/  /' "$tmp/pair.txt"

python3 - "$tmp" "$rp1" "$rp2" "$rt" "$rc1" "$rc2" "$rc3" <<'PY'
import re, sys
tmp = sys.argv[1]
rp1, rp2, rt, rc1, rc2, rc3 = (int(x) for x in sys.argv[2:])
passed = failed = 0
def check(ok, what):
    global passed, failed
    print(("ok   " if ok else "FAIL ") + what)
    passed += bool(ok); failed += not ok
pair = open(f"{tmp}/pair.txt").read()
check(rp1 == 0, "fidelity_pair.py runs")
check("6 examples (q-0000 .. q-0005)" in pair, "only the 6 examples with both runs are paired")
row = lambda name: [c.strip() for c in next(l for l in pair.splitlines() if l.startswith(f"| {name} |")).split("|")[1:-1]]
f1 = row("agreement F1")
# A: 1 1 1 .5 0 1 -> 75.0; B: 0 0 1 .5 1 .2 -> 45.0; difference 30.0
check(f1[1] == "75.0" and f1[2] == "45.0", f"agreement means 75.0 and 45.0 ({f1[1]}, {f1[2]})")
m = re.match(r"(-?[\d.]+) \((-?[\d.]+) \.\. (-?[\d.]+)\)", f1[3])
check(m and m.group(1) == "30.0", f"mean paired difference 30.0 ({f1[3]})")
lo, hi = float(m.group(2)), float(m.group(3))
check(-100 <= lo <= 30.0 <= hi <= 100 and lo < hi, f"the bootstrap interval holds the mean and the range of d ({lo} .. {hi})")
check(f1[4] == "3 / 1 / 2", f"A better on 3, worse on 1, tied on 2 ({f1[4]})")
check(f1[5] == "0.625", f"exact sign test: 2 * P(X <= 1 | n = 4) = 0.625 ({f1[5]})")
kl = row("first-token KL")
# lower KL is better: A lower on 0, 2, 3, 4, 5, higher on 1
check(kl[4] == "5 / 1 / 0" and kl[5] == "0.219", f"KL: lower is better, 5 / 1, p = 0.219 ({kl[4]}, {kl[5]})")
tf = row("teacher-forced agreement %")
# A: .9 .8 1 .5 .2 1 -> 73.3; B: .5 .8 .9 .5 .4 .6 -> 61.7; d: +40 0 +10 0 -20 +40 -> 11.7, 3 / 1 / 2
check(tf[1:3] == ["73.3", "61.7"] and tf[3].startswith("11.7 (") and tf[4] == "3 / 1 / 2" and tf[5] == "0.625",
      f"teacher-forced agreement: 73.3 / 61.7, difference 11.7, 3 / 1 / 2, p 0.625 ({tf})")
notf = open(f"{tmp}/notf.txt").read()
check("| agreement F1 | 75.0 | 45.0 |" in notf and "teacher-forced" not in notf,
      "no teacher-forced row when a paired run lacks it")
check(open(f"{tmp}/pair2.txt").read() == pair, "the same files give the same output (fixed bootstrap seed)")
check("| q-0000 .. q-0002 (3) | 100.0 | 33.3 |" in pair and "| q-0003 .. q-0005 (3) | 50.0 | 56.7 |" in pair,
      "--by 3: the means of each block of 3 examples")
check(rp2 != 0 and "no example has runs of both A and B" in open(f"{tmp}/none.txt").read(),
      "a ratio without runs of both methods is refused with a message")
# first token: A right on 0 1 2 3 5 (f1 > 0.3), B on 2 3 4; both: 2 3 (A 75.0, B 75.0);
# A only: 0 1 5 (A 100.0, B 6.7); B only: 4 (A 0.0, B 100.0); neither: none; teacher-forced
# agreement A then B: both 75.0 70.0, A only 90.0 63.3, B only 20.0 40.0
check("| both | 2 | 75.0 | 75.0 | 75.0 | 70.0 |" in pair and "| A only | 3 | 100.0 | 6.7 | 90.0 | 63.3 |" in pair
      and "| B only | 1 | 0.0 | 100.0 | 20.0 | 40.0 |" in pair and "| neither |" not in pair,
      "examples split by which side's first token is full's, greedy and teacher-forced agreement")
check("| both | 2 | 75.0 | 75.0 |\n" in open(f"{tmp}/notf.txt").read(),
      "the split has no teacher-forced columns when the table has no such row")
cross = open(f"{tmp}/cross.txt").read()
# A at r = 0.1 agrees 1 everywhere, B at 0.05 as above: 100.0 against 45.0 on B's 6 examples
check(rc1 == 0 and "A@0.1 against B at r = 0.1 and 0.05, 6 examples" in cross
      and "| agreement F1 | 100.0 | 45.0 | 55.0 (" in cross,
      "METHOD@R pairs A at its own ratio against B at the common one")
check("compute, share of full prefill's work: A@0.1 10.0%, B 10.0%" in cross,
      "the mean compute share of each side is printed")
check(rc2 != 0 and "expected METHOD or METHOD@RATIO" in open(f"{tmp}/bad.txt").read(),
      "a side with '@' and no ratio is refused")
check(rc3 != 0 and "the same runs" in open(f"{tmp}/same.txt").read(),
      "pairing a method's runs with themselves is refused")
table = open(f"{tmp}/table.txt").read()
check(rt == 0 and "6 examples" in table, "fidelity_table.py counts the 6 examples with every run")
check("| A | 0.05 | 75.0 |" in table and "| B | 0.05 | 45.0 |" in table and "| full | - | 100.0 |" in table,
      "fidelity_table.py averages agreement over those examples")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
