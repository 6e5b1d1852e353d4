"""Convolutions with PyTorch semantics and initialisation, shared by every GCAD network (docs/method.md §6, §12 #21).

`init='torch_default'` reproduces PyTorch's defaults for `Conv2d` and `ConvTranspose2d`: weights and biases
uniform in ±1/√fan_in. PyTorch takes fan_in from dim 1 of the weight, which is `in·k·k` for a convolution but
`out·k·k` for a transposed convolution (weight shape (in, out, k, k)). `init='flax_default'` keeps Flax's
defaults (LeCun normal kernels, zero biases). Parameters are float32; `dtype` is the compute dtype.
The modules name this choice `weight_init`: a field called `init` would shadow `flax.linen.Module.init`.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

INITS = ('torch_default', 'flax_default')


def torch_uniform(fan_in: int):
  """Initializer drawing uniformly from ±1/√fan_in (PyTorch's `kaiming_uniform_(a=√5)` and its bias rule)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def init_kwargs(init: str, fan_in: int) -> dict[str, Any]:
  """`kernel_init`/`bias_init` keyword arguments for a layer whose PyTorch fan_in is `fan_in`."""
  if init == 'torch_default':
    return {'kernel_init': torch_uniform(fan_in), 'bias_init': torch_uniform(fan_in)}
  if init == 'flax_default':
    return {}
  raise ValueError(f'init={init!r} is not one of {list(INITS)} (config field model.init)')


def conv(features: int, kernel: Sequence[int], in_features: int, *, name: str, init: str, dtype: Any,
         strides: int = 1, padding: Any = 'VALID', dilation: int = 1) -> nn.Conv:
  """`Conv2d(in_features, features, kernel, stride, padding, dilation)`; padding as in `nn.Conv`."""
  kernel = tuple(kernel)
  return nn.Conv(features, kernel, strides=(strides, strides), padding=padding,
                 kernel_dilation=(dilation, dilation), dtype=dtype, param_dtype=jnp.float32, name=name,
                 **init_kwargs(init, in_features * math.prod(kernel)))


def conv_transpose(features: int, kernel: Sequence[int], *, name: str, init: str, dtype: Any, strides: int = 1,
                   torch_padding: int = 0) -> nn.ConvTranspose:
  """`ConvTranspose2d(·, features, kernel, stride, padding=torch_padding)`, output (n − 1)·s − 2p + k.

  The kernel is stored (k, k, out, in) and flipped (`transpose_kernel=True`), i.e. exactly PyTorch's weight
  (in, out, k, k) transposed, so PyTorch weights port without reindexing.
  """
  kernel = tuple(kernel)
  padding = tuple((k - 1 - torch_padding, k - 1 - torch_padding) for k in kernel)
  return nn.ConvTranspose(features, kernel, strides=(strides, strides), padding=padding, transpose_kernel=True,
                          dtype=dtype, param_dtype=jnp.float32, name=name,
                          **init_kwargs(init, features * math.prod(kernel)))


class SubpixelConvTranspose(nn.Module):
  """`conv_transpose(features, (s, s), strides=s)` (no padding) as one matmul and a depth-to-space.

  With kernel = stride the output blocks do not overlap: y[s·i + a, s·j + b] = x[i, j] · W[a, b] + bias. Same
  parameters ('kernel' (s, s, out, in), 'bias') and initialisation as `conv_transpose`, same values; on XLA:CPU
  about 10× faster to differentiate than the input-dilated convolution (docs/performance.md).
  """
  features: int
  stride: int = 2
  init: str = 'torch_default'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    s = self.stride
    kernel, bias = _conv_params(self, (s, s, self.features, x.shape[-1]), self.features, self.features * s * s,
                                self.init)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    batch, height, width, _ = x.shape
    y = jnp.einsum('nhwi,aboi->nhawbo', x, kernel)
    return y.reshape(batch, s * height, s * width, self.features) + bias


def _conv_params(module: nn.Module, shape: tuple[int, ...], features: int, fan_in: int, init: str):
  """'kernel' of `shape` and 'bias' of (features,), initialised as `conv`/`conv_transpose` would."""
  kwargs = init_kwargs(init, fan_in)
  kernel = module.param('kernel', kwargs.get('kernel_init', nn.initializers.lecun_normal()), shape, jnp.float32)
  bias = module.param('bias', kwargs.get('bias_init', nn.initializers.zeros_init()), (features,), jnp.float32)
  return kernel, bias


def _space_to_depth(x: jnp.ndarray) -> jnp.ndarray:
  """(B, 2h, 2w, C) → (B, h, w, 4C), channels ordered (row phase, column phase, C)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4 * c)


def _depth_to_space(y: jnp.ndarray) -> jnp.ndarray:
  """(B, h, w, 4C) with channels (row phase, column phase, C) → (B, 2h, 2w, C)."""
  b, h, w, c4 = y.shape
  return y.reshape(b, h, w, 2, 2, c4 // 4).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c4 // 4)


class SpaceToDepthConv(nn.Module):
  """`conv(features, (4, 4), strides=2, padding=1)` as a 2×2 stride-1 convolution of the space-to-depth input.

  Same parameters ('kernel' (4, 4, in, out), 'bias'), initialisation and values; its gradient needs no
  input-dilated convolution, which XLA:CPU runs slowly (docs/performance.md). Even H, W only.
  """
  features: int
  init: str = 'torch_default'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    kernel, bias = _conv_params(self, (4, 4, c, self.features), self.features, c * 16, self.init)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    xs = _space_to_depth(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))))
    # y[m] = Σ_{t, a} xs[m + t, a] · W[2t + a]: kernel (t, u, (a, c, in), out).
    k2 = kernel.reshape(2, 2, 2, 2, c, self.features).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * c, -1)
    y = jax.lax.conv_general_dilated(xs, k2, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + bias


class SubpixelConvTranspose4(nn.Module):
  """`conv_transpose(features, (4, 4), strides=2, torch_padding=1)` as a 3×3 convolution to the four output
  phases and a depth-to-space. Same parameters ('kernel' (4, 4, out, in), 'bias') and values.

  Output phase a of a row takes torch kernel rows (3, 1) (a = 0) or (2, 0) (a = 1) from padded input rows
  (m, m + 1) or (m + 1, m + 2): one 3×3 window holds both.
  """
  features: int
  init: str = 'torch_default'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    kernel, bias = _conv_params(self, (4, 4, self.features, c), self.features, self.features * 16, self.init)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)

    def taps(k):  # (4, ...) → (3 window rows, 2 phases, ...)
      zero = jnp.zeros_like(k[0])
      return jnp.stack([jnp.stack([k[3], zero]), jnp.stack([k[1], k[2]]), jnp.stack([zero, k[0]])])

    k = taps(kernel.transpose(0, 1, 3, 2))  # (r, a, l, in, out)
    k = taps(k.transpose(2, 0, 1, 3, 4))  # (s, c, r, a, in, out)
    k3 = k.transpose(2, 0, 4, 3, 1, 5).reshape(3, 3, c, 4 * self.features)  # (r, s, in, (a, c, out))
    y = jax.lax.conv_general_dilated(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), k3, (1, 1), 'VALID',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return _depth_to_space(y) + bias


def torch_default_params(shapes: Any, key: jax.Array) -> Any:
  """A tree of conv layers ({'kernel', 'bias'} shapes) filled with the `torch_default` rule from ONE draw.

  Same distribution as `module.init` with `init='torch_default'` (fan_in = prod(kernel.shape[:-1]) for both
  kinds, as stored here), but a single random call: XLA:CPU compiles threefry slowly, per parameter shape.
  """
  is_layer = lambda node: isinstance(node, dict) and 'kernel' in node
  leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=is_layer)
  for layer in leaves:
    if not is_layer(layer) or set(layer) != {'kernel', 'bias'}:
      raise ValueError(f'torch_default_params: expected conv layers {{kernel, bias}}, got {layer}')
  sizes = [math.prod(layer[name].shape) for layer in leaves for name in ('kernel', 'bias')]
  unit = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
  filled, offset = [], 0
  for layer in leaves:
    bound = 1.0 / math.sqrt(math.prod(layer['kernel'].shape[:-1]))
    values = {}
    for name in ('kernel', 'bias'):
      shape = tuple(layer[name].shape)
      values[name] = bound * unit[offset:offset + math.prod(shape)].reshape(shape)
      offset += math.prod(shape)
    filled.append(values)
  return jax.tree_util.tree_unflatten(treedef, filled)
