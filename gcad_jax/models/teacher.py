"""The patch-descriptor teacher E_loc of Uninformed Students, as a patch and as a dense network (docs/method.md §3).

`PatchTeacher(dense=False)` maps p×p patches to descriptors (§3.2); `PatchTeacher(dense=True)` evaluates the
same parameters at every pixel of an image by the "à trous" conversion (§3.3). Both forms have identical
parameter trees, so a pretrained patch network is used densely unchanged.
"""

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax
import numpy as np

from gcad_jax.models import layers

PATCH_SIZES = (17, 33)
PAD_MODES = {'zeros': 'constant', 'reflect': 'reflect', 'edge': 'edge'}
FINAL_ACTIVATIONS = ('linear', 'leaky_relu')
# 'dilated': the à trous form of §3.3. 'space_to_batch': the same outputs with undilated convolutions on the
# polyphase sub-images (each pool splits every map into its 2×2 phases; reassembled at the end).
DENSE_FORMS = ('dilated', 'space_to_batch')


def layer_list(p: int, p33_first_kernel: int = 5) -> tuple[tuple[int, bool], ...]:
  """(kernel size, max-pool after it) of each convolution of the patch network (docs/method.md §3.2)."""
  if p == 17:
    return ((6, False), (5, False), (5, False), (4, False))
  if p == 33:
    return ((p33_first_kernel, True), (5, True), (2, False), (4, False))
  raise ValueError(f'patch size p={p} is not one of {list(PATCH_SIZES)} (config field model.scales)')


def receptive_field(p: int, p33_first_kernel: int = 5) -> int:
  """Effective receptive field: 17 for p = 17; 32 for p = 33, whose first pool floors 29 to 14 (§3.2)."""
  field, dilation = 1, 1
  for kernel, pool in layer_list(p, p33_first_kernel):
    field += (kernel - 1) * dilation
    if pool:
      field += dilation
      dilation *= 2
  return field


def dense_padding(p: int, p33_first_kernel: int = 5) -> tuple[tuple[int, int], tuple[int, int]]:
  """((top, bottom), (left, right)) padding for an H×W dense output (docs/method.md §3.3).

  In total receptive field − 1 per axis, the smaller half first: 8/8 for p = 17, 15/16 for p = 33.
  """
  total = receptive_field(p, p33_first_kernel) - 1
  side = (total // 2, total - total // 2)
  return side, side


def standardise(features: jnp.ndarray, stats: Mapping[str, Any]) -> jnp.ndarray:
  """f = (E_loc(x) − μ_c)/σ_c per channel (docs/method.md §3.4); `stats = {'mean': (d,), 'std': (d,)}`."""
  return (features - jnp.asarray(stats['mean'])) / jnp.asarray(stats['std'])


def feature_moments(features: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Per-channel (Σx, Σx², pixel count) of one batch of (..., d) features, for streaming statistics (§3.4).

  The caller sums the three over all batches (in float64, e.g. with numpy) and calls `stats_from_moments`.
  """
  flat = features.reshape(-1, features.shape[-1]).astype(jnp.float32)
  count = jnp.asarray(flat.shape[0], jnp.float32)
  return flat.sum(axis=0), jnp.square(flat).sum(axis=0), count


def stats_from_moments(total: Any, total_sq: Any, count: Any) -> dict[str, np.ndarray]:
  """{'mean', 'std'} (float32, population std) from summed moments, computed in float64 (docs/method.md §3.4)."""
  total, total_sq, count = (np.asarray(v, np.float64) for v in (total, total_sq, count))
  if np.any(count <= 0):
    raise ValueError('stats_from_moments: the pixel count is 0; sum feature_moments over at least one batch')
  mean = total / count
  var = np.maximum(total_sq / count - np.square(mean), 0.0)
  return {'mean': mean.astype(np.float32), 'std': np.sqrt(var).astype(np.float32)}


class PatchTeacher(nn.Module):
  """E_loc (docs/method.md §3.2–§3.3): (B, p, p, 3) → (B, d_out), or densely (B, H, W, 3) → (B, H, W, d_out)."""
  p: int
  widths: Sequence[int] = (128, 256, 256)
  d_out: int = 128
  leaky_slope: float = 5e-3
  final_activation: str = 'linear'
  p33_first_kernel: int = 5
  pad_mode: str = 'zeros'
  dense: bool = False
  dtype: Any = jnp.float32
  weight_init: str = 'torch_default'
  dense_form: str = 'dilated'

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    spec = layer_list(self.p, self.p33_first_kernel)
    if len(self.widths) != len(spec) - 1:
      raise ValueError(f'PatchTeacher: widths={tuple(self.widths)} needs {len(spec) - 1} hidden widths '
                       '(config field eloc.widths)')
    if self.final_activation not in FINAL_ACTIVATIONS:
      raise ValueError(f'PatchTeacher: final_activation={self.final_activation!r} is not one of '
                       f'{list(FINAL_ACTIVATIONS)} (config field eloc.final_activation)')
    in_shape = x.shape
    if self.dense:
      if self.pad_mode not in PAD_MODES:
        raise ValueError(f'PatchTeacher: pad_mode={self.pad_mode!r} is not one of {list(PAD_MODES)} '
                         '(config field eloc.pad_mode)')
      x = jnp.pad(x, ((0, 0), *dense_padding(self.p, self.p33_first_kernel), (0, 0)),
                  mode=PAD_MODES[self.pad_mode])
      if self.dense_form not in DENSE_FORMS:
        raise ValueError(f'PatchTeacher: dense_form={self.dense_form!r} is not one of {list(DENSE_FORMS)}')
    polyphase = self.dense and self.dense_form == 'space_to_batch'
    out_size, splits = (in_shape[1], in_shape[2]), 0
    dilation = 1
    features = (*self.widths, self.d_out)
    for i, (kernel, pool) in enumerate(spec):
      x = layers.conv(features[i], (kernel, kernel), x.shape[-1], name=f'conv{i}', init=self.weight_init,
                      dtype=self.dtype, dilation=dilation)(x)
      if i < len(spec) - 1 or self.final_activation == 'leaky_relu':
        x = nn.leaky_relu(x, self.leaky_slope)
      if pool:
        x = _max_pool(x, 1 if polyphase else dilation, strided=not self.dense)
        if polyphase:
          x, splits = _space_to_batch(x), splits + 1
        elif self.dense:
          dilation *= 2
    if polyphase:
      for _ in range(splits):
        x = _batch_to_space(x)
      return x[:, :out_size[0], :out_size[1], :]
    if self.dense:
      return x
    if x.shape[1:3] != (1, 1):
      raise ValueError(f'PatchTeacher(p={self.p}, dense=False): input {in_shape} gives a {x.shape[1:3]} '
                       f'output; the patch form needs {self.p}×{self.p} patches (use dense=True for images)')
    return x[:, 0, 0, :]


def _max_pool(x: jnp.ndarray, dilation: int, strided: bool) -> jnp.ndarray:
  """2×2 max-pool: stride 2 (patch form) or stride 1 with window dilation (dense form, §3.3)."""
  stride = 2 if strided else 1
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, (1, 2, 2, 1), (1, stride, stride, 1),
                           'VALID', window_dilation=(1, dilation, dilation, 1))


def _space_to_batch(x: jnp.ndarray) -> jnp.ndarray:
  """(B, H, W, C) → (4B, ⌈H/2⌉, ⌈W/2⌉, C): the 2×2 phases x[a::2, b::2], phase-major; odd sizes padded at the
  bottom/right (outputs there are cropped: a valid convolution only looks down and right)."""
  b, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
  h, w = x.shape[1] // 2, x.shape[2] // 2
  return x.reshape(b, h, 2, w, 2, c).transpose(2, 4, 0, 1, 3, 5).reshape(4 * b, h, w, c)


def _batch_to_space(x: jnp.ndarray) -> jnp.ndarray:
  """The inverse of `_space_to_batch` (without its padding)."""
  b4, h, w, c = x.shape
  b = b4 // 4
  return x.reshape(2, 2, b, h, w, c).transpose(2, 3, 0, 4, 1, 5).reshape(b, 2 * h, 2 * w, c)
