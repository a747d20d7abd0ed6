#!/usr/bin/env bash
# crash_soak.sh - SIGKILL soak of the chunk store (not part of `make test`; `make soak-crash`).
#
# KILLS times (default 1000): start a victim - `kvfuse ingest` (3 of 4) or `kvfuse serve`
# answering a request over new documents (1 of 4) - on one shared LMDB store (and a Redis tier
# when redis-server is installed), and kill -9 it at a random moment. Meanwhile two other
# processes use the same store the whole time: a writer (`kvfuse ingest` with other chunk
# windows, never killed) and a reader (`kvfuse ask` over acknowledged chunks).
#
# After every kill: `kvfuse store verify` (every entry's checksums, key and index records), and
# a fused request (`kvfuse ask --mem-budget 0`, a3) over the chunks of one acknowledged ingest
# (in turn), which must find every chunk in the store and answer exactly as the same request
# computed without a store. Every CHECK_EVERY kills and at the end: the same over every
# acknowledged ingest. An ingest is acknowledged when it exited 0; its chunks (its --manifest)
# must never be lost.
#
# Reports: kills (ingest / serve), verifications, entries checked, corrupt entries found by
# verify, corrupt entries served (answers that differ from the storeless reference: must be 0),
# acknowledged chunks lost (must be 0), corrupt entries met and dropped by readers.
#
# Each victim ingest uses a new combination of chunk window (64..293), KV dtype (f16, f32,
# q8) and layout (after the prefix, or --chunk-alone), so every kill interrupts new writes.
#
#   bench/crash_soak.sh [KILLS]        environment: KVFUSE (build/kvfuse), CHECK_EVERY (250),
#                                      SOAK_MAX_S (stop early after this many seconds and
#                                      report the kills reached; default none),
#                                      SOAK_DIR (a temporary directory), SEED (1)
set -uo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-1000}
KVFUSE=${KVFUSE:-build/kvfuse}
BUILD=${BUILD:-build}
PY=${PYTHON:-python3}
CHECK_EVERY=${CHECK_EVERY:-250}
T=${SOAK_DIR:-$(mktemp -d /tmp/kvf-crash-soak.XXXXXX)}
mkdir -p "$T/ack" "$T/ref"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    [ -n "${SOAK_DIR:-}" ] || rm -rf "$T"
}
trap cleanup EXIT
RANDOM=${SEED:-1}

SYN=$T/synth.gguf
# small on purpose: thousands of ingests, verifications and fused requests must fit in an hour
"$BUILD/tests/tool_mkmodel" "$SYN" --layers 2 --embd 64 --ctx 16384 --type Q8_0 >/dev/null || exit 1
ESSAYS=${KVF_SHARED:-../shared}/data/needle/PaulGrahamEssays
mkdir -p "$T/docs"
for i in 1 2; do
    if [ -d "$ESSAYS" ]; then
        f=$([ $i = 1 ] && echo addiction || echo aord)
        head -c 5000 "$ESSAYS/$f.txt" >"$T/docs/d$i.txt"
    else
        for p in $(seq 1 25); do
            printf 'Paragraph %d of document %d: the quick brown fox jumps over the lazy dog, %d.\n\n' "$p" "$i" $((p * i))
        done >"$T/docs/d$i.txt"
    fi
done
DOCS=("$T/docs/d1.txt" "$T/docs/d2.txt")
S=$T/store
ST=(--store "$S" --map-size 4G)
if command -v redis-server >/dev/null 2>&1; then
    RP=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
    redis-server --port "$RP" --save '' --appendonly no >"$T/redis.out" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do redis-cli -p "$RP" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
    ST+=(--redis "127.0.0.1:$RP")
    echo "crash soak: LMDB store + Redis tier on port $RP"
else
    echo "crash soak: LMDB store (no redis-server installed: no Redis tier)"
fi

# combo N: "WINDOW DTYPE ALONE" of victim N (all distinct for N < 1380)
combo() {
    local n=$1 d=(f16 f32 q8)
    echo "$((64 + n % 230)) ${d[$(((n / 230) % 3))]} $(((n / 690) % 2))"
}
# args ID: the ingest / ask options of a combination id "WINDOW-DTYPE-ALONE"
args() {
    local IFS=-; set -- $1
    echo "--chunk-tokens $1 --dtype $2$([ "$3" = 1 ] && echo ' --chunk-alone')"
}
# ingest ID MANIFEST: one ingest of the corpus with the options of ID
ingest() {
    "$KVFUSE" ingest -m "$SYN" "${ST[@]}" $(args "$1") --manifest "$2" -q "${DOCS[@]}"
}
# reference ID: the storeless answer over an acknowledged manifest (computed once)
reference() {
    local id=$1 a
    [ -s "$T/ref/$id" ] && return 0
    a=$(args "$id"); a=${a/--chunk-tokens [0-9]*--dtype/--dtype}
    "$KVFUSE" ask -m "$SYN" $a --docs-json "$T/ack/$id.json" -q "what is it about" --method a3 -n 6 --json 2>/dev/null |
        "$PY" -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["text"]))' >"$T/ref/$id"
}
# fused ID: ask over the manifest from the store; appends "misses bad same hits" to $T/fused.log
fused() {
    local id=$1 out a
    reference "$id" || return 1
    a=$(args "$id"); a=${a/--chunk-tokens [0-9]*--dtype/--dtype}
    out=$("$KVFUSE" ask -m "$SYN" "${ST[@]}" $a --mem-budget 0 --docs-json "$T/ack/$id.json" -q "what is it about" \
        --method a3 -n 6 --json 2>>"$T/ask.err")
    if [ -z "$out" ]; then echo "error 0 0" >>"$T/fused.log"; return 1; fi
    "$PY" - "$out" "$T/ref/$id" >>"$T/fused.log" <<'PY'
import json, sys
d = json.loads(sys.argv[1]); ref = json.loads(open(sys.argv[2]).read())
print(d["chunk_misses"], d["store"]["disk"]["bad_entries"], int(d["text"] == ref), d["chunk_hits"])
PY
}
verify() {
    "$KVFUSE" store verify "${ST[@]}" --json >"$T/verify.json" 2>"$T/verify.err"
    local rc=$?
    "$PY" - "$T/verify.json" "$rc" >>"$T/verify.log" <<'PY'
import json, sys
try: d = json.load(open(sys.argv[1]))
except Exception: d = {}
print(sys.argv[2], d.get("checked", -1), d.get("bad_entries", -1))
PY
}

# background: a writer that is never killed (windows 300..307 over and over: after the first
# round its ingests find their chunks stored and only read) and a reader
(
    i=0
    while :; do
        id="$((300 + i % 8))-f16-0"; i=$((i + 1))
        if ingest "$id" "$T/bg-$id.json" 2>>"$T/bg-ingest.err"; then mv "$T/bg-$id.json" "$T/ack/$id.json"; fi
    done
) &
PIDS+=($!)
(
    while :; do
        for m in "$T"/ack/*.json; do
            [ -e "$m" ] || { sleep 0.5; continue; }
            a=$(args "$(basename "$m" .json)"); a=${a/--chunk-tokens [0-9]*--dtype/--dtype}
            "$KVFUSE" ask -m "$SYN" "${ST[@]}" $a --docs-json "$m" -q "why" -n 2 --json >/dev/null 2>>"$T/bg-ask.err"
        done
    done
) &
PIDS+=($!)

# calibrate the kill window: one uninterrupted ingest
t0=$(date +%s%N)
ingest 299-f16-0 "$T/calib.json" >/dev/null 2>&1 && mv "$T/calib.json" "$T/ack/299-f16-0.json"
span=$((($(date +%s%N) - t0) / 1000000 * 12 / 10))
[ "$span" -lt 200 ] && span=200
echo "crash soak: $KILLS kills; an ingest takes ~$((span * 10 / 12)) ms here; kills at random moments within ${span} ms"

kills=0 k_ingest=0 k_serve=0 attempts=0 t_start=$(date +%s)
: >"$T/fused.log"; : >"$T/verify.log"
while [ "$kills" -lt "$KILLS" ]; do
    if [ -n "${SOAK_MAX_S:-}" ] && [ $(($(date +%s) - t_start)) -ge "$SOAK_MAX_S" ]; then
        echo "crash soak: stopping after ${SOAK_MAX_S} s (SOAK_MAX_S) at $kills kills"
        break
    fi
    attempts=$((attempts + 1))
    set -- $(combo "$attempts")
    w="$1-$2-$3" # a new combination every time: always something new to write
    if [ $((attempts % 4)) -eq 0 ]; then
        # a server answering a request over new documents
        "$KVFUSE" serve -m "$SYN" "${ST[@]}" --port 0 --port-file "$T/port" --ctx 8192 -q >"$T/serve.log" 2>&1 &
        pid=$!
        (
            for _ in $(seq 1 100); do [ -s "$T/port" ] && break; sleep 0.02; done
            port=$(cat "$T/port" 2>/dev/null) # the victim may be killed (and the file gone) meanwhile
            [ -n "$port" ] && curl -s -m 30 "http://127.0.0.1:$port/v1/chat/completions" \
                -d "{\"messages\": [{\"role\": \"user\", \"content\": \"Summarise.\"}], \"documents\": [\"Soak document $attempts: $(head -c 2000 "${DOCS[0]}" | tr -d '\"\\\n' | cut -c$((attempts % 500 + 1))-)\"], \"max_tokens\": 4}" >/dev/null
        ) &
        cpid=$!
        kind=serve
    else
        ingest "$w" "$T/v-$w.json" >/dev/null 2>"$T/victim.err" &
        pid=$!
        cpid=
        kind=ingest
    fi
    delay=$((RANDOM % span))
    sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
    if kill -9 "$pid" 2>/dev/null; then
        kills=$((kills + 1))
        [ "$kind" = serve ] && k_serve=$((k_serve + 1)) || k_ingest=$((k_ingest + 1))
        wait "$pid" 2>/dev/null
    else
        wait "$pid" 2>/dev/null
        rc=$?
        # finished before the kill: an acknowledged ingest
        [ "$kind" = ingest ] && [ "$rc" -eq 0 ] && mv "$T/v-$w.json" "$T/ack/$w.json"
        span=$((span * 3 / 4)); [ "$span" -lt 50 ] && span=50
    fi
    [ -n "$cpid" ] && { kill "$cpid" 2>/dev/null; wait "$cpid" 2>/dev/null; }
    rm -f "$T/port" "$T/v-$w.json"
    [ -e "$S/data.mdb" ] || continue
    verify
    acks=("$T"/ack/*.json)
    if [ -e "${acks[0]}" ]; then
        a=${acks[$((kills % ${#acks[@]}))]}
        fused "$(basename "$a" .json)"
        if [ $((kills % CHECK_EVERY)) -eq 0 ] || [ "$kills" -ge "$KILLS" ]; then
            for a in "${acks[@]}"; do fused "$(basename "$a" .json)"; done
            printf 'crash soak: %d kills (%d ingest, %d serve), %d s, %d acknowledged ingests\n' "$kills" "$k_ingest" \
                "$k_serve" $(($(date +%s) - t_start)) "${#acks[@]}"
        fi
    fi
done
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
PIDS=()
verify
for a in "$T"/ack/*.json; do fused "$(basename "$a" .json)"; done

"$PY" - "$T" "$kills" "$k_ingest" "$k_serve" "$attempts" $(($(date +%s) - t_start)) <<'PY'
import glob, json, os, sys
T, kills, ki, ks, att, secs = sys.argv[1], *map(int, sys.argv[2:])
ver = [l.split() for l in open(os.path.join(T, "verify.log")) if l.strip()]
fus = [l.split() for l in open(os.path.join(T, "fused.log")) if l.strip()]
ver_fail = sum(1 for v in ver if v[0] != "0")
entries_checked = sum(max(int(v[1]), 0) for v in ver)
corrupt_found = sum(max(int(v[2]), 0) for v in ver)
errors = sum(1 for f in fus if f[0] == "error")
ok = [f for f in fus if f[0] != "error"]
lost = sum(int(f[0]) for f in ok)
met_bad = sum(int(f[1]) for f in ok)
served_bad = sum(1 for f in ok if f[2] == "0")
chunks_served = sum(int(f[3]) for f in ok)
acks = len(glob.glob(os.path.join(T, "ack", "*.json")))
r = {"kills": kills, "kills_ingest": ki, "kills_serve": ks, "victims_started": att, "seconds": secs,
     "verifications": len(ver), "verify_failures": ver_fail, "entries_checked": entries_checked,
     "corrupt_entries_found": corrupt_found, "fused_requests": len(ok), "fused_request_errors": errors,
     "chunks_served_from_store": chunks_served, "corrupt_entries_served": served_bad,
     "acknowledged_ingests": acks, "acknowledged_chunks_lost": lost, "corrupt_entries_met_by_readers": met_bad}
print(json.dumps(r, indent=1))
ok_all = ver_fail == 0 and served_bad == 0 and lost == 0 and errors == 0
print("crash soak:", "PASS" if ok_all else "FAIL")
sys.exit(0 if ok_all else 1)
PY
