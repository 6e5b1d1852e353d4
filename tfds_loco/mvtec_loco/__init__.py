"""MVTec LOCO AD TFDS builder; importing registers `mvtec_loco` (docs/data_format.md §12)."""

from tfds_loco.categories import LOCO_CATEGORIES
from tfds_loco.categories import SYNTHETIC_CATEGORIES
from tfds_loco.mvtec_loco.mvtec_loco_dataset_builder import ARCHIVE_NAME
from tfds_loco.mvtec_loco.mvtec_loco_dataset_builder import ARCHIVE_SHA256
from tfds_loco.mvtec_loco.mvtec_loco_dataset_builder import ArchiveError
from tfds_loco.mvtec_loco.mvtec_loco_dataset_builder import Builder
from tfds_loco.mvtec_loco.mvtec_loco_dataset_builder import builder_for
