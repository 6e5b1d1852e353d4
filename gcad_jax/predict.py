"""Anomaly maps and scores for new images with a trained workdir (GCAD.md §8).

  python -m gcad_jax.predict --workdir W --images DIR --out OUT

writes OUT/maps/<stem>.tiff (2-D float32 at the image's size), OUT/overlays/<stem>.png and OUT/scores.csv
(image, score = map maximum). Python:

  model = gcad_jax.predict.load(W)          # or gcad_jax.load(W)
  maps, scores = model.score(images)        # uint8 H×W×3 images (a list, sizes may differ, or an array)

Uses W/config.json, each scale's latest checkpoint and W/score_norm.json (written by --mode=eval).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import pathlib
import sys
from typing import Any, Sequence

import numpy as np


@dataclasses.dataclass
class Model:
  """A trained GCAD: per scale (nets, state on the devices), the validation statistics, the mesh."""
  config: Any
  models: dict
  stats: dict
  mesh: Any

  def score(self, images: Sequence[np.ndarray] | np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    """(maps at each image's own size, image scores = map maxima) of uint8 (H, W, 3) images (§8 steps 1–6)."""
    from gcad_jax import input_pipeline, scoring  # pylint: disable=g-import-not-at-top
    images = [np.asarray(im) for im in images]
    for i, im in enumerate(images):
      if im.ndim != 3 or im.shape[-1] != 3 or im.dtype != np.uint8:
        raise ValueError(f'image {i} has shape {im.shape} and dtype {im.dtype}; give uint8 (H, W, 3) RGB images')
    if not images:
      return [], []
    size = tuple(self.config.dataset.image_size)
    method = self.config.dataset.resize_method
    small = np.concatenate([input_pipeline.resize_uint8(im[None], size, method) for im in images])
    fused = scoring.score_images(self.config, self.models, self.stats, small, self.mesh)['combined']
    maps = [scoring.upsample(m, im.shape[:2]) for m, im in zip(fused, images)]
    return maps, [float(m.max()) for m in maps]


def load(workdir, mesh=None) -> Model:
  """The model of `workdir`: W/config.json, the latest checkpoint of every scale, W/score_norm.json."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gcad_jax import parallel, scoring, train  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  path = workdir / 'config.json'
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing: {workdir} is not a gcad_jax workdir (train it first)')
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
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
  return Model(config, models, stats, mesh)


IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')


def _overlay(image: np.ndarray, amap: np.ndarray, path: pathlib.Path, title: str) -> None:
  from gcad_jax import report  # pylint: disable=g-import-not-at-top
  plt = report._pyplot()  # pylint: disable=protected-access
  fig, ax = plt.subplots(figsize=(5, 5 * image.shape[0] / image.shape[1]))
  ax.imshow(image)
  im = ax.imshow(amap, cmap='jet', alpha=0.45)
  fig.colorbar(im, ax=ax, fraction=0.04)
  ax.set_title(title, fontsize=8)
  ax.axis('off')
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m gcad_jax.predict', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--images', required=True, help='a folder of images (png, jpg, bmp, tif)')
  parser.add_argument('--out', required=True)
  parser.add_argument('--batch', type=int, default=16, help='images scored per call')
  args = parser.parse_args(argv)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import tifffile  # pylint: disable=g-import-not-at-top
  paths = sorted(p for p in pathlib.Path(args.images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
  if not paths:
    print(f'error: no images ({", ".join(IMAGE_SUFFIXES)}) in {args.images}', file=sys.stderr)
    return 2
  try:
    model = load(args.workdir)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  out = pathlib.Path(args.out)
  (out / 'maps').mkdir(parents=True, exist_ok=True)
  (out / 'overlays').mkdir(parents=True, exist_ok=True)
  rows = []
  for start in range(0, len(paths), args.batch):
    chunk = paths[start:start + args.batch]
    images = [np.asarray(Image.open(p).convert('RGB')) for p in chunk]
    maps, scores = model.score(images)
    for p, image, amap, score in zip(chunk, images, maps, scores):
      tmp = out / 'maps' / f'.{p.stem}.tiff.tmp'
      tifffile.imwrite(tmp, amap)
      os.replace(tmp, out / 'maps' / f'{p.stem}.tiff')
      _overlay(image, amap, out / 'overlays' / f'{p.stem}.png', f'{p.name}  score {score:.3f}')
      rows.append((p.name, score))
    print(f'{min(start + args.batch, len(paths))}/{len(paths)} images', file=sys.stderr)
  with (out / 'scores.csv').open('w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['image', 'score'])
    writer.writerows((name, f'{score:.6g}') for name, score in rows)
  print(f'wrote {len(rows)} maps, overlays and {out / "scores.csv"}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
