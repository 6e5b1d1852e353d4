"""gcad_jax/predict.py: `python -m gcad_jax.predict` on a trained tiny workdir (docs/method.md §8; issue 4 item 7)."""

import csv
import json

import shutil

import jax
import numpy as np
from PIL import Image
import pytest
import tifffile

from gcad_jax import parallel, predict

CATEGORY = 'synthetic_grid'  # the category of conftest.py's `trained` workdir


def _rows(path):
  with path.open() as f:
    return list(csv.DictReader(f))


def test_cli_writes_a_map_an_overlay_and_a_scores_line_per_image_with_the_validation_threshold(trained, capsys):
  root, tests = trained
  assert jax.device_count() == 8 and parallel.make_mesh().size == 8  # 4 images: padded to 8, masked
  assert predict.main(['--workdir', str(root / 'w'), '--images', str(root / 'images'), '--out',
                       str(root / 'out')]) == 0
  assert 'threshold: quantile 1.0 of 4 validation image scores' in capsys.readouterr().out
  rows = {r['image']: r for r in _rows(root / 'out' / 'scores.csv')}
  assert sorted(rows) == sorted(p.name for p in (root / 'images').iterdir())
  for r in tests:  # the exported test maps of the evaluation, at the image's original size
    name = f'{r.kind}_{r.stem}'
    amap = tifffile.imread(root / 'out' / 'maps' / f'{name}.tiff')
    exported = tifffile.imread(root / 'w' / 'anomaly_maps' / CATEGORY / f'{r.image_id}.tiff')
    assert amap.shape == exported.shape == (64, 96) and amap.dtype == np.float32
    np.testing.assert_allclose(amap, exported, rtol=1e-5, atol=1e-5)
    assert float(rows[f'{name}.png']['score']) == pytest.approx(float(amap.max()), rel=1e-5)
    assert (root / 'out' / 'overlays' / f'{name}.png').stat().st_size > 1000
  saved = json.loads((root / 'w' / predict.THRESHOLD_FILE).read_text())
  assert saved['threshold'] == max(saved['validation_scores'].values()) and saved['num_images'] == 4
  for row in rows.values():
    assert float(row['threshold']) == pytest.approx(saved['threshold'], rel=1e-5)
    assert row['anomalous'] == str(int(float(row['score']) > saved['threshold']))
  assert rows['validation_000.png']['anomalous'] == '0'  # quantile 1.0: no validation image is flagged
  assert float(rows['validation_000.png']['score']) == pytest.approx(
      saved['validation_scores']['validation/good/000'], rel=1e-5)


def test_threshold_none_or_given_and_bad_inputs(trained, tmp_path, capsys):
  root, _ = trained
  args = ['--workdir', str(root / 'w'), '--images', str(root / 'images'), '--out']
  assert predict.main([*args, str(tmp_path / 'a'), '--threshold', 'none']) == 0
  assert list(_rows(tmp_path / 'a' / 'scores.csv')[0]) == ['image', 'score']
  assert predict.main([*args, str(tmp_path / 'b'), '--threshold=-1e9']) == 0
  assert {r['anomalous'] for r in _rows(tmp_path / 'b' / 'scores.csv')} == {'1'}
  assert predict.main([*args, str(tmp_path / 'c'), '--threshold', 'high']) == 2
  assert '--threshold' in capsys.readouterr().err
  assert predict.main(['--workdir', str(tmp_path), '--images', str(root / 'images'), '--out', str(tmp_path)]) == 2
  assert 'config.json is missing' in capsys.readouterr().err
  (tmp_path / 'empty').mkdir()
  assert predict.main([*args[:3], str(tmp_path / 'empty'), '--out', str(tmp_path / 'd')]) == 2
  assert 'no images' in capsys.readouterr().err


def test_choose_threshold_is_a_quantile_of_the_validation_scores():
  assert predict.choose_threshold([1.0, 3.0, 2.0]) == 3.0
  assert predict.choose_threshold([1.0, 2.0, 3.0, 4.0], 0.5) == 3.0  # 'higher': an observed score
  with pytest.raises(ValueError, match='quantile'):
    predict.choose_threshold([1.0], 0.0)


def test_unreadable_and_16_bit_images_get_error_lines_grey_and_rgba_are_converted(trained, tmp_path, capsys):
  """One broken file among the images: its own scores.csv line with the error, the rest scored, exit 1."""
  root, _ = trained
  images = tmp_path / 'images'
  shutil.copytree(root / 'images', images)
  (images / 'broken.png').write_bytes(b'not an image')
  rgb = Image.open(images / 'validation_000.png')
  rgb.convert('L').save(images / 'grey.png')
  rgb.convert('RGBA').save(images / 'rgba.png')
  Image.fromarray(np.full((64, 96), 40000, np.uint16)).save(images / 'deep.png')  # 16-bit grey
  assert predict.main(['--workdir', str(root / 'w'), '--images', str(images), '--out', str(tmp_path / 'o')]) == 1
  err = capsys.readouterr().err
  assert 'broken.png: cannot read the image: UnidentifiedImageError' in err and '2 of 8 images not scored' in err
  rows = {r['image']: r for r in _rows(tmp_path / 'o' / 'scores.csv')}
  assert list(rows['broken.png']) == ['image', 'score', 'threshold', 'anomalous', 'error']
  assert rows['broken.png']['score'] == '' and 'mode I;16 is not converted' in rows['deep.png']['error']
  scored = [name for name, r in rows.items() if not r['error']]
  assert len(scored) == 6 and all(float(rows[n]['score']) > 0 for n in scored)
  assert rows['rgba.png']['score'] == rows['validation_000.png']['score']  # alpha dropped
  assert not (tmp_path / 'o' / 'maps' / 'broken.tiff').exists()
