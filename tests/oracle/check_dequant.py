"""check_dequant.py - checks kvfuse's C reference dequantiser and quantiser against the
official `gguf` Python package (run by tests/integration/test_dequant.sh).

  (a) every tensor of a real GGUF model: C kvf_dequantize == gguf.quants.dequantize
  (b) per weight type, random blocks: C == Python. Blocks come from gguf.quants.quantize on
      random floats where the package can quantise the type (F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0
      Q5_1), and from random bytes for every type (f16 scale fields forced to finite values,
      subnormals and zeros included; float types get arbitrary bit patterns, inf/NaN included)
  (c) C kvf_quantize -> dequantise round trip: the blocks must decode the same in C and
      Python, and the relative RMSE (rms(err) / rms(x)) must stay under a per-type bound

"Identical" means: for F32/F16/BF16 the float32 bit patterns are equal (NaN payloads
included); for block types the values compare equal with == (so -0.0 == +0.0: C computes
scale*code + min, numpy e.g. d*(q-8) for Q4_0, and the two differ only in the sign of zero)
and every such sign-of-zero difference is counted and printed.

Usage: python check_dequant.py TOOL MODEL     (TOOL = $BUILD/tests/tool_dequant)
Prints one line per check and a final "N passed, N failed".
"""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUFReader
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
PY_QUANTIZABLE = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}
# byte offsets of the f16 scale fields inside one block
F16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
              "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}
# round-trip bound on rms(err)/rms(x) for N(0,1) data, about 1.5-2x what round-to-nearest
# gives (step/sqrt(12) with step = range / levels); F32 must be exact
RMSE_BOUND = {"F32": 0.0, "F16": 1e-3, "BF16": 4e-3, "Q8_0": 0.01, "Q4_0": 0.13, "Q4_1": 0.12,
              "Q5_0": 0.065, "Q5_1": 0.06, "Q4_K": 0.15, "Q5_K": 0.075, "Q6_K": 0.04}

passed = failed = 0


def check(ok, msg, quiet=False):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
    if not (ok and quiet):
        print(("ok   " if ok else "FAIL ") + msg, flush=True)


def compare(c, p, float_type):
    """(identical, n_value_mismatches, n_signed_zero_diffs) for two float32 arrays."""
    c, p = c.reshape(-1), p.reshape(-1).astype(np.float32)
    if c.shape != p.shape:
        return False, max(c.size, p.size), 0
    cb, pb = c.view(np.uint32), p.view(np.uint32)
    if float_type:
        bad = int(np.count_nonzero(cb != pb))
        return bad == 0, bad, 0
    both_nan = np.isnan(c) & np.isnan(p)
    bad = int(np.count_nonzero((c != p) & ~both_nan))
    signed_zero = int(np.count_nonzero((cb != pb) & (c == 0) & (p == 0)))
    return bad == 0, bad, signed_zero


class Tool:
    def __init__(self, path):
        self.path = path
        self.tmp = tempfile.mkdtemp(prefix="kvf_dequant_")

    def _run(self, cmd, qtype, data, out_dtype):
        src, dst = os.path.join(self.tmp, "in.bin"), os.path.join(self.tmp, "out.bin")
        np.ascontiguousarray(data).tofile(src)
        subprocess.run([self.path, cmd, str(int(T[qtype])), src, dst], check=True)
        return np.fromfile(dst, dtype=out_dtype)

    def dequant(self, qtype, blocks):
        return self._run("dequant", qtype, blocks.view(np.uint8), np.float32)

    def quant(self, qtype, x):
        return self._run("quant", qtype, x.astype(np.float32), np.uint8)


def read_exact(f, n):
    b = f.read(n)
    if len(b) != n:
        raise EOFError("tool_dequant model: stream ended early")
    return b


def part_a(tool, model):
    """Every tensor of the model, C vs Python, streamed through a pipe."""
    reader = GGUFReader(model)
    proc = subprocess.Popen([tool.path, "model", model], stdout=subprocess.PIPE)
    per_type = {}
    for t in reader.tensors:
        name_len = int(np.frombuffer(read_exact(proc.stdout, 4), np.uint32)[0])
        name = read_exact(proc.stdout, name_len).decode()
        ctype = int(np.frombuffer(read_exact(proc.stdout, 4), np.uint32)[0])
        n = int(np.frombuffer(read_exact(proc.stdout, 8), np.int64)[0])
        tname = t.tensor_type.name
        if name != t.name or ctype != int(t.tensor_type):
            check(False, f"(a) tensor order/type: C {name}/{ctype} vs gguf {t.name}/{tname}")
            proc.kill()
            return
        if n < 0:
            check(False, f"(a) {name}: C has no dequantiser for {tname}")
            continue
        c = np.frombuffer(read_exact(proc.stdout, 4 * n), np.float32)
        p = dequantize(t.data, t.tensor_type)
        ok, bad, sz = compare(c, p, tname in ("F32", "F16", "BF16"))
        st = per_type.setdefault(tname, [0, 0, 0, 0])
        st[0] += 1
        st[1] += ok
        st[2] += c.size
        st[3] += sz
        check(ok, f"(a) {name} [{tname}, {c.size} values]: "
                  + ("identical" if ok else f"{bad} values differ")
                  + (f", {sz} signed zeros differ" if sz else ""), quiet=True)
    proc.wait()
    check(proc.returncode == 0, f"(a) tool_dequant model exit status {proc.returncode}")
    for tname, (nt, nok, nv, sz) in sorted(per_type.items()):
        print(f"{'ok  ' if nok == nt else 'FAIL'} (a) {tname}: {nok}/{nt} tensors of the model "
              f"identical ({nv} values, {sz} signed-zero differences)")


def random_blocks(rng, qtype, n_blocks):
    """Random bytes for n_blocks of qtype, with every f16 scale field finite."""
    _, size = GGML_QUANT_SIZES[T[qtype]]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    if qtype in ("F16", "F32", "BF16"):
        return raw.reshape(-1)  # float types: arbitrary bit patterns (inf/NaN/subnormal)
    for off in F16_FIELDS[qtype]:
        bits = rng.integers(0, 1 << 16, size=n_blocks, dtype=np.uint16)
        bits &= ~np.uint16(0x4000)  # exponent never all ones -> finite (also keeps it < 2)
        # a quarter of the fields get a full-range exponent, still finite (< 0x7c00)
        wide = rng.random(n_blocks) < 0.25
        bits[wide] = rng.integers(0, 0x7c00, size=int(wide.sum()), dtype=np.uint16) | (
            rng.integers(0, 2, size=int(wide.sum()), dtype=np.uint16) << 15)
        bits[rng.random(n_blocks) < 0.02] = 0  # zero scales
        raw[:, off:off + 2] = bits.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def random_floats(rng, n):
    """N(0,1) values with per-row magnitudes from 1e-4 to 1e3, plus constant and zero rows."""
    x = rng.standard_normal((n // 256, 256)).astype(np.float32)
    x *= (10.0 ** rng.uniform(-4, 3, size=(x.shape[0], 1))).astype(np.float32)
    x[0] = 0.0
    x[1] = 1.5
    x[2] = -3.25
    return x.reshape(-1)


def part_b(tool, rng):
    for qtype in TYPES:
        samples = [("random bytes", random_blocks(rng, qtype, 2048 if qtype[-1] == "K" else 8192))]
        if qtype in PY_QUANTIZABLE:
            x = random_floats(rng, 256 * 256).reshape(256, 256)
            samples.append(("gguf.quantize(random floats)", quantize(x, T[qtype]).reshape(-1)))
        for what, blocks in samples:
            blocks = blocks.view(np.uint8)
            c = tool.dequant(qtype, blocks)
            p = dequantize(blocks, T[qtype])
            ok, bad, sz = compare(c, p, qtype in ("F32", "F16", "BF16"))
            check(ok, f"(b) {qtype} {what}: {c.size} values "
                      + ("identical" if ok else f"{bad} differ")
                      + (f" ({sz} signed zeros differ: -0.0 vs +0.0)" if sz else ""))


def rel_rmse(y, x):
    """rms(y - x) / rms(x), in float64."""
    y, x = y.reshape(-1).astype(np.float64), x.astype(np.float64)
    return float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2)))


def part_c(tool, rng):
    x = rng.standard_normal(256 * 1024).astype(np.float32)
    for qtype in TYPES:
        blocks = tool.quant(qtype, x)
        _, size = GGML_QUANT_SIZES[T[qtype]]
        bs, _ = GGML_QUANT_SIZES[T[qtype]]
        if blocks.size != x.size // bs * size:
            check(False, f"(c) {qtype}: kvf_quantize wrote {blocks.size} bytes")
            continue
        p = dequantize(blocks, T[qtype]).reshape(-1)
        c = tool.dequant(qtype, blocks)
        same, bad, _ = compare(c, p, qtype in ("F32", "F16", "BF16"))
        check(same, f"(c) {qtype}: kvf_quantize blocks decode identically in C and gguf"
                    + ("" if same else f" ({bad} differ)"))
        rel = rel_rmse(p, x)
        bound = RMSE_BOUND[qtype]
        note = ""
        if qtype in PY_QUANTIZABLE:  # for comparison: the gguf package's own quantiser
            py_blocks = quantize(x.reshape(-1, 256), T[qtype]).reshape(-1).view(np.uint8)
            note = f"; gguf.quantize gives {rel_rmse(dequantize(py_blocks, T[qtype]), x):.3e}"
            note += ", same bytes" if np.array_equal(blocks, py_blocks) else ""
        check(rel <= bound,
              f"(c) {qtype}: round-trip relative RMSE {rel:.3e} (bound {bound:g}){note}")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    tool, model = Tool(sys.argv[1]), sys.argv[2]
    rng = np.random.default_rng(20240611)
    try:
        part_a(tool, model)
        part_b(tool, rng)
        part_c(tool, rng)
    except (subprocess.CalledProcessError, EOFError, OSError) as e:
        check(False, f"tool_dequant failed: {e}")
    finally:
        shutil.rmtree(tool.tmp, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
