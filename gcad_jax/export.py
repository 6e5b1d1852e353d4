"""Anomaly maps in the official layout, written atomically, with the pre-flight check (LOCO_FORMAT.md §8).

  <root>/<category>/test/<good|logical_anomalies|structural_anomalies>/<stem>.tiff   2-D float32, original size
  <root>/.complete.json                                                            written last

Each file is written under a hidden temporary name and renamed; the whole tree is built in a hidden
temporary folder beside `<root>` and renamed into place, so a crash never leaves a non-hidden tree that
looks complete. The marker is hidden, so the official script's folder scan never sees it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from tfds_loco import layout

MARKER = '.complete.json'
KINDS = layout.KINDS
PLATEAU_FRACTION = 1.0 / 49.0  # §10.1: one value over ~2 % of the pooled pixels can crash the official script
MAX_MAGNITUDE = 32.0  # §10.2: NumPy ≥ 2 loses the ±1e-6 offsets above this


class ExportWarning(UserWarning):
  """A map set the official script may mis-handle (plateau, large magnitude); ours handles it."""


def check_map(array: Any, where: str, size_hw: Sequence[int] | None = None) -> np.ndarray:
  """A finite 2-D float32 map of the image's (H, W); refuses anything else, naming `where` (§8.4–§8.7)."""
  array = np.asarray(array)
  if array.ndim != 2:
    raise layout.LocoFormatError(f'{where}: map of shape {array.shape}; write a 2-D (H, W) array (§8.4)')
  if array.dtype != np.float32:
    raise layout.LocoFormatError(f'{where}: map of dtype {array.dtype}; write float32 (§8.5)')
  if size_hw is not None and tuple(array.shape) != tuple(int(s) for s in size_hw):
    raise layout.LocoFormatError(
        f'{where}: map is {array.shape} (H, W) but its image is {tuple(size_hw)}; upsample to the original '
        'size (§8.4, GCAD.md §8 step 4)')
  if not np.all(np.isfinite(array)):
    raise layout.LocoFormatError(
        f'{where}: map holds {int(np.isnan(array).sum())} NaN and {int(np.isinf(array).sum())} infinite '
        'values; maps must be finite (§8.7). Check the normalisation statistics (score_norm.json)')
  return array


class _Plateau:
  """Largest single-value fraction of the pooled scores, to within 1/(49·N) (per-image counts ≥ P/(49·N))."""

  def __init__(self, num_images: int):
    self.num_images = max(1, num_images)
    self.counts: dict[float, int] = {}
    self.total = 0

  def add(self, array: np.ndarray) -> None:
    values, counts = np.unique(array, return_counts=True)
    keep = counts >= array.size / (49.0 * self.num_images)
    for v, c in zip(values[keep].tolist(), counts[keep].tolist()):
      self.counts[v] = self.counts.get(v, 0) + c
    self.total += array.size

  def largest(self) -> tuple[float | None, float]:
    if not self.counts or not self.total:
      return None, 0.0
    value = max(self.counts, key=self.counts.get)
    return value, self.counts[value] / self.total


def _write_tiff(path: pathlib.Path, array: np.ndarray) -> None:
  import tifffile  # pylint: disable=g-import-not-at-top
  tmp = path.parent / f'.{path.name}.{os.getpid()}.tmp'
  try:
    tifffile.imwrite(tmp, array)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_maps(root: str | os.PathLike, category: str, dataset_category_dir: str | os.PathLike,
               maps: Mapping[str, Any], *, description: Mapping | None = None) -> dict:
  """Writes every test image's map under root/<category>/test/<kind>/<stem>.tiff, atomically (§8).

  Args:
    root: e.g. W/anomaly_maps. Replaced as a whole when it exists (old tree moved aside, then removed).
    category: the category folder name.
    dataset_category_dir: the data set's category folder: its test folders give the images that need maps.
    maps: image_id ('test/<kind>/<stem>') → 2-D float32 array at the original size (e.g. a lazy
      `scoring.FullResMaps`); each is read exactly once.
    description: extra fields for the marker file.

  Returns:
    The marker's content: counts, {image_id: max score of the written map}, warnings, seconds.
  Raises `layout.LocoFormatError` (nothing is left behind but hidden temporary folders) when the pre-flight
  check fails: a missing or extra map, a wrong size or dtype, a non-finite value.
  """
  started = time.perf_counter()
  root = pathlib.Path(root)
  records = layout.list_split(pathlib.Path(dataset_category_dir), 'test')
  expected = {r.image_id: r for r in records}
  missing = sorted(set(expected) - set(maps))
  extra = sorted(set(maps) - set(expected))
  if missing or extra:
    raise layout.LocoFormatError(
        f'maps for {category} do not match the test images of {dataset_category_dir}: missing {missing[:5]}'
        f'{"…" if len(missing) > 5 else ""}, without a test image {extra[:5]}; every test image, good ones '
        'included, needs exactly one map (LOCO_FORMAT.md §8.1)')
  root.parent.mkdir(parents=True, exist_ok=True)
  tmp_root = root.parent / f'.{root.name}.tmp-{os.getpid()}'
  if tmp_root.exists():
    shutil.rmtree(tmp_root)
  plateau = _Plateau(len(records))
  scores, magnitude, size_hw = {}, 0.0, None
  try:
    for kind in KINDS:
      (tmp_root / category / 'test' / kind).mkdir(parents=True, exist_ok=True)
    for record in records:
      if size_hw is None:
        header = layout.read_png_header(record.path)
        size_hw = (header.height, header.width)
      where = f'map of {record.image_id} ({category})'
      array = check_map(maps[record.image_id], where, size_hw)
      _write_tiff(tmp_root / category / 'test' / record.kind / f'{record.stem}.tiff', array)
      scores[record.image_id] = float(array.max())
      magnitude = max(magnitude, float(np.abs(array).max()))
      plateau.add(array)
    notes = []
    value, fraction = plateau.largest()
    if fraction >= PLATEAU_FRACTION:
      notes.append(f'{category}: the score {value!r} covers {fraction:.1%} of the pooled pixels (≥ 1/49): the '
                   'official script may fail its uniqueness assertion (LOCO_FORMAT.md §10.1); gcad_jax.evaluate '
                   'is unaffected')
    if magnitude > MAX_MAGNITUDE:
      notes.append(f'{category}: |score| reaches {magnitude:.3g} > {MAX_MAGNITUDE:g}: run the official script '
                   'under NumPy 1.x (LOCO_FORMAT.md §10.2)')
    for note in notes:
      warnings.warn(note, ExportWarning, stacklevel=2)
    marker = {'category': category, 'dataset_category_dir': str(dataset_category_dir),
              'num_maps': len(records), 'size_hw': list(size_hw) if size_hw else None, 'dtype': 'float32',
              'largest_value_fraction': fraction, 'max_abs_score': magnitude, 'warnings': notes,
              'image_scores': scores, 'seconds': round(time.perf_counter() - started, 3),
              'spec': 'LOCO_FORMAT.md §8', **dict(description or {})}
    (tmp_root / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True))
    _replace_dir(tmp_root, root)
  except BaseException:
    shutil.rmtree(tmp_root, ignore_errors=True)
    raise
  return marker


def _replace_dir(new: pathlib.Path, final: pathlib.Path) -> None:
  """Moves `new` to `final`; an existing `final` is first moved to a hidden name, then removed."""
  old = None
  if final.exists():
    old = final.parent / f'.{final.name}.old-{os.getpid()}'
    if old.exists():
      shutil.rmtree(old)
    os.replace(final, old)
  os.replace(new, final)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def is_complete(root: str | os.PathLike) -> bool:
  """True when `root` was fully written (its hidden marker exists)."""
  return (pathlib.Path(root) / MARKER).is_file()


def read_marker(root: str | os.PathLike) -> dict:
  path = pathlib.Path(root) / MARKER
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing: {root} is incomplete or was not written by gcad_jax.export')
  return json.loads(path.read_text())


def export_variants(workdir: str | os.PathLike, category: str, dataset_category_dir: str | os.PathLike,
                    variants: Mapping[str, Mapping[str, Any]], *, branch_maps: bool = False,
                    description: Mapping | None = None) -> dict[str, dict]:
  """W/anomaly_maps (combined) and, with `branch_maps`, W/anomaly_maps_local and W/anomaly_maps_global."""
  folders = {'combined': 'anomaly_maps', 'local': 'anomaly_maps_local', 'global': 'anomaly_maps_global'}
  chosen = ('combined', 'local', 'global') if branch_maps else ('combined',)
  out = {}
  for variant in chosen:
    root = pathlib.Path(workdir) / folders[variant]
    out[variant] = write_maps(root, category, dataset_category_dir, variants[variant],
                              description={'variant': variant, **dict(description or {})})
    out[variant]['root'] = str(root)
  return out
