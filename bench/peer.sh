#!/usr/bin/env bash
# peer.sh - benchmark kvfuse against llama.cpp on the same model, machine, threads and run.
#
# llama.cpp comes from the llama-cpp-python source distribution (pinned below), which vendors a
# fixed llama.cpp commit. The first run downloads it into third_party/ (ignored by git), builds only
# llama-bench and llama-simple (CMake Release, CPU only, -DGGML_NATIVE=ON, OpenMP on - llama.cpp's
# default threading), and later runs reuse that build. Then, for each prompt length, it runs
# llama-bench and `kvfuse bench --json` one after the other and prints a table of prefill and
# decode tokens/second with the kvfuse / llama.cpp ratio.
#
# What is compared (both sides use the same thread count):
#   prefill: llama-bench "pp<P>"           vs kvfuse prefill of a P-token prompt
#   decode : llama-bench "tg<G> @ d<P>"    vs kvfuse decode of G tokens after that P-token prompt
#            (-d P makes llama.cpp decode with P tokens already in its KV cache, as kvfuse does)
#
# kvfuse runs with its defaults (q16 matmul precision, best ISA) unless --kvfuse-args adds
# options, e.g. --kvfuse-args "--precision q8" for int8 activations like llama.cpp's.
#
# Usage: bench/peer.sh [--model PATH|NAME | --models all|LIST] [--threads N]
#                      [--prompts 512,2048,6144] [--gen 128] [--reps 3] [--json OUT.json]
#                      [--kvfuse-args "ARGS"] [--llama-isa native|avx2] [--build-only]
# --models runs each model in turn (names or paths, comma-separated; `all` = every model of
# `kvfuse models` that is present) and ends with one table of all of them.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${KVFUSE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=2
PROMPTS=512,2048,6144
GEN=128
REPS=3
JSON_OUT=
BUILD_ONLY=0
MODELS=
LLAMA_ISA=native
KVFUSE_ARGS=
KVFUSE=${KVFUSE:-build/kvfuse}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case $1 in
        --model) MODEL=$2; shift 2 ;;
        --models) MODELS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --prompts) PROMPTS=$2; shift 2 ;;
        --gen) GEN=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --json) JSON_OUT=$2; shift 2 ;;
        --kvfuse-args) KVFUSE_ARGS=$2; shift 2 ;;
        --build-only) BUILD_ONLY=1; shift ;;
        --llama-isa) LLAMA_ISA=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "peer.sh: unknown option $1" >&2; usage 1 >&2 ;;
    esac
done

# ---- llama.cpp: fetch once, build once -------------------------------------------------------
LCPP_PY_VERSION=0.3.36                      # llama-cpp-python sdist on PyPI
LCPP_COMMIT=0c1e57098bba43ac29e6e3b677cdceebdd22334f   # the llama.cpp commit that sdist vendors
TP=third_party
SDIST=$TP/llama_cpp_python-$LCPP_PY_VERSION.tar.gz
SRC=$TP/llama_cpp_python-$LCPP_PY_VERSION/vendor/llama.cpp
BDIR=$TP/llama.cpp-build
LLAMA_BENCH=$BDIR/bin/llama-bench
CMAKE_FLAGS=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON
             -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DGGML_RPC=OFF
             -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF
             -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
             -DLLAMA_BUILD_COMMIT="${LCPP_COMMIT:0:7}")
# --llama-isa avx2: a second build for AVX2 + FMA only (GGML_NATIVE off), to compare with
# `kvfuse --isa avx2` on a machine that has AVX-512. The native build leaves out AMX: in a VM
# that does not grant the AMX tile state, ggml's AMX kernels crash (seen on a Sapphire Rapids
# guest).
case $LLAMA_ISA in
    native) CMAKE_FLAGS+=("-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
                          "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16") ;;
    avx2) BDIR=$TP/llama.cpp-build-avx2; LLAMA_BENCH=$BDIR/bin/llama-bench
          CMAKE_FLAGS=("${CMAKE_FLAGS[@]/-DGGML_NATIVE=ON/-DGGML_NATIVE=OFF}" -DGGML_AVX=ON
                       -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
                       -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF) ;;
    *) echo "peer.sh: --llama-isa native|avx2" >&2; exit 2 ;;
esac
# The stamp records the configuration a build was made with; a different one rebuilds.
STAMP="llama-cpp-python $LCPP_PY_VERSION; ${CMAKE_FLAGS[*]}; $(uname -m)"

build_llama_cpp() {
    if [ -x "$LLAMA_BENCH" ] && [ "$(cat "$BDIR/kvfuse-stamp" 2>/dev/null)" = "$STAMP" ]; then
        echo "peer: reusing llama.cpp build in $BDIR" >&2
        return
    fi
    mkdir -p "$TP"
    if [ ! -f "$SRC/CMakeLists.txt" ]; then
        if [ ! -f "$SDIST" ]; then
            echo "peer: downloading llama-cpp-python==$LCPP_PY_VERSION sdist into $TP/ ..." >&2
            "$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
                --no-binary :all: "llama-cpp-python==$LCPP_PY_VERSION" -d "$TP" >&2 || {
                echo "peer: pip download failed (no network?). Put $SDIST there by hand." >&2
                exit 1
            }
        fi
        echo "peer: extracting $SDIST ..." >&2
        tar -xzf "$SDIST" -C "$TP"
    fi
    local jobs
    jobs=$(nproc 2>/dev/null || echo 2); [ "$jobs" -gt 2 ] && jobs=2
    echo "peer: building llama-bench, llama-simple (cmake Release, -j$jobs; takes minutes) ..." >&2
    local t0=$SECONDS
    cmake -S "$SRC" -B "$BDIR" "${CMAKE_FLAGS[@]}" > "$BDIR.configure.log" 2>&1 || {
        echo "peer: cmake configure failed, see $BDIR.configure.log" >&2; exit 1; }
    cmake --build "$BDIR" --config Release -j "$jobs" --target llama-bench llama-simple \
        > "$BDIR.build.log" 2>&1 || { echo "peer: build failed, see $BDIR.build.log" >&2; exit 1; }
    echo "$STAMP" > "$BDIR/kvfuse-stamp"
    echo "peer: llama.cpp built in $((SECONDS - t0)) s -> $LLAMA_BENCH" >&2
}

build_llama_cpp
[ "$BUILD_ONLY" = 1 ] && exit 0

# ---- several models: run this script once per model, then one table ---------------------------
if [ -n "$MODELS" ]; then
    [ -x "$KVFUSE" ] || { echo "peer: $KVFUSE not found (make cli)" >&2; exit 1; }
    if [ "$MODELS" = all ]; then
        MODELS=$("$KVFUSE" models --json | "$PY" -c 'import json,sys
print(",".join(d["file"] for d in map(json.loads, sys.stdin) if d["present"]))')
    fi
    mwork=$(mktemp -d)
    trap 'rm -rf "$mwork"' EXIT
    IFS=, read -r -a mlist <<< "$MODELS"
    i=0
    for m in "${mlist[@]}"; do
        [ -f "$m" ] || m=$("$KVFUSE" info -m "$m" 2>/dev/null | awk '$1 == "file" { print $2; exit }')
        [ -f "$m" ] || { echo "peer: model ${mlist[$i]} not found (make model NAME=...)" >&2; exit 1; }
        i=$((i + 1))
        "$0" --model "$m" --threads "$THREADS" --prompts "$PROMPTS" --gen "$GEN" --reps "$REPS" \
            --llama-isa "$LLAMA_ISA" --kvfuse-args "$KVFUSE_ARGS" --json "$mwork/$i.json" || exit 1
    done
    "$PY" - "$mwork" "$JSON_OUT" <<'PY'
import glob, json, os, sys
runs = [json.load(open(f)) for f in sorted(glob.glob(sys.argv[1] + "/*.json"), key=lambda f: int(os.path.basename(f)[:-5]))]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"\nall models on {cpu}; threads {runs[0]['threads']}, reps {runs[0]['reps']}, decode {runs[0]['n_gen']} tokens after the prompt")
print("| model | prompt | kvfuse pp tok/s | llama.cpp pp | ratio | kvfuse tg tok/s | llama.cpp tg | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for r in runs:
    for x in r["rows"]:
        rp = x["kvfuse_prefill"] / x["llama_prefill"] if x["llama_prefill"] else float("nan")
        rd = x["kvfuse_decode"] / x["llama_decode"] if x["llama_decode"] else float("nan")
        print(f"| {os.path.basename(r['model'])} | {x['n_prompt']} | {x['kvfuse_prefill']:.1f} | {x['llama_prefill']:.1f} | "
              f"{rp:.2f} | {x['kvfuse_decode']:.1f} | {x['llama_decode']:.1f} | {rd:.2f} |")
if sys.argv[2]:
    json.dump(runs, open(sys.argv[2], "w"), indent=2)
    print(f"wrote {sys.argv[2]}")
PY
    exit 0
fi

# ---- run both benchmarks, alternating per prompt length --------------------------------------
[ -f "$MODEL" ] || MODEL=$("$KVFUSE" info -m "$MODEL" 2>/dev/null | awk '$1 == "file" { print $2; exit }')
[ -f "$MODEL" ] || { echo "peer: model $MODEL not found (make model)" >&2; exit 1; }
[ -x "$KVFUSE" ] || { echo "peer: $KVFUSE not found (make cli)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Timings on a machine that is busy with something else are not worth much; say so up front.
read -r load1 _ < /proc/loadavg 2>/dev/null || load1=0
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
    echo "peer: warning: 1-minute load average is $load1 before starting; other work on this" \
         "machine will distort both engines' numbers (llama.cpp's OpenMP threads spin-wait and" \
         "slow down 3-40x on a busy machine; OMP_WAIT_POLICY=passive softens that)" >&2
fi
IFS=, read -r -a plist <<< "$PROMPTS"
for p in "${plist[@]}"; do
    # n_ctx is sized by llama-bench as prompt + gen + depth; -b/-ub are llama.cpp's defaults,
    # the prompt is fed in 2048-token batches (so 6144 needs three), 512-token micro-batches.
    echo "peer: [P=$p] llama.cpp: pp$p, tg$GEN @ d$p (t=$THREADS, r=$REPS) ..." >&2
    "$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -r "$REPS" -b 2048 -ub 512 -o json \
        -p "$p" -n 0 > "$work/llama_pp_$p.json" 2> "$work/llama_pp_$p.err" || {
        echo "peer: llama-bench failed:" >&2; cat "$work/llama_pp_$p.err" >&2; exit 1; }
    "$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -r "$REPS" -b 2048 -ub 512 -o json \
        -p 0 -n "$GEN" -d "$p" > "$work/llama_tg_$p.json" 2> "$work/llama_tg_$p.err" || {
        echo "peer: llama-bench failed:" >&2; cat "$work/llama_tg_$p.err" >&2; exit 1; }
    echo "peer: [P=$p] kvfuse: bench -p $p -n $GEN $KVFUSE_ARGS (t=$THREADS, r=$REPS) ..." >&2
    # shellcheck disable=SC2086 # KVFUSE_ARGS is a list of options, split on purpose
    "$KVFUSE" bench -m "$MODEL" -p "$p" -n "$GEN" -r "$REPS" --threads "$THREADS" --json $KVFUSE_ARGS \
        > "$work/kvfuse_$p.json" 2> "$work/kvfuse_$p.err" || {
        echo "peer: kvfuse bench failed:" >&2; cat "$work/kvfuse_$p.err" >&2; exit 1; }
done

# ---- table (and optional JSON) ---------------------------------------------------------------
"$PY" - "$work" "$PROMPTS" "$GEN" "$THREADS" "$REPS" "$MODEL" "$LCPP_PY_VERSION" \
    "$LCPP_COMMIT" "$JSON_OUT" <<'PY'
import json, os, sys
work, prompts, gen, threads, reps, model, lcpp_ver, lcpp_commit, json_out = sys.argv[1:]

def load_json(path):
    # kvfuse prints one JSON object; tolerate log lines around it
    text = open(path).read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(text[text.index("{"):text.rindex("}") + 1])

rows = []
for p in (int(x) for x in prompts.split(",")):
    pp = load_json(f"{work}/llama_pp_{p}.json")[0]
    tg = load_json(f"{work}/llama_tg_{p}.json")[0]
    kv = load_json(f"{work}/kvfuse_{p}.json")
    rows.append(dict(
        n_prompt=p, n_gen=int(gen),
        kvfuse_prefill=kv["prefill_tok_s"], kvfuse_prefill_sd=kv.get("prefill_tok_s_sd"),
        llama_prefill=pp["avg_ts"], llama_prefill_sd=pp["stddev_ts"],
        kvfuse_decode=kv["decode_tok_s"], kvfuse_decode_sd=kv.get("decode_tok_s_sd"),
        llama_decode=tg["avg_ts"], llama_decode_sd=tg["stddev_ts"],
        llama_flash_attn=pp.get("flash_attn"), llama_build=pp.get("build_commit"),
        kvfuse_precision=kv.get("precision"), kvfuse_isa=kv.get("isa"),
    ))

def ratio(a, b):
    return a / b if b else float("nan")

print(f"\nmodel {model}, threads {threads}, reps {reps}; llama.cpp {lcpp_commit[:7]} "
      f"(llama-cpp-python {lcpp_ver}); kvfuse precision {rows[0]['kvfuse_precision']}, "
      f"isa {rows[0]['kvfuse_isa']}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}"
      f"\ndecode: {gen} tokens right after the P-token prompt "
      f"(llama-bench -d P); tok/s are means over the reps\n")
hdr = (f"{'prompt':>7} | {'kvfuse pp t/s':>14} {'llama.cpp pp t/s':>17} {'ratio':>6} | "
       f"{'kvfuse tg t/s':>14} {'llama.cpp tg t/s':>17} {'ratio':>6}")
print(hdr)
print("-" * len(hdr))
for r in rows:
    print(f"{r['n_prompt']:>7} | {r['kvfuse_prefill']:>14.1f} {r['llama_prefill']:>17.1f} "
          f"{ratio(r['kvfuse_prefill'], r['llama_prefill']):>6.2f} | "
          f"{r['kvfuse_decode']:>14.1f} {r['llama_decode']:>17.1f} "
          f"{ratio(r['kvfuse_decode'], r['llama_decode']):>6.2f}")
print("(ratio = kvfuse / llama.cpp; > 1 means kvfuse is faster)")

if json_out:
    with open(json_out, "w") as f:
        json.dump(dict(model=model, threads=int(threads), reps=int(reps), n_gen=int(gen),
                       llama_cpp_commit=lcpp_commit, llama_cpp_python=lcpp_ver, rows=rows),
                  f, indent=2)
    print(f"wrote {json_out}")
PY
