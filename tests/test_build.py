"""Tests of tfds_loco.build: the build function, the command line, and every bad input (docs/data_format.md §2–§6).

Each bad input must raise a LocoFormatError naming the file, before anything is written.
"""

import importlib.util
import json
import os
import pathlib
import re
import shutil
import struct
import zlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from tfds_loco import build as build_lib
from tfds_loco import layout
from tfds_loco import mvtec_loco

tfds.disable_progress_bar()
_DUMMY = pathlib.Path(mvtec_loco.__file__).parent / 'dummy_data'


def _dummy_writer():
  spec = importlib.util.spec_from_file_location('make_dummy_data', _DUMMY / 'make_dummy_data.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


write_category = _dummy_writer().write_category


def _png(path, width, height, bit_depth, color_type, channels):
  """A valid PNG written by hand (PIL cannot write 16-bit RGB)."""
  def chunk(tag, data):
    return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data))
  row = b'\x00' + bytes(width * channels * bit_depth // 8)
  ihdr = struct.pack('>IIBBBBB', width, height, bit_depth, color_type, 0, 0, 0)
  path.write_bytes(layout.PNG_SIGNATURE + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(row * height))
                   + chunk(b'IEND', b''))


def _save_mask(path, values_by_row):
  mask = np.zeros((32, 48), np.uint8)
  for row, value in enumerate(values_by_row):
    mask[row] = value
  Image.fromarray(mask).save(path)


def _edit_config(cat, index, **changes):
  config = json.loads((cat / 'defects_config.json').read_text())
  config[index].update(changes)
  (cat / 'defects_config.json').write_text(json.dumps(config))


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


# (name, edit of a fresh pushpins category, the file or folder the message must name, what it says)
BAD_INPUTS = [
    ('extra_folder', lambda c: (c / 'test/cracks').mkdir(), 'pushpins/test',
     "unexpected entries \\['cracks'\\]"),
    ('non_png_file', lambda c: (c / 'train/good/notes.txt').write_text('x'), 'train/good/notes.txt',
     'not a .png'),
    ('non_png_in_ground_truth', lambda c: (c / 'ground_truth/logical_anomalies/000/x.jpg').write_text('x'),
     'logical_anomalies/000/x.jpg', 'not a .png'),
    ('extra_ground_truth_kind', lambda c: (c / 'ground_truth/good').mkdir(), 'pushpins/ground_truth',
     "unexpected entries \\['good'\\]"),
    ('image_without_ground_truth', lambda c: shutil.rmtree(c / 'ground_truth/logical_anomalies/001'),
     'ground_truth/logical_anomalies/001', 'is missing'),
    ('ground_truth_without_image',
     lambda c: shutil.copytree(c / 'ground_truth/structural_anomalies/000',
                               c / 'ground_truth/structural_anomalies/005'),
     'ground_truth/structural_anomalies/005', 'has no test image'),
    ('mask_value_not_in_config',
     lambda c: _save_mask(c / 'ground_truth/logical_anomalies/000/000.png', [200]),
     'logical_anomalies/000/000.png', 'pixel value 200, which is not in'),
    ('mask_with_two_values',
     lambda c: _save_mask(c / 'ground_truth/logical_anomalies/001/001.png', [250, 254]),
     'logical_anomalies/001/001.png', 'several positive values'),
    ('empty_mask', lambda c: _save_mask(c / 'ground_truth/structural_anomalies/000/000.png', []),
     'structural_anomalies/000/000.png', 'no positive pixel'),
    ('mask_wrong_size',
     lambda c: Image.new('L', (32, 48), 255).save(c / 'ground_truth/logical_anomalies/000/000.png'),
     'logical_anomalies/000/000.png', 'masks must have the image size'),
    ('mask_rgb',
     lambda c: Image.new('RGB', (48, 32), (255, 0, 0)).save(c / 'ground_truth/logical_anomalies/000/000.png'),
     'logical_anomalies/000/000.png', "mode 'RGB'"),
    ('mask_16_bit', lambda c: _png(c / 'ground_truth/logical_anomalies/000/000.png', 48, 32, 16, 0, 1),
     'logical_anomalies/000/000.png', '16-bit grayscale'),
    ('truncated_image', lambda c: _truncate(c / 'test/good/001.png'), 'test/good/001.png', 'cannot be read'),
    ('not_a_png', lambda c: Image.new('RGB', (48, 32)).save(c / 'validation/good/000.png', format='JPEG'),
     'validation/good/000.png', 'not a PNG file'),
    ('image_16_bit_rgb', lambda c: _png(c / 'train/good/002.png', 48, 32, 16, 2, 3), 'train/good/002.png',
     '16 bits per sample'),
    ('image_grayscale', lambda c: Image.new('L', (48, 32)).save(c / 'test/structural_anomalies/000.png'),
     'test/structural_anomalies/000.png', "mode 'L'"),
    ('image_other_size', lambda c: Image.new('RGB', (40, 32)).save(c / 'train/good/001.png'),
     'train/good/001.png', 'share one size'),
    ('defects_config_missing', lambda c: (c / 'defects_config.json').unlink(), 'pushpins/defects_config.json',
     'is missing'),
    ('defects_config_bad_json', lambda c: (c / 'defects_config.json').write_text('[{"defect_name": '),
     'pushpins/defects_config.json', 'not valid JSON'),
    ('relative_threshold_int', lambda c: _edit_config(c, 0, saturation_threshold=1),
     'pushpins/defects_config.json, entry 0', 'write 1.0, not 1'),
    ('absolute_threshold_float', lambda c: _edit_config(c, 2, saturation_threshold=40.0),
     'pushpins/defects_config.json, entry 2', 'absolute saturation_threshold must be a JSON int'),
    ('duplicate_pixel_value', lambda c: _edit_config(c, 3, pixel_value=255),
     'pushpins/defects_config.json, entry 3', 'pixel_value 255 is already used'),
]


def assert_nothing_built(data_dir, category='pushpins'):
  """No file at all in data_dir, and TFDS does not take the data set as built."""
  assert not pathlib.Path(data_dir).exists() or not any(pathlib.Path(data_dir).rglob('*'))
  builder = tfds.builder(f'mvtec_loco/{category}', data_dir=data_dir)
  assert not builder.is_prepared() and not builder.info.splits
  with pytest.raises(Exception):
    builder.as_data_source('train')


@pytest.mark.parametrize('name,edit,where,says', BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_the_file_and_writes_nothing(tmp_path, name, edit, where, says):
  del name
  edit(write_category(tmp_path / 'manual', 'pushpins'))
  with pytest.raises(layout.LocoFormatError) as error:
    build_lib.build('pushpins', tmp_path / 'manual', tmp_path / 'data')
  message = str(error.value)
  assert where in message and '\n' not in message
  assert re.search(says, message), message
  assert_nothing_built(tmp_path / 'data')


def test_missing_manual_dir(tmp_path):
  with pytest.raises(layout.LocoFormatError, match=f'{tmp_path / "absent"} does not exist'):
    build_lib.build('pushpins', tmp_path / 'absent', tmp_path / 'data')
  assert_nothing_built(tmp_path / 'data')


def test_missing_category(tmp_path):
  write_category(tmp_path / 'manual', 'pushpins')
  with pytest.raises(layout.LocoFormatError, match="'screw_bag' not found .*categories .*: pushpins"):
    build_lib.build('screw_bag', tmp_path / 'manual', tmp_path / 'data')
  assert_nothing_built(tmp_path / 'data', 'screw_bag')


def test_build_then_failed_overwrite_keeps_the_data_set(tmp_path):
  cat = write_category(tmp_path / 'manual', 'pushpins')
  builder = build_lib.build('pushpins', tmp_path / 'manual', tmp_path / 'data')
  counts = {s: i.num_examples for s, i in builder.info.splits.items()}
  assert counts == {'train': 3, 'validation': 2, 'test': 5}
  (cat / 'train/good/003.png').write_bytes(b'broken')
  with pytest.raises(layout.LocoFormatError, match='train/good/003.png'):
    build_lib.build('pushpins', tmp_path / 'manual', tmp_path / 'data', overwrite=True)
  again = tfds.builder('mvtec_loco/pushpins', data_dir=tmp_path / 'data')
  assert len(again.as_data_source('train')) == 3
  (cat / 'train/good/003.png').unlink()
  write_category(tmp_path / 'manual', 'pushpins', train=4)
  rebuilt = build_lib.build('pushpins', tmp_path / 'manual', tmp_path / 'data', overwrite=True)
  assert len(rebuilt.as_data_source('train')) == 4


def test_command_line_builds_and_summarises(tmp_path, capsys):
  args = ['--category', 'juice_bottle', '--manual_dir', str(_DUMMY), '--data_dir', str(tmp_path)]
  assert build_lib.main(args) == 0
  out = capsys.readouterr().out
  for line in ('mvtec_loco/juice_bottle/1.0.0: 4 defect types', 'train          2 examples (good 2)',
               'test           4 examples (good 1, logical_anomalies 1, structural_anomalies 2); '
               'mask channels: logical_anomalies 1, structural_anomalies 3',
               'image size (WxH): 24x40 (7)', 'build time:',
               f'written to: {tmp_path}/mvtec_loco/juice_bottle/1.0.0 (array_record)'):
    assert line in out, out
  assert build_lib.main(args) == 0
  assert 'already built' in capsys.readouterr().out


def test_command_line_bad_input_is_one_line(tmp_path, capsys):
  cat = write_category(tmp_path / 'manual', 'my_product')
  _save_mask(cat / 'ground_truth/logical_anomalies/000/000.png', [7])
  assert build_lib.main(['--category', 'my_product', '--manual_dir', str(tmp_path / 'manual'),
                         '--data_dir', str(tmp_path / 'data')]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and '000/000.png has pixel value 7' in err[0]
  assert not (tmp_path / 'data').exists()


def test_quiet_build_and_reuse_without_manual_dir(tmp_path, capsys):
  """As the input pipeline calls it: quiet, and a built data set needs no manual_dir."""
  write_category(tmp_path / 'manual', 'synthetic_tray', (64, 48), train=2)
  capsys.readouterr()
  builder = build_lib.build('synthetic_tray', tmp_path / 'manual', tmp_path / 'data', quiet=True)
  assert capsys.readouterr() == ('', '')
  again = build_lib.build('synthetic_tray', None, tmp_path / 'data', quiet=True)
  assert again.data_dir == builder.data_dir and len(again.as_data_source('train')) == 2
  with pytest.raises(layout.LocoFormatError, match='manual_dir .*downloads/manual does not exist'):
    build_lib.build('synthetic_grid', None, tmp_path / 'data')


def _train_ids(builder):
  return sorted(ex['image_id'].decode() for ex in builder.as_data_source('train'))


def test_a_build_from_another_folder_is_rebuilt_and_names_both(tmp_path, caplog):
  """TFDS keys a build by category name alone: a second folder of the same name must not reuse it."""
  folder_a = write_category(tmp_path / 'a', 'pushpins', train=3)
  folder_b = write_category(tmp_path / 'b', 'pushpins', train=4, seed=1)
  built = build_lib.build('pushpins', tmp_path / 'a', tmp_path / 'data', quiet=True)
  assert built.info.metadata['source']['folder'] == str(folder_a.resolve())
  assert built.stale_reason(tmp_path / 'a') is None
  with caplog.at_level('WARNING'):
    rebuilt = build_lib.build('pushpins', tmp_path / 'b', tmp_path / 'data', quiet=True)
  assert len(rebuilt.as_data_source('train')) == 4
  first = rebuilt.as_data_source('train')[0]['image']
  np.testing.assert_array_equal(first, np.asarray(Image.open(folder_b / 'train/good/000.png')))
  warning = next(r.getMessage() for r in caplog.records if 'rebuilding' in r.getMessage())
  assert str(folder_a.resolve()) in warning and str(folder_b.resolve()) in warning
  again = tfds.builder('mvtec_loco/pushpins', data_dir=tmp_path / 'data')  # as read back from disk
  assert again.info.metadata['source']['folder'] == str(folder_b.resolve())
  assert 'not from' in again.stale_reason(tmp_path / 'a')


def test_changed_files_in_the_same_folder_are_detected(tmp_path):
  cat = write_category(tmp_path / 'manual', 'pushpins', train=3)
  builder = build_lib.build('pushpins', tmp_path / 'manual', tmp_path / 'data', quiet=True)
  mask = cat / 'ground_truth/logical_anomalies/000/000.png'
  stat = mask.stat()
  os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: a mask fixed in place
  assert 'changed since it was built (15 files then, 15 now' in builder.stale_reason(tmp_path / 'manual')
  builder = build_lib.build('pushpins', tmp_path / 'manual', tmp_path / 'data', quiet=True)
  assert builder.stale_reason(tmp_path / 'manual') is None
  shutil.copy(cat / 'train/good/000.png', cat / 'train/good/003.png')  # an image added
  assert 'changed since it was built (15 files then, 16 now' in builder.stale_reason(tmp_path / 'manual')
  builder = build_lib.build('pushpins', tmp_path / 'manual', tmp_path / 'data', quiet=True)
  assert _train_ids(builder) == [f'train/good/00{i}' for i in range(4)]
  (cat / '.DS_Store').write_text('x')  # hidden files are not part of the data set
  assert builder.stale_reason(tmp_path / 'manual') is None


def test_an_unchanged_folder_is_reused_not_rebuilt(tmp_path, monkeypatch):
  write_category(tmp_path / 'manual', 'pushpins')
  build_lib.build('pushpins', tmp_path / 'manual', tmp_path / 'data', quiet=True)

  def no_scan(*args):
    raise AssertionError('rebuilt although nothing changed')

  monkeypatch.setattr(mvtec_loco.mvtec_loco_dataset_builder, 'scan_manual_dir', no_scan)
  assert len(build_lib.build('pushpins', tmp_path / 'manual', tmp_path / 'data').as_data_source('test')) == 5


def test_a_build_that_records_no_source_is_rebuilt(tmp_path):
  """Builds written before the source was recorded cannot be matched to a folder: rebuilt once."""
  write_category(tmp_path / 'manual', 'pushpins')
  builder = build_lib.build('pushpins', tmp_path / 'manual', tmp_path / 'data', quiet=True)
  metadata = builder.data_path / 'metadata.json'
  recorded = json.loads(metadata.read_text())
  metadata.write_text(json.dumps({k: v for k, v in recorded.items() if k != 'source'}))
  old = tfds.builder('mvtec_loco/pushpins', data_dir=tmp_path / 'data')
  assert 'records no source folder' in old.stale_reason(tmp_path / 'manual')
  rebuilt = build_lib.build('pushpins', tmp_path / 'manual', tmp_path / 'data', quiet=True)
  assert rebuilt.info.metadata['source'] == recorded['source']


def test_command_line_rebuilds_from_another_folder(tmp_path, capsys):
  write_category(tmp_path / 'a', 'my_product', train=3)
  write_category(tmp_path / 'b', 'my_product', train=4)
  args = ['--category', 'my_product', '--data_dir', str(tmp_path / 'data'), '--manual_dir']
  assert build_lib.main(args + [str(tmp_path / 'a')]) == 0
  capsys.readouterr()
  assert build_lib.main(args + [str(tmp_path / 'b')]) == 0
  out = capsys.readouterr().out
  assert f'it was built from {(tmp_path / "a").resolve()}/my_product, not from' in out, out
  assert 'train          4 examples' in out and 'already built' not in out


def test_a_quiet_build_leaves_no_log_handler_on_its_closed_sink(tmp_path, monkeypatch):
  """A library's logging.basicConfig() inside the quiet window must not leave a root handler writing to the
  closed sink (the demo printed "Logging error ... I/O operation on closed file" for every later line)."""
  import logging  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(logging.root, 'handlers', [])  # as in a plain script: basicConfig() then adds one
  write_category(tmp_path / 'manual', 'synthetic_tray', (64, 48), train=2)
  build_lib.build('synthetic_tray', tmp_path / 'manual', tmp_path / 'data', quiet=True)
  assert not [h for h in logging.root.handlers if getattr(getattr(h, 'stream', None), 'closed', False)]
