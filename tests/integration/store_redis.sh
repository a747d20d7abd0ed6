#!/usr/bin/env bash
# store_redis.sh - the Redis tier against a real redis-server (installed with apt-get when
# missing; bound to 127.0.0.1 on a free port, no persistence, stopped at the end):
#   - ingest into Redis alone; a new process's ask is served entirely from Redis;
#   - ask with an empty disk tier and Redis: Redis hits are written back to disk, and a later
#     ask with the disk alone hits everything;
#   - a corrupt value in Redis is detected, recomputed and replaced;
#   - Redis killed, then restarted (empty) while ingests and asks run in a loop: every request
#     still succeeds from the lower tiers, the store verifies, and after the restart new
#     chunks reach Redis again;
#   - a three-master Redis Cluster: entries spread over the nodes by hash slot (MOVED
#     redirections followed), an ask through another node hits everything.
# Synthetic model (fast).
source "$(dirname "$0")/store_common.sh"

if ! command -v redis-server >/dev/null 2>&1; then
    echo "store_redis: installing redis-server" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO=sudo
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null 2>&1 ||
        { $SUDO apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null 2>&1; }
fi
if ! command -v redis-server >/dev/null 2>&1; then
    echo "store_redis: redis-server is not installed and apt-get could not install it"
    echo "0 passed, 1 failed"
    exit 1
fi

PORT=$(free_port)
R=127.0.0.1:$PORT
RPID=""
redis_start() {
    redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --protected-mode yes \
        --dir "$T" --loglevel warning --daemonize no >>"$T/redis.log" 2>&1 &
    RPID=$!
    for _ in $(seq 1 100); do
        redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.05
    done
    return 1
}
redis_kill() { [ -n "$RPID" ] && kill -9 "$RPID" 2>/dev/null; wait "$RPID" 2>/dev/null; RPID=""; }
cleanup_hooks+=("redis_kill")
rcli() { redis-cli -h 127.0.0.1 -p "$PORT" "$@"; }

check "redis-server starts on $R" redis_start
first() { "${PYTHON:-python3}" -c 'import json,sys; d=json.load(open(sys.argv[1])); json.dump(d[:int(sys.argv[2])], open(sys.argv[3],"w"))' "$@"; }

# 1. Redis alone
check "ingest into Redis" "$KVFUSE" ingest -m "$SYN" --redis "$R" --chunk-tokens 96 --manifest "$T/m.json" -q "${DOCS[0]}"
first "$T/m.json" 5 "$T/d5.json"
n_redis=$(rcli dbsize)
echo "redis holds $n_redis entries"
check "Redis holds the chunks" [ "${n_redis:-0}" -gt 5 ]
out=$("$KVFUSE" store stats --redis "$R" --json 2>/dev/null)
check "store stats counts the Redis tier" [ "$(json_field "$out" 'd["tiers"]["redis"]["entries"]')" = "$n_redis" ]
out=$("$KVFUSE" ask -m "$SYN" --redis "$R" --docs-json "$T/d5.json" -q "what" -n 2 --json 2>"$T/a1.err")
check "ask from Redis alone" [ $? -eq 0 ]
check "every chunk from Redis" [ "$(json_field "$out" 'd["chunk_misses"]')" = 0 ]
check "Redis served them" [ "$(json_field "$out" 'd["store"]["redis"]["chunk_hits"]')" = 6 ]

# 2. write-back from Redis to an empty disk tier
out=$("$KVFUSE" ask -m "$SYN" --store "$T/s" --redis "$R" --docs-json "$T/d5.json" -q "what" -n 2 --json 2>"$T/a2.err")
check "ask with disk + Redis" [ $? -eq 0 ]
out=$("$KVFUSE" ask -m "$SYN" --store "$T/s" --docs-json "$T/d5.json" -q "what" -n 2 --json 2>"$T/a3.err")
check "ask from the disk tier alone" [ $? -eq 0 ]
check "the Redis hits were written back to disk" [ "$(json_field "$out" 'd["store"]["disk"]["chunk_hits"]')" = 6 ]

# 3. a corrupt value in Redis: detected, recomputed, replaced
key=$(rcli --scan --pattern 'kvf:{*}' | head -n 1)
rcli set "$key" "garbage that is not a chunk entry" >/dev/null
"$KVFUSE" ask -m "$SYN" --redis "$R" --docs-json "$T/m.json" -q "what" -n 2 --json >"$T/a4.out" 2>"$T/a4.err"
check "ask with a corrupt Redis value succeeds" [ $? -eq 0 ]
check "the corrupt value was detected" grep -q "redis tier entry .* is corrupt" "$T/a4.err"
check "the chunk was recomputed" grep -q "ask: 1 chunks computed" "$T/a4.err"
len=$(rcli strlen "$key")
check "the value was replaced by a good entry ($len bytes)" [ "${len:-0}" -gt 1000 ]

# 4. Redis killed and restarted while requests run
loop_fail=0 loop_runs=0
(
    i=0
    while [ ! -e "$T/stop" ]; do
        i=$((i + 1))
        "$KVFUSE" ingest -m "$SYN" --store "$T/s" --redis "$R" --redis-timeout 300 --chunk-tokens $((60 + i)) \
            -q "${DOCS[1]}" >>"$T/loop.log" 2>&1 || echo "ingest $i failed" >>"$T/loop.fail"
        "$KVFUSE" ask -m "$SYN" --store "$T/s" --redis "$R" --redis-timeout 300 --docs-json "$T/d5.json" \
            -q "what" -n 2 >>"$T/loop.log" 2>&1 || echo "ask $i failed" >>"$T/loop.fail"
        echo run >>"$T/loop.runs"
    done
) &
loop=$!
sleep 1.5
redis_kill
echo "redis killed"
sleep 2
check "redis-server restarts" redis_start
echo "redis restarted"
sleep 2.5
touch "$T/stop"
wait "$loop"
loop_runs=$(wc -l <"$T/loop.runs" 2>/dev/null || echo 0)
[ -e "$T/loop.fail" ] && loop_fail=$(wc -l <"$T/loop.fail")
echo "$loop_runs ingest+ask rounds during the outage and restart; $loop_fail failures"
check "requests ran through the outage ($loop_runs rounds)" [ "$loop_runs" -ge 3 ]
check "every request succeeded" [ "$loop_fail" -eq 0 ]
check "the outage was noticed and logged" grep -q "redis tier .* is unavailable" "$T/loop.log"
n_after=$(rcli dbsize)
echo "redis holds $n_after entries after the restart"
check "new chunks reached Redis after the restart" [ "${n_after:-0}" -gt 0 ]
check "the disk tier verifies" "$KVFUSE" store verify --store "$T/s" -q
redis_kill

# 5. a Redis Cluster of three masters: MOVED redirections followed, keys spread by hash slot
cluster_port() { # a free port whose cluster bus port (+10000) is free too
    "${PYTHON:-python3}" -c '
import random, socket
for _ in range(200):
    p = random.randrange(20000, 40000)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError:
        pass'
}
CPIDS=()
cluster_ok=1
ports=()
for _ in 1 2 3; do
    p=$(cluster_port)
    ports+=("$p")
    mkdir -p "$T/c$p"
    (cd "$T/c$p" && exec redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file nodes.conf --save "" --appendonly no --loglevel warning) >>"$T/cluster.log" 2>&1 &
    CPIDS+=($!)
done
cleanup_hooks+=('for p in "${CPIDS[@]}"; do kill -9 $p; done')
for p in "${ports[@]}"; do
    for _ in $(seq 1 100); do redis-cli -p "$p" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
done
redis-cli --cluster create "127.0.0.1:${ports[0]}" "127.0.0.1:${ports[1]}" "127.0.0.1:${ports[2]}" \
    --cluster-replicas 0 --cluster-yes >>"$T/cluster.log" 2>&1 || cluster_ok=0
# every node must see the whole cluster before it serves: a node whose own state is not ok yet
# answers CLUSTERDOWN (the store retries that, but only for a while)
cluster_formed() {
    local p
    for p in "${ports[@]}"; do
        redis-cli -p "$p" cluster info 2>/dev/null | grep -q "cluster_state:ok" || return 1
    done
}
for _ in $(seq 1 200); do cluster_formed && break; sleep 0.1; done
check "a three-node cluster forms" [ "$cluster_ok" -eq 1 ]
if [ "$cluster_ok" -eq 1 ]; then
    check "ingest into the cluster through node 1" "$KVFUSE" ingest -m "$SYN" --redis "127.0.0.1:${ports[0]}" \
        --chunk-tokens 96 --manifest "$T/mc.json" -q "${DOCS[2]}"
    total=0 spread=0
    for p in "${ports[@]}"; do
        k=$(redis-cli -p "$p" dbsize)
        total=$((total + k)); [ "$k" -gt 0 ] && spread=$((spread + 1))
    done
    echo "cluster: $total entries over $spread nodes"
    check "the entries are spread over the three nodes" [ "$spread" -eq 3 ]
    out=$("$KVFUSE" ask -m "$SYN" --redis "127.0.0.1:${ports[1]}" --docs-json "$T/mc.json" -q "what" -n 2 --json 2>"$T/ac.err")
    rc=$?
    check "ask through node 2 succeeds" [ $rc -eq 0 ]
    [ $rc -eq 0 ] || tail -n 5 "$T/ac.err"
    check "every chunk came from the cluster" [ "$(json_field "$out" 'd["chunk_misses"]')" = 0 ]
    out=$("$KVFUSE" store stats --redis "127.0.0.1:${ports[2]}" --json 2>"$T/sc.err")
    counted=$(json_field "$out" 'd["tiers"]["redis"]["entries"]' 2>/dev/null)
    [ -n "$counted" ] || tail -n 5 "$T/sc.err"
    echo "store stats through node 3: $counted entries"
    check "store stats counts every node's entries ($counted of $total)" [ "$counted" = "$total" ]
fi
for p in "${CPIDS[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
CPIDS=()
finish
