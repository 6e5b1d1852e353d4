"""One source for each list: category names (tfds_loco.categories) and kinds of image (tfds_loco.layout).

Every module that needs a list reads the one definition; a copy, however equal today, fails here.
"""

from gcad_jax import configlib
from gcad_jax import input_pipeline
from gcad_jax import report
from tfds_loco import categories
from tfds_loco import layout
from tfds_loco import mvtec_loco
from tfds_loco import synthetic
from tfds_loco.synthetic import connectors
from tfds_loco.synthetic import grid
from tfds_loco.synthetic import tray


def test_category_lists_have_one_source():
  assert configlib.REAL_CATEGORIES is categories.LOCO_CATEGORIES
  assert configlib.SYNTHETIC_CATEGORIES is categories.SYNTHETIC_CATEGORIES
  assert mvtec_loco.LOCO_CATEGORIES is categories.LOCO_CATEGORIES
  assert mvtec_loco.SYNTHETIC_CATEGORIES is categories.SYNTHETIC_CATEGORIES
  assert synthetic.CATEGORIES is categories.SYNTHETIC_CATEGORIES
  assert set(configlib.CATEGORY_FLIPS) == set(categories.LOCO_CATEGORIES)
  configs = [c.name for c in mvtec_loco.Builder.BUILDER_CONFIGS]
  assert configs == [*categories.LOCO_CATEGORIES, *categories.SYNTHETIC_CATEGORIES]


def test_each_synthetic_category_draws_its_own_scene():
  """FAMILIES pairs the names with the families by position: a swap would draw pushpins as a tray."""
  assert synthetic.FAMILIES == {'synthetic_tray': tray.FAMILY, 'synthetic_grid': grid.FAMILY,
                                'synthetic_connectors': connectors.FAMILY}
  assert 'missing_fruit' in {d.name for d in synthetic.FAMILIES['synthetic_tray'].defects}
  assert 'missing_pin' in {d.name for d in synthetic.FAMILIES['synthetic_grid'].defects}
  assert 'missing_cable' in {d.name for d in synthetic.FAMILIES['synthetic_connectors'].defects}


def test_kinds_have_one_source():
  assert input_pipeline.LABELS is layout.KINDS
  assert report.KINDS == ('structural_anomalies', 'logical_anomalies')  # the paper's table order
  assert set(report.KINDS) == set(layout.ANOMALY_KINDS)
  builder = mvtec_loco.builder_for('synthetic_tray', data_dir='/nonexistent')
  assert builder.info.features['label'].names == list(layout.KINDS)
