#!/usr/bin/env bash
# demo.sh - `make demo`: build kvfuse, fetch the default model if needed, and answer a chat
# prompt with it, printing the timings; then start `kvfuse serve`, answer one request with
# documents fused by A^3 through curl, and stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${KVFUSE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
echo "== building kvfuse"
make -j2 cli >/dev/null
if [ ! -f "$MODEL" ]; then
    echo "== fetching the model"
    scripts/get-model.sh "$MODEL"
fi
echo "== model"
build/kvfuse info -m "$MODEL"
PROMPT=${DEMO_PROMPT:-"In two sentences, what is the difference between a cache and a database?"}
echo
echo "== chat: $PROMPT"
build/kvfuse generate -m "$MODEL" --chat -p "$PROMPT" -n 96

# The server: start `kvfuse serve`, answer one request whose documents are fused (A^3), stop.
echo
echo "== server: kvfuse serve, one OpenAI-style request with documents (KV cache fusion, a3)"
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
 "kvfuse": {"method": "a3", "ratio": 0.15}, "max_tokens": 24}'
echo "\$ curl $URL/v1/chat/completions -d '$BODY'"
curl -s "$URL/v1/chat/completions" -d "$BODY" | { python3 -m json.tool 2>/dev/null || cat; }
kill -TERM "$spid"
wait "$spid" 2>/dev/null || true
echo "== server stopped"
