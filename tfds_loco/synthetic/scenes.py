"""The three scene families by category, and one image of a family: a good scene plus a recipe's defects.

Every image is a pure function of (seed, category, count key, index), so the same seed gives
byte-identical files (`image_rng`).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any
import zlib

import numpy as np

from tfds_loco import categories
from tfds_loco.synthetic import connectors
from tfds_loco.synthetic import draw
from tfds_loco.synthetic import grid
from tfds_loco.synthetic import tray

CATEGORIES = categories.SYNTHETIC_CATEGORIES
DEFAULT_SIZE = (320, 256)  # (W, H), non-square on purpose (§3: never assume a square image).
MIN_SIZE = 64

# Count key -> (split, label); the key's position is the split's sub-seed.
SPLITS = {
    'train': ('train', 'good'),
    'validation': ('validation', 'good'),
    'good': ('test', 'good'),
    'logical': ('test', 'logical_anomalies'),
    'structural': ('test', 'structural_anomalies'),
}
_NEAR = '~'  # Recipe prefix: place this defect at the previous defect's anchor (overlapping channels).

FAMILIES = dict(zip(CATEGORIES, (tray.FAMILY, grid.FAMILY, connectors.FAMILY)))  # the order of CATEGORIES


def default_counts() -> dict[str, int]:
  """Images per folder: train/good, validation/good, test/good, test/logical, test/structural."""
  return {'train': 60, 'validation': 20, 'good': 30, 'logical': 30, 'structural': 30}


def defects_config(category: str, size=DEFAULT_SIZE) -> list[dict[str, Any]]:
  """The category's defects_config.json entries (§6); absolute thresholds in pixels at `size`."""
  fam = FAMILIES[category]
  lay = fam.layout(*size)
  out = []
  for i, d in enumerate(fam.defects):
    t = float(d.threshold) if d.relative else max(1, int(round(d.threshold(lay))))
    out.append({'defect_name': d.name, 'pixel_value': 255 - i, 'saturation_threshold': t,
                'relative_saturation': d.relative})
  return out


def image_rng(seed, category, key, index) -> np.random.Generator:
  """One generator per image, from (seed, category, split, index): splits use different sub-seeds."""
  return np.random.default_rng([seed, zlib.crc32(category.encode()), list(SPLITS).index(key), index])


def make_image(fam, lay, rng, recipe):
  """Samples a good scene, applies the recipe's defects; returns the RGB array and (name, mask) list."""
  st = fam.sample(rng, lay)
  by_name = {d.name: d for d in fam.defects}
  channels, anchor = [], None
  for step in recipe:
    name = step.lstrip(_NEAR)
    ops, new_anchor = by_name[name].apply(rng, st, lay, anchor if step.startswith(_NEAR) else None)
    channels.append((name, ops))
    anchor = new_anchor
  pose = draw.sample_pose(rng, lay['size'])
  bg, ops = fam.render(st, lay)
  img = draw.finish(draw.raster(ops, lay['size'], pose, bg), rng)
  masks = [(name, np.asarray(draw.raster(ops, lay['size'], pose)) > 0) for name, ops in channels]
  return img, masks


def twin_pair(category: str, recipe, index: int, seed: int = 0, size=DEFAULT_SIZE):
  """(anomalous image, its defect-free twin, [(defect name, mask)]) of one logical test scene.

  The scene is `image_rng(seed, category, 'logical', index)`'s, with `recipe` (defect names, e.g.
  ('nectarines_2_tangerine_1',)) applied; the twin is the same scene, pose, textures and noise without
  the defects: each defect runs on a copy of the state, so the random draws are the same and only the
  change is dropped. The pair isolates what a defect does to a model's maps. Any index works; the test
  split's logical images are indices 0.. with the family's recipes cycled (`FAMILIES[category].logical`).
  """
  check_args(category, seed, size, {})
  fam = FAMILIES[category]
  unknown = [name for name in recipe if name.lstrip(_NEAR) not in {d.name for d in fam.defects}]
  if unknown or not recipe:
    raise ValueError(f'recipe {tuple(recipe)!r}: give defect names of {category} '
                     f'({", ".join(d.name for d in fam.defects)})')
  lay = fam.layout(*size)
  image, masks = make_image(fam, lay, image_rng(seed, category, 'logical', index), tuple(recipe))

  def dropped(d):
    return dataclasses.replace(
        d, apply=lambda rng, st, lay, anchor: d.apply(rng, copy.deepcopy(st), lay, anchor))

  twin_fam = dataclasses.replace(fam, defects=tuple(dropped(d) for d in fam.defects))
  twin, _ = make_image(twin_fam, lay, image_rng(seed, category, 'logical', index), tuple(recipe))
  return image, twin, masks


def check_args(category, seed, size, counts):
  if category not in FAMILIES:
    raise ValueError(f'unknown category {category!r}; choose one of {", ".join(CATEGORIES)}')
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'seed must be a non-negative int, got {seed!r}')
  if len(size) != 2 or any(int(v) != v or v < MIN_SIZE for v in size):
    raise ValueError(f'size must be (W, H) with both >= {MIN_SIZE}, got {size!r}')
  unknown = set(counts) - set(SPLITS)
  if unknown:
    raise ValueError(f'unknown count keys {sorted(unknown)}; use {", ".join(SPLITS)}')
  if any(int(v) != v or v < 0 for v in counts.values()):
    raise ValueError(f'counts must be non-negative ints, got {counts!r}')
