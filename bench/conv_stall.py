#!/usr/bin/env python3
"""conv_stall.py - does a long bounded conversation (serve --conv-budget) stall the other streams?

A streaming request (120 greedy tokens) decodes in one slot; after its 10th token a chat of 8
MuSiQue passages as notes (~5k tokens) arrives, longer than --conv-budget 1536, so its history
is prefilled under the budget in the other slot. Prints, per kvfuse binary, the streaming
request's largest gap between two tokens and its total time, and the long request's total time
and its kvfuse.conversation; then the long chat again with a short request 1 s behind it: the
short one's time to its answer. With --plain the server runs without --conv-budget, so the long
chat is an ordinary prompt prefilled --prefill-chunk tokens per unit. Not part of `make test`.

    bench/conv_stall.py BIN [BIN ...] [--port 18431] [--model models/Qwen2.5-Coder-0.5B-Instruct.gguf]
                        [--data ../shared/data/musique-cacheblend/musique_s.json] [--plain]
"""
import argparse, json, subprocess, sys, threading, time, urllib.request

ap = argparse.ArgumentParser(description=__doc__.split('\n')[1])
ap.add_argument('bins', nargs='+')
ap.add_argument('--port', type=int, default=18431)
ap.add_argument('--model', default='models/Qwen2.5-Coder-0.5B-Instruct.gguf')
ap.add_argument('--data', default='../shared/data/musique-cacheblend/musique_s.json')
ap.add_argument('--plain', action='store_true', help='no --conv-budget: the long chat is a plain prompt')
args = ap.parse_args()
data = json.load(open(args.data))


def run(bin_, port):
    srv = subprocess.Popen([bin_, 'serve', '-m', args.model, '--port', str(port),
                            '--parallel', '2', '--ctx', '8192', '--threads', '2']
                           + ([] if args.plain else ['--conv-budget', '1536']),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f'http://127.0.0.1:{port}/v1/chat/completions'
    for _ in range(600):
        try:
            urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=1)
            break
        except Exception:
            if srv.poll() is not None:
                sys.exit(f'conv_stall: {bin_} serve exited with {srv.returncode}')
            time.sleep(0.5)
    def post(body, stream=False):
        req = urllib.request.Request(url, json.dumps(body).encode(), {'Content-Type': 'application/json'})
        return urllib.request.urlopen(req, timeout=600)
    def chat(first):  # 8 passages of two questions as notes, then the first one's question
        msgs = [{'role': 'system', 'content': 'You are a helpful assistant.'}]
        for ex in data[first:first + 2]:
            for c in ex['ctxs'][:4]:
                msgs += [{'role': 'user', 'content': 'Note: ' + c['text']}, {'role': 'assistant', 'content': 'Noted.'}]
        return msgs + [{'role': 'user', 'content': 'Question: ' + data[first]['question']}]
    res = {}
    def long_req(first=0):  # another chat the second time: nothing of it is cached
        t = time.time(); r = json.load(post({'messages': chat(first), 'max_tokens': 4}))
        res['long_s'] = time.time() - t; res['long_conv'] = r.get('kvfuse', {}).get('conversation')
    stamps = []
    t0 = time.time()
    r = post({'messages': [{'role': 'user', 'content': 'Write a long story about a lighthouse keeper.'}],
              'max_tokens': 120, 'stream': True, 'temperature': 0})
    th = None
    for line in r:
        line = line.decode().strip()
        if not line.startswith('data:') or line == 'data: [DONE]': continue
        stamps.append(time.time())
        if len(stamps) == 10 and th is None:
            th = threading.Thread(target=long_req); th.start()
    th and th.join()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    out = {'bin': bin_, 'stream_chunks': len(stamps), 'stream_total_s': round(stamps[-1] - t0, 2),
           'max_gap_s': round(max(gaps), 2), 'long_total_s': round(res.get('long_s', -1), 2),
           'long_conv': res.get('long_conv')}
    # then a short request that arrives 1 s after another long one: its time to the answer
    th = threading.Thread(target=long_req, args=(2,))
    th.start()
    time.sleep(1)
    t = time.time()
    json.load(post({'messages': [{'role': 'user', 'content': 'Say hello.'}], 'max_tokens': 4}))
    out['short_after_long_s'] = round(time.time() - t, 2)
    th.join()
    out['long2_total_s'] = round(res.get('long_s', -1), 2)
    out['plain'] = args.plain
    print(json.dumps(out))
    srv.terminate(); srv.wait()


for i, b in enumerate(args.bins):
    run(b, args.port + i)
