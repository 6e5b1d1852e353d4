"""End to end on tiny generated folders of the two MVTec AD-style layouts (docs/method.md §10.2): train, evaluate,
report and predict through the real code path, in process, with configs/tiny.py at 64², one epoch.

* mvtec_ad: a grey `grid` category through `./run.sh mvtec_ad`'s protocol (Tables 8 and 9), then predict;
* folder: a user's folder without masks, `--logical`, validation/good given: image metrics only.
"""

import json
import pathlib
import sys

import numpy as np
from PIL import Image
import pytest

from gcad_jax import evaluate, loco_protocol, predict, report, train
import fixture_scripts
import train_worker

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import score_variants  # pylint: disable=g-import-not-at-top,wrong-import-position

pytestmark = pytest.mark.slow  # trains and evaluates end to end

_dummy = fixture_scripts.mvtec_ad_dummy()


def test_the_mvtec_ad_protocol_trains_evaluates_and_writes_tables_8_and_9(tmp_path, capsys):
  _dummy.write_category(tmp_path / 'data', 'grid', size=(40, 32), gray=True, train=10,
                        tests={'good': 2, 'bent': 2, 'broken': 1})
  lines = []
  out = loco_protocol.run_protocol(tmp_path / 'data', tmp_path / 'w', [0], ['grid'], 'configs/tiny.py',
                                   ['train.epochs=1', f'dataset.data_dir={tmp_path / "tfds"}'], in_process=True,
                                   log=lines.append, benchmark='mvtec_ad')
  assert not out['failed'], out['failed']
  w = tmp_path / 'w' / 'seed0' / 'grid'
  metrics = json.loads((w / evaluate.METRICS_FILE).read_text())
  assert metrics['gcad_jax']['dataset_format'] == 'mvtec_ad' and metrics['gcad_jax']['regions'] == 'components'
  assert metrics['gcad_jax']['counts']['structural_anomalies']['num_channels'] == 4  # bent/001: two components
  assert 0 <= metrics['localization']['auc_spro']['structural_anomalies']['0.3'] <= 1
  assert metrics['classification']['auc_roc']['logical_anomalies'] is None  # grid: no logical anomalies
  assert (w / 'anomaly_maps' / 'grid' / 'test' / 'bent' / '001.tiff').is_file()
  text = out['report'].read_text()
  assert '# GCAD on MVTec AD' in text and 'Table 8' in text and '| paper GCAD | 0.716 | 0.863 | 0.789 |' in text
  assert lines[-1].startswith('[mvtec_ad] 1 run, 0 skipped, 0 failed')
  assert report.main([str(w)]) == 0 and 'Table 9: image AUROC' in capsys.readouterr().out
  # benchmarks/score_variants.py reads the masks through the workdir's own format and gives back its figures.
  variants = tmp_path / 'variants.json'
  assert score_variants.main([str(w), '--norms', 'scalar', '--squared', 'no', '--json', str(variants)]) == 0
  rescored = json.loads(variants.read_text())[str(w)]['scalar,norm']['combined']
  assert rescored['auroc_structural'] == pytest.approx(metrics['classification']['auc_roc']['structural_anomalies'])
  assert rescored['spro0.3_structural'] == pytest.approx(
      metrics['localization']['auc_spro']['structural_anomalies']['0.3'])
  # predict on a grey image of another size, with the model trained on MVTec AD.
  model = predict.load(w)
  grey = np.asarray(Image.open(tmp_path / 'data/grid/test/bent/000.png').convert('RGB').resize((50, 30)))
  maps, scores = model.score([grey])
  assert maps[0].shape == (30, 50) and np.isfinite(scores[0])
  assert model.validation_threshold()['num_images'] == 1  # the held-out tenth of train/good


def test_a_users_folder_without_masks_trains_and_reports_image_metrics_only(tmp_path):
  _dummy.write_category(tmp_path / 'data', 'my_part', size=(48, 40), train=8, validation=2, masks=False,
                        tests={'good': 2, 'scratch': 2, 'wrong_part': 1})
  config = train_worker.load_config(ROOT / 'configs' / 'tiny.py')
  config.dataset.update(format='folder', category='my_part', logical=('wrong_part',),
                        manual_dir=str(tmp_path / 'data'), data_dir=str(tmp_path / 'tfds'))
  config.train.epochs = 1
  train.train_and_evaluate(config, str(tmp_path / 'w'))
  metrics = json.loads((tmp_path / 'w' / evaluate.METRICS_FILE).read_text())
  assert metrics['gcad_jax']['has_masks'] is False
  assert any('only the image metrics' in note for note in metrics['gcad_jax']['warnings'])
  for kind in ('structural_anomalies', 'logical_anomalies', 'mean'):
    assert 0 <= metrics['classification']['auc_roc'][kind] <= 1
    assert metrics['localization']['auc_spro'][kind]['0.05'] is None
  assert metrics['gcad_jax']['kinds']['test/wrong_part/000'] == 'logical_anomalies'
  assert (tmp_path / 'w' / 'report.md').is_file()
  assert (tmp_path / 'w' / 'anomaly_maps' / 'my_part' / 'test' / 'scratch' / '001.tiff').is_file()


def test_the_mvtec_ad_protocol_names_a_missing_category(tmp_path, capsys):
  _dummy.write_category(tmp_path / 'data', 'grid', size=(16, 16), gray=True, train=2, tests={'good': 1, 'bent': 1})
  assert loco_protocol.main([str(tmp_path / 'data'), str(tmp_path / 'w'), '--benchmark', 'mvtec_ad']) == 2
  assert "MVTec AD category bottle: category 'bottle' not found" in capsys.readouterr().err
