"""Ours beside PyTorch in one run, written into BENCHMARKS.md as Markdown tables.

  python bench_report.py --ours target/release/fastvlm-bench [--device cpu|cuda]
                         [--ours-backend cpu|cuda|wgpu] [--dtypes f32,bf16] [--compile] [--res 256,...,1536]
                         [--iters 5] [--label cpu] [--out BENCHMARKS.md] [--raw raw.jsonl]
                         [--quants q8,q4] [--llama-cpp RELEASE_DIR]

`cargo xtask bench-report` builds `fastvlm-bench` and calls this; on the GPU machine (no Rust)
the same command runs with the prebuilt CUDA binary. Each measurement runs in its own process
(ours, then PyTorch), so peak memory is per pipeline and nothing is shared between them.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_lines(cmd, env=None):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
    lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    for l in lines:
        print(json.dumps(l), file=sys.stderr, flush=True)
    return lines


def machine(device):
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores"
    if device == "cuda":
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                  "--format=csv,noheader"], stdout=subprocess.PIPE, text=True).stdout.strip()
            desc = f"{gpu}; host {desc}"
        except OSError:
            pass
    return desc


def commit():
    if os.environ.get("FASTVLM_COMMIT"):
        return os.environ["FASTVLM_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                              text=True, cwd=HERE).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def fmt_ms(v):
    if v is None:
        return "–"
    return f"{v / 1e3:.2f} s" if v >= 1000 else f"{v:.2f} ms" if v >= 1 else f"{v * 1e3:.0f} µs"


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "–"


def render(results, args):
    torch_version = next((r["torch"] for r in results if "torch" in r), "?")
    out = [f"Made {datetime.date.today()} at commit `{commit()}` on {machine(args.device)}; "
           f"ours on `{args.ours_backend}`, PyTorch {torch_version} on `{args.device}`. Medians of "
           f"{args.iters} timed calls after a first call (kernel compilation/autotuning) reported "
           f"apart; ratios are ours / PyTorch at the same precision. Command: `{args.command}`.", ""]
    for d in args.ours_dtypes:
        if len(args.ours_dtypes) > 1:
            out += [f"**{d}**", ""]
        out += render_dtype(results, args, d)
    if args.quants or args.llama_cpp:
        out += render_quantized(results, args)
    return "\n".join(out) + "\n"


# llama.cpp's type names beside ours: the same bits per weight (group 32 symmetric there, 64
# affine here).
LLAMA_TYPE = {"none": "f32", "bf16": "bf16", "q8": "q8_0", "q4": "q4_0"}


def render_quantized(results, args):
    """The 0.5B language model's weights at f32 and quantized: ours (greedy decode after a
    280-position prompt, TTFT of the 1024² pipeline, peak RSS) beside llama.cpp on the same
    Qwen2 weights at the same bits (llama-bench, depth 280)."""
    def ours(bench, quant):
        for r in results:
            if r.get("bench") == bench and r.get("impl") == "ours" and r.get("quant", "none") == quant \
                    and r.get("dtype", "f32") == "f32":
                return r
        return None

    def llama(kind, test):
        for r in results:
            if r.get("engine") == "llama.cpp" and r["type"] == kind and r["test"] == test:
                return r
        return None

    out = ["**Quantized language model** (FastVLM-0.5B's Qwen2, CPU, f32 arithmetic; "
           "llama.cpp: the same weights converted by its own script, `llama-bench -t 2 -p 280 -n 32 -d 280`)", ""]
    head = ["weights", "ours decode tok/s", "llama.cpp decode tok/s", "ours / llama.cpp",
            "ours decode ÷ ours f32", "ours TTFT 1024²", "ours prefill/280", "llama.cpp prefill 280 tok/s",
            "ours peak RSS"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = ours("pipeline/decode", "none")
    for q in ["none", "bf16"] + [q for q in args.quants if q not in ("none", "bf16")]:
        dec, ttft = ours("pipeline/decode", q), ours("pipeline/ttft_1024", q)
        rss, pre = ours("pipeline/peak_rss", q), ours("decode/0.5b/prefill/280", q)
        # `q4+int8`: the same weights with a decoding step's activations rounded to int8, beside
        # llama.cpp's same type (which rounds its activations so too).
        kind = LLAMA_TYPE.get(q.split("+")[0], q)
        ld, lp = llama(kind, "decode"), llama(kind, "prefill")
        if not (dec or ld):
            continue
        name = {"none": "f32"}.get(q, q) + f" / {kind.upper()}"
        row = [name,
               f"{dec['tok_per_s_median']:.1f}" if dec else "–",
               f"{ld['tokens_per_s']:.1f}" if ld else "–",
               ratio(dec["tok_per_s_median"], ld["tokens_per_s"]) if dec and ld else "–",
               ratio(dec["tok_per_s_median"], base["tok_per_s_median"]) if dec and base else "–",
               fmt_ms(ttft["ms_median"]) if ttft else "–",
               fmt_ms(pre["ms_median"]) if pre else "–",
               f"{lp['tokens_per_s']:.0f}" if lp else "–",
               f"{rss['peak_rss_mib']} MiB" if rss else "–"]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    return out


def render_dtype(results, args, dtype):
    def find(bench, impl, d=dtype):
        for r in results:
            if (r.get("bench") == bench and r.get("impl") == impl and r.get("dtype", "f32") == d
                    and r.get("quant", "none") == "none"):
                return r
        return None

    torch_cols = [("pytorch", dtype)]
    if args.compile:
        torch_cols += [("pytorch-compile", dtype)]
    label = {"pytorch": "PyTorch eager", "pytorch-compile": "torch.compile"}
    out = []

    head = ["resolution", "GFLOP", "ours", "first call"] + [f"{label[i]} {d}" for i, d in torch_cols] + \
           [f"ours / {label[i]} {d}" for i, d in torch_cols] + ["ours TFLOP/s", "ours GB/s (≥)"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in args.res:
        name = f"encoder/{res}"
        ours = find(name, "ours")
        ref = next((r for r in results if r.get("bench") == name and "flops" in r and r.get("dtype") == dtype),
                   next((r for r in results if r.get("bench") == name and "flops" in r), None))
        if not ours:
            continue
        flops = ref["flops"] if ref else None
        moved = ref["bytes"] if ref else None
        # PyTorch's line counts bytes at its own precision; scale to ours.
        size = {"f32": 4, "f16": 2, "bf16": 2}
        if ref and moved:
            moved = moved * size[dtype] // size[ref.get("dtype", "f32")]
        row = [f"{res}²", f"{flops / 1e9:.0f}" if flops else "–", fmt_ms(ours["ms_median"]),
               fmt_ms(ours["ms_first"])]
        refs = [find(name, i, d) for i, d in torch_cols]
        row += [fmt_ms(r["ms_median"]) if r else "–" for r in refs]
        row += [ratio(ours["ms_median"], r["ms_median"] if r else None) for r in refs]
        s = ours["ms_median"] / 1e3
        row += [f"{flops / s / 1e12:.3g}" if flops else "–", f"{moved / s / 1e9:.3g}" if moved else "–"]
        out.append("| " + " | ".join(row) + " |")
    out.append("")

    head = ["measurement", "ours", "first call"] + [f"{label[i]} {d}" for i, d in torch_cols] + \
           [f"ours / {label[i]} {d}" for i, d in torch_cols]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in ["projector", "decoder/prefill/64", "decoder/prefill/280", "decoder/prefill/1024",
                 "decoder/step", "pipeline/ttft_1024"]:
        ours = find(name, "ours")
        if not ours:
            continue
        refs = [find(name, i, d) for i, d in torch_cols]
        row = [name, fmt_ms(ours["ms_median"]), fmt_ms(ours["ms_first"])]
        row += [fmt_ms(r["ms_median"]) if r else "–" for r in refs]
        row += [ratio(ours["ms_median"], r["ms_median"] if r else None) for r in refs]
        out.append("| " + " | ".join(row) + " |")
    ours = find("pipeline/decode", "ours")
    if ours:
        refs = [find("pipeline/decode", i, d) for i, d in torch_cols]
        row = [f"decode tok/s ({ours['tokens']} tokens after 280; ratio: PyTorch's rate ÷ ours)",
               f"{ours['tok_per_s_median']:.2f}",
               f"{ours['tok_per_s_first']:.2f}"]
        row += [f"{r['tok_per_s_median']:.2f}" if r else "–" for r in refs]
        # Higher is better here: the ratio stays "how many times PyTorch's time per token".
        row += [ratio(r["tok_per_s_median"], ours["tok_per_s_median"]) if r else "–" for r in refs]
        out.append("| " + " | ".join(row) + " |")
    ours = find("pipeline/peak_rss", "ours")
    if ours:
        refs = [find("pipeline/peak_rss", i, d) for i, d in torch_cols]

        def mem(r):
            s = f"{r['peak_rss_mib']} MiB"
            if "peak_device_mib" in r:
                s += f" (+{r['peak_device_mib']} MiB device)"
            return s

        row = ["peak RSS, 0.5B pipeline", mem(ours), ""] + [mem(r) if r else "–" for r in refs]
        row += [ratio(ours["peak_rss_mib"], r["peak_rss_mib"] if r else None) for r in refs]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    return out


def write(path, label, table):
    begin, end = f"<!-- bench-report:{label} -->", f"<!-- /bench-report:{label} -->"
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    block = f"{begin}\n{table}{end}"
    if begin in text and end in text:
        a, b = text.index(begin), text.index(end) + len(end)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + f"\n\n## `cargo xtask bench-report` ({label})\n\n{block}\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ours", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--ours-backend", default=None, help="cpu, cuda, wgpu (default: cpu, or cuda with --device cuda)")
    p.add_argument("--dtypes", default="f32", help="precisions, each run by ours and PyTorch")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--res", default="256,512,768,1024,1536")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--label", default=None)
    p.add_argument("--quants", default="",
                   help="also the 0.5B language model quantized (e.g. q8,q4; q4+int8: activations rounded to int8)")
    p.add_argument("--llama-cpp", default=None,
                   help="a release directory: llama.cpp's anchor (llama_cpp_anchor.sh) on its language model")
    p.add_argument("--out", default=os.path.join(HERE, "..", "..", "BENCHMARKS.md"))
    p.add_argument("--raw", default=None)
    p.add_argument("--from-raw", default=None, help="render saved results instead of measuring")
    p.add_argument("--command", default=" ".join(sys.argv))
    args = p.parse_args()
    args.ours_dtypes = args.dtypes.split(",")
    args.ours_backend = args.ours_backend or ("cuda" if args.device == "cuda" else "cpu")
    args.res = [int(r) for r in args.res.split(",")]
    args.label = args.label or args.device
    args.quants = [q for q in args.quants.split(",") if q]

    results = []
    if args.from_raw:
        with open(args.from_raw) as f:
            results = [json.loads(l) for l in f if l.startswith("{")]
        table = render(results, args)
        print(table)
        write(os.path.abspath(args.out), args.label, table)
        return
    common = ["--iters", str(args.iters)]
    py = [sys.executable, os.path.join(HERE, "bench_reference.py")]
    for what, extra in [("encoder", ["--res", ",".join(map(str, args.res))]), ("decoder", []),
                        ("pipeline", ["--tokens", str(args.tokens)])]:
        for d in args.ours_dtypes:
            results += run_lines([args.ours, what] + common + extra + ["--backend", args.ours_backend, "--dtype", d])
        for d in args.ours_dtypes:
            torch_args = common + extra + ["--device", args.device, "--dtype", d]
            results += run_lines(py + [what] + torch_args)
            if args.compile:
                results += run_lines(py + [what] + torch_args + ["--compile"])
    for q in args.quants:
        quant = ["--quant", q, "--backend", args.ours_backend, "--dtype", "f32"]
        results += run_lines([args.ours, "pipeline"] + common + ["--tokens", str(args.tokens)] + quant)
        results += run_lines([args.ours, "decode", "--shape", "0.5b"] + common + ["--tokens", str(args.tokens)] + quant)
    if args.quants:
        results += run_lines([args.ours, "decode", "--shape", "0.5b"] + common + ["--tokens", str(args.tokens),
                             "--backend", args.ours_backend, "--dtype", "f32"])
    if args.llama_cpp:
        anchor = os.path.join(HERE, "..", "..", "..", "shared", "tools", "llama_cpp_anchor.sh")
        env = dict(os.environ, PY=os.environ.get("PY", sys.executable), GEN=str(args.tokens))
        results += run_lines(["bash", os.path.abspath(anchor), args.llama_cpp], env=env)
    if args.raw:
        with open(args.raw, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    table = render(results, args)
    print(table)
    write(os.path.abspath(args.out), args.label, table)


if __name__ == "__main__":
    main()
