#!/usr/bin/env bash
# store_concurrent.sh - several processes on one chunk store at once: two `kvfuse ingest` runs
# over overlapping documents (both computing and writing, racing for the same keys) while
# `kvfuse ask` processes read from the same store in a loop. Every process must succeed, no
# reader may meet a corrupt entry, the store must verify afterwards, and each chunk must be
# stored once (the overlap is not duplicated). Synthetic model (fast).
source "$(dirname "$0")/store_common.sh"

S=$T/store
# a first small ingest so the readers have something to read from the start
"$KVFUSE" ingest -m "$SYN" --store "$S" --chunk-tokens 96 --manifest "$T/m0.json" -q "${DOCS[0]}" \
    || bad "seed ingest"
"${PYTHON:-python3}" -c 'import json,sys; d=json.load(open(sys.argv[1])); json.dump(d[:5], open(sys.argv[2],"w"))' \
    "$T/m0.json" "$T/docs5.json"

# writers: A ingests docs 0,1 and B docs 1,2 (doc 1 shared), both in two dtypes, each run
# twice (the second finds everything stored: reads racing the other writer's commits)
writer() { # manifest docs...
    local m=$1; shift
    for dt in f16 q8 f16 q8; do
        "$KVFUSE" ingest -m "$SYN" --store "$S" --chunk-tokens 80 --dtype $dt --manifest "$m" -q "$@" || return 1
    done
}
writer "$T/mA.json" "${DOCS[0]}" "${DOCS[1]}" >"$T/a.out" 2>&1 &
pa=$!
writer "$T/mB.json" "${DOCS[1]}" "${DOCS[2]}" >"$T/b.out" 2>&1 &
pb=$!
# readers, until both writers are done
reads=0 read_fail=0 read_bad=0 read_miss=0
while kill -0 "$pa" 2>/dev/null || kill -0 "$pb" 2>/dev/null || [ "$reads" -lt 4 ]; do
    out=$("$KVFUSE" ask -m "$SYN" --store "$S" --docs-json "$T/docs5.json" -q "what" --method reuse -n 2 --json 2>>"$T/ask.err")
    if [ $? -ne 0 ]; then read_fail=$((read_fail + 1)); else
        [ "$(json_field "$out" 'd["store"]["disk"]["bad_entries"]')" = 0 ] || read_bad=$((read_bad + 1))
        [ "$(json_field "$out" 'd["chunk_misses"]')" = 0 ] || read_miss=$((read_miss + 1))
    fi
    reads=$((reads + 1))
done
wait "$pa"; ra=$?
wait "$pb"; rb=$?
echo "$reads reads during the ingests"
check "ingest A succeeded ($(tail -1 "$T/a.out"))" [ "$ra" -eq 0 ]
check "ingest B succeeded ($(tail -1 "$T/b.out"))" [ "$rb" -eq 0 ]
check "every concurrent ask succeeded ($read_fail failed: $(tail -2 "$T/ask.err"))" [ "$read_fail" -eq 0 ]
check "no reader met a corrupt entry" [ "$read_bad" -eq 0 ]
check "readers found every chunk in the store" [ "$read_miss" -eq 0 ]
check "the store verifies" "$KVFUSE" store verify --store "$S" -q

# each distinct chunk once: f16 = prefix + seed, A and B chunks; q8 = prefix + A and B chunks
read -r f16 q8 < <("${PYTHON:-python3}" -c '
import json,sys
s,a,b=(set(json.load(open(f))) for f in sys.argv[1:4])
print(len(s|a|b), len(a|b))' "$T/m0.json" "$T/mA.json" "$T/mB.json")
entries=$("$KVFUSE" store stats --store "$S" --json | "${PYTHON:-python3}" -c 'import json,sys; print(json.load(sys.stdin)["tiers"]["disk"]["entries"])')
want=$((1 + f16 + 1 + q8))
echo "entries: $entries (expected $want: $f16 distinct f16 chunks, $q8 distinct q8 chunks, 2 prefixes)"
check "each chunk stored exactly once ($entries vs $want)" [ "$entries" -eq "$want" ]

# the union answers from the store alone
out=$("$KVFUSE" ask -m "$SYN" --store "$S" --docs-json "$T/mB.json" -q "what" --method a3 -n 2 --json 2>"$T/ask2.err")
check "ask over B's chunks succeeds" [ $? -eq 0 ]
check "all of B's chunks hit" [ "$(json_field "$out" 'd["chunk_misses"]')" = 0 ]
finish
