"""Building the negative-score pools of the sPRO curves and the per_threshold summary list (docs/data_format.md §9.8, §11).

Pure NumPy, like `spro`: `NegativeBuffer` collects one kind's negative scores image by image and sorts them
once into a `spro.ScorePool`; `summary_thresholds` picks the deterministic thresholds at which exact mode
reports per_threshold.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gcad_jax.metrics import spro


class NegativeBuffer:
  """The negative scores of one kind, copied image by image into one buffer, sorted later in place.

  Keeps each image's segment until the buffer is sorted, for the per-defect-type subsets (§11.3).
  """

  def __init__(self, capacity: int):
    self.capacity = max(capacity, 1)
    self.buf = None  # allocated at the first append, in the scores' dtype
    self.size = 0
    self.segments: dict[str, tuple[int, int]] = {}

  def append(self, image_id: str, values: np.ndarray) -> None:
    n = values.size
    if self.buf is None:
      self.buf = np.empty(max(self.capacity, n), values.dtype)
    dtype = np.result_type(values.dtype, self.buf.dtype)
    if dtype != self.buf.dtype or self.size + n > self.buf.size:
      fits = self.size + n <= self.buf.size
      grown = np.empty(self.buf.size if fits else max(2 * self.buf.size, self.size + n), dtype)
      grown[:self.size] = self.buf[:self.size]
      self.buf = grown
    self.buf[self.size:self.size + n] = values
    self.segments[image_id] = (self.size, self.size + n)
    self.size += n

  def segment(self, image_id: str) -> np.ndarray:
    lo, hi = self.segments[image_id]
    return self.buf[lo:hi]

  def sorted_pool(self) -> spro.ScorePool:
    """The pool of every appended score; the buffer is sorted in place and then forgotten."""
    self.segments = {}
    values = self.buf[:self.size] if self.buf is not None else np.zeros(0, np.float32)
    self.buf = None
    return spro.ScorePool.from_scores(values, in_place=True)


def summary_thresholds(pools: Sequence[spro.ScorePool], events: np.ndarray, top: float, bottom: float,
                       per_pool: int = 300) -> np.ndarray:
  """A deterministic descending threshold list for per_threshold in exact mode (§9.8).

  Pool scores at FPR ranks spread linearly and logarithmically, event scores at evenly spaced ranks, the
  largest score (FPR 0) and a value below the smallest (FPR 1).
  """
  targets = np.unique(np.concatenate([np.linspace(0, 1, per_pool // 2), np.geomspace(1e-6, 1, per_pool // 2)]))
  candidates = [np.array([top, np.nextafter(bottom, -np.inf)])]
  for pool in pools:
    if pool.size:
      ranks = np.clip(np.round((1 - targets) * (pool.size - 1)).astype(np.int64), 0, pool.size - 1)
      if pool.cumulative is None:
        candidates.append(pool.values[ranks].astype(np.float64))
      else:
        candidates.append(pool.values[np.searchsorted(pool.cumulative, ranks, side='right') - 1].astype(np.float64))
  if events.size:
    ranks = np.round(np.linspace(0, events.size - 1, per_pool)).astype(np.int64)
    candidates.append(np.sort(events)[ranks].astype(np.float64))
  return np.unique(np.concatenate(candidates))[::-1]
