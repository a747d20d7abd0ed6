#!/bin/bash
# conv_budget.sh - long conversations under a KV budget (issue 13, EpiCache): build/bench/conv_budget
# answers each question of CONVS conversations (TOPICS MuSiQue questions' passages each, PASSAGES
# per question, one topic after the other, as notes the assistant acknowledges) with the whole
# history cached (full), under --conv-budget = FRAC of the history with the probe of the
# question's episode (epi), and with a probe of the recent window only (recent); MODES picks the
# bounded modes (epi,recent; also question, epiq: the question alone, the episode + question;
# turn: the question's turn with its template and the assistant's header; message: the user's
# message without the template, as serve probes by default).
# Prints the table (bench/conv_budget.py) and keeps the JSON lines. Not part of `make test`.
#   bench/conv_budget.sh [MODEL_FILE]   (default models/Qwen2.5-Coder-0.5B-Instruct.gguf)
# MODES with epil: epi with layer budgets (serve --conv-layers) from LAYERS, a profile of
# `kvfuse conv-profile`; without LAYERS one is measured first on 4096 tokens of the needle set's
# Paul Graham essays (~30 s on the 0.5B) and kept next to OUT.
#   env: CONVS (5), TOPICS (3), PASSAGES (4), FRAC (0.25), BLOCK (256), EPISODES (4), PROBE (64),
#        N (16), MODES (epi,recent), LAYERS, ALPHA (1.3), OFFSET (0: the first MuSiQue example
#        used; another offset gives other conversations, for development), SCORE (max: a cell's
#        score is the maximum of its attention over the probe's rows, what serve does; sum: their
#        sum), CHUNK (0: each head keeps its own top cells; C > 0: every head the same cells,
#        whole runs of C chosen by their attention summed over layers and heads, after ChunkKV),
#        GROUNDED (1: only questions whose gold answer occurs in one of their passages, and those
#        passages among the PASSAGES given, so the history holds what answers them), PROBE_IDF (1:
#        each probe row's attention weighted by its token's rarity in the history's blocks),
#        CONVQA (1: personal-memory conversations of bench/convqa.py instead of MuSiQue notes: essay
#        passages with pieces of the user's news between them, questions about the news;
#        CONVQA_ARGS passes options to it, e.g. "--fillers 30"; TOPICS, PASSAGES and GROUNDED
#        do not apply, OFFSET picks the first conversation),
#        POOL (5: a cell's probe score averaged over POOL neighbours before the top cells are kept),
#        SHARED (../shared),
#        OUT (results file, default a temporary one)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/Qwen2.5-Coder-0.5B-Instruct.gguf}
SHARED=${SHARED:-../shared}
DATA="$SHARED/data/musique-cacheblend/musique_s.json"
BIN=${BIN:-build/bench/conv_budget}
[ -x "$BIN" ] || { echo "conv_budget: $BIN not found (make benches)" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "conv_budget: $MODEL not found (make demo downloads it)" >&2; exit 1; }
OUT=${OUT:-$(mktemp --suffix=.jsonl)}
if [ "${CONVQA:-0}" != 1 ]; then
    [ -f "$DATA" ] || { echo "conv_budget: $DATA not found (set SHARED)" >&2; exit 1; }
    SRC=(--data "$DATA" --topics "${TOPICS:-3}" --passages "${PASSAGES:-4}")
else
    CONVS_FILE=$(mktemp --suffix=.convqa.json)   # essay text from ../shared: never kept in the tree
    trap 'rm -f "$CONVS_FILE"' EXIT
    python3 bench/convqa.py --shared "$SHARED" --conversations $(( ${OFFSET:-0} + ${CONVS:-5} )) \
        ${CONVQA_ARGS:-} -o "$CONVS_FILE"
    SRC=(--convs "$CONVS_FILE")
fi
MODES=${MODES:-epi,recent}
LAYER_ARGS=()
if [[ ",$MODES," == *,epil,* ]]; then
    if [ -z "${LAYERS:-}" ]; then
        LAYERS="${OUT%.jsonl}.layers.txt"
        ESSAYS="$SHARED/data/needle/PaulGrahamEssays"
        [ -d "$ESSAYS" ] || { echo "conv_budget: $ESSAYS not found (set LAYERS)" >&2; exit 1; }
        cat $(ls "$ESSAYS"/*.txt | sort) > "$OUT.essays.txt"
        build/kvfuse conv-profile -m "$MODEL" -f "$OUT.essays.txt" --tokens 4096 --block 1024 \
            -o "$LAYERS" >&2
        rm -f "$OUT.essays.txt"
    fi
    LAYER_ARGS=(--layers "$LAYERS" --alpha "${ALPHA:-1.3}")
fi
"$BIN" -m "$MODEL" "${SRC[@]}" --conversations "${CONVS:-5}" --budget-frac "${FRAC:-0.25}" --block "${BLOCK:-256}" \
    --episodes "${EPISODES:-4}" --probe "${PROBE:-64}" -n "${N:-16}" --modes "$MODES" --offset "${OFFSET:-0}" \
    --score "${SCORE:-max}" --chunk "${CHUNK:-0}" --pool "${POOL:-5}" \
    $([ "${GROUNDED:-0}" = 1 ] && echo --grounded) $([ "${PROBE_IDF:-0}" = 1 ] && echo --probe-idf) "${LAYER_ARGS[@]}" > "$OUT"
echo "conv_budget: results in $OUT" >&2
python3 bench/conv_budget.py "$OUT"
