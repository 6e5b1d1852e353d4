"""Drawing primitives and rendering of the synthetic scenes.

A scene is a list of ops (ellipse, polygon, polyline, rounded rectangle) in output pixels. `raster` applies
the global pose to their geometry, draws them at 2x and box-filters down (anti-aliasing); `finish` adds the
nuisance photometry. The same ops drawn without a background give a defect's ground-truth channel.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

_SS = 2  # Supersampling factor: scenes are drawn at 2x and box-filtered down (anti-aliasing).
Op = tuple  # ('ellipse', x, y, r, r, fill) | ('poly', pts, fill) | ('line', pts, width, fill)
#             | ('rrect', x0, y0, x1, y1, radius, fill); coordinates in output pixels.

# ------------------------------------------------------------------------------------------------
# Drawing primitives.


def disc(x, y, r, fill=None) -> Op:
  return ('ellipse', x, y, r, r, fill)


def box(rect, fill=None) -> Op:
  x0, y0, x1, y1 = rect
  return ('poly', [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill)


def rbox(rect, radius, fill=None) -> Op:
  return ('rrect', *rect, radius, fill)


def line(pts, width, fill=None) -> Op:
  return ('line', np.asarray(pts, float), width, fill)


def poly(pts, fill=None) -> Op:
  return ('poly', np.asarray(pts, float), fill)


def rect(xa, ya, xb, yb):
  return (min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))


def centre(rect):
  return ((rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2)


def tint(colour, delta) -> tuple[int, ...]:
  return tuple(min(255, max(0, int(c + d))) for c, d in zip(colour, delta))


def shade(colour, factor, add=0) -> tuple[int, ...]:
  return tuple(min(255, max(0, int(c * factor + add))) for c in colour)


def ellipse_pts(cx, cy, rx, ry, angle=0.0, n=12):
  """Polygon(s) of rotated ellipses; array arguments give shape (len, n, 2)."""
  t = np.linspace(0, 2 * np.pi, n, endpoint=False)
  cx, cy, rx, ry, angle = (np.asarray(v, float)[..., None] for v in (cx, cy, rx, ry, angle))
  x, y = rx * np.cos(t), ry * np.sin(t)
  ca, sa = np.cos(angle), np.sin(angle)
  return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], -1)


def blob(rng, cx, cy, r):
  """An irregular star-shaped polygon of radius in [0.6 r, r] around (cx, cy); contains its centre."""
  n = int(rng.integers(8, 13))
  ang = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n
  rad = r * rng.uniform(0.6, 1.0, n)
  return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)


def bezier(p0, p1, p2, p3, n=28):
  t = np.linspace(0, 1, n)[:, None]
  p0, p1, p2, p3 = (np.asarray(p, float) for p in (p0, p1, p2, p3))
  return (1 - t)**3 * p0 + 3 * (1 - t)**2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def grid_pts(rng, rect, step, margin):
  """Jittered hexagonal grid of points filling `rect` (granular fill)."""
  x0, y0, x1, y1 = rect
  lo = np.minimum([x0 + margin, y0 + margin], centre(rect))
  hi = np.maximum([x1 - margin, y1 - margin], centre(rect))
  xs, ys = np.arange(lo[0], hi[0] + 1e-9, step), np.arange(lo[1], hi[1] + 1e-9, step)
  gx, gy = np.meshgrid(xs, ys)
  gx = gx + (np.arange(len(ys)) % 2)[:, None] * step / 2
  pts = np.stack([gx.ravel(), gy.ravel()], 1) + rng.uniform(-0.25, 0.25, (gx.size, 2)) * step
  return np.clip(pts, lo, hi)


def scratch_width(lay) -> float:
  """Scratches are >= 2.5% of the image width thick: visible after downscaling to 128 px."""
  return max(2.0, 0.025 * lay['size'][0])


def scratch_pts(rng, rect, length):
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


def raster(ops, size, pose, bg=None) -> Image.Image:
  """Draws the posed ops (RGB on `bg`, or a mask when bg is None) at 2x and box-filters to W x H."""
  mask = bg is None
  img = Image.new('L' if mask else 'RGB', (size[0] * _SS, size[1] * _SS), 0 if mask else bg)
  _draw_ops(ImageDraw.Draw(img), _posed(ops, pose, size), mask)
  return img.reduce(_SS)


def sample_pose(rng, size):
  """Global nuisance pose: rotation <= 2 degrees and a shift of a few pixels."""
  shift = 1 + 0.012 * min(size)
  return (float(rng.uniform(-2, 2)), float(rng.uniform(-shift, shift)), float(rng.uniform(-shift, shift)))


def finish(img, rng) -> np.ndarray:
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
