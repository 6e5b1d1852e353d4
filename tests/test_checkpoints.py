"""Checkpoints (gcad_jax/checkpoints.py): saving, reading back, what a restore calls corruption.

The end-to-end faults (kills, SIGTERM, corrupted files during training) are in tests/test_reliability.py.
"""

import pathlib

import numpy as np
import pytest
from etils import epath

from gcad_jax import checkpoints, parallel
import train_worker

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / 'configs' / 'tiny.py'


def _config(overrides=None):
  return train_worker.load_config(TINY, {'score.enabled': False, **(overrides or {})})


def _par():
  return parallel.DataParallel.from_config(_config())


def test_a_state_with_nan_is_never_saved(tmp_path):
  mngr = checkpoints.checkpoint_manager(_config(), epath.Path(tmp_path))
  state = {'params': {'r_glo': {'kernel': np.array([1.0, np.inf], np.float32)}}, 'step': np.int32(3)}
  with pytest.raises(checkpoints.NonFiniteError, match=r'p17: params/r_glo/kernel of the state at step 3 holds NaN or '
                                                 r'inf, so it is not saved'):
    checkpoints.save_checkpoint(mngr, state, {'step': 3, 'scale': 17}, _par(), force=True)
  mngr.wait_until_finished()
  assert mngr.all_steps() == [] and not list((tmp_path / 'checkpoints').iterdir())
  mngr.close()


def test_a_relative_workdir_saves_and_reads_back(tmp_path, monkeypatch):
  # `--workdir=runs/x`: orbax 0.12.8 refuses a relative path at the first save unless the manager resolves it.
  monkeypatch.chdir(tmp_path)
  mngr = checkpoints.checkpoint_manager(_config(), epath.Path('runs/x/p17'))
  state = {'params': {'r_glo': {'kernel': np.array([1.0, 2.0], np.float32)}}, 'step': np.int32(3)}
  checkpoints.save_checkpoint(mngr, state, {'step': 3, 'scale': 17}, _par(), force=True)
  mngr.wait_until_finished()
  assert mngr.all_steps() == [3] and (tmp_path / 'runs/x/p17/checkpoints/3').is_dir()
  assert checkpoints.read_meta(mngr, 3)['step'] == 3
  mngr.close()
