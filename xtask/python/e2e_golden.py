"""End-to-end fixtures: small test images, a tiny FastVLM checkpoint in Apple's layout, and the
reference's outputs for it (see fastvlm_reference.py).

Writes into OUT (default fixtures/e2e):
  images/*.png|jpg   RGB (non-square), grayscale, RGBA, palette, 16-bit grayscale, JPEG
  pixels.safetensors the reference's preprocessed pixels (uint8, pad + Pillow bicubic) per
                     image at 96 and 40 (up- and downscaling)
  tiny-fastvlm/      the checkpoint (config.json, bf16 model.safetensors, slow-tokenizer files)
  reference.safetensors  greedy generation, top-5 log-probabilities, features for images/wide.png
  tiny-fastvlm-hf/   the same checkpoint in Hugging Face's `fast_vlm` layout, by transformers
  reference_hf.safetensors  transformers' outputs for it (hf_golden.py)
"""
import argparse
import os

import numpy as np
from PIL import Image

import fastvlm_reference as ref
import formula


def images(out):
    os.makedirs(out, exist_ok=True)
    y, x = np.mgrid[0:200, 0:320]
    noise = (formula.uniform("img:noise", 200 * 320 * 3).reshape(200, 320, 3) * 40).astype(np.int32)
    rgb = np.stack([x * 255 // 319, y * 255 // 199, (x + y) % 256], -1).astype(np.int32) + noise
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(os.path.join(out, "wide.png"))
    Image.fromarray(rgb[:90, :70, 1]).save(os.path.join(out, "gray.png"))
    rgba = np.concatenate([rgb[:60, :100], (np.arange(100)[None, :, None].repeat(60, 0) * 2).astype(np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(os.path.join(out, "rgba.png"))
    Image.fromarray(rgb[:48, :64]).convert("P", palette=Image.ADAPTIVE, colors=32).save(os.path.join(out, "palette.png"))
    g16 = (rgb[:40, -50:, 0].astype(np.uint16) * 3)  # values up to 765: Pillow clips them to 255
    Image.fromarray(g16).save(os.path.join(out, "gray16.png"))
    Image.fromarray(rgb[:120, :160]).save(os.path.join(out, "photo.jpg"), quality=90)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fixtures/e2e")
    a = ap.parse_args()
    img_dir = os.path.join(a.out, "images")
    images(img_dir)
    import torch
    from safetensors.torch import save_file

    pixels = {}
    for name in sorted(os.listdir(img_dir)):
        for size in (96, 40):
            pixels[f"{name}@{size}"] = torch.from_numpy(ref.reference_pixels(os.path.join(img_dir, name), size).copy())
    save_file(pixels, os.path.join(a.out, "pixels.safetensors"))
    model = os.path.join(a.out, "tiny-fastvlm")
    ref.make_checkpoint("tiny", None, model)
    ref.reference(model, os.path.join(img_dir, "wide.png"), "Describe the image.", 24, 5,
                  os.path.join(a.out, "reference.safetensors"))
    import hf_golden

    hf_golden.convert(model, os.path.join(a.out, "tiny-fastvlm-hf"), os.path.join(a.out, "reference_hf.safetensors"))


if __name__ == "__main__":
    main()
