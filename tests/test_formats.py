"""The dataset formats (tfds_loco.formats, tfds_loco.folder_layout) through the map files and the evaluator:
MVTec AD with the paper's Table 4 and PRO regions, a user's folder with or without masks (docs/method.md §10.2)."""

import json
import pathlib

import numpy as np
import pytest

from gcad_jax import evaluate
from gcad_jax import map_files
from tfds_loco import folder_layout
from tfds_loco import formats
from tfds_loco import layout
import fixture_scripts

ROOT = pathlib.Path(__file__).resolve().parents[1]
_dummy = fixture_scripts.mvtec_ad_dummy()


def _perfect_maps(reader, seed=0):
  """Scores below 0.4 outside the masks, above 1 inside (no ties): every metric is 1."""
  rng = np.random.default_rng(seed)
  maps = {}
  for r in reader.records('test'):
    header = layout.read_png_header(r.path)
    mask = reader.union_mask(r, (header.height, header.width))
    maps[r.image_id] = (0.4 * rng.random(mask.shape) + mask * (1 + rng.random(mask.shape))).astype(np.float32)
  return maps


def test_folder_records_kinds_ids_and_the_held_out_validation(tmp_path):
  cat = _dummy.write_category(tmp_path, 'part', train=20, tests={'good': 1, 'scratch': 2, 'swap': 1})
  reader = formats.reader('folder', tmp_path, 'part', logical=['swap', 'scratch/001'])
  kinds = {r.image_id: r.kind for r in reader.records('test')}
  assert kinds == {'test/good/000': 'good', 'test/scratch/000': 'structural_anomalies',
                   'test/scratch/001': 'logical_anomalies', 'test/swap/000': 'logical_anomalies'}
  train, val = reader.records('train'), reader.records('validation')
  assert len(val) == 2 and len(train) == 18 and {r.image_id for r in train}.isdisjoint({r.image_id for r in val})
  assert val == formats.reader('folder', tmp_path, 'part').records('validation')  # deterministic
  with pytest.raises(layout.LocoFormatError, match="logical anomaly 'missing'.*defect folders: scratch, swap"):
    formats.reader('folder', tmp_path, 'part', logical=['missing']).records('test')
  (cat / 'validation' / 'good').mkdir(parents=True)
  (cat / 'train' / 'good' / '000.png').rename(cat / 'validation' / 'good' / 'a.png')
  assert [r.image_id for r in reader.records('validation')] == ['validation/good/a']
  assert len(reader.records('train')) == 19


def test_holdout_is_deterministic_evenly_spread_and_sized():
  assert folder_layout.holdout_indices(10, 0.1) == [5]
  assert folder_layout.holdout_indices(209, 0.1) == folder_layout.holdout_indices(209, 0.1)
  picked = folder_layout.holdout_indices(209, 0.1)
  assert len(picked) == 21 and picked[0] == 4 and picked[-1] == 204
  assert folder_layout.holdout_indices(10, 0.5) == [1, 3, 5, 7, 9]
  assert len(folder_layout.holdout_indices(3, 0.9)) == 2  # at least one training image stays
  with pytest.raises(layout.LocoFormatError, match='val_fraction'):
    folder_layout.holdout_indices(10, 1.0)
  assert folder_layout.held_out(['b', 'a'], 0.1) == {'b'} and folder_layout.held_out(['a'], 0.5) == set()


def test_mvtec_ad_perfect_maps_score_one_with_components_as_regions(tmp_path):
  _dummy.write_all(tmp_path)
  reader = formats.reader('mvtec_ad', tmp_path, 'grid')
  metrics = evaluate.evaluate_category(reader, _perfect_maps(reader))
  assert metrics['gcad_jax']['regions'] == 'components' and metrics['gcad_jax']['has_masks']
  # bent/000 has one component, bent/001 two (one on the border): three PRO regions.
  assert metrics['gcad_jax']['counts']['structural_anomalies']['num_channels'] == 3
  assert metrics['localization']['auc_spro']['structural_anomalies']['0.3'] == pytest.approx(1.0)
  assert metrics['classification']['auc_roc']['structural_anomalies'] == 1.0
  assert metrics['classification']['auc_roc']['logical_anomalies'] is None  # grid has no logical anomalies
  assert metrics['localization']['auc_spro']['mean']['0.05'] is None


def test_mvtec_ad_maps_follow_its_file_names_and_the_cli_evaluates_them(tmp_path, capsys):
  _dummy.write_all(tmp_path / 'data')
  reader = formats.reader('mvtec_ad', tmp_path / 'data', 'cable')
  maps = _perfect_maps(reader)
  map_files.write_maps(tmp_path / 'maps', 'cable', reader, maps)
  assert (tmp_path / 'maps/cable/test/cable_swap/000.tiff').is_file()
  assert (tmp_path / 'maps/cable/test/combined/005.tiff').is_file()
  code = evaluate.main(['--dataset_base_dir', str(tmp_path / 'data'), '--anomaly_maps_dir', str(tmp_path / 'maps'),
                        '--object_name', 'cable', '--dataset_format', 'mvtec_ad', '--output_dir', str(tmp_path / 'out')])
  assert code == 0
  metrics = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
  for kind in ('structural_anomalies', 'logical_anomalies', 'mean'):
    assert metrics['classification']['auc_roc'][kind] == 1.0
    assert metrics['localization']['auc_spro'][kind]['0.05'] == pytest.approx(1.0)
    assert metrics['localization']['auc_spro'][kind]['0.3'] == pytest.approx(1.0)
  assert metrics['gcad_jax']['kinds']['test/combined/005'] == 'logical_anomalies'
  assert metrics['gcad_jax']['kinds']['test/combined/004'] == 'structural_anomalies'
  assert 'sPRO@0.3' in capsys.readouterr().out


def test_a_folder_without_masks_gets_image_metrics_only_and_says_so(tmp_path, capsys):
  _dummy.write_category(tmp_path / 'data', 'part', tests={'good': 2, 'dent': 2, 'swap': 1}, masks=False)
  reader = formats.reader('folder', tmp_path / 'data', 'part', logical=['swap'])
  rng = np.random.default_rng(0)
  maps = {}
  for r in reader.records('test'):
    header = layout.read_png_header(r.path)
    low = 0.0 if r.kind == 'good' else 1.0
    maps[r.image_id] = (low + 0.5 * rng.random((header.height, header.width))).astype(np.float32)
  map_files.write_maps(tmp_path / 'maps', 'part', reader, maps)
  code = evaluate.main(['--dataset_base_dir', str(tmp_path / 'data'), '--anomaly_maps_dir', str(tmp_path / 'maps'),
                        '--object_name', 'part', '--dataset_format', 'folder', '--logical', 'swap',
                        '--output_dir', str(tmp_path / 'out')])
  assert code == 0
  out = capsys.readouterr()
  assert 'no ground-truth masks: only the image metrics' in out.out
  metrics = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
  assert metrics['gcad_jax']['has_masks'] is False
  assert metrics['classification']['auc_roc'] == {'structural_anomalies': 1.0, 'logical_anomalies': 1.0, 'mean': 1.0}
  assert metrics['localization']['auc_spro']['mean']['0.05'] is None
  assert any('only the image metrics' in note for note in metrics['gcad_jax']['warnings'])
