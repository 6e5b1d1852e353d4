"""Tests of the mvtec_ad TFDS builder on generated dummy data (docs/method.md §10.2): Table 4 labels, grey
images, the held-out validation split, the archive, and errors naming the file."""

import importlib.util
import pathlib
import tarfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from tfds_loco import categories
from tfds_loco import layout
from tfds_loco import mvtec_ad
from tfds_loco.mvtec_ad import mvtec_ad_dataset_builder as adb

DUMMY = pathlib.Path(__file__).parent / 'dummy_data'
tfds.disable_progress_bar()


def _dummy_module():
  spec = importlib.util.spec_from_file_location('make_ad_dummy_data', DUMMY / 'make_dummy_data.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


write_category = _dummy_module().write_category

try:  # tfds.testing needs `dill`
  import dill  # pylint: disable=unused-import
  from tensorflow_datasets import testing as tfds_testing
except ImportError:
  tfds_testing = None

if tfds_testing is not None:

  class MvtecAdTest(tfds_testing.DatasetBuilderTestCase):
    """The standard TFDS builder checks on dummy_data: 10 train/good, 1 held out for validation."""
    DATASET_CLASS = mvtec_ad.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ['cable']
    SPLITS = {'train': 9, 'validation': 1, 'test': 10}

    def _make_builder(self, config=None):
      return self.DATASET_CLASS(data_dir=self.tmp_dir, config=config, version=self.VERSION,
                                manual_dir=self.dummy_data)


def test_table4_is_the_papers_logical_split():
  assert categories.MVTEC_AD_LOGICAL == {
      'cable': ('cable_swap', 'combined/005', 'combined/007', 'combined/009'),
      'capsule': ('faulty_imprint/004', 'faulty_imprint/005'),
      'transistor': ('cut_lead', 'misplaced'),
  }
  # 37 logical images: cable_swap 12, cut_lead 10 and misplaced 10 in MVTec AD, plus five single images.
  folder_sizes = {'cable_swap': 12, 'cut_lead': 10, 'misplaced': 10}
  total = sum(folder_sizes.get(e, 1) for entries in categories.MVTEC_AD_LOGICAL.values() for e in entries)
  assert total == 37
  assert len(categories.MVTEC_AD_CATEGORIES) == 15 and set(categories.MVTEC_AD_LOGICAL) <= set(
      categories.MVTEC_AD_CATEGORIES)


def _build(tmp_path, category, manual_dir=DUMMY, **kwargs):
  builder = mvtec_ad.builder_for(category, manual_dir=manual_dir, data_dir=tmp_path / 'tfds', **kwargs)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _text(value):
  return value.decode() if isinstance(value, bytes) else value


def _examples(builder, split):
  """The examples of a split, text fields as str."""
  source = builder.as_data_source(split)
  out = []
  for i in range(len(source)):
    example = dict(source[i])
    example['image_id'] = _text(example['image_id'])
    example['masks'] = dict(example['masks'], defect_name=[_text(n) for n in example['masks']['defect_name']])
    out.append(example)
  return out


def test_labels_follow_table4_and_masks_are_stored(tmp_path):
  builder = _build(tmp_path, 'cable')
  labels = builder.info.features['label'].names
  test = {e['image_id']: e for e in _examples(builder, 'test')}
  kinds = {i: labels[int(e['label'])] for i, e in test.items()}
  assert kinds['test/cable_swap/000'] == 'logical_anomalies'
  assert kinds['test/combined/005'] == 'logical_anomalies'
  assert kinds['test/combined/000'] == kinds['test/bent_wire/000'] == 'structural_anomalies'
  assert kinds['test/good/000'] == 'good'
  mask = test['test/combined/001']['masks']
  np.testing.assert_array_equal(np.asarray(mask['mask'][0])[..., 0],
                                np.asarray(Image.open(DUMMY / 'cable/ground_truth/combined/001_mask.png')))
  assert mask['defect_name'] == ['combined'] and mask['saturation_threshold'] == [1.0]
  assert test['test/good/000']['masks']['pixel_value'] == []
  image = np.asarray(test['test/bent_wire/000']['image'])
  np.testing.assert_array_equal(image, np.asarray(Image.open(DUMMY / 'cable/test/bent_wire/000.png')))


def test_grey_images_are_rgb_and_validation_is_a_deterministic_tenth_of_train(tmp_path):
  builder = _build(tmp_path, 'grid')
  train, val = _examples(builder, 'train'), _examples(builder, 'validation')
  assert len(train) == 9 and len(val) == 1
  ids = {e['image_id'] for e in train} | {e['image_id'] for e in val}
  assert ids == {f'train/good/{i:03d}' for i in range(10)}
  image = np.asarray(val[0]['image'])
  grey = np.asarray(Image.open(DUMMY / 'grid' / (val[0]['image_id'] + '.png')))
  assert image.shape == grey.shape + (3,) and all(np.array_equal(image[..., c], grey) for c in range(3))
  again = _build(tmp_path / 'again', 'grid')
  assert [e['image_id'] for e in _examples(again, 'validation')] == [e['image_id'] for e in val]
  assert builder.info.metadata['source']['val_fraction'] == 0.1


def test_a_changed_val_fraction_rebuilds(tmp_path):
  _build(tmp_path, 'grid')
  builder = _build(tmp_path, 'grid', val_fraction=0.3)
  assert len(_examples(builder, 'validation')) == 3


def _copy(tmp_path, name='cable'):
  return write_category(tmp_path / 'data', name, tests={'good': 1, 'crack': 2})


@pytest.mark.parametrize('damage, message', [
    (lambda c: (c / 'ground_truth/crack/001_mask.png').unlink(), 'image without mask: .*test/crack/001.png'),
    (lambda c: (c / 'test/crack/001.png').unlink(), 'mask without image: .*ground_truth/crack/001_mask.png'),
    (lambda c: Image.new('L', (7, 5)).save(c / 'ground_truth/crack/000_mask.png'),
     'size mismatch: .*ground_truth/crack/000_mask.png is 7x5'),
    (lambda c: (c / 'train/good/003.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 40),
     'train/good/003.png'),
])
def test_bad_input_is_refused_naming_the_file(tmp_path, damage, message):
  cat = _copy(tmp_path)
  damage(cat)
  with pytest.raises(layout.LocoFormatError, match=message):
    _build(tmp_path, 'cable', manual_dir=tmp_path / 'data')
  assert not (tmp_path / 'tfds' / 'mvtec_ad' / 'cable').exists()


def _archive(tmp_path, names):
  src = tmp_path / 'src'
  for seed, name in enumerate(names):
    write_category(src, name, size=(8, 8), train=2, tests={'good': 1, 'crack': 1}, seed=seed)
  manual = tmp_path / 'manual'
  manual.mkdir()
  with tarfile.open(manual / adb.ARCHIVE_NAME, 'w:xz') as tar:
    for name in names:
      tar.add(src / name, arcname=name)
  return manual


def test_the_archive_is_extracted_and_verified_by_its_structure(tmp_path):
  manual = _archive(tmp_path, categories.MVTEC_AD_CATEGORIES)
  builder = _build(tmp_path, 'bottle', manual_dir=manual)
  assert len(_examples(builder, 'test')) == 2
  assert (manual / adb.EXTRACTED_NAME / 'zipper' / 'train').is_dir()


def test_an_incomplete_archive_is_refused_naming_it(tmp_path):
  manual = _archive(tmp_path, categories.MVTEC_AD_CATEGORIES[:3])
  with pytest.raises(mvtec_ad.ArchiveError, match=f'{adb.ARCHIVE_NAME} is not a complete MVTec AD archive: carpet'):
    _build(tmp_path, 'bottle', manual_dir=manual)
  assert not (manual / adb.EXTRACTED_NAME).exists()


def test_a_folder_without_masks_builds_with_its_logical_list(tmp_path):
  write_category(tmp_path / 'data', 'my_part', tests={'good': 1, 'scratch': 1, 'wrong_label': 1}, masks=False,
                 validation=2)
  builder = _build(tmp_path, 'my_part', manual_dir=tmp_path / 'data', dataset_format='folder',
                   logical=('wrong_label',))
  labels = builder.info.features['label'].names
  kinds = {e['image_id']: labels[int(e['label'])] for e in _examples(builder, 'test')}
  assert kinds == {'test/good/000': 'good', 'test/scratch/000': 'structural_anomalies',
                   'test/wrong_label/000': 'logical_anomalies'}
  assert [e['image_id'] for e in _examples(builder, 'validation')] == ['validation/good/000', 'validation/good/001']
  assert len(_examples(builder, 'train')) == 10
