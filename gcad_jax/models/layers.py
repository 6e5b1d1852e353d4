"""Convolutions with PyTorch semantics and initialisation, shared by every GCAD network (GCAD.md §6, §12 #21).

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
