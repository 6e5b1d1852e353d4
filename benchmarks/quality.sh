#!/usr/bin/env bash
# The quality bar of configs/synthetic.py (issue 4): its full schedule on two synthetic scenes it was developed
# on (synthetic_tray, synthetic_connectors; data seed 0) and one it was not (synthetic_grid), then the image
# AUROC and AUC-sPRO@0.05 of the combined, local-only and global-only maps. Not part of CI: about 25 minutes
# per scene on 2 CPU cores, 22 of them training. Figures and what limits them: docs/quality.md.
#
#   benchmarks/quality.sh [OUT=runs/quality] [SCENES="synthetic_tray synthetic_connectors synthetic_grid"]
#                         [SEEDS="0"] [extra --config.* overrides...]
#
# Data: data/synthetic/<scene> (generated when missing) and data/tfds (built on first use). Each run is
# resumable: rerunning the script continues unfinished runs from their checkpoints and skips finished ones.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/quality}
[[ $# -gt 0 ]] && shift
SCENES=${SCENES:-synthetic_tray synthetic_connectors synthetic_grid}
SEEDS=${SEEDS:-0}
PY=${PY:-.venv/bin/python}
[[ -x $PY ]] || { echo "quality.sh: $PY not found; run ./run.sh test once (it creates .venv) or set PY" >&2; exit 1; }
mkdir -p "$OUT"
workdirs=()
for scene in $SCENES; do
  if [[ ! -d data/synthetic/$scene ]]; then
    "$PY" -m tfds_loco.synthetic --out data/synthetic --seed 0 --category "$scene"
  fi
  for seed in $SEEDS; do
    w=$OUT/${scene}_seed$seed
    workdirs+=("$w")
    if [[ -f $w/metrics.json ]]; then
      echo "[quality] $w: finished, skipped"
      continue
    fi
    echo "[quality] $scene, training seed $seed -> $w ($(date -u +%H:%M:%S))"
    start=$(date +%s)
    "$PY" -m gcad_jax.main --config="configs/synthetic.py:$scene" --workdir="$w" --config.seed="$seed" "$@" \
      > "$w.log" 2>&1 || { echo "[quality] $w failed; see $w.log" >&2; exit 1; }
    echo "[quality] $w: $(( $(date +%s) - start )) s"
  done
done
"$PY" benchmarks/quality_summary.py "${workdirs[@]}" --json "$OUT/quality.json"
