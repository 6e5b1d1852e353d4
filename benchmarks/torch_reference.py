"""The GCAD networks, loss and Adam step in PyTorch: the reference that `gcad_jax.bench --torch` runs against.

Same layer lists, widths and shapes as gcad_jax.models for the same config (docs/method.md §3.3 dense E_loc, §4.2
E_glo, §5 U, §6 the two U-Nets), the loss of Eq. 2–5 ('sum_per_image', §7.2) and the step of §7.5 in stage 2:
two `torch.optim.Adam(weight_decay=…)` (coupled L2, §7.3). `load_jax_params` copies a gcad_jax parameter tree
in, so that tests/test_bench.py checks that both sides compute the same loss. Needs only torch and numpy
(`pip install -e .[bench]`); never imported by the package itself.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

PAD_MODES = {'zeros': 'constant', 'reflect': 'reflect', 'edge': 'replicate'}
SKIP_LEVELS = 5  # E_glo's skips u, v, w, x, y (docs/method.md §4.1)


def _layer_list(p: int, first_kernel: int) -> tuple[tuple[int, bool], ...]:
  """(kernel, pool after it) per conv, as gcad_jax.models.teacher.layer_list (docs/method.md §3.2)."""
  return {17: ((6, False), (5, False), (5, False), (4, False)),
          33: ((first_kernel, True), (5, True), (2, False), (4, False))}[p]


class DenseTeacher(nn.Module):
  """E_loc evaluated densely by dilation (docs/method.md §3.3): (B, 3, H, W) → (B, d, H, W)."""

  def __init__(self, p: int, widths, d_out: int, slope: float, final_activation: str, first_kernel: int,
               pad_mode: str):
    super().__init__()
    self.spec = _layer_list(p, first_kernel)
    self.slope, self.final_leaky, self.pad_mode = slope, final_activation == 'leaky_relu', pad_mode
    field, dilation = 1, 1
    for kernel, pool in self.spec:
      field += (kernel - 1) * dilation
      if pool:
        field += dilation
        dilation *= 2
    total = field - 1
    self.pad = (total // 2, total - total // 2)
    features, in_c, dilation = (*widths, d_out), 3, 1
    self.convs, self.dilations = nn.ModuleList(), []
    for i, (kernel, pool) in enumerate(self.spec):
      self.convs.append(nn.Conv2d(in_c, features[i], kernel, dilation=dilation))
      self.dilations.append(dilation)
      in_c = features[i]
      if pool:
        dilation *= 2

  def forward(self, x):
    lo, hi = self.pad
    x = F.pad(x, (lo, hi, lo, hi), mode=PAD_MODES[self.pad_mode])
    for i, ((_, pool), conv) in enumerate(zip(self.spec, self.convs)):
      x = conv(x)
      if i < len(self.spec) - 1 or self.final_leaky:
        x = F.leaky_relu(x, self.slope)
      if pool:
        x = F.max_pool2d(x, 2, stride=1, dilation=self.dilations[i])
    return x


class GlobalEncoderDecoder(nn.Module):
  """E_glo (docs/method.md §4.2): six stride-2 convs, a global context conv, transposed convs with faded skips."""

  def __init__(self, g, d_glo, enc, dec, slope, image_size):
    super().__init__()
    self.slope = slope
    ctx = (image_size[0] // 64, image_size[1] // 64)
    self.enc = nn.ModuleList(nn.Conv2d(c_in, c, 4, 2, 1) for c_in, c in zip((3, *enc[:-1]), enc))
    self.context = nn.Conv2d(enc[-1], g, ctx)
    self.dec0 = nn.ConvTranspose2d(g, dec[0], ctx)
    levels = len(dec) - 2
    self.dec = nn.ModuleList(nn.ConvTranspose2d(dec[i - 1], dec[i], 4, 2, 1) for i in range(1, levels + 2))
    self.skips = nn.ModuleList(nn.Conv2d(enc[levels - i], dec[i], 1) for i in range(1, levels + 1))
    self.out = nn.Conv2d(dec[-1], d_glo, 3, padding=1)

  def forward(self, x, skip_weights):
    act = lambda h: F.leaky_relu(h, self.slope)
    encoder = []
    for conv in self.enc:
      x = act(conv(x))
      encoder.append(x)
    y = act(self.dec0(self.context(x)))
    levels = len(self.skips)
    for level in range(1, levels + 1):
      y = act(self.dec[level - 1](y))
      y = y + skip_weights[level - 1] * self.skips[level - 1](encoder[levels - level])
    return self.out(act(self.dec[-1](y)))


class Upsampler(nn.Module):
  """U (docs/method.md §5): 1×1 convs d_glo → hidden → hidden → d_out."""

  def __init__(self, d_in, hidden, d_out, slope):
    super().__init__()
    widths = (*hidden, d_out)
    self.slope = slope
    self.convs = nn.ModuleList(nn.Conv2d(c_in, c, 1) for c_in, c in zip((d_in, *widths[:-1]), widths))

  def forward(self, z):
    for i, conv in enumerate(self.convs):
      z = conv(z)
      if i < len(self.convs) - 1:
        z = F.leaky_relu(z, self.slope)
    return z


class UNet(nn.Module):
  """jvanvugt/pytorch-unet with padding and 'upconv' (docs/method.md §6)."""

  def __init__(self, n_out, depth, wf, in_c=3):
    super().__init__()
    block = lambda c_in, c: nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
    widths = [2 ** (wf + i) for i in range(depth)]
    self.down = nn.ModuleList(block(c_in, c) for c_in, c in zip((in_c, *widths[:-1]), widths))
    self.up = nn.ModuleList()
    self.up_blocks = nn.ModuleList()
    for i in reversed(range(depth - 1)):
      self.up.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
      self.up_blocks.append(block(2 * widths[i], widths[i]))
    self.last = nn.Conv2d(widths[0], n_out, 1)

  def forward(self, x):
    bridges = []
    for i, block in enumerate(self.down):
      if i:
        x = F.avg_pool2d(x, 2)
      x = block(x)
      bridges.append(x)
    for j, (up, block) in enumerate(zip(self.up, self.up_blocks)):
      x = block(torch.cat([up(x), bridges[-2 - j]], dim=1))
    return self.last(x)


def skip_weights(epoch: float, mode: str, end_epoch: float, levels: int) -> list[float]:
  """(u, v, w, x, y) at `epoch` (docs/method.md §4.3), as gcad_jax.models.global_net.skip_weights."""
  window = end_epoch / levels if mode == 'sequential' else end_epoch
  starts = [(levels - 1 - i) * window if mode == 'sequential' else 0.0 for i in range(levels)]
  if window <= 0:
    return [0.0] * levels
  return [min(1.0, max(0.0, 1.0 - (epoch - s) / window)) for s in starts]


class GCAD(nn.Module):
  """The five networks at one p and the stage-2 training step of docs/method.md §7.5."""

  def __init__(self, config: Any, p: int):
    super().__init__()
    c = config
    self.config, self.d_loc, self.d_glo = c, c.eloc.d_loc, c.eglo.d_glo
    self.e_loc = DenseTeacher(p, tuple(c.eloc.widths), c.eloc.d_loc, c.eloc.leaky_slope, c.eloc.final_activation,
                              c.eloc.p33_first_kernel, c.eloc.pad_mode)
    self.r_loc = UNet(c.eloc.d_loc, c.unet.depth, c.unet.wf)
    self.e_glo = GlobalEncoderDecoder(c.eglo.g, c.eglo.d_glo, tuple(c.eglo.enc_channels),
                                      tuple(c.eglo.dec_channels), c.eglo.leaky_slope, tuple(c.dataset.image_size))
    self.u = Upsampler(c.eglo.d_glo, tuple(c.u.hidden), c.eloc.d_loc, c.u.leaky_slope)
    self.r_glo = UNet(c.eglo.d_glo, c.unet.depth, c.unet.wf)
    self.e_loc.requires_grad_(False)
    self.register_buffer('mean', torch.zeros(1, c.eloc.d_loc, 1, 1))
    self.register_buffer('std', torch.ones(1, c.eloc.d_loc, 1, 1))
    o = c.optim
    adam = lambda params: torch.optim.Adam(params, lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps,
                                           weight_decay=o.weight_decay)
    self.opt_main = adam([*self.r_loc.parameters(), *self.e_glo.parameters(), *self.u.parameters()])
    self.opt_rglo = adam(self.r_glo.parameters())

  def features(self, x):
    with torch.no_grad():
      return (self.e_loc(x) - self.mean) / self.std

  def losses(self, x, f, weights):
    """Per-image l_loc, l_kd, l_glo and their sum (Eq. 2–5, 'sum_per_image')."""
    per_image = lambda d: d.square().sum(dim=(1, 2, 3)) / d.shape[1]
    z = self.e_glo(x, weights)
    l_loc = per_image(f - self.r_loc(x))
    l_kd = per_image(f - self.u(z))
    l_glo = per_image(z - self.r_glo(x))
    return {'l_loc': l_loc, 'l_kd': l_kd, 'l_glo': l_glo, 'total': l_loc + l_kd + l_glo}

  def train_step(self, x, epoch: float = 0.0, f=None):
    """One Adam step on the batch mean of the total loss; `f` given = E_loc features cached."""
    fade = self.config.eglo.skip_fade
    weights = skip_weights(epoch, fade.mode, fade.end_epoch, SKIP_LEVELS)
    f = self.features(x) if f is None else f
    losses = self.losses(x, f, weights)
    loss = losses['total'].mean()
    self.opt_main.zero_grad(set_to_none=True)
    self.opt_rglo.zero_grad(set_to_none=True)
    loss.backward()
    self.opt_main.step()
    self.opt_rglo.step()
    return loss.detach()

  def anomaly_maps(self, x):
    """(A_loc, A_glo): per-pixel L2 norms of the residuals, skips at 0 (docs/method.md §8 step 1)."""
    with torch.inference_mode():
      f = self.features(x)
      z = self.e_glo(x, [0.0] * SKIP_LEVELS)
      a_loc = (f - self.r_loc(x)).square().sum(1).sqrt()
      a_glo = (z - self.r_glo(x)).square().sum(1).sqrt()
    return a_loc, a_glo


def load_jax_params(model: GCAD, trainable: Any, e_loc_params: Any, stats: Any | None = None) -> None:
  """Copies gcad_jax parameters (Flax kernels (kh, kw, in, out); transposed convs stored (kh, kw, out, in))."""
  def put(module, layer):
    kernel = np.asarray(layer['kernel'], np.float32).transpose(3, 2, 0, 1)
    module.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
    module.bias.data.copy_(torch.from_numpy(np.array(layer['bias'], np.float32)))

  for i, conv in enumerate(model.e_loc.convs):
    put(conv, e_loc_params[f'conv{i}'])
  for name in ('r_loc', 'r_glo'):
    net, params = getattr(model, name), trainable[name]
    for i, block in enumerate(net.down):
      put(block[0], params[f'down{i}']['conv0'])
      put(block[2], params[f'down{i}']['conv1'])
    for j, (up, block) in enumerate(zip(net.up, net.up_blocks)):
      put(up, params[f'up{j}']['up'])
      put(block[0], params[f'up{j}']['block']['conv0'])
      put(block[2], params[f'up{j}']['block']['conv1'])
    put(net.last, params['last'])
  e_glo = trainable['e_glo']
  for i, conv in enumerate(model.e_glo.enc):
    put(conv, e_glo[f'enc{i + 1}'])
  put(model.e_glo.context, e_glo['context'])
  put(model.e_glo.dec0, e_glo['dec0'])
  for i, conv in enumerate(model.e_glo.dec):
    put(conv, e_glo[f'dec{i + 1}'])
  names = ('u', 'v', 'w', 'x', 'y')
  for i, conv in enumerate(model.e_glo.skips):
    put(conv, e_glo[f'skip_{names[i]}'])
  put(model.e_glo.out, e_glo['out'])
  for i, conv in enumerate(model.u.convs):
    put(conv, trainable['u'][f'conv{i}'])
  if stats is not None:
    model.mean.copy_(torch.from_numpy(np.array(stats['mean'], np.float32)).view(1, -1, 1, 1))
    model.std.copy_(torch.from_numpy(np.array(stats['std'], np.float32)).view(1, -1, 1, 1))


def param_count(model: GCAD) -> int:
  return sum(math.prod(p.shape) for p in model.parameters())


def build(config: Any, p: int, *, channels_last: bool = False, seed: int = 0) -> GCAD:
  """The reference model (float32), optionally in channels_last memory format."""
  torch.manual_seed(seed)
  model = GCAD(config, p)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  return model


def random_images(config: Any, batch: int, *, channels_last: bool = False, seed: int = 0) -> torch.Tensor:
  height, width = config.dataset.image_size
  x = torch.from_numpy(np.random.default_rng(seed).normal(size=(batch, 3, height, width)).astype(np.float32))
  return x.contiguous(memory_format=torch.channels_last) if channels_last else x
