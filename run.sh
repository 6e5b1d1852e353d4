#!/usr/bin/env bash
# gcad_jax — one entry point for users and CI.
#
#   ./run.sh demo            set up .venv on first use, then run the main job on the embedded synthetic data
#   ./run.sh test [ARGS]     set up .venv on first use, then run the whole test suite (ARGS go to pytest)
#   ./run.sh loco MANUAL_DIR [WORKDIR] [--seeds 0,1,2]   the paper protocol on the real MVTec LOCO AD data (--help)
#   ./run.sh mvtec_ad MANUAL_DIR [WORKDIR] [--seeds 0,1,2]   the same on MVTec AD: 15 categories, Tables 8 and 9
#   ./run.sh bench [ARGS]    the benchmark (python -m gcad_jax.bench)
#
# Environment: GCAD_VENV overrides the virtual environment's folder (default .venv in the checkout; with
# CI=true, a venv outside the checkout so that CI runs share installed packages). PYTHON picks the
# interpreter that creates it (default python3, which must be 3.10 or newer).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)

if [[ -n "${GCAD_VENV:-}" ]]; then
  VENV=$GCAD_VENV
elif [[ "${CI:-}" == "true" ]]; then
  VENV=${HOME:-/tmp}/.cache/gcad_jax/ci-venv
else
  VENV=$ROOT/.venv
fi
PY=${PYTHON:-python3}

log() { printf '[run.sh] %s\n' "$*" >&2; }

ensure_venv() {
  local extras=$1 stamp
  if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' 2>/dev/null || {
      log "gcad_jax needs Python >= 3.10; '$PY' is $("$PY" --version 2>&1). Set PYTHON=/path/to/python3.11."
      exit 1
    }
    log "creating virtual environment in $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
  fi
  # Reinstall only when pyproject.toml changed since the last install with these extras.
  stamp="$VENV/.gcad_jax-installed-$extras-$(cksum < pyproject.toml | cut -d' ' -f1)-$(printf %s "$ROOT" | cksum | cut -d' ' -f1)"
  if [[ ! -f "$stamp" ]]; then
    log "installing gcad_jax[$extras] and its dependencies (first run: a few minutes)"
    "$VENV/bin/python" -m pip install --quiet -e ".[$extras]"
    rm -f "$VENV"/.gcad_jax-installed-"$extras"-*
    touch "$stamp"
  fi
}

# CI also runs the PyTorch cross-check of tests/test_bench.py (benchmarks/torch_reference.py). torch is pinned
# exactly: that release's CPU wheel; a range would admit newer releases whose default wheels are multi-GB CUDA
# builds. Not a dependency of gcad_jax (nor of its `test` extra).
CI_TORCH=torch==2.13.0

ensure_ci_torch() {
  [[ "${CI:-}" == "true" ]] || return 0
  if ! "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("torch").split("+")[0] != "'"${CI_TORCH#torch==}"'")' 2>/dev/null; then
    log "CI: installing $CI_TORCH for the PyTorch cross-check"
    "$VENV/bin/python" -m pip install --quiet "$CI_TORCH"
  fi
}

require_module() {
  if [[ ! -f "$1" ]]; then
    log "$2 ($1) is not part of this version yet; see CHANGELOG.md. Meanwhile: python -m gcad_jax.main --config=configs/loco.py:CATEGORY ..."
    exit 2
  fi
}

cmd=${1:-help}
[[ $# -gt 0 ]] && shift
case "$cmd" in
  demo)
    ensure_venv test
    exec "$VENV/bin/python" -m gcad_jax.demo "$@"
    ;;
  test)
    ensure_venv test
    ensure_ci_torch
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  loco)
    ensure_venv test
    exec "$VENV/bin/python" -m gcad_jax.loco_protocol "$@"
    ;;
  mvtec_ad)
    ensure_venv test
    exec "$VENV/bin/python" -m gcad_jax.loco_protocol --benchmark mvtec_ad "$@"
    ;;
  bench)
    require_module gcad_jax/bench.py "the benchmark"
    ensure_venv test
    exec "$VENV/bin/python" -m gcad_jax.bench "$@"
    ;;
  help|-h|--help)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    log "unknown command '$cmd'; use one of: demo, test, loco, mvtec_ad, bench"
    exit 2
    ;;
esac
