"""The paper's setting on MVTec LOCO AD (docs/method.md §1): 256², 500 epochs, scales (17, 33), batch 16.

  python -m gcad_jax.main --config=configs/loco.py:pushpins --workdir=runs/pushpins \
      --config.dataset.manual_dir=/path/to/mvtec_loco_anomaly_detection

The argument string (or --config.dataset.category) picks one of breakfast_box, juice_bottle, pushpins,
screw_bag, splicing_connectors; dataset.manual_dir is required (the folder holding the category folders).
"""

from ml_collections import config_dict

from gcad_jax import configlib


def get_config(category: str = 'breakfast_box'):
  """base_config() with a real category and a required manual_dir."""
  config = configlib.base_config()
  if category not in configlib.REAL_CATEGORIES:
    raise ValueError(f'configs/loco.py:{category}: not one of {list(configlib.REAL_CATEGORIES)}')
  config.dataset.category = category
  config.dataset.manual_dir = config_dict.placeholder(str)  # Required: validate() names it when unset.
  return config
