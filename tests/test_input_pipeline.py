"""Input pipeline: resize, normalisation, augmentation (docs/method.md §7.4) and deterministic epochs."""

import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcad_jax import configlib
from gcad_jax import input_pipeline as ip
from tfds_loco import synthetic
import train_worker

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _images(batch=4, height=32, width=48, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def test_resize_shapes_and_constant_image():
  images = np.full((2, 50, 70, 3), 0.25, np.float32)
  out = ip.resize(images, (16, 24))
  assert out.shape == (2, 16, 24, 3)
  np.testing.assert_allclose(np.asarray(out), 0.25, atol=1e-6)
  # 2-D maps (no channel axis) upsample to the original size, e.g. anomaly maps.
  maps = ip.resize(np.zeros((3, 8, 8), np.float32), (20, 30))
  assert maps.shape == (3, 20, 30)


def test_resize_upsampling_uses_half_pixel_centres():
  ramp = np.arange(4, dtype=np.float32)[None, :].repeat(2, 0)
  out = np.asarray(ip.resize(ramp, (2, 8)))
  # Half-pixel centres: output x maps to input (x + 0.5) / 2 - 0.5, clamped at the edges.
  np.testing.assert_allclose(out[0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)


def test_antialias_averages_when_shrinking():
  checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)
  smooth = np.asarray(ip.resize(checker, (8, 8), 'bilinear_antialias'))
  np.testing.assert_allclose(smooth, 0.5, atol=0.02)


def test_resize_uint8_chunks_match_one_pass():
  images = _images(batch=5, height=40, width=30)
  a = ip.resize_uint8(images, (16, 16), 'bilinear_antialias', chunk=2)
  b = ip.resize_uint8(images, (16, 16), 'bilinear_antialias', chunk=16)
  assert a.dtype == np.uint8 and a.shape == (5, 16, 16, 3)
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('n_in, n_out, antialias', [(900, 128, True), (96, 64, True), (40, 64, True), (33, 17, False)])
def test_fixed_point_weights_are_resize_weights_in_whole_numbers(n_in, n_out, antialias):
  bits = 12
  weights = ip.fixed_point_weights(n_in, n_out, antialias, bits)
  assert weights.shape == (n_out, n_in) and (weights == np.round(weights)).all() and weights.min() >= 0
  np.testing.assert_array_equal(weights.sum(axis=1), 2**bits)
  # The float weights of `resize`: the identity, resized along its rows.
  method = 'bilinear_antialias' if antialias else 'bilinear'
  reference = np.asarray(ip.resize(np.eye(n_in, dtype=np.float32), (n_out, n_in), method))
  assert np.abs(weights / 2**bits - reference).max() <= 1 / 2**bits


def _grey_levels_in_exact_integers(images, size, method):
  """resize_to_grey_levels' fixed point in numpy int64 (no float rounding anywhere)."""
  antialias = method == 'bilinear_antialias'
  rows_w = ip.fixed_point_weights(images.shape[1], size[0], antialias, 16).astype(np.int64)
  columns_w = ip.fixed_point_weights(images.shape[2], size[1], antialias, 12).astype(np.int64)
  rows = np.einsum('ih,nhwc->niwc', rows_w, images.astype(np.int64))
  rows = (rows + 2**11) >> 12
  out = np.einsum('jw,niwc->nijc', columns_w, rows)
  return np.clip((out + 2**15) >> 16, 0, 255)


@pytest.mark.parametrize('shape, size, method', [((2, 900, 700, 3), (128, 96), 'bilinear_antialias'),
                                                 ((3, 64, 96, 3), (64, 64), 'bilinear_antialias'),
                                                 ((2, 40, 50, 3), (64, 64), 'bilinear_antialias'),
                                                 ((2, 256, 320, 3), (128, 128), 'bilinear'),
                                                 ((2, 64, 50, 3), (64, 80), 'bilinear_antialias'),
                                                 ((2, 30, 20, 3), (30, 20), 'bilinear_antialias')])
def test_resize_uint8_is_the_exact_fixed_point_and_within_a_grey_level_of_resize(shape, size, method):
  """Every sum of the two passes is an integer below 2^24, so float32 computes it exactly in any order: the
  result equals the int64 computation bit for bit (what makes exports and runtimes agree; docs/deploy.md)."""
  images = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
  images[0] = 255  # the largest sums
  got = ip.resize_uint8(images, size, method)
  np.testing.assert_array_equal(got, _grey_levels_in_exact_integers(images, size, method))
  assert (got[0] == 255).all()
  rounded = np.clip(np.round(np.asarray(ip.resize(images.astype(np.float32), size, method))), 0, 255)
  assert np.abs(got.astype(np.float32) - rounded).max() <= 1


def test_resize_to_grey_levels_refuses_float_images_and_unknown_methods():
  with pytest.raises(ValueError, match='takes uint8 images; got float32'):
    ip.resize_to_grey_levels(jnp.zeros((1, 8, 8, 3)), (4, 4))
  with pytest.raises(ValueError, match="unknown resize method 'bicubic'"):
    ip.resize_to_grey_levels(jnp.zeros((1, 8, 8, 3), jnp.uint8), (4, 4), 'bicubic')


def test_normalize_maps_imagenet_mean_to_zero():
  mean = jnp.asarray(ip.IMAGENET_MEAN)[None, None, None]
  np.testing.assert_allclose(np.asarray(ip.normalize(jnp.broadcast_to(mean, (1, 2, 2, 3)))), 0, atol=1e-6)


def test_augment_identity_when_everything_is_off():
  images = jnp.asarray(_images()) / 255.0
  out = ip.augment(jax.random.key(0), images, hflip=False, vflip=False, rotate_deg=0.0, jitter=0.0)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(images))


def test_flip_with_probability_one_mirrors_every_image():
  images = jnp.asarray(_images()) / 255.0
  out = ip.augment(jax.random.key(0), images, hflip=True, vflip=False, flip_prob=1.0, rotate_deg=0.0, jitter=0.0)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(images)[:, :, ::-1])
  out = ip.augment(jax.random.key(0), images, hflip=False, vflip=True, flip_prob=1.0, rotate_deg=0.0, jitter=0.0)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(images)[:, ::-1])


def test_small_rotation_keeps_the_centre_and_edge_fill_leaves_no_black_corners():
  images = jnp.ones((2, 33, 33, 3)) * 0.7
  out = np.asarray(ip.augment(jax.random.key(1), images, hflip=False, vflip=False, rotate_deg=3.0, jitter=0.0))
  np.testing.assert_allclose(out, 0.7, atol=1e-5)  # Edge replication: a constant image stays constant.
  ramp = jnp.broadcast_to(jnp.linspace(0, 1, 33)[None, :, None, None], (1, 33, 33, 1)).repeat(3, -1)
  rotated = np.asarray(ip._rotate(ramp[0], jnp.deg2rad(3.0), 'edge'))
  assert abs(rotated[16, 16, 0] - float(ramp[0, 16, 16, 0])) < 1e-5
  assert not np.allclose(rotated, np.asarray(ramp[0]))


def test_jitter_stays_in_range_and_is_deterministic_per_key():
  images = jnp.asarray(_images()) / 255.0
  a = ip.augment(jax.random.key(3), images, hflip=True, vflip=True, rotate_deg=3.0, jitter=0.2)
  b = ip.augment(jax.random.key(3), images, hflip=True, vflip=True, rotate_deg=3.0, jitter=0.2)
  c = ip.augment(jax.random.key(4), images, hflip=True, vflip=True, rotate_deg=3.0, jitter=0.2)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))
  assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_preprocess_follows_the_category_flip_table():
  config = configlib.base_config()
  config.dataset.category = 'breakfast_box'  # No flips (docs/method.md §7.4): layout is fixed.
  config.augment.rotate_deg = 0.0
  config.augment.jitter = 0.0
  config.augment.flip_prob = 1.0
  images = jnp.asarray(_images())
  plain = ip.preprocess(jax.random.key(0), images, config, train=False)
  np.testing.assert_array_equal(np.asarray(ip.preprocess(jax.random.key(0), images, config, train=True)),
                                np.asarray(plain))
  config.dataset.category = 'pushpins'  # Both flips.
  flipped = ip.preprocess(jax.random.key(0), images, config, train=True)
  np.testing.assert_allclose(np.asarray(flipped), np.asarray(plain)[:, ::-1, ::-1], atol=1e-6)


def test_epoch_batches_are_deterministic_and_partition_over_processes():
  a = ip.epoch_batches(50, 8, seed=1, epoch=3)
  assert all(np.array_equal(x, y) for x, y in zip(a, ip.epoch_batches(50, 8, seed=1, epoch=3)))
  assert len(a) == 6 and all(len(b) == 8 for b in a)
  assert len(np.unique(np.concatenate(a))) == 48  # drop_last drops 2; no image twice.
  other = ip.epoch_batches(50, 8, seed=1, epoch=4)
  assert not all(np.array_equal(x, y) for x, y in zip(a, other))
  halves = [ip.epoch_batches(50, 8, seed=1, epoch=3, process_index=i, process_count=2) for i in range(2)]
  for step, whole in enumerate(a):
    np.testing.assert_array_equal(np.concatenate([halves[0][step], halves[1][step]]), whole)


def test_epoch_batches_without_drop_last_fill_the_last_batch():
  batches = ip.epoch_batches(10, 4, seed=0, epoch=0, drop_last=False)
  assert [len(b) for b in batches] == [4, 4, 4]
  assert set(np.concatenate(batches)) == set(range(10))


def test_too_few_images_for_one_batch_is_a_clear_error():
  with pytest.raises(ValueError, match='batch_size'):
    ip.steps_per_epoch(5, 8, drop_last=True)


def test_load_split_reads_the_folder_configured_not_an_earlier_build_of_the_same_name(tmp_path):
  """Issue 25: a data_dir holding a build of the same category from another folder (or from older files
  of the same folder) is rebuilt; it must never be trained on while the ground truth comes from here."""
  counts = {'train': 5, 'validation': 1, 'good': 1, 'logical': 1, 'structural': 1}
  synthetic.generate(tmp_path / 'a', 'synthetic_grid', seed=1, size=(64, 64), counts=counts)
  synthetic.generate(tmp_path / 'b', 'synthetic_grid', seed=2, size=(64, 64), counts={**counts, 'train': 3})
  config = train_worker.load_config(ROOT / 'configs' / 'tiny.py')
  config.dataset.category = 'synthetic_grid'
  config.dataset.data_dir = str(tmp_path / 'tfds')
  config.dataset.manual_dir = str(tmp_path / 'a')
  from_a = ip.load_split(config, 'train')
  config.dataset.manual_dir = str(tmp_path / 'b')
  from_b = ip.load_split(config, 'train')
  config.dataset.data_dir = str(tmp_path / 'tfds_b_only')
  expected = ip.load_split(config, 'train')
  assert len(from_a) == 5 and len(from_b) == 3
  np.testing.assert_array_equal(from_b.images, expected.images)
  added = tmp_path / 'b' / 'synthetic_grid' / 'train' / 'good' / '003.png'
  shutil.copy(added.with_name('000.png'), added)  # the user adds an image to their folder
  config.dataset.data_dir = str(tmp_path / 'tfds')
  assert len(ip.load_split(config, 'train')) == 4
