"""configs/*.py: every config file validates, and configs/synthetic.py's argument string (category, `short`)."""

import json
import pathlib

import pytest

from gcad_jax import configlib, demo

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / 'configs' / 'synthetic.py'


def _flat(config) -> dict:
  def walk(node, prefix=''):
    for key, value in node.items():
      if isinstance(value, dict):
        yield from walk(value, f'{prefix}{key}.')
      else:
        yield f'{prefix}{key}', value
  return dict(walk(json.loads(config.to_json_best_effort())))


@pytest.mark.parametrize('name', ['loco.py', 'synthetic.py', 'tiny.py'])
def test_every_config_file_validates(name):
  config = demo.load_config(ROOT / 'configs' / name)
  config.dataset.manual_dir = config.dataset.manual_dir or '/data/mvtec_loco'  # loco.py: given on the command line
  configlib.validate(config)


def test_synthetic_short_schedule_changes_only_its_keys_and_keeps_the_category():
  full = demo.load_config(SYNTHETIC, 'synthetic_grid')
  short = demo.load_config(SYNTHETIC, 'synthetic_grid,short')
  configlib.validate(short)
  differing = {k for k, v in _flat(short).items() if _flat(full)[k] != v}
  assert differing == {'train.epochs', 'train.rglo_start_epoch', 'eglo.skip_fade.end_epoch', 'optim.learning_rate'}
  assert (short.train.epochs, short.train.rglo_start_epoch, short.eglo.skip_fade.end_epoch,
          short.optim.learning_rate) == (100, 10.0, 20.0, 1e-3)
  assert short.dataset.category == full.dataset.category == 'synthetic_grid'
  assert demo.load_config(SYNTHETIC, 'short').dataset.category == 'synthetic_tray'


def test_synthetic_argument_with_two_categories_is_refused():
  with pytest.raises(ValueError, match='more than one category'):
    demo.load_config(SYNTHETIC, 'synthetic_tray,synthetic_grid')
