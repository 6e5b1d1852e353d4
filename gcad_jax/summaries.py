"""TensorBoard scalars without a hard TensorFlow dependency, and the one progress line per log interval.

`clu.metric_writers` imports TensorFlow when it loads (so does `clu.periodic_actions`); `clu.metrics` does
not. The event files are written by the first of these that imports:

  1. clu's `SummaryWriter` (TensorFlow installed), behind clu's `AsyncWriter`, as before;
  2. tensorboardX's `SummaryWriter` (pure Python: `pip install 'gcad_jax[tensorboard]'`);
  3. nothing: one log line says so, and training goes on.

Every scalar is also logged at debug level (`--verbosity=1`); the INFO log keeps one line per interval.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import sys
import tempfile
import time
from typing import Mapping

from absl import logging

_NOTED_NO_WRITER = []  # one note per process


class _TensorboardX:
  """tensorboardX's event-file writer behind the write_scalars/flush/close of clu's writers."""

  def __init__(self, logdir: str):
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self._writer = tensorboardX.SummaryWriter(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for name, value in scalars.items():
      self._writer.add_scalar(name, float(value), global_step=int(step))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class _NoFiles:

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    del step, scalars

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class Writer:
  """Logs each scalar at debug level, then hands it to the event-file backend (or to none)."""

  def __init__(self, backend, name: str):
    self._backend, self.name = backend, name

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    logging.debug('[%d] %s', step, ', '.join(f'{k}={float(v):.6g}' for k, v in sorted(scalars.items())))
    self._backend.write_scalars(int(step), dict(scalars))

  def flush(self) -> None:
    self._backend.flush()

  def close(self) -> None:
    self._backend.close()


# TensorFlow's C++ INFO lines, written to stderr while it loads: TensorFlow 2.16+ logs them through absl's C++
# logging before that is set up, whatever TF_CPP_MIN_LOG_LEVEL says (measured with TensorFlow 2.21).
_TF_BANNER = ('I0000 ', 'WARNING: All log messages before absl::InitializeLog()', 'To enable the following ')


@contextlib.contextmanager
def _tensorflow_banner_at_debug():
  """Catches what is written to file descriptor 2 inside; replays it, the TensorFlow banner at debug level."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as caught:
    os.dup2(caught.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      caught.seek(0)
      for line in caught.read().decode(errors='replace').splitlines():
        if line.startswith(_TF_BANNER):
          logging.debug('tensorflow: %s', line)
        else:
          print(line, file=sys.stderr)


def _backend(logdir: str):
  """(backend, name): clu with TensorFlow, else tensorboardX, else none (noted once)."""
  with _tensorflow_banner_at_debug():
    try:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top (imports TensorFlow)
      clu_writer = metric_writers.AsyncWriter(metric_writers.SummaryWriter(logdir))
    except ImportError:
      clu_writer = None
  if clu_writer is not None:
    return clu_writer, 'clu'
  try:
    return _TensorboardX(logdir), 'tensorboardX'
  except ImportError:
    pass
  if not _NOTED_NO_WRITER:
    _NOTED_NO_WRITER.append(True)
    logging.info('No TensorBoard event files: neither TensorFlow (for clu\'s writer) nor tensorboardX is '
                 'installed; `pip install tensorboardX` (pure Python) to get them. Scalars go to the '
                 'debug log only.')
  return _NoFiles(), 'none'


def create_writer(logdir, *, main_process: bool = True) -> Writer:
  """A scalar writer of TensorBoard event files in `logdir`; other processes of a multi-host run log only."""
  if not main_process:
    return Writer(_NoFiles(), 'none')
  return Writer(*_backend(os.fspath(logdir)))


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'


class Progress:
  """Steps per second over the last log interval and the time left, for the progress line."""

  def __init__(self, start_step: int, total_steps: int, clock=time.monotonic):
    self._clock, self.total_steps = clock, total_steps
    self._step, self._time = start_step, clock()

  def update(self, step: int) -> tuple[float | None, str]:
    """(steps/s since the previous call, ETA text) at `step`; the rate is None when no time has passed."""
    now = self._clock()
    elapsed, steps = now - self._time, step - self._step
    self._step, self._time = step, now
    if elapsed <= 0 or steps <= 0:
      return None, '?'
    rate = steps / elapsed
    return rate, _duration((self.total_steps - step) / rate)


# Library lines that are detail, not progress: shown only at debug verbosity (`--verbosity=1`).
_DETAIL_PATHS = ('/orbax/', '/tensorflow_datasets/', '/jax/_src/xla_bridge.py')
_DETAIL_MESSAGES = ('OpenCV is not installed',)  # TFDS, once per image feature: PIL decodes instead


def _is_detail(record) -> bool:
  if record.levelno >= std_logging.ERROR:
    return False
  if any(m in str(record.msg) for m in _DETAIL_MESSAGES):
    return True
  return record.levelno < std_logging.WARNING and any(p in record.pathname for p in _DETAIL_PATHS)


def quiet_library_logs() -> None:
  """Keeps Orbax's per-save, TFDS's build and JAX's backend-probe INFO lines out of the log unless
  absl's verbosity is debug; their warnings and errors still show. Also hides TensorFlow's C++ INFO banner
  (oneDNN, CPU instructions) when TensorFlow is imported later."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  logging.get_absl_handler().addFilter(
      lambda record: logging.get_verbosity() >= logging.DEBUG or not _is_detail(record))
