"""check_qwen.py - a Qwen2 / Qwen2.5 GGUF model's tokenizer, chat template and stop tokens
against independent oracles (run by tests/integration/qwen_parity.sh).

1. Token ids. The oracle is a Hugging Face `tokenizers` tokenizer built from the GGUF's own
   vocabulary (tokenizer.ggml.tokens / merges / token_type) the way Qwen2's tokenizer.json
   defines it: NFC normalizer, Split(Qwen2 regex, isolated) + ByteLevel(no regex) pre-tokenizer,
   byte-level BPE without unk or byte fallback, ByteLevel decoder, and the control (special) and
   user-defined (non-special: <tool_call>) tokens as added tokens. Strings: every MuSiQue passage
   and question, every MuSiQue RAG prompt rendered with the GGUF's chat template, the varied
   strings of tokenizer_parity.py (code, CJK, emoji, digit runs, whitespace runs, contractions,
   control characters, ChatML markers, 250 random mixes) and Qwen-specific ones (QWEN_STRINGS).
   Each with special tokens parsed (HF's default) and not parsed (HF encode_special_tokens).
   kvfuse does not normalise (like llama.cpp): for a string that NFC changes, kvfuse's ids of
   the string must equal the oracle's without the normalizer, and kvfuse's ids of NFC(string)
   the oracle's ids of the string. Plus decode(encode(s)) == s (also for invalid UTF-8), HF's
   decoding of its ids == kvfuse's decoding, and the pre-token boundaries of the real
   vocabulary == HF's Split with the Qwen2 regex.
2. Chat: kvfuse's ChatML rendering == jinja2's rendering of the GGUF's tokenizer.chat_template
   (Qwen's default system message when the conversation has none); `kvfuse tokenize --chat`
   gives HF's ids of that rendering.
3. Stop tokens: the vocabulary's end-of-generation set is {<|endoftext|>, <|im_end|>};
   `kvfuse generate --chat` stops on <|im_end|> (the engine's own logits pick it after the
   answer) without printing it, and on <|endoftext|> after a finished turn.

Usage: python check_qwen.py KVFUSE TOOL_TOKENIZE MODEL MUSIQUE_JSON
Prints FAIL lines, a summary and a last line "N passed, N failed".
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, HERE)

KVFUSE, TOOL, MODEL, MUSIQUE = (sys.argv[1:5] + [None] * 4)[:4]
if TOOL:
    os.environ["BUILD"] = os.path.dirname(os.path.dirname(TOOL)) or "."
import tokenizer_parity as tp  # noqa: E402  (its tool drivers, strings and jinja2 renderer)
from check_logits import read_kvfl  # noqa: E402

T = tp.T
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645

QWEN_STRINGS = [
    # code
    "#include <stdio.h>\nint main(int argc, char **argv) {\n    printf(\"%d\\n\", argc);\n}\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n}\n",
    "const f = async (x) => { await fetch(`/api/${x}?q=1`); return x ?? null; };",
    "SELECT name, COUNT(*) AS n FROM users WHERE age >= 18 GROUP BY name;\n",
    "    if (a != b && c <= d || !e) {\r\n        return;\r\n    }\r\n",
    "class Foo(Base):\n\tdef __init__(self, *args, **kwargs) -> None:\n\t\tsuper().__init__()\n",
    "x=[i**2 for i in range(10)if i%2==0];print(x)#comment",
    "<|fim_prefix|>def f(x):\n    <|fim_suffix|>\n    return y<|fim_middle|>",
    "<|repo_name|>kvfuse\n<|file_sep|>src/main.c\nint x;<|file_sep|>README.md\n# hi",
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
    "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>",
    "<|vision_start|><|image_pad|><|vision_end|> [PAD151665] <|fim_pad|>",
    # CJK
    "我们今天去公园散步，天气非常好。",
    "人工智能（AI）是计算机科学的一个分支，它企图了解智能的实质。",
    "東京都は日本の首都です。ひらがな、カタカナ、漢字が混ざっています。",
    "대한민국의 수도는 서울입니다. 안녕하세요!",
    "中文English混合123テスト한국어",
    "「引用」『二重』【括弧】〈山括弧〉《书名号》",
    "全角数字１２３４５と半角12345",
    # emoji
    "👩🏽‍💻 writes code 🧑‍🚀 goes to space 🏳️‍🌈 flies",
    "😂😂😂🤣🤣 lol 🙏🏻🙏🏿",
    "🔥🚀✨💯 #1 🥇",
    "keycaps 1️⃣2️⃣#️⃣ and flags 🇺🇸🇬🇧🇩🇪",
    # digit runs
    "0", "00", "000", "0000", "01234567890123456789012345678901234567890",
    "3.141592653589793238462643383279", "1,234,567.89", "1 000 000", "2^64 = 18446744073709551616",
    "IPv4 192.168.0.1, port 8080, v1.2.3", "٠١٢٣٤٥٦٧٨٩ ۰۱۲۳ ০১২৩ ๐๑๒๓",
    "ⅠⅡⅢⅣ ½⅓¼ ①②③ ⁰¹²³ ₀₁₂",
    # whitespace runs
    "a  b   c    d     e", "\t\t\tindent", "    \n    \n", "end   \n\n\n", "\n\n\n\nstart",
    " \u00a0 \u2009 \u3000 ", "\r\r\n\n\r", "x \t \t y", " " * 33 + "z", "\n" * 7 + " " * 3,
    # contractions (ASCII and typographic apostrophes)
    "I'd've thought you'd know. Shan't we? Y'all'd've.",
    "IT'S I'M WE'RE THEY'VE YOU'LL HE'D",
    "it’s don’t we’re they’ve",
    "'tis 'twas o'clock ma'am",
    "students' books, James's car",
]


# ---- the Hugging Face oracle built from the GGUF vocabulary -------------------------------------


def gguf_vocab(path):
    from gguf import GGUFReader

    r = GGUFReader(path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode() for i in f.data]

    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    pre = r.fields["tokenizer.ggml.pre"].contents()
    return strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges"), types, pre


def hf_from_gguf(tokens, merges, types):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers as pt

    vocab = {s: i for i, (s, ty) in enumerate(zip(tokens, types)) if ty == 1}  # normal tokens
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                     fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pt.Sequence([pt.Split(Regex(tp.RE_QWEN2), behavior="isolated"),
                                     pt.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    # control tokens (type 3) are special; user-defined ones (type 4: <tool_call>) are not,
    # exactly as in Qwen2.5's tokenizer.json; unused [PAD...] ids (type 5) are left out
    tok.add_tokens([AddedToken(s, special=(ty == 3), normalized=False)
                    for s, ty in zip(tokens, types) if ty in (3, 4)])
    bad = [s for i, (s, ty) in enumerate(zip(tokens, types)) if ty in (1, 3, 4) and
           tok.token_to_id(s) != i]
    T.check(not bad, "HF oracle: %d tokens got other ids than in the GGUF: %s" % (len(bad), bad[:5]))
    return tok


# ---- 1. ids ------------------------------------------------------------------------------


def parity(tok, groups):
    from tokenizers import normalizers

    info = tp.tool_info(MODEL)
    missing = frozenset(int(x) for x in info.get("missing_bytes", "").split())
    T.check(not missing, "Qwen2 vocabulary: bytes without a token: %s" % sorted(missing))
    nfc_tok = tok.normalizer
    summary, n_strings, n_nfc = [], 0, 0
    for label, texts in groups:
        raw = [t.encode() for t in texts]
        nfc = [unicodedata.normalize("NFC", t) for t in texts]
        changed = [i for i, (t, u) in enumerate(zip(texts, nfc)) if t != u]
        n_strings += len(texts)
        n_nfc += len(changed)
        for special in (True, False):
            flags = tp.TOK_PARSE_SPECIAL if special else 0
            ours = tp.tool_encode(MODEL, [(b, flags) for b in raw])
            tok.normalizer = nfc_tok
            ref = tp.hf_encode(tok, texts, special)
            f0 = T.failed
            name = label + ("" if special else " (no special)")
            stable = [i for i in range(len(texts)) if texts[i] == nfc[i]]
            tp.check_ids(name, [texts[i] for i in stable], [ours[i] for i in stable],
                         [ref[i] for i in stable])
            if changed:
                # kvfuse(NFC(s)) == HF(s); kvfuse(s) == HF without normalizer (llama.cpp's way)
                ours_nfc = tp.tool_encode(MODEL, [(nfc[i].encode(), flags) for i in changed])
                tp.check_ids(name + " NFC(s)", [nfc[i] for i in changed], ours_nfc,
                             [ref[i] for i in changed])
                tok.normalizer = normalizers.Sequence([])
                ref_raw = tp.hf_encode(tok, [texts[i] for i in changed], special)
                tok.normalizer = nfc_tok
                tp.check_ids(name + " unnormalised", [texts[i] for i in changed],
                             [ours[i] for i in changed], ref_raw)
            tp.check_roundtrip(name, raw, ours)
            if special:
                dec = [tok.decode(r, skip_special_tokens=False) for r in ref]
                for i in stable:
                    T.check(dec[i].encode() == ours[i][1],
                            "%s #%d: kvfuse's decoding differs from HF's" % (name, i))
            summary.append("%s: %d strings (%d changed by NFC), %d failed checks" % (
                name, len(texts), len(changed), T.failed - f0))
    for flags in (0, tp.TOK_PARSE_SPECIAL):
        ours = tp.tool_encode(MODEL, [(b, flags) for b in tp.INVALID_UTF8])
        tp.check_roundtrip("invalid-utf8", tp.INVALID_UTF8, ours)
    summary.append("invalid UTF-8: %d strings round-trip byte for byte" % len(tp.INVALID_UTF8))
    return summary, n_strings, n_nfc


def split_parity(texts):
    from tokenizers import Regex, pre_tokenizers as pt

    hf = pt.Split(Regex(tp.RE_QWEN2), behavior="isolated")
    ours = tp.tool_split(MODEL, [t.encode() for t in texts])
    f0 = T.failed
    for t, ends in zip(texts, ours):
        ref = [len(t[:e].encode()) for _, (_, e) in hf.pre_tokenize_str(t)]
        T.check(ends == ref, "qwen2 split %r: ours %s, HF %s" % (t[:50], ends[:10], ref[:10]))
    return ["pre-tokenizer on the real vocabulary: %d strings, %d differ from HF's Split"
            % (len(texts), T.failed - f0)]


# ---- 2. chat -----------------------------------------------------------------------------


def cli(*args, timeout=300):
    r = subprocess.run([KVFUSE, *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError("kvfuse %s exited %d: %s" % (args[0], r.returncode, r.stderr[-400:]))
    return r.stdout


def hf_ids(tok, text):
    """HF's ids of text with every added token parsed (its default)."""
    tok.encode_special_tokens = False
    return tok.encode(text, add_special_tokens=False).ids


def chat_parity(tok, data, template):
    T.check(QWEN_SYSTEM in template, "the GGUF's chat template lacks Qwen's default system message")
    convs = tp.CONVS + [[]] + [tp.rag_messages(d) for d in data[:5]]
    n = tp.check_chat("qwen2", MODEL, template, "<|endoftext|>", "<|im_end|>", "chatml", convs)
    want = "<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n" \
           "<|im_start|>assistant\n" % QWEN_SYSTEM
    got = tp.tool_chat(MODEL, [([{"role": "user", "content": "hi"}], True)])[0]
    T.check(got == want.encode(), "default system message: got %r" % got)
    T.check(tp.jinja_render(template, [{"role": "user", "content": "hi"}], True, "", "") == want,
            "jinja2 rendering of the GGUF template is not Qwen's ChatML with its system message")
    lines = ["chat template (GGUF, jinja2): %d renderings identical" % n]
    # the CLI's --chat path, ids included
    f0 = T.failed
    for q in ["Write a haiku about the sea.", "Was ist 2+2? Antworte kurz.", data[0]["question"]]:
        msgs = [{"role": "user", "content": q}]
        ref = hf_ids(tok, tp.jinja_render(template, msgs, True, "", ""))
        ours = [int(x) for x in cli("tokenize", "-m", MODEL, "-p", q, "--chat").split()]
        T.check(ours == ref, "kvfuse tokenize --chat %r: %s, HF %s" % (q, ours[:8], ref[:8]))
    lines.append("kvfuse tokenize --chat: 3 prompts, %d failed checks" % (T.failed - f0))
    return lines


# ---- 3. stop tokens ------------------------------------------------------------------------


def last_argmax(ids, tmp):
    idf, out = os.path.join(tmp, "ids.txt"), os.path.join(tmp, "stop.kvfl")
    with open(idf, "w") as f:
        f.write(" ".join(map(str, ids)) + "\n")
    cli("logits", "-m", MODEL, "--ids", idf, "--threads", "2", "-o", out)
    return int(read_kvfl(out)[1][-1].argmax())


def stop_tokens(tok, tmp):
    info = tp.tool_info(MODEL)
    eog = sorted(int(x) for x in info.get("eog", "").split())
    T.check(eog == [ENDOFTEXT, IM_END], "end-of-generation ids %s, expected %s" % (
        eog, [ENDOFTEXT, IM_END]))
    T.check(info.get("eos") == str(IM_END) and info.get("add_bos") == "0",
            "eos %s add_bos %s, expected %d and 0" % (info.get("eos"), info.get("add_bos"), IM_END))
    lines = ["end-of-generation ids: %s" % eog]
    # <|im_end|>: a chat answer ends with it; it is not printed
    q = "Reply with the single word OK."
    res = json.loads(cli("generate", "-m", MODEL, "-p", q, "--chat", "-n", "24", "--json",
                         "--threads", "2").strip().splitlines()[-1])
    text = res["text"]
    T.check(res["stop"] == "eos" and res["tokens"] < 24,
            "generate --chat %r: stop %s after %d tokens" % (q, res["stop"], res["tokens"]))
    T.check("<|im_end|>" not in text and "<|endoftext|>" not in text,
            "generate printed a stop token: %r" % text)
    prompt = [int(x) for x in cli("tokenize", "-m", MODEL, "-p", q, "--chat").split()]
    answer = hf_ids(tok, text)
    stop = last_argmax(prompt + answer, tmp)
    T.check(stop == IM_END, "after the answer %r the engine's top token is %d, not <|im_end|>"
            % (text, stop))
    lines.append("generate --chat %r -> %r, stop %s on %d" % (q, text, res["stop"], stop))
    # <|endoftext|>: after a finished turn Qwen emits it at once
    turn = tp.jinja_render(tp.gguf_chat_template(MODEL), [{"role": "user", "content": q}], True,
                           "", "") + text + "<|im_end|>\n"
    res = json.loads(cli("generate", "-m", MODEL, "-p", turn, "-n", "8", "--json",
                         "--threads", "2").strip().splitlines()[-1])
    ids = hf_ids(tok, turn)
    stop = last_argmax(ids, tmp)
    T.check(stop == ENDOFTEXT, "after a finished turn the engine's top token is %d, not "
            "<|endoftext|>" % stop)
    T.check(res["stop"] == "eos" and res["tokens"] == 0 and res["text"] == "",
            "generate after a finished turn: stop %s, %d tokens, %r" % (
                res["stop"], res["tokens"], res["text"]))
    lines.append("generate after a finished turn: %d tokens, stop %s on %d" % (
        res["tokens"], res["stop"], stop))
    return lines


def main():
    if None in (KVFUSE, TOOL, MODEL, MUSIQUE):
        sys.exit(__doc__)
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="kvf-qwen-")
    report = []
    try:
        tokens, merges, types, pre = gguf_vocab(MODEL)
        T.check(pre == "qwen2", "tokenizer.ggml.pre is %r, expected qwen2" % pre)
        tok = hf_from_gguf(tokens, merges, types)
        report.append("HF oracle from the GGUF: %d tokens, %d merges (%.1f s)" % (
            len(tokens), len(merges), time.time() - t0))
        with open(MUSIQUE) as f:
            data = json.load(f)
        passages = [c["title"] + "\n\n" + c["text"] + "\n\n" for d in data for c in d["ctxs"]]
        questions = [d["question"] for d in data]
        template = tp.gguf_chat_template(MODEL)
        rag = [tp.jinja_render(template, tp.rag_messages(d), True, "", "") for d in data]
        strings = tp.HAND + QWEN_STRINGS + tp.random_strings(250, 1234)
        groups = [("strings", strings), ("musique-passage", passages),
                  ("musique-question", questions), ("chat-prompt", rag)]
        lines, n, n_nfc = parity(tok, groups)
        report.append("token ids: %d strings, %d of them changed by NFC" % (n, n_nfc))
        report += lines
        report += split_parity(strings + questions)
        report += chat_parity(tok, data, template)
        report += stop_tokens(tok, tmp)
    except Exception as e:  # a crash or garbage from a tool: counted, the summary line kept
        import traceback

        traceback.print_exc()
        T.check(False, "check_qwen aborted: %r" % e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tp.TMP, ignore_errors=True)
    print("\n".join("  " + line for line in report))
    print("  (%.0f s)" % (time.time() - t0))
    print("%d passed, %d failed" % (T.passed, T.failed))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
