"""The global branch: encoder–decoder E_glo (docs/method.md §4.2), its skip-fade schedule (§4.3) and U (§5)."""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from gcad_jax.models import layers

SKIP_NAMES = ('u', 'v', 'w', 'x', 'y')  # levels 8², 16², 32², 64², 128² at a 256² input (§4.1)
FADE_MODES = ('sequential', 'simultaneous')
# How the stride-2 4×4 convolutions and transposed convolutions are computed: 'subpixel' (space-to-depth and
# sub-pixel forms: the same values, no input-dilated convolutions, far faster to differentiate on XLA:CPU) or
# 'conv' (the straightforward strided / transposed convolutions).
STRIDE_FORMS = ('subpixel', 'conv')


def skip_weights(epoch: Any, mode: str = 'sequential', end_epoch: float = 100.0, levels: int = 5) -> jnp.ndarray:
  """The skip weights (u, v, w, x, y) at fractional `epoch` (docs/method.md §4.3); `epoch` may be traced.

  'sequential': each weight falls 1 → 0 over its own window of end_epoch/levels epochs, the upper
  (high-resolution) levels first: y over [0, 20], x [20, 40], w [40, 60], v [60, 80], u [80, 100] for
  end_epoch = 100. 'simultaneous': all fall together over [0, end_epoch]. All are 0 from end_epoch on.
  """
  epoch = jnp.asarray(epoch, jnp.float32)
  if mode == 'sequential':
    window = end_epoch / levels
    starts = jnp.arange(levels - 1, -1, -1, dtype=jnp.float32) * window
  elif mode == 'simultaneous':
    window = end_epoch
    starts = jnp.zeros((levels,), jnp.float32)
  else:
    raise ValueError(f'skip fade mode={mode!r} is not one of {list(FADE_MODES)} (config field '
                     'eglo.skip_fade.mode)')
  if window <= 0:
    return jnp.zeros((levels,), jnp.float32) * epoch
  return jnp.clip(1.0 - (epoch - starts) / window, 0.0, 1.0)


class GlobalEncoderDecoder(nn.Module):
  """E_glo (docs/method.md §4.2): (B, H, W, 3) → (B, H, W, d_glo) through a 1×1×g global context vector.

  H and W must be multiples of 64; the context convolution's kernel is (H/64, W/64), 4×4 at 256².
  Skips are added after the decoder LReLU, each 1×1 conv scaled by its scalar weight from `skip_weights`.
  `stride_form` picks how the stride-2 layers are computed (`STRIDE_FORMS`); parameters and values are the same.
  """
  g: int = 32
  d_glo: int = 10
  enc_channels: Sequence[int] = (32, 32, 64, 64, 64, 64)
  dec_channels: Sequence[int] = (64, 64, 64, 64, 32, 32, 32)
  leaky_slope: float = 0.2
  dtype: Any = jnp.float32
  weight_init: str = 'torch_default'
  stride_form: str = 'subpixel'

  @nn.compact
  def __call__(self, x: jnp.ndarray, skip_weights: jnp.ndarray, return_context: bool = False):
    """Returns the output map, or (output map, (B, 1, 1, g) context) when `return_context`."""
    levels = len(SKIP_NAMES)
    if len(self.enc_channels) != levels + 1 or len(self.dec_channels) != levels + 2:
      raise ValueError(f'GlobalEncoderDecoder: enc_channels needs {levels + 1} widths (e1..e6) and '
                       f'dec_channels {levels + 2} (d0..d6); got {tuple(self.enc_channels)}, '
                       f'{tuple(self.dec_channels)} (config fields eglo.enc_channels, eglo.dec_channels)')
    height, width = x.shape[1:3]
    if height % 64 or width % 64:
      raise ValueError(f'GlobalEncoderDecoder: input {height}×{width} must be a multiple of 64 in both axes '
                       '(six stride-2 convolutions; config field dataset.image_size)')
    skip_weights = jnp.asarray(skip_weights)
    if skip_weights.shape != (levels,):
      raise ValueError(f'GlobalEncoderDecoder: skip_weights has shape {skip_weights.shape}, needs ({levels},) '
                       'ordered (u, v, w, x, y)')
    if self.stride_form not in STRIDE_FORMS:
      raise ValueError(f'GlobalEncoderDecoder: stride_form={self.stride_form!r} is not one of {list(STRIDE_FORMS)}')
    act = lambda h: nn.leaky_relu(h, self.leaky_slope)
    common = {'init': self.weight_init, 'dtype': self.dtype}
    subpixel = self.stride_form == 'subpixel'

    def down(features, name, h):  # Conv 4×4, stride 2, padding 1.
      if subpixel:
        return layers.SpaceToDepthConv(features, name=name, **common)(h)
      return layers.conv(features, (4, 4), h.shape[-1], name=name, strides=2, padding=((1, 1), (1, 1)), **common)(h)

    def up(features, name, h):  # ConvTranspose 4×4, stride 2, padding 1.
      if subpixel:
        return layers.SubpixelConvTranspose4(features, name=name, **common)(h)
      return layers.conv_transpose(features, (4, 4), name=name, strides=2, torch_padding=1, **common)(h)

    encoder = []
    for i, features in enumerate(self.enc_channels):
      x = act(down(features, f'enc{i + 1}', x))
      encoder.append(x)
    context_kernel = tuple(x.shape[1:3])  # (H/64, W/64): 4×4 valid at 256²
    context = layers.conv(self.g, context_kernel, x.shape[-1], name='context', **common)(x)

    y = act(layers.conv_transpose(self.dec_channels[0], context_kernel, name='dec0', **common)(context))
    for level in range(1, levels + 1):
      y = act(up(self.dec_channels[level], f'dec{level}', y))
      source = encoder[levels - level]  # e5 feeds u (d1), ..., e1 feeds y (d5)
      skip = layers.conv(self.dec_channels[level], (1, 1), source.shape[-1], name=f'skip_{SKIP_NAMES[level - 1]}',
                         **common)(source)
      y = y + skip_weights[level - 1].astype(skip.dtype) * skip
    y = act(up(self.dec_channels[-1], f'dec{levels + 1}', y))
    out = layers.conv(self.d_glo, (3, 3), y.shape[-1], name='out', padding=((1, 1), (1, 1)), **common)(y)
    return (out, context) if return_context else out


class Upsampler(nn.Module):
  """U (docs/method.md §5): three 1×1 convolutions d_glo → hidden → hidden → d_out, LReLU between, linear output."""
  hidden: Sequence[int] = (128, 128)
  d_out: int = 128
  leaky_slope: float = 0.2
  dtype: Any = jnp.float32
  weight_init: str = 'torch_default'

  @nn.compact
  def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
    widths = (*self.hidden, self.d_out)
    for i, features in enumerate(widths):
      z = layers.conv(features, (1, 1), z.shape[-1], name=f'conv{i}', init=self.weight_init,
                      dtype=self.dtype)(z)
      if i < len(widths) - 1:
        z = nn.leaky_relu(z, self.leaky_slope)
    return z
