"""Metrics: the exact sPRO curve, AUC-sPRO at a limit, image AUROC (docs/data_format.md §9.2, §9.5, §9.6, §11)."""

import numpy as np
import pytest

from gcad_jax.metrics import auroc
from gcad_jax.metrics import pools
from gcad_jax.metrics import spro
from tfds_loco import layout


def _pool(*values):
  return spro.ScorePool.from_scores(np.asarray(values, np.float32))


def _curve_at(pools, channels, thresholds):
  return spro.spro_curve_at_thresholds(pools, channels, thresholds)


def _vertices(curve):
  return list(zip(curve.fpr.tolist(), curve.spro.tolist()))


# ------------------------------------------------------------------------------------------------
# Hand-computed sPRO cases (§6, §9.2).


def test_relative_saturation_half_saturates_at_half_the_area():
  # One channel of area 4, relative 0.5 -> s = 2: its two largest scores are the events (weight 1/2).
  scores = np.array([[0.9, 0.8, 0.2, 0.1, 0.95, 0.5, 0.3, 0.05]], np.float32)
  mask = np.array([[1, 1, 1, 1, 0, 0, 0, 0]], bool)
  s = layout.DefectType('d', 255, 0.5, True).saturation_area(int(mask.sum()))
  assert s == 2
  events = spro.channel_events(scores, mask, s)
  np.testing.assert_array_equal(events, np.float32([0.8, 0.9]))
  pools = [spro.ScorePool.from_scores(scores[~mask])]
  at = _curve_at(pools, [events], [1.0, 0.85, 0.5, 0.0])
  np.testing.assert_allclose(at.spro, [0, 0.5, 1, 1])  # min(TP/s, 1): TP = 4 at t = 0 still gives 1
  np.testing.assert_allclose(at.fpr, [0, 0.25, 0.25, 1])
  curve = spro.exact_spro_curve(pools, [events])
  assert _vertices(curve) == [(0, 0), (0.25, 0), (0.25, 0.5), (0.25, 1), (1, 1)]
  aucs = curve.aucs()
  assert aucs['1.0'] == pytest.approx(0.75, abs=1e-15)
  assert aucs['0.3'] == pytest.approx(0.05 / 0.3, abs=1e-15)
  assert aucs['0.1'] == 0 and aucs['0.01'] == 0


def test_absolute_saturation_and_threshold_above_area():
  assert layout.DefectType('d', 1, 3, False).saturation_area(4) == 3
  assert layout.DefectType('d', 1, 10, False).saturation_area(4) == 4  # min(t, |A|)
  assert layout.DefectType('d', 1, 1.0, True).saturation_area(7) == 7
  assert layout.DefectType('d', 1, 0.5, True).saturation_area(1) == 0  # the s = 0 edge case of §6
  scores = np.float32([[0.1, 0.4, 0.3, 0.2]])
  events = spro.channel_events(scores, np.ones_like(scores, bool), 3)
  np.testing.assert_array_equal(events, np.float32([0.2, 0.3, 0.4]))
  with pytest.raises(ValueError, match='saturation area 0'):
    spro.channel_events(scores, np.ones_like(scores, bool), 0)


def test_overlapping_channels_count_in_each_and_negatives_exclude_the_union():
  scores = np.float32([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
  ch1 = np.array([[1, 1, 1, 0, 0, 0]], bool)
  ch2 = np.array([[0, 0, 1, 1, 0, 0]], bool)  # overlaps ch1 at the 0.7 pixel
  union = ch1 | ch2
  pools = [spro.ScorePool.from_scores(scores[~union])]
  assert pools[0].size == 2
  channels = [spro.channel_events(scores, ch1, 3), spro.channel_events(scores, ch2, 2)]
  at = _curve_at(pools, channels, [1.0, 0.65, 0.45, 0.0])
  # t = 0.65: ch1 3/3, ch2 1/2 -> mean 0.75; no false positive.
  np.testing.assert_allclose(at.spro, [0, 0.75, 1, 1])
  np.testing.assert_allclose(at.fpr, [0, 0, 0.5, 1])
  curve = spro.exact_spro_curve(pools, channels)
  np.testing.assert_allclose(curve.spro[:5], [0, 1 / 6, 1 / 3, 1 / 3 + 1 / 6 + 1 / 4, 1])
  assert curve.aucs()['0.01'] == pytest.approx(1.0)


def test_good_images_only_add_false_positives():
  scores = np.float32([[0.9, 0.6, 0.3, 0.2]])
  channel = np.array([[1, 1, 0, 0]], bool)
  channels = [spro.channel_events(scores, channel, 2)]
  anomalous = spro.ScorePool.from_scores(scores[~channel])
  good = _pool(0.7, 0.1, 0.5, 0.25)
  t = [1.0, 0.8, 0.55, 0.4, 0.0]
  alone = _curve_at([anomalous], channels, t)
  with_good = _curve_at([anomalous, good], channels, t)
  np.testing.assert_array_equal(alone.spro, with_good.spro)
  np.testing.assert_allclose(alone.fpr, [0, 0, 0, 0, 1])
  np.testing.assert_allclose(with_good.fpr, [0, 0, 1 / 6, 2 / 6, 1])  # 0.7, then 0.5 of the good image
  assert with_good.num_negatives == 6


# ------------------------------------------------------------------------------------------------
# AUC up to a limit (§9.5).


def test_auc_at_limit_exact_vertex_and_interpolated():
  x, y = [0, 0.2, 0.6, 1], [0, 0.5, 0.9, 1]
  assert spro.auc_at_limit(x, y, 0.2) == pytest.approx(0.05 / 0.2, abs=1e-15)  # limit on a vertex
  # 0.4 between vertices: y(0.4) = 0.7, area 0.05 + 0.5 * (0.5 + 0.7) * 0.2 = 0.17.
  assert spro.auc_at_limit(x, y, 0.4) == pytest.approx(0.17 / 0.4, abs=1e-15)
  assert spro.auc_at_limit(x, y, 1.0) == pytest.approx(0.05 + 0.28 + 0.38, abs=1e-15)
  # A vertical segment at the limit contributes no area; a plateau in x is one longer segment.
  assert spro.auc_at_limit([0, 0.5, 0.5, 1], [0, 0.2, 0.8, 1], 0.5) == pytest.approx(0.05 / 0.5)
  with pytest.raises(ValueError, match='FPR 0'):
    spro.auc_at_limit([0.1, 1], [0, 1], 0.5)


def test_constant_maps_give_the_diagonal():
  scores = np.full((4, 5), 0.5, np.float32)
  channel = np.zeros((4, 5), bool)
  channel[1:3, 1:3] = True
  pools = [spro.ScorePool.from_scores(scores[~channel]), spro.ScorePool.from_scores(np.full(30, 0.5, np.float32))]
  curve = spro.exact_spro_curve(pools, [spro.channel_events(scores, channel, 4)])
  assert _vertices(curve) == [(0, 0), (1, 1)]
  for key, value in curve.aucs().items():
    assert value == pytest.approx(float(key) / 2, abs=1e-15)


def test_undefined_subsets_give_none():
  assert spro.exact_spro_curve([_pool(0.1)], []).aucs()['0.05'] is None
  assert spro.exact_spro_curve([], [np.float32([0.3])]).aucs()['1.0'] is None


# ------------------------------------------------------------------------------------------------
# The exact curve against a brute-force sweep over every unique value (§11.1).


def _random_case(rng, quantised):
  images = []
  for _ in range(int(rng.integers(1, 4))):
    shape = (int(rng.integers(2, 6)), int(rng.integers(2, 7)))
    if quantised:
      scores = (rng.integers(0, int(rng.integers(2, 6)), shape) / 4).astype(np.float32)
    else:
      scores = rng.random(shape).astype(np.float32)
    channels = []
    for _ in range(int(rng.integers(0, 3))):
      mask = rng.random(shape) < 0.4
      mask.flat[int(rng.integers(mask.size))] = True
      channels.append((mask, int(rng.integers(1, mask.sum() + 1))))
    images.append((scores, channels))
  return images


def _brute_force(images, thresholds):
  """(FPR, mean sPRO) at each threshold, straight from §9.2."""
  fpr, y = [], []
  negatives = np.concatenate([s[~np.any([m for m, _ in c], axis=0)] if c else s.ravel() for s, c in images])
  for t in thresholds:
    fpr.append(np.count_nonzero(negatives > t) / negatives.size)
    y.append(np.mean([min(np.count_nonzero((s > t) & m) / k, 1) for s, c in images for m, k in c]))
  return np.array(fpr), np.array(y)


@pytest.mark.parametrize('quantised', [False, True])
def test_exact_curve_matches_brute_force_sweep(quantised):
  rng = np.random.default_rng(7 + quantised)
  checked = 0
  for _ in range(60):
    images = _random_case(rng, quantised)
    if not any(c for _, c in images):
      continue
    pools, channels = [], []
    for scores, chans in images:
      union = np.any([m for m, _ in chans], axis=0) if chans else np.zeros(scores.shape, bool)
      pools.append(spro.ScorePool.from_scores(scores[~union]))
      channels += [spro.channel_events(scores, m, k) for m, k in chans]
    curve = spro.exact_spro_curve(pools, channels)
    if not curve.defined:
      continue
    values = np.unique(np.concatenate([s.ravel() for s, _ in images])).astype(np.float64)
    sweep = np.concatenate([[values[-1] + 1], values[::-1], [values[0] - 1]])
    fpr, y = _brute_force(images, sweep)
    for limit in spro.LIMITS:
      assert spro.auc_at_limit(curve.fpr, curve.spro, limit) == pytest.approx(
          spro.auc_at_limit(fpr, y, limit), abs=1e-12)
    # Each vertex is what its threshold produces.
    vx, vy = _brute_force(images, curve.thresholds)
    np.testing.assert_allclose(curve.fpr, vx, atol=1e-12)
    np.testing.assert_allclose(curve.spro, vy, atol=1e-12)
    checked += 1
  assert checked > 30


def test_sampled_curve_error_bound_holds():
  rng = np.random.default_rng(3)
  images = [(rng.random((20, 20)).astype(np.float32) + 0.3 * (np.arange(400).reshape(20, 20) < 60), [])]
  mask = np.zeros((20, 20), bool)
  mask.flat[:60] = True
  images[0][1].append((mask, 40))
  pools = [spro.ScorePool.from_scores(images[0][0][~mask])]
  channels = [spro.channel_events(images[0][0], mask, 40)]
  exact = spro.exact_spro_curve(pools, channels)
  sampled = _curve_at(pools, channels, np.linspace(1.4, -0.1, 12))
  for limit in spro.LIMITS:
    error = abs(spro.auc_at_limit(sampled.fpr, sampled.spro, limit) - exact.aucs([limit])[spro.limit_key(limit)])
    assert error <= spro.interval_error_bound(sampled, limit) + 1e-12


# ------------------------------------------------------------------------------------------------
# ScorePool: exact counts, compression, float64 thresholds against float32 scores.


def test_score_pool_counts_and_compression():
  rng = np.random.default_rng(0)
  raw = (rng.integers(0, 5, 1000) / 8).astype(np.float32)
  pool = spro.ScorePool.from_scores(raw)
  assert pool.cumulative is not None and pool.values.size == 5  # quantised: stored compressed
  keys = np.array([-1, 0, 0.0625, 0.125, 0.3, 0.5, 1], np.float64)
  np.testing.assert_array_equal(pool.count_le(keys), [(raw <= k).sum() for k in keys])
  np.testing.assert_array_equal(pool.count_lt(keys), [(raw < k).sum() for k in keys])
  continuous = spro.ScorePool.from_scores(rng.random(100).astype(np.float32))
  assert continuous.cumulative is None


def test_float64_thresholds_compare_exactly_with_float32_scores():
  x = np.float32(0.1)
  pool = _pool(x, np.nextafter(x, np.float32(1)), 1e30)
  below, exact, above = np.nextafter(np.float64(x), -1), np.float64(x), np.nextafter(np.float64(x), 1)
  np.testing.assert_array_equal(pool.count_le([below, exact, above, 1e39, -1e39]), [0, 1, 1, 3, 0])
  np.testing.assert_array_equal(pool.count_lt([below, exact, above, 1e39, -1e39]), [0, 0, 1, 3, 0])


def test_check_thresholds_refuses_ascending_and_non_finite():
  with pytest.raises(ValueError, match='descending'):
    spro.check_thresholds([0.1, 0.2])
  with pytest.raises(ValueError, match='finite'):
    spro.check_thresholds([np.inf, 0.2])


def test_defect_type_subsets_add_every_good_image():
  subsets = spro.defect_type_subsets([[], ['a'], ['a', 'b', 'a'], [], ['b']])
  assert subsets == {'a': [0, 1, 2, 3], 'b': [0, 2, 3, 4]}


def test_limit_keys_match_json_float_keys():
  assert [spro.limit_key(l) for l in spro.LIMITS] == ['0.01', '0.05', '0.1', '0.3', '1.0']


# ------------------------------------------------------------------------------------------------
# Image AUROC (§9.6).


def _official_roc_reference(good, anomalous):
  """The official ROC walk as docs/data_format.md §9.6 describes it, one image at a time (reference)."""
  items = sorted([(s, 0) for s in good] + [(s, 1) for s in anomalous], key=lambda p: p[0])
  fp, tp, fprs, tprs, last = len(good), len(anomalous), [1.0], [1.0], None
  for i, (score, label) in enumerate(items):
    fp, tp = fp - (label == 0), tp - (label == 1)
    if last is None or score != last or i == len(items) - 1:
      fprs.append(fp / len(good))
      tprs.append(tp / len(anomalous))
      last = score
  x, y = np.array(fprs[::-1]), np.array(tprs[::-1])
  return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])))


def test_auroc_all_equal_scores():
  for n_good in (1, 3, 7):
    assert auroc.auroc_official([0.5] * n_good, [0.5] * 4) == pytest.approx(0.5 + 0.5 / n_good, abs=1e-15)
    assert auroc.auroc_standard([0.5] * n_good, [0.5] * 4) == 0.5


def test_auroc_hand_computed_ties():
  assert auroc.auroc_official([0.5], [0.5, 0.5]) == 1.0
  assert auroc.auroc_standard([0.5], [0.5, 0.5]) == 0.5
  assert auroc.auroc_official([0.1, 0.5, 0.5], [0.5, 0.9]) == pytest.approx(5 / 6)
  assert auroc.auroc_standard([0.1, 0.5, 0.5], [0.5, 0.9]) == pytest.approx(5 / 6)
  assert auroc.auroc_official([0.1, 0.2], [0.3, 0.4]) == auroc.auroc_standard([0.1, 0.2], [0.3, 0.4]) == 1.0
  assert auroc.auroc_official([], [0.3]) is None and auroc.auroc_standard([0.2], []) is None


def test_auroc_random_ties_against_references():
  rng = np.random.default_rng(1)
  for _ in range(100):
    good = (rng.integers(0, 5, int(rng.integers(1, 9))) / 4).tolist()
    anomalous = (rng.integers(0, 5, int(rng.integers(1, 9))) / 4).tolist()
    assert auroc.auroc_official(good, anomalous) == _official_roc_reference(good, anomalous)
    pairs = [(a > g) + 0.5 * (a == g) for a in anomalous for g in good]
    assert auroc.auroc_standard(good, anomalous) == pytest.approx(np.mean(pairs), abs=1e-15)
  with pytest.raises(ValueError, match='unknown AUROC mode'):
    auroc.auroc([0.1], [0.2], mode='sklearn')


# ------------------------------------------------------------------------------------------------
# Building the pools (metrics/pools.py).


def test_negative_buffer_grows_promotes_and_keeps_segments():
  buf = pools.NegativeBuffer(capacity=3)
  buf.append('a', np.array([3.0, 1.0], np.float32))
  buf.append('b', np.array([2.0, 5.0, 4.0], np.float32))  # beyond the capacity: grows
  buf.append('c', np.array([0.5], np.float64))  # a wider dtype: promotes
  assert buf.buf.dtype == np.float64
  np.testing.assert_array_equal(buf.segment('b'), [2.0, 5.0, 4.0])
  np.testing.assert_array_equal(buf.segment('a'), [3.0, 1.0])
  pool = buf.sorted_pool()
  assert pool.size == 6 and pool.min() == 0.5 and pool.max() == 5.0
  assert int(pool.count_le(2.0)) == 3
  assert pools.NegativeBuffer(0).sorted_pool().size == 0


def test_summary_thresholds_descend_from_the_top_to_below_the_bottom():
  rng = np.random.default_rng(0)
  pool = spro.ScorePool.from_scores(rng.normal(size=1000).astype(np.float32))
  events = rng.normal(2.0, size=50)
  top, bottom = max(pool.max(), events.max()), min(pool.min(), events.min())
  t = pools.summary_thresholds([pool], events, top, bottom, per_pool=40)
  assert np.all(np.diff(t) < 0) and t[0] == top and t[-1] < bottom
  assert int(pool.count_le(t[-1])) == 0 and int(pool.count_le(t[0])) == pool.size  # FPR 1 to FPR 0
  assert np.isin(np.float64(np.sort(events)[-1]), t)
