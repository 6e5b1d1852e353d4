"""The paper's tables over trained workdirs: docs/method.md §10.1's Tables 3, 5 and 6 (MVTec LOCO AD) and
§10.2's Tables 8 and 9 (MVTec AD), ours (mean ± std over seeds) beside the paper's GCAD figures.

`python -m gcad_jax.report W [W ...]` prints them; `gcad_jax.loco_protocol` writes them after a protocol run.
"""

from __future__ import annotations

import json
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np

from gcad_jax import evaluate, report, scoring


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
    found.setdefault(category, []).append((seed is None, seed or 0, order, report.variant_headlines(metrics)))
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
    cells = [report.fmt(*_mean_std([r[v]['spro']['mean'] for r in runs[c] if v in r])) for c in categories]
    out.append(f'| ours {v} | ' + ' | '.join(cells) + f' | {report.fmt(*dataset_mean(v, "spro", "mean"))} |')
  out.append('| paper GCAD | ' + ' | '.join(report.fmt(report.PAPER_TABLE3.get(c)) for c in categories)
             + f' | {report.fmt(report.PAPER_TABLE3["mean"])} |')
  for number, metric, paper, title in ((5, 'spro', report.PAPER_TABLE5, 'AUC-sPRO@0.05 by anomaly kind'),
                                       (6, 'auroc', report.PAPER_TABLE6, 'image AUROC by anomaly kind')):
    out += ['', f'Table {number}: {title} (mean over the categories).', '',
            '| maps | Structural | Logical | Mean |', '|---|---:|---:|---:|']
    for v in variants:
      out.append(f'| ours {v} | ' + ' | '.join(report.fmt(*dataset_mean(v, metric, k))
                                              for k in ('structural', 'logical', 'mean')) + ' |')
    out.append('| paper GCAD | ' + ' | '.join(report.fmt(paper[k]) for k in ('structural', 'logical', 'mean')) + ' |')
  if 'combined' in variants:
    out += ['', 'Per category, combined maps: AUC-sPRO@0.05 and image AUROC by anomaly kind, beside the paper\'s '
            'AUC-sPRO@0.05 (Table 3).', '',
            '| category | seeds | sPRO structural | sPRO logical | sPRO mean | paper sPRO mean '
            '| AUROC structural | AUROC logical | AUROC mean |', '|---|---:|' + '---:|' * 7]
    for c in categories:
      cell = lambda metric, kind: report.fmt(*_mean_std([r['combined'][metric][kind] for r in runs[c] if 'combined' in r]))
      out.append(f'| {c} | {len(runs[c])} | ' + ' | '.join(cell('spro', k) for k in ('structural', 'logical', 'mean'))
                 + f' | {report.fmt(report.PAPER_TABLE3.get(c))} | '
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
                                report.PAPER_TABLE8),
                               (f'AUC-PRO@{report.PRO_LIMIT} (the usual MVTec AD limit; not in the paper)',
                                f'spro_{report.PRO_LIMIT}', None),
                               ('Table 9: image AUROC', 'auroc', report.PAPER_TABLE9)):
    out += [f'{title}; structural over all categories, logical over those with logical anomalies.', '',
            '| maps | Structural | Logical | Mean |', '|---|---:|---:|---:|']
    for v in variants:
      means = _kind_means(runs, v, metric)
      out.append(f'| ours {v} | ' + ' | '.join(report.fmt(*means[k]) for k in kinds) + ' |')
    if paper:
      out.append('| paper GCAD | ' + ' | '.join(report.fmt(paper[k]) for k in kinds) + ' |')
    out.append('')
  if 'combined' in variants:
    out += ['Per category, combined maps.', '',
            f'| category | seeds | PRO@0.05 structural | logical | PRO@{report.PRO_LIMIT} structural | logical '
            '| AUROC structural | logical |', '|---|---:|' + '---:|' * 6]
    for c in sorted(runs):
      cell = lambda metric, kind: report.fmt(*_mean_std([r['combined'][metric][kind] for r in runs[c] if 'combined' in r]))
      out.append(f'| {c} | {len(runs[c])} | ' + ' | '.join(
          cell(m, k) for m in ('spro', f'spro_{report.PRO_LIMIT}', 'auroc') for k in ('structural', 'logical')) + ' |')
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
