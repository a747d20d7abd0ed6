#!/usr/bin/env python3
"""convqa.py - personal-memory conversations for bench/conv_budget (--convs), in the style of
LongMemEval / LoCoMo (EpiCache's LongConvQA): a long user-assistant chat in which the user
shares passages of essays they are reading (the bulk of the history) and, scattered between
them, short pieces of personal news; the questions ask about that news.

Every fact's value is drawn from RULER's word lists (a pet called "Walrus", a café called
"The Yellow Abacus"), the names among the nouns that occur nowhere in the essays and at most
once per conversation, so no model can guess a value and the history tells it exactly once:
an answer that names it was read from that turn. A kind of fact can be told about several
relatives ("my sister's cat ...", "my cousin's dog ..."), so a question must find the right one. Deterministic for a given seed;
the data is read from ../shared and written to a file, never copied into the repository.

    bench/convqa.py [--shared ../shared] [--conversations 5] [--fillers 20]
                    [--facts 8] [--questions 4] [--seed 1] -o OUT.json

OUT.json: [{"id": "convqa-0", "messages": [{"role": ..., "content": ...}, ...],
            "questions": [{"question": ..., "answers": [...], "turn": i}, ...]}, ...]
"""
import argparse
import glob
import json
import os
import random
import re
import sys

RELS = ["sister", "brother", "cousin", "neighbour", "aunt", "uncle", "best friend", "colleague"]
ANIMALS = ["cat", "dog", "parrot", "rabbit", "tortoise", "hamster"]
INSTRUMENTS = ["cello", "piano", "violin", "trumpet", "guitar", "flute"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def words(path):
    with open(path) as f:
        return [w.strip() for w in f if re.fullmatch(r"[a-z]{4,10}", w.strip())]


def essay_passages(shared, n_words):
    """the essays cut into passages of about n_words words, at sentence ends, and the set of
    (lower-cased) words the essays use anywhere"""
    out, vocab = [], set()
    for p in sorted(glob.glob(os.path.join(shared, "data/needle/PaulGrahamEssays/*.txt"))):
        text = re.sub(r"\s+", " ", open(p, encoding="utf-8", errors="replace").read()).strip()
        vocab |= set(w.lower() for w in re.findall(r"[A-Za-z]+", text))
        sents = re.split(r"(?<=[.!?]) ", text)
        cur = []
        for s in sents:
            cur.append(s)
            if sum(len(x.split()) for x in cur) >= n_words:
                out.append(" ".join(cur))
                cur = []
    return out, vocab


# each kind: (news told by the user, question, answer); {r} a relative, {N} a capitalised word,
# {A} a capitalised adjective, {x} an animal or instrument, {d} a day, {k} a number
KINDS = [
    ("Family news: my {r} adopted a {x} last weekend and named it {N}. It already rules the house.",
     "What did my {r} name the {x} they adopted?", "{N}", ANIMALS),
    ("My {r} has just moved into a flat on {N} Street, number {k}, so I will visit more often.",
     "On which street is my {r}'s new flat?", "{N} Street", None),
    ("I am meeting my {r} on {d} at a little café called The {A} {N}.",
     "What is the café called where I am meeting my {r}?", "The {A} {N}", None),
    ("My {r} started {x} lessons this month with a teacher called {N}.",
     "What is the name of my {r}'s {x} teacher?", "{N}", INSTRUMENTS),
    ("My {r} keeps recommending a novel called The {A} {N}; I should read it.",
     "Which novel does my {r} keep recommending?", "The {A} {N}", None),
]


def conversation(i, rng, fillers, adjs, nouns, n_fill, n_facts, n_q):
    facts, used, names = [], set(), set()
    while len(facts) < n_facts:
        kind = rng.randrange(len(KINDS))
        r = rng.choice(RELS)
        if (kind, r) in used:
            continue
        tell, ask, ans, xs = KINDS[kind]
        v = dict(r=r, N=rng.choice(nouns).capitalize(), A=rng.choice(adjs).capitalize(),
                 x=rng.choice(xs) if xs else "", d=rng.choice(DAYS), k=rng.randrange(2, 99))
        if v["N"] in names:
            continue
        used.add((kind, r))
        names.add(v["N"])
        facts.append((tell.format(**v), ask.format(**v), ans.format(**v)))
    passages = rng.sample(fillers, n_fill)
    turns = [("essay", p) for p in passages] + [("fact", f) for f in facts]
    rng.shuffle(turns)
    msgs = [{"role": "system",
             "content": "You are a helpful assistant. The user chats with you about their life "
                        "and shares what they are reading; later they ask about what they told "
                        "you. Answer briefly."}]
    where = {}
    for kind, t in turns:
        if kind == "essay":
            msgs.append({"role": "user", "content": "Here is a passage from an essay I am reading: " + t})
            msgs.append({"role": "assistant", "content": "Thanks, noted."})
        else:
            where[t[1]] = len(msgs)
            msgs.append({"role": "user", "content": t[0]})
            msgs.append({"role": "assistant", "content": "Good to know, noted."})
    # questions spread over the history: the facts sorted by position, every n_facts/n_q-th
    order = sorted(facts, key=lambda f: where[f[1]])
    step = len(order) / n_q
    qs = [order[int(j * step + rng.random() * step)] for j in range(n_q)]
    return {"id": f"convqa-{i}", "messages": msgs,
            "questions": [{"question": q, "answers": [a], "turn": where[q]} for _, q, a in qs]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "../../shared"))
    ap.add_argument("--conversations", type=int, default=5)
    ap.add_argument("--fillers", type=int, default=20, help="essay passages per conversation")
    ap.add_argument("--words", type=int, default=220, help="words per essay passage")
    ap.add_argument("--facts", type=int, default=8, help="pieces of news per conversation")
    ap.add_argument("--questions", type=int, default=4, help="questions per conversation")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    if not (1 <= a.questions <= a.facts <= len(KINDS) * len(RELS)) or a.conversations < 1 or a.fillers < 0:
        sys.exit("convqa: need 1 <= questions <= facts <= %d and conversations >= 1" % (len(KINDS) * len(RELS)))
    wl = os.path.join(a.shared, "data/ruler-wordlists")
    try:
        adjs, nouns = words(os.path.join(wl, "adjectivelist.txt")), words(os.path.join(wl, "nounlist.txt"))
        fillers, vocab = essay_passages(a.shared, a.words)
    except OSError as e:
        sys.exit(f"convqa: {e} (set --shared)")
    if len(fillers) < a.fillers:
        sys.exit(f"convqa: only {len(fillers)} essay passages under {a.shared}")
    # names: nouns the essays never use, nor the templates
    taken = vocab | set(ANIMALS) | set(INSTRUMENTS) | {w for r in RELS for w in r.split()} | {"street"}
    nouns = [n for n in nouns if n not in taken]
    rng = random.Random(a.seed)
    convs = [conversation(i, rng, fillers, adjs, nouns, a.fillers, a.facts, a.questions)
             for i in range(a.conversations)]
    with open(a.out, "w") as f:
        json.dump(convs, f, indent=1)
    n_q = sum(len(c["questions"]) for c in convs)
    print(f"convqa: {len(convs)} conversations, {n_q} questions -> {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
