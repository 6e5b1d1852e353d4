"""Checkpoints of one scale: Orbax save and restore, CRC32 checksums, quarantine, pre-emption (SIGTERM).

docs/method.md §7.3, issue 7 and docs/reliability.md. Each scale's folder holds

  p<p>/checkpoints/<step>/{state,meta}   Orbax: the TrainState (StandardSave) + the JSON data position
  p<p>/corrupt_checkpoints/<step>-<time> a checkpoint that failed to decode, read or match its CRC32

A restore moves a checkpoint aside only when it is corrupt (CORRUPTION_ERRORS); any other error stops
with that error and moves nothing.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from gcad_jax import configlib, parallel, run_info
from gcad_jax.models import gcad

def param_shapes(tree) -> dict[str, list[int]]:
  """{'r_loc/…/kernel': shape} for the shape check on resume."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path): list(np.shape(leaf))
          for path, leaf in flat}


def check_resumable(saved_meta: dict, config, shapes: dict, ckpt_dir) -> None:
  """Refuses to resume a checkpoint whose networks have other shapes than `config` gives."""
  saved = saved_meta['param_shapes']
  differing = [k for k in sorted(set(saved) | set(shapes)) if saved.get(k) != shapes.get(k)]
  if not differing:
    return
  now = json.loads(json.dumps(run_info.model_config(config)))  # Tuples as lists, as saved.
  keys = [k for k in now if saved_meta.get('model_config', {}).get(k) != now[k]]
  examples = ', '.join(f'{k}: saved {saved.get(k)}, config {shapes.get(k)}' for k in differing[:3])
  raise ValueError(
      f'{ckpt_dir}: the checkpoint at step {saved_meta["step"]} holds networks of other shapes than this '
      f'config builds ({len(differing)} arrays differ, e.g. {examples}; config sections that differ: '
      f'{keys or "none recorded"}). Resume with the config in {ckpt_dir.parent.parent}/config.json, or '
      'start a fresh --workdir.')


def check_checkpoint(config, scale_dir: epath.Path, meta: dict, shapes: dict, steps_per_epoch: int,
                     num_examples: int) -> None:
  """Refuses to resume `meta`'s checkpoint under a config with other shapes or another data position."""
  check_resumable(meta, config, shapes, scale_dir / 'checkpoints')
  if (meta['steps_per_epoch'], meta['num_train_examples']) != (steps_per_epoch, num_examples):
    raise configlib.ConfigError(
        f'config.train.batch_size: the checkpoint in {scale_dir / "checkpoints"} was trained with '
        f'{meta["steps_per_epoch"]} steps per epoch over {meta["num_train_examples"]} images; this config and '
        f'data set give {steps_per_epoch} over {num_examples}, so the data position cannot be resumed. Use '
        'the same batch size and data set, or a fresh --workdir.')


def checkpoint_manager(config, scale_dir: epath.Path, cleanup: bool = False) -> ocp.CheckpointManager:
  """Orbax manager of one scale: state (StandardSave) + JSON data position (docs/method.md §7.3, issue item 4).

  Orbax writes a step under `<step>.orbax-checkpoint-tmp-*` and renames it to `<step>` once every file is
  written, so a save that was killed is never listed (docs/reliability.md). `cleanup` (the training process
  only, never a concurrent evaluation) removes such leftovers. A relative workdir is made absolute here:
  orbax 0.12.8 refuses relative paths at the first save ("Checkpoint path should be absolute").
  """
  ckpt_dir = scale_dir / 'checkpoints'
  ckpt_dir = ckpt_dir if ckpt_dir.is_absolute() else ckpt_dir.absolute()
  options = ocp.CheckpointManagerOptions(save_interval_steps=config.train.checkpoint_every_steps,
                                         max_to_keep=config.train.keep_checkpoints, create=True,
                                         cleanup_tmp_directories=cleanup)
  return ocp.CheckpointManager(ckpt_dir, options=options, item_names=('state', 'meta'))


def _abstract(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=sharding), tree)


def save_checkpoint(mngr, state, meta: dict, par: parallel.DataParallel, force: bool = False) -> None:
  """Saves one host copy of the replicated state (the same under shard_map and pmap) and `meta`.

  A state with a NaN or inf raises `NonFiniteError` and is never saved; `meta['state_crc32']` gets each
  array's CRC32, so a resume detects a corrupted file (issue 7). Orbax writes in the background; the copy
  is taken first, so the next step may donate the buffers.
  """
  item = par.unreplicate(state)
  _check_finite_state(mngr, item, meta)
  meta = dict(meta, state_crc32=state_checksums(item))
  mngr.save(int(meta['step']), args=ocp.args.Composite(state=ocp.args.StandardSave(item),
                                                       meta=ocp.args.JsonSave(meta)), force=force)


def restore_checkpoint(mngr, step: int, template, par: parallel.DataParallel):
  """Restores the state at `step` onto the devices; `template` (a TrainState) gives the host structure."""
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_abstract(template, par.state_sharding()))))
  state = restored['state']
  if par.mode == 'pmap':
    state = par.replicate(jax.device_get(state))
  return state


def read_meta(mngr, step: int) -> dict:
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


# Faults (issue 7, docs/reliability.md): non-finite losses, corrupted checkpoints, pre-emption.

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports a process that SIGTERM ended.


class NonFiniteError(FloatingPointError):
  """A loss term or a state array became NaN or inf; the last good checkpoint is kept."""


class CorruptCheckpointError(ValueError):
  """No checkpoint of a scale reads back intact."""


class Preempted(SystemExit):
  """SIGTERM arrived: the current step was checkpointed; the same command resumes from it."""


def _leaf_name(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def state_checksums(tree) -> dict[str, int]:
  """{'params/r_loc/…/kernel': CRC32 of the array's bytes} of a host tree."""
  return {_leaf_name(path): zlib.crc32(np.ascontiguousarray(leaf).reshape(-1).view(np.uint8))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_finite_state(mngr, item, meta: dict) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(item)[0]:
    leaf = np.asarray(leaf)
    if np.issubdtype(leaf.dtype, np.floating) and not np.all(np.isfinite(leaf)):
      mngr.wait_until_finished()
      raise NonFiniteError(
          f'p{meta["scale"]}: {_leaf_name(path)} of the state at step {meta["step"]} holds NaN or inf, so it is '
          f'not saved; the last good checkpoint (step {mngr.latest_step()}) in {mngr.directory} is kept. Lower '
          'config.optim.learning_rate or check the data, then rerun the same command to resume from it.')


def check_finite_losses(p: int, accumulated, interval: list, done: int, par: parallel.DataParallel, mngr,
                        terms: tuple[str, ...]) -> None:
  """Raises NonFiniteError naming the first step and term of `interval` that is NaN or inf (docs/method.md §7.2).

  One host sync (the interval's sum; a NaN anywhere propagates into it), called at each log and save.
  """
  sums = par.unreplicate(accumulated)
  if all(np.isfinite(v) for v in sums.values()):
    return
  step, values = done, sums
  for step, metrics in enumerate(interval, start=done - len(interval) + 1):
    values = par.unreplicate(metrics)
    if not all(np.isfinite(v) for v in values.values()):
      break
  bad = [k for k in terms if not np.isfinite(values[k])]
  mngr.wait_until_finished()
  raise NonFiniteError(
      f'p{p}: the loss term {bad[0]} is {float(values[bad[0]])} at step {step} '
      f'({", ".join(f"{k}={float(values[k])}" for k in bad)}; docs/method.md §7.2); training stopped. Nothing was '
      f'saved after the last good checkpoint (step {mngr.latest_step()}) in {mngr.directory}. Lower '
      'config.optim.learning_rate or check the data, then rerun the same command to resume from it.')


def _verify_checksums(state, meta: dict, par: parallel.DataParallel, where) -> None:
  saved = meta.get('state_crc32')
  if saved is None:  # Written before checksums existed.
    return
  now = state_checksums(par.unreplicate(state))
  differing = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
  if differing:
    raise CorruptCheckpointError(f'{where}: array(s) {differing[:3]} do not match the CRC32 saved with them')


# TensorStore reports storage faults as ValueError('<STATUS>: ...'), and Orbax may wrap them in a bare
# Exception: these statuses mean bytes on disk are missing, short or undecodable.
_STORAGE_STATUSES = ('DATA_LOSS:', 'NOT_FOUND:', 'OUT_OF_RANGE:')


def _is_corruption_here(e: BaseException) -> bool:
  if isinstance(e, (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError, zlib.error,
                    CorruptCheckpointError)):
    return True
  if isinstance(e, ValueError) and str(e).startswith(_STORAGE_STATUSES):
    return True
  # Orbax, when an item's folder is missing: 'Item "state" was not found in the checkpoint.'
  return isinstance(e, KeyError) and 'was not found in the checkpoint' in str(e)


def is_corruption(e: BaseException) -> bool:
  """Whether `e`, or an exception it was raised from, says a checkpoint's files are missing, short, fail
  to decode or fail their CRC32: IO, decode and checksum errors. Out of memory, a version mismatch or a
  bug is not corruption, and a restore stops on it instead of moving the checkpoint aside."""
  seen = set()
  while e is not None and id(e) not in seen:
    if _is_corruption_here(e):
      return True
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return False


def newest_meta(mngr) -> dict | None:
  """The data position of the newest checkpoint whose meta reads back (others are handled on restore)."""
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return read_meta(mngr, step)
    except Exception as e:  # pylint: disable=broad-except (re-raised unless corruption)
      if not is_corruption(e):
        raise
  return None


def restore_newest(mngr, template_for, check, par: parallel.DataParallel, quarantine: bool):
  """(step, meta, state) of the newest checkpoint that reads back intact; (None, None, None) if none exist.

  A newer checkpoint that is corrupt (`is_corruption`: missing or truncated file, bad JSON, CRC32 mismatch)
  is reported with a warning naming its step and the file or array, and the previous one is used; with `quarantine`
  (training) it is moved to `<scale>/corrupt_checkpoints/`, so that its step can be saved again. When no
  checkpoint reads back, CorruptCheckpointError lists why and nothing is moved. Any other error (out of
  memory, another library version, a bug) and `check(meta)` refusals (another model shape or data position)
  propagate at once and move nothing: they are not corruption.
  """
  ckpt_dir = epath.Path(mngr.directory)
  failures = []
  for step in sorted(mngr.all_steps(), reverse=True):
    where = ckpt_dir / str(step)
    try:
      meta = read_meta(mngr, step)
    except Exception as e:  # pylint: disable=broad-except (re-raised unless corruption)
      if not is_corruption(e):
        raise
      failures.append((step, f'{where}/meta: {type(e).__name__}: {e}'))
      continue
    check(meta)
    try:
      state = restore_checkpoint(mngr, step, template_for(meta), par)
      _verify_checksums(state, meta, par, f'{where}/state')
    except Exception as e:  # pylint: disable=broad-except (re-raised unless corruption)
      if not is_corruption(e):
        raise
      failures.append((step, f'{type(e).__name__}: {e}'))
      continue
    for bad, reason in failures:
      moved = ''
      if quarantine:
        moved = _quarantine(ckpt_dir, bad)
      logging.warning('checkpoint %s/%d is corrupt or incomplete (%s); using the previous one, step %d%s',
                      ckpt_dir, bad, reason[:2000], step, moved)
    if failures:
      mngr.reload()
    return step, meta, state
  if failures:
    raise CorruptCheckpointError(
        f'{ckpt_dir}: no checkpoint reads back intact: ' + '; '.join(f'step {s}: {r[:500]}' for s, r in failures)
        + '. Move the folder aside to start afresh, or restore it from a backup.')
  return None, None, None


def _quarantine(ckpt_dir: epath.Path, step: int) -> str:
  """Moves `ckpt_dir/<step>` to `<scale>/corrupt_checkpoints/<step>-<time>`; returns a note for the log."""
  target = ckpt_dir.parent / 'corrupt_checkpoints' / f'{step}-{time.strftime("%Y%m%dT%H%M%S")}'
  if jax.process_index() == 0:
    target.parent.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / str(step)).rename(target)
  if jax.process_count() > 1:  # The barrier Orbax's managers use.
    ocp.multihost.sync_global_processes(f'gcad_jax_quarantine_{step}')
  return f'; moved it to {target}'


@contextlib.contextmanager
def sigterm_requests_checkpoint():
  """While active, SIGTERM (pre-emption) sets the yielded Event instead of killing the process.

  The loop checks it after each step (no host sync), saves that step and raises `Preempted`. Signals reach
  only the main thread; elsewhere this is a no-op.
  """
  requested = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield requested
    return
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: requested.set())
  try:
    yield requested
  finally:
    signal.signal(signal.SIGTERM, previous)


def preempted(p: int, done: int, ckpt_dir) -> Preempted:
  message = (f'gcad_jax: SIGTERM: p{p} saved its checkpoint at step {done} in {ckpt_dir}; exiting with '
             f'code {PREEMPTED_EXIT_CODE}. Rerun the same command to resume.')
  logging.warning(message)
  print(message, flush=True)
  return Preempted(PREEMPTED_EXIT_CODE)


def check_existing(config, workdir, image_shape: tuple[int, int], steps_per_epoch: int, num_examples: int) -> bool:
  """Every scale's newest checkpoint (if any) must resume under this config; checked before any write.

  Returns whether any scale has a checkpoint (a resume). Multi-process: every process looks before a
  barrier, and nothing is written before it. Otherwise a late process would see the `checkpoints` folder
  that process 0 had just created, open one Orbax manager more than the others (each opening is a barrier)
  and hang.
  """
  existing = [p for p in config.model.scales if (run_info.scale_dir(workdir, p) / 'checkpoints').exists()]
  ocp.multihost.sync_global_processes('gcad_jax_checked_existing_checkpoints')
  found = False
  for p in existing:
    scale_dir = run_info.scale_dir(workdir, p)
    with contextlib.closing(checkpoint_manager(config, scale_dir)) as mngr:
      meta = newest_meta(mngr)
    if meta is not None:
      found = True
      nets = gcad.build_nets(config, p)
      trainable, e_loc_params = jax.eval_shape(
          lambda: gcad.init_params(nets, jax.random.PRNGKey(0), tuple(image_shape)))  # pylint: disable=cell-var-from-loop
      shapes = param_shapes({'params': trainable, 'e_loc_params': e_loc_params})
      check_checkpoint(config, scale_dir, meta, shapes, steps_per_epoch, num_examples)
  return found


def latest_meta(config, workdir, p: int) -> dict:
  """The JSON data position saved with scale p's latest checkpoint."""
  with contextlib.closing(checkpoint_manager(config, run_info.scale_dir(workdir, p))) as mngr:
    return read_meta(mngr, mngr.latest_step())
