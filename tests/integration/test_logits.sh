#!/usr/bin/env bash
# test_logits.sh - end-to-end numerics: `kvfuse logits` on the real model against the numpy
# oracle (tests/oracle/ref_forward.py) on the same token ids, for 6 prompts (short, ~300-token,
# chat-formatted, code, numbers/unicode, --chat) at each --precision (f32, q16, q8) and a few
# --isa choices. Criteria and the evidence behind the
# tolerances: tests/oracle/check_logits.py. Run by scripts/run-tests.sh (KVFUSE, KVFUSE_MODEL,
# PYTHON in the environment); prints "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build}
KVFUSE=${KVFUSE:-$BUILD/kvfuse}
PYTHON=${PYTHON:-.venv/bin/python}
KVFUSE_MODEL=${KVFUSE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ ! -x "$KVFUSE" ]; then
    echo "test_logits: $KVFUSE not built (make cli)"; echo "0 passed, 1 failed"; exit 1
fi
if [ ! -f "$KVFUSE_MODEL" ]; then
    echo "test_logits: model $KVFUSE_MODEL missing (make model)"; echo "0 passed, 1 failed"; exit 1
fi
exec "$PYTHON" tests/oracle/check_logits.py "$KVFUSE" "$KVFUSE_MODEL" --threads "${KVF_THREADS:-2}"
