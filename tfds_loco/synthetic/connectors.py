"""synthetic_connectors: the splicing-connectors-like scene family (FAMILY).

Two connectors of the same type (2, 3 or 5 ports) joined at port 1 of each by one cable whose colour
is fixed by the type.
"""

from __future__ import annotations

import numpy as np

from tfds_loco.synthetic import draw
from tfds_loco.synthetic import family

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
      holes=[draw.rect(inner - sgn * 0.32 * bw, y - 0.22 * p, inner - sgn * 0.08 * bw, y + 0.22 * p)
             for y in ys],
      levers=[draw.rect(outer + sgn * 0.06 * bw, y - 0.32 * p, outer + sgn * 0.52 * bw, y + 0.32 * p)
              for y in ys],
      attach=[(inner - sgn * 0.2 * bw, y) for y in ys])


def _new_cable(rng, lay, ports, colour, sign=0.0):
  s0 = (sign * rng.uniform(0.4, 1.0) if sign else rng.uniform(-1, 1)) * lay['sag']
  s1 = float(np.clip(s0 + rng.uniform(-0.3, 0.3) * lay['sag'], -lay['sag'], lay['sag']))
  return dict(ports=ports, colour=draw.tint(colour, rng.integers(-10, 11, 3)), sag=(s0, s1))


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
  return draw.bezier(p0, (p0[0] + d, p0[1] + cable['sag'][0]), (p3[0] - d, p3[1] + cable['sag'][1]), p3)


def _conn_ops(c, lay):
  g, bw = _conn_geom(c, lay), lay['bw']
  x0, y0, x1, y1 = g['body']
  k = 0.05 * bw
  ops = [draw.rbox((x0 + k, y0 + 1.5 * k, x1 + k, y1 + 1.5 * k), 0.12 * bw, (184, 184, 178)),
         draw.rbox(g['body'], 0.12 * bw, (148, 152, 160)),
         draw.rbox((x0 + k, y0 + k, x1 - k, y1 - k), 0.1 * bw, (212, 216, 222))]
  ops += [draw.box(h, (70, 72, 80)) for h in g['holes']]
  ops += [draw.rbox(lv, 0.08 * bw, (238, 122, 34)) for lv in g['levers']]
  return ops


def _conn_render(st, lay):
  ops = []
  for c in st['conns']:
    ops += _conn_ops(c, lay)
  w = lay['cable']
  for cable in st['cables']:
    pts = _cable_pts(st, lay, cable)
    ops += [draw.line(pts, 1.3 * w, draw.shade(cable['colour'], 0.55)), draw.line(pts, w, cable['colour']),
            draw.line(pts - [0, 0.25 * w], 0.3 * w, draw.shade(cable['colour'], 1.0, 60))]
  return _CONN_BG, ops + st['overlays']


def _cable_mask(st, lay, cable):
  return draw.line(_cable_pts(st, lay, cable), 1.3 * lay['cable'])


def _conn_wrong_type(rng, st, lay, anchor):
  """One connector of another type; annotated: both connectors (either may be the wrong one)."""
  del anchor
  c = st['conns'][int(rng.integers(2))]
  c['n'] = int(rng.choice([n for n in _CABLE if n != c['n']]))
  return [draw.box(_conn_geom(d, lay)['body']) for d in st['conns']], (c['cx'], c['cy'])


def _conn_cable_color(rng, st, lay, anchor):
  """The cable has the colour of another connector type; annotated: the cable."""
  del anchor
  types = {c['n'] for c in st['conns']}
  others = [n for n in _CABLE if n not in types]
  for cable in st['cables']:
    cable['colour'] = draw.tint(_CABLE[int(rng.choice(others))], rng.integers(-10, 11, 3))
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
  return [_cable_mask(st, lay, cable), draw.box(hole)], draw.centre(hole)


def _conn_missing_cable(rng, st, lay, anchor):
  """No cable; annotated: every place between the connectors where the cable could run."""
  del rng, anchor
  st['cables'] = []
  g0, g1 = (_conn_geom(c, lay) for c in st['conns'])
  ya, yb = g0['attach'][_PORT][1], g1['attach'][_PORT][1]
  m = 0.75 * lay['sag'] + lay['cable']
  rect = (g0['body'][2], min(ya, yb) - m, g1['body'][0], max(ya, yb) + m)
  return [draw.box(rect)], draw.centre(rect)


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
  st['overlays'] += [draw.poly(chunk, _CONN_BG), draw.line(edge, max(1.0, 0.02 * lay['s']), (118, 120, 126))]
  cx, cy = np.mean(np.array(chunk), 0)
  return [draw.poly(chunk)], (float(cx), float(cy))


def _conn_scratch(rng, st, lay, anchor):
  """A thick scratch across one connector body."""
  del anchor
  g = _conn_geom(st['conns'][int(rng.integers(2))], lay)
  x0, y0, x1, y1 = g['body']
  ya, yb = rng.uniform(y0 + 0.15 * (y1 - y0), y1 - 0.15 * (y1 - y0), 2)
  mid = ((x0 + x1) / 2, (ya + yb) / 2 + rng.uniform(-0.1, 0.1) * (y1 - y0))
  pts = np.array([(x0 + 0.12 * lay['bw'], ya), mid, (x1 - 0.12 * lay['bw'], yb)])
  op = draw.line(pts, draw.scratch_width(lay), draw.tint((62, 62, 68), rng.integers(-10, 11, 3)))
  st['overlays'].append(op)
  return [op[:3] + (None,)], tuple(pts[1])


def _conn_contamination(rng, st, lay, anchor):
  w, h = lay['size']
  return family.contamination(rng, st, lay, anchor, (0.1 * w, 0.15 * h, 0.9 * w, 0.85 * h),
                        ((64, 46, 30), (30, 30, 30), (120, 60, 150)))


def _cable_piece(lay):
  return 1.3 * lay['cable'] * lay['span'] / 3  # a third of a cable: the smallest sufficient region


FAMILY = family.Family(
    layout=_conn_layout, sample=_conn_sample, render=_conn_render,
    defects=(
        family.Defect('wrong_connector_type', 'logical', False, lambda lay: lay['bw'] * 2.6 * lay['pitch'],
               _conn_wrong_type),
        family.Defect('cable_color', 'logical', False, _cable_piece, _conn_cable_color),
        family.Defect('wrong_cable_location', 'logical', False, _cable_piece, _conn_wrong_location),
        family.Defect('missing_cable', 'logical', False, lambda lay: 1.3 * lay['cable'] * lay['span'],
               _conn_missing_cable),
        family.Defect('extra_cable', 'logical', True, 0.5, _conn_extra_cable),
        family.Defect('broken_connector', 'structural', True, 1.0, _conn_broken),
        family.Defect('connector_scratch', 'structural', True, 1.0, _conn_scratch),
        family.Defect('contamination', 'structural', True, 1.0, _conn_contamination),
    ),
    logical=(('wrong_connector_type',), ('wrong_cable_location', 'cable_color'), ('cable_color',),
             ('wrong_connector_type', 'cable_color'), ('wrong_cable_location',), ('missing_cable',),
             ('extra_cable',)),
    structural=(('broken_connector',), ('broken_connector', '~contamination'), ('connector_scratch',),
                ('connector_scratch', 'contamination'), ('contamination',)),
)
