#!/usr/bin/env bash
# tokenizer_parity.sh - the tokenizer and chat templates (src/engine/tokenizer.c) against independent
# oracles: Hugging Face `tokenizers` with SmolLM2's tokenizer.json (~400 varied strings, every
# MuSiQue passage and question, chat prompts), HF's regex pre-tokenizers, jinja2 renderings of
# the chat templates, and llama.cpp's test vocabularies with their expected ids (SentencePiece
# and BPE; fetched once with pip, KVF_TOK_VOCABS=0 skips them). Logic in
# tests/integration/tokenizer_parity.py; C side is the helper $BUILD/tests/tool_tokenize.
# Run by scripts/run-tests.sh (needs KVFUSE_MODEL, PYTHON, BUILD); prints "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
export BUILD=${BUILD:-build}
export KVFUSE_MODEL=${KVFUSE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
PYTHON=${PYTHON:-.venv/bin/python}
tool=$BUILD/tests/tool_tokenize
if [ ! -x "$tool" ]; then
    echo "tokenizer_parity: $tool not built (make BUILD=$BUILD $tool)"
    echo "0 passed, 1 failed"; exit 1
fi
if [ ! -f "$KVFUSE_MODEL" ]; then
    echo "tokenizer_parity: model $KVFUSE_MODEL missing (make model)"
    echo "0 passed, 1 failed"; exit 1
fi
exec "$PYTHON" tests/integration/tokenizer_parity.py
