"""Session-wide test setup: 8 fake CPU devices and a persistent compilation cache.

XLA_FLAGS must be set before jax is first imported, so this runs at collection time. Tests that need one
device use a one-device mesh out of the eight.
"""

import os
import pathlib
import shutil

import pytest

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402  (after XLA_FLAGS)

from gcad_jax import train, xla_cpu  # noqa: E402
from tfds_loco import layout, synthetic  # noqa: E402
import train_worker  # noqa: E402

xla_cpu.set_cpu_xla_flags()  # What the entry points use (docs/performance.md); before any computation.

_CACHE = pathlib.Path(os.environ.get('GCAD_JAX_TEST_CACHE', pathlib.Path.home() / '.cache' / 'gcad_jax' / 'jax_cache'))
_CACHE.mkdir(parents=True, exist_ok=True)
jax.config.update('jax_compilation_cache_dir', str(_CACHE))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAINED_CATEGORY = 'synthetic_grid'
TRAINED_COUNTS = {'train': 8, 'validation': 4, 'good': 2, 'logical': 2, 'structural': 2}


def pytest_collection_modifyitems(items):
  """Tests that use the `trained` workdir below are `slow`: it trains and evaluates once per session."""
  for item in items:
    if 'trained' in getattr(item, 'fixturenames', ()):
      item.add_marker(pytest.mark.slow)


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
  """A tiny GCAD trained one epoch and evaluated on all 8 fake devices (W/anomaly_maps, score_norm.json).

  Returns (root, tests): the workdir is root/w, the data set root/data (category synthetic_grid), and
  root/images holds three test images (`tests`, their layout records) and one validation image.
  """
  root = tmp_path_factory.mktemp('trained')
  synthetic.generate(root / 'data', TRAINED_CATEGORY, seed=7, size=(96, 64), counts=TRAINED_COUNTS)
  config = train_worker.load_config(ROOT / 'configs' / 'tiny.py')
  config.dataset.category = TRAINED_CATEGORY
  config.dataset.manual_dir = str(root / 'data')
  config.dataset.data_dir = str(root / 'tfds')
  config.train.epochs = 1
  train.train_and_evaluate(config, str(root / 'w'))
  cat_dir = layout.category_dir(root / 'data', TRAINED_CATEGORY)
  images = root / 'images'  # three test images (not a multiple of the 8 devices) and one validation image
  images.mkdir()
  tests = layout.list_split(cat_dir, 'test')[:3]
  for r in tests:
    shutil.copy(r.path, images / f'{r.kind}_{r.stem}.png')
  shutil.copy(cat_dir / 'validation' / 'good' / '000.png', images / 'validation_000.png')
  return root, tests
