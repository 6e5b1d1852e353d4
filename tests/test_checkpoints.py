"""Checkpoints (gcad_jax/checkpoints.py): saving, reading back, what a restore calls corruption.

The end-to-end faults (kills, SIGTERM, corrupted files during training) are in tests/test_reliability.py.
"""

import json
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


def _saved(tmp_path, steps=(2, 3)):
  """A scale folder with small checkpoints at `steps`, and the state saved in them."""
  state = {'params': {'kernel': np.arange(20000, dtype=np.float32)}, 'step': np.int32(3)}
  mngr = checkpoints.checkpoint_manager(_config(), epath.Path(tmp_path))
  for step in steps:
    checkpoints.save_checkpoint(mngr, state, {'step': step, 'scale': 17}, _par(), force=True)
  mngr.wait_until_finished()
  return mngr, state


def _restore_newest(mngr, state):
  return checkpoints.restore_newest(mngr, lambda meta: state, lambda meta: None, _par(), quarantine=True)


def test_a_truncated_array_file_is_corruption_and_moved_aside(tmp_path):
  mngr, state = _saved(tmp_path)
  data = max((tmp_path / 'checkpoints' / '3' / 'state' / 'ocdbt.process_0' / 'd').iterdir(),
             key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
  step, _, restored = _restore_newest(mngr, state)
  assert step == 2 and [p.name.split('-')[0] for p in (tmp_path / 'corrupt_checkpoints').iterdir()] == ['3']
  np.testing.assert_array_equal(_par().unreplicate(restored)['params']['kernel'], state['params']['kernel'])
  mngr.close()


@pytest.mark.parametrize('error', [MemoryError('out of memory'),
                                   RuntimeError('RESOURCE_EXHAUSTED: Out of memory allocating 9 GB'),
                                   ValueError('User-provided restore item and on-disk value metadata tree '
                                              'structures do not match'),
                                   TypeError('bug')])
def test_an_error_that_is_not_corruption_stops_the_restore_and_moves_nothing(tmp_path, monkeypatch, error):
  mngr, state = _saved(tmp_path)
  monkeypatch.setattr(checkpoints, 'restore_checkpoint', lambda *args: (_ for _ in ()).throw(error))
  with pytest.raises(type(error), match=str(error)[:20]):
    _restore_newest(mngr, state)
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()) == [2, 3]
  assert not (tmp_path / 'corrupt_checkpoints').exists()
  monkeypatch.setattr(checkpoints, 'read_meta', lambda *args: (_ for _ in ()).throw(error))
  with pytest.raises(type(error)):
    checkpoints.newest_meta(mngr)
  mngr.close()


def test_corruption_is_io_decode_and_checksum_errors_also_when_wrapped():
  def wrapped(cause):
    try:
      raise Exception('Encountered error while reading array index') from cause  # How Orbax wraps them.
    except Exception as e:  # pylint: disable=broad-except
      return e

  corrupt = [OSError('disk'), FileNotFoundError('x'), json.JSONDecodeError('bad', '{', 1),
             checkpoints.CorruptCheckpointError('crc'), KeyError('Item "state" was not found in the checkpoint.'),
             ValueError('NOT_FOUND: Error opening "zarr" driver'),
             wrapped(ValueError('OUT_OF_RANGE: Error reading "params.k/0" in OCDBT database')),
             wrapped(ValueError('DATA_LOSS: bad chunk'))]
  fine = [MemoryError(), TypeError('x'), KeyError('r_glo'), ValueError('tree structures do not match'),
          RuntimeError('RESOURCE_EXHAUSTED: Out of memory'), wrapped(ValueError('FAILED_PRECONDITION: dtype'))]
  assert [checkpoints.is_corruption(e) for e in corrupt] == [True] * len(corrupt)
  assert [checkpoints.is_corruption(e) for e in fine] == [False] * len(fine)
