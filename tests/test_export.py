"""gcad_jax/export.py: the official map layout, atomic writes and the pre-flight check (LOCO_FORMAT.md §8)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from gcad_jax import evaluate, export
from tfds_loco import layout

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location('make_eval_fixture', ROOT / 'tests' / 'fixtures' / 'make_eval_fixture.py')
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)
CAT = gen.CATEGORY


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  """The evaluator's tiny LOCO-layout category (48×32) and its continuous maps as {image_id: map}."""
  root = tmp_path_factory.mktemp('export_fixture')
  cat_dir = gen.write_dataset(root / 'dataset')
  maps = {f'test/{k}': v.astype(np.float32) for k, v in gen.make_maps('continuous').items()}
  return cat_dir, maps


def _tree(path):
  return sorted(str(p.relative_to(path)) for p in path.rglob('*'))


def test_layout_is_accepted_by_the_evaluator_and_scores_are_the_tiff_maxima(dataset, tmp_path):
  cat_dir, maps = dataset
  root = tmp_path / 'anomaly_maps'
  marker = export.write_maps(root, CAT, cat_dir, maps)
  assert export.is_complete(root) and marker['num_maps'] == len(maps)
  assert sorted(p.name for p in (root / CAT / 'test').iterdir()) == list(layout.KINDS)
  assert not [p for p in root.rglob('.*') if p.name != export.MARKER]  # no temporary files left
  for image_id, score in marker['image_scores'].items():
    written = tifffile.imread(root / CAT / f'{image_id}.tiff')
    assert written.dtype == np.float32 and written.shape == (gen.HEIGHT, gen.WIDTH)
    assert score == float(written.max())  # GCAD.md §11.8: image score = max of the exported TIFF
  from_files = evaluate.evaluate_category(cat_dir, root / CAT, num_workers=1, per_defect_type=False)
  in_memory = evaluate.evaluate_category(cat_dir, maps, num_workers=1, per_defect_type=False)
  assert from_files['localization']['auc_spro'] == in_memory['localization']['auc_spro']
  assert from_files['classification'] == in_memory['classification']


@pytest.mark.skipif(not os.environ.get('GCAD_OFFICIAL_EVAL_DIR'),
                    reason='set GCAD_OFFICIAL_EVAL_DIR to a copy of the official evaluation scripts')
def test_layout_is_accepted_by_the_official_script(dataset, tmp_path):
  cat_dir, maps = dataset
  export.write_maps(tmp_path / 'maps', CAT, cat_dir, maps)
  python = os.environ.get('GCAD_OFFICIAL_EVAL_PYTHON', sys.executable)
  subprocess.run([python, 'evaluate_experiment.py', '--object_name', CAT, '--dataset_base_dir',
                  str(cat_dir.parent), '--anomaly_maps_dir', str(tmp_path / 'maps'), '--output_dir',
                  str(tmp_path / 'out')], cwd=os.environ['GCAD_OFFICIAL_EVAL_DIR'], check=True,
                 capture_output=True)
  assert json.loads((tmp_path / 'out' / 'metrics.json').read_text())['classification']['auc_roc']['mean'] > 0


class _Crash(Exception):
  pass


class _CrashingMaps(dict):
  """Raises on the k-th map read: a crash in the middle of an export."""

  def __init__(self, maps, k):
    super().__init__(maps)
    self.k, self.reads = k, 0

  def __getitem__(self, key):
    self.reads += 1
    if self.reads == self.k:
      raise _Crash('boom')
    return super().__getitem__(key)


def test_crash_mid_way_leaves_no_complete_looking_tree_and_keeps_the_old_one(dataset, tmp_path):
  cat_dir, maps = dataset
  root = tmp_path / 'anomaly_maps'
  with pytest.raises(_Crash):
    export.write_maps(root, CAT, cat_dir, _CrashingMaps(maps, 5))
  assert not root.exists() and not export.is_complete(root)
  assert [p for p in tmp_path.iterdir() if not p.name.startswith('.')] == []
  export.write_maps(root, CAT, cat_dir, maps)
  before = _tree(root)
  with pytest.raises(_Crash):
    export.write_maps(root, CAT, cat_dir, _CrashingMaps({k: v + 1 for k, v in maps.items()}, 7))
  assert _tree(root) == before and export.is_complete(root)  # the old complete tree is untouched
  first = sorted(maps)[0]
  np.testing.assert_array_equal(tifffile.imread(root / CAT / f'{first}.tiff'), maps[first])


@pytest.mark.parametrize('bad, message', [
    (np.nan, 'NaN'), (np.inf, 'infinite'), ('shape', r'\(H, W\)'), ('size', 'original size'),
    ('dtype', 'float32'), ('missing', 'missing')])
def test_pre_flight_refuses_bad_maps_and_writes_nothing(dataset, tmp_path, bad, message):
  cat_dir, maps = dataset
  maps = dict(maps)
  key = sorted(maps)[3]
  m = maps[key].copy()
  if bad == 'shape':
    maps[key] = m[None]
  elif bad == 'size':
    maps[key] = m[:-1]
  elif bad == 'dtype':
    maps[key] = m.astype(np.float64)
  elif bad == 'missing':
    del maps[key]
  else:
    m[2, 3] = bad
    maps[key] = m
  with pytest.raises(layout.LocoFormatError, match=message):
    export.write_maps(tmp_path / 'maps', CAT, cat_dir, maps)
  assert list(tmp_path.iterdir()) == []


def test_plateau_and_magnitude_warn(dataset, tmp_path):
  cat_dir, maps = dataset
  clipped = {k: np.maximum(v, np.float32(np.percentile(v, 60))) for k, v in maps.items()}
  with pytest.warns(export.ExportWarning, match='1/49'):
    marker = export.write_maps(tmp_path / 'a', CAT, cat_dir, clipped)
  assert marker['largest_value_fraction'] >= 1 / 49
  with pytest.warns(export.ExportWarning, match='NumPy 1.x'):
    export.write_maps(tmp_path / 'b', CAT, cat_dir, {k: v * 100 for k, v in maps.items()})
