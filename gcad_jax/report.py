"""Reports: W/metrics.json with variants, plots, overlays, W/report.md, TensorBoard; the tables' command line.

  python -m gcad_jax.report W [W ...] [--benchmark loco|mvtec_ad]

prints docs/method.md §10.1's Tables 3, 5 and 6 (MVTec LOCO AD), or §10.2's Tables 8 and 9 (MVTec AD; the
default when the runs' metrics.json say dataset_format mvtec_ad), for the given workdirs (one category each;
several workdirs of one category are seeds: mean ± std), with the paper's GCAD figures beside ours
(gcad_jax/benchmark_tables.py builds them). Metric values come from the evaluator (docs/data_format.md §9,
§11); this module only arranges and draws them.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
from typing import Mapping, Sequence

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


def fmt(value, std=None) -> str:
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
    lines.append(f'| {name} | ' + ' | '.join(fmt(h['spro'][k]) for k in ('structural', 'logical', 'mean'))
                 + ' | ' + ' | '.join(fmt(h['auroc'][k]) for k in ('structural', 'logical', 'mean')) + ' |')
  lines.append('| paper GCAD (5-category means, Tables 5, 6) | '
               + ' | '.join(fmt(PAPER_TABLE5[k]) for k in ('structural', 'logical', 'mean')) + ' | '
               + ' | '.join(fmt(PAPER_TABLE6[k]) for k in ('structural', 'logical', 'mean')) + ' |')
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
      lines.append(f'| {name} | {row["kind"]} | ' + ' | '.join(fmt(row[v]['auroc']) for v in variants) + ' | '
                   + ' | '.join(fmt(row[v]['spro']) for v in variants) + ' |')
  spro = metrics['localization']['auc_spro']['mean'] or {}
  lines += ['', 'Combined maps, mean AUC-sPRO at every integration limit (Table 7):', '',
            '| ' + ' | '.join(spro) + ' |', '|' + '---:|' * len(spro),
            '| ' + ' | '.join(fmt(v) for v in spro.values()) + ' |', '',
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


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m gcad_jax.report', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('workdirs', nargs='+', help='workdirs holding metrics.json (one category each)')
  parser.add_argument('--out', default=None, help='also write the tables to this markdown file')
  parser.add_argument('--benchmark', default=None, choices=('loco', 'mvtec_ad'),
                      help='which paper tables (default: mvtec_ad when the runs are MVTec AD runs, else loco)')
  args = parser.parse_args(argv)
  from gcad_jax import benchmark_tables  # pylint: disable=g-import-not-at-top (it imports this module)
  try:
    text = benchmark_tables.benchmark_tables(args.workdirs, args.benchmark)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(text)
  if args.out:
    atomic_io.write_text(args.out, text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
