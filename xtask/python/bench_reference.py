"""PyTorch reference timings: the same measurements as `fastvlm-bench`, one JSON line each.

  python bench_reference.py encoder  [--res 256,1024] [--iters 5] [--device cpu|cuda] [--dtype f32|bf16] [--compile]
  python bench_reference.py decoder  [--iters 5] ...      projector, prefill/{64,280,1024}, step
  python bench_reference.py pipeline [--iters 3] [--tokens 32] ...   ttft_1024, decode tok/s, peak memory
  python bench_reference.py decode   [--shape 0.5b|1.5b|7b] [--tokens 32] ...  prefill/280, step, decode tok/s

Encoder: timm `fastvit_mci3` (FastViTHD) in inference form with the Rust benchmarks' weights
(formula seed 7), plus its FLOPs (torch.utils.flop_counter) and the bytes it must at least move
(weights + input + output). Decoder: transformers `Qwen2ForCausalLM` shaped as FastVLM-0.5B's
(random init: timing does not depend on the values). Pipeline: encoder -> mlp2x_gelu projector ->
splice into the text embeddings -> prefill -> first id, as FastVLM runs it.
"""
import argparse
import json
import resource
import statistics
import time

import torch

PREFIX = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198]
SUFFIX = [198, 74785, 279, 2168, 13, 151645, 198, 151644, 77091, 198]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(args, name, fn, **extra):
    t = time.perf_counter()
    fn()
    sync(args.device)
    first = (time.perf_counter() - t) * 1e3
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        fn()
        sync(args.device)
        times.append((time.perf_counter() - t) * 1e3)
    emit(args, name, ms_median=statistics.median(times), ms_min=min(times), ms_first=first,
         iters=args.iters, **extra)


def emit(args, name, **fields):
    line = {"bench": name, "impl": "pytorch-compile" if args.compile else "pytorch",
            "backend": args.device, "dtype": args.dtype, "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    line.update(fields)
    print(json.dumps(line), flush=True)


def dtype(args):
    return {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]


def build_encoder(args):
    from fastvithd_golden import RELEASED, build, seeded_state

    model = build(RELEASED)
    seeded_state(model, 7, round_bf16=False)
    return model.to(args.device, dtype(args)).eval()


def image(args, res):
    import formula

    return torch.from_numpy(formula.image(7, "bench", [1, 3, res, res])).to(args.device, dtype(args))


def encoder(args):
    from torch.utils.flop_counter import FlopCounterMode

    model = build_encoder(args)
    forward = torch.compile(model.forward_features) if args.compile else model.forward_features
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    for res in args.res:
        x = image(args, res)
        with torch.no_grad():
            counter = FlopCounterMode(display=False)
            with counter:
                y = model.forward_features(x)
            moved = weight_bytes + x.numel() * x.element_size() + y.numel() * y.element_size()
            measure(args, f"encoder/{res}", lambda: forward(x), flops=counter.get_total_flops(),
                    bytes=moved)


def build_decoder(args):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**SHAPES["0.5b"], max_position_embeddings=32768, rope_theta=1000000.0,
                         rms_norm_eps=1e-6)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(args.device, dtype(args)).eval()
    return model


def build_projector(args):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(3072, 896), torch.nn.GELU(),
                               torch.nn.Linear(896, 896)).to(args.device, dtype(args)).eval()


def decoder(args):
    model = build_decoder(args)
    projector = build_projector(args)
    run = torch.compile(model) if args.compile else model
    with torch.no_grad():
        features = torch.randn(1, 256, 3072, device=args.device, dtype=dtype(args)) * 0.1
        measure(args, "projector", lambda: projector(features))
        for n in (64, 280, 1024):
            embeds = torch.randn(1, n, 896, device=args.device, dtype=dtype(args)) * 0.05
            measure(args, f"decoder/prefill/{n}",
                    lambda: run(inputs_embeds=embeds, use_cache=True, logits_to_keep=1).logits)
        embeds = torch.randn(1, 280, 896, device=args.device, dtype=dtype(args)) * 0.05
        measure_step(args, "decoder/step", run, embeds)


def measure_step(args, name, run, prompt):
    """One decoding step after `prompt` (embeddings): a token through the cache, its id on the
    host; at least 16 timed steps."""
    out = run(inputs_embeds=prompt, use_cache=True, logits_to_keep=1)
    state = {"cache": out.past_key_values}
    token = torch.tensor([[872]], device=args.device)

    def step():
        o = run(input_ids=token, past_key_values=state["cache"], use_cache=True, logits_to_keep=1)
        state["cache"] = o.past_key_values
        return o.logits.argmax(-1).item()

    iters = args.iters
    args.iters = max(iters, 16)
    measure(args, name, step)
    args.iters = iters


def greedy_rate(args, run, prompt):
    """Tokens per second of greedy decoding after `prompt`, the id on the host each token."""
    out = run(inputs_embeds=prompt, use_cache=True, logits_to_keep=1)
    cache, logits = out.past_key_values, out.logits
    sync(args.device)
    t = time.perf_counter()
    for _ in range(args.tokens):
        ids = logits[:, -1].argmax(-1, keepdim=True)
        ids.item()
        out = run(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache, logits = out.past_key_values, out.logits
    sync(args.device)
    return args.tokens / (time.perf_counter() - t)


def emit_rate(args, name, run, prompt):
    first = greedy_rate(args, run, prompt)
    rates = [greedy_rate(args, run, prompt) for _ in range(args.iters)]
    emit(args, name, tok_per_s_median=statistics.median(rates), tok_per_s_first=first,
         tokens=args.tokens, iters=args.iters)


SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}


def decode(args):
    """`fastvlm-bench decode`'s measurements: weights made on the device at the compute dtype."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**SHAPES[args.shape], max_position_embeddings=32768, rope_theta=1000000.0,
                         rms_norm_eps=1e-6)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype(args))
    with torch.device(args.device):
        model = Qwen2ForCausalLM(config).eval()
    torch.set_default_dtype(default)
    run = torch.compile(model) if args.compile else model
    h = config.hidden_size
    with torch.no_grad():
        prompt = torch.randn(1, 280, h, device=args.device, dtype=dtype(args)) * 0.05
        measure(args, f"decode/{args.shape}/prefill/280",
                lambda: run(inputs_embeds=prompt, use_cache=True, logits_to_keep=1).logits.argmax(-1).item())
        measure_step(args, f"decode/{args.shape}/step", run, prompt)
        emit_rate(args, f"decode/{args.shape}/rate", run, prompt)


def pipeline(args):
    enc = build_encoder(args)
    projector = build_projector(args)
    model = build_decoder(args)
    enc_forward = torch.compile(enc.forward_features) if args.compile else enc.forward_features
    run = torch.compile(model) if args.compile else model
    embed = model.get_input_embeddings()
    pixels = image(args, 1024)
    prefix = torch.tensor([PREFIX], device=args.device)
    suffix = torch.tensor([SUFFIX], device=args.device)

    def first_token():
        feats = enc_forward(pixels)
        tokens = projector(feats.flatten(2).transpose(1, 2))
        embeds = torch.cat([embed(prefix), tokens, embed(suffix)], dim=1)
        out = run(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].argmax(-1).item()

    with torch.no_grad():
        measure(args, "pipeline/ttft_1024", first_token)
        embeds = torch.randn(1, 280, 896, device=args.device, dtype=dtype(args)) * 0.05
        emit_rate(args, "pipeline/decode", run, embeds)
    fields = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    if args.device == "cuda":
        fields["peak_device_mib"] = torch.cuda.max_memory_allocated() // (1 << 20)
    emit(args, "pipeline/peak_rss", **fields)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["encoder", "decoder", "pipeline", "decode"])
    p.add_argument("--shape", default="0.5b", choices=sorted(SHAPES))
    p.add_argument("--res", default="256,512,768,1024,1536")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    p.add_argument("--compile", action="store_true")
    a = p.parse_args()
    a.res = [int(r) for r in a.res.split(",")]
    {"encoder": encoder, "decoder": decoder, "pipeline": pipeline, "decode": decode}[a.what](a)
