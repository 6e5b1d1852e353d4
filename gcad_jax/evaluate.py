"""The standalone evaluator: the official script's inputs and metrics.json, computed exactly.

LOCO_FORMAT.md §8 (map layout), §9 (what is computed), §11 (exact mode, explicit thresholds, input checks).
It reads files only and knows nothing of the model, so it scores any method's maps:

  python -m gcad_jax.evaluate --dataset_base_dir D --anomaly_maps_dir M --object_name C --output_dir O \
      [--allow_missing] [--thresholds_from official/metrics.json] [--num_workers 2]

writes O/metrics.json in the official schema (§9.8) plus our extras under the key "gcad_jax". Code that
already holds the maps in memory calls `evaluate_category(dataset_category_dir, {image_id: map})`.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import sys
import time
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from gcad_jax.metrics import auroc as auroc_lib
from gcad_jax.metrics import spro
from tfds_loco import layout

TIFF_SUFFIXES = ('.tif', '.tiff', '.TIF', '.TIFF')  # §8.3, the official TIFF_EXTS
KINDS = layout.KINDS
ANOMALY_KINDS = layout.ANOMALY_KINDS
METRICS_FILE = 'metrics.json'
EXTRAS_KEY = 'gcad_jax'

MapsArg = str | os.PathLike | Mapping[str, Any]


class EvaluationWarning(UserWarning):
  """A suspicious but valid input, e.g. an absolute saturation threshold above the channel's area (§6)."""


# ------------------------------------------------------------------------------------------------
# Map sources: a folder in the §8 layout, or an in-memory mapping image_id -> 2-D array.


def find_map_files(maps_category_dir: str | os.PathLike,
                   records: Sequence[layout.ImageRecord]) -> dict[str, pathlib.Path]:
  """{image_id: map path} for `<maps>/<category>/test/<kind>/<stem>.tiff` (LOCO_FORMAT.md §8).

  Refuses entries under test/ other than the three kind folders, two maps with one stem, and maps without a
  test image. Files with other suffixes are ignored, as by the official script.
  """
  test_dir = pathlib.Path(maps_category_dir) / 'test'
  if not test_dir.is_dir():
    raise layout.LocoFormatError(
        f'{test_dir} is missing; maps go to <anomaly_maps_dir>/<object_name>/test/<kind>/<image id>.tiff '
        '(LOCO_FORMAT.md §8)')
  unexpected = sorted(p.name for p in test_dir.iterdir() if not p.name.startswith('.') and p.name not in KINDS)
  if unexpected:
    raise layout.LocoFormatError(
        f'{test_dir} holds unexpected entries {unexpected}; only {list(KINDS)} belong there (the official '
        'script reads the kind from the folder name and breaks on anything else)')
  known = {r.image_id for r in records}
  found: dict[str, pathlib.Path] = {}
  for kind in KINDS:
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


def _normalise_image_id(key: str) -> str:
  """'test/good/000', 'good/000' or 'good/000.tiff' -> 'test/good/000'."""
  key = str(key).replace(os.sep, '/').strip('/')
  for suffix in TIFF_SUFFIXES + ('.png',):
    if key.endswith(suffix):
      key = key[:-len(suffix)]
  return key if key.startswith('test/') else f'test/{key}'


@dataclasses.dataclass(frozen=True)
class _MapSource:
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


def _map_source(maps: MapsArg, records: Sequence[layout.ImageRecord]) -> _MapSource:
  if isinstance(maps, (str, os.PathLike)):
    return _MapSource(find_map_files(maps, records), None, str(maps))
  known = {r.image_id for r in records}
  arrays = {}
  for key, value in maps.items():
    image_id = _normalise_image_id(key)
    if image_id in arrays:
      raise layout.LocoFormatError(f'maps holds two entries for {image_id}; keep exactly one')
    if image_id not in known:
      raise layout.LocoFormatError(f'maps[{key!r}] has no test image {image_id}.png in the data set')
    arrays[image_id] = value
  return _MapSource(None, arrays, '<in-memory maps>')


# ------------------------------------------------------------------------------------------------
# Reading one image: map checks (§11.3), ground truth (§5), saturation (§6), negatives and events (§11.1).


@dataclasses.dataclass
class _Channel:
  path: pathlib.Path
  defect: layout.DefectType
  area: int
  events: np.ndarray  # the s largest scores, ascending


@dataclasses.dataclass
class _ScoredImage:
  record: layout.ImageRecord
  max_score: float
  negatives: np.ndarray  # scores outside the union of the channels, 1-D
  channels: list[_Channel]
  warnings: list[str]


def _check_map(arr: np.ndarray, where: str, record: layout.ImageRecord, size_hw: tuple[int, int]) -> np.ndarray:
  """A 2-D real map of the image's size, finite; returned as float32 or float64 scores (§8, §11.3)."""
  if arr.ndim != 2:
    raise layout.LocoFormatError(
        f'{where} has shape {arr.shape}; a map is a 2-D (H, W) array, not (H, W, 1) or (1, H, W) (§8.4)')
  if arr.dtype.kind not in 'biuf':
    raise layout.LocoFormatError(f'{where} has dtype {arr.dtype}; a map holds real scores (write float32)')
  if arr.shape != size_hw:
    raise layout.LocoFormatError(
        f'{where} is {arr.shape[1]}x{arr.shape[0]} (WxH) but its image {record.path} is '
        f'{size_hw[1]}x{size_hw[0]}; write maps at the original image size (§3, §8.4)')
  scores = arr.astype(spro.score_dtype(arr.dtype), copy=False)
  if scores.dtype.kind == 'f':
    lo, hi = scores.min(), scores.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
      nan, inf = int(np.isnan(scores).sum()), int(np.isinf(scores).sum())
      raise layout.LocoFormatError(
          f'{where} holds {nan} NaN and {inf} infinite values; maps must be finite (§8.7)')
  return scores


def _score_image(record: layout.ImageRecord, source: _MapSource, cat_dir: pathlib.Path,
                 defects: Mapping[int, layout.DefectType]) -> _ScoredImage:
  header = layout.read_png_header(record.path)
  size_hw = (header.height, header.width)
  where = source.where(record.image_id)
  scores = _check_map(source.load(record.image_id), where, record, size_hw)
  channels = layout.read_ground_truth(cat_dir, record, dict(defects), size_hw)
  notes = []
  if not channels:
    negatives = scores.reshape(-1)
  else:
    union = np.zeros(size_hw, bool)
    for channel in channels:
      union |= channel.mask > 0
    negatives = scores[~union]
  scored = []
  for channel in channels:
    mask = channel.mask > 0
    area = int(np.count_nonzero(mask))
    defect = channel.defect
    s = defect.saturation_area(area)
    if s < 1:
      raise layout.LocoFormatError(
          f'{channel.path}: saturation area s = floor({defect.saturation_threshold} x {area} px) = {s} for '
          f'defect {defect.defect_name!r}; s must be >= 1 (the official script divides by zero here). Raise '
          'the relative saturation_threshold or use an absolute one in defects_config.json (§6)')
    if not defect.relative_saturation and defect.saturation_threshold > area:
      notes.append(
          f'{channel.path}: defect {defect.defect_name!r} has an absolute saturation_threshold of '
          f'{defect.saturation_threshold} px but the channel has only {area} px; s = {area} is used (§6)')
    scored.append(_Channel(channel.path, defect, area, spro.channel_events(scores, mask, s)))
  return _ScoredImage(record, float(scores.max()), negatives, scored, notes)


def _ordered_map(fn: Callable, items: Sequence, num_workers: int) -> Iterator:
  """fn over items on a thread pool, results in order, at most 2·num_workers in flight (bounded memory)."""
  if num_workers <= 1:
    yield from map(fn, items)
    return
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    pending = collections.deque()
    it = iter(items)
    try:
      for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= 2 * num_workers:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:
      for future in pending:
        future.cancel()


class _NegativeBuffer:
  """The negative scores of one kind, copied image by image into one buffer, sorted later in place.

  Keeps each image's segment until the buffer is sorted, for the per-defect-type subsets (§11.3).
  """

  def __init__(self, capacity: int):
    self.capacity = max(capacity, 1)
    self.buf = None  # allocated at the first append, in the scores' dtype
    self.size = 0
    self.segments: dict[str, tuple[int, int]] = {}

  def append(self, image_id: str, values: np.ndarray) -> None:
    n = values.size
    if self.buf is None:
      self.buf = np.empty(max(self.capacity, n), values.dtype)
    dtype = np.result_type(values.dtype, self.buf.dtype)
    if dtype != self.buf.dtype or self.size + n > self.buf.size:
      fits = self.size + n <= self.buf.size
      grown = np.empty(self.buf.size if fits else max(2 * self.buf.size, self.size + n), dtype)
      grown[:self.size] = self.buf[:self.size]
      self.buf = grown
    self.buf[self.size:self.size + n] = values
    self.segments[image_id] = (self.size, self.size + n)
    self.size += n

  def segment(self, image_id: str) -> np.ndarray:
    lo, hi = self.segments[image_id]
    return self.buf[lo:hi]

  def sorted_pool(self) -> spro.ScorePool:
    self.segments = {}
    values = self.buf[:self.size] if self.buf is not None else np.zeros(0, np.float32)
    self.buf = None
    return spro.ScorePool.from_scores(values, in_place=True)


# ------------------------------------------------------------------------------------------------
# The evaluation.


def _summary_thresholds(pools: Sequence[spro.ScorePool], events: np.ndarray, top: float, bottom: float,
                        per_pool: int = 300) -> np.ndarray:
  """A deterministic descending threshold list for per_threshold in exact mode (§9.8).

  Pool scores at FPR ranks spread linearly and logarithmically, event scores at evenly spaced ranks, the
  largest score (FPR 0) and a value below the smallest (FPR 1).
  """
  targets = np.unique(np.concatenate([np.linspace(0, 1, per_pool // 2), np.geomspace(1e-6, 1, per_pool // 2)]))
  candidates = [np.array([top, np.nextafter(bottom, -np.inf)])]
  for pool in pools:
    if pool.size:
      ranks = np.clip(np.round((1 - targets) * (pool.size - 1)).astype(np.int64), 0, pool.size - 1)
      if pool.cumulative is None:
        candidates.append(pool.values[ranks].astype(np.float64))
      else:
        candidates.append(pool.values[np.searchsorted(pool.cumulative, ranks, side='right') - 1].astype(np.float64))
  if events.size:
    ranks = np.round(np.linspace(0, events.size - 1, per_pool)).astype(np.int64)
    candidates.append(np.sort(events)[ranks].astype(np.float64))
  return np.unique(np.concatenate(candidates))[::-1]


def _image_aurocs(maxima: Mapping[str, Sequence[float]]) -> tuple[dict, dict, dict]:
  """Image AUROC on the map maxima per kind and their mean (§9.6): official, standard, and where they differ."""
  official, standard, differs = {}, {}, {}
  for kind in ANOMALY_KINDS:
    official[kind] = auroc_lib.auroc_official(maxima['good'], maxima[kind])
    standard[kind] = auroc_lib.auroc_standard(maxima['good'], maxima[kind])
    differs[kind] = official[kind] != standard[kind]
  for table in (official, standard):
    logical, structural = table['logical_anomalies'], table['structural_anomalies']
    table['mean'] = None if logical is None or structural is None else 0.5 * (logical + structural)
  return official, standard, differs


def evaluate_category(dataset_category_dir: str | os.PathLike, maps: MapsArg, *, allow_missing: bool = False,
                      thresholds: Sequence[float] | None = None, limits: Sequence[float] = spro.LIMITS,
                      per_defect_type: bool = True, curve_points: int = 1000, num_workers: int | None = None,
                      thresholds_source: str | None = None) -> dict:
  """metrics.json of one category as a dict: official schema (§9.8) plus extras under 'gcad_jax'.

  Args:
    dataset_category_dir: `<dataset_base_dir>/<category>` (defects_config.json, test/, ground_truth/).
    maps: `<anomaly_maps_dir>/<category>` (a folder in the §8 layout), or a mapping image_id -> 2-D array
      with ids such as 'test/logical_anomalies/012' (or 'logical_anomalies/012').
    allow_missing: leave out test images without a map (listed under gcad_jax.missing_maps) instead of
      failing. The official script silently drops good images without maps (§10.3).
    thresholds: evaluate at these descending thresholds (explicit-threshold mode, §11.3), e.g.
      per_threshold.thresholds of an official metrics.json; None: exact mode (§11.1).
    limits: the integration limits (§9.5).
    per_defect_type: also compute AUC-sPRO and image AUROC per defect type (§11.3).
    curve_points: about how many vertices of each curve to store.
    num_workers: threads for reading and sorting; None: up to 2.
    thresholds_source: where `thresholds` came from, recorded in the output.

  Returns:
    {'classification': {'auc_roc': …}, 'localization': {'auc_spro': …, 'per_threshold': …}} exactly as the
    official metrics.json (AUROC in official mode; AUC-sPRO exact, or at `thresholds`; per_threshold of the
    whole test set, at `thresholds` or at a deterministic list), and under 'gcad_jax': mode,
    auc_spro_exact, auc_spro_error_bound (0 when exact), auc_roc_standard and
    auc_roc_official_differs_from_standard, auc_spro_per_defect_type (each type's AUC-sPRO and, under
    'auc_roc', its image AUROC against the good images), curves (about curve_points exact vertices per
    kind), counts, missing_maps, warnings, seconds per phase.
  """
  started = time.perf_counter()
  cat_dir = pathlib.Path(dataset_category_dir)
  defects = layout.read_defects_config(cat_dir / layout.DEFECTS_CONFIG)
  records = layout.list_split(cat_dir, 'test')
  layout.check_ground_truth_folders(cat_dir, records)
  source = _map_source(maps, records)
  available = source.ids()
  missing = [r.image_id for r in records if r.image_id not in available]
  if missing and not allow_missing:
    shown = ', '.join(missing[:10]) + (f' … ({len(missing)} in all)' if len(missing) > 10 else '')
    raise layout.LocoFormatError(
        f'{source.description} has no map for {shown}; every test image, good ones included, needs exactly '
        'one map (§8.1). Write the missing maps, or pass --allow_missing to leave those images out')
  records = [r for r in records if r.image_id in available]
  if thresholds is not None:
    thresholds = spro.check_thresholds(thresholds)
  num_workers = num_workers or min(2, os.cpu_count() or 1)

  # One pass over the images: each map is read once (§11.3 checks), its negatives copied into the
  # buffer of its kind, its channels reduced to their top-s events.
  size_hw = None
  if records:
    header = layout.read_png_header(records[0].path)
    size_hw = (header.height, header.width)
  per_image_pixels = size_hw[0] * size_hw[1] if size_hw else 0
  buffers = {kind: _NegativeBuffer(per_image_pixels * sum(r.kind == kind for r in records)) for kind in KINDS}
  images: list[_ScoredImage] = []
  notes: list[str] = []
  for image in _ordered_map(lambda r: _score_image(r, source, cat_dir, defects), records, num_workers):
    buffers[image.record.kind].append(image.record.image_id, image.negatives)
    image.negatives = None  # the buffer holds them now
    for note in image.warnings:
      warnings.warn(note, EvaluationWarning, stacklevel=2)
    notes.extend(image.warnings)
    images.append(image)

  def channels_of(selected: Iterable[_ScoredImage], defect_name: str | None = None) -> list[np.ndarray]:
    return [c.events for im in selected for c in im.channels
            if defect_name is None or c.defect.defect_name == defect_name]

  seconds = {}

  def lap(name):  # wall time per phase, reported under gcad_jax.seconds
    seconds[name] = round(time.perf_counter() - started - sum(seconds.values()), 3)

  lap('read')
  good_pool = buffers['good'].sorted_pool()
  lap('sort_good')

  def curves(pools, channels, need_exact=True):
    exact = spro.exact_spro_curve(pools, channels) if need_exact or thresholds is None else None
    sampled = spro.spro_curve_at_thresholds(pools, channels, thresholds) if thresholds is not None else None
    return exact, sampled

  # Per defect type (§11.3): the images with a channel of the type plus all good images; FPR over all
  # channels of those images, sPRO over the channels of the type only. Before the kind buffers are sorted.
  per_type = {}
  if per_defect_type:
    names = [[c.defect.defect_name for c in im.channels] for im in images]
    good_maxima = [im.max_score for im in images if im.record.kind == 'good']
    for name, idx in spro.defect_type_subsets(names).items():
      selected = [images[i] for i in idx if images[i].channels]
      type_pool = spro.ScorePool.from_scores(
          [buffers[im.record.kind].segment(im.record.image_id) for im in selected])
      exact, sampled = curves([good_pool, type_pool], channels_of(selected, name), need_exact=False)
      chosen = sampled if sampled is not None else exact
      kinds = sorted({im.record.kind for im in selected})
      per_type[name] = {
          'kind': kinds[0] if len(kinds) == 1 else kinds,
          'pixel_values': sorted({c.defect.pixel_value for im in selected for c in im.channels
                                  if c.defect.defect_name == name}),
          'num_images': len(selected),
          'num_channels': chosen.num_channels,
          'auc_spro': chosen.aucs(limits),
          # Image AUROC of the type (official ties, §9.6): its images' map maxima against the good ones'.
          'auc_roc': auroc_lib.auroc_official(good_maxima, [im.max_score for im in selected]),
      }
      del type_pool
    for defect in defects.values():
      per_type.setdefault(defect.defect_name, None)  # a type without test images

  lap('per_defect_type')
  pools = {'good': good_pool}
  with concurrent.futures.ThreadPoolExecutor(max(1, min(num_workers, 2))) as pool:
    futures = {kind: pool.submit(buffers[kind].sorted_pool) for kind in ANOMALY_KINDS}
    pools.update({kind: f.result() for kind, f in futures.items()})
  del buffers
  lap('sort_anomalous')

  auc_spro, exact_aucs, bounds, curve_json, counts = {}, {}, {}, {}, {}
  for kind in ANOMALY_KINDS:
    selected = [im for im in images if im.record.kind == kind]
    exact, sampled = curves([pools['good'], pools[kind]], channels_of(selected))
    chosen = sampled if sampled is not None else exact
    auc_spro[kind] = chosen.aucs(limits)
    exact_aucs[kind] = exact.aucs(limits)
    bounds[kind] = {spro.limit_key(l): (spro.interval_error_bound(chosen, l) if sampled is not None else 0.0)
                    for l in limits} if chosen.defined else None
    curve_json[kind] = spro.downsample(exact, curve_points)
    counts[kind] = {'num_images': len(selected), 'num_channels': exact.num_channels,
                    'num_negatives': exact.num_negatives}
  counts['good'] = {'num_images': sum(im.record.kind == 'good' for im in images), 'num_negatives': pools['good'].size}
  auc_spro['mean'] = spro.mean_of_kinds(auc_spro, ('structural_anomalies', 'logical_anomalies'))
  exact_aucs['mean'] = spro.mean_of_kinds(exact_aucs, ('structural_anomalies', 'logical_anomalies'))

  lap('curves')
  # per_threshold: the whole test set (§9.8), at the given thresholds or at a deterministic summary list.
  all_pools = list(pools.values())
  all_channels = channels_of(images)
  if images:
    top = max(im.max_score for im in images)
    bottom = min(p.min() for p in all_pools if p.size) if any(p.size for p in all_pools) else top
    bottom = min([bottom] + [float(e[0]) for e in all_channels])
    summary = thresholds if thresholds is not None else _summary_thresholds(
        all_pools, np.concatenate(all_channels) if all_channels else np.zeros(0), top, bottom)
    whole = spro.spro_curve_at_thresholds(all_pools, all_channels, summary)
  else:
    whole = spro.SproCurve.undefined(0, 0)
  per_threshold = {'thresholds': whole.thresholds.tolist(), 'mean_spros': whole.spro.tolist(),
                   'fp_rates': whole.fpr.tolist()}
  lap('per_threshold')

  maxima = {kind: [im.max_score for im in images if im.record.kind == kind] for kind in KINDS}
  auc_roc, auc_roc_std, differs = _image_aurocs(maxima)

  extras = {
      'evaluator': 'gcad_jax.evaluate (LOCO_FORMAT.md §11)',
      'category': cat_dir.name,
      'dataset_category_dir': str(cat_dir),
      'anomaly_maps': source.description,
      'mode': 'exact' if thresholds is None else 'thresholds',
      'thresholds_source': thresholds_source,
      'auc_spro_error_bound': bounds,
      'auc_spro_exact': exact_aucs,
      'auc_roc_standard': auc_roc_std,
      'auc_roc_official_differs_from_standard': differs,
      'auc_spro_per_defect_type': per_type if per_defect_type else None,
      'curves': curve_json,
      'counts': counts,
      'missing_maps': missing,
      'warnings': notes,
      'seconds': {**seconds, 'total': round(time.perf_counter() - started, 3)},
  }
  return {
      'classification': {'auc_roc': auc_roc},
      'localization': {'auc_spro': auc_spro, 'per_threshold': per_threshold},
      EXTRAS_KEY: extras,
  }


def write_metrics(metrics: Mapping, output_dir: str | os.PathLike) -> pathlib.Path:
  """Writes output_dir/metrics.json atomically: a hidden temporary file, then a rename."""
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  final = output_dir / METRICS_FILE
  tmp = output_dir / f'.{METRICS_FILE}.{os.getpid()}.tmp'
  try:
    with tmp.open('w') as f:
      json.dump(metrics, f, indent=4, sort_keys=True, allow_nan=False)
      f.write('\n')
    os.replace(tmp, final)
  finally:
    if tmp.exists():
      tmp.unlink()
  return final


def read_official_thresholds(path: str | os.PathLike) -> list[float]:
  """per_threshold.thresholds of a metrics.json (§9.8), for explicit-threshold mode."""
  path = pathlib.Path(path)
  try:
    data = json.loads(path.read_text())
    return list(data['localization']['per_threshold']['thresholds'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise layout.LocoFormatError(
        f'{path} holds no localization.per_threshold.thresholds ({e!r}); pass an official metrics.json') from e


# ------------------------------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m gcad_jax.evaluate',
      description='Exact sPRO / AUROC evaluation of anomaly maps in the MVTec LOCO AD layout '
                  '(the official script\'s inputs and metrics.json; LOCO_FORMAT.md §11).')
  parser.add_argument('--dataset_base_dir', required=True, help='folder holding the category folders')
  parser.add_argument('--anomaly_maps_dir', required=True,
                      help='maps in <anomaly_maps_dir>/<object_name>/test/<kind>/<image id>.tiff')
  parser.add_argument('--object_name', required=True,
                      help='the category folder (any folder with a defects_config.json)')
  parser.add_argument('--output_dir', default=None, help='writes <output_dir>/metrics.json (atomically)')
  parser.add_argument('--allow_missing', action='store_true',
                      help='leave out test images without a map (listed in the output) instead of failing')
  parser.add_argument('--thresholds_from', default=None,
                      help='a metrics.json whose per_threshold.thresholds to evaluate at (reproduces an '
                           'official run); default: the exact curve')
  parser.add_argument('--num_workers', type=int, default=None, help='threads (default: up to 2)')
  parser.add_argument('--no_per_defect_type', action='store_true', help='skip AUC-sPRO and image AUROC per defect type')
  parser.add_argument('--curve_points', type=int, default=1000, help='curve vertices to store per kind')
  return parser


def _summary(metrics: Mapping) -> str:
  aucs = metrics['localization']['auc_spro']
  roc = metrics['classification']['auc_roc']
  fmt = lambda v: '   -  ' if v is None else f'{v:.4f}'
  lines = ['kind                    AUROC   ' + '  '.join(f'sPRO@{k:<5}' for k in (aucs['mean'] or {}))]
  for kind in (*ANOMALY_KINDS, 'mean'):
    lines.append(f'{kind:<22}  {fmt(roc[kind])}  ' + '  '.join(f'{fmt(v):<10}' for v in (aucs[kind] or {}).values()))
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  cat_dir = pathlib.Path(args.dataset_base_dir) / args.object_name
  try:
    if not cat_dir.is_dir():
      known = ', '.join(sorted(layout.find_categories(args.dataset_base_dir))) or 'none'
      raise layout.LocoFormatError(
          f'category folder {cat_dir} does not exist (categories with a {layout.DEFECTS_CONFIG} under '
          f'{args.dataset_base_dir}: {known}); check --dataset_base_dir and --object_name')
    thresholds = read_official_thresholds(args.thresholds_from) if args.thresholds_from else None
    with warnings.catch_warnings():
      warnings.simplefilter('always', EvaluationWarning)
      warnings.showwarning = lambda message, *_, **__: print(f'warning: {message}', file=sys.stderr)
      metrics = evaluate_category(
          cat_dir, pathlib.Path(args.anomaly_maps_dir) / args.object_name, allow_missing=args.allow_missing,
          thresholds=thresholds, per_defect_type=not args.no_per_defect_type, curve_points=args.curve_points,
          num_workers=args.num_workers, thresholds_source=args.thresholds_from)
    if args.output_dir is not None:
      path = write_metrics(metrics, args.output_dir)
      print(f'wrote {path}', file=sys.stderr)
  except (layout.LocoFormatError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(_summary(metrics))
  return 0


if __name__ == '__main__':
  sys.exit(main())
