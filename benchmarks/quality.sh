#!/usr/bin/env bash
# The quality bar of configs/synthetic.py (issue 4): its full schedule on two synthetic scenes it was developed
# on (synthetic_tray, synthetic_connectors; data seed 0) and one it was not (synthetic_grid), then the image
# AUROC and AUC-sPRO@0.05 of the combined, local-only and global-only maps. Not part of CI: about 50 minutes
# per scene on 2 CPU cores, about 45 of them training (two scales, an estimate; docs/quality.md). Figures and
# what limits them: docs/quality.md.
#
#   benchmarks/quality.sh [OUT=runs/quality] [SCENES="synthetic_tray synthetic_connectors synthetic_grid"]
#                         [SEEDS="0"] [DATA=data/synthetic] [TFDS=data/tfds] [COUNTS=]
#                         [extra --config.* overrides...]
#
# Data: DATA/<scene> (generated when missing, with the generator's COUNTS if given, e.g.
# COUNTS=good=100,logical=100,structural=100 for a larger test set; images are drawn per index, so the
# default folders' images are the first ones of any larger count) and TFDS (built on first use; give every
# DATA its own TFDS). Each run is resumable: rerunning the script continues unfinished runs from their
# checkpoints and skips finished ones. OUT/quality.json summarises every finished run under OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/quality}
[[ $# -gt 0 ]] && shift
SCENES=${SCENES:-synthetic_tray synthetic_connectors synthetic_grid}
SEEDS=${SEEDS:-0}
DATA=${DATA:-data/synthetic}
TFDS=${TFDS:-data/tfds}
COUNTS=${COUNTS:-}
PY=${PY:-.venv/bin/python}
[[ -x $PY ]] || { echo "quality.sh: $PY not found; run ./run.sh test once (it creates .venv) or set PY" >&2; exit 1; }
mkdir -p "$OUT"
for scene in $SCENES; do
  if [[ ! -d $DATA/$scene ]]; then
    "$PY" -m tfds_loco.synthetic --out "$DATA" --seed 0 --category "$scene" ${COUNTS:+--counts "$COUNTS"}
  elif [[ -n $COUNTS ]]; then  # an existing folder must hold the counts asked for
    "$PY" -c 'import json, sys; have = json.load(open(sys.argv[1]))["counts"]
want = dict((k, int(v)) for k, v in (kv.split("=") for kv in sys.argv[2].split(",")))
bad = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
sys.exit(f"quality.sh: {sys.argv[1]} has other counts (have, asked): {bad}; use another DATA" if bad else 0)' \
      "$DATA/$scene.manifest.json" "$COUNTS"
  fi
  for seed in $SEEDS; do
    w=$OUT/${scene}_seed$seed
    if [[ -f $w/metrics.json ]]; then
      echo "[quality] $w: finished, skipped"
      continue
    fi
    echo "[quality] $scene, training seed $seed -> $w ($(date -u +%H:%M:%S))"
    start=$(date +%s)
    "$PY" -m gcad_jax.main --config="configs/synthetic.py:$scene" --workdir="$w" --config.seed="$seed" \
      --config.dataset.manual_dir="$DATA" --config.dataset.data_dir="$TFDS" "$@" \
      > "$w.log" 2>&1 || { echo "[quality] $w failed; see $w.log" >&2; exit 1; }
    echo "[quality] $w: $(( $(date +%s) - start )) s"
  done
done
# The summary covers every run under OUT, not only this invocation's: several invocations may share one OUT
# (one scene each, to share the cores), and the last one to finish then writes the summary of all of them.
shopt -s nullglob
runs=("$OUT"/*_seed*/)
"$PY" benchmarks/quality_summary.py "${runs[@]%/}" --json "$OUT/quality.json"
