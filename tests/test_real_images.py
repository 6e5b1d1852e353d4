"""benchmarks/real_images.py: an MVTec AD-style folder through the mvtec_ad builder ('folder' format), on made-up
images."""

import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from tfds_loco import layout

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import real_images  # pylint: disable=g-import-not-at-top,wrong-import-position

SIZE = (24, 20)  # (W, H)


def _image(path, seed, mode='RGB', size=SIZE):
  rng = np.random.default_rng(seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  shape = (size[1], size[0], 3) if mode == 'RGB' else (size[1], size[0])
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)  # (H, W) → L, (H, W, 3) → RGB


def _mask(path, boxes, size=SIZE):
  mask = np.zeros((size[1], size[0]), np.uint8)
  for y0, y1, x0, x1 in boxes:
    mask[y0:y1, x0:x1] = 255
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(mask).save(path)


@pytest.fixture
def source(tmp_path):
  """A tiny category: 10 train, 2 test/good, crack (2 images, one with two regions), dent (1, grey)."""
  src = tmp_path / 'widget'
  for i in range(10):
    _image(src / 'train' / 'good' / f'{i:03d}.png', i)
  for i in range(2):
    _image(src / 'test' / 'good' / f'{i:03d}.png', 100 + i)
  _image(src / 'test' / 'crack' / '000.png', 200)
  _mask(src / 'ground_truth' / 'crack' / '000_mask.png', [(2, 5, 2, 6)])
  _image(src / 'test' / 'crack' / '001.png', 201)
  _mask(src / 'ground_truth' / 'crack' / '001_mask.png', [(1, 4, 1, 4), (10, 14, 12, 18)])
  _image(src / 'test' / 'dent' / '000.png', 300, mode='L')
  _mask(src / 'ground_truth' / 'dent' / '000_mask.png', [(5, 9, 5, 9)])
  return src


def _examples(scratch, split):
  """The built examples of a split, read back with the builder (no manual_dir: as built)."""
  from tfds_loco import mvtec_ad  # pylint: disable=g-import-not-at-top
  source = mvtec_ad.builder_for('widget', data_dir=scratch / 'tfds', dataset_format='folder').as_data_source(split)
  return [source[i] for i in range(len(source))]


def test_prepare_builds_the_folder_through_the_mvtec_ad_builder(source, tmp_path):
  summary = real_images.prepare(source, tmp_path / 'scratch', 'widget', val_fraction=0.2)
  assert summary['name'].startswith('mvtec_ad/widget')
  assert {s: v['examples'] for s, v in summary['splits'].items()} == {'train': 8, 'validation': 2, 'test': 5}
  assert summary['splits']['test']['labels'] == {'good': 2, 'structural_anomalies': 3}
  validation = _examples(tmp_path / 'scratch', 'validation')
  assert [e['image_id'].decode() for e in validation] == ['train/good/002', 'train/good/007']  # the evenly spread rule
  test = {e['image_id'].decode(): e for e in _examples(tmp_path / 'scratch', 'test')}
  want = np.asarray(Image.open(source / 'test' / 'dent' / '000.png').convert('RGB'))  # a grey image, as RGB
  np.testing.assert_array_equal(np.asarray(test['test/dent/000']['image']), want)
  assert (tmp_path / 'scratch' / 'data' / 'widget').resolve() == source.resolve()  # a link: images stay outside
  assert summary['source']['format'] == 'folder' and summary['source']['val_fraction'] == 0.2


def test_logical_defects_and_a_rerun_with_other_options_rebuilds(source, tmp_path):
  scratch = tmp_path / 'scratch'
  first = real_images.prepare(source, scratch, 'widget', val_fraction=0.1, logical=('dent',))
  assert first['splits']['test']['labels'] == {'good': 2, 'logical_anomalies': 1, 'structural_anomalies': 2}
  again = real_images.prepare(source, scratch, 'widget', val_fraction=0.1, logical=('dent',))
  assert again['source']['fingerprint'] == first['source']['fingerprint']
  other = real_images.prepare(source, scratch, 'widget', val_fraction=0.3)
  assert other['source']['fingerprint'] != first['source']['fingerprint']
  assert other['splits']['validation']['examples'] == 3
  with pytest.raises(layout.LocoFormatError, match="logical anomaly 'scratch'"):
    real_images.prepare(source, tmp_path / 'other', 'widget', val_fraction=0.1, logical=('scratch',))
  foreign = tmp_path / 'foreign'
  (foreign / 'data' / 'widget').mkdir(parents=True)
  with pytest.raises(layout.LocoFormatError, match='not a link'):
    real_images.prepare(source, foreign, 'widget', val_fraction=0.2)


@pytest.mark.parametrize('break_it, message', [
    (lambda s: _mask(s / 'ground_truth' / 'crack' / '007_mask.png', [(1, 2, 1, 2)]),
     r'mask without image: .*ground_truth/crack/007_mask.png has no test image .*test/crack/007.png'),
    (lambda s: (s / 'ground_truth' / 'crack' / '001_mask.png').unlink(),
     r'image without mask: .*test/crack/001.png has no .*ground_truth/crack/001_mask.png'),
    (lambda s: _mask(s / 'ground_truth' / 'crack' / '000_mask.png', [(1, 2, 1, 2)], size=(30, 20)),
     r'size mismatch: .*000_mask.png is 30x20 \(WxH\) but its image .*000.png is 24x20'),
    (lambda s: _mask(s / 'ground_truth' / 'dent' / '000_mask.png', []), r'000_mask.png has no defect pixel'),
    (lambda s: [p.unlink() for p in (s / 'test' / 'good').iterdir()], r'test/good holds no .png image'),
])
def test_bad_folders_are_refused_naming_the_file(source, tmp_path, break_it, message):
  break_it(source)
  with pytest.raises(layout.LocoFormatError, match=message):
    real_images.prepare(source, tmp_path / 'scratch', 'widget', val_fraction=0.1)
  assert not (tmp_path / 'scratch' / 'tfds' / 'mvtec_ad' / 'widget').exists()  # nothing built


def test_figures_and_table_read_metrics_json():
  def block(auroc, spro):
    return {'classification': {'auc_roc': {'structural_anomalies': auroc, 'logical_anomalies': None,
                                           'mean': None}},
            'localization': {'auc_spro': {'structural_anomalies': {'0.05': spro, '0.3': spro + 0.1},
                                          'logical_anomalies': None, 'mean': None}}}

  metrics = {**block(0.9, 0.4), 'variants': {'local': block(0.7, 0.2), 'global': block(0.8, 0.3)}}
  result = real_images.figures(metrics)
  assert result['maps']['local']['auroc']['structural_anomalies'] == 0.7
  assert result['maps']['global']['spro']['0.3']['structural_anomalies'] == pytest.approx(0.4)
  assert result['maps']['combined']['spro']['0.05']['logical_anomalies'] is None
  text = real_images.table(result)
  assert [line.split()[0] for line in text.splitlines()] == ['map', 'combined', 'local', 'global']
  assert '0.900' in text and '0.500' in text
  assert text.splitlines()[0].split() == ['map', 'AUROC:struct', 'sPRO@0.05:struct', 'sPRO@0.3:struct']


def test_train_command_sets_the_data_and_passes_extra_flags_last(tmp_path):
  args, extra = real_images.parse_args(['/src/bottle', str(tmp_path), '--image_size', '256', '--',
                                        '--config.teacher.init=random'])
  assert args.category == 'bottle' and extra == ['--config.teacher.init=random']
  command = real_images.train_command(args, tmp_path, tmp_path / 'work', extra)
  assert command[1:4] == ['-m', 'gcad_jax.main', '--config=configs/synthetic.py:bottle']
  assert f'--config.dataset.manual_dir={tmp_path / "data"}' in command
  assert '--config.dataset.image_size=(256,256)' in command and command[-1] == '--config.teacher.init=random'
  assert '--config.dataset.format=folder' in command and '--config.dataset.val_fraction=0.1' in command
  args, _ = real_images.parse_args(['/src/bottle', str(tmp_path), '--logical', 'dent,crack'])
  assert "--config.dataset.logical=('dent', 'crack')" in real_images.train_command(args, tmp_path, tmp_path, [])


def test_scratch_inside_the_repository_is_refused(source):
  with pytest.raises(SystemExit, match='inside the repository'):
    real_images.main([str(source), str(ROOT / 'scratch_here'), '--prepare_only'])
  assert not (ROOT / 'scratch_here').exists()
