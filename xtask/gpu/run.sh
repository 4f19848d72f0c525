#!/usr/bin/env bash
# The GPU machine's check, from the bundle `cargo xtask device-check` writes (binaries, Python
# references, the tokenizer files, the CPU f32 outputs made on the development machine).
#
#   bash run.sh [OUT]          OUT defaults to $OUT, else ./out
#   COMBOS="cuda:f32 cuda:bf16 cuda:f16 wgpu:f32 wgpu:f16"   what to check (default: CUDA's
#                              three, plus wgpu on NVIDIA's Vulkan ICD when the machine has it)
#   SKIP_BENCH=1               only the correctness table
#
# It generates the FastVLM-0.5B-shaped checkpoint from the seeded formula (the same bytes as on
# the development machine), runs `encode` and `predict` per backend and precision (each twice:
# a fresh process pays kernel compilation and autotuning; the second finds burn's caches on
# disk), compares with the CPU f32 outputs, then runs the benchmarks beside PyTorch.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-${OUT:-$HERE/out}}
mkdir -p "$OUT" "$HERE/bin"
PY=${PYTHON:-python3}
log() { echo "== $*" | tee -a "$OUT/run.log"; }

for b in vlm-cli fastvlm-bench; do
  if [ ! -x "$HERE/bin/$b" ]; then
    "$PY" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
      "$HERE/$b.xz" "$HERE/bin/$b" && chmod +x "$HERE/bin/$b"
  fi
done
CLI="$HERE/bin/vlm-cli"

if [ -z "${COMBOS:-}" ]; then
  COMBOS="cuda:f32 cuda:bf16 cuda:f16"
  ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  if [ -f "$ICD" ]; then
    if ! ldconfig -p | grep -q libvulkan.so.1 && ls "$HERE"/libvulkan1_*.deb >/dev/null 2>&1; then
      dpkg -x "$HERE"/libvulkan1_*.deb / && ldconfig
    fi
    export VK_DRIVER_FILES=$ICD
    COMBOS="$COMBOS wgpu:f32 wgpu:f16"
  fi
fi
log "combos: $COMBOS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$OUT/run.log" 2>&1

CKPT=${CKPT:-/tmp/fastvlm-0.5b-check}
if [ ! -f "$CKPT/model.safetensors" ]; then
  log "making the 0.5B-shaped checkpoint"
  start=$(date +%s)
  FASTVLM_VOCAB_DIR="$HERE/vocab" "$PY" "$HERE/python/fastvlm_reference.py" make-checkpoint \
    --variant 0.5b --out "$CKPT" >> "$OUT/run.log" 2>&1 || { log "checkpoint failed"; exit 1; }
  log "checkpoint in $(( $(date +%s) - start )) s"
fi
IMG="$HERE/image.png"

for combo in $COMBOS; do
  b=${combo%%:*}; d=${combo##*:}
  for run in 1 2; do
    log "$b $d run $run: encode"
    t0=$(date +%s%N)
    "$CLI" encode --model-path "$CKPT" --image-file "$IMG" --backend "$b" --dtype "$d" \
      --output "$OUT/features-$b-$d.safetensors" >> "$OUT/run.log" 2>&1 || log "encode $b $d failed"
    t1=$(date +%s%N)
    log "$b $d run $run: predict"
    "$CLI" predict --model-path "$CKPT" --image-file "$IMG" --backend "$b" --dtype "$d" \
      --temperature 0 --max-new-tokens 32 --json > "$OUT/predict-$b-$d-$run.json" 2>> "$OUT/run.log" \
      || log "predict $b $d failed"
    t2=$(date +%s%N)
    echo "{\"combo\": \"$combo\", \"run\": $run, \"encode_process_ms\": $(( (t1 - t0) / 1000000 )), \"predict_process_ms\": $(( (t2 - t1) / 1000000 ))}" >> "$OUT/process-times.jsonl"
  done
done

"$PY" "$HERE/python/device_report.py" --cpu "$HERE/cpu" --out "$OUT" --combos "$COMBOS" | tee "$OUT/device-check.md"

if [ -z "${SKIP_BENCH:-}" ]; then
  log "benchmarks"
  "$PY" "$HERE/python/bench_report.py" --ours "$HERE/bin/fastvlm-bench" --device cuda --dtypes f32,bf16 \
    --compile --iters ${ITERS:-10} --label gpu --out "$OUT/BENCHMARKS.md" --raw "$OUT/bench.jsonl" \
    --command "bash run.sh (cargo xtask device-check bundle)" >> "$OUT/run.log" 2>&1 || log "benchmarks failed"
fi
log "done"
