"""prompts.py - the prompts the logits checks run (check_logits.py, validate_oracle.py).

Each entry: (name, text, chat). `text` is tokenized with special-token parsing, so the
"chat_template" entry spells SmolLM2's ChatML markers itself; chat=True entries are passed
to `kvfuse logits --chat`, which applies the model's chat template.
"""

LONG = (
    "The lighthouse keeper kept a notebook on the table beside the lamp. Every evening he wrote "
    "down the direction of the wind, the height of the waves and the names of the ships that "
    "passed the point before dark. Most entries were short: a fishing boat heading home, a ferry "
    "running late, a cargo ship riding low in the water. Some nights nothing passed at all, and "
    "he wrote only the weather and the time he lit the lamp. Over forty years the notebooks filled "
    "three shelves in the storeroom below the stairs. When the light was finally automated, a "
    "young engineer from the harbour authority came to install the new equipment. She found the "
    "notebooks while looking for a place to put her tools, and she spent the whole afternoon "
    "reading them instead of working. She noticed that the storms had grown more frequent in the "
    "later years, that the fishing boats had become fewer and larger, and that the ferry had "
    "changed its schedule eleven times. Before she left, she asked the keeper whether she could "
    "copy the notebooks for the regional archive. He agreed on one condition: that somebody would "
    "keep writing in them. So every evening, in an office far from the sea, a clerk now reads the "
    "data sent by the automatic station and copies the wind, the waves and the ships into a new "
    "notebook by hand, exactly as the keeper did, because a promise is a promise and because the "
    "numbers, she says, mean more when someone has to write them down. The keeper still visits "
    "the archive once a year to read"
)

CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the boiling point of water at sea level, in Celsius "
    "and in Fahrenheit?<|im_end|>\n<|im_start|>assistant\n"
)

CODE = '''def merge_sorted(a, b):
    """Merge two sorted lists into one sorted list."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i]); i += 1
        else:
            out.append(b[j]); j += 1
    return out + a[i:] + b[j:]

print(merge_sorted([1, 4, 9], [2, 3, 10]))  # prints'''

UNICODE = (
    "Pi is 3.14159265358979 and e \u2248 2.718281828. Prices: \u20ac12.50, \u00a51,000, "
    "\u00a37.99, 0x7fff, 1e-5, -42. Unicode: na\u00efve caf\u00e9, \u0395\u03bb\u03bb\u03b7"
    "\u03bd\u03b9\u03ba\u03ac, \u0440\u0443\u0441\u0441\u043a\u0438\u0439, \u65e5\u672c\u8a9e"
    "\u306e\u30c6\u30ad\u30b9\u30c8, emoji \U0001f680\U0001f525, math \u2211 x\u00b2 \u2264 \u221e."
)

PROMPTS = [
    ("short", "The capital of France is", False),
    ("long", LONG, False),
    ("chat_template", CHAT, False),
    ("code", CODE, False),
    ("numbers_unicode", UNICODE, False),
    ("chat_flag", "Write a haiku about the sea.", True),
]

# Qwen2 / Qwen2.5 (check_logits.py --prompt-set qwen, run by tests/integration/qwen_parity.sh):
# the same kinds of text, shorter (151936-entry logits per position; the 0.5B model must
# stay within a few minutes on 2 cores), and the ChatML prompt spelled with Qwen's default
# system message.
QWEN_CHAT = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\n<|im_start|>user\nWhat is the boiling point of water at sea level, in Celsius "
    "and in Fahrenheit?<|im_end|>\n<|im_start|>assistant\n"
)

QWEN_CODE = '''fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        let t = b;
        b = a % b;
        a = t;
    }
    a
}

fn main() {
    // 12 and 18 have the greatest common divisor'''

QWEN_MIXED = (
    "\u8bf7\u7528\u4e00\u53e5\u8bdd\u4ecb\u7ecd\u5317\u4eac\u3002 Answer: \u5317\u4eac\u662f"
    "\u4e2d\u56fd\u7684\u9996\u90fd, population 21,893,095 (2020); \U0001f1e8\U0001f1f3 "
    "\U0001f600 it's 3.14159 \u2248 \u03c0, we'll see."
)

QWEN_PROMPTS = [
    ("short", "The capital of France is", False),
    ("long", LONG[:LONG.index(" Before she left")], False),
    ("chat_template", QWEN_CHAT, False),
    ("code", QWEN_CODE, False),
    ("numbers_unicode", QWEN_MIXED, False),
    ("chat_flag", "Write a haiku about the sea.", True),
]
