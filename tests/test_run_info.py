"""gcad_jax/run_info.py: the run record (config.json, provenance.json) and the same-run checks."""

import json
import pathlib

import pytest

from gcad_jax import configlib, run_info
import train_worker

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(overrides=None):
  return train_worker.load_config(ROOT / 'configs' / 'tiny.py', overrides)


def test_a_resume_refuses_another_seed_optimiser_or_schedule_but_not_logging_or_saving(tmp_path):
  run_info.write_run_files(_config(), tmp_path)
  run_info.check_same_training(_config({'train.log_every_steps': 7, 'train.checkpoint_every_steps': 3,
                                        'train.keep_checkpoints': 9, 'train.cache_eloc': True}), tmp_path)
  for key, value in (('optim.b2', 0.5), ('train.batch_size', 16), ('train.rglo_start_epoch', 2.0)):
    with pytest.raises(configlib.ConfigError, match=rf'config\.{key}: .* trained with .*this config has {value}'):
      run_info.check_same_training(_config({key: value}), tmp_path)
  seeded = _config()
  seeded.seed = 5
  with pytest.raises(configlib.ConfigError, match=r'config\.seed: .* trained with 0 .*, this config has 5'):
    run_info.check_same_training(seeded, tmp_path)


def test_a_resume_keeps_config_json_and_appends_its_provenance(tmp_path):
  first = run_info.write_run_files(_config(), tmp_path)
  run_info.finish_run(tmp_path, first, 12.0)
  config_json = (tmp_path / 'config.json').read_bytes()
  again = run_info.write_run_files(_config({'train.log_every_steps': 7}), tmp_path, resume=True)
  again['start_time'] = 'later'  # two runs within the same second would otherwise share it
  record = json.loads((tmp_path / 'provenance.json').read_text())
  record['resumes'][-1]['start_time'] = 'later'
  (tmp_path / 'provenance.json').write_text(json.dumps(record))
  run_info.finish_run(tmp_path, again, 3.0)
  record = json.loads((tmp_path / 'provenance.json').read_text())
  assert (tmp_path / 'config.json').read_bytes() == config_json
  assert record['train_wall_s'] == 12.0 and [r['train_wall_s'] for r in record['resumes']] == [3.0]


def test_an_old_workdir_with_retired_config_fields_still_resumes_evaluates_and_loads(tmp_path, caplog):
  """A config.json written before configlib.RETIRED_KEYS were deleted: every reader drops them (debug note)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  run_info.write_run_files(_config(), tmp_path)
  old = json.loads((tmp_path / 'config.json').read_text())
  old['dataset']['normalize'], old['eloc']['stats'], old['eglo']['skip_levels'] = 'imagenet', 'per_channel', 5
  old['score'].update(upsample='bilinear', gaussian_sigma=0.0)
  (tmp_path / 'config.json').write_text(json.dumps(old))
  assert len(configlib.RETIRED_KEYS) == 5
  with caplog.at_level('DEBUG'):
    saved = run_info.saved_config(tmp_path)
  assert all(f'config.{key}' in caplog.text for key in configlib.RETIRED_KEYS)
  assert saved['eglo'] == {k: v for k, v in old['eglo'].items() if k != 'skip_levels'}
  run_info.check_same_run(_config(), tmp_path)  # eglo.skip_levels is in RUN_KEYS' 'eglo' section
  run_info.check_same_training(_config(), tmp_path)
  configlib.validate(ml_collections.ConfigDict(saved))  # as gcad_jax.predict.load builds it
  unknown = r'config\.dataset\.normalize: is not a config field .*eglo\.skip_levels'
  with pytest.raises(configlib.ConfigError, match=unknown):
    configlib.validate(ml_collections.ConfigDict(old))
