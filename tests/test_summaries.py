"""gcad_jax/summaries.py: the TensorBoard writer's fallbacks and the progress line's rate and ETA."""

import builtins
import logging

import pytest

from gcad_jax import summaries


def test_without_tensorflow_and_tensorboardx_scalars_are_skipped_with_one_note(tmp_path, monkeypatch, caplog):
  real_import = builtins.__import__

  def no_writers(name, *args, **kwargs):
    if name.split('.')[0] in ('clu', 'tensorboardX', 'tensorflow'):
      raise ModuleNotFoundError(f'No module named {name!r}', name=name)
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_writers)
  monkeypatch.setattr(summaries, '_NOTED_NO_WRITER', [])
  with caplog.at_level(logging.INFO):
    writers = [summaries.create_writer(tmp_path / str(i)) for i in range(3)]
  for writer in writers:
    writer.write_scalars(1, {'loss': 2.0})
    writer.close()
  assert [w.name for w in writers] == ['none'] * 3
  assert sum('No TensorBoard event files' in r.getMessage() for r in caplog.records) == 1
  assert not list(tmp_path.rglob('events.out.tfevents.*'))


def test_tensorboardx_writes_event_files_when_clu_cannot_load(tmp_path, monkeypatch):
  pytest.importorskip('tensorboardX')
  real_import = builtins.__import__

  def no_clu(name, *args, **kwargs):
    if name.split('.')[0] == 'clu':
      raise ModuleNotFoundError(f'No module named {name!r}', name=name)
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_clu)
  writer = summaries.create_writer(tmp_path)
  writer.write_scalars(5, {'loss': 2.0, 'lr': 1e-3})
  writer.close()
  assert writer.name == 'tensorboardX' and list(tmp_path.glob('events.out.tfevents.*'))


def test_progress_gives_the_rate_over_the_interval_and_the_time_left():
  now = [100.0]
  progress = summaries.Progress(start_step=10, total_steps=110, clock=lambda: now[0])
  now[0] = 120.0
  assert progress.update(20) == (0.5, '3m00s')  # 10 steps in 20 s; 90 steps left at 0.5 steps/s
  now[0] = 121.0
  assert progress.update(110) == (90.0, '0m00s')
  assert progress.update(110) == (None, '?')
  assert summaries._duration(2 * 3600 + 5 * 60 + 9) == '2h05m'
