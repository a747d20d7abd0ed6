#!/usr/bin/env python3
"""sched_sim.py - a queueing simulation behind the README's note on cache-aware queue order:
the closed loop of bench/sched.sh (8 clients x 8 requests, half of them cheap because their
documents are cached) on one server, with service times 0.6 s (cached) and 3.6 s (not), under
FIFO, shortest-job-first and highest-response-ratio-next, each with an aging bound (requests that
waited longer go first, in arrival order). Prints mean, p99 and max response time over 20 seeds.
Usage: bench/sched_sim.py [--reqs N]"""
import random
import sys


def run(policy, aging, reqs, seed, clients=8, hot=0.5, s_hot=0.6, s_cold=3.6):
    rng = random.Random(seed)
    plan = [[rng.random() < hot for _ in range(reqs)] for _ in range(clients)]
    queue = [(c * 1e-6, c, 0, plan[c][0]) for c in range(clients)]  # (arrival, client, n, hot)
    t, out = 0.0, []
    while queue:
        def key(job):
            arrival, _, _, h = job
            wait, cost = t - arrival, s_hot if h else s_cold
            if policy == "fifo" or wait > aging:
                return (0, arrival)
            return (1, cost, arrival) if policy == "sjf" else (1, -(wait + cost) / cost, arrival)
        queue.sort(key=key)
        arrival, c, n, h = queue.pop(0)
        t += s_hot if h else s_cold
        out.append(t - arrival)
        if n + 1 < reqs:
            queue.append((t, c, n + 1, plan[c][n + 1]))
    out.sort()
    return sum(out) / len(out), out[int(0.99 * (len(out) - 1))], out[-1]


def main():
    reqs = int(sys.argv[2]) if sys.argv[1:2] == ["--reqs"] else 8
    print("policy | aging s | mean s | p99 s | max s")
    for policy, aging in [("fifo", 0), ("sjf", 5), ("sjf", 20), ("sjf", 1e9),
                          ("hrrn", 10), ("hrrn", 20), ("hrrn", 1e9)]:
        r = [run(policy, aging, reqs, seed) for seed in range(20)]
        m = [sum(x[k] for x in r) / len(r) for k in range(3)]
        print(f"{policy} | {'-' if aging >= 1e9 or policy == 'fifo' else aging} | {m[0]:.1f} | {m[1]:.1f} | {m[2]:.1f}")


if __name__ == "__main__":
    main()
