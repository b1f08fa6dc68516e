#!/usr/bin/env bash
# GPU proof (issue 25): step time, throughput and allocator-peak footprint of every strategy against full
# fine-tuning, fp32 / bf16 / fp16 autocast (adapters stay float32), eager and torch.compile, on ViT-B/16 (224 px,
# batch 64), ResNet-50 (224 px, batch 64) and YOLO11s (yaml, 640 px, batch 16); random init (cost does not depend
# on the weights); then the CUDA-only tests. Every stage has its own time limit so the whole script stays inside
# one device call; a failed stage does not stop the next.
#
#   bash benchmarks/gpu_wheels.sh                          # here, once: wheels the GPU image lacks -> .whl/
#   OUT=$OUT bash benchmarks/gpu.sh                        # there (carry .whl): every stage, JSON + logs in $OUT
#   OUT=$OUT bash benchmarks/gpu.sh yolo tests             # chosen stages: vit_base resnet50 yolo compile tests
#   bash benchmarks/gpu.sh --smoke                         # CPU, tiny sizes: checks that everything starts
#
# Environment: OUT (default benchmarks/results/gpu), ROUNDS (10 round-robin steps per row), PYTHON.
# Memory: each row's footprint is its own (profiling.measure_step_memory subtracts what other resident models
# hold), so ratios compare with a run that has the GPU to itself.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 YOLO_OFFLINE=1
export YOLO_CONFIG_DIR=${YOLO_CONFIG_DIR:-$(mktemp -d)}

if [ "${1:-}" = "--smoke" ]; then
  $PY benchmarks/strategies.py --quick --device cpu --vit vit_small_patch16_224 --cnn none --yolo yolo11n.yaml \
      --amp bf16 --only "lora r8+head,bitfit+head" --skip-peft --out "$OUT/smoke.json"
  exit $?
fi

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (benchmarks/gpu_wheels.sh)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu.sh: installing the carried wheels failed" >&2; exit 2; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || { echo "gpu.sh: no CUDA device visible to torch; use --smoke on a CPU machine" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.csv" 2>/dev/null || true
grep -o -w 'avx512_bf16\|amx_bf16' /proc/cpuinfo | sort -u > "$OUT/cpu_bf16_flags.txt" || true
R=${ROUNDS:-10}
BENCH=(benchmarks/strategies.py --device cuda --size 224 --rounds "$R" --latency-reps 10)
status=0
stage() {  # name, seconds, then the command
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)" >&2
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || { echo "gpu.sh: stage $name failed or timed out" >&2; status=1; }
  tail -n 40 "$OUT/$name.log"
}
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(vit_base resnet50 yolo compile tests)
for s in "${STAGES[@]}"; do
  case $s in
    vit_base) stage vit_base 170 $PY "${BENCH[@]}" --vit vit_base_patch16_224 --batch 64 --cnn none --yolo none \
                --amp bf16,fp16 --out "$OUT/vit_base.json" ;;
    resnet50) stage resnet50 100 $PY "${BENCH[@]}" --vit none --cnn resnet50 --batch 64 --yolo none \
                --amp bf16,fp16 --skip-peft --out "$OUT/resnet50.json" ;;
    yolo) stage yolo 120 $PY "${BENCH[@]}" --vit none --cnn none --yolo yolo11s.yaml --yolo-size 640 --batch 16 \
                --amp bf16,fp16 --out "$OUT/yolo11s.json" ;;
    compile) stage compile 150 $PY "${BENCH[@]}" --vit vit_base_patch16_224 --batch 64 --cnn none --yolo none \
                --amp bf16 --compile --only "lora r8+head,bitfit+head" --skip-peft --out "$OUT/vit_base_compile.json" ;;
    tests) stage tests 120 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py ;;
    *) echo "gpu.sh: unknown stage '$s' (vit_base resnet50 yolo compile tests)" >&2; exit 2 ;;
  esac
done
exit $status
