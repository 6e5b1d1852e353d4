"""Procedural scenes in the exact MVTec LOCO AD on-disk layout: the embedded default data set.

`generate()` writes `<out>/<category>/` as LOCO_FORMAT.md §2 lays it out (RGB PNGs, three-digit ids), one
single-channel ground-truth PNG per defect channel (§5) and `defects_config.json` (§6), and, outside the
category folder, `<out>/<category>.manifest.json`, which lists every image and channel for tests. `<out>`
is a TFDS `manual_dir`. The scenes obey real logical constraints (kinds, counts, colours, placement), so
logical anomalies need global context, while good images vary in pose, position, colour and lighting.

  python -m tfds_loco.synthetic --out data/synthetic --seed 0 --category all
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
import zlib
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ('synthetic_tray', 'synthetic_grid', 'synthetic_connectors')
DEFAULT_SIZE = (320, 256)  # (W, H), non-square on purpose (§3: never assume a square image).
MIN_SIZE = 64
_SS = 2  # Supersampling factor: scenes are drawn at 2x and box-filtered down (anti-aliasing).

# Count key -> (split, label); the key's position is the split's sub-seed.
_SPLITS = {
    'train': ('train', 'good'),
    'validation': ('validation', 'good'),
    'good': ('test', 'good'),
    'logical': ('test', 'logical_anomalies'),
    'structural': ('test', 'structural_anomalies'),
}
_NEAR = '~'  # Recipe prefix: place this defect at the previous defect's anchor (overlapping channels).

State = dict[str, Any]
Op = tuple  # ('ellipse', x, y, r, r, fill) | ('poly', pts, fill) | ('line', pts, width, fill)
#             | ('rrect', x0, y0, x1, y1, radius, fill); coordinates in output pixels.


def default_counts() -> dict[str, int]:
  """Images per folder: train/good, validation/good, test/good, test/logical, test/structural."""
  return {'train': 60, 'validation': 20, 'good': 30, 'logical': 30, 'structural': 30}


# ------------------------------------------------------------------------------------------------
# Drawing primitives.


def _disc(x, y, r, fill=None) -> Op:
  return ('ellipse', x, y, r, r, fill)


def _box(rect, fill=None) -> Op:
  x0, y0, x1, y1 = rect
  return ('poly', [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill)


def _rbox(rect, radius, fill=None) -> Op:
  return ('rrect', *rect, radius, fill)


def _line(pts, width, fill=None) -> Op:
  return ('line', np.asarray(pts, float), width, fill)


def _poly(pts, fill=None) -> Op:
  return ('poly', np.asarray(pts, float), fill)


def _rect(xa, ya, xb, yb):
  return (min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))


def _centre(rect):
  return ((rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2)


def _tint(colour, delta) -> tuple[int, ...]:
  return tuple(min(255, max(0, int(c + d))) for c, d in zip(colour, delta))


def _shade(colour, factor, add=0) -> tuple[int, ...]:
  return tuple(min(255, max(0, int(c * factor + add))) for c in colour)


def _ellipse_pts(cx, cy, rx, ry, angle=0.0, n=12):
  """Polygon(s) of rotated ellipses; array arguments give shape (len, n, 2)."""
  t = np.linspace(0, 2 * np.pi, n, endpoint=False)
  cx, cy, rx, ry, angle = (np.asarray(v, float)[..., None] for v in (cx, cy, rx, ry, angle))
  x, y = rx * np.cos(t), ry * np.sin(t)
  ca, sa = np.cos(angle), np.sin(angle)
  return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], -1)


def _blob(rng, cx, cy, r):
  """An irregular star-shaped polygon of radius in [0.6 r, r] around (cx, cy); contains its centre."""
  n = int(rng.integers(8, 13))
  ang = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n
  rad = r * rng.uniform(0.6, 1.0, n)
  return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)


def _bezier(p0, p1, p2, p3, n=28):
  t = np.linspace(0, 1, n)[:, None]
  p0, p1, p2, p3 = (np.asarray(p, float) for p in (p0, p1, p2, p3))
  return (1 - t)**3 * p0 + 3 * (1 - t)**2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _grid_pts(rng, rect, step, margin):
  """Jittered hexagonal grid of points filling `rect` (granular fill)."""
  x0, y0, x1, y1 = rect
  lo = np.minimum([x0 + margin, y0 + margin], _centre(rect))
  hi = np.maximum([x1 - margin, y1 - margin], _centre(rect))
  xs, ys = np.arange(lo[0], hi[0] + 1e-9, step), np.arange(lo[1], hi[1] + 1e-9, step)
  gx, gy = np.meshgrid(xs, ys)
  gx = gx + (np.arange(len(ys)) % 2)[:, None] * step / 2
  pts = np.stack([gx.ravel(), gy.ravel()], 1) + rng.uniform(-0.25, 0.25, (gx.size, 2)) * step
  return np.clip(pts, lo, hi)


def _scratch_width(lay) -> float:
  """Scratches are >= 2.5% of the image width thick: visible after downscaling to 128 px."""
  return max(2.0, 0.025 * lay['size'][0])


def _scratch_pts(rng, rect, length):
  """A slightly bent three-point polyline of about `length` inside `rect`."""
  x0, y0, x1, y1 = rect
  a = rng.uniform(0, np.pi)
  d = np.array([math.cos(a), math.sin(a)]) * length / 2
  half = np.minimum(np.abs(d), [(x1 - x0) / 2, (y1 - y0) / 2]) * np.sign(d)
  c = np.array([rng.uniform(x0 + abs(half[0]), x1 - abs(half[0])),
                rng.uniform(y0 + abs(half[1]), y1 - abs(half[1]))])
  bend = np.array([-half[1], half[0]]) * rng.uniform(-0.25, 0.25)
  return np.stack([c - half, c + bend, c + half])


# ------------------------------------------------------------------------------------------------
# Rendering: scene ops -> global pose (applied to the geometry) -> 2x canvas -> RGB image / channel.


def _rrect_pts(x0, y0, x1, y1, r, n=4):
  r = min(r, (x1 - x0) / 2, (y1 - y0) / 2)
  pts = []
  for cx, cy, a0 in ((x1 - r, y0 + r, -90), (x1 - r, y1 - r, 0), (x0 + r, y1 - r, 90), (x0 + r, y0 + r, 180)):
    t = np.radians(np.linspace(a0, a0 + 90, n))
    pts += list(zip(cx + r * np.cos(t), cy + r * np.sin(t)))
  return pts


def _posed(ops, pose, size):
  """Applies the global pose (rotation about the image centre, then a shift) to every op's geometry."""
  angle, dx, dy = pose
  ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
  rot_t = np.array([[ca, sa], [-sa, ca]])
  c = np.array([size[0] / 2, size[1] / 2])
  shift = c + (dx, dy)

  def tf(pts):
    return (np.asarray(pts, float).reshape(-1, 2) - c) @ rot_t + shift

  out = []
  for op in ops:
    kind = op[0]
    if kind == 'ellipse':  # only circles are drawn as ellipses, so rotation moves the centre only
      (x, y), = tf([op[1:3]])
      out.append(('ellipse', x, y) + op[3:])
    elif kind == 'rrect':
      out.append(('poly', tf(_rrect_pts(*op[1:6]))) + op[6:])
    else:
      out.append((kind, tf(op[1])) + op[2:])
  return out


def _draw_ops(draw, ops, mask):
  for op in ops:
    kind, fill = op[0], 255 if mask else op[-1]
    if kind == 'ellipse':
      _, x, y, rx, ry, _ = op
      draw.ellipse([(x - rx) * _SS, (y - ry) * _SS, (x + rx) * _SS, (y + ry) * _SS], fill=fill)
    elif kind == 'poly':
      draw.polygon((op[1] * _SS).ravel().tolist(), fill=fill)
    elif kind == 'line':
      _, pts, width, _ = op
      pw, pts = width * _SS, pts * _SS
      draw.line(pts.ravel().tolist(), fill=fill, width=max(1, round(pw)), joint='curve')
      for x, y in (pts[0], pts[-1]):  # round caps
        draw.ellipse([x - pw / 2, y - pw / 2, x + pw / 2, y + pw / 2], fill=fill)
    else:
      raise ValueError(f'unknown drawing op {kind!r}')


def _raster(ops, size, pose, bg=None) -> Image.Image:
  """Draws the posed ops (RGB on `bg`, or a mask when bg is None) at 2x and box-filters to W x H."""
  mask = bg is None
  img = Image.new('L' if mask else 'RGB', (size[0] * _SS, size[1] * _SS), 0 if mask else bg)
  _draw_ops(ImageDraw.Draw(img), _posed(ops, pose, size), mask)
  return img.reduce(_SS)


def _sample_pose(rng, size):
  """Global nuisance pose: rotation <= 2 degrees and a shift of a few pixels."""
  shift = 1 + 0.012 * min(size)
  return (float(rng.uniform(-2, 2)), float(rng.uniform(-shift, shift)), float(rng.uniform(-shift, shift)))


def _finish(img, rng) -> np.ndarray:
  """Nuisance photometry: colour gain, a lighting gradient, low-frequency shading and sensor noise."""
  a = np.asarray(img, np.float32)
  h, w, _ = a.shape
  theta, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.08)
  xs = (np.arange(w, dtype=np.float32) - w / 2) * (amp * math.cos(theta) / max(w, h))
  ys = (np.arange(h, dtype=np.float32) - h / 2) * (amp * math.sin(theta) / max(w, h))
  low = np.asarray(Image.fromarray(rng.normal(size=(4, 5)).astype(np.float32)).resize((w, h), Image.BICUBIC))
  light = 1 + ys[:, None] + xs[None, :] + 0.025 * low
  gain = (1 + rng.normal(0, 0.02, 3)).astype(np.float32)
  a *= light[..., None] * gain
  # Sensor noise, std 2.5: triangular (sum of two uniforms), several times faster than Gaussian.
  a += 6.12 * (rng.random(a.shape, dtype=np.float32) + rng.random(a.shape, dtype=np.float32) - 1)
  return np.clip(np.rint(a), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Scene families. Each has a deterministic layout (size -> geometry), a good-scene sampler, a pure
# renderer (state -> ops) and defect functions (rng, state, layout, anchor) -> (mask ops, anchor) that
# modify the state and return the channel's annotation (§5 policy) and a point for overlapping recipes.


@dataclasses.dataclass(frozen=True)
class _Defect:
  """One defect type: name, kind, saturation rule (§6) and how to make it."""
  name: str
  kind: str  # 'logical' | 'structural'
  relative: bool
  threshold: float | Callable[[dict], float]  # fraction, or layout -> area in pixels
  apply: Callable[..., tuple[list[Op], tuple[float, float]]]


@dataclasses.dataclass(frozen=True)
class _Family:
  layout: Callable[[int, int], dict]
  sample: Callable[[np.random.Generator, dict], State]
  render: Callable[[State, dict], tuple[tuple[int, int, int], list[Op]]]
  defects: tuple[_Defect, ...]  # logical first: they take the high pixel values (§5)
  logical: tuple[tuple[str, ...], ...]  # recipes, cycled over the test images
  structural: tuple[tuple[str, ...], ...]


def _contamination(rng, st, lay, anchor, region, colours):
  """A foreign blob; at `anchor` it covers that point (overlap with the previous channel)."""
  r = rng.uniform(0.05, 0.08) * lay['s']
  if anchor is None:
    x0, y0, x1, y1 = region
    cx, cy = rng.uniform(x0 + r, x1 - r), rng.uniform(y0 + r, y1 - r)
  else:
    a = rng.uniform(0, 2 * np.pi)
    cx, cy = anchor[0] + 0.4 * r * math.cos(a), anchor[1] + 0.4 * r * math.sin(a)
  pts = _blob(rng, cx, cy, r)
  colour = _tint(colours[int(rng.integers(len(colours)))], rng.integers(-10, 11, 3))
  st['overlays'] += [_poly(pts, colour), _poly(_blob(rng, cx, cy, 0.45 * r), _shade(colour, 0.75))]
  return [_poly(pts)], (cx, cy)


def _scratch(rng, st, lay, anchor, region, colour):
  """A thick, slightly bent scratch inside `region` (structural: mask = the scratch itself)."""
  del anchor
  pts = _scratch_pts(rng, region, rng.uniform(0.25, 0.4) * lay['s'])
  op = _line(pts, _scratch_width(lay), _tint(colour, rng.integers(-10, 11, 3)))
  st['overlays'].append(op)
  return [op[:3] + (None,)], tuple(pts[1])


# --- synthetic_tray: breakfast-box-like. Left: exactly 2 tangerines + 1 nectarine (3 of 4 slots).
# Right top: cereal with exactly 25% almonds. Right bottom: full of banana chips.

_FRUIT = {'tangerine': (240, 140, 30), 'nectarine': (190, 48, 45), 'apple': (118, 182, 52)}
_ALMOND_FRAC = 0.25


def _tray_layout(w, h):
  s = min(w, h)
  tray = (0.05 * w, 0.06 * h, 0.95 * w, 0.94 * h)
  x0, y0, x1, y1 = tray
  wall = max(1.5, 0.03 * s)
  mx, my = (x0 + x1) / 2, (y0 + y1) / 2
  left = (x0 + wall, y0 + wall, mx - wall / 2, y1 - wall)
  sw, sh = (left[2] - left[0]) / 2, (left[3] - left[1]) / 2
  r = 0.34 * min(sw, sh)
  return dict(
      size=(w, h), s=s, tray=tray, left=left,
      top=(mx + wall / 2, y0 + wall, x1 - wall, my - wall / 2),
      bottom=(mx + wall / 2, my + wall / 2, x1 - wall, y1 - wall),
      slots=tuple((left[0] + (i + 0.5) * sw, left[1] + (j + 0.5) * sh) for j in range(2) for i in range(2)),
      r=r, jit=(max(0.05 * sw, sw / 2 - 1.2 * r), max(0.05 * sh, sh / 2 - 1.2 * r)),
      grain=max(1.2, 0.028 * s))


def _tray_fruit(rng, lay, slot, kind):
  x, y = lay['slots'][slot]
  jx, jy = lay['jit']
  r = lay['r'] * (1.15 if kind == 'nectarine' else 1.0) * rng.uniform(0.96, 1.04)
  return dict(kind=kind, slot=int(slot), x=x + rng.uniform(-jx, jx), y=y + rng.uniform(-jy, jy), r=r,
              tint=rng.integers(-12, 13, 3))


def _tray_sample(rng, lay):
  slots = rng.permutation(4)[:3]
  kinds = ('tangerine', 'tangerine', 'nectarine')
  return dict(fruits=[_tray_fruit(rng, lay, s, k) for s, k in zip(slots, kinds)],
              content={'top': 'cereal', 'bottom': 'banana'}, almond_frac=_ALMOND_FRAC, banana_fill=1.0,
              seed=int(rng.integers(2**62)), overlays=[])


def _fruit_ops(f):
  x, y, r = f['x'], f['y'], f['r']
  c = _tint(_FRUIT[f['kind']], f['tint'])
  ops = [_disc(x + 0.1 * r, y + 0.12 * r, r, (150, 142, 125)), _disc(x, y, r, _shade(c, 0.72)),
         _disc(x - 0.06 * r, y - 0.06 * r, 0.88 * r, c)]
  if f['kind'] == 'nectarine':
    ops.append(_disc(x + 0.3 * r, y + 0.25 * r, 0.38 * r, (226, 128, 48)))
  return ops + [_disc(x - 0.32 * r, y - 0.34 * r, 0.22 * r, _shade(c, 1.0, 70)),
                _disc(x + 0.05 * r, y - 0.02 * r, 0.08 * r, _shade(c, 0.4))]


def _cereal_ops(rng, rect, g, almond_frac):
  pts = _grid_pts(rng, rect, 1.15 * g, 0.7 * g)
  n = len(pts)
  almond = np.zeros(n, bool)
  almond[rng.permutation(n)[:round(almond_frac * n)]] = True  # the ratio is exact, not a probability
  ang, tint = rng.uniform(0, np.pi, n), rng.integers(-14, 15, (n, 3))
  polys = _ellipse_pts(pts[:, 0], pts[:, 1], np.where(almond, 0.95, 0.72) * g, 0.55 * g, ang, 10)
  colours = np.clip(np.where(almond[:, None], (224, 198, 152), (148, 90, 40)) + tint, 0, 255).tolist()
  return [('poly', p, tuple(c)) for p, c in zip(polys, colours)]


def _banana_ops(rng, rect, g, fill):
  x0, y0, x1, y1 = rect
  pts = _grid_pts(rng, (x0, y1 - fill * (y1 - y0), x1, y1), 1.7 * g, 0.9 * g)
  tint = rng.integers(-10, 11, (len(pts), 3))
  rims = np.clip(tint + (196, 166, 80), 0, 255).tolist()
  flesh = np.clip(tint + (238, 220, 140), 0, 255).tolist()
  ops = []
  for (x, y), rim, fl in zip(pts.tolist(), rims, flesh):
    ops += [_disc(x, y, 0.95 * g, tuple(rim)), _disc(x, y, 0.78 * g, tuple(fl)),
            _disc(x, y, 0.22 * g, (168, 128, 70))]
  return ops


def _tray_render(st, lay):
  rng = np.random.default_rng(st['seed'])
  s = lay['s']
  x0, y0, x1, y1 = lay['tray']
  ops = [_rbox((x0 + 0.015 * s, y0 + 0.02 * s, x1 + 0.015 * s, y1 + 0.02 * s), 0.04 * s, (26, 32, 46)),
         _rbox(lay['tray'], 0.04 * s, (198, 188, 166))]
  ops += [_rbox(lay[k], 0.02 * s, (226, 218, 198)) for k in ('left', 'top', 'bottom')]
  for f in sorted(st['fruits'], key=lambda f: f['y']):
    ops += _fruit_ops(f)
  for where in ('top', 'bottom'):
    if st['content'][where] == 'cereal':
      ops += _cereal_ops(rng, lay[where], lay['grain'], st['almond_frac'])
    else:
      ops += _banana_ops(rng, lay[where], lay['grain'], st['banana_fill'])
  return (42, 52, 72), ops + st['overlays']


def _tray_where(st, content):
  return next(k for k, v in st['content'].items() if v == content)


def _tray_missing_fruit(rng, st, lay, anchor):
  """One fruit gone; annotated: the whole fruit compartment (§5)."""
  del anchor
  f = st['fruits'].pop(int(rng.integers(len(st['fruits']))))
  return [_box(lay['left'])], (f['x'], f['y'])


def _tray_additional_fruit(rng, st, lay, anchor):
  """A third tangerine in the free slot; annotated: every tangerine (any may be the extra one)."""
  del anchor
  free = sorted(set(range(4)) - {f['slot'] for f in st['fruits']})
  f = _tray_fruit(rng, lay, free[0], 'tangerine')
  st['fruits'].append(f)
  return [_disc(g['x'], g['y'], g['r']) for g in st['fruits'] if g['kind'] == 'tangerine'], (f['x'], f['y'])


def _tray_two_nectarines(rng, st, lay, anchor):
  """A tangerine becomes a nectarine (2 + 1 swapped counts); annotated: both nectarines."""
  del anchor
  tang = [f for f in st['fruits'] if f['kind'] == 'tangerine']
  f = tang[int(rng.integers(len(tang)))]
  f.update(kind='nectarine', r=f['r'] * 1.15)
  return [_disc(g['x'], g['y'], g['r']) for g in st['fruits'] if g['kind'] == 'nectarine'], (f['x'], f['y'])


def _tray_wrong_fruit_kind(rng, st, lay, anchor):
  """One fruit is a green apple; annotated: that fruit."""
  del anchor
  fruits = [f for f in st['fruits'] if f['kind'] != 'apple']
  f = fruits[int(rng.integers(len(fruits)))]
  f['kind'] = 'apple'
  return [_disc(f['x'], f['y'], f['r'])], (f['x'], f['y'])


def _tray_swapped(rng, st, lay, anchor):
  """Cereal and banana chips in each other's compartment; annotated: both compartments."""
  del rng, anchor
  st['content'] = {'top': st['content']['bottom'], 'bottom': st['content']['top']}
  return [_box(lay['top']), _box(lay['bottom'])], _centre(lay['top'])


def _tray_topping_ratio(rng, st, lay, anchor):
  """Almonds are not 25% of the cereal (none, or most); annotated: the cereal compartment."""
  del anchor
  st['almond_frac'] = float(rng.choice([0.0, 0.65, 0.8]))
  rect = lay[_tray_where(st, 'cereal')]
  return [_box(rect)], _centre(rect)


def _tray_underflow(rng, st, lay, anchor):
  """The banana compartment is about half full; annotated: the compartment."""
  del anchor
  st['banana_fill'] = float(rng.uniform(0.3, 0.55))
  rect = lay[_tray_where(st, 'banana')]
  return [_box(rect)], _centre(rect)


def _tray_fruit_damaged(rng, st, lay, anchor):
  """A dark bruise inside one fruit."""
  del anchor
  f = st['fruits'][int(rng.integers(len(st['fruits'])))]
  a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.3) * f['r']
  bx, by = f['x'] + d * math.cos(a), f['y'] + d * math.sin(a)
  pts = _blob(rng, bx, by, 0.55 * f['r'])
  st['overlays'] += [_poly(pts, (92, 58, 30)), _poly(_blob(rng, bx, by, 0.3 * f['r']), (60, 36, 20))]
  return [_poly(pts)], (bx, by)


def _tray_scratch(rng, st, lay, anchor):
  return _scratch(rng, st, lay, anchor, lay['tray'], (88, 78, 70))


def _tray_contamination(rng, st, lay, anchor):
  return _contamination(rng, st, lay, anchor, lay['tray'], ((40, 90, 200), (30, 30, 30), (120, 60, 160)))


def _tray_object_area(lay):
  return math.pi * (0.96 * lay['r'])**2  # a tangerine: the low end of the object's area (§6)


_TRAY = _Family(
    layout=_tray_layout, sample=_tray_sample, render=_tray_render,
    defects=(
        _Defect('missing_fruit', 'logical', False, _tray_object_area, _tray_missing_fruit),
        _Defect('additional_fruit', 'logical', False, _tray_object_area, _tray_additional_fruit),
        _Defect('nectarines_2_tangerine_1', 'logical', True, 0.5, _tray_two_nectarines),
        _Defect('wrong_fruit_kind', 'logical', True, 1.0, _tray_wrong_fruit_kind),
        _Defect('compartments_swapped', 'logical', True, 1.0, _tray_swapped),
        _Defect('wrong_topping_ratio', 'logical', True, 1.0, _tray_topping_ratio),
        _Defect('underflow', 'logical', True, 1.0, _tray_underflow),
        _Defect('fruit_damaged', 'structural', True, 1.0, _tray_fruit_damaged),
        _Defect('tray_scratch', 'structural', True, 1.0, _tray_scratch),
        _Defect('contamination', 'structural', True, 1.0, _tray_contamination),
    ),
    logical=(('missing_fruit',), ('missing_fruit', 'wrong_fruit_kind'), ('additional_fruit',),
             ('missing_fruit', 'underflow'), ('nectarines_2_tangerine_1',), ('wrong_fruit_kind',),
             ('compartments_swapped',), ('wrong_topping_ratio',), ('underflow',)),
    structural=(('fruit_damaged',), ('fruit_damaged', '~contamination'), ('tray_scratch',),
                ('tray_scratch', 'contamination'), ('contamination',), ('contamination', 'contamination')),
)


# --- synthetic_grid: pushpins-like. A box of 3 x 5 cells (5 x 3 when portrait); exactly one pin per
# cell, every pin yellow, lying at a random position and orientation.

_PIN = (236, 196, 36)
_PIN_WRONG = ((45, 95, 215), (212, 52, 60), (60, 172, 86))
_FLOOR = (32, 32, 38)


def _grid_layout(w, h):
  s = min(w, h)
  box = (0.04 * w, 0.05 * h, 0.96 * w, 0.95 * h)
  rows, cols = (3, 5) if w >= h else (5, 3)
  wall = max(2.0, 0.03 * s)
  cw = (box[2] - box[0] - (cols + 1) * wall) / cols
  ch = (box[3] - box[1] - (rows + 1) * wall) / rows
  cells = tuple((box[0] + wall + c * (cw + wall), box[1] + wall + r * (ch + wall),
                 box[0] + (c + 1) * (cw + wall), box[1] + (r + 1) * (ch + wall))
                for r in range(rows) for c in range(cols))
  walls = [(cells[i][2], cells[i][1], cells[i + 1][0], cells[i][3])
           for i in range(len(cells)) if i % cols < cols - 1]
  walls += [(cells[i][0], cells[i][3], cells[i][2], cells[i + cols][1]) for i in range(len(cells) - cols)]
  m = min(cw, ch)
  rh = 0.19 * m
  return dict(size=(w, h), s=s, box=box, cells=cells, walls=tuple(walls), rh=rh, needle=0.22 * m,
              nw=max(1.0, 0.28 * rh))


def _grid_pin(rng, lay, rect, cell, colour=_PIN):
  rh = lay['rh'] * rng.uniform(0.95, 1.05)
  a = rng.uniform(0, 2 * np.pi)
  tip = (rh + lay['needle']) * np.array([math.cos(a), math.sin(a)])
  lo = np.array(rect[:2]) + np.maximum(rh, -tip) + 0.5
  hi = np.array(rect[2:]) - np.maximum(rh, tip) - 0.5
  x, y = np.where(lo < hi, lo + rng.uniform(0, 1, 2) * (hi - lo), (lo + hi) / 2)
  return dict(x=float(x), y=float(y), rh=rh, angle=a, cell=cell, colour=_tint(colour, rng.integers(-8, 9, 3)),
              broken=None)


def _grid_sample(rng, lay):
  return dict(pins=[_grid_pin(rng, lay, c, i) for i, c in enumerate(lay['cells'])], missing_walls=[],
              overlays=[])


def _pin_tip(p, lay):
  d = p['rh'] + lay['needle']
  return (p['x'] + d * math.cos(p['angle']), p['y'] + d * math.sin(p['angle']))


def _pin_ops(p, lay):
  x, y, rh, c = p['x'], p['y'], p['rh'], p['colour']
  ops = [_line([(x, y), _pin_tip(p, lay)], lay['nw'], (186, 186, 192)),
         _disc(x + 0.15 * rh, y + 0.2 * rh, rh, (16, 16, 20)), _disc(x, y, rh, _shade(c, 0.7)),
         _disc(x - 0.05 * rh, y - 0.05 * rh, 0.8 * rh, c),
         _disc(x - 0.3 * rh, y - 0.3 * rh, 0.25 * rh, _shade(c, 1.0, 70))]
  if p['broken']:
    a0, span, crack = p['broken']
    t = np.linspace(a0, a0 + span, 12)
    wedge = [(x, y)] + list(zip(x + 1.1 * rh * np.cos(t), y + 1.1 * rh * np.sin(t)))
    end = (x + 0.9 * rh * math.cos(crack), y + 0.9 * rh * math.sin(crack))
    ops += [_poly(wedge, _FLOOR), _line([(x, y), end], max(1.0, 0.22 * rh), _shade(c, 0.35))]
  return ops


def _pin_mask(p, lay):
  return [_disc(p['x'], p['y'], p['rh']), _line([(p['x'], p['y']), _pin_tip(p, lay)], lay['nw'])]


def _grid_render(st, lay):
  s = lay['s']
  x0, y0, x1, y1 = lay['box']
  ops = [_rbox((x0 + 0.012 * s, y0 + 0.018 * s, x1 + 0.012 * s, y1 + 0.018 * s), 0.03 * s, (150, 148, 142)),
         _rbox(lay['box'], 0.03 * s, (92, 94, 104))]
  ops += [_box(c, _FLOOR) for c in lay['cells']] + [_box(w, _FLOOR) for w in st['missing_walls']]
  for p in st['pins']:
    ops += _pin_ops(p, lay)
  return (198, 196, 188), ops + st['overlays']


def _grid_missing_pin(rng, st, lay, anchor):
  """A cell without pin; annotated: the whole cell (§5)."""
  del anchor
  p = st['pins'].pop(int(rng.integers(len(st['pins']))))
  cell = lay['cells'][p['cell']]
  return [_box(cell)], _centre(cell)


def _grid_additional_pin(rng, st, lay, anchor):
  """A cell with two pins; annotated: the cell."""
  del anchor
  counts = np.bincount([p['cell'] for p in st['pins']], minlength=len(lay['cells']))
  ci = int(rng.choice(np.flatnonzero(counts == 1)))
  st['pins'] = [p for p in st['pins'] if p['cell'] != ci]
  x0, y0, x1, y1 = cell = lay['cells'][ci]
  if x1 - x0 >= y1 - y0:
    halves = [(x0, y0, (x0 + x1) / 2, y1), ((x0 + x1) / 2, y0, x1, y1)]
  else:
    halves = [(x0, y0, x1, (y0 + y1) / 2), (x0, (y0 + y1) / 2, x1, y1)]
  pins = [_grid_pin(rng, lay, h, ci) for h in halves]
  st['pins'] += pins
  return [_box(cell)], (pins[1]['x'], pins[1]['y'])


def _grid_wrong_color(rng, st, lay, anchor):
  """One pin of another colour; annotated: the pin (the head suffices, see saturation)."""
  pins = [p for p in st['pins'] if p['colour'][2] < 120]  # still yellow
  if anchor is None:
    p = pins[int(rng.integers(len(pins)))]
  else:
    p = min(pins, key=lambda q: (q['x'] - anchor[0])**2 + (q['y'] - anchor[1])**2)
  p['colour'] = _tint(_PIN_WRONG[int(rng.integers(len(_PIN_WRONG)))], rng.integers(-8, 9, 3))
  return _pin_mask(p, lay), (p['x'], p['y'])


def _grid_missing_separator(rng, st, lay, anchor):
  """One wall between two cells is missing; annotated: that wall."""
  del anchor
  free = [w for w in lay['walls'] if w not in st['missing_walls']]
  wall = free[int(rng.integers(len(free)))]
  st['missing_walls'].append(wall)
  return [_box(wall)], _centre(wall)


def _grid_broken_pin(rng, st, lay, anchor):
  """A pin head with a chunk broken off and a crack; annotated: the head."""
  del anchor
  p = st['pins'][int(rng.integers(len(st['pins'])))]
  a0 = rng.uniform(0, 2 * np.pi)
  p['broken'] = (a0, rng.uniform(1.6, 2.2), a0 + rng.uniform(2.6, 3.6))
  return [_disc(p['x'], p['y'], 1.05 * p['rh'])], (p['x'], p['y'])


def _grid_scratch(rng, st, lay, anchor):
  return _scratch(rng, st, lay, anchor, lay['box'], (178, 178, 184))


def _grid_contamination(rng, st, lay, anchor):
  region = lay['cells'][int(rng.integers(len(lay['cells'])))]
  return _contamination(rng, st, lay, anchor, region, ((236, 236, 226), (150, 96, 52), (200, 120, 200)))


def _pin_area(lay):
  return math.pi * (0.95 * lay['rh'])**2 + lay['needle'] * lay['nw']


_GRID = _Family(
    layout=_grid_layout, sample=_grid_sample, render=_grid_render,
    defects=(
        _Defect('missing_pin', 'logical', False, _pin_area, _grid_missing_pin),
        _Defect('additional_pin', 'logical', False, _pin_area, _grid_additional_pin),
        _Defect('wrong_pin_color', 'logical', False, lambda lay: math.pi * (0.95 * lay['rh'])**2,
               _grid_wrong_color),
        _Defect('missing_separator', 'logical', True, 1.0, _grid_missing_separator),
        _Defect('broken_pin', 'structural', True, 1.0, _grid_broken_pin),
        _Defect('box_scratch', 'structural', True, 1.0, _grid_scratch),
        _Defect('contamination', 'structural', True, 1.0, _grid_contamination),
    ),
    logical=(('missing_pin',), ('additional_pin', '~wrong_pin_color'), ('additional_pin',),
             ('missing_pin', 'additional_pin'), ('wrong_pin_color',), ('missing_separator',),
             ('missing_pin', 'missing_separator')),
    structural=(('broken_pin',), ('broken_pin', '~contamination'), ('box_scratch',),
                ('box_scratch', 'contamination'), ('contamination',)),
)


# --- synthetic_connectors: splicing-connectors-like. Two connectors of the same type (2, 3 or 5
# ports) joined at port 1 of each by one cable whose colour is fixed by the type.

_CABLE = {2: (236, 198, 30), 3: (40, 95, 205), 5: (205, 45, 40)}
_PORT = 1
_CONN_BG = (226, 226, 220)


def _conn_layout(w, h):
  s = min(w, h)
  bw = 0.15 * w
  span = 0.6 * w - bw  # distance between the inner edges
  return dict(size=(w, h), s=s, pitch=0.085 * h, bw=bw, cx=(0.2 * w, 0.8 * w), cy=0.5 * h,
              jit=(0.015 * w, 0.03 * h), cable=max(2.0, 0.035 * s), sag=0.25 * h, span=span)


def _conn_geom(c, lay):
  n, p, bw = c['n'], lay['pitch'], lay['bw']
  x0, x1 = c['cx'] - bw / 2, c['cx'] + bw / 2
  hh = (n + 0.6) * p / 2
  inner, outer, sgn = (x1, x0, 1) if c['side'] == 0 else (x0, x1, -1)  # sgn: towards the other one
  ys = [c['cy'] + (i - (n - 1) / 2) * p for i in range(n)]
  return dict(
      body=(x0, c['cy'] - hh, x1, c['cy'] + hh), outer=outer, sgn=sgn,
      holes=[_rect(inner - sgn * 0.32 * bw, y - 0.22 * p, inner - sgn * 0.08 * bw, y + 0.22 * p) for y in ys],
      levers=[_rect(outer + sgn * 0.06 * bw, y - 0.32 * p, outer + sgn * 0.52 * bw, y + 0.32 * p)
              for y in ys],
      attach=[(inner - sgn * 0.2 * bw, y) for y in ys])


def _new_cable(rng, lay, ports, colour, sign=0.0):
  s0 = (sign * rng.uniform(0.4, 1.0) if sign else rng.uniform(-1, 1)) * lay['sag']
  s1 = float(np.clip(s0 + rng.uniform(-0.3, 0.3) * lay['sag'], -lay['sag'], lay['sag']))
  return dict(ports=ports, colour=_tint(colour, rng.integers(-10, 11, 3)), sag=(s0, s1))


def _conn_sample(rng, lay):
  n = int(rng.choice(list(_CABLE)))
  jx, jy = lay['jit']
  conns = [dict(side=i, n=n, cx=lay['cx'][i] + rng.uniform(-jx, jx), cy=lay['cy'] + rng.uniform(-jy, jy))
           for i in range(2)]
  return dict(conns=conns, cables=[_new_cable(rng, lay, (_PORT, _PORT), _CABLE[n])], overlays=[])


def _cable_pts(st, lay, cable):
  p0 = _conn_geom(st['conns'][0], lay)['attach'][cable['ports'][0]]
  p3 = _conn_geom(st['conns'][1], lay)['attach'][cable['ports'][1]]
  d = (p3[0] - p0[0]) / 3
  return _bezier(p0, (p0[0] + d, p0[1] + cable['sag'][0]), (p3[0] - d, p3[1] + cable['sag'][1]), p3)


def _conn_ops(c, lay):
  g, bw = _conn_geom(c, lay), lay['bw']
  x0, y0, x1, y1 = g['body']
  k = 0.05 * bw
  ops = [_rbox((x0 + k, y0 + 1.5 * k, x1 + k, y1 + 1.5 * k), 0.12 * bw, (184, 184, 178)),
         _rbox(g['body'], 0.12 * bw, (148, 152, 160)),
         _rbox((x0 + k, y0 + k, x1 - k, y1 - k), 0.1 * bw, (212, 216, 222))]
  ops += [_box(h, (70, 72, 80)) for h in g['holes']]
  ops += [_rbox(lv, 0.08 * bw, (238, 122, 34)) for lv in g['levers']]
  return ops


def _conn_render(st, lay):
  ops = []
  for c in st['conns']:
    ops += _conn_ops(c, lay)
  w = lay['cable']
  for cable in st['cables']:
    pts = _cable_pts(st, lay, cable)
    ops += [_line(pts, 1.3 * w, _shade(cable['colour'], 0.55)), _line(pts, w, cable['colour']),
            _line(pts - [0, 0.25 * w], 0.3 * w, _shade(cable['colour'], 1.0, 60))]
  return _CONN_BG, ops + st['overlays']


def _cable_mask(st, lay, cable):
  return _line(_cable_pts(st, lay, cable), 1.3 * lay['cable'])


def _conn_wrong_type(rng, st, lay, anchor):
  """One connector of another type; annotated: both connectors (either may be the wrong one)."""
  del anchor
  c = st['conns'][int(rng.integers(2))]
  c['n'] = int(rng.choice([n for n in _CABLE if n != c['n']]))
  return [_box(_conn_geom(d, lay)['body']) for d in st['conns']], (c['cx'], c['cy'])


def _conn_cable_color(rng, st, lay, anchor):
  """The cable has the colour of another connector type; annotated: the cable."""
  del anchor
  types = {c['n'] for c in st['conns']}
  others = [n for n in _CABLE if n not in types]
  for cable in st['cables']:
    cable['colour'] = _tint(_CABLE[int(rng.choice(others))], rng.integers(-10, 11, 3))
  pts = _cable_pts(st, lay, st['cables'][0])
  return [_cable_mask(st, lay, c) for c in st['cables']], tuple(pts[len(pts) // 2])


def _conn_wrong_location(rng, st, lay, anchor):
  """The cable plugs into another port on one side; annotated: the cable and the empty right port."""
  del anchor
  cable = st['cables'][0]
  side = int(rng.integers(2))
  ports = list(cable['ports'])
  ports[side] = int(rng.choice([i for i in range(st['conns'][side]['n']) if i != _PORT]))
  cable['ports'] = tuple(ports)
  hole = _conn_geom(st['conns'][side], lay)['holes'][_PORT]
  return [_cable_mask(st, lay, cable), _box(hole)], _centre(hole)


def _conn_missing_cable(rng, st, lay, anchor):
  """No cable; annotated: every place between the connectors where the cable could run."""
  del rng, anchor
  st['cables'] = []
  g0, g1 = (_conn_geom(c, lay) for c in st['conns'])
  ya, yb = g0['attach'][_PORT][1], g1['attach'][_PORT][1]
  m = 0.75 * lay['sag'] + lay['cable']
  rect = (g0['body'][2], min(ya, yb) - m, g1['body'][0], max(ya, yb) + m)
  return [_box(rect)], _centre(rect)


def _conn_extra_cable(rng, st, lay, anchor):
  """A second cable at another port; annotated: both cables (one of them is enough: rel 0.5)."""
  del anchor
  n = min(c['n'] for c in st['conns'])
  j = int(rng.choice([i for i in range(n) if i != _PORT]))
  first = st['cables'][0]
  st['cables'].append(_new_cable(rng, lay, (j, j), first['colour'], -1.0 if first['sag'][0] > 0 else 1.0))
  pts = _cable_pts(st, lay, st['cables'][-1])
  return [_cable_mask(st, lay, c) for c in st['cables']], tuple(pts[len(pts) // 2])


def _conn_broken(rng, st, lay, anchor):
  """An outer corner of a connector broken off (lever included)."""
  del anchor
  c = st['conns'][int(rng.integers(2))]
  g, bw = _conn_geom(c, lay), lay['bw']
  top = bool(rng.integers(2))
  x, y = g['outer'], g['body'][1] if top else g['body'][3]
  sy = 1 if top else -1
  a = rng.uniform(0.45, 0.6) * bw
  b = rng.uniform(0.4, 0.55) * min(bw, g['body'][3] - g['body'][1])
  t = np.linspace(0, 1, 5)[1:-1]
  jag = [(x + g['sgn'] * a * (1 - u) + g['sgn'] * rng.uniform(-0.08, 0.08) * a,
          y + sy * b * u + sy * rng.uniform(-0.08, 0.08) * b) for u in t]
  edge = [(x + g['sgn'] * a, y)] + jag + [(x, y + sy * b)]
  chunk = [(x - g['sgn'] * 1.0, y - sy * 1.0)] + edge
  st['overlays'] += [_poly(chunk, _CONN_BG), _line(edge, max(1.0, 0.02 * lay['s']), (118, 120, 126))]
  cx, cy = np.mean(np.array(chunk), 0)
  return [_poly(chunk)], (float(cx), float(cy))


def _conn_scratch(rng, st, lay, anchor):
  """A thick scratch across one connector body."""
  del anchor
  g = _conn_geom(st['conns'][int(rng.integers(2))], lay)
  x0, y0, x1, y1 = g['body']
  ya, yb = rng.uniform(y0 + 0.15 * (y1 - y0), y1 - 0.15 * (y1 - y0), 2)
  mid = ((x0 + x1) / 2, (ya + yb) / 2 + rng.uniform(-0.1, 0.1) * (y1 - y0))
  pts = np.array([(x0 + 0.12 * lay['bw'], ya), mid, (x1 - 0.12 * lay['bw'], yb)])
  op = _line(pts, _scratch_width(lay), _tint((62, 62, 68), rng.integers(-10, 11, 3)))
  st['overlays'].append(op)
  return [op[:3] + (None,)], tuple(pts[1])


def _conn_contamination(rng, st, lay, anchor):
  w, h = lay['size']
  return _contamination(rng, st, lay, anchor, (0.1 * w, 0.15 * h, 0.9 * w, 0.85 * h),
                        ((64, 46, 30), (30, 30, 30), (120, 60, 150)))


def _cable_piece(lay):
  return 1.3 * lay['cable'] * lay['span'] / 3  # a third of a cable: the smallest sufficient region


_CONNECTORS = _Family(
    layout=_conn_layout, sample=_conn_sample, render=_conn_render,
    defects=(
        _Defect('wrong_connector_type', 'logical', False, lambda lay: lay['bw'] * 2.6 * lay['pitch'],
               _conn_wrong_type),
        _Defect('cable_color', 'logical', False, _cable_piece, _conn_cable_color),
        _Defect('wrong_cable_location', 'logical', False, _cable_piece, _conn_wrong_location),
        _Defect('missing_cable', 'logical', False, lambda lay: 1.3 * lay['cable'] * lay['span'],
               _conn_missing_cable),
        _Defect('extra_cable', 'logical', True, 0.5, _conn_extra_cable),
        _Defect('broken_connector', 'structural', True, 1.0, _conn_broken),
        _Defect('connector_scratch', 'structural', True, 1.0, _conn_scratch),
        _Defect('contamination', 'structural', True, 1.0, _conn_contamination),
    ),
    logical=(('wrong_connector_type',), ('wrong_cable_location', 'cable_color'), ('cable_color',),
             ('wrong_connector_type', 'cable_color'), ('wrong_cable_location',), ('missing_cable',),
             ('extra_cable',)),
    structural=(('broken_connector',), ('broken_connector', '~contamination'), ('connector_scratch',),
                ('connector_scratch', 'contamination'), ('contamination',)),
)

_FAMILIES = {'synthetic_tray': _TRAY, 'synthetic_grid': _GRID, 'synthetic_connectors': _CONNECTORS}


# ------------------------------------------------------------------------------------------------
# Images, defects_config.json and the writer.


def defects_config(category: str, size=DEFAULT_SIZE) -> list[dict[str, Any]]:
  """The category's defects_config.json entries (§6); absolute thresholds in pixels at `size`."""
  fam = _FAMILIES[category]
  lay = fam.layout(*size)
  out = []
  for i, d in enumerate(fam.defects):
    t = float(d.threshold) if d.relative else max(1, int(round(d.threshold(lay))))
    out.append({'defect_name': d.name, 'pixel_value': 255 - i, 'saturation_threshold': t,
                'relative_saturation': d.relative})
  return out


def _rng(seed, category, key, index) -> np.random.Generator:
  """One generator per image, from (seed, category, split, index): splits use different sub-seeds."""
  return np.random.default_rng([seed, zlib.crc32(category.encode()), list(_SPLITS).index(key), index])


def _make_image(fam, lay, rng, recipe):
  """Samples a good scene, applies the recipe's defects; returns the RGB array and (name, mask) list."""
  st = fam.sample(rng, lay)
  by_name = {d.name: d for d in fam.defects}
  channels, anchor = [], None
  for step in recipe:
    name = step.lstrip(_NEAR)
    ops, new_anchor = by_name[name].apply(rng, st, lay, anchor if step.startswith(_NEAR) else None)
    channels.append((name, ops))
    anchor = new_anchor
  pose = _sample_pose(rng, lay['size'])
  bg, ops = fam.render(st, lay)
  img = _finish(_raster(ops, lay['size'], pose, bg), rng)
  masks = [(name, np.asarray(_raster(ops, lay['size'], pose)) > 0) for name, ops in channels]
  return img, masks


def twin_pair(category: str, recipe, index: int, seed: int = 0, size=DEFAULT_SIZE):
  """(anomalous image, its defect-free twin, [(defect name, mask)]) of one logical test scene.

  The scene is `_rng(seed, category, 'logical', index)`'s, with `recipe` (defect names, e.g.
  ('nectarines_2_tangerine_1',)) applied; the twin is the same scene, pose, textures and noise without the defects:
  each defect runs on a copy of the state, so the random draws are the same and only the change is dropped.
  The pair isolates what a defect does to a model's maps. Any index works; the test split's logical images are
  indices 0.. with the family's recipes cycled (`getattr(family, 'logical')`).
  """
  _check_args(category, seed, size, {})
  fam = _FAMILIES[category]
  unknown = [name for name in recipe if name.lstrip(_NEAR) not in {d.name for d in fam.defects}]
  if unknown or not recipe:
    raise ValueError(f'recipe {tuple(recipe)!r}: give defect names of {category} '
                     f'({", ".join(d.name for d in fam.defects)})')
  lay = fam.layout(*size)
  image, masks = _make_image(fam, lay, _rng(seed, category, 'logical', index), tuple(recipe))

  def dropped(d):
    return dataclasses.replace(d, apply=lambda rng, st, lay, anchor: d.apply(rng, copy.deepcopy(st), lay, anchor))

  twin_fam = dataclasses.replace(fam, defects=tuple(dropped(d) for d in fam.defects))
  twin, _ = _make_image(twin_fam, lay, _rng(seed, category, 'logical', index), tuple(recipe))
  return image, twin, masks


def _check_args(category, seed, size, counts):
  if category not in _FAMILIES:
    raise ValueError(f'unknown category {category!r}; choose one of {", ".join(CATEGORIES)}')
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'seed must be a non-negative int, got {seed!r}')
  if len(size) != 2 or any(int(v) != v or v < MIN_SIZE for v in size):
    raise ValueError(f'size must be (W, H) with both >= {MIN_SIZE}, got {size!r}')
  unknown = set(counts) - set(_SPLITS)
  if unknown:
    raise ValueError(f'unknown count keys {sorted(unknown)}; use {", ".join(_SPLITS)}')
  if any(int(v) != v or v < 0 for v in counts.values()):
    raise ValueError(f'counts must be non-negative ints, got {counts!r}')


def _refuse_existing(path: pathlib.Path):
  if path.exists():
    raise FileExistsError(f'{path} already exists; pass --overwrite (overwrite=True) to replace it')


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def _write_png(path, array):
  Image.fromarray(array).save(path, format='PNG', compress_level=1)


def _write_json(path, obj):
  with open(path, 'w') as f:
    json.dump(obj, f, indent=2)
    f.write('\n')


def _write_category(root, category, seed, size, counts):
  """Writes every file of the category below `root`; returns the manifest (§2, §5, §6)."""
  fam = _FAMILIES[category]
  lay = fam.layout(*size)
  config = defects_config(category, size)
  info = {c['defect_name']: c for c in config}
  kind = {d.name: d.kind for d in fam.defects}
  images = []
  for key, n in counts.items():
    split, label = _SPLITS[key]
    (root / split / label).mkdir(parents=True)
    if label != 'good':
      (root / 'ground_truth' / label).mkdir(parents=True, exist_ok=True)
    recipes = () if label == 'good' else getattr(fam, key)
    for i in range(n):
      recipe = recipes[i % len(recipes)] if recipes else ()
      img, masks = _make_image(fam, lay, _rng(seed, category, key, i), recipe)
      stem = f'{i:03d}'
      _write_png(root / split / label / f'{stem}.png', img)
      channels = []
      if recipes:
        (root / 'ground_truth' / label / stem).mkdir()
      for j, (name, mask) in enumerate(masks):
        rel = f'ground_truth/{label}/{stem}/{j:03d}.png'
        if not mask.any():
          raise RuntimeError(f'{rel}: empty ground-truth channel ({name}); every channel needs a positive '
                             'pixel (§5): the scene is too small for this defect')
        pv = info[name]['pixel_value']
        _write_png(root / rel, (mask * np.uint8(pv)).astype(np.uint8))
        channels.append({'file': f'{j:03d}.png', 'path': rel, 'pixel_value': pv, 'defect_name': name,
                         'kind': kind[name], 'area': int(mask.sum())})
      images.append({'id': f'{split}/{label}/{stem}', 'path': f'{split}/{label}/{stem}.png', 'split': split,
                     'label': label, 'width': size[0], 'height': size[1], 'channels': channels})
  _write_json(root / 'defects_config.json', config)  # last: a half-written folder is not a category
  return {'category': category, 'seed': seed, 'size': list(size), 'counts': dict(counts),
          'defects_config': config, 'defect_kinds': kind, 'images': images}


def _generate(out_dir, category, seed, size, counts, overwrite):
  counts = {**default_counts(), **(counts or {})}
  size = tuple(size)
  _check_args(category, seed, size, counts)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  final = out / category
  if not overwrite:
    _refuse_existing(final)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{category}.tmp-', dir=out))  # hidden until complete
  tmp_manifest, old = out / f'{tmp.name}.manifest.json', out / f'{tmp.name}.old'
  try:
    manifest = _write_category(tmp, category, int(seed), size, counts)
    _write_json(tmp_manifest, manifest)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private
    if final.exists():
      if not overwrite:
        _refuse_existing(final)
      os.rename(final, old)
    os.rename(tmp, final)
    os.replace(tmp_manifest, out / f'{category}.manifest.json')
  except BaseException:
    if old.exists() and not final.exists():
      os.rename(old, final)  # put the previous data set back
    shutil.rmtree(tmp, ignore_errors=True)
    tmp_manifest.unlink(missing_ok=True)
    raise
  finally:
    shutil.rmtree(old, ignore_errors=True)
  return final, manifest


def generate(out_dir, category: str, seed: int = 0, size=DEFAULT_SIZE, counts=None,
             overwrite: bool = False) -> pathlib.Path:
  """Writes `out_dir/<category>/` (LOCO layout, §2) and `out_dir/<category>.manifest.json` atomically.

  Args:
    out_dir: the root that holds category folders (a TFDS `manual_dir`).
    category: one of CATEGORIES.
    seed: same seed, byte-identical files.
    size: (W, H) of every image, both >= 64.
    counts: images per folder, merged into default_counts().
    overwrite: replace an existing category folder instead of refusing.

  Returns:
    The category folder.
  """
  return _generate(out_dir, category, seed, size, counts, overwrite)[0]


# ------------------------------------------------------------------------------------------------
# Command line.


def _parse_size(text):
  m = re.fullmatch(r'\s*(\d+)\s*[xX]\s*(\d+)\s*', text)
  if not m or min(int(m[1]), int(m[2])) < MIN_SIZE:
    raise argparse.ArgumentTypeError(f'size must be WxH with both >= {MIN_SIZE}, e.g. 320x256; got {text!r}')
  return int(m[1]), int(m[2])


def _parse_counts(text):
  counts = {}
  for item in filter(None, (t.strip() for t in text.split(','))):
    key, _, value = item.partition('=')
    if key not in _SPLITS or not value.isdigit():
      raise argparse.ArgumentTypeError(f'bad count {item!r}; use e.g. train=60,validation=20,good=30,'
                                       'logical=30,structural=30')
    counts[key] = int(value)
  return counts


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m tfds_loco.synthetic', description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, type=pathlib.Path, help='root folder for category folders')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--category', default='all', choices=CATEGORIES + ('all',))
  parser.add_argument('--size', type=_parse_size, default=DEFAULT_SIZE, help='WxH, default 320x256')
  parser.add_argument('--counts', type=_parse_counts, default={},
                      help='e.g. train=60,validation=20,good=30,logical=30,structural=30')
  parser.add_argument('--overwrite', action='store_true', help='replace existing category folders')
  args = parser.parse_args(argv)
  cats = CATEGORIES if args.category == 'all' else (args.category,)
  try:
    if not args.overwrite:
      for cat in cats:
        _refuse_existing(args.out / cat)
    for cat in cats:
      t0 = time.perf_counter()
      path, man = _generate(args.out, cat, args.seed, args.size, args.counts, args.overwrite)
      c = man['counts']
      n_ch = sum(len(im['channels']) for im in man['images'])
      print(f'{cat}: {len(man["images"])} images {args.size[0]}x{args.size[1]} (train {c["train"]}, '
            f'validation {c["validation"]}, test good/logical/structural {c["good"]}/{c["logical"]}/'
            f'{c["structural"]}), {n_ch} gt channels, {len(man["defects_config"])} defect types, '
            f'seed {args.seed} -> {path} [{time.perf_counter() - t0:.1f}s]', flush=True)
  except (FileExistsError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
