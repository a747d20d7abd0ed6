"""tokenizer_parity.py - kvfuse's tokenizer and chat templates against independent oracles.

Run by tokenizer_parity.sh with the venv's Python (run-tests.sh sets PYTHON, KVFUSE_MODEL and
BUILD, and runs it from the repository root). Drives $BUILD/tests/tool_tokenize.

1. SmolLM2 (the GGUF model) against Hugging Face `tokenizers` with the model's tokenizer.json
   (../shared/models/): ids for ~400 varied strings, every MuSiQue passage and question, and
   chat-rendered RAG prompts; with special tokens parsed (HF's default) and not parsed
   (HF's encode_special_tokens); decode(encode(s)) == s, also for invalid UTF-8.
2. Chat formatting against jinja2 rendering of the GGUF's own tokenizer.chat_template, and of
   the Llama 3, Zephyr, Llama 2 and Qwen2 templates written into small GGUF vocabularies.
3. Encoding speed of a full MuSiQue prompt (~6k tokens).
4. Real vocabularies with their expected ids (SentencePiece: llama-spm, phi-3; BPE: llama-bpe,
   qwen2, starcoder, refact, gpt-2): llama.cpp's models/ggml-vocab-*.gguf and their .inp/.out
   test files, generated there from the Hugging Face tokenizers. They come from the
   llama-cpp-python sdist on PyPI (pinned, sha256-checked), fetched once with pip into
   $BUILD/tok-vocab/. Set KVF_TOK_VOCABS=0 to skip this part (it is then reported as skipped).

Prints FAIL lines and a last line "N passed, N failed"; exits non-zero on any failure.
"""
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile

BUILD = os.environ.get("BUILD", "build")
TOOL = os.path.join(BUILD, "tests", "tool_tokenize")
MODEL = os.environ.get("KVFUSE_MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf")
SHARED = os.environ.get("KVF_SHARED", os.path.join("..", "shared"))
HF_JSON = os.path.join(SHARED, "models", "smollm2-135m-instruct.tokenizer.json")
MUSIQUE = os.path.join(SHARED, "data", "musique-cacheblend", "musique_s.json")

TOK_ADD_BOS, TOK_PARSE_SPECIAL = 1, 2

VOCAB_SDIST = "llama-cpp-python==0.3.36"
VOCAB_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
VOCAB_NAMES = ["llama-spm", "phi-3", "llama-bpe", "qwen2", "starcoder", "refact", "gpt-2"]


class Tally:
    def __init__(self):
        self.passed = self.failed = 0
        self.shown = 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
            return True
        self.failed += 1
        if self.shown < 40:
            print("FAIL", what)
            self.shown += 1
        return False


T = Tally()
TMP = tempfile.mkdtemp(prefix="kvf-tok-")


# ---- driving the C tool ------------------------------------------------------------------


def tool_encode(model, items):
    """items: [(bytes, flags)] -> [(ids, decoded bytes)]"""
    inp, out = os.path.join(TMP, "enc.in"), os.path.join(TMP, "enc.out")
    with open(inp, "wb") as f:
        for b, flags in items:
            f.write(struct.pack("<II", flags, len(b)))
            f.write(b)
    subprocess.run([TOOL, "encode", model, inp, out], check=True)
    data, at, res = open(out, "rb").read(), 0, []
    for _ in items:
        (n,) = struct.unpack_from("<i", data, at)
        ids = list(struct.unpack_from("<%di" % n, data, at + 4))
        at += 4 + 4 * n
        (m,) = struct.unpack_from("<i", data, at)
        res.append((ids, data[at + 4 : at + 4 + m]))
        at += 4 + m
    if at != len(data):
        raise RuntimeError("tool_tokenize encode: %d trailing bytes" % (len(data) - at))
    return res


def tool_chat(model, convs):
    """convs: [(messages, add_generation_prompt)] -> [text bytes or None on error]"""
    inp, out = os.path.join(TMP, "chat.in"), os.path.join(TMP, "chat.out")
    with open(inp, "wb") as f:
        for msgs, gen in convs:
            f.write(struct.pack("<II", len(msgs), 1 if gen else 0))
            for m in msgs:
                for s in (m["role"], m["content"]):
                    b = s.encode()
                    f.write(struct.pack("<I", len(b)))
                    f.write(b)
    subprocess.run([TOOL, "chat", model, inp, out], check=True)
    data, at, res = open(out, "rb").read(), 0, []
    for _ in convs:
        (n,) = struct.unpack_from("<i", data, at)
        at += 4
        if n < 0:
            res.append(None)
            continue
        res.append(data[at : at + n])
        at += n
    return res


def tool_split(model, texts):
    """texts: [bytes] -> [[byte offset where each pre-token ends]]"""
    inp, out = os.path.join(TMP, "split.in"), os.path.join(TMP, "split.out")
    with open(inp, "wb") as f:
        for b in texts:
            f.write(struct.pack("<II", 0, len(b)))
            f.write(b)
    subprocess.run([TOOL, "split", model, inp, out], check=True)
    data, at, res = open(out, "rb").read(), 0, []
    for _ in texts:
        (n,) = struct.unpack_from("<i", data, at)
        res.append(list(struct.unpack_from("<%dI" % n, data, at + 4)))
        at += 4 + 4 * n
    return res


def tool_info(model):
    out = subprocess.run([TOOL, "info", model], check=True, capture_output=True, text=True)
    return {k: v for k, _, v in (line.partition(" ") for line in out.stdout.splitlines())}


# ---- test strings ---------------------------------------------------------------------------

HAND = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\n \t", "a", "A", "0", "!",
    "Hello world", " Hello world", "Hello World", "Hello, world!", "  Hello   world  ",
    "hello\n\nworld\n", "line one\r\nline two\r\n", "tabs\tin\ttext", "trailing spaces   ",
    "I'm sure it's fine, we're done, they've left, I'll go, he'd say", "DON'T SHOUT, IT'S LOUD",
    "'s 't 're 've 'm 'll 'd", "'S 'T 'RE 'Ve 'M 'lL 'D", "x'\u017fa x'\u212a", "rock 'n' roll", "O'Neil's", "quote: 'single' \"double\"",
    "1", "12", "123", "1234", "12345678901234567890", "3.14159", "1,000,000", "-42", "+7e-10",
    "version 2.0.1-rc3", "ids: 007, 0x1F, 0b1010", "2024-01-31T12:34:56Z", "call 555-0100",
    "½ ¾ ² ³ ⁴ Ⅻ ⅷ ٣٤٥ ४५ １２３ ①②", "x² + y² = z²", "10%", "$5.99", "€100", "£20", "¥1000",
    "Äpfel", "naïve café résumé", "Straße", "Ångström", "ĀĒĪŌŪ", "Łódź", "Ελληνικά γλώσσα",
    "Русский язык", "нещо на Български", "עברית", "العربية لغة", "हिन्दी भाषा", "नमस्ते",
    "ภาษาไทย", "中文字符测试", "日本語のテキスト、カタカナ", "한국어 텍스트", "Tiếng Việt Cửa Việt",
    "e\u0301 a\u0308 o\u0323\u0302", "decomposed: Cafe\u0301", "ﬁ ligature", "Ｆｕｌｌｗｉｄｔｈ",
    "🦙", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "❤️", "✅ done", "this is 🦙.cpp", "🚀 (normal) 😶‍🌫️ (multiple)",
    "def f(x):\n    return x * 2\n", "int main(void) {\n\treturn 0;\n}\n",
    '{"key": [1, 2, 3], "nested": {"a": null}}', "<html><body class=\"x\">hi</body></html>",
    "SELECT * FROM t WHERE id = 1;", "https://example.com/path?q=1&r=2#frag", "user@example.com",
    "a+b=c; a-b=d; a*b=e; a/b=f", "!!!!!!", "??", "...", "---", "===", "___", "***", "####",
    "(((nested)))", "[brackets] {braces} <angles>", "~`@#$%^&*|\\", "¡Hola! ¿Qué tal?",
    "\u00a0nbsp\u00a0", "em\u2003space", "ideographic\u3000space", "zero\u200bwidth", "\ufeffBOM",
    "nel\u0085char", "line\u2028sep", "para\u2029sep", "ctrl\x00\x01\x02\x1b\x7f",
    "unit\x1cseparators\x1d\x1e\x1f", "\x0b\x0c vertical", "  \n  \n", " \t ", "\n \n",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHi<|im_end|>\n",
    "text<|im_end|>more", "<|im_start|><|im_end|>", "<|im_start", "im_end|>", "<|im_|>",
    "<<|im_start|>>", "<file_sep>code<filename>x.py", "<jupyter_code>print(1)<jupyter_output>",
    "<repo_name><reponame><gh_stars>10", "< |im_start| >", "<|IM_START|>",
    "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～", "w048 7tuijk dsdfhu",
    "   Hello\n    Hello", " (", "\n =", "' era", "3333333", "ied 4 ½ months",
    "a" * 300, "ab" * 200, " " * 100, "\n" * 50, "." * 120, "🦙" * 30, "9" * 64,
    "The quick brown fox jumps over the lazy dog. " * 10,
]

POOL = [
    "the", "The", " of", "and", "ing", "tion", " a", "A", "Z", "x", "é", "ß", "ü", "Ω", "ж",
    "Я", "中", "文", "の", "カ", "한", "م", "ש", "न", "्", "ि", "ส", "\u0301", "\u0308", "0", "1",
    "7", "42", "½", "²", "٣", "४", "１", " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", "\u00a0",
    "\u2003", "\u3000", "\u200b", ".", ",", ";", ":", "!", "?", "'", "'s", "'re", "'LL", "'t",
    "\"", "(", ")", "[", "]", "{", "}", "<", ">", "-", "_", "=", "+", "*", "/", "\\", "|", "@",
    "#", "$", "%", "^", "&", "~", "`", "😀", "🦙", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "<|im_start|>",
    "<|im_end|>", "<|endoftext|>", "<file_sep>", "<|im_", "\x00", "\x1b", "\x7f", "\x1c",
    "\u0085", "\u2028", "\ufeff", "http://", "x = 1", "def", "return", " world", "Hello",
]


def random_strings(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 14)
        out.append("".join(rng.choice(POOL) for _ in range(k)))
    return out


INVALID_UTF8 = [
    b"\xff", b"\xfe\xff abc", b"abc \xc3", b"\xc3(", b"\xe2\x82", b"\xe2\x82\x28",
    b"\xf0\x9f\xa6", b"\xed\xa0\x80 surrogate", b"\xc0\xaf overlong", b"\xf4\x90\x80\x80 big",
    b"mixed \x80\x81 bytes \xbf", b"\xf5\xf6\xf7\xf8 \xfc\xfd", bytes(range(256)),
    b"<|im_start|>\xff<|im_end|>",
]


# ---- oracles --------------------------------------------------------------------------------


def hf_tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(HF_JSON)


def hf_encode(tok, texts, special):
    tok.encode_special_tokens = not special
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def jinja_render(template, messages, gen, bos, eos):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    # The environment transformers' apply_chat_template uses.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=gen, bos_token=bos, eos_token=eos
    )


def gguf_chat_template(path):
    from gguf import GGUFReader

    r = GGUFReader(path)
    f = r.fields["tokenizer.chat_template"]
    return bytes(f.parts[f.data[0]]).decode()


# ---- 1. SmolLM2 ids against Hugging Face ------------------------------------------------------


def musique():
    with open(MUSIQUE) as f:
        data = json.load(f)
    passages = [c["title"] + "\n\n" + c["text"] + "\n\n" for d in data for c in d["ctxs"]]
    questions = [d["question"] for d in data]
    return data, passages, questions


def rag_messages(d):
    docs = "".join(c["title"] + "\n\n" + c["text"] + "\n\n" for c in d["ctxs"])
    return [
        {"role": "system", "content": "Answer the question using the passages."},
        {"role": "user", "content": docs + "Question: " + d["question"]},
    ]


def check_ids(label, texts, ours, theirs):
    for i, (t, (ids, _), ref) in enumerate(zip(texts, ours, theirs)):
        if ids != ref:
            k = next((j for j in range(min(len(ids), len(ref))) if ids[j] != ref[j]),
                     min(len(ids), len(ref)))
            T.check(False, "%s #%d %r: ids differ at %d: ours %s, HF %s" % (
                label, i, t[:60], k, ids[k : k + 6], ref[k : k + 6]))
        else:
            T.check(True, "")


def check_roundtrip(label, raw, ours, missing=frozenset()):
    """decode(encode(s)) == s, less the bytes that no token stands for (`missing`: the
    vocabulary cannot encode them; HF drops them too)."""
    for i, (b, (_, dec)) in enumerate(zip(raw, ours)):
        want = bytes(c for c in b if c not in missing)
        T.check(dec == want, "%s #%d %r: decode(encode(s)) = %r" % (label, i, b[:60], dec[:60]))


def parity_smollm(data, passages, questions, chat_texts):
    tok = hf_tokenizer()
    missing = frozenset(int(x) for x in tool_info(MODEL)["missing_bytes"].split())
    # SmolLM2 has no token for 21 bytes: 0xC0, 0xC1, 0xF5..0xFF (never in UTF-8), 0xF1, 0xF2
    # (planes 4..11) and a few C0 controls. No other byte may be missing.
    T.check(missing <= set(range(0x20)) | {0x7F, 0xC0, 0xC1} | set(range(0xF1, 0x100)),
            "SmolLM2 vocabulary: unexpected missing bytes %s" % sorted(missing))
    groups = [
        ("strings", HAND + random_strings(250, 1234)),
        ("musique-passage", passages),
        ("musique-question", questions),
        ("chat-prompt", chat_texts),
    ]
    summary = []
    for label, texts in groups:
        raw = [t.encode() for t in texts]
        for special in (True, False):
            flags = TOK_PARSE_SPECIAL if special else 0
            ours = tool_encode(MODEL, [(b, flags) for b in raw])
            ref = hf_encode(tok, texts, special)
            f0 = T.failed
            check_ids("%s%s" % (label, "" if special else " (no special)"), texts, ours, ref)
            check_roundtrip(label, raw, ours, missing)
            if special:
                # HF decodes to the same text
                dec = [tok.decode(r, skip_special_tokens=False).encode() for r in ref]
                for i, (d, (_, od)) in enumerate(zip(dec, ours)):
                    T.check(d == od, "%s #%d: decode differs from HF" % (label, i))
            summary.append("%s%s: %d strings, %d with a mismatch" % (
                label, "" if special else " (no special)", len(texts), T.failed - f0))
    # invalid UTF-8: no oracle, but it must round-trip byte for byte
    for flags in (0, TOK_PARSE_SPECIAL):
        ours = tool_encode(MODEL, [(b, flags) for b in INVALID_UTF8])
        check_roundtrip("invalid-utf8", INVALID_UTF8, ours, missing)
        for b, (ids, _) in zip(INVALID_UTF8, ours):
            T.check(all(0 <= i < 49152 for i in ids), "invalid-utf8 %r: bad id" % b[:20])
    # BOS: SmolLM2 has add_bos_token = false, so KVF_TOK_ADD_BOS adds nothing
    ours = tool_encode(MODEL, [(b"Hello", TOK_ADD_BOS | TOK_PARSE_SPECIAL)])
    T.check(ours[0][0] == hf_encode(tok, ["Hello"], True)[0], "ADD_BOS on SmolLM2 added a token")
    return summary


# ---- 2. chat templates against jinja2 ---------------------------------------------------------

CONVS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    [
        {"role": "system", "content": "  Système: réponds en français 🇫🇷\n"},
        {"role": "user", "content": "\n  Pourquoi ?  \n\n"},
        {"role": "assistant", "content": " Parce que. "},
        {"role": "user", "content": "Code:\n```py\nprint('x')\n```"},
    ],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "<|im_start|> and <|im_end|> as text, {{ braces }} and {% tags %}"}],
]

TEMPLATES = {
    # meta-llama/Meta-Llama-3-8B-Instruct
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
        "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] "
        "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
        "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
        "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
        "<|begin_of_text|>", "<|eot_id|>",
    ),
    # HuggingFaceH4/zephyr-7b-beta (TinyLlama-1.1B-Chat-v1.0 uses the same)
    "zephyr": (
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
        "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ "
        "'<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == "
        "'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
        "{% endfor %}",
        "<s>", "</s>",
    ),
    # meta-llama/Llama-2-7b-chat-hf
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
        "system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
        "{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if "
        "(message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation"
        " roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
        "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + "
        "system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
        "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + "
        "'[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ "
        "' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
        "<s>", "</s>",
    ),
    # Qwen/Qwen2-0.5B-Instruct
    "chatml": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        "<|endoftext|>", "<|im_end|>",
    ),
}


def write_vocab_gguf(path, template, bos, eos):
    """A small SentencePiece vocabulary whose BOS/EOS have the given texts."""
    import gguf

    tokens = ["<unk>", bos, eos, "<|im_start|>", "<|im_end|>", "<|start_header_id|>",
              "<|end_header_id|>", "<|eot_id|>", "\u2581", "a", "b", "\u2581a"]
    tokens = list(dict.fromkeys(tokens))
    types = [2] + [3] * 7 + [1] * (len(tokens) - 8)
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types[: len(tokens)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check_chat(label, model, template, bos, eos, expect_family, convs):
    info = tool_info(model)
    T.check(info.get("chat") == expect_family,
            "%s: template family %s, expected %s" % (label, info.get("chat"), expect_family))
    cases = []
    for msgs in convs:
        for gen in (True, False):
            try:
                ref = jinja_render(template, msgs, gen, bos, eos)
            except Exception:  # the template rejects it (e.g. Llama 2 with no messages)
                continue
            cases.append((msgs, gen, ref))
    ours = tool_chat(model, [(m, g) for m, g, _ in cases])
    for (msgs, gen, ref), got in zip(cases, ours):
        T.check(got == ref.encode(), "%s chat %r gen=%s:\n  ours   %r\n  jinja2 %r" % (
            label, [m["role"] for m in msgs], gen, got, ref))
    return len(cases)


def chat_parity(data):
    summary = []
    # SmolLM2's own template
    smol = gguf_chat_template(MODEL)
    rag = [rag_messages(d) for d in data[:5]]
    convs = CONVS + [[]] + rag
    n = check_chat("smollm2", MODEL, smol, "<|im_start|>", "<|im_end|>", "chatml", convs)
    summary.append("smollm2 (GGUF template): %d renderings" % n)
    for fam, (tmpl, bos, eos) in TEMPLATES.items():
        path = os.path.join(TMP, "vocab-%s.gguf" % fam)
        write_vocab_gguf(path, tmpl, bos, eos)
        n = check_chat(fam, path, tmpl, bos, eos, fam, CONVS + [[]])
        summary.append("%s: %d renderings" % (fam, n))
    # the chat prompts the engine will tokenize: rendered by jinja2, for the id parity
    texts = [jinja_render(smol, rag_messages(d), True, "<|im_start|>", "<|im_end|>")
             for d in data]
    return summary, texts


# ---- 1b. the regex pre-tokenizers against Hugging Face's (Oniguruma) -----------------------

RE_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
RE_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
RE_QWEN2 = RE_LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")


def hf_pretokenizers():
    from tokenizers import Regex, pre_tokenizers as pt

    return {
        "gpt2": pt.Split(Regex(RE_GPT2), behavior="isolated"),
        "smollm": pt.Sequence([pt.Digits(individual_digits=True),
                               pt.ByteLevel(add_prefix_space=False, use_regex=True)]),
        "llama3": pt.Split(Regex(RE_LLAMA3), behavior="isolated"),
        "qwen2": pt.Split(Regex(RE_QWEN2), behavior="isolated"),
    }


def write_bpe_gguf(path, pre):
    """A byte-level BPE vocabulary (the 256 byte tokens) with the given pre-tokenizer."""
    import gguf

    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    tokens = [chr(c) for _, c in sorted(zip(bs, cs))]
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens + ["ab"])
    w.add_token_types([1] * 257)
    w.add_token_merges(["a b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def pretokenizer_parity(texts):
    summary = []
    for name, hf in hf_pretokenizers().items():
        path = os.path.join(TMP, "pre-%s.gguf" % name)
        write_bpe_gguf(path, name)
        T.check(tool_info(path)["pre"] == name, "pre-tokenizer %s not selected" % name)
        ours = tool_split(path, [t.encode() for t in texts])
        f0 = T.failed
        for t, ends in zip(texts, ours):
            ref = [t[:e].encode().__len__() for _, (_, e) in hf.pre_tokenize_str(t)]
            T.check(ends == ref, "%s split %r:\n  ours %s\n  HF   %s" % (
                name, t[:60], [t.encode()[a:b] for a, b in zip([0] + ends, ends)][:12],
                [t.encode()[a:b] for a, b in zip([0] + ref, ref)][:12]))
        summary.append("pre-tokenizer %s: %d strings, %d differ from HF" % (
            name, len(texts), T.failed - f0))
    return summary


# ---- 3. speed -------------------------------------------------------------------------------


def speed(data):
    tmpl = gguf_chat_template(MODEL)
    prompts = [jinja_render(tmpl, rag_messages(d), True, "", "").encode() for d in data[:3]]
    inp = os.path.join(TMP, "bench.in")
    with open(inp, "wb") as f:
        for p in prompts:
            f.write(struct.pack("<II", TOK_PARSE_SPECIAL, len(p)))
            f.write(p)
    out = subprocess.run([TOOL, "bench", MODEL, inp, "7"], check=True, capture_output=True,
                         text=True).stdout
    lines = []
    for line in out.splitlines():
        w = line.split()
        toks, ms = int(w[5]), float(w[9])
        lines.append("%d tokens (%s bytes): median %.2f ms, min %s ms" % (toks, w[3], ms, w[7]))
        # a generous bound: a quadratic pass over the prompt would take seconds
        T.check(float(w[7]) < 100.0, "encoding a %d-token prompt took %s ms" % (toks, w[7]))
    return lines


# ---- 4. real vocabularies from llama.cpp's test set -----------------------------------------


def fetch_vocabs():
    cache = os.path.join(BUILD, "tok-vocab")
    marker = os.path.join(cache, "OK")
    if os.path.exists(marker):
        return cache
    dl = os.path.join(TMP, "sdist")
    os.makedirs(dl, exist_ok=True)
    print("tokenizer_parity: fetching %s (sdist, ~77 MB) for its test vocabularies" % VOCAB_SDIST)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--no-binary", ":all:", "--disable-pip-version-check", VOCAB_SDIST, "-d", dl],
                   check=True, stdout=sys.stderr)
    (tgz,) = [os.path.join(dl, f) for f in os.listdir(dl) if f.endswith(".tar.gz")]
    h = hashlib.sha256()
    with open(tgz, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != VOCAB_SDIST_SHA256:
        raise RuntimeError("%s: sha256 %s, expected %s" % (tgz, h.hexdigest(), VOCAB_SDIST_SHA256))
    os.makedirs(cache, exist_ok=True)
    want = {"ggml-vocab-%s.gguf%s" % (n, s) for n in VOCAB_NAMES for s in ("", ".inp", ".out")}
    with tarfile.open(tgz) as tf:
        for m in tf.getmembers():
            base = os.path.basename(m.name)
            if m.isfile() and "/vendor/llama.cpp/models/" in m.name and base in want:
                with tf.extractfile(m) as src, open(os.path.join(cache, base), "wb") as dst:
                    shutil.copyfileobj(src, dst)
                want.discard(base)
    if want:
        raise RuntimeError("missing from the sdist: %s" % sorted(want))
    open(marker, "w").close()
    return cache


def real_vocabs():
    if os.environ.get("KVF_TOK_VOCABS", "1") == "0":
        return ["real vocabularies: SKIPPED (KVF_TOK_VOCABS=0)"]
    try:
        cache = fetch_vocabs()
    except Exception as e:  # no network: a failure, not a silent pass
        T.check(False, "cannot fetch the llama.cpp test vocabularies: %s "
                       "(set KVF_TOK_VOCABS=0 to skip)" % e)
        return ["real vocabularies: could not be fetched"]
    lines = []
    for name in VOCAB_NAMES:
        path = os.path.join(cache, "ggml-vocab-%s.gguf" % name)
        with open(path + ".inp", encoding="utf-8", newline="") as f:
            tests = f.read().split("\n__ggml_vocab_test__\n")[:-1]
        with open(path + ".out", encoding="utf-8") as f:
            expect = [[int(x) for x in line.split()] for line in f.read().split("\n")[: len(tests)]]
        info = tool_info(path)
        missing = frozenset(int(x) for x in info["missing_bytes"].split())
        ours = tool_encode(path, [(t.encode(), 0) for t in tests])
        f0 = T.failed
        for t, (ids, dec), ref in zip(tests, ours, expect):
            T.check(ids == ref, "%s %r: ours %s, expected %s" % (name, t[:50], ids[:12], ref[:12]))
        check_roundtrip(name, [t.encode() for t in tests], ours, missing)
        lines.append("%s (%s, %s): %d strings, %d failed checks" % (
            name, info["pre"], "SentencePiece" if info["pre"] == "spm" else "BPE", len(tests),
            T.failed - f0))
    return lines


def unicode_table_current():
    """src/engine/unicode_data.h is what scripts/gen-unicode.py writes (same Unicode version)."""
    import unicodedata

    with open("src/engine/unicode_data.h") as f:
        committed = f.read()
    if '"%s"' % unicodedata.unidata_version not in committed:
        return ["unicode table: not compared (this Python has Unicode %s)"
                % unicodedata.unidata_version]
    out = subprocess.run([sys.executable, "scripts/gen-unicode.py"], check=True,
                         capture_output=True, text=True).stdout
    T.check(out == committed, "src/engine/unicode_data.h differs from scripts/gen-unicode.py's output")
    return ["unicode table: src/engine/unicode_data.h matches scripts/gen-unicode.py"]


def main():
    for p in (HF_JSON, MUSIQUE):
        if not os.path.exists(p):
            print("SKIP: tokenizer_parity needs %s (shared data; set KVF_SHARED)" % p)
            print("0 passed, 0 failed")
            return 0
    for p in (TOOL, MODEL):
        if not os.path.exists(p):
            print("tokenizer_parity: missing %s" % p)
            print("0 passed, 1 failed")
            return 1
    data, passages, questions = musique()
    report = []
    try:
        chat_summary, chat_texts = chat_parity(data)
        report += parity_smollm(data, passages, questions, chat_texts)
        report += pretokenizer_parity(HAND + random_strings(250, 1234) + questions)
        report += chat_summary
        report += speed(data)
        report += real_vocabs()
        report += unicode_table_current()
    except Exception as e:  # the tool crashed or wrote garbage: count it, keep the summary line
        import traceback

        traceback.print_exc()
        T.check(False, "tokenizer_parity aborted: %r" % e)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print("\n".join("  " + line for line in report))
    print("%d passed, %d failed" % (T.passed, T.failed))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
