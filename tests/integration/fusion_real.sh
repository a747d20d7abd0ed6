#!/usr/bin/env bash
# fusion_real.sh - KV cache fusion with the real model on a small needle-in-a-haystack prompt
# (three Paul Graham essay excerpts, a planted passcode in the second, CacheBlend's MuSiQue
# prompt): every method answers with the passcode; a3 at ratio 1.0 answers exactly like full;
# a3 at 0.15 recomputes exactly floor((T - q) * 0.15) + q rows, all question rows among them;
# eviction keeps exactly the budget and the answer survives (SnapKV at 512 of ~1200 tokens;
# at 256 this 135M model loses digits); runs are deterministic.
set -uo pipefail
SHARED=${KVF_SHARED:-../shared}
if [ ! -d "$SHARED/data/needle/PaulGrahamEssays" ]; then
    echo "SKIP: fusion_real needs the essays in $SHARED/data/needle (set KVF_SHARED)"; echo "0 passed, 0 failed"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for e in addiction aord apple; do head -c 1500 "$SHARED/data/needle/PaulGrahamEssays/$e.txt" > "$tmp/$e.txt"; done
"$PYTHON" - "$tmp/aord.txt" <<'PY'
import sys
p = sys.argv[1]; s = open(p).read(); i = s.find('. ', 600) + 2
open(p, 'w').write(s[:i] + "The secret passcode for the vault is 7391. " + s[i:])
PY
Q="What is the secret passcode for the vault?"
ask() { "$KVFUSE" ask -m "$KVFUSE_MODEL" -d "$tmp/addiction.txt" -d "$tmp/aord.txt" -d "$tmp/apple.txt" \
        -q "$Q" --musique --json --rows -n 16 "$@" 2>"$tmp/err"; }
ask --method all > "$tmp/all.jsonl" || { cat "$tmp/err"; }
ask --method a3 --ratio 1.0 > "$tmp/r1.jsonl"
ask --method a3 > "$tmp/a3b.jsonl"
ask --method a3 --evict snapkv --budget 512 > "$tmp/snap.jsonl"
ask --method a3 --evict streaming --budget 256 > "$tmp/stream.jsonl"
"$PYTHON" - "$tmp" <<'PY'
import json, sys, math
d = sys.argv[1]
passed = failed = 0
def check(cond, what):
    global passed, failed
    if cond: passed += 1
    else:
        failed += 1; print("FAIL:", what)
def load(name):
    try: return [json.loads(l) for l in open(f"{d}/{name}") if l.strip()]
    except Exception as e: return []
runs = {o["method"]: o for o in load("all.jsonl")}
check(set(runs) == {"full", "prefix", "reuse", "epic", "cacheblend", "a3", "kvshare", "prophet", "focus"}, f"every method ran: {sorted(runs)}")
for m, o in runs.items():
    check("7391" in o["text"], f"{m} answers with the passcode: {o['text']!r}")
    print(f"  {m:10s} ttft {o['ttft_ms']:8.1f} ms  recomputed {o['recomputed_tokens']:5d}/{o['total_tokens']}  {o['text']!r}")
with_ratio = {"cacheblend", "a3", "kvshare", "prophet", "focus"}
check(all(o["ratio"] == (0.15 if m in with_ratio else 0) for m, o in runs.items()),
      "the JSON gives the ratio (0.15) of every method that has one, 0 for the others: "
      + str({m: o["ratio"] for m, o in runs.items()}))
full, a3 = runs.get("full"), runs.get("a3")
if full and a3:
    T, q = a3["total_tokens"], a3["question_tokens"]
    check(a3["recomputed_tokens"] == math.floor((T - q) * 0.15) + q, "a3 recomputes floor((T-q)*0.15)+q rows")
    rows = a3["rows"]
    check(rows == sorted(rows) and len(set(rows)) == len(rows), "a3 rows sorted and unique")
    check(all(p in set(rows) for p in range(T - q, T)), "every question row is recomputed")
    P = a3["segments"][0][1]
    check(all(P <= p < T for p in rows), "no prefix row is recomputed")
    r1 = load("r1.jsonl")
    check(len(r1) == 1 and r1[0]["text"] == full["text"], "a3 at ratio 1.0 answers exactly like full")
    b = load("a3b.jsonl")
    check(len(b) == 1 and b[0]["text"] == a3["text"] and b[0]["rows"] == a3["rows"], "a3 is deterministic")
    for name, label, budget in (("snap.jsonl", "snapkv", 512), ("stream.jsonl", "streaming", 256)):
        e = load(name)
        check(len(e) == 1 and e[0]["kept_after_evict"] == budget, f"{label} keeps exactly {budget} tokens per head")
        if e: print(f"  a3+{label:9s} {e[0]['text']!r}")
    e = load("snap.jsonl")
    check(bool(e) and "7391" in e[0]["text"], "a3 + snapkv still answers with the passcode")
    e = load("stream.jsonl")
    check(bool(e) and len(e[0]["text"].strip()) > 0, "a3 + streaming still decodes")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
