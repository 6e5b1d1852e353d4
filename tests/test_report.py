"""gcad_jax/report.py and gcad_jax/assess.py: metrics.json with variants, plots, report.md, Tables 3/5/6."""

import json
import pathlib

import numpy as np
import pytest

from gcad_jax import benchmark_tables, evaluate, map_files, report, scoring
import fixture_scripts

ROOT = pathlib.Path(__file__).resolve().parents[1]
gen = fixture_scripts.eval_fixture()
CAT = gen.CATEGORY


@pytest.fixture(scope='module')
def evaluated(tmp_path_factory):
  """The evaluator's fixture category; 'combined' = continuous maps, 'local' = perfect, 'global' = random."""
  root = tmp_path_factory.mktemp('report_fixture')
  cat_dir = gen.write_dataset(root / 'dataset')
  sets = {'combined': 'continuous', 'local': 'perfect', 'global': 'random'}
  maps = {v: {f'test/{k}': a.astype(np.float32) for k, a in gen.make_maps(s).items()} for v, s in sets.items()}
  with pytest.warns(evaluate.EvaluationWarning):
    metrics = {v: evaluate.evaluate_category(cat_dir, m, num_workers=1) for v, m in maps.items()}
  return cat_dir, maps, metrics


def test_metrics_json_has_official_keys_variants_and_ours(evaluated, tmp_path):
  cat_dir, maps, metrics = evaluated
  combined = report.assemble_metrics(metrics['combined'], {'local': metrics['local'], 'global': metrics['global']},
                                     extra={'step': 7})
  marker = map_files.write_maps(tmp_path / 'anomaly_maps', CAT, cat_dir, maps['combined'])
  path = report.write_category_report(tmp_path, combined, CAT, cat_dir, maps['combined'], marker['image_scores'],
                                      step=7)
  written = json.loads((tmp_path / 'metrics.json').read_text())
  assert written['classification'] == metrics['combined']['classification']
  assert written['localization']['auc_spro'] == metrics['combined']['localization']['auc_spro']
  assert 'per_threshold' in written['localization'] and written['gcad_jax']['step'] == 7
  assert written['variants']['local']['localization']['auc_spro']['mean']['0.05'] == 1.0  # perfect maps
  assert written['variants']['global']['classification'] == metrics['global']['classification']
  local_types = written['variants']['local']['per_defect_type']
  assert local_types == metrics['local']['gcad_jax']['auc_spro_per_defect_type']
  text = path.read_text()
  assert '| combined |' in text and '| local | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |' in text
  # The per-type table: one row per type with test images; columns local, global, combined (AUROC, then sPRO).
  types = {name: row for name, row in metrics['combined']['gcad_jax']['auc_spro_per_defect_type'].items() if row}
  table_rows = [line for line in text.splitlines() if line.split(' | ')[0].lstrip('| ') in types]
  assert len(table_rows) == len(types)
  for line in table_rows:
    cells = [c.strip() for c in line.strip('|').split('|')]
    name = cells[0]
    expected = [metrics[v]['gcad_jax']['auc_spro_per_defect_type'][name]['auc_roc'] for v in scoring.VARIANTS]
    expected += [metrics[v]['gcad_jax']['auc_spro_per_defect_type'][name]['auc_spro']['0.05'] for v in scoring.VARIANTS]
    assert cells[2:] == [f'{value:.3f}' for value in expected]
    assert cells[2] == '1.000' and cells[5] == '1.000'  # local = perfect maps: AUROC and sPRO 1 for every type
  assert '0.701' in text  # the paper's figure beside ours
  for name in ('spro_curves.png', 'roc_curves.png'):
    assert (tmp_path / 'plots' / name).stat().st_size > 1000
  overlays = sorted(p.name for p in (tmp_path / 'plots' / 'overlays').iterdir())
  assert len(overlays) == 6 and overlays[0].startswith('good_')
  assert list(tmp_path.glob('events.out.tfevents.*'))  # TensorBoard scalars


def _fake_workdir(path, category, seed, spro_mean, auroc_mean):
  per_kind = lambda base: {'structural_anomalies': {'0.05': base - 0.1}, 'logical_anomalies': {'0.05': base + 0.1},
                           'mean': {'0.05': base}}
  roc = {'structural_anomalies': auroc_mean, 'logical_anomalies': auroc_mean, 'mean': auroc_mean}
  m = {'classification': {'auc_roc': roc}, 'localization': {'auc_spro': per_kind(spro_mean)},
       'gcad_jax': {'category': category}}
  m['variants'] = {'local': {'classification': {'auc_roc': roc}, 'localization': {'auc_spro': per_kind(0.5)}}}
  evaluate.write_metrics(m, path)
  (path / 'config.json').write_text(json.dumps({'seed': seed}))
  return path


def test_tables_over_workdirs_give_mean_and_std_over_seeds_beside_the_paper(tmp_path, capsys):
  dirs = [_fake_workdir(tmp_path / 'a0', 'pushpins', 0, 0.6, 0.8), _fake_workdir(tmp_path / 'a1', 'pushpins', 1, 0.8, 0.9),
          _fake_workdir(tmp_path / 'b0', 'juice_bottle', 0, 0.9, 0.7),
          _fake_workdir(tmp_path / 'b1', 'juice_bottle', 1, 0.9, 0.7)]
  assert report.main([str(d) for d in dirs]) == 0
  out = capsys.readouterr().out
  # pushpins: mean 0.7, sample std of (0.6, 0.8) = 0.141; dataset mean per seed (0.75, 0.85) -> 0.8 ± 0.071.
  assert '| ours combined | 0.900 ± 0.000 | 0.700 ± 0.141 | 0.800 ± 0.071 |' in out
  assert '| ours local | 0.500 ± 0.000 | 0.500 ± 0.000 | 0.500 ± 0.000 |' in out
  assert '| paper GCAD | 0.910 | 0.739 | 0.701 |' in out
  assert 'Table 5' in out and 'Table 6' in out and '| paper GCAD | 0.806 | 0.860 | 0.833 |' in out


def test_missing_metrics_is_reported(tmp_path, capsys):
  assert report.main([str(tmp_path)]) == 2
  assert 'metrics.json is missing' in capsys.readouterr().err


def _headlines(spro, pro, auroc):
  kinds = ('structural', 'logical', 'mean')
  return {'combined': {'spro': dict(zip(kinds, spro)), 'spro_0.3': dict(zip(kinds, pro)),
                       'auroc': dict(zip(kinds, auroc))}}


def test_mvtec_ad_tables_average_logical_only_over_categories_with_logical_anomalies():
  # Two seeds; bottle has no logical anomalies (None), cable has. docs/method.md §10.2.
  runs = {'bottle': [_headlines((0.6, None, None), (0.8, None, None), (0.9, None, None)),
                     _headlines((0.8, None, None), (0.8, None, None), (0.9, None, None))],
          'cable': [_headlines((0.4, 0.9, 0.65), (0.5, 0.9, 0.7), (0.7, 1.0, 0.85)),
                    _headlines((0.6, 0.7, 0.65), (0.5, 0.9, 0.7), (0.7, 1.0, 0.85))]}
  means = benchmark_tables._kind_means(runs, 'combined', 'spro')  # pylint: disable=protected-access
  # Seed 0: structural (0.6 + 0.4) / 2 = 0.5, logical 0.9 (cable only), mean 0.7; seed 1: 0.7, 0.7, 0.7.
  assert means['structural'][0] == pytest.approx(0.6) and means['logical'][0] == pytest.approx(0.8)
  assert means['mean'] == (pytest.approx(0.7), pytest.approx(0.0))
  text = benchmark_tables.mvtec_ad_tables_markdown(runs)
  assert 'Table 8' in text and 'Table 9' in text and 'AUC-PRO@0.3' in text
  assert '| paper GCAD | 0.716 | 0.863 | 0.789 |' in text and '| paper GCAD | 0.871 | 0.991 | 0.931 |' in text
  assert '| ours combined | 0.600 ± 0.141 | 0.800 ± 0.141 | 0.700 ± 0.000 |' in text
