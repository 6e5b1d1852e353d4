"""Checks of a trained workdir that can fail on real faults (used by the end-to-end tests).

Each figure of W/metrics.json is recomputed by the standalone evaluator from the written maps; the maps are
counted against the test images, checked finite and not constant; the per-defect-type tables are checked
against the ground truth; report.md's tables against metrics.json.
"""

import collections
import json
import pathlib

import numpy as np
import tifffile

from gcad_jax import evaluate, map_files, report
from tfds_loco import layout

FOLDERS = {'combined': 'anomaly_maps', 'local': 'anomaly_maps_local', 'global': 'anomaly_maps_global'}


def _types_with_images(cat_dir: pathlib.Path, records) -> dict[str, collections.Counter]:
  """{defect type: Counter(kind)} of the test images with a channel of that type, from the ground truth."""
  defects = layout.read_defects_config(cat_dir / layout.DEFECTS_CONFIG)
  out = collections.defaultdict(collections.Counter)
  for record in records:
    header = layout.read_png_header(record.path)
    names = {c.defect.defect_name for c in layout.read_ground_truth(cat_dir, record, defects,
                                                                     (header.height, header.width))}
    for name in names:
      out[name][record.kind] += 1
  return {d.defect_name: out.get(d.defect_name, collections.Counter()) for d in defects.values()}


def _check_maps(root: pathlib.Path, category: str, records) -> dict[str, np.ndarray]:
  maps = {}
  for record in records:
    path = root / category / f'{record.image_id}.tiff'
    a = tifffile.imread(path)
    assert a.dtype == np.float32 and a.shape == layout.read_rgb_image(record.path).shape[:2], path
    assert np.all(np.isfinite(a)), f'{path} holds non-finite scores'
    assert float(np.ptp(a)) > 0, f'{path} is constant ({a.flat[0]})'
    maps[record.image_id] = a
  written = sorted(p.relative_to(root / category).with_suffix('').as_posix()
                   for p in (root / category / 'test').glob('*/*.tiff'))
  assert written == sorted(r.image_id for r in records), f'{root}: one map per test image, no other'
  scores = map_files.read_marker(root)['image_scores']
  assert scores == {image_id: float(a.max()) for image_id, a in maps.items()}
  return maps


def check_workdir(workdir, cat_dir) -> dict:
  """Asserts what a finished train-and-evaluate run must have written; returns metrics.json."""
  workdir, cat_dir = pathlib.Path(workdir), pathlib.Path(cat_dir)
  category = cat_dir.name
  metrics = json.loads((workdir / evaluate.METRICS_FILE).read_text())
  records = layout.list_split(cat_dir, 'test')
  maps = {v: _check_maps(workdir / f, category, records) for v, f in FOLDERS.items() if (workdir / f).is_dir()}
  assert 'combined' in maps

  # The figures are those the standalone evaluator computes from the written maps.
  for variant in maps:
    again = evaluate.evaluate_category(cat_dir, workdir / FOLDERS[variant] / category, num_workers=1)
    saved = metrics if variant == 'combined' else metrics['variants'][variant]
    assert saved['classification'] == again['classification'], variant
    assert saved['localization']['auc_spro'] == again['localization']['auc_spro'], variant
    per_type = (saved[evaluate.EXTRAS_KEY]['auc_spro_per_defect_type'] if variant == 'combined'
                else saved['per_defect_type'])
    assert per_type == again[evaluate.EXTRAS_KEY]['auc_spro_per_defect_type'], variant
  if {'local', 'global'} <= set(maps):  # combined = local + global, and upsampling is linear
    for image_id, combined in maps['combined'].items():
      np.testing.assert_allclose(combined, maps['local'][image_id] + maps['global'][image_id], atol=1e-4)

  # Counts against the test split; the means are the means of the kinds.
  kinds = collections.Counter(r.kind for r in records)
  counts = metrics[evaluate.EXTRAS_KEY]['counts']
  assert {k: counts[k]['num_images'] for k in layout.KINDS} == {k: kinds[k] for k in layout.KINDS}
  roc, aucs = metrics['classification']['auc_roc'], metrics['localization']['auc_spro']
  assert roc['mean'] == 0.5 * (roc['logical_anomalies'] + roc['structural_anomalies'])
  for limit, value in aucs['mean'].items():
    assert abs(value - 0.5 * (aucs['logical_anomalies'][limit] + aucs['structural_anomalies'][limit])) < 1e-12

  # Per defect type: the types of the ground truth, each with its images; report.md shows the same rows.
  expected = _types_with_images(cat_dir, records)
  per_type = metrics[evaluate.EXTRAS_KEY]['auc_spro_per_defect_type']
  assert set(per_type) == set(expected)
  for name, by_kind in expected.items():
    row = per_type[name]
    if not by_kind:
      assert row is None, name
      continue
    assert row['num_images'] == sum(by_kind.values()), name
    assert row['kind'] == (next(iter(by_kind)) if len(by_kind) == 1 else sorted(by_kind)), name
  text = (workdir / report.REPORT_FILE).read_text()
  rows = report.per_defect_type_rows(metrics)
  assert set(rows) == {name for name, by_kind in expected.items() if by_kind}
  for name, row in rows.items():
    line = next(l for l in text.splitlines() if l.startswith(f'| {name} | '))
    assert f'{row["combined"]["auroc"]:.3f}' in line.split(' | ')
  return metrics
