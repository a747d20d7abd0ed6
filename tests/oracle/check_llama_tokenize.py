#!/usr/bin/env python3
"""check_llama_tokenize.py - kvfuse's tokenizer against llama.cpp's over the same GGUF vocabulary.

llama.cpp is the peer build of bench/peer.sh (third_party/llama.cpp-build; build the tool with
`cmake --build third_party/llama.cpp-build --target llama-tokenize`). Strings: every MuSiQue
question, the first passages, and hand-picked code, CJK, emoji, digit runs, whitespace runs and
contractions. Both sides add BOS as the model asks and parse special tokens (llama-tokenize's
defaults). One llama-tokenize process per string (about 0.4 s each), so this is not part of
`make test`; it prints "N passed, N failed".

Usage: check_llama_tokenize.py MODEL [--musique FILE] [--passages N] [--llama PATH] [--build DIR]
"""
import argparse
import ast
import json
import os
import struct
import subprocess
import sys
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--musique", default=os.path.join(os.environ.get("KVF_SHARED", "../shared"),
                                                  "data/musique-cacheblend/musique_s.json"))
ap.add_argument("--passages", type=int, default=120)
ap.add_argument("--llama", default="third_party/llama.cpp-build/bin/llama-tokenize")
ap.add_argument("--build", default=os.environ.get("BUILD", "build"))
a = ap.parse_args()

texts = [
    "def f(x):\n    return x**2  # square\n\tprint('tab')\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * 3.14159f; }",
    "SELECT name, COUNT(*) FROM t WHERE id>=42 GROUP BY name;",
    "日本語のテキストと中文混合，还有한국어도 있습니다。",
    "emoji 🤖🚀👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵 ✔️",
    "1234567890 12 345 6789 3.14159 1e-10 0x1F 000123",
    "spaces:    four, tabs:\t\t two, newlines:\n\n\nthree",
    "   leading and trailing   ",
    "don't won't it's we're they've I'd you'll O'Neil's 'quoted'",
    "DON'T WON'T IT'S WE'RE THEY'VE I'D YOU'LL",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "naïve café résumé façade Zürich Ångström",
    "Ελληνικά, русский, עברית, العربية, हिन्दी",
    "a\u00a0b\u2003c\u200bd",
    "mixed\r\nline\rends\n",
    "",
    " ",
    "\n",
    "!!!???...,,,;;;:::",
]
try:
    rows = json.load(open(a.musique))
    for r in rows:
        texts.append(r["question"])
    n = 0
    for r in rows:
        ctxs = r["ctxs"] if isinstance(r["ctxs"], list) else ast.literal_eval(r["ctxs"])
        for c in ctxs:
            if n >= a.passages:
                break
            texts.append(c["text"])
            n += 1
except OSError:
    print(f"note: {a.musique} not found: hand-picked strings only")

tool = os.path.join(a.build, "tests", "tool_tokenize")
tmp = tempfile.mkdtemp(prefix="kvf-llamatok-")
inp, out = os.path.join(tmp, "in"), os.path.join(tmp, "out")
with open(inp, "wb") as f:
    for t in texts:
        b = t.encode()
        f.write(struct.pack("<II", 3, len(b)))  # KVF_TOK_ADD_BOS | KVF_TOK_PARSE_SPECIAL
        f.write(b)
subprocess.run([tool, "encode", a.model, inp, out], check=True)
data, at, ours = open(out, "rb").read(), 0, []
for _ in texts:
    (n,) = struct.unpack_from("<i", data, at)
    ours.append(list(struct.unpack_from("<%di" % n, data, at + 4)))
    at += 4 + 4 * n
    (m,) = struct.unpack_from("<i", data, at)
    at += 4 + m

passed = failed = 0
for i, t in enumerate(texts):
    p = os.path.join(tmp, "p.txt")
    with open(p, "w") as f:
        f.write(t)
    r = subprocess.run([a.llama, "-m", a.model, "-f", p, "--ids", "--log-disable"],
                       capture_output=True, text=True)
    line = [l for l in r.stdout.splitlines() if l.startswith("[")]
    if r.returncode != 0 or not line:
        failed += 1
        print(f"FAIL: llama-tokenize failed on string {i}: {r.stderr[-200:]}")
        continue
    theirs = ast.literal_eval(line[-1])
    if theirs == ours[i]:
        passed += 1
    else:
        failed += 1
        k = next((j for j in range(min(len(theirs), len(ours[i]))) if theirs[j] != ours[i][j]),
                 min(len(theirs), len(ours[i])))
        print(f"FAIL: string {i} {t[:60]!r}: first difference at {k}: kvfuse "
              f"{ours[i][k:k + 5]} llama.cpp {theirs[k:k + 5]}")
print(f"{len(texts)} strings compared with llama.cpp's tokenizer ({os.path.basename(a.model)})")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
