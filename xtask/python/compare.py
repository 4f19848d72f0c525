"""Compares `vlm-cli predict --json` and `vlm-cli encode` outputs with the reference's.

  python compare.py REFERENCE.safetensors PREDICT.json FEATURES.safetensors
Prints one JSON line; exits 1 when ids differ, a top-5 logprob differs by more than 1e-3, or a
feature rel-L2 exceeds 1e-4.
"""
import json
import sys

import torch
from safetensors.torch import load_file


def rel_l2(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def main():
    ref = load_file(sys.argv[1])
    pred = json.load(open(sys.argv[2]))
    feats = load_file(sys.argv[3])
    ids_ref = ref["generated_ids"].tolist()
    ids = pred["token_ids"]
    worst = 0.0
    same_top = True
    for s, step in enumerate(pred.get("logprobs") or []):
        if s >= len(ids_ref):
            break
        worst = max(worst, abs(step["logprob"] - float(ref["chosen_logprobs"][s])))
        for k, alt in enumerate(step["top_logprobs"]):
            same_top &= alt["token"] == int(ref["top_ids"][s, k])
            worst = max(worst, abs(alt["logprob"] - float(ref["top_logprobs"][s, k])))
    out = {
        "ids_equal": ids == ids_ref, "n_ids": len(ids), "top_ids_equal": same_top, "max_logprob_diff": worst,
        "features_rel_l2": rel_l2(feats["image_features"], ref["image_features"]),
        "projected_rel_l2": rel_l2(feats["projected"], ref["projected"]),
        "metrics": pred.get("metrics"),
    }
    print(json.dumps(out))
    ok = out["ids_equal"] and same_top and worst <= 1e-3 and out["features_rel_l2"] <= 1e-4 and out["projected_rel_l2"] <= 1e-4
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
