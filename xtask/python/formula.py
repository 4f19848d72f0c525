"""Deterministic weights and images both the Python reference and the Rust tests can compute.

Every value is a pure function of (seed, tensor name, element index) through SplitMix64 and
float32 arithmetic only, so Rust (`vlm-kernels/src/testing.rs`) reproduces it bit for
bit and full-size networks can be checked without committing their weights.
"""
import math

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)


def fnv1a64(text: str) -> np.uint64:
    h = 0xCBF29CE484222325
    for b in text.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(h)


def uniform(key: str, n: int) -> np.ndarray:
    """n float32 values uniform in [-1, 1)."""
    with np.errstate(over="ignore"):
        z = fnv1a64(key) + np.arange(n, dtype=np.uint64) * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * M1
        z = (z ^ (z >> np.uint64(27))) * M2
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)
    return u * np.float32(2.0) - np.float32(1.0)


def rule(name: str, shape):
    """(scale, offset, identity_centre) for an Apple-named FastViTHD or Qwen2 tensor."""
    if name.endswith("bn.weight"):
        return 0.2, 1.0, False
    if name.endswith("bn.running_var"):
        return 0.25, 0.75, False
    if name.endswith(("bn.bias", "bn.running_mean")):
        return 0.1, 0.0, False
    if "layer_scale" in name:
        return 0.05, 0.1, False
    if name.endswith(("norm.weight", "layernorm.weight")):
        return 0.1, 1.0, False
    if name.endswith("norm.bias"):
        return 0.05, 0.0, False
    if name.endswith(".bias"):
        return 0.02, 0.0, False
    # Re-parameterised depthwise mixers of a trained model carry the identity: keep them near it.
    if name.endswith("token_mixer.reparam_conv.weight") or (
        name.startswith("network.") and name.count(".") == 3 and name.endswith("reparam_conv.weight")
    ):
        return 0.05, 0.0, True
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
    gain = 3.0 if name.endswith(("qkv.weight", "proj.weight")) else 6.0
    return math.sqrt(gain / fan_in), 0.0, False


def tensor(seed: int, name: str, shape) -> np.ndarray:
    n = int(np.prod(shape))
    scale, offset, centre = rule(name, shape)
    v = uniform(f"{seed}:{name}", n) * np.float32(scale) + np.float32(offset)
    if centre:
        k = shape[-1] * shape[-2]
        v = v + (np.arange(n) % k == k // 2).astype(np.float32)
    return v.reshape(shape)


def image(seed: int, name: str, shape) -> np.ndarray:
    """Pixels in [0, 1)."""
    n = int(np.prod(shape))
    return (uniform(f"{seed}:{name}", n) * np.float32(0.5) + np.float32(0.5)).reshape(shape)
