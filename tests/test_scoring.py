"""gcad_jax/scoring.py: branch maps, validation normalisation, fusion, upsampling (docs/method.md §8, §11.8)."""

import functools
import pathlib

import flax
import jax
import numpy as np
import pytest

from gcad_jax import parallel, scoring, train
import train_worker

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / 'configs' / 'tiny.py'


@flax.struct.dataclass
class Weights:
  """What scoring reads of a TrainState."""
  params: dict
  e_loc_params: dict
  eloc_stats: dict


@functools.lru_cache(maxsize=None)
def tiny_model():
  """Tiny random nets (configs/tiny.py, 64²) with identity E_loc statistics, as a host state."""
  config = train_worker.load_config(TINY)
  nets, trainable, e_loc_params = train._init(config, 17, (64, 64))
  d = config.eloc.d_loc
  stats = {'mean': np.zeros((d,), np.float32), 'std': np.ones((d,), np.float32)}
  return config, nets, Weights(trainable, e_loc_params, stats)


def _images(n, seed):
  return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


@functools.lru_cache(maxsize=None)
def _maps_on(num_devices: int, batch: int):
  config, nets, weights = tiny_model()
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  return scoring.branch_maps(config, nets, weights, _images(5, 0), mesh, batch_size=batch, replicated=False)


def test_padded_and_masked_batches_give_the_maps_of_unpadded_ones():
  """5 images on 8 devices (3 padding rows) = 5 images on 1 device in batches of 5."""
  ref_loc, ref_glo = _maps_on(1, 5)
  loc, glo = _maps_on(8, 8)
  assert loc.shape == (5, 64, 64) and glo.shape == (5, 64, 64) and loc.dtype == np.float32
  np.testing.assert_allclose(loc, ref_loc, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(glo, ref_glo, rtol=1e-5, atol=1e-5)
  assert np.all(ref_loc > 0) and np.all(ref_glo > 0)


@pytest.mark.parametrize('mode', ['scalar', 'per_pixel'])
def test_normalised_validation_maps_have_mean_0_and_std_1_per_branch(mode):
  """docs/method.md §11.8: on the validation images themselves, each normalised branch has mean ≈ 0, std ≈ 1."""
  a_loc, a_glo = _maps_on(1, 5)
  stats = scoring.norm_stats(a_loc, a_glo, mode)
  variants = scoring.scale_variants(a_loc, a_glo, stats)
  for name in ('local', 'global'):
    m = variants[name].astype(np.float64)
    axis = None if mode == 'scalar' else 0
    np.testing.assert_allclose(m.mean(axis=axis), 0, atol=1e-4)
    np.testing.assert_allclose(m.std(axis=axis), 1, atol=1e-3)
  np.testing.assert_allclose(variants['combined'], variants['local'] + variants['global'], atol=1e-6)


def test_other_maps_are_normalised_with_the_validation_statistics():
  """§8 step 2 on hand-computed numbers: μ, σ come from the validation maps and apply unchanged to other maps."""
  # Validation pixels: loc half 1, half 3 (μ 2, σ 1); glo half 10, half 30 (μ 20, σ 10).
  val_loc = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0)])
  val_glo = np.stack([np.full((2, 2), 10.0), np.full((2, 2), 30.0)])
  stats = scoring.norm_stats(val_loc, val_glo, 'scalar')
  assert (stats['loc']['mean'], stats['loc']['std'], stats['glo']['mean'], stats['glo']['std']) == (2, 1, 20, 10)
  v = scoring.scale_variants(np.full((1, 2, 2), 5.0), np.array([[[0.0, 20.0], [40.0, 25.0]]]), stats)
  np.testing.assert_array_equal(v['local'], np.full((1, 2, 2), 3.0))  # (5 - 2) / 1
  np.testing.assert_array_equal(v['global'], [[[-2.0, 0.0], [2.0, 0.5]]])  # (A - 20) / 10
  np.testing.assert_array_equal(v['combined'], [[[1.0, 3.0], [5.0, 3.5]]])
  # score.fusion='max': the pixelwise maximum of the same normalised maps, the branches unchanged.
  m = scoring.scale_variants(np.full((1, 2, 2), 5.0), np.array([[[0.0, 20.0], [40.0, 25.0]]]), stats, 'max')
  np.testing.assert_array_equal(m['combined'], [[[3.0, 3.0], [3.0, 3.0]]])
  m = scoring.scale_variants(np.full((1, 2, 2), 3.0), np.array([[[0.0, 20.0], [40.0, 25.0]]]), stats, 'max')
  np.testing.assert_array_equal(m['combined'], [[[1.0, 1.0], [2.0, 1.0]]])
  np.testing.assert_array_equal(m['global'], v['global'])
  with pytest.raises(ValueError, match='score.fusion'):
    scoring.scale_variants(np.ones((1, 2, 2)), np.ones((1, 2, 2)), stats, 'mean')
  # per_pixel: each pixel's own μ, σ over the validation images.
  val = np.array([[[1.0, 0.0], [-1.0, 0.0]], [[3.0, 4.0], [1.0, 2.0]]])  # μ [[2, 2], [0, 1]], σ [[1, 2], [1, 1]]
  stats = scoring.norm_stats(val, 2 * val, 'per_pixel')
  np.testing.assert_array_equal(stats['loc']['mean'], [[2, 2], [0, 1]])
  np.testing.assert_array_equal(stats['loc']['std'], [[1, 2], [1, 1]])
  v = scoring.scale_variants(np.ones((1, 2, 2)), np.ones((1, 2, 2)), stats)
  np.testing.assert_array_equal(v['local'], [[[-1.0, -0.5], [1.0, 0.0]]])
  np.testing.assert_array_equal(v['global'], [[[-1.5, -0.75], [0.5, -0.5]]])  # (1 - 2μ) / 2σ


def test_scales_fuse_by_mean_and_upsampled_maps_have_the_original_size():
  a = {'combined': np.full((2, 4, 4), 1.0, np.float32), 'local': np.zeros((2, 4, 4), np.float32),
       'global': np.ones((2, 4, 4), np.float32)}
  b = {k: v + 2 for k, v in a.items()}
  fused = scoring.fuse_scales([a, b])
  np.testing.assert_allclose(fused['combined'], 2.0)
  ramp = np.arange(16, dtype=np.float32).reshape(4, 4)
  maps = scoring.FullResMaps(['test/good/000', 'test/good/001'], np.stack([ramp, -ramp]),
                             np.array([[7, 10], [7, 10]]))
  full = maps['test/good/000']
  assert full.shape == (7, 10) and full.dtype == np.float32
  assert scoring.image_scores(maps)['test/good/001'] == pytest.approx(float(np.max(maps['test/good/001'])))
  # Half-pixel-centre bilinear never overshoots the low-resolution range (no ringing).
  assert full.max() <= 15 + 1e-5 and full.min() >= -1e-5


def test_constant_validation_maps_are_refused():
  with pytest.raises(ValueError, match='std'):
    scoring.norm_stats(np.ones((2, 4, 4)), np.random.rand(2, 4, 4))


def test_norm_stats_round_trip_through_json(tmp_path):
  config = train_worker.load_config(TINY)
  stats = {17: scoring.norm_stats(np.random.rand(2, 4, 4), np.random.rand(2, 4, 4) + 1)}
  scoring.save_norm_stats(stats, config, tmp_path)
  back = scoring.load_norm_stats(tmp_path)
  assert back[17]['glo']['mean'] == pytest.approx(float(stats[17]['glo']['mean']))


def test_squared_maps_are_the_squares_of_the_norms():
  """config.score.squared (docs/method.md §8 step 1): the squared per-pixel norms instead of the norms."""
  config, nets, weights = tiny_model()
  config = config.copy_and_resolve_references()
  config.score.squared = True
  mesh = parallel.make_mesh(jax.devices()[:1])
  loc, glo = scoring.branch_maps(config, nets, weights, _images(5, 0), mesh, batch_size=5, replicated=False)
  ref_loc, ref_glo = _maps_on(1, 5)
  np.testing.assert_allclose(loc, ref_loc ** 2, rtol=1e-4)
  np.testing.assert_allclose(glo, ref_glo ** 2, rtol=1e-4)
