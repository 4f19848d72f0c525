"""BENCHMARKS.md's GPU section from one device run: `bench.jsonl` (ours and PyTorch, from
xtask/gpu/run.sh) and `run.log` (the card).

  python gpu_report.py --run DIR [--commit abc1234] [--out BENCHMARKS.md]

Prints Markdown (and, with --out, replaces the text between the `bench-report:gpu` markers):
the performance issue's targets beside ours and PyTorch's figures, then where ours spends
its time (the `profile` lines).
"""
import argparse
import json
import os
import re


def load(run):
    lines = []
    with open(os.path.join(run, "bench.jsonl")) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                lines.append(json.loads(line))
    card = "?"
    log = os.path.join(run, "run.log")
    if os.path.exists(log):
        for line in open(log):
            if "NVIDIA" in line or "H100" in line or "H200" in line:
                card = line.strip()
                break
    return lines, card


def find(lines, bench, impl, dtype, kernels="cubecl"):
    """The line of `bench`; for ours, the run whose kernels tag is `kernels`: "cubecl" (all of
    our CubeCL kernels), "burn" (FASTVLM_CUBECL_KERNELS=off) or "cubecl:<names>" (only those)."""
    for l in lines:
        if l["bench"] == bench and l["impl"] == impl and l["dtype"] == dtype:
            if impl == "ours" and l.get("kernels", "cubecl") != kernels:
                continue
            return l
    return None


def ms(v):
    if v is None:
        return "–"
    return f"{v / 1e3:.2f} s" if v >= 1000 else f"{v:.2f} ms" if v >= 1 else f"{v * 1e3:.0f} µs"


def field(l, key):
    return None if l is None else l.get(key)


def render(lines, card, commit):
    out = [f"Made at commit `{commit}` on {card}, one run of `bash gpu-check/run.sh` "
           "(`cargo xtask device-check` bundle): ours through burn 0.21 `cuda` (fusion and autotune "
           "on), PyTorch eager on the same card in the same run. Medians after a first call that is "
           "reported apart (kernel compilation and autotuning); synthetic weights.", ""]
    rows = [("FastViTHD 1024², bf16", "encoder/1024", "ms_median", "≤ 3 ms", "bf16"),
            ("TTFT, FastVLM-0.5B, 1024² image, 280 positions, bf16", "pipeline/ttft_1024", "ms_median",
             "≤ 10 ms", "bf16"),
            ("decode 0.5B, tok/s (64 after 280), bf16", "pipeline/decode", "tok_per_s_median", "≥ 600", "bf16"),
            ("decode 7B-shaped, tok/s (64 after 280), bf16", "decode/7b/rate", "tok_per_s_median", "≥ 150",
             "bf16"),
            ("7B-shaped step (one token, 280 cached), bf16", "decode/7b/step", "ms_median", "", "bf16"),
            ("7B-shaped prefill of 280, bf16", "decode/7b/prefill/280", "ms_median", "", "bf16"),
            ("FastViTHD 1024², f32", "encoder/1024", "ms_median", "", "f32")]
    out += ["| measurement | target | ours | ours, first call | ours, burn's ops | PyTorch eager | PyTorch compiled | ours / PyTorch eager |",
            "|---|---|---|---|---|---|---|---|"]
    for label, bench, key, target, dt in rows:
        o = find(lines, bench, "ours", dt)
        b = find(lines, bench, "ours", dt, kernels="burn")
        p = find(lines, bench, "pytorch", dt)
        c = find(lines, bench, "pytorch-compile", dt)
        rate = key.startswith("tok")
        fmt = (lambda v: "–" if v is None else f"{v:.1f}") if rate else ms
        first_key = "tok_per_s_first" if rate else "ms_first"
        ov, pv = field(o, key), field(p, key)
        ratio = "–"
        if ov and pv:
            ratio = f"{(pv / ov if rate else ov / pv):.2f}" + (" (PyTorch's rate ÷ ours)" if rate else "")
        out.append(f"| {label} | {target} | {fmt(ov)} | {fmt(field(o, first_key))} | {fmt(field(b, key))} | {fmt(pv)} | "
                   f"{fmt(field(c, key))} | {ratio} |")
    prof = [l for l in lines if l["bench"].startswith("profile/") and l["impl"] == "ours"]
    if prof:
        out += ["", "Where ours spends it (`fastvlm-bench profile`, bf16; each call ends with a device sync):", "",
                "| part | median | min | first call |", "|---|---|---|---|"]
        for l in prof:
            out.append(f"| `{l['bench'][len('profile/'):]}` | {ms(l['ms_median'])} | {ms(l['ms_min'])} | "
                       f"{ms(l['ms_first'])} |")
    partial = [l for l in lines if l["impl"] == "ours" and l.get("kernels", "").startswith("cubecl:")]
    if partial:
        out += ["", "Our kernels one by one (`FASTVLM_CUBECL_KERNELS=<names>`: only those on, burn's ops "
                "for the rest):", "", "| measurement | kernels on | value | all kernels | burn's ops |",
                "|---|---|---|---|---|"]
        for l in partial:
            key = "tok_per_s_median" if "tok_per_s_median" in l else "ms_median"
            fmt = (lambda v: "–" if v is None else f"{v:.1f} tok/s") if key.startswith("tok") else ms
            a = find(lines, l["bench"], "ours", l["dtype"])
            b = find(lines, l["bench"], "ours", l["dtype"], kernels="burn")
            out.append(f"| `{l['bench']}` {l['dtype']} | {l['kernels'][len('cubecl:'):]} | {fmt(l.get(key))} | "
                       f"{fmt(field(a, key))} | {fmt(field(b, key))} |")
    launches = [l for l in lines if l["bench"].startswith("launches/") and l["impl"] == "ours"]
    if launches:
        out += ["", "Kernel launches per forward (`fastvlm-bench launches`, CubeCL's execution log):", "",
                "| forward | ours | burn's ops | kinds (ours) |", "|---|---|---|---|"]
        for l in launches:
            if l.get("kernels", "cubecl") != "cubecl":
                continue
            b = find(lines, l["bench"], "ours", l["dtype"], kernels="burn")
            kinds = ", ".join(f"{k} {n}" for k, n in l.get("by_kind", {}).items())
            out.append(f"| `{l['bench'][len('launches/'):]}` | {l['launches']} | "
                       f"{field(b, 'launches') or '–'} | {kinds} |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--run", required=True)
    p.add_argument("--commit", default="unknown")
    p.add_argument("--out")
    a = p.parse_args()
    lines, card = load(a.run)
    text = render(lines, card, a.commit)
    print(text)
    if a.out:
        doc = open(a.out).read()
        start, end = "<!-- bench-report:gpu -->", "<!-- /bench-report:gpu -->"
        block = f"{start}\n{text}\n\n{end}"
        if start in doc:
            doc = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
        else:
            doc = doc.rstrip() + "\n\n" + block + "\n"
        with open(a.out, "w") as f:
            f.write(doc)


if __name__ == "__main__":
    main()
