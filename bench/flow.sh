#!/bin/bash
# flow.sh - KVFlow's workflow-aware chunk caching against LRU (issue 13, part 3). An agent
# workflow of STEPS steps runs in a fixed cycle (step i is followed by step i+1, the last by the
# first) for ROUNDS rounds, one request at a time. Every step's request carries SHARED_DOCS
# passages common to all steps and PRIVATE passages of its own (MuSiQue), and a question. The
# server's memory chunk cache holds HALF (0.5) of the working set, measured in a first run; the
# cyclic order is LRU's worst case. Each tier runs the same requests without hints (LRU) and
# with "kvfuse": {"workflow", "step", "next"} (eviction by steps-to-execution, the next step's
# chunks warmed from the lower tier while the current one runs); the agent waits THINK seconds
# between a step's answer and its next request (tool calls):
#   memory  - memory cache only: an evicted chunk is computed again; with hints twice: with
#             --no-flow-compute, and with the server computing the next step's missing chunks
#             while it is idle (the default)
#   disk    - --store DIR: an evicted chunk is read back from the LMDB tier (TIER=disk)
# Reports per run the chunk hit rate of the memory tier (rounds after the first), mean and p90
# TTFT (server side, from the request's arrival: a wait in the queue or behind idle work is
# included), the ratio LRU / KVFlow of the mean, and whether the answers are equal. Not part of
# `make test`.
#   bench/flow.sh [MODEL]     (default qwen2.5-coder-0.5b)
#   env: STEPS (6), ROUNDS (4), PRIVATE (2), SHARED_DOCS (1), HALF (0.5), METHOD (a3),
#        MAX_TOKENS (4), TIERS ("memory disk"), THINK (0.05 s), SHARED (../shared),
#        JSON (write the numbers there)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-qwen2.5-coder-0.5b}
STEPS=${STEPS:-6}
ROUNDS=${ROUNDS:-4}
PRIVATE=${PRIVATE:-2}
SHARED_DOCS=${SHARED_DOCS:-1}
HALF=${HALF:-0.5}
METHOD=${METHOD:-a3}
MAX_TOKENS=${MAX_TOKENS:-4}
TIERS=${TIERS:-memory disk}
THINK=${THINK:-0.05}
SHARED=${SHARED:-../shared}
KVFUSE=${KVFUSE:-build/kvfuse}
PY=${PYTHON:-python3}
DATA="$SHARED/data/musique-cacheblend/musique_s.json"
[ -x "$KVFUSE" ] || { echo "flow: $KVFUSE not found (make cli)" >&2; exit 1; }
[ -f "$DATA" ] || { echo "flow: $DATA not found (set SHARED)" >&2; exit 1; }
work=$(mktemp -d)
spid=
trap '[ -n "$spid" ] && kill "$spid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

serve() { # serve NAME ARGS...: start a server, its port in $port
    local name=$1
    shift
    rm -f "$work/port"
    "$KVFUSE" serve -m "$MODEL" --parallel 1 --ctx 8192 --port 0 --port-file "$work/port" -q "$@" \
        2> "$work/serve-$name.log" &
    spid=$!
    for _ in $(seq 600); do [ -s "$work/port" ] && break; sleep 0.2; done
    [ -s "$work/port" ] || { echo "flow: the server did not start:" >&2; cat "$work/serve-$name.log" >&2; exit 1; }
    port=$(cat "$work/port")
}
stop() { kill "$spid"; wait "$spid" 2>/dev/null || true; spid=; }

run() { # run NAME HINTS(0/1) ROUNDS: the workflow against the server on $port
    "$PY" - "$port" "$DATA" "$STEPS" "$3" "$PRIVATE" "$SHARED_DOCS" "$METHOD" "$MAX_TOKENS" "$2" \
        "$work/run-$1.json" "$THINK" <<'PYEOF'
import ast, json, re, sys, time, urllib.request
port, data, steps, rounds, private, shared, method, max_tokens, hints, out, think = sys.argv[1:12]
steps, rounds, private, shared, max_tokens, hints = map(int, (steps, rounds, private, shared, max_tokens, hints))
ex = json.load(open(data))

def passages(e):
    ctxs = ast.literal_eval(e["ctxs"]) if isinstance(e["ctxs"], str) else e["ctxs"]
    return [f"{c.get('title', '')}\n{c['text']}" for c in ctxs]

common = passages(ex[0])[:shared]
rows = []

def mem_counts():  # the memory tier's hits and misses so far (/metrics)
    m = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    get = lambda n: sum(float(x) for x in re.findall(n + r'\{tier="memory"\}\s+(\S+)', m))
    return get("kvfuse_store_hits_total"), get("kvfuse_store_misses_total")

base = None
for r in range(rounds):
    if r == 1:
        base = mem_counts()
    for s in range(steps):
        e = ex[1 + s]
        body = {"messages": [{"role": "user", "content": e["question"]}],
                "documents": common + passages(e)[:private], "max_tokens": max_tokens,
                "temperature": 0, "kvfuse": {"method": method}}
        if hints:
            body["kvfuse"].update({"workflow": "agents", "step": s, "next": [(s + 1) % steps]})
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=3600) as resp:
            j = json.load(resp)
        k = j.get("kvfuse", {})
        rows.append({"round": r + 1, "step": s, "ttft_ms": k.get("ttft_ms", 0), "queue_ms": k.get("queue_ms", 0),
                     "hits": k.get("chunk_hits", 0), "misses": k.get("chunk_misses", 0),
                     "kv_bytes": k.get("kv_bytes_loaded", 0), "total_tokens": k.get("total_tokens", 0),
                     "answer": j["choices"][0]["message"]["content"]})
        # the agent's own work before its next request (tool calls, parsing)
        time.sleep(float(think))
end = mem_counts()
mem = {"hits": end[0] - base[0], "misses": end[1] - base[1]} if base else {"hits": 0, "misses": 0}
json.dump({"rows": rows, "memory": mem}, open(out, "w"))
PYEOF
}

# 1. the working set: every chunk once, with room for all of it; its bytes from /metrics
serve calib --cache-mb 65536 --store "$work/calib-store"
run calib 0 1
"$PY" - "$port" "$work/budget" "$HALF" <<'PYEOF'
import re, sys, urllib.request
port, out, half = sys.argv[1], sys.argv[2], float(sys.argv[3])
m = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
b = [float(x) for x in re.findall(r'^kvfuse_store_bytes\{tier="memory"\}\s+(\S+)$', m, re.M)]
if not b:
    sys.exit("flow: /metrics has no kvfuse_store_bytes{tier=\"memory\"}")
ws = sum(b)
open(out, "w").write(f"{ws:.0f} {max(1, int(ws * half / (1 << 20)))}\n")
PYEOF
stop
read -r ws_bytes budget_mb < "$work/budget"
echo "flow: working set $((ws_bytes >> 20)) MiB of chunk KV; memory cache $budget_mb MiB" >&2

for tier in $TIERS; do
    modes="0 1"
    [ "$tier" = memory ] && modes="0 1 2"
    for hints in $modes; do # 0: LRU; 1: hints; 2: hints, the idle server computing ahead
        name="$tier-$hints"
        args=(--cache-mb "$budget_mb")
        [ "$hints" = 1 ] && [ "$tier" = memory ] && args+=(--no-flow-compute)
        if [ "$tier" = disk ]; then
            rm -rf "$work/store"
            args+=(--store "$work/store")
        fi
        echo "flow: $tier tier, mode $hints: $STEPS steps x $ROUNDS rounds ..." >&2
        serve "$name" "${args[@]}"
        run "$name" "$((hints > 0))" "$ROUNDS"
        stop
    done
done

"$PY" - "$work" "$MODEL" "$STEPS" "$ROUNDS" "$PRIVATE" "$SHARED_DOCS" "$budget_mb" "$ws_bytes" "$METHOD" "${JSON:-}" "$THINK" $TIERS <<'PYEOF'
import json, os, sys
work, model, steps, rounds, private, shared, budget, ws, method, out, think = sys.argv[1:12]
tiers = sys.argv[12:]
print(f"model {model}; {steps} steps in a cycle x {rounds} rounds, {shared} shared + {private} private "
      f"passages per step, method {method}; working set {int(ws) / 2**20:.0f} MiB, memory cache {budget} MiB; "
      f"the agent waits {think} s between steps")
print(" tier | caching | memory-tier hit rate (rounds 2+) | mean TTFT ms | p90 TTFT ms | answers equal")
names = {0: "lru", 1: "kvflow", 2: "kvflow+compute"}
label = {0: "LRU", 1: "KVFlow hints", 2: "KVFlow hints + idle compute"}
res = {}
for tier in tiers:
    modes = [h for h in (0, 1, 2) if os.path.exists(f"{work}/run-{tier}-{h}.json")]
    data = {h: json.load(open(f"{work}/run-{tier}-{h}.json")) for h in modes}
    runs = {h: data[h]["rows"] for h in modes}
    for h in modes:
        later = [r for r in runs[h] if r["round"] > 1]
        hits, miss = data[h]["memory"]["hits"], data[h]["memory"]["misses"]
        t = sorted(r["ttft_ms"] for r in later)
        same = all(a["answer"] == b["answer"] for a, b in zip(runs[0], runs[h]))
        s = res[f"{tier}/{names[h]}"] = {"hit_rate": hits / max(1, hits + miss),
            "mean_ttft_ms": sum(t) / len(t), "p90_ttft_ms": t[int(0.9 * (len(t) - 1))],
            "mean_queue_ms": sum(r.get("queue_ms", 0) for r in later) / len(later), "answers_equal": same}
        print(f" {tier} | {label[h]} | {s['hit_rate'] * 100:.0f}% | {s['mean_ttft_ms']:.0f} | "
              f"{s['p90_ttft_ms']:.0f} | {'yes' if same else 'no'}")
    for h in modes[1:]:
        print(f" {tier}: mean TTFT, LRU / {label[h]} = "
              f"{res[tier + '/lru']['mean_ttft_ms'] / res[tier + '/' + names[h]]['mean_ttft_ms']:.2f}x")
if out:
    json.dump({"model": model, "steps": int(steps), "rounds": int(rounds), "private": int(private),
               "shared": int(shared), "budget_mb": int(budget), "working_set_bytes": int(ws),
               "method": method, "think_s": float(think), "results": res}, open(out, "w"), indent=1)
PYEOF
