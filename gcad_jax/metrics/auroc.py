"""Image-level AUROC on the map maximum (docs/data_format.md §9.6, §11.3), in two modes.

* `official`: the official ROC builder, tie quirk included (the headline value);
* `standard`: the Mann–Whitney value, ties counted as ½ (sklearn's roc_auc_score).

Both are identical without ties between a good and an anomalous score.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MODES = ('official', 'standard')


def _scores(values: Sequence[float]) -> np.ndarray:
  a = np.asarray(values, np.float64).reshape(-1)
  if not np.isfinite(a).all():
    raise ValueError('image scores must be finite')
  return a


def roc_official(good: Sequence[float], anomalous: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  """(FPRs, TPRs) ascending, as the official builder makes them (§9.6).

  All scores sorted ascending by a stable sort, good before anomalous within equal scores; walking the list
  one image at a time out of the 'predicted anomalous' set, a point is recorded after the first element of
  each run of equal scores and after the last element; (1, 1) is the first point.
  """
  good, anomalous = _scores(good), _scores(anomalous)
  n_ok, n_nok = good.size, anomalous.size
  scores = np.concatenate([good, anomalous])
  labels = np.concatenate([np.zeros(n_ok, np.int64), np.ones(n_nok, np.int64)])
  order = np.argsort(scores, kind='stable')
  scores, labels = scores[order], labels[order]
  num_fp = n_ok - np.cumsum(1 - labels)
  num_tp = n_nok - np.cumsum(labels)
  record = np.concatenate([[True], scores[1:] != scores[:-1]])
  record[-1] = True
  fprs = np.concatenate([[1.0], num_fp[record] / n_ok])[::-1]
  tprs = np.concatenate([[1.0], num_tp[record] / n_nok])[::-1]
  return fprs, tprs


def auroc_official(good: Sequence[float], anomalous: Sequence[float]) -> float | None:
  """The official image AUROC (§9.6), tie quirk included; None without good or anomalous images.

  All scores equal gives 0.5 + 0.5/n_good, not 0.5.
  """
  if len(good) == 0 or len(anomalous) == 0:
    return None
  x, y = roc_official(good, anomalous)
  # The official trapezoid (src/util.py trapz without a limit), same operations for identical floats.
  return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + 0.0)


def auroc_standard(good: Sequence[float], anomalous: Sequence[float]) -> float | None:
  """Mann–Whitney AUROC: P(anomalous > good) + ½·P(equal), exact in int64; None without both kinds."""
  if len(good) == 0 or len(anomalous) == 0:
    return None
  good = np.sort(_scores(good))
  anomalous = _scores(anomalous)
  below = np.searchsorted(good, anomalous, side='left')
  below_or_equal = np.searchsorted(good, anomalous, side='right')
  twice_u = int(np.sum(below, dtype=np.int64) + np.sum(below_or_equal, dtype=np.int64))
  return twice_u / (2 * good.size * anomalous.size)


def auroc(good: Sequence[float], anomalous: Sequence[float], mode: str = 'official') -> float | None:
  """Image AUROC in `mode` ('official' or 'standard')."""
  if mode == 'official':
    return auroc_official(good, anomalous)
  if mode == 'standard':
    return auroc_standard(good, anomalous)
  raise ValueError(f'unknown AUROC mode {mode!r}; use one of {MODES}')
