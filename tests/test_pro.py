"""PRO on MVTec AD (gcad_jax.metrics.pro): regions are 8-connected components saturating at full area
(docs/method.md §10.2), checked against a brute-force threshold sweep and hand-computed cases."""

import numpy as np
import pytest

from gcad_jax.metrics import pro
from gcad_jax.metrics import spro


def _flood_components(mask):
  """Reference labelling by flood fill, 8 neighbours, independent of scipy."""
  mask = np.asarray(mask, bool)
  seen = np.zeros_like(mask)
  out = []
  for start in zip(*np.nonzero(mask)):
    if seen[start]:
      continue
    region, stack = np.zeros_like(mask), [start]
    seen[start] = True
    while stack:
      r, c = stack.pop()
      region[r, c] = True
      for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
          rr, cc = r + dr, c + dc
          if 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1] and mask[rr, cc] and not seen[rr, cc]:
            seen[rr, cc] = True
            stack.append((rr, cc))
    out.append(region)
  return out


def _brute_force_aucs(maps, masks, limits):
  """The PRO curve by sweeping every distinct score as a threshold (positive iff score > t)."""
  negatives = np.concatenate([m[~(k > 0)] for m, k in zip(maps, masks)])
  regions = [m[r] for m, k in zip(maps, masks) for r in _flood_components(k)]
  values = np.unique(np.concatenate([m.ravel() for m in maps]))
  thresholds = np.concatenate([[np.inf], values[::-1], [-np.inf]])
  fpr = np.array([np.mean(negatives > t) for t in thresholds])
  curve = np.array([np.mean([np.mean(r > t) for r in regions]) for t in thresholds])
  return {spro.limit_key(l): spro.auc_at_limit(fpr, curve, l) for l in limits}


@pytest.mark.parametrize('seed', range(6))
def test_pro_matches_a_brute_force_threshold_sweep_on_random_maps(seed):
  rng = np.random.default_rng(seed)
  maps, masks = [], []
  for i in range(4):
    scores = rng.random((14, 11))
    if seed % 2:
      scores = np.round(scores, 1)  # many ties between defect and good pixels
    mask = np.zeros((14, 11), np.uint8)
    if i:  # image 0 is good
      mask[rng.random((14, 11)) < 0.15] = 255
      scores = scores + 0.3 * (mask > 0)
    maps.append(scores.astype(np.float32 if seed < 3 else np.float64))
    masks.append(mask)
  limits = (0.05, 0.3, 1.0)
  expected = _brute_force_aucs(maps, masks, limits)
  got = pro.pro_curve(maps, [m if m.any() else None for m in masks]).aucs(limits)
  for key in expected:
    assert got[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key


def test_components_match_a_flood_fill_reference():
  rng = np.random.default_rng(0)
  mask = rng.random((30, 30)) < 0.3
  ours = pro.components(mask)
  reference = _flood_components(mask)
  assert len(ours) == len(reference) > 5
  assert {r.tobytes() for r in ours} == {r.tobytes() for r in reference}


def test_diagonal_neighbours_are_one_component_and_a_border_component_is_whole():
  mask = np.zeros((5, 5), np.uint8)
  mask[2, 2] = mask[3, 3] = 255  # 8-connected: one region
  mask[0, 0:3] = 255  # touches the border: all three pixels count
  regions = pro.components(mask)
  assert sorted(int(r.sum()) for r in regions) == [2, 3]


def test_two_components_of_one_defect_are_two_regions_hand_computed():
  # 5x5 map, one defect mask with two components: A = (0,0),(0,1) on the border with scores 0.9, 0.1, and
  # B = (3,3) with score 0.5. Of the 22 good pixels two score 0.7, one 0.3, the rest 0.
  scores = np.zeros((5, 5))
  mask = np.zeros((5, 5), np.uint8)
  mask[0, 0:2] = mask[3, 3] = 255
  scores[0, 0], scores[0, 1], scores[3, 3] = 0.9, 0.1, 0.5
  scores[4, 0] = scores[4, 1] = 0.7
  scores[2, 0] = 0.3
  # Thresholds from the top: PRO = mean(TP_A/2, TP_B/1): 0.25 at FPR 0 and 2/22, 0.75 at 2/22 and 3/22,
  # 1 from FPR 3/22 on. Area up to 0.3: 0.25·2/22 + 0.75·1/22 + 1·(0.3 − 3/22), divided by 0.3.
  expected = (0.25 * 2 / 22 + 0.75 / 22 + (0.3 - 3 / 22)) / 0.3
  curve = pro.pro_curve([scores], [mask])
  assert curve.num_channels == 2 and curve.num_negatives == 22
  assert curve.aucs([0.3])['0.3'] == pytest.approx(expected, rel=1e-12)
  # One region of 3 px instead (the LOCO channel reading) gives another value: 1/3 then 2/3.
  one_region = spro.exact_spro_curve([spro.ScorePool.from_scores(scores[mask == 0])],
                                     [spro.channel_events(scores, mask > 0, 3)])
  assert one_region.aucs([0.3])['0.3'] != pytest.approx(expected)


def test_good_images_only_give_an_undefined_curve():
  curve = pro.pro_curve([np.zeros((4, 4))], [None])
  assert not curve.defined and curve.aucs([0.05]) == {'0.05': None}
