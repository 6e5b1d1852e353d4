"""Real photos in the MVTec AD layout: convert to the LOCO layout, train and evaluate with gcad_jax, print the figures.

  python benchmarks/real_images.py SOURCE_DIR SCRATCH_DIR [--category NAME] [--val_fraction 0.1] [--seed 0]
      [--image_size 128] [--logical DEFECT,...] [--config SPEC] [--workdir DIR] [--json OUT] [--prepare_only]
      [-- --config.a.b=value ...]

  python benchmarks/real_images.py /data/mvtec_bottle/bottle /tmp/bottle --json /tmp/bottle/shipped.json
  python benchmarks/real_images.py /data/mvtec_bottle/bottle /tmp/bottle --workdir /tmp/bottle/random \
      --json /tmp/bottle/random.json -- --config.teacher.init=random

SOURCE_DIR is one category in MVTec AD's layout: train/good/*.png, test/good/*.png, test/<defect>/*.png and
ground_truth/<defect>/<stem>_mask.png for every defect image. It becomes SCRATCH_DIR/data/<category>/ in the
MVTec LOCO layout that gcad_jax reads (tfds_loco/layout.py):
  * train/good keeps all but a held-out fraction, validation/good (μ, σ of the maps, docs/method.md §8): every
    image whose index i in the name-sorted list is floor((j + 0.5)·n / k) for j < k = round(val_fraction·n);
  * test/good; test/structural_anomalies holds every defect type except those named by --logical, which go to
    test/logical_anomalies; images are renumbered 000.png, 001.png, … in (defect, name) order;
  * each mask is split into its 8-connected components, one channel PNG each (ground_truth/<kind>/<NNN>/000.png,
    001.png, …), holding the pixel value defects_config.json gives its defect type; every type saturates at its
    region's full area (relative threshold 1.0), so sPRO is MVTec AD's PRO, and per-type figures come out;
  * 8-bit RGB PNGs are symlinked; any other image (grey, 16-bit, palette) is written as 8-bit RGB.
mapping.json there records which source file became which LOCO file. A rerun with the same inputs reuses the
conversion and the TFDS build (SCRATCH_DIR/tfds); a different conversion replaces both.

Then `python -m gcad_jax.main --config=SPEC` runs with manual_dir, data_dir, category, image size and seed
set, plus the flags after `--`, in --workdir (default SCRATCH_DIR/work; a rerun of the same command resumes
there). It prints image AUROC and AUC-sPRO at FPR 0.05 and 0.3 of the combined, local and global maps (from
W/metrics.json), and per defect type. --json writes them with the command, overrides, wall time and machine.
The images stay outside the repository: MVTec AD is CC BY-NC-SA 4.0.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAPS = ('combined', 'local', 'global')
KINDS = ('structural_anomalies', 'logical_anomalies', 'mean')
LIMITS = ('0.05', '0.3')  # metrics.json keys of the FPR limits (gcad_jax.metrics.spro.limit_key)
MASK_SUFFIX = '_mask.png'


class ConversionError(ValueError):
  """An MVTec AD-style folder that cannot be converted; the message names the file and the fix."""


def holdout_indices(n: int, fraction: float) -> list[int]:
  """Indices of the validation images among n name-sorted train images: k = round(fraction·n), evenly spread."""
  if not 0 <= fraction < 1:
    raise ConversionError(f'--val_fraction {fraction} must be in [0, 1)')
  k = min(max(round(fraction * n), 1 if fraction > 0 else 0), n - 1)
  return sorted({int((j + 0.5) * n / k) for j in range(k)}) if k > 0 else []


def plan(train: list[str], test: dict[str, list[str]], masks: dict[str, list[str]], *, val_fraction: float,
         logical: tuple[str, ...] = ()) -> dict:
  """The conversion as data (pure): {'files': [...], 'defects': [...], 'validation': rule}.

  `train`: file names in train/good; `test`: {folder: file names} of test/; `masks`: {defect: mask file names}
  of ground_truth/. Each file entry: source and target paths relative to the category folders, kind, defect
  (None for good) and mask (source path or None). Raises ConversionError for unpaired images and masks.
  """
  if not train:
    raise ConversionError('train/good holds no .png image; an MVTec AD-style folder needs defect-free train images')
  if not test.get('good'):
    raise ConversionError('test/good holds no .png image; the LOCO layout needs defect-free test images')
  defects = sorted(d for d in test if d != 'good')
  unknown = sorted(set(logical) - set(defects))
  if unknown:
    raise ConversionError(f'--logical names {unknown}, which are not defect folders of test/ ({defects})')
  for defect in sorted(masks):
    if defect not in test:
      raise ConversionError(f'ground_truth/{defect}/ has no test/{defect}/ folder; remove it or add the images')
    stems = {n[:-len('.png')] for n in test[defect]}
    for name in masks[defect]:
      if not name.endswith(MASK_SUFFIX) or name[:-len(MASK_SUFFIX)] not in stems:
        raise ConversionError(f'ground_truth/{defect}/{name} has no image test/{defect}/'
                              f'{name[:-len(MASK_SUFFIX)] if name.endswith(MASK_SUFFIX) else name}; '
                              'masks are named <image stem>_mask.png; remove it or add the image')
  files = []
  held = set(holdout_indices(len(train), val_fraction))
  if not held:
    raise ConversionError(f'--val_fraction {val_fraction} holds out no image of the {len(train)} in train/good; '
                          'the LOCO layout needs validation images (raise it, or add train images)')
  for split in ('train', 'validation'):
    names = [n for i, n in enumerate(sorted(train)) if (i in held) == (split == 'validation')]
    files += [{'source': f'train/good/{n}', 'target': f'{split}/good/{j:03d}.png', 'kind': 'good',
               'defect': None, 'mask': None} for j, n in enumerate(names)]
  files += [{'source': f'test/good/{n}', 'target': f'test/good/{j:03d}.png', 'kind': 'good', 'defect': None,
             'mask': None} for j, n in enumerate(sorted(test['good']))]
  for kind in ('logical_anomalies', 'structural_anomalies'):
    chosen = [d for d in defects if (d in logical) == (kind == 'logical_anomalies')]
    pairs = [(d, n) for d in chosen for n in sorted(test[d])]
    for j, (defect, name) in enumerate(pairs):
      mask = f'{name[:-len(".png")]}{MASK_SUFFIX}'
      if mask not in masks.get(defect, ()):
        raise ConversionError(f'test/{defect}/{name} has no mask ground_truth/{defect}/{mask}; every defect '
                              'image needs one (0 = good, >0 = defect)')
      files.append({'source': f'test/{defect}/{name}', 'target': f'test/{kind}/{j:03d}.png', 'kind': kind,
                    'defect': defect, 'mask': f'ground_truth/{defect}/{mask}'})
  defects_config = [{'defect_name': d, 'pixel_value': 255 - i, 'saturation_threshold': 1.0,
                     'relative_saturation': True} for i, d in enumerate(defects)]
  return {'files': files, 'defects': defects_config, 'logical': sorted(logical),
          'validation': f'train/good sorted by name, index floor((j + 0.5)·n/k), k = round({val_fraction}·n) '
                        f'= {len(held)} of n = {len(train)}'}


def mask_channels(mask: np.ndarray, pixel_value: int) -> list[np.ndarray]:
  """One uint8 channel per 8-connected component of mask > 0, holding 0 and pixel_value (PRO's regions)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3), dtype=int))
  return [np.where(labels == c, pixel_value, 0).astype(np.uint8) for c in range(1, count + 1)]


def list_source(src: pathlib.Path) -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
  """(train names, {test folder: names}, {defect: mask names}) of an MVTec AD-style category folder."""
  def pngs(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix == '.png' and not p.name.startswith('.'))

  def folders(folder):
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.')) if folder.is_dir() else []

  if not (src / 'train' / 'good').is_dir():
    raise ConversionError(f'{src}/train/good is missing; SOURCE_DIR is one MVTec AD-style category folder '
                          '(train/good, test/<defect>, ground_truth/<defect>)')
  return (pngs(src / 'train' / 'good'), {f.name: pngs(f) for f in folders(src / 'test')},
          {f.name: pngs(f) for f in folders(src / 'ground_truth')})


def write_category(src: pathlib.Path, out: pathlib.Path, conversion: dict) -> None:
  """Writes the planned LOCO category folder `out` (images, channels, defects_config.json, mapping.json)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tfds_loco import layout  # pylint: disable=g-import-not-at-top
  values = {d['defect_name']: d['pixel_value'] for d in conversion['defects']}
  first = None
  for entry in conversion['files']:
    source, target = src / entry['source'], out / entry['target']
    target.parent.mkdir(parents=True, exist_ok=True)
    header = layout.read_png_header(source)
    first = first or (source, header)
    if (header.width, header.height) != (first[1].width, first[1].height):
      raise ConversionError(f'{source} is {header.width}x{header.height} (WxH) but {first[0]} is '
                            f'{first[1].width}x{first[1].height}; all images of a category share one size')
    if (header.color_type, header.bit_depth) == (layout.PNG_RGB, 8):
      target.symlink_to(source.resolve())
    else:
      with Image.open(source) as img:
        rgb = img.convert('RGB') if img.mode not in ('I', 'I;16') else Image.fromarray(
            (np.asarray(img) >> 8).astype(np.uint8)).convert('RGB')
        rgb.save(target)
    if entry['mask'] is None:
      continue
    mask = layout.read_mask(src / entry['mask'])
    if mask.shape != (header.height, header.width):
      raise ConversionError(f'{src / entry["mask"]} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image '
                            f'{source} is {header.width}x{header.height}; masks must have the image size')
    channels = mask_channels(mask, values[entry['defect']])
    if not channels:
      raise ConversionError(f'{src / entry["mask"]} has no defect pixel; a defect image needs a non-empty mask')
    gt_dir = out / 'ground_truth' / entry['kind'] / pathlib.Path(entry['target']).stem
    gt_dir.mkdir(parents=True, exist_ok=True)
    for c, channel in enumerate(channels):
      Image.fromarray(channel).save(gt_dir / f'{c:03d}.png')
  (out / layout.DEFECTS_CONFIG).write_text(json.dumps(conversion['defects'], indent=1) + '\n')
  (out / 'mapping.json').write_text(json.dumps(conversion, indent=1) + '\n')


def convert(src: pathlib.Path, scratch: pathlib.Path, category: str, *, val_fraction: float,
            logical: tuple[str, ...] = ()) -> tuple[dict, bool]:
  """SCRATCH/data/<category> from `src`; (conversion, reused). A changed conversion replaces the old one and
  its TFDS build; a folder there that this script did not write (no mapping.json) is refused."""
  conversion = {'source': str(src.resolve()), 'category': category, 'val_fraction': val_fraction,
                **plan(*list_source(src), val_fraction=val_fraction, logical=tuple(logical))}
  out = scratch / 'data' / category
  if out.exists():
    previous = out / 'mapping.json'
    if not previous.is_file():
      raise ConversionError(f'{out} exists but holds no mapping.json (not written by this script); '
                            'choose another SCRATCH_DIR or remove it')
    if json.loads(previous.read_text()) == conversion:
      return conversion, True
    shutil.rmtree(out)
    shutil.rmtree(scratch / 'tfds' / 'mvtec_loco' / category, ignore_errors=True)
  try:
    write_category(src, out, conversion)
  except BaseException:
    shutil.rmtree(out, ignore_errors=True)  # never leave a half-written category that looks complete
    raise
  return conversion, False


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
          f'--config.dataset.image_size=({size},{size})', f'--config.seed={args.seed}', *extra]


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
  logical = tuple(d for d in args.logical.split(',') if d)
  conversion, reused = convert(args.source, scratch, args.category, val_fraction=args.val_fraction,
                               logical=logical)
  counts = {}
  for entry in conversion['files']:
    key = entry['target'].rsplit('/', 1)[0]
    counts[key] = counts.get(key, 0) + 1
  print(f'{"reused" if reused else "wrote"} {scratch / "data" / args.category}: {counts}; '
        f'validation: {conversion["validation"]}', flush=True)
  if args.prepare_only:
    return 0
  workdir = (args.workdir or scratch / 'work').resolve()
  if not reused and workdir.is_dir() and any(workdir.iterdir()):
    raise SystemExit(f'the conversion changed but {workdir} holds a run on the previous one; '
                     'pass a new --workdir (or remove that one)')
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
        'workdir': str(workdir), 'counts': counts, 'validation': conversion['validation'],
        'wall_seconds': {'train_and_eval': round(train_seconds, 1), 'total': round(time.perf_counter() - t0, 1)},
        'machine': bench.machine()}, indent=1) + '\n')
    print(f'wrote {args.json}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
