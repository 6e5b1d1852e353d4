"""Tests of the mvtec_loco TFDS builder against files read independently with PIL (docs/data_format.md §12)."""

import importlib.util
import json
import pathlib
import tarfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from tfds_loco import layout
from tfds_loco import mvtec_loco
from tfds_loco.mvtec_loco import mvtec_loco_dataset_builder as mlb

DUMMY = pathlib.Path(__file__).parent / 'dummy_data'
KINDS = ('good', 'logical_anomalies', 'structural_anomalies')
tfds.disable_progress_bar()


def _dummy_writer():
  spec = importlib.util.spec_from_file_location('make_dummy_data', DUMMY / 'make_dummy_data.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


write_category = _dummy_writer().write_category


try:  # tfds.testing needs `dill` (tensorflow-datasets[tests-all]); the tests below do not.
  import dill  # pylint: disable=unused-import
  from tensorflow_datasets import testing as tfds_testing
except ImportError:
  tfds_testing = None

if tfds_testing is not None:

  class MvtecLocoTest(tfds_testing.DatasetBuilderTestCase):
    """The standard TFDS builder checks (registration, info, build, as_dataset, reload) on dummy_data."""
    DATASET_CLASS = mvtec_loco.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ['pushpins']
    SPLITS = {'train': 3, 'validation': 2, 'test': 5}

    def _make_builder(self, config=None):
      return self.DATASET_CLASS(data_dir=self.tmp_dir, config=config, version=self.VERSION,
                                manual_dir=self.dummy_data)


def test_builder_is_registered():
  assert 'mvtec_loco' in tfds.list_builders(with_community_datasets=False)
  assert tfds.builder_cls('mvtec_loco') is mvtec_loco.Builder


def expected_examples(cat_dir):
  """What the data set must hold, read with PIL and json only: {split: [example, ...]} in file order."""
  cat_dir = pathlib.Path(cat_dir)
  config = {d['pixel_value']: d for d in json.loads((cat_dir / 'defects_config.json').read_text())}
  out = {}
  for split in ('train', 'validation', 'test'):
    out[split] = []
    for kind in KINDS:
      for path in sorted((cat_dir / split / kind).glob('*.png')):
        masks = []
        if kind != 'good':
          for mask_path in sorted((cat_dir / 'ground_truth' / kind / path.stem).glob('*.png')):
            mask = np.asarray(Image.open(mask_path))
            value = int(mask.max())
            masks.append({'mask': mask, 'pixel_value': value, **{k: config[value][k] for k in (
                'defect_name', 'saturation_threshold', 'relative_saturation')}})
        out[split].append({'image_id': f'{split}/{kind}/{path.stem}', 'label': KINDS.index(kind),
                           'image': np.asarray(Image.open(path).convert('RGB')), 'masks': masks})
  return out


def assert_matches(builder, cat_dir):
  """Every split, example and mask of the built data set equals the files (raw mask values kept)."""
  expected = expected_examples(cat_dir)
  assert set(builder.info.splits) == set(expected)
  for split, examples in expected.items():
    source = builder.as_data_source(split)
    assert len(source) == len(examples) == builder.info.splits[split].num_examples
    for i, want in enumerate(examples):
      got = source[i]
      assert got['image_id'].decode() == want['image_id']
      assert got['label'] == want['label']
      assert got['image'].dtype == np.uint8 and got['image'].shape[2] == 3
      np.testing.assert_array_equal(got['image'], want['image'])
      masks = got['masks']
      assert len(masks['mask']) == len(want['masks'])
      for j, m in enumerate(want['masks']):
        assert masks['mask'][j].shape == m['mask'].shape + (1,)
        np.testing.assert_array_equal(masks['mask'][j][..., 0], m['mask'])
        assert masks['pixel_value'][j] == m['pixel_value']
        assert masks['defect_name'][j].decode() == m['defect_name']
        assert masks['saturation_threshold'][j] == m['saturation_threshold']
        assert bool(masks['relative_saturation'][j]) == m['relative_saturation']


def _prepare(category, manual_dir, data_dir):
  builder = mvtec_loco.builder_for(category, manual_dir=manual_dir, data_dir=data_dir)
  builder.download_and_prepare()
  return builder


@pytest.fixture(scope='module')
def pushpins(tmp_path_factory):
  return _prepare('pushpins', DUMMY, tmp_path_factory.mktemp('data'))


def test_dummy_pushpins_matches_files(pushpins):
  assert_matches(pushpins, DUMMY / 'pushpins')
  assert pushpins.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  test = pushpins.as_data_source('test')
  ids = [test[i]['image_id'].decode() for i in range(len(test))]
  assert ids == ['test/good/000', 'test/good/001', 'test/logical_anomalies/000',
                 'test/logical_anomalies/001', 'test/structural_anomalies/000']
  # Two overlapping channels of one image stay two masks with their own raw values (§5).
  masks = test[3]['masks']
  assert list(masks['pixel_value']) == [254, 250]
  assert np.logical_and(masks['mask'][0] == 254, masks['mask'][1] == 250).any()
  assert [bool(r) for r in masks['relative_saturation']] == [True, False]
  assert list(masks['saturation_threshold']) == [0.5, 40.0]


def test_image_size_non_square(pushpins):
  image = pushpins.as_data_source('train')[0]['image']
  assert image.shape == (32, 48, 3)  # (H, W, 3) of a 48x32 (WxH) image
  assert pushpins.info.metadata['image_size'] == {'width': 48, 'height': 32}


def test_metadata_holds_category_and_raw_defects_config(pushpins):
  metadata = tfds.builder('mvtec_loco/pushpins', data_dir=pushpins.data_dir_root).info.metadata
  assert metadata['category'] == 'pushpins'
  assert metadata['defects_config'] == json.loads((DUMMY / 'pushpins/defects_config.json').read_text())


def test_features_spec(pushpins):
  features = pushpins.info.features
  assert features['label'].names == list(KINDS)
  assert features['image'].shape == (None, None, 3) and features['image'].np_dtype == np.uint8
  masks = features['masks'].feature
  assert masks['mask'].shape == (None, None, 1)
  assert {k: masks[k].np_dtype for k in ('pixel_value', 'saturation_threshold', 'relative_saturation')} == {
      'pixel_value': np.int32, 'saturation_threshold': np.float64, 'relative_saturation': np.bool_}


def test_tfds_load_portrait_category(tmp_path):
  """tfds.load builds from a manual_dir and reads through tf.data, as TFDS users expect."""
  config = tfds.download.DownloadConfig(manual_dir=DUMMY)
  ds = tfds.load('mvtec_loco/juice_bottle', split='test', data_dir=tmp_path,
                 download_and_prepare_kwargs={'download_config': config})
  examples = list(tfds.as_numpy(ds))
  want = expected_examples(DUMMY / 'juice_bottle')['test']
  assert [e['image_id'].decode() for e in examples] == [w['image_id'] for w in want]
  for got, w in zip(examples, want):
    assert got['image'].shape == (40, 24, 3)
    np.testing.assert_array_equal(got['image'], w['image'])
    # tf.data gives an empty mask sequence the shape (0, 0, 0, 1).
    assert got['masks']['mask'].shape == ((len(w['masks']), 40, 24, 1) if w['masks'] else (0, 0, 0, 1))
    for j, m in enumerate(w['masks']):
      np.testing.assert_array_equal(got['masks']['mask'][j, ..., 0], m['mask'])
  assert_matches(tfds.builder('mvtec_loco/juice_bottle', data_dir=tmp_path), DUMMY / 'juice_bottle')


def test_user_category_other_size_without_logical_anomalies(tmp_path):
  """A folder never seen: a user's name, another size, no logical_anomalies folder at all."""
  cat = write_category(tmp_path / 'manual', 'my_widget-v2', (40, 56), logical=(),
                       structural=((236,), (255, 236)), seed=7)
  config = tfds.download.DownloadConfig(manual_dir=tmp_path / 'manual')
  tfds.load('mvtec_loco/my_widget-v2', split='train', data_dir=tmp_path / 'data',
            download_and_prepare_kwargs={'download_config': config})
  builder = tfds.builder('mvtec_loco/my_widget-v2', data_dir=tmp_path / 'data')  # read from files
  assert_matches(builder, cat)
  test = builder.as_data_source('test')
  assert sorted({int(test[i]['label']) for i in range(len(test))}) == [0, 2]
  assert test[0]['image'].shape == (56, 40, 3)
  assert builder.info.metadata['category'] == 'my_widget-v2'


def test_synthetic_config_name_reads_any_scene(tmp_path):
  cat = write_category(tmp_path, 'synthetic_grid', (64, 48), train=1, validation=1, good=1,
                       logical=((250,), (255, 254, 250)), structural=(), seed=3)
  builder = tfds.builder('mvtec_loco/synthetic_grid', data_dir=tmp_path / 'data')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=tmp_path))
  assert_matches(builder, cat)
  assert builder.as_data_source('test')[2]['masks']['pixel_value'] == [255, 254, 250]


def test_rgba_images_are_stored_as_rgb(tmp_path):
  cat = write_category(tmp_path, 'rgba_cat', train=1, validation=1, good=1, logical=((255,),),
                       structural=())
  path = cat / 'test/logical_anomalies/000.png'
  Image.open(path).convert('RGBA').save(path)
  builder = _prepare('rgba_cat', tmp_path, tmp_path / 'data')
  assert_matches(builder, cat)


def test_synthetic_scene_matches_its_manifest(tmp_path):
  synthetic = pytest.importorskip('tfds_loco.synthetic')
  counts = {'train': 2, 'validation': 1, 'good': 1, 'logical': 3, 'structural': 2}
  cat = synthetic.generate(tmp_path / 'manual', 'synthetic_tray', seed=0, size=(96, 64), counts=counts)
  manifest = json.loads((tmp_path / 'manual' / 'synthetic_tray.manifest.json').read_text())
  builder = tfds.builder('mvtec_loco/synthetic_tray', data_dir=tmp_path / 'data')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=tmp_path / 'manual'))
  got = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    for i in range(len(source)):
      got[source[i]['image_id'].decode()] = source[i]
  assert sorted(got) == sorted(im['id'] for im in manifest['images'])
  for im in manifest['images']:
    example = got[im['id']]
    assert KINDS[example['label']] == im['label']
    assert example['image'].shape == (im['height'], im['width'], 3)
    masks = example['masks']
    assert len(masks['mask']) == len(im['channels'])
    for j, channel in enumerate(im['channels']):
      assert masks['pixel_value'][j] == channel['pixel_value']
      assert masks['defect_name'][j].decode() == channel['defect_name']
      assert int(np.count_nonzero(masks['mask'][j])) == channel['area']
      assert set(np.unique(masks['mask'][j])) == {0, channel['pixel_value']}
  assert_matches(builder, cat)


def test_archive_is_verified_and_extracted(tmp_path, monkeypatch):
  write_category(tmp_path / 'src', 'pushpins', train=1, validation=1, good=1, logical=((255,),),
                 structural=())
  manual = tmp_path / 'manual'
  manual.mkdir()
  archive = manual / mvtec_loco.ARCHIVE_NAME
  with tarfile.open(archive, 'w:xz') as tar:
    tar.add(tmp_path / 'src' / 'pushpins', arcname='pushpins')
  monkeypatch.setattr(mlb, 'ARCHIVE_SHA256', mlb.sha256(archive))
  builder = _prepare('pushpins', manual, tmp_path / 'data')
  assert builder.info.splits['test'].num_examples == 2
  assert (manual / mlb.EXTRACTED_NAME / 'pushpins' / 'defects_config.json').is_file()
  assert [p.name for p in manual.iterdir() if p.name.startswith('.')] == []


def test_archive_with_wrong_checksum_is_refused(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / mvtec_loco.ARCHIVE_NAME).write_bytes(b'not the archive')
  with pytest.raises(mvtec_loco.ArchiveError, match=mvtec_loco.ARCHIVE_NAME + '.*SHA-256'):
    _prepare('pushpins', manual, tmp_path / 'data')
  assert sorted(p.name for p in manual.iterdir()) == [mvtec_loco.ARCHIVE_NAME]
  assert not (tmp_path / 'data').exists()


def test_failure_while_writing_leaves_no_data_set(tmp_path, monkeypatch):
  """TFDS writes into incomplete.* and renames at the end: a failure mid-way leaves nothing readable."""
  original = mvtec_loco.Builder._generate_examples

  def failing(self, images):
    yield from list(original(self, images))[:1]
    raise RuntimeError('disk full')

  monkeypatch.setattr(mvtec_loco.Builder, '_generate_examples', failing)
  with pytest.raises(RuntimeError, match='disk full'):
    _prepare('pushpins', DUMMY, tmp_path)
  assert list((tmp_path / 'mvtec_loco' / 'pushpins').iterdir()) == []  # no 1.0.0/, no incomplete.*
  builder = tfds.builder('mvtec_loco/pushpins', data_dir=tmp_path)
  assert not builder.is_prepared() and not builder.info.splits
  with pytest.raises(Exception):
    builder.as_data_source('test')


def test_checksums_and_instructions_name_the_archive():
  infos = tfds.core.download.checksums.load_url_infos(DUMMY.parent / 'checksums.tsv')
  (info,) = infos.values()
  assert info.checksum == mvtec_loco.ARCHIVE_SHA256 and info.filename == mvtec_loco.ARCHIVE_NAME
  assert mvtec_loco.ARCHIVE_NAME in mvtec_loco.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert mvtec_loco.ARCHIVE_SHA256 in mvtec_loco.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_one_config_per_category():
  names = set(mvtec_loco.Builder.builder_configs)
  assert names == set(mvtec_loco.LOCO_CATEGORIES) | set(mvtec_loco.SYNTHETIC_CATEGORIES)
  assert mvtec_loco.builder_for('any_product', data_dir='/nonexistent').builder_config.name == 'any_product'
  with pytest.raises(layout.LocoFormatError, match='my product'):
    mvtec_loco.builder_for('my product')
