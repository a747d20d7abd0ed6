#!/usr/bin/env bash
# fuzz_replay.sh - replay every fuzz target's seed corpus (fuzz/corpus/NAME/) as a regression
# test, so `make test` catches a reader that crashes on an input the fuzzer once found.
# Builds with clang's libFuzzer and ASan/UBSan (scripts/fuzz.sh); prints "N passed, N failed",
# one pass per corpus file.
set -uo pipefail
cd "$(dirname "$0")/../.."
exec scripts/fuzz.sh replay
