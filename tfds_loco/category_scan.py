"""Checking a whole MVTec LOCO AD category before anything is built from it.

docs/data_format.md §2, §3, §5, §6. Every file is read through tfds_loco.layout, so the errors are the
same as everywhere else; this module adds the category-wide checks (one image size) and holds the
result (paths and facts, no pixels) that the TFDS builder stores.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
from typing import Any, Callable

from tfds_loco import layout


@dataclasses.dataclass(frozen=True)
class ChannelSummary:
  """A checked ground-truth channel without its pixels: what a builder needs to store it (§5, §6)."""
  path: pathlib.Path
  defect: layout.DefectType
  area: int


@dataclasses.dataclass(frozen=True)
class ScannedImage:
  """A checked image of a split, with its PNG header and its checked channels ([] unless anomalous)."""
  record: layout.ImageRecord
  header: layout.PngHeader
  channels: tuple[ChannelSummary, ...]


@dataclasses.dataclass(frozen=True)
class CategoryScan:
  """A whole category, checked file by file (scan_category); holds paths and facts, no pixels."""
  name: str
  cat_dir: pathlib.Path
  defects: dict[int, layout.DefectType]
  defects_json: list[Any]  # defects_config.json exactly as parsed, for metadata
  image_size: tuple[int, int]  # (W, H), shared by every image of the category (§3)
  splits: dict[str, tuple[ScannedImage, ...]]

  @property
  def num_images(self) -> int:
    return sum(len(images) for images in self.splits.values())


def _scan_image(cat_dir: pathlib.Path, record: layout.ImageRecord,
                defects: dict[int, layout.DefectType]) -> ScannedImage:
  """Reads one image in full (and its channels): the check of scan_category for a single file."""
  image = layout.read_rgb_image(record.path)
  channels = layout.read_ground_truth(cat_dir, record, defects, image.shape)
  return ScannedImage(record, layout.read_png_header(record.path),
                      tuple(ChannelSummary(c.path, c.defect, c.area) for c in channels))


def scan_category(cat_dir: str | pathlib.Path, *, num_workers: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> CategoryScan:
  """Checks a whole category before anything is built from it (docs/data_format.md §2, §3, §5, §6).

  Cheap checks first (defects_config.json, folders, file names, ground-truth pairing), then every image
  and channel is decoded: 8-bit RGB images of one size, single-channel masks of the image's size with
  one positive value listed in defects_config.json. The first problem, in file order, raises a
  layout.LocoFormatError naming the file. `progress(done, total)` is called as images are checked.
  """
  cat_dir = pathlib.Path(cat_dir)
  config_path = cat_dir / layout.DEFECTS_CONFIG
  defects = layout.read_defects_config(config_path)
  defects_json = json.loads(config_path.read_text())
  records = {split: layout.list_split(cat_dir, split) for split in layout.SPLIT_KINDS}
  layout.check_ground_truth_folders(cat_dir, records['test'])

  todo = [r for split in layout.SPLIT_KINDS for r in records[split]]
  num_workers = num_workers or min(8, os.cpu_count() or 1)
  scanned: list[ScannedImage] = []
  # Decoding dominates and PIL releases the GIL; results are consumed in file order so the error
  # reported is always the first bad file, whatever the thread timing.
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    futures = [pool.submit(_scan_image, cat_dir, r, defects) for r in todo]
    try:
      for future in futures:
        image = future.result()
        first = scanned[0] if scanned else image
        if (image.header.width, image.header.height) != (first.header.width, first.header.height):
          raise layout.LocoFormatError(
              f'{image.record.path} is {image.header.width}x{image.header.height} (WxH) but '
              f'{first.record.path} is {first.header.width}x{first.header.height}; all images of a '
              'category share one size (docs/data_format.md §3)')
        scanned.append(image)
        if progress is not None:
          progress(len(scanned), len(todo))
    except BaseException:
      for future in futures:
        future.cancel()
      raise

  size = (scanned[0].header.width, scanned[0].header.height)
  splits = {split: tuple(s for s in scanned if s.record.split == split) for split in layout.SPLIT_KINDS}
  return CategoryScan(cat_dir.name, cat_dir, defects, defects_json, size, splits)
