"""MVTec LOCO AD (and any folder in its layout) as a TFDS data set (docs/data_format.md §1, §12).

One config per category; splits train, validation and test; images at their original size; one raw,
never binarised mask per ground-truth channel with its defects_config.json entry. The whole category
is checked (tfds_loco.category_scan.scan_category) before TFDS writes anything.

A build records where it came from (metadata `source`: the category folder and a fingerprint of its
files). TFDS keys a build by category name alone, so a build is reused only while the folder given and
its files are the ones recorded; otherwise it is rebuilt (Builder.download_and_prepare).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import pathlib
import re
import shutil
import tarfile
from typing import Any, Callable
import uuid

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_parser
from tensorflow_datasets.core.utils.lazy_imports_utils import tensorflow as tf

from tfds_loco import categories
from tfds_loco import category_scan
from tfds_loco import layout

ARCHIVE_NAME = 'mvtec_loco_anomaly_detection.tar.xz'
ARCHIVE_SHA256 = '9e7c84dba550fd2e59d8e9e231c929c45ba737b6b6a6d3814100f54d63aae687'
EXTRACTED_NAME = 'mvtec_loco_anomaly_detection'  # where the archive is extracted, inside manual_dir
HOMEPAGE = 'https://www.mvtec.com/company/research/datasets/mvtec-loco'
_CONFIG_NAME = re.compile(r'^[\w+\-.]+$')  # what TFDS accepts as a config name in 'mvtec_loco/<config>'


class ArchiveError(layout.LocoFormatError):
  """The manual-download archive is corrupt, incomplete or not the expected one (docs/data_format.md §1)."""


def sha256(path: pathlib.Path, chunk_bytes: int = 1 << 22) -> str:
  digest = hashlib.sha256()
  with path.open('rb') as f:
    for chunk in iter(lambda: f.read(chunk_bytes), b''):
      digest.update(chunk)
  return digest.hexdigest()


def extract_archive(archive: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
  """Verifies the archive's SHA-256 (§1), then extracts it (extract_tar)."""
  actual = sha256(archive)
  if actual != ARCHIVE_SHA256:
    raise ArchiveError(
        f'{archive} has SHA-256 {actual}, expected {ARCHIVE_SHA256}; the download is incomplete or not '
        'the MVTec LOCO AD archive: download it again (or extract it yourself into the manual_dir)')
  return extract_tar(archive, target)


def extract_tar(archive: pathlib.Path, target: pathlib.Path,
                check_tree: Callable[[pathlib.Path], None] | None = None) -> pathlib.Path:
  """Extracts a .tar.xz to a hidden folder, lets `check_tree` refuse it, then renames it to `target`."""
  tmp = target.parent / f'.{target.name}.incomplete-{uuid.uuid4().hex[:8]}'
  try:
    with tarfile.open(archive, 'r:xz') as tar:
      # The 'data' filter refuses absolute paths, links out of the folder and device files.
      tar.extractall(tmp, **({'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}))
    if check_tree is not None:
      check_tree(tmp)
    tmp.rename(target)
  except (tarfile.TarError, OSError, EOFError) as e:
    raise ArchiveError(f'{archive} cannot be extracted ({e}); download it again') from e
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return target


def checked_manual_dir(manual_dir: epath.PathLike, archive_name: str = ARCHIVE_NAME) -> pathlib.Path:
  """manual_dir as a path, refused with the fix when it is not a folder."""
  manual_dir = pathlib.Path(manual_dir).expanduser()
  if not manual_dir.is_dir():
    raise layout.LocoFormatError(
        f'manual_dir {manual_dir} does not exist or is not a folder; put {archive_name} or the extracted '
        'category folders there (see MANUAL_DOWNLOAD_INSTRUCTIONS)')
  return manual_dir


def locate_category(manual_dir: epath.PathLike, category: str) -> pathlib.Path:
  """The category folder under manual_dir, extracting the archive there first if needed (§1)."""
  manual_dir = checked_manual_dir(manual_dir)
  try:
    return layout.category_dir(manual_dir, category)
  except layout.LocoFormatError as not_found:
    archive, extracted = manual_dir / ARCHIVE_NAME, manual_dir / EXTRACTED_NAME
    if archive.is_file() and not extracted.is_dir():
      extract_archive(archive, extracted)
    if extracted.is_dir() and category in layout.find_categories(extracted):
      return layout.category_dir(extracted, category)
    if (manual_dir / category).is_dir():  # the folder is there: say what it lacks
      layout.read_defects_config(manual_dir / category / layout.DEFECTS_CONFIG)
    raise not_found


def scan_manual_dir(manual_dir: epath.PathLike, category: str) -> category_scan.CategoryScan:
  """Finds and checks a whole category (category_scan.scan_category), with a progress bar."""
  cat_dir = locate_category(manual_dir, category)
  with tfds.core.utils.tqdm(desc=f'Checking {category}', unit=' images', leave=False) as bar:

    def progress(done: int, total: int) -> None:
      bar.total = total
      bar.update(1)

    return category_scan.scan_category(cat_dir, progress=progress)


def source_record(cat_dir: epath.PathLike) -> dict[str, Any]:
  """The category folder (absolute) and a fingerprint of its files: relative names, sizes, mtimes.

  Hidden files and folders are left out, as the layout reader ignores them (tfds_loco.layout).
  """
  cat_dir = pathlib.Path(cat_dir).expanduser().resolve()
  entries, folders = [], [cat_dir]
  while folders:
    for path in folders.pop().iterdir():
      if path.name.startswith('.'):
        continue
      if path.is_dir():
        folders.append(path)
      else:
        stat = path.stat()
        entries.append(f'{path.relative_to(cat_dir).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}')
  digest = hashlib.sha256('\n'.join(sorted(entries)).encode()).hexdigest()
  return {'folder': str(cat_dir), 'files': len(entries), 'fingerprint': digest}


def source_change(recorded: Any, current: dict[str, Any]) -> str | None:
  """Why a build recorded as coming from `recorded` is not a build of `current`; None when it is."""
  if not isinstance(recorded, dict) or 'fingerprint' not in recorded:
    return f'it records no source folder (built before sources were recorded), now {current["folder"]}'
  if recorded.get('folder') != current['folder']:
    return f'it was built from {recorded.get("folder")}, not from {current["folder"]}'
  if recorded['fingerprint'] != current['fingerprint']:
    return (f'files in {current["folder"]} changed since it was built ({recorded.get("files")} files then, '
            f'{current["files"]} now; names, sizes or modification times differ)')
  return None


def _check_config_name(category: str) -> str:
  if not _CONFIG_NAME.match(category):
    raise layout.LocoFormatError(
        f'category {category!r} cannot be a TFDS config name; rename its folder using only letters, '
        'digits and _ - . +')
  return category


def builder_for(category: str, manual_dir: epath.PathLike | None = None,
                data_dir: epath.PathLike | None = None, **kwargs) -> 'Builder':
  """A builder for any category: a LOCO or synthetic one, or a user's own folder in LOCO layout."""
  return Builder(config=_check_config_name(category), manual_dir=manual_dir, data_dir=data_dir, **kwargs)


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for MVTec LOCO AD and folders in its layout (docs/data_format.md §12)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: raw per-channel masks, array_record files.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Download {ARCHIVE_NAME} from {HOMEPAGE} (licence CC BY-NC-SA 4.0).
  Its SHA-256 is {ARCHIVE_SHA256}.
  Either put the archive itself in manual_dir (its SHA-256 is verified, then it is extracted to
  manual_dir/{EXTRACTED_NAME}/), or extract it yourself and pass as manual_dir the folder that holds
  the category folders (breakfast_box/, juice_bottle/, ...). Any folder in the same layout works
  (synthetic scenes, your own product): a category is a folder with a defects_config.json.
  """
  BUILDER_CONFIGS = [
      *(tfds.core.BuilderConfig(name=c, description=f'MVTec LOCO AD category {c}.')
        for c in categories.LOCO_CATEGORIES),
      *(tfds.core.BuilderConfig(name=c, description=f'Procedural scene {c} in LOCO layout.')
        for c in categories.SYNTHETIC_CATEGORIES),
  ]
  _runtime_configs: dict[str, tfds.core.BuilderConfig] = {}  # one object per name, as TFDS expects

  def __init__(self, *, manual_dir: epath.PathLike | None = None, file_format=None, **kwargs):
    """Like any TFDS builder, plus a default `manual_dir` and array_record files by default."""
    super().__init__(file_format=file_format, **kwargs)
    self._manual_dir = manual_dir
    self._original_state['manual_dir'] = manual_dir  # kept when pickled
    self._scan: category_scan.CategoryScan | None = None
    self._source: dict[str, Any] | None = None  # source_record of the folder being built
    # array_record gives random access through as_data_source() without tf.data (§12). A data set
    # already on disk keeps the format it was written in.
    if file_format is None and not self._has_files():
      self.info.set_file_format(tfds.core.FileFormat.ARRAY_RECORD, override=True)

  def _has_files(self) -> bool:
    return (self.data_path / tfds.core.constants.DATASET_INFO_FILENAME).exists()

  @classmethod
  def get_builder_config(cls, name: str, version=None) -> tfds.core.BuilderConfig | None:
    """BUILDER_CONFIGS, plus a config made at run time for any other (user) category name."""
    config = super().get_builder_config(name, version)
    if config is None and _CONFIG_NAME.match(name):
      config = cls._runtime_configs.setdefault(
          name, tfds.core.BuilderConfig(name=name, description=f'Category folder {name} in LOCO layout.'))
    return config

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format='png'),
            'image_id': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=list(layout.KINDS)),
            'masks': tfds.features.Sequence({
                'mask': tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format='png'),
                'pixel_value': np.int32,
                'defect_name': tfds.features.Text(),
                'saturation_threshold': np.float64,
                'relative_saturation': np.bool_,
            }),
        }),
        supervised_keys=None,
        homepage=HOMEPAGE,
        metadata=tfds.core.MetadataDict(category=self.builder_config.name),
        disable_shuffling=True,  # examples in file order: test/good/000, 001, ...
    )

  def stale_reason(self, manual_dir: epath.PathLike | None = None) -> str | None:
    """Why the data set on disk is not a build of the category in manual_dir; None when it is.

    Also None when nothing is built or no manual_dir is given (here or to the constructor): a built
    data set is then read as it is.
    """
    manual_dir = manual_dir or self._manual_dir
    if not manual_dir or not self._has_files():
      return None
    current = self._source_record(self._locate(manual_dir))
    change = source_change(self.info.metadata.get('source'), current)
    return change and f'{self.info.full_name} in {self.data_dir_root}: {change}'

  def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs) -> None:
    """Checks the whole category before TFDS creates any file or folder, then builds it.

    A data set already built is reused only when it was built from the same folder with the same files
    (stale_reason); otherwise it is rebuilt, so training never reads one folder's build while evaluation
    reads another folder's ground truth.
    """
    download_config = download_config or tfds.download.DownloadConfig()
    mode = download_config.download_mode
    reused = self.data_path.exists() and not mode.overwrite_dataset
    if reused and mode != tfds.download.GenerateMode.UPDATE_DATASET_INFO:
      stale = self.stale_reason(download_config.manual_dir)
      if stale:
        logging.warning('%s; rebuilding it', stale)
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
        download_config = dataclasses.replace(download_config, download_mode=mode)
        reused = False
    if not reused and mode != tfds.download.GenerateMode.UPDATE_DATASET_INFO:
      manual_dir = (download_config.manual_dir or self._manual_dir
                    or epath.Path(download_dir or self.data_dir_root / 'downloads') / 'manual')
      cat_dir = self._locate(manual_dir)
      self._source = self._source_record(cat_dir)  # before the scan: a file changed during it means a rebuild
      self._scan = self._scan_dir(manual_dir)
    try:
      super().download_and_prepare(download_dir=download_dir, download_config=download_config, **kwargs)
    finally:
      self._scan = self._source = None

  # Where the category is and how it is read: the hooks a builder of another layout overrides (tfds_loco.mvtec_ad).

  def _locate(self, manual_dir: epath.PathLike) -> pathlib.Path:
    return locate_category(manual_dir, self.builder_config.name)

  def _scan_dir(self, manual_dir: epath.PathLike) -> category_scan.CategoryScan:
    return scan_manual_dir(manual_dir, self.builder_config.name)

  def _source_record(self, cat_dir: epath.PathLike) -> dict[str, Any]:
    return source_record(cat_dir)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    scan = self._scan or self._scan_dir(dl_manager.manual_dir)
    self.info.metadata.update(
        source=self._source or self._source_record(scan.cat_dir),
        defects_config=scan.defects_json,
        image_size={'width': scan.image_size[0], 'height': scan.image_size[1]},
    )
    return {split: self._generate_examples(images) for split, images in scan.splits.items()}

  def _as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    """tf.data (as_dataset, tfds.load) also for array_record files, which TFDS 4.9 reads only
    through as_data_source(): records come from the data source, TF parses and decodes them."""
    file_format = (read_config and read_config.file_format) or self.info.file_format
    if (tfds.core.FileFormat.from_value(file_format) != tfds.core.FileFormat.ARRAY_RECORD
        or isinstance(decoders, tfds.decode.PartialDecoding)):
      return super()._as_dataset(split, decoders, read_config, shuffle_files)
    source = self.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    order = np.arange(len(source))
    if shuffle_files:  # the closest to file shuffling that one file per split allows
      np.random.default_rng(read_config and read_config.shuffle_seed).shuffle(order)
    ds = tf.data.Dataset.from_generator(lambda: (source[int(i)] for i in order),
                                        output_signature=tf.TensorSpec((), tf.string))
    parser = example_parser.ExampleParser(self._example_specs)
    decode = functools.partial(self.info.features.decode_example, decoders=decoders)
    return ds.map(lambda record: decode(parser.parse_example(record)),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def _generate_examples(self, images: tuple[category_scan.ScannedImage, ...]):
    for image in images:
      record = image.record
      yield record.image_id, {
          'image': _image_input(image),
          'image_id': record.image_id,
          'label': record.kind,
          'masks': [{
              'mask': channel.path,  # checked 8-bit grayscale PNG: stored as is, raw values kept (§5)
              'pixel_value': channel.defect.pixel_value,
              'defect_name': channel.defect.defect_name,
              'saturation_threshold': float(channel.defect.saturation_threshold),
              'relative_saturation': channel.defect.relative_saturation,
          } for channel in image.channels],
      }


def _image_input(image: category_scan.ScannedImage):
  """The PNG file itself when it decodes to RGB as is; else the RGB pixels, re-encoded by PIL.

  Grey images reach here only from layouts that allow them (MVTec AD; the LOCO scan refuses them).
  """
  if image.header.color_type == layout.PNG_RGB:
    return image.record.path
  return Image.fromarray(layout.read_rgb_image(image.record.path, gray_to_rgb=True))
