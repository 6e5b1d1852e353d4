"""What a scene family is, and the structural defects the families share.

Each family has a deterministic layout (size -> geometry), a good-scene sampler, a pure renderer
(state -> ops) and defect functions (rng, state, layout, anchor) -> (mask ops, anchor) that modify the
state and return the channel's annotation (§5 policy) and a point for overlapping recipes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from tfds_loco.synthetic import draw

State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Defect:
  """One defect type: name, kind, saturation rule (§6) and how to make it."""
  name: str
  kind: str  # 'logical' | 'structural'
  relative: bool
  threshold: float | Callable[[dict], float]  # fraction, or layout -> area in pixels
  apply: Callable[..., tuple[list[draw.Op], tuple[float, float]]]


@dataclasses.dataclass(frozen=True)
class Family:
  layout: Callable[[int, int], dict]
  sample: Callable[[np.random.Generator, dict], State]
  render: Callable[[State, dict], tuple[tuple[int, int, int], list[draw.Op]]]
  defects: tuple[Defect, ...]  # logical first: they take the high pixel values (§5)
  logical: tuple[tuple[str, ...], ...]  # recipes, cycled over the test images
  structural: tuple[tuple[str, ...], ...]


def contamination(rng, st, lay, anchor, region, colours):
  """A foreign blob; at `anchor` it covers that point (overlap with the previous channel)."""
  r = rng.uniform(0.05, 0.08) * lay['s']
  if anchor is None:
    x0, y0, x1, y1 = region
    cx, cy = rng.uniform(x0 + r, x1 - r), rng.uniform(y0 + r, y1 - r)
  else:
    a = rng.uniform(0, 2 * np.pi)
    cx, cy = anchor[0] + 0.4 * r * math.cos(a), anchor[1] + 0.4 * r * math.sin(a)
  pts = draw.blob(rng, cx, cy, r)
  colour = draw.tint(colours[int(rng.integers(len(colours)))], rng.integers(-10, 11, 3))
  st['overlays'] += [draw.poly(pts, colour),
                     draw.poly(draw.blob(rng, cx, cy, 0.45 * r), draw.shade(colour, 0.75))]
  return [draw.poly(pts)], (cx, cy)


def scratch(rng, st, lay, anchor, region, colour):
  """A thick, slightly bent scratch inside `region` (structural: mask = the scratch itself)."""
  del anchor
  pts = draw.scratch_pts(rng, region, rng.uniform(0.25, 0.4) * lay['s'])
  op = draw.line(pts, draw.scratch_width(lay), draw.tint(colour, rng.integers(-10, 11, 3)))
  st['overlays'].append(op)
  return [op[:3] + (None,)], tuple(pts[1])

