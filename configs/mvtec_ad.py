"""The paper's setting on MVTec AD (docs/method.md §10.2, §1): 256², 500 epochs, scales (17, 33), batch 16.

  python -m gcad_jax.main --config=configs/mvtec_ad.py:bottle --workdir=runs/bottle \
      --config.dataset.manual_dir=/path/to/mvtec_anomaly_detection

  ./run.sh mvtec_ad /path/to/mvtec_anomaly_detection [runs/mvtec_ad] [--seeds 0,1,2]   (all 15, Tables 8, 9)

The argument string picks one of the 15 categories (tfds_loco.categories.MVTEC_AD_CATEGORIES). The labels
follow the paper's Table 4 (structural / logical); 10 % of train/good is held out for μ/σ
(dataset.val_fraction); AUC-sPRO is PRO, regions the masks' connected components at full saturation.
manual_dir holds the category folders or mvtec_anomaly_detection.tar.xz.
"""

from ml_collections import config_dict

from gcad_jax import configlib
from tfds_loco import categories


def get_config(category: str = 'bottle'):
  """base_config() on an MVTec AD category, with a required manual_dir."""
  config = configlib.base_config()
  if category not in categories.MVTEC_AD_CATEGORIES:
    raise ValueError(f'configs/mvtec_ad.py:{category}: not one of {list(categories.MVTEC_AD_CATEGORIES)}')
  config.dataset.format = 'mvtec_ad'
  config.dataset.category = category
  config.dataset.val_fraction = 0.1
  config.dataset.manual_dir = config_dict.placeholder(str)  # Required: validate() names it when unset.
  return config
