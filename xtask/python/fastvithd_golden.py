"""FastViTHD golden fixtures: seeded weights in Apple's layout and timm's outputs.

Writes into OUT (default fixtures/fastvithd):
  tiny_apple.safetensors   shrunk tower, Apple names + prefix, bf16 (as released), plus the
                           int64 num_batches_tracked and head.proj the loader must skip
  tiny_timm.safetensors    the same weights under timm fastvit_mci3 names, f16
  tiny_io.safetensors      timm forward_features outputs for two formula images (192x192 batch 2, 160x224)
  released_256.safetensors full released tower (formula weights, not stored) at 256x256
"""
import argparse
import os
import re
import sys

os.environ["TIMM_FUSED_ATTN"] = "0"  # the exact softmax path

import numpy as np
import timm
import torch
from safetensors.torch import save_file

import formula

APPLE_PREFIX = "model.vision_tower.vision_tower.model."
TINY = dict(layers=(2, 2, 3, 2, 2), embed_dims=(8, 16, 32, 64, 128))
RELEASED = dict(layers=(2, 12, 24, 4, 2), embed_dims=(96, 192, 384, 768, 1536))
SEED = 2024

# Apple -> timm (reference: shared test-assets.md); the Rust loader has its own table.
STAGE = {0: "stages.0.blocks.", 1: "stages.1.downsample.", 2: "stages.1.blocks.", 3: "stages.2.downsample.",
         4: "stages.2.blocks.", 5: "stages.3.downsample.", 6: "stages.3.pos_emb.", 7: "stages.3.blocks.",
         8: "stages.4.downsample.", 9: "stages.4.pos_emb.", 10: "stages.4.blocks."}


def apple_to_timm(name: str) -> str:
    name = re.sub(r"^patch_embed\.", "stem.", name)
    m = re.match(r"^network\.(\d+)\.", name)
    if m:
        name = STAGE[int(m.group(1))] + name[m.end():]
    name = re.sub(r"^conv_exp\.", "final_conv.", name)
    name = name.replace(".lkb_reparam.", ".reparam_conv.").replace(".convffn.", ".mlp.")
    name = name.replace(".se.reduce.", ".se.fc1.").replace(".se.expand.", ".se.fc2.")
    name = re.sub(r"\.(layer_scale(_1|_2)?)$", r".\1.gamma", name)
    return name


def build(cfg):
    return timm.create_model("fastvit_mci3", pretrained=False, inference_mode=True, num_classes=0, **cfg).eval()


def apple_names(model):
    """Apple names of every float tensor of the timm model (bijective through apple_to_timm)."""
    timm_names = [n for n in model.state_dict() if not n.endswith("num_batches_tracked")]
    # Enumerate Apple candidates from timm names by reversing the rename rules.
    rev = {}
    for t in timm_names:
        a = t
        a = re.sub(r"^stem\.", "patch_embed.", a)
        for idx, prefix in STAGE.items():
            if a.startswith(prefix):
                a = f"network.{idx}." + a[len(prefix):]
                break
        a = re.sub(r"^final_conv\.", "conv_exp.", a)
        a = a.replace(".mlp.", ".convffn.").replace(".se.fc1.", ".se.reduce.").replace(".se.fc2.", ".se.expand.")
        a = re.sub(r"\.(layer_scale(_1|_2)?)\.gamma$", r".\1", a)
        a = re.sub(r"^(network\.(1|3|5|8)\.proj\.0)\.reparam_conv\.", r"\1.lkb_reparam.", a)
        assert apple_to_timm(a) == t, (t, a, apple_to_timm(a))
        rev[a] = t
    return rev


def seeded_state(model, seed, round_bf16):
    """Apple-named weights from the formula, loaded into the timm model strictly."""
    names = apple_names(model)
    sd = model.state_dict()
    apple = {}
    for a, t in names.items():
        v = torch.from_numpy(formula.tensor(seed, a, list(sd[t].shape)).copy())
        if round_bf16:
            v = v.to(torch.bfloat16)
        apple[a] = v
    load = {names[a]: v.float() for a, v in apple.items()}
    for t in sd:
        if t.endswith("num_batches_tracked"):
            load[t] = sd[t]
    model.load_state_dict(load, strict=True)
    return apple


def features(model, x):
    with torch.no_grad():
        return model.forward_features(x).contiguous()


def rel_l2(a, b):
    return float((a - b).norm() / b.norm())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fixtures/fastvithd")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)

    tiny = build(TINY)
    apple = seeded_state(tiny, SEED, round_bf16=True)
    stored = {APPLE_PREFIX + k: v.contiguous() for k, v in apple.items()}
    for k in list(apple):
        if k.endswith("bn.weight"):
            stored[APPLE_PREFIX + k.replace("bn.weight", "bn.num_batches_tracked")] = torch.tensor(1000, dtype=torch.int64)
    stored[APPLE_PREFIX + "head.proj"] = torch.from_numpy(formula.tensor(SEED, "head.proj", [256, 64])).to(torch.bfloat16)
    save_file(stored, os.path.join(args.out, "tiny_apple.safetensors"), metadata={"format": "pt"})
    # timm's own state dict, in f16: exercises the timm names and the f16 path (bf16 values whose
    # magnitude f16 cannot hold flush to zero; their effect is far below the tolerance).
    timm_sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tiny.state_dict().items()}
    save_file(timm_sd, os.path.join(args.out, "tiny_timm.safetensors"))

    io = {}
    for tag, shape in (("square", [2, 3, 192, 192]), ("wide", [1, 3, 160, 224])):
        x = torch.from_numpy(formula.image(SEED, f"image_{tag}", shape))
        y = features(tiny, x)
        io[f"features_{tag}"] = y  # the image is formula.image(SEED, f"image_{tag}"), not stored
        print(f"tiny {tag}: {list(x.shape)} -> {list(y.shape)}, |y| mean {y.abs().mean():.4f}", file=sys.stderr)
    sq = io["features_square"]
    assert rel_l2(sq[0], sq[1]) > 0.05, "tiny tower output does not depend on its input"
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(args.out, "tiny_io.safetensors"))

    full = build(RELEASED)
    seeded_state(full, SEED, round_bf16=False)
    x = torch.from_numpy(formula.image(SEED, "image_released", [1, 3, 256, 256]))
    y = features(full, x)
    x2 = torch.from_numpy(formula.image(SEED, "image_released_other", [1, 3, 256, 256]))
    d = rel_l2(features(full, x2), y)
    print(f"released 256: {list(y.shape)}, |y| mean {y.abs().mean():.4f}, rel change for another image {d:.3f}", file=sys.stderr)
    assert d > 0.05, "released tower output does not depend on its input"
    assert torch.isfinite(y).all()
    save_file({"features": y}, os.path.join(args.out, "released_256.safetensors"))


if __name__ == "__main__":
    main()
