#!/usr/bin/env python3
"""check-layout.py - the source tree keeps its layers (docs/ARCHITECTURE.md).

A module is a .c file with its .h (src/engine/model.c + model.h). For every `#include "..."`
in src/ and tools/ this checks:
  1. the include resolves (relative to the file, then include/, src/, tools/);
  2. layers point one way: include/ and src/common <- src/engine <- src/store <- src/fusion
     <- tools/ (a lower layer never includes a higher one; nothing in src/ includes tools/);
  3. the three programs in tools/ (cli, server, eval) do not include each other, except for
     cli's shared helpers (cli/cli.h: options, model loading; cli/rag.h: RAG prompts);
  4. no include cycle between modules.
Prints one line per failed check and "N passed, N failed".

Usage: python3 scripts/check-layout.py [ROOT]
"""
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
os.chdir(ROOT)
INC = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
SEARCH = ["include", "src", "tools"]

passed = failed = 0


def check(ok, msg):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL: " + msg)


def layer(path):
    """(rank, name) of a file; None for files outside the layered tree."""
    parts = path.split("/")
    if parts[0] == "include" or path in ("src/common.c", "src/common.h"):
        return (0, "base")
    if parts[0] == "src" and len(parts) > 2:
        return ({"engine": 1, "store": 2, "fusion": 3}.get(parts[1], 9), parts[1])
    if parts[0] == "tools" and len(parts) > 2:
        return (4, "tools/" + parts[1])
    return (9, "?")


def resolve(src, name):
    for d in [os.path.dirname(src)] + SEARCH:
        p = os.path.normpath(os.path.join(d, name))
        if os.path.isfile(p):
            return p
    return None


files = []
for top in ("src", "tools", "include"):
    for dp, _, fn in os.walk(top):
        files += [os.path.join(dp, f) for f in fn if f.endswith((".c", ".h"))]
files.sort()

module = lambda p: os.path.splitext(p)[0]
edges = {}
for f in files:
    with open(f, encoding="utf-8") as fh:
        text = fh.read()
    for name in INC.findall(text):
        target = resolve(f, name)
        check(target is not None, f"{f}: #include \"{name}\" does not resolve")
        if target is None:
            continue
        (ra, la), (rb, lb) = layer(f), layer(target)
        check(ra != 9 and rb != 9, f"{f} -> {target}: a file outside the layer folders")
        if ra <= 3:
            check(rb <= ra, f"{f} ({la}) includes {target} ({lb}), a higher layer")
            check(not target.startswith("tools/"), f"{f}: src/ includes tools/ ({target})")
        if ra == 4 and rb == 4 and la != lb:
            ok = target in ("tools/cli/cli.h", "tools/cli/rag.h")
            check(ok, f"{f} ({la}) includes {target} ({lb}): the programs stay apart")
        if module(f) != module(target):
            edges.setdefault(module(f), set()).add(module(target))

# cycles between modules (Tarjan's strongly connected components)
index, low, stack, on, sccs = {}, {}, [], set(), []


def strong(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            strong(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        sccs.append(comp)


sys.setrecursionlimit(10000)
for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
    if v not in index:
        strong(v)
for comp in sccs:
    check(len(comp) == 1, "include cycle between modules: " + " <-> ".join(sorted(comp)))
print(f"{len(files)} files, {sum(len(e) for e in edges.values())} module dependencies")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
