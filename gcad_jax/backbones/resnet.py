"""ResNet-18 in Flax, and its converter from a torchvision state dict file (docs/method.md §3.5).

The paper's distillation target: P(patch) is the 512-d global-average-pooled feature. Weights: a torchvision
`resnet18` state dict that the user downloads (.pth, read by the restricted loader, or .safetensors),
BatchNorm in inference mode (eps 1e-5). Input: RGB in [0, 255] → [0, 1] → ImageNet mean/std.
"""

import os
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from gcad_jax import input_pipeline, safe_torch_load
from gcad_jax.backbones import state_dict

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, first stride) of layer1..layer4
BLOCKS_PER_STAGE = 2
BN_EPS = 1e-5
NUM_CLASSES, FEATURE_DIM = 1000, 512


def normalise(images_0_255: jnp.ndarray) -> jnp.ndarray:
  """torchvision's ImageNet normalisation of RGB in [0, 255] (the project's one `normalize`, docs/method.md §3.4)."""
  return input_pipeline.normalize(images_0_255 / 255.0)


def _conv(features: int, kernel: int, stride: int, pad: int, name: str) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)), use_bias=False,
                 name=name)


def _bn(name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name=name)


class BasicBlock(nn.Module):
  """torchvision BasicBlock: 3×3 → BN → ReLU → 3×3 → BN, plus the (1×1 conv + BN) shortcut when needed."""
  features: int
  stride: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    y = nn.relu(_bn('bn1')(_conv(self.features, 3, self.stride, 1, 'conv1')(x)))
    y = _bn('bn2')(_conv(self.features, 3, 1, 1, 'conv2')(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = _bn('downsample_1')(_conv(self.features, 1, self.stride, 0, 'downsample_0')(x))
    return nn.relu(y + x)


class ResNet18(nn.Module):
  """ResNet-18 (inference mode): normalised (B, H, W, 3) → logits (B, 1000), or features (B, 512)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray, features_only: bool = False) -> jnp.ndarray:
    x = nn.relu(_bn('bn1')(_conv(64, 7, 2, 3, 'conv1')(x)))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for s, (features, stride) in enumerate(STAGES):
      for b in range(BLOCKS_PER_STAGE):
        x = BasicBlock(features, stride if b == 0 else 1, name=f'layer{s + 1}_{b}')(x)
    x = jnp.mean(x, axis=(1, 2))
    if features_only:
      return x
    return nn.Dense(NUM_CLASSES, name='fc')(x)


def convert_state_dict(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """torchvision resnet18 state dict → Flax variables {'params', 'batch_stats'} of `ResNet18`."""
  params, stats = {}, {}
  reader = state_dict.StateDictReader(sd, 'ResNet-18')
  conv, bn = reader.conv, reader.batch_norm
  try:
    params['conv1'] = conv('conv1')
    params['bn1'], stats['bn1'] = bn('bn1')
    for s in range(len(STAGES)):
      for b in range(BLOCKS_PER_STAGE):
        pre, bp, bs = f'layer{s + 1}.{b}', {}, {}
        bp['conv1'], bp['conv2'] = conv(f'{pre}.conv1'), conv(f'{pre}.conv2')
        bp['bn1'], bs['bn1'] = bn(f'{pre}.bn1')
        bp['bn2'], bs['bn2'] = bn(f'{pre}.bn2')
        if f'{pre}.downsample.0.weight' in sd:
          bp['downsample_0'] = conv(f'{pre}.downsample.0')
          bp['downsample_1'], bs['downsample_1'] = bn(f'{pre}.downsample.1')
        params[f'layer{s + 1}_{b}'], stats[f'layer{s + 1}_{b}'] = bp, bs
    params['fc'] = {'kernel': reader.take('fc.weight').T, 'bias': reader.take('fc.bias')}
  except KeyError as e:
    raise reader.missing(e, 'torchvision resnet18 naming (conv1, bn1, layer1.0.conv1, ..., fc)') from e
  reader.check_all_used('a ResNet-34/50?')
  return {'params': params, 'batch_stats': stats}


def load_variables(path: str | os.PathLike) -> dict[str, Any]:
  """Flax variables of ResNet-18 from a torchvision state dict file (.pth via the safe loader, .safetensors)."""
  if not path:
    raise ValueError('ResNet-18: a weights file is needed (torchvision resnet18-f37072fd.pth, downloaded by '
                     'the user); set teacher.target_weights')
  return convert_state_dict(safe_torch_load.load_state_dict(path))
