# store_common.sh - helpers sourced by the chunk store integration tests (store_*.sh); not a
# test itself (not executable). Sets KVFUSE, BUILD, a temporary directory $T removed on exit,
# pass/fail counters with check / ok / bad, a tiny synthetic model $SYN, and a corpus of text
# files $DOCS (Paul Graham essays from ../shared, or generated text when that is missing).
set -uo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
KVFUSE=${KVFUSE:-$BUILD/kvfuse}
T=$(mktemp -d "${TMPDIR:-/tmp}/kvf-$(basename "$0" .sh).XXXXXX")
pass=0
fail=0
cleanup_hooks=()
on_exit() {
    local h
    for h in "${cleanup_hooks[@]}"; do eval "$h" >/dev/null 2>&1; done
    rm -rf "$T"
}
trap on_exit EXIT

ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
# check DESCRIPTION COMMAND...: passes when the command exits 0
check() {
    local what=$1; shift
    if "$@"; then ok; else bad "$what"; fi
}
finish() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
}

[ -x "$KVFUSE" ] || { echo "store tests: $KVFUSE is not built"; echo "0 passed, 1 failed"; exit 1; }
[ -x "$BUILD/tests/tool_mkmodel" ] || { echo "store tests: $BUILD/tests/tool_mkmodel is not built"; echo "0 passed, 1 failed"; exit 1; }

SYN=$T/synth.gguf
# its training context (65536) holds the whole corpus at once: asks over every chunk of two
# essays (~15k tokens with this small vocabulary) must fit, as `kvfuse ask` refuses longer prompts
"$BUILD/tests/tool_mkmodel" "$SYN" --layers 4 --embd 128 --ctx 65536 --type Q8_0 >/dev/null || {
    echo "cannot make the synthetic model"; echo "0 passed, 1 failed"; exit 1; }

ESSAYS=${KVF_SHARED:-../shared}/data/needle/PaulGrahamEssays
mkdir -p "$T/docs"
if [ -d "$ESSAYS" ]; then
    DOCS=("$ESSAYS/addiction.txt" "$ESSAYS/aord.txt" "$ESSAYS/apple.txt")
else
    for i in 1 2 3; do
        for p in $(seq 1 40); do
            echo "Paragraph $p of document $i: the quick brown fox jumps over the lazy dog while the"
            echo "rain in Spain stays mainly in the plain, and numbers $((p * i)) and $((p + i)) appear."
            echo
        done >"$T/docs/doc$i.txt"
    done
    DOCS=("$T/docs/doc1.txt" "$T/docs/doc2.txt" "$T/docs/doc3.txt")
fi

# json_field JSON_LINE PYTHON_EXPR (d is the parsed object): prints the value
json_field() {
    "${PYTHON:-python3}" -c 'import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"
}

# a free loopback TCP port
free_port() {
    "${PYTHON:-python3}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
