"""How far the PyTorch reference itself moves when FastViTHD and the projector run in bf16 or
f16 instead of f32: the yardstick for a GPU backend's rel-L2 at those precisions.

  python precision_spread.py --model DIR --image PNG [--dtypes bf16,f16] [--size N]

Loads the vision tower (timm `fastvit_mci3` layout, inference form) and the mlp2x_gelu projector
from a release-layout checkpoint, runs the image at f32 and at each reduced precision (weights
and activations cast, as `.to(dtype)` runs a model), and prints one JSON line per precision:
rel-L2 of the image features and of the projected tokens against f32.
"""
import argparse
import json
import os

import numpy as np
import torch

import fastvlm_reference as fr


def tower_and_projector(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    tensors = fr.load_tensors(model_dir)
    size = int(cfg["mm_vision_tower"].rsplit("_", 1)[1])
    tower = fr.load_tower(tensors)
    proj = torch.nn.Sequential(torch.nn.Linear(*tensors["model.mm_projector.0.weight"].shape[::-1]), torch.nn.GELU(),
                               torch.nn.Linear(*tensors["model.mm_projector.2.weight"].shape[::-1]))
    proj.load_state_dict({"0.weight": tensors["model.mm_projector.0.weight"].float(),
                          "0.bias": tensors["model.mm_projector.0.bias"].float(),
                          "2.weight": tensors["model.mm_projector.2.weight"].float(),
                          "2.bias": tensors["model.mm_projector.2.bias"].float()})
    return tower.eval(), proj.eval(), size


def rel_l2(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--dtypes", default="bf16,f16")
    p.add_argument("--size", type=int, help="input side instead of the checkpoint's (PyTorch's CPU bf16 "
                   "convolutions are slow: 1024² did not finish in 25 min on 2 cores)")
    a = p.parse_args()
    tower, proj, size = tower_and_projector(a.model)
    size = a.size or size
    u8 = fr.reference_pixels(a.image, size)
    pixels = torch.from_numpy((u8.astype(np.float64) / 255).astype(np.float32)).permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        feats = tower.forward_features(pixels).flatten(2).transpose(1, 2)
        projected = proj(feats)
        for name in a.dtypes.split(","):
            dt = {"bf16": torch.bfloat16, "f16": torch.float16}[name]
            f = tower.to(dt).forward_features(pixels.to(dt)).flatten(2).transpose(1, 2)
            pr = proj.to(dt)(f)
            tower.float(), proj.float()
            print(json.dumps({"dtype": name, "features_rel_l2": rel_l2(f, feats),
                              "projected_rel_l2": rel_l2(pr, projected), "size": size}), flush=True)


if __name__ == "__main__":
    main()
