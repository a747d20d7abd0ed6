#!/usr/bin/env bash
# store_crash.sh - crash safety of the chunk store: `kvfuse ingest` is killed with SIGKILL at
# random moments (at least 20 kills that hit a running process: during model loading, chunk
# computation, LMDB commits and fsyncs), each time into the same store with a different chunk
# window so there is always new data to write. After every kill the store must open and
# `kvfuse store verify` must pass (every entry's checksums and the LRU index: nothing half
# written). Finally an uninterrupted ingest completes and `kvfuse ask` answers over its chunks
# with every chunk served from the store, none corrupt. Synthetic model (fast).
source "$(dirname "$0")/store_common.sh"

S=$T/store
# calibrate: how long one full ingest takes here
t0=$(date +%s%N)
"$KVFUSE" ingest -m "$SYN" --store "$T/calib" --chunk-tokens 100 -q "${DOCS[@]}" || bad "calibration ingest"
full_ms=$((($(date +%s%N) - t0) / 1000000))
rm -rf "$T/calib"
[ "$full_ms" -lt 200 ] && full_ms=200
echo "one ingest takes ~${full_ms} ms; killing at random moments within $((full_ms * 12 / 10)) ms"

kills=0 attempts=0 verify_bad=0
span=$((full_ms * 12 / 10))
RANDOM=4242
while [ "$kills" -lt 22 ] && [ "$attempts" -lt 150 ]; do
    attempts=$((attempts + 1))
    window=$((64 + 5 * (attempts % 100)))
    "$KVFUSE" ingest -m "$SYN" --store "$S" --chunk-tokens "$window" -q "${DOCS[@]}" 2>"$T/ingest.err" &
    pid=$!
    delay=$((RANDOM % span))
    sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
    if kill -9 "$pid" 2>/dev/null; then
        kills=$((kills + 1))
    else # it had finished already (this machine is faster or less busy than when calibrated)
        span=$((span * 3 / 4)); [ "$span" -lt 50 ] && span=50
    fi
    wait "$pid" 2>/dev/null
    [ -e "$S/data.mdb" ] || continue # killed before the store was created
    if ! "$KVFUSE" store verify --store "$S" -q >"$T/verify.out" 2>&1; then
        verify_bad=$((verify_bad + 1))
        bad "verify after kill $kills (at ${delay} ms): $(cat "$T/verify.out")"
    fi
done
echo "$kills kills in $attempts runs; $verify_bad failed verifications"
check "at least 20 kills hit a running ingest ($kills)" [ "$kills" -ge 20 ]
check "the store verifies after every kill" [ "$verify_bad" -eq 0 ]
check "store stats opens the store" "$KVFUSE" store stats --store "$S"
entries=$("$KVFUSE" store stats --store "$S" --json | "${PYTHON:-python3}" -c 'import json,sys; print(json.load(sys.stdin)["tiers"]["disk"]["entries"])')
echo "entries after the kills: $entries"
check "entries survived the kills" [ "${entries:-0}" -gt 0 ]

# an uninterrupted run completes, then ask finds every chunk in the store
check "a final ingest completes" "$KVFUSE" ingest -m "$SYN" --store "$S" --chunk-tokens 100 \
    --manifest "$T/manifest.json" -q "${DOCS[@]}"
check "verify after the final ingest" "$KVFUSE" store verify --store "$S" -q
"${PYTHON:-python3}" -c 'import json,sys; d=json.load(open(sys.argv[1])); json.dump(d[:6], open(sys.argv[2],"w"))' \
    "$T/manifest.json" "$T/docs6.json"
out=$("$KVFUSE" ask -m "$SYN" --store "$S" --docs-json "$T/docs6.json" -q "what is it about" \
    --method a3 -n 4 --json 2>"$T/ask.err")
rc=$?
check "ask answers after the crashes (rc $rc: $(tail -2 "$T/ask.err"))" [ "$rc" -eq 0 ]
if [ "$rc" -eq 0 ]; then
    check "every chunk came from the store" [ "$(json_field "$out" 'd["chunk_misses"]')" = 0 ]
    check "no corrupt entry was met" [ "$(json_field "$out" 'd["store"]["disk"]["bad_entries"]')" = 0 ]
    check "the disk tier served the chunks" [ "$(json_field "$out" 'd["store"]["disk"]["chunk_hits"]')" = 7 ]
fi
finish
