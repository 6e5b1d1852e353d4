"""Tests of gcad_jax.models: one test per property that docs/method.md §3–§9 and §11 state.

Paper-size (256²) networks are only traced (`jax.eval_shape`); everything that runs uses tiny shapes.
"""

import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcad_jax import configlib
from gcad_jax import models
from gcad_jax.models import layers
from gcad_jax.models.global_net import GlobalEncoderDecoder, Upsampler, skip_weights
from gcad_jax.models.teacher import PatchTeacher
from gcad_jax.models.unet import UNet

ns = types.SimpleNamespace
# 'rbg' keys: XLA:CPU compiles threefry slowly (seconds per parameter shape), the RNG choice is immaterial here.
KEY = jax.random.key(0, impl='rbg')


@pytest.fixture(autouse=True)
def _full_precision():
  """Exact float32 convolutions also on GPUs (TF32 by default), so the tolerances below hold anywhere."""
  with jax.default_matmul_precision('float32'):
    yield


def _shapes(tree):
  return jax.tree_util.tree_map(lambda leaf: tuple(leaf.shape), tree)


def _count(module, *args):
  return models.param_count(jax.eval_shape(module.init, KEY, *args)['params'])


def _init(module, *args, **kwargs):
  """`module.init(...)['params']` compiled as one program (far faster on a CPU than op-by-op)."""
  return jax.jit(lambda key: module.init(key, *args, **kwargs)['params'])(KEY)


def _random_params(module, *args, **kwargs):
  """torch_default parameters of `module` from one random draw (cheap to compile; see layers.py)."""
  shapes = jax.eval_shape(lambda key: module.init(key, *args, **kwargs)['params'], KEY)
  return jax.jit(lambda key: layers.torch_default_params(shapes, key))(KEY)


def _image(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def tiny_config(**overrides):
  """A duck-typed config (no ml_collections) with tiny widths, for tests that run the networks."""
  config = ns(
      model=ns(init='torch_default', dtype='float32'),
      eloc=ns(d_loc=16, widths=(8, 8, 8), leaky_slope=5e-3, final_activation='linear', p33_first_kernel=5,
              pad_mode='zeros'),
      eglo=ns(g=8, d_glo=3, enc_channels=(4, 4, 8, 8, 8, 8), dec_channels=(8, 8, 8, 8, 4, 4, 4), leaky_slope=0.2),
      u=ns(hidden=(8, 8), leaky_slope=0.2),
      unet=ns(depth=3, wf=2, padding=True),
  )
  for key, value in overrides.items():
    group, field = key.split('.')
    setattr(getattr(config, group), field, value)
  return config


# §4.3, §11 item 5: the skip-fade schedule.

SEQUENTIAL = {  # epoch: (u, v, w, x, y)
    0: (1, 1, 1, 1, 1), 10: (1, 1, 1, 1, 0.5), 20: (1, 1, 1, 1, 0), 50: (1, 1, 0.5, 0, 0),
    90: (0.5, 0, 0, 0, 0), 100: (0, 0, 0, 0, 0), 300: (0, 0, 0, 0, 0),
}


@pytest.mark.parametrize('epoch', sorted(SEQUENTIAL))
def test_skip_fade_sequential(epoch):
  np.testing.assert_allclose(skip_weights(epoch), SEQUENTIAL[epoch], atol=1e-6)


def test_skip_fade_traced_scaled_and_simultaneous():
  fade = jax.jit(lambda e: skip_weights(e, 'sequential', 100.0))
  np.testing.assert_allclose(fade(jnp.float32(50.0)), SEQUENTIAL[50], atol=1e-6)
  np.testing.assert_allclose(skip_weights(20.0, end_epoch=200.0), (1, 1, 1, 1, 0.5), atol=1e-6)  # windows scale
  np.testing.assert_allclose(skip_weights(50.0, 'simultaneous'), [0.5] * 5, atol=1e-6)
  np.testing.assert_allclose(skip_weights(100.0, 'simultaneous'), [0] * 5, atol=1e-6)
  np.testing.assert_allclose(skip_weights(0.0, end_epoch=0.0), [0] * 5)
  with pytest.raises(ValueError, match='eglo.skip_fade.mode'):
    skip_weights(0.0, 'bogus')


# §9, §11 item 1: exact parameter counts.

def test_parameter_counts():
  image = jnp.zeros((1, 256, 256, 3))
  assert _count(PatchTeacher(17), jnp.zeros((1, 17, 17, 3))) == 2_996_480
  assert _count(PatchTeacher(33), jnp.zeros((1, 33, 33, 3))) == 1_616_000
  assert _count(PatchTeacher(33, dense=True), image) == 1_616_000
  assert _count(GlobalEncoderDecoder(), image, jnp.ones(5)) == 593_162
  assert _count(Upsampler(), jnp.zeros((1, 256, 256, 10))) == 34_432
  assert _count(UNet(128), image) == 31_040_000
  assert _count(UNet(10), image) == 31_032_330


def test_single_scale_p33_model_is_64_3_million():
  nets = models.build_nets(configlib.base_config(), 33)
  trainable, e_loc = jax.eval_shape(lambda key: models.init_params(nets, key, (256, 256)), KEY)
  counts = {name: models.param_count(tree) for name, tree in trainable.items()}
  assert counts == {'r_loc': 31_040_000, 'e_glo': 593_162, 'u': 34_432, 'r_glo': 31_032_330}
  assert models.param_count(e_loc) == 1_616_000
  total = models.param_count((trainable, e_loc))
  assert total == 64_315_924
  assert round((total - counts['u']) / 1e6, 1) == 64.3  # inference networks only (U is training-only)


# §11 items 2–3: output shapes at 256², U-Net bottleneck.

@pytest.mark.parametrize('p', [17, 33])
def test_dense_teacher_output_is_256(p):
  image = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
  teacher = PatchTeacher(p, dense=True)
  out = jax.eval_shape(lambda x: teacher.init_with_output(KEY, x)[0], image)
  assert out.shape == (2, 256, 256, 128)


def test_regression_and_global_shapes_at_256():
  image = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)

  def unet(n_out, x):
    out, variables = UNet(n_out).init_with_output(KEY, x, mutable=True)
    return out, variables['intermediates']['bottleneck'][0]

  r_loc, bottleneck = jax.eval_shape(lambda x: unet(128, x), image)
  assert r_loc.shape == (2, 256, 256, 128)
  assert bottleneck.shape == (2, 16, 16, 1024)
  assert jax.eval_shape(lambda x: unet(10, x)[0], image).shape == (2, 256, 256, 10)
  (out, context), _ = jax.eval_shape(
      lambda x: GlobalEncoderDecoder().init_with_output(KEY, x, jnp.ones(5), return_context=True), image)
  assert out.shape == (2, 256, 256, 10)
  assert context.shape == (2, 1, 1, 32)
  u = jax.eval_shape(lambda z: Upsampler().init_with_output(KEY, z)[0],
                     jax.ShapeDtypeStruct((2, 256, 256, 10), jnp.float32))
  assert u.shape == (2, 256, 256, 128)


def test_small_inputs_128x64():
  x = jax.ShapeDtypeStruct((1, 128, 64, 3), jnp.float32)
  eglo = GlobalEncoderDecoder()
  (out, context), variables = jax.eval_shape(
      lambda x: eglo.init_with_output(KEY, x, jnp.ones(5), return_context=True), x)
  assert out.shape == (1, 128, 64, 10) and context.shape == (1, 1, 1, 32)
  assert variables['params']['context']['kernel'].shape == (2, 1, 64, 32)  # (H/64, W/64) valid
  assert variables['params']['dec0']['kernel'].shape == (2, 1, 64, 32)
  unet = jax.eval_shape(lambda y: UNet(128).init_with_output(KEY, y)[0], x)
  assert unet.shape == (1, 128, 64, 128)
  with pytest.raises(ValueError, match='multiple of 64'):
    jax.eval_shape(eglo.init, KEY, jnp.zeros((1, 96, 64, 3)), jnp.ones(5))
  with pytest.raises(ValueError, match='multiple of 16'):
    jax.eval_shape(UNet(10).init, KEY, jnp.zeros((1, 72, 64, 3)))


# §4.1–§4.2, §11 item 4: skips at weight 0 are cut exactly.

def test_eglo_zero_skip_weights_cut_the_skips():
  x = _image((2, 64, 64, 3))
  eglo = GlobalEncoderDecoder()
  params = _random_params(eglo, x, jnp.ones(5))

  # One compiled program for every run below, so that outputs compare bitwise: `amount` perturbs the encoder
  # activations that feed the skips (e5, ..., e1) by intercepting the skip convolutions' inputs.
  @jax.jit
  def run(params, weights, amount):
    def perturb_skip_sources(next_fun, args, kwargs, context):
      if context.method_name == '__call__' and (context.module.name or '').startswith('skip_'):
        args = (args[0] + amount * _image(args[0].shape, seed=7),) + args[1:]
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(perturb_skip_sources):
      return eglo.apply({'params': params}, x, weights)

  zeros, ones = jnp.zeros(5), jnp.ones(5)
  reference = run(params, zeros, 0.0)
  # (a) Perturbed skip sources change nothing at weight 0, and the output at weight 1.
  np.testing.assert_array_equal(run(params, zeros, 10.0), reference)
  assert not np.allclose(run(params, ones, 10.0), run(params, ones, 0.0))
  # (b) Randomised (large) skip convolutions change nothing at weight 0, and the output at weight 1.
  noisy = dict(params)
  for i, name in enumerate(models.SKIP_NAMES):
    noisy[f'skip_{name}'] = jax.tree_util.tree_map(lambda w, i=i: 100.0 * _image(w.shape, seed=i + 1),
                                                   params[f'skip_{name}'])
  np.testing.assert_array_equal(run(noisy, zeros, 0.0), reference)
  assert not np.allclose(run(noisy, ones, 0.0), run(params, ones, 0.0))


# §3.3, §11 item 2: dense evaluation equals the patch network.

def test_dense_padding():
  assert models.dense_padding(17) == ((8, 8), (8, 8))
  assert models.dense_padding(33) == ((15, 16), (15, 16))
  assert models.receptive_field(17) == 17 and models.receptive_field(33) == 32


@pytest.mark.parametrize('p, widths, first_kernel, pad_mode', [
    (17, (128, 256, 256), 5, 'zeros'),  # the paper's networks
    (33, (128, 256, 256), 5, 'zeros'),
    (33, (16, 32, 32), 3, 'reflect'),
    (17, (16, 32, 32), 5, 'edge'),
])
def test_dense_equals_patch_on_crops(p, widths, first_kernel, pad_mode):
  height, width = (40, 32) if widths[0] == 128 else (48, 40)
  kwargs = dict(widths=widths, d_out=128 if widths[0] == 128 else 24, p33_first_kernel=first_kernel,
                pad_mode=pad_mode)
  patch_net = PatchTeacher(p, **kwargs)
  dense_net = PatchTeacher(p, dense=True, **kwargs)
  params = _random_params(patch_net, jnp.zeros((1, p, p, 3)))
  image = _image((1, height, width, 3), seed=1)
  dense = np.asarray(jax.jit(dense_net.apply)({'params': params}, image))[0]
  assert dense.shape == (height, width, kwargs['d_out'])
  # The p×p crop at top-left (r, c) of the padded image. Extra rows/columns of 1e3 below and right complete
  # the last crops where the effective field is < p (p = 33): the network must never read them (§3.2).
  (top, bottom), (left, right) = models.dense_padding(p, first_kernel)
  padded = jnp.pad(image, ((0, 0), (top, bottom), (left, right), (0, 0)), mode=models.teacher.PAD_MODES[pad_mode])
  padded = np.asarray(jnp.pad(padded, ((0, 0), (0, p), (0, p), (0, 0)), constant_values=1e3))[0]
  border = [(0, 0), (0, width - 1), (height - 1, 0), (height - 1, width - 1), (0, 17), (height - 1, 9),
            (23, 0), (30, width - 1), (1, 1), (height - 2, width - 2), (7, 8), (height - 16, width - 15)]
  interior = [tuple(rc) for rc in np.random.default_rng(p).integers((0, 0), (height, width), size=(30, 2))]
  positions = border + interior
  crops = np.stack([padded[r:r + p, c:c + p] for r, c in positions])
  patch = np.asarray(jax.jit(patch_net.apply)({'params': params}, crops))
  expected = np.stack([dense[r, c] for r, c in positions])
  scale = np.abs(expected).max()
  np.testing.assert_allclose(patch, expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize('p', [17, 33])
def test_patch_and_dense_parameter_trees_are_identical(p):
  patch = jax.eval_shape(PatchTeacher(p).init, KEY, jnp.zeros((1, p, p, 3)))
  dense = jax.eval_shape(PatchTeacher(p, dense=True).init, KEY, jnp.zeros((1, 64, 48, 3)))
  assert _shapes(patch) == _shapes(dense)


@pytest.mark.parametrize('p', [17, 33])
def test_receptive_field(p):
  """One perturbed pixel changes the dense descriptor only where the p-window contains it (§3.3)."""
  teacher = PatchTeacher(p, widths=(8, 16, 16), d_out=8, dense=True)
  image = _image((1, 40, 36, 3), seed=2)
  params = _random_params(teacher, image)
  apply = jax.jit(lambda image: teacher.apply({'params': params}, image)[0])
  base = apply(image)
  top = models.dense_padding(p)[0][0]
  field = models.receptive_field(p)
  rows, cols = np.arange(40)[:, None], np.arange(36)[None, :]
  for i, j in [(20, 17), (0, 0), (39, 35), (3, 30)]:
    changed = np.any(apply(image.at[0, i, j, :].add(5.0)) != base, axis=-1)
    # Output (r, c) reads rows r − top … r − top + field − 1 of the image.
    window = (rows - top <= i) & (i <= rows - top + field - 1) & (cols - top <= j) & (j <= cols - top + field - 1)
    assert not np.any(changed & ~window), f'pixel ({i}, {j}) changed outputs outside its window'
    if p == 17:  # no pooling: every output whose window holds the pixel changes
      np.testing.assert_array_equal(changed, window)
    else:  # max-pooling may mask the change at some positions
      assert changed.sum() >= 0.5 * window.sum()
  if p == 17:
    assert field == 17 and top == 8  # the window is centred on the pixel


def test_patch_form_refuses_wrong_size():
  with pytest.raises(ValueError, match='17×17 patches'):
    jax.eval_shape(PatchTeacher(17).init, KEY, jnp.zeros((1, 20, 20, 3)))


def test_teacher_final_activation_and_bfloat16():
  x = _image((1, 17, 17, 3))
  linear = PatchTeacher(17, widths=(8, 8, 8), d_out=4)
  leaky = PatchTeacher(17, widths=(8, 8, 8), d_out=4, final_activation='leaky_relu')
  half = PatchTeacher(17, widths=(8, 8, 8), d_out=4, dense=True, dtype=jnp.bfloat16)
  params = _random_params(linear, x)

  @jax.jit
  def run(params, x):
    return (linear.apply({'params': params}, x), leaky.apply({'params': params}, x),
            half.apply({'params': params}, x[:, :8, :8]))

  out_linear, out_leaky, out_half = run(params, x)
  np.testing.assert_allclose(out_leaky, nn.leaky_relu(out_linear, 5e-3), rtol=1e-6)
  assert out_half.dtype == jnp.bfloat16 and out_half.shape == (1, 8, 8, 4)
  variables = jax.eval_shape(half.init, KEY, x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))


# §3.4: statistics outside the network.

def test_feature_moments_and_standardise():
  features = 3.0 + 2.0 * _image((4, 6, 5, 7))
  moments = [models.feature_moments(features[:1]), models.feature_moments(features[1:])]
  summed = [sum(np.asarray(m[k], np.float64) for m in moments) for k in range(3)]
  stats = models.stats_from_moments(*summed)
  flat = np.asarray(features).reshape(-1, 7)
  np.testing.assert_allclose(stats['mean'], flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats['std'], flat.std(0), rtol=1e-4)
  standard = np.asarray(models.standardise(features, stats)).reshape(-1, 7)
  np.testing.assert_allclose(standard.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(standard.std(0), 1, rtol=1e-4)


# §6, §12 #21: PyTorch default initialisation.

def _check_torch_bounds(params):
  """max |w| ≤ 1/√fan_in (and close to it); fan_in = prod(kernel.shape[:-1]) for both kinds (see layers.py)."""
  checked = 0
  is_layer = lambda t: isinstance(t, dict) and 'kernel' in t
  for path, layer in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_layer)[0]:
    kernel, bias = np.asarray(layer['kernel']), np.asarray(layer['bias'])
    fan_in = int(np.prod(kernel.shape[:-1]))
    bound = np.float32(1.0 / np.sqrt(fan_in))  # uniform draws are float32: compare in float32
    for name, value in (('kernel', kernel), ('bias', bias)):
      assert np.abs(value).max() <= bound, (path, name)
      if value.size >= 64:
        assert np.abs(value).max() >= 0.8 * bound, (path, name)
    checked += 1
  return checked


def test_torch_default_init_bounds_including_transposed_fan_in():
  params = _init(UNet(3, depth=2, wf=3), jnp.zeros((1, 16, 16, 3)))
  # ConvTranspose2d(16 → 8, k=2): kernel stored (k, k, out, in); PyTorch fan_in = out·k·k = 32, not 64.
  up = np.asarray(params['up0']['up']['kernel'])
  assert up.shape == (2, 2, 8, 16)
  assert np.abs(up).max() > 1 / np.sqrt(16 * 4)  # exceeds the (wrong) in·k·k bound
  assert np.abs(up).max() <= np.float32(1 / np.sqrt(8 * 4))
  assert _check_torch_bounds(params) == 2 * 2 + 3 + 1
  assert _check_torch_bounds(_init(PatchTeacher(33), jnp.zeros((1, 33, 33, 3)))) == 4
  assert _check_torch_bounds(_init(Upsampler(), jnp.zeros((1, 1, 1, 10)))) == 3


def test_flax_default_init():
  params = _init(UNet(3, depth=1, wf=1, weight_init='flax_default'), jnp.zeros((1, 8, 8, 3)))
  assert not np.any(np.asarray(params['last']['bias']))  # Flax: zero biases


def test_conv_transpose_has_pytorch_semantics():
  """Against a direct scatter implementation of torch.nn.ConvTranspose2d (weight (in, out, k, k))."""
  x = np.asarray(_image((2, 5, 3, 6), seed=3))
  for kernel, stride, padding in [(4, 2, 1), (2, 2, 0), (4, 1, 0)]:
    layer = layers.conv_transpose(4, (kernel, kernel), name='t', init='torch_default', dtype=jnp.float32,
                                  strides=stride, torch_padding=padding)
    params = _random_params(layer, x)
    weight = np.transpose(np.asarray(params['kernel']), (3, 2, 0, 1))
    full = np.zeros((2, (5 - 1) * stride + kernel, (3 - 1) * stride + kernel, 4))
    for i in range(5):
      for j in range(3):
        full[:, i * stride:i * stride + kernel, j * stride:j * stride + kernel] += np.einsum(
            'nc,cokl->nklo', x[:, i, j], weight)
    expected = full[:, padding:full.shape[1] - padding, padding:full.shape[2] - padding] + params['bias']
    np.testing.assert_allclose(layer.apply({'params': params}, x), expected, rtol=1e-5, atol=1e-5)


# §7.1–§7.2: the losses.

@pytest.fixture(scope='module')
def tiny():
  nets = models.build_nets(tiny_config(), 17)
  trainable, e_loc = models.init_params(nets, jax.random.key(1, impl='rbg'), (64, 64))
  x = _image((2, 64, 64, 3), seed=4)
  return nets, trainable, e_loc, x


def _constant_output(params, layer, bias):
  """Zero the kernel of `layer` and set its bias, so that the network outputs `bias` at every pixel."""
  params = dict(params)
  params[layer] = {'kernel': jnp.zeros_like(params[layer]['kernel']), 'bias': jnp.asarray(bias, jnp.float32)}
  return params


def test_build_nets_and_init_params(tiny):
  nets, trainable, e_loc, _ = tiny
  assert nets.e_loc.dense and nets.e_loc.p == 17 and nets.r_loc.n_out == 16 and nets.r_glo.n_out == 3
  assert set(trainable) == {'r_loc', 'e_glo', 'u', 'r_glo'}
  assert set(e_loc) == {'conv0', 'conv1', 'conv2', 'conv3'}
  # One-draw torch_default init: the PyTorch bounds, and the same trees as the modules' own init.
  assert sum(_check_torch_bounds(tree) for tree in (*trainable.values(), e_loc)) == 4 + 13 + 20 + 3 + 13
  flax_nets = models.build_nets(tiny_config(**{'model.init': 'flax_default'}), 17)
  flax_params = jax.eval_shape(lambda key: models.init_params(flax_nets, key, (64, 64)), KEY)
  assert _shapes(flax_params) == _shapes((trainable, e_loc))
  assert models.build_nets(tiny_config(**{'model.dtype': 'bfloat16'}), 33).r_loc.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match='model.dtype'):
    models.build_nets(tiny_config(**{'model.dtype': 'float16'}), 17)


def test_losses_on_a_hand_checkable_case(tiny):
  nets, trainable, _, x = tiny
  b_loc, b_u = np.linspace(-1, 1, 16), np.linspace(0, 2, 16)
  b_glo, b_rglo = np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 1.0])
  params = {
      'r_loc': _constant_output(trainable['r_loc'], 'last', b_loc),
      'u': _constant_output(trainable['u'], 'conv2', b_u),
      'e_glo': _constant_output(trainable['e_glo'], 'out', b_glo),
      'r_glo': _constant_output(trainable['r_glo'], 'last', b_rglo),
  }
  f = jnp.zeros((2, 64, 64, 16))
  stage1 = {k: v for k, v in params.items() if k != 'r_glo'}

  @jax.jit
  def run(params, stage1, f, x):
    losses = functools.partial(models.per_image_losses, nets, x=x, skip_weights=skip_weights(0.0))
    return {'sum': losses(params, f, with_glo=True),
            'mean': losses(params, f, with_glo=True, reduction='mean_per_pixel'),
            'same': losses(params, f + b_loc, with_glo=True),
            # Stage 1: no L_glo, and R_glo is never evaluated (its parameters may be absent).
            'stage1': losses(stage1, f, with_glo=False)}

  out = run(params, stage1, f, x)
  pixels = 64 * 64
  expected = {'l_loc': pixels * np.sum(b_loc ** 2) / 16, 'l_kd': pixels * np.sum(b_u ** 2) / 16,
              'l_glo': pixels * np.sum((b_glo - b_rglo) ** 2) / 3}
  expected['total'] = sum(expected.values())
  for name, value in expected.items():
    assert out['sum'][name].shape == (2,)
    np.testing.assert_allclose(out['sum'][name], [value, value], rtol=1e-5)
    np.testing.assert_allclose(out['mean'][name], [value / pixels] * 2, rtol=1e-5)
  np.testing.assert_allclose(out['same']['l_loc'], 0, atol=1e-6)  # identical outputs give zero
  np.testing.assert_array_equal(out['stage1']['l_glo'], [0, 0])
  np.testing.assert_allclose(out['stage1']['total'], [expected['l_loc'] + expected['l_kd']] * 2, rtol=1e-5)
  with pytest.raises(ValueError, match='loss_reduction'):
    models.per_image_losses(nets, params, f, x, skip_weights(0.0), with_glo=True, reduction='bogus')


@pytest.mark.slow
def test_gradient_flow(tiny):
  nets, trainable, e_loc, x = tiny
  stats = {'mean': jnp.zeros(16), 'std': jnp.ones(16)}

  def norm(tree):
    return sum(jnp.abs(leaf).sum() for leaf in jax.tree_util.tree_leaves(tree))

  @jax.jit
  def run(trainable, e_loc):
    f = models.eloc_features(nets, e_loc, stats, x)

    def loss(e_glo, r_glo, term, **kwargs):
      params = {**trainable, 'e_glo': e_glo, 'r_glo': r_glo}
      return models.per_image_losses(nets, params, f, x, skip_weights(10.0), **kwargs)[term].mean()

    e_glo, r_glo = trainable['e_glo'], trainable['r_glo']
    stage1 = jax.grad(loss, argnums=1)(e_glo, r_glo, 'total', with_glo=False)
    l_glo = jax.grad(loss, argnums=(0, 1))(e_glo, r_glo, 'l_glo', with_glo=True)
    stopped = jax.grad(loss)(e_glo, r_glo, 'l_glo', with_glo=True, stop_grad_eglo_in_lglo=True)
    # train.lglo_eglo_grad_ramp_epochs: a share of L_glo's gradient reaches E_glo; the loss is unchanged.
    scaled = {share: jax.grad(loss)(e_glo, r_glo, 'l_glo', with_glo=True, eglo_grad_scale_in_lglo=share)
              for share in (0.0, 0.25)}
    values = [loss(e_glo, r_glo, 'l_glo', with_glo=True, eglo_grad_scale_in_lglo=share)
              for share in (None, 0.25)]
    # E_loc is frozen: no gradient reaches its parameters through f.
    e_loc_grad = jax.grad(lambda p: models.eloc_features(nets, p, stats, x).sum())(e_loc)
    return {'stage1 r_glo': norm(stage1), 'l_glo e_glo': norm(l_glo[0]), 'l_glo r_glo': norm(l_glo[1]),
            'stopped e_glo': norm(stopped), 'e_loc': norm(e_loc_grad), 'share 0 e_glo': norm(scaled[0.0]),
            'share 0.25 e_glo': norm(scaled[0.25]), 'loss joint': values[0], 'loss share 0.25': values[1]}

  norms = {name: float(value) for name, value in run(trainable, e_loc).items()}
  assert norms['stage1 r_glo'] == 0.0  # stage 1: R_glo untouched
  assert norms['l_glo r_glo'] > 0
  assert norms['l_glo e_glo'] > 0  # no stop-gradient on z by default (§7.2)
  assert norms['stopped e_glo'] == 0.0
  assert norms['share 0 e_glo'] == 0.0
  np.testing.assert_allclose(norms['share 0.25 e_glo'], 0.25 * norms['l_glo e_glo'], rtol=1e-4)
  assert norms['loss share 0.25'] == norms['loss joint']
  assert norms['e_loc'] == 0.0


# §8 step 1: branch maps.

def test_anomaly_maps(tiny):
  """§8 step 1 on a hand-checkable case: nets with constant outputs leave a known residual at every pixel.

  E_loc outputs b_t (standardised: (b_t − 0.1) / 2), R_loc b_r, E_glo b_g, R_glo b_rg; so A_loc is the norm of
  (b_t − 0.1) / 2 − b_r and A_glo that of b_g − b_rg, everywhere.
  """
  nets, trainable, e_loc, x = tiny
  stats = {'mean': jnp.full(16, 0.1), 'std': jnp.full(16, 2.0)}
  b_t, b_r = np.linspace(0.5, 2.0, 16), np.linspace(-1.0, 1.0, 16)  # b_t > 0: a final leaky ReLU keeps it
  b_g, b_rg = np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 1.0])
  params = {**trainable, 'r_loc': _constant_output(trainable['r_loc'], 'last', b_r),
            'e_glo': _constant_output(trainable['e_glo'], 'out', b_g),
            'r_glo': _constant_output(trainable['r_glo'], 'last', b_rg)}
  e_loc_constant = _constant_output(e_loc, 'conv3', b_t)

  @jax.jit
  def run(params, e_loc):
    return (models.anomaly_maps(nets, params, e_loc, stats, x),
            models.anomaly_maps(nets, params, e_loc, stats, x, squared=True))

  (a_loc, a_glo), (sq_loc, sq_glo) = run(params, e_loc_constant)
  assert a_loc.shape == a_glo.shape == (2, 64, 64)
  expected_loc = np.sqrt(np.sum(((b_t - 0.1) / 2.0 - b_r) ** 2))
  expected_glo = np.sqrt(np.sum((b_g - b_rg) ** 2))  # sqrt(0.25 + 0 + 4)
  np.testing.assert_allclose(a_loc, expected_loc, rtol=1e-5)
  np.testing.assert_allclose(a_glo, expected_glo, rtol=1e-5)
  np.testing.assert_allclose(sq_loc, expected_loc ** 2, rtol=1e-5)
  np.testing.assert_allclose(sq_glo, 4.25, rtol=1e-5)
  # Random weights: non-negative norms whose squares are the squared maps.
  (a_loc, a_glo), (sq_loc, sq_glo) = run(trainable, e_loc)
  assert np.all(np.asarray(a_loc) >= 0) and np.all(np.asarray(a_glo) >= 0) and float(np.ptp(a_loc)) > 0
  np.testing.assert_allclose(sq_loc, np.square(a_loc), rtol=1e-5)
  np.testing.assert_allclose(sq_glo, np.square(a_glo), rtol=1e-5)
