r"""Writes the builder's dummy_data/: tiny categories in MVTec LOCO AD layout (docs/data_format.md §2, §5, §6).

  python tfds_loco/mvtec_loco/dummy_data/make_dummy_data.py

`write_category` is also what the tests use to make folders the builder has never seen.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Sequence

import numpy as np
from PIL import Image

# Relative 1.0 and 0.5, absolute (a JSON int), as in §6; values in LOCO's 234..255 range.
DEFECTS = (
    {'defect_name': 'missing_part', 'pixel_value': 255, 'saturation_threshold': 1.0,
     'relative_saturation': True},
    {'defect_name': 'extra_part', 'pixel_value': 254, 'saturation_threshold': 0.5,
     'relative_saturation': True},
    {'defect_name': 'part_misplaced', 'pixel_value': 250, 'saturation_threshold': 40,
     'relative_saturation': False},
    {'defect_name': 'scratch', 'pixel_value': 236, 'saturation_threshold': 1.0,
     'relative_saturation': True},
)


def _image(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
  w, h = size
  img = np.zeros((h, w, 3), np.uint8)
  img[...] = rng.integers(40, 200, size=3, dtype=np.uint8)
  for _ in range(3):
    x, y = int(rng.integers(0, w - 4)), int(rng.integers(0, h - 4))
    img[y:y + 6, x:x + 8] = rng.integers(0, 256, size=3, dtype=np.uint8)
  return img


def _mask(size: tuple[int, int], value: int, index: int) -> np.ndarray:
  """Channel `index` of an image: a rectangle; consecutive channels overlap."""
  w, h = size
  mask = np.zeros((h, w), np.uint8)
  x0, y0 = 2 + 3 * index, 1 + 2 * index
  mask[y0:y0 + h // 2, x0:x0 + w // 3] = value
  return mask


def write_category(root: str | pathlib.Path, name: str, size: tuple[int, int] = (48, 32), *,
                   train: int = 3, validation: int = 2, good: int = 2,
                   logical: Sequence[Sequence[int]] = ((255,), (254, 250)),
                   structural: Sequence[Sequence[int]] = ((236,),),
                   defects: Sequence[dict] = DEFECTS, seed: int = 0) -> pathlib.Path:
  """Writes root/name/ in LOCO layout; `logical`/`structural` list each image's channel pixel values.

  size is (W, H). An empty `logical` writes no logical_anomalies folder at all.
  """
  cat = pathlib.Path(root) / name
  if cat.exists():
    shutil.rmtree(cat)
  rng = np.random.default_rng(seed)
  cat.mkdir(parents=True)
  (cat / 'defects_config.json').write_text(json.dumps(list(defects), indent=2))
  folders = {'train/good': train, 'validation/good': validation, 'test/good': good}
  anomalies = {'logical_anomalies': logical, 'structural_anomalies': structural}
  for kind, images in anomalies.items():
    folders[f'test/{kind}'] = len(images)
  for folder, n in folders.items():
    if not n:
      continue
    (cat / folder).mkdir(parents=True)
    for i in range(n):
      Image.fromarray(_image(size, rng)).save(cat / folder / f'{i:03d}.png')
  for kind, images in anomalies.items():
    for i, values in enumerate(images):
      gt = cat / 'ground_truth' / kind / f'{i:03d}'
      gt.mkdir(parents=True)
      for c, value in enumerate(values):
        Image.fromarray(_mask(size, value, c)).save(gt / f'{c:03d}.png')
  return cat


def main() -> None:
  here = pathlib.Path(__file__).parent
  write_category(here, 'pushpins', (48, 32), seed=0)
  write_category(here, 'juice_bottle', (24, 40), train=2, validation=1, good=1,
                 logical=((255,),), structural=((236,), (250, 236)), seed=1)


if __name__ == '__main__':
  main()
