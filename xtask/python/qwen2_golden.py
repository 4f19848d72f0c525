"""Qwen2 golden fixtures from transformers' Qwen2ForCausalLM (eager attention, float32).

Weights come from formula.py (not stored; the Rust tests compute the same values). For each
shrunk configuration, OUT/<name>.safetensors holds the config (as metadata), prompt ids and
input embeddings, the reference logits for every prompt position from ids and from embeddings,
and the reference's greedy continuation.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

import formula
from fastvlm_reference import qwen2_shapes as names_and_shapes

SEED = 2025
CONFIGS = {
    # GQA ratio 1, head_dim 64, tied head.
    "gqa1_hd64_tied": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, vocab_size=384, tie_word_embeddings=True),
    # GQA ratio 2, head_dim 128, untied head (like 7B).
    "gqa2_hd128_untied": dict(hidden_size=512, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=384, tie_word_embeddings=False),
    # GQA ratio 7, head_dim 64, tied (the 0.5B's 14:2 grouping).
    "gqa7_hd64_tied": dict(hidden_size=448, intermediate_size=640, num_hidden_layers=3, num_attention_heads=7,
                           num_key_value_heads=1, vocab_size=384, tie_word_embeddings=True),
}
PROMPT_LEN = 11
NEW_TOKENS = 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fixtures/qwen2")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, cfg in CONFIGS.items():
        full = dict(cfg, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768,
                    use_sliding_window=False, eos_token_id=None, bos_token_id=None, pad_token_id=None)
        config = Qwen2Config(**full)
        config._attn_implementation = "eager"
        model = Qwen2ForCausalLM(config).eval().float()
        sd = {n: torch.from_numpy(formula.tensor(SEED, n, s).copy()) for n, s in names_and_shapes(cfg)}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        assert not unexpected, unexpected
        assert all(m == "lm_head.weight" for m in missing) and (cfg["tie_word_embeddings"] or not missing), missing
        if cfg["tie_word_embeddings"]:
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

        u = formula.uniform(f"{SEED}:{name}:ids", PROMPT_LEN)
        ids = torch.from_numpy(((u + 1) / 2 * cfg["vocab_size"]).astype("int64")).clamp(0, cfg["vocab_size"] - 1)[None]
        embeds = torch.from_numpy(formula.uniform(f"{SEED}:{name}:embeds", PROMPT_LEN * cfg["hidden_size"]).reshape(1, PROMPT_LEN, -1) * 0.05)
        with torch.no_grad():
            logits_ids = model(input_ids=ids).logits
            logits_embeds = model(inputs_embeds=embeds).logits
            gen = model.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
        greedy = gen[:, PROMPT_LEN:]
        other = torch.roll(ids, 1, dims=1)
        with torch.no_grad():
            d = float((model(input_ids=other).logits[:, -1] - logits_ids[:, -1]).norm() / logits_ids[:, -1].norm())
        assert d > 0.05, f"{name}: logits barely depend on the prompt ({d})"
        print(f"{name}: logits {list(logits_ids.shape)}, greedy {greedy[0].tolist()}", flush=True)
        save_file(
            {"ids": ids.contiguous(), "embeds": embeds.contiguous().float(), "logits_ids": logits_ids.contiguous(),
             "logits_embeds": logits_embeds.contiguous(), "greedy": greedy.contiguous()},
            os.path.join(args.out, f"{name}.safetensors"),
            metadata={"config": json.dumps(full), "seed": str(SEED)},
        )


if __name__ == "__main__":
    main()
