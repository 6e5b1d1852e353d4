"""Anomaly maps and scores for new images with a trained workdir (docs/method.md §8).

  python -m gcad_jax.predict --workdir W --images DIR --out OUT
  python -m gcad_jax.predict --exported DIR --images DIR --out OUT    (an export of gcad_jax.export)

writes OUT/maps/<stem>.tiff (2-D float32 at the image's size), OUT/overlays/<stem>.png and OUT/scores.csv
(image, score = map maximum, docs/method.md §8 step 6; with a threshold also threshold and anomalous = score >
threshold). Python:

  model = gcad_jax.predict.load(W)          # or gcad_jax.load(W)
  maps, scores = model.score(images)        # uint8 H×W×3 images (a list, sizes may differ, or an array)
  model.validation_threshold()              # {'threshold': ..., ...}, also saved as W/threshold.json

Uses W/config.json, each scale's latest checkpoint and W/score_norm.json (written by --mode=eval). The
threshold (--threshold auto, the default) is W/threshold.json, else chosen on the validation images of the
workdir's data set (all good, docs/method.md §8 step 2's images): the --threshold_quantile of their image scores,
1.0 = their maximum (no validation image flagged); without the data set, scores.csv has no threshold.
Any batch size works: batches the devices do not divide are padded and the padding dropped (scoring.py).
With --exported, the export's threshold and flags are used and every image must have the export's size.
Image files are read as 8-bit RGB: grey, palette and alpha images are converted (grey replicated, alpha
dropped), 16-bit and float images refused (`exported.read_image`). An image that cannot be read or scored gets
its own line in scores.csv with the reason in an `error` column; the others are scored, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import pathlib
import sys
from typing import Any, Sequence

import numpy as np

from gcad_jax import atomic_io


THRESHOLD_FILE = 'threshold.json'


def choose_threshold(validation_scores: Sequence[float], quantile: float = 1.0) -> float:
  """The image-score threshold: the `quantile` of the (good) validation images' scores; 1.0 = their maximum."""
  scores = np.asarray(validation_scores, np.float64)
  if scores.size == 0 or not 0.0 < quantile <= 1.0:
    raise ValueError(f'need validation scores and a quantile in (0, 1]; got {scores.size} scores, quantile '
                     f'{quantile}')
  return float(np.quantile(scores, quantile, method='higher'))


@dataclasses.dataclass
class Model:
  """A trained GCAD: per scale (nets, state on the devices), the validation statistics, the mesh."""
  config: Any
  models: dict
  stats: dict
  mesh: Any
  workdir: pathlib.Path | None = None
  threshold: dict | None = None  # W/threshold.json: {'threshold', 'quantile', 'num_images', ...}

  def score(self, images: Sequence[np.ndarray] | np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    """(maps at each image's own size, image scores = map maxima) of uint8 (H, W, 3) images (§8 steps 1–6)."""
    from gcad_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    images = [np.asarray(im) for im in images]
    for i, im in enumerate(images):
      if im.ndim != 3 or im.shape[-1] != 3 or im.dtype != np.uint8:
        raise ValueError(f'image {i} has shape {im.shape} and dtype {im.dtype}; give uint8 (H, W, 3) RGB images')
    if not images:
      return [], []
    size = tuple(self.config.dataset.image_size)
    method = self.config.dataset.resize_method
    small = np.concatenate([input_pipeline.resize_uint8(im[None], size, method) for im in images])
    return self._score_resized(small, [im.shape[:2] for im in images])

  def _score_resized(self, small: np.ndarray, sizes) -> tuple[list[np.ndarray], list[float]]:
    from gcad_jax import scoring  # pylint: disable=g-import-not-at-top
    fused = scoring.score_images(self.config, self.models, self.stats, small, self.mesh)['combined']
    maps = [scoring.upsample(m, s) for m, s in zip(fused, sizes)]
    return maps, [float(m.max()) for m in maps]

  def validation_threshold(self, quantile: float = 1.0, save: bool = True) -> dict:
    """Chooses the threshold on the validation split of config.dataset (choose_threshold); saves it in W."""
    from gcad_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    val = input_pipeline.load_split(self.config, 'validation')
    _, scores = self._score_resized(val.images, val.original_sizes)
    self.threshold = {'threshold': choose_threshold(scores, quantile), 'quantile': quantile,
                      'num_images': len(scores), 'category': self.config.dataset.category,
                      'rule': 'quantile of the validation image scores (map maxima); 1.0 = their maximum',
                      'validation_scores': dict(zip(val.image_ids, scores))}
    if save and self.workdir is not None:
      atomic_io.write_json(self.workdir / THRESHOLD_FILE, self.threshold, indent=1)
    return self.threshold


def load(workdir, mesh=None) -> Model:
  """The model of `workdir`: W/config.json, the latest checkpoint of every scale, W/score_norm.json."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gcad_jax import parallel, run_info, scoring, train  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  saved = run_info.saved_config(workdir)
  if saved is None:
    raise FileNotFoundError(f'{workdir / "config.json"} is missing: {workdir} is not a gcad_jax workdir '
                            '(train it first)')
  config = ml_collections.ConfigDict(saved)
  stats = scoring.load_norm_stats(workdir)
  mesh = parallel.make_mesh() if mesh is None else mesh
  models = {}
  for p in config.model.scales:
    nets, state, _ = train.restore_latest(config, workdir, int(p), mesh)
    models[int(p)] = (nets, state)
  missing = set(models) - set(stats)
  if missing:
    raise ValueError(f'{workdir / scoring.NORM_FILE} has no statistics for scales {sorted(missing)}; rerun '
                     '--mode=eval')
  threshold_path = workdir / THRESHOLD_FILE
  threshold = json.loads(threshold_path.read_text()) if threshold_path.is_file() else None
  return Model(config, models, stats, mesh, workdir, threshold)


IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')


def _overlay(image: np.ndarray, amap: np.ndarray, path: pathlib.Path, title: str) -> None:
  from gcad_jax import atomic_io, report  # pylint: disable=g-import-not-at-top
  plt = report._pyplot()  # pylint: disable=protected-access
  fig, ax = plt.subplots(figsize=(5, 5 * image.shape[0] / image.shape[1]))
  ax.imshow(image)
  im = ax.imshow(amap, cmap='jet', alpha=0.45)
  fig.colorbar(im, ax=ax, fraction=0.04)
  ax.set_title(title, fontsize=8)
  ax.axis('off')
  fig.tight_layout()
  with atomic_io.replacing(path) as tmp:  # No half-written overlay under its final name (issue 7).
    fig.savefig(tmp, dpi=80)
  plt.close(fig)


def _threshold(model: Model, how: str, quantile: float) -> tuple[float | None, str]:
  """(threshold or None, where it came from) for --threshold auto|validation|none|<number>."""
  if how == 'none':
    return None, 'none'
  if how not in ('auto', 'validation'):
    try:
      return float(how), 'given'
    except ValueError:
      raise ValueError(f'--threshold {how!r}: use auto, validation, none or a number') from None
  if how == 'auto' and model.threshold is not None:
    t = model.threshold
    return float(t['threshold']), f'{model.workdir / THRESHOLD_FILE} (quantile {t.get("quantile")})'
  try:
    t = model.validation_threshold(quantile)
  except Exception as e:  # pylint: disable=broad-except (auto: any missing data means no threshold)
    if how == 'validation':
      raise ValueError(f'cannot score the validation images of {model.config.dataset.category}: {e}') from e
    print(f'note: no threshold: the validation images of {model.config.dataset.category} could not be '
          f'scored ({type(e).__name__}: {e}); give --threshold NUMBER to set one', file=sys.stderr)
    return None, 'none'
  return float(t['threshold']), (f'quantile {quantile} of {t["num_images"]} validation image scores, saved '
                                 f'in {model.workdir / THRESHOLD_FILE}')


def _workdir_scorer(args):
  """(score(images) → (maps, scores, flags or None), threshold, source, size check) of --workdir."""
  model = load(args.workdir)
  threshold, source = _threshold(model, args.threshold, args.threshold_quantile)

  def score(images):
    maps, scores = model.score(images)
    return maps, scores, None if threshold is None else [s > threshold for s in scores]

  return score, threshold, source, lambda image: None


def _exported_scorer(args):
  """The same for --exported: the export's threshold and flags; images must have the export's size."""
  from gcad_jax import exported  # pylint: disable=g-import-not-at-top
  if args.threshold != 'auto':
    raise ValueError(f'--threshold {args.threshold}: an export carries its threshold; export again with '
                     '`python -m gcad_jax.export --threshold ...` to change it')
  model = exported.load_exported(args.exported, args.format)
  size = model.image_size

  def check(image):
    if image.shape[:2] != size:
      return (f'image is {image.shape[0]}x{image.shape[1]} (HxW); the {model.format} export takes '
              f'{size[0]}x{size[1]}: export again with --image_size {image.shape[0]},{image.shape[1]}')
    return None

  def score(images):
    out = model.serve(np.stack(images))
    return list(out['maps']), [float(s) for s in out['scores']], [bool(f) for f in out['flags']]

  threshold = model.manifest['threshold']
  return score, model.threshold, f'{args.exported}/manifest.json: {threshold.get("source")}', check


def main(argv: Sequence[str] | None = None) -> int:
  from gcad_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.set_cpu_xla_flags()  # Before JAX starts (docs/performance.md).
  parser = argparse.ArgumentParser(prog='python -m gcad_jax.predict', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  given = parser.add_mutually_exclusive_group(required=True)
  given.add_argument('--workdir', help='a trained workdir')
  given.add_argument('--exported', help='an export folder of python -m gcad_jax.export (docs/deploy.md)')
  parser.add_argument('--format', default=None, help='with --exported: stablehlo, onnx or saved_model '
                      '(default: the first the export holds, in that order)')
  parser.add_argument('--images', required=True, help='a folder of images (png, jpg, bmp, tif)')
  parser.add_argument('--out', required=True)
  parser.add_argument('--batch', type=int, default=16, help='images scored per call')
  parser.add_argument('--threshold', default='auto',
                      help='auto (W/threshold.json, else chosen on the validation images if the data set is '
                      'there, else none; with --exported: the export\'s), validation (choose again), none, or a '
                      'number')
  parser.add_argument('--threshold_quantile', type=float, default=1.0,
                      help='quantile of the validation image scores used as threshold (1.0 = their maximum)')
  args = parser.parse_args(argv)
  import tifffile  # pylint: disable=g-import-not-at-top
  from gcad_jax import exported  # pylint: disable=g-import-not-at-top
  paths = sorted(p for p in pathlib.Path(args.images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
  if not paths:
    print(f'error: no images ({", ".join(IMAGE_SUFFIXES)}) in {args.images}', file=sys.stderr)
    return 2
  try:
    score, threshold, source, check = (_exported_scorer if args.exported else _workdir_scorer)(args)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  out = pathlib.Path(args.out)
  (out / 'maps').mkdir(parents=True, exist_ok=True)
  (out / 'overlays').mkdir(parents=True, exist_ok=True)
  rows, errors = {}, {}
  for start in range(0, len(paths), args.batch):
    chunk, images = [], []
    for p in paths[start:start + args.batch]:  # A bad image gets its own error line; the rest are scored.
      try:
        image = exported.read_image(p)
      except Exception as e:  # pylint: disable=broad-except (PIL raises many kinds for a broken file)
        errors[p.name] = f'cannot read the image: {type(e).__name__}: {e}'
        continue
      errors[p.name] = check(image)
      if errors[p.name] is None:
        chunk.append(p)
        images.append(image)
    if not chunk:
      continue
    maps, scores, flags = score(images)
    for i, (p, image, amap, score_) in enumerate(zip(chunk, images, maps, scores)):
      with atomic_io.replacing(out / 'maps' / f'{p.stem}.tiff') as tmp:
        tifffile.imwrite(tmp, amap)
      _overlay(image, amap, out / 'overlays' / f'{p.stem}.png', f'{p.name}  score {score_:.3f}')
      rows[p.name] = ((p.name, f'{score_:.6g}') if threshold is None else
                      (p.name, f'{score_:.6g}', f'{threshold:.6g}', int(flags[i])))
    print(f'{min(start + args.batch, len(paths))}/{len(paths)} images', file=sys.stderr)
  failed = {name: e for name, e in errors.items() if e is not None}
  with atomic_io.replacing(out / 'scores.csv') as tmp, open(tmp, 'w', newline='') as f:
    writer = csv.writer(f)
    header = ['image', 'score'] + ([] if threshold is None else ['threshold', 'anomalous'])
    writer.writerow(header + (['error'] if failed else []))
    for p in paths:  # In file order; the error column only when an image failed.
      if p.name in failed:
        writer.writerow([p.name] + [''] * (len(header) - 1) + [failed[p.name]])
      else:
        writer.writerow(list(rows[p.name]) + ([''] if failed else []))
  flagged = '' if threshold is None else f'; {sum(r[3] for r in rows.values())} above the threshold'
  print(f'wrote {len(rows)} maps, overlays and {out / "scores.csv"} (threshold: {source}{flagged})')
  for name, e in failed.items():
    print(f'error: {name}: {e}', file=sys.stderr)
  if failed:
    print(f'error: {len(failed)} of {len(paths)} images not scored (see the error column of '
          f'{out / "scores.csv"})', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
