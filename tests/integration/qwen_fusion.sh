#!/usr/bin/env bash
# qwen_fusion.sh - the fusion invariants (../shared/docs/fusion.md §3) on a real Qwen2 model
# (KVF_QWEN_MODEL, default models/Qwen2.5-Coder-0.5B-Instruct.gguf; `make test-models` also runs
# the 1.5B): the prompt's segments are the chat-formatted prompt with Qwen's default system
# message and special tokens; RoPE recovery at layer 0 (NeoX pairing, K bias) reproduces full
# prefill's cache; a chunk precomputed after the same prefix is exact at every layer; reuse of a
# single such chunk and every selective method at ratio 1.0 give full's first-token distribution
# and greedy answer. See tests/tool_fusecheck.c. Prints "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build}
MODEL=${KVF_QWEN_MODEL:-models/Qwen2.5-Coder-0.5B-Instruct.gguf}
if [ ! -f "$MODEL" ]; then
    echo "SKIP: qwen_fusion needs $MODEL (set KVF_QWEN_MODEL)"
    echo "0 passed, 0 failed"; exit 0
fi
if [ ! -x "$BUILD/tests/tool_fusecheck" ]; then
    echo "qwen_fusion: $BUILD/tests/tool_fusecheck not built (make BUILD=$BUILD all)"; echo "0 passed, 1 failed"; exit 1
fi
exec "$BUILD/tests/tool_fusecheck" "$MODEL" "${KVF_THREADS:-2}"
