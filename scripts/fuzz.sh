#!/usr/bin/env bash
# fuzz.sh - build kvfuse's libFuzzer targets (fuzz/fuzz_NAME.c) and replay or run them.
#
#   scripts/fuzz.sh replay [NAME...]     build each target and run it once on every file of its
#                                        seed corpus fuzz/corpus/NAME/ (one process per file):
#                                        a regression test. Prints "N passed, N failed" (one
#                                        pass per corpus file) and exits non-zero on any crash.
#   scripts/fuzz.sh run NAME SECS [ARGS] a timed fuzzing session (one process). New inputs go
#                                        to $FUZZ_NEW (default build/fuzz/new/NAME), crashes to
#                                        build/fuzz/crash/NAME/; extra ARGS go to libFuzzer.
#   scripts/fuzz.sh merge NAME DIR [ARGS] add the inputs of DIR that reach new coverage to
#                                        fuzz/corpus/NAME/ (libFuzzer -merge=1; keep the corpus
#                                        small, e.g. ARGS -max_len=1500)
#   scripts/fuzz.sh long [NAME...]       a campaign: every target (or those named) fuzzed for
#                                        $FUZZ_SECONDS (default 300) each, one after the other,
#                                        then a table of executions, coverage (edges, features),
#                                        corpus size and crashes per target; the table also goes
#                                        to build/fuzz/long-summary.txt. Exits non-zero on any
#                                        crash (reproducers in build/fuzz/crash/NAME/).
#   scripts/fuzz.sh build [NAME...]      only build
#
# Targets are built with clang -fsanitize=fuzzer,address,undefined into $FUZZ_BUILD
# (default build/fuzz) against the library sources compiled with the same sanitizers: those a
# target names on a line "fuzz-sources: engine/gguf common engine/quant" (src/NAME.c), else all; extra link
# flags on a line "fuzz-libs: -lcjson" (e.g. fuzz_server). Without a
# clang that has libFuzzer, `replay` falls back to $CC with -fsanitize=address,undefined and
# fuzz/replay_main.c as the driver; `run` and `merge` need libFuzzer.
# The library is built with -DKVF_REF_ONLY (scalar kernels only): the targets exercise parsing
# and request handling, and the sanitized SIMD kernels would take minutes to compile.
# Environment: FUZZ_CC (clang), CC (cc, fallback), FUZZ_BUILD, FUZZ_NEW, FUZZ_JOBS (2).
set -uo pipefail
cd "$(dirname "$0")/.."

B=${FUZZ_BUILD:-build/fuzz}
FCC=${FUZZ_CC:-clang}
JOBS=${FUZZ_JOBS:-2}
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"

die() { echo "fuzz.sh: $*" >&2; exit 2; }

all_names() {
    local f
    for f in fuzz/fuzz_*.c; do [ -e "$f" ] && { f=${f##*/fuzz_}; echo "${f%.c}"; }; done
}

have_libfuzzer() {
    command -v "$FCC" >/dev/null 2>&1 || return 1
    local t; t=$(mktemp -d)
    printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return d && n; }\n' >"$t/t.c"
    "$FCC" -fsanitize=fuzzer "$t/t.c" -o "$t/t" >/dev/null 2>&1
    local rc=$?
    rm -rf "$t"
    return $rc
}

# libs NAME: extra link flags of fuzz_NAME (its "fuzz-libs:" line, else none)
libs() {
    grep -m1 -o 'fuzz-libs:[a-zA-Z0-9_ -]*' "fuzz/fuzz_$1.c" | cut -d: -f2 | tr ' ' '\n' | grep -v '^$'
}

# all_sources: every library source (src/ and its layer folders)
all_sources() { find src -name '*.c' | sort; }

# sources NAME: the src/**/*.c files fuzz_NAME links (its "fuzz-sources:" line, else all)
sources() {
    local line w
    line=$(grep -m1 -o 'fuzz-sources:[a-z0-9_/ ]*' "fuzz/fuzz_$1.c" | cut -d: -f2)
    if [ -z "$line" ]; then all_sources; return; fi
    for w in $line; do echo "src/$w.c"; done
}

# build_lib LIB CC CFLAGS SRC...: compile the sources with the Makefile's rules into
# $B/MODE/obj and archive LIB from the objects that are up to date (a source someone is editing
# that does not compile right now is left out; the link then says if a target needs it).
build_lib() {
    local lib=$1 cc=$2 flags=$3 dir src o; shift 3
    dir=$(dirname "$lib")
    local objs=()
    for src in "$@"; do o=${src#src/}; objs+=("$dir/obj/${o%.c}.o"); done
    make -k -s -j"$JOBS" BUILD="$dir" CC="$cc" CFLAGS="-O1 -g" EXTRA_CFLAGS="$flags" \
        "${objs[@]}" >"$dir.log" 2>&1 || true
    local good=() skipped=()
    for src in "$@"; do
        o=${src#src/}; o="$dir/obj/${o%.c}.o"
        if [ -f "$src" ] && [ -f "$o" ] && [ "$o" -nt "$src" ]; then good+=("$o"); else skipped+=("$src"); fi
    done
    [ ${#skipped[@]} -gt 0 ] && echo "fuzz.sh: left out (missing or does not compile now, see $dir.log): ${skipped[*]}" >&2
    rm -f "$lib"
    ar rcs "$lib" "${good[@]}"
}

# build NAME...: sets MODE (libfuzzer|replay-driver); binaries in $B/fuzz_NAME
build() {
    mkdir -p "$B"
    exec 9>"$B/.lock"
    flock 9 2>/dev/null || true # several `make test` runs may share the tree
    local flags cc
    if have_libfuzzer; then
        MODE=libfuzzer cc=$FCC flags="-fsanitize=fuzzer-no-link $SAN -DKVF_REF_ONLY"
    else
        MODE=replay-driver cc=${CC:-cc} flags="$SAN -DKVF_REF_ONLY"
        echo "fuzz.sh: no libFuzzer with '$FCC'; replaying with $cc $SAN and fuzz/replay_main.c" >&2
    fi
    mkdir -p "$B/$MODE/obj"
    local n rc=0
    for n in "$@"; do
        [ -f "fuzz/fuzz_$n.c" ] || die "no target fuzz/fuzz_$n.c"
        local extra=(-fsanitize=fuzzer) lib="$B/$MODE/lib_$n.a"
        [ "$MODE" = replay-driver ] && extra=(fuzz/replay_main.c)
        mapfile -t srcs < <(sources "$n")
        build_lib "$lib" "$cc" "$flags" "${srcs[@]}"
        local xlibs=()
        mapfile -t xlibs < <(libs "$n")
        local link=("$cc" -std=c11 -D_GNU_SOURCE -Iinclude -Isrc -Itools -O1 -g $SAN "fuzz/fuzz_$n.c"
            "${extra[@]}" "$lib" "${xlibs[@]}" -lm -pthread -o "$B/fuzz_$n")
        if ! "${link[@]}" 2>"$B/link_$n.log"; then
            # the fuzz-sources line may be out of date: try the whole library
            echo "fuzz.sh: fuzz_$n does not link with its fuzz-sources; trying every library source" >&2
            mapfile -t srcs < <(all_sources)
            build_lib "$lib" "$cc" "$flags" "${srcs[@]}"
            if ! "${link[@]}"; then
                echo "fuzz.sh: cannot build fuzz_$n" >&2
                rc=1
            fi
        fi
    done
    exec 9>&-
    return $rc
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
replay)
    names=("$@")
    [ ${#names[@]} -eq 0 ] && mapfile -t names < <(all_names)
    pass=0 fail=0
    if ! build "${names[@]}"; then
        echo "0 passed, 1 failed"
        exit 1
    fi
    for n in "${names[@]}"; do
        files=(fuzz/corpus/"$n"/*)
        if [ ! -e "${files[0]}" ]; then
            echo "FAIL fuzz_$n: no seed corpus in fuzz/corpus/$n/"
            fail=$((fail + 1)); continue
        fi
        for f in "${files[@]}"; do
            if [ "$MODE" = libfuzzer ]; then
                out=$(timeout 120 "$B/fuzz_$n" -timeout=60 -rss_limit_mb=2048 "$f" 2>&1)
            else
                out=$(timeout 120 "$B/fuzz_$n" "$f" 2>&1)
            fi
            rc=$?
            if [ $rc -eq 0 ]; then
                pass=$((pass + 1))
            else
                fail=$((fail + 1))
                echo "FAIL fuzz_$n $f (exit $rc)"
                printf '%s\n' "$out" | tail -n 30 | sed 's/^/    /'
            fi
        done
        echo "fuzz_$n: replayed ${#files[@]} corpus files ($MODE)"
    done
    echo "$pass passed, $fail failed"
    [ $fail -eq 0 ]
    ;;
run)
    [ $# -ge 2 ] || die "usage: scripts/fuzz.sh run NAME SECS [libFuzzer args]"
    n=$1 secs=$2; shift 2
    build "$n" || exit 1
    [ "$MODE" = libfuzzer ] || die "run needs clang with libFuzzer (FUZZ_CC)"
    new=${FUZZ_NEW:-$B/new/$n}
    crash=$B/crash/$n
    mkdir -p "$new" "$crash"
    dict=()
    [ -f "fuzz/$n.dict" ] && dict=(-dict="fuzz/$n.dict")
    echo "fuzz.sh: fuzzing fuzz_$n for ${secs}s; new inputs in $new, crashes in $crash/"
    "$B/fuzz_$n" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$crash/" "${dict[@]}" "$@" "$new" "fuzz/corpus/$n"
    rc=$?
    echo "fuzz.sh: $(ls "$new" | wc -l) inputs in $new, $(ls "$crash" | wc -l) crashes in $crash/"
    exit $rc
    ;;
merge)
    [ $# -ge 2 ] || die "usage: scripts/fuzz.sh merge NAME DIR [libFuzzer args, e.g. -max_len=1500]"
    n=$1 dir=$2; shift 2
    build "$n" || exit 1
    [ "$MODE" = libfuzzer ] || die "merge needs clang with libFuzzer (FUZZ_CC)"
    "$B/fuzz_$n" -merge=1 "$@" "fuzz/corpus/$n" "$dir"
    ;;
long)
    names=("$@")
    [ ${#names[@]} -eq 0 ] && mapfile -t names < <(all_names)
    secs=${FUZZ_SECONDS:-300}
    build "${names[@]}" || exit 1
    [ "$MODE" = libfuzzer ] || die "long needs clang with libFuzzer (FUZZ_CC)"
    sum=$B/long-summary.txt
    {
        echo "fuzz campaign $(date -u +%Y-%m-%dT%H:%MZ), ${secs} s per target, $(nproc) CPUs, $("$FCC" --version | head -n 1)"
        printf '%-10s %12s %9s %8s %9s %8s %7s\n' target executions exec/s edges features corpus crashes
    } > "$sum"
    total_crash=0
    for n in "${names[@]}"; do
        log=$B/long-$n.log
        "$0" run "$n" "$secs" > "$log" 2>&1
        execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
        rate=$(grep -m1 'stat::average_exec_per_sec' "$log" | awk '{print $2}')
        done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)
        cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$done_line")
        ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$done_line")
        corp=$(sed -n 's/.*corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"$done_line")
        crashes=$(find "$B/crash/$n" -type f 2>/dev/null | wc -l)
        total_crash=$((total_crash + crashes))
        printf '%-10s %12s %9s %8s %9s %8s %7s\n' "$n" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" \
            "${corp:-?}" "$crashes" | tee -a "$sum"
    done
    echo "fuzz.sh: summary in $sum; logs in $B/long-NAME.log"
    [ "$total_crash" -eq 0 ]
    ;;
build)
    names=("$@")
    [ ${#names[@]} -eq 0 ] && mapfile -t names < <(all_names)
    build "${names[@]}"
    ;;
*)
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    [ "$cmd" = -h ] || [ "$cmd" = --help ] || [ "$cmd" = help ]
    ;;
esac
