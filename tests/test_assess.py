"""gcad_jax/assess.py and gcad_jax/predict.py end to end on a tiny random GCAD (docs/method.md §8, §11.8–9)."""

import json
import pathlib

import flax
import jax
import numpy as np
import pytest
import tifffile

from gcad_jax import assess, evaluate, input_pipeline, map_files, parallel, predict, report, scoring
from tfds_loco import layout
import fixture_scripts
import test_scoring

ROOT = pathlib.Path(__file__).resolve().parents[1]
gen = fixture_scripts.eval_fixture()


def _split(cat_dir, split, size):
  records = layout.list_split(cat_dir, split)
  images = [layout.read_rgb_image(r.path) for r in records]
  noise = np.random.default_rng(len(records))  # the fixture images are flat grey: add texture
  images = [np.clip(im.astype(int) + noise.integers(-40, 40, im.shape), 0, 255).astype(np.uint8) for im in images]
  return input_pipeline.SplitData(
      images=np.concatenate([input_pipeline.resize_uint8(im[None], size, 'bilinear_antialias') for im in images]),
      image_ids=[r.image_id for r in records], labels=np.array([layout.KINDS.index(r.kind) for r in records]),
      original_sizes=np.array([im.shape[:2] for im in images])), images


@pytest.fixture(scope='module')
def assessed(tmp_path_factory):
  root = tmp_path_factory.mktemp('assess')
  cat_dir = gen.write_dataset(root / 'dataset')
  config, nets, weights = test_scoring.tiny_model()
  config = config.copy_and_resolve_references()
  config.dataset.manual_dir = str(root / 'dataset')
  config.dataset.category = gen.CATEGORY
  config.export.branch_maps = True
  mesh = parallel.make_mesh(jax.devices()[:2])
  models = {17: (nets, parallel.replicate(weights, config.parallel, mesh))}
  test, originals = _split(cat_dir, 'test', (64, 64))
  val = input_pipeline.SplitData(test.images[:6], test.image_ids[:6], test.labels[:6], test.original_sizes[:6])
  with pytest.warns(evaluate.EvaluationWarning):
    out = assess.assess_test_split(config, root / 'w', models, mesh, step=3, val_data=val, test_data=test)
  return config, models, mesh, root / 'w', cat_dir, out, test, originals


def test_eval_writes_maps_metrics_report_and_image_score_is_the_tiff_max(assessed):
  config, _, _, workdir, cat_dir, out, test, _ = assessed
  metrics = json.loads((workdir / 'metrics.json').read_text())
  assert set(metrics['variants']) == {'local', 'global'} and metrics['gcad_jax']['step'] == 3
  assert (workdir / 'report.md').is_file() and (workdir / scoring.NORM_FILE).is_file()
  for variant in ('local', 'global'):  # per defect type for each branch: report.md's per-type table
    per_type = metrics['variants'][variant]['per_defect_type']
    assert per_type and all(row is None or 0.0 <= row['auc_roc'] <= 1.0 for row in per_type.values())
  assert 'Per defect type' in (workdir / 'report.md').read_text()
  for folder in ('anomaly_maps', 'anomaly_maps_local', 'anomaly_maps_global'):
    assert map_files.is_complete(workdir / folder)
  again = evaluate.evaluate_category(cat_dir, workdir / 'anomaly_maps' / gen.CATEGORY, num_workers=1,
                                     per_defect_type=False)
  assert again['localization']['auc_spro'] == metrics['localization']['auc_spro']
  scores = map_files.read_marker(workdir / 'anomaly_maps')['image_scores']
  for image_id in test.image_ids[:4]:
    tiff = tifffile.imread(workdir / 'anomaly_maps' / gen.CATEGORY / f'{image_id}.tiff')
    assert tiff.shape == (gen.HEIGHT, gen.WIDTH)  # the original size, not the network's 64²
    assert scores[image_id] == float(tiff.max())


def test_validation_maps_normalise_to_mean_0_std_1(assessed):
  config, models, mesh, workdir, _, _, test, _ = assessed
  stats = scoring.load_norm_stats(workdir)
  nets, state = models[17]
  a_loc, a_glo = scoring.branch_maps(config, nets, state, test.images[:6], mesh)
  v = scoring.scale_variants(a_loc, a_glo, stats[17])
  for name in ('local', 'global'):
    assert abs(float(v[name].mean())) < 1e-3 and abs(float(v[name].std()) - 1) < 1e-3


def test_exported_maps_are_normalised_with_the_validation_statistics(assessed):
  """§8 step 2: score_norm.json holds μ, σ of the validation maps (computed here in NumPy), and the exported
  maps of the other test images are (A_loc − μ_loc) / σ_loc + (A_glo − μ_glo) / σ_glo with them, upsampled."""
  config, models, mesh, workdir, _, _, test, _ = assessed
  nets, state = models[17]
  axis = None if config.score.norm == 'scalar' else 0
  val = dict(zip(('loc', 'glo'), scoring.branch_maps(config, nets, state, test.images[:6], mesh)))
  saved = scoring.load_norm_stats(workdir)[17]
  mean, std = {}, {}
  for name, a in val.items():
    a = a.astype(np.float64)
    mean[name] = a.sum(axis=axis) / (a.size if axis is None else len(a))
    std[name] = np.sqrt(np.square(a - mean[name]).sum(axis=axis) / (a.size if axis is None else len(a)))
    np.testing.assert_allclose(saved[name]['mean'], mean[name], rtol=1e-6)
    np.testing.assert_allclose(saved[name]['std'], std[name], rtol=1e-6)
  rest = slice(6, len(test.image_ids))
  assert not set(test.image_ids[rest]) & set(test.image_ids[:6])
  a_loc, a_glo = scoring.branch_maps(config, nets, state, test.images[rest], mesh)
  local = (a_loc - mean['loc']) / std['loc']
  glob = (a_glo - mean['glo']) / std['glo']
  for k, image_id in enumerate(test.image_ids[rest]):
    for folder, expected in (('anomaly_maps', local + glob), ('anomaly_maps_local', local),
                             ('anomaly_maps_global', glob)):
      tiff = tifffile.imread(workdir / folder / gen.CATEGORY / f'{image_id}.tiff')
      full = scoring.upsample(expected[k].astype(np.float32), test.original_sizes[6 + k])
      np.testing.assert_allclose(tiff, full, rtol=1e-4, atol=1e-4, err_msg=f'{folder}/{image_id}')


def test_predict_api_gives_the_exported_maps_for_any_batch_size(assessed):
  config, models, mesh, workdir, _, _, test, originals = assessed
  model = predict.Model(config, models, scoring.load_norm_stats(workdir), mesh)
  maps, scores = model.score(originals[:3])  # 3 images on 2 devices: padded and masked
  for image_id, m, s in zip(test.image_ids[:3], maps, scores):
    tiff = tifffile.imread(workdir / 'anomaly_maps' / gen.CATEGORY / f'{image_id}.tiff')
    np.testing.assert_allclose(m, tiff, rtol=1e-5, atol=1e-5)
    assert s == float(m.max())
  with pytest.raises(ValueError, match='uint8'):
    model.score([np.zeros((8, 8), np.float32)])


@flax.struct.dataclass
class _SteppedWeights:
  """Weights with a training step, as a `train.TrainState` has."""
  params: dict
  e_loc_params: dict
  eloc_stats: dict
  step: np.ndarray


def test_report_shows_each_scales_step(assessed, tmp_path):
  """Two scales trained to different steps: report.md and metrics.json give each scale's, not the last one's."""
  config, models, mesh, _, _, _, test, _ = assessed
  nets, _ = models[17]
  _, _, w = test_scoring.tiny_model()
  two = {p: (nets, parallel.replicate(_SteppedWeights(w.params, w.e_loc_params, w.eloc_stats, np.int32(s)),
                                      config.parallel, mesh)) for p, s in ((17, 120), (33, 240))}
  assert assess.scale_steps(config, two, step=240) == {17: 120, 33: 240}
  val = input_pipeline.SplitData(test.images[:6], test.image_ids[:6], test.labels[:6], test.original_sizes[:6])
  with pytest.warns(evaluate.EvaluationWarning):
    out = assess.assess_test_split(config, tmp_path, two, mesh, step=240, val_data=val, test_data=test)
  assert 'Checkpoint steps p17 120, p33 240; scales [17, 33]' in (tmp_path / report.REPORT_FILE).read_text()
  assert out['metrics']['gcad_jax']['steps'] == {'17': 120, '33': 240} and out['metrics']['gcad_jax']['step'] == 240
  assert map_files.read_marker(tmp_path / 'anomaly_maps')['steps'] == {'17': 120, '33': 240}
