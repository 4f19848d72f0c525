"""PyTorch reference timings on this machine's CPU (what ours is compared with, same run).

  python bench_reference.py encoder 256,1024   -> one JSON line per resolution: median ms of
                                                  timm fastvit_mci3 forward_features, f32
"""
import json
import os
import statistics
import sys
import time

import torch


def encoder(resolutions, iters):
    import timm

    from fastvithd_golden import RELEASED, build, seeded_state

    # The weights the Rust benchmarks use (formula seed 7): realistic magnitudes, no denormals,
    # and the same arithmetic on both sides.
    model = build(RELEASED)
    seeded_state(model, 7, round_bf16=False)
    for res in resolutions:
        import formula

        x = torch.from_numpy(formula.image(7, "bench", [1, 3, res, res]))
        with torch.no_grad():
            model.forward_features(x)  # warm-up
            times = []
            for _ in range(iters):
                t = time.perf_counter()
                model.forward_features(x)
                times.append((time.perf_counter() - t) * 1e3)
        print(json.dumps({"bench": f"encoder/{res}", "impl": "pytorch", "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "ms_median": statistics.median(times), "ms_min": min(times),
                          "iters": iters}), flush=True)


if __name__ == "__main__":
    what, res = sys.argv[1], [int(r) for r in sys.argv[2].split(",")]
    iters = int(os.environ.get("ITERS", "5"))
    {"encoder": encoder}[what](res, iters)
