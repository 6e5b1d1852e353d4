"""The regression networks R_loc and R_glo: the U-Net of jvanvugt/pytorch-unet (docs/method.md §6).

Depth 5, width 2**wf = 64 at the top, "same" padding: a 16×16×1024 bottleneck at 256² [P]. Each level is
[Conv 3×3 + ReLU]×2; AvgPool 2×2 down; ConvT 2×2 stride 2 up, concatenated [upsampled, skip]; a final
linear 1×1 conv. No batch normalisation. The bottleneck is sown as ('intermediates', 'bottleneck').
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gcad_jax.models import layers

# How the 2×2 stride-2 up-convolution is computed: 'subpixel' (a matmul and a depth-to-space: the same values,
# far faster to differentiate on XLA:CPU) or 'conv_transpose' (the straightforward input-dilated convolution).
UP_FORMS = ('subpixel', 'conv_transpose')


class ConvBlock(nn.Module):
  """`UNetConvBlock`: [Conv 3×3 (padding 1 if `padding`) + ReLU] × 2."""
  features: int
  padding: bool = True
  dtype: Any = jnp.float32
  weight_init: str = 'torch_default'

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    pad = 1 if self.padding else 0
    for i in range(2):
      x = layers.conv(self.features, (3, 3), x.shape[-1], name=f'conv{i}', padding=((pad, pad), (pad, pad)),
                      init=self.weight_init, dtype=self.dtype)(x)
      x = nn.relu(x)
    return x


class UpBlock(nn.Module):
  """`UNetUpBlock` ('upconv'): ConvT 2×2 s2, centre-crop the skip, concat [up, skip], `ConvBlock`."""
  features: int
  padding: bool = True
  dtype: Any = jnp.float32
  weight_init: str = 'torch_default'
  up_form: str = 'subpixel'

  @nn.compact
  def __call__(self, x: jnp.ndarray, bridge: jnp.ndarray) -> jnp.ndarray:
    if self.up_form == 'subpixel':
      up = layers.SubpixelConvTranspose(self.features, 2, init=self.weight_init, dtype=self.dtype, name='up')(x)
    elif self.up_form == 'conv_transpose':
      up = layers.conv_transpose(self.features, (2, 2), name='up', strides=2, init=self.weight_init,
                                 dtype=self.dtype)(x)
    else:
      raise ValueError(f'UpBlock: up_form={self.up_form!r} is not one of {list(UP_FORMS)}')
    height, width = up.shape[1:3]
    top = (bridge.shape[1] - height) // 2
    left = (bridge.shape[2] - width) // 2
    bridge = bridge[:, top:top + height, left:left + width, :]
    x = jnp.concatenate([up, bridge.astype(up.dtype)], axis=-1)
    return ConvBlock(self.features, self.padding, self.dtype, self.weight_init, name='block')(x)


class UNet(nn.Module):
  """U-Net (docs/method.md §6): (B, H, W, C) → (B, H, W, n_out) with `padding=True`; `up_form` as in `UP_FORMS`."""
  n_out: int
  depth: int = 5
  wf: int = 6
  padding: bool = True
  dtype: Any = jnp.float32
  weight_init: str = 'torch_default'
  up_form: str = 'subpixel'

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    factor = 2 ** (self.depth - 1)
    if self.padding and (x.shape[1] % factor or x.shape[2] % factor):
      raise ValueError(f'UNet(depth={self.depth}): input {x.shape[1]}×{x.shape[2]} must be a multiple of '
                       f'{factor} in both axes for a same-size output (config fields unet.depth, '
                       'dataset.image_size)')
    bridges = []
    for i in range(self.depth):
      if i:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
      x = ConvBlock(2 ** (self.wf + i), self.padding, self.dtype, self.weight_init, name=f'down{i}')(x)
      bridges.append(x)
    self.sow('intermediates', 'bottleneck', x)
    for j, i in enumerate(reversed(range(self.depth - 1))):
      x = UpBlock(2 ** (self.wf + i), self.padding, self.dtype, self.weight_init, self.up_form,
                  name=f'up{j}')(x, bridges[i])
    return layers.conv(self.n_out, (1, 1), x.shape[-1], name='last', init=self.weight_init,
                       dtype=self.dtype)(x)
