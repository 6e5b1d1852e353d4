"""The standalone evaluator: the official script's inputs and metrics.json, computed exactly.

docs/data_format.md §8 (map layout), §9 (what is computed), §11 (exact mode, explicit thresholds, input checks).
It reads files only and knows nothing of the model, so it scores any method's maps (found, read and
checked by `map_files`, which also writes them; pools and summary thresholds from `metrics.pools`):

  python -m gcad_jax.evaluate --dataset_base_dir D --anomaly_maps_dir M --object_name C --output_dir O \
      [--dataset_format loco|mvtec_ad|folder] [--logical crack,cable_swap] [--allow_missing] \
      [--thresholds_from official/metrics.json] [--num_workers 2]

writes O/metrics.json in the official schema (§9.8) plus our extras under the key "gcad_jax". Code that
already holds the maps in memory calls `evaluate_category(dataset_category_dir, {image_id: map})`, where
dataset_category_dir is a LOCO category folder or a `tfds_loco.formats.CategoryReader` of any format.

The formats (tfds_loco.formats): maps follow each layout's own names, <M>/<C>/test/<folder>/<name>.tiff,
<folder> a LOCO kind (loco) or a defect folder such as good, crack (mvtec_ad, folder). The output schema is
the same for all three: classification.auc_roc and localization.auc_spro[<limit>] for structural_anomalies,
logical_anomalies and mean (official ties, §9.6; limits 0.01, 0.05, 0.1, 0.3, 1.0, §9.5). On mvtec_ad and
folder, AUC-sPRO is PRO: regions are the masks' 8-connected components at full saturation (docs/method.md
§10.2; gcad_jax.metrics.pro); a folder without ground_truth/ gets null AUC-sPRO, gcad_jax.has_masks false
and a note saying that only the image metrics were computed. A subset without images (no logical
anomalies) and any mean over it are null.

The module is about 500 lines because it holds the evaluator's named steps, its formats and its command
line together; each step is a short function.
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
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from gcad_jax import map_files
from gcad_jax.metrics import auroc as auroc_lib
from gcad_jax.metrics import pools as pools_lib
from gcad_jax.metrics import pro
from gcad_jax.metrics import spro
from tfds_loco import formats
from tfds_loco import layout

KINDS = layout.KINDS
ANOMALY_KINDS = layout.ANOMALY_KINDS
METRICS_FILE = 'metrics.json'
EXTRAS_KEY = 'gcad_jax'


class EvaluationWarning(UserWarning):
  """A suspicious but valid input, e.g. an absolute saturation threshold above the channel's area (§6)."""


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
  negatives: np.ndarray | None  # scores outside the union of the channels, 1-D; None once buffered
  channels: list[_Channel]
  warnings: list[str]


def _regions(reader: formats.CategoryReader, channel: layout.GroundTruthChannel) -> list[layout.GroundTruthChannel]:
  """The channel itself (LOCO), or one channel per 8-connected component (PRO, docs/method.md §10.2)."""
  if reader.regions == 'channels':
    return [channel]
  return [dataclasses.replace(channel, mask=region.astype(np.uint8) * channel.defect.pixel_value)
          for region in pro.components(channel.mask)]


def _score_image(record: layout.ImageRecord, source: map_files.MapSource, reader: formats.CategoryReader,
                 defects: Mapping[int, layout.DefectType]) -> _ScoredImage:
  header = layout.read_png_header(record.path)
  size_hw = (header.height, header.width)
  where = source.where(record.image_id)
  scores = map_files.check_map_scores(source.load(record.image_id), where, record, size_hw)
  channels = [region for channel in reader.ground_truth(record, size_hw, dict(defects))
              for region in _regions(reader, channel)]
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
          'the relative saturation_threshold or use an absolute one in defects_config.json (docs/data_format.md §6)')
    if not defect.relative_saturation and defect.saturation_threshold > area:
      notes.append(
          f'{channel.path}: defect {defect.defect_name!r} has an absolute saturation_threshold of '
          f'{defect.saturation_threshold} px but the channel has only {area} px; s = {area} is used (docs/data_format.md §6)')
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


def _read_images(reader: formats.CategoryReader, records: Sequence[layout.ImageRecord], source: map_files.MapSource,
                 defects: Mapping[int, layout.DefectType], num_workers: int
                 ) -> tuple[list[_ScoredImage], dict[str, pools_lib.NegativeBuffer]]:
  """One pass over the images: each map read once, its negatives copied into the buffer of its kind."""
  size_hw = None
  if records:
    header = layout.read_png_header(records[0].path)
    size_hw = (header.height, header.width)
  per_image_pixels = size_hw[0] * size_hw[1] if size_hw else 0
  buffers = {kind: pools_lib.NegativeBuffer(per_image_pixels * sum(r.kind == kind for r in records))
             for kind in KINDS}
  images = []
  for image in _ordered_map(lambda r: _score_image(r, source, reader, defects), records, num_workers):
    buffers[image.record.kind].append(image.record.image_id, image.negatives)
    image.negatives = None  # the buffer holds them now
    images.append(image)
  return images, buffers


# ------------------------------------------------------------------------------------------------
# The evaluation, step by step.


def _channels_of(images: Iterable[_ScoredImage], defect_name: str | None = None) -> list[np.ndarray]:
  return [c.events for im in images for c in im.channels if defect_name is None or c.defect.defect_name == defect_name]


def _curves(pools, channels, thresholds, need_exact=True) -> tuple[spro.SproCurve | None, spro.SproCurve | None]:
  """(the exact curve, the curve at `thresholds`); each None when not asked for."""
  exact = spro.exact_spro_curve(pools, channels) if need_exact or thresholds is None else None
  sampled = spro.spro_curve_at_thresholds(pools, channels, thresholds) if thresholds is not None else None
  return exact, sampled


def _per_defect_type(images: Sequence[_ScoredImage], buffers: Mapping[str, pools_lib.NegativeBuffer],
                     good_pool: spro.ScorePool, defect_names: Sequence[str], thresholds,
                     limits: Sequence[float]) -> dict:
  """AUC-sPRO and image AUROC per defect type (§11.3), before the kind buffers are sorted.

  A type's subset: the images with a channel of the type plus all good images; FPR over all channels of
  those images, sPRO over the channels of the type only. A type without test images maps to None.
  """
  per_type = {}
  names = [[c.defect.defect_name for c in im.channels] for im in images]
  good_maxima = [im.max_score for im in images if im.record.kind == 'good']
  for name, idx in spro.defect_type_subsets(names).items():
    selected = [images[i] for i in idx if images[i].channels]
    type_pool = spro.ScorePool.from_scores(
        [buffers[im.record.kind].segment(im.record.image_id) for im in selected])
    exact, sampled = _curves([good_pool, type_pool], _channels_of(selected, name), thresholds, need_exact=False)
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
  for name in defect_names:
    per_type.setdefault(name, None)
  return per_type


def _sort_anomalous(buffers: Mapping[str, pools_lib.NegativeBuffer], num_workers: int) -> dict[str, spro.ScorePool]:
  """The anomalous kinds' pools, sorted on up to two threads."""
  with concurrent.futures.ThreadPoolExecutor(max(1, min(num_workers, 2))) as pool:
    futures = {kind: pool.submit(buffers[kind].sorted_pool) for kind in ANOMALY_KINDS}
    return {kind: f.result() for kind, f in futures.items()}


@dataclasses.dataclass
class _KindResults:
  auc_spro: dict
  exact_aucs: dict
  bounds: dict
  curves: dict
  counts: dict


def _per_kind(images: Sequence[_ScoredImage], pools: Mapping[str, spro.ScorePool], thresholds,
              limits: Sequence[float], curve_points: int) -> _KindResults:
  """AUC-sPRO per anomaly kind against the good images and their mean (§9.5), exact and as reported."""
  out = _KindResults({}, {}, {}, {}, {})
  for kind in ANOMALY_KINDS:
    selected = [im for im in images if im.record.kind == kind]
    exact, sampled = _curves([pools['good'], pools[kind]], _channels_of(selected), thresholds)
    chosen = sampled if sampled is not None else exact
    out.auc_spro[kind] = chosen.aucs(limits)
    out.exact_aucs[kind] = exact.aucs(limits)
    out.bounds[kind] = {
        spro.limit_key(l): (spro.interval_error_bound(chosen, l) if sampled is not None else 0.0)
        for l in limits} if chosen.defined else None
    out.curves[kind] = spro.downsample(exact, curve_points)
    out.counts[kind] = {'num_images': len(selected), 'num_channels': exact.num_channels,
                        'num_negatives': exact.num_negatives}
  out.counts['good'] = {'num_images': sum(im.record.kind == 'good' for im in images),
                        'num_negatives': pools['good'].size}
  out.auc_spro['mean'] = spro.mean_of_kinds(out.auc_spro, ('structural_anomalies', 'logical_anomalies'))
  out.exact_aucs['mean'] = spro.mean_of_kinds(out.exact_aucs, ('structural_anomalies', 'logical_anomalies'))
  return out


def _per_threshold(images: Sequence[_ScoredImage], pools: Mapping[str, spro.ScorePool], thresholds) -> dict:
  """per_threshold of the whole test set (§9.8), at `thresholds` or at a deterministic summary list."""
  all_pools = list(pools.values())
  all_channels = _channels_of(images)
  if images:
    top = max(im.max_score for im in images)
    bottom = min(p.min() for p in all_pools if p.size) if any(p.size for p in all_pools) else top
    bottom = min([bottom] + [float(e[0]) for e in all_channels])
    summary = thresholds if thresholds is not None else pools_lib.summary_thresholds(
        all_pools, np.concatenate(all_channels) if all_channels else np.zeros(0), top, bottom)
    whole = spro.spro_curve_at_thresholds(all_pools, all_channels, summary)
  else:
    whole = spro.SproCurve.undefined(0, 0)
  return {'thresholds': whole.thresholds.tolist(), 'mean_spros': whole.spro.tolist(), 'fp_rates': whole.fpr.tolist()}


def _image_aurocs(images: Sequence[_ScoredImage]) -> tuple[dict, dict, dict]:
  """Image AUROC on the map maxima per kind and their mean (§9.6): official, standard, and where they differ."""
  maxima = {kind: [im.max_score for im in images if im.record.kind == kind] for kind in KINDS}
  official, standard, differs = {}, {}, {}
  for kind in ANOMALY_KINDS:
    official[kind] = auroc_lib.auroc_official(maxima['good'], maxima[kind])
    standard[kind] = auroc_lib.auroc_standard(maxima['good'], maxima[kind])
    differs[kind] = official[kind] != standard[kind]
  for table in (official, standard):
    logical, structural = table['logical_anomalies'], table['structural_anomalies']
    table['mean'] = None if logical is None or structural is None else 0.5 * (logical + structural)
  return official, standard, differs


class _Laps:
  """Wall time per phase, reported under gcad_jax.seconds."""

  def __init__(self):
    self.started = time.perf_counter()
    self.seconds = {}

  def lap(self, name: str) -> None:
    self.seconds[name] = round(time.perf_counter() - self.started - sum(self.seconds.values()), 3)

  def total(self) -> dict:
    return {**self.seconds, 'total': round(time.perf_counter() - self.started, 3)}


def evaluate_category(dataset_category_dir: str | os.PathLike, maps: map_files.MapsArg, *, allow_missing: bool = False,
                      thresholds: Sequence[float] | None = None, limits: Sequence[float] = spro.LIMITS,
                      per_defect_type: bool = True, curve_points: int = 1000, num_workers: int | None = None,
                      thresholds_source: str | None = None) -> dict:
  """metrics.json of one category as a dict: official schema (§9.8) plus extras under 'gcad_jax'.

  Args:
    dataset_category_dir: `<dataset_base_dir>/<category>` in LOCO layout (defects_config.json, test/,
      ground_truth/), or a `tfds_loco.formats.CategoryReader` of any format (loco, mvtec_ad, folder).
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
  laps = _Laps()
  reader = formats.as_reader(dataset_category_dir)
  cat_dir = reader.cat_dir
  defects = reader.defects()
  records = reader.records('test')
  has_masks = reader.check_ground_truth(records)
  source = map_files.map_source(maps, records)
  records, missing = map_files.split_missing(source, records, allow_missing)
  if thresholds is not None:
    thresholds = spro.check_thresholds(thresholds)
  num_workers = num_workers or min(2, os.cpu_count() or 1)

  images, buffers = _read_images(reader, records, source, defects, num_workers)
  notes = [note for im in images for note in im.warnings]
  if not has_masks:
    notes.append(f'{cat_dir} has no ground_truth/ folder: only the image metrics (AUROC) are computed; '
                 'AUC-sPRO is null')
  for note in notes:
    warnings.warn(note, EvaluationWarning, stacklevel=2)
  laps.lap('read')
  pools = {'good': buffers['good'].sorted_pool()}
  laps.lap('sort_good')
  per_type = (_per_defect_type(images, buffers, pools['good'], reader.defect_names(records), thresholds, limits)
              if per_defect_type else None)
  laps.lap('per_defect_type')
  pools.update(_sort_anomalous(buffers, num_workers))
  del buffers
  laps.lap('sort_anomalous')
  by_kind = _per_kind(images, pools, thresholds, limits, curve_points)
  laps.lap('curves')
  per_threshold = _per_threshold(images, pools, thresholds)
  laps.lap('per_threshold')
  auc_roc, auc_roc_std, differs = _image_aurocs(images)

  extras = {
      'evaluator': 'gcad_jax.evaluate (docs/data_format.md §11)',
      'category': cat_dir.name,
      'dataset_category_dir': str(cat_dir),
      'dataset_format': reader.format,
      'regions': reader.regions,
      'has_masks': has_masks,
      'kinds': {im.record.image_id: im.record.kind for im in images},
      'anomaly_maps': source.description,
      'mode': 'exact' if thresholds is None else 'thresholds',
      'thresholds_source': thresholds_source,
      'auc_spro_error_bound': by_kind.bounds,
      'auc_spro_exact': by_kind.exact_aucs,
      'auc_roc_standard': auc_roc_std,
      'auc_roc_official_differs_from_standard': differs,
      'auc_spro_per_defect_type': per_type,
      'curves': by_kind.curves,
      'counts': by_kind.counts,
      'missing_maps': missing,
      'warnings': notes,
      'seconds': laps.total(),
  }
  return {
      'classification': {'auc_roc': auc_roc},
      'localization': {'auc_spro': by_kind.auc_spro, 'per_threshold': per_threshold},
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
      description='Exact sPRO / PRO / AUROC evaluation of anomaly maps for MVTec LOCO AD, MVTec AD and '
                  'MVTec AD-style folders (the official LOCO script\'s inputs and metrics.json; '
                  'docs/data_format.md §11, docs/method.md §10.2).')
  parser.add_argument('--dataset_base_dir', required=True, help='folder holding the category folders')
  parser.add_argument('--anomaly_maps_dir', required=True,
                      help='maps in <anomaly_maps_dir>/<object_name>/test/<folder>/<image name>.tiff, '
                           '<folder> as in the data set: a LOCO kind, or good / a defect folder')
  parser.add_argument('--object_name', required=True,
                      help='the category folder (loco: a folder with a defects_config.json)')
  parser.add_argument('--dataset_format', default='loco', choices=formats.FORMATS,
                      help='loco (default), mvtec_ad (the paper\'s Table 4 logical split, PRO regions) or '
                           'folder (your own MVTec AD-style folder; masks optional)')
  parser.add_argument('--logical', default='',
                      help='folder format: comma-separated defect folders (or defect/name images) that are '
                           'logical anomalies; the others are structural')
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
  limits = [spro.limit_key(l) for l in spro.LIMITS]
  lines = ['kind                    AUROC   ' + '  '.join(f'sPRO@{k:<5}' for k in limits)]
  for kind in (*ANOMALY_KINDS, 'mean'):
    lines.append(f'{kind:<22}  {fmt(roc[kind])}  '
                 + '  '.join(f'{fmt((aucs[kind] or {}).get(k)):<10}' for k in limits))
  if not metrics.get(EXTRAS_KEY, {}).get('has_masks', True):
    lines.append('no ground-truth masks: only the image metrics (AUROC) are computed')
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  cat_dir = pathlib.Path(args.dataset_base_dir) / args.object_name
  try:
    if args.dataset_format == 'loco' and not cat_dir.is_dir():
      known = ', '.join(sorted(layout.find_categories(args.dataset_base_dir))) or 'none'
      raise layout.LocoFormatError(
          f'category folder {cat_dir} does not exist (categories with a {layout.DEFECTS_CONFIG} under '
          f'{args.dataset_base_dir}: {known}); check --dataset_base_dir and --object_name')
    logical = [name for name in args.logical.split(',') if name]
    reader = formats.reader(args.dataset_format, args.dataset_base_dir, args.object_name, logical)
    thresholds = read_official_thresholds(args.thresholds_from) if args.thresholds_from else None
    with warnings.catch_warnings():
      warnings.simplefilter('always', EvaluationWarning)
      warnings.showwarning = lambda message, *_, **__: print(f'warning: {message}', file=sys.stderr)
      metrics = evaluate_category(
          reader, pathlib.Path(args.anomaly_maps_dir) / args.object_name, allow_missing=args.allow_missing,
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
