r"""Builds one category of MVTec LOCO AD, MVTec AD or a user's folder as a TFDS data set, without Beam.

  python -m tfds_loco.build --category pushpins --manual_dir ~/data/mvtec_loco \
      --data_dir ~/tensorflow_datasets [--overwrite]
  python -m tfds_loco.build --dataset_format mvtec_ad --category bottle --manual_dir ~/data/mvtec_ad ...
  python -m tfds_loco.build --dataset_format folder --category my_part --manual_dir ~/photos \
      --logical wrong_label,missing_screw [--val_fraction 0.1] ...

The whole category is checked first (docs/data_format.md §2–§6); a bad input ends with a one-line error
naming the file and nothing written. Reading it back: `tfds.builder('mvtec_loco/<category>',
data_dir=...).as_data_source('test')` after `import tfds_loco.mvtec_loco`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import logging as std_logging
import sys
import time
from typing import Any, Sequence

from etils import epath
import tensorflow_datasets as tfds

from tfds_loco import formats
from tfds_loco import layout
from tfds_loco import mvtec_ad
from tfds_loco import mvtec_loco


def builder_for(category: str, manual_dir: epath.PathLike | None = None, data_dir: epath.PathLike | None = None,
                dataset_format: str = 'loco', logical: Sequence[str] = (),
                val_fraction: float = 0.1) -> tfds.core.DatasetBuilder:
  """The builder of a category in `dataset_format` (tfds_loco.formats): mvtec_loco, or mvtec_ad for the others."""
  if formats.check_format(dataset_format) == 'loco':
    return mvtec_loco.builder_for(category, manual_dir=manual_dir, data_dir=data_dir)
  return mvtec_ad.builder_for(category, manual_dir=manual_dir, data_dir=data_dir, dataset_format=dataset_format,
                              logical=tuple(logical), val_fraction=val_fraction)


def build(category: str, manual_dir: epath.PathLike | None = None, data_dir: epath.PathLike | None = None,
          overwrite: bool = False, *, quiet: bool = False, dataset_format: str = 'loco',
          logical: Sequence[str] = (), val_fraction: float = 0.1) -> tfds.core.DatasetBuilder:
  """Checks and builds `category` from manual_dir into data_dir; reuses a built one unless overwrite.

  A built one is reused only if it was built from the same folder with the same files (names, sizes,
  modification times); otherwise it is rebuilt, with a warning naming both (Builder.stale_reason).

  data_dir None is TFDS's default; manual_dir None is TFDS's default (<data_dir>/downloads/manual),
  which is enough when the data set is already built. quiet silences TFDS's prints and progress bars.
  Raises layout.LocoFormatError (naming the file) on bad input; nothing is written then, and an
  existing data set is kept.
  """
  builder = builder_for(category, manual_dir, data_dir, dataset_format, logical, val_fraction)
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  root_handlers = list(std_logging.root.handlers)
  with contextlib.ExitStack() as stack:
    if quiet:
      sink = stack.enter_context(io.StringIO())
      stack.enter_context(contextlib.redirect_stdout(sink))
      stack.enter_context(contextlib.redirect_stderr(sink))
      # A library that calls logging.basicConfig() inside binds a root handler to the sink, which is closed
      # below: every later log line would then fail with "I/O operation on closed file". Drop such handlers.
      stack.callback(_drop_handlers_bound_to, sink, root_handlers)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, download_mode=mode))
  return builder


def _drop_handlers_bound_to(stream, keep) -> None:
  for handler in list(std_logging.root.handlers):
    if handler not in keep and getattr(handler, 'stream', None) is stream:
      std_logging.root.removeHandler(handler)


class _KeepBytes(tfds.decode.SkipDecoding):
  """SkipDecoding that also works inside a Sequence with as_data_source (TFDS 4.9 lacks the batch case)."""

  def decode_batch_example_np(self, serialized_examples):
    return serialized_examples


def summarize(builder: tfds.core.DatasetBuilder) -> dict[str, Any]:
  """Counts read back from the built files: examples per split and label, channels, image sizes."""
  labels = builder.info.features['label'].names
  skip = {'image': _KeepBytes(), 'masks': {'mask': _KeepBytes()}}  # counts only: no pixel decoding
  splits, sizes = {}, collections.Counter()
  for split in builder.info.splits:
    source = builder.as_data_source(split, decoders=skip)
    per_label, channels = collections.Counter(), collections.Counter()
    for i in range(len(source)):
      example = source[i]
      label = labels[int(example['label'])]
      per_label[label] += 1
      channels[label] += len(example['masks']['pixel_value'])
      header = layout.parse_png_header(example['image'][:33], example['image_id'])
      sizes[(header.width, header.height)] += 1
    splits[split] = {'examples': len(source), 'labels': dict(per_label), 'channels': dict(channels)}
  return {'name': builder.info.full_name, 'data_dir': str(builder.data_dir),
          'file_format': str(builder.info.file_format.value), 'splits': splits,
          'image_sizes': dict(sizes),
          'defect_types': len(builder.info.metadata.get('defects_config', []))}


def format_summary(summary: dict[str, Any], seconds: float | None = None) -> str:
  lines = [f"{summary['name']}: {summary['defect_types']} defect types"]
  for split, s in summary['splits'].items():
    labels = ', '.join(f'{k} {v}' for k, v in s['labels'].items())
    channels = ', '.join(f'{k} {v}' for k, v in s['channels'].items() if v)
    lines.append(f"  {split:<10} {s['examples']:>5} examples ({labels})"
                 + (f'; mask channels: {channels}' if channels else ''))
  sizes = ', '.join(f'{w}x{h} ({n})' for (w, h), n in summary['image_sizes'].items())
  lines.append(f'  image size (WxH): {sizes}')
  if seconds is not None:
    lines.append(f'  build time: {seconds:.1f} s')
  lines.append(f"  written to: {summary['data_dir']} ({summary['file_format']})")
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--category', required=True,
                      help='category folder name, e.g. pushpins, synthetic_tray or your own')
  parser.add_argument('--manual_dir', required=True,
                      help=f'folder holding the category folders, or {mvtec_loco.ARCHIVE_NAME}')
  parser.add_argument('--data_dir', required=True, help='TFDS data_dir to write into')
  parser.add_argument('--overwrite', action='store_true', help='rebuild if already built')
  parser.add_argument('--dataset_format', default='loco', choices=formats.FORMATS,
                      help='loco (default), mvtec_ad, or folder (your own MVTec AD-style folder)')
  parser.add_argument('--logical', default='', help='folder format: comma-separated logical defect folders')
  parser.add_argument('--val_fraction', type=float, default=0.1,
                      help='mvtec_ad/folder without validation/good: the fraction of train/good held out')
  args = parser.parse_args(argv)
  options = dict(dataset_format=args.dataset_format, logical=[n for n in args.logical.split(',') if n],
                 val_fraction=args.val_fraction)
  try:
    existing = builder_for(args.category, data_dir=args.data_dir, **options)
    stale = existing.stale_reason(args.manual_dir)
    if existing.data_path.exists() and not args.overwrite and not stale:
      print(f'{existing.info.full_name} is already built in {existing.data_dir} from the same files; '
            'pass --overwrite to rebuild it')
      seconds = None
    else:
      if stale:
        print(f'{stale}; rebuilding it')
      print(f'Checking and building {args.category} from {args.manual_dir} into {args.data_dir} ...',
            flush=True)
      start = time.monotonic()
      existing = build(args.category, args.manual_dir, args.data_dir, overwrite=args.overwrite, **options)
      seconds = time.monotonic() - start
    print(format_summary(summarize(existing), seconds))
  except (layout.LocoFormatError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
