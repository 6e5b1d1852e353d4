"""MVTec AD TFDS builder; importing registers `mvtec_ad` (docs/method.md §10.2)."""

from tfds_loco.categories import MVTEC_AD_CATEGORIES
from tfds_loco.categories import MVTEC_AD_LOGICAL
from tfds_loco.mvtec_ad.mvtec_ad_dataset_builder import ARCHIVE_NAME
from tfds_loco.mvtec_ad.mvtec_ad_dataset_builder import ArchiveError
from tfds_loco.mvtec_ad.mvtec_ad_dataset_builder import Builder
from tfds_loco.mvtec_ad.mvtec_ad_dataset_builder import builder_for
