"""E_loc's per-channel feature statistics μ_c, σ_c and the cached standardised features (docs/method.md §3.4, §7.5).

E_loc is frozen: its dense features of the un-augmented training images are standardised with statistics
over all their pixels, computed once per scale before training (`compute_eloc_stats`, streamed over the
devices), or with the features themselves when `train.cache_eloc` keeps them on the host.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gcad_jax import input_pipeline, parallel
from gcad_jax.models import gcad, teacher


def eloc_moments_step(e_loc_params, images, mask, *, nets, config):
  """Per-channel moments of the raw dense E_loc features of the un-augmented images (docs/method.md §3.4)."""
  x = input_pipeline.preprocess(jax.random.PRNGKey(config.seed), images, config, False)
  d = config.eloc.d_loc
  identity = {'mean': jnp.zeros((d,), jnp.float32), 'std': jnp.ones((d,), jnp.float32)}
  f = gcad.eloc_features(nets, e_loc_params, identity, x)
  per_image = jax.vmap(lambda fi: teacher.feature_moments(fi[None]))(f)
  moments = jax.tree.map(lambda m: jnp.tensordot(mask.astype(m.dtype), m, axes=1), per_image)
  return jax.lax.psum(moments, parallel.AXIS)


def compute_eloc_stats(config, nets, e_loc_params, images_uint8, par: parallel.DataParallel) -> dict:
  """μ_c, σ_c over all pixels of all un-augmented training images, streamed in batches (docs/method.md §3.4)."""
  fn = functools.partial(eloc_moments_step, nets=nets, config=config)
  total, total_sq, count = par.map_over_all(fn, par.replicate(e_loc_params), images_uint8,
                                            config.train.batch_size)
  stats = teacher.stats_from_moments(total, total_sq, count)
  return jax.tree.map(lambda s: np.asarray(s, np.float32), dict(stats))


def cached_eloc_features(config, nets, e_loc_params, images_uint8, stats=None) -> tuple[np.ndarray, dict]:
  """(f of every un-augmented training image, stats): E_loc run once (`train.cache_eloc`, docs/method.md §7.5).

  E_loc is frozen and, without augmentation, sees the same images every epoch, so its dense forward (the
  most expensive network, §9) need not run in every step. With `stats=None` (a fresh run) μ_c, σ_c come
  from these same raw features (§3.4), so the teacher runs once per image; on resume the checkpoint's stats
  are given. Computed on this process's first device in chunks of the global batch; kept on the host as
  float32 (N × H × W × d_loc × 4 bytes) and fed with the images. Every process computes all rows.
  """
  fn = jax.jit(lambda params, images: nets.e_loc.apply(
      {'params': params}, input_pipeline.preprocess(jax.random.PRNGKey(0), images, config, False)))
  device = jax.local_devices()[0]
  params = jax.device_put(e_loc_params, device)
  chunk = max(1, config.train.batch_size)
  features = np.concatenate([np.asarray(fn(params, jax.device_put(images_uint8[i:i + chunk], device)),
                                        np.float32) for i in range(0, len(images_uint8), chunk)], axis=0)
  if stats is None:
    flat = features.reshape(-1, features.shape[-1])
    total = np.zeros(flat.shape[1], np.float64)
    total_sq = np.zeros(flat.shape[1], np.float64)
    for i in range(0, len(flat), 1 << 16):  # float64 sums without a float64 copy of all features
      block = flat[i:i + (1 << 16)].astype(np.float64)
      total += block.sum(axis=0)
      total_sq += np.square(block).sum(axis=0)
    stats = teacher.stats_from_moments(total, total_sq, len(flat))
  stats = {k: np.asarray(v, np.float32) for k, v in stats.items()}
  features -= stats['mean']
  features /= stats['std']
  return features, stats
