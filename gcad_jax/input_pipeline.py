"""TFDS → resized uint8 arrays on the host → augmented, normalised float batches on the devices.

The data sets are small (a few hundred images per category), so each split is decoded and resized once
into memory; epochs are deterministic index permutations of it (docs/method.md §12 #22), and augmentation plus
normalisation (docs/method.md §7.4, §3.4) are pure JAX functions that run inside the jit-compiled per-device
train step on the uint8 batch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tfds_loco import layout

# ImageNet statistics (docs/method.md §3.4): every network gets the same normalised image.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LABELS = layout.KINDS  # label index -> kind of image, as the TFDS builder stores it


@dataclasses.dataclass
class SplitData:
  """One split in memory: images resized to the network input, plus what evaluation needs."""
  images: np.ndarray  # (N, H, W, 3) uint8 at config.dataset.image_size
  image_ids: list[str]  # e.g. 'test/logical_anomalies/012'
  labels: np.ndarray  # (N,) int32, index into LABELS
  original_sizes: np.ndarray  # (N, 2) int32 (H, W) of the image files

  def __len__(self) -> int:
    return len(self.image_ids)


# ---------------------------------------------------------------------------------------------------------
# Resizing: the one resize of the project (inputs down to the network size, maps up to the original size).


def resize(images: jax.Array, size: Sequence[int], method: str = 'bilinear_antialias') -> jax.Array:
  """Bilinear resize of (..., H, W[, C]) to `size` = (H', W'), half-pixel centres (docs/method.md §12 #15, #25).

  `bilinear_antialias` widens the kernel when shrinking (area-like); when enlarging both methods agree.
  The aspect ratio is not kept.
  """
  images = jnp.asarray(images)
  has_channels = images.ndim >= 3 and images.shape[-1] in (1, 3)
  spatial = (-3, -2) if has_channels else (-2, -1)
  shape = list(images.shape)
  shape[spatial[0]], shape[spatial[1]] = int(size[0]), int(size[1])
  dtype = images.dtype if jnp.issubdtype(images.dtype, jnp.floating) else jnp.float32
  return jax.image.resize(images.astype(dtype), tuple(shape), method='linear', antialias=_antialias(method))


def _antialias(method: str) -> bool:
  """Whether `method` (config field dataset.resize_method) widens the kernel when shrinking."""
  if method not in ('bilinear_antialias', 'bilinear'):
    raise ValueError(f'unknown resize method {method!r}; use bilinear_antialias or bilinear')
  return method == 'bilinear_antialias'


# Inputs are resized to whole grey levels in fixed point, so that every runtime (XLA on any device, TF,
# ONNX Runtime) gets the same uint8 image: every value the two passes compute is an integer below 2^24, exact
# in float32 whatever the order of the sums, and each pass ends in a floor by a power of two. Rounding a float
# resize instead puts pixels near a half grey level on either side depending on the runtime's last ulp.
_ROW_BITS, _COLUMN_BITS, _CARRY_BITS = 16, 12, 4  # weights' scale per pass; grey levels' scale between them


@functools.lru_cache(maxsize=64)
def fixed_point_weights(n_in: int, n_out: int, antialias: bool, bits: int) -> np.ndarray:
  """(n_out, n_in) bilinear weights of `resize` (jax.image.scale_and_translate's triangle kernel, widened
  by n_in / n_out when shrinking with antialias), as whole numbers summing to 2^bits per row (largest
  remainders), float32. Computed in float64 numpy, so the same on every host."""
  scale = n_out / n_in
  kernel_scale = max(1 / scale, 1.0) if antialias else 1.0
  centres = (np.arange(n_out) + 0.5) / scale - 0.5
  weights = np.maximum(0.0, 1.0 - np.abs(centres[:, None] - np.arange(n_in)[None]) / kernel_scale)
  scaled = weights / weights.sum(axis=1, keepdims=True) * 2**bits
  whole = np.floor(scaled)
  missing = (2**bits - whole.sum(axis=1)).round().astype(int)
  order = np.argsort(whole - scaled, axis=1, kind='stable')  # largest remainder first
  for row, count in enumerate(missing):
    whole[row, order[row, :count]] += 1
  return whole.astype(np.float32)


def resize_to_grey_levels(images: jax.Array, size: Sequence[int], method: str = 'bilinear_antialias') -> jax.Array:
  """uint8 (..., H, W, C) → float32 (..., H', W', C) of whole grey levels 0..255: `resize` in fixed point
  (rows with weights of 2^-16, columns of 2^-12, 1/16 grey level carried between), rounded half up.

  Bit-identical in every runtime: `resize_uint8` (training, evaluation, predict) and the exported models
  (gcad_jax/serving.py) share it. It differs from `resize` rounded to uint8 by at most one grey level.
  """
  antialias = _antialias(method)
  if images.dtype != jnp.uint8:
    raise ValueError(f'resize_to_grey_levels takes uint8 images; got {images.dtype}')
  (height, width), size = images.shape[-3:-1], (int(size[0]), int(size[1]))
  grey = images.astype(jnp.float32)
  highest = jax.lax.Precision.HIGHEST  # no reduced-precision passes (TPU bf16, GPU TF32)
  # An axis already at its size has identity weights: its pass is skipped, with the same result.
  if height == size[0]:
    rows = grey * 2**_CARRY_BITS  # grey levels · 2^4
  else:
    rows_w = fixed_point_weights(height, size[0], antialias, _ROW_BITS)
    rows = jnp.einsum('ih,...hwc->...iwc', rows_w, grey, precision=highest)  # < 255·2^16
    shift = _ROW_BITS - _CARRY_BITS
    rows = jnp.floor((rows + 2**(shift - 1)) / 2**shift)  # grey levels · 2^4, ≤ 4080
  out, shift = rows, _CARRY_BITS
  if width != size[1]:
    columns_w = fixed_point_weights(width, size[1], antialias, _COLUMN_BITS)
    out = jnp.einsum('jw,...iwc->...ijc', columns_w, rows, precision=highest)  # ≤ 4080·2^12 < 2^24
    shift = _COLUMN_BITS + _CARRY_BITS
  return jnp.clip(jnp.floor((out + 2**(shift - 1)) / 2**shift), 0, 255)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _resize_uint8_jit(images: jax.Array, size: tuple[int, int], method: str) -> jax.Array:
  return resize_to_grey_levels(images, size, method).astype(jnp.uint8)


def resize_uint8(images: np.ndarray, size: Sequence[int], method: str, chunk: int = 16) -> np.ndarray:
  """Resizes a stack of uint8 images in chunks (bounded memory for large originals); `resize_to_grey_levels`."""
  size = (int(size[0]), int(size[1]))
  out = []
  for start in range(0, len(images), chunk):
    out.append(np.asarray(_resize_uint8_jit(jnp.asarray(images[start:start + chunk], jnp.uint8), size, method)))
  return np.concatenate(out) if out else np.zeros((0, *size, 3), np.uint8)


# ---------------------------------------------------------------------------------------------------------
# Loading a split from TFDS.


def _builder(config):
  """The TFDS builder of the configured category (in dataset.format), built from dataset.manual_dir when needed.

  A build from another folder of the same name, or from files since changed, is rebuilt (tfds_loco.build).
  """
  from tfds_loco import build as tfds_build  # Lazy: TFDS is not needed by bench/distill machines.

  d = config.dataset
  return tfds_build.build(
      category=d.category,
      manual_dir=d.manual_dir or None,
      data_dir=d.data_dir or None,
      overwrite=False,
      quiet=True,
      dataset_format=d.get('format', 'loco'),
      logical=tuple(d.get('logical', ()) or ()),
      val_fraction=d.get('val_fraction', 0.1))


def load_split(config, split: str, builder: Any = None) -> SplitData:
  """Decodes one split of the configured category and resizes it to config.dataset.image_size."""
  builder = builder or _builder(config)
  source = builder.as_data_source(split=split)
  size = tuple(config.dataset.image_size)
  ids, labels, sizes, resized = [], [], [], []
  pending: list[np.ndarray] = []

  def flush():
    if pending:
      resized.append(resize_uint8(np.stack(pending), size, config.dataset.resize_method))
      pending.clear()

  for i in range(len(source)):
    example = source[i]
    image = np.asarray(example['image'])
    image_id = example['image_id']
    ids.append(image_id.decode() if isinstance(image_id, bytes) else str(image_id))
    labels.append(int(example['label']))
    if pending and image.shape != pending[0].shape:
      flush()
    sizes.append(image.shape[:2])
    pending.append(image)
    if len(pending) == 16:
      flush()
  flush()
  if not ids:
    raise ValueError(f'split {split!r} of category {config.dataset.category!r} is empty')
  order = np.argsort(ids, kind='stable')  # Independent of TFDS's shard order.
  images = np.concatenate(resized)[order]
  return SplitData(images=images, image_ids=[ids[i] for i in order],
                   labels=np.asarray(labels, np.int32)[order],
                   original_sizes=np.asarray(sizes, np.int32)[order])


# ---------------------------------------------------------------------------------------------------------
# Epochs: deterministic index batches, split over processes.


def steps_per_epoch(num_examples: int, global_batch_size: int, drop_last: bool = True) -> int:
  steps = num_examples // global_batch_size if drop_last else math.ceil(num_examples / global_batch_size)
  if steps == 0:
    raise ValueError(
        f'{num_examples} training images are fewer than one batch of {global_batch_size} with drop_last; '
        'lower config.train.batch_size or set config.train.drop_last=False')
  return steps


def epoch_batches(num_examples: int, global_batch_size: int, seed: int, epoch: int, process_index: int = 0,
                  process_count: int = 1, drop_last: bool = True) -> list[np.ndarray]:
  """This process's slice of every global batch of one epoch; a pure function of (seed, epoch).

  With drop_last=False the last batch is filled up with the first indices of the permutation, so every
  batch has the global size (it must divide evenly over devices).
  """
  if global_batch_size % process_count:
    raise ValueError(f'global batch {global_batch_size} does not divide over {process_count} processes')
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  steps = steps_per_epoch(num_examples, global_batch_size, drop_last)
  needed = steps * global_batch_size
  if needed > num_examples:
    order = np.concatenate([order, order[:needed - num_examples]])
  per_process = global_batch_size // process_count
  batches = []
  for step in range(steps):
    batch = order[step * global_batch_size:(step + 1) * global_batch_size]
    batches.append(batch[process_index * per_process:(process_index + 1) * per_process])
  return batches


# ---------------------------------------------------------------------------------------------------------
# Augmentation and normalisation (pure JAX; docs/method.md §7.4, §3.4).


def normalize(images: jax.Array) -> jax.Array:
  """[0, 1] RGB → ImageNet-normalised (docs/method.md §3.4)."""
  mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
  std = jnp.asarray(IMAGENET_STD, images.dtype)
  return (images - mean) / std


def _rotate(image: jax.Array, angle_rad: jax.Array, fill: str) -> jax.Array:
  """Rotates one (H, W, C) image about its centre, bilinear, edge-replicated or zero fill."""
  height, width = image.shape[:2]
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                            indexing='ij')
  cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
  cos, sin = jnp.cos(angle_rad), jnp.sin(angle_rad)
  src_r = cy + (rows - cy) * cos - (cols - cx) * sin
  src_c = cx + (rows - cy) * sin + (cols - cx) * cos
  mode = 'nearest' if fill == 'edge' else 'constant'
  channels = [jax.scipy.ndimage.map_coordinates(image[..., c], [src_r, src_c], order=1, mode=mode, cval=0.0)
              for c in range(image.shape[-1])]
  return jnp.stack(channels, axis=-1)


def _grayscale(images: jax.Array) -> jax.Array:
  return (0.299 * images[..., 0] + 0.587 * images[..., 1] + 0.114 * images[..., 2])[..., None]


def _jitter(images: jax.Array, factors: jax.Array) -> jax.Array:
  """Brightness, contrast, saturation with per-image factors (B, 3), in that order, clipped to [0, 1]."""
  brightness, contrast, saturation = (factors[:, i, None, None, None] for i in range(3))
  images = jnp.clip(images * brightness, 0, 1)
  mean_gray = jnp.mean(_grayscale(images), axis=(1, 2, 3), keepdims=True)
  images = jnp.clip(mean_gray + (images - mean_gray) * contrast, 0, 1)
  gray = _grayscale(images)
  return jnp.clip(gray + (images - gray) * saturation, 0, 1)


def augment(rng: jax.Array, images: jax.Array, *, hflip: bool, vflip: bool, flip_prob: float = 0.5,
            rotate_deg: float = 3.0, jitter: float = 0.2, fill: str = 'edge') -> jax.Array:
  """docs/method.md §7.4 on a (B, H, W, 3) float batch in [0, 1]: flip → rotate → jitter, per image."""
  batch = images.shape[0]
  k_h, k_v, k_rot, k_jit = jax.random.split(rng, 4)
  if hflip:
    do = jax.random.bernoulli(k_h, flip_prob, (batch, 1, 1, 1))
    images = jnp.where(do, images[:, :, ::-1], images)
  if vflip:
    do = jax.random.bernoulli(k_v, flip_prob, (batch, 1, 1, 1))
    images = jnp.where(do, images[:, ::-1], images)
  if rotate_deg > 0:
    angles = jax.random.uniform(k_rot, (batch,), minval=-rotate_deg, maxval=rotate_deg) * (jnp.pi / 180.0)
    images = jax.vmap(lambda im, a: _rotate(im, a, fill))(images, angles)
  if jitter > 0:
    factors = jax.random.uniform(k_jit, (batch, 3), minval=1.0 - jitter, maxval=1.0 + jitter)
    images = _jitter(images, factors)
  return images


def preprocess(rng: jax.Array, images_uint8: jax.Array, config, train: bool) -> jax.Array:
  """uint8 batch → (augmented when training and config.augment.enabled) normalised float32 batch."""
  from gcad_jax import configlib  # Lazy: configlib imports ml_collections.

  images = images_uint8.astype(jnp.float32) / 255.0
  if train and config.augment.enabled:
    hflip, vflip = configlib.flips_for(config)
    images = augment(rng, images, hflip=hflip, vflip=vflip, flip_prob=config.augment.flip_prob,
                     rotate_deg=config.augment.rotate_deg, jitter=config.augment.jitter,
                     fill=config.augment.fill)
  return normalize(images)
