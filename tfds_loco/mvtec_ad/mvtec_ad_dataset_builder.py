"""MVTec AD (and any MVTec AD-style folder) as a TFDS data set, with the paper's logical split (docs/method.md §10.2).

One config per category (15, plus any folder name at run time); splits train, validation (a deterministic
`val_fraction` of train/good, or the folder's validation/good) and test; images at their original size, grey
ones as RGB; label good / logical_anomalies / structural_anomalies (the paper's Table 4,
tfds_loco.categories.MVTEC_AD_LOGICAL, or a folder's `logical` list); image_id 'test/<defect>/<name>'; one
mask per anomalous image (0 / 255, saturation at full area: PRO regions are its connected components).

The features, the source fingerprint and the reuse rules are those of the MVTec LOCO AD builder, which this
one extends (tfds_loco.mvtec_loco); only where the category is and how it is read differ
(tfds_loco.folder_layout through tfds_loco.formats). The fingerprint also records the reading options, so a
changed `logical` list or `val_fraction` rebuilds.
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Any, Sequence

from etils import epath
import tensorflow_datasets as tfds

from tfds_loco import categories
from tfds_loco import category_scan
from tfds_loco import formats
from tfds_loco import layout
from tfds_loco.mvtec_loco import mvtec_loco_dataset_builder as loco_builder

ARCHIVE_NAME = 'mvtec_anomaly_detection.tar.xz'
EXTRACTED_NAME = 'mvtec_anomaly_detection'  # where the archive is extracted, inside manual_dir
HOMEPAGE = 'https://www.mvtec.com/company/research/datasets/mvtec-ad'


class ArchiveError(loco_builder.ArchiveError):
  """The MVTec AD archive is incomplete or not the expected one."""


def check_archive_tree(root: pathlib.Path, archive: pathlib.Path | None = None,
                       required: Sequence[str] = categories.MVTEC_AD_CATEGORIES) -> None:
  """Structural verification (MVTec publishes no checksum): every category with train/good, test/good and
  ground_truth/, and a mask for every anomalous test image."""
  name = archive or root
  tops = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.')]
  if len(tops) == 1 and not (root / required[0]).is_dir():  # the categories inside one top-level folder
    root = tops[0]
  for category in required:
    cat_dir = root / category
    missing = [part for part in ('train/good', 'test/good', 'ground_truth') if not (cat_dir / part).is_dir()]
    if missing:
      raise ArchiveError(
          f'{name} is not a complete MVTec AD archive: {category}/{missing[0]} is missing; download '
          f'{ARCHIVE_NAME} again from {HOMEPAGE}')
    try:
      reader = formats.reader('mvtec_ad', root, category)
      reader.check_ground_truth(reader.records('test'))
    except layout.LocoFormatError as e:
      raise ArchiveError(f'{name} is not a complete MVTec AD archive: {e}') from e


def _category_root(manual_dir: pathlib.Path, category: str) -> pathlib.Path | None:
  extracted = manual_dir / EXTRACTED_NAME
  tops = sorted(p for p in extracted.iterdir() if p.is_dir()) if extracted.is_dir() else []
  for root in (manual_dir, extracted, *tops):
    for candidate in (root / category, root):
      if candidate.name == category and (candidate / 'train').is_dir() and (candidate / 'test').is_dir():
        return candidate
  return None


def locate_category(manual_dir: epath.PathLike, category: str) -> pathlib.Path:
  """The category folder under manual_dir, extracting (and verifying) the archive there first if needed."""
  manual_dir = loco_builder.checked_manual_dir(manual_dir, ARCHIVE_NAME)
  found = _category_root(manual_dir, category)
  archive = manual_dir / ARCHIVE_NAME
  if found is None and archive.is_file() and not (manual_dir / EXTRACTED_NAME).is_dir():
    loco_builder.extract_tar(archive, manual_dir / EXTRACTED_NAME, lambda tree: check_archive_tree(tree, archive))
    found = _category_root(manual_dir, category)
  if found is None:
    return formats.find_category_dir('folder', manual_dir, category)  # raises, listing what is there
  return found


class Builder(loco_builder.Builder):
  """DatasetBuilder for MVTec AD and MVTec AD-style folders (docs/method.md §10.2)."""

  name = 'mvtec_ad'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: Table 4 labels, held-out validation, one mask per image.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Download {ARCHIVE_NAME} from {HOMEPAGE} (licence CC BY-NC-SA 4.0).
  Either put the archive itself in manual_dir (it is extracted to manual_dir/{EXTRACTED_NAME}/ and checked
  for every category's train/good, test/good and masks: MVTec publishes no checksum), or extract it yourself
  and pass as manual_dir the folder that holds bottle/, cable/, ... . Any MVTec AD-style folder works
  (dataset format 'folder': train/good, test/good, test/<defect>, optional ground_truth/).
  """
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c, description=f'MVTec AD category {c}.')
                     for c in categories.MVTEC_AD_CATEGORIES]
  _runtime_configs: dict[str, tfds.core.BuilderConfig] = {}

  def __init__(self, *, dataset_format: str = 'mvtec_ad', logical: Sequence[str] = (), val_fraction: float = 0.1,
               **kwargs):
    """Like the LOCO builder, plus how the folder is read: `dataset_format` mvtec_ad or folder, the logical
    defect folders of a folder, and the fraction of train/good held out for validation."""
    if formats.check_format(dataset_format) == 'loco':
      raise ValueError("the mvtec_ad builder reads formats 'mvtec_ad' and 'folder'; use tfds_loco.mvtec_loco")
    self._format, self._logical, self._val_fraction = dataset_format, tuple(logical), float(val_fraction)
    super().__init__(**kwargs)
    self._original_state.update(dataset_format=dataset_format, logical=tuple(logical), val_fraction=val_fraction)

  @classmethod
  def get_builder_config(cls, name: str, version=None) -> tfds.core.BuilderConfig | None:
    config = tfds.core.GeneratorBasedBuilder.get_builder_config.__func__(cls, name, version)
    if config is None and loco_builder._CONFIG_NAME.match(name):  # pylint: disable=protected-access
      config = cls._runtime_configs.setdefault(
          name, tfds.core.BuilderConfig(name=name, description=f'MVTec AD-style folder {name}.'))
    return config

  def category_reader(self, cat_dir: pathlib.Path) -> formats.CategoryReader:
    options = formats.folder_options(self._format, self.builder_config.name, self._logical, self._val_fraction)
    return formats.CategoryReader(self._format, pathlib.Path(cat_dir), options)

  def _locate(self, manual_dir: epath.PathLike) -> pathlib.Path:
    return locate_category(manual_dir, self.builder_config.name)

  def _scan_dir(self, manual_dir: epath.PathLike) -> category_scan.CategoryScan:
    reader = self.category_reader(self._locate(manual_dir))
    with tfds.core.utils.tqdm(desc=f'Checking {reader.name}', unit=' images', leave=False) as bar:

      def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(1)

      return reader.scan(progress)

  def _source_record(self, cat_dir: epath.PathLike) -> dict[str, Any]:
    """The LOCO builder's fingerprint of the files, extended by the reading options (changed = rebuild)."""
    record = loco_builder.source_record(cat_dir)
    options = self.category_reader(pathlib.Path(cat_dir)).options
    extra = f'{self._format}\0{",".join(options.logical)}\0{options.val_fraction!r}'
    record.update(format=self._format, logical=list(options.logical), val_fraction=options.val_fraction,
                  fingerprint=hashlib.sha256((record['fingerprint'] + extra).encode()).hexdigest())
    return record


def builder_for(category: str, manual_dir: epath.PathLike | None = None, data_dir: epath.PathLike | None = None,
                **kwargs) -> Builder:
  """A builder for an MVTec AD category or a folder name (dataset_format, logical, val_fraction in kwargs)."""
  return Builder(config=loco_builder._check_config_name(category), manual_dir=manual_dir,  # pylint: disable=protected-access
                 data_dir=data_dir, **kwargs)
