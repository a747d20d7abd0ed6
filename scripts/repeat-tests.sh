#!/usr/bin/env bash
# repeat-tests.sh [--fresh] N [TEST...] - run integration tests N times each in a loop and
# report every failure: the flake hunt of a CI that must be green on any machine. TEST names
# files in tests/integration/ (default: all executable ones). Prints per test "name: N runs,
# F failed (s per run)" and ends with "N passed, N failed" counting runs; the logs of failed
# runs stay in $REPEAT_LOGS (default build/repeat/).
#
# --fresh: first clone the committed HEAD into a temporary directory (a fresh clone: no build
# outputs, no untracked files), link models/, .venv and third_party/ from this tree (downloads
# are not the point), build it with `make -j2 all`, and run the loop there.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --fresh ]; then
    shift
    root=$PWD
    fresh=$(mktemp -d "${TMPDIR:-/tmp}/kvf-fresh.XXXXXX")
    git clone -q "$root" "$fresh/kvfuse" || exit 2
    for l in models .venv third_party; do [ -e "$root/$l" ] && ln -s "$(readlink -f "$root/$l")" "$fresh/kvfuse/$l"; done
    echo "repeat-tests: fresh clone of $(git -C "$root" rev-parse --short HEAD) in $fresh/kvfuse; building"
    (cd "$fresh/kvfuse" && make -s -j2 all >"$fresh/build.log" 2>&1) || { tail -n 30 "$fresh/build.log"; exit 2; }
    export KVF_SHARED=${KVF_SHARED:-$(readlink -f "$root/../shared")}
    REPEAT_LOGS=${REPEAT_LOGS:-$root/build/repeat} exec "$fresh/kvfuse/scripts/repeat-tests.sh" "$@"
fi
n=${1:?usage: scripts/repeat-tests.sh [--fresh] N [TEST...]}; shift
BUILD=${BUILD:-build}
export KVFUSE=${KVFUSE:-$BUILD/kvfuse} BUILD
export KVFUSE_MODEL=${KVFUSE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
export PYTHON=${PYTHON:-$(scripts/python-deps.sh)}
export KVF_SHARED=${KVF_SHARED:-../shared}
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
    for t in tests/integration/*; do [ -x "$t" ] && tests+=("$(basename "$t")"); done
fi
logdir=${REPEAT_LOGS:-$BUILD/repeat}
mkdir -p "$logdir"
tp=0 tf=0
for t in "${tests[@]}"; do
    f=0 t0=$(date +%s)
    for i in $(seq 1 "$n"); do
        log="$logdir/$t.$i.log"
        timeout 1200 "tests/integration/$t" >"$log" 2>&1
        rc=$?
        line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
        if [ $rc -ne 0 ] || [ -z "$line" ] || [ "${line#*, }" != "0 failed" ]; then
            f=$((f + 1)); echo "  $t run $i failed (exit $rc): $(grep -m3 'FAIL' "$log" | tr '\n' ' ')"
        else
            rm -f "$log"
        fi
    done
    echo "$t: $n runs, $f failed ($(( ($(date +%s) - t0) / n )) s per run)"
    tp=$((tp + n - f)); tf=$((tf + f))
done
echo "$tp passed, $tf failed"
[ "$tf" -eq 0 ]
