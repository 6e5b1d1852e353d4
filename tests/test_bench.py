"""Tests of gcad_jax.bench and gcad_jax.bench_runners (issue 6): the presets are the config files, the timed
step is gcad_jax.train's, the PyTorch reference computes the same networks, and a smoke run of the benchmark
itself (tiny shapes)."""

import functools
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcad_jax import bench, bench_runners, configlib, train
from gcad_jax.models import gcad

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _smallest(**overrides):
  """The tiny preset with a depth-2 U-Net and batch 2: seconds to compile on a CPU."""
  return bench.preset_config('tiny', **{'unet.depth': 2, 'train.batch_size': 2, **overrides})[0]


@pytest.mark.parametrize('preset, config_file, p', [('paper_p33', 'configs/loco.py', 33),
                                                    ('paper_p17', 'configs/loco.py', 17),
                                                    ('cpu', 'configs/synthetic.py', 17), ('tiny', 'configs/tiny.py', 17)])
def test_presets_are_the_config_files(preset, config_file, p):
  """Each preset is its config file (no copy of its values), at its scale; overrides apply on top."""
  config, scale = bench.preset_config(preset, **{'model.dtype': 'bfloat16'})
  want = configlib.load_config(ROOT / config_file, {'model.dtype': 'bfloat16'})
  assert scale == p and json.loads(config.to_json_best_effort()) == json.loads(want.to_json_best_effort())


def test_presets_outside_a_checkout_ask_for_the_config_file(tmp_path, monkeypatch):
  """An installed gcad_jax has no configs/: a preset then names the file and the flag to pass."""
  monkeypatch.setattr(bench_runners, 'CHECKOUT', tmp_path / 'site-packages')
  with pytest.raises(FileNotFoundError, match=r'--preset=cpu is configs/synthetic\.py .* pass '
                                              r'--config=PATH/TO/configs/synthetic\.py --scale=17'):
    bench.preset_config('cpu')


@pytest.mark.slow
def test_bench_smoke(tmp_path):
  """The benchmark runs end to end on tiny shapes and writes every figure the issue asks for."""
  out = tmp_path / 'bench.json'
  bench.main(['--preset=tiny', '--set=unet.depth=2', '--batch=2', '--reps=2', '--modes=train,latency',
              f'--out={out}'])
  saved = json.loads(out.read_text())[0]
  assert saved['machine']['backend'] == jax.default_backend() and saved['memory']['host_peak_rss_bytes'] > 0
  rows = {r['mode']: r for r in saved['rows']}
  assert set(rows) == {'train', 'latency'} and rows['latency']['batch'] == 1
  for row in rows.values():
    assert row['images_per_s'] > 0 and row['compile_s'] > 0 and row['reps'] == 2
    assert row['gflops_per_image'] > 0 and row['achieved_tflops'] > 0
  assert rows['train']['gflops_per_image'] > 1.3 * rows['latency']['gflops_per_image']  # + backward, Adam
  # FLOPs are those of the program as written, the --flops_only count (GPUs' compiled count omits cuDNN's).
  config, p = bench.preset_config('tiny', **{'unet.depth': 2})
  assert rows['latency']['gflops_per_image'] == pytest.approx(
      bench_runners.flop_counts(config, p, 1, ('infer',))['infer'])


def test_cost_of_without_a_lowered_analysis():
  """Where the backend cannot analyse the lowered program (GPUs), no FLOPs are taken from the compiled one."""

  class Analysed:
    def __init__(self, cost):
      self.cost = cost

    def cost_analysis(self):
      return self.cost

    def memory_analysis(self):
      raise NotImplementedError

  out = bench_runners.cost_of(Analysed(None), Analysed({'flops': 1.0, 'bytes accessed': 8.0}))
  assert 'flops' not in out and 'flops_note' in out and out['bytes_accessed'] == 8.0
  assert bench_runners.cost_of(Analysed([{'flops': 5.0}]), Analysed({}))['flops'] == 5.0


@pytest.mark.slow
def test_bench_times_the_training_step(monkeypatch):
  """The `train` runner is gcad_jax.train.train_step in stage 2, with augmentation as the config sets it;
  `train_cached` the same step with E_loc's features given and augmentation off (as train.cache_eloc)."""
  calls = []
  step = train.train_step

  def spy(state, images, features=None, **kwargs):
    calls.append((kwargs['config'].augment.enabled, kwargs['with_glo'], features is not None))
    return step(state, images, features, **kwargs)

  monkeypatch.setattr(train, 'train_step', spy)
  config = _smallest()
  assert config.augment.enabled  # configs/tiny.py, like configs/loco.py, trains with augmentation
  runners = bench_runners.jax_runners(config, 17, ('train', 'train_cached'), 2, 1)
  assert calls == [(True, True, False), (False, True, True)]
  assert [r.info['augment'] for r in runners] == [True, False] and all(r.run for r in runners)
  for runner in runners:
    runner.run(2)  # the donated state is carried from step to step


@pytest.mark.slow
def test_torch_reference_computes_the_same_networks():
  """benchmarks/torch_reference.py with gcad_jax's weights: same Eq. 2–5 terms and anomaly maps (float32)."""
  # CI (./run.sh test with CI=true installs torch==2.13.0) must run it; elsewhere it needs `pip install torch`.
  torch = __import__('torch') if os.environ.get('CI') == 'true' else pytest.importorskip('torch')
  ref = bench_runners.load_torch_reference()

  config = _smallest()
  nets = gcad.build_nets(config, 17)
  state = jax.jit(functools.partial(bench_runners.stage2_state, config, nets))(jax.random.key(1))
  rng = np.random.default_rng(0)
  state = state.replace(eloc_stats={'mean': jnp.asarray(rng.normal(size=16), jnp.float32),
                                    'std': jnp.asarray(rng.uniform(0.5, 2, size=16), jnp.float32)})
  x = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
  model = ref.build(config, 17)
  ref.load_jax_params(model, jax.device_get(state.params), jax.device_get(state.e_loc_params), state.eloc_stats)
  assert ref.param_count(model) == gcad.param_count(state.params) + gcad.param_count(state.e_loc_params)

  weights = jnp.asarray([1.0, 0.75, 0.5, 0.25, 0.0])

  @jax.jit
  def ours(state, x):
    f = gcad.eloc_features(nets, state.e_loc_params, state.eloc_stats, x)
    return gcad.per_image_losses(nets, state.params, f, x, weights, with_glo=True), bench_runners.infer(
        state, x, nets=nets)

  with jax.default_matmul_precision('float32'):
    losses, maps = ours(state, x)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    theirs = model.losses(xt, model.features(xt), weights.tolist())
  for key in ('l_loc', 'l_kd', 'l_glo', 'total'):
    np.testing.assert_allclose(losses[key], theirs[key].numpy(), rtol=1e-4, err_msg=key)
  for ours, them in zip(maps, model.anomaly_maps(xt)):
    np.testing.assert_allclose(ours, them.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('size', [(64, 64), (70, 76)])
def test_space_to_batch_teacher_equals_dilated(size):
  """PatchTeacher(dense_form='space_to_batch') = the à trous form of docs/method.md §3.3 (p = 33; odd phase sizes too)."""
  from gcad_jax.models import layers  # pylint: disable=g-import-not-at-top
  from gcad_jax.models.teacher import PatchTeacher  # pylint: disable=g-import-not-at-top

  dilated = PatchTeacher(33, widths=(8, 12, 12), d_out=6, dense=True)
  polyphase = dilated.clone(dense_form='space_to_batch')
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *size, 3)), jnp.float32)
  shapes = jax.eval_shape(lambda k: dilated.init(k, x)['params'], jax.random.key(0))
  params = jax.jit(lambda k: layers.torch_default_params(shapes, k))(jax.random.key(0))
  with jax.default_matmul_precision('float32'):
    ours, theirs = jax.jit(lambda v: (polyphase.apply(v, x), dilated.apply(v, x)))({'params': params})
  assert ours.shape == theirs.shape == (2, *size, 6)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_subpixel_up_convolution_equals_conv_transpose(dtype):
  """UNet(up_form='subpixel') = the ConvTranspose 2×2 s2 form of docs/method.md §6: same parameters, outputs, grads."""
  from gcad_jax.models.unet import UNet  # pylint: disable=g-import-not-at-top

  subpixel = UNet(5, depth=2, wf=2, dtype=dtype)
  straight = subpixel.clone(up_form='conv_transpose')
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 12, 3)), jnp.float32)
  key = jax.random.key(0, impl='rbg')  # XLA:CPU compiles threefry slowly
  params = jax.jit(lambda k: straight.init(k, x)['params'])(key)
  assert jax.tree.structure(params) == jax.tree.structure(jax.eval_shape(lambda k: subpixel.init(k, x)['params'], key))
  loss = lambda net: lambda p: jnp.sum(jnp.square(net.apply({'params': p}, x).astype(jnp.float32)))
  with jax.default_matmul_precision('float32'):
    (ours, grad_ours), (theirs, grad_theirs) = jax.jit(
        lambda p: (jax.value_and_grad(loss(subpixel))(p), jax.value_and_grad(loss(straight))(p)))(params)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(ours, theirs, rtol=tol)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=tol, atol=tol * 1e-2), grad_ours, grad_theirs)


def test_subpixel_global_net_equals_strided_convolutions():
  """GlobalEncoderDecoder(stride_form='subpixel') = the strided / transposed convolutions of docs/method.md §4.2:
  each layer's output and gradients, and the whole network's output."""
  from gcad_jax.models import layers  # pylint: disable=g-import-not-at-top
  from gcad_jax.models.global_net import GlobalEncoderDecoder  # pylint: disable=g-import-not-at-top

  key = jax.random.key(0, impl='rbg')
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 12, 3)), jnp.float32)
  pairs = [(layers.SpaceToDepthConv(5), layers.conv(5, (4, 4), 3, name='c', init='torch_default', dtype=jnp.float32,
                                                     strides=2, padding=((1, 1), (1, 1)))),
           (layers.SubpixelConvTranspose4(5), layers.conv_transpose(5, (4, 4), name='t', init='torch_default',
                                                                    dtype=jnp.float32, strides=2, torch_padding=1))]
  net = GlobalEncoderDecoder(g=4, d_glo=3, enc_channels=(4, 4, 8, 8, 8, 8), dec_channels=(8, 8, 8, 8, 4, 4, 4))
  image = jnp.asarray(np.random.default_rng(1).normal(size=(1, 64, 128, 3)), jnp.float32)
  weights = jnp.asarray([1.0, 0.5, 0.25, 0.75, 1.0])

  @jax.jit
  def both():
    out = []
    for ours, theirs in pairs:
      params = theirs.init(key, x)
      loss = lambda m: lambda p, x: jnp.sum(jnp.square(m.apply(p, x)) * jnp.arange(5.0))
      out.append((jax.value_and_grad(loss(ours), argnums=(0, 1))(params, x),
                  jax.value_and_grad(loss(theirs), argnums=(0, 1))(params, x)))
    params = net.clone(stride_form='conv').init(key, image, weights)
    out.append((net.apply(params, image, weights), net.clone(stride_form='conv').apply(params, image, weights)))
    return out

  with jax.default_matmul_precision('float32'):
    results = both()
  for ours, theirs in results:
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5), ours, theirs)


def test_torch_reference_is_found_in_the_checkout_or_named_by_a_flag(tmp_path, monkeypatch):
  """An installed gcad_jax has no benchmarks/: --torch then asks for --torch_reference or the environment
  variable (a clear error); the flag wins over the variable, the variable over the checkout."""
  monkeypatch.setitem(sys.modules, 'torch_reference', None)  # Loading registers it; restored afterwards.
  monkeypatch.delenv(bench_runners.TORCH_REFERENCE_ENV, raising=False)
  assert bench_runners.CHECKOUT == ROOT and (ROOT / 'benchmarks' / 'torch_reference.py').is_file()
  checkout = tmp_path / 'checkout'  # The real file imports torch, which only CI installs (run.sh).
  (checkout / 'benchmarks').mkdir(parents=True)
  (checkout / 'benchmarks' / 'torch_reference.py').write_text('NAME = "checkout"\n')
  monkeypatch.setattr(bench_runners, 'CHECKOUT', checkout)
  assert bench_runners.load_torch_reference().__file__ == str(checkout / 'benchmarks' / 'torch_reference.py')
  copy = tmp_path / 'ref.py'
  copy.write_text('NAME = "copy"\n')
  assert bench_runners.load_torch_reference(str(copy)).NAME == 'copy'
  with pytest.raises(FileNotFoundError, match=r'--torch: .*missing\.py does not exist; pass --torch_reference='):
    bench_runners.load_torch_reference(str(tmp_path / 'missing.py'))
  monkeypatch.setattr(bench_runners, 'CHECKOUT', tmp_path / 'site-packages')
  monkeypatch.setattr(bench_runners, '__file__', str(tmp_path / 'site-packages' / 'gcad_jax' / 'bench_runners.py'))
  with pytest.raises(FileNotFoundError, match=r'is not a source checkout.*pass --torch_reference=.* or set '
                                              r'GCAD_JAX_TORCH_REFERENCE'):
    bench_runners.load_torch_reference()
  monkeypatch.setenv(bench_runners.TORCH_REFERENCE_ENV, str(copy))
  assert bench_runners.load_torch_reference().NAME == 'copy'
  other = tmp_path / 'other.py'
  other.write_text('NAME = "other"\n')
  assert bench_runners.load_torch_reference(str(other)).NAME == 'other'


@pytest.mark.slow
def test_bench_imports_no_training_stack():
  """`python -m gcad_jax.bench` runs on an accelerator image without clu, TensorFlow and TFDS (issue 6, item 4;
  issue 25): importing it and building and running a training-step runner with them hidden. It does import
  orbax and ml_collections, through gcad_jax.train and the config files; the image has orbax, and
  ml_collections is a pure-Python wheel carried to it (docs/performance.md, "Running the benchmark")."""
  import subprocess  # pylint: disable=g-import-not-at-top
  code = ('import sys; import without_tensorflow; '
          'without_tensorflow.BLOCKED = ("tensorflow", "clu", "tensorflow_datasets"); without_tensorflow.block(); '
          'from gcad_jax import bench, bench_runners; '
          'config, p = bench.preset_config("tiny", **{"unet.depth": 2}); '
          'runner, = bench_runners.jax_runners(config, p, ("train",), 1, 1); runner.run(1); '
          'print(runner.info.get("error"), sorted({m.split(".")[0] for m in sys.modules} & '
          '{"clu", "tensorflow", "tensorflow_datasets", "torch"}))')
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT / 'tests'), str(ROOT)])}
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
  assert out.stdout.strip().splitlines()[-1] == 'None []', out.stdout + out.stderr[-2000:]
