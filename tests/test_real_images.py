"""benchmarks/real_images.py: an MVTec AD-style folder converted to the LOCO layout (on made-up images)."""

import json
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from tfds_loco import category_scan
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


def test_holdout_is_deterministic_evenly_spread_and_sized():
  assert real_images.holdout_indices(10, 0.1) == [5]
  assert real_images.holdout_indices(209, 0.1) == real_images.holdout_indices(209, 0.1)
  picked = real_images.holdout_indices(209, 0.1)
  assert len(picked) == 21 and picked[0] == 4 and picked[-1] == 204
  assert real_images.holdout_indices(10, 0.5) == [1, 3, 5, 7, 9]
  assert len(real_images.holdout_indices(3, 0.9)) == 2  # at least one training image stays
  with pytest.raises(real_images.ConversionError, match='val_fraction'):
    real_images.holdout_indices(10, 1.0)


def test_conversion_layout_mapping_and_masks(source, tmp_path):
  conversion, reused = real_images.convert(source, tmp_path / 'scratch', 'widget', val_fraction=0.2)
  assert not reused
  out = tmp_path / 'scratch' / 'data' / 'widget'
  held = [e['source'] for e in conversion['files'] if e['target'].startswith('validation/')]
  assert held == ['train/good/002.png', 'train/good/007.png']
  targets = {e['source']: e['target'] for e in conversion['files']}
  assert targets['train/good/000.png'] == 'train/good/000.png'
  assert targets['train/good/003.png'] == 'train/good/002.png'  # 002 went to validation
  assert targets['test/crack/001.png'] == 'test/structural_anomalies/001.png'
  assert targets['test/dent/000.png'] == 'test/structural_anomalies/002.png'
  assert json.loads((out / 'mapping.json').read_text()) == json.loads(json.dumps(conversion))
  # Every target exists and is the source's pixels (the grey image as RGB).
  for entry in conversion['files']:
    got = layout.read_rgb_image(out / entry['target'])
    want = np.asarray(Image.open(source / entry['source']).convert('RGB'))
    np.testing.assert_array_equal(got, want)
  defects = layout.read_defects_config(out / 'defects_config.json')
  value = {d.defect_name: d.pixel_value for d in defects.values()}
  assert sorted(value) == ['crack', 'dent']
  assert all(d.relative_saturation and d.saturation_threshold == 1.0 for d in defects.values())
  # One channel per connected region, holding the type's pixel value; the regions are the mask's.
  two = sorted((out / 'ground_truth' / 'structural_anomalies' / '001').iterdir())
  assert [p.name for p in two] == ['000.png', '001.png']
  channels = [layout.read_mask(p) for p in two]
  assert all(set(np.unique(c)) == {0, value['crack']} for c in channels)
  source_mask = np.asarray(Image.open(source / 'ground_truth' / 'crack' / '001_mask.png')) > 0
  np.testing.assert_array_equal(channels[0].astype(bool) | channels[1].astype(bool), source_mask)
  dent = layout.read_mask(out / 'ground_truth' / 'structural_anomalies' / '002' / '000.png')
  assert set(np.unique(dent)) == {0, value['dent']}
  # The builder's own full check accepts the folder.
  scan = category_scan.scan_category(out, num_workers=1)
  assert {s: len(v) for s, v in scan.splits.items()} == {'train': 8, 'validation': 2, 'test': 5}


def test_logical_defects_go_to_logical_anomalies(source, tmp_path):
  conversion, _ = real_images.convert(source, tmp_path / 'scratch', 'widget', val_fraction=0.1,
                                      logical=('dent',))
  targets = {e['source']: (e['target'], e['kind']) for e in conversion['files']}
  assert targets['test/dent/000.png'] == ('test/logical_anomalies/000.png', 'logical_anomalies')
  assert targets['test/crack/000.png'][1] == 'structural_anomalies'
  out = tmp_path / 'scratch' / 'data' / 'widget'
  assert (out / 'ground_truth' / 'logical_anomalies' / '000' / '000.png').is_file()
  category_scan.scan_category(out, num_workers=1)
  with pytest.raises(real_images.ConversionError, match=r"--logical names \['scratch'\]"):
    real_images.convert(source, tmp_path / 'other', 'widget', val_fraction=0.1, logical=('scratch',))


def test_rerun_reuses_and_a_changed_conversion_replaces_the_build(source, tmp_path):
  scratch = tmp_path / 'scratch'
  real_images.convert(source, scratch, 'widget', val_fraction=0.2)
  stale = scratch / 'tfds' / 'mvtec_loco' / 'widget' / 'stale.txt'
  stale.parent.mkdir(parents=True)
  stale.write_text('built from the old conversion')
  assert real_images.convert(source, scratch, 'widget', val_fraction=0.2)[1]
  assert stale.exists()
  conversion, reused = real_images.convert(source, scratch, 'widget', val_fraction=0.3)
  assert not reused and not stale.exists()
  assert len(list((scratch / 'data' / 'widget' / 'validation' / 'good').iterdir())) == 3
  foreign = tmp_path / 'foreign'
  (foreign / 'data' / 'widget').mkdir(parents=True)
  with pytest.raises(real_images.ConversionError, match='no mapping.json'):
    real_images.convert(source, foreign, 'widget', val_fraction=0.2)


@pytest.mark.parametrize('break_it, message', [
    (lambda s: _mask(s / 'ground_truth' / 'crack' / '007_mask.png', [(1, 2, 1, 2)]),
     r'ground_truth/crack/007_mask.png has no image test/crack/007'),
    (lambda s: (s / 'ground_truth' / 'crack' / '001_mask.png').unlink(),
     r'test/crack/001.png has no mask ground_truth/crack/001_mask.png'),
    (lambda s: _mask(s / 'ground_truth' / 'crack' / '000_mask.png', [(1, 2, 1, 2)], size=(30, 20)),
     r'000_mask.png is 30x20 \(WxH\) but its image .*000.png is 24x20'),
    (lambda s: _image(s / 'test' / 'good' / '001.png', 5, size=(30, 20)),
     r'001.png is 30x20 \(WxH\) but .* is 24x20'),
    (lambda s: _mask(s / 'ground_truth' / 'dent' / '000_mask.png', []), r'000_mask.png has no defect pixel'),
    (lambda s: [p.unlink() for p in (s / 'test' / 'good').iterdir()], r'test/good holds no .png image'),
])
def test_bad_folders_are_refused_naming_the_file(source, tmp_path, break_it, message):
  break_it(source)
  with pytest.raises(real_images.ConversionError, match=message):
    real_images.convert(source, tmp_path / 'scratch', 'widget', val_fraction=0.1)
  assert not (tmp_path / 'scratch' / 'data' / 'widget').exists()  # nothing half-written left behind


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


def test_scratch_inside_the_repository_is_refused(source):
  with pytest.raises(SystemExit, match='inside the repository'):
    real_images.main([str(source), str(ROOT / 'scratch_here'), '--prepare_only'])
  assert not (ROOT / 'scratch_here').exists()
