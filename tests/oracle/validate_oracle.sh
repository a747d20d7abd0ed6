#!/usr/bin/env bash
# validate_oracle.sh - one-off: check the numpy oracle against llama.cpp (see validate_oracle.py).
# Needs the llama.cpp build that bench/peer.sh makes (bench/peer.sh --build-only). Not part of
# `make test`. Usage: tests/oracle/validate_oracle.sh [MODEL]
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
PY=${PYTHON:-.venv/bin/python}
B=third_party/llama.cpp-build
S=$(find third_party -maxdepth 3 -path "*/vendor/llama.cpp" | sort | head -n 1)
[ -f "$B/src/libllama.a" ] || { echo "no llama.cpp build; run bench/peer.sh --build-only" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O2 -std=c11 -I"$S/include" -I"$S/ggml/include" -c tests/oracle/llama_logits.c -o "$work/ll.o"
g++ "$work/ll.o" "$B/src/libllama.a" "$B/ggml/src/libggml.a" "$B/ggml/src/libggml-cpu.a" \
    "$B/ggml/src/libggml-base.a" -fopenmp -lpthread -lm -o "$work/llama_logits"
"$PY" tests/oracle/validate_oracle.py "$work/llama_logits" "$MODEL" "$work/out"
