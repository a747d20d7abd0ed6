#!/usr/bin/env bash
# demo.sh - `make demo`: build kvfuse, fetch the default model if needed, and answer a chat
# prompt with it, printing the timings.
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
