#!/usr/bin/env bash
# The GPU machine's check, from the bundle `cargo xtask device-check` writes (binaries, Python
# references, the tokenizer files, the CPU f32 outputs made on the development machine).
#
#   bash run.sh [OUT]      OUT defaults to $OUT, else ./out
#   DEADLINE=600           seconds for the whole script: steps run in priority order, each under
#                          `timeout`, and a step that no longer fits is skipped (said in run.log)
#   COMBOS="cuda:bf16 cuda:f32 wgpu:f32"   the correctness combos (wgpu only where NVIDIA's
#                          Vulkan ICD is there)
#   SKIP_BENCH=1           only the correctness table
#   AUTOTUNE=minimal       CubeCL's autotune level (minimal, balanced, extensive, full)
#
#   kernels.tar.xz         (in the bundle) an earlier run's kernel cache, unpacked first; this
#                          run's own comes back as OUT/kernels.tar.xz where it packs to ≤ 15 MiB
#
# Priority: where the time goes (ours, bf16), the 0.5B pipeline beside PyTorch, correctness of
# CUDA bf16 against the CPU f32 outputs, the 7B-shaped decode beside PyTorch, the quantized
# (q8, q4) decode, the remaining correctness combos, f32 and torch.compile figures. Everything
# lands in six files under OUT (the device tool brings back at most eight): run.log,
# bench.jsonl (one JSON line per figure, ours and PyTorch), device-check.md (the correctness
# table), details.tar.gz (raw outputs), anchor.jsonl (transformers' FastVLM end to end, where
# the bundle has the shared anchor) and kernels.tar.xz (the kernel cache).
set -uo pipefail
START=$(date +%s)
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-${OUT:-$HERE/out}}
WORK=$HERE/work
mkdir -p "$OUT" "$HERE/bin" "$WORK"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-600}
log() { echo "== [$(( $(date +%s) - START )) s] $*" | tee -a "$OUT/run.log"; }
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
# step NAME BUDGET CMD...: runs CMD for at most BUDGET seconds (less if the deadline is nearer).
step() {
  local name=$1 budget=$2; shift 2
  local l; l=$(left)
  if [ "$l" -lt 25 ]; then log "skip $name ($l s left)"; return 1; fi
  [ "$budget" -gt $(( l - 5 )) ] && budget=$(( l - 5 ))
  log "$name (≤ $budget s)"
  local t0; t0=$(date +%s)
  timeout -k 5 "$budget" bash -c '"$@"' _ "$@"
  local rc=$?
  log "$name: rc $rc in $(( $(date +%s) - t0 )) s"
  return $rc
}
finish() {
  ( cd "$WORK" && tar czf "$OUT/details.tar.gz" --exclude='*.safetensors' . ) 2>/dev/null
  # This run's compiled kernels and autotune results, for the next run's bundle
  # (`cargo xtask device-check --kernel-cache kernels.tar.xz`).
  if [ -d "${FASTVLM_KERNEL_CACHE:-}" ]; then
    "$PY" - "$FASTVLM_KERNEL_CACHE" "$OUT/kernels.tar.xz" >> "$OUT/run.log" 2>&1 <<'PY'
import os, sys, tarfile
src, dst = sys.argv[1:]
with tarfile.open(dst, "w:xz", preset=1) as tar:
    tar.add(src, arcname=".")
size = os.path.getsize(dst)
if size > 15 << 20:
    os.remove(dst)
    print(f"kernel cache {size >> 20} MiB packed: over the 16 MiB a file may come back, left out")
else:
    print(f"kernel cache packed: {size / (1 << 20):.1f} MiB in kernels.tar.xz")
PY
  fi
  log "done"
}
trap finish EXIT

for b in vlm-cli fastvlm-bench; do
  if [ ! -x "$HERE/bin/$b" ]; then
    "$PY" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
      "$HERE/$b.xz" "$HERE/bin/$b" && chmod +x "$HERE/bin/$b"
  fi
done
CLI="$HERE/bin/vlm-cli"
BENCH="$HERE/bin/fastvlm-bench"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader >> "$OUT/run.log" 2>&1
"$PY" -c "import torch, transformers, timm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__)" >> "$OUT/run.log" 2>&1

ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${COMBOS:-}" ]; then
  COMBOS="cuda:bf16 cuda:f32"
  if [ -f "$ICD" ]; then COMBOS="$COMBOS wgpu:f32"; fi
fi
if [[ "$COMBOS" == *wgpu* ]] && [ -f "$ICD" ]; then
  if ! ldconfig -p | grep -q libvulkan.so.1 && ls "$HERE"/libvulkan1_*.deb >/dev/null 2>&1; then
    dpkg -x "$HERE"/libvulkan1_*.deb / && ldconfig
  fi
  export VK_DRIVER_FILES=$ICD
fi
log "combos: $COMBOS; deadline $DEADLINE s"

# The 0.5B-shaped checkpoint from the seeded formula (the same bytes as on the development
# machine), made on the CPU while the GPU benchmarks run.
CKPT=${CKPT:-/tmp/fastvlm-0.5b-check}
if [ ! -f "$CKPT/model.safetensors" ]; then
  ( FASTVLM_VOCAB_DIR="$HERE/vocab" "$PY" "$HERE/python/fastvlm_reference.py" make-checkpoint \
      --variant 0.5b --out "$CKPT" > "$WORK/checkpoint.log" 2>&1; echo "rc $?" >> "$WORK/checkpoint.log" ) &
  CKPT_PID=$!
else
  CKPT_PID=
fi
IMG="$HERE/image.png"

# Compiled kernels (PTX) and autotune results go to one cache on disk, so each process after
# the first skips what an earlier one compiled (the binaries do this by default in the models
# cache; here in /tmp). A cold 1024² FastViTHD forward compiled and autotuned for minutes at
# CubeCL's default autotune level on an H200 (2026-11-27: over 150 s in one process and still
# going), so the run uses the minimal level unless AUTOTUNE says otherwise.
export FASTVLM_KERNEL_CACHE=${FASTVLM_KERNEL_CACHE:-/tmp/fastvlm-kernels}
export CUBECL_AUTOTUNE_LEVEL=${AUTOTUNE:-minimal}
log "kernel cache $FASTVLM_KERNEL_CACHE, autotune level $CUBECL_AUTOTUNE_LEVEL"
# An earlier run's cache in the bundle (kernels.tar.xz, same card family) spares this one the
# compilation of every kernel it already holds (PTX keyed by the kernel's own hash: kernels whose
# code changed since are compiled afresh).
if [ -f "$HERE/kernels.tar.xz" ] && [ ! -d "$FASTVLM_KERNEL_CACHE" ]; then
  mkdir -p "$FASTVLM_KERNEL_CACHE"
  "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
    "$HERE/kernels.tar.xz" "$FASTVLM_KERNEL_CACHE" 2>> "$OUT/run.log" \
    && log "kernel cache: $(find "$FASTVLM_KERNEL_CACHE" -type f | wc -l) files from the bundle"
fi
cd "$WORK"

ours() { set -o pipefail; "$BENCH" "$@" 2> >(tee -a "$WORK/ours.err" | grep --line-buffered "first call" >> "$OUT/run.log") | tee -a "$OUT/bench.jsonl"; }
# The same with every op on burn's kernels (FASTVLM_CUBECL_KERNELS=off): lines tagged
# "kernels": "burn", beside the default run's "kernels": "cubecl".
ours_burn() { FASTVLM_CUBECL_KERNELS=off ours "$@"; }
torch_ref() {
  set -o pipefail
  ( cd "$HERE/python" && "$PY" bench_reference.py "$@" --device cuda 2>> "$WORK/torch.err" ) | tee -a "$OUT/bench.jsonl"
}
check() {
  local b=${1%%:*} d=${1##*:}
  [ -n "$CKPT_PID" ] && { wait "$CKPT_PID"; CKPT_PID=; log "checkpoint: $(tail -1 "$WORK/checkpoint.log")"; }
  step "encode $b $d" 150 "$CLI" encode --model-path "$CKPT" --image-file "$IMG" --backend "$b" --dtype "$d" \
    --output "$WORK/features-$b-$d.safetensors" >> "$WORK/cli.log" 2>&1 || return
  step "predict $b $d" 150 "$CLI" predict --model-path "$CKPT" --image-file "$IMG" --backend "$b" --dtype "$d" \
    --temperature 0 --max-new-tokens 32 --json > "$WORK/predict-$b-$d-1.json" 2>> "$WORK/cli.log"
}
export -f ours ours_burn torch_ref
export BENCH WORK OUT HERE PY
first=${COMBOS%% *}
rest=${COMBOS#"$first"}

# The first process pays the cold compilation: give it the most time.
if [ -z "${SKIP_BENCH:-}" ]; then
  step "ours profile bf16" 300 ours profile --backend cuda --dtype bf16 --iters 5
  step "ours pipeline bf16" 120 ours pipeline --backend cuda --dtype bf16 --iters 5 --tokens 64
fi
check "$first"
if [ -z "${SKIP_BENCH:-}" ]; then
  step "torch pipeline bf16" 60 torch_ref pipeline --dtype bf16 --iters 5 --tokens 64
  step "torch encoder bf16" 30 torch_ref encoder --res 1024 --dtype bf16 --iters 20
  # Our CubeCL kernels against burn's ops, and how many kernels each launches per forward.
  step "ours pipeline bf16, burn's ops" 90 ours_burn pipeline --backend cuda --dtype bf16 --iters 5 --tokens 64
  # Each decoder kernel's share: the 0.5B decode with all kernels, without the batch-1 linear
  # layers, without the norm kernel, and with burn's ops only (lines tagged "cubecl:<names>").
  step "ours decode 0.5b bf16, kernels A/B" 120 bash -c '
    ours decode --shape 0.5b --backend cuda --dtype bf16 --iters 3 --tokens 64
    FASTVLM_CUBECL_KERNELS=depthwise,attention,rotary,rms_norm ours decode --shape 0.5b --backend cuda --dtype bf16 --iters 3 --tokens 64
    FASTVLM_CUBECL_KERNELS=depthwise,attention,rotary,rms_norm,gemv ours decode --shape 0.5b --backend cuda --dtype bf16 --iters 3 --tokens 64
    ours_burn decode --shape 0.5b --backend cuda --dtype bf16 --iters 3 --tokens 64'
  step "ours launches bf16" 60 ours launches --backend cuda --dtype bf16 --res 1024
  step "ours launches bf16, burn's ops" 60 ours_burn launches --backend cuda --dtype bf16 --res 1024
  step "ours decode 7b bf16" 120 ours decode --shape 7b --backend cuda --dtype bf16 --iters 3 --tokens 64
  step "torch decode 7b bf16" 60 torch_ref decode --shape 7b --dtype bf16 --iters 3 --tokens 64
  # Quantized weights: the decoding step's row kernels reading packed words (lines tagged
  # "quant": "q8" / "q4"), beside the bf16 lines above.
  step "ours decode quantized bf16" 120 bash -c '
    ours decode --shape 0.5b --backend cuda --dtype bf16 --iters 3 --tokens 64 --quant q8
    ours decode --shape 0.5b --backend cuda --dtype bf16 --iters 3 --tokens 64 --quant q4
    ours decode --shape 7b --backend cuda --dtype bf16 --iters 3 --tokens 64 --quant q4'
fi
for combo in $rest; do check "$combo"; done
"$PY" "$HERE/python/device_report.py" --cpu "$HERE/cpu" --out "$WORK" --combos "$COMBOS" \
  > "$OUT/device-check.md" 2>> "$OUT/run.log"
if [ -z "${SKIP_BENCH:-}" ]; then
  step "ours encoder f32" 60 ours encoder --res 1024 --backend cuda --dtype f32 --iters 10
  step "torch encoder f32" 40 torch_ref encoder --res 1024 --dtype f32 --iters 20
  if [ -f "$HERE/python/anchor_pytorch.py" ]; then
    step "anchor: transformers FastVLM e2e" 90 env OUT="$OUT" "$PY" "$HERE/python/anchor_pytorch.py" e2e
  fi
  step "torch.compile encoder bf16" 120 torch_ref encoder --res 1024 --dtype bf16 --iters 20 --compile
fi
cat "$OUT/device-check.md"
