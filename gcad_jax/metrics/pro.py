"""PRO on MVTec AD: sPRO whose regions are the connected components of each binary mask (docs/method.md §10.2).

Each component is a region that saturates at its full area (s = |region|), so min(TP/s, 1) = TP/|region| and
the sPRO curve of `spro` is the PRO curve of MVTec AD's evaluation code. Components are 8-connected (a 3 × 3
structuring element, as that code labels masks); it matches that code's AUC-PRO to its float32 FPR rounding
(tests/fixtures/official_pro/README.md). Pure NumPy/SciPy; the evaluator calls `components` when a
data set format's regions are components (tfds_loco.formats), and `pro_curve` serves code holding arrays.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from gcad_jax.metrics import spro

_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def components(mask: np.ndarray) -> list[np.ndarray]:
  """The 8-connected components of a binary (H, W) mask (nonzero = defect), each a bool mask, in label order."""
  labels, count = ndimage.label(np.asarray(mask) > 0, structure=_EIGHT_CONNECTED)
  return [labels == k for k in range(1, count + 1)]


def pro_curve(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]) -> spro.SproCurve:
  """The exact PRO curve of a set of images: negatives = pixels outside every mask, regions = components.

  `masks[i]` is the binary mask of `maps[i]`, or None (or all zero) for a good image.
  """
  negatives, events = [], []
  for scores, mask in zip(maps, masks):
    scores = np.asarray(scores)
    defect = np.zeros(scores.shape, bool) if mask is None else np.asarray(mask) > 0
    if defect.shape != scores.shape:
      raise ValueError(f'a mask of shape {defect.shape} for a map of shape {scores.shape}; give masks the map size')
    negatives.append(scores[~defect])
    events += [spro.channel_events(scores, region, int(region.sum())) for region in components(defect)]
  return spro.exact_spro_curve([spro.ScorePool.from_scores(negatives)], events)
