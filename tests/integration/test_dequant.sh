#!/usr/bin/env bash
# test_dequant.sh - the C reference dequantiser/quantiser (src/engine/quant.c) against the official
# `gguf` Python package: every tensor of the real model bit-identical, random blocks of every
# supported weight type bit-identical, and kvf_quantize round trips within per-type error bounds.
# Logic in tests/oracle/check_dequant.py; C side is the helper $BUILD/tests/tool_dequant.
# Run by scripts/run-tests.sh (needs KVFUSE_MODEL, PYTHON, BUILD); prints "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-.venv/bin/python}
KVFUSE_MODEL=${KVFUSE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
tool=$BUILD/tests/tool_dequant
if [ ! -x "$tool" ]; then
    echo "test_dequant: $tool not built (make BUILD=$BUILD $tool)"
    echo "0 passed, 1 failed"; exit 1
fi
if [ ! -f "$KVFUSE_MODEL" ]; then
    echo "test_dequant: model $KVFUSE_MODEL missing (make model)"; echo "0 passed, 1 failed"; exit 1
fi
exec "$PYTHON" tests/oracle/check_dequant.py "$tool" "$KVFUSE_MODEL"
