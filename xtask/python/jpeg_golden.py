"""JPEG decoding fixtures: small JPEGs in the variants encoders write, and the pixels Pillow
(libjpeg-turbo: accurate integer IDCT, fancy upsampling) decodes them to, which the reference
reads images with (`Image.open(f).convert("RGB")`).

Writes into OUT (default fixtures/jpeg):
  *.jpg                  baseline 4:2:0 / 4:2:2 / 4:4:4 / 4:1:1, progressive (with successive
                         approximation), grey, restart intervals, optimised Huffman tables,
                         Adobe RGB, odd and tiny sizes
  decoded.safetensors    Pillow's RGB (uint8, HWC) of each, keyed by file name
"""
import argparse
import os

import numpy as np
from PIL import Image

import formula


def scene(h, w):
    """A photo-like test card: smooth colour gradients, hard-edged shapes, fine noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(x / 9.0) * np.cos(y / 13.0)
    g = 40 + 180 * x / max(w - 1, 1)
    b = 200 - 150 * y / max(h - 1, 1)
    rgb = np.stack([r, g, b], -1)
    disc = (x - 0.6 * w) ** 2 + (y - 0.4 * h) ** 2 < (0.22 * min(h, w)) ** 2
    rgb[disc] = [250, 30, 60]
    rgb[(x // 6 + y // 6) % 2 == 0 & (y > 0.7 * h)] *= 0.5
    noise = formula.uniform("jpeg:noise", h * w * 3).reshape(h, w, 3) * 12
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


VARIANTS = [
    ("baseline_420_q90", {}, dict(quality=90, subsampling=2)),
    ("baseline_422_q75", {}, dict(quality=75, subsampling=1)),
    ("baseline_444_q95", {}, dict(quality=95, subsampling=0)),
    ("baseline_411_q85", {}, dict(quality=85, subsampling="4:1:1")),
    ("progressive_420_q80", {}, dict(quality=80, subsampling=2, progressive=True)),
    ("progressive_444_q100", {}, dict(quality=100, subsampling=0, progressive=True)),
    ("grey_q85", {"grey": True}, dict(quality=85)),
    ("grey_progressive_q70", {"grey": True}, dict(quality=70, progressive=True)),
    ("restart_blocks_420", {}, dict(quality=85, subsampling=2, restart_marker_blocks=3)),
    ("restart_rows_progressive", {}, dict(quality=85, progressive=True, restart_marker_rows=1)),
    ("optimised_huffman_q60", {}, dict(quality=60, optimize=True)),
    ("adobe_rgb_q90", {}, dict(quality=90, keep_rgb=True)),
    ("low_quality_q8", {}, dict(quality=8)),
    ("tiny_5x3", {"size": (3, 5)}, dict(quality=80, subsampling=2)),
    ("odd_17x9_progressive", {"size": (9, 17)}, dict(quality=80, progressive=True)),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fixtures/jpeg")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    import torch
    from safetensors.torch import save_file

    base = scene(61, 83)
    decoded = {}
    for name, shape, options in VARIANTS:
        h, w = shape.get("size", base.shape[:2])
        img = Image.fromarray(base[:h, :w])
        if shape.get("grey"):
            img = img.convert("L")
        path = os.path.join(a.out, f"{name}.jpg")
        img.save(path, **options)
        with Image.open(path) as f:
            decoded[f"{name}.jpg"] = torch.from_numpy(np.asarray(f.convert("RGB")).copy())
    save_file(decoded, os.path.join(a.out, "decoded.safetensors"))


if __name__ == "__main__":
    main()
