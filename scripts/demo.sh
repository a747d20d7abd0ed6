#!/usr/bin/env bash
# demo.sh [NAME] - `make demo [NAME=...]`: build kvfuse, fetch the model if needed (default
# qwen2.5-coder-0.5b, a model that answers the demo question right under full prefill), answer
# a chat prompt; then the main job: a question over several documents answered with KV cache
# fusion (A^3 and kvfuse's own focus), the answers and TTFTs printed next to a full prefill of
# the same prompt; then start `kvfuse serve`, answer one OpenAI-style request with documents
# fused by focus (the server's default) through curl, and stop it. KVFUSE_MODEL=PATH runs it on any GGUF file instead.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:-${DEMO_MODEL:-qwen2.5-coder-0.5b}}
t_start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - t_start )) s] $*"; }
step "building kvfuse"
make -j2 cli >/dev/null
if [ -n "${KVFUSE_MODEL:-}" ]; then
    MODEL=$KVFUSE_MODEL
else
    step "the model: $NAME (fetched once, sha256 checked)"
    scripts/get-model.sh "$NAME"
    MODEL=$NAME
fi
step "model"
build/kvfuse info -m "$MODEL"
PROMPT=${DEMO_PROMPT:-"In two sentences, what is the difference between a cache and a database?"}
step "chat: $PROMPT"
build/kvfuse generate -m "$MODEL" --chat -p "$PROMPT" -n 96

# The main job: a question over several documents, answered by fusing their cached KV with A^3
# and with focus, next to a full prefill of exactly the same prompt. With the shared data beside the checkout
# this is a MuSiQue question (10 passages, ~6k tokens, CacheBlend's prompt); without it, three
# short built-in documents.
SHARED=${KVF_SHARED:-../shared}
MUSIQUE=$SHARED/data/musique-cacheblend/musique_s.json
DEMO_Q=${DEMO_Q:-0}
ftmp=$(mktemp -d)
if [ -f "$MUSIQUE" ] && python3 - "$MUSIQUE" "$DEMO_Q" "$ftmp" <<'PY'
import ast, json, sys
rows = json.load(open(sys.argv[1])); x = rows[int(sys.argv[2])]
ctxs = x["ctxs"] if isinstance(x["ctxs"], list) else ast.literal_eval(x["ctxs"])
json.dump([{"title": c.get("title", ""), "text": c["text"]} for c in ctxs], open(sys.argv[3] + "/docs.json", "w"))
open(sys.argv[3] + "/q", "w").write(x["question"])
gold = x["answers"] if isinstance(x["answers"], list) else ast.literal_eval(x["answers"])
open(sys.argv[3] + "/gold", "w").write(" | ".join(gold))
PY
then
    step "fusion: MuSiQue question $DEMO_Q over its 10 passages (gold answer: $(cat "$ftmp/gold"))"
    set -- --docs-json "$ftmp/docs.json" --musique -q "$(cat "$ftmp/q")"
else
    step "fusion: a question over three documents ($MUSIQUE not found: built-in documents)"
    printf '%s\n' "The Amazon river flows through Peru, Colombia and Brazil into the Atlantic Ocean." \
        "Its basin covers about seven million square kilometres." > "$ftmp/d1.txt"
    printf '%s\n' "Lake Baikal in Siberia is the deepest lake in the world, at 1642 metres." > "$ftmp/d2.txt"
    printf '%s\n' "The Nile is usually listed as the longest river; the Amazon carries the most water." > "$ftmp/d3.txt"
    set -- -d "$ftmp/d1.txt" -d "$ftmp/d2.txt" -d "$ftmp/d3.txt" -q "Which lake is the deepest in the world?"
fi
echo "\$ kvfuse ask --method full,a3,focus --ratio 0.15 ... (documents precomputed first, then each method)"
build/kvfuse ask -m "$MODEL" --method full,a3,focus --ratio 0.15 -n 32 "$@"
rm -rf "$ftmp"

# The server: start `kvfuse serve`, answer one request whose documents are fused (focus, the
# server's default method), stop.
step "server: kvfuse serve, one OpenAI-style request with documents (KV cache fusion, focus)"
tmp=$(mktemp -d)
build/kvfuse serve -m "$MODEL" --port 0 --port-file "$tmp/port" --ctx 2048 --parallel 1 -q 2>"$tmp/log" &
spid=$!
trap 'kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 1 100); do [ -s "$tmp/port" ] && break; sleep 0.1; done
[ -s "$tmp/port" ] || { cat "$tmp/log"; exit 1; }
URL=http://127.0.0.1:$(cat "$tmp/port")
BODY='{"messages": [{"role": "system", "content": "Answer in a few words using the documents."},
  {"role": "user", "content": "In which city is the Eiffel Tower?"}],
 "documents": ["The Eiffel Tower is in Paris. It was completed in 1889 and is 330 metres tall.",
               "Mount Fuji is the highest mountain in Japan, at 3776 metres."],
 "kvfuse": {"method": "focus", "ratio": 0.15}, "max_tokens": 24}'
echo "\$ curl $URL/v1/chat/completions -d '$BODY'"
curl -s "$URL/v1/chat/completions" -d "$BODY" | { python3 -m json.tool 2>/dev/null || cat; }
kill -TERM "$spid"
wait "$spid" 2>/dev/null || true
step "server stopped; the demo took $(( $(date +%s) - t_start )) s"
