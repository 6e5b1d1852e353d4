"""GCAD training: train state, per-device train and eval steps, the loop, its logging and validation losses.

docs/method.md §7 (losses, staging, optimiser), §3.4 (E_loc statistics), §4.3 (skip fade), §13 (JAX mapping).
One full model per receptive field p in `config.model.scales`, trained one after the other in the same run,
each with its own state and its own folder `workdir/p17`, `workdir/p33`:

  workdir/config.json, workdir/provenance.json      resolved config; code, packages, devices, seed, times
  workdir/p17/checkpoints/<step>/{state,meta}       Orbax: TrainState + JSON data position
  workdir/p17/events.out.tfevents.*                 TensorBoard scalars (losses, learning rate, skip weights)
  workdir/p17/validation_losses.json                Eq. 2–5 terms on the validation images, kd_explained

The run record and the same-run checks are in `run_info`, checkpoints and pre-emption in `checkpoints`,
E_loc's statistics in `eloc_stats`, TensorBoard writing in `summaries`, the device mesh in `parallel`.
About 500 lines: the shape of the flax examples' train.py (state, steps, `train_and_evaluate`), kept in one
file so that the loop reads top to bottom.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from gcad_jax import checkpoints, configlib, eloc_stats, input_pipeline, parallel, run_info, summaries
from gcad_jax.models import gcad, global_net, teacher_weights

MAIN = ('e_glo', 'u', 'r_loc')  # optimised from step 0 (docs/method.md §7.3, stage 1)
RGLO = 'r_glo'  # optimised from train.rglo_start_epoch on, with its own optimiser state
LOSSES = ('l_loc', 'l_kd', 'l_glo', 'total')


@flax.struct.dataclass
class TrainState:
  """Everything one scale's training carries from step to step (docs/method.md §7.3, §13).

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
  """Adam with coupled L2, as PyTorch `Adam(weight_decay=…)` (docs/method.md §7.3, not AdamW)."""
  o = config.optim
  return optax.chain(optax.add_decayed_weights(o.weight_decay),
                     optax.adam(o.learning_rate, b1=o.b1, b2=o.b2, eps=o.eps))


def learning_rate_factor(config: ml_collections.ConfigDict, step, total_steps: int):
  """lr(step) / optim.learning_rate: 1 for 'constant' (docs/method.md §7.3, §12 #19), else 'cosine' from 1 to 0.

  The cosine [I] is a function of the global step, so R_glo, which joins later, follows the same curve.
  Works traced and on the host.
  """
  if config.optim.schedule == 'constant':
    return 1.0
  progress = jnp.clip(step / max(int(total_steps), 1), 0.0, 1.0)
  return 0.5 * (1.0 + jnp.cos(jnp.pi * progress))


def create_train_state(config, trainable, e_loc_params, eloc_stats) -> TrainState:
  """Stage-1 state: the optimiser state for {E_glo, U, R_loc} only (docs/method.md §7.3)."""
  tx = make_optimizer(config)
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                    opt_state_main=tx.init({k: trainable[k] for k in MAIN}), opt_state_rglo=None,
                    e_loc_params=e_loc_params, eloc_stats=eloc_stats)


def start_rglo(config, state: TrainState) -> TrainState:
  """The stage switch (docs/method.md §7.3): R_glo gets a fresh optimiser state, Adam count 0."""
  return state.replace(opt_state_rglo=make_optimizer(config).init(state.params[RGLO]))


def fractional_epoch(step, steps_per_epoch: int):
  """e = step / steps_per_epoch (docs/method.md §4.3, §7.3); works traced and on the host."""
  return step / steps_per_epoch


def skip_weights(config, epoch):
  """The five E_glo skip weights at fractional epoch `epoch` (docs/method.md §4.3)."""
  fade = config.eglo.skip_fade
  return global_net.skip_weights(epoch, mode=fade.mode, end_epoch=fade.end_epoch)


def eglo_grad_scale_in_lglo(config, epoch):
  """The share of L_glo's gradient that reaches E_glo at fractional `epoch` [I] (docs/quality.md).

  None (all of it: the paper's joint loss, docs/method.md §7.2) unless `train.lglo_eglo_grad_ramp_epochs` > 0; then
  it rises linearly from 0 at `train.rglo_start_epoch` to 1 that many epochs later, so that R_glo first
  learns to follow E_glo before its large early error can pull E_glo's z towards a constant.
  """
  ramp = config.train.lglo_eglo_grad_ramp_epochs
  if not ramp:
    return None
  return jnp.clip((epoch - config.train.rglo_start_epoch) / ramp, 0.0, 1.0)


def preprocess_examples(config, step, images, train: bool):
  """Augments (when `train`) and normalises this device's uint8 images (docs/method.md §7.4).

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
  """One step of docs/method.md §7.5 on this device's rows; gradients averaged over `data` with `lax.pmean`.

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
# Host side: the loop, logging, validation losses.


def _warn_if_random_teacher(config) -> None:
  """Says when E_loc is not a fully pretrained teacher: random, or a distillation stopped early (its meta)."""
  if config.teacher.init == 'random':
    logging.warning('WARNING: E_loc (the teacher) is random-initialised (config.teacher.init=random): no '
                    'pretrained teacher weights are used. Fine for tests and demos; not the paper\'s setting '
                    '(docs/method.md §3.5).')
    return
  for p in config.model.scales:
    meta = teacher_weights.teacher_meta(config.teacher.init, p)
    done, planned = meta.get('iterations'), meta.get('planned_iterations')
    if done is not None and planned and done < planned:
      logging.warning('WARNING: the E_loc teacher for p=%d (config.teacher.init=%s) was distilled for %d of the '
                      '%d planned iterations; see gcad_jax/weights/MODEL_CARD.md for what that costs.', p,
                      config.teacher.init, done, planned)


def _steps_per_epoch(config, num_examples: int) -> int:
  """Full global batches per epoch (docs/method.md §7.3); refuses fewer images than one batch, naming the key."""
  try:
    return input_pipeline.steps_per_epoch(num_examples, config.train.batch_size, config.train.drop_last)
  except ValueError as e:
    raise configlib.ConfigError(f'config.train.batch_size: {e}') from None


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


def train_scale(config, workdir, p: int, train_data, par: parallel.DataParallel,
                stop: threading.Event | None = None) -> TrainState:
  """Trains (or resumes) the GCAD model of receptive field p; returns its final state on the devices.

  Resumes from the newest checkpoint that reads back intact (`checkpoints.restore_newest`). A NaN or inf loss raises
  `NonFiniteError` before anything bad is saved; `stop` set (SIGTERM) saves the current step and raises
  `Preempted` (issue 7, docs/reliability.md).
  """
  batch = config.train.batch_size
  scale_dir = run_info.scale_dir(workdir, p)
  num_examples = len(train_data.images)
  steps_per_epoch = _steps_per_epoch(config, num_examples)
  total_steps = steps_per_epoch * config.train.epochs
  nets, trainable, e_loc_params = _init(config, p, train_data.images.shape[1:3])
  shapes = checkpoints.param_shapes({'params': trainable, 'e_loc_params': e_loc_params})

  # Closed on every exit (NonFiniteError, Preempted, a failed restore too), with Orbax's background threads.
  with contextlib.closing(checkpoints.checkpoint_manager(config, scale_dir, cleanup=True)) as mngr:
    latest, meta, state = checkpoints.restore_newest(
        mngr, lambda m: _template(config, trainable, e_loc_params, m['rglo_started']),
        lambda m: checkpoints.check_checkpoint(config, scale_dir, m, shapes, steps_per_epoch, num_examples), par,
        quarantine=True)
    if latest is not None:
      logging.info('p%d: resumed from %s at step %d (epoch %d, batch %d)', p, scale_dir / 'checkpoints',
                   latest, meta['epoch'], meta['batch'])
    else:
      e_loc_params = teacher_weights.load_teacher_params(config.teacher.init, p, e_loc_params)
      t0 = time.time()
      if config.train.cache_eloc:
        features, stats = eloc_stats.cached_eloc_features(config, nets, e_loc_params, train_data.images)
      else:
        stats = eloc_stats.compute_eloc_stats(config, nets, e_loc_params, train_data.images, par)
      logging.info('p%d: E_loc statistics over %d training images in %.1fs (mean |μ| %.3g, mean σ %.3g)', p,
                   num_examples, time.time() - t0, np.abs(stats['mean']).mean(), stats['std'].mean())
      state = par.replicate(create_train_state(config, trainable, e_loc_params, stats))
    del trainable, e_loc_params

    finished = latest is not None and latest >= total_steps  # nothing to train: no features to cache
    if config.train.cache_eloc and latest is not None and not finished:
      t0 = time.time()
      host = par.unreplicate({'p': state.e_loc_params, 's': state.eloc_stats})
      features, _ = eloc_stats.cached_eloc_features(config, nets, host['p'], train_data.images, host['s'])
    if config.train.cache_eloc and not finished:
      logging.info('p%d: E_loc features of %d training images cached in %.1fs (%.2f GB on the host)', p,
                   num_examples, time.time() - t0, features.nbytes / 1e9)
    else:
      features = None

    start = latest or 0
    writer = summaries.create_writer(scale_dir, main_process=jax.process_index() == 0)
    progress = summaries.Progress(start, total_steps)
    step_fns = {}

    def step_fn(with_glo):
      if with_glo not in step_fns:
        fn = functools.partial(train_step, nets=nets, config=config, steps_per_epoch=steps_per_epoch,
                               with_glo=with_glo)
        step_fns[with_glo] = par.map(fn)
      return step_fns[with_glo]

    def meta_at(done: int, rglo_started: bool) -> dict:
      return {'step': done, 'epoch': done // steps_per_epoch, 'batch': done % steps_per_epoch,
              'steps_per_epoch': steps_per_epoch, 'total_steps': total_steps, 'scale': p,
              'rglo_started': rglo_started, 'seed': config.seed, 'num_train_examples': num_examples,
              'param_shapes': shapes, 'model_config': run_info.model_config(config)}

    rglo_started = state.opt_state_rglo is not None
    accumulated, count, interval = None, 0, []  # interval: per-step losses since the last finiteness check
    logging.info('p%d: %d steps (%d epochs × %d steps of %d images) on %d devices (%s), from step %d', p,
                 total_steps, config.train.epochs, steps_per_epoch, batch, jax.device_count(), par.mode, start)
    for epoch in range(start // steps_per_epoch, config.train.epochs):
      order = input_pipeline.epoch_batches(num_examples, batch, config.seed, epoch, jax.process_index(),
                                           jax.process_count(), drop_last=config.train.drop_last)
      for i in range(start % steps_per_epoch if epoch == start // steps_per_epoch else 0, steps_per_epoch):
        step = epoch * steps_per_epoch + i
        with_glo = fractional_epoch(step, steps_per_epoch) >= config.train.rglo_start_epoch
        if with_glo and not rglo_started:
          state = par.replicate(start_rglo(config, par.unreplicate(state)))
          rglo_started = True
          logging.info('p%d: step %d (epoch %.2f): R_glo and L_glo join (docs/method.md §7.3)', p, step,
                       fractional_epoch(step, steps_per_epoch))
        batch_arrays = (train_data.images[order[i]],)
        if features is not None:
          batch_arrays += (features[order[i]],)
        state, metrics = step_fn(with_glo)(state, *par.shard(batch_arrays))
        accumulated = metrics if accumulated is None else jax.tree.map(jnp.add, accumulated, metrics)
        interval.append(metrics)
        count += 1
        done = step + 1
        log_now = done % config.train.log_every_steps == 0 or done == total_steps or done == start + 1
        preempted = stop is not None and stop.is_set()
        save_now = done % config.train.checkpoint_every_steps == 0 or done == total_steps or preempted
        if log_now or save_now:
          checkpoints.check_finite_losses(p, accumulated, interval, done, par, mngr, LOSSES)
          interval = []
        if log_now:
          _log(writer, config, p, done, steps_per_epoch, total_steps, accumulated, count, par, progress)
          accumulated, count = None, 0
        if save_now:
          checkpoints.save_checkpoint(mngr, state, meta_at(done, rglo_started), par,
                                      force=done == total_steps or preempted)
        if preempted:
          mngr.wait_until_finished()
          writer.flush()
          raise checkpoints.preempted(p, done, scale_dir / 'checkpoints')
    if start >= total_steps:
      logging.info('p%d: already trained (%d steps) according to %s', p, total_steps, scale_dir / 'checkpoints')
    mngr.wait_until_finished()
    writer.close()
    return state


def _log(writer, config, p, done, steps_per_epoch, total_steps, accumulated, count, par,
         progress: summaries.Progress) -> None:
  """Writes the interval means of the loss terms, the learning rate, the skip weights and the step rate
  (host sync), and logs one line: progress, rate, ETA and losses (the skip weights at debug level)."""
  means = {k: float(v) / count for k, v in par.unreplicate(accumulated).items()}
  epoch = fractional_epoch(done, steps_per_epoch)
  weights = np.asarray(skip_weights(config, epoch))
  lr = config.optim.learning_rate * float(learning_rate_factor(config, done, total_steps))
  rate, eta = progress.update(done)
  scalars = dict(means, learning_rate=lr, epoch=epoch)
  scalars.update({f'skip_weight_{name}': float(w) for name, w in zip(global_net.SKIP_NAMES, weights)})
  if rate is not None:
    scalars['steps_per_sec'] = rate
  writer.write_scalars(done, scalars)
  logging.info('p%d step %d/%d (%.0f%%, epoch %.2f) %s steps/s, ETA %s: total %.5g  l_loc %.5g  l_kd %.5g  '
               'l_glo %.5g', p, done, total_steps, 100 * done / total_steps, epoch,
               '?' if rate is None else f'{rate:.3g}', eta, means['total'], means['l_loc'], means['l_kd'],
               means['l_glo'])
  logging.debug('p%d step %d: skip weights %s, learning rate %.3g', p, done,
                ' '.join(f'{n}={w:.2f}' for n, w in zip(global_net.SKIP_NAMES, weights)), lr)


def restore_latest(config, workdir, p: int, mesh=None):
  """(nets, state on the devices, meta) of scale p's latest checkpoint in `workdir`; refuses other shapes."""
  par = parallel.DataParallel.from_config(config, mesh)
  scale_dir = run_info.scale_dir(workdir, p)
  nets, trainable, e_loc_params = _init(config, p, config.dataset.image_size)
  shapes = checkpoints.param_shapes({'params': trainable, 'e_loc_params': e_loc_params})
  mngr = checkpoints.checkpoint_manager(config, scale_dir)
  try:  # A corrupt newest checkpoint is reported and skipped, but left in place (no quarantine here).
    step, meta, state = checkpoints.restore_newest(
        mngr, lambda m: _template(config, trainable, e_loc_params, m['rglo_started']),
        lambda m: checkpoints.check_resumable(m, config, shapes, scale_dir / 'checkpoints'), par,
        quarantine=False)
  finally:
    mngr.close()
  if step is None:
    raise FileNotFoundError(f'{scale_dir / "checkpoints"} holds no checkpoint; train first (--mode=train)')
  return nets, state, meta


def validation_losses(config, nets, state: TrainState, steps_per_epoch: int, images_uint8,
                      par: parallel.DataParallel) -> dict:
  """Mean Eq. 2–5 terms over the un-augmented validation images, R_glo included (docs/method.md §7.1)."""
  fn = functools.partial(eval_step, nets=nets, config=config, steps_per_epoch=steps_per_epoch)
  sums = par.map_over_all(fn, state, images_uint8, config.train.batch_size)
  count = float(sums.pop('count'))
  return {k: float(v) / count for k, v in sums.items()} | {'num_images': int(count)}


# E_glo and U together reproducing less than this share of E_loc's variance on the validation images means
# E_glo passes (almost) nothing through its bottleneck: the global map is then noise that the scalar
# normalisation (docs/method.md §8) scales up. On the synthetic scenes, runs that learnt reproduced 10–82 %,
# collapsed or untrained ones at most 0.3 % (docs/quality.md).
MIN_KD_EXPLAINED = 0.05


def kd_explained_fraction(l_kd: float, image_size, loss_reduction: str) -> float:
  """1 − L_kd / L_kd of a constant E_glo: the share of E_loc's variance that U(E_glo(x)) reproduces.

  E_loc's features are standardised per channel on the training images (docs/method.md §3.4), so predicting their
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


def validate_and_score(config, workdir, states: dict | None = None, mesh=None) -> dict:
  """The evaluation after training: the validation loss terms of every scale (the given final states, else each scale's latest checkpoint).

  Writes workdir/p<p>/validation_losses.json and the TensorBoard scalars `val/<term>`. Then, with
  `config.score.enabled`, scores the test split with the same states (docs/method.md §8; `gcad_jax.assess`: maps,
  metrics.json, report.md) and returns its summary under the key 'test'.
  """
  par = parallel.DataParallel.from_config(config, mesh)
  parallel.check_batch_size(config, par.size)
  run_info.check_same_run(config, workdir)
  val_data = input_pipeline.load_split(config, 'validation')
  results, models = {}, {}
  for p in config.model.scales:
    scale_dir = run_info.scale_dir(workdir, p)
    if states is not None and p in states:  # The final state in memory (= the latest checkpoint).
      nets, state, meta = gcad.build_nets(config, p), states[p], checkpoints.latest_meta(config, workdir, p)
    else:
      nets, state, meta = restore_latest(config, workdir, p, par.mesh)
    models[p] = (nets, state)
    step = meta['step']
    losses = validation_losses(config, nets, state, meta['steps_per_epoch'], val_data.images, par)
    losses['step'] = step
    losses['kd_explained'] = kd_explained_fraction(losses['l_kd'], config.dataset.image_size,
                                                   config.train.loss_reduction)
    warn_if_eglo_collapsed(p, losses)
    results[p] = losses
    run_info.write_json(scale_dir / 'validation_losses.json', losses)
    writer = summaries.create_writer(scale_dir, main_process=jax.process_index() == 0)
    writer.write_scalars(step, {f'val/{k}': losses[k] for k in LOSSES})
    writer.close()
    logging.info('p%d validation (%d images, step %d): %s', p, losses['num_images'], step,
                 {k: round(losses[k], 5) for k in LOSSES})
  if config.score.get('enabled', True):
    from gcad_jax import assess  # pylint: disable=g-import-not-at-top (scoring is downstream of training)
    results['test'] = assess.assess_test_split(config, workdir, models, par.mesh, step=step, val_data=val_data)
    print(f'gcad_jax: report in {results["test"]["report"]}', flush=True)
  return results


def train(config, workdir, mesh=None) -> dict:
  """Trains one model per p in `config.model.scales`, one after the other; returns {p: final state}.

  `mesh` defaults to all devices (`parallel.make_mesh`); its size must divide `config.train.batch_size`.
  """
  par = parallel.DataParallel.from_config(config, mesh)
  parallel.check_batch_size(config, par.size)
  _warn_if_random_teacher(config)
  t0 = time.time()
  train_data = input_pipeline.load_split(config, 'train')
  num_examples = len(train_data.images)
  resume = checkpoints.check_existing(config, workdir, train_data.images.shape[1:3],
                                      _steps_per_epoch(config, num_examples), num_examples)
  if resume:
    run_info.check_same_run(config, workdir)
    run_info.check_same_training(config, workdir)
  info = run_info.write_run_files(config, workdir, resume=resume)
  states = {}
  with checkpoints.sigterm_requests_checkpoint() as stop:
    for p in config.model.scales:
      states[p] = train_scale(config, workdir, p, train_data, par, stop=stop)
      if stop.is_set():  # SIGTERM after this scale's last step: its final checkpoint is complete.
        raise checkpoints.preempted(p, int(par.unreplicate(states[p].step)),
                                    run_info.scale_dir(workdir, p) / 'checkpoints')
  jax.block_until_ready(states)
  run_info.finish_run(workdir, info, time.time() - t0)
  return states


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mode: str = 'train_and_eval'):
  """The entry point of main.py: `train`, `eval` (validation losses from the latest checkpoints) or both."""
  configlib.validate(config)
  if mode not in ('train', 'eval', 'train_and_eval'):
    raise ValueError(f'--mode={mode!r} is not one of train, eval, train_and_eval')
  states = train(config, workdir) if mode in ('train', 'train_and_eval') else None
  if mode in ('eval', 'train_and_eval'):
    return validate_and_score(config, workdir, states)
  return states
