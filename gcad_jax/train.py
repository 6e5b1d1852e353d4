"""GCAD training: train state, per-device train step, the loop, checkpoints and logging.

GCAD.md §7 (losses, staging, optimiser), §3.4 (E_loc statistics), §4.3 (skip fade), §13 (JAX mapping).
One full model per receptive field p in `config.model.scales`, trained one after the other in the same run,
each with its own state and its own folder `workdir/p17`, `workdir/p33`:

  workdir/config.json, workdir/provenance.json      resolved config; code, packages, devices, seed, times
  workdir/p17/checkpoints/<step>/{state,meta}       Orbax: TrainState + JSON data position
  workdir/p17/events.out.tfevents.*                 clu metrics (losses, learning rate, skip weights)
  workdir/p17/validation_losses.json                Eq. 2–5 terms on the validation images, kd_explained
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import signal
import subprocess
import threading
import time
import zlib
from importlib import metadata as importlib_metadata
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath

from gcad_jax import atomic_io, configlib, input_pipeline, parallel, xla_cpu
from gcad_jax.models import gcad, global_net, teacher, teacher_weights

MAIN = ('e_glo', 'u', 'r_loc')  # optimised from step 0 (GCAD.md §7.3, stage 1)
RGLO = 'r_glo'  # optimised from train.rglo_start_epoch on, with its own optimiser state
LOSSES = ('l_loc', 'l_kd', 'l_glo', 'total')
# Config sections that fix the shapes of the networks: a checkpoint only resumes under the same values.
MODEL_KEYS = ('model', 'eloc', 'eglo', 'u', 'unet')


@flax.struct.dataclass
class TrainState:
  """Everything one scale's training carries from step to step (GCAD.md §7.3, §13).

  E_loc's parameters and statistics are frozen and live outside both optimiser states;
  `opt_state_rglo` is None until the stage switch, so R_glo's Adam count starts at its first update.
  """
  step: jax.Array
  params: Any  # trainable: {'r_loc', 'e_glo', 'u', 'r_glo'}
  opt_state_main: Any  # for {'e_glo', 'u', 'r_loc'}
  opt_state_rglo: Any  # for 'r_glo'; None in stage 1
  e_loc_params: Any
  eloc_stats: Any  # {'mean': (d,), 'std': (d,)}


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with coupled L2, as PyTorch `Adam(weight_decay=…)` (GCAD.md §7.3, not AdamW)."""
  o = config.optim
  return optax.chain(optax.add_decayed_weights(o.weight_decay),
                     optax.adam(o.learning_rate, b1=o.b1, b2=o.b2, eps=o.eps))


def learning_rate_factor(config: ml_collections.ConfigDict, step, total_steps: int):
  """lr(step) / optim.learning_rate: 1 for 'constant' (GCAD.md §7.3, §12 #19), else 'cosine' from 1 to 0.

  The cosine [I] is a function of the global step, so R_glo, which joins later, follows the same curve.
  Works traced and on the host.
  """
  if config.optim.schedule == 'constant':
    return 1.0
  progress = jnp.clip(step / max(int(total_steps), 1), 0.0, 1.0)
  return 0.5 * (1.0 + jnp.cos(jnp.pi * progress))


def create_train_state(config, trainable, e_loc_params, eloc_stats) -> TrainState:
  """Stage-1 state: the optimiser state for {E_glo, U, R_loc} only (GCAD.md §7.3)."""
  tx = make_optimizer(config)
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                    opt_state_main=tx.init({k: trainable[k] for k in MAIN}), opt_state_rglo=None,
                    e_loc_params=e_loc_params, eloc_stats=eloc_stats)


def start_rglo(config, state: TrainState) -> TrainState:
  """The stage switch (GCAD.md §7.3): R_glo gets a fresh optimiser state, Adam count 0."""
  return state.replace(opt_state_rglo=make_optimizer(config).init(state.params[RGLO]))


def fractional_epoch(step, steps_per_epoch: int):
  """e = step / steps_per_epoch (GCAD.md §4.3, §7.3); works traced and on the host."""
  return step / steps_per_epoch


def skip_weights(config, epoch):
  """The five E_glo skip weights at fractional epoch `epoch` (GCAD.md §4.3)."""
  fade = config.eglo.skip_fade
  return global_net.skip_weights(epoch, mode=fade.mode, end_epoch=fade.end_epoch,
                                 levels=config.eglo.skip_levels)


def eglo_grad_scale_in_lglo(config, epoch):
  """The share of L_glo's gradient that reaches E_glo at fractional `epoch` [I] (docs/quality.md).

  None (all of it: the paper's joint loss, GCAD.md §7.2) unless `train.lglo_eglo_grad_ramp_epochs` > 0; then
  it rises linearly from 0 at `train.rglo_start_epoch` to 1 that many epochs later, so that R_glo first
  learns to follow E_glo before its large early error can pull E_glo's z towards a constant.
  """
  ramp = config.train.lglo_eglo_grad_ramp_epochs
  if not ramp:
    return None
  return jnp.clip((epoch - config.train.rglo_start_epoch) / ramp, 0.0, 1.0)


def preprocess_examples(config, step, images, train: bool):
  """Augments (when `train`) and normalises this device's uint8 images (GCAD.md §7.4).

  Each example draws from a key folded from (seed, step, global example index): its device's index times
  the per-device batch plus its row. So the augmentation does not depend on the device count.
  """
  if not train:
    return input_pipeline.preprocess(jax.random.PRNGKey(config.seed), images, config, False)
  rows = images.shape[0]
  index = jax.lax.axis_index(parallel.AXIS) * rows + jnp.arange(rows)
  base = jax.random.fold_in(jax.random.PRNGKey(config.seed), step)
  keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(index)
  one = lambda key, image: input_pipeline.preprocess(key, image[None], config, True)[0]
  return jax.vmap(one)(keys, images)


def _adam_update(tx, grads, opt_state, params, lr_factor=1.0):
  """One Adam step; `lr_factor` scales it (the coupled decay sits inside the step, so this is lr · factor)."""
  updates, opt_state = tx.update(grads, opt_state, params)
  updates = jax.tree.map(lambda u: u * lr_factor, updates)
  return optax.apply_updates(params, updates), opt_state


def train_step(state: TrainState, images, features=None, *, nets, config, steps_per_epoch: int,
               with_glo: bool):
  """One step of GCAD.md §7.5 on this device's rows; gradients averaged over `data` with `lax.pmean`.

  Stage 1 (`with_glo=False`): L = L_kd/d_loc + L_loc/d_loc updates {E_glo, U, R_loc}; R_glo and its
  optimiser state are not touched. Stage 2 adds L_glo/d_glo and updates R_glo with its own state.
  `features`: these rows' standardised E_loc features from `cached_eloc_features` (`train.cache_eloc`,
  augmentation off), else E_loc runs here.
  """
  tx = make_optimizer(config)
  epoch = fractional_epoch(state.step, steps_per_epoch)
  lr_factor = learning_rate_factor(config, state.step, steps_per_epoch * config.train.epochs)
  x = preprocess_examples(config, state.step, images, train=True)
  if features is None:
    f = gcad.eloc_features(nets, state.e_loc_params, state.eloc_stats, x)
  else:
    f = jax.lax.stop_gradient(features.astype(jnp.float32))
  weights = skip_weights(config, epoch)
  trained = MAIN + ((RGLO,) if with_glo else ())

  def loss_fn(sub):
    losses = gcad.per_image_losses(
        nets, {**state.params, **sub}, f, x, weights, with_glo=with_glo,
        reduction=config.train.loss_reduction, stop_grad_eglo_in_lglo=config.train.stop_grad_eglo_in_lglo,
        eglo_grad_scale_in_lglo=eglo_grad_scale_in_lglo(config, epoch))
    return jnp.mean(losses['total']), losses

  grads, losses = jax.grad(loss_fn, has_aux=True)({k: state.params[k] for k in trained})
  grads = jax.lax.pmean(grads, parallel.AXIS)
  main, opt_state_main = _adam_update(tx, {k: grads[k] for k in MAIN}, state.opt_state_main,
                                      {k: state.params[k] for k in MAIN}, lr_factor)
  params = {**state.params, **main}
  opt_state_rglo = state.opt_state_rglo
  if with_glo:
    params[RGLO], opt_state_rglo = _adam_update(tx, grads[RGLO], opt_state_rglo, state.params[RGLO],
                                                  lr_factor)
  metrics = {k: jnp.mean(losses[k]) if k in losses else jnp.zeros(()) for k in LOSSES}
  metrics = jax.lax.pmean(metrics, parallel.AXIS)
  new_state = state.replace(step=state.step + 1, params=params, opt_state_main=opt_state_main,
                            opt_state_rglo=opt_state_rglo)
  return new_state, metrics


def eloc_moments_step(e_loc_params, images, mask, *, nets, config):
  """Per-channel moments of the raw dense E_loc features of the un-augmented images (GCAD.md §3.4)."""
  x = input_pipeline.preprocess(jax.random.PRNGKey(config.seed), images, config, False)
  d = config.eloc.d_loc
  identity = {'mean': jnp.zeros((d,), jnp.float32), 'std': jnp.ones((d,), jnp.float32)}
  f = gcad.eloc_features(nets, e_loc_params, identity, x)
  per_image = jax.vmap(lambda fi: teacher.feature_moments(fi[None]))(f)
  moments = jax.tree.map(lambda m: jnp.tensordot(mask.astype(m.dtype), m, axes=1), per_image)
  return jax.lax.psum(moments, parallel.AXIS)


def eval_step(state: TrainState, images, mask, *, nets, config, steps_per_epoch: int):
  """Sums of the per-image Eq. 2–5 terms over the un-augmented `mask`ed images, and their count."""
  x = preprocess_examples(config, state.step, images, train=False)
  f = gcad.eloc_features(nets, state.e_loc_params, state.eloc_stats, x)
  weights = skip_weights(config, fractional_epoch(state.step, steps_per_epoch))
  losses = gcad.per_image_losses(nets, state.params, f, x, weights, with_glo=True,
                                 reduction=config.train.loss_reduction,
                                 stop_grad_eglo_in_lglo=config.train.stop_grad_eglo_in_lglo)
  sums = {k: jnp.sum(losses[k] * mask) for k in LOSSES}
  sums['count'] = jnp.sum(mask)
  return jax.lax.psum(sums, parallel.AXIS)


# ----------------------------------------------------------------------------------------------------
# Host side: data positions, E_loc statistics, checkpoints, logging, the loop.


def _map_over_all(fn, replicated, images_uint8, config, mesh):
  """Runs a per-device `fn(replicated, images, mask)` over every image once; returns the host-summed psums."""
  mode, batch = config.parallel, config.train.batch_size
  mapped = parallel.map_per_device(fn, mode, mesh, donate=False)
  rows = parallel.process_rows(batch)
  outputs = []
  for index, mask in parallel.padded_batches(len(images_uint8), batch):
    images, mask = parallel.shard_batch((images_uint8[index[rows]], mask[rows]), mode, mesh)
    outputs.append(mapped(replicated, images, mask))
  outputs = [parallel.unreplicate(o, mode) for o in outputs]
  return jax.tree.map(lambda *xs: np.sum(np.stack(xs).astype(np.float64), axis=0), *outputs)


def compute_eloc_stats(config, nets, e_loc_params, images_uint8, mesh) -> dict:
  """μ_c, σ_c over all pixels of all un-augmented training images, streamed in batches (GCAD.md §3.4)."""
  fn = functools.partial(eloc_moments_step, nets=nets, config=config)
  replicated = parallel.replicate(e_loc_params, config.parallel, mesh)
  total, total_sq, count = _map_over_all(fn, replicated, images_uint8, config, mesh)
  stats = teacher.stats_from_moments(total, total_sq, count)
  return jax.tree.map(lambda s: np.asarray(s, np.float32), dict(stats))


def cached_eloc_features(config, nets, e_loc_params, images_uint8, stats=None) -> tuple[np.ndarray, dict]:
  """(f of every un-augmented training image, stats): E_loc run once (`train.cache_eloc`, GCAD.md §7.5).

  E_loc is frozen and, without augmentation, sees the same images every epoch, so its dense forward (the
  most expensive network, §9) need not run in every step. With `stats=None` (a fresh run) μ_c, σ_c come
  from these same raw features (§3.4), so the teacher runs once per image; on resume the checkpoint's stats
  are given. Computed on this process's first device in chunks of the global batch; kept on the host as
  float32 (N × H × W × d_loc × 4 bytes) and fed with the images. Every process computes all rows.
  """
  fn = jax.jit(lambda params, images: nets.e_loc.apply(
      {'params': params}, input_pipeline.preprocess(jax.random.PRNGKey(0), images, config, False)))
  device = jax.local_devices()[0]
  params = jax.device_put(e_loc_params, device)
  chunk = max(1, config.train.batch_size)
  features = np.concatenate([np.asarray(fn(params, jax.device_put(images_uint8[i:i + chunk], device)),
                                        np.float32) for i in range(0, len(images_uint8), chunk)], axis=0)
  if stats is None:
    flat = features.reshape(-1, features.shape[-1])
    total = np.zeros(flat.shape[1], np.float64)
    total_sq = np.zeros(flat.shape[1], np.float64)
    for i in range(0, len(flat), 1 << 16):  # float64 sums without a float64 copy of all features
      block = flat[i:i + (1 << 16)].astype(np.float64)
      total += block.sum(axis=0)
      total_sq += np.square(block).sum(axis=0)
    stats = teacher.stats_from_moments(total, total_sq, len(flat))
  stats = {k: np.asarray(v, np.float32) for k, v in stats.items()}
  features -= stats['mean']
  features /= stats['std']
  return features, stats


def param_shapes(tree) -> dict[str, list[int]]:
  """{'r_loc/…/kernel': shape} for the shape check on resume."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path): list(np.shape(leaf))
          for path, leaf in flat}


def _model_config(config) -> dict:
  return {k: config[k].to_dict() for k in MODEL_KEYS} | {'image_size': list(config.dataset.image_size)}


def check_resumable(saved_meta: dict, config, shapes: dict, ckpt_dir) -> None:
  """Refuses to resume a checkpoint whose networks have other shapes than `config` gives."""
  saved = saved_meta['param_shapes']
  differing = [k for k in sorted(set(saved) | set(shapes)) if saved.get(k) != shapes.get(k)]
  if not differing:
    return
  now = json.loads(json.dumps(_model_config(config)))  # Tuples as lists, as saved.
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
  """Orbax manager of one scale: state (StandardSave) + JSON data position (GCAD.md §7.3, issue item 4).

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


def save_checkpoint(mngr, state, meta: dict, mode: str, force: bool = False) -> None:
  """Saves one host copy of the replicated state (the same under shard_map and pmap) and `meta`.

  A state with a NaN or inf raises `NonFiniteError` and is never saved; `meta['state_crc32']` gets each
  array's CRC32, so a resume detects a corrupted file (issue 7). Orbax writes in the background; the copy
  is taken first, so the next step may donate the buffers.
  """
  item = parallel.unreplicate(state, mode)
  _check_finite_state(mngr, item, meta)
  meta = dict(meta, state_crc32=state_checksums(item))
  mngr.save(int(meta['step']), args=ocp.args.Composite(state=ocp.args.StandardSave(item),
                                                       meta=ocp.args.JsonSave(meta)), force=force)


def restore_checkpoint(mngr, step: int, template: TrainState, mode: str, mesh):
  """Restores (state, meta) at `step` onto the devices; `template` gives the host-side structure."""
  if mode == 'pmap':
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  else:
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_abstract(template, sharding))))
  state = restored['state']
  if mode == 'pmap':
    state = parallel.replicate(jax.device_get(state), mode, mesh)
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


def _check_finite_losses(p: int, accumulated, interval: list, done: int, mode: str, mngr) -> None:
  """Raises NonFiniteError naming the first step and term of `interval` that is NaN or inf (GCAD.md §7.2).

  One host sync (the interval's sum; a NaN anywhere propagates into it), called at each log and save.
  """
  sums = parallel.unreplicate(accumulated, mode)
  if all(np.isfinite(v) for v in sums.values()):
    return
  step, values = done, sums
  for step, metrics in enumerate(interval, start=done - len(interval) + 1):
    values = parallel.unreplicate(metrics, mode)
    if not all(np.isfinite(v) for v in values.values()):
      break
  bad = [k for k in LOSSES if not np.isfinite(values[k])]
  mngr.wait_until_finished()
  raise NonFiniteError(
      f'p{p}: the loss term {bad[0]} is {float(values[bad[0]])} at step {step} '
      f'({", ".join(f"{k}={float(values[k])}" for k in bad)}; GCAD.md §7.2); training stopped. Nothing was '
      f'saved after the last good checkpoint (step {mngr.latest_step()}) in {mngr.directory}. Lower '
      'config.optim.learning_rate or check the data, then rerun the same command to resume from it.')


def _verify_checksums(state, meta: dict, mode: str, where) -> None:
  saved = meta.get('state_crc32')
  if saved is None:  # Written before checksums existed.
    return
  now = state_checksums(parallel.unreplicate(state, mode))
  differing = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
  if differing:
    raise CorruptCheckpointError(f'{where}: array(s) {differing[:3]} do not match the CRC32 saved with them')


def newest_meta(mngr) -> dict | None:
  """The data position of the newest checkpoint whose meta reads back (others are handled on restore)."""
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return read_meta(mngr, step)
    except Exception:  # pylint: disable=broad-except (any read error: restore_newest reports it)
      continue
  return None


def restore_newest(mngr, template_for, check, mode: str, mesh, quarantine: bool):
  """(step, meta, state) of the newest checkpoint that reads back intact; (None, None, None) if none exist.

  A newer checkpoint that fails to read (missing or truncated file, bad JSON, CRC32 mismatch) is reported
  with a warning naming its step and the file or array, and the previous one is used; with `quarantine`
  (training) it is moved to `<scale>/corrupt_checkpoints/`, so that its step can be saved again. When no
  checkpoint reads back, CorruptCheckpointError lists why and nothing is moved. `check(meta)` refusals
  (another model shape or data position) propagate: they are not corruption.
  """
  ckpt_dir = epath.Path(mngr.directory)
  failures = []
  for step in sorted(mngr.all_steps(), reverse=True):
    where = ckpt_dir / str(step)
    try:
      meta = read_meta(mngr, step)
    except Exception as e:  # pylint: disable=broad-except (a corrupt file may raise anything)
      failures.append((step, f'{where}/meta: {type(e).__name__}: {e}'))
      continue
    check(meta)
    try:
      state = restore_checkpoint(mngr, step, template_for(meta), mode, mesh)
      _verify_checksums(state, meta, mode, f'{where}/state')
    except Exception as e:  # pylint: disable=broad-except
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


def _preempted(p: int, done: int, ckpt_dir) -> Preempted:
  message = (f'gcad_jax: SIGTERM: p{p} saved its checkpoint at step {done} in {ckpt_dir}; exiting with '
             f'code {PREEMPTED_EXIT_CODE}. Rerun the same command to resume.')
  logging.warning(message)
  print(message, flush=True)
  return Preempted(PREEMPTED_EXIT_CODE)


def _git_commit() -> str | None:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None if out.returncode == 0 else None


def _host_cpu() -> str:
  """The CPU model and its widest SIMD extension, from /proc/cpuinfo (Linux); else `platform.processor()`.

  Recorded because one config and seed trained in two sessions drifted apart (docs/quality.md, session 11).
  """
  cpu = xla_cpu.cpuinfo()
  if not cpu:
    return platform.processor()
  flags = set(cpu.get('flags', '').split())
  simd = next((f for f in ('avx512f', 'avx2', 'avx', 'sse4_2') if f in flags), 'none')
  return f"{cpu.get('model name', platform.processor())} ({simd})"


def provenance(config) -> dict:
  """Code, packages, devices, host CPU, XLA flags, processes and seed of this run (next to the checkpoints)."""
  packages = {}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'clu', 'numpy', 'ml_collections',
               'tensorflow-datasets', 'gcad_jax'):
    try:
      packages[name] = importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
      packages[name] = None
  return {'git_commit': _git_commit(), 'python': platform.python_version(), 'packages': packages,
          'backend': jax.default_backend(), 'devices': [str(d) for d in jax.devices()],
          'device_kind': jax.devices()[0].device_kind, 'device_count': jax.device_count(),
          'process_count': jax.process_count(), 'seed': config.seed, 'parallel': config.parallel,
          'hostname': platform.node(), 'host_cpu': _host_cpu(), 'cpu_count': os.cpu_count(),
          'xla_flags': os.environ.get('XLA_FLAGS', ''), 'start_time': time.strftime('%Y-%m-%dT%H:%M:%S%z')}


def _write_json(path: epath.Path, value) -> None:
  """Atomically (a hidden temporary name, then a rename: issue 7, item 5), on process 0."""
  if jax.process_index() == 0:
    atomic_io.write_json(path, value, indent=2, sort_keys=True, default=str)


def write_run_files(config, workdir) -> dict:
  """workdir/config.json (the resolved config) and workdir/provenance.json."""
  workdir = epath.Path(workdir)
  _write_json(workdir / 'config.json', json.loads(config.to_json_best_effort()))
  info = provenance(config)
  _write_json(workdir / 'provenance.json', info)
  return info


def _warn_if_random_teacher(config) -> None:
  """Says when E_loc is not a fully pretrained teacher: random, or a distillation stopped early (its meta)."""
  if config.teacher.init == 'random':
    logging.warning('WARNING: E_loc (the teacher) is random-initialised (config.teacher.init=random): no '
                    'pretrained teacher weights are used. Fine for tests and demos; not the paper\'s setting '
                    '(GCAD.md §3.5).')
    return
  for p in config.model.scales:
    meta = teacher_weights.teacher_meta(config.teacher.init, p)
    done, planned = meta.get('iterations'), meta.get('planned_iterations')
    if done is not None and planned and done < planned:
      logging.warning('WARNING: the E_loc teacher for p=%d (config.teacher.init=%s) was distilled for %d of the '
                      '%d planned iterations; see gcad_jax/weights/MODEL_CARD.md for what that costs.', p,
                      config.teacher.init, done, planned)


def _steps_per_epoch(config, num_examples: int) -> int:
  """Full global batches per epoch (GCAD.md §7.3); refuses fewer images than one batch, naming the key."""
  try:
    return input_pipeline.steps_per_epoch(num_examples, config.train.batch_size, config.train.drop_last)
  except ValueError as e:
    raise configlib.ConfigError(f'config.train.batch_size: {e}') from None


def _scale_dir(workdir, p: int) -> epath.Path:
  return epath.Path(workdir) / f'p{p}'


def _init(config, p: int, image_shape: tuple[int, int]):
  """Networks and freshly initialised (trainable, e_loc_params) of scale p, from the run's seed."""
  nets = gcad.build_nets(config, p)
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), p)
  trainable, e_loc_params = gcad.init_params(nets, rng, tuple(image_shape))
  return nets, trainable, e_loc_params


def _template(config, trainable, e_loc_params, rglo_started: bool) -> TrainState:
  d = config.eloc.d_loc
  stats = {'mean': np.zeros((d,), np.float32), 'std': np.ones((d,), np.float32)}
  state = create_train_state(config, trainable, e_loc_params, stats)
  return start_rglo(config, state) if rglo_started else state


def train_scale(config, workdir, p: int, train_data, mesh, stop: threading.Event | None = None) -> TrainState:
  """Trains (or resumes) the GCAD model of receptive field p; returns its final state on the devices.

  Resumes from the newest checkpoint that reads back intact (`restore_newest`). A NaN or inf loss raises
  `NonFiniteError` before anything bad is saved; `stop` set (SIGTERM) saves the current step and raises
  `Preempted` (issue 7, docs/reliability.md).
  """
  mode, batch = config.parallel, config.train.batch_size
  scale_dir = _scale_dir(workdir, p)
  num_examples = len(train_data.images)
  steps_per_epoch = _steps_per_epoch(config, num_examples)
  total_steps = steps_per_epoch * config.train.epochs
  nets, trainable, e_loc_params = _init(config, p, train_data.images.shape[1:3])
  shapes = param_shapes({'params': trainable, 'e_loc_params': e_loc_params})

  # Closed on every exit (NonFiniteError, Preempted, a failed restore too), with Orbax's background threads.
  with contextlib.closing(checkpoint_manager(config, scale_dir, cleanup=True)) as mngr:
    latest, meta, state = restore_newest(
        mngr, lambda m: _template(config, trainable, e_loc_params, m['rglo_started']),
        lambda m: check_checkpoint(config, scale_dir, m, shapes, steps_per_epoch, num_examples), mode, mesh,
        quarantine=True)
    if latest is not None:
      logging.info('p%d: resumed from %s at step %d (epoch %d, batch %d)', p, scale_dir / 'checkpoints',
                   latest, meta['epoch'], meta['batch'])
    else:
      e_loc_params = teacher_weights.load_teacher_params(config.teacher.init, p, e_loc_params)
      t0 = time.time()
      if config.train.cache_eloc:
        features, stats = cached_eloc_features(config, nets, e_loc_params, train_data.images)
      else:
        stats = compute_eloc_stats(config, nets, e_loc_params, train_data.images, mesh)
      logging.info('p%d: E_loc statistics over %d training images in %.1fs (mean |μ| %.3g, mean σ %.3g)', p,
                   num_examples, time.time() - t0, np.abs(stats['mean']).mean(), stats['std'].mean())
      state = parallel.replicate(create_train_state(config, trainable, e_loc_params, stats), mode, mesh)
    del trainable, e_loc_params

    finished = latest is not None and latest >= total_steps  # nothing to train: no features to cache
    if config.train.cache_eloc and latest is not None and not finished:
      t0 = time.time()
      host = parallel.unreplicate({'p': state.e_loc_params, 's': state.eloc_stats}, mode)
      features, _ = cached_eloc_features(config, nets, host['p'], train_data.images, host['s'])
    if config.train.cache_eloc and not finished:
      logging.info('p%d: E_loc features of %d training images cached in %.1fs (%.2f GB on the host)', p,
                   num_examples, time.time() - t0, features.nbytes / 1e9)
    else:
      features = None

    start = latest or 0
    writer = metric_writers.create_default_writer(scale_dir, just_logging=jax.process_index() > 0)
    report_progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
    step_fns = {}

    def step_fn(with_glo):
      if with_glo not in step_fns:
        fn = functools.partial(train_step, nets=nets, config=config, steps_per_epoch=steps_per_epoch,
                               with_glo=with_glo)
        step_fns[with_glo] = parallel.map_per_device(fn, mode, mesh)
      return step_fns[with_glo]

    def meta_at(done: int, rglo_started: bool) -> dict:
      return {'step': done, 'epoch': done // steps_per_epoch, 'batch': done % steps_per_epoch,
              'steps_per_epoch': steps_per_epoch, 'total_steps': total_steps, 'scale': p,
              'rglo_started': rglo_started, 'seed': config.seed, 'num_train_examples': num_examples,
              'param_shapes': shapes, 'model_config': _model_config(config)}

    rglo_started = state.opt_state_rglo is not None
    accumulated, count, interval = None, 0, []  # interval: per-step losses since the last finiteness check
    logging.info('p%d: %d steps (%d epochs × %d steps of %d images) on %d devices (%s), from step %d', p,
                 total_steps, config.train.epochs, steps_per_epoch, batch, jax.device_count(), mode, start)
    for epoch in range(start // steps_per_epoch, config.train.epochs):
      order = input_pipeline.epoch_batches(num_examples, batch, config.seed, epoch, jax.process_index(),
                                           jax.process_count(), drop_last=config.train.drop_last)
      for i in range(start % steps_per_epoch if epoch == start // steps_per_epoch else 0, steps_per_epoch):
        step = epoch * steps_per_epoch + i
        with_glo = fractional_epoch(step, steps_per_epoch) >= config.train.rglo_start_epoch
        if with_glo and not rglo_started:
          host = parallel.unreplicate(state, mode)
          state = parallel.replicate(start_rglo(config, host), mode, mesh)
          rglo_started = True
          logging.info('p%d: step %d (epoch %.2f): R_glo and L_glo join (GCAD.md §7.3)', p, step,
                       fractional_epoch(step, steps_per_epoch))
        batch_arrays = (train_data.images[order[i]],)
        if features is not None:
          batch_arrays += (features[order[i]],)
        state, metrics = step_fn(with_glo)(state, *parallel.shard_batch(batch_arrays, mode, mesh))
        accumulated = metrics if accumulated is None else jax.tree.map(jnp.add, accumulated, metrics)
        interval.append(metrics)
        count += 1
        done = step + 1
        report_progress(done)
        log_now = done % config.train.log_every_steps == 0 or done == total_steps or done == start + 1
        preempted = stop is not None and stop.is_set()
        save_now = done % config.train.checkpoint_every_steps == 0 or done == total_steps or preempted
        if log_now or save_now:
          _check_finite_losses(p, accumulated, interval, done, mode, mngr)
          interval = []
        if log_now:
          _log(writer, config, p, done, steps_per_epoch, total_steps, accumulated, count, mode)
          accumulated, count = None, 0
        if save_now:
          save_checkpoint(mngr, state, meta_at(done, rglo_started), mode, force=done == total_steps or preempted)
        if preempted:
          mngr.wait_until_finished()
          writer.flush()
          raise _preempted(p, done, scale_dir / 'checkpoints')
    if start >= total_steps:
      logging.info('p%d: already trained (%d steps) according to %s', p, total_steps, scale_dir / 'checkpoints')
    mngr.wait_until_finished()
    writer.flush()
    return state


def _log(writer, config, p, done, steps_per_epoch, total_steps, accumulated, count, mode) -> None:
  """Writes the interval means of the loss terms, the learning rate and the skip weights (host sync)."""
  means = {k: float(v) / count for k, v in parallel.unreplicate(accumulated, mode).items()}
  epoch = fractional_epoch(done, steps_per_epoch)
  weights = np.asarray(skip_weights(config, epoch))
  lr = config.optim.learning_rate * float(learning_rate_factor(config, done, total_steps))
  scalars = dict(means, learning_rate=lr, epoch=epoch)
  scalars.update({f'skip_weight_{name}': float(w) for name, w in zip(global_net.SKIP_NAMES, weights)})
  writer.write_scalars(done, scalars)
  logging.info('p%d epoch %.2f step %d/%d: total %.5g  l_loc %.5g  l_kd %.5g  l_glo %.5g  skips %s', p, epoch,
               done, total_steps, means['total'], means['l_loc'], means['l_kd'], means['l_glo'],
               ' '.join(f'{n}={w:.2f}' for n, w in zip(global_net.SKIP_NAMES, weights)))


def latest_meta(config, workdir, p: int) -> dict:
  """The JSON data position saved with scale p's latest checkpoint."""
  with contextlib.closing(checkpoint_manager(config, _scale_dir(workdir, p))) as mngr:
    return read_meta(mngr, mngr.latest_step())


def restore_latest(config, workdir, p: int, mesh=None):
  """(nets, state on the devices, meta) of scale p's latest checkpoint in `workdir`; refuses other shapes."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  scale_dir = _scale_dir(workdir, p)
  nets, trainable, e_loc_params = _init(config, p, config.dataset.image_size)
  shapes = param_shapes({'params': trainable, 'e_loc_params': e_loc_params})
  mngr = checkpoint_manager(config, scale_dir)
  try:  # A corrupt newest checkpoint is reported and skipped, but left in place (no quarantine here).
    step, meta, state = restore_newest(
        mngr, lambda m: _template(config, trainable, e_loc_params, m['rglo_started']),
        lambda m: check_resumable(m, config, shapes, scale_dir / 'checkpoints'), config.parallel, mesh,
        quarantine=False)
  finally:
    mngr.close()
  if step is None:
    raise FileNotFoundError(f'{scale_dir / "checkpoints"} holds no checkpoint; train first (--mode=train)')
  return nets, state, meta


def validation_losses(config, nets, state: TrainState, steps_per_epoch: int, images_uint8, mesh) -> dict:
  """Mean Eq. 2–5 terms over the un-augmented validation images, R_glo included (GCAD.md §7.1)."""
  fn = functools.partial(eval_step, nets=nets, config=config, steps_per_epoch=steps_per_epoch)
  sums = _map_over_all(fn, state, images_uint8, config, mesh)
  count = float(sums.pop('count'))
  return {k: float(v) / count for k, v in sums.items()} | {'num_images': int(count)}


# E_glo and U together reproducing less than this share of E_loc's variance on the validation images means
# E_glo passes (almost) nothing through its bottleneck: the global map is then noise that the scalar
# normalisation (GCAD.md §8) scales up. On the synthetic scenes, runs that learnt reproduced 10–82 %,
# collapsed or untrained ones at most 0.3 % (docs/quality.md).
MIN_KD_EXPLAINED = 0.05


def kd_explained_fraction(l_kd: float, image_size, loss_reduction: str) -> float:
  """1 − L_kd / L_kd of a constant E_glo: the share of E_loc's variance that U(E_glo(x)) reproduces.

  E_loc's features are standardised per channel on the training images (GCAD.md §3.4), so predicting their
  mean gives L_kd ≈ H·W under 'sum_per_image' (Eq. 3 divided by d_loc) and ≈ 1 under 'mean_per_pixel'.
  """
  baseline = float(np.prod(image_size)) if loss_reduction == 'sum_per_image' else 1.0
  return 1.0 - l_kd / baseline


def warn_if_eglo_collapsed(p: int, losses: dict) -> None:
  """Warns when E_glo has collapsed (see MIN_KD_EXPLAINED): the global branch then carries no signal."""
  explained = losses['kd_explained']
  if explained < MIN_KD_EXPLAINED:
    logging.warning(
        'WARNING: p%d: E_glo and U reproduce %.1f%% of E_loc\'s variance on the validation images (under '
        '%d%%; L_kd %.0f, L_glo %.3g): E_glo has collapsed or not learnt, and the global map (and the '
        'combined one) is noise. Retrain this scale; docs/quality.md, "E_glo collapse".', p, 100 * explained,
        100 * MIN_KD_EXPLAINED, losses['l_kd'], losses['l_glo'])


def evaluate(config, workdir, states: dict | None = None, mesh=None) -> dict:
  """Validation loss terms of every scale (the given final states, else each scale's latest checkpoint).

  Writes workdir/p<p>/validation_losses.json and the clu scalars `val/<term>`. Then, with
  `config.score.enabled`, scores the test split with the same states (GCAD.md §8; `gcad_jax.assess`: maps,
  metrics.json, report.md) and returns its summary under the key 'test'.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_batch_size(config, mesh.size)
  check_same_run(config, workdir)
  mode = config.parallel
  val_data = input_pipeline.load_split(config, 'validation')
  results, models = {}, {}
  for p in config.model.scales:
    scale_dir = _scale_dir(workdir, p)
    if states is not None and p in states:  # The final state in memory (= the latest checkpoint).
      nets, state, meta = gcad.build_nets(config, p), states[p], latest_meta(config, workdir, p)
    else:
      nets, state, meta = restore_latest(config, workdir, p, mesh)
    models[p] = (nets, state)
    step = meta['step']
    losses = validation_losses(config, nets, state, meta['steps_per_epoch'], val_data.images, mesh)
    losses['step'] = step
    losses['kd_explained'] = kd_explained_fraction(losses['l_kd'], config.dataset.image_size,
                                                   config.train.loss_reduction)
    warn_if_eglo_collapsed(p, losses)
    results[p] = losses
    _write_json(scale_dir / 'validation_losses.json', losses)
    writer = metric_writers.create_default_writer(scale_dir, just_logging=jax.process_index() > 0)
    writer.write_scalars(step, {f'val/{k}': losses[k] for k in LOSSES})
    writer.flush()
    logging.info('p%d validation (%d images, step %d): %s', p, losses['num_images'], step,
                 {k: round(losses[k], 5) for k in LOSSES})
  if config.score.get('enabled', True):
    from gcad_jax import assess  # pylint: disable=g-import-not-at-top (scoring is downstream of training)
    results['test'] = assess.run(config, workdir, models, mesh, step=step, val_data=val_data)
    print(f'gcad_jax: report in {results["test"]["report"]}', flush=True)
  return results


# Config fields that fix what a workdir's checkpoints were trained on: resuming or evaluating under a config
# that differs in one of them is refused (issue 7). Scoring, export and schedule fields may differ.
RUN_KEYS = ('dataset.category', 'dataset.image_size', 'dataset.resize_method', 'dataset.normalize') + MODEL_KEYS


def _differences(saved, now, key: str) -> list[tuple[str, Any, Any]]:
  if isinstance(saved, dict) and isinstance(now, dict):
    return [d for k in sorted(set(saved) | set(now)) for d in _differences(saved.get(k), now.get(k), f'{key}.{k}')]
  return [] if saved == now else [(key, saved, now)]


def _lookup(tree: dict, key: str):
  for part in key.split('.'):
    tree = tree.get(part) if isinstance(tree, dict) else None
  return tree


def check_same_run(config, workdir) -> None:
  """Refuses a config whose RUN_KEYS differ from workdir/config.json (the config that trained it)."""
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    return
  saved, now = json.loads(path.read_text()), json.loads(config.to_json_best_effort())
  differing = [d for key in RUN_KEYS for d in _differences(_lookup(saved, key), _lookup(now, key), key)]
  if differing:
    key, was, is_now = differing[0]
    raise configlib.ConfigError(
        f'config.{key}: {workdir} was trained with {was!r} (see {path}), this config has {is_now!r} '
        f'({len(differing)} field(s) differ: {[d[0] for d in differing[:5]]}). Use the config in {path}, or '
        'another --workdir.')


def _check_existing_checkpoints(config, workdir, train_data) -> None:
  """Every scale's newest checkpoint (if any) must resume under this config; checked before any write.

  Multi-process: every process looks before a barrier, and nothing is written before it. Otherwise a late
  process would see the `checkpoints` folder that process 0 had just created, open one Orbax manager more
  than the others (each opening is a barrier) and hang.
  """
  num_examples = len(train_data.images)
  steps_per_epoch = _steps_per_epoch(config, num_examples)
  existing = [p for p in config.model.scales if (_scale_dir(workdir, p) / 'checkpoints').exists()]
  ocp.multihost.sync_global_processes('gcad_jax_checked_existing_checkpoints')
  found = False
  for p in existing:
    scale_dir = _scale_dir(workdir, p)
    with contextlib.closing(checkpoint_manager(config, scale_dir)) as mngr:
      meta = newest_meta(mngr)
    if meta is not None:
      found = True
      nets = gcad.build_nets(config, p)
      trainable, e_loc_params = jax.eval_shape(
          lambda: gcad.init_params(nets, jax.random.PRNGKey(0), tuple(train_data.images.shape[1:3])))
      shapes = param_shapes({'params': trainable, 'e_loc_params': e_loc_params})
      check_checkpoint(config, scale_dir, meta, shapes, steps_per_epoch, num_examples)
  if found:
    check_same_run(config, workdir)


def train(config, workdir, mesh=None) -> dict:
  """Trains one model per p in `config.model.scales`, one after the other; returns {p: final state}.

  `mesh` defaults to all devices (`parallel.make_mesh`); its size must divide `config.train.batch_size`.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_batch_size(config, mesh.size)
  _warn_if_random_teacher(config)
  t0 = time.time()
  train_data = input_pipeline.load_split(config, 'train')
  _check_existing_checkpoints(config, workdir, train_data)
  info = write_run_files(config, workdir)
  states = {}
  with sigterm_requests_checkpoint() as stop:
    for p in config.model.scales:
      states[p] = train_scale(config, workdir, p, train_data, mesh, stop=stop)
      if stop.is_set():  # SIGTERM after this scale's last step: its final checkpoint is complete.
        raise _preempted(p, int(parallel.unreplicate(states[p].step, config.parallel)),
                         _scale_dir(workdir, p) / 'checkpoints')
  jax.block_until_ready(states)
  info.update(end_time=time.strftime('%Y-%m-%dT%H:%M:%S%z'), train_wall_s=round(time.time() - t0, 2))
  _write_json(epath.Path(workdir) / 'provenance.json', info)
  return states


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mode: str = 'train_and_eval'):
  """The entry point of main.py: `train`, `eval` (validation losses from the latest checkpoints) or both."""
  configlib.validate(config)
  if mode not in ('train', 'eval', 'train_and_eval'):
    raise ValueError(f'--mode={mode!r} is not one of train, eval, train_and_eval')
  states = train(config, workdir) if mode in ('train', 'train_and_eval') else None
  if mode in ('eval', 'train_and_eval'):
    return evaluate(config, workdir, states)
  return states
