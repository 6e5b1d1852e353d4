"""Anomaly maps in the official layout: written atomically with a pre-flight check, found and read back (docs/data_format.md §8).

  <root>/<category>/test/<good|logical_anomalies|structural_anomalies>/<stem>.tiff   2-D float32, original size
  (MVTec AD and folders, tfds_loco.formats: <root>/<category>/test/<good|defect folder>/<stem>.tiff)
  <root>/.complete.json                                                            written last

Each file is written under a hidden temporary name and renamed; the whole tree is built in a hidden
temporary folder beside `<root>` and renamed into place, so a crash never leaves a non-hidden tree that
looks complete. The marker is hidden, so the official script's folder scan never sees it.

The reading side (`map_source`, `check_map_scores`) is what the standalone evaluator uses: it accepts any
method's maps in this layout, or maps held in memory, and refuses what the official script would mis-read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import time
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from gcad_jax.metrics import spro
from tfds_loco import formats
from tfds_loco import layout

MARKER = '.complete.json'
KINDS = layout.KINDS
TIFF_SUFFIXES = ('.tif', '.tiff', '.TIF', '.TIFF')  # §8.3, the official TIFF_EXTS
PLATEAU_FRACTION = 1.0 / 49.0  # §10.1: one value over ~2 % of the pooled pixels can crash the official script
MAX_MAGNITUDE = 32.0  # §10.2: NumPy ≥ 2 loses the ±1e-6 offsets above this


class MapFilesWarning(UserWarning):
  """A map set the official script may mis-handle (plateau, large magnitude); ours handles it."""


def check_map(array: Any, where: str, size_hw: Sequence[int] | None = None) -> np.ndarray:
  """A finite 2-D float32 map of the image's (H, W); refuses anything else, naming `where` (§8.4–§8.7)."""
  array = np.asarray(array)
  if array.ndim != 2:
    raise layout.LocoFormatError(f'{where}: map of shape {array.shape}; write a 2-D (H, W) array (docs/data_format.md §8.4)')
  if array.dtype != np.float32:
    raise layout.LocoFormatError(f'{where}: map of dtype {array.dtype}; write float32 (docs/data_format.md §8.5)')
  if size_hw is not None and tuple(array.shape) != tuple(int(s) for s in size_hw):
    raise layout.LocoFormatError(
        f'{where}: map is {array.shape} (H, W) but its image is {tuple(size_hw)}; upsample to the original '
        'size (docs/data_format.md §8.4, docs/method.md §8 step 4)')
  if not np.all(np.isfinite(array)):
    raise layout.LocoFormatError(
        f'{where}: map holds {int(np.isnan(array).sum())} NaN and {int(np.isinf(array).sum())} infinite '
        'values; maps must be finite (docs/data_format.md §8.7). Check the normalisation statistics (score_norm.json)')
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
    dataset_category_dir: the data set's category folder (LOCO) or a `tfds_loco.formats.CategoryReader`: its
      test images need maps.
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
  reader = formats.as_reader(dataset_category_dir)
  dataset_category_dir = reader.cat_dir
  records = reader.records('test')
  expected = {r.image_id: r for r in records}
  missing = sorted(set(expected) - set(maps))
  extra = sorted(set(maps) - set(expected))
  if missing or extra:
    raise layout.LocoFormatError(
        f'maps for {category} do not match the test images of {dataset_category_dir}: missing {missing[:5]}'
        f'{"…" if len(missing) > 5 else ""}, without a test image {extra[:5]}; every test image, good ones '
        'included, needs exactly one map (docs/data_format.md §8.1)')
  root.parent.mkdir(parents=True, exist_ok=True)
  tmp_root = root.parent / f'.{root.name}.tmp-{os.getpid()}'
  if tmp_root.exists():
    shutil.rmtree(tmp_root)
  plateau = _Plateau(len(records))
  scores, magnitude, size_hw = {}, 0.0, None
  try:
    for folder in (KINDS if reader.format == 'loco' else sorted({r.folder for r in records})):
      (tmp_root / category / 'test' / folder).mkdir(parents=True, exist_ok=True)
    for record in records:
      header = layout.read_png_header(record.path)  # a folder's images may differ in size
      size_hw = (header.height, header.width)
      where = f'map of {record.image_id} ({category})'
      array = check_map(maps[record.image_id], where, size_hw)
      _write_tiff(tmp_root / category / 'test' / record.folder / f'{record.stem}.tiff', array)
      scores[record.image_id] = float(array.max())
      magnitude = max(magnitude, float(np.abs(array).max()))
      plateau.add(array)
    notes = []
    value, fraction = plateau.largest()
    if fraction >= PLATEAU_FRACTION:
      notes.append(f'{category}: the score {value!r} covers {fraction:.1%} of the pooled pixels (≥ 1/49): the '
                   'official script may fail its uniqueness assertion (docs/data_format.md §10.1); gcad_jax.evaluate '
                   'is unaffected')
    if magnitude > MAX_MAGNITUDE:
      notes.append(f'{category}: |score| reaches {magnitude:.3g} > {MAX_MAGNITUDE:g}: run the official script '
                   'under NumPy 1.x (docs/data_format.md §10.2)')
    for note in notes:
      warnings.warn(note, MapFilesWarning, stacklevel=2)
    marker = {'category': category, 'dataset_category_dir': str(dataset_category_dir),
              'num_maps': len(records), 'size_hw': list(size_hw) if size_hw else None, 'dtype': 'float32',
              'largest_value_fraction': fraction, 'max_abs_score': magnitude, 'warnings': notes,
              'image_scores': scores, 'seconds': round(time.perf_counter() - started, 3),
              'spec': 'docs/data_format.md §8', **dict(description or {})}
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
    raise FileNotFoundError(f'{path} is missing: {root} is incomplete or was not written by gcad_jax.map_files')
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


# ------------------------------------------------------------------------------------------------
# Reading maps back: a folder in the §8 layout, or an in-memory mapping image_id -> 2-D array (§11.3 checks).

MapsArg = str | os.PathLike | Mapping[str, Any]


def find_map_files(maps_category_dir: str | os.PathLike,
                   records: Sequence[layout.ImageRecord]) -> dict[str, pathlib.Path]:
  """{image_id: map path} for `<maps>/<category>/test/<folder>/<stem>.tiff` (docs/data_format.md §8).

  <folder> is a LOCO kind, or for MVTec AD-style data a test folder (good, a defect type). Refuses other
  entries under test/, two maps with one stem, and maps without a test image. Files with other suffixes are
  ignored, as by the official script.
  """
  test_dir = pathlib.Path(maps_category_dir) / 'test'
  if not test_dir.is_dir():
    raise layout.LocoFormatError(
        f'{test_dir} is missing; maps go to <anomaly_maps_dir>/<object_name>/test/<kind>/<image id>.tiff '
        '(docs/data_format.md §8)')
  folders = list(KINDS) + sorted({r.folder for r in records} - set(KINDS))
  unexpected = sorted(p.name for p in test_dir.iterdir() if not p.name.startswith('.') and p.name not in folders)
  if unexpected:
    raise layout.LocoFormatError(
        f'{test_dir} holds unexpected entries {unexpected}; only {folders} belong there (the official '
        'script reads the kind from the folder name and breaks on anything else)')
  known = {r.image_id for r in records}
  found: dict[str, pathlib.Path] = {}
  for kind in folders:
    kind_dir = test_dir / kind
    if not kind_dir.is_dir():
      continue
    for path in sorted(kind_dir.iterdir()):
      if path.name.startswith('.') or path.suffix not in TIFF_SUFFIXES or not path.is_file():
        continue
      image_id = f'test/{kind}/{path.stem}'
      if image_id in found:
        raise layout.LocoFormatError(
            f'{found[image_id]} and {path} are two maps for one image; keep exactly one (write .tiff)')
      if image_id not in known:
        raise layout.LocoFormatError(
            f'{path} has no test image {image_id}.png in the data set; remove it or check the kind folder')
      found[image_id] = path
  return found


def normalise_image_id(key: str) -> str:
  """'test/good/000', 'good/000' or 'good/000.tiff' -> 'test/good/000'."""
  key = str(key).replace(os.sep, '/').strip('/')
  for suffix in TIFF_SUFFIXES + ('.png',):
    if key.endswith(suffix):
      key = key[:-len(suffix)]
  return key if key.startswith('test/') else f'test/{key}'


@dataclasses.dataclass(frozen=True)
class MapSource:
  """Where each map comes from: files (paths) or memory (arrays); `where` names it in errors."""
  files: Mapping[str, pathlib.Path] | None
  arrays: Mapping[str, Any] | None
  description: str

  def ids(self) -> set[str]:
    return set(self.files if self.files is not None else self.arrays)

  def where(self, image_id: str) -> str:
    return str(self.files[image_id]) if self.files is not None else f'maps[{image_id!r}]'

  def load(self, image_id: str) -> np.ndarray:
    if self.files is None:
      return np.asarray(self.arrays[image_id])
    import tifffile  # pylint: disable=g-import-not-at-top (only file input needs it)
    path = self.files[image_id]
    try:
      return tifffile.imread(path)
    except Exception as e:  # tifffile raises many types for broken files.
      raise layout.LocoFormatError(f'{path} cannot be read as a TIFF ({e}); rewrite the map') from e


def map_source(maps: MapsArg, records: Sequence[layout.ImageRecord]) -> MapSource:
  """The maps of `records`' category: a `<anomaly_maps_dir>/<category>` folder, or {image_id: array}."""
  if isinstance(maps, (str, os.PathLike)):
    return MapSource(find_map_files(maps, records), None, str(maps))
  known = {r.image_id for r in records}
  arrays = {}
  for key, value in maps.items():
    image_id = normalise_image_id(key)
    if image_id in arrays:
      raise layout.LocoFormatError(f'maps holds two entries for {image_id}; keep exactly one')
    if image_id not in known:
      raise layout.LocoFormatError(f'maps[{key!r}] has no test image {image_id}.png in the data set')
    arrays[image_id] = value
  return MapSource(None, arrays, '<in-memory maps>')


def split_missing(source: MapSource, records: Sequence[layout.ImageRecord], allow_missing: bool
                  ) -> tuple[list[layout.ImageRecord], list[str]]:
  """(the records with a map, the image ids without one); refuses missing maps unless allowed (§8.1)."""
  available = source.ids()
  missing = [r.image_id for r in records if r.image_id not in available]
  if missing and not allow_missing:
    shown = ', '.join(missing[:10]) + (f' … ({len(missing)} in all)' if len(missing) > 10 else '')
    raise layout.LocoFormatError(
        f'{source.description} has no map for {shown}; every test image, good ones included, needs exactly '
        'one map (docs/data_format.md §8.1). Write the missing maps, or pass --allow_missing to leave those images out')
  return [r for r in records if r.image_id in available], missing


def check_map_scores(arr: np.ndarray, where: str, record: layout.ImageRecord,
                     size_hw: tuple[int, int]) -> np.ndarray:
  """A 2-D real map of the image's size, finite; returned as float32 or float64 scores (§8, §11.3).

  Unlike `check_map` (what we write: float32 only), any real dtype is read, as by the official script.
  """
  if arr.ndim != 2:
    raise layout.LocoFormatError(
        f'{where} has shape {arr.shape}; a map is a 2-D (H, W) array, not (H, W, 1) or (1, H, W) (docs/data_format.md §8.4)')
  if arr.dtype.kind not in 'biuf':
    raise layout.LocoFormatError(f'{where} has dtype {arr.dtype}; a map holds real scores (write float32)')
  if arr.shape != size_hw:
    raise layout.LocoFormatError(
        f'{where} is {arr.shape[1]}x{arr.shape[0]} (WxH) but its image {record.path} is '
        f'{size_hw[1]}x{size_hw[0]}; write maps at the original image size (docs/data_format.md §3, §8.4)')
  scores = arr.astype(spro.score_dtype(arr.dtype), copy=False)
  if scores.dtype.kind == 'f':
    lo, hi = scores.min(), scores.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
      nan, inf = int(np.isnan(scores).sum()), int(np.isinf(scores).sum())
      raise layout.LocoFormatError(
          f'{where} holds {nan} NaN and {inf} infinite values; maps must be finite (docs/data_format.md §8.7)')
  return scores
