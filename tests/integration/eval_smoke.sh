#!/usr/bin/env bash
# eval_smoke.sh - `kvfuse eval` end to end with the real model on one short needle example
# (1024 haystack tokens, depth 0.5): every method runs once on the same ids and its record has
# the documented fields and consistent numbers; a rerun skips the finished example; adding a
# ratio runs only the missing run (full runs again as the reference but is not written twice);
# a line cut short by a crash is tolerated and the next record starts on its own line; a rerun
# with other settings is refused; --report-only rebuilds summary.json / summary.md / report.*
# and the SVG plots; --show prints CacheBlend's MuSiQue prompt segments. About 1 minute.
set -uo pipefail
SHARED=${KVF_SHARED:-../shared}
if [ ! -d "$SHARED/data/needle/PaulGrahamEssays" ] || [ ! -f "$SHARED/data/musique-cacheblend/musique_s.json" ]; then
    echo "SKIP: eval_smoke needs the shared data in $SHARED/data (set KVF_SHARED)"; echo "0 passed, 0 failed"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=$tmp/out
ev() {
    "$KVFUSE" eval -m "$KVFUSE_MODEL" --dataset needle --data "$SHARED/data/needle/PaulGrahamEssays" \
        --lengths 1024 --depths 0.5 --out "$out" --no-progress "$@"
}
ev --methods full,prefix,reuse,epic,cacheblend,a3 2>"$tmp/err1"; rc1=$?
cp "$out/results.jsonl" "$tmp/run1.jsonl" 2>/dev/null
ev --methods full,prefix,reuse,epic,cacheblend,a3 2>"$tmp/err2"; rc2=$?
printf '{"id": "L1024-d0' >>"$out/results.jsonl" # a crash in the middle of a line
ev --methods a3 --ratios 0.15,0.3 2>"$tmp/err3"; rc3=$?
ev --methods full -n 8 2>"$tmp/err4"; rc4=$?
rm -f "$out/summary.json" "$out/report.html"
"$KVFUSE" eval --report-only --out "$out" 2>"$tmp/err5"; rc5=$?
"$KVFUSE" eval -m "$KVFUSE_MODEL" --dataset musique --data "$SHARED/data/musique-cacheblend/musique_s.json" \
    --limit 1 --show --out "$tmp/show" >"$tmp/show.jsonl" 2>"$tmp/err6"; rc6=$?
ev --methods a3 --ratios 0.1,auto --fidelity 0.9 --out "$tmp/auto" 2>"$tmp/err7"; rc7=$?
"$KVFUSE" eval -m "$KVFUSE_MODEL" --dataset musique --data "$SHARED/data/musique-cacheblend/musique_s.json" \
    --offset 30 --limit 2 --show --out "$tmp/show2" >"$tmp/show2.jsonl" 2>"$tmp/err8"; rc8=$?
for i in 1 2 3 4 5 6 7 8; do sed "s/^/  [run $i] /" "$tmp/err$i" | grep -v '^  \[run [0-9]\] eval: loading'; done

"$PYTHON" - "$tmp" "$out" "$rc1" "$rc2" "$rc3" "$rc4" "$rc5" "$rc6" "$rc7" "$rc8" <<'PY'
import json, math, os, sys
tmp, out = sys.argv[1], sys.argv[2]
rc = [int(x) for x in sys.argv[3:]]
passed = failed = 0
def check(cond, what):
    global passed, failed
    if cond: passed += 1
    else:
        failed += 1; print("FAIL:", what)
def lines(path):
    try: return open(path).read().split("\n")
    except OSError: return []
def records(path):
    rs = []
    for l in lines(path):
        if not l.strip(): continue
        try: rs.append(json.loads(l))
        except ValueError: pass
    return rs
err = [open(f"{tmp}/err{i}").read() for i in range(1, 7)]
check(rc[0] == 0, f"first run succeeds (rc {rc[0]})")
run1 = records(f"{tmp}/run1.jsonl")
key = lambda r: (r["method"], r["ratio"])
check(sorted(map(key, run1), key=str) == sorted([("full", None), ("prefix", None), ("reuse", None), ("epic", None),
      ("cacheblend", 0.15), ("a3", 0.15)], key=str), f"one record per method: {[key(r) for r in run1]}")
check(run1 and run1[0]["method"] == "full", "full runs first")
fields = ["v", "dataset", "id", "index", "method", "ratio", "length", "depth", "metric", "gold", "answer",
          "answer_tokens", "stop", "ref_answer", "score", "em", "fid_em", "fid_f1", "same_tokens", "kl",
          "top1_first", "tf_agree", "tf_match", "tf_positions", "total_tokens", "prefix_tokens",
          "question_tokens", "n_docs", "recomputed_tokens", "reused_tokens", "recomputed_frac",
          "compute_frac", "ttft_ms", "load_ms", "rope_ms", "recompute_ms", "first_token_ms",
          "precompute_ms", "precompute_misses", "decode_ms", "decode_steps", "tpot_ms",
          "kv_bytes_loaded", "chunk_hits", "chunk_misses", "evict", "kept_after_evict", "threads", "time"]
full = next((r for r in run1 if r["method"] == "full"), None)
for r in run1:
    m = key(r)
    missing = [f for f in fields if f not in r]
    check(not missing, f"{m}: every field present (missing {missing})")
    if missing: continue
    check(r["id"] == "L1024-d050" and r["dataset"] == "needle" and r["length"] == 1024 and r["depth"] == 0.5, f"{m}: example identity")
    check(r["total_tokens"] == full["total_tokens"] and r["question_tokens"] == full["question_tokens"], f"{m}: same token ids as full (same T and q)")
    parts = r["load_ms"] + r["rope_ms"] + r["recompute_ms"] + r["first_token_ms"]
    check(r["ttft_ms"] > 0 and abs(r["ttft_ms"] - parts) <= 1e-3 * r["ttft_ms"] + 0.01, f"{m}: TTFT = sum of its parts ({r['ttft_ms']} vs {parts})")
    check(0 <= r["tf_agree"] <= 1 and r["tf_positions"] == len(full["answer_tokens"]), f"{m}: teacher forcing over full's answer tokens")
    check(r["tf_agree"] == r["tf_match"] / r["tf_positions"], f"{m}: tf_agree = tf_match / tf_positions")
    check(r["kl"] is not None and r["kl"] >= 0, f"{m}: KL >= 0")
    check(r["ref_answer"] == full["answer"], f"{m}: ref_answer is full's answer")
    check(r["score"] in (0, 1) and r["metric"] == "substring", f"{m}: substring score")
    check(r["same_tokens"] == (r["answer_tokens"] == full["answer_tokens"]), f"{m}: same_tokens")
    if r["same_tokens"]:
        check(r["fid_em"] == 1 and r["tf_agree"] == 1 and r["top1_first"] == 1, f"{m}: identical answer -> perfect fidelity")
    check(len(r["gold"]) == 1 and len(r["gold"][0]) == 7 and r["gold"][0].isdigit(), f"{m}: the gold is a 7-digit number")
    check(r["tpot_ms"] is None or abs(r["tpot_ms"] - r["decode_ms"] / r["decode_steps"]) < 1e-2, f"{m}: TPOT = decode ms / steps")
    check(abs(r["recomputed_frac"] - r["recomputed_tokens"] / r["total_tokens"]) < 1e-5, f"{m}: recomputed_frac")
if full:
    check(full["kl"] == 0 and full["fid_em"] == 1 and full["tf_agree"] == 1, "full against itself: KL 0, agreement 1")
    check(full["recomputed_tokens"] == full["total_tokens"] and full["kv_bytes_loaded"] == 0, "full recomputes everything, loads nothing")
    check(full["score"] == 1, f"full finds the needle at 1024 tokens: {full['answer']!r} (gold {full['gold']})")
    print(f"  full answer: {full['answer']!r}  ttft {full['ttft_ms']:.0f} ms")
for r in run1:
    if r["method"] in ("cacheblend", "a3") and full:
        T, q = r["total_tokens"], r["question_tokens"]
        check(r["recomputed_tokens"] == math.floor((T - q) * 0.15) + q, f"{r['method']}: |I| = floor((T - q) r) + q")
        check(r["kv_bytes_loaded"] > 0 and r["precompute_misses"] > 0, f"{r['method']}: chunk KV came from the (warm) cache")
        print(f"  {r['method']:10s} ttft {r['ttft_ms']:.0f} ms  tf {r['tf_agree']:.2f}  kl {r['kl']:.4f}  {r['answer']!r}")

check(rc[1] == 0 and "1 already complete, 0 to run" in err[1], "a rerun skips the finished example")
check(rc[2] == 0, f"adding a ratio runs (rc {rc[2]})")
raw = lines(f"{out}/results.jsonl")
bad = [l for l in raw if l.strip() and not l.startswith("{\"v\"")]
check(len(bad) == 1 and bad[0] == '{"id": "L1024-d0', f"the cut line stays on its own line: {bad}")
recs = records(f"{out}/results.jsonl")
check(len(recs) == 7, f"exactly one new record (a3@0.3): {len(recs)} records")
check(sum(1 for r in recs if r["method"] == "full") == 1, "full is not written twice")
check(any(r["method"] == "a3" and r["ratio"] == 0.3 for r in recs), "a3@0.3 recorded")
check("line" in err[2] and "not a complete record" in err[2], "the cut line is reported")
check(rc[3] != 0 and "n_predict" in err[3], "other settings are refused")
check(rc[4] == 0, "--report-only succeeds")
try: s = json.load(open(f"{out}/summary.json"))
except Exception: s = {}
rows = s.get("rows", [])
check(len(rows) == 7 and s.get("examples") == 1 and s.get("bad_lines") == 1, f"summary.json: 7 rows, 1 example, 1 bad line")
row_keys = ["method", "ratio", "n", "score", "fid_em", "fid_f1", "kl", "top1_first", "tf_agree", "ttft_ms", "load_ms",
            "rope_ms", "recompute_ms", "first_token_ms", "tpot_ms", "recomputed_frac", "compute_frac",
            "kv_bytes_loaded", "speedup_vs_full", "score_vs_full"]
check(all(all(k in r for k in row_keys) for r in rows), "summary rows have every aggregate")
check([r["method"] for r in rows] == ["full", "prefix", "reuse", "epic", "cacheblend", "a3", "a3"], f"rows in method order: {[r['method'] for r in rows]}")
md = open(f"{out}/summary.md").read() if os.path.exists(f"{out}/summary.md") else ""
check("| method | ratio | n |" in md and "| a3 | 0.3 | 1 |" in md, "summary.md table")
for f in ["report.md", "report.html", "quality_vs_ratio.svg", "ttft_vs_ratio.svg", "heatmap_full.svg",
          "heatmap_cacheblend_0.15.svg", "heatmap_a3_0.15.svg", "heatmap_a3_0.3.svg"]:
    check(os.path.exists(f"{out}/{f}"), f"{f} written")
html = open(f"{out}/report.html").read() if os.path.exists(f"{out}/report.html") else ""
check(html.count("<svg") >= 6, "report.html embeds the plots")
check(rc[5] == 0, "--show succeeds")
show = records(f"{tmp}/show.jsonl")
check(len(show) == 1 and len(show[0]["segment_tokens"]) == 12 and show[0]["metric"] == "f1", "musique: prefix + 10 passages + question")
if show:
    e = show[0]
    check(e["question"].startswith("\n\nAnswer the question directly") and e["question"].endswith("?\nAnswer:"), "CacheBlend's question segment")
    check(e["instruction"].startswith("You will be asked a question") and e["docs"][0].endswith("\n\n"), "CacheBlend's prefix and passages")
    check(4000 < e["total_tokens"] < 8192, f"about 6k tokens: {e['total_tokens']}")
check(not os.path.exists(f"{tmp}/show"), "--show writes nothing")
show2 = records(f"{tmp}/show2.jsonl")
check(rc[7] == 0 and [e["id"] for e in show2] == ["musique-0030", "musique-0031"], f"--offset 30 --limit 2: examples 30 and 31 ({[e['id'] for e in show2]})")
# --ratios auto: a record with ratio "auto", the ratio it picked within the default bounds, the
# target in the configuration; summary and plots name it
check(rc[6] == 0, f"--ratios 0.1,auto succeeds (rc {rc[6]})")
ar = records(f"{tmp}/auto/results.jsonl")
auto = [r for r in ar if r["method"] == "a3" and r["ratio"] == "auto"]
check(len(ar) == 2 and len(auto) == 1, f"a3@0.1 and a3@auto recorded: {[key(r) for r in ar]}")
if auto:
    a = auto[0]
    T, q = a["total_tokens"], a["question_tokens"]
    check(a["fidelity"] == 0.9 and 0.05 - 1e-6 <= a["ratio_used"] <= 0.5 + 1e-6, f"auto: fidelity 0.9, ratio_used {a['ratio_used']} in [0.05, 0.5]")
    check(a["recomputed_tokens"] - q == round(a["ratio_used"] * (T - q)), "auto: recomputed = ratio_used (T - q) + q")
    check(0 < a["score_mass"] <= 1, "auto: score_mass in (0, 1]")
    print(f"  a3@auto picked ratio {a['ratio_used']:.3f} (score mass {a['score_mass']:.3f})  tf {a['tf_agree']:.2f}  {a['answer']!r}")
try: cfg = json.load(open(f"{tmp}/auto/config.json"))
except Exception: cfg = {}
check(cfg.get("fidelity") == 0.9 and cfg.get("ratio_min") == 0.05, "auto: the target and bounds are part of the configuration")
amd = open(f"{tmp}/auto/summary.md").read() if os.path.exists(f"{tmp}/auto/summary.md") else ""
check("| a3 | auto (" in amd, "summary.md: the auto row shows its mean ratio")
try: asum = json.load(open(f"{tmp}/auto/summary.json"))
except Exception: asum = {}
check(any(r.get("ratio") == "auto" and "ratio_used" in r for r in asum.get("rows", [])), "summary.json: ratio \"auto\" with ratio_used")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
