#!/usr/bin/env bash
# run-tests.sh [--unit | --integration] - run kvfuse's tests and add up their results.
#
# Unit tests: the layer check of the source tree (scripts/check-layout.py) and every
# build/tests/test_* binary (synthetic models only, no downloads).
# Integration tests: every executable tests/integration/*.{sh,py}, run from the repository root
# with KVFUSE (the CLI), KVFUSE_MODEL (the real model), PYTHON (the venv with the oracles) and
# BUILD and KVF_SHARED (the shared data folder) in the environment. Each test prints a line
# "N passed, N failed"; this script sums them, prints the total in the same form and exits
# non-zero if anything failed or crashed. A test that cannot run here (the shared data is
# missing) prints "SKIP: why" and "0 passed, 0 failed"; skips are listed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
mode=${1:-all}
total_pass=0 total_fail=0 crashed=() skipped=()

run_one() { # name, command...
    local name=$1; shift
    local out rc line p f
    echo "== $name"
    out=$(mktemp)
    "$@" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
    grep -q '^SKIP:' "$out" && skipped+=("$name")
    rm -f "$out"
    if [ -z "$line" ]; then
        echo "!! $name exited with status $rc without a summary line"
        crashed+=("$name"); total_fail=$((total_fail + 1)); return
    fi
    p=${line%% passed*}; f=${line#*, }; f=${f%% failed}
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "!! $name exited with status $rc"; crashed+=("$name"); total_fail=$((total_fail + 1))
    fi
}

if [ "$mode" != "--integration" ]; then
    run_one check-layout python3 scripts/check-layout.py
    for t in "$BUILD"/tests/test_*; do
        [ -x "$t" ] || continue
        run_one "$(basename "$t")" timeout 900 "$t"
    done
fi

if [ "$mode" != "--unit" ]; then
    export KVFUSE=${KVFUSE:-$BUILD/kvfuse}
    export KVFUSE_MODEL=${KVFUSE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
    export PYTHON=${PYTHON:-$(scripts/python-deps.sh)}
    export BUILD
    # The data in ../shared (MuSiQue, essays, the HF tokenizer). A clone made elsewhere finds it
    # beside the repository it was cloned from; KVF_SHARED overrides both.
    if [ -z "${KVF_SHARED:-}" ]; then
        origin=$(git config --get remote.origin.url 2>/dev/null || true)
        for c in ../shared ${origin:+"$origin/../shared"}; do
            if [ -d "$c/data" ]; then KVF_SHARED=$(cd "$c" && pwd); break; fi
        done
    fi
    export KVF_SHARED=${KVF_SHARED:-../shared}
    [ -d "$KVF_SHARED/data" ] || echo "note: no shared data at $KVF_SHARED (set KVF_SHARED): tests that need it are skipped"
    for t in tests/integration/*; do
        [ -x "$t" ] || continue
        run_one "$(basename "$t")" timeout 1200 "$t"
    done
fi

echo
[ ${#crashed[@]} -gt 0 ] && echo "crashed or failed without counting: ${crashed[*]}"
[ ${#skipped[@]} -gt 0 ] && echo "skipped (shared data missing): ${skipped[*]}"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
