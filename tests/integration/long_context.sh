#!/usr/bin/env bash
# long_context.sh - prompts at and past a model's context, on a tiny synthetic model whose
# training context is 512 tokens (fast; no timings asserted):
#   - `kvfuse info` prints the KV cache per token (f32 and f16) and for the full context;
#   - generate: a prompt that leaves no room for a generated token is a clear error (exit 1, the
#     limit named, no crash); one token short of the context works (f32 and f16 KV cache) and
#     stops at the context; an explicit --ctx past the training context works with a note;
#   - ask: documents past the context are a clear error naming the limit; a prompt a few
#     tokens short of the context works with full and a3 (f32 and f16 KV cache; and --evict),
#     and the answer stops at the context with a note;
#   - serve: without --ctx the slots get the model's context (/v1/models context_length); a
#     prompt past it is a 400 context_length_exceeded naming the limit; a prompt near it works;
#     an explicit --ctx whose slots cannot fit in memory is a clear startup error.
# Sources store_common.sh for the helpers ($KVFUSE, $BUILD, $T, check, json_field); the model
# is a qwen2 with rope base 1e6 like Qwen2.5's. Needs curl for the serve part.
. "$(dirname "$0")/store_common.sh"

CTX=512
M=$T/ctx$CTX.gguf
"$BUILD/tests/tool_mkmodel" "$M" --arch qwen2 --layers 2 --embd 64 --ctx $CTX --type Q8_0 \
    --rope-base 1000000 >/dev/null || { echo "cannot make the model"; echo "0 passed, 1 failed"; exit 1; }

# ntok TEXT: tokens of TEXT as generate sees it (no chat template)
ntok() { "$KVFUSE" tokenize -m "$M" -p "$1" | wc -w; }
# text_of N: "x x x ..." of N tokens exactly (checked)
text_of() {
    python3 -c "import sys; n=int(sys.argv[1]); print('x ' * (n // 2) + ('x' if n % 2 else ''), end='')" "$1"
}
# status of the last run: rc and stderr
run() { # OUT ERR command...
    local out=$1 err=$2; shift 2
    "$@" >"$out" 2>"$err"
}

# ---- info ----------------------------------------------------------------------------------
info=$("$KVFUSE" info -m "$M")
# 2 layers x (K + V) x 2 KV heads x dim 16 (embd 64 / 4 heads) x 4 bytes: 512 per token f32
check "info: KV bytes per token" grep -q "KV cache .*(512 / 256 bytes)" <<<"$info"
check "info: full context" grep -q "full context .* of KV cache for $CTX tokens" <<<"$info"

# ---- generate ------------------------------------------------------------------------------
P_FULL=$(text_of $CTX)
P_NEAR=$(text_of $((CTX - 1)))
check "text_of: $CTX tokens" [ "$(ntok "$P_FULL")" = $CTX ]
check "text_of: $((CTX - 1)) tokens" [ "$(ntok "$P_NEAR")" = $((CTX - 1)) ]

run "$T/g.out" "$T/g.err" "$KVFUSE" generate -m "$M" -p "$P_FULL" -n 4
rc=$?
check "generate: a prompt of the full context fails cleanly (rc $rc)" [ $rc = 1 ]
check "generate: the error names the prompt and the model's context" \
    grep -q "the prompt has $CTX tokens, more than fit in the model's context of $CTX" "$T/g.err"

run "$T/g.out" "$T/g.err" "$KVFUSE" generate -m "$M" -p "$P_NEAR$P_NEAR" -n 4
rc=$?
check "generate: a prompt of twice the context fails cleanly (rc $rc)" [ $rc = 1 ]
check "generate: ... naming the context" grep -q "the prompt has $((2 * CTX - 2)) tokens.*context of $CTX" "$T/g.err"

run "$T/g.out" "$T/g.err" "$KVFUSE" generate -m "$M" -p "$(text_of 100)" --ctx 64 -n 4
rc=$?
check "generate: a prompt past an explicit --ctx fails cleanly (rc $rc)" [ $rc = 1 ]
check "generate: ... naming --ctx" grep -q "the prompt has 100 tokens, more than fit in --ctx 64" "$T/g.err"

for kv in f32 f16; do
    run "$T/g.out" "$T/g.err" "$KVFUSE" generate -m "$M" -p "$P_NEAR" -n 16 --kv $kv --json
    rc=$?
    out=$(cat "$T/g.out")
    check "generate --kv $kv: a prompt one token short of the context works (rc $rc)" [ $rc = 0 ]
    if [ $rc = 0 ]; then
        check "generate --kv $kv: prompt_tokens" [ "$(json_field "$out" 'd["prompt_tokens"]')" = $((CTX - 1)) ]
        check "generate --kv $kv: stops at the context (or at end of text)" \
            grep -Eq '"stop": "(context|eos)"' <<<"$out"
    else
        cat "$T/g.err" >&2
    fi
done

run "$T/g.out" "$T/g.err" "$KVFUSE" generate -m "$M" -p "$(text_of 600)" --ctx 640 -n 8 --json
rc=$?
check "generate: --ctx past the training context works (rc $rc)" [ $rc = 0 ]
check "generate: ... with a note" grep -q "more than the model's training context ($CTX)" "$T/g.err"

# ---- ask -----------------------------------------------------------------------------------
# the prompt's overhead (chat template, question) from a one-document run
Q="What is x?"
text_of 40 >"$T/d40.txt"
run "$T/a.out" "$T/a.err" "$KVFUSE" ask -m "$M" --doc "$T/d40.txt" -q "$Q" --method full -n 1 --json
rc=$?
check "ask: a short prompt works (rc $rc)" [ $rc = 0 ]
total=$(json_field "$(head -n 1 "$T/a.out")" 'd["total_tokens"]' 2>/dev/null || echo 0)
over=$((total - 40))
check "ask: prompt overhead measured ($over tokens)" [ "$over" -gt 0 -a "$over" -lt 200 ]

# documents of the whole context: an error naming the limit
half=$(((CTX - over) / 2 + 8))
text_of $half >"$T/dh.txt"
run "$T/a.out" "$T/a.err" "$KVFUSE" ask -m "$M" --doc "$T/dh.txt" --doc "$T/dh.txt" -q "$Q" --method full,a3
rc=$?
check "ask: documents past the context fail cleanly (rc $rc)" [ $rc = 1 ]
check "ask: the error names the prompt size and the model's context" \
    grep -q "the prompt has $((2 * half + over)) tokens .* more than fit in the model's context of $CTX" "$T/a.err"
check "ask: nothing was computed" [ ! -s "$T/a.out" ]
run "$T/a.out" "$T/a.err" "$KVFUSE" ask -m "$M" --doc "$T/d40.txt" -q "$Q" --ctx 16
check "ask: a prompt past an explicit --ctx fails naming it" grep -q "fit in --ctx 16" "$T/a.err"

# three documents, 3 tokens short of the context: full and a3 work, the answer stops at the end
d=$(((CTX - 3 - over) / 3))
rest=$((CTX - 3 - over - 2 * d))
text_of $d >"$T/d1.txt"
text_of $rest >"$T/d3.txt"
for kv in f32 f16; do
    run "$T/a.out" "$T/a.err" "$KVFUSE" ask -m "$M" --doc "$T/d1.txt" --doc "$T/d1.txt" --doc "$T/d3.txt" \
        -q "$Q" --method full,a3 -n 16 --kv $kv --json
    rc=$?
    check "ask --kv $kv: a prompt 3 tokens short of the context works with full,a3 (rc $rc)" [ $rc = 0 ]
    check "ask --kv $kv: two answers" [ "$(wc -l <"$T/a.out")" = 2 ]
    while read -r line; do
        m=$(json_field "$line" 'd["method"]')
        check "ask --kv $kv $m: total_tokens = $((CTX - 3))" [ "$(json_field "$line" 'd["total_tokens"]')" = $((CTX - 3)) ]
        # 3 free cells, and the token sampled from the last one needs none
        check "ask --kv $kv $m: answer within the context" [ "$(json_field "$line" 'd["tokens"]')" -le 4 ]
    done <"$T/a.out"
    if grep -q '"tokens": 4' "$T/a.out"; then
        check "ask --kv $kv: the answer stops at the context with a note" grep -q "the answer stops after 4 tokens" "$T/a.err"
    fi
done
run "$T/a.out" "$T/a.err" "$KVFUSE" ask -m "$M" --doc "$T/d1.txt" --doc "$T/d1.txt" --doc "$T/d3.txt" \
    -q "$Q" --method a3 --evict snapkv --budget 64 -n 2 --json
rc=$?
check "ask: a3 + snapkv eviction near the context works (rc $rc)" [ $rc = 0 -a -s "$T/a.out" ]

# ---- serve ---------------------------------------------------------------------------------
PORTF=$T/serve.port
"$KVFUSE" serve -m "$M" --port 0 --port-file "$PORTF" --parallel 2 -q >"$T/serve.log" 2>&1 &
SPID=$!
cleanup_hooks+=("kill $SPID; wait $SPID")
for _ in $(seq 1 100); do [ -s "$PORTF" ] && break; sleep 0.1; done
if [ -s "$PORTF" ] && command -v curl >/dev/null; then
    U=http://127.0.0.1:$(cat "$PORTF")
    models=$(curl -s "$U/v1/models")
    check "serve: default --ctx is the model's context" grep -q "\"context_length\":[ ]*$CTX" <<<"$models"
    body() { python3 -c 'import json,sys; print(json.dumps({"prompt": sys.argv[1], "max_tokens": int(sys.argv[2])}))' "$1" "$2"; }
    code=$(curl -s -o "$T/r.json" -w '%{http_code}' "$U/v1/completions" -d "$(body "$P_FULL" 4)")
    check "serve: a prompt of the full context is a 400 (got $code)" [ "$code" = 400 ]
    check "serve: ... context_length_exceeded" grep -q "context_length_exceeded" "$T/r.json"
    check "serve: ... naming the limit" grep -q "the prompt has $CTX tokens.*context of $CTX tokens" "$T/r.json"
    code=$(curl -s -o "$T/r.json" -w '%{http_code}' "$U/v1/completions" -d "$(body "$(text_of $((CTX - 4)))" 4)")
    check "serve: a prompt 4 tokens short of the context works (got $code)" [ "$code" = 200 ]
    check "serve: ... usage counts the prompt" grep -Eq "\"prompt_tokens\":[ ]*$((CTX - 4))" "$T/r.json"
    code=$(curl -s -o "$T/r.json" -w '%{http_code}' "$U/v1/completions" -d "$(body "$(text_of $((CTX - 4)))" 8)")
    check "serve: max_tokens past the context is a 400 (got $code)" [ "$code" = 400 ]
else
    bad "serve did not start (or no curl): $(cat "$T/serve.log")"
fi
# slots that cannot fit in any machine's memory: 64 slots x 1M tokens x 64 layers (1 TiB of KV
# reserved). Where one full slot (16 GiB) is more than 3/4 of the memory, the check before
# anything is allocated refuses it; elsewhere the 8 GiB address-space limit makes the slots'
# reservations fail, also at startup and naming the memory, never a visit from the OOM killer.
"$BUILD/tests/tool_mkmodel" "$T/deep.gguf" --layers 64 --embd 64 --ctx 1048576 --type Q8_0 >/dev/null
(ulimit -v 8388608; exec timeout 60 "$KVFUSE" serve -m "$T/deep.gguf" --port 0 --parallel 64 \
    --ctx 1048576 >"$T/s2.out" 2>"$T/s2.err")
rc=$?
check "serve: an explicit --ctx beyond memory fails at startup (rc $rc)" [ $rc = 1 ]
check "serve: ... naming the memory" grep -Eq "for one full slot, more than 3/4 of the .* of memory available|cannot create session .*out of memory" "$T/s2.err"

# ---- conv-profile (EpiCache's layer profile for serve --conv-layers) --------------------------
text_of 600 >"$T/long.txt"
run "$T/cp.out" "$T/cp.err" "$KVFUSE" conv-profile -m "$M" -f "$T/long.txt" --tokens 384 --block 128 -o "$T/layers.txt"
check "conv-profile: works on a long enough text" [ $? = 0 ]
check "conv-profile: layer 0 is insensitive (keys from the token and position alone)" grep -Eq "^ +0  1\.0000$" "$T/cp.out"
check "conv-profile: the file has the model's 2 layers" grep -q "^layers 2$" "$T/layers.txt"
timeout 30 "$KVFUSE" serve -m "$M" --port 0 --conv-layers "$T/layers.txt" >/dev/null 2>"$T/cl.err"
check "serve: --conv-layers without --conv-budget fails at startup" grep -q "needs --conv-budget" "$T/cl.err"
text_of 100 >"$T/short.txt"
run "$T/cp.out" "$T/cp.err" "$KVFUSE" conv-profile -m "$M" -f "$T/short.txt" --tokens 384 --block 128
check "conv-profile: a text shorter than --tokens is a clear error" grep -q "has 100 tokens, --tokens 384 asked for" "$T/cp.err"
run "$T/cp.out" "$T/cp.err" "$KVFUSE" conv-profile -m "$M" -f "$T/long.txt" --tokens 384 --block 256
check "conv-profile: a block over half the tokens is refused" grep -q "needs --tokens >= 512" "$T/cp.err"
run "$T/cp.out" "$T/cp.err" "$KVFUSE" conv-profile -m "$M"
check "conv-profile: -f is required" grep -q "\-f TEXT_FILE is required" "$T/cp.err"

finish
