"""gcad_jax/parallel.py: the `data` mesh, shard_map vs pmap, batch checks, two processes on loopback (docs/method.md §13)."""

import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from gcad_jax import configlib, parallel, train
import train_worker

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / 'configs' / 'tiny.py'


def _tiny():
  return train_worker.load_config(TINY)


def test_mesh_is_one_data_axis_over_all_devices():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ('data',)
  assert mesh.size == jax.device_count() == 8


def test_batch_not_divisible_by_devices_is_refused_naming_the_key():
  config = _tiny()
  config.train.batch_size = 12
  with pytest.raises(configlib.ConfigError, match=r'config\.train\.batch_size: 12 .* 8 devices'):
    parallel.check_batch_size(config, 8)
  assert parallel.check_batch_size(config, 4) == 3


@pytest.mark.parametrize('mode', parallel.MODES)
def test_mapped_step_sees_its_rows_and_averages_over_devices(mode):
  mesh = parallel.make_mesh()
  state = parallel.replicate({'w': np.float32(2.0)}, mode, mesh)
  batch = parallel.shard_batch(np.arange(16, dtype=np.float32).reshape(16, 1), mode, mesh)

  def step(state, x):
    first = jax.lax.axis_index('data') * x.shape[0]  # the global row of this device's first example
    mean = jax.lax.pmean(x.mean(), 'data')
    return {'w': state['w'] * mean}, jax.lax.pmean(x[0, 0] - first, 'data')

  state, offset = parallel.map_per_device(step, mode, mesh)(state, batch)
  assert parallel.unreplicate(state, mode)['w'] == pytest.approx(2.0 * 7.5)
  assert parallel.unreplicate(offset, mode) == 0.0  # device i holds rows 2i, 2i+1


@pytest.mark.parametrize('mode', parallel.MODES)
def test_data_parallel_carries_the_mode_and_mesh_and_refuses_an_unknown_mode(mode):
  config = _tiny()
  config.parallel = mode
  par = parallel.DataParallel.from_config(config)
  assert (par.mode, par.size) == (mode, jax.device_count())
  state = par.replicate({'w': np.float32(3.0)})
  total = par.map(lambda s, x: {'w': s['w'] * jax.lax.psum(x.sum(), 'data')})(state, par.shard(np.ones((8, 1))))
  assert par.unreplicate(total)['w'] == pytest.approx(24.0)
  with pytest.raises(configlib.ConfigError, match=r"config\.parallel: 'pjit' is not one of"):
    parallel.DataParallel('pjit', par.mesh)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _communicate_all(procs, timeout: float) -> list[str]:
  """Outputs of all `procs`; if any outlives `timeout` seconds, kills them all and fails with every output."""
  deadline = time.monotonic() + timeout
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=max(deadline - time.monotonic(), 1))[0])
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    tails = [f'--- process {i}:\n{(p.communicate()[0] or "")[-3000:]}' for i, p in enumerate(procs)]
    pytest.fail(f'the processes ran past {timeout:.0f}s (a hang in a collective?):\n' + '\n'.join(tails))
  return outputs


@pytest.mark.slow
def test_two_processes_form_one_mesh_and_train_like_one_process(tmp_path, monkeypatch):
  """2 processes × 2 fake CPU devices (gloo) = one 4-device mesh: psum is right, and 4 steps of training
  give the parameters of one process with 4 devices (to 1e-6: only the all-reduce order differs).

  Process 1 starts training 3 s late: it must not see process 0's fresh `checkpoints` folder as a run to
  resume (that opened one Orbax manager, a barrier, more than process 0 had, and hung 4 of 28 runs).
  """
  overrides = {'train.epochs': 2, 'train.rglo_start_epoch': 10.0, 'augment.enabled': False}
  port = _free_port()
  env = dict(os.environ, GCAD_TEST_DEVICES='2', GCAD_TEST_COORDINATOR=f'127.0.0.1:{port}',
             GCAD_TEST_NUM_PROCESSES='2', **train_worker.cache_env())
  command = [sys.executable, str(ROOT / 'tests' / 'train_worker.py'), f'--config={TINY}',
             f'--workdir={tmp_path / "two"}', '--mode=train', *train_worker.flags(overrides)]
  envs = [dict(env, GCAD_TEST_PROCESS_ID=str(i), GCAD_TEST_START_DELAY=str(3 * i)) for i in range(2)]
  procs = [subprocess.Popen(command, env=e, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for e in envs]
  outputs = _communicate_all(procs, timeout=300)
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f'process {i} failed:\n{out[-3000:]}'
    assert f'PSUM process {i}/2 devices 4: 6.0 expected 6.0' in out

  config = train_worker.load_config(TINY, overrides)
  monkeypatch.setattr(train.input_pipeline, 'load_split', train_worker.fake_split)
  one = train.train(config, tmp_path / 'one', mesh=parallel.make_mesh(jax.devices()[:4]))[17]
  two = train_worker.restore_final(config, tmp_path / 'two', 17)
  one = parallel.unreplicate(one, config.parallel)
  assert int(two.step) == int(one.step) == 4
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
