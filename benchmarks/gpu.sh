#!/usr/bin/env bash
# GPU strategy-cost table (issue 13): step time and allocator-peak memory ratios per strategy, LoRA vs full
# fine-tuning, fp32 and AMP (bf16, fp16; adapters stay float32), on ViT-S/16 and ViT-B/16 sized models
# (random init: cost does not depend on the weights) at batch sizes that fill a large GPU, plus ResNet-50.
#
#   OUT=/some/dir bash benchmarks/gpu.sh            # on a CUDA machine; JSON + markdown land in $OUT
#   bash benchmarks/gpu.sh --smoke                  # CPU, tiny sizes: checks that everything starts (no GPU)
#
# Environment: OUT (default benchmarks/results/gpu), BATCH_SMALL (256), BATCH_BASE (128), ROUNDS (20),
# COMPILE=1 adds torch.compile twin rows (minutes of compilation per model). Needs timm, peft and visionpeft
# importable (run from the repository root). Each model is one process; a failure of one still runs the next.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
EXTRA=()
[ "${COMPILE:-0}" = 1 ] && EXTRA+=(--compile)

if [ "${1:-}" = "--smoke" ]; then
  $PY benchmarks/strategies.py --quick --device cpu --vit vit_small_patch16_224 --cnn none --amp bf16 \
      --only "lora r8+head,bitfit+head" --skip-peft --out "$OUT/smoke.json" "${EXTRA[@]}"
  exit $?
fi

$PY - <<'PY' || { echo "gpu.sh: no CUDA device visible to torch; use --smoke on a CPU machine" >&2; exit 2; }
import torch, sys
sys.exit(0 if torch.cuda.is_available() else 1)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.csv" 2>/dev/null || true
status=0
run() {  # name, then strategies.py arguments
  local name=$1; shift
  echo "== $name" >&2
  $PY benchmarks/strategies.py --device cuda --size 224 --rounds "${ROUNDS:-20}" --latency-reps 20 --amp bf16,fp16 \
      --out "$OUT/$name.json" "${EXTRA[@]}" "$@" 2>&1 | tee "$OUT/$name.log" || status=1
}
run vit_small --vit vit_small_patch16_224 --batch "${BATCH_SMALL:-256}" --cnn resnet50
run vit_base --vit vit_base_patch16_224 --batch "${BATCH_BASE:-128}" --cnn none
exit $status
