#!/usr/bin/env python3
"""ref_forward.py - an independent numpy reference forward pass for GGUF llama / qwen2 models.

This is the oracle the integration tests compare the C engine against. It shares no code with
kvfuse: weights are read with the official `gguf` package and dequantised with
`gguf.quants.dequantize`; all arithmetic is float32 numpy, written for clarity, not speed.

The model, per the GGUF conventions of llama.cpp:
  x = token_embd[ids]
  for each layer:
      h = rmsnorm(x, attn_norm)
      q, k, v = h Wq (+bq), h Wk (+bk), h Wv (+bv)       # biases: qwen2 only
      q, k = rope(q), rope(k)
      x = x + attention(q, k, v) Wo                       # causal, grouped-query, 1/sqrt(d)
      h = rmsnorm(x, ffn_norm)
      x = x + (silu(h Wgate) * (h Wup)) Wdown             # SwiGLU
  logits = rmsnorm(x, output_norm) Wout                   # Wout = output.weight or token_embd

  rmsnorm(x, w) = x / sqrt(mean(x^2) + eps) * w
  rope: theta_i = pos * base^(-2i/n_rot) rotates one pair of dimensions per i; the pair is
        (2i, 2i+1) for llama (llama.cpp "normal" mode: the HF->GGUF converter permutes Wq/Wk
        so adjacent pairs are right) and (i, i + n_rot/2) for qwen2 (NeoX mode).

Usage:
  ref_forward.py MODEL --ids "1 2 3" -o logits.npy     # logits for every position, [n, vocab]
  ref_forward.py MODEL --ids-file ids.txt -o logits.npy
or from Python:
  from ref_forward import RefModel;  logits = RefModel(path).forward([1, 2, 3])
"""
import argparse
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

ROPE_STYLE = {"llama": "normal", "qwen2": "neox"}


class RefModel:
    def __init__(self, path, cache_weights=False):
        """cache_weights: keep every dequantised weight between forward() calls (faster for
        many prompts; ~4 bytes per parameter). Otherwise only one layer is held at a time."""
        self.cache_weights = cache_weights
        self.reader = GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}
        arch = self._field("general.architecture")
        if arch not in ROPE_STYLE:
            raise ValueError(f"ref_forward: unsupported architecture {arch!r}")
        self.arch = arch
        self.n_layer = int(self._field(f"{arch}.block_count"))
        self.n_embd = int(self._field(f"{arch}.embedding_length"))
        self.n_head = int(self._field(f"{arch}.attention.head_count"))
        self.n_head_kv = int(self._field(f"{arch}.attention.head_count_kv", self.n_head))
        self.head_dim = int(self._field(f"{arch}.attention.key_length",
                                        self.n_embd // self.n_head))
        self.n_rot = int(self._field(f"{arch}.rope.dimension_count", self.head_dim))
        self.rope_base = float(self._field(f"{arch}.rope.freq_base", 10000.0))
        self.eps = np.float32(self._field(f"{arch}.attention.layer_norm_rms_epsilon"))
        self.rope_style = ROPE_STYLE[arch]
        scaling = self.reader.get_field(f"{arch}.rope.scaling.type")
        if scaling is not None and scaling.contents() != "none":
            raise NotImplementedError(f"ref_forward: rope scaling {scaling.contents()!r}")
        self._cache = {}

    def _field(self, key, default=None):
        f = self.reader.get_field(key)
        if f is None:
            if default is None:
                raise KeyError(f"ref_forward: GGUF key {key} missing")
            return default
        return f.contents()

    def weight(self, name):
        """Dequantised float32 tensor in numpy order: a GGUF matrix with ne = [in, out] comes
        back with shape (out, in), so a linear layer is  y = x @ W.T."""
        if name not in self._cache:
            t = self.tensors[name]
            w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
            self._cache[name] = w.reshape([int(n) for n in reversed(t.shape)])
        return self._cache[name]

    def has(self, name):
        return name in self.tensors

    def linear(self, x, name):
        y = x @ self.weight(name + ".weight").T
        if self.has(name + ".bias"):
            y = y + self.weight(name + ".bias")
        return y

    def rmsnorm(self, x, name):
        ms = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
        return x / np.sqrt(ms + self.eps) * self.weight(name)

    def rope(self, x, positions):
        """x: [n_tokens, n_heads, head_dim]; rotates the first n_rot dims of every head."""
        half = self.n_rot // 2
        i = np.arange(half, dtype=np.float64)
        inv_freq = self.rope_base ** (-2.0 * i / self.n_rot)
        theta = np.outer(positions, inv_freq)  # [n_tokens, half], angles in float64
        cos = np.cos(theta).astype(np.float32)[:, None, :]
        sin = np.sin(theta).astype(np.float32)[:, None, :]
        out = x.copy()
        if self.rope_style == "normal":  # pairs (2i, 2i+1)
            a, b = x[..., 0:self.n_rot:2], x[..., 1:self.n_rot:2]
            out[..., 0:self.n_rot:2] = a * cos - b * sin
            out[..., 1:self.n_rot:2] = a * sin + b * cos
        else:  # NeoX: pairs (i, i + n_rot/2)
            a, b = x[..., :half], x[..., half:self.n_rot]
            out[..., :half] = a * cos - b * sin
            out[..., half:self.n_rot] = a * sin + b * cos
        return out

    def attention(self, q, k, v):
        """q: [n, n_head, d]; k, v: [n, n_head_kv, d]. Causal softmax attention, GQA."""
        n, d = q.shape[0], self.head_dim
        group = self.n_head // self.n_head_kv
        scale = np.float32(1.0 / np.sqrt(d))
        causal = np.triu(np.ones((n, n), dtype=bool), k=1)  # True above the diagonal = future
        out = np.empty_like(q)
        for h in range(self.n_head):
            kh, vh = k[:, h // group, :], v[:, h // group, :]
            scores = (q[:, h, :] @ kh.T) * scale
            scores[causal] = -np.inf
            scores = scores - scores.max(axis=-1, keepdims=True)
            p = np.exp(scores)
            p = p / p.sum(axis=-1, keepdims=True)
            out[:, h, :] = p @ vh
        return out

    def forward(self, ids):
        """Token ids -> float32 logits [len(ids), vocab] for every position."""
        ids = np.asarray(ids, dtype=np.int64)
        n, d = len(ids), self.head_dim
        positions = np.arange(n, dtype=np.float64)
        x = self.weight("token_embd.weight")[ids].astype(np.float32)
        for il in range(self.n_layer):
            p = f"blk.{il}."
            h = self.rmsnorm(x, p + "attn_norm.weight")
            q = self.linear(h, p + "attn_q").reshape(n, self.n_head, d)
            k = self.linear(h, p + "attn_k").reshape(n, self.n_head_kv, d)
            v = self.linear(h, p + "attn_v").reshape(n, self.n_head_kv, d)
            q, k = self.rope(q, positions), self.rope(k, positions)
            a = self.attention(q, k, v).reshape(n, self.n_head * d)
            x = x + self.linear(a, p + "attn_output")
            h = self.rmsnorm(x, p + "ffn_norm.weight")
            g = self.linear(h, p + "ffn_gate")
            g = g / (np.float32(1) + np.exp(-g))  # silu
            x = x + self.linear(g * self.linear(h, p + "ffn_up"), p + "ffn_down")
            self._drop_layer(p)
        x = self.rmsnorm(x, "output_norm.weight")
        out = "output.weight" if self.has("output.weight") else "token_embd.weight"
        return (x @ self.weight(out).T).astype(np.float32)

    def _drop_layer(self, prefix):
        # without cache_weights, peak memory is one layer's weights (plus the embeddings)
        if self.cache_weights:
            return
        for k in [k for k in self._cache if k.startswith(prefix)]:
            del self._cache[k]


def parse_ids(text):
    return [int(t) for t in text.split()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ids", help='whitespace-separated token ids, e.g. "1 2 3"')
    src.add_argument("--ids-file", help="file of whitespace-separated token ids")
    ap.add_argument("-o", "--out", required=True, help="output .npy, float32 [n_tokens, vocab]")
    a = ap.parse_args(argv)
    ids = parse_ids(a.ids if a.ids is not None else open(a.ids_file).read())
    if not ids:
        sys.exit("ref_forward: no token ids")
    logits = RefModel(a.model).forward(ids)
    np.save(a.out, logits)
    print(f"ref_forward: {len(ids)} tokens -> {a.out} {logits.shape}", file=sys.stderr)


if __name__ == "__main__":
    main()
