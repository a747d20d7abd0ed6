#!/bin/bash
# fused_attn.sh - time to first token of a fused prefill (a3 at r = 0.15 by default) whose
# recomputed rows use sparse attention, against the same fusion with dense attention, same
# model, same documents, same run (issue 12: "a3 TTFT at 16k with sparse recompute"). The
# documents are Paul Graham essays cut into pieces of about DOC tokens, as many as make about
# L tokens; the question asks about them. Each mode runs `kvfuse ask --json` with its own
# in-memory chunk cache, so the documents' chunks are precomputed in every run (not counted:
# TTFT is the fusion's own time, ask's ttft_ms). Not part of `make test`.
#   bench/fused_attn.sh [MODEL]       (default qwen2.5-coder-0.5b)
#   env: LENGTHS ("16384"), MODES ("dense sale"), METHOD (a3), RATIO (0.15), DOC (512),
#        REPS (1), ATTN_ARGS (extra options for the sparse modes), SHARED (../shared),
#        JSON (write every run there, one object per line)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-qwen2.5-coder-0.5b}
LENGTHS=${LENGTHS:-16384}
MODES=${MODES:-dense sale}
METHOD=${METHOD:-a3}
RATIO=${RATIO:-0.15}
DOC=${DOC:-512}
REPS=${REPS:-1}
SHARED=${SHARED:-../shared}
KVFUSE=${KVFUSE:-build/kvfuse}
PY=${PYTHON:-python3}
[ -x "$KVFUSE" ] || { echo "fused_attn: $KVFUSE not found (make cli)" >&2; exit 1; }
ESSAYS="$SHARED/data/needle/PaulGrahamEssays"
[ -d "$ESSAYS" ] || { echo "fused_attn: $ESSAYS not found (set SHARED)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=${JSON:-$work/runs.jsonl}
: > "$out"
cat "$ESSAYS"/*.txt > "$work/all.txt"
for L in $LENGTHS; do
    # documents of ~DOC tokens (~4.2 characters per token); the real total is reported
    "$PY" - "$work/all.txt" "$work/docs$L.json" "$L" "$DOC" <<'EOF'
import json, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
L, D = int(sys.argv[3]), int(sys.argv[4])
n, size = max(1, L // D), D * 42 // 10
json.dump([text[i * size:(i + 1) * size] for i in range(n)], open(sys.argv[2], "w"))
EOF
    for r in $(seq 1 "$REPS"); do
        for mode in $MODES; do
            extra=()
            [ "$mode" != dense ] && extra=(${ATTN_ARGS:-})
            echo "fused_attn: ~$L tokens, $METHOD with $mode attention, rep $r/$REPS ..." >&2
            "$KVFUSE" ask -m "$MODEL" --docs-json "$work/docs$L.json" --method "$METHOD" --ratio "$RATIO" \
                -q "What does the author say about startups?" -n 8 --json --attn "$mode" "${extra[@]}" \
                2>"$work/err" > "$work/one.json" || { cat "$work/err" >&2; exit 1; }
            "$PY" -c 'import json, sys; d = json.loads(open(sys.argv[1]).read().splitlines()[-1]); d.update(length=int(sys.argv[2]), mode=sys.argv[3], rep=int(sys.argv[4])); print(json.dumps(d))' \
                "$work/one.json" "$L" "$mode" "$r" >> "$out"
        done
    done
done
"$PY" - "$out" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
print("%7s %-6s %-7s %8s %10s %12s %12s %8s %s" % ("length", "mode", "method", "tokens", "recomputed", "TTFT ms", "recompute ms", "x dense", "same text as dense"))
for L in sorted({r["length"] for r in runs}):
    by = {}
    for r in runs:
        if r["length"] == L: by.setdefault(r["mode"], []).append(r)
    base = statistics.median(x["ttft_ms"] for x in by["dense"]) if "dense" in by else None
    dense_text = by["dense"][0]["text"] if "dense" in by else None
    for mode, rs in by.items():
        t = statistics.median(x["ttft_ms"] for x in rs)
        print("%7d %-6s %-7s %8d %10d %12.1f %12.1f %8s %s" % (
            L, mode, rs[0]["method"], rs[0]["total_tokens"], rs[0]["recomputed_tokens"], t,
            statistics.median(x["recompute_ms"] for x in rs), "%.2f" % (t / base) if base else "-",
            "-" if dense_text is None or mode == "dense" else ("yes" if rs[0]["text"] == dense_text else "no: %r" % rs[0]["text"][:40])))
EOF
