"""Real photos in the MVTec AD layout: build, train and evaluate with gcad_jax (dataset format 'folder'), print the figures.

  python benchmarks/real_images.py SOURCE_DIR SCRATCH_DIR [--category NAME] [--val_fraction 0.1] [--seed 0]
      [--image_size 128] [--logical DEFECT,...] [--config SPEC] [--workdir DIR] [--json OUT] [--prepare_only]
      [-- --config.a.b=value ...]

  python benchmarks/real_images.py /data/mvtec_bottle/bottle /tmp/bottle --json /tmp/bottle/shipped.json
  python benchmarks/real_images.py /data/mvtec_bottle/bottle /tmp/bottle --workdir /tmp/bottle/random \
      --json /tmp/bottle/random.json -- --config.teacher.init=random

SOURCE_DIR is one category in MVTec AD's layout: train/good/*.png, test/good/*.png, test/<defect>/*.png and
ground_truth/<defect>/<stem>_mask.png. SCRATCH_DIR/data/<category> links to it, and the mvtec_ad TFDS builder
reads it in the 'folder' format (tfds_loco/folder_layout.py) into SCRATCH_DIR/tfds, checking every file:
  * validation = a deterministic --val_fraction of train/good (μ, σ of the maps, docs/method.md §8): every
    image whose index i in the name-sorted list is floor((j + 0.5)·n / k) for j < k = round(val_fraction·n);
  * every defect folder is structural except those named by --logical;
  * AUC-sPRO is MVTec AD's PRO: regions are the masks' 8-connected components at full saturation
    (docs/method.md §10.2); per-defect-type figures come out as well;
  * grey images are read as RGB.
A rerun with the same inputs reuses the build; other inputs or options rebuild it.

Then `python -m gcad_jax.main --config=SPEC` runs with the data set (format folder, manual_dir, data_dir,
category, logical, val_fraction), image size and seed set, plus the flags after `--`, in --workdir (default SCRATCH_DIR/work; a rerun of the same command resumes
there). It prints image AUROC and AUC-sPRO at FPR 0.05 and 0.3 of the combined, local and global maps (from
W/metrics.json), and per defect type. --json writes them with the command, overrides, wall time and machine.
The images stay outside the repository: MVTec AD is CC BY-NC-SA 4.0.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAPS = ('combined', 'local', 'global')
KINDS = ('structural_anomalies', 'logical_anomalies', 'mean')
LIMITS = ('0.05', '0.3')  # metrics.json keys of the FPR limits (gcad_jax.metrics.spro.limit_key)
SOURCE_MARKER = 'real_images_source.json'  # in the workdir: the build its run used (a resumed run must match)
VALIDATION_RULE = 'train/good sorted by name, index floor((j + 0.5)·n/k), k = round(val_fraction·n)'


def prepare(source: pathlib.Path, scratch: pathlib.Path, category: str, *, val_fraction: float,
            logical: tuple[str, ...] = ()) -> dict:
  """SCRATCH/data/<category>, a link to `source` (the images stay where they are), checked and built by the
  mvtec_ad TFDS builder in 'folder' format into SCRATCH/tfds; returns tfds_loco.build.summarize's counts with
  the build's source fingerprint under 'source' (files and options).

  A rerun with the same inputs reuses the build; other inputs or options rebuild it (the builder's source
  fingerprint). A bad folder raises layout.LocoFormatError naming the file.
  """
  from tfds_loco import build as tfds_build  # pylint: disable=g-import-not-at-top
  from tfds_loco import layout  # pylint: disable=g-import-not-at-top
  link = scratch / 'data' / category
  link.parent.mkdir(parents=True, exist_ok=True)
  if link.is_symlink() and link.resolve() != source.resolve():
    link.unlink()
  if link.exists() and not link.is_symlink():
    raise layout.LocoFormatError(f'{link} exists and is not a link to a source folder (not written by this '
                                 'script); choose another SCRATCH_DIR or remove it')
  if not link.exists():
    link.symlink_to(source.resolve(), target_is_directory=True)
  builder = tfds_build.build(category, scratch / 'data', scratch / 'tfds', quiet=True, dataset_format='folder',
                             logical=logical, val_fraction=val_fraction)
  return {**tfds_build.summarize(builder), 'source': builder.info.metadata['source']}


def figures(metrics: dict) -> dict:
  """{map: {'auroc': {kind: v}, 'spro': {limit: {kind: v}}}} and 'per_defect_type' of a W/metrics.json."""
  from gcad_jax import report  # pylint: disable=g-import-not-at-top
  sources = {'combined': metrics, **metrics.get('variants', {})}
  out = {}
  for name in MAPS:
    if name in sources:
      roc, spro = sources[name]['classification']['auc_roc'], sources[name]['localization']['auc_spro']
      out[name] = {'auroc': {k: roc.get(k) for k in KINDS},
                   'spro': {lim: {k: (spro.get(k) or {}).get(lim) for k in KINDS} for lim in LIMITS}}
  return {'maps': out, 'per_defect_type': report.per_defect_type_rows(metrics)}


def table(result: dict) -> str:
  """The maps' figures, then per defect type (image AUROC / AUC-sPRO@0.05), as plain text."""
  def fmt(v):
    return '    -' if v is None else f'{v:.3f}'

  short = dict(zip(KINDS, ('struct', 'logic', 'mean')))
  cells = {name: {f'AUROC:{short[k]}': f['auroc'][k] for k in KINDS} | {
      f'sPRO@{lim}:{short[k]}': f['spro'][lim][k] for lim in LIMITS for k in KINDS}
           for name, f in result['maps'].items()}
  # Columns that no map fills (no logical anomalies, hence no mean) are left out.
  head = [h for h in next(iter(cells.values()), {}) if any(row[h] is not None for row in cells.values())]
  lines = [f'{"map":9} ' + ' '.join(head)]
  for name, row in cells.items():
    lines.append(f'{name:9} ' + ' '.join(f'{fmt(row[h]):>{len(h)}}' for h in head))
  rows = result.get('per_defect_type') or {}
  if rows:
    lines += ['', f'{"defect type (AUROC / sPRO@0.05)":34} ' + ' '.join(f'{m:>13}' for m in MAPS)]
    for defect, row in rows.items():
      cells = [f'{fmt(row.get(m, {}).get("auroc"))} / {fmt(row.get(m, {}).get("spro"))}' for m in MAPS]
      lines.append(f'{defect + " (" + row["kind"] + ")":34} ' + ' '.join(f'{c:>13}' for c in cells))
  return '\n'.join(lines)


def train_command(args, scratch: pathlib.Path, workdir: pathlib.Path, extra: list[str]) -> list[str]:
  size = args.image_size
  return [sys.executable, '-m', 'gcad_jax.main', f'--config={args.config.format(category=args.category)}',
          f'--workdir={workdir}', f'--config.dataset.manual_dir={scratch / "data"}',
          f'--config.dataset.data_dir={scratch / "tfds"}', f'--config.dataset.category={args.category}',
          f'--config.dataset.image_size=({size},{size})', f'--config.seed={args.seed}',
          '--config.dataset.format=folder', f'--config.dataset.val_fraction={args.val_fraction}',
          *([f'--config.dataset.logical={tuple(_logical(args))!r}'] if _logical(args) else []), *extra]


def _logical(args) -> list[str]:
  return [d for d in args.logical.split(',') if d]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  extra = argv[argv.index('--') + 1:] if '--' in argv else []
  argv = argv[:argv.index('--')] if '--' in argv else argv
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('source', type=pathlib.Path, help='MVTec AD-style category folder')
  parser.add_argument('scratch', type=pathlib.Path, help='scratch folder (outside the repository)')
  parser.add_argument('--category', default=None, help='category name (default: the source folder name)')
  parser.add_argument('--val_fraction', type=float, default=0.1, help='share of train/good held out')
  parser.add_argument('--logical', default='', help='comma-separated defect folders that are logical anomalies')
  parser.add_argument('--seed', type=int, default=0, help='config.seed of the training')
  parser.add_argument('--image_size', type=int, default=128, help='network input side (a multiple of 64)')
  parser.add_argument('--config', default='configs/synthetic.py:{category}', help='config spec ({category})')
  parser.add_argument('--workdir', type=pathlib.Path, default=None, help='default SCRATCH_DIR/work')
  parser.add_argument('--json', type=pathlib.Path, default=None, help='write the figures here')
  parser.add_argument('--prepare_only', action='store_true', help='convert, then stop')
  args = parser.parse_args(argv)
  args.category = args.category or args.source.resolve().name
  return args, extra


def main(argv: list[str] | None = None) -> int:
  args, extra = parse_args(sys.argv[1:] if argv is None else argv)
  scratch = args.scratch.resolve()
  if scratch == ROOT or ROOT in scratch.parents:
    raise SystemExit(f'SCRATCH_DIR {scratch} is inside the repository {ROOT}; the images must stay outside it')
  t0 = time.perf_counter()
  summary = prepare(args.source, scratch, args.category, val_fraction=args.val_fraction,
                    logical=tuple(_logical(args)))
  counts = {split: s['labels'] for split, s in summary['splits'].items()}
  print(f'built {summary["name"]} in {summary["data_dir"]} from {args.source}: {counts}; '
        f'validation: {VALIDATION_RULE} = {args.val_fraction}', flush=True)
  if args.prepare_only:
    return 0
  workdir = (args.workdir or scratch / 'work').resolve()
  marker = workdir / SOURCE_MARKER
  if workdir.is_dir() and any(workdir.iterdir()) and (
      not marker.is_file() or json.loads(marker.read_text())['fingerprint'] != summary['source']['fingerprint']):
    raise SystemExit(f'{workdir} holds a run on other data or options than {args.source} now has; '
                     'pass a new --workdir (or remove that one)')
  workdir.mkdir(parents=True, exist_ok=True)
  marker.write_text(json.dumps(summary['source'], indent=1) + '\n')
  command = train_command(args, scratch, workdir, extra)
  print(' '.join(command), flush=True)
  t1 = time.perf_counter()
  subprocess.run(command, cwd=ROOT, check=True)
  train_seconds = time.perf_counter() - t1
  result = figures(json.loads((workdir / 'metrics.json').read_text()))
  print(table(result))
  if args.json:
    from gcad_jax import bench  # pylint: disable=g-import-not-at-top  # after the run: it starts JAX
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        **result, 'command': command, 'overrides': extra, 'argv': sys.argv if argv is None else argv,
        'workdir': str(workdir), 'counts': counts, 'validation': f'{VALIDATION_RULE}, val_fraction {args.val_fraction}',
        'wall_seconds': {'train_and_eval': round(train_seconds, 1), 'total': round(time.perf_counter() - t0, 1)},
        'machine': bench.machine()}, indent=1) + '\n')
    print(f'wrote {args.json}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
