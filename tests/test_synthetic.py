"""Tests for tfds_loco.synthetic: LOCO layout (docs/data_format.md §2), ground truth (§5), defects_config (§6)."""

import hashlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tfds_loco import synthetic
from tfds_loco.synthetic import writer

SIZE = (96, 64)  # (W, H): small and non-square
SMALL = {'train': 2, 'validation': 1, 'good': 2, 'logical': 3, 'structural': 3}
FOLDERS = {'train': 'train/good', 'validation': 'validation/good', 'good': 'test/good',
           'logical': 'test/logical_anomalies', 'structural': 'test/structural_anomalies'}
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tree(path: pathlib.Path) -> set[str]:
  return {p.relative_to(path).as_posix() for p in path.rglob('*')}


def _digest(path: pathlib.Path) -> dict[str, str]:
  return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(path.rglob('*')) if p.is_file()}


def _manifest(root, category):
  return json.loads((root / f'{category}.manifest.json').read_text())


def _masks(cat_dir, image):
  return [np.asarray(Image.open(cat_dir / ch['path'])) for ch in image['channels']]


@pytest.fixture(scope='module')
def small(tmp_path_factory):
  """All categories at 96x64 with a few images per folder."""
  root = tmp_path_factory.mktemp('small')
  for category in synthetic.CATEGORIES:
    synthetic.generate(root, category, seed=0, size=SIZE, counts=SMALL)
  return root


@pytest.fixture(scope='module')
def full(tmp_path_factory):
  """All categories at 96x64 with the default counts (every recipe appears)."""
  root = tmp_path_factory.mktemp('full')
  for category in synthetic.CATEGORIES:
    synthetic.generate(root, category, seed=3, size=SIZE)
  return root


def test_api():
  assert len(synthetic.CATEGORIES) >= 3
  assert {'synthetic_tray', 'synthetic_grid', 'synthetic_connectors'} <= set(synthetic.CATEGORIES)
  assert set(synthetic.default_counts()) == set(FOLDERS)


@pytest.mark.parametrize('category', synthetic.CATEGORIES)
def test_layout_is_exactly_loco(small, category):
  """§2: folders, three-digit ids, one gt folder per anomalous image, one PNG per channel, nothing else."""
  man = _manifest(small, category)
  expected = {'defects_config.json', 'train', 'validation', 'test', 'ground_truth',
              'ground_truth/logical_anomalies', 'ground_truth/structural_anomalies'}
  for key, folder in FOLDERS.items():
    expected |= {folder, folder.split('/')[0]} | {f'{folder}/{i:03d}.png' for i in range(SMALL[key])}
  for image in man['images']:
    if image['label'] != 'good':
      expected.add(f'ground_truth/{image["label"]}/{image["id"].split("/")[-1]}')
    expected |= {ch['path'] for ch in image['channels']}
  assert _tree(small / category) == expected
  assert sorted(p.name for p in small.iterdir()) == sorted(
      [c for c in synthetic.CATEGORIES] + [f'{c}.manifest.json' for c in synthetic.CATEGORIES])


@pytest.mark.parametrize('category', synthetic.CATEGORIES)
def test_gt_folders_match_anomalous_images(small, category):
  cat = small / category
  for label in ('logical_anomalies', 'structural_anomalies'):
    stems = {p.stem for p in (cat / 'test' / label).glob('*.png')}
    gt = {p.name for p in (cat / 'ground_truth' / label).iterdir()}
    assert stems == gt and stems
    for d in (cat / 'ground_truth' / label).iterdir():
      names = sorted(p.name for p in d.iterdir())
      assert names and names == [f'{j:03d}.png' for j in range(len(names))]


@pytest.mark.parametrize('category', synthetic.CATEGORIES)
def test_images_are_rgb_uint8_of_the_requested_size(small, category):
  for path in (small / category).glob('*/*/*.png'):
    with Image.open(path) as im:
      assert im.mode == 'RGB' and im.size == SIZE, path
    assert np.asarray(Image.open(path)).dtype == np.uint8


@pytest.mark.parametrize('category', synthetic.CATEGORIES)
def test_masks_single_channel_with_one_known_value(small, category):
  """§5: 2-D uint8, image size, values {0, pixel_value}, the value in defects_config.json."""
  cat = small / category
  values = {d['pixel_value'] for d in json.loads((cat / 'defects_config.json').read_text())}
  paths = list((cat / 'ground_truth').glob('*/*/*.png'))
  assert paths
  for path in paths:
    with Image.open(path) as im:
      assert im.mode == 'L' and im.size == SIZE, path
      m = np.asarray(im)
    assert m.ndim == 2 and m.dtype == np.uint8
    positive = set(np.unique(m).tolist()) - {0}
    assert len(positive) == 1 and positive <= values, (path, positive)


@pytest.mark.parametrize('category', synthetic.CATEGORIES)
def test_defects_config_follows_spec(small, category):
  """§6: a list of the four fields; float in (0, 1] if relative, int pixel count if absolute."""
  config = json.loads((small / category / 'defects_config.json').read_text())
  kinds = _manifest(small, category)['defect_kinds']
  assert [d['defect_name'] for d in config] == list(kinds)
  values = [d['pixel_value'] for d in config]
  assert len(set(values)) == len(values) and all(234 <= v <= 255 for v in values)
  logical = [d['pixel_value'] for d in config if kinds[d['defect_name']] == 'logical']
  structural = [d['pixel_value'] for d in config if kinds[d['defect_name']] == 'structural']
  assert logical and structural and min(logical) > max(structural)  # logical types take the high values
  for d in config:
    assert list(d) == ['defect_name', 'pixel_value', 'saturation_threshold', 'relative_saturation']
    t = d['saturation_threshold']
    if d['relative_saturation'] is True:
      assert type(t) is float and 0 < t <= 1, d
    else:
      assert d['relative_saturation'] is False and type(t) is int and 1 <= t < SIZE[0] * SIZE[1], d
    if kinds[d['defect_name']] == 'structural':
      assert d['relative_saturation'] and t == 1.0  # paper policy: s = |A|


def test_defect_types_cover_the_brief():
  """>= 4 logical kinds (missing, extra, wrong kind/colour, misplaced/swapped, wrong count), 3 structural."""
  names = {(d.name, d.kind) for fam in synthetic._FAMILIES.values() for d in fam.defects}
  logical = ' '.join(n for n, k in names if k == 'logical')
  structural = ' '.join(n for n, k in names if k == 'structural')
  for word in ('missing', 'additional', 'wrong', 'color', 'swapped', 'location', 'ratio', 'underflow'):
    assert word in logical, word
  for word in ('scratch', 'broken', 'damaged', 'contamination'):
    assert word in structural, word


@pytest.mark.parametrize('category', synthetic.CATEGORIES)
def test_manifest_agrees_with_files(small, category):
  cat = small / category
  man = _manifest(small, category)
  config = {d['pixel_value']: d for d in man['defects_config']}
  assert man['defects_config'] == json.loads((cat / 'defects_config.json').read_text())
  files = {p.relative_to(cat).as_posix() for p in cat.glob('*/*/*.png')}
  assert {im['path'] for im in man['images']} == files
  for im in man['images']:
    assert im['id'] == im['path'][:-4] and im['id'].startswith(f'{im["split"]}/{im["label"]}/')
    assert (im['width'], im['height']) == SIZE
    if im['label'] == 'good':
      assert im['channels'] == []
      continue
    gt = cat / 'ground_truth' / im['label'] / im['id'].split('/')[-1]
    assert [ch['file'] for ch in im['channels']] == sorted(p.name for p in gt.iterdir())
    for ch, m in zip(im['channels'], _masks(cat, im)):
      assert ch['path'] == (gt / ch['file']).relative_to(cat).as_posix()
      assert ch['area'] == int((m > 0).sum()) > 0
      assert set(np.unique(m).tolist()) == {0, ch['pixel_value']}
      assert config[ch['pixel_value']]['defect_name'] == ch['defect_name']
      assert man['defect_kinds'][ch['defect_name']] + '_anomalies' == im['label']


@pytest.mark.parametrize('category', synthetic.CATEGORIES)
def test_multiple_and_overlapping_channels_with_default_counts(full, category):
  """§5: some images carry >= 2 channels, and some channels of one image overlap."""
  cat = full / category
  man = _manifest(full, category)
  assert man['counts'] == synthetic.default_counts()
  multi = [im for im in man['images'] if len(im['channels']) >= 2]
  assert {im['label'] for im in multi} == {'logical_anomalies', 'structural_anomalies'}
  overlapping = set()
  for im in multi:
    masks = [m > 0 for m in _masks(cat, im)]
    if any((a & b).any() for i, a in enumerate(masks) for b in masks[i + 1:]):
      overlapping.add(im['label'])
  assert overlapping == {'logical_anomalies', 'structural_anomalies'}
  used = {ch['defect_name'] for im in man['images'] for ch in im['channels']}
  assert used == set(man['defect_kinds'])  # every defect type appears


@pytest.mark.parametrize('category', synthetic.CATEGORIES)
def test_anomalies_visible_at_network_resolution(full, category):
  """Every channel keeps >= 4 pixels after resizing to 128 x 128 (nothing sub-pixel)."""
  man = _manifest(full, category)
  scale = 128 * 128 / (SIZE[0] * SIZE[1])
  areas = [ch['area'] * scale for im in man['images'] for ch in im['channels']]
  assert min(areas) >= 4


def test_deterministic_per_seed(small, tmp_path):
  category = 'synthetic_connectors'
  synthetic.generate(tmp_path / 'a', category, seed=0, size=SIZE, counts=SMALL)
  synthetic.generate(tmp_path / 'b', category, seed=1, size=SIZE, counts=SMALL)
  same = _digest(small / category)
  assert _digest(tmp_path / 'a' / category) == same
  assert (tmp_path / 'a' / f'{category}.manifest.json').read_bytes() == (
      small / f'{category}.manifest.json').read_bytes()
  other = _digest(tmp_path / 'b' / category)
  images = [k for k in same if not k.startswith('ground_truth') and k.endswith('.png')]
  assert all(other[k] != same[k] for k in images)


def test_splits_use_different_sub_seeds(small):
  cat = small / 'synthetic_grid'
  first = [(cat / f / '000.png').read_bytes() for f in ('train/good', 'validation/good', 'test/good')]
  assert len(set(first)) == 3


@pytest.mark.parametrize('size', [(64, 64), (64, 112), (200, 72)])
def test_any_size_from_64(tmp_path, size):
  counts = {'train': 1, 'validation': 0, 'good': 0, 'logical': 7, 'structural': 6}
  for category in synthetic.CATEGORIES:
    synthetic.generate(tmp_path, category, size=size, counts=counts)
    with Image.open(tmp_path / category / 'train/good/000.png') as im:
      assert im.size == size
  assert not (tmp_path / 'synthetic_grid' / 'validation' / 'good' / '000.png').exists()


def test_refuses_overwrite_and_writes_atomically(tmp_path, monkeypatch):
  counts = {'train': 1, 'validation': 1, 'good': 1, 'logical': 1, 'structural': 1}
  path = synthetic.generate(tmp_path, 'synthetic_tray', seed=0, size=SIZE, counts=counts)
  before = _digest(path)
  with pytest.raises(FileExistsError, match='--overwrite'):
    synthetic.generate(tmp_path, 'synthetic_tray', seed=1, size=SIZE, counts=counts)
  assert _digest(path) == before

  # An interrupted run leaves neither a new category folder nor temporary folders, and keeps the old one.
  calls = []

  def failing_write(p, a):
    calls.append(p)
    if len(calls) == 4:
      raise KeyboardInterrupt
    return real_write(p, a)

  real_write = writer._write_png
  monkeypatch.setattr(writer, '_write_png', failing_write)
  with pytest.raises(KeyboardInterrupt):
    synthetic.generate(tmp_path, 'synthetic_grid', size=SIZE, counts=counts)
  calls.clear()
  with pytest.raises(KeyboardInterrupt):
    synthetic.generate(tmp_path, 'synthetic_tray', seed=1, size=SIZE, counts=counts, overwrite=True)
  monkeypatch.undo()
  assert sorted(p.name for p in tmp_path.iterdir()) == ['synthetic_tray', 'synthetic_tray.manifest.json']
  assert _digest(path) == before

  synthetic.generate(tmp_path, 'synthetic_tray', seed=1, size=SIZE, counts=counts, overwrite=True)
  assert _digest(path) != before
  assert _manifest(tmp_path, 'synthetic_tray')['seed'] == 1
  assert sorted(p.name for p in tmp_path.iterdir()) == ['synthetic_tray', 'synthetic_tray.manifest.json']


@pytest.mark.parametrize('kwargs', [dict(category='breakfast_box'), dict(size=(63, 64)),
                                    dict(counts={'test': 1}), dict(seed=-1)])
def test_bad_arguments(tmp_path, kwargs):
  args = dict(category='synthetic_grid', size=SIZE, counts=SMALL) | kwargs
  with pytest.raises(ValueError):
    synthetic.generate(tmp_path, **args)
  assert not any(tmp_path.iterdir())


def test_cli(tmp_path, capsys):
  cmd = [sys.executable, '-m', 'tfds_loco.synthetic', '--out', str(tmp_path), '--seed', '2',
         '--category', 'all', '--size', '80x64', '--counts', 'train=1,validation=1,good=1,logical=2,structural=1']
  res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stderr
  lines = res.stdout.strip().splitlines()
  assert len(lines) == len(synthetic.CATEGORIES)
  for category, line in zip(synthetic.CATEGORIES, lines):
    assert line.startswith(f'{category}: 6 images 80x64')
    assert len(list((tmp_path / category / 'test/logical_anomalies').iterdir())) == 2
  # Refusal, in-process: a clear error and a non-zero exit status.
  assert synthetic.main(['--out', str(tmp_path), '--category', 'synthetic_grid', '--size', '80x64']) == 1
  assert '--overwrite' in capsys.readouterr().err


@pytest.mark.parametrize('category', synthetic.CATEGORIES)
def test_project_reader_agrees_with_manifest(small, category):
  """The project's LOCO reader (tfds_loco.category_scan) accepts the folder and finds the manifest's channels."""
  category_scan = pytest.importorskip('tfds_loco.category_scan')
  scan = category_scan.scan_category(small / category, num_workers=1)
  got = {im.record.image_id: [(c.defect.pixel_value, c.area) for c in im.channels]
         for images in scan.splits.values() for im in images}
  man = _manifest(small, category)
  assert got == {im['id']: [(c['pixel_value'], c['area']) for c in im['channels']] for im in man['images']}


def test_twin_pair_is_the_test_image_and_its_scene_without_the_defect(small):
  """twin_pair's anomalous image is the generated file; its twin differs only at the defect."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  category = 'synthetic_tray'
  recipes = synthetic._FAMILIES[category].logical
  index = next(i for i in range(SMALL['logical']) if recipes[i % len(recipes)] == ('missing_fruit',))
  image, twin, masks = synthetic.twin_pair(category, ('missing_fruit',), index, seed=0, size=SIZE)
  cat = small / category
  np.testing.assert_array_equal(image, np.asarray(Image.open(cat / f'test/logical_anomalies/{index:03d}.png')))
  stored = _masks(cat, next(im for im in _manifest(small, category)['images']
                            if im['id'] == f'test/logical_anomalies/{index:03d}'))
  assert [name for name, _ in masks] == ['missing_fruit']
  np.testing.assert_array_equal(masks[0][1], stored[0] > 0)
  # A fruit that changes kind changes only inside (and at the antialiased rim of) its annotated disc.
  image, twin, masks = synthetic.twin_pair(category, ('wrong_fruit_kind',), 7, seed=0, size=(320, 256))
  changed = (np.asarray(image) != np.asarray(twin)).any(-1)
  assert changed.sum() > 100
  assert not (changed & ~ndimage.binary_dilation(masks[0][1], iterations=2)).any()
  with pytest.raises(ValueError, match='give defect names'):
    synthetic.twin_pair(category, ('no_such_defect',), 0)
