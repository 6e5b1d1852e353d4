"""What one defect type does to a trained model's maps: anomalous synthetic scenes against their defect-free twins.

  python benchmarks/twin_scenes.py WORKDIR --defect NAME [--first 1000] [--count 80] [--json out.json]

WORKDIR is a trained GCAD workdir on one of the embedded synthetic categories (its config names the category
and the data folder). For `count` fresh logical scenes (generator indices first.., beyond the test set's)
`tfds_loco.synthetic.twin_pair` renders the scene with the defect and its twin without it (same scene, pose,
textures and noise). Both, and the test set's good images, are scored with the workdir's model (every scale,
the config's scoring). Per map (combined, local-only, global-only; the scales fused and, with several, each
alone) it prints:
  * image AUROC (standard ties) of the anomalous scenes, and of the twins, against the good test images: the
    twins should sit near 0.5, the anomalous scenes above;
  * the paired change of the image score (anomalous − twin) and the share of pairs where it rises or falls;
  * the map's maximum where the pair differs (the changed pixels at network size, dilated by 1) and elsewhere
    (outside those pixels dilated by 4), anomalous against twin: whether the branch fires at the defect, and
    whether the rest of the scene moves with it.
Not part of CI: about 10 minutes per scale for 80 pairs on 2 CPU cores. Figures: docs/experiments.md, "What two nectarines do to each branch" (2026-11-28, commit 5cc9e4a).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
from scipy import ndimage

MAPS = ('combined', 'local', 'global')


def make_pairs(config, defect: str, first: int, count: int):
  """(anomalous, twins, changed): uint8 (N, h, w, 3) at network size twice, bool (N, h, w) changed pixels."""
  from gcad_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from tfds_loco import synthetic  # pylint: disable=g-import-not-at-top
  category = config.dataset.category
  manifest_path = pathlib.Path(config.dataset.manual_dir) / f'{category}.manifest.json'
  if not manifest_path.is_file():
    raise FileNotFoundError(f'{manifest_path} is missing: twin scenes need a category of the embedded generator')
  manifest = json.loads(manifest_path.read_text())
  size = tuple(config.dataset.image_size)
  method = config.dataset.resize_method
  anomalous, twins = [], []
  for index in range(first, first + count):
    image, twin, _ = synthetic.twin_pair(category, (defect,), index, seed=manifest['seed'],
                                         size=tuple(manifest['size']))
    anomalous.append(np.asarray(image))
    twins.append(np.asarray(twin))
  anomalous = input_pipeline.resize_uint8(np.stack(anomalous), size, method)
  twins = input_pipeline.resize_uint8(np.stack(twins), size, method)
  changed = np.stack([ndimage.binary_dilation((a != t).any(-1), iterations=1) for a, t in zip(anomalous, twins)])
  return anomalous, twins, changed


def compare(good: np.ndarray, anomalous: np.ndarray, twins: np.ndarray, changed: np.ndarray) -> dict:
  """The figures of one map, from (N, h, w) maps of the good images, the anomalous scenes and their twins."""
  from gcad_jax.metrics.auroc import auroc_standard  # pylint: disable=g-import-not-at-top
  image_max = lambda maps: maps.reshape(len(maps), -1).max(1)
  good_s, anom_s, twin_s = image_max(good), image_max(anomalous), image_max(twins)
  elsewhere = ~np.stack([ndimage.binary_dilation(c, iterations=3) for c in changed])
  region_max = lambda maps, regions: np.array([m[r].max() if r.any() else np.nan for m, r in zip(maps, regions)])
  at_a, at_t = region_max(anomalous, changed), region_max(twins, changed)
  off_a, off_t = region_max(anomalous, elsewhere), region_max(twins, elsewhere)
  diff = anom_s - twin_s
  return {
      'pairs': len(anom_s), 'good_images': len(good_s),
      'auroc_anomalous': auroc_standard(good_s, anom_s), 'auroc_twins': auroc_standard(good_s, twin_s),
      'image_score_change_mean': float(diff.mean()), 'share_rises': float((diff > 0).mean()),
      'share_falls': float((diff < 0).mean()),
      'at_defect_anomalous_median': float(np.nanmedian(at_a)), 'at_defect_twin_median': float(np.nanmedian(at_t)),
      'at_defect_change_mean': float(np.nanmean(at_a - at_t)),
      'elsewhere_anomalous_median': float(np.nanmedian(off_a)), 'elsewhere_twin_median': float(np.nanmedian(off_t)),
      'elsewhere_change_mean': float(np.nanmean(off_a - off_t)),
  }


def run(workdir: pathlib.Path, defect: str, first: int, count: int) -> dict:
  from gcad_jax import input_pipeline, predict, scoring  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  model = predict.load(workdir)
  anomalous, twins, changed = make_pairs(model.config, defect, first, count)
  test = input_pipeline.load_split(model.config, 'test')
  good = test.images[[i for i, iid in enumerate(test.image_ids) if iid.startswith('test/good/')]]
  groups = {'good': good, 'anomalous': anomalous, 'twins': twins}
  raw = {name: {p: scoring.branch_maps(model.config, nets, state, images, model.mesh)
                for p, (nets, state) in model.models.items()} for name, images in groups.items()}
  print(f'[twin_scenes] {workdir}: {count} pairs of {defect} and {len(good)} good images scored in '
        f'{time.perf_counter() - t0:.0f} s', flush=True)
  scale_sets = {'fused': tuple(model.models)}
  if len(model.models) > 1:
    scale_sets.update({f'p{p}': (p,) for p in model.models})
  out = {'workdir': str(workdir), 'category': model.config.dataset.category, 'defect': defect,
         'indices': [first, first + count], 'figures': {}}
  for set_name, scales in scale_sets.items():
    maps = {name: scoring.fuse_scales([scoring.scale_variants(*raw[name][p], model.stats[p]) for p in scales])
            for name in groups}
    for variant in MAPS:
      out['figures'][f'{set_name}/{variant}'] = compare(*(maps[name][variant] for name in groups), changed)
  return out


def print_table(result: dict) -> None:
  print(f"{result['category']}, {result['defect']}: {next(iter(result['figures'].values()))['pairs']} pairs "
        f"(generator indices {result['indices'][0]}..{result['indices'][1] - 1})")
  print(f"{'map':17s} {'AUROC anom':>10s} {'twins':>6s} | {'score change':>12s} {'rises':>5s} {'falls':>5s} | "
        f"{'at defect: anom':>15s} {'twin':>5s} | {'elsewhere: anom':>15s} {'twin':>5s}")
  for key, f in result['figures'].items():
    print(f"{key:17s} {f['auroc_anomalous']:10.3f} {f['auroc_twins']:6.3f} | {f['image_score_change_mean']:+12.2f} "
          f"{f['share_rises']:5.2f} {f['share_falls']:5.2f} | {f['at_defect_anomalous_median']:15.2f} "
          f"{f['at_defect_twin_median']:5.2f} | {f['elsewhere_anomalous_median']:15.2f} "
          f"{f['elsewhere_twin_median']:5.2f}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('workdir', type=pathlib.Path)
  parser.add_argument('--defect', required=True, help='a defect name of the workdir\'s synthetic category')
  parser.add_argument('--first', type=int, default=1000, help='first generator index (default beyond the test set)')
  parser.add_argument('--count', type=int, default=80)
  parser.add_argument('--json', type=pathlib.Path)
  args = parser.parse_args(argv)
  if args.count < 1 or args.first < 0:
    parser.error('--count must be positive and --first non-negative')
  result = run(args.workdir, args.defect, args.first, args.count)
  print_table(result)
  if args.json:
    args.json.write_text(json.dumps(result, indent=1) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
