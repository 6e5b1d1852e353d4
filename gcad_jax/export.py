"""Exports a trained workdir as one serving artefact with §8 scoring and the threshold inside (docs/deploy.md).

  python -m gcad_jax.export --workdir W --out DIR [--image_size H,W] [--batch N] \
      [--formats stablehlo,onnx,saved_model] [--threshold auto|validation|NUMBER] [--platforms cpu,cuda]

DIR gets one file (or folder) per format and DIR/manifest.json: the input spec, the threshold and how it was
chosen, the scales, the config, the workdir's training provenance, the package versions and the SHA-256 of every
file. The exported function takes uint8 (N, H, W, 3) RGB images at the export size (--image_size, default the
network size config.dataset.image_size) and returns maps (N, H, W) float32, scores (N,) float32 = map maxima,
flags (N,) bool = score > threshold, and the threshold. --batch N fixes N; without it the batch is dynamic (in
all three formats). Load it with `gcad_jax.load_exported(DIR)`
or `python -m gcad_jax.predict --exported DIR`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import shutil
import sys
from importlib import metadata as importlib_metadata
from typing import Sequence

import gcad_jax
from gcad_jax import atomic_io, exported as exported_lib

FORMATS = ('stablehlo', 'onnx', 'saved_model')
PACKAGES = ('gcad_jax', 'jax', 'jaxlib', 'flax', 'numpy', 'onnx', 'onnxruntime', 'tensorflow', 'tensorflow-cpu')


def _versions() -> dict[str, str]:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
      pass
  return out


def _provenance(workdir: pathlib.Path, config) -> dict:
  """The workdir's training record: provenance.json and the checkpoint step exported for each scale."""
  path = workdir / 'provenance.json'
  steps = {}
  for p in config.model.scales:
    folder = workdir / f'p{int(p)}' / 'checkpoints'
    found = [int(d.name) for d in folder.iterdir() if d.name.isdigit()] if folder.is_dir() else []
    steps[str(int(p))] = max(found) if found else None
  return {'workdir': str(workdir.resolve()), 'checkpoint_steps': steps,
          'training': json.loads(path.read_text()) if path.is_file() else None}


def _parse_size(text: str | None, default) -> tuple[int, int]:
  if text is None:
    return tuple(int(s) for s in default)
  try:
    h, w = (int(s) for s in text.split(','))
  except ValueError:
    raise ValueError(f'--image_size {text!r}: give H,W (e.g. 256,256)') from None
  if h < 1 or w < 1:
    raise ValueError(f'--image_size {text!r}: H and W must be positive')
  return h, w


def export(workdir, out, *, image_size: Sequence[int] | None = None, batch: int | None = None,
           formats: Sequence[str] = ('stablehlo',), threshold: str = 'auto', threshold_quantile: float = 1.0,
           platforms: Sequence[str] = ('cpu',), model=None) -> dict:
  """Writes the formats and DIR/manifest.json; returns the manifest. `model`: an already loaded `predict.Model`."""
  import jax  # pylint: disable=g-import-not-at-top
  from gcad_jax import export_formats, parallel, predict, serving  # pylint: disable=g-import-not-at-top
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise ValueError(f'--formats: {unknown or "none"} not among {list(FORMATS)}')
  if batch is not None and batch < 1:
    raise ValueError(f'--batch {batch}: give a positive batch size, or leave it out for a dynamic batch')
  workdir, out = pathlib.Path(workdir), pathlib.Path(out)
  if model is None:
    model = predict.load(workdir, parallel.make_mesh(jax.devices()[:1]))
  if threshold == 'validation' or (threshold == 'auto' and model.threshold is None):
    try:  # Chosen as predict chooses it, but not saved: the export leaves the workdir as it is.
      saved = model.validation_threshold(threshold_quantile, save=False)
    except Exception as e:  # pylint: disable=broad-except (any missing data: say so below)
      raise ValueError(f'no threshold for {workdir}: the validation images of {model.config.dataset.category} '
                       f'could not be scored ({type(e).__name__}: {e}); give --threshold NUMBER') from e
    value, source = saved['threshold'], (f'quantile {threshold_quantile} of {saved["num_images"]} validation '
                                         'image scores, chosen at export')
  else:
    value, source = predict._threshold(model, threshold, threshold_quantile)  # pylint: disable=protected-access
    saved = model.threshold if source != 'given' else None
  if value is None:
    raise ValueError('--threshold none: the export needs a threshold; give auto, validation or a number')
  size = _parse_size(None, image_size if image_size is not None else model.config.dataset.image_size)
  fn = serving.serving_function(model, size, value)
  out.mkdir(parents=True, exist_ok=True)
  (out / exported_lib.MANIFEST).unlink(missing_ok=True)  # no manifest over half-replaced files
  entries = {}
  for name in formats:
    old = out / export_formats.PATHS[name]
    if old.is_dir():
      shutil.rmtree(old)
    old.unlink(missing_ok=True)
    entries[name] = export_formats.WRITERS[name](fn, size, batch, out, platforms=platforms)
  config = model.config
  manifest = {
      'format_version': exported_lib.FORMAT_VERSION,
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'input': {'name': 'images', 'dtype': 'uint8', 'shape': [batch, size[0], size[1], 3], 'layout': 'NHWC',
                'channels': 'RGB', 'image_size': list(size),
                'note': 'batch null = dynamic where the format allows it; H, W are fixed'},
      'outputs': {'maps': 'float32 (N, H, W)', 'scores': 'float32 (N,), map maxima (docs/method.md §8 step 6)',
                  'flags': 'bool (N,), score > threshold', 'threshold': 'float32 ()'},
      'threshold': {'value': value, 'source': source,
                    **({k: saved[k] for k in ('quantile', 'num_images', 'rule') if k in saved} if saved else {})},
      'network_size': list(config.dataset.image_size), 'resize_method': config.dataset.resize_method,
      'scales': [int(p) for p in config.model.scales],
      'score': {'norm': config.score.norm, 'squared': bool(config.score.squared),
                'fusion': config.score.get('fusion', 'sum'), 'spec': 'docs/method.md §8'},
      'config': json.loads(config.to_json()),
      'provenance': _provenance(workdir, config),
      'packages': _versions(),
      'formats': entries,
  }
  manifest['files'] = {f: exported_lib.sha256(out / f) for e in entries.values() for f in e['files']}
  atomic_io.write_json(out / exported_lib.MANIFEST, manifest, indent=1)
  return manifest


def main(argv: Sequence[str] | None = None) -> int:
  from gcad_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.set_cpu_xla_flags()  # Before JAX starts (docs/performance.md).
  parser = argparse.ArgumentParser(prog='python -m gcad_jax.export', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--image_size', default=None, help='H,W of the input images (default: the network size)')
  parser.add_argument('--batch', type=int, default=None, help='a fixed batch size (default: dynamic)')
  parser.add_argument('--formats', default='stablehlo', help=f'comma-separated, of {",".join(FORMATS)}')
  parser.add_argument('--threshold', default='auto', help='as in gcad_jax.predict: auto, validation or a number')
  parser.add_argument('--threshold_quantile', type=float, default=1.0)
  parser.add_argument('--platforms', default='cpu', help='stablehlo and saved_model: the platforms the artefact '
                      'runs on, comma-separated, of cpu, cuda, tpu (all lowered on this machine)')
  args = parser.parse_args(argv)
  try:
    size = _parse_size(args.image_size, (0, 0)) if args.image_size else None
    manifest = export(args.workdir, args.out, image_size=size, batch=args.batch,
                      formats=[f for f in args.formats.split(',') if f], threshold=args.threshold,
                      threshold_quantile=args.threshold_quantile,
                      platforms=[p for p in args.platforms.split(',') if p])
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'gcad_jax {gcad_jax.__version__}: exported {", ".join(manifest["formats"])} to {args.out} '
        f'(threshold {manifest["threshold"]["value"]:.6g}: {manifest["threshold"]["source"]})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
