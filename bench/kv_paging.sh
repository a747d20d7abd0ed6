#!/bin/bash
# kv_paging.sh - demand-paged KV caches in `kvfuse serve` (issue 13, vAttention): start a
# server with many long slots, fill every slot with a fused request over shared documents, and
# report RSS against (tokens held x KV bytes per token + weights); before that, the page-fault
# cost from build/bench/kv_paging. Not part of `make test`.
#   bench/kv_paging.sh [MODEL]      (default qwen2.5-coder-0.5b)
#   env: SLOTS (32), CTX (32768), DOC_TOKENS (~4000 per request: 32 x 3.3k = 107k tokens held
#        with the 0.5B), KV (f32 or f16),
#        SHARED (../shared), JSON (write the numbers there)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-qwen2.5-coder-0.5b}
SLOTS=${SLOTS:-32}
CTX=${CTX:-32768}
KV=${KV:-f32}
SHARED=${SHARED:-../shared}
KVFUSE=${KVFUSE:-build/kvfuse}
PY=${PYTHON:-python3}
[ -x "$KVFUSE" ] || { echo "kv_paging: $KVFUSE not found (make cli)" >&2; exit 1; }
[ -x build/bench/kv_paging ] || { echo "kv_paging: build/bench/kv_paging not found (make benches)" >&2; exit 1; }
ESSAYS="$SHARED/data/needle/PaulGrahamEssays"
[ -d "$ESSAYS" ] || { echo "kv_paging: $ESSAYS not found (set SHARED)" >&2; exit 1; }
INFO=$("$KVFUSE" info -m "$MODEL") || exit 1
FILE=$(awk '$1 == "file" { print $2; exit }' <<< "$INFO")
WEIGHTS=$(awk '$1 == "weights" { for (i = 1; i + 2 <= NF; i++) if ($(i+1) == "MB" && $(i+2) == "packed") print $i * 1e6 }' <<< "$INFO")
TOK=$(sed -n 's/^KV cache.*(\([0-9]*\) \/ \([0-9]*\) bytes).*/\1 \2/p' <<< "$INFO")
if [ "$KV" = f16 ]; then TOK=${TOK#* }; else TOK=${TOK% *}; fi
work=$(mktemp -d)
spid=
trap '[ -n "$spid" ] && kill "$spid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

echo "kv_paging: page-fault cost (build/bench/kv_paging, 4 sessions) ..." >&2
build/bench/kv_paging -m "$FILE" --sessions 4 --ctx "$CTX" -p 512 --kv "$KV"

echo "kv_paging: kvfuse serve --parallel $SLOTS --ctx $CTX --kv $KV ..." >&2
"$KVFUSE" serve -m "$MODEL" --parallel "$SLOTS" --ctx "$CTX" --kv "$KV" --port 0 \
    --port-file "$work/port" --method reuse -q 2> "$work/serve.log" &
spid=$!
for _ in $(seq 600); do [ -s "$work/port" ] && break; sleep 0.2; done
[ -s "$work/port" ] || { echo "kv_paging: the server did not start:" >&2; cat "$work/serve.log" >&2; exit 1; }
"$PY" - "$(cat "$work/port")" "$spid" "$ESSAYS" "$SLOTS" "${DOC_TOKENS:-4000}" "$WEIGHTS" "$TOK" "${JSON:-}" <<'PYEOF'
import json, os, sys, threading, time, urllib.request
port, pid, essays, slots, doc_tokens, weights, tok, out = sys.argv[1:9]
slots, doc_tokens, weights, tok = int(slots), int(doc_tokens), float(weights), int(tok)
base = f"http://127.0.0.1:{port}"
MiB = 2**20

def rss():
    with open(f"/proc/{pid}/status") as f:
        for l in f:
            if l.startswith("VmRSS:"):
                return int(l.split()[1]) * 1024

def metric(name):
    with urllib.request.urlopen(base + "/metrics") as r:
        for l in r.read().decode().splitlines():
            if l.startswith(name + " "):
                return float(l.split()[1])

def post(body):
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.loads(r.read())

# documents: ~512-token pieces of the essays (about 4 characters per token)
text = ""
for name in sorted(os.listdir(essays)):
    with open(os.path.join(essays, name), errors="replace") as f:
        text += f.read()
    if len(text) > doc_tokens * 8:
        break
docs = [text[i * 2048:(i + 1) * 2048] for i in range(max(1, doc_tokens // 512))]
r0 = rss()
print(f"\nserver: {slots} slots, KV reserved {metric('kvfuse_kv_reserved_bytes') / MiB:.0f} MiB; "
      f"RSS at start {r0 / MiB:.0f} MiB = weights {weights / MiB:.0f} + {(r0 - weights) / MiB:.0f} MiB")
t0 = time.time()
post({"messages": [{"role": "user", "content": "One word?"}], "documents": docs, "max_tokens": 4})
res, errs = [None] * slots, []

def one(i):
    try:
        res[i] = post({"messages": [{"role": "user", "content": f"Question {i}: what is this about?"}],
                       "documents": docs, "max_tokens": 4})
    except Exception as e:
        errs.append(str(e))

th = [threading.Thread(target=one, args=(i,)) for i in range(slots)]
for t in th: t.start()
for t in th: t.join()
if errs:
    sys.exit(f"kv_paging: {len(errs)} requests failed: {errs[0]}")
held = sum(r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] for r in res)
time.sleep(0.5)
r1, kvres = rss(), metric("kvfuse_kv_resident_bytes")
want = held * tok + weights
print(f"workload: {slots} fused requests of {res[0]['usage']['prompt_tokens']} prompt tokens in "
      f"{time.time() - t0:.1f} s; tokens held {held}")
print(f"KV resident {kvres / MiB:.0f} MiB for {held * tok / MiB:.0f} MiB of exact KV ({kvres / (held * tok):.3f}x)")
print(f"RSS at end {r1 / MiB:.0f} MiB vs tokens held x KV bytes + weights = {want / MiB:.0f} MiB: {r1 / want:.3f}x")
rec = {"slots": slots, "rss_start": r0, "rss_end": r1, "weights": weights, "tokens_held": held,
       "kv_bytes_per_token": tok, "kv_resident": kvres, "rss_over_expected": r1 / want}
print(json.dumps(rec))
if out:
    with open(out, "w") as f:
        json.dump(rec, f, indent=1)
PYEOF
