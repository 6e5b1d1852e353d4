"""The standalone evaluator against MVTec's official script, input checks and output (docs/data_format.md §11).

Golden files: tests/fixtures/official_eval/ (README there). Set GCAD_OFFICIAL_EVAL_DIR to a copy of the
official scripts (and GCAD_OFFICIAL_EVAL_PYTHON to a NumPy 1.x interpreter) for the live comparison.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from gcad_jax import evaluate
from gcad_jax.metrics import auroc, spro
from tfds_loco import layout
import fixture_scripts

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / 'tests' / 'fixtures'
GOLDEN = FIXTURES / 'official_eval'
gen = fixture_scripts.eval_fixture()
CAT = gen.CATEGORY


@pytest.fixture(scope='module')
def fixture_dir(tmp_path_factory):
  return gen.generate(tmp_path_factory.mktemp('eval_fixture'))


def _evaluate(fixture_dir, map_set, **kwargs):
  with pytest.warns(evaluate.EvaluationWarning, match='absolute saturation_threshold'):
    return evaluate.evaluate_category(fixture_dir / 'dataset' / CAT, fixture_dir / 'maps' / map_set / CAT,
                                      num_workers=1, **kwargs)


def _golden(map_set):
  return json.loads((GOLDEN / map_set / 'metrics.json').read_text())


def _max_auc_diff(ours, official):
  diffs = [abs(ours['localization']['auc_spro'][kind][key] - value)
           for kind, per_limit in official['localization']['auc_spro'].items() for key, value in per_limit.items()]
  assert len(diffs) == 15
  return max(diffs)


def _assert_matches_official(fixture_dir, map_set, official):
  thresholds = official['localization']['per_threshold']['thresholds']
  at_thresholds = _evaluate(fixture_dir, map_set, thresholds=thresholds)
  assert _max_auc_diff(at_thresholds, official) <= 1e-12
  assert at_thresholds['classification'] == official['classification']  # identical, not close
  for key, values in official['localization']['per_threshold'].items():
    np.testing.assert_allclose(at_thresholds['localization']['per_threshold'][key], values, rtol=0, atol=1e-12)
  exact = _evaluate(fixture_dir, map_set)
  assert exact[evaluate.EXTRAS_KEY]['mode'] == 'exact'
  assert _max_auc_diff(exact, official) <= 1e-3
  assert exact['classification'] == official['classification']
  return exact


def test_fixture_is_what_the_golden_files_were_made_from(fixture_dir):
  expected = json.loads((GOLDEN / 'fixture_manifest.json').read_text())
  assert json.loads((fixture_dir / 'manifest.json').read_text()) == expected, (
      'tests/fixtures/make_eval_fixture.py now generates different data; remake the golden files with the '
      'command in tests/fixtures/official_eval/README.md')


@pytest.mark.parametrize('map_set', gen.OFFICIAL_SETS)
def test_matches_official_golden_files(fixture_dir, map_set):
  exact = _assert_matches_official(fixture_dir, map_set, _golden(map_set))
  if map_set == 'perfect':
    for per_limit in exact['localization']['auc_spro'].values():
      assert all(v == pytest.approx(1.0, abs=1e-12) for v in per_limit.values())
    per_type = exact[evaluate.EXTRAS_KEY]['auc_spro_per_defect_type']
    assert {name: row['auc_roc'] for name, row in per_type.items() if row} == {
        name: 1.0 for name, row in per_type.items() if row}  # every anomalous maximum above every good one
  if map_set == 'quantised':  # tied maxima: the official quirk differs from Mann-Whitney, and we say so
    extras = exact[evaluate.EXTRAS_KEY]
    assert extras['auc_roc_official_differs_from_standard']['logical_anomalies']
    assert extras['auc_roc_standard']['logical_anomalies'] != exact['classification']['auc_roc']['logical_anomalies']


@pytest.mark.skipif(not os.environ.get('GCAD_OFFICIAL_EVAL_DIR'),
                    reason='set GCAD_OFFICIAL_EVAL_DIR to a copy of the official evaluation scripts')
@pytest.mark.parametrize('map_set', gen.OFFICIAL_SETS)
def test_matches_official_script_live(fixture_dir, map_set, tmp_path):
  python = os.environ.get('GCAD_OFFICIAL_EVAL_PYTHON', sys.executable)
  subprocess.run([python, 'evaluate_experiment.py', '--object_name', CAT,
                  '--dataset_base_dir', str(fixture_dir / 'dataset'),
                  '--anomaly_maps_dir', str(fixture_dir / 'maps' / map_set), '--output_dir', str(tmp_path)],
                 cwd=os.environ['GCAD_OFFICIAL_EVAL_DIR'], check=True, capture_output=True)
  _assert_matches_official(fixture_dir, map_set, json.loads((tmp_path / 'metrics.json').read_text()))


def test_constant_maps_give_half_the_limit(fixture_dir):
  metrics = _evaluate(fixture_dir, 'constant')
  for per_limit in metrics['localization']['auc_spro'].values():
    for key, value in per_limit.items():
      assert value == pytest.approx(float(key) / 2, abs=1e-12)
  assert metrics['classification']['auc_roc']['mean'] == pytest.approx(0.5 + 0.5 / gen.NUM_GOOD)
  assert metrics[evaluate.EXTRAS_KEY]['auc_roc_standard']['mean'] == 0.5


def _brute_force_aucs(maps, images, defects, keep):
  """AUC-sPRO straight from §9.2 at every unique score; keep(channel value) picks the sPRO channels."""
  negatives, scored = [], []
  for kind, stem, channels in images:
    a = maps[f'{kind}/{stem}'].astype(np.float64)
    union = np.any([m for _, m in channels], axis=0) if channels else np.zeros(a.shape, bool)
    negatives.append(a[~union])
    scored += [(np.sort(a[m]), defects[v].saturation_area(int(m.sum()))) for v, m in channels if keep(v)]
  negatives = np.sort(np.concatenate(negatives))
  values = np.unique(np.concatenate([maps[f'{k}/{s}'].ravel() for k, s, _ in images]).astype(np.float64))
  sweep = np.concatenate([[values[-1] + 1], values[::-1], [values[0] - 1]])
  # #scores > t = size - #scores <= t, on sorted float64 copies of all pixels.
  fpr = (negatives.size - np.searchsorted(negatives, sweep, 'right')) / negatives.size
  y = np.mean([np.minimum((c.size - np.searchsorted(c, sweep, 'right')) / s, 1) for c, s in scored], axis=0)
  return {spro.limit_key(l): spro.auc_at_limit(fpr, y, l) for l in spro.LIMITS}


@pytest.mark.parametrize('map_set', ['quantised', 'plateau'])
def test_whole_pipeline_against_brute_force(fixture_dir, map_set):
  # plateau: 60 % of all scores share one value; the official script asserts on such maps (§10.1).
  metrics = _evaluate(fixture_dir, map_set)
  maps = gen.make_maps(map_set)
  defects = layout.read_defects_config(fixture_dir / 'dataset' / CAT / layout.DEFECTS_CONFIG)
  images = gen.fixture_images()
  for kind in layout.ANOMALY_KINDS:
    subset = [im for im in images if im[0] in ('good', kind)]
    expected = _brute_force_aucs(maps, subset, defects, lambda v: True)
    for key, value in expected.items():
      assert metrics['localization']['auc_spro'][kind][key] == pytest.approx(value, abs=1e-12)
  per_type = metrics[evaluate.EXTRAS_KEY]['auc_spro_per_defect_type']
  assert per_type['never_seen'] is None
  for value, defect in defects.items():
    subset = [im for im in images if not im[2] or any(v == value for v, _ in im[2])]
    if len(subset) == gen.NUM_GOOD:
      continue
    expected = _brute_force_aucs(maps, subset, defects, lambda v: v == value)
    for key, auc in expected.items():
      assert per_type[defect.defect_name]['auc_spro'][key] == pytest.approx(auc, abs=1e-12)
    # The type's image AUROC: its images' map maxima against the good images' (ties in 'quantised').
    maxima = {kind: [float(maps[f'{k}/{stem}'].max()) for k, stem, ch in subset if (k == 'good') == (kind == 'good')]
              for kind in ('good', 'anomalous')}
    assert per_type[defect.defect_name]['auc_roc'] == auroc.auroc_official(maxima['good'], maxima['anomalous'])
  assert per_type['missing_part']['num_channels'] == 3  # two channels of one image share its pixel value


def test_in_memory_maps_equal_folder_maps(fixture_dir):
  from_files = _evaluate(fixture_dir, 'continuous')
  with pytest.warns(evaluate.EvaluationWarning):
    in_memory = evaluate.evaluate_category(fixture_dir / 'dataset' / CAT, gen.make_maps('continuous'),
                                           num_workers=2)
  assert in_memory['localization'] == from_files['localization']
  assert in_memory['classification'] == from_files['classification']
  assert in_memory[evaluate.EXTRAS_KEY]['auc_spro_per_defect_type'] == \
      from_files[evaluate.EXTRAS_KEY]['auc_spro_per_defect_type']


# ------------------------------------------------------------------------------------------------
# Input checks (§11.3): errors name the file.


@pytest.fixture
def work(fixture_dir, tmp_path):
  """A writable copy of the data set and of the continuous maps."""
  shutil.copytree(fixture_dir / 'dataset', tmp_path / 'dataset')
  shutil.copytree(fixture_dir / 'maps' / 'continuous', tmp_path / 'maps')
  return tmp_path


def _run(work, **kwargs):
  return evaluate.evaluate_category(work / 'dataset' / CAT, work / 'maps' / CAT, **kwargs)


def _map_path(work, image_id):
  return work / 'maps' / CAT / 'test' / f'{image_id}.tiff'


@pytest.mark.filterwarnings('ignore::gcad_jax.evaluate.EvaluationWarning')
def test_map_of_the_wrong_size_is_refused(work):
  path = _map_path(work, 'structural_anomalies/001')
  tifffile.imwrite(path, np.zeros((gen.HEIGHT, gen.WIDTH + 1), np.float32))
  with pytest.raises(layout.LocoFormatError, match=f'{path}.*49x32.*48x32'):
    _run(work)


@pytest.mark.filterwarnings('ignore::gcad_jax.evaluate.EvaluationWarning')
@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_non_finite_map_is_refused(work, bad):
  path = _map_path(work, 'good/003')
  a = tifffile.imread(path)
  a[3, 4] = bad
  tifffile.imwrite(path, a)
  with pytest.raises(layout.LocoFormatError, match=f'{path}.*must be finite'):
    _run(work)


@pytest.mark.filterwarnings('ignore::gcad_jax.evaluate.EvaluationWarning')
def test_map_that_is_not_2d_is_refused(work):
  path = _map_path(work, 'good/000')
  tifffile.imwrite(path, np.zeros((gen.HEIGHT, gen.WIDTH, 2), np.float32))
  with pytest.raises(layout.LocoFormatError, match=f'{path} has shape'):
    _run(work)


@pytest.mark.filterwarnings('ignore::gcad_jax.evaluate.EvaluationWarning')
def test_missing_map_fails_unless_allowed(work):
  _map_path(work, 'good/002').unlink()
  _map_path(work, 'logical_anomalies/004').unlink()
  with pytest.raises(layout.LocoFormatError, match='no map for test/good/002, test/logical_anomalies/004'):
    _run(work)
  metrics = _run(work, allow_missing=True)
  extras = metrics[evaluate.EXTRAS_KEY]
  assert extras['missing_maps'] == ['test/good/002', 'test/logical_anomalies/004']
  assert extras['counts']['good']['num_images'] == gen.NUM_GOOD - 1
  assert extras['counts']['logical_anomalies']['num_images'] == 4


@pytest.mark.filterwarnings('ignore::gcad_jax.evaluate.EvaluationWarning')
def test_duplicate_stems_and_stray_maps_are_refused(work):
  tif = _map_path(work, 'good/001').with_suffix('.tif')
  shutil.copy(_map_path(work, 'good/001'), tif)
  with pytest.raises(layout.LocoFormatError, match='two maps for one image'):
    _run(work)
  tif.unlink()
  stray = _map_path(work, 'good/099')
  shutil.copy(_map_path(work, 'good/001'), stray)
  with pytest.raises(layout.LocoFormatError, match=f'{stray} has no test image'):
    _run(work)
  stray.unlink()
  (work / 'maps' / CAT / 'test' / 'scratch').mkdir()
  with pytest.raises(layout.LocoFormatError, match="unexpected entries \\['scratch'\\]"):
    _run(work)


@pytest.mark.filterwarnings('ignore::gcad_jax.evaluate.EvaluationWarning')
def test_missing_ground_truth_folder_is_refused(work):
  gt = work / 'dataset' / CAT / 'ground_truth' / 'structural_anomalies' / '003'
  shutil.rmtree(gt)
  with pytest.raises(layout.LocoFormatError, match=f'ground truth folder {gt} is missing'):
    _run(work)


@pytest.mark.filterwarnings('ignore::gcad_jax.evaluate.EvaluationWarning')
def test_zero_saturation_area_is_refused(work):
  # A one-pixel channel of a relative-0.5 type: s = floor(0.5 x 1) = 0.
  mask_path = work / 'dataset' / CAT / 'ground_truth' / 'structural_anomalies' / '001' / '000.png'
  mask = np.zeros((gen.HEIGHT, gen.WIDTH), np.uint8)
  mask[5, 5] = 240
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(mask, mode='L').save(mask_path)
  with pytest.raises(layout.LocoFormatError, match=f'{mask_path}: saturation area s = floor.* = 0'):
    _run(work)


def test_absolute_threshold_above_the_area_warns_with_the_file(work):
  with pytest.warns(evaluate.EvaluationWarning) as record:
    metrics = _run(work)
  messages = [str(w.message) for w in record]
  assert any('logical_anomalies/002/000.png' in m and '5000 px' in m for m in messages)
  assert len(metrics[evaluate.EXTRAS_KEY]['warnings']) == 2


# ------------------------------------------------------------------------------------------------
# Command line and output.


def test_cli_writes_official_schema(work, tmp_path):
  out = tmp_path / 'metrics' / 'exp' / CAT
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  cmd = [sys.executable, '-m', 'gcad_jax.evaluate', '--dataset_base_dir', str(work / 'dataset'),
         '--anomaly_maps_dir', str(work / 'maps'), '--object_name', CAT, '--output_dir', str(out),
         '--thresholds_from', str(GOLDEN / 'continuous' / 'metrics.json')]
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert 'logical_anomalies' in done.stdout and 'absolute saturation_threshold' in done.stderr
  metrics = json.loads((out / 'metrics.json').read_text())
  official = _golden('continuous')
  assert set(metrics['localization']['auc_spro']) == {'logical_anomalies', 'structural_anomalies', 'mean'}
  assert list(metrics['localization']['auc_spro']['mean']) == ['0.01', '0.05', '0.1', '0.3', '1.0']
  assert set(metrics['localization']['per_threshold']) == {'thresholds', 'mean_spros', 'fp_rates'}
  assert _max_auc_diff(metrics, official) <= 1e-12
  assert metrics['classification'] == official['classification']
  assert metrics[evaluate.EXTRAS_KEY]['mode'] == 'thresholds'
  assert [p.name for p in out.iterdir()] == ['metrics.json']


def test_failed_run_leaves_no_metrics_file(work, tmp_path, capsys):
  out = tmp_path / 'out'
  _map_path(work, 'good/000').unlink()
  args = ['--dataset_base_dir', str(work / 'dataset'), '--anomaly_maps_dir', str(work / 'maps'),
          '--object_name', CAT, '--output_dir', str(out)]
  assert evaluate.main(args) == 2
  assert 'no map for test/good/000' in capsys.readouterr().err
  assert not out.exists() or not any(out.iterdir())


def test_write_metrics_is_atomic(tmp_path, monkeypatch):
  evaluate.write_metrics({'a': 1}, tmp_path)
  monkeypatch.setattr(json, 'dump', lambda *a, **k: (_ for _ in ()).throw(RuntimeError('disk full')))
  with pytest.raises(RuntimeError):
    evaluate.write_metrics({'a': 2}, tmp_path)
  assert [p.name for p in tmp_path.iterdir()] == ['metrics.json']
  assert json.loads((tmp_path / 'metrics.json').read_text()) == {'a': 1}
