#!/usr/bin/env python3
"""load_soak.py - a mixed-traffic soak of `kvfuse serve` on the loopback (bench/load_soak.sh
starts the server and runs this; not part of `make test`).

CLIENTS threads (64) send requests back to back for DURATION seconds, each request drawn from
this mix:
  fused_shared   chat completion over 2 of 16 shared documents (ingested at the start, by id)
  fused_private  chat completion over a document only this request has (inline text)
  plain          chat completion without documents
  stream         streaming chat completion (SSE), read to [DONE]
  disconnect     streaming chat completion, the client closes after the first content chunk
  malformed      a broken request (bad JSON, wrong types, unknown ids): must get a 4xx
  ingest         POST /v1/documents with a new private document
  delete         DELETE /v1/documents/ID of a document this client ingested
Malformed requests are 5% of the mix. Reported: requests by class and status, p50/p99 TTFT
(streams: to the first content chunk; others: the server's kvfuse.ttft_ms) and total latency
per class, the server's resident memory (/metrics) and open file descriptors (/proc) at the
start, after the warm-up (the first WARMUP fraction of the run) and at the end, and the 5xx
count. Exit status 1 on any 5xx, on a malformed request that was not a 4xx, or when resident
memory grew more than 2% after the warm-up.

usage: load_soak.py URL SERVER_PID DURATION [CLIENTS] [--json FILE]
"""
import http.client, json, os, random, re, sys, threading, time, urllib.parse

URL, PID, DURATION = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
CLIENTS = int(sys.argv[4]) if len(sys.argv) > 4 and not sys.argv[4].startswith("--") else 64
JSON_OUT = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
WARMUP = float(os.environ.get("WARMUP", "0.2"))
MAX_TOKENS = int(os.environ.get("MAX_TOKENS", "12"))
u = urllib.parse.urlparse(URL)
HOST, PORT = u.hostname, u.port

MIX = [("fused_shared", 25), ("fused_private", 15), ("plain", 15), ("stream", 15), ("disconnect", 10),
       ("malformed", 5), ("ingest", 8), ("delete", 7)]
CLASSES = [c for c, _ in MIX]
WEIGHTS = [w for _, w in MIX]
WORDS = ("river mountain library engine garden winter copper signal harbor lantern meadow falcon "
         "orbit canyon pepper violet marble thunder cedar quartz").split()

lock = threading.Lock()
stats = {c: {"status": {}, "ttft": [], "total": []} for c in CLASSES}
shared_ids = []


def text(rng, n=60):
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def conn():
    return http.client.HTTPConnection(HOST, PORT, timeout=600)


def request(method, path, body=None):
    c = conn()
    try:
        c.request(method, path, body=json.dumps(body) if isinstance(body, (dict, list)) else body,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        return r.status, data
    finally:
        c.close()


def metrics():
    st, data = request("GET", "/metrics")
    m = {}
    for line in data.decode().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            m[k] = float(v)
    return m


def fds():
    try:
        return len(os.listdir(f"/proc/{PID}/fd"))
    except OSError:
        return -1


def record(cls, status, ttft=None, total=None):
    with lock:
        s = stats[cls]
        s["status"][status] = s["status"].get(status, 0) + 1
        if ttft is not None:
            s["ttft"].append(ttft)
        if total is not None:
            s["total"].append(total)


def chat_body(rng, docs=None, stream=False):
    b = {"messages": [{"role": "user", "content": rng.choice(["What is this about?", "Name one thing mentioned.",
                                                             "Summarise in a few words."])}],
         "max_tokens": MAX_TOKENS, "temperature": 0.7, "seed": rng.randrange(1 << 30)}
    if docs is not None:
        b["documents"] = docs
    if stream:
        b["stream"] = True
    return b


def run_stream(cls, body, cut):
    t0 = time.monotonic()
    c = conn()
    ttft = None
    try:
        c.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            r.read()
            record(cls, r.status, None, time.monotonic() - t0)
            return
        done = False
        while True:
            line = r.fp.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                if ttft is None and b'"content"' in payload:
                    ch = json.loads(payload).get("choices") or [{}]
                    if (ch[0].get("delta") or {}).get("content"):  # the first non-empty content
                        ttft = time.monotonic() - t0
                        if cut:
                            break
        status = 200 if (done or cut) else 599  # 599: the stream ended without [DONE]
        record(cls, status, ttft, time.monotonic() - t0)
    finally:
        c.close()


def client(idx, deadline):
    rng = random.Random(idx * 7919 + 1)
    mine = []
    while time.monotonic() < deadline:
        cls = rng.choices(CLASSES, WEIGHTS)[0]
        t0 = time.monotonic()
        try:
            if cls in ("fused_shared", "fused_private", "plain"):
                docs = (rng.sample(shared_ids, 2) if cls == "fused_shared" else
                        [f"Private note {idx}-{rng.randrange(1 << 30)}: " + text(rng)] if cls == "fused_private" else None)
                st, data = request("POST", "/v1/chat/completions", chat_body(rng, docs))
                ttft = None
                if st == 200:
                    ttft = json.loads(data).get("kvfuse", {}).get("ttft_ms", 0) / 1000
                record(cls, st, ttft, time.monotonic() - t0)
            elif cls in ("stream", "disconnect"):
                docs = rng.sample(shared_ids, 1) if rng.random() < 0.5 else None
                run_stream(cls, chat_body(rng, docs, stream=True), cut=cls == "disconnect")
            elif cls == "malformed":
                bad = rng.choice(['{"messages": [', 'null', '{"messages": []}', '{"messages": [{"role": 1}]}',
                                  json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}),
                                  json.dumps({"messages": [{"role": "user", "content": "x"}],
                                              "documents": ["doc-00000000000000000000000000000000"]}),
                                  b'\xff\xfe{"bad utf8"}'.decode("latin-1")])
                st, _ = request("POST", "/v1/chat/completions", bad)
                record(cls, st, None, time.monotonic() - t0)
            elif cls == "ingest":
                st, data = request("POST", "/v1/documents", {"text": f"Client {idx} document {rng.randrange(1 << 30)}: " + text(rng, 80)})
                if st == 200:
                    mine.append(json.loads(data)["data"][0]["id"])
                record(cls, st, None, time.monotonic() - t0)
            elif cls == "delete":
                if not mine:
                    continue
                st, _ = request("DELETE", "/v1/documents/" + mine.pop(rng.randrange(len(mine))))
                record(cls, st, None, time.monotonic() - t0)
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            record(cls, "error:" + type(e).__name__, None, time.monotonic() - t0)


def pct(v, p):
    if not v:
        return None
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def main():
    rng = random.Random(5)
    for i in range(16):
        st, data = request("POST", "/v1/documents", {"text": f"Shared handbook section {i}: " + text(rng, 120)})
        assert st == 200, (st, data)
        shared_ids.append(json.loads(data)["data"][0]["id"])
    m0 = metrics()
    rss0, fd0 = m0.get("kvfuse_resident_memory_bytes", -1), fds()
    t_start = time.monotonic()
    deadline = t_start + DURATION
    threads = [threading.Thread(target=client, args=(i, deadline), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(DURATION * WARMUP)
    mw = metrics()
    rss_w, fd_w = mw.get("kvfuse_resident_memory_bytes", -1), fds()
    samples = [(round(time.monotonic() - t_start), rss_w)]
    while time.monotonic() < deadline:
        time.sleep(min(30, max(0.1, deadline - time.monotonic())))
        samples.append((round(time.monotonic() - t_start), metrics().get("kvfuse_resident_memory_bytes", -1)))
    for t in threads:
        t.join(timeout=900)
    time.sleep(2)  # the server cancels the last disconnects
    m1 = metrics()
    rss1, fd1 = m1.get("kvfuse_resident_memory_bytes", -1), fds()
    n5xx = sum(n for c in CLASSES for s, n in stats[c]["status"].items() if isinstance(s, int) and s >= 500)
    errors = sum(n for c in CLASSES for s, n in stats[c]["status"].items() if not isinstance(s, int))
    mal_bad = sum(n for s, n in stats["malformed"]["status"].items() if not (isinstance(s, int) and 400 <= s < 500))
    growth = (rss1 - rss_w) / rss_w * 100 if rss_w > 0 else None
    res = {"clients": CLIENTS, "duration_s": DURATION, "warmup_fraction": WARMUP, "max_tokens": MAX_TOKENS,
           "classes": {}, "rss_start": rss0, "rss_after_warmup": rss_w, "rss_end": rss1,
           "rss_growth_after_warmup_pct": growth, "rss_samples": samples, "fds_start": fd0, "fds_after_warmup": fd_w,
           "fds_end": fd1, "http_5xx": n5xx, "client_errors": errors, "malformed_not_4xx": mal_bad,
           "requests": sum(sum(stats[c]["status"].values()) for c in CLASSES)}
    print(f"load soak: {CLIENTS} clients x {DURATION:.0f} s, {res['requests']} requests")
    print(f"{'class':14s} {'n':>6s}  {'statuses':28s} {'ttft p50':>9s} {'ttft p99':>9s} {'total p50':>9s} {'total p99':>9s}")
    for c in CLASSES:
        s = stats[c]
        n = sum(s["status"].values())
        f = lambda x: f"{x * 1000:8.0f}ms" if x is not None else "        -"
        sts = " ".join(f"{k}:{v}" for k, v in sorted(s["status"].items(), key=lambda kv: str(kv[0])))
        print(f"{c:14s} {n:6d}  {sts:28s} {f(pct(s['ttft'], 50))} {f(pct(s['ttft'], 99))} {f(pct(s['total'], 50))} {f(pct(s['total'], 99))}")
        res["classes"][c] = {"n": n, "status": {str(k): v for k, v in s["status"].items()},
                             "ttft_p50_s": pct(s["ttft"], 50), "ttft_p99_s": pct(s["ttft"], 99),
                             "total_p50_s": pct(s["total"], 50), "total_p99_s": pct(s["total"], 99)}
    mib = lambda b: b / 2 ** 20
    print(f"RSS: start {mib(rss0):.1f} MiB, after warm-up {mib(rss_w):.1f} MiB, end {mib(rss1):.1f} MiB "
          f"(growth after warm-up {growth:+.2f}%)" if growth is not None else "RSS: unknown")
    print(f"file descriptors: start {fd0}, after warm-up {fd_w}, end {fd1}")
    print(f"5xx: {n5xx}; client-side errors: {errors}; malformed not answered 4xx: {mal_bad}")
    if JSON_OUT:
        json.dump(res, open(JSON_OUT, "w"), indent=1)
    ok = n5xx == 0 and mal_bad == 0 and errors == 0 and growth is not None and growth <= 2.0
    print("load soak:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


main()
