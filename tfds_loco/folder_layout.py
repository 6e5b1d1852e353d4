"""Reading an MVTec AD-style category folder: MVTec AD itself, or a user's own product (docs/method.md §10.2).

  <cat>/train/good/<name>.png                        training images (anomaly-free)
  <cat>/validation/good/<name>.png                   optional; else a deterministic `val_fraction` of train/good
  <cat>/test/good/<name>.png, <cat>/test/<defect>/<name>.png
  <cat>/ground_truth/<defect>/<name>_mask.png        binary masks (0 / 255); required for MVTec AD, optional
                                                     for a folder: absent = image metrics only

Any names and sizes; grey images are read as RGB. The records are the LOCO reader's (tfds_loco.layout): image
ids 'test/<defect>/<name>', a kind good / logical_anomalies / structural_anomalies (`logical` lists the defect
folders, or single 'defect/name' images, that are logical; every other defect is structural), and one
ground-truth channel per anomalous image: its whole mask, saturating at full area, whose regions the
evaluator splits into connected components (PRO, docs/method.md §10.2). Errors name the file and the fix.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from tfds_loco import category_scan
from tfds_loco import layout

GOOD = 'good'
MASK_SUFFIX = '_mask.png'
SPLITS = ('train', 'validation', 'test')
MASK_VALUE = 255  # the value a binary mask channel is stored with


@dataclasses.dataclass(frozen=True)
class FolderOptions:
  """How to read a folder: which anomalies are logical, whether masks are required, the validation hold-out."""
  logical: tuple[str, ...] = ()  # 'defect' (all its images) or 'defect/name' (one image)
  require_masks: bool = False
  val_fraction: float = 0.1
  # A user's list must name existing folders/images; Table 4 also applies to a partial copy of MVTec AD.
  check_logical: bool = True

  def kind(self, defect: str, stem: str) -> str:
    if defect == GOOD:
      return GOOD
    logical = defect in self.logical or f'{defect}/{stem}' in self.logical
    return 'logical_anomalies' if logical else 'structural_anomalies'


def defect_type(name: str) -> layout.DefectType:
  """A whole binary mask as one channel: saturation at full area, so sPRO is PRO (docs/method.md §10.2)."""
  return layout.DefectType(name, MASK_VALUE, 1.0, True)


def _pngs(folder: pathlib.Path) -> list[pathlib.Path]:
  paths = []
  for path in sorted(folder.iterdir()):
    if path.name.startswith('.'):
      continue
    if not path.is_file() or path.suffix.lower() != layout.IMAGE_SUFFIX:
      raise layout.LocoFormatError(
          f'{path} is not a .png file; {folder} must hold only PNG images (convert others, e.g. with PIL: '
          "Image.open(p).save(p.with_suffix('.png')))")
    paths.append(path)
  return paths


def holdout_indices(n: int, fraction: float) -> list[int]:
  """Indices of the validation images among n name-sorted train images: k = round(fraction·n) (at least 1,
  leaving 1 for training), evenly spread: floor((j + 0.5)·n / k) for j < k. Deterministic (docs/method.md §10.2)."""
  if not 0 <= fraction < 1:
    raise layout.LocoFormatError(f'val_fraction {fraction} must be in [0, 1)')
  k = min(max(round(fraction * n), 1 if fraction > 0 else 0), n - 1)
  return sorted({int((j + 0.5) * n / k) for j in range(k)}) if k > 0 else []


def held_out(stems: Sequence[str], fraction: float) -> set[str]:
  """The names of the held-out validation images (holdout_indices of the sorted names)."""
  ordered = sorted(stems)
  return {ordered[i] for i in holdout_indices(len(ordered), fraction)}


def _require_dir(path: pathlib.Path, what: str) -> pathlib.Path:
  if not path.is_dir():
    raise layout.LocoFormatError(
        f'{path} is missing: {what} (an MVTec AD-style folder holds train/good, test/good, test/<defect> '
        'and optionally ground_truth/<defect>/<name>_mask.png)')
  return path


def list_split(cat_dir: str | pathlib.Path, split: str, options: FolderOptions = FolderOptions()
               ) -> list[layout.ImageRecord]:
  """The images of a split, sorted by id; the test kinds follow `options.logical`."""
  cat_dir = pathlib.Path(cat_dir)
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; use one of {list(SPLITS)}')
  if split in ('train', 'validation'):
    train = _pngs(_require_dir(cat_dir / 'train' / GOOD, 'every category needs training images'))
    if (cat_dir / 'validation' / GOOD).is_dir():
      paths = train if split == 'train' else _pngs(cat_dir / 'validation' / GOOD)
      prefix, keep = split, None
    else:
      prefix, keep = 'train', held_out([p.stem for p in train], options.val_fraction)
      paths = [p for p in train if (p.stem in keep) == (split == 'validation')]
    if not paths:
      raise layout.LocoFormatError(
          f'{cat_dir}: the {split} split is empty; add images to train/good (or validation/good)')
    return [layout.ImageRecord(f'{prefix}/{GOOD}/{p.stem}', p, split, GOOD) for p in paths]
  test_dir = _require_dir(cat_dir / 'test', 'the test images')
  if not _pngs(_require_dir(test_dir / GOOD, 'every test set needs good images')):
    raise layout.LocoFormatError(f'{test_dir / GOOD} holds no .png image; the test set needs defect-free images')
  folders = sorted(p for p in test_dir.iterdir() if not p.name.startswith('.'))
  for folder in folders:
    if not folder.is_dir():
      raise layout.LocoFormatError(f'{folder} is not a folder; {test_dir} holds good/ and one folder per defect type')
  defects = [f.name for f in folders if f.name != GOOD]
  for entry in options.logical if options.check_logical else ():
    defect, _, stem = entry.partition('/')
    if defect not in defects or stem and not (test_dir / defect / f'{stem}.png').is_file():
      raise layout.LocoFormatError(
          f'the logical anomaly {entry!r} is not in {test_dir} (defect folders: {", ".join(defects) or "none"}); '
          "name a defect folder, or 'defect/name' for one image")
  records = [layout.ImageRecord(f'test/{f.name}/{p.stem}', p, 'test', options.kind(f.name, p.stem))
             for f in folders for p in _pngs(f)]
  return sorted(records, key=lambda r: r.image_id)


def mask_path(cat_dir: str | pathlib.Path, record: layout.ImageRecord) -> pathlib.Path:
  return pathlib.Path(cat_dir) / 'ground_truth' / record.folder / f'{record.stem}{MASK_SUFFIX}'


def has_masks(cat_dir: str | pathlib.Path) -> bool:
  return (pathlib.Path(cat_dir) / 'ground_truth').is_dir()


def check_ground_truth(cat_dir: str | pathlib.Path, records: Sequence[layout.ImageRecord],
                       options: FolderOptions = FolderOptions()) -> bool:
  """Pairs masks with anomalous test images, both ways; returns whether the folder has masks at all."""
  cat_dir = pathlib.Path(cat_dir)
  anomalous = [r for r in records if r.kind != GOOD]
  gt_root = cat_dir / 'ground_truth'
  if not gt_root.is_dir():
    if options.require_masks and anomalous:
      raise layout.LocoFormatError(
          f'image without mask: {anomalous[0].path} has no {mask_path(cat_dir, anomalous[0])} ({gt_root} is '
          'missing); MVTec AD ships a mask for every anomalous test image: extract the whole archive')
    return False
  expected = {mask_path(cat_dir, r): r for r in anomalous}
  for r in anomalous:
    if not mask_path(cat_dir, r).is_file():
      raise layout.LocoFormatError(
          f'image without mask: {r.path} has no {mask_path(cat_dir, r)}; every anomalous test image needs '
          f'its mask once {gt_root} exists (or remove {gt_root} to compute only the image metrics)')
  for folder in sorted(p for p in gt_root.iterdir() if not p.name.startswith('.')):
    if not folder.is_dir():
      raise layout.LocoFormatError(f'{folder} is not a folder; {gt_root} holds one folder per defect type')
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith('.')):
      if path not in expected:
        image = cat_dir / 'test' / folder.name / (path.name.removesuffix(MASK_SUFFIX) + '.png')
        raise layout.LocoFormatError(
            f'mask without image: {path} has no test image {image}; remove the mask or add the image '
            f'(masks are named <image name>{MASK_SUFFIX})')
  return True


def read_binary_mask(path: str | pathlib.Path) -> np.ndarray:
  """A mask PNG as (H, W) uint8 with values 0 and MASK_VALUE (grey values above 127 are defect)."""
  path = pathlib.Path(path)
  layout.read_png_header(path)
  try:
    with Image.open(path) as img:
      img.load()
      grey = np.asarray(img.convert('L'))
  except Exception as e:  # PIL raises many types for broken files.
    raise layout.LocoFormatError(f'{path} cannot be read as a PNG mask ({e}); replace the file') from e
  return np.where(grey > 127, MASK_VALUE, 0).astype(np.uint8)


def read_ground_truth(cat_dir: str | pathlib.Path, record: layout.ImageRecord,
                      image_shape: Sequence[int]) -> list[layout.GroundTruthChannel]:
  """[] for good images and folders without masks; else the image's whole mask as one channel."""
  path = mask_path(cat_dir, record)
  if record.kind == GOOD or not has_masks(cat_dir):
    return []
  if not path.is_file():
    raise layout.LocoFormatError(f'image without mask: {record.path} has no {path}')
  mask = read_binary_mask(path)
  if mask.shape != tuple(image_shape[:2]):
    raise layout.LocoFormatError(
        f'size mismatch: {path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {record.path} is '
        f'{image_shape[1]}x{image_shape[0]}; a mask has its image\'s size')
  if not mask.any():
    raise layout.LocoFormatError(
        f'{path} has no defect pixel; an anomalous image\'s mask marks the defect (values > 127)')
  return [layout.GroundTruthChannel(path, mask, defect_type(record.folder))]


def _scan_image(cat_dir: pathlib.Path, record: layout.ImageRecord) -> category_scan.ScannedImage:
  image = layout.read_rgb_image(record.path, gray_to_rgb=True)
  channels = read_ground_truth(cat_dir, record, image.shape) if record.split == 'test' else []
  return category_scan.ScannedImage(record, layout.read_png_header(record.path),
                                    tuple(category_scan.ChannelSummary(c.path, c.defect, c.area) for c in channels))


def scan_category(cat_dir: str | pathlib.Path, options: FolderOptions = FolderOptions(), *,
                  progress: Callable[[int, int], None] | None = None) -> category_scan.CategoryScan:
  """Checks a whole folder before anything is built from it: every image and mask decoded and paired."""
  cat_dir = pathlib.Path(cat_dir)
  records = {split: list_split(cat_dir, split, options) for split in SPLITS}
  check_ground_truth(cat_dir, records['test'], options)
  todo = [r for split in SPLITS for r in records[split]]
  scanned = []
  for record in todo:
    scanned.append(_scan_image(cat_dir, record))
    if progress is not None:
      progress(len(scanned), len(todo))
  defects = sorted({r.folder for r in records['test'] if r.kind != GOOD})
  defects_json = [{'defect_name': d, 'kinds': sorted({r.kind for r in records['test'] if r.folder == d})}
                  for d in defects]
  size = (scanned[0].header.width, scanned[0].header.height)
  splits = {split: tuple(s for s in scanned if s.record.split == split) for split in SPLITS}
  return category_scan.CategoryScan(cat_dir.name, cat_dir, {}, defects_json, size, splits)
