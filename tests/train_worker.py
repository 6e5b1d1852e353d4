"""A subprocess for tests/test_train.py and tests/test_parallel.py: `gcad_jax.main` on fixed fake images.

  python tests/train_worker.py --config=configs/tiny.py --workdir=W --mode=train [--config.x=y ...]

Environment (all optional):
  GCAD_TEST_DEVICES        fake CPU devices of this process (default 8)
  GCAD_TEST_PAUSE_AT       after the checkpoint of this step is on disk, write `<workdir>/paused` and sleep
                           (the test then kills the process with SIGKILL)
  GCAD_TEST_SIGTERM_AT     send this process SIGTERM after logging this step (needs a log there)
  GCAD_TEST_KILL_IN_SAVE   SIGKILL itself while saving this step: every file written, the step folder not yet
                           renamed from its Orbax temporary name
  GCAD_TEST_KILL_IN_EVAL   SIGKILL itself while writing validation_losses.json (temporary file written)
  GCAD_TEST_COORDINATOR, GCAD_TEST_NUM_PROCESSES, GCAD_TEST_PROCESS_ID
                           join a multi-process run on loopback (gloo CPU collectives) and check a psum
  GCAD_TEST_START_DELAY    seconds to sleep before `gcad_jax.main` starts (after the psum): a slow process
"""

import os
import pathlib
import sys
import time

if __name__ == '__main__':  # Before jax is imported; the tests import this module only for fake_split.
  os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={os.environ.get("GCAD_TEST_DEVICES", "8")}'
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from gcad_jax import input_pipeline  # noqa: E402


def fake_split(config, split: str, builder=None) -> input_pipeline.SplitData:
  """The same fixed random images in every process: 16 training, 5 validation."""
  n = {'train': 16, 'validation': 5}[split]
  height, width = config.dataset.image_size
  rng = np.random.default_rng({'train': 0, 'validation': 1}[split])
  images = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
  return input_pipeline.SplitData(images=images, image_ids=[f'{split}/good/{i:03d}' for i in range(n)],
                                  labels=np.zeros(n, np.int32), original_sizes=np.full((n, 2), height, np.int32))


def load_config(path, overrides: dict | None = None):
  """get_config() of a config file, with {'train.epochs': 2, ...} applied (configlib.load_config)."""
  from gcad_jax import configlib  # pylint: disable=g-import-not-at-top
  return configlib.load_config(path, overrides)


def flags(overrides: dict) -> list[str]:
  """The same overrides as `--config.a.b=value` flags."""
  return [f'--config.{k}={v}' for k, v in overrides.items()]


def cache_env() -> dict:
  """Environment that gives a subprocess this process's persistent compilation cache."""
  return {'JAX_COMPILATION_CACHE_DIR': str(jax.config.jax_compilation_cache_dir or ''),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': str(jax.config.jax_persistent_cache_min_compile_time_secs)}


def restore_final(config, workdir, p: int):
  """The latest checkpoint of scale p in `workdir`, as a host (numpy) TrainState."""
  from gcad_jax import parallel, train
  _, state, _ = train.restore_latest(config, workdir, p)
  return parallel.unreplicate(state, config.parallel)


def _pause_after(step: int, workdir: str):
  from gcad_jax import checkpoints
  save = checkpoints.save_checkpoint

  def save_then_pause(mngr, state, meta, par, force=False):
    save(mngr, state, meta, par, force)
    if meta['step'] == step:
      mngr.wait_until_finished()
      (pathlib.Path(workdir) / 'paused').write_text(str(step))
      time.sleep(3600)

  checkpoints.save_checkpoint = save_then_pause


def _signal_after_log(step: int):
  import signal
  from gcad_jax import train
  log = train._log

  def log_then_signal(writer, config, p, done, *args):
    log(writer, config, p, done, *args)
    if done == step:
      os.kill(os.getpid(), signal.SIGTERM)

  train._log = log_then_signal


def _kill_in_save(step: int):
  import signal
  from orbax.checkpoint._src.path import atomicity
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def kill_before_rename(self, *args, **kwargs):
    if self._final_path.name == str(step):  # The step folder; its items ('state', 'meta') are complete.
      os.kill(os.getpid(), signal.SIGKILL)
    return await finalize(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = kill_before_rename


def _kill_in_eval():
  import signal
  from gcad_jax import atomic_io
  replace = os.replace

  def kill_before_replace(src, dst, *args, **kwargs):
    if pathlib.Path(dst).name == 'validation_losses.json':
      os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst, *args, **kwargs)

  atomic_io.os.replace = kill_before_replace


def _join_processes():
  from jax.sharding import PartitionSpec as P

  from gcad_jax import parallel
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=os.environ['GCAD_TEST_COORDINATOR'],
                             num_processes=int(os.environ['GCAD_TEST_NUM_PROCESSES']),
                             process_id=int(os.environ['GCAD_TEST_PROCESS_ID']))
  mesh = parallel.make_mesh()
  rows = np.arange(jax.device_count(), dtype=np.float32)[parallel.process_rows(jax.device_count())]
  total = parallel.map_per_device(lambda x: jax.lax.psum(x.sum(), parallel.AXIS), 'shard_map', mesh,
                                  num_replicated=0)(parallel.shard_batch(rows, 'shard_map', mesh))
  n = jax.device_count()
  print(f'PSUM process {jax.process_index()}/{jax.process_count()} devices {n}: '
        f'{float(parallel.unreplicate(total, "shard_map"))} expected {n * (n - 1) / 2}', flush=True)


def main():
  input_pipeline.load_split = fake_split
  if 'GCAD_TEST_COORDINATOR' in os.environ:
    _join_processes()
  from absl import app

  from gcad_jax import main as gcad_main
  flags = [a for a in sys.argv[1:] if a.startswith('--workdir=')]
  if 'GCAD_TEST_PAUSE_AT' in os.environ:
    _pause_after(int(os.environ['GCAD_TEST_PAUSE_AT']), flags[0].split('=', 1)[1])
  if 'GCAD_TEST_SIGTERM_AT' in os.environ:
    _signal_after_log(int(os.environ['GCAD_TEST_SIGTERM_AT']))
  if 'GCAD_TEST_KILL_IN_SAVE' in os.environ:
    _kill_in_save(int(os.environ['GCAD_TEST_KILL_IN_SAVE']))
  if 'GCAD_TEST_KILL_IN_EVAL' in os.environ:
    _kill_in_eval()
  time.sleep(float(os.environ.get('GCAD_TEST_START_DELAY', '0')))
  app.run(gcad_main.main, argv=[sys.argv[0]] + sys.argv[1:])


if __name__ == '__main__':
  main()
