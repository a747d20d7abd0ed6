#!/bin/bash
# sched.sh - cache-aware queue order against FIFO (issue 13, part 4). CLIENTS closed-loop
# clients send REQS chat requests each to a `kvfuse serve --parallel SLOTS`, so requests queue.
# Each request carries DOCS MuSiQue passages as `documents` and the example's question. A seeded
# share HOT of the requests (the same for both runs) use passages whose KV the server already
# has (ingested and warmed before the clock starts); the others carry passages the server has
# never seen (each passage tagged with a unique reference line), whose KV must be computed.
# Run twice with the same requests: --queue-aging 0 (arrival order) and --queue-aging AGING
# (cached share first, nobody waits past the bound). Reports mean / p50 / p90 / p99 / max TTFT
# (queue wait + the server's ttft_ms, per request), hot and cold separately, and the ratios.
# Not part of `make test`.
#   bench/sched.sh [MODEL]          (default SmolLM2-135M-Instruct)
#   env: CLIENTS (8), REQS (8), SLOTS (2), DOCS (4), HOT (0.5), AGING (2000), MAX_TOKENS (8),
#        METHOD (a3), SEED (1), SHARED (../shared), JSON (write the numbers there)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-smollm2-135m}
CLIENTS=${CLIENTS:-8}
REQS=${REQS:-8}
SLOTS=${SLOTS:-2}
DOCS=${DOCS:-4}
HOT=${HOT:-0.5}
AGING=${AGING:-2000}
MAX_TOKENS=${MAX_TOKENS:-8}
METHOD=${METHOD:-a3}
SEED=${SEED:-1}
SHARED=${SHARED:-../shared}
KVFUSE=${KVFUSE:-build/kvfuse}
PY=${PYTHON:-python3}
DATA="$SHARED/data/musique-cacheblend/musique_s.json"
[ -x "$KVFUSE" ] || { echo "sched: $KVFUSE not found (make cli)" >&2; exit 1; }
[ -f "$DATA" ] || { echo "sched: $DATA not found (set SHARED)" >&2; exit 1; }
work=$(mktemp -d)
spid=
trap '[ -n "$spid" ] && kill "$spid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

for aging in 0 "$AGING"; do
    echo "sched: kvfuse serve --parallel $SLOTS --queue-aging $aging; $CLIENTS clients x $REQS requests ..." >&2
    rm -f "$work/port"
    "$KVFUSE" serve -m "$MODEL" --parallel "$SLOTS" --ctx 8192 --queue-aging "$aging" --queue 64 \
        --timeout 3600 --port 0 --port-file "$work/port" -q 2> "$work/serve-$aging.log" &
    spid=$!
    for _ in $(seq 600); do [ -s "$work/port" ] && break; sleep 0.2; done
    [ -s "$work/port" ] || { echo "sched: the server did not start:" >&2; cat "$work/serve-$aging.log" >&2; exit 1; }
    "$PY" - "$(cat "$work/port")" "$DATA" "$CLIENTS" "$REQS" "$DOCS" "$HOT" "$MAX_TOKENS" "$METHOD" \
        "$SEED" "$aging" "$work/run-$aging.json" <<'PYEOF'
import ast, json, random, sys, threading, time, urllib.request
port, data, clients, reqs, docs, hot, max_tokens, method, seed, aging, out = sys.argv[1:12]
clients, reqs, docs, max_tokens = int(clients), int(reqs), int(docs), int(max_tokens)
hot, seed = float(hot), int(seed)
ex = json.load(open(data))
url = f"http://127.0.0.1:{port}"

def post(path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.load(r)

def passages(e):
    ctxs = ast.literal_eval(e["ctxs"]) if isinstance(e["ctxs"], str) else e["ctxs"]
    return [f"{c.get('title', '')}\n{c['text']}" for c in ctxs[:docs]]

# the plan, identical for both runs: client c's request r uses example c * reqs + r, hot or cold
rng = random.Random(seed)
plan = [[(c * reqs + r, rng.random() < hot) for r in range(reqs)] for c in range(clients)]
# hot requests: their passages ingested and warmed before the clock starts
ids = {}
for c in range(clients):
    for i, h in plan[c]:
        if h and i not in ids:
            e = ex[i % len(ex)]
            ids[i] = [d["id"] for d in post("/v1/documents", {"documents": passages(e)})["data"]]
            post("/v1/chat/completions", {"messages": [{"role": "user", "content": e["question"]}],
                                          "documents": ids[i], "max_tokens": 1,
                                          "kvfuse": {"method": method}})
rows, lock = [], threading.Lock()

def client(c):
    for r, (i, h) in enumerate(plan[c]):
        e = ex[i % len(ex)]
        documents = ids[i] if h else [f"[ref {seed}-{aging}-{c}-{r}-{k}]\n{t}" for k, t in enumerate(passages(e))]
        t0 = time.time()
        j = post("/v1/chat/completions", {"messages": [{"role": "user", "content": e["question"]}],
                                          "documents": documents, "max_tokens": max_tokens,
                                          "temperature": 0, "kvfuse": {"method": method}})
        k = j.get("kvfuse", {})
        with lock:
            rows.append({"client": c, "req": r, "hot": h, "queue_ms": k.get("queue_ms", 0),
                         "ttft_ms": k.get("ttft_ms", 0), "wall_ms": (time.time() - t0) * 1e3,
                         "prompt_tokens": j["usage"]["prompt_tokens"],
                         "chunk_misses": k.get("chunk_misses", 0)})

t0 = time.time()
th = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
for t in th: t.start()
for t in th: t.join()
print(f"  {len(rows)} requests in {time.time() - t0:.1f} s", file=sys.stderr)
json.dump(rows, open(out, "w"))
PYEOF
    kill "$spid"; wait "$spid" 2>/dev/null || true; spid=
done

"$PY" - "$work/run-0.json" "$work/run-$AGING.json" "$MODEL" "$CLIENTS" "$REQS" "$SLOTS" "$DOCS" "$HOT" "$AGING" "$METHOD" "${JSON:-}" <<'PYEOF'
import json, sys
fifo, aware = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
model, clients, reqs, slots, docs, hot, aging, method, out = sys.argv[3:12]

def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float("nan")

def stats(rows, sel=None):
    v = [r["queue_ms"] + r["ttft_ms"] for r in rows if sel is None or r["hot"] == sel]
    return {"n": len(v), "mean": sum(v) / len(v) if v else float("nan"), "p50": pct(v, 50),
            "p90": pct(v, 90), "p99": pct(v, 99), "max": max(v) if v else float("nan")}

print(f"model {model}; {clients} clients x {reqs} requests, {slots} slots, {docs} passages each, "
      f"{float(hot) * 100:.0f}% of requests with cached passages, method {method}")
print(" requests | order | n | mean ms | p50 | p90 | p99 | max")
res = {}
for name, sel in (("all", None), ("hot", True), ("cold", False)):
    for order, rows in (("fifo", fifo), (f"cache-aware (aging {aging} ms)", aware)):
        s = stats(rows, sel)
        res[f"{name}/{order.split()[0]}"] = s
        print(f" {name} | {order} | {s['n']} | {s['mean']:.0f} | {s['p50']:.0f} | {s['p90']:.0f} | {s['p99']:.0f} | {s['max']:.0f}")
a, f = res["all/cache-aware"], res["all/fifo"]
print(f"mean TTFT: FIFO / cache-aware = {f['mean'] / a['mean']:.2f}x; "
      f"p99: cache-aware / FIFO = {a['p99'] / f['p99']:.2f}")
if out:
    json.dump({"model": model, "clients": int(clients), "reqs": int(reqs), "slots": int(slots),
               "docs": int(docs), "hot": float(hot), "aging_ms": float(aging), "method": method,
               "stats": res, "fifo": fifo, "aware": aware}, open(out, "w"), indent=1)
PYEOF
