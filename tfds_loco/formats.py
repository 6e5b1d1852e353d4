"""The data set formats: one reader per category folder, whatever its layout (the one dispatch on the format).

  'loco'      MVTec LOCO AD layout (tfds_loco.layout; docs/data_format.md §2–§6): raw channels, saturation
              from defects_config.json.
  'mvtec_ad'  MVTec AD (tfds_loco.folder_layout): the paper's Table 4 logical split, a mask for every
              anomalous image, PRO regions = the masks' connected components (docs/method.md §10.2).
  'folder'    a user's own MVTec AD-style folder: `logical` lists the logical defect folders; masks optional.

Everything downstream (TFDS builders, input pipeline, map files, evaluator, report) reads a category through
`CategoryReader`, so the three formats share one code path: the same records (tfds_loco.layout.ImageRecord),
the same ground-truth channels, the same errors.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Sequence

import numpy as np

from tfds_loco import categories
from tfds_loco import category_scan
from tfds_loco import folder_layout
from tfds_loco import layout

FORMATS = ('loco', 'mvtec_ad', 'folder')


@dataclasses.dataclass(frozen=True)
class CategoryReader:
  """One category folder in one format: its splits, its ground truth and how PRO regions are formed.

  `regions` is 'channels' (each ground-truth channel is one region, docs/data_format.md §5) or 'components'
  (each connected component of a channel is one region, saturating at its full area: PRO, docs/method.md §10.2).
  """
  format: str
  cat_dir: pathlib.Path
  options: folder_layout.FolderOptions = folder_layout.FolderOptions()

  @property
  def name(self) -> str:
    return self.cat_dir.name

  @property
  def regions(self) -> str:
    return 'channels' if self.format == 'loco' else 'components'

  def records(self, split: str) -> list[layout.ImageRecord]:
    if self.format == 'loco':
      return layout.list_split(self.cat_dir, split)
    return folder_layout.list_split(self.cat_dir, split, self.options)

  def defects(self) -> dict[int, layout.DefectType]:
    """LOCO's defects_config.json; {} for MVTec AD-style folders (one channel per mask, folder_layout)."""
    if self.format == 'loco':
      return layout.read_defects_config(self.cat_dir / layout.DEFECTS_CONFIG)
    return {}

  def defect_names(self, records: Sequence[layout.ImageRecord]) -> list[str]:
    """Every defect type of the category, those without test images included (LOCO)."""
    if self.format == 'loco':
      return [d.defect_name for d in self.defects().values()]
    return sorted({r.folder for r in records if r.kind != 'good'})

  def check_ground_truth(self, records: Sequence[layout.ImageRecord]) -> bool:
    """Pairs ground truth with test images (both ways); returns whether there are masks at all."""
    if self.format == 'loco':
      layout.check_ground_truth_folders(self.cat_dir, records)
      return True
    return folder_layout.check_ground_truth(self.cat_dir, records, self.options)

  def ground_truth(self, record: layout.ImageRecord, image_shape: Sequence[int],
                   defects: dict[int, layout.DefectType] | None = None) -> list[layout.GroundTruthChannel]:
    if self.format == 'loco':
      return layout.read_ground_truth(self.cat_dir, record, self.defects() if defects is None else defects,
                                      image_shape)
    return folder_layout.read_ground_truth(self.cat_dir, record, image_shape)

  def union_mask(self, record: layout.ImageRecord, image_shape: Sequence[int]) -> np.ndarray:
    """The union of an image's ground-truth channels as (H, W) bool (False everywhere for good images)."""
    union = np.zeros(tuple(image_shape[:2]), bool)
    for channel in self.ground_truth(record, image_shape):
      union |= channel.mask > 0
    return union

  def read_image(self, path) -> np.ndarray:
    return layout.read_rgb_image(path, gray_to_rgb=self.format != 'loco')

  def scan(self, progress: Callable[[int, int], None] | None = None) -> category_scan.CategoryScan:
    if self.format == 'loco':
      return category_scan.scan_category(self.cat_dir, progress=progress)
    return folder_layout.scan_category(self.cat_dir, self.options, progress=progress)


def check_format(dataset_format: str) -> str:
  if dataset_format not in FORMATS:
    raise ValueError(f'unknown dataset format {dataset_format!r}; use one of {list(FORMATS)}')
  return dataset_format


def folder_options(dataset_format: str, category: str, logical: Sequence[str] = (),
                   val_fraction: float = 0.1) -> folder_layout.FolderOptions:
  """MVTec AD: the paper's Table 4 split and required masks; a folder: the given `logical` list."""
  if dataset_format == 'mvtec_ad':
    if logical:
      raise ValueError('the MVTec AD logical split is the paper\'s Table 4 (tfds_loco.categories.MVTEC_AD_LOGICAL); '
                       "pass a logical list only with dataset format 'folder'")
    logical = categories.MVTEC_AD_LOGICAL.get(category, ())
  is_ad = dataset_format == 'mvtec_ad'
  return folder_layout.FolderOptions(tuple(logical), is_ad, float(val_fraction), check_logical=not is_ad)


def find_category_dir(dataset_format: str, root, category: str) -> pathlib.Path:
  """The category folder under `root` (or `root` itself when it is that folder), with a clear error."""
  root = pathlib.Path(root).expanduser()
  if check_format(dataset_format) == 'loco':
    return layout.category_dir(root, category)
  # root/<category>, root itself, or inside the extracted MVTec AD archive (tfds_loco.mvtec_ad).
  for candidate in (root / category, root, root / 'mvtec_anomaly_detection' / category):
    if candidate.name == category and (candidate / 'train').is_dir() and (candidate / 'test').is_dir():
      return candidate
  found = sorted(p.name for p in root.iterdir() if (p / 'train').is_dir()) if root.is_dir() else []
  raise layout.LocoFormatError(
      f'category {category!r} not found under {root} (folders with train/ and test/ there: '
      f'{", ".join(found) or "none"}); check the folder and the category name')


def reader(dataset_format: str, root, category: str, logical: Sequence[str] = (),
           val_fraction: float = 0.1) -> CategoryReader:
  """The reader of `category` under `root` in `dataset_format`."""
  cat_dir = find_category_dir(dataset_format, root, category)
  return CategoryReader(dataset_format, cat_dir, folder_options(dataset_format, category, logical, val_fraction))


def reader_for_config(config, cat_dir: pathlib.Path | None = None) -> CategoryReader:
  """The reader of config.dataset (format, manual_dir, category, logical, val_fraction)."""
  d = config.dataset
  dataset_format = d.get('format', 'loco') if hasattr(d, 'get') else 'loco'
  logical = tuple(d.get('logical', ()) or ()) if hasattr(d, 'get') else ()
  val_fraction = d.get('val_fraction', 0.1) if hasattr(d, 'get') else 0.1
  if cat_dir is not None:
    options = folder_options(dataset_format, d.category, logical, val_fraction)
    return CategoryReader(dataset_format, pathlib.Path(cat_dir), options)
  return reader(dataset_format, d.manual_dir, d.category, logical, val_fraction)


def as_reader(dataset_category_dir) -> CategoryReader:
  """A reader as is; a path as a LOCO category folder (what the functions took before the other formats)."""
  if isinstance(dataset_category_dir, CategoryReader):
    return dataset_category_dir
  return CategoryReader('loco', pathlib.Path(dataset_category_dir))
