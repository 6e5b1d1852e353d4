"""Wall time of gcad_jax.evaluate against MVTec's official script on one real-size synthetic category.

  python benchmarks/evaluator_speed.py [--work_dir /tmp/gcad_eval_bench] [--num_images 300] [--keep]

Writes a synthetic category in LOCO layout (docs/data_format.md §2) at the size of pushpins (1700x1000, §3):
constant RGB PNGs, ground truth of simple shapes (logical: large rectangles with relative 1.0 / 0.5 and
absolute saturation; structural: small ellipses; some channels overlap), and random-smooth float32 TIFF
maps (§8). Then times `python -m gcad_jax.evaluate` (exact mode) and, when GCAD_OFFICIAL_EVAL_DIR points at
a copy of the official scripts, `evaluate_experiment.py --num_parallel_workers N` on the same input (its
interpreter: GCAD_OFFICIAL_EVAL_PYTHON, NumPy 1.x), and compares the results. The folder is deleted at
the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
CATEGORY = 'pushpins'  # the official script accepts only the five real names
DEFECTS = [
    {'defect_name': 'missing_thing', 'pixel_value': 255, 'saturation_threshold': 1.0, 'relative_saturation': True},
    {'defect_name': 'two_extra', 'pixel_value': 254, 'saturation_threshold': 0.5, 'relative_saturation': True},
    {'defect_name': 'one_extra', 'pixel_value': 253, 'saturation_threshold': 6300, 'relative_saturation': False},
    {'defect_name': 'big_extra', 'pixel_value': 252, 'saturation_threshold': 12600, 'relative_saturation': False},
    {'defect_name': 'broken', 'pixel_value': 250, 'saturation_threshold': 1.0, 'relative_saturation': True},
    {'defect_name': 'color', 'pixel_value': 249, 'saturation_threshold': 1.0, 'relative_saturation': True},
    {'defect_name': 'contamination', 'pixel_value': 248, 'saturation_threshold': 1.0, 'relative_saturation': True},
]


def _channels(rng, kind, width, height):
  """[(pixel value, bool mask)] for one anomalous image: rectangles (logical) or ellipses (structural)."""
  yy, xx = np.ogrid[:height, :width]
  out = []
  for _ in range(int(rng.integers(1, 3))):
    if kind == 'logical_anomalies':
      w, h = int(rng.integers(width // 17, width // 4)), int(rng.integers(height // 10, height // 3))
      x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
      mask = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
      value = int(rng.choice([255, 254, 253, 252]))
    else:
      rx, ry = (int(rng.integers(5, max(6, min(width, height) // 12))) for _ in range(2))
      cx, cy = int(rng.integers(rx, width - rx)), int(rng.integers(ry, height - ry))
      mask = ((xx - cx) / rx)**2 + ((yy - cy) / ry)**2 <= 1
      value = int(rng.choice([250, 249, 248]))
    out.append((value, mask))
  return out


def _smooth_map(rng, width, height, union):
  coarse = rng.random((height // 40 + 2, width // 40 + 2)).astype(np.float32)
  smooth = np.asarray(Image.fromarray(coarse, mode='F').resize((width, height), Image.BILINEAR))
  a = 0.6 * smooth + 0.05 * rng.random((height, width), dtype=np.float32)
  if union is not None:
    a[union] += np.float32(rng.uniform(0.1, 0.6))
  return a.astype(np.float32)


def make_category(work: pathlib.Path, num_images: int, width: int, height: int, seed: int = 0) -> None:
  """work/dataset/pushpins and work/maps/pushpins; about 45 % good, 30 % logical, 25 % structural."""
  import tifffile  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  cat = work / 'dataset' / CATEGORY
  maps = work / 'maps' / CATEGORY / 'test'
  cat.mkdir(parents=True, exist_ok=True)
  (cat / 'defects_config.json').write_text(json.dumps(DEFECTS, indent=2))
  counts = {'good': round(0.45 * num_images), 'logical_anomalies': round(0.30 * num_images)}
  counts['structural_anomalies'] = num_images - sum(counts.values())
  rgb = Image.fromarray(np.full((height, width, 3), 90, np.uint8))
  for kind, n in counts.items():
    (cat / 'test' / kind).mkdir(parents=True, exist_ok=True)
    (maps / kind).mkdir(parents=True, exist_ok=True)
    for i in range(n):
      stem = f'{i:03d}'
      rgb.save(cat / 'test' / kind / f'{stem}.png', compress_level=1)
      union = None
      if kind != 'good':
        gt_dir = cat / 'ground_truth' / kind / stem
        gt_dir.mkdir(parents=True, exist_ok=True)
        union = np.zeros((height, width), bool)
        for c, (value, mask) in enumerate(_channels(rng, kind, width, height)):
          Image.fromarray(mask.astype(np.uint8) * value, mode='L').save(gt_dir / f'{c:03d}.png')
          union |= mask
      tifffile.imwrite(maps / kind / f'{stem}.tiff', _smooth_map(rng, width, height, union))


def _timed(cmd, **kwargs):
  before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  start = time.perf_counter()
  done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
  seconds = time.perf_counter() - start
  if done.returncode:
    raise SystemExit(f'{cmd[:3]} failed ({done.returncode}):\n{done.stderr[-3000:]}')
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  return seconds, (peak if peak > before else None)


def _max_diff(a, b):
  return max(abs(a['localization']['auc_spro'][k][l] - v)
             for k, per in b['localization']['auc_spro'].items() for l, v in per.items())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--work_dir', default='/tmp/gcad_eval_bench')
  parser.add_argument('--num_images', type=int, default=300)
  parser.add_argument('--width', type=int, default=1700)
  parser.add_argument('--height', type=int, default=1000)
  parser.add_argument('--num_workers', type=int, default=2, help='threads of ours; processes of the official')
  parser.add_argument('--keep', action='store_true', help='keep the generated files')
  args = parser.parse_args()
  work = pathlib.Path(args.work_dir)
  try:
    start = time.perf_counter()
    if not (work / 'maps' / CATEGORY).is_dir():
      make_category(work, args.num_images, args.width, args.height)
    print(f'data: {args.num_images} test images of {args.width}x{args.height} in {work} '
          f'({time.perf_counter() - start:.1f} s to make or find); {os.cpu_count()} CPUs')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    common = ['--dataset_base_dir', str(work / 'dataset'), '--object_name', CATEGORY]
    ours_cmd = [sys.executable, '-m', 'gcad_jax.evaluate', *common, '--anomaly_maps_dir', str(work / 'maps'),
                '--num_workers', str(args.num_workers)]
    seconds, peak = _timed([*ours_cmd, '--output_dir', str(work / 'ours')], env=env)
    ours = json.loads((work / 'ours' / 'metrics.json').read_text())
    mem = f', peak RSS {peak / 2**20:.1f} GiB' if peak else ''
    print(f'gcad_jax.evaluate (exact, {args.num_workers} threads): {seconds:.1f} s{mem} '
          f'(read {ours["gcad_jax"]["seconds"]["read"]:.1f} s)')
    official_dir = os.environ.get('GCAD_OFFICIAL_EVAL_DIR')
    if not official_dir:
      print('official script: skipped (set GCAD_OFFICIAL_EVAL_DIR and GCAD_OFFICIAL_EVAL_PYTHON)')
      return
    python = os.environ.get('GCAD_OFFICIAL_EVAL_PYTHON', sys.executable)
    seconds, peak = _timed([python, 'evaluate_experiment.py', *common, '--anomaly_maps_dir', str(work / 'maps'),
                            '--output_dir', str(work / 'official'), '--num_parallel_workers',
                            str(args.num_workers)], cwd=official_dir)
    official = json.loads((work / 'official' / 'metrics.json').read_text())
    mem = f', peak RSS {peak / 2**20:.1f} GiB' if peak else ''
    print(f'official evaluate_experiment.py ({args.num_workers} processes): {seconds:.1f} s{mem}, '
          f'{len(official["localization"]["per_threshold"]["thresholds"])} thresholds')
    seconds, _ = _timed([*ours_cmd, '--output_dir', str(work / 'ours_thresholds'), '--thresholds_from',
                         str(work / 'official' / 'metrics.json')], env=env)
    at_thresholds = json.loads((work / 'ours_thresholds' / 'metrics.json').read_text())
    print(f'gcad_jax.evaluate at the official thresholds: {seconds:.1f} s; max |AUC-sPRO diff| vs official: '
          f'{_max_diff(at_thresholds, official):.2e} (thresholds), {_max_diff(ours, official):.2e} (exact); '
          f'AUROC identical: {ours["classification"] == official["classification"]}')
  finally:
    if not args.keep:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  main()
