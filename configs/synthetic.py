"""GCAD at CPU size on the embedded synthetic data set (the demo's config; any LOCO-layout folder works).

  python -m tfds_loco.synthetic --out data/synthetic --seed 0
  python -m gcad_jax.main --config=configs/synthetic.py --workdir=/tmp/w_syn

Another LOCO-layout folder: --config.dataset.manual_dir=/path/to/root --config.dataset.category=name.
An argument string sets the category: --config=configs/synthetic.py:my_category.
128×128 input, one scale (p = 17), narrow networks, and a short schedule whose stage switch and skip fade
are scaled down with the epochs (GCAD.md §7.3, §4.3) so that R_glo trains.
"""

from gcad_jax import configlib


def get_config(category: str = ''):
  """The CPU-sized config; `category` (optional) overrides dataset.category."""
  config = configlib.base_config()
  config.dataset.category = category or 'synthetic_tray'
  config.dataset.manual_dir = 'data/synthetic'
  config.dataset.data_dir = 'data/tfds'
  config.dataset.image_size = (128, 128)
  config.model.scales = (17,)
  config.eloc.widths = (32, 64, 64)
  config.eloc.d_loc = 32
  config.teacher.init = 'random'
  config.eglo.g = 16
  config.eglo.d_glo = 8
  config.eglo.enc_channels = (16, 16, 32, 32, 32, 32)
  config.eglo.dec_channels = (32, 32, 32, 32, 16, 16, 16)
  config.u.hidden = (32, 32)
  config.unet.depth = 4
  config.unet.wf = 4
  # 500 epochs, R_glo from 50, skips gone at 100 in the paper: the same proportions over 100 epochs (700 steps,
  # about 12 minutes on 2 cores). At 20 epochs E_glo did not learn (L_kd flat; the closing note of issue 4).
  config.train.epochs = 100
  config.train.rglo_start_epoch = 10.0
  config.eglo.skip_fade.end_epoch = 20.0
  config.train.batch_size = 8
  config.train.checkpoint_every_steps = 50
  config.train.log_every_steps = 10
  return config
