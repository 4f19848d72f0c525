"""MLX's affine quantization of fixture matrices: the reference for `vlm_kernels::quant`.

For each case, a matrix (f32, or bf16 as the released checkpoints store them) and what
`mlx.core.quantize` makes of it at 4 and 8 bits in groups of 32, 64 and 128: the packed
uint32 words, the scales and biases (in the matrix's dtype, stored here as f32: bf16 values
are exact in f32), and `mlx.core.dequantize` of them. The matrices cover what the arithmetic
branches on: the edge below or above zero, a constant group (q0 = 0), an all-zero group,
huge and tiny magnitudes, ties at .5, and heavy-tailed rows with outlier channels.

Writes OUT/mlx.safetensors (default fixtures/quant). Needs `mlx[cpu]`, numpy, safetensors.
"""
import argparse
import os

import mlx.core as mx
import numpy as np
from safetensors.numpy import save_file


def bf16(x):
    """Rounds f32 values to bf16 (nearest, ties to even), kept as f32."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def cases(rng):
    rows, cols = 6, 256
    normal = rng.standard_normal((rows, cols)).astype(np.float32)
    edges = normal.copy()
    edges[0, :64] = 0.0  # all zero
    edges[1, :64] = 3.0  # constant: q0 = 0 below, edge above
    edges[2, :64] = -3.0
    edges[3, 64:128] = np.linspace(-1, 1, 64)  # |min| == |max|
    edges[4, :32] = np.arange(32) * 0.5  # levels on halves
    edges[5] *= 1e-6
    heavy = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    heavy[:, rng.choice(cols, 3, replace=False)] *= 100.0  # outlier channels
    wide = (rng.standard_normal((rows, cols)) * 1e4).astype(np.float32)
    return {"normal": normal, "edges": edges, "heavy": heavy, "wide": wide}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fixtures/quant")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(20261207)
    out = {}
    for name, w in cases(rng).items():
        for dtype in ("f32", "bf16"):
            values = w if dtype == "f32" else bf16(w)
            out[f"{name}.{dtype}.input"] = values
            array = mx.array(values)
            if dtype == "bf16":
                array = array.astype(mx.bfloat16)
            for bits in (4, 8):
                for group in (32, 64, 128):
                    key = f"{name}.{dtype}.q{bits}g{group}"
                    q, s, b = mx.quantize(array, group_size=group, bits=bits)
                    d = mx.dequantize(q, s, b, group_size=group, bits=bits)
                    out[f"{key}.weight"] = np.array(q)
                    out[f"{key}.scales"] = np.array(s.astype(mx.float32))
                    out[f"{key}.biases"] = np.array(b.astype(mx.float32))
                    out[f"{key}.dequantized"] = np.array(d.astype(mx.float32))
    save_file(out, os.path.join(args.out, "mlx.safetensors"), metadata={"mlx": mx.__version__})
    print(f"{len(out)} tensors -> {args.out}/mlx.safetensors")


if __name__ == "__main__":
    main()
