"""The sPRO curve and its normalised area, exactly (docs/data_format.md §9.2, §9.5, §11.1, §11.3).

Pure NumPy. Inputs are already-extracted scores:

* negatives: the scores of every pixel outside the union of the channels of its image, pooled over the
  images of a subset (`ScorePool`, sorted once, counted by binary search);
* channels: per ground-truth channel, its s largest scores (`channel_events`), s = the saturation area.

A pixel is positive iff its score is strictly greater than the threshold. Scores are compared in their own
dtype (float32 or float64) and thresholds are rounded so that the comparison is exactly that of float64.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence

import numpy as np

# docs/data_format.md §9.5: the official integration limits (MAX_FPRS); the headline value is 0.05.
LIMITS = (0.01, 0.05, 0.1, 0.3, 1.0)

_CHUNK = 1 << 24  # elements per block when scanning big sorted pools


def limit_key(limit: float) -> str:
  """The metrics.json key of a limit, as the official json.dump writes float keys ('0.01', '1.0')."""
  return repr(float(limit))


def score_dtype(dtype) -> np.dtype:
  """float32 for dtypes that float32 holds exactly (float16/32, ints up to 16 bits, bool), else float64."""
  dtype = np.dtype(dtype)
  if dtype.kind not in 'biuf':
    raise TypeError(f'scores must be real numbers, got dtype {dtype}')
  if dtype.kind == 'f' and dtype.itemsize <= 4 or dtype.kind in 'biu' and dtype.itemsize <= 2:
    return np.dtype(np.float32)
  return np.dtype(np.float64)


def _cast_keys(keys: np.ndarray, dtype: np.dtype, round_down: bool) -> np.ndarray:
  """Thresholds in `dtype`, rounded so that comparisons with `dtype` scores stay exact.

  For scores a of a narrower dtype: a <= t iff a <= down(t), and a < t iff a < up(t), where down/up round
  to the neighbouring representable value.
  """
  keys = np.asarray(keys)
  if keys.dtype == dtype:
    return keys
  if np.can_cast(keys.dtype, dtype, 'safe'):
    return keys.astype(dtype)
  wide = keys.astype(np.float64)
  with np.errstate(over='ignore', invalid='ignore'):
    narrow = wide.astype(dtype)
  if round_down:
    off = narrow > wide
    narrow[off] = np.nextafter(narrow[off], dtype.type(-np.inf))
  else:
    off = narrow < wide
    narrow[off] = np.nextafter(narrow[off], dtype.type(np.inf))
  return narrow


def _count_sorted(sorted_values: np.ndarray, keys: np.ndarray, side: str) -> np.ndarray:
  """#values <= key (side='right') or #values < key (side='left'), for ascending `sorted_values`."""
  keys = _cast_keys(keys, sorted_values.dtype, round_down=(side == 'right'))
  return np.searchsorted(sorted_values, keys, side=side).astype(np.int64, copy=False)


class ScorePool:
  """Scores sorted once, counted at any threshold by binary search (docs/data_format.md §11.1, 'Negatives').

  Heavily quantised scores are stored as distinct values with cumulative counts, which is exact and smaller.
  """

  def __init__(self, sorted_values: np.ndarray, cumulative_counts: np.ndarray | None = None):
    self.values = sorted_values
    # cumulative[i + 1] = #scores <= values[i] (cumulative[0] = 0); None: the values are the raw scores.
    self.cumulative = cumulative_counts
    self.size = int(cumulative_counts[-1]) if cumulative_counts is not None else int(sorted_values.size)

  @classmethod
  def from_scores(cls, scores: np.ndarray | Sequence[np.ndarray], in_place: bool = False) -> 'ScorePool':
    """Sorts `scores` (one array, or several that are concatenated); in_place sorts a 1-D array itself."""
    if isinstance(scores, np.ndarray):
      values = scores.reshape(-1) if in_place else np.array(scores, copy=True).reshape(-1)
    else:
      parts = [np.asarray(s).reshape(-1) for s in scores]
      values = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    dtype = score_dtype(values.dtype)
    if values.dtype != dtype:
      values = values.astype(dtype)
    values.sort()
    return cls._compressed_if_smaller(values)

  @classmethod
  def _compressed_if_smaller(cls, values: np.ndarray) -> 'ScorePool':
    """Compresses when distinct values + int64 counts are clearly smaller than the raw sorted values.

    The decision uses the fraction of value changes at 65,536 evenly spaced positions (cheap and
    deterministic); it affects only memory and speed, never a count.
    """
    n = values.size
    if n < 2:
      return cls(values)
    probe = np.unique(np.linspace(0, n - 2, min(n - 1, 1 << 16)).astype(np.int64))
    change_fraction = np.count_nonzero(values[probe + 1] != values[probe]) / probe.size
    if change_fraction * (values.itemsize + 8) > 0.75 * values.itemsize:
      return cls(values)
    starts = np.concatenate([np.zeros(1, np.int64)] + [
        np.flatnonzero(values[lo:min(n, lo + _CHUNK)] != values[lo - 1:min(n, lo + _CHUNK) - 1]) + lo
        for lo in range(1, n, _CHUNK)])
    if starts.size * (values.itemsize + 8) >= n * values.itemsize:
      return cls(values)
    cumulative = np.zeros(starts.size + 1, np.int64)  # cumulative[i + 1] = #scores <= distinct value i
    cumulative[1:-1] = starts[1:]
    cumulative[-1] = n
    return cls(values[starts].copy(), cumulative)

  @property
  def dtype(self) -> np.dtype:
    return self.values.dtype

  def min(self) -> float:
    return float(self.values[0]) if self.size else np.inf

  def max(self) -> float:
    return float(self.values[-1]) if self.size else -np.inf

  def _count(self, keys, side):
    idx = _count_sorted(self.values, np.asarray(keys), side)
    return idx if self.cumulative is None else self.cumulative[idx]

  def count_le(self, keys) -> np.ndarray:
    """#scores <= key, per key (int64)."""
    return self._count(keys, 'right')

  def count_lt(self, keys) -> np.ndarray:
    """#scores < key, per key (int64)."""
    return self._count(keys, 'left')


def _pools_count(pools: Sequence[ScorePool], keys: np.ndarray, side: str) -> np.ndarray:
  total = np.zeros(np.shape(keys), np.int64)
  for pool in pools:
    if pool.size:
      total += pool.count_le(keys) if side == 'right' else pool.count_lt(keys)
  return total


def channel_events(scores: np.ndarray, mask: np.ndarray, saturation: int) -> np.ndarray:
  """The s largest scores of one channel, sorted ascending (docs/data_format.md §11.1, 'Positive events').

  min(TP(t), s) equals the number of these scores > t, ties included, because s <= |channel|.
  """
  inside = np.asarray(scores)[np.asarray(mask, bool)]
  if not 1 <= saturation <= inside.size:
    raise ValueError(f'saturation area {saturation} must be in [1, {inside.size}] (the channel area)')
  inside = inside.astype(score_dtype(inside.dtype), copy=False)
  top = np.partition(inside, inside.size - saturation)[inside.size - saturation:]
  top.sort()
  return top


@dataclasses.dataclass(frozen=True)
class SproCurve:
  """Operating points (FPR, mean sPRO), FPR ascending from 0 to 1; empty when undefined (N = 0 or M = 0).

  `thresholds[i]` is a threshold that produces point i under strict `>`.
  """
  fpr: np.ndarray
  spro: np.ndarray
  thresholds: np.ndarray
  num_negatives: int
  num_channels: int

  @classmethod
  def undefined(cls, num_negatives: int = 0, num_channels: int = 0) -> 'SproCurve':
    empty = np.zeros(0)
    return cls(empty, empty, empty, num_negatives, num_channels)

  @property
  def defined(self) -> bool:
    return self.num_negatives > 0 and self.num_channels > 0

  def aucs(self, limits: Iterable[float] = LIMITS) -> dict[str, float | None]:
    """{limit key: AUC-sPRO(L)} of §9.5; None for every limit when the curve is undefined."""
    if not self.defined:
      return {limit_key(limit): None for limit in limits}
    return {limit_key(limit): auc_at_limit(self.fpr, self.spro, limit) for limit in limits}


def _events(channels: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
  channels = [np.asarray(c).reshape(-1) for c in channels]
  sizes = np.array([c.size for c in channels], np.int64)
  if sizes.size and sizes.min() < 1:
    raise ValueError('every channel needs at least one event (saturation area s >= 1)')
  return channels, sizes


def exact_spro_curve(negatives: Sequence[ScorePool], channels: Sequence[np.ndarray]) -> SproCurve:
  """The exact curve of one subset, every distinct score value (docs/data_format.md §11.1).

  Each channel's s largest scores are events of weight 1/(M·s). For every distinct event value u
  (descending) the curve has the vertex just above u, (#neg > u, W(> u)), and the vertex at u,
  (#neg >= u, W(>= u)); between them lie only collinear vertices, so the area and the interpolation at any
  limit are those of the full vertex list. Counts are int64, weights float64.
  """
  n = sum(p.size for p in negatives)
  channels, sizes = _events(channels)
  m = len(channels)
  if n == 0 or m == 0:
    return SproCurve.undefined(n, m)
  dtype = np.result_type(*[score_dtype(c.dtype) for c in channels], *[p.dtype for p in negatives if p.size])
  values = np.concatenate(channels).astype(dtype, copy=False)
  weights = np.repeat(1.0 / (m * sizes.astype(np.float64)), sizes)
  order = np.argsort(values)
  values = values[order]
  weights = weights[order]
  del order
  starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
  distinct = values[starts]  # ascending
  weight_at = np.add.reduceat(weights, starts)
  del values, weights, starts
  neg_le = _pools_count(negatives, distinct, 'right')
  neg_lt = _pools_count(negatives, distinct, 'left')
  # Descending order of values = ascending FPR.
  distinct, weight_at, neg_le, neg_lt = distinct[::-1], weight_at[::-1], neg_le[::-1], neg_lt[::-1]
  w_ge = np.minimum(np.cumsum(weight_at), 1.0)  # rounding must not lift sPRO above 1
  w_gt = np.concatenate([[0.0], w_ge[:-1]])
  k = distinct.size
  fp = np.empty(2 * k + 2, np.int64)
  y = np.empty(2 * k + 2, np.float64)
  t = np.empty(2 * k + 2, np.float64)
  fp[0], y[0] = 0, 0.0
  fp[1:-1:2], y[1:-1:2], t[1:-1:2] = n - neg_le, w_gt, distinct
  fp[2:-1:2], y[2:-1:2] = n - neg_lt, w_ge
  t[2:-1:2] = np.nextafter(distinct.astype(np.float64), -np.inf)
  fp[-1], y[-1] = n, 1.0
  top = max(float(distinct[0]), max((p.max() for p in negatives if p.size), default=-np.inf))
  bottom = min(float(distinct[-1]), min((p.min() for p in negatives if p.size), default=np.inf))
  t[0], t[-1] = top, np.nextafter(bottom, -np.inf)
  keep = np.concatenate([[True], (fp[1:] != fp[:-1]) | (y[1:] != y[:-1])])
  return SproCurve(fp[keep] / n, y[keep], t[keep], n, m)


def check_thresholds(thresholds) -> np.ndarray:
  """A 1-D, finite, non-increasing float64 threshold list (the official per_threshold.thresholds order)."""
  t = np.asarray(thresholds, np.float64)
  if t.ndim != 1 or t.size < 2:
    raise ValueError(f'thresholds must be a 1-D list of at least 2 values, got shape {t.shape}')
  if not np.isfinite(t).all():
    raise ValueError('thresholds must be finite')
  if (np.diff(t) > 0).any():
    raise ValueError('thresholds must be sorted in descending order (as per_threshold.thresholds of §9.8)')
  return t


def spro_curve_at_thresholds(negatives: Sequence[ScorePool], channels: Sequence[np.ndarray],
                             thresholds) -> SproCurve:
  """The curve at given descending thresholds (docs/data_format.md §11.3, explicit-threshold mode).

  The arithmetic is the official one (§9.2): FPR = FP / N in float64; per channel min(TP / s, 1) with
  TP = #events > t; the mean over channels in image order. With per_threshold.thresholds of an official
  metrics.json this reproduces its AUCs.
  """
  t = check_thresholds(thresholds)
  n = sum(p.size for p in negatives)
  channels, sizes = _events(channels)
  m = len(channels)
  if n == 0 or m == 0:
    return SproCurve.undefined(n, m)
  ascending = t[::-1]
  fp = (n - _pools_count(negatives, ascending, 'right'))[::-1]
  per_channel = []
  for events, s in zip(channels, sizes):
    events = np.sort(events.astype(score_dtype(events.dtype), copy=False))
    tp = s - _count_sorted(events, ascending, 'right')[::-1]
    per_channel.append(np.minimum(tp / int(s), 1.0))
  mean_spro = np.mean(np.stack(per_channel), axis=0)
  return SproCurve(fp / np.int64(n), mean_spro, t, n, m)


def auc_at_limit(fpr, y, limit: float) -> float:
  """Normalised area under (fpr, y) up to FPR = limit, the official rule of docs/data_format.md §9.5.

  Points must be ordered by ascending FPR from 0 to 1. Non-finite points are dropped. Trapezoids over all
  points with FPR <= limit, plus, when limit is not an FPR value, the partial trapezoid to the linear
  interpolation at the limit; divided by the limit (a perfect curve scores 1).
  """
  x = np.asarray(fpr, np.float64)
  y = np.asarray(y, np.float64)
  finite = np.isfinite(x) & np.isfinite(y)
  if not finite.all():
    x, y = x[finite], y[finite]
  if x.size < 2 or x[0] != 0 or x[-1] != 1:
    raise ValueError('the curve must start at FPR 0 and end at FPR 1 (for explicit thresholds: the first '
                     'must be >= the largest score and the last below the smallest score)')
  if not 0 < limit <= 1:
    raise ValueError(f'the integration limit must be in (0, 1], got {limit}')
  # x ascends, so the points with x <= limit are a prefix; the official code masks, with the same result.
  end = int(np.searchsorted(x, limit, side='right'))
  correction = 0.0
  if x[end - 1] != limit:
    y_interp = y[end - 1] + ((y[end] - y[end - 1]) * (limit - x[end - 1]) / (x[end] - x[end - 1]))
    correction = 0.5 * (y_interp + y[end - 1]) * (limit - x[end - 1])
  x, y = x[:end], y[:end]
  area = np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction
  return float(area / limit)


def interval_error_bound(curve: SproCurve, limit: float) -> float:
  """How far the AUC(L) of a curve sampled at thresholds can be from the exact one (docs/data_format.md §11.2).

  Between two evaluated points the exact curve is monotone, so it lies in their box: a whole segment below
  L contributes ½·Δx·Δy, the segment that crosses L contributes (L − x_k)·Δy; divided by L. Zero for the
  exact curve.
  """
  if not curve.defined or curve.fpr.size < 2:
    return 0.0
  x0, x1 = curve.fpr[:-1], curve.fpr[1:]
  dy = np.diff(curve.spro)
  whole = x1 <= limit
  crossing = (x0 < limit) & ~whole
  bound = 0.5 * np.sum((x1 - x0)[whole] * dy[whole]) + np.sum((limit - x0[crossing]) * dy[crossing])
  return float(bound / limit)


def downsample(curve: SproCurve, num_points: int = 1000) -> dict[str, list[float]]:
  """About num_points vertices of the curve, evenly spread along FPR and along sPRO (for plots and JSON)."""
  if not curve.defined:
    return {'fpr': [], 'spro': [], 'thresholds': []}
  half = max(2, num_points // 2)
  grid = np.linspace(0.0, 1.0, half)
  idx = np.concatenate([np.searchsorted(curve.fpr, grid), np.searchsorted(curve.spro, grid),
                        [0, curve.fpr.size - 1]])
  idx = np.unique(np.clip(idx, 0, curve.fpr.size - 1))
  return {'fpr': curve.fpr[idx].tolist(), 'spro': curve.spro[idx].tolist(),
          'thresholds': curve.thresholds[idx].tolist()}


def defect_type_subsets(image_defect_names: Sequence[Sequence[str]]) -> dict[str, list[int]]:
  """Per defect type, the indices of the images with a channel of that type plus every image without
  channels (the good images): the subsets of the per-defect-type AUC-sPRO (docs/data_format.md §11.3)."""
  good = [i for i, names in enumerate(image_defect_names) if not names]
  subsets: dict[str, list[int]] = {}
  for i, names in enumerate(image_defect_names):
    for name in dict.fromkeys(names):
      subsets.setdefault(name, []).append(i)
  return {name: sorted(idx + good) for name, idx in sorted(subsets.items())}


def mean_of_kinds(per_kind: Mapping[str, Mapping[str, float | None]], kinds: Sequence[str]) -> dict:
  """The official `mean` entry: ½·(structural + logical) per limit; None where either is undefined."""
  a, b = (per_kind.get(k) for k in kinds)
  out = {}
  for key in (a or b or {}):
    va, vb = (a or {}).get(key), (b or {}).get(key)
    out[key] = None if va is None or vb is None else 0.5 * (va + vb)
  return out
