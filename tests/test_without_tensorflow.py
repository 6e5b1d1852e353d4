"""The main job without TensorFlow (an accelerator image has none): train, evaluate and predict in
subprocesses where `tensorflow` cannot be imported (tests/without_tensorflow.py); TFDS builds and reads the
data set through array_record. Also checks the log: one progress line per log interval, no library noise."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

from tfds_loco import synthetic
import train_worker

ROOT = pathlib.Path(__file__).resolve().parents[1]
HIDE = [sys.executable, str(ROOT / 'tests' / 'without_tensorflow.py')]
COUNTS = {'train': 8, 'validation': 4, 'good': 2, 'logical': 2, 'structural': 2}


def _run(args, tmp_path, timeout=600):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', **train_worker.cache_env())
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # What a user's shell has: the entry points set it themselves.
  return subprocess.run(HIDE + args, cwd=ROOT, env=env, text=True, capture_output=True, timeout=timeout)


def test_the_wrapper_hides_tensorflow_as_if_it_were_not_installed(tmp_path):
  probe = tmp_path / 'probe.py'
  probe.write_text('import importlib.util\n'
                   'assert importlib.util.find_spec("tensorflow") is None\n'
                   'try:\n  import tensorflow\nexcept ModuleNotFoundError as e:\n  print("refused:", e.name)\n')
  out = _run([str(probe)], tmp_path)
  assert out.returncode == 0 and 'refused: tensorflow' in out.stdout, out.stderr[-2000:]


def test_train_evaluate_and_predict_run_without_tensorflow(tmp_path):
  data = tmp_path / 'data'
  synthetic.generate(data, 'synthetic_grid', seed=7, size=(96, 64), counts=COUNTS)
  workdir = tmp_path / 'w'
  main = _run(['-m', 'gcad_jax.main', f'--config={ROOT / "configs" / "tiny.py"}', f'--workdir={workdir}',
               '--config.dataset.category=synthetic_grid', f'--config.dataset.manual_dir={data}',
               f'--config.dataset.data_dir={tmp_path / "tfds"}', '--config.train.epochs=2'], tmp_path)
  log = main.stdout + main.stderr
  assert main.returncode == 0, log[-4000:]
  for name in ('report.md', 'metrics.json', 'score_norm.json', 'p17/validation_losses.json', 'config.json'):
    assert (workdir / name).is_file(), name
  events = list((workdir / 'p17').glob('events.out.tfevents.*'))
  if importlib.util.find_spec('tensorboardX'):
    assert events, 'tensorboardX is installed, so the scalars go to TensorBoard event files'
  else:
    assert not events and log.count('No TensorBoard event files') == 1, log[-4000:]

  # The log: one line per log interval (tiny: every 2 steps, the first and the last; 2 steps here).
  progress = re.findall(r'p17 step (\d+)/2 \(\d+%, epoch [\d.]+\) [\d.?e+-]+ steps/s, ETA \S+: total', log)
  assert progress == ['1', '2'], log[-4000:]
  for noise in ('Downloading and preparing', 'Generating dataset', 'oneDNN', 'Reusing dataset', 'OpenCV',
                'Unable to initialize backend', 'orbax'):
    assert noise not in log, (noise, log[-4000:])

  images = tmp_path / 'images'
  images.mkdir()
  for path in sorted((data / 'synthetic_grid' / 'test' / 'good').glob('*.png'))[:2]:
    (images / path.name).write_bytes(path.read_bytes())
  predict = _run(['-m', 'gcad_jax.predict', f'--workdir={workdir}', f'--images={images}',
                  f'--out={tmp_path / "out"}'], tmp_path)
  assert predict.returncode == 0, (predict.stdout + predict.stderr)[-4000:]
  assert len((tmp_path / 'out' / 'scores.csv').read_text().splitlines()) == 3


@pytest.mark.skipif(importlib.util.find_spec('tensorflow') is None, reason='TensorFlow is not installed')
def test_with_tensorflow_clus_writer_is_used_and_its_banner_kept_at_debug_level(tmp_path):
  """TensorFlow 2.21 prints its oneDNN and CPU-instruction INFO lines to stderr whatever TF_CPP_MIN_LOG_LEVEL
  says; they go to the debug log (a fresh process: TensorFlow prints them once, when it loads)."""
  code = ('import sys; from absl import logging; from gcad_jax import summaries; summaries.quiet_library_logs(); '
          'logging.set_verbosity(logging.INFO); w = summaries.create_writer(sys.argv[1]); '
          'w.write_scalars(3, {"loss": 1.5}); w.close(); print(w.name)')
  env = {k: v for k, v in os.environ.items() if not k.startswith('TF_')}
  out = subprocess.run([sys.executable, '-c', code, str(tmp_path)], cwd=ROOT, env=env, text=True,
                       capture_output=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip() == 'clu', out.stderr[-3000:]
  assert list(tmp_path.glob('events.out.tfevents.*'))
  assert 'oneDNN' not in out.stderr and 'InitializeLog' not in out.stderr, out.stderr[-3000:]
