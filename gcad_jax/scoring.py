"""Scoring (docs/method.md §8): branch maps, validation normalisation, scale fusion, upsampling, image scores.

Pure functions over arrays at the core; `score_split` is the one driver. The maps of one split are kept at
network size, normalised, (N, h, w); `FullResMaps` upsamples one image at a time to its original size, so a
whole real category never has to sit in memory at full resolution. The same array serves the export, the
evaluator and the image score (the maximum of the exported map, §8 step 6).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import json
import os
import pathlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gcad_jax import input_pipeline, parallel
from gcad_jax.models import gcad

BRANCHES = ('loc', 'glo')
# The maps scored, exported and reported, in the reports' order: each normalised branch alone, then their sum A
# (§8 step 2; the paper's local-only / global-only / combined rows).
VARIANTS = ('local', 'global', 'combined')
NORM_FILE = 'score_norm.json'


# ------------------------------------------------------------------------------------------------
# Branch maps on the devices (§8 step 1).


def branch_maps_step(state, images, mask, *, nets, squared: bool):
  """(A_loc, A_glo) of this device's rows, gathered over `data` into the whole batch (B, h, w) each.

  `state` is any object with params, e_loc_params and eloc_stats (a `train.TrainState`); the images are
  normalised without augmentation (§3.4). `mask` marks the padding rows: they come back as zeros and the
  caller drops them.
  """
  x = input_pipeline.normalize(images.astype(jnp.float32) / 255.0)
  a_loc, a_glo = gcad.anomaly_maps(nets, state.params, state.e_loc_params, state.eloc_stats, x, squared=squared)
  keep = mask[:, None, None]
  gather = lambda a: jax.lax.all_gather(a * keep, parallel.AXIS, tiled=True)
  return gather(a_loc), gather(a_glo)


_MAPPED: dict = {}


def _mapped(nets, squared: bool, mode: str, mesh):
  """The mapped step, built once per (nets, score.squared, mode, mesh) so jit compiles once per shape."""
  key = (id(nets), squared, mode, id(mesh))
  if key not in _MAPPED:
    fn = functools.partial(branch_maps_step, nets=nets, squared=squared)
    _MAPPED[key] = (nets, mesh, parallel.map_per_device(fn, mode, mesh, donate=False))  # keeps the ids alive
  return _MAPPED[key][2]


def branch_maps(config, nets, state, images_uint8: np.ndarray, mesh, *, batch_size: int | None = None,
                replicated: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(A_loc, A_glo), each (N, h, w) float32 on the host, for uint8 images at network size (§8 step 1).

  Batches that the devices do not divide are padded and the padding dropped (any N works). `state` is
  replicated on the devices (as `train.train` returns it) unless `replicated=False` (a host state).
  """
  mode = config.parallel
  if not replicated:
    state = parallel.replicate(state, mode, mesh)
  mapped = _mapped(nets, bool(config.score.squared), mode, mesh)
  batch = batch_size or config.train.batch_size
  rows = None
  out_loc, out_glo = [], []
  for index, mask in parallel.padded_batches(len(images_uint8), batch, mesh.size):
    if rows is None:
      rows = parallel.process_rows(len(index))
    images, mask_dev = parallel.shard_batch((images_uint8[index[rows]], mask[rows]), mode, mesh)
    a_loc, a_glo = parallel.unreplicate(mapped(state, images, mask_dev), mode)
    keep = mask > 0
    out_loc.append(np.asarray(a_loc, np.float32)[keep])
    out_glo.append(np.asarray(a_glo, np.float32)[keep])
  return np.concatenate(out_loc), np.concatenate(out_glo)


# ------------------------------------------------------------------------------------------------
# Normalisation (§8 step 2), fusion (§8 step 3): pure NumPy.


def norm_stats(a_loc: np.ndarray, a_glo: np.ndarray, mode: str = 'scalar') -> dict:
  """μ, σ per branch from the validation maps (N, h, w): scalars over all pixels, or per pixel (§8 step 2)."""
  if mode not in ('scalar', 'per_pixel'):
    raise ValueError(f'config.score.norm: {mode!r} is not one of [\'scalar\', \'per_pixel\']')
  axis = None if mode == 'scalar' else 0
  stats = {}
  for name, a in zip(BRANCHES, (a_loc, a_glo)):
    a = np.asarray(a, np.float64)
    mean, std = a.mean(axis=axis), a.std(axis=axis)
    if np.any(std <= 0) or not np.all(np.isfinite(std)):
      raise ValueError(f'the validation maps of branch {name} have std {np.min(std)}; cannot normalise (docs/method.md §8 '
                       'step 2). Are the validation images all identical, or the weights broken?')
    stats[name] = {'mean': mean, 'std': std}
  return stats


def normalise(a: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
  """(A − μ) / σ, float32."""
  return ((np.asarray(a, np.float64) - stats['mean']) / stats['std']).astype(np.float32)


FUSIONS = ('sum', 'max')


def scale_variants(a_loc: np.ndarray, a_glo: np.ndarray, stats: Mapping[str, Any],
                   fusion: str = 'sum') -> dict[str, np.ndarray]:
  """{'local', 'global', 'combined'} maps of one scale: each branch normalised, and A^(p) their sum (§8 step 2)
  or, with `fusion='max'` (`score.fusion`), their pixelwise maximum."""
  local, glob = normalise(a_loc, stats['loc']), normalise(a_glo, stats['glo'])
  if fusion not in FUSIONS:
    raise ValueError(f'score.fusion={fusion!r} is not one of {list(FUSIONS)}')
  combined = local + glob if fusion == 'sum' else np.maximum(local, glob)
  return {'combined': combined, 'local': local, 'global': glob}


def fuse_scales(per_scale: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """A = mean over the scales p of A^(p), per variant (§8 step 3)."""
  return {v: np.mean(np.stack([m[v] for m in per_scale]), axis=0).astype(np.float32) for v in per_scale[0]}


# ------------------------------------------------------------------------------------------------
# Upsampling (§8 step 4) and image scores (§8 step 6).


@functools.partial(jax.jit, static_argnums=1)
def _upsample(maps, size):
  return input_pipeline.resize(maps, size, method='bilinear')


def upsample(maps: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """(h, w) or (N, h, w) → bilinear, half-pixel centres, to `size` = (H, W), float32 (§8 step 4)."""
  return np.asarray(_upsample(jnp.asarray(maps, jnp.float32), tuple(int(s) for s in size)), np.float32)


class FullResMaps(collections.abc.Mapping):
  """image_id → the full-resolution 2-D float32 map, upsampled on access (one image at a time)."""

  def __init__(self, image_ids: Sequence[str], maps: np.ndarray, sizes: np.ndarray):
    self._index = {i: k for k, i in enumerate(image_ids)}
    self._maps, self._sizes = maps, np.asarray(sizes)

  def __getitem__(self, image_id: str) -> np.ndarray:
    k = self._index[image_id]
    return upsample(self._maps[k], self._sizes[k])

  def __iter__(self):
    return iter(self._index)

  def __len__(self):
    return len(self._index)


def image_scores(maps: Mapping[str, np.ndarray]) -> dict[str, float]:
  """The image score = the maximum of its full-resolution map (§8 step 6)."""
  return {image_id: float(np.max(m)) for image_id, m in maps.items()}


# ------------------------------------------------------------------------------------------------
# The driver, and the saved statistics.


@dataclasses.dataclass
class ScoredSplit:
  """The normalised maps of a split at network size, per variant, and what is needed to upsample them."""
  image_ids: list[str]
  labels: np.ndarray
  original_sizes: np.ndarray
  maps: dict[str, np.ndarray]  # variant -> (N, h, w) float32
  stats: dict[int, dict]  # p -> norm_stats

  def full_res(self, variant: str = 'combined') -> FullResMaps:
    return FullResMaps(self.image_ids, self.maps[variant], self.original_sizes)


def compute_norm_stats(config, models: Mapping[int, tuple], val_images: np.ndarray, mesh) -> dict[int, dict]:
  """μ, σ per scale and branch on the validation images, with the given (final) weights (§8 step 2)."""
  return {p: norm_stats(*branch_maps(config, nets, state, val_images, mesh), mode=config.score.norm)
          for p, (nets, state) in models.items()}


def score_images(config, models: Mapping[int, tuple], stats: Mapping[int, dict], images_uint8: np.ndarray,
                 mesh) -> dict[str, np.ndarray]:
  """The fused normalised maps {'combined', 'local', 'global'} (N, h, w) of uint8 images (§8 steps 1–3)."""
  per_scale = [scale_variants(*branch_maps(config, nets, state, images_uint8, mesh), stats[p],
                              config.score.get('fusion', 'sum')) for p, (nets, state) in models.items()]
  return fuse_scales(per_scale)


def score_split(config, models: Mapping[int, tuple], val_images: np.ndarray, data, mesh,
                stats: Mapping[int, dict] | None = None) -> ScoredSplit:
  """Validation statistics (unless given), then the maps of `data` (a `SplitData`), all scales fused."""
  stats = dict(stats) if stats is not None else compute_norm_stats(config, models, val_images, mesh)
  maps = score_images(config, models, stats, data.images, mesh)
  return ScoredSplit(list(data.image_ids), np.asarray(data.labels), np.asarray(data.original_sizes), maps, stats)


def stats_to_json(stats: Mapping[int, dict], config) -> dict:
  out = {'norm': config.score.norm, 'squared': bool(config.score.squared), 'spec': 'docs/method.md §8 step 2',
         'scales': {}}
  for p, s in stats.items():
    out['scales'][str(p)] = {b: {k: np.asarray(v).tolist() for k, v in s[b].items()} for b in BRANCHES}
  return out


def stats_from_json(data: Mapping) -> dict[int, dict]:
  return {int(p): {b: {k: np.asarray(v, np.float64) for k, v in s[b].items()} for b in BRANCHES}
          for p, s in data['scales'].items()}


def save_norm_stats(stats: Mapping[int, dict], config, workdir) -> pathlib.Path:
  """workdir/score_norm.json, atomically (a hidden temporary file, then a rename)."""
  path = pathlib.Path(workdir) / NORM_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f'.{NORM_FILE}.{os.getpid()}.tmp'
  tmp.write_text(json.dumps(stats_to_json(stats, config), indent=1))
  os.replace(tmp, path)
  return path


def load_norm_stats(workdir) -> dict[int, dict]:
  path = pathlib.Path(workdir) / NORM_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing; run --mode=eval once to compute the normalisation (docs/method.md §8)')
  return stats_from_json(json.loads(path.read_text()))
