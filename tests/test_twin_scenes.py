"""benchmarks/twin_scenes.py: anomalous synthetic scenes against their defect-free twins, scored by a workdir."""

import json
import pathlib
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from gcad_jax import input_pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import twin_scenes  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_compare_by_hand():
  good = np.zeros((4, 8, 8))
  good[:, 0, 0] = [1, 2, 3, 4]
  twins = np.zeros((2, 8, 8))
  twins[:, 7, 7] = 2.5  # far from the defect
  changed = np.zeros((2, 8, 8), bool)
  changed[:, 0, 0] = True
  anomalous = twins.copy()
  anomalous[0, 0, 0], anomalous[1, 0, 0] = 10.0, 2.0  # fires at the defect in one pair only
  f = twin_scenes.compare(good, anomalous, twins, changed)
  assert f['pairs'] == 2 and f['good_images'] == 4
  assert f['auroc_anomalous'] == pytest.approx((4 / 4 + 2 / 4) / 2)  # 10 beats all four, 2.5 beats two
  assert f['auroc_twins'] == pytest.approx(0.5)
  assert f['image_score_change_mean'] == pytest.approx(7.5 / 2)
  assert (f['share_rises'], f['share_falls']) == (0.5, 0.0)
  assert f['at_defect_anomalous_median'] == pytest.approx(6.0) and f['at_defect_twin_median'] == 0.0
  assert f['at_defect_change_mean'] == pytest.approx(6.0)
  assert f['elsewhere_anomalous_median'] == f['elsewhere_twin_median'] == 2.5
  assert f['elsewhere_change_mean'] == 0.0


def test_pairs_and_a_run_on_a_trained_workdir(trained, tmp_path, capsys):
  root, _ = trained
  workdir = root / 'w'
  config = ml_collections.ConfigDict(json.loads((workdir / 'config.json').read_text()))
  # Index 0 with the test set's first recipe is the test set's first logical image, at network size.
  anomalous, twins, changed = twin_scenes.make_pairs(config, 'missing_pin', 0, 1)
  test = input_pipeline.load_split(config, 'test')
  np.testing.assert_array_equal(anomalous[0], test.images[test.image_ids.index('test/logical_anomalies/000')])
  assert changed[0].any() and not changed[0].all()
  # The twin differs only inside the annotated defect (missing_pin: the pin's cell), at network size.
  gt = np.asarray(Image.open(root / 'data' / 'synthetic_grid' / 'ground_truth' / 'logical_anomalies' / '000' /
                             '000.png')) > 0
  gt_rgb = np.repeat(gt[None, ..., None].astype(np.uint8) * 255, 3, axis=-1)
  gt_small = input_pipeline.resize_uint8(gt_rgb, config.dataset.image_size, config.dataset.resize_method)[0, ..., 0] > 0
  assert not (changed[0] & ~ndimage.binary_dilation(gt_small, iterations=2)).any()
  out = tmp_path / 'twins.json'
  # Three pairs on 8 fake devices: padded batches.
  assert twin_scenes.main([str(workdir), '--defect', 'wrong_pin_color', '--first', '100', '--count', '3',
                           '--json', str(out)]) == 0
  result = json.loads(out.read_text())
  assert len(config.model.scales) == 1  # one scale: no per-scale rows
  assert set(result['figures']) == {f'fused/{m}' for m in twin_scenes.MAPS}
  assert result['defect'] == 'wrong_pin_color' and result['indices'] == [100, 103]
  for f in result['figures'].values():
    assert f['pairs'] == 3 and f['good_images'] == 2
    assert 0.0 <= f['auroc_anomalous'] <= 1.0 and np.isfinite(f['at_defect_change_mean'])
  assert 'wrong_pin_color: 3 pairs' in capsys.readouterr().out
  with pytest.raises(ValueError, match='give defect names'):
    twin_scenes.make_pairs(config, 'no_such_defect', 0, 1)
