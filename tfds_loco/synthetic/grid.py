"""synthetic_grid: the pushpins-like scene family (FAMILY).

A box of 3 x 5 cells (5 x 3 when portrait); exactly one pin per cell, every pin yellow, lying at a
random position and orientation.
"""

from __future__ import annotations

import math

import numpy as np

from tfds_loco.synthetic import draw
from tfds_loco.synthetic import family

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
  return dict(x=float(x), y=float(y), rh=rh, angle=a, cell=cell,
              colour=draw.tint(colour, rng.integers(-8, 9, 3)), broken=None)


def _grid_sample(rng, lay):
  return dict(pins=[_grid_pin(rng, lay, c, i) for i, c in enumerate(lay['cells'])], missing_walls=[],
              overlays=[])


def _pin_tip(p, lay):
  d = p['rh'] + lay['needle']
  return (p['x'] + d * math.cos(p['angle']), p['y'] + d * math.sin(p['angle']))


def _pin_ops(p, lay):
  x, y, rh, c = p['x'], p['y'], p['rh'], p['colour']
  ops = [draw.line([(x, y), _pin_tip(p, lay)], lay['nw'], (186, 186, 192)),
         draw.disc(x + 0.15 * rh, y + 0.2 * rh, rh, (16, 16, 20)), draw.disc(x, y, rh, draw.shade(c, 0.7)),
         draw.disc(x - 0.05 * rh, y - 0.05 * rh, 0.8 * rh, c),
         draw.disc(x - 0.3 * rh, y - 0.3 * rh, 0.25 * rh, draw.shade(c, 1.0, 70))]
  if p['broken']:
    a0, span, crack = p['broken']
    t = np.linspace(a0, a0 + span, 12)
    wedge = [(x, y)] + list(zip(x + 1.1 * rh * np.cos(t), y + 1.1 * rh * np.sin(t)))
    end = (x + 0.9 * rh * math.cos(crack), y + 0.9 * rh * math.sin(crack))
    ops += [draw.poly(wedge, _FLOOR), draw.line([(x, y), end], max(1.0, 0.22 * rh), draw.shade(c, 0.35))]
  return ops


def _pin_mask(p, lay):
  return [draw.disc(p['x'], p['y'], p['rh']), draw.line([(p['x'], p['y']), _pin_tip(p, lay)], lay['nw'])]


def _grid_render(st, lay):
  s = lay['s']
  x0, y0, x1, y1 = lay['box']
  shadow = (x0 + 0.012 * s, y0 + 0.018 * s, x1 + 0.012 * s, y1 + 0.018 * s)
  ops = [draw.rbox(shadow, 0.03 * s, (150, 148, 142)), draw.rbox(lay['box'], 0.03 * s, (92, 94, 104))]
  ops += [draw.box(c, _FLOOR) for c in lay['cells']] + [draw.box(w, _FLOOR) for w in st['missing_walls']]
  for p in st['pins']:
    ops += _pin_ops(p, lay)
  return (198, 196, 188), ops + st['overlays']


def _grid_missing_pin(rng, st, lay, anchor):
  """A cell without pin; annotated: the whole cell (§5)."""
  del anchor
  p = st['pins'].pop(int(rng.integers(len(st['pins']))))
  cell = lay['cells'][p['cell']]
  return [draw.box(cell)], draw.centre(cell)


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
  return [draw.box(cell)], (pins[1]['x'], pins[1]['y'])


def _grid_wrong_color(rng, st, lay, anchor):
  """One pin of another colour; annotated: the pin (the head suffices, see saturation)."""
  pins = [p for p in st['pins'] if p['colour'][2] < 120]  # still yellow
  if anchor is None:
    p = pins[int(rng.integers(len(pins)))]
  else:
    p = min(pins, key=lambda q: (q['x'] - anchor[0])**2 + (q['y'] - anchor[1])**2)
  p['colour'] = draw.tint(_PIN_WRONG[int(rng.integers(len(_PIN_WRONG)))], rng.integers(-8, 9, 3))
  return _pin_mask(p, lay), (p['x'], p['y'])


def _grid_missing_separator(rng, st, lay, anchor):
  """One wall between two cells is missing; annotated: that wall."""
  del anchor
  free = [w for w in lay['walls'] if w not in st['missing_walls']]
  wall = free[int(rng.integers(len(free)))]
  st['missing_walls'].append(wall)
  return [draw.box(wall)], draw.centre(wall)


def _grid_broken_pin(rng, st, lay, anchor):
  """A pin head with a chunk broken off and a crack; annotated: the head."""
  del anchor
  p = st['pins'][int(rng.integers(len(st['pins'])))]
  a0 = rng.uniform(0, 2 * np.pi)
  p['broken'] = (a0, rng.uniform(1.6, 2.2), a0 + rng.uniform(2.6, 3.6))
  return [draw.disc(p['x'], p['y'], 1.05 * p['rh'])], (p['x'], p['y'])


def _grid_scratch(rng, st, lay, anchor):
  return family.scratch(rng, st, lay, anchor, lay['box'], (178, 178, 184))


def _grid_contamination(rng, st, lay, anchor):
  region = lay['cells'][int(rng.integers(len(lay['cells'])))]
  return family.contamination(rng, st, lay, anchor, region, ((236, 236, 226), (150, 96, 52), (200, 120, 200)))


def _pin_area(lay):
  return math.pi * (0.95 * lay['rh'])**2 + lay['needle'] * lay['nw']


FAMILY = family.Family(
    layout=_grid_layout, sample=_grid_sample, render=_grid_render,
    defects=(
        family.Defect('missing_pin', 'logical', False, _pin_area, _grid_missing_pin),
        family.Defect('additional_pin', 'logical', False, _pin_area, _grid_additional_pin),
        family.Defect('wrong_pin_color', 'logical', False, lambda lay: math.pi * (0.95 * lay['rh'])**2,
               _grid_wrong_color),
        family.Defect('missing_separator', 'logical', True, 1.0, _grid_missing_separator),
        family.Defect('broken_pin', 'structural', True, 1.0, _grid_broken_pin),
        family.Defect('box_scratch', 'structural', True, 1.0, _grid_scratch),
        family.Defect('contamination', 'structural', True, 1.0, _grid_contamination),
    ),
    logical=(('missing_pin',), ('additional_pin', '~wrong_pin_color'), ('additional_pin',),
             ('missing_pin', 'additional_pin'), ('wrong_pin_color',), ('missing_separator',),
             ('missing_pin', 'missing_separator')),
    structural=(('broken_pin',), ('broken_pin', '~contamination'), ('box_scratch',),
                ('box_scratch', 'contamination'), ('contamination',)),
)
