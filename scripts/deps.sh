#!/usr/bin/env bash
# deps.sh - install the Debian packages kvfuse builds against, if any are missing.
# Idempotent: checks with dpkg first and does nothing when everything is present.
# Runs apt-get as root (directly, or through sudo when available).
set -euo pipefail
PKGS=(libxxhash-dev libcjson-dev liblmdb-dev libhiredis-dev libzstd-dev zlib1g-dev libmicrohttpd-dev curl)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]} ..." >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "deps: missing packages ${missing[*]}; install them as root: apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >&2 || true
if ! $SUDO apt-get install -y -qq "${missing[@]}" >&2; then
    echo "deps: apt-get install ${missing[*]} failed (no network?); install them by hand" >&2
    exit 1
fi
