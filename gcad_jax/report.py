"""Reports: W/metrics.json with variants, plots, overlays, W/report.md, TensorBoard; tables over workdirs.

  python -m gcad_jax.report W [W ...] [--benchmark loco|mvtec_ad]

prints docs/method.md §10.1's Tables 3, 5 and 6 (MVTec LOCO AD), or §10.2's Tables 8 and 9 (MVTec AD; the
default when the runs' metrics.json say dataset_format mvtec_ad), for the given workdirs (one category each;
several workdirs of one category are seeds: mean ± std), with the paper's GCAD figures beside ours. Metric values come from the
evaluator (docs/data_format.md §9, §11); this module only arranges and draws them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
from typing import Iterable, Mapping, Sequence

import numpy as np

from gcad_jax import atomic_io, evaluate, scoring
from tfds_loco import formats
from tfds_loco import layout

KINDS = layout.ANOMALY_KINDS[::-1]  # structural first, as the paper's tables
SHORT = {'structural_anomalies': 'structural', 'logical_anomalies': 'logical', 'mean': 'mean'}
LIMIT = '0.05'
REPORT_FILE = 'report.md'
# docs/method.md §10.1 [P]: Table 3 (AUC-sPRO@0.05 per category), Tables 5 and 6 (means over the categories).
PAPER_TABLE3 = {'breakfast_box': 0.502, 'screw_bag': 0.558, 'pushpins': 0.739, 'splicing_connectors': 0.798,
                'juice_bottle': 0.910, 'mean': 0.701}
PAPER_TABLE5 = {'structural': 0.692, 'logical': 0.711, 'mean': 0.701}
PAPER_TABLE6 = {'structural': 0.806, 'logical': 0.860, 'mean': 0.833}
# docs/method.md §10.2 [P]: MVTec AD, Table 8 (AUC-sPRO = AUC-PRO at 0.05) and Table 9 (image AUROC), GCAD's row.
PAPER_TABLE8 = {'structural': 0.716, 'logical': 0.863, 'mean': 0.789}
PAPER_TABLE9 = {'structural': 0.871, 'logical': 0.991, 'mean': 0.931}
PRO_LIMIT = '0.3'  # the usual MVTec AD PRO limit, reported beside the paper's 0.05


# ------------------------------------------------------------------------------------------------
# metrics.json: the combined maps' official keys, plus the variants (pure).


def headline(metrics: Mapping) -> dict:
  """{'spro', 'spro_0.3', 'auroc'} → {structural, logical, mean}: AUC-sPRO@0.05, @0.3 and image AUROC."""
  spro = metrics['localization']['auc_spro']
  roc = metrics['classification']['auc_roc']
  return {'spro': {SHORT[k]: (spro.get(k) or {}).get(LIMIT) for k in (*KINDS, 'mean')},
          f'spro_{PRO_LIMIT}': {SHORT[k]: (spro.get(k) or {}).get(PRO_LIMIT) for k in (*KINDS, 'mean')},
          'auroc': {SHORT[k]: roc.get(k) for k in (*KINDS, 'mean')}}


def assemble_metrics(combined: Mapping, variants: Mapping[str, Mapping], extra: Mapping | None = None) -> dict:
  """The combined maps' metrics (official schema + 'gcad_jax'), with 'variants' = local-only and global-only.

  Each variant keeps the official classification and localization.auc_spro, its standard AUROC and, where it
  was computed, its AUC-sPRO and image AUROC per defect type.
  """
  out = dict(combined)
  out['variants'] = {
      name: {'classification': m['classification'], 'localization': {'auc_spro': m['localization']['auc_spro']},
             'auc_roc_standard': m.get(evaluate.EXTRAS_KEY, {}).get('auc_roc_standard'),
             'per_defect_type': m.get(evaluate.EXTRAS_KEY, {}).get('auc_spro_per_defect_type')}
      for name, m in variants.items()}
  if extra:
    out[evaluate.EXTRAS_KEY] = {**out.get(evaluate.EXTRAS_KEY, {}), **extra}
  return out


def variant_headlines(metrics: Mapping) -> dict[str, dict]:
  """{'local', 'global', 'combined'} → headline(), for the variants present."""
  out = {name: headline(m) for name, m in metrics.get('variants', {}).items()}
  out['combined'] = headline(metrics)
  return {v: out[v] for v in scoring.VARIANTS if v in out}


def defect_type_figures(per_type: Mapping | None) -> dict[str, dict]:
  """{defect type: {'kind', 'auroc', 'spro'}} (image AUROC, AUC-sPRO@0.05) of an evaluator's
  `auc_spro_per_defect_type` table, for the types with test images; 'kind' as the evaluator gives it."""
  return {name: {'kind': row['kind'], 'auroc': row.get('auc_roc'), 'spro': (row.get('auc_spro') or {}).get(LIMIT)}
          for name, row in (per_type or {}).items() if row}


def per_defect_type_rows(metrics: Mapping) -> dict[str, dict]:
  """{defect type: {'kind', variant: {'auroc', 'spro'}}} (image AUROC, AUC-sPRO@0.05) of the variants that have
  per-type figures; {} when the combined maps have none. Rows sorted by kind, then name."""
  tables = {'combined': metrics.get(evaluate.EXTRAS_KEY, {}).get('auc_spro_per_defect_type')}
  tables.update({name: m.get('per_defect_type') for name, m in metrics.get('variants', {}).items()})
  figures = {v: defect_type_figures(tables[v]) for v in scoring.VARIANTS if tables.get(v)}
  if not figures.get('combined'):
    return {}
  rows = {}
  for name, first in sorted(figures['combined'].items(), key=lambda item: (str(item[1]['kind']), item[0])):
    kind = first['kind'] if isinstance(first['kind'], str) else '+'.join(first['kind'])
    rows[name] = {'kind': SHORT.get(kind, kind)}
    for variant, table in figures.items():
      row = table.get(name, {})
      rows[name][variant] = {'auroc': row.get('auroc'), 'spro': row.get('spro')}
  return rows


def _fmt(value, std=None) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '–'
  return f'{value:.3f}' if std is None else f'{value:.3f} ± {std:.3f}'


def category_markdown(metrics: Mapping, category: str, extra_lines: Sequence[str] = ()) -> str:
  """W/report.md: AUC-sPRO@0.05 and image AUROC per kind and mean, rows local/global/combined (Tables 5, 6)."""
  rows = variant_headlines(metrics)
  lines = [f'# GCAD on {category}', '', *extra_lines, '',
           '| maps | sPRO@0.05 structural | logical | mean | AUROC structural | logical | mean |',
           '|---|---:|---:|---:|---:|---:|---:|']
  for name, h in rows.items():
    lines.append(f'| {name} | ' + ' | '.join(_fmt(h['spro'][k]) for k in ('structural', 'logical', 'mean'))
                 + ' | ' + ' | '.join(_fmt(h['auroc'][k]) for k in ('structural', 'logical', 'mean')) + ' |')
  lines.append('| paper GCAD (5-category means, Tables 5, 6) | '
               + ' | '.join(_fmt(PAPER_TABLE5[k]) for k in ('structural', 'logical', 'mean')) + ' | '
               + ' | '.join(_fmt(PAPER_TABLE6[k]) for k in ('structural', 'logical', 'mean')) + ' |')
  if category in PAPER_TABLE3:
    lines.append(f'\nPaper GCAD AUC-sPRO@0.05 on {category} (Table 3): {PAPER_TABLE3[category]:.3f}.')
  types = per_defect_type_rows(metrics)
  if types:
    variants = [v for v in scoring.VARIANTS if v in next(iter(types.values()))]
    lines += ['', 'Per defect type, each type\'s images against all good images (which branch finds what):', '',
              '| defect type | kind | ' + ' | '.join(f'AUROC {v}' for v in variants) + ' | '
              + ' | '.join(f'sPRO@0.05 {v}' for v in variants) + ' |',
              '|---|---|' + '---:|' * (2 * len(variants))]
    for name, row in types.items():
      lines.append(f'| {name} | {row["kind"]} | ' + ' | '.join(_fmt(row[v]['auroc']) for v in variants) + ' | '
                   + ' | '.join(_fmt(row[v]['spro']) for v in variants) + ' |')
  spro = metrics['localization']['auc_spro']['mean'] or {}
  lines += ['', 'Combined maps, mean AUC-sPRO at every integration limit (Table 7):', '',
            '| ' + ' | '.join(spro) + ' |', '|' + '---:|' * len(spro),
            '| ' + ' | '.join(_fmt(v) for v in spro.values()) + ' |', '',
            'Plots: `plots/spro_curves.png`, `plots/roc_curves.png`; overlays in `plots/overlays/`. '
            'Evaluator: exact mode of `gcad_jax.evaluate` (docs/data_format.md §11).']
  return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg).


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(plt, fig, path: pathlib.Path, dpi: int = 100) -> pathlib.Path:
  """Lays out, writes and closes `fig`; atomically, so no half-written plot stands under its final name."""
  fig.tight_layout()
  with atomic_io.replacing(path) as tmp:
    fig.savefig(tmp, dpi=dpi)
  plt.close(fig)
  return path


def plot_spro_curves(metrics: Mapping, path: pathlib.Path, limit: float = 0.3) -> pathlib.Path:
  """sPRO against FPR per anomaly kind, up to FPR `limit`, with the 0.05 limit marked."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 4))
  for kind, curve in metrics[evaluate.EXTRAS_KEY]['curves'].items():
    if curve['fpr']:
      ax.plot(curve['fpr'], curve['spro'], label=SHORT.get(kind, kind))
  ax.axvline(0.05, color='grey', ls='--', lw=0.8)
  ax.set(xlim=(0, limit), ylim=(0, 1), xlabel='FPR', ylabel='sPRO', title='sPRO curves (combined maps)')
  ax.legend()
  return _save(plt, fig, path)


def plot_roc_curves(image_scores: Mapping[str, float], path: pathlib.Path,
                    kinds: Mapping[str, str] | None = None) -> pathlib.Path:
  """Image-level ROC (score = map maximum), good vs each anomaly kind.

  `kinds` maps image ids to kinds (the evaluator's gcad_jax.kinds); without it the id's folder is the kind (LOCO).
  """
  from gcad_jax.metrics import auroc  # pylint: disable=g-import-not-at-top
  plt = _pyplot()
  by_kind = {}
  for image_id, score in image_scores.items():
    kind = kinds[image_id] if kinds else image_id.split('/')[1]
    by_kind.setdefault(kind, []).append(score)
  fig, ax = plt.subplots(figsize=(4.5, 4))
  for kind in KINDS:
    if by_kind.get(kind) and by_kind.get('good'):
      fpr, tpr = auroc.roc_official(by_kind['good'], by_kind[kind])
      ax.plot(fpr, tpr, label=f'{SHORT[kind]} ({auroc.auroc_official(by_kind["good"], by_kind[kind]):.3f})')
  ax.plot([0, 1], [0, 1], color='grey', ls=':', lw=0.8)
  ax.set(xlim=(0, 1), ylim=(0, 1), xlabel='FPR', ylabel='TPR', title='Image ROC (combined maps)')
  ax.legend()
  return _save(plt, fig, path)


def plot_overlays(cat_dir, maps: Mapping[str, np.ndarray], out_dir: pathlib.Path,
                  per_kind: int = 2) -> list[pathlib.Path]:
  """PNG per chosen test image: the image, its ground-truth outline (red) and the heat map, one colour scale.

  `cat_dir`: a LOCO category folder or a `tfds_loco.formats.CategoryReader` of any format.
  """
  plt = _pyplot()
  reader = formats.as_reader(cat_dir)
  records = reader.records('test')
  chosen = [r for kind in layout.KINDS for r in [r for r in records if r.kind == kind][:per_kind]]
  if not chosen:
    return []
  arrays = {r.image_id: np.asarray(maps[r.image_id]) for r in chosen}
  lo = min(float(np.percentile(a, 1)) for a in arrays.values())
  hi = max(float(a.max()) for a in arrays.values())
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for r in chosen:
    image = reader.read_image(r.path)
    fig, ax = plt.subplots(figsize=(5, 5 * image.shape[0] / image.shape[1]))
    ax.imshow(image)
    im = ax.imshow(arrays[r.image_id], cmap='jet', alpha=0.45, vmin=lo, vmax=hi)
    union = reader.union_mask(r, image.shape) if r.kind != 'good' else None
    if union is not None and union.any():
      ax.contour(union, levels=[0.5], colors='red', linewidths=1.2)
    ax.set_title(f'{r.image_id}  max {arrays[r.image_id].max():.2f}', fontsize=8)
    ax.axis('off')
    fig.colorbar(im, ax=ax, fraction=0.04)
    written.append(_save(plt, fig, out_dir / f'{r.folder}_{r.stem}.png', dpi=80))
  return written


# ------------------------------------------------------------------------------------------------
# The per-workdir report (I/O edge).


def write_category_report(workdir, metrics: Mapping, category: str, cat_dir, maps: Mapping[str, np.ndarray],
                          image_scores: Mapping[str, float], step: int = 0,
                          extra_lines: Sequence[str] = ()) -> pathlib.Path:
  """W/metrics.json, W/plots/*, W/report.md and TensorBoard scalars `test/*`; returns report.md's path."""
  workdir = pathlib.Path(workdir)
  evaluate.write_metrics(metrics, workdir)
  plots = workdir / 'plots'
  plots.mkdir(parents=True, exist_ok=True)
  plot_spro_curves(metrics, plots / 'spro_curves.png')
  plot_roc_curves(image_scores, plots / 'roc_curves.png', metrics.get(evaluate.EXTRAS_KEY, {}).get('kinds'))
  plot_overlays(cat_dir, maps, plots / 'overlays')
  path = workdir / REPORT_FILE
  tmp = workdir / f'.{REPORT_FILE}.{os.getpid()}.tmp'
  tmp.write_text(category_markdown(metrics, category, extra_lines))
  os.replace(tmp, path)
  write_scalars(workdir, metrics, step)
  return path


def write_scalars(workdir, metrics: Mapping, step: int) -> None:
  """test/<variant>/{spro_0.05,auroc}/<kind> to TensorBoard (`summaries.create_writer` in W)."""
  from gcad_jax import summaries  # pylint: disable=g-import-not-at-top
  scalars = {}
  for variant, h in variant_headlines(metrics).items():
    for metric in ('spro', 'auroc'):
      for kind, value in h[metric].items():
        if value is not None:
          name = 'spro_0.05' if metric == 'spro' else 'auroc'
          scalars[f'test/{variant}/{name}/{kind}'] = float(value)
  writer = summaries.create_writer(str(workdir))
  writer.write_scalars(int(step), scalars)
  writer.flush()
  writer.close()


# ------------------------------------------------------------------------------------------------
# Tables over workdirs (Tables 3, 5, 6).


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
  vals = [v for v in values if v is not None]
  if not vals:
    return None, None
  return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def _seed(workdir: pathlib.Path) -> int | None:
  path = workdir / 'config.json'
  try:
    return int(json.loads(path.read_text())['seed']) if path.is_file() else None
  except (KeyError, TypeError, ValueError):
    return None


def load_runs(workdirs: Iterable) -> dict[str, list[dict]]:
  """{category: [variant_headlines of each workdir (seed)]} from W/metrics.json, by seed (W/config.json).

  Sorted by seed, so that with the same seeds in every category the i-th run of each is one seed.
  """
  found: dict[str, list[tuple]] = {}
  for order, w in enumerate(workdirs):
    path = pathlib.Path(w) / evaluate.METRICS_FILE
    if not path.is_file():
      raise FileNotFoundError(f'{path} is missing; run --mode=eval on {w} first')
    metrics = json.loads(path.read_text())
    category = metrics.get(evaluate.EXTRAS_KEY, {}).get('category') or pathlib.Path(w).name
    seed = _seed(pathlib.Path(w))
    found.setdefault(category, []).append((seed is None, seed or 0, order, variant_headlines(metrics)))
  return {c: [entry[-1] for entry in sorted(entries, key=lambda e: e[:3])] for c, entries in found.items()}


def tables_markdown(runs: Mapping[str, list[dict]]) -> str:
  """Tables 3, 5 and 6 (docs/method.md §10.1) of ours (mean ± std over seeds) beside the paper's GCAD row."""
  categories = sorted(runs)
  seeds = {len(v) for v in runs.values()}
  aligned = len(seeds) == 1  # the same number of seeds everywhere: a per-seed dataset mean, then its std
  out = []

  def dataset_mean(variant, metric, kind):
    per_cat = [[r[variant][metric][kind] if variant in r else None for r in runs[c]] for c in categories]
    if aligned:
      per_seed = [np.mean([pc[i] for pc in per_cat]) if all(pc[i] is not None for pc in per_cat) else None
                  for i in range(len(per_cat[0]))]
      return _mean_std(per_seed)
    means = [_mean_std(pc)[0] for pc in per_cat]
    return (float(np.mean(means)), None) if all(m is not None for m in means) else (None, None)

  variants = [v for v in scoring.VARIANTS if any(v in r for rs in runs.values() for r in rs)]
  out += ['Table 3: AUC-sPRO@0.05 per category (mean of structural and logical).', '',
          '| maps | ' + ' | '.join(categories) + ' | Mean |', '|---|' + '---:|' * (len(categories) + 1)]
  for v in variants:
    cells = [_fmt(*_mean_std([r[v]['spro']['mean'] for r in runs[c] if v in r])) for c in categories]
    out.append(f'| ours {v} | ' + ' | '.join(cells) + f' | {_fmt(*dataset_mean(v, "spro", "mean"))} |')
  out.append('| paper GCAD | ' + ' | '.join(_fmt(PAPER_TABLE3.get(c)) for c in categories)
             + f' | {_fmt(PAPER_TABLE3["mean"])} |')
  for number, metric, paper, title in ((5, 'spro', PAPER_TABLE5, 'AUC-sPRO@0.05 by anomaly kind'),
                                       (6, 'auroc', PAPER_TABLE6, 'image AUROC by anomaly kind')):
    out += ['', f'Table {number}: {title} (mean over the categories).', '',
            '| maps | Structural | Logical | Mean |', '|---|---:|---:|---:|']
    for v in variants:
      out.append(f'| ours {v} | ' + ' | '.join(_fmt(*dataset_mean(v, metric, k))
                                              for k in ('structural', 'logical', 'mean')) + ' |')
    out.append('| paper GCAD | ' + ' | '.join(_fmt(paper[k]) for k in ('structural', 'logical', 'mean')) + ' |')
  if 'combined' in variants:
    out += ['', 'Per category, combined maps: AUC-sPRO@0.05 and image AUROC by anomaly kind, beside the paper\'s '
            'AUC-sPRO@0.05 (Table 3).', '',
            '| category | seeds | sPRO structural | sPRO logical | sPRO mean | paper sPRO mean '
            '| AUROC structural | AUROC logical | AUROC mean |', '|---|---:|' + '---:|' * 7]
    for c in categories:
      cell = lambda metric, kind: _fmt(*_mean_std([r['combined'][metric][kind] for r in runs[c] if 'combined' in r]))
      out.append(f'| {c} | {len(runs[c])} | ' + ' | '.join(cell('spro', k) for k in ('structural', 'logical', 'mean'))
                 + f' | {_fmt(PAPER_TABLE3.get(c))} | '
                 + ' | '.join(cell('auroc', k) for k in ('structural', 'logical', 'mean')) + ' |')
  n = ', '.join(f'{c}: {len(runs[c])}' for c in categories)
  out += ['', f'Runs per category: {n}. ± is the sample std over seeds. The paper averages the five real '
          'categories; a mean over other categories is not comparable to it.']
  return '\n'.join(out) + '\n'


def _kind_means(runs: Mapping[str, list[dict]], variant: str, metric: str) -> dict[str, tuple]:
  """MVTec AD's means (docs/method.md §10.2): structural over every category, logical over the categories with
  logical anomalies, mean = ½(structural + logical); per seed when every category has the same seeds."""
  categories = sorted(runs)
  value = lambda c, i, kind: runs[c][i][variant][metric][kind] if variant in runs[c][i] else None
  logical = [c for c in categories if any(value(c, i, 'logical') is not None for i in range(len(runs[c])))]
  groups = {'structural': categories, 'logical': logical}
  counts = {len(v) for v in runs.values()}
  seeds = range(counts.pop()) if len(counts) == 1 else None
  out = {}
  for kind, cats in groups.items():
    if seeds is None:  # unequal seeds: the mean of the per-category means
      means = [_mean_std([value(c, i, kind) for i in range(len(runs[c]))])[0] for c in cats]
      out[kind] = [float(np.mean(means))] if cats and None not in means else [None]
    else:
      per_seed = [[value(c, i, kind) for c in cats] for i in seeds]
      out[kind] = [float(np.mean(v)) if cats and None not in v else None for v in per_seed]
  out['mean'] = [None if s is None or l is None else 0.5 * (s + l) for s, l in zip(out['structural'], out['logical'])]
  return {kind: _mean_std(values) for kind, values in out.items()}


def mvtec_ad_tables_markdown(runs: Mapping[str, list[dict]]) -> str:
  """Tables 8 and 9 of the paper on MVTec AD (docs/method.md §10.2), ours (mean ± std over seeds) beside GCAD's."""
  variants = [v for v in scoring.VARIANTS if any(v in r for rs in runs.values() for r in rs)]
  kinds = ('structural', 'logical', 'mean')
  out = []
  for title, metric, paper in (('Table 8: AUC-sPRO@0.05 (= AUC-PRO: regions are connected components)', 'spro',
                                PAPER_TABLE8),
                               (f'AUC-PRO@{PRO_LIMIT} (the usual MVTec AD limit; not in the paper)',
                                f'spro_{PRO_LIMIT}', None),
                               ('Table 9: image AUROC', 'auroc', PAPER_TABLE9)):
    out += [f'{title}; structural over all categories, logical over those with logical anomalies.', '',
            '| maps | Structural | Logical | Mean |', '|---|---:|---:|---:|']
    for v in variants:
      means = _kind_means(runs, v, metric)
      out.append(f'| ours {v} | ' + ' | '.join(_fmt(*means[k]) for k in kinds) + ' |')
    if paper:
      out.append('| paper GCAD | ' + ' | '.join(_fmt(paper[k]) for k in kinds) + ' |')
    out.append('')
  if 'combined' in variants:
    out += ['Per category, combined maps.', '',
            f'| category | seeds | PRO@0.05 structural | logical | PRO@{PRO_LIMIT} structural | logical '
            '| AUROC structural | logical |', '|---|---:|' + '---:|' * 6]
    for c in sorted(runs):
      cell = lambda metric, kind: _fmt(*_mean_std([r['combined'][metric][kind] for r in runs[c] if 'combined' in r]))
      out.append(f'| {c} | {len(runs[c])} | ' + ' | '.join(
          cell(m, k) for m in ('spro', f'spro_{PRO_LIMIT}', 'auroc') for k in ('structural', 'logical')) + ' |')
  n = ', '.join(f'{c}: {len(runs[c])}' for c in sorted(runs))
  out += ['', f'Runs per category: {n}. ± is the sample std over seeds. The paper averages all 15 categories; a '
          'mean over fewer is not comparable to it.']
  return '\n'.join(out) + '\n'


def run_format(workdirs: Iterable) -> str:
  """'mvtec_ad' when every workdir's metrics.json says so (gcad_jax.dataset_format), else 'loco'."""
  found = set()
  for w in workdirs:
    path = pathlib.Path(w) / evaluate.METRICS_FILE
    extras = json.loads(path.read_text()).get(evaluate.EXTRAS_KEY, {}) if path.is_file() else {}
    found.add(extras.get('dataset_format', 'loco'))
  return 'mvtec_ad' if found == {'mvtec_ad'} else 'loco'


def benchmark_tables(workdirs: Sequence, benchmark: str | None = None) -> str:
  """The tables of `benchmark` ('loco': Tables 3, 5, 6; 'mvtec_ad': Tables 8, 9; None: from the runs)."""
  runs = load_runs(workdirs)
  benchmark = benchmark or run_format(workdirs)
  return mvtec_ad_tables_markdown(runs) if benchmark == 'mvtec_ad' else tables_markdown(runs)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m gcad_jax.report', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('workdirs', nargs='+', help='workdirs holding metrics.json (one category each)')
  parser.add_argument('--out', default=None, help='also write the tables to this markdown file')
  parser.add_argument('--benchmark', default=None, choices=('loco', 'mvtec_ad'),
                      help='which paper tables (default: mvtec_ad when the runs are MVTec AD runs, else loco)')
  args = parser.parse_args(argv)
  try:
    text = benchmark_tables(args.workdirs, args.benchmark)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(text)
  if args.out:
    atomic_io.write_text(args.out, text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
