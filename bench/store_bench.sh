#!/usr/bin/env bash
# store_bench.sh - the chunk store benchmark (bench/store_bench.c), side by side in one run:
# disk-tier load throughput against the raw sequential read speed of the same file (page cache
# cold and warm), KV bytes per token per dtype (f16, f32, q8, zstd), TTFT of a3 with every
# chunk served from the disk tier against full prefill on the first --limit MuSiQue questions
# (store load included), per-layer load vs recompute time, and the accuracy cost of q8 chunks.
#
#   bench/store_bench.sh [--limit 10] [--acc-limit 2] [--store DIR] [--json OUT] [--threads N]
#                        [--model M.gguf] [--build DIR]
#
# The MuSiQue passages of the questions are ingested into the store first with
# `kvfuse ingest --musique` (f16; already stored passages are skipped, so a second run starts
# at once). Default store: build/store-bench (about 140 MiB per question). A full prefill takes
# 20-70 s per question on a shared 2-core machine: --limit 10 runs ~10-20 minutes after the
# one-time ingest (~4-6 s per passage).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build LIMIT=10 ACC=2 STORE="" JSON="" THREADS=0 MODEL=${KVFUSE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
MUSIQUE=${KVF_SHARED:-../shared}/data/musique-cacheblend/musique_s.json
while [ $# -gt 0 ]; do
    case $1 in
    --limit) LIMIT=$2; shift 2 ;;
    --acc-limit) ACC=$2; shift 2 ;;
    --store) STORE=$2; shift 2 ;;
    --json) JSON=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --musique) MUSIQUE=$2; shift 2 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "store_bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
STORE=${STORE:-$BUILD/store-bench}
JSON=${JSON:-$BUILD/store-bench.json}
[ -x "$BUILD/kvfuse" ] && [ -x "$BUILD/bench/store_bench" ] || make -j2 BUILD="$BUILD" cli benches >&2
[ -f "$MODEL" ] || { echo "store_bench.sh: no model at $MODEL (make model)" >&2; exit 1; }
[ -f "$MUSIQUE" ] || { echo "store_bench.sh: no MuSiQue data at $MUSIQUE" >&2; exit 1; }
load=$(cut -d' ' -f1 /proc/loadavg)
echo "store_bench: $(nproc) CPUs, load average $load (a busy shared machine moves these numbers a lot)"
n=$(( LIMIT > ACC ? LIMIT : ACC ))
echo "== ingest: the passages of the first $n MuSiQue questions into $STORE"
t0=$(date +%s)
"$BUILD/kvfuse" ingest -m "$MODEL" --store "$STORE" --musique "$MUSIQUE" --limit "$n" --threads "$THREADS"
echo "ingest: $(( $(date +%s) - t0 )) s"
"$BUILD/bench/store_bench" -m "$MODEL" --store "$STORE" --musique "$MUSIQUE" --limit "$LIMIT" \
    --acc-limit "$ACC" --threads "$THREADS" --json "$JSON"
