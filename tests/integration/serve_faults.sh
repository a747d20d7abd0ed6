#!/usr/bin/env bash
# serve_faults.sh - faults of the chunk store while `kvfuse serve` answers requests, at small
# scale on the synthetic model: (1) the LMDB map fills (--map-size 1M), (2) the disk tier's
# device fills (a 2 MiB tmpfs where this process may mount one, else a file size limit), (3)
# the Redis tier is stopped and started again. In each case every request is still answered
# (200, from the tiers that work or by computing), the failure is logged once per episode
# (and the recovery once), /metrics counts the failed reads/writes in
# kvfuse_store_errors_total, answers repeated after the fault are identical to those before
# (nothing corrupt is served: greedy decoding over the same documents), the server exits
# cleanly on SIGTERM and the disk tier verifies afterwards.
source "$(dirname "$0")/store_common.sh"
PY=${PYTHON:-python3}
WAIT_S=${SERVER_WAIT_S:-600}
SPIDS=()
cleanup_hooks+=('for p in "${SPIDS[@]}"; do kill "$p"; done')

# serve NAME ARGS...: a server on a free port (log $T/NAME.log); sets U and SPID
serve() {
    local name=$1; shift
    ${WRAP[@]+"${WRAP[@]}"} "$KVFUSE" serve -m "$SYN" --port 0 --port-file "$T/$name.port" --ctx 4096 \
        --parallel 1 "$@" >"$T/$name.log" 2>&1 &
    SPID=$!
    SPIDS+=("$SPID")
    local t0=$SECONDS
    while [ ! -s "$T/$name.port" ] && kill -0 "$SPID" 2>/dev/null && [ $((SECONDS - t0)) -lt "$WAIT_S" ]; do sleep 0.1; done
    if [ ! -s "$T/$name.port" ]; then
        bad "$name: the server did not start"; cat "$T/$name.log"; finish; exit 1
    fi
    U=http://127.0.0.1:$(cat "$T/$name.port")
}
# doc I: a document of ~150 words unique to I (two or three chunks of 64 tokens)
doc() {
    local i=$1 s
    s="Record $i."
    for k in $(seq 1 12); do s="$s Item $k of record $i says the value $((i * 31 + k * 7)) belongs to group $((i % 5 + k))."; done
    printf '%s' "$s"
}
# ask I J: a chat request over documents I and J (greedy); prints "CODE ANSWER"
ask() {
    local body
    body=$("$PY" -c 'import json,sys; print(json.dumps({"messages": [{"role": "user", "content": "Which value belongs to group 3?"}],
        "documents": [sys.argv[1], sys.argv[2]], "max_tokens": 6, "temperature": 0, "kvfuse": {"method": "a3"}}))' "$(doc "$1")" "$(doc "$2")")
    curl -s -o "$T/ans" -w '%{http_code}' "$U/v1/chat/completions" -H 'Content-Type: application/json' --data-binary "$body"
    printf ' %s\n' "$("$PY" -c 'import json,sys; print(repr(json.load(open(sys.argv[1]))["choices"][0]["message"]["content"]))' "$T/ans" 2>/dev/null)"
}
metric() { curl -s "$U/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
# stop: SIGTERM, wait for the exit; its status in ST
stop() {
    kill -TERM "$SPID"
    wait "$SPID"
    ST=$?
}

# fill_case NAME STORE-ARGS...: requests over new documents until the disk tier has failed
# writes (at most 60), then 5 more; every answer 200; the first answers repeated unchanged
fill_case() {
    local name=$1; shift
    serve "$name" "$@"
    local first second codes="" i
    first=$(ask 1 2)
    for i in $(seq 3 2 121); do
        codes="$codes $(ask "$i" $((i + 1)) | cut -d' ' -f1)"
        [ "$(metric 'kvfuse_store_errors_total{tier="disk"}')" -gt 0 ] 2>/dev/null && break
    done
    for i in $(seq 201 2 209); do codes="$codes $(ask "$i" $((i + 1)) | cut -d' ' -f1)"; done
    local n; n=$(wc -w <<<"$codes")
    check "$name: all $n requests answered 200 while the disk tier failed" [ "$(tr ' ' '\n' <<<"$codes" | grep -cv '^200$\|^$')" = 0 ]
    local errs; errs=$(metric 'kvfuse_store_errors_total{tier="disk"}')
    echo "$name: $n requests; disk tier errors counted: $errs"
    check "$name: /metrics counts the failed writes ($errs)" [ "${errs:-0}" -gt 0 ]
    second=$(ask 1 2)
    check "$name: a repeated request gets the same answer ($first / $second)" [ "$first" = "$second" ]
    check "$name: first answer was 200" [ "${first%% *}" = 200 ]
    stop
    check "$name: SIGTERM: clean exit ($ST)" [ "$ST" = 0 ]
    local said; said=$(grep -c 'chunks are served from the other tiers or computed' "$T/$name.log")
    check "$name: the failure is logged once ($said)" [ "$said" = 1 ]
    grep -m1 'chunks are served from the other tiers' "$T/$name.log" | sed 's/^/  log: /'
}

# 1. the LMDB map fills
WRAP=()
fill_case mapfull --store "$T/s1" --map-size 1M
check "mapfull: the store verifies" "$KVFUSE" store verify --store "$T/s1" -q
check "mapfull: the cause is named" grep -q 'map is full' "$T/mapfull.log"

# 2. the device fills: a 2 MiB tmpfs, else a 1 MiB file size limit
mkdir -p "$T/tmpfs"
if mount -t tmpfs -o size=2m tmpfs "$T/tmpfs" 2>/dev/null; then
    cleanup_hooks+=("umount '$T/tmpfs'")
    fill_case diskfull --store "$T/tmpfs/s2"
    check "diskfull: the store verifies" "$KVFUSE" store verify --store "$T/tmpfs/s2" -q
else
    echo "diskfull: cannot mount a tmpfs here; a 1 MiB file size limit stands in for a full device"
    WRAP=(bash -c 'ulimit -f 1024; exec "$@"' ulimit)
    fill_case diskfull --store "$T/s2"
    WRAP=()
    check "diskfull: the store verifies" "$KVFUSE" store verify --store "$T/s2" -q
fi
check "diskfull: the cause is named" grep -qiE 'disk is full|no space' "$T/diskfull.log"

# 3. Redis stops and starts again
if command -v redis-server >/dev/null 2>&1; then
    RP=$(free_port)
    redis() { redis-server --port "$RP" --save '' --appendonly no --daemonize no >"$T/redis-server.out" 2>&1 & RPID=$!; SPIDS+=("$RPID"); 
        for _ in $(seq 1 100); do redis-cli -p "$RP" ping 2>/dev/null | grep -q PONG && return 0; sleep 0.05; done; return 1; }
    dbsize() { redis-cli -p "$RP" dbsize 2>/dev/null; }
    check "redis: starts" redis
    serve rsrv --redis "127.0.0.1:$RP" --mem-budget 0
    first=$(ask 1 2)
    check "redis: chunks reach Redis ($(dbsize))" [ "$(dbsize)" -gt 0 ] 2>/dev/null
    redis-cli -p "$RP" shutdown nosave >/dev/null 2>&1; wait "$RPID" 2>/dev/null
    codes=""
    for i in $(seq 301 2 309); do codes="$codes $(ask "$i" $((i + 1)) | cut -d' ' -f1)"; done
    again=$(ask 1 2)
    check "redis down: every request answered 200 ($codes)" [ "$(tr ' ' '\n' <<<"$codes" | grep -cv '^200$\|^$')" = 0 ]
    check "redis down: the same answer, computed again ($first / $again)" [ "$first" = "$again" ]
    errs=$(metric 'kvfuse_store_errors_total{tier="redis"}')
    check "redis down: /metrics counts the errors ($errs)" [ "${errs:-0}" -gt 0 ]
    check "redis restarts" redis
    sleep 1.2 # the tier retries its connection once a second
    n0=$(dbsize)
    for i in $(seq 401 2 441); do
        ask "$i" $((i + 1)) >/dev/null
        [ "$(dbsize)" -gt "${n0:-0}" ] 2>/dev/null && break
        sleep 0.3
    done
    check "redis back: new chunks reach it again ($(dbsize))" [ "$(dbsize)" -gt "${n0:-0}" ] 2>/dev/null
    check "redis back: the same answer ($(ask 1 2))" [ "$(ask 1 2)" = "$first" ]
    stop
    check "redis: SIGTERM: clean exit ($ST)" [ "$ST" = 0 ]
    check "redis: 'unavailable' logged once ($(grep -c 'is unavailable' "$T/rsrv.log"))" [ "$(grep -c 'is unavailable' "$T/rsrv.log")" = 1 ]
    check "redis: 'is back' logged once" [ "$(grep -c 'is back' "$T/rsrv.log")" = 1 ]
    redis-cli -p "$RP" shutdown nosave >/dev/null 2>&1
else
    echo "redis: redis-server is not installed (store_redis.sh installs it); Redis case skipped"
fi
check "no sanitizer or crash report in the server logs" bash -c "! grep -qiE 'Sanitizer|runtime error|Segmentation' $T/*.log"
finish
