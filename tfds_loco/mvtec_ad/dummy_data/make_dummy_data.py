r"""Writes the mvtec_ad builder's dummy_data/: tiny generated categories in MVTec AD's layout (no real images).

  python tfds_loco/mvtec_ad/dummy_data/make_dummy_data.py

`write_category` is also what the tests use to make folders (MVTec AD-style, any layout variant).
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

# cable: RGB, with Table 4's logical cable_swap and combined/005 beside structural ones.
# grid: a grey category (MVTec AD's grid, screw and zipper are grey), a mask with two components.
CATEGORIES = {
    'cable': dict(size=(24, 20), gray=False, tests={'good': 2, 'bent_wire': 1, 'cable_swap': 1, 'combined': 6}),
    'grid': dict(size=(16, 16), gray=True, tests={'good': 1, 'bent': 2}),
}


def _image(size: tuple[int, int], gray: bool, rng: np.random.Generator) -> Image.Image:
  w, h = size
  pixels = rng.integers(60, 200, size=(h, w) if gray else (h, w, 3), dtype=np.uint8)
  return Image.fromarray(pixels, 'L' if gray else 'RGB')


def _mask(size: tuple[int, int], index: int) -> Image.Image:
  """A defect rectangle; every other image gets a second, separate one touching the border."""
  w, h = size
  mask = np.zeros((h, w), np.uint8)
  mask[2:2 + h // 3, 2 + index % 3:2 + index % 3 + w // 4] = 255
  if index % 2:
    mask[h - 2:, w - 3:] = 255
  return Image.fromarray(mask, 'L')


def write_category(root: str | pathlib.Path, name: str, size: tuple[int, int] = (24, 20), *, gray: bool = False,
                   train: int = 10, tests: Mapping[str, int] = {'good': 1, 'crack': 1},
                   masks: bool = True, validation: int = 0, seed: int = 0) -> pathlib.Path:
  """Writes root/name/ in MVTec AD's layout: train/good, test/<defect>, ground_truth/<defect>/NNN_mask.png.

  size is (W, H); `validation` > 0 also writes a validation/good folder (the folder format's option).
  """
  cat = pathlib.Path(root) / name
  if cat.exists():
    shutil.rmtree(cat)
  rng = np.random.default_rng(seed)
  folders = [('train', 'good', train)] + [('validation', 'good', validation)] * bool(validation)
  folders += [('test', defect, count) for defect, count in tests.items()]
  for split, defect, count in folders:
    (cat / split / defect).mkdir(parents=True)
    for i in range(count):
      _image(size, gray, rng).save(cat / split / defect / f'{i:03d}.png')
      if split == 'test' and defect != 'good' and masks:
        (cat / 'ground_truth' / defect).mkdir(parents=True, exist_ok=True)
        _mask(size, i).save(cat / 'ground_truth' / defect / f'{i:03d}_mask.png')
  return cat


def write_all(root: str | pathlib.Path, names: Sequence[str] = tuple(CATEGORIES)) -> None:
  for seed, name in enumerate(names):
    write_category(root, name, seed=seed, **CATEGORIES[name])


if __name__ == '__main__':
  write_all(pathlib.Path(__file__).parent)
