"""Reading one MVTec LOCO AD category folder: the one place that knows the on-disk layout.

docs/data_format.md §2 (layout), §5 (ground truth), §6 (defects_config.json and saturation). Everything that
reads LOCO-layout files — the TFDS builder, the evaluator, the tests — goes through these functions, so a
bad file gets the same clear error everywhere: the message names the file and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import struct
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

# docs/data_format.md §2: the split folders and the kinds of test images, in label order.
KINDS = ('good', 'logical_anomalies', 'structural_anomalies')
ANOMALY_KINDS = KINDS[1:]
SPLIT_KINDS = {'train': ('good',), 'validation': ('good',), 'test': KINDS}
DEFECTS_CONFIG = 'defects_config.json'
IMAGE_SUFFIX = '.png'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# PNG IHDR colour types (PNG spec §11.2.2).
PNG_GRAY, PNG_RGB, PNG_RGBA = 0, 2, 6


class LocoFormatError(ValueError):
  """A LOCO-layout file or folder that cannot be used; the message names the path and the fix."""


@dataclasses.dataclass(frozen=True)
class DefectType:
  """One entry of defects_config.json (docs/data_format.md §6)."""
  defect_name: str
  pixel_value: int
  saturation_threshold: float
  relative_saturation: bool

  def saturation_area(self, defect_area: int) -> int:
    """s of §6: floor(t·|A|) if relative, else min(t, |A|)."""
    if self.relative_saturation:
      return int(math.floor(self.saturation_threshold * defect_area))
    return int(min(self.saturation_threshold, defect_area))


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One image of a split: its id (e.g. 'test/logical_anomalies/012'), path and kind."""
  image_id: str
  path: pathlib.Path
  split: str
  kind: str

  @property
  def stem(self) -> str:
    return self.path.stem

  @property
  def folder(self) -> str:
    """The image's folder under its split: the kind in LOCO, the defect type in MVTec AD ('good', 'crack')."""
    return self.image_id.split('/')[1]


@dataclasses.dataclass(frozen=True)
class GroundTruthChannel:
  """One ground-truth PNG of an anomalous test image (docs/data_format.md §5): raw values kept."""
  path: pathlib.Path
  mask: np.ndarray  # (H, W) uint8, values 0 and defect.pixel_value
  defect: DefectType

  @property
  def area(self) -> int:
    return int(np.count_nonzero(self.mask))


@dataclasses.dataclass(frozen=True)
class PngHeader:
  """The IHDR fields of a PNG file that PIL does not report (it reads 16-bit RGB as 8-bit RGB)."""
  width: int
  height: int
  bit_depth: int
  color_type: int


def read_defects_config(path: str | pathlib.Path) -> dict[int, DefectType]:
  """Reads and checks defects_config.json; returns {pixel_value: DefectType} (docs/data_format.md §6)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise LocoFormatError(
        f'{path} is missing: every LOCO category folder needs a {DEFECTS_CONFIG} listing its defect types '
        '(docs/data_format.md §6)')
  try:
    entries = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # Recursion: '[[[[…'
    raise LocoFormatError(f'{path} is not valid JSON ({e}); restore it from the data set archive') from e
  if not isinstance(entries, list):
    raise LocoFormatError(f'{path} must hold a JSON list of defect entries, found {type(entries).__name__}')
  defects: dict[int, DefectType] = {}
  for i, entry in enumerate(entries):
    where = f'{path}, entry {i}'
    if not isinstance(entry, dict):
      raise LocoFormatError(f'{where}: must be a JSON object')
    missing = {'defect_name', 'pixel_value', 'saturation_threshold', 'relative_saturation'} - set(entry)
    if missing:
      raise LocoFormatError(f'{where}: missing key(s) {sorted(missing)}')
    name, value = entry['defect_name'], entry['pixel_value']
    threshold, relative = entry['saturation_threshold'], entry['relative_saturation']
    if not isinstance(name, str) or not name:
      raise LocoFormatError(f'{where}: defect_name must be a non-empty string, found {name!r}')
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
      raise LocoFormatError(f'{where} ({name}): pixel_value must be an int in 1..255, found {value!r}')
    if not isinstance(relative, bool):
      raise LocoFormatError(f'{where} ({name}): relative_saturation must be true or false, found {relative!r}')
    if relative:
      # The official code's type check: a relative threshold is a JSON float in (0, 1].
      if not isinstance(threshold, float) or not 0 < threshold <= 1:
        raise LocoFormatError(
            f'{where} ({name}): a relative saturation_threshold must be a JSON float in (0, 1] (write 1.0, '
            f'not 1), found {threshold!r}')
    elif isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
      raise LocoFormatError(
          f'{where} ({name}): an absolute saturation_threshold must be a JSON int >= 1 (a pixel count), '
          f'found {threshold!r}')
    if value in defects:
      raise LocoFormatError(
          f'{where} ({name}): pixel_value {value} is already used by {defects[value].defect_name!r}; '
          'pixel values are the lookup key and must be unique')
    defects[value] = DefectType(name, value, threshold, relative)
  return defects


def is_category_dir(path: pathlib.Path) -> bool:
  return (path / DEFECTS_CONFIG).is_file()


def find_categories(root: str | pathlib.Path) -> dict[str, pathlib.Path]:
  """Category folders under a manual_dir, found by their defects_config.json (docs/data_format.md §1).

  `root` may be the folder holding the category folders, a category folder itself, or one level above
  (e.g. an archive's top-level folder).
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise LocoFormatError(
        f'{root} does not exist or is not a folder; pass the extracted MVTec LOCO AD root (the folder that '
        'holds breakfast_box/, juice_bottle/, …) or a folder in the same layout')
  if is_category_dir(root):
    return {root.name: root}
  found = {}
  for depth_glob in ('*', '*/*'):
    for candidate in sorted(root.glob(depth_glob)):
      if candidate.is_dir() and not candidate.name.startswith('.') and is_category_dir(candidate):
        found.setdefault(candidate.name, candidate)
    if found:
      break
  return found


def category_dir(root: str | pathlib.Path, category: str) -> pathlib.Path:
  """The folder of one category under `root`, with an error that lists what is there."""
  categories = find_categories(root)
  if category not in categories:
    known = ', '.join(sorted(categories)) or 'none'
    raise LocoFormatError(
        f'category {category!r} not found under {root} (categories with a {DEFECTS_CONFIG}: {known}); '
        'check the manual_dir and the category name')
  return categories[category]


def list_split(cat_dir: str | pathlib.Path, split: str) -> list[ImageRecord]:
  """All images of a split, sorted by kind then id; checks folders and file names (docs/data_format.md §2)."""
  cat_dir = pathlib.Path(cat_dir)
  if split not in SPLIT_KINDS:
    raise ValueError(f'unknown split {split!r}; use one of {list(SPLIT_KINDS)}')
  split_dir = cat_dir / split
  if not split_dir.is_dir():
    raise LocoFormatError(
        f'{split_dir} is missing: a LOCO category folder holds train/good, validation/good and '
        'test/{good,logical_anomalies,structural_anomalies} (docs/data_format.md §2)')
  unexpected = [p.name for p in split_dir.iterdir()
                if not p.name.startswith('.') and p.name not in SPLIT_KINDS[split]]
  if unexpected:
    raise LocoFormatError(
        f'{split_dir} holds unexpected entries {sorted(unexpected)}; only {list(SPLIT_KINDS[split])} belong there')
  records = []
  for kind in SPLIT_KINDS[split]:
    kind_dir = split_dir / kind
    if not kind_dir.is_dir():
      # A category may lack one anomaly kind (e.g. no logical anomalies); good images are required.
      if kind == 'good':
        raise LocoFormatError(f'{kind_dir} is missing: every split needs good images')
      continue
    for path in sorted(kind_dir.iterdir()):
      if path.name.startswith('.'):
        continue
      if path.suffix != IMAGE_SUFFIX or not path.is_file():
        raise LocoFormatError(
            f'{path} is not a .png file; {kind_dir} must hold only the images 000.png, 001.png, …')
      records.append(ImageRecord(f'{split}/{kind}/{path.stem}', path, split, kind))
  if not any(r.kind == 'good' for r in records):
    raise LocoFormatError(f'{split_dir / "good"} holds no images')
  return records


def parse_png_header(head: bytes, where: str | pathlib.Path = 'data') -> PngHeader:
  """The IHDR fields from a PNG's first 33 bytes; `where` names the file in the error."""
  if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b'IHDR':
    raise LocoFormatError(f'{where} is not a PNG file (bad or truncated header); replace it with a PNG')
  width, height, bit_depth, color_type = struct.unpack('>IIBB', head[16:26])
  return PngHeader(width, height, bit_depth, color_type)


def read_png_header(path: str | pathlib.Path) -> PngHeader:
  """The size, bit depth and colour type from a PNG's IHDR chunk; refuses files that are not PNGs."""
  path = pathlib.Path(path)
  try:
    with path.open('rb') as f:
      head = f.read(33)
  except OSError as e:
    raise LocoFormatError(f'{path} cannot be read ({e}); check the file and its permissions') from e
  return parse_png_header(head, path)


def read_rgb_image(path: str | pathlib.Path, gray_to_rgb: bool = False) -> np.ndarray:
  """An 8-bit RGB PNG as a (H, W, 3) uint8 array; refuses 16-bit and unreadable files, and grayscale
  unless `gray_to_rgb` (MVTec AD has grey categories: the grey value goes to all three channels)."""
  path = pathlib.Path(path)
  header = read_png_header(path)
  if header.bit_depth != 8:
    raise LocoFormatError(
        f'{path} has {header.bit_depth} bits per sample; LOCO images are 8-bit RGB PNGs (convert it to 8 '
        'bits per channel)')
  try:
    with Image.open(path) as img:
      img.load()
      mode = img.mode
      if mode == 'RGBA' or gray_to_rgb and mode in ('L', 'LA'):
        img = img.convert('RGB')
        mode = 'RGB'
      if mode != 'RGB':
        raise LocoFormatError(
            f'{path} has image mode {mode!r}; LOCO images are 8-bit RGB PNGs (convert it, e.g. with '
            "PIL: Image.open(p).convert('RGB').save(p))")
      return np.asarray(img, dtype=np.uint8)
  except LocoFormatError:
    raise
  except Exception as e:  # PIL raises many types for broken files.
    raise LocoFormatError(f'{path} cannot be read as a PNG image ({e}); replace the file') from e


def read_mask(path: str | pathlib.Path) -> np.ndarray:
  """A single-channel 8-bit mask PNG as (H, W) uint8, raw values kept (docs/data_format.md §5)."""
  path = pathlib.Path(path)
  header = read_png_header(path)
  if header.color_type == PNG_GRAY and header.bit_depth != 8:
    raise LocoFormatError(
        f'{path} is a {header.bit_depth}-bit grayscale PNG; a ground-truth channel is an 8-bit grayscale PNG '
        'with values 0 and the defect pixel_value')
  try:
    with Image.open(path) as img:
      img.load()
      if img.mode not in ('L', 'P'):
        raise LocoFormatError(
            f'{path} has image mode {img.mode!r}; a ground-truth channel is a single-channel 8-bit PNG '
            'with values 0 and the defect pixel_value')
      if img.mode == 'P':
        raise LocoFormatError(f'{path} is a palette PNG; save it as 8-bit grayscale (mode L)')
      return np.asarray(img, dtype=np.uint8)
  except LocoFormatError:
    raise
  except Exception as e:
    raise LocoFormatError(f'{path} cannot be read as a PNG mask ({e}); replace the file') from e


def ground_truth_dir(cat_dir: pathlib.Path, record: ImageRecord) -> pathlib.Path:
  return pathlib.Path(cat_dir) / 'ground_truth' / record.kind / record.stem


def read_ground_truth(cat_dir: str | pathlib.Path, record: ImageRecord, defects: dict[int, DefectType],
                      image_shape: Sequence[int]) -> list[GroundTruthChannel]:
  """The channels of one test image, checked (docs/data_format.md §5); [] for good images."""
  cat_dir = pathlib.Path(cat_dir)
  if record.kind == 'good':
    return []
  gt_dir = ground_truth_dir(cat_dir, record)
  if not gt_dir.is_dir():
    raise LocoFormatError(
        f'ground truth folder {gt_dir} is missing; every anomalous test image ({record.path}) needs one, '
        'holding one PNG per defect channel')
  paths = []
  for p in sorted(gt_dir.iterdir()):
    if p.name.startswith('.'):
      continue
    if p.suffix != IMAGE_SUFFIX or not p.is_file():
      raise LocoFormatError(f'{p} is not a .png file; {gt_dir} must hold only channel PNGs (000.png, …)')
    paths.append(p)
  if not paths:
    raise LocoFormatError(f'ground truth folder {gt_dir} holds no .png channel')
  channels = []
  for path in paths:
    mask = read_mask(path)
    if mask.shape != tuple(image_shape[:2]):
      raise LocoFormatError(
          f'{path} has size {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {record.path} is '
          f'{image_shape[1]}x{image_shape[0]}; masks must have the image size')
    counts = np.bincount(mask.ravel(), minlength=256)  # Several times faster than np.unique on uint8.
    positive = np.flatnonzero(counts[1:]) + 1
    if positive.size == 0:
      raise LocoFormatError(f'{path} has no positive pixel; an empty channel is not allowed (docs/data_format.md §5)')
    if positive.size > 1:
      raise LocoFormatError(
          f'{path} holds several positive values {positive.tolist()}; a channel holds 0 and exactly one '
          'defect pixel_value — split it into one PNG per defect')
    value = int(positive[0])
    if value not in defects:
      raise LocoFormatError(
          f'{path} has pixel value {value}, which is not in {cat_dir / DEFECTS_CONFIG} '
          f'(known values: {sorted(defects)}); add the defect type there or fix the mask')
    channels.append(GroundTruthChannel(path, mask, defects[value]))
  return channels


def check_ground_truth_folders(cat_dir: str | pathlib.Path, records: Iterable[ImageRecord]) -> None:
  """Every ground-truth folder belongs to an anomalous test image (the official script pairs them)."""
  cat_dir = pathlib.Path(cat_dir)
  stems = {(r.kind, r.stem) for r in records if r.kind != 'good'}
  gt_root = cat_dir / 'ground_truth'
  if gt_root.is_dir():
    unexpected = [p.name for p in gt_root.iterdir()
                  if not p.name.startswith('.') and p.name not in ANOMALY_KINDS]
    if unexpected:
      raise LocoFormatError(
          f'{gt_root} holds unexpected entries {sorted(unexpected)}; only {list(ANOMALY_KINDS)} belong there')
  for kind in ANOMALY_KINDS:
    kind_dir = gt_root / kind
    if not kind_dir.is_dir():
      continue
    for folder in sorted(kind_dir.iterdir()):
      if folder.name.startswith('.'):
        continue
      if not folder.is_dir():
        raise LocoFormatError(
            f'{folder} is not a folder; {kind_dir} holds one folder per anomalous test image (000/, 001/, …)')
      if (kind, folder.name) not in stems:
        raise LocoFormatError(
            f'ground truth folder {folder} has no test image test/{kind}/{folder.name}.png; remove it or '
            'add the image')
