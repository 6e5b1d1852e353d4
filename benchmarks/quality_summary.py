"""Prints image AUROC and AUC-sPRO@limit of the combined, local-only and global-only maps of GCAD workdirs.

  python benchmarks/quality_summary.py WORKDIR... [--limit 0.05] [--json out.json]

Reads each WORKDIR/metrics.json (written by `gcad_jax.assess`: the combined maps under the official keys,
the branches under 'variants'). Used by benchmarks/quality.sh; any finished workdir works.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

KINDS = ('structural_anomalies', 'logical_anomalies', 'mean')


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
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(table, indent=2))
  return 0 if table else 1


if __name__ == '__main__':
  sys.exit(main())
