#!/usr/bin/env bash
# load_test.sh - a bounded load test of `kvfuse serve` on loopback: starts the server with the
# default model, runs bench/load_client.c (8 concurrent clients, 60 s per method, MuSiQue
# questions with their 10 passages ingested as documents and the chunk caches warmed first)
# for a3 and then full, prints throughput, p50/p99 TTFT, the 5xx count and the server's
# resident memory before and after, and stops the server. Exits non-zero on any 5xx.
#
# Environment: BUILD (build), KVFUSE_MODEL, KVF_SHARED (../shared), CLIENTS (8), DURATION (60),
# QUESTIONS (8), METHODS (a3,full), PARALLEL (4 slots), CTX (8192), OUT (a JSON results file).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
MODEL=${KVFUSE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
DATA=${KVF_SHARED:-../shared}/data/musique-cacheblend/musique_s.json
CLIENTS=${CLIENTS:-8} DURATION=${DURATION:-60} QUESTIONS=${QUESTIONS:-8} METHODS=${METHODS:-a3,full}
PARALLEL=${PARALLEL:-4} CTX=${CTX:-8192}
make -s -j2 BUILD="$BUILD" cli "$BUILD/bench/load_client" >/dev/null
[ -f "$MODEL" ] || scripts/get-model.sh "$MODEL"
[ -f "$DATA" ] || { echo "load_test: $DATA not found (set KVF_SHARED)" >&2; exit 1; }

tmp=$(mktemp -d)
"$BUILD/kvfuse" serve -m "$MODEL" --port 0 --port-file "$tmp/port" --ctx "$CTX" --parallel "$PARALLEL" \
    --queue 32 --timeout 600 -q 2>"$tmp/server.log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 1 200); do [ -s "$tmp/port" ] && break; sleep 0.1; done
[ -s "$tmp/port" ] || { cat "$tmp/server.log"; exit 1; }
url=http://127.0.0.1:$(cat "$tmp/port")
echo "load_test: $url, $PARALLEL slots x $CTX tokens; $CLIENTS clients x ${DURATION}s per method ($METHODS), $QUESTIONS MuSiQue questions"
rc=0
"$BUILD/bench/load_client" --url "$url" --data "$DATA" --clients "$CLIENTS" --duration "$DURATION" \
    --questions "$QUESTIONS" --methods "$METHODS" ${OUT:+--json "$OUT"} || rc=$?
kill -TERM "$pid"
wait "$pid" || { echo "load_test: the server exited with status $?"; rc=1; }
if grep -E 'AddressSanitizer|runtime error' "$tmp/server.log"; then rc=1; fi
exit $rc
