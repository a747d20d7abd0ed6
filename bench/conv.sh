#!/bin/bash
# conv.sh - multi-turn conversations that outlive their slot (issue 13, part 2): CONVS
# conversations of TURNS turns over MuSiQue passages (turn 1 gives the first FIRST passages of
# an example and its question; every later turn one more passage and the question again),
# sent one request at a time round-robin
# (turn 1 of every conversation, then turn 2, ...) to a `kvfuse serve` with fewer slots than
# conversations, so a slot never still holds the conversation it served last. Run twice, same
# requests: --conv-block 0 (each turn prefills its whole history) and --conv-block BLOCK (the
# history's KV comes back from the tenant's chunk cache). Reports TTFT per turn, both runs side
# by side, and the ratio; answers of the two runs are compared (greedy: they must be equal).
# Not part of `make test`.
#   bench/conv.sh [MODEL]     (default qwen2.5-coder-0.5b)
#   env: CONVS (8), TURNS (6), FIRST (4), SLOTS (2), BLOCK (256), MAX_TOKENS (16), SHARED (../shared),
#        JSON (write the numbers there)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-qwen2.5-coder-0.5b}
CONVS=${CONVS:-8}
TURNS=${TURNS:-6}
FIRST=${FIRST:-4}
SLOTS=${SLOTS:-2}
BLOCK=${BLOCK:-256}
MAX_TOKENS=${MAX_TOKENS:-16}
SHARED=${SHARED:-../shared}
KVFUSE=${KVFUSE:-build/kvfuse}
PY=${PYTHON:-python3}
DATA="$SHARED/data/musique-cacheblend/musique_s.json"
[ -x "$KVFUSE" ] || { echo "conv: $KVFUSE not found (make cli)" >&2; exit 1; }
[ -f "$DATA" ] || { echo "conv: $DATA not found (set SHARED)" >&2; exit 1; }
work=$(mktemp -d)
spid=
trap '[ -n "$spid" ] && kill "$spid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

for blk in 0 "$BLOCK"; do
    echo "conv: kvfuse serve --parallel $SLOTS --conv-block $blk; $CONVS conversations x $TURNS turns ..." >&2
    rm -f "$work/port"
    "$KVFUSE" serve -m "$MODEL" --parallel "$SLOTS" --ctx 8192 --conv-block "$blk" --port 0 \
        --port-file "$work/port" -q 2> "$work/serve-$blk.log" &
    spid=$!
    for _ in $(seq 600); do [ -s "$work/port" ] && break; sleep 0.2; done
    [ -s "$work/port" ] || { echo "conv: the server did not start:" >&2; cat "$work/serve-$blk.log" >&2; exit 1; }
    "$PY" - "$(cat "$work/port")" "$DATA" "$CONVS" "$TURNS" "$MAX_TOKENS" "$work/run-$blk.json" "$FIRST" <<'PYEOF'
import ast, json, sys, time, urllib.request
port, data, convs, turns, max_tokens, out, first = sys.argv[1:8]
convs, turns, max_tokens, first = int(convs), int(turns), int(max_tokens), int(first)
ex = json.load(open(data))
msgs = [[] for _ in range(convs)]
rows = []
for t in range(turns):
    for c in range(convs):
        e = ex[c]
        ctxs = ast.literal_eval(e["ctxs"]) if isinstance(e["ctxs"], str) else e["ctxs"]
        idx = range(first) if t == 0 else [first + t - 1]
        ps = "".join(f"Passage {i + 1}: {ctxs[i % len(ctxs)].get('title', '')} {ctxs[i % len(ctxs)]['text']}\n" for i in idx)
        msgs[c].append({"role": "user", "content": ps + f"Using the passages so far, answer briefly: {e['question']}"})
        body = {"messages": msgs[c], "max_tokens": max_tokens, "temperature": 0}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        t0 = time.time()
        with urllib.request.urlopen(req, timeout=3600) as r:
            j = json.load(r)
        ans = j["choices"][0]["message"]["content"]
        k = j.get("kvfuse", {})
        rows.append({"conv": c, "turn": t + 1, "prompt_tokens": j["usage"]["prompt_tokens"],
                     "reused": k.get("reused_tokens", 0), "ttft_ms": k.get("ttft_ms"),
                     "wall_ms": (time.time() - t0) * 1e3, "answer": ans})
        msgs[c].append({"role": "assistant", "content": ans})
        print(f"  conv {c} turn {t + 1}: {rows[-1]['prompt_tokens']} tokens, {rows[-1]['reused']} reused, "
              f"TTFT {rows[-1]['ttft_ms']:.0f} ms", file=sys.stderr)
json.dump(rows, open(out, "w"))
PYEOF
    kill "$spid"; wait "$spid" 2>/dev/null || true; spid=
done

"$PY" - "$work/run-0.json" "$work/run-$BLOCK.json" "$MODEL" "$CONVS" "$TURNS" "$SLOTS" "$BLOCK" "${JSON:-}" <<'PYEOF'
import json, statistics as S, sys
off, on = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
model, convs, turns, slots, block, out = sys.argv[3:9]
print(f"model {model}; {convs} conversations x {turns} turns, {slots} slots, round-robin, one request at a time")
print(" turn | prompt tok | reused (conv) | TTFT ms, --conv-block 0 | TTFT ms, --conv-block " + block + " | ratio")
print("------|-----------:|--------------:|------------------------:|------------------------:|------:")
table = []
for t in range(1, int(turns) + 1):
    a = [r for r in off if r["turn"] == t]
    b = [r for r in on if r["turn"] == t]
    row = {"turn": t, "prompt_tokens": S.mean(r["prompt_tokens"] for r in a),
           "reused": S.mean(r["reused"] for r in b),
           "ttft_off_ms": S.mean(r["ttft_ms"] for r in a), "ttft_on_ms": S.mean(r["ttft_ms"] for r in b)}
    row["ratio"] = row["ttft_off_ms"] / row["ttft_on_ms"]
    table.append(row)
    print(f" {t:4d} | {row['prompt_tokens']:10.0f} | {row['reused']:13.0f} | {row['ttft_off_ms']:23.0f} | "
          f"{row['ttft_on_ms']:23.0f} | {row['ratio']:5.2f}")
same = sum(x["answer"] == y["answer"] for x, y in zip(off, on))
print(f"answers identical in both runs: {same} of {len(off)}")
if out:
    json.dump({"model": model, "convs": int(convs), "turns": int(turns), "slots": int(slots), "block": int(block),
               "per_turn": table, "identical_answers": same, "requests": len(off), "off": off, "on": on},
              open(out, "w"), indent=1)
PYEOF
