"""The pretraining of the patch teacher (Uninformed Students, docs/method.md §3.5) as pure functions.

The losses over a batch of descriptors, and the patch network's forward pass in an equivalent matmul form
for training on CPU (XLA:CPU's convolution weight gradient is about 15× slower than its forward pass, and
the p = 33 patch form's `reduce_window` max-pool has no reverse-mode derivative). `gcad_jax.distill` runs
them; `tests/test_distill.py` checks `patch_forward` against `PatchTeacher`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gcad_jax.models import teacher


def correlation_matrix(descriptors: jnp.ndarray, eps: float = 1e-8) -> jnp.ndarray:
  """Pearson correlation (d, d) of the d descriptor dimensions over the batch of (B, d) descriptors."""
  centred = descriptors - descriptors.mean(axis=0, keepdims=True)
  cov = centred.T @ centred
  norm = jnp.sqrt(jnp.diag(cov) + eps)
  return cov / (norm[:, None] * norm[None, :])


def compactness_loss(descriptors: jnp.ndarray, mode: str = 'squared') -> jnp.ndarray:
  """L_c over the off-diagonal correlations c_ij (docs/method.md §3.5): Σ_{i≠j} c_ij² ('squared', the default).

  'squared' is zero for decorrelated descriptors and largest for one signal copied into every dimension.
  'abs' is Σ_{i≠j} |c_ij|. 'signed' is Σ_{i≠j} c_ij, the formula as printed: since 1ᵀC1 = Var(Σ_i z_i) ≥ 0,
  its floor is −d, reached fastest by two anti-correlated halves of ONE signal, so it collapses the
  descriptors to a single dimension (participation ratio ≈ 1; docs/teachers.md). Kept for comparison only.
  """
  c = correlation_matrix(descriptors)
  off = c - jnp.diag(jnp.diag(c))
  if mode == 'squared':
    return jnp.sum(jnp.square(off))
  return jnp.sum(jnp.abs(off)) if mode == 'abs' else jnp.sum(off)


def distillation_loss(decoded: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """L_k = ‖D(T̂(x)) − P(x)‖², summed over features and averaged over the batch (docs/method.md §3.5)."""
  return jnp.mean(jnp.sum(jnp.square(decoded - target), axis=-1))


def _conv_im2col(x: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
  """VALID stride-1 convolution as shifted slices + one matmul (XLA:CPU's conv weight gradient is ~15× slower)."""
  k, hw = kernel.shape[0], (x.shape[1] - kernel.shape[0] + 1, x.shape[2] - kernel.shape[1] + 1)
  cols = jnp.concatenate([x[:, i:i + hw[0], j:j + hw[1], :] for i in range(k) for j in range(k)], axis=-1)
  return cols @ kernel.reshape(-1, kernel.shape[-1]) + bias


def _max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
  """2×2 stride-2 max-pool, flooring odd sizes (29 → 14, docs/method.md §3.2), differentiable."""
  b, h, w, c = x.shape
  return x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def patch_forward(s: Any, params: Any, patches: jnp.ndarray) -> jnp.ndarray:
  """`distill.make_teacher(s).apply({'params': params}, patches)`, computed with matmuls for fast training on CPU.

  Same parameter tree and same function as the patch form of `PatchTeacher` (tested), so the result is
  used densely unchanged (§3.3).
  """
  spec = teacher.layer_list(s.p, s.p33_first_kernel)
  x = patches
  for i, (_, pool) in enumerate(spec):
    x = _conv_im2col(x, params[f'conv{i}']['kernel'], params[f'conv{i}']['bias'])
    if i < len(spec) - 1 or s.final_activation == 'leaky_relu':
      x = nn.leaky_relu(x, s.leaky_slope)
    if pool:
      x = _max_pool_2x2(x)
  if x.shape[1:3] != (1, 1):
    raise ValueError(f'patch_forward: p={s.p} patches {patches.shape} give a {x.shape[1:3]} output')
  return x[:, 0, 0, :]
