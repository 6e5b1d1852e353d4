"""Re-scores trained GCAD workdirs under each scoring choice of docs/method.md §8, without retraining.

  python benchmarks/score_variants.py WORKDIR... [--norms scalar,per_pixel] [--squared no,yes] [--per_scale]
                                      [--fusions sum,max] [--per_defect_type] [--json out.json]

The §8 choices left to us ([I], config fields) are the normalisation (`score.norm`: scalar μ, σ over all
validation pixels, or per pixel) and whether the residual norm is squared (`score.squared`). Each workdir's
networks run once on its validation and test images (the latest checkpoint of every scale, W/config.json);
every (norm, squared) pair is then computed from those branch maps and evaluated with the exact evaluator
(`gcad_jax.evaluate`), for the combined map and each branch alone; a choice is labelled 'NORM,norm' (the
residual's L2 norm) or 'NORM,squared'. With --fusions sum,max the combined map is also formed as the
pixelwise maximum of the two normalised branch maps (`score.fusion`), labelled 'NORM,norm,max'. With --per_scale, each scale p is also scored alone under every
choice ('NORM,norm,p33': that scale's model without the others; §8 step 3 averages them). With
--per_defect_type, each map's image AUROC and AUC-sPRO@0.05 per defect type as well (docs/data_format.md §11.3: the
type's images against all good images): which defects each branch finds. Any dataset format (loco, mvtec_ad,
folder): the masks are read through the workdir's own. Prints mean image AUROC, AUC-sPRO@0.05 and @0.3 per kind;
writes nothing into the workdirs. Not part of CI: minutes per workdir on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import sys
import time

import numpy as np

from quality_summary import _fmt  # benchmarks/ is on the path when this script runs

KINDS = ('structural', 'logical', 'mean')
FIGURES = ('auroc', 'spro', 'spro0.3')  # image AUROC, AUC-sPRO@0.05, AUC-sPRO@0.3: keys '{figure}_{kind}'


def variant_maps(a_loc: dict, a_glo: dict, val: dict, norm: str, squared: bool,
                 fusion: str = 'sum') -> dict[str, np.ndarray]:
  """{'combined', 'local', 'global'} test maps from the raw branch maps {p: (N, h, w)} (§8 steps 1–3)."""
  from gcad_jax import scoring  # pylint: disable=g-import-not-at-top
  power = 2 if squared else 1
  per_scale = []
  for p in a_loc:
    stats = scoring.norm_stats(val['loc'][p] ** power, val['glo'][p] ** power, mode=norm)
    per_scale.append(scoring.scale_variants(a_loc[p] ** power, a_glo[p] ** power, stats, fusion))
  return scoring.fuse_scales(per_scale)


def raw_branch_maps(workdir: pathlib.Path):
  """(config, validation {'loc','glo'}: {p: maps}, test SplitData, test {'loc','glo'}: {p: maps}), unsquared."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gcad_jax import input_pipeline, parallel, scoring, train  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(json.loads((workdir / 'config.json').read_text()))
  config.score.squared = False
  mesh = parallel.make_mesh()
  val_data = input_pipeline.load_split(config, 'validation')
  test_data = input_pipeline.load_split(config, 'test')
  val, test = {'loc': {}, 'glo': {}}, {'loc': {}, 'glo': {}}
  for p in config.model.scales:
    nets, state, _ = train.restore_latest(config, workdir, int(p), mesh)
    val['loc'][p], val['glo'][p] = scoring.branch_maps(config, nets, state, val_data.images, mesh)
    test['loc'][p], test['glo'][p] = scoring.branch_maps(config, nets, state, test_data.images, mesh)
  return config, val, test_data, test


def headline(metrics: dict) -> dict[str, float]:
  from gcad_jax import report  # pylint: disable=g-import-not-at-top
  h = report.headline(metrics)
  per_figure = dict(zip(FIGURES, (h['auroc'], h['spro'], h[f'spro_{report.PRO_LIMIT}'])))
  return {f'{figure}_{k}': values[k] for figure, values in per_figure.items() for k in KINDS}


def score_workdir(workdir: pathlib.Path, norms, squareds, per_scale: bool = False, per_type: bool = False,
                  fusions=('sum',)) -> dict:
  from gcad_jax import evaluate, report, scoring  # pylint: disable=g-import-not-at-top
  from tfds_loco import formats  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  config, val, test_data, test = raw_branch_maps(workdir)
  print(f'[score_variants] {workdir}: branch maps of {len(test_data)} test images in '
        f'{time.perf_counter() - t0:.0f} s', flush=True)
  cat_dir = formats.reader_for_config(config)  # the category folder in its format (loco, mvtec_ad, folder)
  scale_sets = [(tuple(test['loc']), '')]  # all scales fused, then (with per_scale) each alone
  if per_scale:
    scale_sets += [((p,), f',p{p}') for p in test['loc']]
  out = {}
  for norm, squared, fusion in itertools.product(norms, squareds, fusions):
    for scales, suffix in scale_sets:
      maps = variant_maps({p: test['loc'][p] for p in scales}, {p: test['glo'][p] for p in scales}, val, norm,
                          squared, fusion)
      name = f'{norm},{"squared" if squared else "norm"}{"" if fusion == "sum" else "," + fusion}{suffix}'
      out[name] = {}
      for variant in scoring.VARIANTS:
        full = scoring.FullResMaps(test_data.image_ids, maps[variant], test_data.original_sizes)
        metrics = evaluate.evaluate_category(cat_dir, full, per_defect_type=per_type)
        out[name][variant] = headline(metrics)
        if per_type:
          out[name][variant]['per_defect_type'] = dict(sorted(report.defect_type_figures(
              metrics[evaluate.EXTRAS_KEY]['auc_spro_per_defect_type']).items()))
  return out


def print_per_defect_type(scored: dict) -> None:
  """One line per scoring choice and defect type: image AUROC / AUC-sPRO@0.05 of each map."""
  print(f'{"norm,residual[,scale]":22s} {"defect type":26s} {"kind":10s} ' +
        ' '.join(f'{v + " AUROC/sPRO":>20s}' for v in ('combined', 'local', 'global')))
  for name, rows in scored.items():
    for defect, first in rows['combined']['per_defect_type'].items():
      cells = [rows[v]['per_defect_type'][defect] for v in ('combined', 'local', 'global')]
      print(f'{name:22s} {defect[:26]:26s} {str(first["kind"]).replace("_anomalies", ""):10s} ' +
            ' '.join(f'{_fmt(c["auroc"]):>13s} {_fmt(c["spro"]):>6s}' for c in cells), flush=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--norms', default='scalar,per_pixel', help='score.norm values, comma-separated')
  parser.add_argument('--squared', default='no,yes', help='score.squared values: no, yes or both')
  parser.add_argument('--per_scale', action='store_true',
                      help="also score each scale alone (choices named 'NORM,norm,p17', ...)")
  parser.add_argument('--per_defect_type', action='store_true',
                      help='also image AUROC and AUC-sPRO@0.05 per defect type, for every map')
  parser.add_argument('--fusions', default='sum', help="score.fusion values, comma-separated: sum and/or max")
  parser.add_argument('--json', default='', help='also write the figures to this file')
  args = parser.parse_args(argv)
  from gcad_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.set_cpu_xla_flags()  # Before JAX starts, as the entry points do (3–7× on CPUs; docs/performance.md).
  norms = [n for n in args.norms.split(',') if n]
  flags = {'no': False, 'yes': True}
  bad = [s for s in args.squared.split(',') if s not in flags]
  if bad or not norms:
    parser.error(f'--squared takes no and/or yes (got {bad}); --norms at least one value')
  squareds = [flags[s] for s in args.squared.split(',')]
  fusions = [f for f in args.fusions.split(',') if f]
  if not fusions or set(fusions) - {'sum', 'max'}:
    parser.error(f'--fusions takes sum and/or max (got {args.fusions!r})')
  table = {}
  for workdir in args.workdirs:
    path = pathlib.Path(workdir)
    if not (path / 'config.json').is_file():
      print(f'{workdir}: no config.json, skipped (not a gcad_jax workdir)', file=sys.stderr)
      continue
    table[workdir] = score_workdir(path, norms, squareds, args.per_scale, args.per_defect_type, fusions)
    print(f'{"workdir":34s} {"norm,residual[,scale]":22s} {"maps":8s}  AUROC str  log   mean | '
          'sPRO@0.05 str  log   mean | sPRO@0.3 str  log   mean')
    for name, rows in table[workdir].items():
      for variant, row in rows.items():
        print(f'{workdir[-34:]:34s} {name:22s} {variant:8s} ' + ' | '.join(
            ' '.join(_fmt(row[f'{key}_{k}']) for k in KINDS) for key in FIGURES), flush=True)
    if args.per_defect_type:
      print_per_defect_type(table[workdir])
  if args.json:
    from gcad_jax import atomic_io  # pylint: disable=g-import-not-at-top
    atomic_io.write_json(pathlib.Path(args.json), table, indent=2)
  return 0 if table else 1


if __name__ == '__main__':
  sys.exit(main())
