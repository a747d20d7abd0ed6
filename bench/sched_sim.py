#!/usr/bin/env python3
"""sched_sim.py - queueing simulations behind the README's notes on cache-aware queue order, on
one server (fused prefill runs one request at a time) with the closed loop of bench/sched.sh
(8 clients x 8 requests); service times 0.6 s when a request's documents are cached, 3.6 s when
not. Prints mean, p99 and max response time over the seeds.
  unique  (default)  half of the requests cached, the others unique (sched.sh POOL=0): FIFO,
                     shortest-job-first and highest-response-ratio-next, each with an aging
                     bound (requests that waited longer go first, in arrival order), and
                     shortest-job-first with the overtake bound K = 3 (serve's default); 20 seeds
  --pool N           every request asks about one of N document sets (uniform), an LRU cache
                     holds --cap C of them (4): FIFO against cached-first order with an overtake
                     bound K (a request overtaken K times goes next) and with the cache evicting
                     sets no waiting request needs first; 40 seeds
Usage: bench/sched_sim.py [--reqs N] [--pool N [--cap C]]"""
import argparse
import random
from collections import OrderedDict


def run(policy, aging, reqs, seed, clients=8, hot=0.5, s_hot=0.6, s_cold=3.6, overtake=0):
    rng = random.Random(seed)
    plan = [[rng.random() < hot for _ in range(reqs)] for _ in range(clients)]
    queue = [[c * 1e-6, c, 0, plan[c][0], 0] for c in range(clients)]  # arrival, client, n, hot, overtaken
    t, out = 0.0, []
    while queue:
        def key(job):
            arrival, _, _, h, ovt = job
            wait, cost = t - arrival, s_hot if h else s_cold
            if policy == "fifo" or wait > aging or (overtake and ovt >= overtake):
                return (0, arrival)
            return (1, cost, arrival) if policy == "sjf" else (1, -(wait + cost) / cost, arrival)
        queue.sort(key=key)
        arrival, c, n, h, _ = queue.pop(0)
        for q in queue:
            q[4] += q[0] < arrival
        t += s_hot if h else s_cold
        out.append(t - arrival)
        if n + 1 < reqs:
            queue.append([t, c, n + 1, plan[c][n + 1], 0])
    out.sort()
    return sum(out) / len(out), out[int(0.99 * (len(out) - 1))], out[-1]


def run_pool(k, protect, reqs, seed, pool, cap, clients=8, s_hot=0.6, s_cold=3.6):
    """k = 0: FIFO; else cached sets first, a request overtaken k times goes next. Returns mean,
    p99, max and the hit rate."""
    rng = random.Random(seed)
    plan = [[rng.randrange(pool) for _ in range(reqs)] for _ in range(clients)]
    cache = OrderedDict()  # LRU order, oldest first
    queue = [[c * 1e-6, c, 0, 0] for c in range(clients)]  # arrival, client, n, overtaken
    t, out, hits = 0.0, [], 0
    while queue:
        queue.sort(key=lambda j: (0, j[0]) if k == 0 or j[3] >= k else (1, plan[j[1]][j[2]] not in cache, j[0]))
        arrival, c, n, _ = queue.pop(0)
        for q in queue:
            q[3] += q[0] < arrival
        d = plan[c][n]
        if d in cache:
            cache.move_to_end(d)
            t, hits = t + s_hot, hits + 1
        else:
            t += s_cold
            cache[d] = True
            need = {plan[q[1]][q[2]] for q in queue} if protect else set()
            while len(cache) > cap:
                victim = next((x for x in cache if x not in need and x != d), next(iter(cache)))
                del cache[victim]
        out.append(t - arrival)
        if n + 1 < reqs:
            queue.append([t, c, n + 1, 0])
    out.sort()
    return sum(out) / len(out), out[int(0.99 * (len(out) - 1))], out[-1], hits / len(out)


def mean_of(rows):
    return [sum(x[i] for x in rows) / len(rows) for i in range(len(rows[0]))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reqs", type=int, default=8)
    ap.add_argument("--pool", type=int, default=0)
    ap.add_argument("--cap", type=int, default=4)
    a = ap.parse_args()
    if a.pool:
        print("order | overtake K | hints | mean s | p99 s | max s | hit rate | mean x FIFO | p99 / FIFO")
        base = None
        for k, protect in [(0, False), (2, False), (3, False), (4, False), (2, True), (3, True), (4, True)]:
            m = mean_of([run_pool(k, protect, a.reqs, seed, a.pool, a.cap) for seed in range(40)])
            base = base or m
            print(f"{'fifo' if k == 0 else 'cache-aware'} | {k or '-'} | {'yes' if protect else 'no'} | "
                  f"{m[0]:.1f} | {m[1]:.1f} | {m[2]:.1f} | {m[3]:.2f} | {base[0] / m[0]:.2f} | {m[1] / base[1]:.2f}")
        return
    print("policy | aging s | overtake K | mean s | p99 s | max s")
    for policy, aging, k in [("fifo", 0, 0), ("sjf", 5, 0), ("sjf", 20, 0), ("sjf", 1e9, 0), ("sjf", 1e9, 3),
                             ("hrrn", 10, 0), ("hrrn", 20, 0), ("hrrn", 1e9, 0)]:
        m = mean_of([run(policy, aging, a.reqs, seed, overtake=k) for seed in range(20)])
        print(f"{policy} | {'-' if aging >= 1e9 or policy == 'fifo' else aging} | {k or '-'} | "
              f"{m[0]:.1f} | {m[1]:.1f} | {m[2]:.1f}")


if __name__ == "__main__":
    main()
