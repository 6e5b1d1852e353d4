"""benchmarks/score_variants.py: re-scoring a trained workdir under each §8 scoring choice (docs/method.md §8)."""

import json
import pathlib
import sys

import numpy as np
import pytest

from gcad_jax import scoring

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import score_variants  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_variant_maps_follow_the_config_choices():
  rng = np.random.default_rng(0)
  val = {'loc': {17: rng.random((4, 6, 5)) + 0.1}, 'glo': {17: rng.random((4, 6, 5)) + 0.1}}
  a_loc, a_glo = {17: rng.random((3, 6, 5))}, {17: rng.random((3, 6, 5))}
  scalar = score_variants.variant_maps(a_loc, a_glo, val, 'scalar', squared=False)
  want = scoring.scale_variants(a_loc[17], a_glo[17], scoring.norm_stats(val['loc'][17], val['glo'][17]))
  for variant in scoring.VARIANTS:
    np.testing.assert_allclose(scalar[variant], want[variant], rtol=1e-6)
  per_pixel_squared = score_variants.variant_maps(a_loc, a_glo, val, 'per_pixel', squared=True)
  loc2 = val['loc'][17] ** 2
  np.testing.assert_allclose(per_pixel_squared['local'],
                             (a_loc[17] ** 2 - loc2.mean(0)) / loc2.std(0), rtol=1e-5, atol=1e-5)


def test_two_scales_are_the_mean_of_each_alone():
  rng = np.random.default_rng(1)
  val = {b: {p: rng.random((4, 6, 5)) + 0.1 for p in (17, 33)} for b in ('loc', 'glo')}
  a_loc, a_glo = {p: rng.random((3, 6, 5)) for p in (17, 33)}, {p: rng.random((3, 6, 5)) for p in (17, 33)}
  fused = score_variants.variant_maps(a_loc, a_glo, val, 'scalar', squared=False)
  alone = [score_variants.variant_maps({p: a_loc[p]}, {p: a_glo[p]}, val, 'scalar', squared=False) for p in (17, 33)]
  for variant in scoring.VARIANTS:
    np.testing.assert_allclose(fused[variant], (alone[0][variant] + alone[1][variant]) / 2, rtol=1e-6)


def test_rescoring_the_workdirs_own_choice_gives_back_its_metrics(trained, tmp_path, capsys):
  root, _ = trained
  workdir = root / 'w'
  out = tmp_path / 'variants.json'
  assert score_variants.main([str(workdir), '--norms', 'scalar,per_pixel', '--squared', 'no', '--per_scale',
                              '--per_defect_type', '--json', str(out)]) == 0
  table = json.loads(out.read_text())[str(workdir)]
  (p,) = json.loads((workdir / 'config.json').read_text())['model']['scales']  # one scale: alone == fused
  assert set(table) == {'scalar,norm', 'per_pixel,norm', f'scalar,norm,p{p}', f'per_pixel,norm,p{p}'}
  assert table[f'scalar,norm,p{p}'] == table['scalar,norm']
  saved = json.loads((workdir / 'metrics.json').read_text())  # trained with score.norm scalar, not squared
  sources = {'combined': saved, **saved['variants']}
  for variant, metrics in sources.items():
    assert table['scalar,norm'][variant]['auroc_mean'] == pytest.approx(metrics['classification']['auc_roc']['mean'])
    assert table['scalar,norm'][variant]['spro_mean'] == pytest.approx(
        metrics['localization']['auc_spro']['mean']['0.05'])
    assert table['scalar,norm'][variant]['spro0.3_mean'] == pytest.approx(
        metrics['localization']['auc_spro']['mean']['0.3'])
  assert all(0.0 <= table['per_pixel,norm'][v]['auroc_mean'] <= 1.0 for v in scoring.VARIANTS)
  saved_types = {name: row for name, row in saved['gcad_jax']['auc_spro_per_defect_type'].items() if row}
  assert saved_types and set(table['scalar,norm']['local']['per_defect_type']) == set(saved_types)
  for variant, metrics in sources.items():  # evaluation writes every map's per-type figures
    saved_rows = (metrics['gcad_jax']['auc_spro_per_defect_type'] if variant == 'combined'
                  else metrics['per_defect_type'])
    for name, row in table['scalar,norm'][variant]['per_defect_type'].items():
      assert row['auroc'] == pytest.approx(saved_rows[name]['auc_roc'])
      assert row['spro'] == pytest.approx(saved_rows[name]['auc_spro']['0.05'])
  printed = capsys.readouterr().out
  assert 'per_pixel,norm' in printed and next(iter(saved_types)) in printed


def test_bad_arguments_are_refused(tmp_path):
  with pytest.raises(SystemExit):
    score_variants.main([str(tmp_path), '--squared', 'maybe'])
  assert score_variants.main([str(tmp_path)]) == 1  # not a workdir: skipped, nothing scored
