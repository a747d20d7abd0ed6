#!/usr/bin/env bash
# conv_bench.sh - the personal-memory conversations of bench/convqa.py and bench/conv_budget
# --convs on the real model: the generator is deterministic for a seed and differs across
# seeds; every question's answer is a value told in its own conversation, once, in the user
# turn it names, and only there; conv_budget answers each question unbounded and under a 25%
# budget with the question's probe, the bounded run never holding more than the budget; a
# malformed conversations file is refused with a message. About 30 seconds.
set -uo pipefail
SHARED=${KVF_SHARED:-../shared}
BIN=${BUILD:-build}/bench/conv_budget
if [ ! -d "$SHARED/data/needle/PaulGrahamEssays" ] || [ ! -d "$SHARED/data/ruler-wordlists" ]; then
    echo "SKIP: conv_bench needs the shared data in $SHARED/data (set KVF_SHARED)"; echo "0 passed, 0 failed"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gen() { python3 bench/convqa.py --shared "$SHARED" --conversations 2 --fillers 4 --words 200 --facts 4 --questions 2 "$@"; }
gen --seed 7 -o "$tmp/a.json" 2>"$tmp/gen.err"; rg1=$?
gen --seed 7 -o "$tmp/b.json" 2>>"$tmp/gen.err"; rg2=$?
gen --seed 8 -o "$tmp/c.json" 2>>"$tmp/gen.err"; rg3=$?
gen --facts 1 --questions 2 -o "$tmp/bad.json" 2>"$tmp/genbad.err"; rg4=$?
"$BIN" -m "$KVFUSE_MODEL" --convs "$tmp/a.json" --conversations 2 --modes question --block 64 -n 6 \
    >"$tmp/run.jsonl" 2>"$tmp/run.err"; rr1=$?
printf '[{"messages": [{"role": "user", "content": "hi"}], "questions": []}]' >"$tmp/noq.json"
"$BIN" -m "$KVFUSE_MODEL" --convs "$tmp/noq.json" --conversations 1 --modes question \
    >/dev/null 2>"$tmp/noq.err"; rr2=$?
"$BIN" -m "$KVFUSE_MODEL" --convs "$tmp/a.json" --conversations 3 --modes question \
    >/dev/null 2>"$tmp/few.err"; rr3=$?
sed 's/^/  /' "$tmp/run.err"

python3 - "$tmp" "$rg1" "$rg2" "$rg3" "$rg4" "$rr1" "$rr2" "$rr3" <<'PY'
import json, sys
tmp = sys.argv[1]
rg1, rg2, rg3, rg4, rr1, rr2, rr3 = (int(x) for x in sys.argv[2:])
passed = failed = 0
def check(ok, what):
    global passed, failed
    print(("ok   " if ok else "FAIL ") + what)
    passed += bool(ok); failed += not ok
check(rg1 == rg2 == rg3 == 0, f"convqa.py runs ({rg1} {rg2} {rg3})")
load = lambda n: open(f"{tmp}/{n}.json").read()
check(load("a") == load("b"), "the same seed gives the same conversations")
check(load("a") != load("c"), "another seed gives others")
check(rg4 != 0 and "questions <= facts" in open(f"{tmp}/genbad.err").read(), "more questions than facts is refused")
convs = json.loads(load("a"))
check(len(convs) == 2 and all(len(c["questions"]) == 2 for c in convs), "2 conversations of 2 questions")
for c in convs:
    m = c["messages"]
    check(m[0]["role"] == "system" and all(m[i]["role"] == ("user" if i % 2 else "assistant") for i in range(1, len(m))),
          f"{c['id']}: system, then user and assistant turns")
    check(sum(x["content"].startswith("Here is a passage") for x in m) == 4, f"{c['id']}: 4 essay passages")
    for q in c["questions"]:
        a = q["answers"][0]
        told = [i for i, x in enumerate(m) if a in x["content"]]
        check(told == [q["turn"]] and m[q["turn"]]["role"] == "user",
              f"{c['id']}: {a!r} told once, in user turn {q['turn']} ({told})")
check(rr1 == 0, f"conv_budget --convs runs (rc {rr1})")
rows = [json.loads(l) for l in open(f"{tmp}/run.jsonl") if l.strip()]
check(sorted((r["conversation"], r["topic"], r["mode"]) for r in rows) ==
      sorted((c, t, md) for c in range(2) for t in range(2) for md in ("full", "question")),
      f"one line per conversation, question and mode ({len(rows)} lines)")
for r in rows:
    q = convs[r["conversation"]]["questions"][r["topic"]]
    check(r["example"] == r["conversation"] and r["gold"] == q["answers"], f"c{r['conversation']} q{r['topic']} {r['mode']}: example and gold from the file")
    if r["mode"] == "question":
        # the history within the budget; the question and the answer come on top
        top = r["budget"] + r["question_tokens"] + 6
        check(r["budget"] == int(r["history_tokens"] * 0.25) and 0 < r["peak_cells"] <= top and r["evictions"] > 0,
              f"c{r['conversation']} q{r['topic']}: bounded peak {r['peak_cells']} <= budget {r['budget']} + question + answer, {r['evictions']} evictions")
        check(r["probe_tokens"] > 0, "the question's probe is not empty")
check(rr2 != 0 and "questions" in open(f"{tmp}/noq.err").read(), "a conversation without questions is refused")
check(rr3 != 0 and "has 2 conversations" in open(f"{tmp}/few.err").read(), "asking for more conversations than the file holds is refused")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
