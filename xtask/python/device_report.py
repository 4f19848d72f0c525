"""The device check's table: every backend/precision beside the CPU f32 outputs.

  python device_report.py --cpu DIR --out DIR --combos "cuda:f32 cuda:bf16"

DIR (cpu) holds features.safetensors and predict.json from the development machine; OUT holds
features-B-D.safetensors and predict-B-D-{1,2}.json from run.sh. Prints a Markdown table:
features and projection rel-L2 against CPU f32, how many of the first greedy ids agree, encode
ms at 1024², TTFT, decode tok/s, for a fresh process (1) and a second one (2).
"""
import argparse
import json
import os

from safetensors.numpy import load_file
import numpy as np


def rel_l2(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cpu", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--combos", required=True)
    a = p.parse_args()
    cpu_feats = load_file(os.path.join(a.cpu, "features.safetensors"))
    cpu_ids = json.load(open(os.path.join(a.cpu, "predict.json")))["token_ids"]
    rows = ["| backend | dtype | features rel-L2 | projected rel-L2 | greedy ids agreeing (of "
            f"{len(cpu_ids)}) | encode 1024² (1 / 2) | TTFT (1 / 2) | decode tok/s (1 / 2) |",
            "|---|---|---|---|---|---|---|---|"]
    for combo in a.combos.split():
        b, d = combo.split(":")
        try:
            feats = load_file(os.path.join(a.out, f"features-{b}-{d}.safetensors"))
            fe = f"{rel_l2(feats['image_features'], cpu_feats['image_features']):.2e}"
            pr = f"{rel_l2(feats['projected'], cpu_feats['projected']):.2e}"
        except Exception as e:  # a failed run shows in the table, not as a crash
            fe = pr = f"failed ({type(e).__name__})"
        runs = []
        for r in (1, 2):
            try:
                runs.append(json.load(open(os.path.join(a.out, f"predict-{b}-{d}-{r}.json"))))
            except Exception:
                runs.append(None)
        if runs[0]:
            ids = runs[0]["token_ids"]
            agree = next((i for i, (x, y) in enumerate(zip(ids, cpu_ids)) if x != y), min(len(ids), len(cpu_ids)))
            agree = str(agree)
        else:
            agree = "failed"

        def metric(key, fmt):
            return " / ".join(fmt.format(r["metrics"][key]) if r else "–" for r in runs)

        rows.append(f"| {b} | {d} | {fe} | {pr} | {agree} | {metric('encode_ms', '{:.1f} ms')} | "
                    f"{metric('ttft_ms', '{:.1f} ms')} | {metric('decode_tokens_per_s', '{:.1f}')} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
