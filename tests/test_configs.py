"""configs/*.py: every config file validates, and configs/synthetic.py's argument string (category, `short`)."""

import json
import pathlib

import pytest

from gcad_jax import configlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / 'configs' / 'synthetic.py'


def schedule(c):
  """The five fields that SHORT_SCHEDULE sets."""
  return (tuple(c.model.scales), c.train.epochs, c.train.rglo_start_epoch, c.eglo.skip_fade.end_epoch,
          c.optim.learning_rate)


@pytest.mark.parametrize('name', ['loco.py', 'mvtec_ad.py', 'synthetic.py', 'tiny.py'])
def test_every_config_file_validates(name):
  config = configlib.load_config(ROOT / 'configs' / name)
  config.dataset.manual_dir = config.dataset.manual_dir or '/data/mvtec_loco'  # loco.py: given on the command line
  configlib.validate(config)


def test_synthetic_short_schedule_changes_only_its_keys_and_keeps_the_category():
  full = configlib.load_config(f'{SYNTHETIC}:synthetic_grid')
  short = configlib.load_config(f'{SYNTHETIC}:synthetic_grid,short')
  configlib.validate(short)
  assert schedule(short) == ((17,), 100, 10.0, 20.0, 1e-3)
  assert schedule(full) == ((17, 33), 200, 20.0, 40.0, 5e-4)
  (full.model.scales, full.train.epochs, full.train.rglo_start_epoch, full.eglo.skip_fade.end_epoch,
   full.optim.learning_rate) = schedule(short)
  assert json.loads(full.to_json_best_effort()) == json.loads(short.to_json_best_effort())  # nothing else differs
  assert short.dataset.category == 'synthetic_grid'
  assert configlib.load_config(f'{SYNTHETIC}:short').dataset.category == 'synthetic_tray'


def test_synthetic_argument_with_two_categories_is_refused():
  with pytest.raises(ValueError, match='more than one category'):
    configlib.load_config(f'{SYNTHETIC}:synthetic_tray,synthetic_grid')


def test_load_config_takes_the_command_line_form_and_dotted_overrides():
  """configlib.load_config, the one loader: `path[:argument]` as --config takes it, nested overrides, clear errors."""
  config = configlib.load_config(f'{ROOT / "configs" / "loco.py"}:pushpins',
                                 {'eglo.skip_fade.end_epoch': 3.0, 'unet.depth': 4})
  assert (config.dataset.category, config.eglo.skip_fade.end_epoch, config.unet.depth) == ('pushpins', 3.0, 4)
  assert configlib.load_config(ROOT / 'configs' / 'loco.py').dataset.category == 'breakfast_box'
  with pytest.raises(configlib.ConfigError, match=r'config\.unet\.dept: is not a config field'):
    configlib.load_config(ROOT / 'configs' / 'tiny.py', {'unet.dept': 4})
  with pytest.raises(configlib.ConfigError, match=r'config\.nothing\.at\.all: is not a config field'):
    configlib.load_config(ROOT / 'configs' / 'tiny.py', {'nothing.at.all': 4})
  with pytest.raises(FileNotFoundError, match=r'config file .*missing\.py not found'):
    configlib.load_config(f'{ROOT / "configs" / "missing.py"}:pushpins')


def test_mvtec_ad_config_is_the_papers_setting_on_an_mvtec_ad_category():
  config = configlib.load_config(f'{ROOT / "configs" / "mvtec_ad.py"}:transistor')
  assert (config.dataset.format, config.dataset.category, config.dataset.val_fraction) == ('mvtec_ad', 'transistor', 0.1)
  assert tuple(config.dataset.image_size) == (256, 256) and config.train.epochs == 500
  config.dataset.manual_dir = '/data/mvtec_ad'
  configlib.validate(config)
  config.dataset.category = 'pushpins'
  with pytest.raises(configlib.ConfigError, match='not an MVTec AD category'):
    configlib.validate(config)
  config.dataset.category = 'transistor'
  config.dataset.logical = ('cut_lead',)
  with pytest.raises(configlib.ConfigError, match='dataset.logical'):
    configlib.validate(config)
