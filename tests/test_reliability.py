"""Reliability (issue 7, docs/reliability.md): crash-safe training, numerical faults, bad inputs, weights that
cannot run code, atomic outputs. The long random-kill soak is benchmarks/soak.py."""

import dataclasses
import importlib.util
import json
import logging
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from etils import epath
from ml_collections import config_flags

from gcad_jax import atomic_io, checkpoints, configlib, evaluate, parallel, run_info, train
from gcad_jax.models import teacher_weights
from tfds_loco import build as tfds_build
from tfds_loco import layout
import train_worker

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / 'configs' / 'tiny.py'
NO_SCORING = {'score.enabled': False}  # The fake data have no test split; validation losses are the metrics.


@pytest.fixture(autouse=True)
def _fake_data(monkeypatch):
  monkeypatch.setattr(train.input_pipeline, 'load_split', train_worker.fake_split)


def _config(overrides=None):
  return train_worker.load_config(TINY, {**NO_SCORING, **(overrides or {})})


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def _steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / 'p17' / 'checkpoints').iterdir() if p.name.isdigit())


def _restore_step(config, workdir, step: int):
  """The host state of checkpoint `step` of scale 17."""
  mngr = checkpoints.checkpoint_manager(config, run_info.scale_dir(workdir, 17))
  meta = checkpoints.read_meta(mngr, step)
  _, trainable, e_loc_params = train._init(config, 17, config.dataset.image_size)
  template = train._template(config, trainable, e_loc_params, meta['rglo_started'])
  state = checkpoints.restore_checkpoint(mngr, step, template, parallel.DataParallel.from_config(config))
  mngr.close()
  return parallel.unreplicate(state, config.parallel)


@dataclasses.dataclass
class Reference:
  workdir: pathlib.Path
  state: train.TrainState  # host copy of the final state (step 6)
  losses: dict  # validation_losses.json


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted tiny run (6 steps, checkpoints 4 and 6 kept) and its validation losses."""
  workdir = tmp_path_factory.mktemp('reference')
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train.input_pipeline, 'load_split', train_worker.fake_split)
    results = train.train_and_evaluate(_config(), str(workdir))
  assert _steps(workdir) == [4, 6]
  state = train_worker.restore_final(_config(), workdir, 17)
  return Reference(workdir, state, results[17])


def _copy(reference: Reference, tmp_path) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(reference.workdir, tmp_path / 'run'))


# ------------------------------------------------------------------------------------------------
# 1. Crash-safe training.


@pytest.mark.slow
def test_kill_in_a_checkpoint_write_and_in_evaluation_then_rerun_gives_the_uninterrupted_run(reference, tmp_path):
  """Real `gcad_jax.main` processes on 8 CPU devices. SIGKILL once after every file of the step-4 checkpoint
  is written but before Orbax renames its folder, once while validation_losses.json is being written; the
  reruns end bitwise equal to the uninterrupted run, parameters and validation losses."""
  workdir = tmp_path / 'run'
  command = [sys.executable, str(ROOT / 'tests' / 'train_worker.py'), f'--config={TINY}', f'--workdir={workdir}',
             '--mode=train_and_eval', *train_worker.flags(NO_SCORING)]
  env = dict(os.environ, **train_worker.cache_env())
  run = lambda **hooks: subprocess.run(command, env=dict(env, **hooks), cwd=ROOT, text=True, capture_output=True,
                                       timeout=300)
  ckpt_dir = workdir / 'p17' / 'checkpoints'

  in_save = run(GCAD_TEST_KILL_IN_SAVE='4')
  assert in_save.returncode == -signal.SIGKILL, in_save.stderr[-3000:]
  assert _steps(workdir) == [2]  # The half-finished step 4 is not a checkpoint ...
  assert [p.name for p in ckpt_dir.iterdir() if p.name.startswith('4.orbax-checkpoint-tmp')]  # ... only a tmp.

  in_eval = run(GCAD_TEST_KILL_IN_EVAL='1')
  assert in_eval.returncode == -signal.SIGKILL, in_eval.stderr[-3000:]
  assert 'resumed from' in in_eval.stderr and 'at step 2 (epoch 1, batch 0)' in in_eval.stderr
  assert _steps(workdir) == [4, 6] and not [p for p in ckpt_dir.iterdir() if not p.name.isdigit()]
  assert not (workdir / 'p17' / 'validation_losses.json').exists()  # Only its hidden temporary.
  assert [p.name for p in (workdir / 'p17').glob('.validation_losses.*')]

  results = train.train_and_evaluate(_config(), str(workdir))  # The same command, in this process.
  _assert_trees_equal(train_worker.restore_final(_config(), workdir, 17), reference.state)
  assert results[17] == reference.losses
  assert json.loads((workdir / 'p17' / 'validation_losses.json').read_text()) == reference.losses


@pytest.mark.slow
def test_sigterm_saves_the_current_step_exits_143_and_the_rerun_resumes(reference, tmp_path, monkeypatch, capsys):
  workdir = tmp_path / 'run'
  log = train._log

  def log_then_sigterm(writer, config, p, done, *args):
    log(writer, config, p, done, *args)
    if done == 2:  # Delivered in the middle of step 3's bookkeeping: step 3 is the one saved.
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(train, '_log', log_then_sigterm)
  handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(checkpoints.Preempted) as exit_info:
    train.train(_config(), workdir)
  assert exit_info.value.code == checkpoints.PREEMPTED_EXIT_CODE == 143
  assert 'SIGTERM: p17 saved its checkpoint at step 3' in capsys.readouterr().out
  assert _steps(workdir) == [2, 3] and signal.getsignal(signal.SIGTERM) is handler

  monkeypatch.setattr(train, '_log', log)
  states = train.train(_config(), workdir)
  _assert_trees_equal(parallel.unreplicate(states[17], 'shard_map'), reference.state)


@pytest.mark.slow
def test_corrupt_latest_checkpoint_is_reported_and_the_previous_one_used(reference, tmp_path, caplog):
  workdir = _copy(reference, tmp_path)
  ckpt_dir = workdir / 'p17' / 'checkpoints'
  data = max((ckpt_dir / '6' / 'state' / 'ocdbt.process_0' / 'd').iterdir(), key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])  # A truncated array file.

  with caplog.at_level(logging.WARNING):
    states = train.train(_config(), workdir)
  warning = [r.getMessage() for r in caplog.records if 'is corrupt' in r.getMessage()]
  assert len(warning) == 1 and f'{ckpt_dir}/6 is corrupt' in warning[0], warning
  assert f'{ckpt_dir}/6/state' in warning[0] and 'using the previous one, step 4' in warning[0]
  assert [p.name.split('-')[0] for p in (workdir / 'p17' / 'corrupt_checkpoints').iterdir()] == ['6']
  assert _steps(workdir) == [4, 6]  # Step 6 trained again from 4 and saved anew ...
  _assert_trees_equal(parallel.unreplicate(states[17], 'shard_map'), reference.state)  # ... bitwise the same.


def test_checksum_mismatch_is_corruption_and_no_intact_checkpoint_is_refused(reference, tmp_path):
  """A file that still decodes but holds other bytes fails its CRC32; with every checkpoint bad, training
  refuses to start over and moves nothing."""
  workdir = _copy(reference, tmp_path)
  ckpt_dir = workdir / 'p17' / 'checkpoints'
  meta_file = ckpt_dir / '6' / 'meta' / 'metadata'
  meta = json.loads(meta_file.read_text())
  meta['state_crc32']['params/r_glo/down0/conv0/kernel'] ^= 1
  meta_file.write_text(json.dumps(meta))
  (ckpt_dir / '4' / 'state' / 'manifest.ocdbt').unlink()
  with pytest.raises(checkpoints.CorruptCheckpointError,
                     match=r"no checkpoint reads back intact: step 6: .*\['params/r_glo/down0/conv0/kernel'\] do not "
                           r'match the CRC32.*; step 4: '):
    train.train(_config(), workdir)
  assert _steps(workdir) == [4, 6] and not (workdir / 'p17' / 'corrupt_checkpoints').exists()


# ------------------------------------------------------------------------------------------------
# 2. Numerical faults.


def _record_checkpoint_managers(monkeypatch) -> tuple[list, list]:
  """Patches `checkpoints.checkpoint_manager` to list the managers it opens and those closed since."""
  real = checkpoints.checkpoint_manager
  opened, closed = [], []

  def recording(*args, **kwargs):
    mngr = real(*args, **kwargs)
    real_close = mngr.close

    def close():
      closed.append(mngr)
      real_close()

    mngr.close = close
    opened.append(mngr)
    return mngr

  monkeypatch.setattr(checkpoints, 'checkpoint_manager', recording)
  return opened, closed


@pytest.mark.slow
def test_nan_loss_stops_training_naming_step_and_term_and_keeps_the_last_good_checkpoint(reference, tmp_path,
                                                                                          monkeypatch):
  """R_glo's parameters turn NaN before step 5 (checkpoints every 2 steps): the real step then gives
  l_glo = NaN, caught at the step-6 log; nothing after step 4 is saved, and step 4 is the reference's."""
  real = parallel.map_per_device

  def poisoned(fn, mode, mesh, **kwargs):
    mapped = real(fn, mode, mesh, **kwargs)
    if getattr(fn, 'func', None) is not train.train_step:
      return mapped

    def step(state, *batch):
      if int(parallel.unreplicate(state.step, mode)) == 4:
        state = state.replace(params={**state.params, 'r_glo': jax.tree.map(lambda x: x * jnp.nan,
                                                                             state.params['r_glo'])})
      return mapped(state, *batch)

    return step

  monkeypatch.setattr(train.parallel, 'map_per_device', poisoned)
  opened, closed = _record_checkpoint_managers(monkeypatch)
  workdir = tmp_path / 'run'
  with pytest.raises(checkpoints.NonFiniteError, match=r'p17: the loss term l_glo is nan at step 5 \(l_glo=nan, '
                                                 r'total=nan; .*last good checkpoint \(step 4\)'):
    train.train(_config(), workdir)
  assert _steps(workdir) == [2, 4]
  # Every Orbax manager was closed despite the error (an abandoned one keeps its background threads).
  assert opened and closed == opened
  _assert_trees_equal(_restore_step(_config(), workdir, 4), _restore_step(_config(), reference.workdir, 4))


# ------------------------------------------------------------------------------------------------
# 3. Bad inputs: configs, workdirs, data files.


def _parse_flags(*args):
  """gcad_jax.main's --config flag (locked config) on these command-line arguments."""
  values = flags.FlagValues()
  argv = ['main', f'--config={TINY}', *args]
  config_flags.DEFINE_config_file('config', None, '', flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def test_unknown_config_key_is_refused_on_the_command_line_and_in_a_config_file():
  assert _parse_flags('--config.train.epochs=2').train.epochs == 2
  with pytest.raises(AttributeError, match='Did you mean "epochs" instead of "epoch"'):
    _parse_flags('--config.train.epoch=2')
  config = _config()
  config.train.epoch = 2  # A typo in a config file adds a field; validate names it.
  with pytest.raises(configlib.ConfigError, match=r"config\.train\.epoch: is not a config field"):
    configlib.validate(config)
  configlib.validate(train_worker.load_config(ROOT / 'configs' / 'teacher_p17.py'))  # Its fields are known.


@pytest.mark.parametrize('key, value, message', [
    ('train.epochs', -3, r'config\.train\.epochs: -3 must be > 0'),
    ('model.scales', (17, 65), r'config\.model\.scales: receptive field 65 is not one of \(17, 33\)'),
    ('dataset.category', 'breakfast_boxx',
     r"config\.dataset\.category: 'breakfast_boxx' is neither an MVTec LOCO category .* nor a folder with a "
     r'defects_config\.json under config\.dataset\.manual_dir'),
    ('train.batch_size', 12, r'config\.train\.batch_size: 12 is not divisible by the 8'),
    ('score.fusion', 'mean', r"config\.score\.fusion: 'mean' is not one of"),
])
def test_bad_values_are_refused_before_any_work_naming_the_key(tmp_path, key, value, message):
  section, name = key.split('.')
  config = _config()
  config[section][name] = value
  with pytest.raises(configlib.ConfigError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_a_category_folder_with_a_defects_config_is_accepted(tmp_path):
  config = _config({'dataset.category': 'my_product', 'dataset.manual_dir': str(tmp_path)})
  with pytest.raises(configlib.ConfigError, match='config.dataset.category'):
    configlib.validate(config)
  (tmp_path / 'my_product').mkdir()
  (tmp_path / 'my_product' / layout.DEFECTS_CONFIG).write_text('[]')
  configlib.validate(config)


def test_eval_refuses_a_workdir_of_another_config_or_checkpoints_of_another_shape(reference, tmp_path):
  workdir = _copy(reference, tmp_path)
  other = _config({'dataset.category': 'synthetic_grid'})
  with pytest.raises(configlib.ConfigError, match=r"config\.dataset\.category: .* was trained with "
                                                  r"'synthetic_tray' .*this config has 'synthetic_grid'"):
    train.train_and_evaluate(other, str(workdir), mode='eval')
  with pytest.raises(configlib.ConfigError, match=r'config\.unet\.wf: .* was trained with 3 .*has 4'):
    train.train_and_evaluate(_config({'unet.wf': 4}), str(workdir), mode='eval')
  (workdir / 'config.json').unlink()  # Without the record, the checkpoint's shapes still refuse it.
  with pytest.raises(ValueError, match=r"other shapes than this config builds.*sections that differ: \['unet'\]"):
    train.train_and_evaluate(_config({'unet.wf': 4}), str(workdir), mode='eval')
  assert not (workdir / 'p17' / 'corrupt_checkpoints').exists()


@pytest.mark.parametrize('key, value, message', [
    ('seed', 1, r'config\.seed: .* trained with 0 .*this config has 1'),
    ('optim.learning_rate', 0.5, r'config\.optim\.learning_rate: .* trained with [0-9.e-]+ .*has 0\.5'),
    ('train.epochs', 4, r'config\.train\.epochs: .* trained with 3 .*has 4'),
])
def test_a_resume_under_another_seed_optimiser_or_schedule_is_refused_and_the_record_kept(reference, tmp_path, key,
                                                                                        value, message):
  workdir = _copy(reference, tmp_path)
  record = {name: (workdir / name).read_bytes() for name in ('config.json', 'provenance.json')}
  config = _config({'train.log_every_steps': 1, 'train.keep_checkpoints': 5})  # These may change on a resume.
  if '.' in key:
    config[key.split('.')[0]][key.split('.')[1]] = value
  else:
    config[key] = value
  with pytest.raises(configlib.ConfigError, match=message):
    train.train(config, workdir)
  assert {name: (workdir / name).read_bytes() for name in record} == record
  assert _steps(workdir) == [4, 6]


def test_a_resume_keeps_the_first_runs_config_and_adds_its_provenance(reference, tmp_path):
  workdir = _copy(reference, tmp_path)
  config_json = (workdir / 'config.json').read_bytes()
  first = json.loads((workdir / 'provenance.json').read_text())
  train.train(_config({'train.log_every_steps': 1}), workdir)  # Already trained: nothing to do but record it.
  record = json.loads((workdir / 'provenance.json').read_text())
  assert (workdir / 'config.json').read_bytes() == config_json
  assert {k: v for k, v in record.items() if k != 'resumes'} == first
  assert len(record['resumes']) == 1 and record['resumes'][0]['train_wall_s'] >= 0


def _mutations(rng: np.random.Generator, data: bytes) -> list[bytes]:
  """Malformed versions of a file: empty, truncated, header only, random bytes, bytes flipped, garbage appended."""
  flipped = bytearray(data)
  for i in rng.integers(0, len(data), 6):
    flipped[i] ^= int(rng.integers(1, 256))
  return [b'', data[:int(rng.integers(1, len(data)))], data[:16], rng.bytes(len(data)), bytes(flipped),
          data + rng.bytes(64)]


BAD_DEFECTS_CONFIGS = [
    '', '{}', '[1]', 'null', '[{"defect_name": 3}]', '[{"defect_name": "a"}]', '{"defect_name": "a"}',
    '[{"defect_name": "a", "pixel_value": 300, "saturation_threshold": 1.0, "relative_saturation": true}]',
    '[{"defect_name": "a", "pixel_value": 255, "saturation_threshold": NaN, "relative_saturation": true}]',
    '[{"defect_name": "a", "pixel_value": 255, "saturation_threshold": -1, "relative_saturation": false}]',
    '[{"defect_name": "a", "pixel_value": "255", "saturation_threshold": 1.0, "relative_saturation": 1}]',
    '[' * 5000, '\ufeff[]', '\x00\xff',
]


def _load_module(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def loco_fixture(tmp_path_factory):
  """tests/fixtures/make_eval_fixture.py's data set (test split, ground truth) and continuous maps."""
  gen = _load_module(ROOT / 'tests' / 'fixtures' / 'make_eval_fixture.py')
  return gen.generate(tmp_path_factory.mktemp('fuzz'), map_sets=('continuous',)), gen.CATEGORY


def test_fuzzed_files_give_only_clear_errors_in_the_loaders(loco_fixture, tmp_path):
  """Every layout reader, on malformed PNGs (images, masks) and defects_config.json: a result or a
  LocoFormatError with a message naming the file; nothing else (seeded, deterministic)."""
  root, category = loco_fixture
  cat = root / 'dataset' / category
  rng = np.random.default_rng(7)
  sources = {'image': cat / 'test' / 'logical_anomalies' / '000.png',
             'mask': next((cat / 'ground_truth' / 'logical_anomalies' / '000').glob('*.png'))}
  outcomes = {'ok': 0, 'error': 0}
  for kind, source in sources.items():
    for i, data in enumerate(_mutations(rng, source.read_bytes())):
      path = tmp_path / f'{kind}_{i}.png'
      path.write_bytes(data)
      for read in (layout.read_png_header, layout.read_rgb_image, layout.read_mask):
        try:
          read(path)
          outcomes['ok'] += 1
        except layout.LocoFormatError as e:
          assert str(path) in str(e), (read.__name__, e)
          outcomes['error'] += 1
  texts = [t.encode() for t in BAD_DEFECTS_CONFIGS] + _mutations(rng, (cat / 'defects_config.json').read_bytes())
  for i, text in enumerate(texts):
    path = tmp_path / f'defects_{i}.json'
    path.write_bytes(text)
    try:
      layout.read_defects_config(path)
      outcomes['ok'] += 1
    except layout.LocoFormatError as e:
      assert str(path) in str(e), e
      outcomes['error'] += 1
  assert outcomes['error'] > 40, outcomes


def test_fuzzed_inputs_to_the_evaluator_and_the_builder_never_look_complete(loco_fixture, tmp_path, capsys):
  """`python -m gcad_jax.evaluate` with one malformed map TIFF, mask, image or defects_config.json: exit 0 with
  metrics.json, or exit 2 with one `error:` line and no metrics.json. tfds_loco.build on malformed files:
  LocoFormatError and nothing built."""
  root, category = loco_fixture
  rng = np.random.default_rng(11)
  cases = [('maps', f'{category}/test/logical_anomalies/001.tiff'),
           ('maps', f'{category}/test/good/000.tiff'),
           ('dataset', f'{category}/ground_truth/structural_anomalies/000/000.png'),
           ('dataset', f'{category}/test/good/001.png'),
           ('dataset', f'{category}/defects_config.json')]
  codes = []
  for n, (tree, name) in enumerate(cases):
    original = root / ('maps/continuous' if tree == 'maps' else tree) / name
    for m, data in enumerate(_mutations(rng, original.read_bytes())[:4]):
      work = tmp_path / f'{n}_{m}'
      shutil.copytree(root / 'dataset', work / 'dataset')
      shutil.copytree(root / 'maps' / 'continuous', work / 'maps')
      (work / tree / name).write_bytes(data)
      out = work / 'out'
      code = evaluate.main(['--dataset_base_dir', str(work / 'dataset'), '--anomaly_maps_dir', str(work / 'maps'),
                            '--object_name', category, '--output_dir', str(out), '--num_workers', '1'])
      err = capsys.readouterr().err
      codes.append(code)
      assert code in (0, 2), (name, m, err)
      assert (out / 'metrics.json').exists() == (code == 0), (name, m, err)
      if code == 2:
        assert [line for line in err.splitlines() if not line.startswith('warning: ')][0].startswith('error: '), err
        assert not out.exists() or not any(out.iterdir())
  assert codes.count(2) >= 12, codes

  # The builder (a category with train and validation splits): random bytes, a bare header, truncated JSON.
  dummy = _load_module(pathlib.Path(tfds_build.mvtec_loco.__file__).parent / 'dummy_data' / 'make_dummy_data.py')
  for n, (name, which) in enumerate([('train/good/001.png', 3), ('ground_truth/logical_anomalies/000/000.png', 2),
                                     ('defects_config.json', 1)]):
    cat = dummy.write_category(tmp_path / f'manual_{n}', 'pushpins')
    (cat / name).write_bytes(_mutations(rng, (cat / name).read_bytes())[which])
    with pytest.raises(layout.LocoFormatError, match=str(cat / name)):
      tfds_build.build('pushpins', tmp_path / f'manual_{n}', tmp_path / f'data_{n}', quiet=True)
    assert not (tmp_path / f'data_{n}').exists() or not any((tmp_path / f'data_{n}').rglob('*'))


# ------------------------------------------------------------------------------------------------
# 4. Weights cannot run code.


class _Evil:
  """Unpickling this would create a folder: the side effect a refused pickle must never have."""

  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (os.makedirs, (self.target,))


@pytest.mark.parametrize('name', ['teacher.pth', 'teacher.msgpack', 'teacher'])
def test_a_user_teacher_that_is_a_pickle_is_refused_not_run(tmp_path, name):
  """config.teacher.init=<path> (docs/method.md §3.5): a pickle, whatever its name, is refused before any code of
  it runs. (Torch checkpoints of the distillation targets: tests/test_backbones.py.)"""
  target = tmp_path / 'pwned'
  path = tmp_path / name
  path.write_bytes(pickle.dumps({'format': teacher_weights.FORMAT, 'p': 17, 'params': _Evil(str(target))}))
  template = {'params': {'kernel': np.zeros((3, 3, 3, 8), np.float32)}}
  with pytest.raises(ValueError, match=f'{path}: .*(never from pickles|not a flax msgpack teacher file)'):
    teacher_weights.load_teacher_params(str(path), 17, template)
  assert not target.exists()


# ------------------------------------------------------------------------------------------------
# 5. Outputs are atomic.


def test_atomic_write_keeps_the_old_file_on_failure_and_uses_a_hidden_name(tmp_path, monkeypatch):
  path = tmp_path / 'validation_losses.json'
  atomic_io.write_json(path, {'a': 1})
  assert atomic_io.temporary_path(path).name.startswith('.') and atomic_io.temporary_path(path).suffix == '.json'
  monkeypatch.setattr(atomic_io.os, 'replace', lambda *a: (_ for _ in ()).throw(OSError('disk full')))
  with pytest.raises(OSError, match='disk full'):
    atomic_io.write_json(path, {'a': 2})
  assert [p.name for p in tmp_path.iterdir()] == ['validation_losses.json']
  assert json.loads(path.read_text()) == {'a': 1}
