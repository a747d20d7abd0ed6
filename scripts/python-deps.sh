#!/usr/bin/env bash
# python-deps.sh - make .venv with the Python oracles the integration tests use
# (numpy, gguf, tokenizers, jinja2). Idempotent: skips what is already installed.
# Prints the venv's python path on stdout.
set -euo pipefail
VENV=${KVF_VENV:-.venv}
PY=${PYTHON:-python3}
need="numpy gguf tokenizers jinja2"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" >&2 || { echo "python-deps: cannot create a venv with $PY" >&2; exit 1; }
fi
if ! "$VENV/bin/python" -c "import numpy, gguf, tokenizers, jinja2" 2>/dev/null; then
    echo "python-deps: installing $need into $VENV ..." >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $need >&2 || {
        echo "python-deps: pip install failed (no network?). Install $need into $VENV by hand." >&2
        exit 1
    }
fi
echo "$VENV/bin/python"
