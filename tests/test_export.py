"""gcad_jax/export.py, export_formats.py, exported.py: a trained tiny workdir exported (docs/deploy.md; issue 27).

Parity: every format's maps and scores equal `gcad_jax.load(W).score` within 1e-4 and its flags are identical,
each format loaded in a fresh process, at the network size (64²) and at the fixture images' own 64×96, where
the input resize must give every runtime the same grey levels (input_pipeline.resize_to_grey_levels;
docs/deploy.md, "Parity").
"""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tifffile

import gcad_jax
from gcad_jax import export, exported, predict

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORMATS = ('stablehlo', 'onnx', 'saved_model')
# Runs in a fresh process: loads one format and scores the saved images; fails if the loader pulled in the
# training stack (flax, TFDS, gcad_jax.train) or, for stablehlo, TensorFlow.
_SCORE = """
import sys, numpy as np, gcad_jax
fmt, folder, images, out = sys.argv[1:]
model = gcad_jax.load_exported(folder, fmt)
res = model.serve(np.load(images))
banned = ['flax', 'tensorflow_datasets', 'gcad_jax.train', 'gcad_jax.predict', 'optax', 'orbax']
banned += ['tensorflow'] if fmt != 'saved_model' else []
loaded = [m for m in banned if m in sys.modules]
assert not loaded, f'{fmt} loader imported {loaded}'
np.savez(out, **res)
"""


def _crops(root):
  """The fixture's four images cropped to the network size (64, 64), uint8 RGB."""
  paths = sorted((root / 'images').iterdir())
  return np.stack([exported.read_image(p)[:64, :64] for p in paths])


@pytest.fixture(scope='module')
def exports(trained, tmp_path_factory):
  root, _ = trained
  out = tmp_path_factory.mktemp('export')
  model = gcad_jax.load(root / 'w')
  dynamic = export.export(root / 'w', out / 'dynamic', formats=FORMATS, model=model)
  export.export(root / 'w', out / 'b3', image_size=(64, 96), batch=3, model=model, formats=FORMATS,
                platforms=('cpu', 'cuda'))  # the images' own size; lowered for a GPU too, run here on the CPU
  images = _crops(root)
  np.save(out / 'dynamic.npy', images)
  np.save(out / 'b3.npy', np.stack([exported.read_image(p) for p in sorted((root / 'images').iterdir())])[:3])
  return root, out, model, images, dynamic


def _run_fresh(fmt, folder, images_npy, out):
  env = dict(os.environ, XLA_FLAGS='', PYTHONPATH=str(ROOT))
  subprocess.run([sys.executable, '-c', _SCORE, fmt, str(folder), str(images_npy), str(out)], cwd=ROOT, env=env,
                 check=True, timeout=300)
  return dict(np.load(out))


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('export_name', ('dynamic', 'b3'))
def test_each_format_in_a_fresh_process_equals_load_score(exports, fmt, export_name, tmp_path):
  """'dynamic': 64² crops, dynamic batch; 'b3': three 64×96 images, --image_size 64,96 --batch 3."""
  root, out, model, _, manifest = exports
  images = np.load(out / f'{export_name}.npy')
  maps, scores = model.score(images)
  threshold = manifest['threshold']['value']
  got = _run_fresh(fmt, out / export_name, out / f'{export_name}.npy', tmp_path / 'res.npz')
  assert got['maps'].shape == images.shape[:3] and got['maps'].dtype == np.float32
  diff = np.abs(got['maps'] - np.stack(maps)).max()
  print(f'{fmt}, {export_name} {images.shape[1:3]}: max |maps - load(W).score| = {diff:.3g}')
  assert diff <= 1e-4
  np.testing.assert_allclose(got['scores'], scores, rtol=0, atol=1e-4)
  np.testing.assert_array_equal(got['flags'], np.asarray(scores) > threshold)
  assert float(got['threshold']) == pytest.approx(threshold, rel=1e-7)


def test_manifest_holds_spec_threshold_provenance_versions_and_checksums(exports):
  _, out, model, _, manifest = exports
  saved = json.loads((out / 'dynamic' / exported.MANIFEST).read_text())
  assert saved == json.loads(json.dumps(manifest))
  assert saved['input']['shape'] == [None, 64, 64, 3] and saved['input']['dtype'] == 'uint8'
  chosen = model.validation_threshold(save=False)  # the same choice as gcad_jax.predict's
  assert saved['threshold']['value'] == chosen['threshold'] and saved['threshold']['quantile'] == 1.0
  assert saved['scales'] == [17] and saved['score']['fusion'] == 'sum'
  assert saved['config']['dataset']['category'] == 'synthetic_grid'
  assert saved['provenance']['checkpoint_steps'] == {'17': 1} and saved['provenance']['training']['seed'] == 0
  assert {'jax', 'gcad_jax', 'numpy'} <= set(saved['packages'])
  assert set(saved['formats']) == set(FORMATS) and saved['formats']['stablehlo']['batch'] == 'dynamic'
  assert saved['formats']['saved_model']['batch'] == saved['formats']['onnx']['batch'] == 'dynamic'
  for name, digest in saved['files'].items():
    assert exported.sha256(out / 'dynamic' / name) == digest


@pytest.mark.parametrize('fmt', ('stablehlo', 'onnx'))
def test_fixed_batch_and_other_input_size_in_process(exports, fmt):
  """--batch 3 (padded and split) and a 64×96 input (the fixture images' own size)."""
  root, out, model, _, _ = exports
  loaded = gcad_jax.load_exported(out / 'b3', fmt)
  assert loaded.batch == 3 and loaded.image_size == (64, 96)
  assert loaded.manifest['formats']['stablehlo']['platforms'] == ['cpu', 'cuda']
  images = [exported.read_image(p) for p in sorted((root / 'images').iterdir())]
  maps, scores = model.score(images)
  got_maps, got_scores = loaded.score(images)  # 4 images: a batch of 3 and a padded one
  assert np.abs(np.stack(got_maps) - np.stack(maps)).max() <= 1e-4
  np.testing.assert_allclose(got_scores, scores, atol=1e-4)
  with pytest.raises(ValueError, match=r'takes uint8 \(N, 64, 96, 3\).*--image_size'):
    loaded.serve(np.zeros((1, 64, 64, 3), np.uint8))


def test_altered_files_and_other_versions_are_refused(exports, tmp_path):
  _, out, _, _, _ = exports
  folder = tmp_path / 'copy'
  shutil.copytree(out / 'dynamic', folder)
  data = bytearray((folder / 'model.stablehlo').read_bytes())
  data[-1] ^= 1
  (folder / 'model.stablehlo').write_bytes(bytes(data))
  with pytest.raises(exported.ExportError, match='model.stablehlo does not match its SHA-256'):
    gcad_jax.load_exported(folder)
  manifest = json.loads((folder / exported.MANIFEST).read_text())
  manifest['format_version'] = exported.FORMAT_VERSION + 1
  (folder / exported.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(exported.ExportError, match='export format version 2.*export the workdir again'):
    gcad_jax.load_exported(folder)
  with pytest.raises(exported.ExportError, match='not a gcad_jax export'):
    gcad_jax.load_exported(tmp_path)


def test_bad_arguments_are_clear_errors(trained, tmp_path, capsys):
  root, _ = trained
  args = ['--workdir', str(root / 'w'), '--out', str(tmp_path / 'e')]
  assert export.main([*args, '--formats', 'tflite']) == 2
  assert "['tflite'] not among" in capsys.readouterr().err
  assert export.main([*args, '--image_size', '64x64']) == 2
  assert 'give H,W' in capsys.readouterr().err
  assert export.main(['--workdir', str(tmp_path), '--out', str(tmp_path / 'e')]) == 2
  assert 'config.json is missing' in capsys.readouterr().err


def _rows(path):
  with path.open() as f:
    return {r['image']: r for r in csv.DictReader(f)}


def test_predict_exported_writes_what_predict_workdir_writes(exports, tmp_path, capsys):
  root, out, _, _, _ = exports
  images = tmp_path / 'images'
  shutil.copytree(root / 'images', images)
  Image.new('RGB', (50, 40)).save(images / 'small.png')  # another size than the export's 64×96
  args = ['--images', str(images), '--out']
  threshold = json.loads((out / 'b3' / exported.MANIFEST).read_text())['threshold']['value']
  # The export's threshold, given: the shared workdir is left without a threshold.json.
  assert predict.main(['--workdir', str(root / 'w'), *args, str(tmp_path / 'w'), f'--threshold={threshold!r}']) == 0
  assert predict.main(['--exported', str(out / 'b3'), *args, str(tmp_path / 'e')]) == 1
  err = capsys.readouterr().err
  assert 'small.png: image is 40x50 (HxW); the stablehlo export takes 64x96' in err and '1 of 5 images' in err
  want, got = _rows(tmp_path / 'w' / 'scores.csv'), _rows(tmp_path / 'e' / 'scores.csv')
  assert sorted(got) == sorted(want) and 'export again with --image_size 40,50' in got['small.png']['error']
  for name in sorted(p.name for p in (root / 'images').iterdir()):
    assert got[name]['error'] == '' and got[name]['anomalous'] == want[name]['anomalous']
    assert float(got[name]['score']) == pytest.approx(float(want[name]['score']), abs=1e-4)
    assert float(got[name]['threshold']) == pytest.approx(float(want[name]['threshold']), rel=1e-6)
    stem = name[:-4]
    diff = tifffile.imread(tmp_path / 'e' / 'maps' / f'{stem}.tiff') - tifffile.imread(tmp_path / 'w' / 'maps' / f'{stem}.tiff')
    assert np.abs(diff).max() <= 1e-4 and (tmp_path / 'e' / 'overlays' / f'{stem}.png').is_file()
  assert predict.main(['--exported', str(out / 'b3'), *args, str(tmp_path / 'x'), '--threshold', '1']) == 2
  assert 'an export carries its threshold' in capsys.readouterr().err


def test_onnx_example_scores_a_folder_without_jax(exports, tmp_path):
  """examples/onnx_predict.py in a fresh process where jax, flax and tensorflow cannot be imported."""
  _, out, model, images, manifest = exports
  folder = tmp_path / 'images'
  folder.mkdir()
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f'{i}.png')
  env = dict(os.environ, GCAD_TEST_HIDE='jax,jaxlib,flax,gcad_jax')
  result = subprocess.run([sys.executable, str(ROOT / 'tests' / 'without_tensorflow.py'),
                           str(ROOT / 'examples' / 'onnx_predict.py'), str(out / 'dynamic'), str(folder)],
                          env=env, capture_output=True, text=True, timeout=120, check=True)
  lines = result.stdout.strip().splitlines()
  assert lines[0] == 'image,score,anomalous' and len(lines) == 5
  _, scores = model.score(images)
  for line, score in zip(lines[1:], scores):
    _, got, flag = line.split(',')
    assert float(got) == pytest.approx(score, abs=1e-4) and int(flag) == int(score > manifest['threshold']['value'])


def test_a_primitive_or_dtype_without_onnx_form_is_an_error_naming_it_and_its_layer():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gcad_jax import onnx_lowering  # pylint: disable=g-import-not-at-top

  def fn(x):
    with jax.named_scope('e_glo/Conv_0'):
      return {'maps': jnp.cumsum(x.astype(jnp.float32), axis=1)}

  with pytest.raises(onnx_lowering.FormatError, match=r'onnx: cannot export the primitive cumsum .* layer e_glo/Conv_0'):
    onnx_lowering.to_onnx(fn, jax.ShapeDtypeStruct((1, 4, 4, 3), jnp.uint8))
  from gcad_jax import bench, serve_bench  # pylint: disable=g-import-not-at-top
  config, _ = bench.preset_config('tiny', **{'model.dtype': 'bfloat16'})  # never a silently float32 model
  with pytest.raises(onnx_lowering.FormatError, match=r'bfloat16 compute .* layer PatchTeacher/conv0'):
    onnx_lowering.to_onnx(serve_bench.serving_fn(config, 17), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.uint8))


def test_onnx_lowering_of_a_p33_model_equals_jax_in_onnxruntime():
  """p = 33: E_loc's dense max-pools (lax.reduce_window from −∞) become MaxPool, and its space-to-batch
  reshapes (4·batch) follow a dynamic batch; all of §8 within 1e-4."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import onnxruntime  # pylint: disable=g-import-not-at-top
  from gcad_jax import bench, onnx_lowering, serve_bench  # pylint: disable=g-import-not-at-top
  config, _ = bench.preset_config('tiny', **{'model.scales': (33,)})
  fn = serve_bench.serving_fn(config, 33)
  images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
  model = onnx_lowering.to_onnx(fn, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.uint8), dynamic_batch=True)
  session = onnxruntime.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
  maps, scores = session.run(['maps', 'scores'], {'images': images})
  want = jax.jit(fn)(images)
  assert np.abs(maps - np.asarray(want['maps'])).max() <= 1e-4
  np.testing.assert_allclose(scores, want['scores'], atol=1e-4)


def test_saved_model_export_leaves_the_process_log_level_as_it_was(tmp_path):
  """TensorFlow's saving sets absl's logger to WARNING; the export puts it back (other INFO logs went silent)."""
  import logging  # pylint: disable=g-import-not-at-top
  from gcad_jax import export_formats  # pylint: disable=g-import-not-at-top
  absl_logger = logging.getLogger('absl')
  before = absl_logger.level
  absl_logger.setLevel(logging.INFO)
  try:
    export_formats.write_saved_model(lambda x: {'maps': x.astype(np.float32)}, (4, 4), 1, tmp_path)
    assert absl_logger.level == logging.INFO
  finally:
    absl_logger.setLevel(before)
