"""Writes a category folder in the MVTec LOCO AD layout, atomically, and the command line that does it.

  python -m tfds_loco.synthetic --out data/synthetic --seed 0 --category all
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from tfds_loco.synthetic import scenes


def _refuse_existing(path: pathlib.Path):
  if path.exists():
    raise FileExistsError(f'{path} already exists; pass --overwrite (overwrite=True) to replace it')


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def _write_png(path, array):
  Image.fromarray(array).save(path, format='PNG', compress_level=1)


def _write_json(path, obj):
  with open(path, 'w') as f:
    json.dump(obj, f, indent=2)
    f.write('\n')


def _write_category(root, category, seed, size, counts):
  """Writes every file of the category below `root`; returns the manifest (§2, §5, §6)."""
  fam = scenes.FAMILIES[category]
  lay = fam.layout(*size)
  config = scenes.defects_config(category, size)
  info = {c['defect_name']: c for c in config}
  kind = {d.name: d.kind for d in fam.defects}
  images = []
  for key, n in counts.items():
    split, label = scenes.SPLITS[key]
    (root / split / label).mkdir(parents=True)
    if label != 'good':
      (root / 'ground_truth' / label).mkdir(parents=True, exist_ok=True)
    recipes = () if label == 'good' else getattr(fam, key)
    for i in range(n):
      recipe = recipes[i % len(recipes)] if recipes else ()
      img, masks = scenes.make_image(fam, lay, scenes.image_rng(seed, category, key, i), recipe)
      stem = f'{i:03d}'
      _write_png(root / split / label / f'{stem}.png', img)
      channels = []
      if recipes:
        (root / 'ground_truth' / label / stem).mkdir()
      for j, (name, mask) in enumerate(masks):
        rel = f'ground_truth/{label}/{stem}/{j:03d}.png'
        if not mask.any():
          raise RuntimeError(f'{rel}: empty ground-truth channel ({name}); every channel needs a positive '
                             'pixel (§5): the scene is too small for this defect')
        pv = info[name]['pixel_value']
        _write_png(root / rel, (mask * np.uint8(pv)).astype(np.uint8))
        channels.append({'file': f'{j:03d}.png', 'path': rel, 'pixel_value': pv, 'defect_name': name,
                         'kind': kind[name], 'area': int(mask.sum())})
      images.append({'id': f'{split}/{label}/{stem}', 'path': f'{split}/{label}/{stem}.png', 'split': split,
                     'label': label, 'width': size[0], 'height': size[1], 'channels': channels})
  _write_json(root / 'defects_config.json', config)  # last: a half-written folder is not a category
  return {'category': category, 'seed': seed, 'size': list(size), 'counts': dict(counts),
          'defects_config': config, 'defect_kinds': kind, 'images': images}


def _generate(out_dir, category, seed, size, counts, overwrite):
  counts = {**scenes.default_counts(), **(counts or {})}
  size = tuple(size)
  scenes.check_args(category, seed, size, counts)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  final = out / category
  if not overwrite:
    _refuse_existing(final)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{category}.tmp-', dir=out))  # hidden until complete
  tmp_manifest, old = out / f'{tmp.name}.manifest.json', out / f'{tmp.name}.old'
  try:
    manifest = _write_category(tmp, category, int(seed), size, counts)
    _write_json(tmp_manifest, manifest)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private
    if final.exists():
      if not overwrite:
        _refuse_existing(final)
      os.rename(final, old)
    os.rename(tmp, final)
    os.replace(tmp_manifest, out / f'{category}.manifest.json')
  except BaseException:
    if old.exists() and not final.exists():
      os.rename(old, final)  # put the previous data set back
    shutil.rmtree(tmp, ignore_errors=True)
    tmp_manifest.unlink(missing_ok=True)
    raise
  finally:
    shutil.rmtree(old, ignore_errors=True)
  return final, manifest


def generate(out_dir, category: str, seed: int = 0, size=scenes.DEFAULT_SIZE, counts=None,
             overwrite: bool = False) -> pathlib.Path:
  """Writes `out_dir/<category>/` (LOCO layout, §2) and `out_dir/<category>.manifest.json` atomically.

  Args:
    out_dir: the root that holds category folders (a TFDS `manual_dir`).
    category: one of scenes.CATEGORIES.
    seed: same seed, byte-identical files.
    size: (W, H) of every image, both >= 64.
    counts: images per folder, merged into scenes.default_counts().
    overwrite: replace an existing category folder instead of refusing.

  Returns:
    The category folder.
  """
  return _generate(out_dir, category, seed, size, counts, overwrite)[0]


# ------------------------------------------------------------------------------------------------
# Command line.


def _parse_size(text):
  m = re.fullmatch(r'\s*(\d+)\s*[xX]\s*(\d+)\s*', text)
  if not m or min(int(m[1]), int(m[2])) < scenes.MIN_SIZE:
    raise argparse.ArgumentTypeError(
        f'size must be WxH with both >= {scenes.MIN_SIZE}, e.g. 320x256; got {text!r}')
  return int(m[1]), int(m[2])


def _parse_counts(text):
  counts = {}
  for item in filter(None, (t.strip() for t in text.split(','))):
    key, _, value = item.partition('=')
    if key not in scenes.SPLITS or not value.isdigit():
      raise argparse.ArgumentTypeError(f'bad count {item!r}; use e.g. train=60,validation=20,good=30,'
                                       'logical=30,structural=30')
    counts[key] = int(value)
  return counts


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m tfds_loco.synthetic', description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, type=pathlib.Path, help='root folder for category folders')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--category', default='all', choices=scenes.CATEGORIES + ('all',))
  parser.add_argument('--size', type=_parse_size, default=scenes.DEFAULT_SIZE, help='WxH, default 320x256')
  parser.add_argument('--counts', type=_parse_counts, default={},
                      help='e.g. train=60,validation=20,good=30,logical=30,structural=30')
  parser.add_argument('--overwrite', action='store_true', help='replace existing category folders')
  args = parser.parse_args(argv)
  cats = scenes.CATEGORIES if args.category == 'all' else (args.category,)
  try:
    if not args.overwrite:
      for cat in cats:
        _refuse_existing(args.out / cat)
    for cat in cats:
      t0 = time.perf_counter()
      path, man = _generate(args.out, cat, args.seed, args.size, args.counts, args.overwrite)
      c = man['counts']
      n_ch = sum(len(im['channels']) for im in man['images'])
      print(f'{cat}: {len(man["images"])} images {args.size[0]}x{args.size[1]} (train {c["train"]}, '
            f'validation {c["validation"]}, test good/logical/structural {c["good"]}/{c["logical"]}/'
            f'{c["structural"]}), {n_ch} gt channels, {len(man["defects_config"])} defect types, '
            f'seed {args.seed} -> {path} [{time.perf_counter() - t0:.1f}s]', flush=True)
  except (FileExistsError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
