#!/usr/bin/env bash
# qwen_parity.sh - exactness of kvfuse on a real Qwen2 / Qwen2.5 GGUF model (KVF_QWEN_MODEL,
# default models/Qwen2.5-Coder-0.5B-Instruct.gguf) against independent oracles:
#   dequant    every tensor of the file bit-identical to the `gguf` package (and the random
#              block checks of every weight type): tests/oracle/check_dequant.py
#   logits     `kvfuse logits` vs the numpy forward pass (tests/oracle/ref_forward.py: QKV biases,
#              NeoX RoPE, GQA, rope base from the file) on 6 prompts at q16, f32, q8 and other
#              kernels: argmax at every position, max|d|, mean KL (check_logits.py --prompt-set qwen)
#   tokenizer  ids vs a Hugging Face tokenizer built from the GGUF's vocabulary with Qwen2's
#              pre-tokenizer (MuSiQue passages, questions and RAG prompts, code, CJK, emoji, digit
#              and whitespace runs, contractions), round trips, the chat template vs jinja2 with
#              Qwen's default system message, and stopping on <|im_end|> / <|endoftext|>
#              (tests/oracle/check_qwen.py)
# Prints SKIP and "0 passed, 0 failed" when the model file is absent. KVF_QWEN_PARTS (default
# "dequant logits tokenizer") picks the parts. Run by scripts/run-tests.sh (KVFUSE, PYTHON, BUILD,
# KVF_SHARED in the environment); prints the sum of the parts as "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build}
KVFUSE=${KVFUSE:-$BUILD/kvfuse}
PYTHON=${PYTHON:-.venv/bin/python}
KVF_SHARED=${KVF_SHARED:-../shared}
MODEL=${KVF_QWEN_MODEL:-models/Qwen2.5-Coder-0.5B-Instruct.gguf}
PARTS=${KVF_QWEN_PARTS:-dequant logits tokenizer}
MUSIQUE=$KVF_SHARED/data/musique-cacheblend/musique_s.json

if [ ! -f "$MODEL" ]; then
    echo "SKIP: qwen_parity needs $MODEL (set KVF_QWEN_MODEL)"
    echo "0 passed, 0 failed"; exit 0
fi
for f in "$KVFUSE" "$BUILD/tests/tool_dequant" "$BUILD/tests/tool_tokenize"; do
    if [ ! -x "$f" ]; then
        echo "qwen_parity: $f not built (make BUILD=$BUILD all)"; echo "0 passed, 1 failed"; exit 1
    fi
done

pass=0 fail=0
part() { # name, command...
    local name=$1 out rc line p f t0=$SECONDS
    shift
    echo "-- qwen_parity $name: $MODEL"
    out=$(mktemp)
    "$@" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
    rm -f "$out"
    if [ -z "$line" ]; then
        echo "FAIL qwen_parity $name: exited $rc without a summary line"; fail=$((fail + 1)); return
    fi
    p=${line%% passed*}; f=${line#*, }; f=${f%% failed}
    [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && f=1 && echo "FAIL qwen_parity $name: exit status $rc"
    pass=$((pass + p)); fail=$((fail + f))
    echo "-- qwen_parity $name: $p passed, $f failed ($((SECONDS - t0)) s)"
}

for what in $PARTS; do
    case $what in
    dequant) part dequant "$PYTHON" tests/oracle/check_dequant.py "$BUILD/tests/tool_dequant" "$MODEL" ;;
    logits) part logits "$PYTHON" tests/oracle/check_logits.py "$KVFUSE" "$MODEL" \
                 --threads "${KVF_THREADS:-2}" --prompt-set qwen ;;
    tokenizer)
        if [ -f "$MUSIQUE" ]; then
            part tokenizer "$PYTHON" tests/oracle/check_qwen.py "$KVFUSE" \
                "$BUILD/tests/tool_tokenize" "$MODEL" "$MUSIQUE"
        else
            echo "SKIP: qwen_parity tokenizer part needs $MUSIQUE (shared data; set KVF_SHARED)"
        fi ;;
    *) echo "FAIL qwen_parity: unknown part '$what' in KVF_QWEN_PARTS"; fail=$((fail + 1)) ;;
    esac
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
