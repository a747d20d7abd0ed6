#!/bin/bash
# sched.sh - cache-aware queue order against FIFO (issue 13, part 4). CLIENTS closed-loop
# clients send REQS chat requests each to a `kvfuse serve --parallel SLOTS`, so requests queue.
# Each request carries DOCS MuSiQue passages as `documents` and its example's question. Two
# workloads:
#   POOL=0 (default)  a seeded share HOT of the requests (the same for both runs) use passages
#                     whose KV the server already has (ingested and warmed before the clock);
#                     the others carry passages the server has never seen (each passage tagged
#                     with a unique reference line). Every request's work is fixed: reordering
#                     can only trade one request's wait for another's.
#   POOL=N            documents shared between requests: every request asks about one of N
#                     examples (seeded; weight 1/rank^ZIPF), whose passages are ingested before
#                     the clock but not computed. The memory chunk cache holds FRAC of the
#                     pool's chunk KV (measured in a first run), so a chunk computed for one
#                     request may be evicted before the next request that needs it.
# Run twice with the same requests: --queue-aging 0 (arrival order) and cache-aware order
# (--queue-aging AGING --queue-overtake OVERTAKE: cached share first; a request waits at most
# AGING ms or OVERTAKE later arrivals). Reports mean / p50 / p90 / p99 / max TTFT (the server's
# ttft_ms, counted from the request's arrival: the queue wait is in it), for requests whose
# documents were all cached when they ran ("hot") and the others separately, the chunk hit rate,
# and the ratios. Not part of `make test`.
#   bench/sched.sh [MODEL]          (default SmolLM2-135M-Instruct)
#   env: CLIENTS (8), REQS (8), SLOTS (2), DOCS (4), HOT (0.5), POOL (0), ZIPF (0), FRAC (0.25),
#        AGING (60000), OVERTAKE (3), MAX_TOKENS (8), METHOD (a3), SEED (1), SHARED (../shared),
#        JSON (write the numbers there)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-smollm2-135m}
CLIENTS=${CLIENTS:-8}
REQS=${REQS:-8}
SLOTS=${SLOTS:-2}
DOCS=${DOCS:-4}
HOT=${HOT:-0.5}
POOL=${POOL:-0}
ZIPF=${ZIPF:-0}
FRAC=${FRAC:-0.25}
AGING=${AGING:-60000}
OVERTAKE=${OVERTAKE:-3}
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

serve() { # serve NAME ARGS...: start a server, its port in $port
    local name=$1
    shift
    rm -f "$work/port"
    "$KVFUSE" serve -m "$MODEL" --parallel "$SLOTS" --ctx 8192 --queue 64 --timeout 3600 --port 0 \
        --port-file "$work/port" -q "$@" 2> "$work/serve-$name.log" &
    spid=$!
    for _ in $(seq 600); do [ -s "$work/port" ] && break; sleep 0.2; done
    [ -s "$work/port" ] || { echo "sched: the server did not start:" >&2; cat "$work/serve-$name.log" >&2; exit 1; }
    port=$(cat "$work/port")
}
stop() { kill "$spid"; wait "$spid" 2>/dev/null || true; spid=; }

# run NAME CLIENTS REQS: the workload against the server on $port, rows to $work/run-NAME.json
run() {
    "$PY" - "$port" "$DATA" "$2" "$3" "$DOCS" "$HOT" "$POOL" "$ZIPF" "$MAX_TOKENS" "$METHOD" "$SEED" \
        "$1" "$work/run-$1.json" <<'PYEOF'
import ast, json, random, sys, threading, time, urllib.request
port, data, clients, reqs, docs, hot, pool, zipf, max_tokens, method, seed, name, out = sys.argv[1:14]
clients, reqs, docs, pool, max_tokens, seed = int(clients), int(reqs), int(docs), int(pool), int(max_tokens), int(seed)
hot, zipf = float(hot), float(zipf)
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

# the plan, identical for both runs: client c's request r uses example i, hot or cold (POOL=0),
# or one of the pool's examples; "calib": one client asking about every pool example once
rng = random.Random(seed)
if name == "calib":
    plan = [[(k, None) for k in range(pool)]]
elif pool:
    w = [1 / (k + 1) ** zipf for k in range(pool)]
    plan = [[(rng.choices(range(pool), w)[0], None) for r in range(reqs)] for c in range(clients)]
else:
    plan = [[(c * reqs + r, rng.random() < hot) for r in range(reqs)] for c in range(clients)]
ids = {}  # example -> ingested document ids: every pool example, or the hot ones (warmed)
for c in range(clients):
    for i, h in plan[c]:
        if (pool or h) and i not in ids:
            e = ex[i % len(ex)]
            ids[i] = [d["id"] for d in post("/v1/documents", {"documents": passages(e)})["data"]]
            if h:
                post("/v1/chat/completions", {"messages": [{"role": "user", "content": e["question"]}],
                                              "documents": ids[i], "max_tokens": 1,
                                              "kvfuse": {"method": method}})
rows, lock = [], threading.Lock()

def client(c):
    for r, (i, h) in enumerate(plan[c]):
        e = ex[i % len(ex)]
        documents = ids[i] if i in ids else [f"[ref {seed}-{name}-{c}-{r}-{k}]\n{t}" for k, t in enumerate(passages(e))]
        t0 = time.time()
        j = post("/v1/chat/completions", {"messages": [{"role": "user", "content": e["question"]}],
                                          "documents": documents, "max_tokens": max_tokens,
                                          "temperature": 0, "kvfuse": {"method": method}})
        k = j.get("kvfuse", {})
        with lock:
            rows.append({"client": c, "req": r, "example": i, "hot": k.get("chunk_misses", 0) == 0,
                         "queue_ms": k.get("queue_ms", 0), "ttft_ms": k.get("ttft_ms", 0),
                         "wall_ms": (time.time() - t0) * 1e3, "prompt_tokens": j["usage"]["prompt_tokens"],
                         "chunk_hits": k.get("chunk_hits", 0), "chunk_misses": k.get("chunk_misses", 0)})

t0 = time.time()
th = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
for t in th: t.start()
for t in th: t.join()
print(f"  {len(rows)} requests in {time.time() - t0:.1f} s", file=sys.stderr)
json.dump(rows, open(out, "w"))
PYEOF
}

cache_args=()
if [ "$POOL" -gt 0 ]; then # the pool's chunk KV, every example once with room for all of it
    echo "sched: measuring the pool's chunk KV ($POOL examples) ..." >&2
    serve calib --cache-mb 65536 --store "$work/calib-store"
    run calib 1 "$POOL"
    "$PY" - "$port" "$work/budget" "$FRAC" <<'PYEOF'
import re, sys, urllib.request
port, out, frac = sys.argv[1], sys.argv[2], float(sys.argv[3])
m = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
b = [float(x) for x in re.findall(r'^kvfuse_store_bytes\{tier="memory"\}\s+(\S+)$', m, re.M)]
if not b:
    sys.exit("sched: /metrics has no kvfuse_store_bytes{tier=\"memory\"}")
open(out, "w").write(f"{sum(b):.0f} {max(1, int(sum(b) * frac / (1 << 20)))}\n")
PYEOF
    stop
    read -r ws_bytes budget_mb < "$work/budget"
    echo "sched: the pool's chunk KV is $((ws_bytes >> 20)) MiB; memory cache $budget_mb MiB" >&2
    cache_args=(--cache-mb "$budget_mb")
fi

for order in fifo aware; do
    args=(--queue-aging 0)
    [ "$order" = aware ] && args=(--queue-aging "$AGING" --queue-overtake "$OVERTAKE")
    echo "sched: kvfuse serve --parallel $SLOTS ${args[*]} ${cache_args[*]}; $CLIENTS clients x $REQS requests ..." >&2
    serve "$order" "${args[@]}" "${cache_args[@]}"
    run "$order" "$CLIENTS" "$REQS"
    stop
done

"$PY" - "$work/run-fifo.json" "$work/run-aware.json" "$MODEL" "$CLIENTS" "$REQS" "$SLOTS" "$DOCS" "$HOT" "$POOL" \
    "$ZIPF" "$FRAC" "$AGING" "$OVERTAKE" "$METHOD" "${ws_bytes:-0}" "${budget_mb:-0}" "${JSON:-$work/result.json}" <<'PYEOF'
import json, sys
fifo, aware = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
model, clients, reqs, slots, docs, hot, pool, zipf, frac, aging, overtake, method, ws, mb, out = sys.argv[3:18]
json.dump({"model": model, "clients": int(clients), "reqs": int(reqs), "slots": int(slots),
           "docs": int(docs), "hot": float(hot), "pool": int(pool), "zipf": float(zipf),
           "frac": float(frac), "pool_bytes": int(ws), "cache_mb": int(mb), "aging_ms": float(aging),
           "overtake": int(overtake), "method": method, "fifo": fifo, "aware": aware},
          open(out, "w"), indent=1)
PYEOF
"$PY" bench/sched_report.py "${JSON:-$work/result.json}"
