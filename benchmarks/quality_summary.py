"""Prints image AUROC and AUC-sPRO@limit of the combined, local-only and global-only maps of GCAD workdirs.

  python benchmarks/quality_summary.py WORKDIR... [--limit 0.05] [--json out.json]

Reads each WORKDIR/metrics.json (written by `gcad_jax.assess`: the combined maps under the official keys,
the branches under 'variants'), and from WORKDIR/p<p>/validation_losses.json the share of E_loc's variance
that E_glo and U reproduce per scale (under 5 %: E_glo collapsed; `gcad_jax.train.warn_if_eglo_collapsed`).
Used by benchmarks/quality.sh; any finished workdir works.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from gcad_jax import atomic_io, report, train

KINDS = (*report.KINDS, 'mean')


def figures(metrics: dict, limit: str) -> dict[str, dict[str, float]]:
  """{'combined'|'local'|'global': {'auroc_<kind>', 'spro_<kind>'}} from one metrics.json."""
  sources = {'combined': metrics, **metrics.get('variants', {})}
  out = {}
  for name, m in sources.items():
    row = {}
    for kind in KINDS:
      row[f'auroc_{kind}'] = m['classification']['auc_roc'].get(kind)
      row[f'spro_{kind}'] = m['localization']['auc_spro'].get(kind, {}).get(limit)
    out[name] = row
  return out


def kd_explained(workdir: pathlib.Path) -> dict[str, float]:
  """{'p17': share, ...}: 1 − validation L_kd / that of a constant E_glo, per scale (train.kd_explained_fraction)."""
  if not (workdir / 'config.json').is_file():
    return {}
  config = json.loads((workdir / 'config.json').read_text())
  out = {}
  for path in sorted(workdir.glob('p*/validation_losses.json')):
    l_kd = json.loads(path.read_text())['l_kd']
    out[path.parent.name] = train.kd_explained_fraction(l_kd, config['dataset']['image_size'],
                                                        config['train']['loss_reduction'])
  return out


def _fmt(value) -> str:
  return '   -  ' if value is None else f'{value:6.3f}'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--limit', default='0.05', help='FPR limit of AUC-sPRO (a key of metrics.json)')
  parser.add_argument('--json', default='', help='also write the figures to this file')
  args = parser.parse_args(argv)
  table = {}
  print(f'{"workdir":40s} {"maps":8s}  AUROC str  log   mean | sPRO@{args.limit} str  log   mean')
  for workdir in args.workdirs:
    path = pathlib.Path(workdir) / 'metrics.json'
    if not path.is_file():
      print(f'{workdir:40s} no metrics.json (run not finished?)')
      continue
    table[workdir] = figures(json.loads(path.read_text()), args.limit)
    for name, row in table[workdir].items():
      print(f'{workdir[-40:]:40s} {name:8s} ' + ' '.join(_fmt(row[f'auroc_{k}']) for k in KINDS) + ' | ' +
            ' '.join(_fmt(row[f'spro_{k}']) for k in KINDS))
    explained = kd_explained(pathlib.Path(workdir))
    table[workdir]['kd_explained'] = explained
    if explained:
      shares = [f'{p}: {100 * share:.1f} %' + (' (collapsed)' if share < train.MIN_KD_EXPLAINED else '')
                for p, share in explained.items()]
      print(f'{"":40s} E_glo reproduces ' + ', '.join(shares))
  if args.json:  # Written whole, then renamed: two quality.sh runs on one OUT may finish together.
    atomic_io.write_json(args.json, table, indent=2)
  return 0 if table else 1


if __name__ == '__main__':
  sys.exit(main())
