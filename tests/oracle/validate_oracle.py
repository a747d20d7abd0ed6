"""validate_oracle.py - one-off check of the numpy oracle (ref_forward.py) against llama.cpp.
Driven by validate_oracle.sh, which builds the llama_logits helper; not part of `make test`.

Part 1, float32 everywhere (the tight check). make_f32_models.py writes three F32-weight
models: the real model dequantised to F32, and small random llama and qwen2 models (qwen2 with
Q/K/V biases, NeoX RoPE and an untied output). llama.cpp runs them with an f32 KV cache and
flash attention off, so it computes in float32 like the oracle; the oracle runs on the same
ids (for the dequantised copy it reads the original quantised file - same weights). They must
agree to float rounding. Controls: the oracle with the other RoPE pairing, and qwen2 without
its biases, show what a real mistake costs.

Part 2, the quantised model as shipped. llama.cpp rounds activations to int8 per 32 values
before its matmuls (as kvfuse does), so it can only agree to ~1 logit. Reported for its
default f16 KV cache and for f32, next to the noise floor (the oracle against itself with
int8-rounded activations) and a wrong-RoPE control. These numbers set the tolerances of
check_logits.py.

Columns: argmax agreement, max and mean |logit difference|, the largest gap in oracle logits
between the oracle's top token and the other's top token, mean KL(oracle || other).

Usage: python validate_oracle.py LLAMA_LOGITS MODEL WORKDIR
"""
import os
import subprocess
import sys

import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_f32_models  # noqa: E402
from prompts import PROMPTS  # noqa: E402
from ref_forward import RefModel  # noqa: E402

FMT = ("   {:<16} {:<10} argmax {:7.2%}  max|d| {:9.3g}  mean|d| {:9.3g}  top-1 gap {:6.3f}"
       "  KL {:.1e}")


def q8_roundtrip(x):
    """Round activations to int8 per 32 values (scale = max|x|/127), as the engines do."""
    b = x.reshape(-1, 32)
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    q = np.round(np.divide(b, d, out=np.zeros_like(b), where=d > 0))
    return (q * d).reshape(x.shape).astype(np.float32)


def log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def stats(other, oracle):
    d = np.abs(other.astype(np.float64) - oracle)
    pick = other.argmax(-1)
    gap = (oracle.max(-1) - oracle[np.arange(len(pick)), pick]).max()
    lp, lq = log_softmax(oracle), log_softmax(other)
    kl = (np.exp(lp) * (lp - lq)).sum(-1).mean()
    return (pick == oracle.argmax(-1)).mean(), d.max(), d.mean(), gap, kl


def llama(tool, model, text, path, kv):
    with open(path + ".txt", "w") as f:
        f.write(text)
    subprocess.run([tool, model, path + ".txt", f"{path}.{kv}", kv], check=True)
    ids = [int(t) for t in open(f"{path}.{kv}.ids").read().split()]
    return ids, np.fromfile(f"{path}.{kv}.f32", np.float32).reshape(len(ids), -1)


def part1(tool, model, work):
    print("== part 1: float32 weights, llama.cpp with f32 KV cache, flash attention off")
    models = [("real model, F32", os.path.join(work, "f32copy.gguf"), model)]
    make_f32_models.f32copy(model, models[0][1])
    for arch in ("llama", "qwen2"):
        path = os.path.join(work, f"synthetic_{arch}.gguf")
        make_f32_models.synthetic(arch, model, path)
        models.append((f"synthetic {arch}", path, path))
    for label, llama_model, oracle_model in models:
        ref = RefModel(oracle_model, cache_weights=True)
        other_rope = "neox" if ref.rope_style == "normal" else "normal"
        for name, text, chat in PROMPTS:
            if chat:
                continue
            ids, out = llama(tool, llama_model, text, os.path.join(work, name), "f32")
            exact = ref.forward(ids)
            print(f"{label} / {name}: {len(ids)} tokens, max|logit| {np.abs(exact).max():.1f}")
            print(FMT.format("llama.cpp f32", "vs oracle", *stats(out, exact)))
            if name == "long":
                ref.rope_style = other_rope
                print(FMT.format(f"oracle {other_rope} RoPE", "vs oracle",
                                 *stats(ref.forward(ids), exact)))
                ref.rope_style = "neox" if other_rope == "normal" else "normal"
                if ref.arch == "qwen2":
                    biases = {k: v for k, v in ref.tensors.items() if k.endswith(".bias")}
                    for k in biases:
                        del ref.tensors[k]
                    no_bias = ref.forward(ids)
                    print(FMT.format("oracle no bias", "vs oracle", *stats(no_bias, exact)))
                    ref.tensors.update(biases)


def part2(tool, model, work):
    print("== part 2: the quantised model; llama.cpp rounds activations to int8")
    ref = RefModel(model, cache_weights=True)
    exact_linear = ref.linear
    for name, text, chat in PROMPTS:
        if chat:
            continue
        path = os.path.join(work, name)
        outs = {}
        for kv in ("f16", "f32"):
            ids, outs[kv] = llama(tool, model, text, path, kv)
        exact = ref.forward(ids)
        ref.linear = lambda x, n: exact_linear(q8_roundtrip(x), n)
        noisy = ref.forward(ids)
        ref.linear = exact_linear
        ref.rope_style = "neox"
        wrong = ref.forward(ids)
        ref.rope_style = "normal"
        print(f"{name}: {len(ids)} tokens, max|logit| {np.abs(exact).max():.1f}")
        for label, other in (("llama f16 KV", outs["f16"]), ("llama f32 KV", outs["f32"]),
                             ("oracle+int8 act", noisy), ("oracle neox RoPE", wrong)):
            print(FMT.format(label, "vs oracle", *stats(other, exact)))
        print(FMT.format("llama f16 KV", "vs f32 KV", *stats(outs["f16"], outs["f32"])))


def main():
    tool, model, work = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    part1(tool, model, work)
    part2(tool, model, work)


if __name__ == "__main__":
    main()
