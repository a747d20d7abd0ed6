"""make_f32_models.py - GGUF models with float32 weights, for validating the oracle tightly.

With quantised weights llama.cpp rounds activations to int8, so it can only agree with the
float32 oracle to ~1 logit. With F32 weights (and an f32 KV cache) llama.cpp computes in float32
too, and the two must agree to float rounding. Used by validate_oracle.sh.

  make_f32_models.py f32copy MODEL OUT.gguf
      the same model with every tensor dequantised to F32 (gguf.quants.dequantize): the
      oracle's logits for it equal its logits for MODEL exactly, so this checks the oracle's
      model of MODEL without activation rounding in the way
  make_f32_models.py synthetic ARCH MODEL OUT.gguf
      a small random ARCH (llama or qwen2) model, F32 weights (qwen2: Q/K/V biases too), with
      the tokenizer metadata of MODEL so llama.cpp can load it and tokenize text
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize


def copy_fields(reader, writer, skip_prefixes):
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" \
                or any(key.startswith(p) for p in skip_prefixes):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)


def write(writer):
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def f32copy(src, out):
    r = GGUFReader(src)
    arch = r.get_field("general.architecture").contents()
    w = GGUFWriter(out, arch)
    copy_fields(r, w, ["general.file_type"])
    w.add_file_type(0)  # all F32
    for t in r.tensors:
        x = dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, x.reshape([int(n) for n in reversed(t.shape)]))
    write(w)


def synthetic(arch, src, out, seed=7):
    """n_embd 128, 4 heads of 32 (2 KV heads), 2 layers, n_ff 256, the vocab of src."""
    r = GGUFReader(src)
    rng = np.random.default_rng(seed)
    n_vocab = len(r.get_field("tokenizer.ggml.tokens").contents())
    n_embd, n_head, n_head_kv, n_ff, n_layer = 128, 4, 2, 256, 2
    hd = n_embd // n_head
    w = GGUFWriter(out, arch)
    copy_fields(r, w, ["general.", r.get_field("general.architecture").contents() + "."])
    w.add_name(f"synthetic {arch}")
    w.add_file_type(0)
    w.add_block_count(n_layer)
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(10000.0 if arch == "llama" else 1000000.0)
    w.add_layer_norm_rms_eps(1e-6)

    def mat(n_out, n_in, scale=1.0):
        return (rng.standard_normal((n_out, n_in)) * scale / np.sqrt(n_in)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd, np.sqrt(n_embd)))
    for il in range(n_layer):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", norm(n_embd))
        w.add_tensor(p + "attn_q.weight", mat(n_embd, n_embd, 2.0))
        w.add_tensor(p + "attn_k.weight", mat(n_head_kv * hd, n_embd, 2.0))
        w.add_tensor(p + "attn_v.weight", mat(n_head_kv * hd, n_embd))
        if arch == "qwen2":
            kv = n_head_kv * hd
            for name, n in (("attn_q", n_embd), ("attn_k", kv), ("attn_v", kv)):
                w.add_tensor(p + name + ".bias", (0.5 * rng.standard_normal(n)).astype(np.float32))
        w.add_tensor(p + "attn_output.weight", mat(n_embd, n_embd))
        w.add_tensor(p + "ffn_norm.weight", norm(n_embd))
        w.add_tensor(p + "ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(p + "ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(p + "ffn_down.weight", mat(n_embd, n_ff))
    w.add_tensor("output_norm.weight", norm(n_embd))
    if arch == "qwen2":  # untied output, as larger Qwen2 models have
        w.add_tensor("output.weight", mat(n_vocab, n_embd, 4.0))
    write(w)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "f32copy":
        f32copy(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "synthetic":
        synthetic(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
    assert GGMLQuantizationType.F32 == 0
