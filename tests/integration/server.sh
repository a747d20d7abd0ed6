#!/usr/bin/env bash
# server.sh - `kvfuse serve` end to end with the real model and curl, on loopback ports:
# chat completion with documents (fusion), document ingest and reuse (the second request hits
# the chunk cache), streaming (SSE chunks add up to the complete answer), completions, the
# document endpoints, metrics, a malformed-request suite (every case a 4xx with a message
# naming the field; the server stays healthy), client disconnects mid-stream and mid-answer
# (the server cancels and stays healthy), back-pressure (429 + Retry-After), API-key tenants
# (401 without a key, no access to another tenant's documents or cached chunks), and a clean
# shutdown on SIGTERM. Environment: KVFUSE, KVFUSE_MODEL, PYTHON (see scripts/run-tests.sh).
set -uo pipefail
KVFUSE=${KVFUSE:-build/kvfuse}
MODEL=${KVFUSE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
PY=${PYTHON:-python3}
T=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
pass=0 fail=0
# the longest wait for a state the test is waiting for (server up, requests cancelled, exit):
# a safety net for a hung server, not a timing assertion (sanitizer builds are 10x slower)
WAIT_S=${SERVER_WAIT_S:-600}
# wait_for SECONDS COMMAND...: poll COMMAND every 0.1 s until it succeeds or SECONDS pass
wait_for() {
    local lim=$1 t0=$SECONDS; shift
    until "$@"; do [ $((SECONDS - t0)) -ge "$lim" ] && return 1; sleep 0.1; done
}
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { # description, command...
    local what=$1; shift
    if "$@"; then ok; else bad "$what"; fi
}

if [ ! -x "$KVFUSE" ] || [ ! -f "$MODEL" ]; then
    echo "server.sh: needs $KVFUSE and $MODEL"; echo "0 passed, 1 failed"; exit 1
fi

# start NAME ARGS...: a server on a free port; sets URL_<NAME>
start() {
    local name=$1; shift
    "$KVFUSE" serve -m "$MODEL" --port 0 --port-file "$T/$name.port" "$@" >"$T/$name.log" 2>&1 &
    local pid=$!
    PIDS+=($pid)
    eval "PID_$name=$pid"
    # ready when the port file appears (serve renames it into place once it listens); a
    # sanitizer build loads the model much more slowly, so no fixed time: wait while it lives
    local t0=$SECONDS
    while [ ! -s "$T/$name.port" ] && kill -0 "$pid" 2>/dev/null && [ $((SECONDS - t0)) -lt "$WAIT_S" ]; do
        sleep 0.1
    done
    if [ ! -s "$T/$name.port" ]; then
        echo "server $name did not start ($((SECONDS - t0)) s):"; cat "$T/$name.log"; echo "$pass passed, $((fail + 1)) failed"; exit 1
    fi
    eval "URL_$name=http://127.0.0.1:$(cat "$T/$name.port")"
}

start main --ctx 2048 --parallel 2 --queue 4 --timeout "$WAIT_S" --max-body 200000
printf 'key-alpha-123 alpha\nkey-beta-4567 beta\nkey-admin-890 ops admin\n' > "$T/keys"
start keys --ctx 1024 --parallel 1 --queue 2 --api-keys "$T/keys"
start small --ctx 1024 --parallel 1 --queue 1 -q
U=$URL_main

# req METHOD URL [BODY] [curl args...]: sets CODE; body in $T/body, headers in $T/hdrs
req() {
    local m=$1 url=$2 b=${3-}
    shift 2; [ $# -gt 0 ] && shift
    if [ -n "$b" ]; then
        CODE=$(curl -s -o "$T/body" -D "$T/hdrs" -w '%{http_code}' -X "$m" "$url" -H 'Content-Type: application/json' --data-binary "$b" "$@")
    else
        CODE=$(curl -s -o "$T/body" -D "$T/hdrs" -w '%{http_code}' -X "$m" "$url" "$@")
    fi
}
# j EXPR: evaluate a Python expression over the JSON body (d)
j() { "$PY" -c "import json,sys; d=json.load(open('$T/body')); print($1)" 2>/dev/null; }
is() { [ "$1" = "$2" ] || { echo "  got '$1', expected '$2'"; return 1; }; }

# ---- basics -----------------------------------------------------------------------------------
req GET "$U/health"; check "health 200" is "$CODE" 200
req GET "$U/v1/models"; check "models" is "$(j "d['data'][0]['object']")" model

DOCS='["The Eiffel Tower is in Paris. It was completed in 1889 and is 330 metres tall.", "Mount Fuji is the highest mountain in Japan, at 3776 metres."]'
Q='{"role": "system", "content": "Answer in a few words using the documents."}, {"role": "user", "content": "In which city is the Eiffel Tower?"}'
req POST "$U/v1/chat/completions" "{\"messages\": [$Q], \"documents\": $DOCS, \"max_tokens\": 16}"
check "chat with documents 200" is "$CODE" 200
check "default fusion method focus" is "$(j "d['kvfuse']['method']")" focus
check "two documents" is "$(j "d['kvfuse']['documents']")" 2
check "answer mentions Paris" is "$(j "'Paris' in d['choices'][0]['message']['content']")" True
check "usage adds up" is "$(j "d['usage']['prompt_tokens'] + d['usage']['completion_tokens'] == d['usage']['total_tokens'] and d['usage']['prompt_tokens'] == d['kvfuse']['total_tokens']")" True
check "recomputed < total" is "$(j "0 < d['kvfuse']['recomputed_tokens'] < d['kvfuse']['total_tokens']")" True
check "TTFT parts" is "$(j "all(k in d['kvfuse']['ttft_parts'] for k in ('load_ms','rope_ms','recompute_ms','first_token_ms'))")" True
echo "  chat+documents: $(j "repr(d['choices'][0]['message']['content'])") ttft $(j "d['kvfuse']['ttft_ms']") ms"

# ---- ingest and reuse ---------------------------------------------------------------------------
req POST "$U/v1/documents" "{\"documents\": [\"Ada Lovelace wrote the first published computer program in 1843.\", {\"title\": \"Turing\", \"text\": \"Alan Turing proposed the Turing test in 1950.\"}]}"
check "ingest 200" is "$CODE" 200
ID1=$(j "d['data'][0]['id']"); ID2=$(j "d['data'][1]['id']")
check "ids are content hashes" is "$(j "all(x['id'].startswith('doc-') and len(x['id']) == 36 and x['created'] for x in d['data'])")" True
req POST "$U/v1/documents" '{"text": "Ada Lovelace wrote the first published computer program in 1843."}'
check "same text, same id" is "$(j "d['data'][0]['id'] + str(d['data'][0]['created'])")" "${ID1}False"
B="{\"messages\": [{\"role\": \"user\", \"content\": \"Who proposed the Turing test?\"}], \"documents\": [\"$ID1\", {\"id\": \"$ID2\"}], \"max_tokens\": 12}"
req POST "$U/v1/chat/completions" "$B"
check "chat with document ids 200" is "$CODE" 200
check "first use computes the chunks" is "$(j "d['kvfuse']['chunk_misses'] == 3 and d['kvfuse']['chunk_hits'] == 0")" True
req POST "$U/v1/chat/completions" "$B"
check "second use hits the cache" is "$(j "d['kvfuse']['chunk_hits'] == 3 and d['kvfuse']['chunk_misses'] == 0")" True
check "cached tokens reported" is "$(j "d['kvfuse']['reused_tokens'] > 0 and d['usage']['prompt_tokens_details']['cached_tokens'] == d['kvfuse']['reused_tokens'] and d['kvfuse']['reused_tokens'] + d['kvfuse']['recomputed_tokens'] <= d['kvfuse']['total_tokens']")" True
check "no precompute on a hit" is "$(j "d['kvfuse']['precompute_ms'] == 0")" True
FULLANS=$(j "d['choices'][0]['message']['content']")
req POST "$U/v1/chat/completions" "${B%\}}, \"kvfuse\": {\"method\": \"full\"}}"
check "method full recomputes everything" is "$(j "d['kvfuse']['method'] == 'full' and d['kvfuse']['recomputed_tokens'] == d['kvfuse']['total_tokens']")" True
FULLDENSE=$(j "d['choices'][0]['message']['content']")
# sparse attention per request: SALE with threshold 0 is dense attention, bit for bit
req POST "$U/v1/chat/completions" "${B%\}}, \"kvfuse\": {\"method\": \"full\", \"attn\": {\"mode\": \"sale\", \"threshold\": 0, \"min_keys\": 0, \"dense_layers\": 0}}}"
check "attn sale reported" is "$(j "d['kvfuse'].get('attn')")" sale
check "attn sale, threshold 0 = dense answer" is "$(j "d['choices'][0]['message']['content']")" "$FULLDENSE"
req POST "$U/v1/chat/completions" "${B%\}}, \"kvfuse\": {\"attn\": {\"mode\": \"sale\", \"threshold\": 0, \"min_keys\": 0, \"dense_layers\": 0}}}"
check "focus with attn sale, threshold 0 = dense focus answer" is "$(j "d['choices'][0]['message']['content']")" "$FULLANS"
req POST "$U/v1/chat/completions" "${B%\}}, \"kvfuse\": {\"attn\": {\"mode\": \"power\", \"block\": 64, \"window\": 1, \"dense_layers\": 0}}}"
check "attn power 200" is "$CODE" 200
check "attn power reported" is "$(j "d['kvfuse'].get('attn')")" power
req POST "$U/v1/chat/completions" "${B%\}}, \"kvfuse\": {\"decode_attn\": {\"mode\": \"mac\", \"band\": 64, \"min_keys\": 0}}}"
check "decode_attn mac 200" is "$CODE" 200
check "decode_attn mac reported" is "$(j "d['kvfuse'].get('decode_attn')")" mac
# LouisKV with a budget over every key attends to all of them (in three ranges): focus's answer
req POST "$U/v1/chat/completions" "${B%\}}, \"kvfuse\": {\"decode_attn\": {\"mode\": \"louis\", \"band\": 64, \"min_keys\": 0, \"dense_layers\": 0, \"budget\": 100000}}}"
check "decode_attn louis reported" is "$(j "d['kvfuse'].get('decode_attn')")" louis
check "decode_attn louis, every key = dense focus answer" is "$(j "d['choices'][0]['message']['content']")" "$FULLANS"
req GET "$U/v1/documents/$ID2"; check "get document" is "$(j "d['text']")" "Turing

Alan Turing proposed the Turing test in 1950."
req GET "$U/v1/documents"; check "list documents" is "$(j "len(d['data'])")" 2
req DELETE "$U/v1/documents/$ID2"; check "delete document" is "$(j "d['deleted']")" True
req GET "$U/v1/documents/$ID2"; check "deleted document is gone" is "$CODE" 404
req POST "$U/v1/chat/completions" "$B"; check "request with a deleted id: 404" is "$CODE" 404
check "404 names the field" is "$(j "d['error']['param']")" "documents[1]"

# ---- streaming ----------------------------------------------------------------------------------
SB='{"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 24, "stream": true, "stream_options": {"include_usage": true}}'
curl -sN "$U/v1/chat/completions" -d "$SB" -D "$T/shdrs" > "$T/sse"
req POST "$U/v1/chat/completions" "${SB/\"stream\": true/\"stream\": false}"
"$PY" - "$T/sse" "$T/body" > "$T/sse.out" <<'PY'
import json, sys
ev = [l[6:] for l in open(sys.argv[1]).read().split("\n") if l.startswith("data: ")]
full = json.load(open(sys.argv[2]))
ok = ev and ev[-1] == "[DONE]"
ch = [json.loads(e) for e in ev[:-1]]
ok = ok and ch[0]["choices"][0]["delta"].get("role") == "assistant"
text = "".join(c["choices"][0]["delta"].get("content") or "" for c in ch if c["choices"])
fin = [c for c in ch if c["choices"] and c["choices"][0]["finish_reason"]]
usage = [c for c in ch if not c["choices"] and "usage" in c]
ok = ok and len(fin) == 1 and fin[0]["kvfuse"]["method"] == "none" and len(usage) == 1
ok = ok and all(c["object"] == "chat.completion.chunk" for c in ch)
u, fu = usage[0]["usage"], full["usage"]  # cached_tokens differ: the second request reuses the prefix
ok = ok and text == full["choices"][0]["message"]["content"]
ok = ok and all(u[k] == fu[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
print("ok" if ok else f"bad: {text!r} vs {full['choices'][0]['message']['content']!r}, {len(ch)} chunks")
PY
check "SSE stream: role, deltas = complete answer, final, usage, [DONE]" is "$(cat "$T/sse.out")" ok
check "SSE content type" grep -qi '^content-type: text/event-stream' "$T/shdrs"
req POST "$U/v1/completions" '{"prompt": "The capital of Italy is", "max_tokens": 5}'
check "completions" is "$(j "d['object'] == 'text_completion' and d['usage']['completion_tokens'] >= 1 and isinstance(d['choices'][0]['text'], str)")" True
curl -sN "$U/v1/completions" -d '{"prompt": "One, two,", "max_tokens": 6, "stream": true}' > "$T/sse2"
check "completions stream" is "$(grep -c '"object":"text_completion"' "$T/sse2" | awk '$1 >= 2 {print "y"}')$(tail -c 15 "$T/sse2" | grep -c DONE)" y1

# ---- malformed requests: every one a 4xx with a message -------------------------------------------
M="$U/v1/chat/completions"
GOODMSG='"messages": [{"role": "user", "content": "hi"}]'
bad_case() { # expected-code expected-param body [curl args]
    local want=$1 param=$2 body=$3; shift 3
    req POST "${URL:-$M}" "$body" "$@"
    local msg; msg=$(j "d['error']['message']")
    if [ "$CODE" != "$want" ] || [ -z "$msg" ]; then bad "malformed $body -> $CODE (want $want): $(head -c 200 "$T/body")"; return; fi
    if [ -n "$param" ] && [ "$(j "d['error']['param']")" != "$param" ]; then bad "malformed $body: param $(j "d['error']['param']") (want $param)"; return; fi
    ok
}
bad_case 400 "" '{"messages": [{"role": "user", "content": "hi"}'
bad_case 400 "" 'null'
bad_case 400 "" '{} trailing'
bad_case 400 messages '{}'
bad_case 400 messages '{"messages": []}'
bad_case 400 messages '{"messages": {"role": "user"}}'
bad_case 400 "messages[0].role" '{"messages": [{"role": "wizard", "content": "hi"}]}'
bad_case 400 "messages[0].content" '{"messages": [{"role": "user", "content": 42}]}'
bad_case 400 "messages[0].content[0].type" '{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}'
bad_case 400 max_tokens "{$GOODMSG, \"max_tokens\": \"ten\"}"
bad_case 400 max_tokens "{$GOODMSG, \"max_tokens\": -3}"
bad_case 400 max_tokens "{$GOODMSG, \"max_tokens\": 99999}"
bad_case 400 temperature "{$GOODMSG, \"temperature\": \"hot\"}"
bad_case 400 top_p "{$GOODMSG, \"top_p\": 7}"
bad_case 400 stream "{$GOODMSG, \"stream\": 1}"
bad_case 400 stop "{$GOODMSG, \"stop\": {\"a\": 1}}"
bad_case 400 n "{$GOODMSG, \"n\": 3}"
bad_case 400 tools "{$GOODMSG, \"tools\": [{\"type\": \"function\"}]}"
bad_case 400 documents "{$GOODMSG, \"documents\": \"not a list\"}"
bad_case 400 "documents[0]" "{$GOODMSG, \"documents\": [null]}"
bad_case 404 "documents[0]" "{$GOODMSG, \"documents\": [\"doc-00000000000000000000000000000000\"]}"
bad_case 400 kvfuse.method "{$GOODMSG, \"documents\": [\"x\"], \"kvfuse\": {\"method\": \"turbo\"}}"
bad_case 400 kvfuse.ratio "{$GOODMSG, \"documents\": [\"x\"], \"kvfuse\": {\"ratio\": -1}}"
bad_case 400 kvfuse.evict "{$GOODMSG, \"kvfuse\": {\"evict\": 3}}"
bad_case 400 kvfuse.attn "{$GOODMSG, \"kvfuse\": {\"attn\": \"fast\"}}"
bad_case 400 messages "{\"messages\": [{\"role\": \"user\", \"content\": \"$(printf 'word %.0s' $(seq 1 2100))\"}]}"
bad_case 400 "" "$(printf '{"messages": [{"role": "user", "content": "\xff\xfe bad"}]}')"
URL="$U/v1/completions" bad_case 400 prompt '{"prompt": 12}'
URL="$U/v1/completions" bad_case 400 prompt '{"max_tokens": 2}'
URL="$U/v1/documents" bad_case 400 documents '{"documents": []}'
URL="$U/v1/documents" bad_case 400 "documents[0]" '{"documents": [""]}'
head -c 300000 /dev/zero | tr '\0' 'x' > "$T/huge"
CODE=$(curl -s -o "$T/body" -w '%{http_code}' "$M" --data-binary @"$T/huge")
check "huge body: 413 with a message" is "$CODE$(j "'limit' in d['error']['message']")" 413True
CODE=$(curl -s -o "$T/body" -w '%{http_code}' -H 'Transfer-Encoding: chunked' "$M" --data-binary @"$T/huge")
check "huge chunked body: 413" is "$CODE" 413
req PUT "$M" '{}'; check "wrong method: 405 + Allow" is "$CODE$(grep -ci '^allow: POST' "$T/hdrs")" 4051
req GET "$U/v1/nothing"; check "unknown path: 404" is "$CODE" 404
req GET "$U/v1/documents/not-an-id"; check "bad document id: 404" is "$CODE" 404
raw() { printf "$1" | timeout 60 bash -c "exec 3<>/dev/tcp/127.0.0.1/$(cat "$T/main.port"); cat >&3; cat <&3" 2>/dev/null; }
raw 'GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n' > "$T/garbage"
check "malformed header line: 400" grep -q '^HTTP/1.1 400' "$T/garbage"
raw 'GARBAGE\r\n\r\n' > /dev/null # libmicrohttpd closes the connection
req GET "$U/health"; check "healthy after the malformed suite" is "$CODE" 200

# ---- client disconnects ---------------------------------------------------------------------------
LONG='{"messages": [{"role": "user", "content": "Write a very long story about a dragon and a knight."}], "max_tokens": 1500, "temperature": 0.9, "seed": 1'
# metric NAME: its value on main's /metrics page (empty if absent)
metric() { curl -s "$U/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
cancelled_is() { [ "$(metric 'kvfuse_completions_total{outcome="cancelled"}')" = "$1" ]; }
active_is() { [ "$(metric kvfuse_active_requests)" = "$1" ]; }
# a stream cut as soon as its first content chunk arrives: grep quits, tee and curl die of
# SIGPIPE at their next write (no clock: a sanitizer build may take seconds per token)
curl -sN "$M" -d "$LONG, \"stream\": true}" 2>/dev/null | tee "$T/cut" | grep -m1 -q '"content"'
check "stream was running when cut" is "${PIPESTATUS[2]}" 0
check "cut stream cancelled" wait_for "$WAIT_S" cancelled_is 1
check "its slot freed" wait_for "$WAIT_S" active_is 0
# an answer (no stream) cut while it is being generated: the client goes once the slot is busy
curl -s "$M" -d "$LONG}" > /dev/null 2>&1 &
CURL_PID=$!
check "long answer running" wait_for "$WAIT_S" active_is 1
kill "$CURL_PID" 2>/dev/null; wait "$CURL_PID" 2>/dev/null
both_done() { active_is 0 && cancelled_is 2; }
wait_for "$WAIT_S" both_done
cancelled=$(metric 'kvfuse_completions_total{outcome="cancelled"}'); active=$(metric kvfuse_active_requests)
check "both disconnected requests were cancelled, slots free" is "${cancelled:-0}/$active" 2/0
req GET "$U/health"; check "healthy after disconnects" is "$CODE" 200

# ---- metrics ------------------------------------------------------------------------------------
req GET "$U/metrics"
for name in 'kvfuse_http_requests_total{endpoint="chat_completions",code="200"}' 'kvfuse_http_requests_total{endpoint="chat_completions",code="400"}' \
    'kvfuse_ttft_seconds_bucket{method="focus",le="+Inf"}' 'kvfuse_ttft_seconds_count{method="none"}' kvfuse_prompt_tokens_total \
    kvfuse_completion_tokens_total 'kvfuse_store_hits_total{tier="memory"}' 'kvfuse_store_misses_total{tier="memory"}' \
    kvfuse_recomputed_fraction kvfuse_queue_depth kvfuse_kv_evictions_total kvfuse_decode_rows_total kvfuse_resident_memory_bytes; do
    check "metric $name" grep -qF "$name" "$T/body"
done
check "metrics: hits counted" is "$(awk '/^kvfuse_store_hits_total\{tier="memory"\}/ {print ($2 >= 3)}' "$T/body")" 1
check "metrics content type" grep -qi '^content-type: text/plain; version=0.0.4' "$T/hdrs"

# ---- back-pressure: 1 slot + 1 queued; the rest get 429 with Retry-After --------------------------
CURLS=()
for i in 1 2 3 4 5 6; do
    curl -s -o /dev/null -D "$T/bp$i" -w '%{http_code}\n' "$URL_small/v1/chat/completions" \
        -d '{"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 60}' > "$T/bpc$i" &
    CURLS+=($!)
done
for p in "${CURLS[@]}"; do wait "$p"; done
n200=$(cat "$T"/bpc* | grep -c '^200$'); n429=$(cat "$T"/bpc* | grep -c '^429$')
check "flood: some served, the rest 429 (got $n200 x 200, $n429 x 429)" test "$n200" -ge 1 -a "$n429" -ge 1 -a $((n200 + n429)) -eq 6
check "429 carries Retry-After" bash -c "grep -li '^retry-after: [0-9]' $T/bp* | grep -q ."
req GET "$URL_small/health"; check "healthy after the flood" is "$CODE" 200

# ---- tenants ------------------------------------------------------------------------------------
K=$URL_keys
A=(-H 'Authorization: Bearer key-alpha-123'); Bb=(-H 'Authorization: Bearer key-beta-4567')
req GET "$K/v1/models"; check "no key: 401" is "$CODE" 401
req GET "$K/v1/models" "" -H 'Authorization: Bearer nope-nope-nope'; check "wrong key: 401" is "$CODE" 401
req GET "$K/health"; check "health needs no key" is "$CODE" 200
req POST "$K/v1/documents" '{"text": "The launch code of project Blue is 4471."}' "${A[@]}"
AID=$(j "d['data'][0]['id']")
check "alpha ingests" is "$CODE" 200
req GET "$K/v1/documents/$AID" "" "${Bb[@]}"; check "beta cannot read alpha's document" is "$CODE" 404
req GET "$K/v1/documents" "" "${Bb[@]}"; check "beta lists nothing" is "$(j "len(d['data'])")" 0
TB="{\"messages\": [{\"role\": \"user\", \"content\": \"What is the launch code?\"}], \"documents\": [\"$AID\"], \"max_tokens\": 8}"
req POST "$K/v1/chat/completions" "$TB" "${Bb[@]}"; check "beta cannot use alpha's document" is "$CODE" 404
req POST "$K/v1/chat/completions" "$TB" "${A[@]}"; check "alpha uses it" is "$CODE" 200
TI='{"messages": [{"role": "user", "content": "What is the launch code?"}], "documents": ["The launch code of project Blue is 4471."], "max_tokens": 4}'
req POST "$K/v1/chat/completions" "$TI" "${A[@]}"; check "alpha: same text inline hits its own cache" is "$(j "d['kvfuse']['chunk_hits']")" 2
req POST "$K/v1/chat/completions" "$TI" "${Bb[@]}"
check "beta: same text misses (no cross-tenant cache)" is "$(j "d['kvfuse']['chunk_hits'] == 0 and d['kvfuse']['chunk_misses'] == 2")" True
req POST "$K/v1/documents" '{"text": "Shared handbook: the office opens at nine.", "shared": true}' "${A[@]}"
SID=$(j "d['data'][0]['id']")
req GET "$K/v1/documents/$SID" "" "${Bb[@]}"; check "shared document visible to beta" is "$(j "d['shared']")" True
req DELETE "$K/v1/documents/$SID" "" "${Bb[@]}"; check "only the owner deletes a shared document" is "$CODE" 403
req GET "$K/metrics" "" "${A[@]}"; check "metrics need an admin key" is "$CODE" 403
req GET "$K/metrics" "" -H 'Authorization: Bearer key-admin-890'; check "admin reads metrics" is "$CODE" 200

# ---- the openai client, when installed ----------------------------------------------------------
if "$PY" -c "import openai" 2>/dev/null; then
    "$PY" - "$U" > "$T/oai" 2>&1 <<'PY'
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="none")
r = c.chat.completions.create(model="x", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8,
                              extra_body={"documents": ["Hi is a greeting."], "kvfuse": {"method": "a3"}})
s = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
    model="x", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, stream=True) if ch.choices)
print("ok" if r.choices[0].message.content and s else "bad")
PY
    check "openai client" is "$(tail -n 1 "$T/oai")" ok
else
    echo "  (the openai Python package is not installed: client check skipped)"
fi

# ---- adaptive ratio and the live fidelity audit ---------------------------------------------------
start audit --ctx 1024 --parallel 1 --ratio auto --fidelity 0.9 --audit-rate 1 --audit-cpu 1 --audit-chunk 16 -q
AU=$URL_audit
req GET "$AU/v1/audit"; check "audit: empty at start" is "$(j "d['completed']")" 0
req GET "$U/v1/audit"; check "audit off by default: 404" is "$CODE" 404
req POST "$AU/v1/chat/completions" "{\"messages\": [$Q], \"documents\": $DOCS, \"max_tokens\": 8}"
check "auto ratio: 200" is "$CODE" 200
check "auto ratio: reported" is "$(j "d['kvfuse']['ratio_mode']")" auto
check "auto ratio: within the default bounds" is "$(j "0.05 <= d['kvfuse']['ratio'] <= 0.5")" True
AID=$(j "d['id']")
done_=0
for _ in $(seq 1 600); do # the audit runs once the server is idle (bounded wait, not a timing check)
    req GET "$AU/v1/audit"
    [ "$(j "d['completed']")" = 1 ] && { done_=1; break; }
    sleep 0.1
done
check "audit: the fused request was prefilled in full" is "$done_" 1
check "audit: lists the request" is "$(j "d['worst'][0]['id']")" "$AID"
check "audit: KL and agreement" is "$(j "d['worst'][0]['first_token_kl'] >= 0 and d['worst'][0]['first_token_agree'] in (True, False)")" True
check "audit: greedy answers compared" is "$(j "0 <= d['worst'][0]['answer_f1'] <= 1 and d['methods']['focus']['audits'] == 1")" True
check "audit: the ratio auto picked, and the target" is "$(j "0.05 <= d['worst'][0]['ratio'] <= 0.5 and d['worst'][0]['fidelity'] == 0.9")" True
req POST "$AU/v1/chat/completions" "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 2}"
req GET "$AU/metrics"
check "audit metrics: KL per method" grep -q '^kvfuse_audit_first_token_kl_count{method="focus"} 1$' "$T/body"
check "audit metrics: plain prompts are not sampled" grep -q '^kvfuse_audit_sampled_total 1$' "$T/body"
check "audit metrics: answer F1" grep -q '^kvfuse_audit_answer_f1_count{method="focus"} 1$' "$T/body"
req GET "$K/v1/audit" "" "${A[@]}"; check "audit needs an admin key" is "$CODE" 403

# ---- shutdown -------------------------------------------------------------------------------------
kill -TERM "$PID_main"
st=1
t0=$SECONDS
while [ $((SECONDS - t0)) -lt "$WAIT_S" ]; do kill -0 "$PID_main" 2>/dev/null || { wait "$PID_main"; st=$?; break; }; sleep 0.1; done
check "SIGTERM: clean exit" is "$st" 0
check "server log has no sanitizer or crash report" bash -c "! grep -qiE 'AddressSanitizer|ThreadSanitizer|runtime error|Segmentation' $T/*.log"

# ---- again under AddressSanitizer + UBSan, when `make asan` has built a current CLI ---------------
ASAN_CLI=${SERVER_ASAN_CLI:-build/asan/kvfuse}
if [ -z "${SERVER_SH_INNER:-}" ]; then
    fresh=1
    for f in tools/server/*.c tools/server/*.h; do [ "$ASAN_CLI" -nt "$f" ] || fresh=0; done
    if [ -x "$ASAN_CLI" ] && [ $fresh = 1 ] && "$ASAN_CLI" serve --help >/dev/null 2>&1; then
        echo "== the same suite against the sanitizer build $ASAN_CLI"
        SERVER_SH_INNER=1 KVFUSE=$ASAN_CLI "$0" > "$T/asan.out" 2>&1
        sed 's/^/  /' "$T/asan.out" | grep -E 'FAIL|passed' || true
        line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$T/asan.out" | tail -n 1)
        if [ -n "$line" ]; then
            pass=$((pass + ${line%% passed*})); f2=${line#*, }; fail=$((fail + ${f2%% failed}))
        else
            bad "the sanitizer run ended without a summary"; tail -n 20 "$T/asan.out"
        fi
    else
        echo "  (no current sanitizer build at $ASAN_CLI: \`make asan\` first to run this suite under ASan too)"
    fi
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
