"""The serving function: uint8 images → (maps, scores, flags, threshold), all of docs/method.md §8 in one graph.

One pure JAX function with the weights, the validation μ/σ and the threshold as constants, which the exporters
(gcad_jax/export_formats.py) serialise. It computes what `gcad_jax.load(W).score` computes, step for step:
the resize to the network size (in fixed point to whole grey levels, bit-identical to
`input_pipeline.resize_uint8`), the input normalisation (§3.4), every scale's branch maps (§8 step 1), their
standardisation with the validation μ/σ (§8 step 2), the fusion of the branches (`score.fusion`) and the mean
over the scales (§8 step 3), the bilinear upsampling to the input size (§8 step 4), the map maximum (§8 step 6)
and `score > threshold`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gcad_jax import input_pipeline, parallel
from gcad_jax.models import gcad

def host_weights(model) -> dict[int, tuple[Any, dict]]:
  """p → ((nets, host weights), float32 μ/σ per branch) of a loaded `predict.Model`."""
  out = {}
  for p, (nets, state) in model.models.items():
    host = parallel.unreplicate(state, model.config.parallel)
    weights = {'params': host.params, 'e_loc_params': host.e_loc_params, 'eloc_stats': host.eloc_stats}
    stats = {b: {k: np.asarray(v, np.float32) for k, v in model.stats[p][b].items()} for b in ('loc', 'glo')}
    out[p] = (nets, weights, stats)
  return out


def serving_function(model, image_size: Sequence[int], threshold: float) -> Callable[[jax.Array], dict]:
  """fn(images uint8 (N, H, W, 3) at `image_size`) → {'maps' (N, H, W) float32, 'scores' (N,) float32,
  'flags' (N,) bool = score > threshold, 'threshold' () float32} for the model of `predict.load`."""
  config = model.config
  return build(host_weights(model), net_size=config.dataset.image_size, image_size=image_size,
               threshold=threshold, resize_method=config.dataset.resize_method,
               fusion=config.score.get('fusion', 'sum'), squared=bool(config.score.squared))


def build(scales: dict, *, net_size: Sequence[int], image_size: Sequence[int], threshold: float,
          resize_method: str = 'bilinear_antialias', fusion: str = 'sum', squared: bool = False) -> Callable:
  """The serving function of `scales` = {p: (nets, weights, float32 μ/σ per branch)} (`host_weights`)."""
  net_size = tuple(int(s) for s in net_size)
  size = tuple(int(s) for s in image_size)
  threshold32 = np.float32(threshold)

  def standardise(a, s):
    return (a - s['mean']) / s['std']

  def serve(images: jax.Array) -> dict:
    if images.ndim != 4 or tuple(images.shape[1:]) != (*size, 3) or images.dtype != jnp.uint8:
      raise ValueError(f'the serving function takes uint8 (N, {size[0]}, {size[1]}, 3) images; got '
                       f'{images.dtype} {images.shape}')
    small = input_pipeline.resize_to_grey_levels(images, net_size, resize_method)  # as resize_uint8, exactly
    x = input_pipeline.normalize(small / 255.0)
    per_scale = []
    for nets, w, stats in scales.values():
      a_loc, a_glo = gcad.anomaly_maps(nets, w['params'], w['e_loc_params'], w['eloc_stats'], x, squared=squared)
      local, glob = standardise(a_loc, stats['loc']), standardise(a_glo, stats['glo'])
      per_scale.append(local + glob if fusion == 'sum' else jnp.maximum(local, glob))
    fused = jnp.mean(jnp.stack(per_scale), axis=0)
    maps = input_pipeline.resize(fused.astype(jnp.float32), size, method='bilinear')
    scores = jnp.max(maps, axis=(1, 2))
    return {'maps': maps, 'scores': scores, 'flags': scores > threshold32,
            'threshold': jnp.asarray(threshold32)}

  return serve
