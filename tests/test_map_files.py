"""gcad_jax/map_files.py: the official map layout, atomic writes and the pre-flight check (docs/data_format.md §8)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from gcad_jax import evaluate, map_files
from tfds_loco import layout
import fixture_scripts

ROOT = pathlib.Path(__file__).resolve().parents[1]
gen = fixture_scripts.eval_fixture()
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
  marker = map_files.write_maps(root, CAT, cat_dir, maps)
  assert map_files.is_complete(root) and marker['num_maps'] == len(maps)
  assert sorted(p.name for p in (root / CAT / 'test').iterdir()) == list(layout.KINDS)
  assert not [p for p in root.rglob('.*') if p.name != map_files.MARKER]  # no temporary files left
  for image_id, score in marker['image_scores'].items():
    written = tifffile.imread(root / CAT / f'{image_id}.tiff')
    assert written.dtype == np.float32 and written.shape == (gen.HEIGHT, gen.WIDTH)
    assert score == float(written.max())  # docs/method.md §11.8: image score = max of the exported TIFF
  from_files = evaluate.evaluate_category(cat_dir, root / CAT, num_workers=1, per_defect_type=False)
  in_memory = evaluate.evaluate_category(cat_dir, maps, num_workers=1, per_defect_type=False)
  assert from_files['localization']['auc_spro'] == in_memory['localization']['auc_spro']
  assert from_files['classification'] == in_memory['classification']


@pytest.mark.skipif(not os.environ.get('GCAD_OFFICIAL_EVAL_DIR'),
                    reason='set GCAD_OFFICIAL_EVAL_DIR to a copy of the official evaluation scripts')
def test_layout_is_accepted_by_the_official_script(dataset, tmp_path):
  cat_dir, maps = dataset
  map_files.write_maps(tmp_path / 'maps', CAT, cat_dir, maps)
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
    map_files.write_maps(root, CAT, cat_dir, _CrashingMaps(maps, 5))
  assert not root.exists() and not map_files.is_complete(root)
  assert [p for p in tmp_path.iterdir() if not p.name.startswith('.')] == []
  map_files.write_maps(root, CAT, cat_dir, maps)
  before = _tree(root)
  with pytest.raises(_Crash):
    map_files.write_maps(root, CAT, cat_dir, _CrashingMaps({k: v + 1 for k, v in maps.items()}, 7))
  assert _tree(root) == before and map_files.is_complete(root)  # the old complete tree is untouched
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
    map_files.write_maps(tmp_path / 'maps', CAT, cat_dir, maps)
  assert list(tmp_path.iterdir()) == []


def test_plateau_and_magnitude_warn(dataset, tmp_path):
  cat_dir, maps = dataset
  clipped = {k: np.maximum(v, np.float32(np.percentile(v, 60))) for k, v in maps.items()}
  with pytest.warns(map_files.MapFilesWarning, match='1/49'):
    marker = map_files.write_maps(tmp_path / 'a', CAT, cat_dir, clipped)
  assert marker['largest_value_fraction'] >= 1 / 49
  with pytest.warns(map_files.MapFilesWarning, match='NumPy 1.x'):
    map_files.write_maps(tmp_path / 'b', CAT, cat_dir, {k: v * 100 for k, v in maps.items()})


# ------------------------------------------------------------------------------------------------
# Reading maps back (the evaluator's side of the layout, §8, §11.3).


def test_written_maps_are_found_and_read_back_unchanged(dataset, tmp_path):
  cat_dir, maps = dataset
  root = tmp_path / 'anomaly_maps'
  map_files.write_maps(root, CAT, cat_dir, maps)
  records = layout.list_split(cat_dir, 'test')
  source = map_files.map_source(root / CAT, records)
  assert source.ids() == set(maps) == {r.image_id for r in records}
  for record in records:
    assert source.where(record.image_id) == str(root / CAT / f'{record.image_id}.tiff')
    read = map_files.check_map_scores(source.load(record.image_id), 'x', record, (gen.HEIGHT, gen.WIDTH))
    np.testing.assert_array_equal(read, maps[record.image_id])


def test_in_memory_keys_are_normalised_and_missing_maps_listed(dataset):
  cat_dir, maps = dataset
  records = layout.list_split(cat_dir, 'test')
  assert map_files.normalise_image_id('good/000.tiff') == map_files.normalise_image_id('test/good/000') == 'test/good/000'
  partial = {k.removeprefix('test/'): v for k, v in maps.items() if k != 'test/good/001'}
  source = map_files.map_source(partial, records)
  with pytest.raises(layout.LocoFormatError, match='no map for test/good/001;'):
    map_files.split_missing(source, records, allow_missing=False)
  kept, missing = map_files.split_missing(source, records, allow_missing=True)
  assert missing == ['test/good/001'] and len(kept) == len(records) - 1
  with pytest.raises(layout.LocoFormatError, match='two entries for test/good/000'):
    map_files.map_source({'good/000': maps['test/good/000'], 'test/good/000': maps['test/good/000']}, records)


def test_reading_accepts_integer_maps_as_float32_scores(dataset):
  cat_dir, _ = dataset
  record = layout.list_split(cat_dir, 'test')[0]
  scores = map_files.check_map_scores(np.full((gen.HEIGHT, gen.WIDTH), 7, np.uint8), 'x', record, (gen.HEIGHT, gen.WIDTH))
  assert scores.dtype == np.float32 and scores.max() == 7
  with pytest.raises(layout.LocoFormatError, match='dtype complex64'):
    map_files.check_map_scores(np.zeros((gen.HEIGHT, gen.WIDTH), np.complex64), 'x', record, (gen.HEIGHT, gen.WIDTH))
