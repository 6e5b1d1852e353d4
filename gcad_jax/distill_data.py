"""The data of teacher distillation: natural images, p×p crops, and their targets cached once (docs/method.md §3.5).

* `ImageBank`: every image decoded and resized once (shorter side `imagenet_resize`) into an .npz cache.
* A fixed split of the images: every `heldout_every`-th image (sorted by path) is held out; its crops serve
  the descriptor diagnostics only, never training.
* `TargetBank`: a fixed set of crops with the frozen target network's features, computed once and cached
  under ~/.cache (never in the repository). A distillation step then trains only T̂ and D.
* Targets (`teacher.target_features`): 'pooled' is the paper's, the target network's globally pooled
  features of the crop (raw, or upsampled to `target_input_size` first); 'stageK' (or 'stage2+stage3')
  is the feature vector at the crop's centre of EfficientNet-Lite0's stage K output, run on the whole
  image (as EfficientAD pretrains its patch teacher) — a documented deviation (docs/deviations.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from gcad_jax import input_pipeline

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
TARGETS = {'efficientnet_lite0': 1280, 'resnet18': 512}


def cache_root(cache_dir: str = '') -> pathlib.Path:
  return pathlib.Path(cache_dir or pathlib.Path.home() / '.cache' / 'gcad_jax')


@dataclasses.dataclass
class ImageBank:
  """All images, shorter side = `imagenet_resize`, as one flat uint8 buffer with per-image offsets."""
  pixels: np.ndarray  # flat uint8
  shapes: np.ndarray  # (N, 2) heights and widths
  offsets: np.ndarray  # (N,) start of each image in `pixels`
  key: str = ''

  def __len__(self) -> int:
    return len(self.shapes)

  def image(self, i: int) -> np.ndarray:
    h, w = self.shapes[i]
    return self.pixels[self.offsets[i]:self.offsets[i] + h * w * 3].reshape(h, w, 3)

  def crops(self, rng: np.random.Generator, count: int, p: int, indices: np.ndarray | None = None) -> np.ndarray:
    """`count` uniformly random p×p crops (uniform image of `indices`, then uniform position), uint8."""
    indices = np.arange(len(self)) if indices is None else np.asarray(indices)
    out = np.empty((count, p, p, 3), np.uint8)
    for k, i in enumerate(indices[rng.integers(0, len(indices), count)]):
      h, w = self.shapes[i]
      top, left = rng.integers(0, h - p + 1), rng.integers(0, w - p + 1)
      out[k] = self.image(i)[top:top + p, left:left + p]
    return out


def split_images(count: int, heldout_every: int) -> tuple[np.ndarray, np.ndarray]:
  """(training, held-out) image indices: every `heldout_every`-th image is held out (0 = none held out)."""
  index = np.arange(count)
  if heldout_every <= 0:
    return index, index[:0]
  held = index % heldout_every == heldout_every - 1
  if held.all():
    raise ValueError(f'distill: {count} images cannot be split with heldout_every={heldout_every}')
  return index[~held], index[held]


def image_files(image_dir: str) -> list[pathlib.Path]:
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

  files = image_files(image_dir)
  listing = '\n'.join(f'{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}' for f in files)
  key = hashlib.sha1(f'{shorter}\n{listing}'.encode()).hexdigest()[:16]
  cache = cache_root(cache_dir) / 'distill_images'
  path = cache / f'bank_{shorter}_{key}.npz'
  if path.exists():
    with np.load(path) as data:
      return ImageBank(data['pixels'], data['shapes'], data['offsets'], key)
  log(f'distill: decoding and resizing {len(files)} images from {image_dir} (shorter side {shorter}) once; '
      f'cache: {path}')
  arrays = []
  for f in files:
    with Image.open(f) as image:
      arrays.append(_resize_shorter(image, shorter))
  shapes = np.array([a.shape[:2] for a in arrays], np.int64)
  offsets = np.concatenate([[0], np.cumsum([a.size for a in arrays])[:-1]]).astype(np.int64)
  bank = ImageBank(np.concatenate([a.reshape(-1) for a in arrays]), shapes, offsets, key)
  cache.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix('.tmp.npz')
  np.savez(tmp, pixels=bank.pixels, shapes=bank.shapes, offsets=bank.offsets)
  os.replace(tmp, path)
  return bank


# ---------------------------------------------------------------------------------------------------------
# Target networks (frozen; native normalisation).


def parse_stages(target_features: str) -> tuple[int, ...]:
  """'pooled' → (); 'stage2' → (2,); 'stage2+stage3' → (2, 3)."""
  if target_features == 'pooled':
    return ()
  try:
    stages = tuple(int(part.removeprefix('stage')) for part in target_features.split('+'))
  except ValueError:
    stages = ()
  if not stages or any(not part.startswith('stage') for part in target_features.split('+')) or any(
      not 1 <= k <= 4 for k in stages):
    raise ValueError(f"distill: target_features={target_features!r}: use 'pooled' or 'stageK' with K in 1..4, "
                     "joined by '+' (e.g. 'stage2+stage3'); teacher.target_features")
  return tuple(sorted(stages))


def target_dim(target: str, target_features: str) -> int:
  stages = parse_stages(target_features)
  if not stages:
    return TARGETS[target]
  from gcad_jax.backbones import efficientnet_lite  # pylint: disable=g-import-not-at-top
  return sum(efficientnet_lite.STAGES[k - 1][5] for k in stages)


def _backbone(target: str, target_weights: str):
  if target == 'efficientnet_lite0':
    from gcad_jax.backbones import efficientnet_lite as backbone  # pylint: disable=g-import-not-at-top
    variables, model = backbone.load_variables(target_weights or None), backbone.EfficientNetLite0()
  else:
    from gcad_jax.backbones import resnet as backbone  # pylint: disable=g-import-not-at-top
    variables, model = backbone.load_variables(target_weights), backbone.ResNet18()
  return backbone, model, jax.tree_util.tree_map(jnp.asarray, variables)


def pooled_target_fn(target: str, target_weights: str, target_input_size: int) -> Callable:
  """features(uint8-valued float crops (B, h, w, 3)) → (B, dim): the paper's pooled target (docs/method.md §3.5)."""
  backbone, model, variables = _backbone(target, target_weights)

  def features(crops_0_255: jnp.ndarray) -> jnp.ndarray:
    x = crops_0_255
    if target_input_size:
      x = input_pipeline.resize(x, (target_input_size, target_input_size), 'bilinear')
    return jax.lax.stop_gradient(model.apply(variables, backbone.normalise(x), features_only=True))

  return features


def stage_target_maps_fn(target: str, target_weights: str, stages: tuple[int, ...]) -> Callable:
  """maps(uint8-valued float images (B, H, W, 3)) → {stage: (B, H/s, W/s, C)} of EfficientNet-Lite0."""
  if target != 'efficientnet_lite0':
    raise ValueError(f"distill: stage targets need target='efficientnet_lite0', not {target!r}")
  backbone, model, variables = _backbone(target, target_weights)
  return jax.jit(lambda x: model.apply(variables, backbone.normalise(x), stages=stages))


def _centre_square(image: np.ndarray, size: int) -> np.ndarray:
  h, w = image.shape[:2]
  top, left = (h - size) // 2, (w - size) // 2
  return image[top:top + size, left:left + size]


# ---------------------------------------------------------------------------------------------------------
# A fixed bank of crops with their targets, computed once.


@dataclasses.dataclass
class TargetBank:
  crops: np.ndarray  # (N, p, p, 3) uint8
  targets: np.ndarray  # (N, dim) float16 or float32

  def __len__(self) -> int:
    return len(self.crops)

  def batch(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    index = np.sort(rng.integers(0, len(self), size))  # sorted: sequential reads of a memory-mapped bank
    return np.asarray(self.crops[index]), np.asarray(self.targets[index], np.float32)


def _pooled_bank(bank: ImageBank, indices: np.ndarray, count: int, p: int, seed: int, fn: Callable,
                 chunk: int, log: Callable) -> TargetBank:
  crops = bank.crops(np.random.default_rng([seed, 7]), count, p, indices)
  jitted = jax.jit(fn)
  targets = []
  for start in range(0, count, chunk):
    part = crops[start:start + chunk]
    padded = np.concatenate([part, np.zeros((chunk - len(part), *part.shape[1:]), np.uint8)])
    targets.append(np.asarray(jitted(jnp.asarray(padded, jnp.float32)))[:len(part)].astype(np.float16))
    if (start // chunk) % 50 == 49:
      log(f'distill: target bank {start + len(part)}/{count} crops')
  return TargetBank(crops, np.concatenate(targets))


def _stage_bank(bank: ImageBank, indices: np.ndarray, count: int, p: int, seed: int, maps_fn: Callable,
                stages: tuple[int, ...], log: Callable) -> TargetBank:
  """Crops centred on stage-feature positions and the concatenated stage features there.

  The stage features are computed once per image on its centre square (side = the shorter side,
  `imagenet_resize`), so that every image has one shape and one compilation serves all.
  """
  from gcad_jax.backbones import efficientnet_lite  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng([seed, 11])
  strides = [efficientnet_lite.stage_stride(k) for k in stages]
  fine = min(strides)
  half, size = (p - 1) // 2, int(bank.shapes[indices].min())
  # Centres c = fine·r + fine − 1 (TF 'SAME' stride-2 layers centre output r on input 2r + 1), crop inside.
  rows = np.arange(size // fine)
  centres = fine * rows + fine - 1
  centres = centres[(centres - half >= 0) & (centres - half + p <= size)]
  per_image = -(-count // len(indices))
  crops, targets = [], []
  for n, i in enumerate(indices):
    image = _centre_square(bank.image(i), size)
    maps = maps_fn(jnp.asarray(image[None], jnp.float32))
    cy, cx = rng.choice(centres, per_image), rng.choice(centres, per_image)
    feats = []
    for k, s in zip(stages, strides):
      m = np.asarray(maps[k][0])
      ry = np.clip(np.round((cy - (s - 1)) / s).astype(int), 0, m.shape[0] - 1)
      rx = np.clip(np.round((cx - (s - 1)) / s).astype(int), 0, m.shape[1] - 1)
      feats.append(m[ry, rx])
    targets.append(np.concatenate(feats, axis=-1).astype(np.float16))
    crops.append(np.stack([image[y - half:y - half + p, x - half:x - half + p] for y, x in zip(cy, cx)]))
    if n % 200 == 199:
      log(f'distill: stage targets of {n + 1}/{len(indices)} images')
  order = rng.permutation(per_image * len(indices))[:count]
  return TargetBank(np.concatenate(crops)[order], np.concatenate(targets)[order])


def target_bank(s: Any, bank: ImageBank, indices: np.ndarray, count: int, split: str,
                log: Callable = print, chunk: int = 256) -> TargetBank:
  """The cached bank of `count` crops of the images `indices` and their targets for settings `s`.

  Cached as two .npy files (memory-mapped when read) under `cache_root(s.cache_dir)/distill_targets/`.
  """
  record = {'images': bank.key, 'split': split, 'indices': hashlib.sha1(np.asarray(indices).tobytes()).hexdigest(),
            'count': count, 'p': s.p, 'seed': s.seed, 'target': s.target, 'target_weights': s.target_weights,
            'target_input_size': s.target_input_size, 'target_features': s.target_features, 'version': 1}
  key = hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
  folder = cache_root(s.cache_dir) / 'distill_targets' / f'{split}_p{s.p}_{key}'
  if (folder / 'done').exists():
    return TargetBank(np.load(folder / 'crops.npy', mmap_mode='r'), np.load(folder / 'targets.npy', mmap_mode='r'))
  log(f'distill: computing the {split} target bank once ({count} crops, target {s.target} '
      f'{s.target_features}, input {s.target_input_size or "raw"}) into {folder}')
  stages = parse_stages(s.target_features)
  if stages:
    result = _stage_bank(bank, indices, count, s.p, s.seed, stage_target_maps_fn(s.target, s.target_weights, stages),
                         stages, log)
  else:
    fn = pooled_target_fn(s.target, s.target_weights, s.target_input_size)
    result = _pooled_bank(bank, indices, count, s.p, s.seed, fn, chunk, log)
  folder.mkdir(parents=True, exist_ok=True)
  for name, array in (('crops', result.crops), ('targets', result.targets)):
    np.save(folder / f'{name}.tmp.npy', array)
    os.replace(folder / f'{name}.tmp.npy', folder / f'{name}.npy')
  (folder / 'record.json').write_text(json.dumps(record, indent=2))
  (folder / 'done').write_text('')
  return result


class TrainingData:
  """Training batches: from the cached target bank, or (target_cache = 0) crops run through P every step."""

  def __init__(self, s: Any, log: Callable):
    self.s = s
    self.images = load_image_bank(s.image_dir, s.imagenet_resize, s.cache_dir, log)
    if int(self.images.shapes.min()) < s.p:
      raise ValueError(f'distill: an image is smaller than p={s.p} after resizing')
    self.train_index, held_index = split_images(len(self.images), s.heldout_every)
    self.dim = target_dim(s.target, s.target_features)
    self.heldout = None
    if not (len(held_index) and s.heldout_crops):
      log(f'distill: no held-out images ({len(self.images)} images, heldout_every={s.heldout_every}, heldout_crops='
          f'{s.heldout_crops}): no descriptor diagnostics')
    else:
      self.heldout = target_bank(s, self.images, held_index, s.heldout_crops, 'heldout', log)
    if s.target_cache:
      self.bank, self.target_fn = target_bank(s, self.images, self.train_index, s.target_cache, 'train', log), None
    else:
      self.bank = None
      self.target_fn = jax.jit(pooled_target_fn(s.target, s.target_weights, s.target_input_size))

  def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([self.s.seed, step])
    if self.bank is not None:
      return self.bank.batch(rng, self.s.batch_size)
    crops = self.images.crops(rng, self.s.batch_size, self.s.p, self.train_index)
    return crops, np.asarray(self.target_fn(jnp.asarray(crops, jnp.float32)))
