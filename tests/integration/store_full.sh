#!/usr/bin/env bash
# store_full.sh - a full LMDB map and a full disk give a clear error and lose nothing already
# stored: `kvfuse ingest` into a store with a 1 MiB map, into one limited by a file size limit
# (ulimit -f) and, where this process may mount, into a 3 MiB tmpfs, must each stop with a
# message naming the cause, after which the store verifies, keeps what it had and still
# serves `kvfuse ask` from it. A disk budget below the map size instead evicts the least
# recently used entries and completes. Synthetic model (fast).
source "$(dirname "$0")/store_common.sh"

first_chunks() { # manifest n out
    "${PYTHON:-python3}" -c 'import json,sys; d=json.load(open(sys.argv[1])); json.dump(d[:int(sys.argv[2])], open(sys.argv[3],"w"))' "$@"
}
entries_of() {
    "$KVFUSE" store stats --store "$1" --json | "${PYTHON:-python3}" -c 'import json,sys; print(json.load(sys.stdin)["tiers"]["disk"]["entries"])'
}
# run the ingest under $WRAP (a command prefix) with extra arguments $EXTRA
ingest_into() { # store manifest
    ${WRAP[@]+"${WRAP[@]}"} "$KVFUSE" ingest -m "$SYN" --store "$1" --chunk-tokens 64 --manifest "$2" -q \
        ${EXTRA[@]+"${EXTRA[@]}"} "${DOCS[@]}"
}
full_case() { # name store expected-message
    local name=$1 S=$2 msg=$3 rc n out
    ingest_into "$S" "$T/$name.json" >"$T/$name.out" 2>&1
    rc=$?
    check "$name: ingest fails (rc $rc)" [ "$rc" -ne 0 ]
    check "$name: the error says '$msg' ($(grep -m1 'kvfuse ingest' "$T/$name.out"))" grep -q "$msg" "$T/$name.out"
    check "$name: the error says nothing stored is lost" grep -q "nothing stored before is lost" "$T/$name.out"
    n=$(entries_of "$S")
    echo "$name: $n entries stored before it filled"
    check "$name: entries were kept ($n)" [ "${n:-0}" -gt 2 ]
    check "$name: the store verifies" "$KVFUSE" store verify --store "$S" -q
    ingest_into "$S" "$T/$name.2.json" >"$T/$name.2.out" 2>&1
    check "$name: a retry fails cleanly too" [ $? -ne 0 ]
    check "$name: the retry lost nothing" [ "$(entries_of "$S")" -ge "$n" ]
    first_chunks "$T/$name.json" 3 "$T/$name.3.json"
    out=$("$KVFUSE" ask -m "$SYN" --store "$S" --docs-json "$T/$name.3.json" -q "what" -n 2 --json 2>"$T/$name.ask")
    check "$name: ask succeeds ($(tail -1 "$T/$name.ask"))" [ $? -eq 0 ]
    [ -n "$out" ] && check "$name: ask found the chunks stored before" [ "$(json_field "$out" 'd["chunk_misses"]')" = 0 ]
}

# 1. a full LMDB map
WRAP=() EXTRA=(--map-size 1M)
full_case mapfull "$T/s1" "LMDB map is full"

# 2. a disk budget below the map size: least recently used entries go, the ingest completes
EXTRA=(--map-size 4M --disk-budget 2M)
check "budget: ingest completes under a budget" ingest_into "$T/s2" "$T/budget.json"
out=$("$KVFUSE" store stats --store "$T/s2" --json)
echo "budget: $out"
check "budget: entries were evicted" [ "$(json_field "$out" 'd["tiers"]["disk"]["evictions"]')" -gt 0 ]
check "budget: bytes within the budget" [ "$(json_field "$out" 'd["tiers"]["disk"]["bytes"]')" -le $((2 << 20)) ]
check "budget: the store verifies" "$KVFUSE" store verify --store "$T/s2" -q
check "budget: gc to 1 MiB" "$KVFUSE" store gc --store "$T/s2" --target 1M
check "budget: bytes within 1 MiB after gc" [ "$(json_field "$("$KVFUSE" store stats --store "$T/s2" --json)" 'd["tiers"]["disk"]["bytes"]')" -le $((1 << 20)) ]

# 3. a full disk, as a file size limit (works everywhere)
WRAP=(bash -c 'ulimit -f 2048; exec "$@"' ulimit) EXTRA=()
full_case fsize "$T/s3" "disk is full"

# 4. a really full file system: a 3 MiB tmpfs, when this process may mount one
mkdir -p "$T/tmpfs"
if mount -t tmpfs -o size=3m tmpfs "$T/tmpfs" 2>/dev/null; then
    cleanup_hooks+=("umount '$T/tmpfs'")
    WRAP=() EXTRA=()
    full_case tmpfs "$T/tmpfs/store" "disk is full"
    umount "$T/tmpfs"
else
    echo "tmpfs: cannot mount here (not root?); the file size limit case stands in for it"
fi
finish
