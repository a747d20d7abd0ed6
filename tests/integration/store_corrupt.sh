#!/usr/bin/env bash
# store_corrupt.sh - a flipped byte in a stored entry is detected, never used, dropped and
# recomputed. With the real model: chunks are ingested into a store and `kvfuse ask` gives a
# reference answer from them; then one byte is flipped inside an entry in the LMDB file
# (payload, token ids, header), and each time ask must still give exactly the reference answer
# with the damaged chunk recomputed (the store logs and counts it), `store verify` must name
# the damaged entry before it is repaired and pass after.
source "$(dirname "$0")/store_common.sh"
MODEL=${KVFUSE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -f "$MODEL" ] || { echo "store_corrupt: no model at $MODEL (make model)"; echo "0 passed, 1 failed"; exit 1; }

S=$T/store
head -c 2600 "${DOCS[0]}" >"$T/doc.txt"
check "ingest" "$KVFUSE" ingest -m "$MODEL" --store "$S" --chunk-tokens 200 --manifest "$T/m.json" -q "$T/doc.txt"
nchunks=$("${PYTHON:-python3}" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$T/m.json")
echo "$nchunks chunks"
Q="What is the main point of the text?"
ask() { "$KVFUSE" ask -m "$MODEL" --store "$S" --docs-json "$T/m.json" -q "$Q" --method a3 -n 12 --json 2>"$T/ask.err"; }
ref=$(ask)
check "reference ask" [ $? -eq 0 ]
ref_text=$(json_field "$ref" 'd["text"]')
echo "reference answer: $ref_text"
check "reference: every chunk from the store" [ "$(json_field "$ref" 'd["chunk_misses"]')" = 0 ]

# flip one byte of the entry with the most tokens: REGION is payload, ids or header
flip() {
    "${PYTHON:-python3}" - "$S" "$1" <<'PY'
import json, subprocess, sys, os
store, region = sys.argv[1], sys.argv[2]
ls = json.loads(subprocess.check_output([os.environ.get("KVFUSE", "build/kvfuse"), "store", "ls", "--store", store, "--json"]))
e = max(ls, key=lambda x: x["tokens"])
key = bytes.fromhex(e["key"])
path = store + "/data.mdb"
b = bytearray(open(path, "rb").read())
# every copy with this key: LMDB's free pages may still hold an earlier version of the entry
found = 0
with open(path, "r+b") as f:
    i = b.find(b"KVFCHUNK")
    while i >= 0:
        if b[i + 16:i + 32] == key:
            po = int.from_bytes(b[i + 76:i + 80], "little")
            pb = int.from_bytes(b[i + 80:i + 88], "little")
            at = {"payload": i + po + pb // 2, "ids": i + 128 + 4 * 7, "header": i + 60}[region]
            f.seek(at); f.write(bytes([b[at] ^ 0x10]))
            found += 1
        i = b.find(b"KVFCHUNK", i + 1)
assert found, "entry not found in the file"
print(e["key"])
PY
}
export KVFUSE
for region in payload ids header; do
    key=$(flip "$region") || { bad "flip a $region byte"; continue; }
    echo "flipped a $region byte of entry $key"
    if [ "$region" = header ]; then
        # verify finds it and names it; --repair removes it
        "$KVFUSE" store verify --store "$S" >"$T/v.out" 2>&1
        check "verify fails on a damaged $region" [ $? -ne 0 ]
        check "verify names the damaged entry" grep -q "$key" "$T/v.out"
        check "verify --repair" "$KVFUSE" store verify --store "$S" --repair -q
    fi
    out=$(ask)
    check "ask succeeds with a damaged $region ($(tail -1 "$T/ask.err"))" [ $? -eq 0 ]
    check "same answer as before the damage" [ "$(json_field "$out" 'd["text"]')" = "$ref_text" ]
    if [ "$region" != header ]; then
        check "the damage was detected and logged" grep -q "is corrupt" "$T/ask.err"
        check "the damaged chunk was recomputed" grep -q "ask: 1 chunks computed" "$T/ask.err"
    else
        check "the removed chunk was recomputed" grep -q "ask: 1 chunks computed" "$T/ask.err"
    fi
    check "fusion used only sound chunks" [ "$(json_field "$out" 'd["store"]["disk"]["bad_entries"]')" = 0 ]
    check "verify passes after the recompute ($region)" "$KVFUSE" store verify --store "$S" -q
done
bad_total=$("$KVFUSE" store stats --store "$S" --json | "${PYTHON:-python3}" -c 'import json,sys; print(json.load(sys.stdin)["tiers"]["disk"]["bad_entries"])')
check "store stats counts the dropped entries ($bad_total)" [ "$bad_total" -ge 3 ]
finish
