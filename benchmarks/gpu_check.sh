#!/usr/bin/env bash
# The paper-config benchmark on one GPU in under 5 minutes (issue 6; docs/performance.md).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (OUT_DIR defaults to $OUT, else bench_results/)
#
# Runs `python -m gcad_jax.bench` at 256² for p = 33 and p = 17, bfloat16 and float32: training at batch
# 16 (the paper's) and 64, inference at batch 16 and 64, latency at batch 1, and an interleaved A/B of the
# model's layer forms. The training rows include augmentation, as configs/loco.py trains. Every run appends
# to OUT_DIR/gpu_check.json and its table to OUT_DIR/gpu_check.log. Needs jax (with CUDA), flax, optax,
# orbax and ml_collections (a pure-Python wheel to carry: docs/performance.md); gcad_jax.bench imports no
# clu, TFDS or TensorFlow. Every run is cut at a 285 s budget (GPU_CHECK_BUDGET_S) and later ones skipped,
# so the script stays under 5 minutes; the most important come first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-bench_results}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python}
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && PY=.venv/bin/python
JSON=$OUT_DIR/gpu_check.json
LOG=$OUT_DIR/gpu_check.log
BUDGET_S=${GPU_CHECK_BUDGET_S:-285}
"$PY" -c 'import jax; print(jax.__version__, jax.devices())' 2>&1 | tee -a "$LOG"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>/dev/null | tee -a "$LOG"

bench() {  # bench LABEL ARGS...: skipped when under 40 s of the budget are left, else cut at the budget
  local label=$1 left=$(( BUDGET_S - SECONDS )); shift
  if (( left < 40 )); then
    echo "skipped $label: ${SECONDS}s used of ${BUDGET_S}s" | tee -a "$LOG"
    return
  fi
  echo "== $label (t=${SECONDS}s)" | tee -a "$LOG"
  timeout $(( left < 150 ? left : 150 )) "$PY" -m gcad_jax.bench --label="$label" --out="$JSON" --keep_xla_flags \
    "$@" 2>&1 | grep -v '^repetition' | tail -n 14 | tee -a "$LOG"
}

# Most important first: the issue's targets are at p = 33 in bfloat16 (latency at 1, inference at 64,
# training), then whether the CPU-motivated forms (sub-pixel up-convolutions, space-to-depth E_glo) cost
# anything on the GPU, then the matching p = 17 training figure, then float32.
bench p33_bfloat16_b16 --preset=paper_p33 --dtype=bfloat16 --batch=16 --modes=latency,infer,train --reps=5 --iters=5
bench p33_bfloat16_b64 --preset=paper_p33 --dtype=bfloat16 --batch=64 --modes=infer,train --reps=3 --iters=3
bench p33_bfloat16_b16_forms --preset=paper_p33 --dtype=bfloat16 --batch=16 --modes=train --reps=3 --iters=3 \
  --ab=up_form=conv_transpose --ab=stride_form=conv --ab=dense_form=space_to_batch
bench p17_bfloat16_b16 --preset=paper_p17 --dtype=bfloat16 --batch=16 --modes=latency,infer,train --reps=5 --iters=5
bench p33_float32_b16 --preset=paper_p33 --dtype=float32 --batch=16 --modes=latency,infer,train --reps=5 --iters=5
bench p17_bfloat16_b64 --preset=paper_p17 --dtype=bfloat16 --batch=64 --modes=infer,train --reps=3 --iters=3
bench p17_float32_b16 --preset=paper_p17 --dtype=float32 --batch=16 --modes=latency,infer,train --reps=5 --iters=5
bench p33_float32_b64 --preset=paper_p33 --dtype=float32 --batch=64 --modes=infer,train --reps=3 --iters=3
echo "done in ${SECONDS}s; results in $JSON" | tee -a "$LOG"
