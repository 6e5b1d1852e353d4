"""One end-to-end run on the embedded synthetic data, through the real code path of a user:

generate (tfds_loco.synthetic) → build (tfds_loco.build, TFDS) → input_pipeline.load_split →
`python -m gcad_jax.main --config=configs/tiny.py` (train and evaluate) → checkpoints, maps, metrics.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from gcad_jax import input_pipeline
from tfds_loco import build as tfds_build
from tfds_loco import layout
from tfds_loco import synthetic
import train_worker
import workdir_checks

pytestmark = pytest.mark.slow  # trains and evaluates end to end (minutes)

ROOT = pathlib.Path(__file__).resolve().parents[1]
CATEGORY = 'synthetic_grid'
COUNTS = {'train': 16, 'validation': 4, 'good': 4, 'logical': 3, 'structural': 3}


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp('e2e')
  synthetic.generate(root / 'synthetic', CATEGORY, seed=3, size=(96, 64), counts=COUNTS)
  tfds_build.build(category=CATEGORY, manual_dir=str(root / 'synthetic'), data_dir=str(root / 'tfds'),
                   quiet=True)
  manifest = json.loads((root / 'synthetic' / f'{CATEGORY}.manifest.json').read_text())
  return root, manifest


def _config(root):
  config = train_worker.load_config(ROOT / 'configs' / 'tiny.py')
  config.dataset.category = CATEGORY
  config.dataset.manual_dir = str(root / 'synthetic')
  config.dataset.data_dir = str(root / 'tfds')
  return config


def test_load_split_reads_the_built_data_set_as_the_manifest_says(dataset):
  root, manifest = dataset
  config = _config(root)
  test = input_pipeline.load_split(config, 'test')
  expected = sorted((im for im in manifest['images'] if im['split'] == 'test'), key=lambda im: im['id'])
  assert test.image_ids == [im['id'] for im in expected]
  assert [input_pipeline.LABELS[label] for label in test.labels] == [im['label'] for im in expected]
  assert test.images.shape == (len(expected), 64, 64, 3) and test.images.dtype == np.uint8
  np.testing.assert_array_equal(test.original_sizes, [[im['height'], im['width']] for im in expected])
  train = input_pipeline.load_split(config, 'train')
  assert len(train) == COUNTS['train'] and set(train.labels) == {0}


def test_main_trains_and_evaluates_on_the_synthetic_data(dataset, tmp_path):
  root, _ = dataset
  workdir = tmp_path / 'w'
  command = [
      sys.executable, '-m', 'gcad_jax.main', f'--config={ROOT / "configs" / "tiny.py"}', f'--workdir={workdir}',
      f'--config.dataset.category={CATEGORY}', f'--config.dataset.manual_dir={root / "synthetic"}',
      f'--config.dataset.data_dir={root / "tfds"}', '--config.train.epochs=2', '--config.export.branch_maps=True',
  ]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  assert (workdir / 'config.json').is_file() and (workdir / 'provenance.json').is_file()
  assert any((workdir / 'p17' / 'checkpoints').iterdir())
  metrics = json.loads((workdir / 'metrics.json').read_text())
  for kind in ('logical_anomalies', 'structural_anomalies', 'mean'):
    assert 0.0 <= metrics['classification']['auc_roc'][kind] <= 1.0
    assert set(metrics['localization']['auc_spro'][kind]) == {'0.01', '0.05', '0.1', '0.3', '1.0'}
  cat_dir = layout.category_dir(root / 'synthetic', CATEGORY)
  maps = sorted((workdir / 'anomaly_maps' / CATEGORY / 'test').glob('*/*.tiff'))
  assert len(maps) == len(layout.list_split(cat_dir, 'test'))
  # The figures are the evaluator's on the written maps; maps finite, not constant; per-type tables consistent.
  workdir_checks.check_workdir(workdir, cat_dir)
  assert set(json.loads((workdir / 'metrics.json').read_text())['variants']) == {'local', 'global'}
