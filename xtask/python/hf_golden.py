"""A release directory in Hugging Face's `fast_vlm` layout, written by transformers itself, and
transformers' outputs for it.

From the tiny Apple-layout checkpoint: its tensors renamed to `FastVlmForConditionalGeneration`'s
module names, loaded strictly (so every name is one transformers' model has), then written with
`save_pretrained` (config.json with `text_config`/`vision_config`, safetensors in transformers'
own names), with the tokenizer files and a CLIPImageProcessor `preprocessor_config.json`. The
reference: the projected image tokens of a formula image (`get_image_features`) and the logits
of a fixed id sequence, from the model transformers loads back from that directory.
"""
import json
import os
import shutil

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import formula
from fastvithd_golden import APPLE_PREFIX, apple_to_timm

PIXEL_SEED = 77
IDS = list(range(5, 25)) + [321, 322]


def hugging_face_name(apple: str) -> str | None:
    """Apple's tensor name → transformers' `fast_vlm` name; None for what it drops."""
    if apple.startswith(APPLE_PREFIX):
        inner = apple[len(APPLE_PREFIX):]
        if inner.startswith("head.") or inner.endswith("num_batches_tracked"):
            return None
        return "model.vision_tower.timm_model." + apple_to_timm(inner)
    if apple.startswith("model.mm_projector."):
        index, rest = apple[len("model.mm_projector."):].split(".", 1)
        return f"model.multi_modal_projector.linear_{int(index) // 2 + 1}.{rest}"
    if apple.startswith("model."):
        return "model.language_model." + apple[len("model."):]
    return apple


def convert(apple_dir: str, out: str, reference: str):
    from transformers import CLIPImageProcessor, FastVlmConfig, FastVlmForConditionalGeneration

    with open(os.path.join(apple_dir, "config.json")) as f:
        cfg = json.load(f)
    tensors = load_file(os.path.join(apple_dir, "model.safetensors"))
    d0 = tensors[APPLE_PREFIX + "patch_embed.0.reparam_conv.weight"].shape[0]
    layers = []
    for stage, probe in ((0, "token_mixer.reparam_conv"), (2, "token_mixer.reparam_conv"),
                         (4, "token_mixer.reparam_conv"), (7, "token_mixer.qkv"), (10, "token_mixer.qkv")):
        n = 0
        while f"{APPLE_PREFIX}network.{stage}.{n}.{probe}.weight" in tensors:
            n += 1
        layers.append(n)
    size = int(cfg["mm_vision_tower"].rsplit("_", 1)[1])
    text = {k: cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                 "num_key_value_heads", "vocab_size", "rope_theta", "rms_norm_eps",
                                 "max_position_embeddings", "tie_word_embeddings", "eos_token_id", "bos_token_id")}
    config = FastVlmConfig(
        vision_config={
            "model_type": "timm_wrapper", "architecture": "fastvit_mci3", "hidden_size": cfg["mm_hidden_size"],
            "model_args": {"inference_mode": True, "layers": layers, "embed_dims": [d0 * 2 ** i for i in range(5)]},
        },
        text_config={"model_type": "qwen2", **text},
        image_token_index=cfg["vocab_size"] - 1,
        tie_word_embeddings=cfg["tie_word_embeddings"],
    )
    model = FastVlmForConditionalGeneration(config).eval()
    renamed = {}
    for name, value in tensors.items():
        target = hugging_face_name(name)
        if target is not None:
            renamed[target] = value.float()
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    # Only the tied head (filled from the embedding) and timm's BatchNorm counters may be absent.
    missing = [m for m in missing if m != "lm_head.weight" and not m.endswith("num_batches_tracked")]
    assert not missing and not unexpected, (missing, unexpected)
    model.tie_weights()

    os.makedirs(out, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    for name in ("vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(apple_dir, name), os.path.join(out, name))
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0]).save_pretrained(out)

    # The reference, from what transformers reads back.
    model = FastVlmForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    pixels = torch.from_numpy(formula.image(PIXEL_SEED, "hf", 3 * size * size).reshape(1, 3, size, size))
    ids = torch.tensor([IDS])
    with torch.no_grad():
        projected = model.model.get_image_features(pixel_values=pixels).pooler_output
        logits = model(input_ids=ids).logits
    save_file({"projected": projected.contiguous(), "ids": ids, "logits": logits.contiguous()}, reference,
              metadata={"pixel_seed": str(PIXEL_SEED), "pixel_name": "hf"})
    print(f"wrote {out} and {reference}: projected {tuple(projected.shape)}, logits {tuple(logits.shape)}")
