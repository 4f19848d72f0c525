"""Seeded FastVLM checkpoints in Apple's release layout, and the reference's outputs for them.

  make-checkpoint --variant tiny|0.5b|1.5b|7b [--layers N] --out DIR
      config.json as released, bf16 safetensors with Apple's names (incl. `lm_head.weight`,
      `head.proj`, `num_batches_tracked`; 7b sharded with an index), slow-tokenizer files
      (the real Qwen2 vocabulary for 0.5b/1.5b/7b, a small byte-level BPE for tiny).
  reference --model DIR --image IMG [--prompt P] [--max-new-tokens N] [--logprobs K] --out FILE
      what Apple's predict.py computes, greedily, in float32: pixels, image features, projected
      tokens, prompt ids, generated ids and top-K log-probabilities per step.
  pixels --image IMG --size S --out FILE
      the reference's preprocessed pixels (pad to square, Pillow bicubic) as uint8.

The weights come from formula.py; the network code is the reference's own (timm fastvit_mci3,
transformers Qwen2ForCausalLM); only the LLaVA glue (prompt, splice, greedy loop) is written
here, following llava/mm_utils.py and llava_arch.py.
"""
import argparse
import json
import os
import re
import sys
import tarfile
import tempfile

os.environ["TIMM_FUSED_ATTN"] = "0"

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import formula
from fastvithd_golden import APPLE_PREFIX, apple_names, apple_to_timm, build

SEED = 1234
IMAGE_TOKEN_INDEX = -200
TOWER_RELEASED = dict(layers=(2, 12, 24, 4, 2), embed_dims=(96, 192, 384, 768, 1536))
TOWER_TINY = dict(layers=(2, 2, 3, 2, 2), embed_dims=(8, 16, 32, 64, 128))
LLM = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=None, tie_word_embeddings=True),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


# ---------------------------------------------------------------- tokenizer files

def qwen2_vocab():
    """(tokens, merges) of the real Qwen2 vocabulary, from llama.cpp's test vocabulary; or, with
    FASTVLM_VOCAB_DIR set, from the vocab.json/merges.txt of a checkpoint made before (the GPU
    machine has no network and no gguf reader)."""
    carried = os.environ.get("FASTVLM_VOCAB_DIR")
    if carried:
        with open(os.path.join(carried, "vocab.json"), encoding="utf-8") as f:
            vocab = json.load(f)
        with open(os.path.join(carried, "merges.txt"), encoding="utf-8") as f:
            merges = [l.rstrip("\n") for l in f if l.strip() and not l.startswith("#version")]
        return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])], merges
    cache = os.path.join(os.path.expanduser("~"), ".cache", "fastvlm-rs", "ggml-vocab-qwen2.gguf")
    if not os.path.exists(cache):
        # The sdist is fetched as a file (pip would try to build it): PyPI's JSON API names it.
        import urllib.request

        os.makedirs(os.path.dirname(cache), exist_ok=True)
        import urllib.parse

        api = "https://pypi.org/pypi/llama-cpp-python/json"
        with urllib.request.urlopen(api) as r:
            urls = json.load(r)["urls"]
        sdist = urllib.parse.urljoin(api, next(u["url"] for u in urls if u["packagetype"] == "sdist"))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "sdist.tar.gz")
            urllib.request.urlretrieve(sdist, path)
            with tarfile.open(path) as tar:
                member = next(m for m in tar.getmembers() if m.name.endswith("models/ggml-vocab-qwen2.gguf"))
                with tar.extractfile(member) as src, open(cache + ".part", "wb") as dst:
                    dst.write(src.read())
            os.replace(cache + ".part", cache)
    from gguf import GGUFReader

    reader = GGUFReader(cache)

    def strings(key):
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    tokens = strings("tokenizer.ggml.tokens")
    merges = strings("tokenizer.ggml.merges")
    # Regular tokens end where the control tokens start (151643); the rest is padding.
    end = tokens.index(SPECIALS[0])
    assert tokens[end:end + 3] == SPECIALS, tokens[end:end + 3]
    return tokens[:end], merges


def tiny_vocab():
    """A small byte-level BPE trained with Qwen2's pre-tokenizer on a fixed text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    text = ("You are a helpful assistant. Describe the image. What is in this picture? "
            "The image shows a cat sitting on a red sofa next to a window, with trees outside. ") * 20
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator([text], trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return [t for t, _ in vocab], merges


def write_tokenizer(out, tokens, merges):
    n = len(tokens)
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    added = {s: n + i for i, s in enumerate(SPECIALS)}
    with open(os.path.join(out, "added_tokens.json"), "w") as f:
        json.dump(added, f, indent=2)
    decoder = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True} for s, i in added.items()}
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"add_prefix_space": False, "added_tokens_decoder": decoder, "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
                   "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
                   "errors": "replace", "model_max_length": 8192, "pad_token": "<|endoftext|>", "padding_side": "right",
                   "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}, f, indent=2)
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "eos_token": "<|im_end|>",
                   "pad_token": "<|endoftext|>"}, f, indent=2)
    return n + len(SPECIALS)


# ---------------------------------------------------------------- checkpoint

def with_outliers(name, values, count):
    """`values` with `count` input channels (columns) of a language-model projection scaled by 20,
    as trained LLMs have a few channels far larger than the rest (uniform random weights flatter
    4-bit quantization: every group's range is the same)."""
    if not count or not name.endswith("_proj.weight") or ".layers." not in name:
        return values
    rng = np.random.default_rng(int(formula.fnv1a64(name)))
    columns = rng.choice(values.shape[1], size=count, replace=False)
    values = values.copy()
    values[:, columns] *= np.float32(20.0)
    return values


def make_checkpoint(variant, layers, out, outliers=0):
    os.makedirs(out, exist_ok=True)
    tokens, merges = tiny_vocab() if variant == "tiny" else qwen2_vocab()
    tok_len = write_tokenizer(out, tokens, merges)
    llm = dict(LLM[variant])
    if layers:
        llm["num_hidden_layers"] = layers
    if llm["vocab_size"] is None:
        llm["vocab_size"] = tok_len + 5  # padded rows past len(tokenizer), as released
    tower = TOWER_TINY if variant == "tiny" else TOWER_RELEASED
    resolution = 256 if variant == "tiny" else 1024
    eos, bos = tok_len - 1, tok_len - 3
    config = {
        "_name_or_path": f"llava-fastvithd_{variant}_stage3", "architectures": ["LlavaQwen2ForCausalLM"],
        "attention_dropout": 0.0, "bos_token_id": bos, "eos_token_id": eos, "freeze_mm_mlp_adapter": False,
        "hidden_act": "silu", "image_aspect_ratio": "pad", "image_grid_pinpoints": None, "initializer_range": 0.02,
        "max_position_embeddings": 32768, "max_window_layers": llm["num_hidden_layers"],
        "mm_hidden_size": 2 * tower["embed_dims"][4], "mm_patch_merge_type": "flat", "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu", "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
        "mm_vision_tower": f"mobileclip_l_{resolution}", "model_type": "llava_qwen2", "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": 32768, "tokenizer_model_max_length": 8192,
        "tokenizer_padding_side": "right", "torch_dtype": "bfloat16", "transformers_version": "4.39.3",
        "tune_mm_mlp_adapter": False, "unfreeze_mm_vision_tower": True, "use_cache": True, "use_mm_proj": True,
        "use_sliding_window": False, **llm,
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)

    # Each tensor is made when its file is written (a 28-layer 7B is 30 GB in f32: never all
    # at once).
    makers = {}
    timm_tower = build(tower)
    sd = timm_tower.state_dict()
    for a, t in apple_names(timm_tower).items():
        makers[APPLE_PREFIX + a] = (lambda a=a, shape=list(sd[t].shape): formula.tensor(SEED, a, shape))
        if a.endswith("bn.weight"):
            makers[APPLE_PREFIX + a.replace("bn.weight", "bn.num_batches_tracked")] = (
                lambda: np.array(1000, dtype=np.int64))
    c = 2 * tower["embed_dims"][4]
    makers[APPLE_PREFIX + "head.proj"] = (
        lambda: formula.tensor(SEED, "head.proj", [c, 768 if variant != "tiny" else 64]))
    h = llm["hidden_size"]
    for i, (din, dout) in enumerate([(c, h), (h, h)]):
        for kind, shape in (("weight", [dout, din]), ("bias", [dout])):
            name = f"model.mm_projector.{2 * i}.{kind}"
            makers[name] = (lambda name=name, shape=shape: formula.tensor(SEED, name, shape))
    for name, shape in qwen2_shapes(llm):
        makers[name] = (lambda name=name, shape=shape: with_outliers(name, formula.tensor(SEED, name, shape), outliers))
    if llm["tie_word_embeddings"]:
        makers["lm_head.weight"] = makers["model.embed_tokens.weight"]  # released tied files store it too

    def bf16(v):
        t = torch.from_numpy(np.ascontiguousarray(v))
        return t.to(torch.bfloat16) if v.dtype == np.float32 else t

    names = sorted(makers)
    if variant == "7b":
        total = sum(int(np.prod(s)) * 2 for _, s in qwen2_shapes(llm))
        count = max(4, -(-total // (2 << 30)))  # shards of about 2 GB
        shards = [names[i::count] for i in range(count)]
        weight_map = {}
        total = 0
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            part = {n: bf16(makers[n]()).contiguous() for n in shard}
            total += sum(t.numel() * t.element_size() for t in part.values())
            save_file(part, os.path.join(out, file), metadata={"format": "pt"})
            del part
            weight_map.update({n: file for n in shard})
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    else:
        save_file({n: bf16(makers[n]()).contiguous() for n in names}, os.path.join(out, "model.safetensors"),
                  metadata={"format": "pt"})
    torch_tensors = makers
    print(f"wrote {out}: {variant}, {len(torch_tensors)} tensors, tokenizer {tok_len}", file=sys.stderr)


def qwen2_shapes(llm):
    h, i, v = llm["hidden_size"], llm["intermediate_size"], llm["vocab_size"]
    kv = llm["num_key_value_heads"] * (h // llm["num_attention_heads"])
    out = [("model.embed_tokens.weight", [v, h])]
    for l in range(llm["num_hidden_layers"]):
        p = f"model.layers.{l}"
        out += [(f"{p}.input_layernorm.weight", [h]), (f"{p}.self_attn.q_proj.weight", [h, h]),
                (f"{p}.self_attn.q_proj.bias", [h]), (f"{p}.self_attn.k_proj.weight", [kv, h]),
                (f"{p}.self_attn.k_proj.bias", [kv]), (f"{p}.self_attn.v_proj.weight", [kv, h]),
                (f"{p}.self_attn.v_proj.bias", [kv]), (f"{p}.self_attn.o_proj.weight", [h, h]),
                (f"{p}.post_attention_layernorm.weight", [h]), (f"{p}.mlp.gate_proj.weight", [i, h]),
                (f"{p}.mlp.up_proj.weight", [i, h]), (f"{p}.mlp.down_proj.weight", [h, i])]
    out.append(("model.norm.weight", [h]))
    if not llm["tie_word_embeddings"]:
        out.append(("lm_head.weight", [v, h]))
    return out


# ---------------------------------------------------------------- reference

def load_tensors(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    out = {}
    for file in files:
        with safe_open(os.path.join(model_dir, file), "pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out


def reference_pixels(path, size):
    """llava/mm_utils.py process_images with image_aspect_ratio 'pad' and Pillow bicubic."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w != h:
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), (0, 0, 0))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)  # H, W, 3


def load_tower(tensors):
    """The vision tower of a release checkpoint's tensors as timm `fastvit_mci3` (inference form),
    its depth and widths read off the tensor names, in f32."""
    d0 = tensors[APPLE_PREFIX + "patch_embed.0.reparam_conv.weight"].shape[0]
    counts = []
    for s, idx in enumerate([0, 2, 4, 7, 10]):
        probe = "token_mixer.reparam_conv.weight" if s < 3 else "token_mixer.qkv.weight"
        n = 0
        while f"{APPLE_PREFIX}network.{idx}.{n}.{probe}" in tensors:
            n += 1
        counts.append(n)
    tower = build(dict(layers=tuple(counts), embed_dims=tuple(d0 * 2 ** i for i in range(5))))
    load = {t: tensors[APPLE_PREFIX + a].float() for a, t in apple_names(tower).items()}
    load.update({k: v for k, v in tower.state_dict().items() if k.endswith("num_batches_tracked")})
    tower.load_state_dict(load, strict=True)
    return tower


def reference(model_dir, image, prompt, max_new_tokens, top_n, out):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    tensors = load_tensors(model_dir)
    size = int(cfg["mm_vision_tower"].rsplit("_", 1)[1])

    tower = load_tower(tensors)

    w0, b0 = tensors["model.mm_projector.0.weight"].float(), tensors["model.mm_projector.0.bias"].float()
    w2, b2 = tensors["model.mm_projector.2.weight"].float(), tensors["model.mm_projector.2.bias"].float()

    qcfg = Qwen2Config(**{k: cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "num_key_value_heads", "vocab_size",
                                              "rope_theta", "rms_norm_eps", "tie_word_embeddings",
                                              "max_position_embeddings")}, use_sliding_window=False)
    qcfg._attn_implementation = "eager"
    llm = Qwen2ForCausalLM(qcfg).eval().float()
    llm_sd = {k: v.float() for k, v in tensors.items() if k.startswith("model.layers.") or k in
              ("model.embed_tokens.weight", "model.norm.weight") or (k == "lm_head.weight" and not cfg["tie_word_embeddings"])}
    missing, unexpected = llm.load_state_dict(llm_sd, strict=False)
    assert not unexpected and all(m == "lm_head.weight" for m in missing), (missing, unexpected)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    llm.resize_token_embeddings(len(tokenizer))  # llava/model/builder.py

    pixels_u8 = reference_pixels(image, size)
    pixels = torch.from_numpy((pixels_u8.astype(np.float64) * (1 / 255)).astype(np.float32)).permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        fmap = tower.forward_features(pixels)
        features = fmap.flatten(2).transpose(1, 2)
        projected = torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(features, w0, b0)), w2, b2)

    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
            f"{prompt}<|im_end|>\n<|im_start|>assistant\n")
    chunks = [tokenizer(c, add_special_tokens=False).input_ids for c in text.split("<image>")]
    ids = chunks[0] + [IMAGE_TOKEN_INDEX] + chunks[1]
    embed = llm.get_input_embeddings()
    pos = ids.index(IMAGE_TOKEN_INDEX)
    with torch.no_grad():
        embeds = torch.cat([embed(torch.tensor([ids[:pos]])), projected, embed(torch.tensor([ids[pos + 1:]]))], dim=1)
        stops = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
        out_ids, top_ids, top_lp, chosen_lp = [], [], [], []
        past = None
        step_in = dict(inputs_embeds=embeds)
        for _ in range(max_new_tokens):
            res = llm(**step_in, past_key_values=past, use_cache=True)
            past = res.past_key_values
            logits = res.logits[0, -1].float()
            lp = torch.log_softmax(logits.double(), dim=-1)
            nxt = int(torch.argmax(logits))
            if nxt in stops:
                break
            vals, idx = torch.topk(lp, top_n)
            out_ids.append(nxt)
            top_ids.append(idx)
            top_lp.append(vals.float())
            chosen_lp.append(float(lp[nxt]))
            step_in = dict(input_ids=torch.tensor([[nxt]]))
    result = {
        "image_features": features[0].contiguous(), "projected": projected[0].contiguous(),
        "prompt_ids": torch.tensor(ids, dtype=torch.int64), "generated_ids": torch.tensor(out_ids, dtype=torch.int64),
        "top_ids": torch.stack(top_ids) if top_ids else torch.zeros(0, top_n, dtype=torch.int64),
        "top_logprobs": torch.stack(top_lp) if top_lp else torch.zeros(0, top_n),
        "chosen_logprobs": torch.tensor(chosen_lp, dtype=torch.float32),
    }
    save_file({k: v.contiguous() for k, v in result.items()}, out,
              metadata={"text": tokenizer.decode(out_ids, skip_special_tokens=True).strip(), "prompt": prompt})
    print(f"reference: {len(ids)} prompt ids, {projected.shape[1]} image tokens, generated {out_ids}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-checkpoint")
    mk.add_argument("--variant", choices=list(LLM), required=True)
    mk.add_argument("--layers", type=int)
    mk.add_argument("--outliers", type=int, default=0,
                    help="input channels per language-model projection scaled by 20 (heavy tails)")
    mk.add_argument("--out", required=True)
    ref = sub.add_parser("reference")
    ref.add_argument("--model", required=True)
    ref.add_argument("--image", required=True)
    ref.add_argument("--prompt", default="Describe the image.")
    ref.add_argument("--max-new-tokens", type=int, default=24)
    ref.add_argument("--logprobs", type=int, default=5)
    ref.add_argument("--out", required=True)
    px = sub.add_parser("pixels")
    px.add_argument("--image", nargs="+", required=True)
    px.add_argument("--size", type=int, nargs="+", required=True)
    px.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.cmd == "make-checkpoint":
        make_checkpoint(a.variant, a.layers, a.out, a.outliers)
    elif a.cmd == "reference":
        reference(a.model, a.image, a.prompt, a.max_new_tokens, a.logprobs, a.out)
    else:
        out = {}
        for path in a.image:
            for s in a.size:
                out[f"{os.path.basename(path)}@{s}"] = torch.from_numpy(reference_pixels(path, s).copy())
        save_file(out, a.out)


if __name__ == "__main__":
    main()
