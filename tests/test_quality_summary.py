"""benchmarks/quality_summary.py: the figures it reads from a workdir, and the E_glo collapse flag."""

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import quality_summary  # pylint: disable=g-import-not-at-top,wrong-import-position


def _metrics(auroc: float, spro: float) -> dict:
  kinds = ('structural_anomalies', 'logical_anomalies', 'mean')
  return {'classification': {'auc_roc': {k: auroc for k in kinds}},
          'localization': {'auc_spro': {k: {'0.05': spro} for k in kinds}}}


def test_summary_reads_each_branch_and_flags_a_collapsed_scale(tmp_path, capsys):
  workdir = tmp_path / 'run'
  (workdir / 'p17').mkdir(parents=True)
  (workdir / 'p33').mkdir()
  (workdir / 'metrics.json').write_text(json.dumps(
      _metrics(0.8, 0.7) | {'variants': {'local': _metrics(0.6, 0.5), 'global': _metrics(0.9, 0.4)}}))
  (workdir / 'config.json').write_text(json.dumps(
      {'dataset': {'image_size': [10, 10]}, 'train': {'loss_reduction': 'sum_per_image'}}))
  (workdir / 'p17' / 'validation_losses.json').write_text(json.dumps({'l_kd': 70.0}))
  (workdir / 'p33' / 'validation_losses.json').write_text(json.dumps({'l_kd': 101.0}))  # over H·W = 100
  out = tmp_path / 'q.json'
  assert quality_summary.main([str(workdir), '--json', str(out)]) == 0
  table = json.loads(out.read_text())[str(workdir)]
  assert table['combined']['auroc_mean'] == 0.8 and table['global']['spro_logical_anomalies'] == 0.4
  assert table['local']['auroc_structural_anomalies'] == 0.6
  assert table['kd_explained'] == pytest.approx({'p17': 0.3, 'p33': -0.01})
  printed = capsys.readouterr().out
  assert 'p17: 30.0 %, p33: -1.0 % (collapsed)' in printed
