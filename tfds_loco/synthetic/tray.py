"""synthetic_tray: the breakfast-box-like scene family (FAMILY).

Left: exactly 2 tangerines + 1 nectarine (3 of 4 slots). Right top: cereal with exactly 25% almonds.
Right bottom: full of banana chips.
"""

from __future__ import annotations

import math

import numpy as np

from tfds_loco.synthetic import draw
from tfds_loco.synthetic import family

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
  c = draw.tint(_FRUIT[f['kind']], f['tint'])
  ops = [draw.disc(x + 0.1 * r, y + 0.12 * r, r, (150, 142, 125)), draw.disc(x, y, r, draw.shade(c, 0.72)),
         draw.disc(x - 0.06 * r, y - 0.06 * r, 0.88 * r, c)]
  if f['kind'] == 'nectarine':
    ops.append(draw.disc(x + 0.3 * r, y + 0.25 * r, 0.38 * r, (226, 128, 48)))
  return ops + [draw.disc(x - 0.32 * r, y - 0.34 * r, 0.22 * r, draw.shade(c, 1.0, 70)),
                draw.disc(x + 0.05 * r, y - 0.02 * r, 0.08 * r, draw.shade(c, 0.4))]


def _cereal_ops(rng, rect, g, almond_frac):
  pts = draw.grid_pts(rng, rect, 1.15 * g, 0.7 * g)
  n = len(pts)
  almond = np.zeros(n, bool)
  almond[rng.permutation(n)[:round(almond_frac * n)]] = True  # the ratio is exact, not a probability
  ang, tint = rng.uniform(0, np.pi, n), rng.integers(-14, 15, (n, 3))
  polys = draw.ellipse_pts(pts[:, 0], pts[:, 1], np.where(almond, 0.95, 0.72) * g, 0.55 * g, ang, 10)
  colours = np.clip(np.where(almond[:, None], (224, 198, 152), (148, 90, 40)) + tint, 0, 255).tolist()
  return [('poly', p, tuple(c)) for p, c in zip(polys, colours)]


def _banana_ops(rng, rect, g, fill):
  x0, y0, x1, y1 = rect
  pts = draw.grid_pts(rng, (x0, y1 - fill * (y1 - y0), x1, y1), 1.7 * g, 0.9 * g)
  tint = rng.integers(-10, 11, (len(pts), 3))
  rims = np.clip(tint + (196, 166, 80), 0, 255).tolist()
  flesh = np.clip(tint + (238, 220, 140), 0, 255).tolist()
  ops = []
  for (x, y), rim, fl in zip(pts.tolist(), rims, flesh):
    ops += [draw.disc(x, y, 0.95 * g, tuple(rim)), draw.disc(x, y, 0.78 * g, tuple(fl)),
            draw.disc(x, y, 0.22 * g, (168, 128, 70))]
  return ops


def _tray_render(st, lay):
  rng = np.random.default_rng(st['seed'])
  s = lay['s']
  x0, y0, x1, y1 = lay['tray']
  ops = [draw.rbox((x0 + 0.015 * s, y0 + 0.02 * s, x1 + 0.015 * s, y1 + 0.02 * s), 0.04 * s, (26, 32, 46)),
         draw.rbox(lay['tray'], 0.04 * s, (198, 188, 166))]
  ops += [draw.rbox(lay[k], 0.02 * s, (226, 218, 198)) for k in ('left', 'top', 'bottom')]
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
  return [draw.box(lay['left'])], (f['x'], f['y'])


def _tray_additional_fruit(rng, st, lay, anchor):
  """A third tangerine in the free slot; annotated: every tangerine (any may be the extra one)."""
  del anchor
  free = sorted(set(range(4)) - {f['slot'] for f in st['fruits']})
  f = _tray_fruit(rng, lay, free[0], 'tangerine')
  st['fruits'].append(f)
  masks = [draw.disc(g['x'], g['y'], g['r']) for g in st['fruits'] if g['kind'] == 'tangerine']
  return masks, (f['x'], f['y'])


def _tray_two_nectarines(rng, st, lay, anchor):
  """A tangerine becomes a nectarine (2 + 1 swapped counts); annotated: both nectarines."""
  del anchor
  tang = [f for f in st['fruits'] if f['kind'] == 'tangerine']
  f = tang[int(rng.integers(len(tang)))]
  f.update(kind='nectarine', r=f['r'] * 1.15)
  masks = [draw.disc(g['x'], g['y'], g['r']) for g in st['fruits'] if g['kind'] == 'nectarine']
  return masks, (f['x'], f['y'])


def _tray_wrong_fruit_kind(rng, st, lay, anchor):
  """One fruit is a green apple; annotated: that fruit."""
  del anchor
  fruits = [f for f in st['fruits'] if f['kind'] != 'apple']
  f = fruits[int(rng.integers(len(fruits)))]
  f['kind'] = 'apple'
  return [draw.disc(f['x'], f['y'], f['r'])], (f['x'], f['y'])


def _tray_swapped(rng, st, lay, anchor):
  """Cereal and banana chips in each other's compartment; annotated: both compartments."""
  del rng, anchor
  st['content'] = {'top': st['content']['bottom'], 'bottom': st['content']['top']}
  return [draw.box(lay['top']), draw.box(lay['bottom'])], draw.centre(lay['top'])


def _tray_topping_ratio(rng, st, lay, anchor):
  """Almonds are not 25% of the cereal (none, or most); annotated: the cereal compartment."""
  del anchor
  st['almond_frac'] = float(rng.choice([0.0, 0.65, 0.8]))
  rect = lay[_tray_where(st, 'cereal')]
  return [draw.box(rect)], draw.centre(rect)


def _tray_underflow(rng, st, lay, anchor):
  """The banana compartment is about half full; annotated: the compartment."""
  del anchor
  st['banana_fill'] = float(rng.uniform(0.3, 0.55))
  rect = lay[_tray_where(st, 'banana')]
  return [draw.box(rect)], draw.centre(rect)


def _tray_fruit_damaged(rng, st, lay, anchor):
  """A dark bruise inside one fruit."""
  del anchor
  f = st['fruits'][int(rng.integers(len(st['fruits'])))]
  a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.3) * f['r']
  bx, by = f['x'] + d * math.cos(a), f['y'] + d * math.sin(a)
  pts = draw.blob(rng, bx, by, 0.55 * f['r'])
  st['overlays'] += [draw.poly(pts, (92, 58, 30)),
                     draw.poly(draw.blob(rng, bx, by, 0.3 * f['r']), (60, 36, 20))]
  return [draw.poly(pts)], (bx, by)


def _tray_scratch(rng, st, lay, anchor):
  return family.scratch(rng, st, lay, anchor, lay['tray'], (88, 78, 70))


def _tray_contamination(rng, st, lay, anchor):
  colours = ((40, 90, 200), (30, 30, 30), (120, 60, 160))
  return family.contamination(rng, st, lay, anchor, lay['tray'], colours)


def _tray_object_area(lay):
  return math.pi * (0.96 * lay['r'])**2  # a tangerine: the low end of the object's area (§6)


FAMILY = family.Family(
    layout=_tray_layout, sample=_tray_sample, render=_tray_render,
    defects=(
        family.Defect('missing_fruit', 'logical', False, _tray_object_area, _tray_missing_fruit),
        family.Defect('additional_fruit', 'logical', False, _tray_object_area, _tray_additional_fruit),
        family.Defect('nectarines_2_tangerine_1', 'logical', True, 0.5, _tray_two_nectarines),
        family.Defect('wrong_fruit_kind', 'logical', True, 1.0, _tray_wrong_fruit_kind),
        family.Defect('compartments_swapped', 'logical', True, 1.0, _tray_swapped),
        family.Defect('wrong_topping_ratio', 'logical', True, 1.0, _tray_topping_ratio),
        family.Defect('underflow', 'logical', True, 1.0, _tray_underflow),
        family.Defect('fruit_damaged', 'structural', True, 1.0, _tray_fruit_damaged),
        family.Defect('tray_scratch', 'structural', True, 1.0, _tray_scratch),
        family.Defect('contamination', 'structural', True, 1.0, _tray_contamination),
    ),
    logical=(('missing_fruit',), ('missing_fruit', 'wrong_fruit_kind'), ('additional_fruit',),
             ('missing_fruit', 'underflow'), ('nectarines_2_tangerine_1',), ('wrong_fruit_kind',),
             ('compartments_swapped',), ('wrong_topping_ratio',), ('underflow',)),
    structural=(('fruit_damaged',), ('fruit_damaged', '~contamination'), ('tray_scratch',),
                ('tray_scratch', 'contamination'), ('contamination',), ('contamination', 'contamination')),
)
