"""PRO on MVTec AD (gcad_jax.metrics.pro): regions are 8-connected components saturating at full area
(docs/method.md §10.2), checked against a brute-force threshold sweep, hand-computed cases and MVTec's
official MVTec AD evaluation code.

Golden files: tests/fixtures/official_pro/ (README there). Set GCAD_MVTEC_AD_EVAL_DIR to a copy of the
official `mvtec_ad_evaluation` folder (and GCAD_MVTEC_AD_EVAL_PYTHON to an interpreter with its
requirements) for the live comparison.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from gcad_jax import evaluate
from gcad_jax.metrics import pro
from gcad_jax.metrics import spro
from tfds_loco import formats
import fixture_scripts

GOLDEN = pathlib.Path(__file__).resolve().parent / 'fixtures' / 'official_pro'
gen = fixture_scripts.pro_fixture()
# The official code casts its FPRs to float32 (pro_curve_util.compute_pro), so its AUCs sit up to a few
# float32 ulps of the FPR away from the exact curve's; 1e-7 relative covers that with room.
OFFICIAL_RTOL = 1e-7


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


# Cross-check against MVTec's official MVTec AD evaluation code (tests/fixtures/official_pro/README.md).


def _golden(map_set, limit):
  return json.loads((GOLDEN / map_set / str(limit) / 'metrics.json').read_text())['bottle']['au_pro']


def _fixture_arrays(map_set):
  """(maps, masks) of the generated fixture, good images with mask None."""
  maps = gen.make_maps(map_set)
  images = gen.fixture_images()
  return ([maps[f'{d}/{s}'] for d, s, _ in images], [gen.mask_of(sh) if sh else None for _, _, sh in images])


def _float32_fpr_aucs(curve, limits):
  """AUCs of `curve` with its FPRs rounded as the official code does (float32 counts / float32 N)."""
  counts = np.rint(curve.fpr * curve.num_negatives).astype(np.float32)
  fpr = (counts / np.float32(curve.num_negatives)).astype(np.float64)
  return {spro.limit_key(l): spro.auc_at_limit(fpr, curve.spro, l) for l in limits}


def test_pro_fixture_generator_is_unchanged():
  assert gen.manifest() == json.loads((GOLDEN / 'fixture_manifest.json').read_text()), (
      'make_pro_fixture.py now generates other arrays: regenerate the golden files with the command in '
      'tests/fixtures/official_pro/README.md')


@pytest.mark.parametrize('map_set', gen.MAP_SETS)
def test_pro_matches_official_mvtec_ad_code(map_set):
  maps, masks = _fixture_arrays(map_set)
  curve = pro.pro_curve(maps, masks)
  ours, rounded = curve.aucs(gen.LIMITS), _float32_fpr_aucs(curve, gen.LIMITS)
  for limit in gen.LIMITS:
    official, key = _golden(map_set, limit), spro.limit_key(limit)
    assert ours[key] == pytest.approx(official, rel=OFFICIAL_RTOL, abs=0), key
    # The whole difference is the official float32 FPR: with it, the two agree to float64 rounding.
    assert rounded[key] == pytest.approx(official, rel=1e-12, abs=0), key


def _near_miss_aucs(maps, masks, kind, limit):
  """AUC-PRO(limit) under a wrong reading of the definition, to show the golden figures tell them apart."""
  negatives = [a.ravel() if m is None else a[~(m > 0)] for a, m in zip(maps, masks)]
  events = []
  for a, m in zip(maps, masks):
    if m is None:
      continue
    defect = m > 0
    if kind == '4-connected':
      labels, count = ndimage.label(defect)
      regions = [labels == k for k in range(1, count + 1)]
    else:
      regions = [defect] if kind == 'one region per image' else pro.components(defect)
    for r in regions:  # 'half saturation': min(TP / (|A| / 2), 1), sPRO with a saturation below the area
      events.append(spro.channel_events(a, r, max(1, int(r.sum()) // 2) if kind == 'half saturation'
                                        else int(r.sum())))
  curve = spro.exact_spro_curve([spro.ScorePool.from_scores(negatives)], events)
  return curve.aucs([limit])[spro.limit_key(limit)]


def _pixel_tpr_auc(maps, masks, limit):
  """AUC of the pixel-wise TPR (all defect pixels pooled, no per-region averaging)."""
  pos = np.sort(np.concatenate([a[m > 0] for a, m in zip(maps, masks) if m is not None]))
  neg = np.sort(np.concatenate([a.ravel() if m is None else a[~(m > 0)] for a, m in zip(maps, masks)]))
  t = np.unique(np.concatenate([pos, neg]))[::-1]  # positive iff score >= t; the last t gives (1, 1)
  fpr = np.concatenate([[0], neg.size - np.searchsorted(neg, t)]) / neg.size
  tpr = np.concatenate([[0], pos.size - np.searchsorted(pos, t)]) / pos.size
  return spro.auc_at_limit(fpr, tpr, limit)


@pytest.mark.parametrize('kind', ['4-connected', 'one region per image', 'half saturation', 'pixel TPR'])
def test_official_golden_figures_reject_near_misses_of_pro(kind):
  maps, masks = _fixture_arrays('continuous')
  for limit in gen.LIMITS:
    wrong = (_pixel_tpr_auc(maps, masks, limit) if kind == 'pixel TPR'
             else _near_miss_aucs(maps, masks, kind, limit))
    assert abs(wrong - _golden('continuous', limit)) > 1e-3, (kind, limit)


@pytest.fixture(scope='module')
def pro_fixture_dir(tmp_path_factory):
  return gen.generate(tmp_path_factory.mktemp('pro_fixture'))


def test_evaluator_on_mvtec_ad_layout_matches_official_mvtec_ad_code(pro_fixture_dir):
  reader = formats.reader('mvtec_ad', pro_fixture_dir / 'dataset', gen.CATEGORY)
  for map_set in gen.MAP_SETS:
    got = evaluate.evaluate_category(reader, pro_fixture_dir / 'maps' / map_set / gen.CATEGORY,
                                     limits=gen.LIMITS, per_defect_type=False, num_workers=1)
    structural = got['localization']['auc_spro']['structural_anomalies']
    for limit in gen.LIMITS:
      assert structural[spro.limit_key(limit)] == pytest.approx(_golden(map_set, limit), rel=OFFICIAL_RTOL)


@pytest.mark.skipif(not os.environ.get('GCAD_MVTEC_AD_EVAL_DIR'),
                    reason='set GCAD_MVTEC_AD_EVAL_DIR to a copy of the official mvtec_ad_evaluation folder')
@pytest.mark.parametrize('map_set', gen.MAP_SETS)
def test_pro_matches_official_mvtec_ad_code_live(pro_fixture_dir, map_set, tmp_path):
  python = os.environ.get('GCAD_MVTEC_AD_EVAL_PYTHON', sys.executable)
  maps, masks = _fixture_arrays(map_set)
  ours = pro.pro_curve(maps, masks).aucs(gen.LIMITS)
  for limit in gen.LIMITS:
    out = tmp_path / str(limit)
    subprocess.run([python, 'evaluate_experiment.py', '--dataset_base_dir', str(pro_fixture_dir / 'dataset'),
                    '--anomaly_maps_dir', str(pro_fixture_dir / 'maps' / map_set), '--output_dir', str(out),
                    '--pro_integration_limit', str(limit), '--evaluated_objects', gen.CATEGORY],
                   cwd=os.environ['GCAD_MVTEC_AD_EVAL_DIR'], check=True, capture_output=True)
    official = json.loads((out / 'metrics.json').read_text())[gen.CATEGORY]['au_pro']
    assert official == pytest.approx(_golden(map_set, limit), rel=1e-12)
    assert ours[spro.limit_key(limit)] == pytest.approx(official, rel=OFFICIAL_RTOL, abs=0)
