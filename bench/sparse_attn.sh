#!/bin/bash
# sparse_attn.sh - speed of sparse attention (issue 12: SALE and PowerAttention for prefill,
# MAC-Attention and LouisKV, modes "mac" and "louis", for decode) against dense attention on
# real text, same model,
# same run. For each length, a prompt of Paul Graham
# essays cut to about that many tokens is prefilled by `kvfuse generate` once per mode and
# repetition (the modes interleaved, so a change in machine load hits them alike), followed by
# N greedy tokens whose text is compared with dense's. Not part of `make test`.
#   bench/sparse_attn.sh [MODEL]      (default qwen2.5-coder-0.5b)
#   env: LENGTHS ("4096 16384"), MODES ("dense sale power"), REPS (1), N (16 tokens),
#        ATTN_ARGS (extra --attn-* options for every sparse mode), SHARED (../shared),
#        JSON (write every run there, one object per line)
# Prints per length and mode: prompt tokens, prefill tok/s (median of the reps), speed-up over
# dense, the share of keys read (prefill blocks for sale/power, decode keys for louis), decode
# tok/s (the first decode step, where LouisKV clusters the prompt's keys, included), the share
# of steps that reused (MAC: a state; LouisKV: the selection), and whether the continuation
# equals dense's.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-qwen2.5-coder-0.5b}
LENGTHS=${LENGTHS:-4096 16384}
MODES=${MODES:-dense sale power}
REPS=${REPS:-1}
N=${N:-16}
SHARED=${SHARED:-../shared}
KVFUSE=${KVFUSE:-build/kvfuse}
PY=${PYTHON:-python3}
[ -x "$KVFUSE" ] || { echo "sparse_attn: $KVFUSE not found (make cli)" >&2; exit 1; }
ESSAYS="$SHARED/data/needle/PaulGrahamEssays"
[ -d "$ESSAYS" ] || { echo "sparse_attn: $ESSAYS not found (set SHARED)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=${JSON:-$work/runs.jsonl}
: > "$out"
cat "$ESSAYS"/*.txt > "$work/all.txt"
for L in $LENGTHS; do
    # ~4.2 characters per token for these essays; the real count is reported
    head -c $((L * 42 / 10)) "$work/all.txt" > "$work/p$L.txt"
    for r in $(seq 1 "$REPS"); do
        for mode in $MODES; do
            extra=()
            [ "$mode" != dense ] && extra=(${ATTN_ARGS:-})
            if [ "$mode" = mac ] || [ "$mode" = louis ]; then # decode methods: dense prefill
                flags=(--attn dense --decode-attn "$mode")
            else
                flags=(--attn "$mode")
            fi
            echo "sparse_attn: ~$L tokens, $mode, rep $r/$REPS ..." >&2
            "$KVFUSE" generate -m "$MODEL" -f "$work/p$L.txt" -n "$N" --ctx $((L + N + 512)) --json \
                "${flags[@]}" "${extra[@]}" 2>"$work/err" > "$work/one.json" ||
                { cat "$work/err" >&2; exit 1; }
            "$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); d.update(length=int(sys.argv[2]), mode=sys.argv[3], rep=int(sys.argv[4])); print(json.dumps(d))' \
                "$work/one.json" "$L" "$mode" "$r" >> "$out"
        done
    done
done
"$PY" - "$out" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
print("%7s %-6s %8s %12s %8s %8s %10s %8s %8s %s" % ("length", "mode", "tokens", "prefill t/s", "x dense", "density", "decode t/s", "x dense", "reused", "same text as dense"))
for L in sorted({r["length"] for r in runs}):
    by = {}
    for r in runs:
        if r["length"] == L: by.setdefault(r["mode"], []).append(r)
    def tps(rs): return statistics.median(x["prompt_tokens"] / x["prefill_ms"] * 1e3 for x in rs)
    base = tps(by["dense"]) if "dense" in by else None
    dbase = statistics.median(x["decode_tok_s"] for x in by["dense"]) if "dense" in by else None
    dense_text = by["dense"][0]["text"] if "dense" in by else None
    for mode, rs in by.items():
        t = tps(rs)
        dt = statistics.median(x["decode_tok_s"] for x in rs)
        print("%7d %-6s %8d %12.1f %8s %8s %10.2f %8s %8s %s" % (
            L, mode, rs[0]["prompt_tokens"], t, "%.2f" % (t / base) if base else "-",
            "%.3f" % rs[0].get("attn_density", rs[0].get("louis_density")) if "attn_density" in rs[0] or "louis_density" in rs[0] else "-",
            dt, "%.2f" % (dt / dbase) if dbase else "-",
            "%.3f" % rs[0].get("mac_hit_rate", rs[0].get("louis_reuse_rate")) if "mac_hit_rate" in rs[0] or "louis_reuse_rate" in rs[0] else "-",
            "-" if dense_text is None or mode == "dense" else ("yes" if rs[0]["text"] == dense_text else "no: %r" % rs[0]["text"][:40])))
EOF
