"""gcad_jax/train.py: optimiser, train step, staging, device invariance, checkpoints (docs/method.md §7, §11.5–6, §13)."""

import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

from gcad_jax import configlib, eloc_stats, parallel, train
import train_worker

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / 'configs' / 'tiny.py'
# The step tests: augmentation on, skips already faded, a larger learning rate so one step shows.
STEP_OVERRIDES = {'optim.learning_rate': 1e-3}


def _count(opt_state) -> int:
  return int(optax.tree_utils.tree_get(opt_state, 'count'))


def _assert_trees_equal(a, b, atol=0.0, rtol=0.0):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if atol or rtol:
      np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
    else:
      np.testing.assert_array_equal(x, y)


def _assert_trees_close(a, b, rel):
  """|a − b| ≤ rel · max|a|, leaf by leaf (a tolerance on the scale of each array)."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=0, atol=rel * float(np.abs(x).max()))


def test_optimizer_is_pytorch_style_coupled_decay_adam():
  """docs/method.md §11.6: chain(add_decayed_weights, adam) = torch.optim.Adam(weight_decay=wd), two steps by hand."""
  config = configlib.base_config()
  lr, wd, b1, b2, eps = 1e-4, 1e-5, 0.9, 0.999, 1e-8
  params = {'w': np.array([0.5, -1.5, 2.0], np.float32)}
  grads = [np.array([0.1, -0.2, 1e-6], np.float32), np.array([-0.3, 0.05, 0.0], np.float32)]
  tx = train.make_optimizer(config)
  state, p = tx.init(params), params
  expected, m, v = params['w'].astype(np.float64), 0.0, 0.0
  for t, g in enumerate(grads, start=1):
    updates, state = tx.update({'w': g}, state, p)
    p = optax.apply_updates(p, updates)
    g = g + wd * expected  # PyTorch adds the decay to the gradient, before the moments.
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    expected = expected - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
  np.testing.assert_allclose(p['w'], expected, rtol=1e-6)


@functools.lru_cache(maxsize=None)
def _setup():
  """Tiny nets, a stage-1 host state with E_loc statistics, and a fixed uint8 batch of 8."""
  config = train_worker.load_config(TINY, STEP_OVERRIDES)
  nets, trainable, e_loc_params = train._init(config, 17, (64, 64))
  images = train_worker.fake_split(config, 'train').images[:8]
  one_device = parallel.DataParallel('shard_map', parallel.make_mesh(jax.devices()[:1]))
  stats = eloc_stats.compute_eloc_stats(config, nets, e_loc_params, images, one_device)
  state = train.create_train_state(config, trainable, e_loc_params, stats)
  return config, nets, jax.device_get(state), images


@functools.lru_cache(maxsize=None)
def _step_fn(num_devices: int, mode: str, with_glo: bool):
  config, nets, _, _ = _setup()
  fn = functools.partial(train.train_step, nets=nets, config=config, steps_per_epoch=2, with_glo=with_glo)
  return parallel.map_per_device(fn, mode, parallel.make_mesh(jax.devices()[:num_devices]))


def _run(state, steps: int, num_devices: int = 1, mode: str = 'shard_map', with_glo: bool = True):
  """`steps` train steps on the fixed batch; returns (host state, [host metrics])."""
  config, _, _, images = _setup()
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  state, metrics = parallel.replicate(state, mode, mesh), []
  for _ in range(steps):
    state, m = _step_fn(num_devices, mode, with_glo)(state, parallel.shard_batch(images, mode, mesh))
    metrics.append(parallel.unreplicate(m, mode))
  return parallel.unreplicate(state, mode), metrics


def test_lglo_eglo_grad_ramp():
  """train.lglo_eglo_grad_ramp_epochs [I]: 0 keeps the joint loss; else 0 → 1 over that many epochs."""
  config = configlib.base_config()
  assert train.eglo_grad_scale_in_lglo(config, 60.0) is None
  config.train.lglo_eglo_grad_ramp_epochs = 10.0
  shares = [float(train.eglo_grad_scale_in_lglo(config, e)) for e in (50.0, 55.0, 60.0, 400.0)]
  np.testing.assert_allclose(shares, [0.0, 0.5, 1.0, 1.0])
  config.train.lglo_eglo_grad_ramp_epochs = -1.0
  with pytest.raises(configlib.ConfigError, match='lglo_eglo_grad_ramp_epochs'):
    configlib.validate(config)


@pytest.mark.slow
def test_cosine_schedule_scales_the_adam_step_by_its_factor():
  """optim.schedule='cosine' [I]: factor 1 → 0.5 → 0 over the run; at mid-run a step moves half as far."""
  config, nets, state, images = _setup()
  cosine = config.copy_and_resolve_references()
  cosine.optim.schedule = 'cosine'
  steps_per_epoch = 2
  total = steps_per_epoch * config.train.epochs
  assert train.learning_rate_factor(config, total // 2, total) == 1.0
  np.testing.assert_allclose([float(train.learning_rate_factor(cosine, s, total)) for s in (0, total // 2, total)],
                             [1.0, 0.5, 0.0], atol=1e-6)
  mesh = parallel.make_mesh(jax.devices()[:1])
  mid = state.replace(step=np.int32(total // 2))
  deltas = []
  for c in (config, cosine):
    fn = functools.partial(train.train_step, nets=nets, config=c, steps_per_epoch=steps_per_epoch, with_glo=False)
    after, _ = parallel.map_per_device(fn, 'shard_map', mesh)(parallel.replicate(mid, 'shard_map', mesh),
                                                              parallel.shard_batch(images, 'shard_map', mesh))
    after = parallel.unreplicate(after, 'shard_map')
    deltas.append(jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), after.params['r_loc'],
                               mid.params['r_loc']))
  _assert_trees_close(jax.tree.map(lambda d: 0.5 * d, deltas[0]), deltas[1], rel=1e-4)


def test_eloc_statistics_standardise_the_training_features():
  """docs/method.md §11.7: with the streamed μ, σ the training features have per-channel mean ≈ 0, std ≈ 1."""
  config, nets, state, images = _setup()
  x = train.input_pipeline.preprocess(None, images, config, False)
  f = np.asarray(train.gcad.eloc_features(nets, state.e_loc_params, state.eloc_stats, x))
  np.testing.assert_allclose(f.mean(axis=(0, 1, 2)), 0.0, atol=1e-3)
  np.testing.assert_allclose(f.std(axis=(0, 1, 2)), 1.0, atol=1e-3)


@pytest.mark.slow
def test_one_train_step_lowers_the_loss_on_a_fixed_batch():
  config, _, state, _ = _setup()
  state = train.start_rglo(config, state)
  after, (first,) = _run(state, 1)
  _, (again,) = _run(after.replace(step=state.step), 1)  # Same step: same augmentation and skip weights.
  for key in ('total', 'l_loc', 'l_kd', 'l_glo'):
    assert again[key] < first[key], (key, first[key], again[key])


def test_rglo_and_its_optimiser_state_untouched_before_the_switch_then_updated():
  """docs/method.md §7.3, §11.5: stage 1 leaves R_glo alone and has no R_glo optimiser state; stage 2 starts it."""
  config, _, state, _ = _setup()
  stage1, metrics = _run(state, 2, with_glo=False)
  assert stage1.opt_state_rglo is None and _count(stage1.opt_state_main) == 2
  _assert_trees_equal(stage1.params['r_glo'], state.params['r_glo'])
  assert all(m['l_glo'] == 0 for m in metrics)
  for net in train.MAIN:
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(stage1.params[net]),
                                              jax.tree.leaves(state.params[net]))), net
  stage2, metrics = _run(train.start_rglo(config, stage1), 1)
  assert _count(stage2.opt_state_rglo) == 1 and _count(stage2.opt_state_main) == 3
  assert metrics[0]['l_glo'] > 0
  assert all(np.any(a != b) for a, b in zip(jax.tree.leaves(stage2.params['r_glo']),
                                            jax.tree.leaves(state.params['r_glo'])))


@pytest.mark.slow
def test_same_steps_on_1_and_8_devices_and_with_pmap_give_the_same_parameters():
  """Augmentation on (keys per global example), two stage-2 steps: 1 device, 8 devices (shard_map), 8
  devices (pmap). Only the order of the batch reductions differs: parameters agree to 1e-6 (absolute),
  Adam moments to 1e-5 of each array's largest value."""
  config, _, state, _ = _setup()
  state = train.start_rglo(config, state)
  one, _ = _run(state, 2, num_devices=1)
  eight, _ = _run(state, 2, num_devices=8)
  pmapped, _ = _run(state, 2, num_devices=8, mode='pmap')
  _assert_trees_equal(one.params, eight.params, atol=1e-6)
  _assert_trees_equal(eight.params, pmapped.params, atol=1e-6)
  _assert_trees_close(one.opt_state_rglo, pmapped.opt_state_rglo, rel=1e-5)


@pytest.mark.slow
def test_cached_eloc_features_train_like_the_live_teacher():
  """`train.cache_eloc` (augmentation off): two stage-2 steps on 8 devices fed cached features give the
  parameters of the same steps with E_loc run inside the step (up to XLA's batching of the teacher)."""
  config = train_worker.load_config(TINY, {**STEP_OVERRIDES, 'augment.enabled': False,
                                           'train.cache_eloc': True})
  configlib.validate(config)
  _, _, host, images = _setup()
  nets = train.gcad.build_nets(config, 17)
  state = train.start_rglo(config, host)
  features, stats = eloc_stats.cached_eloc_features(config, nets, state.e_loc_params, images, state.eloc_stats)
  assert features.shape == (8, 64, 64, config.eloc.d_loc) and features.dtype == np.float32
  _assert_trees_equal(stats, state.eloc_stats)
  _, fresh = eloc_stats.cached_eloc_features(config, nets, state.e_loc_params, images)  # stats from one pass
  _assert_trees_equal(fresh, state.eloc_stats, rtol=1e-4, atol=1e-5)
  mesh = parallel.make_mesh(jax.devices()[:8])
  results = []
  for cached in (False, True):
    fn = functools.partial(train.train_step, nets=nets, config=config, steps_per_epoch=2, with_glo=True)
    step = parallel.map_per_device(fn, 'shard_map', mesh)
    s = parallel.replicate(state, 'shard_map', mesh)
    batch = (images, features) if cached else (images,)
    for _ in range(2):
      s, _ = step(s, *parallel.shard_batch(batch, 'shard_map', mesh))
    results.append(parallel.unreplicate(s, 'shard_map'))
  _assert_trees_equal(results[0].params, results[1].params, atol=1e-5)


def test_cache_eloc_with_augmentation_is_refused():
  config = train_worker.load_config(TINY, {'train.cache_eloc': True})
  with pytest.raises(configlib.ConfigError, match=r'config\.train\.cache_eloc'):
    configlib.validate(config)


@pytest.mark.parametrize('key, value, message', [
    ('train.epochs', -1, r'config\.train\.epochs: -1 must be > 0'),
    ('model.scales', (17, 21), r'config\.model\.scales: receptive field 21 is not one of \(17, 33\)'),
    ('train.checkpoint_every_steps', 0, r'config\.train\.checkpoint_every_steps'),
    ('parallel', 'pjit', r'config\.parallel'),
])
def test_config_validation_names_the_key(key, value, message):
  config = train_worker.load_config(TINY)
  *sections, name = key.split('.')
  target = config
  for section in sections:
    target = target[section]
  target[name] = value
  with pytest.raises(configlib.ConfigError, match=message):
    configlib.validate(config)


@pytest.mark.parametrize('reduction, constant_l_kd', [('sum_per_image', 64 * 64), ('mean_per_pixel', 1.0)])
def test_a_collapsed_eglo_is_reported(reduction, constant_l_kd, caplog):
  """L_kd at the standardised features' variance (a constant E_glo): warned; 30 % of it reproduced: silent."""
  config = train_worker.load_config(TINY, {'train.loss_reduction': reduction})
  for l_kd, warned in ((1.001 * constant_l_kd, True), (0.7 * constant_l_kd, False)):
    caplog.clear()
    explained = train.kd_explained_fraction(l_kd, config.dataset.image_size, reduction)
    assert explained == pytest.approx(1 - l_kd / constant_l_kd)
    train.warn_if_eglo_collapsed(33, {'l_kd': l_kd, 'l_glo': 0.1, 'kd_explained': explained})
    assert ('p33: E_glo and U reproduce' in caplog.text) == warned, caplog.text


def test_batch_that_the_devices_cannot_split_is_refused_before_training(tmp_path):
  config = train_worker.load_config(TINY, {'train.batch_size': 12})
  with pytest.raises(configlib.ConfigError, match=r'config\.train\.batch_size: 12 is not divisible by the 8'):
    train.train(config, tmp_path)
  assert not any(tmp_path.iterdir())


def test_loco_config_requires_manual_dir():
  config = train_worker.load_config(ROOT / 'configs' / 'loco.py')
  with pytest.raises(configlib.ConfigError, match=r'config\.dataset\.manual_dir: is required'):
    configlib.validate(config)
  config.dataset.manual_dir = '/data/mvtec_loco'
  configlib.validate(config)


def _wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout: float) -> None:
  deadline = time.time() + timeout
  while not path.exists():
    if proc.poll() is not None:
      pytest.fail(f'the run ended (rc {proc.returncode}) before {path} appeared:\n{proc.stdout.read()[-3000:]}')
    if time.time() > deadline:
      proc.kill()
      pytest.fail(f'{path} did not appear within {timeout} s')
    time.sleep(0.1)


@pytest.mark.slow
def test_kill_after_a_checkpoint_and_restart_gives_the_uninterrupted_run(tmp_path, monkeypatch):
  """A real `gcad_jax.main` subprocess, SIGKILLed after its step-4 checkpoint (after the stage switch at
  step 2), then restarted with the same command, ends bitwise equal to an uninterrupted run (CPU, 8 devices)."""
  config = train_worker.load_config(TINY)
  monkeypatch.setattr(train.input_pipeline, 'load_split', train_worker.fake_split)
  reference = parallel.unreplicate(train.train(config, tmp_path / 'ref')[17], config.parallel)
  assert int(reference.step) == 6
  assert _count(reference.opt_state_main) == 6 and _count(reference.opt_state_rglo) == 4  # R_glo from step 2
  saved = json.loads((tmp_path / 'ref' / 'config.json').read_text())
  assert saved['train']['epochs'] == 3 and saved['model']['scales'] == [17]
  info = json.loads((tmp_path / 'ref' / 'provenance.json').read_text())
  assert info['device_count'] == 8 and info['seed'] == 0 and info['train_wall_s'] > 0
  assert info['host_cpu'] and 'xla_force_host_platform_device_count=8' in info['xla_flags']
  assert list((tmp_path / 'ref' / 'p17').glob('events.out.tfevents.*'))

  workdir = tmp_path / 'run'
  command = [sys.executable, str(ROOT / 'tests' / 'train_worker.py'), f'--config={TINY}', f'--workdir={workdir}',
             '--mode=train']
  env = dict(os.environ, **train_worker.cache_env())
  first = subprocess.Popen(command, env=dict(env, GCAD_TEST_PAUSE_AT='4'), cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  _wait_for(workdir / 'paused', first, timeout=240)
  first.send_signal(signal.SIGKILL)
  first.communicate(timeout=60)
  assert first.returncode == -signal.SIGKILL
  assert sorted(int(p.name) for p in (workdir / 'p17' / 'checkpoints').iterdir() if p.name.isdigit()) == [2, 4]

  second = subprocess.run(command, env=env, cwd=ROOT, text=True, capture_output=True, timeout=300)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'resumed from' in second.stderr and 'at step 4 (epoch 2, batch 0)' in second.stderr
  resumed = train_worker.restore_final(config, workdir, 17)
  _assert_trees_equal(resumed, reference)

  # --mode=eval: validation losses from the latest checkpoint (the fake data have no test split to score).
  config.score.enabled = False
  losses = train.train_and_evaluate(config, str(workdir), mode='eval')[17]
  assert losses['step'] == 6 and losses['num_images'] == 5
  written = json.loads((workdir / 'p17' / 'validation_losses.json').read_text())
  assert written['kd_explained'] == pytest.approx(1 - written['l_kd'] / (64 * 64))
  assert written['total'] == pytest.approx(written['l_loc'] + written['l_kd'] + written['l_glo'], rel=1e-5)

  # A finished run started again trains nothing and does not cache E_loc features it would not use.
  cached = train_worker.load_config(TINY, {'augment.enabled': False, 'train.cache_eloc': True})
  def no_caching(*args, **kwargs):
    raise AssertionError('E_loc features cached for a scale that is already trained')
  monkeypatch.setattr(eloc_stats, 'cached_eloc_features', no_caching)
  again = train.train(cached, workdir)[17]
  _assert_trees_equal(parallel.unreplicate(again, config.parallel), reference)

  # A config that builds other shapes is refused, naming what differs.
  saved_config = (workdir / 'config.json').read_text()
  other = train_worker.load_config(TINY, {'unet.wf': 4})
  with pytest.raises(ValueError, match=r"other shapes.*config sections that differ: \['unet'\]"):
    train.train(other, workdir)
  assert (workdir / 'config.json').read_text() == saved_config  # Refused before writing anything.
