#!/usr/bin/env bash
# load_soak.sh - mixed-traffic soak of `kvfuse serve` on the loopback (not part of `make test`;
# `make soak-load`): starts the server, runs bench/load_soak.py (CLIENTS concurrent clients for
# DURATION seconds: fused requests over shared and private documents, plain chats, streams,
# clients that disconnect mid-stream, 5% malformed requests, document ingests and deletes),
# stops the server with SIGTERM and checks its exit and log. Exits non-zero on any 5xx, on
# resident-memory growth over 2% after the warm-up, on an unclean exit or a sanitizer report.
#
# Environment: CLIENTS (64), DURATION (600), KVFUSE (build/kvfuse; build/asan/kvfuse for an
# ASan run), KVFUSE_MODEL (SmolLM2-135M), PARALLEL (4 slots), CTX (2048), QUEUE (128),
# CACHE_MB (32: the memory chunk cache fills during the warm-up, so that resident memory after
# it measures leaks, not a cache filling towards serve's 2 GiB default), MAX_TOKENS (12),
# OUT (a JSON results file).
set -uo pipefail
cd "$(dirname "$0")/.."
KVFUSE=${KVFUSE:-build/kvfuse}
MODEL=${KVFUSE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
CLIENTS=${CLIENTS:-64} DURATION=${DURATION:-600} PARALLEL=${PARALLEL:-4} CTX=${CTX:-2048} QUEUE=${QUEUE:-128}
CACHE_MB=${CACHE_MB:-32}
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
"$KVFUSE" serve -m "$MODEL" --port 0 --port-file "$tmp/port" --ctx "$CTX" --parallel "$PARALLEL" \
    --queue "$QUEUE" --timeout 900 --cache-mb "$CACHE_MB" -q 2>"$tmp/server.log" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
while [ ! -s "$tmp/port" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
[ -s "$tmp/port" ] || { cat "$tmp/server.log"; exit 1; }
url=http://127.0.0.1:$(cat "$tmp/port")
echo "load soak: $KVFUSE on $url ($MODEL, $PARALLEL slots x $CTX tokens, queue $QUEUE, chunk cache $CACHE_MB MiB); $CLIENTS clients x ${DURATION} s"
rc=0
"$PY" bench/load_soak.py "$url" "$pid" "$DURATION" "$CLIENTS" ${OUT:+--json "$OUT"} || rc=1
kill -TERM "$pid"
wait "$pid"; st=$?
echo "server exit status after SIGTERM: $st"
[ "$st" -eq 0 ] || rc=1
if grep -E 'Sanitizer|runtime error|Segmentation' "$tmp/server.log"; then echo "load soak: sanitizer report in the server log"; rc=1; fi
exit $rc
